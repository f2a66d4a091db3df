//! Streaming calls over real TCP: each kind, errors mid-stream, cancellation by drop, deadlines
//! over a whole stream, many streams beside unary calls, and bounded memory under a slow reader.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use rpc_core::{Payload, RpcError, Server, Streaming};
use rpc_tests::{STREAM_WINDOW, item_cost, within};
use serde_bytes::ByteBuf;
use tokio::sync::mpsc;

#[rpc_core::service]
pub trait Numbers {
    /// Streams `from..to`.
    async fn count(&self, from: u64, to: u64) -> Streaming<u64>;
    /// Adds up a stream.
    async fn sum(&self, numbers: Streaming<u64>) -> u64;
    /// The first number of a stream, whose rest it drops unread.
    async fn first(&self, numbers: Streaming<u64>) -> Option<u64>;
    /// Answers each number with its double, as it comes.
    async fn double(&self, numbers: Streaming<u64>) -> Streaming<u64>;
    /// Streams `0..n`, then fails.
    async fn fail_after(&self, n: u64) -> Streaming<u64>;
    /// Streams forever, reporting "dropped {tag}" when the stream is dropped.
    async fn endless(&self, tag: String) -> Streaming<u64>;
    /// Streams `count` chunks of `size` bytes, counting the chunks taken from the source.
    async fn chunks(&self, count: u32, size: u32) -> Streaming<ByteBuf>;
    /// Streams `count` payloads of `size` bytes, each filled with its index.
    async fn pieces(&self, count: u8, size: u32) -> Streaming<Payload>;
    /// A unary call beside the streams.
    async fn add(&self, a: u64, b: u64) -> u64;
    /// Reads a stream, pausing every 64th item until the sender has filled its window.
    async fn slow_count(&self, chunks: Streaming<ByteBuf>) -> u64;
    /// Adds up the lengths of the chunks of a stream: `u64::MAX` if it fails.
    async fn total_len(&self, chunks: Streaming<ByteBuf>) -> u64;
    /// Streams `n` items, each the name of the method in the context its producer ran in;
    /// first lets other tasks run if `wait`, so its handler does not finish on its first poll.
    async fn context_seen(&self, n: u64, wait: bool) -> Streaming<String>;
}

/// The chunk size of the flow-control tests.
const CHUNK: u32 = 64 * 1024;

/// How many chunks the default stream window lets a sender send ahead of the reader: as many as
/// it takes to use the credit up, since an item goes while any credit is left. A chunk's frame
/// holds the kind, a one-byte call id, the chunk's 3-byte length and the chunk.
fn chunks_in_window() -> u64 {
    u64::from(STREAM_WINDOW).div_ceil(item_cost(CHUNK as usize + 5))
}

/// How far a stream's source runs ahead of its reader, watched on every item the source gives.
#[derive(Debug, Default)]
struct Window {
    /// Items taken from the source.
    produced: AtomicU64,
    /// Items the reader has taken.
    consumed: AtomicU64,
    /// The most items the source was ever ahead of the reader.
    most_ahead: AtomicU64,
    /// How many items the source has in all.
    total: AtomicU64,
}

impl Window {
    /// Counts an item taken from the source, and how far ahead that puts it.
    fn produce(&self) {
        let produced = self.produced.fetch_add(1, Ordering::SeqCst) + 1;
        let ahead = produced - self.consumed.load(Ordering::SeqCst);
        self.most_ahead.fetch_max(ahead, Ordering::SeqCst);
    }

    fn consume(&self) {
        self.consumed.fetch_add(1, Ordering::SeqCst);
    }

    /// Returns once the source is at least `items` ahead of the reader, or has given every item:
    /// the sender filled its window and waits for credit.
    async fn filled(&self, items: u64) {
        let wanted = || {
            let consumed = self.consumed.load(Ordering::SeqCst);
            (consumed + items).min(self.total.load(Ordering::SeqCst))
        };
        while self.produced.load(Ordering::SeqCst) < wanted() {
            tokio::task::yield_now().await;
        }
    }
}

