//! Keep-alive: a peer that goes silent without closing the connection is detected on both
//! sides, and an idle but healthy connection stays up.

use std::time::Duration;

use rpc_core::{RpcError, Server, ServiceClient};
use rpc_tests::{
    LabClient, LabImpl, RawClient, frame, loopback_listener, start_tcp_with, string, varint, within,
};

const INTERVAL: Duration = Duration::from_millis(50);
const TIMEOUT: Duration = Duration::from_millis(200);

/// A hello that announces `ping_interval_ms` and then never pings.
fn lying_hello(methods: &[rpc_core::MethodInfo], ping_interval_ms: u64) -> Vec<u8> {
    let mut payload = vec![0x00];
    payload.extend_from_slice(b"rpcc");
    payload.extend(varint(1));
    payload.extend(varint(1 << 20));
    payload.extend(string("Lab"));
    payload.extend(varint(methods.len() as u64));
    for method in methods {
        payload.extend(string(method.name));
        payload.extend(varint(method.fingerprint));
    }
    payload.extend(varint(ping_interval_ms));
    payload.extend(varint(0));
    frame(&payload)
}

#[tokio::test]
async fn a_client_detects_a_server_gone_silent_and_fails_its_calls() {
    let (listener, addr) = loopback_listener().await;
    let silent_server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accepts");
        let mut raw = RawClient { stream };
        raw.read_frame().await.expect("the client's hello");
        raw.send(&lying_hello(LabClient::INFO.methods, 50)).await;
        // Hold the connection open and say nothing, like a machine that vanished.
        raw.read_frame().await;
        raw
    });
    let client = LabClient::builder()
        .keepalive(INTERVAL, TIMEOUT)
        .connect(addr)
        .await
        .expect("connects");
    match within("a call to a silent server", client.add(1, 2)).await {
        Err(RpcError::Interrupted { cause, .. }) => {
            assert!(
                matches!(*cause, RpcError::KeepaliveTimeout(silence) if silence == TIMEOUT),
                "{cause}"
            );
        }
        other => panic!("expected Interrupted by the keep-alive timeout, got {other:?}"),
    }
    assert!(client.channel().is_closed());
    silent_server.abort();
}

#[tokio::test]
async fn a_server_closes_the_connection_of_a_client_gone_silent() {
    let addr = start_tcp_with(
        Server::builder().keepalive(INTERVAL, TIMEOUT),
        LabImpl::default(),
    )
    .await;
    let mut raw = RawClient::connect(addr).await;
    raw.send(&lying_hello(&[], 50)).await;
    let hello = within("the server's hello", raw.read_frame())
        .await
        .expect("a hello");
    assert_eq!(hello[..5], *b"\x00rpcc");
    within("the server to give up", async {
        while let Some(frame) = raw.read_frame().await {
            assert_eq!(frame, [0x04], "only pings until the server closes");
        }
    })
    .await;
}

#[tokio::test]
async fn an_idle_healthy_connection_stays_up() {
    // Pings every 50 ms against a silence limit of 500 ms: without pings the connection would
    // be dropped four times over in the 2 s below; with them it lives, even on a busy machine.
    let addr = start_tcp_with(
        Server::builder().keepalive(Duration::from_millis(50), Duration::from_millis(500)),
        LabImpl::default(),
    )
    .await;
    let client = LabClient::builder()
        .keepalive(Duration::from_millis(50), Duration::from_millis(500))
        .connect(addr)
        .await
        .expect("connects");
    // The scenario itself, not a synchronisation: four times the silence limit with no call.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!client.channel().is_closed());
    assert_eq!(client.add(1, 2).await.expect("still connected"), 3);
}
