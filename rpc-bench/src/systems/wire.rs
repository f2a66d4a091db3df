//! rpc-core's server, called by a client written by hand from docs/wire.md the way the raw
//! floor's client is written ([`RawClient`]): one call at a time on a connection it owns, each
//! request encoded into one reused buffer and sent with one write, each answer decoded where it
//! was read, polling for it as the floor does. It matches no ids to waiting calls and keeps no
//! deadline, no cancellation and no limit: it is not a client users could run, but a probe.
//!
//! Measured beside the floor and rpc-core, it splits what a sequential call of rpc-core costs
//! beyond the floor's between rpc-core's two ends: this system's p50 less the floor's is what
//! rpc-core's server adds (with the few bytes of a request's and an answer's heads), and
//! rpc-core's p50 less this system's is what rpc-core's client adds (BENCHMARKS.md,
//! *Profiling*). Its echoes copy each byte string into the request and out of the answer, and
//! it reads no streams: only its sequential figures are of use.

use std::net::SocketAddr;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;
use tokio::net::TcpStream;

use super::System;
use super::raw::{self, RawClient};
use super::rpc::RpcCore;

/// rpc-core's server, with a client of its protocol written by hand as the floor's is.
#[derive(Debug)]
pub struct RpcCoreRawClient;

/// One connection of the hand-written client, and the id of its next call.
#[derive(Debug)]
pub struct WireClient {
    connection: RawClient,
    next_id: u64,
}

/// The kinds of frame this client sends and reads (docs/wire.md, section 4).
const HELLO: u8 = 0x00;
const REQUEST: u8 = 0x01;
const RESPONSE: u8 = 0x02;

/// The protocol version this client speaks.
const VERSION: u32 = 2;

/// The deadline each call carries, as a channel's default deadline of 30 s does.
const TIMEOUT_MS: u64 = 30_000;

/// The largest frame this client accepts, as the benchmark's rpc-core clients do.
const MAX_FRAME_LEN: u32 = 64 << 20;

/// The stream window this client announces: rpc-core's default (it reads no streams).
const STREAM_WINDOW: u32 = 1 << 20;

/// A method table or metadata with no entries: a count of 0.
const NONE: &[(&str, u64)] = &[];

/// The result in the payload of the answer to call `id`: a Response, of that id, `Ok`.
fn result_of<R: DeserializeOwned>(payload: &[u8], id: u64) -> R {
    let ((kind, answered, outcome), body) = postcard::take_from_bytes::<(u8, u64, u8)>(payload)
        .unwrap_or_else(|error| panic!("an answer's head, not {payload:02x?}: {error}"));
    assert_eq!(
        kind, RESPONSE,
        "the server sent a frame other than the answer"
    );
    assert_eq!(answered, id, "the answer is to the call made");
    assert_eq!(outcome, 0x00, "the call failed: {body:02x?}");
    postcard::from_bytes(body).expect("the result decodes")
}

impl WireClient {
    /// Calls `method` of the connection's service with `args`, an argument tuple: a request's
    /// head is its id, the method's name, its timeout and its metadata (none), in postcard,
    /// and its arguments follow (docs/wire.md, sections 4 and 6).
    async fn call<A: Serialize, R: DeserializeOwned>(&mut self, method: &str, args: &A) -> R {
        let id = self.next_id;
        self.next_id += 1;
        let request = (id, method, TIMEOUT_MS, NONE, args);
        self.connection
            .send_frame(|out| raw::encode(out, Some(REQUEST), &request))
            .await;
        self.connection
            .receive_with(|payload| result_of(payload, id))
            .await
    }
}

impl System for RpcCoreRawClient {
    const NAME: &str = "rpc-core-raw-client";
    type Client = WireClient;
    type Shared = Bytes;

    async fn serve(bind: SocketAddr) -> Result<SocketAddr, String> {
        let addr = RpcCore::serve(bind).await?;
        raw::add_end(&raw::SERVER_ENDS, addr);
        Ok(addr)
    }

    async fn connect(addr: SocketAddr) -> WireClient {
        let stream = TcpStream::connect(addr).await.expect("connects");
        stream.set_nodelay(true).expect("nodelay");
        let elsewhere = raw::runs_elsewhere(&raw::SERVER_ENDS, addr);
        let mut connection = RawClient::over(stream, elsewhere);
        // The benchmark's service, no methods of its own, no pings, no limit (docs/wire.md,
        // section 5); the server's hello, whose method table this client does not check.
        let hello = (
            *b"rpcc",
            VERSION,
            MAX_FRAME_LEN,
            "Bench",
            NONE,
            0u64,
            0u32,
            STREAM_WINDOW,
        );
        connection
            .send_frame(|out| raw::encode(out, Some(HELLO), &hello))
            .await;
        connection
            .receive_with(|theirs| {
                assert_eq!(theirs.get(..5), Some(&b"\x00rpcc"[..]), "an rpc-core hello");
            })
            .await;
        WireClient {
            connection,
            next_id: 0,
        }
    }

    fn share(_: &WireClient) -> Option<WireClient> {
        None
    }

    async fn add(client: &mut WireClient, a: u64, b: u64) -> u64 {
        client.call("add", &(a, b)).await
    }

    async fn add_awaiting(client: &mut WireClient, a: u64, b: u64) -> u64 {
        client.call("add_awaiting", &(a, b)).await
    }

    async fn echo_vec(client: &mut WireClient, bytes: Vec<u8>) -> Vec<u8> {
        let back: ByteBuf = client.call("echo_vec", &(ByteBuf::from(bytes),)).await;
        back.into_vec()
    }

    async fn echo_buf(client: &mut WireClient, bytes: ByteBuf) -> ByteBuf {
        client.call("echo_buf", &(bytes,)).await
    }

    async fn echo_shared(client: &mut WireClient, bytes: Bytes) -> Bytes {
        let back: ByteBuf = client
            .call("echo_shared", &(serde_bytes::Bytes::new(&bytes),))
            .await;
        Bytes::from(back.into_vec())
    }

    async fn count(_: &mut WireClient, _: u64) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written client's calls reach rpc-core's server and come back right: its
    /// requests and its reading of the answers follow docs/wire.md.
    #[test]
    fn the_hand_written_client_calls_rpc_cores_server() {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        runtime.block_on(async {
            let addr = RpcCoreRawClient::serve("127.0.0.1:0".parse().expect("an address"))
                .await
                .expect("serves");
            let mut client = RpcCoreRawClient::connect(addr).await;
            assert_eq!(RpcCoreRawClient::add(&mut client, 2, 3).await, 5);
            assert_eq!(
                RpcCoreRawClient::add(&mut client, 1 << 40, 7).await,
                (1 << 40) + 7
            );
            assert_eq!(RpcCoreRawClient::add_awaiting(&mut client, 4, 5).await, 9);
            let bytes: Vec<u8> = (0..=255).cycle().take(70_000).collect();
            assert_eq!(
                RpcCoreRawClient::echo_vec(&mut client, bytes.clone()).await,
                bytes
            );
            assert_eq!(
                RpcCoreRawClient::echo_buf(&mut client, ByteBuf::from(bytes.clone())).await,
                bytes
            );
            assert_eq!(
                RpcCoreRawClient::echo_shared(&mut client, Bytes::from(bytes.clone())).await,
                bytes
            );
            assert_eq!(RpcCoreRawClient::count(&mut client, 3).await, None);
        });
    }
}
