//! Bad input gets a clear error and loses nothing: whatever one client sends, only its own
//! connection or call fails, and every other client keeps being served.

use std::time::Duration;

use rpc_core::{RpcError, Server};
use rpc_tests::{
    ADD_2_3, LabClient, LabImpl, LabServer, RawClient, frame, loopback_listener, request,
    start_tcp, start_tcp_with, varint, within,
};
use tokio::io::AsyncWriteExt;

/// Fails unless the server at `addr` still answers a fresh client.
async fn still_serves(addr: std::net::SocketAddr) {
    let client = within("connecting", LabClient::connect(addr))
        .await
        .expect("connects");
    assert_eq!(within("a call", client.add(1, 1)).await.expect("add"), 2);
}

#[tokio::test]
async fn an_oversized_length_closes_only_that_connection() {
    let addr = start_tcp_with(Server::builder().max_frame_len(1024), LabImpl::default()).await;
    let bystander = LabClient::connect(addr).await.expect("connects");

    let mut before_hello = RawClient::connect(addr).await;
    before_hello.send(&u32::MAX.to_be_bytes()).await;
    within("closing", before_hello.expect_closed()).await;

    let mut after_hello = RawClient::handshake(addr).await;
    after_hello.send(&(1u32 << 30).to_be_bytes()).await;
    after_hello.send(&[0; 64]).await;
    within(
        "closing",
        after_hello.expect_refused("over the limit of 1024 bytes"),
    )
    .await;

    assert_eq!(bystander.add(2, 2).await.expect("bystander's call"), 4);
    still_serves(addr).await;
}

#[tokio::test]
async fn garbage_bytes_close_only_that_connection() {
    let addr = start_tcp().await;
    let mut raw = RawClient::connect(addr).await;
    raw.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    within("closing", raw.expect_closed()).await;

    let mut raw = RawClient::handshake(addr).await;
    raw.send(&frame(&[0x7f, 0xff, 0xff])).await;
    within(
        "closing",
        raw.expect_refused("a frame of kind 0x7f, which the protocol does not have"),
    )
    .await;
    still_serves(addr).await;
}

/// docs/wire.md, section 2: a frame of length 0 has no head, which breaks the protocol.
#[tokio::test]
async fn an_empty_frame_closes_only_that_connection() {
    let addr = start_tcp().await;
    let mut raw = RawClient::handshake(addr).await;
    raw.send(&[0, 0, 0, 0]).await;
    within(
        "closing",
        raw.expect_refused("the client sent an empty frame, which has no head"),
    )
    .await;
    still_serves(addr).await;
}

/// docs/wire.md, section 7: stream frames for an id with no open stream are ignored, and the
/// connection goes on.
#[tokio::test]
async fn stream_frames_for_an_id_with_no_stream_are_ignored() {
    let addr = start_tcp().await;
    let mut raw = RawClient::handshake(addr).await;
    let mut item = vec![0x06, 0x2a];
    item.extend([1, 2, 3]);
    raw.send(&frame(&item)).await; // StreamItem, id 42
    raw.send(&frame(&[0x07, 0x2a, 0x00])).await; // StreamEnd, id 42, Ok
    raw.send(&frame(&[0x08, 0x2a, 0x10])).await; // Credit, id 42, 16 bytes
    raw.send(&request(1, "add", &ADD_2_3)).await;
    let answer = within("the answer", raw.read_frame())
        .await
        .expect("the connection goes on");
    // Response, id 1, Ok, 5 as a zigzag varint.
    assert_eq!(answer, [0x02, 0x01, 0x00, 0x0a]);
}

#[tokio::test]
async fn a_truncated_frame_closes_only_that_connection() {
    let addr = start_tcp().await;
    let mut raw = RawClient::handshake(addr).await;
    let whole = request(1, "add", &ADD_2_3);
    raw.send(&whole[..whole.len() - 2]).await;
    raw.stream.shutdown().await.expect("half-closes");
    within("closing", raw.expect_refused("in the middle of a frame")).await;
    still_serves(addr).await;
}

