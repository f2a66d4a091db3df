//! Hostile and broken peers, played by hand over real sockets: what they send cannot stall a
//! connection, make a call run that should not, or close a connection without saying why.
//! (What they cannot make either side hold in memory is in `memory.rs`.)

use rpc_core::{RpcError, Server};
use rpc_tests::{
    ADD_2_3, LabClient, LabImpl, LabServer, RawClient, frame, item_cost, lab_hello,
    lab_hello_with_window, lab_methods, loopback_listener, request, start_tcp_with, string, varint,
    within,
};
use tokio::io::AsyncWriteExt;

/// What a stream item `[0x06, id, n]` of a number below 128 costs: 39 bytes of credit.
const SMALL_ITEM: u64 = item_cost(3);

/// A window of exactly 32 such items.
const WINDOW_OF_32: u32 = 32 * SMALL_ITEM as u32;

/// A Credit frame granting stream `id` that many bytes.
fn credit(id: u8, bytes: u64) -> Vec<u8> {
    let mut payload = vec![0x08, id];
    payload.extend(varint(bytes));
    frame(&payload)
}

/// A StreamItem frame of stream `id` carrying the number `n` (below 128).
fn small_item(id: u8, n: u8) -> Vec<u8> {
    frame(&[0x06, id, n])
}

/// A request frame with `entries` metadata entries `k0` = `v`, `k1` = `v`, ...
fn request_with_metadata(id: u64, method: &str, entries: usize, args: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x01];
    payload.extend(varint(id));
    payload.extend(string(method));
    payload.extend(varint(0));
    payload.extend(varint(entries as u64));
    for n in 0..entries {
        payload.extend(string(&format!("k{n}")));
        payload.extend(string("v"));
    }
    payload.extend_from_slice(args);
    frame(&payload)
}

/// The id, and the rest after it, of a frame of kind `kind` (ids below 128 are one byte).
fn kind_and_id(payload: &[u8]) -> (u8, u8) {
    (payload[0], payload[1])
}

/// Reads frames until the response to `id`, returning it.
async fn response_to(raw: &mut RawClient, id: u8) -> Vec<u8> {
    loop {
        let payload = raw.read_frame().await.expect("the connection stays open");
        if kind_and_id(&payload) == (0x02, id) {
            return payload;
        }
    }
}

