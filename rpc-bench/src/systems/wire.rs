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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::System;
use super::raw::{self, Append, PREFIX, RawClient};
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

/// The deadline each call carries, as a channel's default deadline of 30 s does.
const TIMEOUT_MS: u64 = 30_000;

/// The largest frame this client accepts, as the benchmark's rpc-core clients do.
const MAX_FRAME_LEN: u64 = 64 << 20;

/// The stream window this client announces: rpc-core's default (it reads no streams).
const STREAM_WINDOW: u64 = 1 << 20;

/// Appends `value` as a varint.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends `text` as a postcard string.
fn put_string(out: &mut Vec<u8>, text: &str) {
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

/// Writes the payload's length into the prefix of the frame that starts at `start`.
fn seal(out: &mut [u8], start: usize) {
    let len = u32::try_from(out.len() - start - PREFIX).expect("a frame under 4 GiB");
    out[start..start + PREFIX].copy_from_slice(&len.to_be_bytes());
}

/// This client's hello: the benchmark's service, no methods of its own, no pings.
fn hello() -> Vec<u8> {
    let mut out = vec![0; PREFIX];
    out.push(HELLO);
    out.extend_from_slice(b"rpcc");
    put_varint(&mut out, 2);
    put_varint(&mut out, MAX_FRAME_LEN);
    put_string(&mut out, "Bench");
    put_varint(&mut out, 0); // methods
    put_varint(&mut out, 0); // ping interval
    put_varint(&mut out, 0); // max concurrent calls: a client's
    put_varint(&mut out, STREAM_WINDOW);
    seal(&mut out, 0);
    out
}

/// Reads a varint at the start of `bytes`: its value and the bytes after it.
fn take_varint(bytes: &[u8]) -> (u64, &[u8]) {
    let mut value = 0;
    for (at, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * at);
        if byte & 0x80 == 0 {
            return (value, &bytes[at + 1..]);
        }
    }
    panic!("the server sent a varint longer than ten bytes");
}

/// The result in the payload of the answer to call `id`: a Response, of that id, `Ok`.
fn result_of<R: DeserializeOwned>(payload: &[u8], id: u64) -> R {
    let Some((&RESPONSE, head)) = payload.split_first() else {
        panic!("the server sent a frame other than the answer: {payload:02x?}");
    };
    let (answered, outcome) = take_varint(head);
    assert_eq!(answered, id, "the answer is to the call made");
    match outcome.split_first() {
        Some((0x00, body)) => postcard::from_bytes(body).expect("the result decodes"),
        _ => panic!("the call failed: {outcome:02x?}"),
    }
}

impl WireClient {
    /// Calls `method` of the connection's service with `args`, an argument tuple.
    async fn call<A: Serialize, R: DeserializeOwned>(&mut self, method: &str, args: &A) -> R {
        let id = self.next_id;
        self.next_id += 1;
        self.connection
            .send_frame(|out| {
                out.extend_from_slice(&[0; PREFIX]);
                out.push(REQUEST);
                put_varint(out, id);
                put_string(out, method);
                put_varint(out, TIMEOUT_MS);
                put_varint(out, 0); // metadata
                postcard::serialize_with_flavor(args, Append(out)).expect("encodes");
                seal(out, 0);
            })
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
        let mut stream = TcpStream::connect(addr).await.expect("connects");
        stream.set_nodelay(true).expect("nodelay");
        stream.write_all(&hello()).await.expect("sends its hello");
        // The server's hello, whose method table this client does not check.
        let mut prefix = [0; PREFIX];
        stream.read_exact(&mut prefix).await.expect("a hello back");
        let mut theirs = vec![0; u32::from_be_bytes(prefix) as usize];
        stream.read_exact(&mut theirs).await.expect("a hello back");
        assert_eq!(theirs.get(..5), Some(&b"\x00rpcc"[..]), "an rpc-core hello");
        let elsewhere = raw::runs_elsewhere(&raw::SERVER_ENDS, addr);
        WireClient {
            connection: RawClient::over(stream, elsewhere),
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
