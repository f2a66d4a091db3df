//! Server limits: in-flight calls per connection, connections, idle connections. Memory stays
//! bounded because the server holds at most its limit of calls, and nothing is dropped.

use std::time::Duration;

use futures_util::future::join_all;
use rpc_core::{RpcError, Server, ServiceClient, StatusCode, Streaming};
use rpc_tests::{
    LabClient, LabImpl, Probe, RawClient, VERSION, frame, go_away_frame, hello, loopback_listener,
    read_frame_from, read_varint, request, start_tcp_with, string, within,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_calls_runs_within_the_limit_and_every_call_is_answered() {
    let lab = LabImpl::default();
    let probe = lab.probe();
    let addr = start_tcp_with(Server::builder().max_in_flight_per_connection(16), lab).await;
    let client = LabClient::connect(addr).await.expect("connects");

    let calls = join_all((0..100_000).map(|_| client.tracked()));
    let answers = within("100,000 calls", calls).await;
    assert_eq!(answers.len(), 100_000);
    for answer in answers {
        let running = answer.expect("every call is answered");
        assert!(running <= 16, "{running} calls ran at once");
    }
    assert!(probe.most_running() <= 16, "at most the limit ran at once");
    assert!(probe.most_running() > 1, "calls did run concurrently");
}

/// A client that ignores the limit the server announced: the server runs the limit's worth of
/// its calls, starts no further one, reads no further than it must rather than buffer what the
/// client sends, and answers every call exactly once when they can finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_the_limit_is_slowed_down_not_buffered() {
    const LIMIT: usize = 4;
    const CALLS: u64 = 200;
    let lab = LabImpl::default();
    let probe = lab.probe();
    let addr = start_tcp_with(Server::builder().max_in_flight_per_connection(LIMIT), lab).await;
    let mut raw = RawClient::handshake(addr).await;
    let mut burst = Vec::new();
    for id in 0..CALLS {
        burst.extend(request(id, "wait", &string("flood")));
    }
    let (mut read_half, mut write_half) = raw.stream.split();
    let (written, ids) = tokio::join!(
        tokio::io::AsyncWriteExt::write_all(&mut write_half, &burst),
        within("every answer", async {
            // The limit's worth of calls start...
            for _ in 0..LIMIT {
                assert_eq!(probe.next_event().await, "waiting flood");
            }
            // ...and no other, though the server has every chance to start more: a second
            // client's round trips run on the same server meanwhile.
            let other = LabClient::connect(addr).await.expect("connects");
            for n in 0..20 {
                assert_eq!(other.add(n, 1).await.expect("served"), n + 1);
            }
            assert_eq!(
                probe.try_next_event(),
                None,
                "a call past the limit started"
            );
            assert_eq!(probe.most_running(), LIMIT as u64);
            probe.open("flood");
            let mut ids = Vec::new();
            for _ in 0..CALLS {
                let answer = read_answer(&mut read_half).await;
                assert_eq!(answer[0], 0x02, "a response");
                let (id, len) = read_varint(&answer[1..]);
                assert_eq!(answer[1 + len], 0x00, "call {id} succeeded");
                ids.push(id);
            }
            ids
        })
    );
    written.expect("the burst is written");
    let mut ids = ids;
    ids.sort_unstable();
    assert_eq!(
        ids,
        (0..CALLS).collect::<Vec<_>>(),
        "each call answered once"
    );
    assert_eq!(probe.most_running(), LIMIT as u64);
}

async fn read_answer(stream: &mut tokio::net::tcp::ReadHalf<'_>) -> Vec<u8> {
    read_frame_from(stream).await.expect("a frame")
}

/// The args of `wait(gate)`.
fn gate(name: &str) -> Vec<u8> {
    string(name)
}