#[tokio::test]
async fn metadata_over_a_limit_fails_the_call_and_the_connection_lives() {
    let addr = start_tcp_with(Server::builder(), LabImpl::default()).await;
    let mut raw = RawClient::handshake(addr).await;
    raw.send(&request_with_metadata(1, "add", 120_000, &ADD_2_3))
        .await;
    let refused = within("the refusal", raw.read_frame())
        .await
        .expect("answered");
    assert_eq!(
        refused[..4],
        [0x02, 0x01, 0x01, 0x09],
        "code 9: over a limit"
    );
    let message = String::from_utf8_lossy(&refused[5..]);
    assert!(
        message.contains("120000 entries, over the server's limit of 64"),
        "{message}"
    );
    raw.send(&request(2, "add", &ADD_2_3)).await;
    let answer = within("the next call", raw.read_frame())
        .await
        .expect("answered");
    assert_eq!(answer, [0x02, 0x02, 0x00, 0x0a]);

    // A generated client gets a typed error naming the limit.
    let client = LabClient::connect(addr).await.expect("connects");
    let heavy = client.with_metadata("token", vec![b'x'; 17 * 1024]);
    match heavy.add(1, 1).await {
        Err(RpcError::LimitExceeded { method, message }) => {
            assert_eq!(method, "add");
            assert!(message.contains("16384 bytes"), "{message}");
        }
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    assert_eq!(client.add(1, 1).await.expect("the same connection"), 2);
}

/// Decoding metadata is linear: two requests of 120,000 distinct keys each, which took a
/// quadratic decoder seconds, are answered like any other (the guard only catches a hang).
#[tokio::test]
async fn many_metadata_keys_cost_linear_time() {
    let builder = Server::builder()
        .max_metadata_entries(200_000)
        .max_metadata_len(16 * 1024 * 1024);
    let addr = start_tcp_with(builder, LabImpl::default()).await;
    let mut raw = RawClient::handshake(addr).await;
    raw.send(&request_with_metadata(1, "add", 120_000, &ADD_2_3))
        .await;
    raw.send(&request_with_metadata(2, "add", 120_000, &ADD_2_3))
        .await;
    for id in 1..=2 {
        let answer = within("an answer", raw.read_frame())
            .await
            .expect("answered");
        assert_eq!(answer, [0x02, id, 0x00, 0x0a]);
    }
}

/// At the in-flight limit the server still reads cancellations: two streams hold both slots of
/// a client that sends a third call anyway, and cancelling one stream lets the third run.
#[tokio::test]
async fn a_cancellation_behind_a_call_past_the_limit_is_still_read() {
    let addr = start_tcp_with(
        Server::builder().max_in_flight_per_connection(2),
        LabImpl::default(),
    )
    .await;
    let mut raw = RawClient::handshake(addr).await;
    // Two endless-enough streams, never granted credit: each holds its slot.
    raw.send(&request(1, "count", &varint(1_000_000))).await;
    raw.send(&request(2, "count", &varint(1_000_000))).await;
    // A third call, past the limit, then the cancellation of the first stream.
    raw.send(&request(3, "add", &ADD_2_3)).await;
    raw.send(&frame(&[0x03, 0x01])).await;
    let answer = within("the third call", response_to(&mut raw, 3)).await;
    assert_eq!(answer, [0x02, 0x03, 0x00, 0x0a]);
}

/// The same with credit: a stream stalled for credit at the limit gets it, ends, and frees its
/// slot for the call waiting behind it.
#[tokio::test]
async fn credit_behind_a_call_past_the_limit_is_still_read() {
    let addr = start_tcp_with(
        Server::builder().max_in_flight_per_connection(1),
        LabImpl::default(),
    )
    .await;
    let mut raw = RawClient::handshake_with_window(addr, WINDOW_OF_32).await;
    raw.send(&request(1, "count", &varint(40))).await;
    raw.send(&request(2, "add", &ADD_2_3)).await;
    // 32 items come on the initial credit; 8 more need a grant.
    raw.send(&credit(1, 8 * SMALL_ITEM)).await;
    let answer = within("the second call", response_to(&mut raw, 2)).await;
    assert_eq!(answer, [0x02, 0x02, 0x00, 0x0a]);
}

/// The end of a stream is not an item: a stream that uses up exactly the initial credit ends
/// without the client granting more.
#[tokio::test]
async fn a_streamed_result_ends_without_more_credit() {
    let addr = start_tcp_with(Server::builder(), LabImpl::default()).await;
    let mut raw = RawClient::handshake_with_window(addr, WINDOW_OF_32).await;
    raw.send(&request(1, "count", &varint(32))).await;
    let response = within("the response", raw.read_frame())
        .await
        .expect("a frame");
    assert_eq!(response, [0x02, 0x01, 0x00], "Ok, the stream follows");
    for n in 0..32u8 {
        let item = within("an item", raw.read_frame()).await.expect("a frame");
        assert_eq!(item, [0x06, 0x01, n]);
    }
    let end = within("the end", raw.read_frame()).await.expect("a frame");
    assert_eq!(
        end,
        [0x07, 0x01, 0x00],
        "StreamEnd, Ok, with no credit left"
    );
}

/// The same rule from the client: an upload of exactly the initial credit ends at once, to a
/// server that never grants more.
#[tokio::test]
async fn an_upload_ends_without_more_credit() {
    let (listener, addr) = loopback_listener().await;
    let stingy_server = tokio::spawn(async move {
        let (mut raw, _) = RawClient::accept(&listener).await;
        let hello = lab_hello_with_window(lab_methods(), 0, 0, WINDOW_OF_32);
        raw.send(&hello).await;
        let call = raw.read_frame().await.expect("the request");
        assert_eq!(call[0], 0x01, "a request");
        let mut items = Vec::new();
        loop {
            let payload = raw.read_frame().await.expect("the upload");
            match payload[0] {
                0x06 => items.push(payload[2]),
                0x07 => return (items, payload),
                other => panic!("unexpected frame kind {other}"),
            }
        }
    });
    let client = LabClient::connect(addr).await.expect("connects");
    let upload = tokio::spawn(async move { client.sum(rpc_core::Streaming::iter(0..32u64)).await });
    let (items, end) = within("the whole upload", stingy_server)
        .await
        .expect("joins");
    assert_eq!(items, (0..32).collect::<Vec<u8>>());
    assert_eq!(end[2], 0x00, "the end says Ok");
    upload.abort();
}

/// Items past the credit break the protocol, whether they come in one piece or each alone: the
/// server says so in a go-away and closes the connection. With a window of three small items,
/// the third uses the credit up and the fourth is one too many.
#[tokio::test]
async fn an_item_sent_without_credit_closes_the_connection() {
    for separated in [false, true] {
        let builder = Server::builder().stream_window(3 * SMALL_ITEM as u32);
        let addr = start_tcp_with(builder, LabImpl::default()).await;
        let mut raw = RawClient::handshake(addr).await;
        let mut bytes = request(1, "sum", &[]);
        for n in 0..4 {
            bytes.extend(small_item(1, n));
            if separated {
                bytes.extend(frame(&[0x04])); // a ping between items
            }
        }
        raw.send(&bytes).await;
        let refused = raw.expect_refused("without credit");
        within("the refusal", refused).await;
    }
}

/// An item may overdraw the credit left, whatever it costs, but none may follow it until the
/// receiver grants more: an item right behind the overdrawing one, in the same read, is refused
/// as one sent alone would be.
#[tokio::test]
async fn an_item_behind_one_that_overdrew_the_credit_closes_the_connection() {
    // A window of one small item; the first item, a number of ten bytes, costs more.
    let builder = Server::builder().stream_window(SMALL_ITEM as u32);
    let addr = start_tcp_with(builder, LabImpl::default()).await;
    let mut raw = RawClient::handshake(addr).await;
    let mut bytes = request(1, "sum", &[]);
    let mut large = vec![0x06, 1];
    large.extend(varint(u64::MAX));
    bytes.extend(frame(&large));
    bytes.extend(small_item(1, 0));
    raw.send(&bytes).await;
    within("the refusal", raw.expect_refused("without credit")).await;
}

/// A receiver that grants more than the items it took cost breaks the protocol.
#[tokio::test]
async fn a_grant_past_what_the_items_cost_closes_the_connection() {
    let addr = start_tcp_with(Server::builder(), LabImpl::default()).await;
    let mut raw = RawClient::handshake_with_window(addr, WINDOW_OF_32).await;
    raw.send(&request(1, "count", &varint(40))).await;
    // The response, then the 32 items the window holds.
    for _ in 0..33 {
        within("the stream", raw.read_frame())
            .await
            .expect("a frame");
    }
    raw.send(&credit(1, 33 * SMALL_ITEM)).await;
    within("the refusal", raw.expect_refused("more credit")).await;
}

/// The frames of several streams, written in one piece and interleaved, reach each stream whole
/// and in order: a server reads the items of one stream that arrive together in one go.
#[tokio::test]
async fn interleaved_streams_written_at_once_arrive_whole_and_in_order() {
    let addr = start_tcp_with(Server::builder(), LabImpl::default()).await;
    let mut raw = RawClient::handshake(addr).await;
    let mut bytes = request(1, "sum", &[]);
    bytes.extend(request(2, "sum", &[]));
    for n in 0..100u8 {
        bytes.extend(small_item(1, n));
        if n % 2 == 1 {
            bytes.extend(small_item(2, 1));
        }
    }
    bytes.extend(frame(&[0x07, 0x01, 0x00]));
    bytes.extend(frame(&[0x07, 0x02, 0x00]));
    raw.send(&bytes).await;
    let first = within("the first sum", response_to(&mut raw, 1)).await;
    assert_eq!(
        first,
        [0x02, 0x01, 0x00, 0xd6, 0x26],
        "0 + 1 + ... + 99 = 4950"
    );
    let second = within("the second sum", response_to(&mut raw, 2)).await;
    assert_eq!(second, [0x02, 0x02, 0x00, 50], "fifty ones");
}

/// Calls abandoned while their requests still wait behind another leave nothing on the wire: no
/// request, no Cancel for a request the server never saw, and none of an upload's items or
/// its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_abandoned_before_its_request_left_sends_nothing() {
    // A small receive buffer of fixed size (the kernel would otherwise grow it to tens of MiB),
    // so that the first request cannot all be written while the server does not read.
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .set_recv_buffer_size(64 * 1024)
        .expect("sets the buffer");
    socket
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("binds");
    let listener = socket.listen(1).expect("listens");
    let addr = listener.local_addr().expect("an address");
    let (start_reading, reading) = tokio::sync::oneshot::channel::<()>();
    let slow_server = tokio::spawn(async move {
        let (mut raw, _) = RawClient::accept(&listener).await;
        raw.send(&lab_hello(lab_methods(), 0, 0)).await;
        // Reads nothing until told: the client's writer blocks in the middle of the first
        // request, larger than the sockets' buffers together. (The kernel grows the client's
        // send buffer up to `net.ipv4.tcp_wmem`'s ceiling, 4 MiB by default: a request of
        // 4 MiB could all fit there, and the writer go on to the calls meant to wait.)
        let _ = reading.await;
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let payload = raw.read_frame().await.expect("a frame");
            if payload != [0x04] {
                seen.push(payload);
            }
        }
        seen
    });
    let client = LabClient::connect(addr).await.expect("connects");
    // Polled once, the huge call is queued (request 0) before anything else.
    let mut huge = Box::pin({
        let client = client.clone();
        async move { client.echo(vec![1; 15 * 1024 * 1024]).await }
    });
    let mut waker = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(huge.as_mut().poll(&mut waker).is_pending());
    let huge = tokio::spawn(huge);
    let impatient = client.with_deadline(std::time::Duration::from_millis(100));
    let abandoned = impatient.add(1, 1).await;
    assert!(
        matches!(abandoned, Err(RpcError::DeadlineExceeded { .. })),
        "{abandoned:?}"
    );
    let upload = rpc_core::Streaming::iter(0..10u64);
    let abandoned = impatient.sum(upload).await;
    assert!(
        matches!(abandoned, Err(RpcError::DeadlineExceeded { .. })),
        "{abandoned:?}"
    );
    start_reading.send(()).expect("the server waits");
    let last = tokio::spawn({
        let client = client.clone();
        async move { client.add(2, 2).await }
    });
    let seen = within("what the server read", slow_server)
        .await
        .expect("joins");
    let (first, second) = (&seen[0], &seen[1]);
    assert_eq!(first[..2], [0x01, 0x00], "request 0, the huge one");
    assert_eq!(
        second[..2],
        [0x01, 0x03],
        "then request 3: nothing of calls 1 and 2"
    );
    huge.abort();
    last.abort();
}