struct Impl {
    events: mpsc::UnboundedSender<String>,
    /// The window of the stream being sent, on whichever side sends it.
    window: Arc<Window>,
}

/// Reports when dropped: the stream that owns it was dropped.
struct DropReport(mpsc::UnboundedSender<String>, String);

impl Drop for DropReport {
    fn drop(&mut self) {
        let _ = self.0.send(format!("dropped {}", self.1));
    }
}

impl Numbers for Impl {
    async fn count(&self, from: u64, to: u64) -> Streaming<u64> {
        Streaming::new(futures_util::stream::iter(from..to))
    }

    async fn sum(&self, mut numbers: Streaming<u64>) -> u64 {
        let mut sum = 0;
        while let Some(number) = numbers.next().await {
            sum += number.expect("the client's stream ends cleanly");
        }
        sum
    }

    async fn first(&self, mut numbers: Streaming<u64>) -> Option<u64> {
        numbers.next().await.and_then(Result::ok)
    }

    async fn double(&self, numbers: Streaming<u64>) -> Streaming<u64> {
        Streaming::from_results(numbers.map(|n| n.map(|n| 2 * n)))
    }

    async fn fail_after(&self, n: u64) -> Streaming<u64> {
        let items = (0..n)
            .map(Ok)
            .chain(std::iter::once(Err("the disk is full")));
        Streaming::from_results(futures_util::stream::iter(items))
    }

    async fn endless(&self, tag: String) -> Streaming<u64> {
        let report = DropReport(self.events.clone(), tag);
        Streaming::new(futures_util::stream::iter(0..).map(move |n| {
            let _ = &report;
            n
        }))
    }

    async fn chunks(&self, count: u32, size: u32) -> Streaming<ByteBuf> {
        let window = Arc::clone(&self.window);
        window.total.store(count.into(), Ordering::SeqCst);
        Streaming::new(futures_util::stream::iter(0..count).map(move |_| {
            window.produce();
            ByteBuf::from(vec![7; size as usize])
        }))
    }

    async fn pieces(&self, count: u8, size: u32) -> Streaming<Payload> {
        Streaming::iter((0..count).map(move |n| Payload::from(vec![n; size as usize])))
    }

    async fn add(&self, a: u64, b: u64) -> u64 {
        a + b
    }

    async fn slow_count(&self, mut chunks: Streaming<ByteBuf>) -> u64 {
        let mut read = 0u64;
        while let Some(chunk) = chunks.next().await {
            chunk.expect("a chunk");
            self.window.consume();
            read += 1;
            if read.is_multiple_of(64) {
                let filled = self.window.filled(chunks_in_window());
                within("the client to fill its window", filled).await;
            }
        }
        read
    }

    async fn total_len(&self, mut chunks: Streaming<ByteBuf>) -> u64 {
        let mut total = 0;
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(chunk) => total += chunk.len() as u64,
                Err(_) => return u64::MAX,
            }
        }
        total
    }

    async fn context_seen(&self, n: u64, wait: bool) -> Streaming<String> {
        if wait {
            tokio::task::yield_now().await;
        }
        Streaming::new(futures_util::stream::iter(0..n).map(|_| {
            rpc_core::Context::try_current().map_or_else(String::new, |call| call.method().into())
        }))
    }
}

struct Fixture {
    client: NumbersClient,
    addr: std::net::SocketAddr,
    events: mpsc::UnboundedReceiver<String>,
    window: Arc<Window>,
}

async fn start() -> Fixture {
    start_with(Server::builder()).await
}

async fn start_with(builder: rpc_core::ServerBuilder) -> Fixture {
    let (events_tx, events) = mpsc::unbounded_channel();
    let window = Arc::new(Window::default());
    let server = builder.bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("address");
    tokio::spawn(server.serve(NumbersServer::new(Impl {
        events: events_tx,
        window: Arc::clone(&window),
    })));
    let client = NumbersClient::connect(addr).await.expect("connects");
    Fixture {
        client,
        addr,
        events,
        window,
    }
}

