//! Whether a connection's peer runs elsewhere, on threads of its own: busy polling
//! ([`ClientBuilder::busy_poll`], [`ServerBuilder::busy_poll`]) is for peers in other processes,
//! and on other runtimes of this one. Where both ends of a connection run on one runtime, a
//! call's two ends meet without a sleeping thread to wake, and a reader that polls only takes
//! turns from the tasks it waits for: in this crate's benchmark, on one shared runtime, its
//! sequential calls took 20.8 µs against 5.4 with both ends polling. Two runtimes of one process
//! have threads of their own, each woken as another process's would be: there polling took
//! sequential calls between two single-thread runtimes from 71.4 µs to 6.8
//! (docs/benchmark-history.md).
//!
//! A Unix socket's system names its peer's process. A TCP connection's does not, so this
//! process keeps a table of the local addresses of the TCP connections its clients and servers
//! have open (their *ends*), each with the runtime its end runs on: a peer whose address is one
//! of them is in this process, on that runtime ([`tokio::runtime::Id`]). The table
//! holds each address as a 64-bit hash, which is what every connection keeps of its own and its
//! peer's: two addresses of one hash would make a peer elsewhere look local, which costs it
//! busy polling and nothing else, and among the ends of one process is as good as never. Each end
//! is in the table from before its connection's handshake until the connection is dropped, and
//! each end looks its peer up once the handshake is over, when the peer's end is in the table
//! if it will ever be. A peer that is not one of this crate's ends (a raw socket, a proxy) is
//! taken for another process's. Ends at one address on several runtimes (a server's, served
//! from more than one), or on none, are taken for the looking end's runtime's: polling for them
//! might only slow them. A stream this crate did not open itself (`connect_stream`,
//! `serve_connection`) has a peer it cannot place, and no busy polling by default.
//!
//! [`ClientBuilder::busy_poll`]: crate::ClientBuilder::busy_poll
//! [`ServerBuilder::busy_poll`]: crate::ServerBuilder::busy_poll

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex, PoisonError};

use tokio::runtime::{Handle, Id};

/// The local addresses of this process's open TCP connections, by [`Address`], each with the
/// ends that have it: every connection a server accepts on one address has the same.
static ENDS: LazyLock<Mutex<HashMap<Address, Ends>>> = LazyLock::new(Mutex::default);

/// The ends of this process's connections at one address.
#[derive(Debug)]
struct Ends {
    /// How many.
    count: usize,
    /// The runtime they all run on; `None` if they run on several, or one ran on none.
    runtime: Option<Id>,
}

/// A socket address as the table of ends holds it: a hash of its IP address, as the peer sees
/// it, and its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Address(u64);

impl Address {
    fn of(addr: SocketAddr) -> Self {
        // The same keys everywhere: the table is only ever in one process.
        let mut hasher = DefaultHasher::new();
        addr.ip().to_canonical().hash(&mut hasher);
        addr.port().hash(&mut hasher);
        Address(hasher.finish())
    }
}

/// Where a connection's peer runs, as far as this process can tell, and, for a TCP connection,
/// its own end's entry in the table of this process's ends for as long as this lives.
#[derive(Debug)]
pub(crate) enum PeerProcess {
    /// A TCP connection: its peer is in this process if its address is one of this process's
    /// ends once the handshake is over.
    Tcp {
        /// The peer's address.
        peer: Address,
        /// This end, in the table until this is dropped.
        end: End,
    },
    /// The system told: whether the peer is this process.
    Known(bool),
    /// A stream this crate did not open, whose peer it cannot place.
    Unknown,
}

impl PeerProcess {
    /// The peer of `stream`, whose local address joins this process's ends until the result
    /// is dropped. Unknown if the system gives either address.
    pub(crate) fn of_tcp(stream: &tokio::net::TcpStream) -> Self {
        match (stream.local_addr(), stream.peer_addr()) {
            (Ok(local), Ok(peer)) => PeerProcess::Tcp {
                peer: Address::of(peer),
                end: End::join(Address::of(local)),
            },
            _ => PeerProcess::Unknown,
        }
    }

