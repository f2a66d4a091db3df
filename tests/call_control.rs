//! Deadlines, cancellation, and what a handler knows of its call, over real TCP.

use std::time::Duration;

use rpc_core::{Context, RpcError, Server, ServiceClient};
use rpc_tests::{
    LabClient, LabImpl, RawClient, lab_hello, lab_methods, loopback_listener, read_varint,
    request_with_timeout, start_tcp_with, string, within,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn lab() -> (
    LabClient,
    std::sync::Arc<rpc_tests::Probe>,
    std::net::SocketAddr,
) {
    let lab = LabImpl::default();
    let probe = lab.probe();
    let addr = start_tcp_with(Server::builder(), lab).await;
    let client = LabClient::connect(addr).await.expect("connects");
    (client, probe, addr)
}

/// The client's side of a deadline, apart from the server's: against a server that never
/// answers, the call fails at its deadline and the client tells the server to drop it.
#[tokio::test]
async fn a_call_past_its_deadline_fails_and_the_client_cancels_it() {
    let (listener, addr) = loopback_listener().await;
    let deaf_server = tokio::spawn(async move {
        let (mut raw, _) = RawClient::accept(&listener).await;
        raw.send(&lab_hello(lab_methods(), 0, 0)).await;
        let call = raw.read_frame().await.expect("the request");
        let cancel = raw.read_frame().await.expect("the cancellation");
        (call, cancel)
    });
    let client = LabClient::connect(addr).await.expect("connects");
    let short = client.with_deadline(Duration::from_millis(100));
    match within("a call with a deadline", short.hold("late".into())).await {
        Err(RpcError::DeadlineExceeded { method, deadline }) => {
            assert_eq!(method, "hold");
            assert_eq!(deadline, Duration::from_millis(100));
        }
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    let (call, cancel) = within("the server's view", deaf_server)
        .await
        .expect("joins");
    assert_eq!(call[..2], [0x01, 0x00], "request 0");
    assert_eq!(cancel, [0x03, 0x00], "Cancel of request 0");
    // The deadline was the handle's; the client it came from keeps its own.
    assert_eq!(client.channel().deadline(), Duration::from_secs(30));
}

/// A client over an in-memory pipe to a server that runs `max_concurrent_calls` calls at a time
/// (0: any number) and never answers: the payloads of the frames the client sends after its
/// hello come out of the receiver; the task ends when the client is gone.
async fn deaf_server(
    max_concurrent_calls: u32,
) -> (
    LabClient,
    tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    tokio::task::JoinHandle<()>,
) {
    let (pipe, mut server) = tokio::io::duplex(64 * 1024);
    let (requests, requested) = tokio::sync::mpsc::unbounded_channel();
    let deaf_server = tokio::spawn(async move {
        let mut hello = true;
        while let Ok(len) = server.read_u32().await {
            let mut payload = vec![0; len as usize];
            server
                .read_exact(&mut payload)
                .await
                .expect("a whole frame");
            if std::mem::take(&mut hello) {
                let hello = lab_hello(lab_methods(), 0, max_concurrent_calls);
                server.write_all(&hello).await.expect("the hello");
            } else {
                let _ = requests.send(payload);
            }
        }
    });
    let client = LabClient::builder()
        .disable_keepalive()
        .connect_stream(pipe)
        .await
        .expect("connects");
    (client, requested, deaf_server)
}

/// What is left of its deadline, in milliseconds, as the next request sent says, which must be
/// request `id`, of `hold`: after its id comes its method's name, then that.
async fn deadline_sent(
    requested: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    id: u8,
) -> u64 {
    let request = within("a request", requested.recv()).await.expect("sent");
    assert_eq!(request[..2], [0x01, id], "request {id}");
    let name = string("hold");
    assert_eq!(request[2..2 + name.len()], name[..], "a request of hold");
    read_varint(&request[2 + name.len()..]).0
}

/// A request tells the server what is left of its call's deadline when it is sent: all of it
/// for a call sent at once, less for one that waited for a slot. Under paused time, over an
/// in-memory pipe to a server that runs one call at a time and never answers.
#[tokio::test(start_paused = true)]
async fn a_request_carries_what_is_left_of_its_deadline() {
    let (client, mut requested, deaf_server) = deaf_server(1).await;
    // A call of `hold`, which the server never answers, with `deadline`, in a task of its own.
    let hold_for = |deadline: Duration| {
        let call = client.with_deadline(deadline);
        tokio::spawn(async move { call.hold("held".into()).await })
    };
    let short = hold_for(Duration::from_secs(2));
    let left = deadline_sent(&mut requested, 0).await;
    assert_eq!(left, 2000, "sent at once: all of its deadline");
    // The server runs one call at a time: the next call waits for the first's slot, which its
    // deadline frees after 2 s.
    let long = hold_for(Duration::from_secs(10));
    let cancel = within("the first call's cancellation", requested.recv())
        .await
        .expect("sent");
    assert_eq!(cancel, [0x03, 0x00], "Cancel of request 0");
    assert!(matches!(
        short.await.expect("joins"),
        Err(RpcError::DeadlineExceeded { .. })
    ));
    let left = deadline_sent(&mut requested, 1).await;
    assert_eq!(left, 8000, "2 s of its 10 spent waiting for a slot");
    long.abort();
    drop(client);
    let _ = deaf_server.await;
}

/// Each call's deadline is its own, though one timer watches all of a connection's: a call with
/// a short deadline, made after one with the default 30 s, fails at its own deadline while the
/// other still waits. Under paused time, over an in-memory pipe to a server that never answers.
#[tokio::test(start_paused = true)]
async fn a_short_deadline_behind_a_long_one_passes_first() {
    let (client, mut requested, deaf_server) = deaf_server(0).await;
    let long = tokio::spawn({
        let client = client.clone();
        async move { client.hold("long".into()).await }
    });
    let first = within("the long call's request", requested.recv())
        .await
        .expect("sent");
    assert_eq!(first[..2], [0x01, 0x00], "request 0");
    let start = tokio::time::Instant::now();
    let short = client.with_deadline(Duration::from_millis(100));
    assert!(matches!(
        within("the short call", short.hold("short".into())).await,
        Err(RpcError::DeadlineExceeded { .. })
    ));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_secs(1),
        "the short call failed after {waited:?}"
    );
    assert!(!long.is_finished(), "the long call still waits");
    let second = within("the short call's request", requested.recv())
        .await
        .expect("sent");
    assert_eq!(second[..2], [0x01, 0x01], "request 1");
    let cancel = within("its cancellation", requested.recv())
        .await
        .expect("sent");
    assert_eq!(cancel, [0x03, 0x01], "Cancel of request 1");
    long.abort();
    deaf_server.abort();
}

/// The server's side of a deadline, apart from the client's: the deadline travels with the
/// request, and the server enforces it without any Cancel (a raw client sends none).
#[tokio::test]
async fn the_server_drops_a_handler_at_the_deadline_the_request_carries() {
    let (_, probe, addr) = lab().await;
    let mut raw = RawClient::handshake(addr).await;
    raw.send(&request_with_timeout(9, "hold", 50, &string("raw")))
        .await;
    assert_eq!(probe.next_event().await, "started raw");
    assert_eq!(probe.next_event().await, "dropped raw");
    let answer = within("the answer", raw.read_frame())
        .await
        .expect("answered");
    // Response, id 9, Err, code 6: deadline exceeded.
    assert_eq!(answer[..4], [0x02, 0x09, 0x01, 0x06]);
}

#[tokio::test]
async fn dropping_a_call_drops_its_handler_on_the_server() {
    let (client, probe, _) = lab().await;
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.hold("cancelled".into()).await }
    });
    assert_eq!(probe.next_event().await, "started cancelled");
    call.abort();
    assert_eq!(
        probe.next_event().await,
        "dropped cancelled",
        "the handler, which would run 10 s, was dropped when the call was"
    );
    assert_eq!(client.add(2, 2).await.expect("same connection"), 4);
}