async fn collect(stream: Streaming<u64>) -> Vec<Result<u64, RpcError>> {
    within("the stream", stream.collect::<Vec<_>>()).await
}

#[tokio::test]
async fn server_streaming_delivers_every_item_in_order() {
    let fixture = start().await;
    let stream = fixture.client.count(0, 1000).await.expect("starts");
    let items: Vec<u64> = collect(stream)
        .await
        .into_iter()
        .map(|item| item.expect("no error"))
        .collect();
    assert_eq!(
        items,
        (0..1000).collect::<Vec<_>>(),
        "past many credit windows"
    );
}

#[tokio::test]
async fn a_streamed_result_is_produced_in_its_calls_context() {
    let fixture = start().await;
    for wait in [false, true] {
        let stream = fixture
            .client
            .context_seen(3, wait)
            .await
            .expect("the call");
        let seen = within("the stream", stream.collect::<Vec<_>>()).await;
        let seen: Vec<String> = seen
            .into_iter()
            .map(|item| item.expect("an item"))
            .collect();
        assert_eq!(seen, ["context_seen"; 3], "after a wait: {wait}");
    }
}

#[tokio::test]
async fn client_streaming_sends_every_item() {
    let fixture = start().await;
    let numbers = Streaming::new(futures_util::stream::iter(1..=1000u64));
    let sum = within("the upload", fixture.client.sum(numbers)).await;
    assert_eq!(sum.expect("sum"), 500_500);
}

/// A handler may drop the stream it was sent before its end: the call is answered, nothing of
/// the stream's end is sent to the client (a Cancel, the client's to send, would break the
/// protocol), and the connection goes on.
#[tokio::test]
async fn a_handler_that_drops_its_stream_early_still_answers() {
    let fixture = start().await;
    let numbers = Streaming::new(futures_util::stream::iter(7..));
    let first = within("the call", fixture.client.first(numbers)).await;
    assert_eq!(first.expect("answered"), Some(7));
    let sum = within("a call after it", fixture.client.add(2, 3)).await;
    assert_eq!(sum.expect("the same connection answers"), 5);
}

#[tokio::test]
async fn bidirectional_streaming_answers_as_items_arrive() {
    let fixture = start().await;
    let (sender, numbers) = Streaming::channel(1);
    let mut doubled = fixture.client.double(numbers).await.expect("starts");
    for n in 1..=50u64 {
        sender.send(n).await.expect("the server reads");
        // Each answer comes before the next question is asked: nothing waits for the end.
        let answer = within("an answer", doubled.next()).await;
        assert_eq!(answer.expect("an item").expect("no error"), 2 * n);
    }
    drop(sender);
    assert!(within("the end", doubled.next()).await.is_none());
}