    /// The peer of a Unix socket whose system reported its process id as `pid`.
    pub(crate) fn of_pid(pid: Option<i32>) -> Self {
        match pid {
            Some(pid) => PeerProcess::Known(u32::try_from(pid) == Ok(std::process::id())),
            None => PeerProcess::Unknown,
        }
    }

    /// Whether the peer runs elsewhere, on threads of its own, as far as can be told: in another
    /// process, or on another runtime of this one than the current; `false` when it runs on
    /// this runtime or cannot be placed. Asked once the handshake is over, on the runtime the
    /// connection runs on.
    pub(crate) fn is_elsewhere(&self) -> bool {
        match self {
            PeerProcess::Tcp { peer, .. } => match ends().get(peer) {
                None => true,
                Some(ends) => match (ends.runtime, current_runtime()) {
                    (Some(theirs), Some(ours)) => theirs != ours,
                    _ => false,
                },
            },
            PeerProcess::Known(here) => !here,
            PeerProcess::Unknown => false,
        }
    }

    /// Whether the peer is elsewhere ([`PeerProcess::is_elsewhere`]), and this end, to be kept
    /// in the table for as long as the connection lives: all a connection needs to keep of
    /// this once its handshake is over.
    pub(crate) fn place(self) -> (bool, Option<End>) {
        let elsewhere = self.is_elsewhere();
        match self {
            PeerProcess::Tcp { end, .. } => (elsewhere, Some(end)),
            PeerProcess::Known(_) | PeerProcess::Unknown => (elsewhere, None),
        }
    }
}

/// A TCP connection's local address, in this process's table of ends while this lives.
#[derive(Debug)]
pub(crate) struct End(Address);

impl End {
    /// An end at `addr`, on the current runtime.
    fn join(addr: Address) -> Self {
        let runtime = current_runtime();
        ends()
            .entry(addr)
            .and_modify(|ends| {
                ends.count += 1;
                if ends.runtime != runtime {
                    ends.runtime = None;
                }
            })
            .or_insert(Ends { count: 1, runtime });
        End(addr)
    }
}

/// The runtime this runs on, if any.
fn current_runtime() -> Option<Id> {
    Handle::try_current().ok().map(|handle| handle.id())
}

impl Drop for End {
    fn drop(&mut self) {
        let mut ends = ends();
        if let Some(these) = ends.get_mut(&self.0) {
            these.count -= 1;
            if these.count == 0 {
                ends.remove(&self.0);
            }
        }
    }
}

