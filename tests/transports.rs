//! The same calls over every transport: TCP, Unix domain sockets, and in-memory pipes.

use futures_util::future::join_all;
use rpc_core::Server;
use rpc_tests::{LabClient, LabImpl, LabServer, start_tcp, within};

/// What every transport must carry: a plain call, concurrent calls, state kept between calls.
async fn exercise(client: LabClient) {
    assert_eq!(client.add(40, 2).await.expect("add"), 42);
    let sums = join_all((0..50).map(|i| {
        let client = client.clone();
        async move { client.add(i, 100).await }
    }));
    for (i, sum) in (0..).zip(within("50 concurrent calls", sums).await) {
        assert_eq!(sum.expect("add"), i + 100);
    }
    assert_eq!(client.incr().await.expect("incr"), 1);
    assert_eq!(client.incr().await.expect("incr"), 2);
}

#[tokio::test]
async fn tcp() {
    exercise(
        LabClient::connect(start_tcp().await)
            .await
            .expect("connects"),
    )
    .await;
}

/// A fresh directory of this test process, named after `tag`, and the path of a socket in it
/// that does not exist yet.
#[cfg(unix)]
fn socket_path(tag: &str) -> (rpc_tests::ScratchDir, std::path::PathBuf) {
    let dir = rpc_tests::ScratchDir::new(&format!("core-{tag}"));
    let path = dir.join("lab.sock");
    (dir, path)
}

#[cfg(unix)]
#[tokio::test]
async fn unix_socket() {
    let (_dir, path) = socket_path("test");
    let server = Server::bind_unix(&path).expect("binds");
    assert!(
        server.local_addr().is_err(),
        "a Unix server has no TCP address"
    );
    tokio::spawn(server.serve(LabServer::new(LabImpl::default())));

    let client = LabClient::builder()
        .connect_unix(&path)
        .await
        .expect("connects");
    exercise(client).await;
}

/// A server restarted on the path of one that stopped (or crashed) binds: the socket file left
/// there is stale. One still listening is not taken over, nor is a file that is no socket.
#[cfg(unix)]
#[tokio::test]
async fn a_unix_socket_left_by_a_server_that_is_gone_is_replaced() {
    let (dir, path) = socket_path("restart");
    let first = Server::bind_unix(&path).expect("binds");
    let taken = Server::bind_unix(&path).expect_err("another server listens there");
    assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
    drop(first);
    assert!(
        path.exists(),
        "the stopped server's socket file is left behind"
    );

    let again = Server::bind_unix(&path).expect("binds over the stale socket");
    tokio::spawn(again.serve(LabServer::new(LabImpl::default())));
    let client = LabClient::builder()
        .connect_unix(&path)
        .await
        .expect("connects");
    exercise(client).await;

    let not_a_socket = dir.join("notes.txt");
    std::fs::write(&not_a_socket, "keep me").expect("writes");
    let refused = Server::bind_unix(&not_a_socket).expect_err("a file that is no socket");
    assert_eq!(refused.kind(), std::io::ErrorKind::AddrInUse);
    assert_eq!(
        std::fs::read_to_string(&not_a_socket).expect("kept"),
        "keep me"
    );
}

/// Over a Unix socket a handler learns who the client is from the system: here, this very
/// process, whose user owns the socket file it made. Over TCP there is no such thing.
#[cfg(unix)]
#[tokio::test]
async fn a_unix_socket_client_is_known_by_its_credentials() {
    use std::os::unix::fs::MetadataExt;

    let (dir, path) = socket_path("creds");
    let server = Server::bind_unix(&path).expect("binds");
    tokio::spawn(server.serve(LabServer::new(LabImpl::default())));
    let owner = std::fs::metadata(&path).expect("the socket file");
    let client = LabClient::builder()
        .connect_unix(&path)
        .await
        .expect("connects");
    let info = client.whoami().await.expect("a call");
    let (uid, gid, pid) = info.credentials.expect("credentials over a Unix socket");
    assert_eq!(uid, owner.uid());
    assert_eq!(gid, owner.gid());
    assert_eq!(pid, i32::try_from(std::process::id()).ok());
    drop(dir);

    let tcp = LabClient::connect(rpc_tests::start_tcp().await)
        .await
        .expect("connects");
    assert_eq!(tcp.whoami().await.expect("a call").credentials, None);
}

#[tokio::test]
async fn in_memory_pipe() {
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    tokio::spawn(rpc_core::serve_connection(
        server_end,
        LabServer::new(LabImpl::default()),
    ));
    exercise(LabClient::from_stream(client_end).await.expect("handshake")).await;
}

#[tokio::test]
async fn in_memory_connections_share_one_implementation() {
    let lab = LabServer::new(LabImpl::default());
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (client_end, server_end) = tokio::io::duplex(64 * 1024);
        tokio::spawn(rpc_core::serve_connection(server_end, lab.clone()));
        clients.push(LabClient::from_stream(client_end).await.expect("handshake"));
    }
    assert_eq!(clients[0].incr().await.expect("incr"), 1);
    assert_eq!(clients[1].incr().await.expect("incr"), 2);
}