#[tokio::test]
async fn a_client_sending_a_response_frame_is_disconnected() {
    let addr = start_tcp().await;
    let mut raw = RawClient::handshake(addr).await;
    raw.send(&frame(&[0x02, 0x01, 0x00, 0x0a])).await;
    within(
        "closing",
        raw.expect_refused("a response frame, which only servers send"),
    )
    .await;
    still_serves(addr).await;
}

/// The hello comes once, first: another after the handshake breaks the protocol.
#[tokio::test]
async fn a_second_hello_from_a_client_is_refused() {
    let addr = start_tcp().await;
    let mut raw = RawClient::handshake(addr).await;
    raw.send(&rpc_tests::hello("Lab", rpc_tests::VERSION)).await;
    within(
        "closing",
        raw.expect_refused("the client sent a second hello frame"),
    )
    .await;
    still_serves(addr).await;
}

/// A server of `Nest`, and a raw client of it past the hellos.
async fn nest_and_raw_client() -> (std::net::SocketAddr, RawClient) {
    let addr = rpc_tests::nest::serve().await;
    (addr, rpc_tests::nest::raw_client(addr).await)
}

/// Sends call 1 of `method` with `args` and expects it refused with code 2 (arguments that do
/// not decode): the answer past the code, which ends with the message.
async fn refused_as_call_1(raw: &mut RawClient, method: &str, args: &[u8]) -> String {
    raw.send(&request(1, method, args)).await;
    let answer = within("the answer", raw.read_frame())
        .await
        .expect("answered");
    assert_eq!(answer[..4], [0x02, 0x01, 0x01, 0x02], "code 2: {answer:?}");
    String::from_utf8_lossy(&answer[5..]).into_owned()
}

/// An argument nested deeper than a decoder goes (docs/wire.md, section 3) fails only its
/// call: a million levels in a megabyte would otherwise overflow the stack of the server's
/// thread and abort its process.
#[tokio::test]
async fn an_argument_nested_too_deep_fails_only_that_call() {
    use rpc_tests::nest::{self, Chain, NestClient};
    let (addr, mut raw) = nest_and_raw_client().await;
    let message = refused_as_call_1(&mut raw, "length", &nest::chain_bytes(1_000_000)).await;
    assert!(
        message.ends_with("the value nests deeper than 256 levels"),
        "{message}"
    );
    // The connection, and the server, go on.
    raw.send(&request(2, "length", &nest::chain_bytes(100)))
        .await;
    let answer = within("the next answer", raw.read_frame())
        .await
        .expect("answered");
    assert_eq!(answer, [0x02, 0x02, 0x00, 100]);
    let client = NestClient::connect(addr).await.expect("connects");
    assert_eq!(client.length(Chain::of(3)).await.expect("answered"), 3);
}

/// An argument that claims more items of no bytes than its bytes allow (docs/wire.md, section
/// 3) fails only its call: `Vec<()>` of 2^62 units, in 9 bytes, would otherwise keep the
/// server's thread counting them for ever.
#[tokio::test]
async fn an_argument_claiming_countless_empty_items_fails_only_that_call() {
    use rpc_tests::nest::NestClient;
    let (addr, mut raw) = nest_and_raw_client().await;
    let message = refused_as_call_1(&mut raw, "count", &varint(1 << 62)).await;
    assert!(
        message.ends_with("more items than one a byte and 4096 more: too many items of no bytes"),
        "{message}"
    );
    // The connection, and the server, go on; a few thousand units are a value like any other.
    raw.send(&request(2, "count", &varint(4000))).await;
    let answer = within("the next answer", raw.read_frame())
        .await
        .expect("answered");
    assert_eq!(answer, [0x02, 0x02, 0x00, 0xa0, 0x1f]);
    let client = NestClient::connect(addr).await.expect("connects");
    assert_eq!(client.count(vec![(); 7]).await.expect("answered"), 7);
}