/// At the limit, the connection idle the longest gives way to a newcomer, and is told why: the
/// go-away is the server's own word that it was full. A connection with a call running is not
/// asked.
#[tokio::test]
async fn at_the_connection_limit_an_idle_connection_gives_way() {
    let lab = LabImpl::default();
    let probe = lab.probe();
    let addr = start_tcp_with(Server::builder().max_connections(2), lab).await;
    let mut busy = RawClient::handshake(addr).await;
    busy.send(&request(1, "wait", &gate("busy"))).await;
    assert_eq!(probe.next_event().await, "waiting busy");
    let mut idle = RawClient::handshake(addr).await;

    let newcomer = within("a newcomer at the limit", LabClient::connect(addr))
        .await
        .expect("admitted");
    let before = within(
        "the idle one to be told",
        idle.expect_go_away(2, "connection limit"),
    )
    .await;
    assert!(before.is_empty(), "{before:?}");
    within("the idle one to close", idle.expect_closed()).await;

    assert_eq!(newcomer.add(1, 2).await.expect("the newcomer is served"), 3);
    newcomer.open("busy".into()).await.expect("opens the gate");
    let answer = within("the busy call's answer", busy.read_frame())
        .await
        .expect("answered, not sent away");
    assert_eq!(answer[..3], [0x02, 0x01, 0x00], "the busy call succeeded");
}

/// Of several idle connections, the one that has gone longest without a request gives way,
/// whatever the order they connected in.
#[tokio::test]
async fn the_connection_idle_longest_is_the_one_that_gives_way() {
    let addr = start_tcp_with(Server::builder().max_connections(4), LabImpl::default()).await;
    let mut recent = Vec::new();
    for _ in 0..3 {
        recent.push(RawClient::handshake(addr).await);
    }
    let mut idlest = RawClient::handshake(addr).await;
    // The three that connected first have made a call since the last one connected.
    for (n, raw) in recent.iter_mut().enumerate() {
        raw.send(&request(n as u64, "add", &[0x02, 0x02])).await;
        let answer = within("an answer", raw.read_frame())
            .await
            .expect("answered");
        assert_eq!(answer[3], 0x04);
    }
    let newcomer = within("a newcomer", LabClient::connect(addr))
        .await
        .expect("admitted");
    let before = within(
        "the idlest to go",
        idlest.expect_go_away(2, "connection limit"),
    )
    .await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(newcomer.add(1, 1).await.expect("served"), 2);
    for (n, raw) in recent.iter_mut().enumerate() {
        raw.send(&request(10 + n as u64, "add", &[0x02, 0x02]))
            .await;
        let answer = within("an answer", raw.read_frame())
            .await
            .expect("still served");
        assert_eq!(answer[0], 0x02, "an answer, not a go-away: {answer:?}");
    }
}

/// When every connection has a call running, a newcomer waits; the first connection whose
/// calls are done then gives way to it.
#[tokio::test]
async fn when_every_connection_is_busy_a_newcomer_waits_for_one_to_be_done() {
    let lab = LabImpl::default();
    let probe = lab.probe();
    let addr = start_tcp_with(Server::builder().max_connections(2), lab).await;
    let mut first = RawClient::handshake(addr).await;
    first.send(&request(1, "wait", &gate("first"))).await;
    assert_eq!(probe.next_event().await, "waiting first");
    let mut second = RawClient::handshake(addr).await;
    second.send(&request(1, "wait", &gate("second"))).await;
    assert_eq!(probe.next_event().await, "waiting second");

    let newcomer = tokio::spawn(LabClient::connect(addr));
    probe.open("first");
    // The first connection is answered, and only then, its calls done, asked to make room:
    // the newcomer was waiting for it.
    let before = within(
        "the first to be told",
        first.expect_go_away(2, "connection limit"),
    )
    .await;
    assert_eq!(before.len(), 1, "the answer, then the go-away: {before:?}");
    assert_eq!(before[0][..3], [0x02, 0x01, 0x00]);
    let newcomer = within("the newcomer", newcomer)
        .await
        .expect("joins")
        .expect("admitted once the first made room");
    assert_eq!(newcomer.add(2, 2).await.expect("served"), 4);

    probe.open("second");
    let answer = within("the second's answer", second.read_frame())
        .await
        .expect("answered");
    assert_eq!(
        answer[..3],
        [0x02, 0x01, 0x00],
        "never asked to leave while busy"
    );
}

