//! rpc-core.

use std::net::SocketAddr;

use rpc_core::Payload;

use super::System;

#[rpc_core::service]
pub trait Bench {
    async fn add(&self, a: u64, b: u64) -> u64;
    async fn echo_vec(&self, bytes: Vec<u8>) -> Vec<u8>;
    async fn echo_bytes(&self, bytes: Payload) -> Payload;
}

struct Impl;

impl Bench for Impl {
    async fn add(&self, a: u64, b: u64) -> u64 {
        a.wrapping_add(b)
    }
    async fn echo_vec(&self, bytes: Vec<u8>) -> Vec<u8> {
        bytes
    }
    async fn echo_bytes(&self, bytes: Payload) -> Payload {
        bytes
    }
}

/// rpc-core with its defaults.
pub struct RpcCore;

impl System for RpcCore {
    type Client = BenchClient;
    type Buf = Payload;

    async fn serve() -> SocketAddr {
        let server = rpc_core::Server::builder()
            .max_frame_len(64 << 20)
            .bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = server.local_addr().expect("address");
        tokio::spawn(server.serve(BenchServer::new(Impl)));
        addr
    }

    async fn connect(addr: SocketAddr) -> BenchClient {
        BenchClient::builder()
            .max_frame_len(64 << 20)
            .connect(addr)
            .await
            .expect("connects")
    }

    async fn add(client: &BenchClient, a: u64, b: u64) -> u64 {
        client.add(a, b).await.expect("add")
    }

    async fn echo_vec(client: &BenchClient, bytes: Vec<u8>) -> Vec<u8> {
        client.echo_vec(bytes).await.expect("echo")
    }

    async fn echo_bytes(client: &BenchClient, bytes: Payload) -> Payload {
        client.echo_bytes(bytes).await.expect("echo")
    }
}