#[tokio::test]
async fn an_unknown_method_fails_only_that_call() {
    let addr = start_tcp().await;
    let mut raw = RawClient::handshake(addr).await;
    raw.send(&request(7, "nope", &[])).await;
    let answer = within("an answer", raw.read_frame())
        .await
        .expect("answered");
    // Response, id 7, Err, code 1 (unknown method), then the message.
    assert_eq!(answer[..4], [0x02, 0x07, 0x01, 0x01]);
    let message = String::from_utf8_lossy(&answer[5..]);
    assert!(
        message.contains("nope"),
        "the message names the method: {message}"
    );

    raw.send(&request(8, "add", &ADD_2_3)).await;
    let answer = within("an answer", raw.read_frame())
        .await
        .expect("answered");
    assert_eq!(
        answer,
        [0x02, 0x08, 0x00, 0x0a],
        "add(2, 3) = 5 on the same connection"
    );
}

#[tokio::test]
async fn undecodable_arguments_fail_only_that_call() {
    let addr = start_tcp().await;
    let mut raw = RawClient::handshake(addr).await;
    raw.send(&request(1, "add", &[0xff])).await;
    let answer = within("an answer", raw.read_frame())
        .await
        .expect("answered");
    assert_eq!(
        answer[..4],
        [0x02, 0x01, 0x01, 0x02],
        "code 2: invalid arguments"
    );

    raw.send(&request(2, "add", &[0x04, 0x06, 0x00])).await;
    let answer = within("an answer", raw.read_frame())
        .await
        .expect("answered");
    assert_eq!(
        answer[..4],
        [0x02, 0x02, 0x01, 0x02],
        "trailing bytes are refused too"
    );

    raw.send(&request(3, "add", &ADD_2_3)).await;
    let answer = within("an answer", raw.read_frame())
        .await
        .expect("answered");
    assert_eq!(answer, [0x02, 0x03, 0x00, 0x0a]);
}

/// A panicking handler fails only its call, and its message stays on the server: the client
/// learns that it panicked, and under which call id the server logged why.
#[tokio::test]
async fn a_panicking_handler_fails_only_that_call_and_keeps_its_message() {
    let addr = start_tcp().await;
    let client = LabClient::connect(addr).await.expect("connects");
    let (panicked, sum) = tokio::join!(client.panic("secret boom".into()), client.add(1, 2));
    match panicked {
        Err(error @ RpcError::HandlerPanicked { .. }) => {
            let text = error.to_string();
            assert!(!text.contains("secret"), "{text}");
            let RpcError::HandlerPanicked {
                method, message, ..
            } = error
            else {
                unreachable!("matched above");
            };
            assert_eq!(method, "panic");
            assert_eq!(message, None);
            assert!(text.contains("(call "), "{text}");
        }
        other => panic!("expected HandlerPanicked, got {other:?}"),
    }
    assert_eq!(sum.expect("the call beside it"), 3);
    assert_eq!(client.add(2, 2).await.expect("the same connection"), 4);
}

/// A server set to expose panic messages sends them.
#[tokio::test]
async fn a_server_may_send_panic_messages() {
    let builder = Server::builder().expose_panic_messages(true);
    let addr = start_tcp_with(builder, LabImpl::default()).await;
    let client = LabClient::connect(addr).await.expect("connects");
    match client.panic("boom".into()).await {
        Err(RpcError::HandlerPanicked { message, .. }) => {
            assert_eq!(message.as_deref(), Some("boom"));
        }
        other => panic!("expected HandlerPanicked, got {other:?}"),
    }
}

