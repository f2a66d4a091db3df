//! rpc-core, with its defaults but a frame limit that fits the 1 MiB echoes with room to spare
//! (and, as [`RpcCoreNoBusyPoll`] and its one-ended kin, busy polling off at either end or
//! both; as [`RpcCoreFourConnections`], a client over four connections).

use std::net::SocketAddr;
use std::time::Duration;

use rpc_core::tls::{ClientTls, ServerTls};
use rpc_core::{Payload, Streaming};
use serde_bytes::ByteBuf;

use super::{System, certs};

#[rpc_core::service]
pub trait Bench {
    async fn add(&self, a: u64, b: u64) -> u64;
    async fn add_awaiting(&self, a: u64, b: u64) -> u64;
    async fn echo_vec(&self, bytes: Vec<u8>) -> Vec<u8>;
    async fn echo_buf(&self, bytes: ByteBuf) -> ByteBuf;
    async fn echo_shared(&self, bytes: Payload) -> Payload;
    async fn count(&self, items: u64) -> Streaming<u64>;
    async fn chunks(&self, size: u64, count: u64) -> Streaming<Payload>;
}

struct Impl;

impl Bench for Impl {
    async fn add(&self, a: u64, b: u64) -> u64 {
        a.wrapping_add(b)
    }
    async fn add_awaiting(&self, a: u64, b: u64) -> u64 {
        super::handler_awaits().await;
        a.wrapping_add(b)
    }
    async fn echo_vec(&self, bytes: Vec<u8>) -> Vec<u8> {
        bytes
    }
    async fn echo_buf(&self, bytes: ByteBuf) -> ByteBuf {
        bytes
    }
    async fn echo_shared(&self, bytes: Payload) -> Payload {
        bytes
    }
    async fn count(&self, items: u64) -> Streaming<u64> {
        Streaming::iter(0..items)
    }
    async fn chunks(&self, size: u64, count: u64) -> Streaming<Payload> {
        // One chunk's memory, sent again and again: the stream's cost, not the source's.
        let chunk = Payload::from(vec![7u8; usize::try_from(size).unwrap_or(0)]);
        Streaming::iter((0..count).map(move |_| chunk.clone()))
    }
}

/// A client of the benchmark's service in this process: `BenchClient::local`.
pub fn local_client() -> BenchClient {
    BenchClient::local(Impl)
}

/// rpc-core, over plain TCP or, with `TLS`, over TLS with the run's certificates; the ends
/// that `BUSY` names ([`BUSY_SERVER`], [`BUSY_CLIENT`], [`BUSY_BOTH`] or 0) busy poll as they
/// do by default, and the others not at all; a client reaches the server over `CONNECTIONS`
/// connections; with `TOKEN`, every call carries a bearer token in its metadata, which the
/// server's interceptor checks, as a server that authenticates its callers does.
#[derive(Debug)]
pub struct RpcCoreOver<
    const TLS: bool,
    const BUSY: u8,
    const CONNECTIONS: usize,
    const TOKEN: bool = false,
>;

/// The token of `rpc-core-token`'s calls: as long as a typical bearer token's header value.
const TOKEN_VALUE: &str = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl";

/// In `RpcCoreOver`'s `BUSY`: the server busy polls.
pub const BUSY_SERVER: u8 = 1;

/// In `RpcCoreOver`'s `BUSY`: the client busy polls.
pub const BUSY_CLIENT: u8 = 2;

/// In `RpcCoreOver`'s `BUSY`: both ends busy poll.
pub const BUSY_BOTH: u8 = BUSY_SERVER | BUSY_CLIENT;

/// rpc-core over TCP, with its defaults.
pub type RpcCore = RpcCoreOver<false, BUSY_BOTH, 1>;

/// rpc-core over TLS.
pub type RpcCoreTls = RpcCoreOver<true, BUSY_BOTH, 1>;

/// rpc-core over TCP, busy polling off at both ends.
pub type RpcCoreNoBusyPoll = RpcCoreOver<false, 0, 1>;

/// rpc-core over TCP, the server alone busy polling.
pub type RpcCoreBusyServer = RpcCoreOver<false, BUSY_SERVER, 1>;

/// rpc-core over TCP, the client alone busy polling.
pub type RpcCoreBusyClient = RpcCoreOver<false, BUSY_CLIENT, 1>;

/// rpc-core over TCP, one client reaching the server over four connections: its address given
/// four times to `ClientBuilder::balance`, as a user moving large payloads may.
pub type RpcCoreFourConnections = RpcCoreOver<false, BUSY_BOTH, 4>;