#[tokio::test]
async fn an_error_mid_stream_reaches_the_client_as_such() {
    let fixture = start().await;
    let items = collect(fixture.client.fail_after(3).await.expect("starts")).await;
    assert_eq!(items.len(), 4);
    for (n, item) in (0..3).zip(&items) {
        assert_eq!(item.as_ref().expect("an item"), &n);
    }
    match &items[3] {
        Err(RpcError::StreamFailed { message }) => assert_eq!(message, "the disk is full"),
        other => panic!("expected StreamFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn dropping_a_stream_stops_the_servers_producer() {
    let mut fixture = start().await;
    let mut stream = fixture
        .client
        .endless("reader".into())
        .await
        .expect("starts");
    for n in 0..5 {
        assert_eq!(stream.next().await.expect("an item").expect("no error"), n);
    }
    drop(stream);
    let event = within("the producer to be dropped", fixture.events.recv()).await;
    assert_eq!(event.as_deref(), Some("dropped reader"));
    assert_eq!(fixture.client.add(1, 2).await.expect("same connection"), 3);
}

#[tokio::test]
async fn a_deadline_covers_the_whole_stream() {
    let mut fixture = start().await;
    // The deadline covers the opening too, which a loaded machine may stretch past a short
    // one: then the test tries again with a longer deadline, under a tag of its own.
    let mut deadline = Duration::from_millis(200);
    let (tag, mut stream) = loop {
        let tag = format!("deadline {} ms", deadline.as_millis());
        let short = fixture.client.with_deadline(deadline);
        match short.endless(tag.clone()).await {
            Ok(stream) => break (tag, stream),
            Err(RpcError::DeadlineExceeded { .. }) if deadline < Duration::from_secs(10) => {
                deadline *= 4;
            }
            Err(error) => panic!("the stream does not open: {error}"),
        }
    };
    let last = within("the deadline", async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => {}
                other => break other,
            }
        }
    })
    .await;
    match last {
        Some(Err(RpcError::DeadlineExceeded { method, .. })) => assert_eq!(method, "endless"),
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    assert!(stream.next().await.is_none(), "nothing after the error");
    let dropped = format!("dropped {tag}");
    within("the producer to be dropped", async {
        while let Some(event) = fixture.events.recv().await {
            if event == dropped {
                return;
            }
        }
        panic!("the server's events ended before {dropped:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_streams_share_a_connection_with_unary_calls() {
    let fixture = start().await;
    let streams = join_all((0..100u64).map(|i| {
        let client = fixture.client.clone();
        async move {
            let stream = client.count(i, i + 200).await.expect("starts");
            let items: Vec<u64> = stream.map(|item| item.expect("no error")).collect().await;
            assert_eq!(items, (i..i + 200).collect::<Vec<_>>());
        }
    }));
    let unary = join_all((0..100u64).map(|i| {
        let client = fixture.client.clone();
        async move { assert_eq!(client.add(i, 1).await.expect("add"), i + 1) }
    }));
    within("100 streams and 100 calls", async {
        tokio::join!(streams, unary)
    })
    .await;
}

/// 1 GiB streamed to a client that reads slowly: the server takes from its source only what the
/// client has room for, so at most a credit window of items (and the one item the sender looks
/// ahead for the stream's end) is ever in flight, checked on every item; unary calls on the same
/// connection keep being answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_back_the_producer_and_memory_stays_bounded() {
    const CHUNKS: u32 = 4096;
    assert_eq!(
        chunks_in_window(),
        16,
        "a window of 1 MiB holds 16 chunks of 64 KiB"
    );
    let fixture = start().await;
    let mut stream = fixture.client.chunks(CHUNKS, CHUNK).await.expect("starts");
    let mut read = 0u64;
    within("256 MiB", async {
        while let Some(chunk) = stream.next().await {
            assert_eq!(chunk.expect("a chunk").len(), CHUNK as usize);
            fixture.window.consume();
            read += 1;
            // The reader is slow: every 64th chunk, it stops until the server has filled the
            // window, and makes a unary call.
            if read.is_multiple_of(64) {
                fixture.window.filled(chunks_in_window()).await;
                assert_eq!(fixture.client.add(read, 1).await.expect("unary"), read + 1);
            }
        }
    })
    .await;
    assert_eq!(read, u64::from(CHUNKS));
    // The window's worth, the item the sender looks ahead for the stream's end, and the item
    // in the reader's hands before it counts it.
    let most_ahead = fixture.window.most_ahead.load(Ordering::SeqCst);
    let window = chunks_in_window();
    assert!(
        (window..=window + 2).contains(&most_ahead),
        "the producer ran {most_ahead} chunks of 64 KiB ahead of the reader"
    );
}

/// A sender whose source is always ready, with credit to spare, still gives the other tasks of
/// its runtime a turn every few batches, rather than encoding all it may send in one go: on a
/// multi-thread runtime, that is what lets another worker take it over while the one it ran on
/// writes what it encoded. An observer on the same single thread sees how many items were
/// produced between two of its turns.
#[tokio::test]
async fn a_busy_sender_gives_other_tasks_a_turn() {
    const CHUNKS: u32 = 4096;
    const SIZE: u32 = 1024;
    let fixture = start().await;
    let client = NumbersClient::builder()
        .stream_window(64 * 1024 * 1024)
        .connect(fixture.addr)
        .await
        .expect("connects");
    let window = Arc::clone(&fixture.window);
    let observer = tokio::spawn(async move {
        let (mut last, mut most) = (0, 0);
        loop {
            let produced = window.produced.load(Ordering::SeqCst);
            most = most.max(produced - last);
            last = produced;
            if produced == u64::from(CHUNKS) {
                return most;
            }
            tokio::task::yield_now().await;
        }
    });
    let stream = client.chunks(CHUNKS, SIZE).await.expect("starts");
    let read = within("4 MiB", stream.count()).await;
    assert_eq!(read, CHUNKS as usize);
    let most = within("the observer", observer).await.expect("observes");
    // The sender yields after 128 KiB sent in full batches of 32 KiB: about 128 chunks of 1 KiB
    // between two turns, against all 4096 in one go without it, and 64 when it gave up its turn
    // after every batch (each a trip through the scheduler).
    assert!(
        (100..=256).contains(&most),
        "{most} chunks were produced while the other tasks waited"
    );
}

/// A stream item larger than the client's frame limit is not sent: the stream ends with an error
/// saying so, and the connection goes on serving.
#[tokio::test]
async fn a_stream_item_over_the_clients_limit_ends_the_stream_not_the_connection() {
    let fixture = start().await;
    let client = NumbersClient::builder()
        .max_frame_len(1024)
        .connect(fixture.addr)
        .await
        .expect("connects");
    let mut stream = client.chunks(2, 2048).await.expect("starts");
    match within("the stream", stream.next()).await {
        Some(Err(RpcError::StreamFailed { message })) => {
            assert!(message.contains("too large"), "{message}");
        }
        other => panic!("expected StreamFailed, got {other:?}"),
    }
    assert!(stream.next().await.is_none());
    assert_eq!(client.add(1, 2).await.expect("the same connection"), 3);
}

#[tokio::test]
async fn a_dropped_connection_ends_every_stream_with_an_error() {
    let (events, _) = mpsc::unbounded_channel();
    let (listener, addr) = rpc_tests::loopback_listener().await;
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accepts");
        let lab = Impl {
            events,
            window: Arc::default(),
        };
        rpc_core::serve_connection(stream, NumbersServer::new(lab)).await
    });
    let client = NumbersClient::connect(addr).await.expect("connects");
    let mut streams = Vec::new();
    for tag in ["a", "b", "c"] {
        let mut stream = client.endless(tag.into()).await.expect("starts");
        assert_eq!(stream.next().await.expect("an item").expect("no error"), 0);
        streams.push(stream);
    }
    let (upload_tx, upload) = Streaming::channel(1);
    let upload_sum = tokio::spawn({
        let client = client.clone();
        async move { client.sum(upload).await }
    });
    upload_tx.send(1).await.expect("the upload starts");

    server.abort();
    for mut stream in streams {
        let last = within("the stream's end", async {
            loop {
                match stream.next().await {
                    Some(Ok(_)) => {}
                    other => break other,
                }
            }
        })
        .await;
        assert!(
            matches!(
                last,
                Some(Err(RpcError::ConnectionClosed | RpcError::Io(_)))
            ),
            "{last:?}"
        );
        assert!(stream.next().await.is_none());
    }
    // The upload's first item may still be in its channel, the call not yet sent: then it
    // fails as never run. Either way it fails rather than hangs.
    match within("the upload", upload_sum).await.expect("joins") {
        Err(RpcError::Interrupted { method, .. }) => assert_eq!(method, "sum"),
        Err(RpcError::ConnectionClosed | RpcError::Connect { .. }) => {}
        other => panic!("expected the upload to fail, got {other:?}"),
    }
}