/// A request reusing the id of a running call closes the connection before any of it runs.
#[tokio::test]
async fn a_reused_id_is_refused_before_its_handler_runs() {
    let lab = LabImpl::default();
    let probe = lab.probe();
    let addr = start_tcp_with(Server::builder(), lab).await;
    let mut raw = RawClient::handshake(addr).await;
    raw.send(&request(5, "wait", &string("dup"))).await;
    assert_eq!(probe.next_event().await, "waiting dup");
    raw.send(&request(5, "incr", &[])).await;
    within("the refusal", raw.expect_refused("reused the id 5")).await;

    let client = LabClient::connect(addr).await.expect("connects");
    assert_eq!(
        client.incr().await.expect("incr"),
        1,
        "the duplicate never ran"
    );
}

/// On a protocol error the server first sends the answers it already had, then a go-away that
/// says what was wrong, then closes.
#[tokio::test]
async fn a_protocol_error_flushes_earlier_answers_then_says_why() {
    let addr = start_tcp_with(Server::builder(), LabImpl::default()).await;
    let mut raw = RawClient::handshake(addr).await;
    let mut both = request(1, "add", &ADD_2_3);
    both.extend(frame(&[0x7f, 0xff, 0xff]));
    raw.send(&both).await;
    let before = within(
        "the go-away",
        raw.expect_go_away(3, "a frame of kind 0x7f, which the protocol does not have"),
    )
    .await;
    assert_eq!(
        before,
        [vec![0x02, 0x01, 0x00, 0x0a]],
        "the earlier answer first"
    );
    within("closing", raw.expect_closed()).await;
}

