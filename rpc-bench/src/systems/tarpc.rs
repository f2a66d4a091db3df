//! tarpc 0.38, bincode over TCP, as its documentation sets it up.

use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_bytes::ByteBuf;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::{client, context};

use super::System;

#[tarpc::service]
pub trait Bench {
    async fn add(a: u64, b: u64) -> u64;
    async fn add_awaiting(a: u64, b: u64) -> u64;
    async fn echo_vec(bytes: Vec<u8>) -> Vec<u8>;
    async fn echo_buf(bytes: ByteBuf) -> ByteBuf;
    async fn echo_shared(bytes: Bytes) -> Bytes;
}

#[derive(Clone)]
struct Impl;

impl Bench for Impl {
    async fn add(self, _: context::Context, a: u64, b: u64) -> u64 {
        a.wrapping_add(b)
    }
    async fn add_awaiting(self, _: context::Context, a: u64, b: u64) -> u64 {
        super::handler_awaits().await;
        a.wrapping_add(b)
    }
    async fn echo_vec(self, _: context::Context, bytes: Vec<u8>) -> Vec<u8> {
        bytes
    }
    async fn echo_buf(self, _: context::Context, bytes: ByteBuf) -> ByteBuf {
        bytes
    }
    async fn echo_shared(self, _: context::Context, bytes: Bytes) -> Bytes {
        bytes
    }
}

/// tarpc 0.38. It has no streaming calls.
#[derive(Debug)]
pub struct Tarpc;

impl System for Tarpc {
    const NAME: &str = "tarpc";
    type Client = BenchClient;
    type Shared = Bytes;

    async fn serve(bind: SocketAddr) -> Result<SocketAddr, String> {
        let mut listener = tarpc::serde_transport::tcp::listen(bind, Bincode::default)
            .await
            .map_err(|error| format!("cannot listen on {bind}: {error}"))?;
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
        Ok(addr)
    }

    async fn connect(addr: SocketAddr) -> BenchClient {
        let mut connecting = tarpc::serde_transport::tcp::connect(addr, Bincode::default);
        connecting.config_mut().max_frame_length(64 << 20);
        let transport = connecting.await.expect("connects");
        let _ = transport.get_ref().set_nodelay(true);
        BenchClient::new(client::Config::default(), transport).spawn()
    }

    fn share(client: &BenchClient) -> Option<BenchClient> {
        Some(client.clone())
    }

    async fn add(client: &mut BenchClient, a: u64, b: u64) -> u64 {
        client.add(context::current(), a, b).await.expect("add")
    }

    async fn add_awaiting(client: &mut BenchClient, a: u64, b: u64) -> u64 {
        let answer = client.add_awaiting(context::current(), a, b).await;
        answer.expect("add_awaiting")
    }

    async fn echo_vec(client: &mut BenchClient, bytes: Vec<u8>) -> Vec<u8> {
        let answer = client.echo_vec(context::current(), bytes).await;
        answer.expect("echo")
    }

    async fn echo_buf(client: &mut BenchClient, bytes: ByteBuf) -> ByteBuf {
        let answer = client.echo_buf(context::current(), bytes).await;
        answer.expect("echo")
    }

    async fn echo_shared(client: &mut BenchClient, bytes: Bytes) -> Bytes {
        let answer = client.echo_shared(context::current(), bytes).await;
        answer.expect("echo")
    }

    async fn count(_: &mut BenchClient, _: u64) -> Option<u64> {
        None
    }
}