/// One client address holding every connection, each with a call running, cannot keep a
/// client from another address out: at the limit, its connection gone longest without a
/// request is asked to make room though busy, told why, and closed once its calls have had the
/// shutdown grace to finish (they are dropped then); the newcomer is served.
#[tokio::test]
async fn at_the_limit_the_address_holding_every_busy_connection_makes_room() {
    let lab = LabImpl::default();
    let probe = lab.probe();
    let builder = Server::builder()
        .max_connections(3)
        .shutdown_grace(Duration::from_millis(200));
    let addr = start_tcp_with(builder, lab).await;
    let mut hog = Vec::new();
    for tag in ["a", "b", "c"] {
        let mut raw = RawClient::handshake(addr).await;
        raw.send(&request(1, "hold", &string(tag))).await;
        assert_eq!(probe.next_event().await, format!("started {tag}"));
        hog.push(raw);
    }

    // Another address on the loopback interface.
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.2:0".parse().expect("an address"))
        .expect("binds to another loopback address");
    let stream = within("connecting", socket.connect(addr))
        .await
        .expect("connects");
    let mut newcomer = RawClient { stream };
    newcomer.send(&hello("Lab", VERSION)).await;
    let server_hello = within("the server's hello to the newcomer", newcomer.read_frame()).await;
    assert!(server_hello.is_some(), "admitted");

    let before = within(
        "the hog's first connection to be told",
        hog[0].expect_go_away(2, "address holds more"),
    )
    .await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(
        probe.next_event().await,
        "dropped a",
        "its call, past the grace"
    );
    within(
        "the hog's first connection to close",
        hog[0].expect_closed(),
    )
    .await;
    newcomer.send(&request(1, "add", &[0x02, 0x04])).await;
    let answer = within("the newcomer's answer", newcomer.read_frame())
        .await
        .expect("served");
    assert_eq!(
        answer[..4],
        [0x02, 0x01, 0x00, 0x06],
        "1 + 2, zigzag-encoded"
    );
}

/// Peers that complete the handshake, announce that they never ping, and then say nothing
/// cannot hold a server's every slot: a real client is still admitted.
#[tokio::test]
async fn silent_peers_cannot_lock_a_client_out() {
    let addr = start_tcp_with(Server::builder().max_connections(10), LabImpl::default()).await;
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(RawClient::handshake(addr).await);
    }
    let client = within("a real client", LabClient::connect(addr))
        .await
        .expect("admitted");
    assert_eq!(client.add(1, 1).await.expect("served"), 2);
}

/// Peers that connect and never say hello cannot hold a server's every slot either, even beside
/// a connection with a call running, which is never asked to leave: at the limit, the peer that
/// has been in its handshake the longest is closed for the newcomer. (The handshake timeout,
/// an hour here, would otherwise keep the newcomer out until the client gave up.)
#[tokio::test]
async fn peers_that_never_say_hello_cannot_lock_a_client_out() {
    let lab = LabImpl::default();
    let probe = lab.probe();
    let builder = Server::builder()
        .max_connections(3)
        .handshake_timeout(Duration::from_secs(3600));
    let addr = start_tcp_with(builder, lab).await;
    let mut busy = RawClient::handshake(addr).await;
    busy.send(&request(1, "wait", &gate("busy"))).await;
    assert_eq!(probe.next_event().await, "waiting busy");
    // Accepted in the order they connect, after the busy one.
    let mut mute = vec![
        RawClient::connect(addr).await,
        RawClient::connect(addr).await,
    ];
    let client = within("a real client", LabClient::connect(addr))
        .await
        .expect("admitted");
    assert_eq!(client.add(1, 1).await.expect("served"), 2);
    within(
        "the longest in its handshake to be closed",
        mute[0].expect_closed(),
    )
    .await;

    probe.open("busy");
    let answer = within("the busy one's answer", busy.read_frame())
        .await
        .expect("answered");
    assert_eq!(answer[..3], [0x02, 0x01, 0x00], "never asked to leave");
    drop(mute.pop());
}

