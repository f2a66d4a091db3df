//! The systems measured, each serving and calling the same service: `add(u64, u64) -> u64`, and
//! echoes of a byte payload as a plain `Vec<u8>` and as the byte-buffer type each system handles
//! best (`bytes::Bytes` for tarpc and the raw floor, `rpc_core::Payload` for rpc-core). A caller
//! sends the same buffer again and again, as a clone of its byte-buffer type: a shared handle
//! for both, where a `Vec<u8>` must be copied.

pub mod raw;
pub mod rpc;
pub mod tarpc;

use std::future::Future;
use std::net::SocketAddr;

/// One RPC system under test.
pub trait System: Send + Sync + 'static {
    /// A client, cheap to clone; clones share one connection.
    type Client: Clone + Send + Sync + 'static;

    /// The byte-buffer type the system handles best.
    type Buf: From<Vec<u8>> + AsRef<[u8]> + Clone + Send + Sync + 'static;

    /// Starts a server on a free loopback port.
    fn serve() -> impl Future<Output = SocketAddr> + Send;

    /// Opens one connection.
    fn connect(addr: SocketAddr) -> impl Future<Output = Self::Client> + Send;

    /// Calls `add`.
    fn add(client: &Self::Client, a: u64, b: u64) -> impl Future<Output = u64> + Send;

    /// Echoes a plain `Vec<u8>`.
    fn echo_vec(client: &Self::Client, bytes: Vec<u8>) -> impl Future<Output = Vec<u8>> + Send;

    /// Echoes a byte buffer.
    fn echo_bytes(
        client: &Self::Client,
        bytes: Self::Buf,
    ) -> impl Future<Output = Self::Buf> + Send;
}
