//! The systems measured, each serving and calling the same service: `add(u64, u64) -> u64`,
//! and `add_awaiting`, the same from a handler that awaits once before it answers;
//! echoes of a byte payload as a `Vec<u8>`, as a `serde_bytes::ByteBuf` (the two ways users
//! write byte buffers) and as the system's own shared byte type (`rpc_core::Payload`,
//! `bytes::Bytes`); and `count(n)`, a stream of `n` numbers, where the system streams.

pub mod certs;
pub mod raw;
pub mod rpc;
pub mod tarpc;
pub mod tonic;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;

use serde_bytes::ByteBuf;

/// One RPC system under test.
pub trait System: Send + Sync + 'static {
    /// The system's name, as the command line and the tables spell it.
    const NAME: &'static str;

    /// A connection, or a handle on one.
    type Client: Send + Sync + 'static;

    /// The system's shared byte type, sent again and again as clones of one buffer.
    type Shared: From<Vec<u8>> + AsRef<[u8]> + Clone + Send + Sync + 'static;

    /// Starts a server listening on `bind` (port 0 for a free port), on the current runtime;
    /// returns the address it listens on, or why it cannot listen there.
    fn serve(bind: SocketAddr) -> impl Future<Output = Result<SocketAddr, String>> + Send;

    /// Opens one connection.
    fn connect(addr: SocketAddr) -> impl Future<Output = Self::Client> + Send;

    /// Another handle on `client`'s connection, for calls made at once; `None` for a system
    /// that makes one call at a time.
    fn share(client: &Self::Client) -> Option<Self::Client>;

    /// Calls `add`.
    fn add(client: &mut Self::Client, a: u64, b: u64) -> impl Future<Output = u64> + Send;

    /// Calls `add_awaiting`, whose handler awaits once ([`handler_awaits`]) before it answers,
    /// as one that awaits a database or another service does.
    fn add_awaiting(client: &mut Self::Client, a: u64, b: u64) -> impl Future<Output = u64> + Send;

    /// Echoes a `Vec<u8>`.
    fn echo_vec(client: &mut Self::Client, bytes: Vec<u8>) -> impl Future<Output = Vec<u8>> + Send;

    /// Echoes a `serde_bytes::ByteBuf`.
    fn echo_buf(client: &mut Self::Client, bytes: ByteBuf) -> impl Future<Output = ByteBuf> + Send;

    /// Echoes the system's shared byte type.
    fn echo_shared(
        client: &mut Self::Client,
        bytes: Self::Shared,
    ) -> impl Future<Output = Self::Shared> + Send;

    /// Receives a stream of the numbers `0..items`, checking each in turn, and counts them;
    /// `None` where the system has no streams. Every system does the same work per item.
    fn count(client: &mut Self::Client, items: u64) -> impl Future<Output = Option<u64>> + Send;

    /// Receives a stream of `count` chunks of `size` bytes each, of the system's shared byte
    /// type, as a file sent in pieces comes, and returns how many bytes came; `None` where the
    /// system has no such stream (rpc-core alone, here).
    fn chunks(
        _client: &mut Self::Client,
        _size: u64,
        _count: u64,
    ) -> impl Future<Output = Option<u64>> + Send {
        async { None }
    }
}

/// What `add_awaiting`'s handler awaits in every system: one turn of the scheduler
/// (`tokio::task::yield_now`), so that it does not answer on its first poll, as a handler that
/// awaits a database or another service does not, while the work it waits for costs nothing.
pub async fn handler_awaits() {
    tokio::task::yield_now().await;
}