/// A connection runs only so many calls with a streamed argument at once, each holding up to
/// its window of items. The server announces how many in its hello, and a client holds a call
/// past them back until one is over, as it does a call past the server's in-flight limit:
/// nothing is refused, and other calls go on meanwhile.
#[tokio::test]
async fn uploads_past_the_servers_limit_wait_for_one_to_end() {
    let builder = Server::builder().max_uploads_per_connection(2);
    let addr = start_tcp_with(builder, LabImpl::default()).await;
    let client = LabClient::connect(addr).await.expect("connects");
    let (first, first_items) = Streaming::channel(1);
    let (second, second_items) = Streaming::channel(1);
    let mut open = [
        Box::pin(client.sum(first_items)),
        Box::pin(client.sum(second_items)),
    ];
    // Polled once, each call's request is on its way, in this order, before the next call's.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for upload in &mut open {
        assert!(upload.as_mut().poll(&mut cx).is_pending());
    }
    let mut third = Box::pin(client.sum(Streaming::iter(1..=3u64)));
    assert!(third.as_mut().poll(&mut cx).is_pending(), "held back");
    assert_eq!(client.add(1, 1).await.expect("the connection goes on"), 2);

    drop(first);
    let [done, still_open] = open;
    assert_eq!(within("the first upload", done).await.expect("summed"), 0);
    let sum = within("the third upload", third)
        .await
        .expect("run once a place is free");
    assert_eq!(sum, 6);
    drop((second, still_open));
}

/// An upload holds, besides its request, the window of items its client may send before the
/// handler takes any: the server counts that window among what its calls hold, and sheds an
/// upload past its bound like any call, while the uploads before it go on.
#[tokio::test]
async fn uploads_count_their_window_among_what_the_servers_calls_hold() {
    let builder = Server::builder()
        .stream_window(256 * 1024)
        .max_argument_bytes(1024 * 1024);
    let addr = start_tcp_with(builder, LabImpl::default()).await;
    let client = LabClient::connect(addr).await.expect("connects");
    // Four uploads hold 1 MiB of windows, 960 KiB past the connection's first 64.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut open = Vec::new();
    for _ in 0..4 {
        let (items, numbers) = Streaming::channel(1);
        let mut upload = Box::pin(client.sum(numbers));
        assert!(upload.as_mut().poll(&mut cx).is_pending());
        open.push((items, upload));
    }
    // Answered after the four requests, on the same connection: they are running.
    assert_eq!(client.add(1, 1).await.expect("a small call runs"), 2);

    let shed = within("the fifth upload", client.sum(Streaming::iter(1..=3u64))).await;
    assert_shed(shed, "uploaded items");

    let (items, upload) = open.pop().expect("four");
    items.send(5).await.expect("the upload is open");
    drop(items);
    assert_eq!(within("an upload", upload).await.expect("summed"), 5);
    let sum = within(
        "the fifth upload again",
        client.sum(Streaming::iter(1..=3u64)),
    )
    .await;
    assert_eq!(sum.expect("runs once a window is free"), 6);
}