#[tokio::test]
async fn a_request_over_the_servers_limit_fails_before_sending() {
    let addr = start_tcp_with(Server::builder().max_frame_len(1024), LabImpl::default()).await;
    let client = LabClient::connect(addr).await.expect("connects");
    match client.echo(vec![0; 2000]).await {
        Err(RpcError::FrameTooLarge { limit: 1024, size }) => assert!(size > 2000),
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert_eq!(
        client.echo(vec![1; 100]).await.expect("a small one"),
        [1; 100]
    );
}

/// A request exactly as large as the server's limit goes through, both the client's check
/// before sending and the server's as it reads; one byte more fails before it is sent.
#[tokio::test]
async fn a_request_of_exactly_the_servers_limit_is_served() {
    const LIMIT: usize = 4096;
    let addr = start_tcp_with(Server::builder().max_frame_len(LIMIT), LabImpl::default()).await;
    let client = LabClient::connect(addr).await.expect("connects");
    // kind 1, id 0 (1 byte), "echo" (5), a deadline of about 30,000 ms (3), no metadata (1),
    // then the bytes' length (2) and the bytes.
    let fits = LIMIT - 1 - 1 - 5 - 3 - 1 - 2;
    let echoed = client.echo(vec![7; fits]).await.expect("exactly the limit");
    assert_eq!(echoed.len(), fits);
    // Id 1 from here on: one byte, the same size as 0.
    match client.echo(vec![7; fits + 1]).await {
        Err(RpcError::FrameTooLarge { size, limit }) => {
            assert_eq!((size, limit), (LIMIT as u64 + 1, LIMIT as u64));
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert_eq!(client.add(1, 2).await.expect("the connection lives"), 3);
}

#[tokio::test]
async fn a_result_over_the_clients_limit_fails_only_that_call() {
    let addr = start_tcp().await;
    let client = LabClient::builder()
        .max_frame_len(1024)
        .connect(addr)
        .await
        .expect("connects");
    match client.zeros(4096).await {
        Err(RpcError::Server { method, message }) => {
            assert_eq!(method, "zeros");
            assert!(message.contains("too large"), "{message}");
        }
        other => panic!("expected a server error, got {other:?}"),
    }
    assert_eq!(client.zeros(10).await.expect("a small one"), [0; 10]);
}

#[tokio::test]
async fn idle_and_half_open_connections_block_nobody() {
    let addr = start_tcp().await;
    let _silent = RawClient::connect(addr).await;
    let _greeted = RawClient::handshake(addr).await;
    let mut half_a_frame = RawClient::handshake(addr).await;
    half_a_frame.send(&[0, 0, 0, 50, 0x01]).await;
    let mut half_a_prefix = RawClient::connect(addr).await;
    half_a_prefix.send(&[0, 0]).await;
    still_serves(addr).await;
}

#[tokio::test]
async fn a_connection_that_never_says_hello_is_closed() {
    let addr = start_tcp_with(
        Server::builder().handshake_timeout(Duration::from_millis(100)),
        LabImpl::default(),
    )
    .await;
    let mut silent = RawClient::connect(addr).await;
    within("closing", silent.expect_closed()).await;
    still_serves(addr).await;
}

/// Starts `hold("gone")` from a raw client, then makes the client vanish as `vanish` does;
/// returns once the handler is dropped, and checks that the server serves on.
async fn vanish_mid_call(builder: rpc_core::ServerBuilder, vanish: fn(&RawClient)) {
    let lab = LabImpl::default();
    let probe = lab.probe();
    let addr = start_tcp_with(builder, lab).await;
    let mut raw = RawClient::handshake(addr).await;
    let mut args = varint(4);
    args.extend_from_slice(b"gone");
    raw.send(&request(1, "hold", &args)).await;
    assert_eq!(probe.next_event().await, "started gone");
    vanish(&raw);
    drop(raw);
    assert_eq!(
        probe.next_event().await,
        "dropped gone",
        "the vanished client's handler, which would run 10 s, was dropped"
    );
    still_serves(addr).await;
}

/// A client whose connection is reset (a process killed with unread bytes, a machine that
/// rebooted): its handler is dropped at once.
#[tokio::test]
async fn a_client_that_vanishes_mid_call_disturbs_nobody() {
    vanish_mid_call(Server::builder(), |raw| {
        // A linger of zero closes with a reset, at once: it never blocks, which is what the
        // deprecation warns of for other values.
        #[allow(deprecated)]
        raw.stream
            .set_linger(Some(Duration::ZERO))
            .expect("a reset on close");
    })
    .await;
}

/// A client that closes its socket normally mid-call looks, until the server writes to it,
/// like one that only finished sending and still waits for its answers. The server's next
/// write (a keep-alive ping at the latest) finds it gone, and its handler is dropped.
#[tokio::test]
async fn a_client_that_closes_mid_call_is_found_gone_at_the_next_ping() {
    let builder = Server::builder().keepalive(Duration::from_millis(50), Duration::from_secs(5));
    vanish_mid_call(builder, |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pending_call_fails_when_the_connection_dies() {
    let (listener, addr) = loopback_listener().await;
    let lab = LabImpl::default();
    let probe = lab.probe();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accepts");
        rpc_core::serve_connection(stream, LabServer::new(lab)).await
    });
    let client = LabClient::connect(addr).await.expect("connects");

    let waiting: Vec<_> = (0..10)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.wait("never".into()).await })
        })
        .collect();
    for _ in 0..10 {
        assert_eq!(probe.next_event().await, "waiting never");
    }

    server.abort();
    for call in waiting {
        match within("a pending call", call).await.expect("joins") {
            Err(RpcError::Interrupted { method, cause }) => {
                assert_eq!(method, "wait");
                assert!(
                    matches!(*cause, RpcError::ConnectionClosed | RpcError::Io(_)),
                    "{cause}"
                );
            }
            other => panic!("expected Interrupted, got {other:?}"),
        }
    }
    // The client tries to connect again, and finds nobody listening.
    match within("a call to the dead server", client.add(1, 1)).await {
        Err(RpcError::Connect { .. }) => {}
        other => panic!("expected a connect error, got {other:?}"),
    }
}