/// The table of ends, locked. Nothing panics while it is held, but a poisoned lock would still
/// hold a sound table.
fn ends() -> std::sync::MutexGuard<'static, HashMap<Address, Ends>> {
    ENDS.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::test_sockets::{blocking_pair, pair};

    #[tokio::test]
    async fn two_ends_in_this_process_find_each_other() {
        let (client, server) = pair().await;
        let (client, server) = (PeerProcess::of_tcp(&client), PeerProcess::of_tcp(&server));
        assert!(!client.is_elsewhere());
        assert!(!server.is_elsewhere());
    }

    /// A peer that is not one of this crate's ends is another process's, as far as can be
    /// told; and an end is in the table only while its connection lives.
    #[tokio::test]
    async fn a_peer_not_in_the_table_is_elsewhere() {
        let (client, server) = pair().await;
        let client = PeerProcess::of_tcp(&client);
        assert!(
            client.is_elsewhere(),
            "a raw socket's end is not in the table"
        );

        let server = PeerProcess::of_tcp(&server);
        assert!(!client.is_elsewhere());
        drop(server);
        assert!(client.is_elsewhere(), "a dropped end leaves the table");
    }

    /// Every connection a server accepts on one address has the same local address: the
    /// address stays in the table until the last of them is dropped.
    #[tokio::test]
    async fn an_address_shared_by_accepted_connections_stays_until_the_last_is_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("an address");
        let mut ends = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..2 {
            let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
            clients.push(connected.expect("connects"));
            ends.push(PeerProcess::of_tcp(&accepted.expect("accepts").0));
        }
        // The clients' peers are the same address, the accepted connections' one.
        let watcher = PeerProcess::of_tcp(&clients[0]);
        assert!(!watcher.is_elsewhere());
        ends.pop();
        assert!(
            !watcher.is_elsewhere(),
            "one accepted connection is still open"
        );
        ends.pop();
        assert!(watcher.is_elsewhere());
    }

    /// A current-thread runtime of its own.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("a runtime")
    }

    /// `stream`'s end, made on `runtime`; the stream itself is closed, its end stays.
    fn end_on(runtime: &tokio::runtime::Runtime, stream: std::net::TcpStream) -> PeerProcess {
        stream.set_nonblocking(true).expect("non-blocking");
        runtime.block_on(async {
            PeerProcess::of_tcp(&TcpStream::from_std(stream).expect("registers"))
        })
    }

    /// Two ends of one process on two runtimes run on threads of their own: each is elsewhere
    /// to the other, looked at from its own runtime. On one runtime they are not.
    #[test]
    fn ends_on_two_runtimes_are_elsewhere_to_each_other() {
        let (first, second) = (runtime(), runtime());
        let (connected, accepted) = blocking_pair();
        let (client, server) = (end_on(&first, connected), end_on(&second, accepted));
        assert!(first.block_on(async { client.is_elsewhere() }));
        assert!(second.block_on(async { server.is_elsewhere() }));
        assert!(
            !second.block_on(async { client.is_elsewhere() }),
            "looked at from the server's runtime, the client's peer runs on it"
        );

        let (connected, accepted) = blocking_pair();
        let (client, server) = (end_on(&first, connected), end_on(&first, accepted));
        assert!(!first.block_on(async { client.is_elsewhere() }));
        assert!(!first.block_on(async { server.is_elsewhere() }));
    }

    /// Ends at one address on several runtimes are taken for the looking end's runtime's.
    #[test]
    fn ends_at_one_address_on_several_runtimes_are_taken_for_this_ones() {
        let (first, second, third) = (runtime(), runtime(), runtime());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let addr = listener.local_addr().expect("an address");
        let mut accepted = Vec::new();
        let mut watchers = Vec::new();
        for runtime in [&first, &second] {
            let connected = std::net::TcpStream::connect(addr).expect("connects");
            accepted.push(end_on(runtime, listener.accept().expect("accepts").0));
            watchers.push(end_on(&third, connected));
        }
        assert!(!third.block_on(async { watchers[0].is_elsewhere() }));
        drop(accepted);
        assert!(third.block_on(async { watchers[0].is_elsewhere() }));
    }

    #[test]
    fn a_unix_peer_is_placed_by_its_process_id() {
        let here = i32::try_from(std::process::id()).expect("a pid");
        assert!(!PeerProcess::of_pid(Some(here)).is_elsewhere());
        assert!(PeerProcess::of_pid(Some(here + 1)).is_elsewhere());
        assert!(
            !PeerProcess::of_pid(None).is_elsewhere(),
            "unknown, not elsewhere"
        );
    }

    /// A dual-stack socket reports an IPv4 peer as IPv6 (`::ffff:a.b.c.d`): the table takes it
    /// for the IPv4 address the peer sees; other addresses and ports stay apart.
    #[test]
    fn an_ipv4_address_seen_through_ipv6_is_the_ipv4_address() {
        let address = |text: &str| Address::of(text.parse().expect("an address"));
        assert_eq!(address("[::ffff:127.0.0.1]:80"), address("127.0.0.1:80"));
        assert_ne!(address("127.0.0.1:80"), address("127.0.0.1:81"));
        assert_ne!(address("127.0.0.1:80"), address("127.0.0.2:80"));
        assert_ne!(address("[::1]:80"), address("127.0.0.1:80"));
    }
}