/// Asserts that a call was shed, refused as `Unavailable` (code 16) with a message that says
/// `says`.
fn assert_shed<T: std::fmt::Debug>(outcome: Result<T, RpcError>, says: &str) {
    match outcome {
        Err(RpcError::Refused {
            status: StatusCode::Unavailable,
            message,
            ..
        }) => assert!(message.contains(says), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A gate's name of 400 KiB, starting with `letter`: a call waiting for it holds that much.
fn large_gate(letter: char) -> String {
    format!("{letter}{}", "x".repeat(400 * 1024))
}

/// The next two calls to start waiting, by their gates' first letters, in order.
async fn two_started(probe: &Probe) -> [String; 2] {
    let mut started = [probe.next_event().await, probe.next_event().await];
    started.sort();
    started.map(|event| event[..9].to_owned())
}

/// A handler holds its arguments until it answers, so the large requests the running calls of
/// one connection hold are bounded: one past the limit is parked until a call ends, then runs.
/// Nothing is refused or lost.
#[tokio::test]
async fn large_requests_past_what_running_calls_may_hold_wait_for_one_to_end() {
    let lab = LabImpl::default();
    let probe = lab.probe();
    let builder = Server::builder().max_argument_bytes_per_connection(1024 * 1024);
    let addr = start_tcp_with(builder, lab).await;
    let mut raw = RawClient::handshake(addr).await;
    // Four calls, each holding a 400 KiB gate name while it waits for its gate.
    for (id, letter) in [(1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')] {
        raw.send(&request(id, "wait", &string(&large_gate(letter))))
            .await;
    }
    // A health call is never parked: its answer says the requests before it were all handled.
    raw.send(&request(9, "rpc.health.check", &string(""))).await;
    let answer = within("the health answer", raw.read_frame())
        .await
        .expect("a frame");
    assert_eq!(answer[..3], [0x02, 0x09, 0x00]);
    let mut started = Vec::new();
    while let Some(event) = probe.try_next_event() {
        started.push(event[..9].to_owned());
    }
    assert_eq!(
        started,
        ["waiting a", "waiting b", "waiting c"],
        "the fourth waits: the three running hold 1.2 MiB"
    );

    probe.open(&large_gate('a'));
    let answer = within("the first answer", raw.read_frame())
        .await
        .expect("a frame");
    assert_eq!(answer[..3], [0x02, 0x01, 0x00]);
    let started = probe.next_event().await;
    assert_eq!(
        &started[..9],
        "waiting d",
        "started once the first was over"
    );
    for letter in ['b', 'c', 'd'] {
        probe.open(&large_gate(letter));
    }
    let mut answered = Vec::new();
    for _ in 0..3 {
        let answer = within("an answer", raw.read_frame())
            .await
            .expect("a frame");
        answered.push(answer[1]);
    }
    answered.sort_unstable();
    assert_eq!(answered, [2, 3, 4], "every call answered");
}

/// The same on the wire (docs/wire.md, sections 5 and 7): the server's hello ends with its limit
/// on uploads; a request past it, from a client that does not keep to it, is parked, its items
/// kept, while the server reads on, and runs once an upload is over.
#[tokio::test]
async fn an_upload_past_the_limit_is_parked_until_one_is_over() {
    let builder = Server::builder().max_uploads_per_connection(1);
    let addr = start_tcp_with(builder, LabImpl::default()).await;
    let mut raw = RawClient::connect(addr).await;
    raw.send(&hello("Lab", VERSION)).await;
    let server_hello = within("the hello", raw.read_frame())
        .await
        .expect("a hello");
    assert_eq!(
        server_hello[server_hello.len() - 3..],
        [0x00, 0x00, 0x01],
        "no services table, not serving back, one upload at a time"
    );
    let mut bytes = request(1, "sum", &[]);
    bytes.extend(frame(&[0x06, 0x01, 0x05]));
    bytes.extend(request(2, "sum", &[]));
    bytes.extend(frame(&[0x06, 0x02, 0x07]));
    bytes.extend(frame(&[0x07, 0x02, 0x00]));
    raw.send(&bytes).await;
    raw.send(&frame(&[0x07, 0x01, 0x00])).await;
    let first = within("the first sum", raw.read_frame())
        .await
        .expect("answered");
    assert_eq!(
        first,
        [0x02, 0x01, 0x00, 0x05],
        "call 1, which ran first: 5"
    );
    let second = within("the second sum", raw.read_frame())
        .await
        .expect("answered");
    assert_eq!(
        second,
        [0x02, 0x02, 0x00, 0x07],
        "call 2, parked with its item: 7"
    );
}

/// Whatever ping interval it announced, a peer that says nothing after its hello is closed once
/// the idle timeout passes, and the idle timeout is on unless disabled.
#[tokio::test]
async fn a_silent_peer_is_closed_at_the_idle_timeout() {
    let addr = start_tcp_with(
        Server::builder().idle_timeout(Duration::from_millis(100)),
        LabImpl::default(),
    )
    .await;
    let mut silent = RawClient::handshake(addr).await; // announces ping interval 0
    let before = within("the go-away", silent.expect_go_away(1, "idle")).await;
    assert!(before.is_empty(), "{before:?}");
    within("closing", silent.expect_closed()).await;
}

#[tokio::test]
async fn an_idle_connection_is_told_and_closed() {
    let addr = start_tcp_with(
        Server::builder().idle_timeout(Duration::from_millis(100)),
        LabImpl::default(),
    )
    .await;
    let mut raw = RawClient::handshake(addr).await;
    raw.send(&request(1, "add", &[0x02, 0x02])).await;
    let answer = within("an answer", raw.read_frame())
        .await
        .expect("answered");
    assert_eq!(answer, [0x02, 0x01, 0x00, 0x04]);
    let before = within("going away", raw.expect_go_away(1, "idle")).await;
    assert!(before.is_empty(), "nothing but the go-away: {before:?}");
    within("closing", raw.expect_closed()).await;
}

/// A request the client sent before it read the go-away, as one crossing it on the wire, is
/// read and answered "not run" (code 7), which a client may make again on another connection:
/// a server that closed at once would leave it unread, and the call's fate unknown.
#[tokio::test]
async fn a_request_that_crossed_the_go_away_is_answered_not_run() {
    let addr = start_tcp_with(
        Server::builder().idle_timeout(Duration::from_millis(100)),
        LabImpl::default(),
    )
    .await;
    let mut raw = RawClient::handshake(addr).await;
    within("going away", raw.expect_go_away(1, "idle")).await;
    raw.send(&request(1, "add", &[0x02, 0x02])).await;
    let answer = within("an answer", raw.read_frame())
        .await
        .expect("answered, not reset");
    assert_eq!(
        answer[..4],
        [0x02, 0x01, 0x01, 0x07],
        "call 1 not run: {answer:?}"
    );
    within("closing", raw.expect_closed()).await;
}

/// A client told to go away with no call waiting closes the connection at once, so that the
/// server, reading on for requests that crossed its go-away, need not wait out its linger.
#[tokio::test]
async fn a_client_told_to_go_away_with_nothing_waiting_closes() {
    let (listener, addr) = loopback_listener().await;
    let server = tokio::spawn(async move {
        let mut raw = RawClient::accept_as_lab(&listener).await;
        raw.send(&go_away_frame(1, "idle")).await;
        within("the client to close", raw.expect_closed()).await;
    });
    let client = LabClient::connect(addr).await.expect("connects");
    within("the server's test", server)
        .await
        .expect("the client closed");
    drop(client);
}

/// The same once the last call the client waited for is answered after the go-away.
#[tokio::test]
async fn a_client_told_to_go_away_closes_once_its_last_call_is_answered() {
    let (listener, addr) = loopback_listener().await;
    let server = tokio::spawn(async move {
        let mut raw = RawClient::accept_as_lab(&listener).await;
        let id = raw.read_request_id().await;
        raw.send(&go_away_frame(0, "stopping")).await;
        raw.send(&frame(&[0x02, id, 0x00, 0x04])).await;
        within("the client to close", raw.expect_closed()).await;
    });
    let client = LabClient::connect(addr).await.expect("connects");
    assert_eq!(
        within("the call", client.add(1, 1))
            .await
            .expect("answered"),
        2
    );
    within("the server's test", server)
        .await
        .expect("the client closed");
}

#[tokio::test]
async fn a_connection_told_to_go_away_sends_no_new_calls() {
    let addr = start_tcp_with(
        Server::builder().idle_timeout(Duration::from_millis(100)),
        LabImpl::default(),
    )
    .await;
    // One stream, which cannot be re-established: it shows the connection's own behaviour.
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let client = LabClient::from_stream(stream).await.expect("handshake");
    assert_eq!(client.add(1, 1).await.expect("add"), 2);
    within("the idle connection to close", client.channel().closed()).await;
    match client.add(1, 1).await {
        Err(RpcError::ServerClosing { method }) => assert_eq!(method, "add"),
        other => panic!("expected ServerClosing, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_whose_idle_connection_was_closed_connects_again() {
    let addr = start_tcp_with(
        Server::builder().idle_timeout(Duration::from_millis(100)),
        LabImpl::default(),
    )
    .await;
    let client = LabClient::connect(addr).await.expect("connects");
    assert_eq!(client.add(1, 1).await.expect("add"), 2);
    within("the idle connection to close", client.channel().closed()).await;
    assert!(client.channel().is_closed());
    assert_eq!(
        within("a call", client.add(2, 2))
            .await
            .expect("a new connection"),
        4
    );
}

/// docs/wire.md, Backpressure: the first request past the limit is parked and reading goes on;
/// a second one stops reading until a slot frees. Here a Cancel sent after two parked requests
/// is not read while the call it cancels runs: that call answers once released, and only then
/// does the next parked request start.
#[tokio::test]
async fn a_second_request_past_the_limit_stops_reading_until_a_slot_frees() {
    let lab = LabImpl::default();
    let probe = lab.probe();
    let addr = start_tcp_with(Server::builder().max_in_flight_per_connection(1), lab).await;
    let mut raw = RawClient::handshake(addr).await;
    // One write: the running call, two parked ones, then a Cancel of the running one.
    let mut burst = Vec::new();
    for (id, gate) in [(1, "ga"), (2, "gb"), (3, "gc")] {
        burst.extend(request(id, "wait", &string(gate)));
    }
    burst.extend([0x00, 0x00, 0x00, 0x02, 0x03, 0x01]);
    raw.send(&burst).await;
    assert_eq!(probe.next_event().await, "waiting ga");
    probe.open("ga");
    // Answered: the Cancel behind the second parked request was not read while it ran.
    let answer = within("the answer", raw.read_frame())
        .await
        .expect("a frame");
    assert_eq!(answer, [0x02, 0x01, 0x00, 0x02, b'g', b'a']);
    assert_eq!(probe.next_event().await, "waiting gb");
}

/// What the calls of the whole server hold of their requests is bounded too, however many
/// clients connect: a request that would take them past the limit is refused, not run and not
/// parked (so that nobody's slow calls keep others' requests waiting), with an error a channel
/// with retries takes to another server. Small calls still run, and once calls end, the same
/// request runs.
#[tokio::test]
async fn a_large_request_past_what_the_servers_calls_may_hold_is_refused_not_run() {
    let lab = LabImpl::default();
    let probe = lab.probe();
    let builder = Server::builder().max_argument_bytes(1024 * 1024);
    let addr = start_tcp_with(builder, lab).await;
    let (holder, other) = (
        LabClient::connect(addr).await.expect("connects"),
        LabClient::connect(addr).await.expect("connects"),
    );
    // Two calls of one client hold 800 KiB, 736 past its connection's first 64.
    let holding = tokio::spawn({
        let holder = holder.clone();
        async move { join_all([holder.wait(large_gate('a')), holder.wait(large_gate('b'))]).await }
    });
    assert_eq!(two_started(&probe).await, ["waiting a", "waiting b"]);

    // Another client's 400 KiB would make it 1,072 KiB.
    let refused = within("the refusal", other.wait(large_gate('c'))).await;
    assert_shed(refused, "max_argument_bytes");
    assert!(
        probe.try_next_event().is_none(),
        "the refused call never ran"
    );
    assert_eq!(other.add(2, 3).await.expect("a small call runs"), 5);

    probe.open(&large_gate('a'));
    probe.open(&large_gate('b'));
    for answer in within("the holder's answers", holding)
        .await
        .expect("no panic")
    {
        answer.expect("answered");
    }
    let later = tokio::spawn({
        let other = other.clone();
        async move { other.wait(large_gate('c')).await }
    });
    assert_eq!(
        &probe.next_event().await[..9],
        "waiting c",
        "runs once the others ended"
    );
    probe.open(&large_gate('c'));
    within("the answer", later)
        .await
        .expect("no panic")
        .expect("answered");
}

/// The same on the wire (docs/wire.md, section 6): past the server's bound, a request is
/// answered at once with code 16, while the calls before it still hold their bytes, and the
/// connection stays up.
#[tokio::test]
async fn on_the_wire_a_request_past_the_servers_bound_is_answered_with_code_16() {
    let lab = LabImpl::default();
    let probe = lab.probe();
    let builder = Server::builder().max_argument_bytes(1024 * 1024);
    let addr = start_tcp_with(builder, lab).await;
    let mut raw = RawClient::handshake(addr).await;
    // 400 KiB and 800 KiB: 336 and 736 past the connection's first 64; 1,136 with a third.
    for (id, letter) in [(1, 'a'), (2, 'b'), (3, 'c')] {
        raw.send(&request(id, "wait", &string(&large_gate(letter))))
            .await;
    }
    let refused = within("the refusal", raw.read_frame())
        .await
        .expect("a frame");
    assert_eq!(
        refused[..4],
        [0x02, 0x03, 0x01, 0x10],
        "Response, id 3, Err, code 16"
    );
    let message = String::from_utf8_lossy(&refused[5..]);
    assert!(message.contains("max_argument_bytes"), "{message}");
    assert_eq!(two_started(&probe).await, ["waiting a", "waiting b"]);

    probe.open(&large_gate('a'));
    probe.open(&large_gate('b'));
    let mut answered = Vec::new();
    for _ in 0..2 {
        let answer = within("an answer", raw.read_frame())
            .await
            .expect("a frame");
        answered.push(answer[..3].to_owned());
    }
    answered.sort();
    assert_eq!(answered, [[0x02, 0x01, 0x00], [0x02, 0x02, 0x00]]);
    assert!(probe.try_next_event().is_none(), "the third never ran");
}
