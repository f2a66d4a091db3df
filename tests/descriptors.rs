//! A server whose process runs out of file descriptors before it reaches its connection limit
//! (the default limit of 10,000 connections is far above the 1024 descriptors many systems
//! give a process): idle peers holding every descriptor cannot keep a newcomer out. This binary
//! lowers its own limit of open files, so it holds this one test alone.
#![cfg(target_os = "linux")]

use rpc_core::Server;
use rpc_tests::{
    ADD_2_3, LabImpl, RawClient, VERSION, hello, request, start_tcp_with, varint, within,
};
use tokio::net::TcpStream;

/// The errno of a process out of file descriptors.
const EMFILE: i32 = 24;

/// GoAway reason 2: the server is at its connection limit and needs an idle connection.
const MAKING_ROOM: u8 = 2;

/// Sets the process's soft limit of open files to `files`.
fn limit_open_files(files: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the call to fill and then to read.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(got, 0, "reads the limit");
    limit.rlim_cur = files.min(limit.rlim_max);
    // SAFETY: as above; only the soft limit changes, within the hard one.
    let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(set, 0, "lowers the limit");
}

fn open_files() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .expect("lists the process's descriptors")
        .count() as u64
}

/// Connects a peer to `addr` and completes its handshake; `None` if this process has no
/// descriptor left for the peer's own socket.
async fn connect(addr: std::net::SocketAddr) -> Option<RawClient> {
    let stream = match TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(error) if error.raw_os_error() == Some(EMFILE) => return None,
        Err(error) => panic!("connecting failed otherwise: {error}"),
    };
    let mut peer = RawClient { stream };
    peer.send(&hello("Lab", VERSION)).await;
    let answered = within("the server's hello to a newcomer", peer.read_frame()).await;
    assert!(answered.is_some(), "the server closed a newcomer");
    Some(peer)
}

/// Idle clients connect until the process has no descriptor left, then one more, with a
/// descriptor of its own: the server has none left to accept it with, and still serves it, the
/// idle connection that has gone longest without a call asked to give way, as at the
/// connection limit. (Without that, the server retried its accept for ever, and the
/// newcomer's hello went unanswered.) Room is made only for a newcomer that waits: the accept
/// after the connection that took the last descriptor fails as well, with no one waiting, and
/// the server once made room then too, each idle connection in turn asked to give way to no
/// one as the descriptors it freed let the next peer in, and at times the newcomer in its
/// handshake closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_peers_holding_every_descriptor_give_way_to_newcomers() {
    let addr = start_tcp_with(Server::builder(), LabImpl::default()).await;
    let spare = std::fs::File::open("/dev/null").expect("opens");
    // Room for about 20 connections, each a descriptor on either end.
    limit_open_files(open_files() + 40);
    let mut peers = Vec::new();
    while let Some(peer) = connect(addr).await {
        peers.push(peer);
    }
    assert!(peers.len() > 10, "only {} connected", peers.len());
    // The process is full. The newcomer's socket takes the spare's descriptor; the server has
    // none to accept it with.
    drop(spare);
    let newcomer = connect(addr).await;
    assert!(newcomer.is_some(), "the newcomer has the spare descriptor");
    // The first to give way was the one idle longest: the first to connect, told why.
    let told = within("the first peer's go-away", peers[0].read_frame()).await;
    let go_away = told.expect("a frame before the end");
    assert_eq!(go_away[..2], [0x05, MAKING_ROOM], "a go-away, making room");
    // At most one other made room: the second, if the last peer to fit took the process's
    // last descriptor before the server could accept it. Every one after is still served.
    for (index, peer) in peers.iter_mut().enumerate().skip(2) {
        let id = u64::try_from(index).expect("a small index");
        peer.send(&request(id, "add", &ADD_2_3)).await;
        let answer = within("an answer", peer.read_frame()).await;
        let answer = answer.unwrap_or_else(|| panic!("peer {index} was closed"));
        assert_eq!(
            answer[..],
            [0x02, varint(id)[0], 0x00, 0x0a],
            "peer {index}'s sum"
        );
    }
    // The one descriptor freed for the newcomer went to it: none is left for another.
    assert!(
        connect(addr).await.is_none(),
        "room was made for no one once the newcomer was in"
    );
}
