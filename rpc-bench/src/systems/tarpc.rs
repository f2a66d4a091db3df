//! tarpc, bincode over TCP, as its documentation sets it up.

use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::StreamExt;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::{client, context};

use super::System;

#[tarpc::service]
pub trait Bench {
    async fn add(a: u64, b: u64) -> u64;
    async fn echo_vec(bytes: Vec<u8>) -> Vec<u8>;
    async fn echo_bytes(bytes: Bytes) -> Bytes;
}

#[derive(Clone)]
struct Impl;

impl Bench for Impl {
    async fn add(self, _: context::Context, a: u64, b: u64) -> u64 {
        a.wrapping_add(b)
    }
    async fn echo_vec(self, _: context::Context, bytes: Vec<u8>) -> Vec<u8> {
        bytes
    }
    async fn echo_bytes(self, _: context::Context, bytes: Bytes) -> Bytes {
        bytes
    }
}

/// tarpc 0.38.
pub struct Tarpc;

impl System for Tarpc {
    type Client = BenchClient;
    type Buf = Bytes;

    async fn serve() -> SocketAddr {
        let mut listener = tarpc::serde_transport::tcp::listen("127.0.0.1:0", Bincode::default)
            .await
            .expect("binds");
        listener.config_mut().max_frame_length(64 << 20);
        let addr = listener.local_addr();
        tokio::spawn(async move {
            while let Some(Ok(transport)) = listener.next().await {
                let _ = transport.get_ref().set_nodelay(true);
                let channel = BaseChannel::with_defaults(transport);
                tokio::spawn(channel.execute(Impl.serve()).for_each(|call| async move {
                    tokio::spawn(call);
                }));
            }
        });
        addr
    }

    async fn connect(addr: SocketAddr) -> BenchClient {
        let mut connecting = tarpc::serde_transport::tcp::connect(addr, Bincode::default);
        connecting.config_mut().max_frame_length(64 << 20);
        let transport = connecting.await.expect("connects");
        let _ = transport.get_ref().set_nodelay(true);
        BenchClient::new(client::Config::default(), transport).spawn()
    }

    async fn add(client: &BenchClient, a: u64, b: u64) -> u64 {
        client.add(context::current(), a, b).await.expect("add")
    }

    async fn echo_vec(client: &BenchClient, bytes: Vec<u8>) -> Vec<u8> {
        client
            .echo_vec(context::current(), bytes)
            .await
            .expect("echo")
    }

    async fn echo_bytes(client: &BenchClient, bytes: Bytes) -> Bytes {
        client
            .echo_bytes(context::current(), bytes)
            .await
            .expect("echo")
    }
}