/// A server whose stream of numbers holds an item that does not decode, in the middle of items
/// that arrive together: the client hands on every item before it, in order, then the error,
/// and the stream ends there.
#[tokio::test]
async fn a_stream_item_that_does_not_decode_ends_the_stream_after_the_items_before_it() {
    let (listener, addr) = loopback_listener().await;
    let server = tokio::spawn(async move {
        let (mut raw, _) = RawClient::accept(&listener).await;
        raw.send(&rpc_tests::lab_hello(rpc_tests::lab_methods(), 0, 0))
            .await;
        let request = within("the request", raw.read_frame())
            .await
            .expect("a request");
        let id = request[1];
        // The answer, and the stream in one write: items 0, 1 and 2, then the number 3 with a
        // byte too many, then 4, then the end.
        let mut answer = frame(&[0x02, id, 0x00]);
        for item in [&[0][..], &[1], &[2], &[3, 7], &[4]] {
            answer.extend(frame(&[&[0x06, id][..], item].concat()));
        }
        answer.extend(frame(&[0x07, id, 0x00]));
        raw.send(&answer).await;
        raw
    });
    let client = LabClient::connect(addr).await.expect("connects");
    let mut numbers = within("the stream", client.count(5))
        .await
        .expect("a stream");
    for expected in 0..3 {
        let item = within("an item", numbers.next()).await;
        assert_eq!(item.map(Result::ok), Some(Some(expected)));
    }
    let failed = within("the bad item", numbers.next()).await;
    assert!(
        matches!(&failed, Some(Err(RpcError::Decode { method, .. })) if method == "count"),
        "{failed:?}"
    );
    assert!(within("the end", numbers.next()).await.is_none());
    drop(server.await.expect("joins"));
}