/// rpc-core over TCP, every call authenticated: a bearer token in its metadata, checked by the
/// server's interceptor.
pub type RpcCoreToken = RpcCoreOver<false, BUSY_BOTH, 1, true>;

impl<const TLS: bool, const BUSY: u8, const CONNECTIONS: usize, const TOKEN: bool> System
    for RpcCoreOver<TLS, BUSY, CONNECTIONS, TOKEN>
{
    const NAME: &str = match (TLS, BUSY, CONNECTIONS, TOKEN) {
        (false, BUSY_BOTH, 1, false) => "rpc-core",
        (true, BUSY_BOTH, 1, false) => "rpc-core-tls",
        (false, 0, 1, false) => "rpc-core-no-busy-poll",
        (false, BUSY_SERVER, 1, false) => "rpc-core-busy-poll-server",
        (false, BUSY_CLIENT, 1, false) => "rpc-core-busy-poll-client",
        (false, BUSY_BOTH, 4, false) => "rpc-core-4-connections",
        (false, BUSY_BOTH, 1, true) => "rpc-core-token",
        _ => panic!("no name for this rpc-core: name it before measuring it"),
    };
    type Client = BenchClient;
    type Shared = Payload;

    async fn serve(bind: SocketAddr) -> Result<SocketAddr, String> {
        let mut builder = rpc_core::Server::builder().max_frame_len(64 << 20);
        if TLS {
            let certs = certs::certs();
            let tls = ServerTls::from_pem(&certs.server, &certs.key).expect("the certificate");
            builder = builder.tls(tls);
        }
        if BUSY & BUSY_SERVER == 0 {
            builder = builder.busy_poll(Duration::ZERO);
        }
        if TOKEN {
            builder = builder.intercept(|call| match call.metadata().get_str("authorization") {
                Some(TOKEN_VALUE) => Ok(()),
                Some(_) => Err(rpc_core::Status::permission_denied("not this token")),
                None => Err(rpc_core::Status::unauthenticated("no token")),
            });
        }
        let server = builder
            .bind(bind)
            .await
            .map_err(|error| format!("cannot listen on {bind}: {error}"))?;
        let addr = server.local_addr().expect("address");
        tokio::spawn(server.serve(BenchServer::new(Impl)));
        Ok(addr)
    }

    async fn connect(addr: SocketAddr) -> BenchClient {
        let mut builder = BenchClient::builder().max_frame_len(64 << 20);
        if TLS {
            let authority = &certs::certs().authority;
            builder = builder.tls(ClientTls::trusting_pem(authority).expect("the authority"));
        }
        if BUSY & BUSY_CLIENT == 0 {
            builder = builder.busy_poll(Duration::ZERO);
        }
        if TOKEN {
            builder = builder.metadata("authorization", TOKEN_VALUE);
        }
        if CONNECTIONS > 1 {
            return builder.balance([addr; CONNECTIONS]);
        }
        builder.connect(addr).await.expect("connects")
    }

    fn share(client: &BenchClient) -> Option<BenchClient> {
        Some(client.clone())
    }

    async fn add(client: &mut BenchClient, a: u64, b: u64) -> u64 {
        client.add(a, b).await.expect("add")
    }

    async fn add_awaiting(client: &mut BenchClient, a: u64, b: u64) -> u64 {
        client.add_awaiting(a, b).await.expect("add_awaiting")
    }

    async fn echo_vec(client: &mut BenchClient, bytes: Vec<u8>) -> Vec<u8> {
        client.echo_vec(bytes).await.expect("echo")
    }

    async fn echo_buf(client: &mut BenchClient, bytes: ByteBuf) -> ByteBuf {
        client.echo_buf(bytes).await.expect("echo")
    }

    async fn echo_shared(client: &mut BenchClient, bytes: Payload) -> Payload {
        client.echo_shared(bytes).await.expect("echo")
    }

    async fn count(client: &mut BenchClient, items: u64) -> Option<u64> {
        let mut stream = client.count(items).await.expect("a stream");
        let mut received = 0;
        while let Some(item) = stream.next().await {
            assert_eq!(item.expect("an item"), received);
            received += 1;
        }
        Some(received)
    }

    async fn chunks(client: &mut BenchClient, size: u64, count: u64) -> Option<u64> {
        let mut stream = client.chunks(size, count).await.expect("a stream");
        let mut received = 0;
        while let Some(chunk) = stream.next().await {
            received += chunk.expect("a chunk").len() as u64;
        }
        Some(received)
    }
}