/// An item may go while its stream has any credit left, whatever it costs: what it costs past
/// the window counts among what the server's calls hold until the handler takes it. A server
/// that may not hold it drops it and ends the stream for the handler with an error; the
/// connection goes on, and the same item goes through a server that may.
#[tokio::test]
async fn an_item_past_the_window_counts_among_what_the_servers_calls_hold() {
    let large = || Streaming::iter([ByteBuf::from(vec![7; 2 * 1024 * 1024])]);
    let tight = Server::builder()
        .stream_window(64 * 1024)
        .max_argument_bytes(1024 * 1024);
    let fixture = start_with(tight).await;
    let total = within("the upload", fixture.client.total_len(large())).await;
    assert_eq!(total.expect("answered"), u64::MAX, "the stream failed");
    let small = Streaming::iter([ByteBuf::from(vec![7; 1000]), ByteBuf::from(vec![7; 24])]);
    let total = within("a small upload", fixture.client.total_len(small)).await;
    assert_eq!(total.expect("answered"), 1024, "the connection goes on");

    let roomy = Server::builder().stream_window(64 * 1024);
    let fixture = start_with(roomy).await;
    let total = within("the upload", fixture.client.total_len(large())).await;
    assert_eq!(total.expect("answered"), 2 * 1024 * 1024);
}