#[tokio::test]
async fn a_call_dropped_after_a_timeout_on_the_client_is_cancelled_too() {
    let (client, probe, _) = lab().await;
    let gave_up =
        tokio::time::timeout(Duration::from_millis(100), client.hold("timed out".into())).await;
    assert!(gave_up.is_err(), "the caller's own timeout fired");
    assert_eq!(probe.next_event().await, "started timed out");
    assert_eq!(probe.next_event().await, "dropped timed out");
}

#[tokio::test]
async fn a_handler_reads_its_calls_context() {
    let lab = LabImpl::default();
    let addr = start_tcp_with(Server::builder(), lab).await;
    let client = LabClient::builder()
        .metadata("authorization", "Bearer s3cr3t")
        .metadata("tenant", "a")
        .deadline(Duration::from_secs(20))
        .connect(addr)
        .await
        .expect("connects");

    let channel = client.channel().with_metadata("tenant", "b");
    assert_eq!(channel.metadata().get_str("tenant"), Some("b"));
    assert_eq!(
        client.channel().metadata().get_str("authorization"),
        Some("Bearer s3cr3t")
    );
    let info = client
        .with_metadata("trace-id", [0xab, 0xcd])
        .with_metadata("tenant", "b")
        .whoami()
        .await
        .expect("whoami");
    assert_eq!(info.method, "whoami");
    assert_eq!(
        info.metadata,
        [
            ("authorization".to_owned(), b"Bearer s3cr3t".to_vec()),
            ("tenant".to_owned(), b"b".to_vec()),
            ("trace-id".to_owned(), vec![0xab, 0xcd]),
        ],
        "per-client metadata, with per-call entries added and overriding"
    );
    let left = info.deadline_left_ms.expect("every call has a deadline");
    assert!(left <= 20_000 && left > 0, "{left} ms left of 20 s");
    let peer = info.peer.expect("a TCP peer has an address");
    assert!(peer.ip().is_loopback());
    assert_ne!(
        peer.port(),
        addr.port(),
        "the client's port, not the server's"
    );

    let again = client.whoami().await.expect("whoami");
    assert_ne!(
        again.request_id, info.request_id,
        "each call has its own id"
    );
    assert_eq!(
        again.metadata.len(),
        2,
        "per-call metadata stayed with its handle"
    );
}

#[test]
fn there_is_no_context_outside_a_handler() {
    assert!(Context::try_current().is_none());
}