/// A client that broke the protocol, had more on its way, and is slow to read still gets its
/// answer and the go-away. Closing a socket with unread bytes resets the connection, and a
/// reset throws away what the server has not sent yet, here most of a 512 KiB answer stuck
/// behind the client's small receive window: the server first reads and drops what follows
/// the error.
#[tokio::test]
async fn the_go_away_reaches_a_client_that_had_sent_more() {
    let addr = start_tcp_with(Server::builder(), LabImpl::default()).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .set_recv_buffer_size(4 * 1024)
        .expect("sets the buffer");
    let mut raw = RawClient {
        stream: socket.connect(addr).await.expect("connects"),
    };
    raw.send(&rpc_tests::hello("Lab", rpc_tests::VERSION)).await;
    raw.read_frame().await.expect("the server's hello");
    let mut bytes = request(1, "zeros", &varint(512 * 1024));
    bytes.extend(frame(&[0x7f, 0xff, 0xff]));
    bytes.extend(vec![0x55; 200 * 1024]);
    raw.send(&bytes).await;
    // The client is slow to read: the scenario, not a synchronisation.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let before = within(
        "the go-away",
        raw.expect_go_away(3, "a frame of kind 0x7f, which the protocol does not have"),
    )
    .await;
    assert_eq!(before.len(), 1, "the answer, then the go-away");
    assert_eq!(before[0].len(), 3 + 3 + 512 * 1024, "the whole answer");
    within("closing", raw.expect_closed()).await;
}

