//! Define a trait, call it remotely.
//!
//! `#[rpc_core::service]` on a trait generates, beside it, a request enum and a response enum
//! (one variant per method), a client whose methods mirror the trait's and return
//! `Result<_, RpcError>`, and a server dispatcher. Calls travel postcard-encoded in
//! length-prefixed frames over TCP, Unix sockets or any byte stream, many at once on one
//! connection.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! pub struct DivideByZero;
//!
//! #[rpc_core::service]
//! pub trait Calc {
//!     /// Adds two numbers.
//!     async fn add(&self, a: i64, b: i64) -> i64;
//!     /// Divides, refusing to divide by zero.
//!     async fn div(&self, a: i64, b: i64) -> Result<i64, DivideByZero>;
//! }
//!
//! struct MyCalc;
//!
//! impl Calc for MyCalc {
//!     async fn add(&self, a: i64, b: i64) -> i64 {
//!         a + b
//!     }
//!     async fn div(&self, a: i64, b: i64) -> Result<i64, DivideByZero> {
//!         a.checked_div(b).ok_or(DivideByZero)
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let server = rpc_core::Server::bind("127.0.0.1:0").await?;
//!     let addr = server.local_addr()?;
//!     tokio::spawn(server.serve(CalcServer::new(MyCalc)));
//!
//!     let client = CalcClient::connect(addr).await?;
//!     assert_eq!(client.add(2, 3).await?, 5);
//!     assert_eq!(client.div(1, 0).await?, Err(DivideByZero));
//!     Ok(())
//! }
//! ```
//!
//! The pieces:
//! - [`macro@service`]: the attribute macro; see its documentation for what it generates.
//! - [`Server`] and [`ServerBuilder`]: listen on TCP or a Unix socket, or serve one stream.
//! - [`ClientBuilder`] and [`Channel`]: connect a generated client; [`Channel`] is the shared,
//!   multiplexed connection inside it.
//! - [`RpcError`]: the one error every call returns.
//! - `tls` (with the `tls` feature): calls between machines over TLS and mutual TLS.
//! - Every call has a `tracing` span on each side (`rpc.call`, with OpenTelemetry's RPC fields),
//!   and with the `metrics` feature, calls, durations, calls in flight, connections, bytes,
//!   retries and reconnections are recorded through the `metrics` facade (the README lists
//!   the metrics); with the `opentelemetry` feature, calls carry W3C trace context, and the
//!   server's span continues the client's trace.
//!
//! The bytes on the wire are described in `docs/wire.md` of the repository.

// The health service is written with the crate's own attribute, whose code names `::rpc_core`.
extern crate self as rpc_core;

mod alarm;
mod client;
mod context;
#[cfg(feature = "dns")]
pub mod dns;
pub mod dynamic;
mod error;
pub mod health;
mod intercept;
mod metadata;
mod payload;
mod peer;
mod peer_process;
mod protocol;
mod reverse;
pub mod schema;
mod server;
mod service;
mod slots;
mod socket;
mod status;
mod stream;
mod task;
mod telemetry;
#[cfg(test)]
mod test_sockets;
#[cfg(feature = "tls")]
pub mod tls;
mod transport;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use client::{
    CallerPool, Channel, ClientBuilder, EndpointState, EndpointStatus, ServerAddr, ServiceClient,
};
pub use context::Context;
pub use error::RpcError;
pub use metadata::Metadata;
pub use payload::Payload;
pub use peer::{PeerCredentials, PeerIdentity};
pub use protocol::{CodecError, DEFAULT_MAX_FRAME_LEN};
#[cfg(feature = "tower")]
pub use server::middleware;
pub use server::{Server, ServerBuilder, ServiceSet, Services, serve_connection};
pub use service::{DecodeError, MethodInfo, Service, ServiceInfo};
pub use status::{Status, StatusCode};
pub use stream::{StreamClosed, StreamSender, Streaming};

/// The README's example, compiled as a doctest so that it keeps matching the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

pub use rpc_macros::service;