/// The other direction: a client uploading 16 MiB to a server that reads slowly takes from its
/// source only what the server has granted credit for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_holds_back_the_uploading_client() {
    let fixture = start().await;
    let window = Arc::clone(&fixture.window);
    window.total.store(256, Ordering::SeqCst);
    let source = futures_util::stream::iter(0..256).map(move |_| {
        window.produce();
        ByteBuf::from(vec![1; CHUNK as usize])
    });
    let read = within(
        "16 MiB up",
        fixture.client.slow_count(Streaming::new(source)),
    )
    .await
    .expect("slow_count");
    assert_eq!(read, 256);
    let most_ahead = fixture.window.most_ahead.load(Ordering::SeqCst);
    let window = chunks_in_window();
    assert!(
        (window..=window + 2).contains(&most_ahead),
        "the client's source ran {most_ahead} chunks of 64 KiB ahead of the server"
    );
}

/// Payloads streamed together reach the client as slices of the frames they arrived in, not as
/// copies: each lies in memory right after the one before it and the next frame's few bytes.
#[tokio::test]
async fn streamed_payloads_share_the_memory_they_arrived_in() {
    let fixture = start().await;
    let stream = fixture.client.pieces(100, 100).await.expect("starts");
    let pieces: Vec<Payload> = within("the stream", stream.collect::<Vec<_>>())
        .await
        .into_iter()
        .map(|piece| piece.expect("no error"))
        .collect();
    for (n, piece) in pieces.iter().enumerate() {
        assert_eq!(piece[..], vec![n as u8; 100], "piece {n}");
    }
    // Between two pieces: the next frame's length prefix, its kind, its one-byte call id and
    // the piece's one-byte length.
    let adjacent = pieces
        .windows(2)
        .filter(|pair| pair[0].as_ptr() as usize + 100 + 7 == pair[1].as_ptr() as usize)
        .count();
    assert!(
        adjacent >= 50,
        "only {adjacent} of 99 pieces follow the one before in memory"
    );
}

/// Payloads large enough to go out from their own memory, several to a write, arrive intact
/// and in order.
#[tokio::test]
async fn large_streamed_payloads_arrive_intact() {
    let fixture = start().await;
    let size = 20 * 1024;
    let stream = fixture.client.pieces(6, size).await.expect("starts");
    let pieces: Vec<Payload> = within("the stream", stream.collect::<Vec<_>>())
        .await
        .into_iter()
        .map(|piece| piece.expect("no error"))
        .collect();
    assert_eq!(pieces.len(), 6);
    for (n, piece) in pieces.iter().enumerate() {
        assert!(
            piece.iter().all(|&byte| byte == n as u8) && piece.len() == size as usize,
            "piece {n} arrived altered"
        );
    }
}