/// What the server reads after a protocol error is bounded: a client that goes on sending is
/// cut off long before 64 MiB.
#[tokio::test]
async fn a_client_sending_on_after_its_error_is_cut_off() {
    let addr = start_tcp_with(Server::builder(), LabImpl::default()).await;
    let mut raw = RawClient::handshake(addr).await;
    raw.send(&frame(&[0x7f, 0xff, 0xff])).await;
    let chunk = vec![0x55; 64 * 1024];
    let sent = within("the server to cut the client off", async {
        for _ in 0..1024 {
            raw.stream.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    assert!(sent.is_err(), "the server read 64 MiB after the error");
}

/// A client told by the server that it broke the protocol (reason 3), or that the server took
/// back the memory of the frame it was sending (reason 4), fails its calls with the server's
/// reason rather than waiting for answers that will not come.
#[tokio::test]
async fn a_client_learns_why_the_server_closed_its_connection() {
    for (reason, says) in [
        (0x03, "your frames are upside down"),
        (0x04, "the server ran short of memory for large frames"),
    ] {
        let (listener, addr) = loopback_listener().await;
        let server = tokio::spawn(async move {
            let (mut raw, _) = RawClient::accept(&listener).await;
            raw.send(&lab_hello(lab_methods(), 0, 0)).await;
            raw.read_frame().await.expect("the request");
            let mut go_away = vec![0x05, reason];
            go_away.extend(string(says));
            raw.send(&frame(&go_away)).await;
            raw
        });
        let client = LabClient::connect(addr).await.expect("connects");
        match within("the call", client.add(1, 2)).await {
            Err(RpcError::Interrupted { cause, .. }) => match *cause {
                RpcError::ClosedByServer { reason } => assert_eq!(reason, says),
                other => panic!("expected ClosedByServer, got {other:?}"),
            },
            other => panic!("expected Interrupted, got {other:?}"),
        }
        drop(server);
    }
}

/// Graceful shutdown reaches a connection whose client is past its limit: the request waiting
/// for a slot is answered as not run, the running one finishes.
#[tokio::test]
async fn shutdown_reaches_a_connection_waiting_at_its_limit() {
    let lab = LabImpl::default();
    let probe = lab.probe();
    let server = Server::builder()
        .max_in_flight_per_connection(1)
        .bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = server.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_with_shutdown(LabServer::new(lab), async {
        let _ = stopped.await;
    }));
    let mut raw = RawClient::handshake(addr).await;
    raw.send(&request(1, "wait", &string("slow"))).await;
    assert_eq!(probe.next_event().await, "waiting slow");
    raw.send(&request(2, "add", &ADD_2_3)).await;
    // The second call waits for the first's slot; a ping behind it is read meanwhile.
    raw.send(&frame(&[0x04])).await;

    stop.send(()).expect("the server listens");
    let before = within("the go-away", raw.expect_go_away(0, "shutting down")).await;
    assert!(before.is_empty(), "{before:?}");
    let refused = within("the parked call's answer", raw.read_frame())
        .await
        .expect("answered");
    assert_eq!(refused[..4], [0x02, 0x02, 0x01, 0x07], "not run");
    probe.open("slow");
    let answer = within("the running call", raw.read_frame())
        .await
        .expect("answered");
    assert_eq!(answer[..3], [0x02, 0x01, 0x00]);
    within("closing", raw.expect_closed()).await;
    within("the server to stop", serving)
        .await
        .expect("joins")
        .expect("stops cleanly");
}

/// A server whose pings never stop: its hello, then as many Ping frames as each read asks for,
/// always ready, as a socket that always has bytes is. Like a socket, each read uses up some of
/// the task's budget, so that the reader yields now and then.
struct EndlessPings {
    hello: Vec<u8>,
    sent: usize,
}

impl tokio::io::AsyncRead for EndlessPings {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let budget = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let this = &mut *self;
        if this.sent < this.hello.len() {
            let hello = &this.hello[this.sent..];
            let n = hello.len().min(buf.remaining());
            buf.put_slice(&hello[..n]);
            this.sent += n;
        } else {
            const PING: [u8; 5] = [0, 0, 0, 1, 0x04];
            while buf.remaining() >= PING.len() {
                buf.put_slice(&PING);
            }
        }
        budget.made_progress();
        std::task::Poll::Ready(Ok(()))
    }
}

/// A server that never stops sending, so that the client's reader always has a frame to read,
/// cannot hold a call past its deadline: the reader looks at the deadlines every so many
/// frames, not only when it has nothing to read. (Without that, this call waited for ever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_stops_sending_cannot_hold_a_call_past_its_deadline() {
    let pings = EndlessPings {
        hello: lab_hello(lab_methods(), 0, 0),
        sent: 0,
    };
    let client = LabClient::builder()
        .disable_keepalive()
        .deadline(std::time::Duration::from_millis(100))
        // What the client sends is discarded.
        .connect_stream(tokio::io::join(pings, tokio::io::sink()))
        .await
        .expect("connects");
    assert!(matches!(
        within("the call", client.hold("flooded".into())).await,
        Err(RpcError::DeadlineExceeded { .. })
    ));
}
