//! When a connection's reader gives the runtime a turn. A reader that hands on a frame wakes the
//! task that takes it (the writer with an answer, a caller with its reply), and on a
//! multi-thread runtime that task waits, in a slot no other worker takes, until the reader
//! stops. The reader stops on its own after a long run of requests from one read, and after
//! each large frame, so that what it woke runs while it reads on.
//!
//! The connections here run over in-memory pipes that count the bytes through them, on one
//! thread, where a turn lets every task woken so far run first: whether one came shows in how
//! many bytes had moved when a handler or a caller ran.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use rpc_core::ServiceClient;
use rpc_tests::{
    STREAM_WINDOW, VERSION, frame, hello, read_frame_from, read_varint, request, service_hello,
    varint, within,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

/// A server whose methods report how many bytes the server had written when they ran.
#[rpc_core::service]
trait Written {
    async fn so_far(&self) -> u64;
    /// `data` back, with the bytes written so far.
    async fn so_far_with(&self, data: Vec<u8>) -> (u64, Vec<u8>);
    /// `len` zero bytes.
    async fn zeros(&self, len: u64) -> Vec<u8>;
}

struct Observer(Arc<AtomicU64>);

impl Written for Observer {
    async fn so_far(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    async fn so_far_with(&self, data: Vec<u8>) -> (u64, Vec<u8>) {
        (self.0.load(Ordering::SeqCst), data)
    }

    async fn zeros(&self, len: u64) -> Vec<u8> {
        vec![0; len as usize]
    }
}

/// A pipe's end that counts the bytes read and written through it.
struct Counted {
    io: DuplexStream,
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl Counted {
    fn new(io: DuplexStream) -> Self {
        Counted {
            io,
            read: Arc::default(),
            written: Arc::default(),
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.read.fetch_add(read as u64, Ordering::SeqCst);
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(taken)) = polled {
            self.written.fetch_add(taken as u64, Ordering::SeqCst);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Reads one frame's payload.
async fn read_frame(io: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    read_frame_from(io).await.expect("a frame")
}

/// A server of `Written` on a counted pipe, with its client's end after the handshake, and the
/// length of the server's hello.
async fn serve() -> (DuplexStream, u64) {
    let (mut client, server_end) = tokio::io::duplex(4 << 20);
    let server_end = Counted::new(server_end);
    let observer = Observer(Arc::clone(&server_end.written));
    tokio::spawn(rpc_core::serve_connection(
        server_end,
        WrittenServer::new(observer),
    ));
    let hello = hello("Written", VERSION);
    client.write_all(&hello).await.expect("writes");
    let hello_len = 4 + read_frame(&mut client).await.len() as u64;
    (client, hello_len)
}

/// The hello of a server of `Written`, with its method table, as a client checks it.
fn server_hello() -> Vec<u8> {
    let schema = WrittenClient::INFO.describe().expect("described");
    service_hello("Written", &schema.methods, 0, 0, STREAM_WINDOW)
}

/// A successful response's id and body.
fn response(payload: &[u8]) -> (u64, &[u8]) {
    assert_eq!(payload[0], 0x02, "a response");
    let (id, at) = read_varint(&payload[1..]);
    assert_eq!(payload[1 + at], 0x00, "an Ok outcome");
    (id, &payload[2 + at..])
}

/// Of many requests that arrive together, the server does not hold every answer back until it
/// has handled the last: the answers to the first go out while the rest wait, so that the
/// client can start on them. (The first answers still wait for each other, to share a write.)
#[tokio::test]
async fn answers_to_a_long_batch_leave_before_the_whole_batch_is_handled() {
    let (mut client, hello_len) = serve().await;
    let calls = 1000;
    let batch: Vec<u8> = (0..calls)
        .flat_map(|id| request(id, "so_far", &[]))
        .collect();
    client.write_all(&batch).await.expect("writes");
    let mut seen = vec![None; calls as usize];
    for _ in 0..calls {
        let answer = within("an answer", read_frame(&mut client)).await;
        let (id, body) = response(&answer);
        seen[id as usize] = Some(read_varint(body).0);
    }
    assert_eq!(seen[0], Some(hello_len), "the first waits to share a write");
    let last = seen[calls as usize - 1].expect("the last was answered");
    assert!(
        last > hello_len,
        "when the last request ran, answers had gone out: {last} bytes written"
    );
}

/// After a large request (of 128 KiB or more, after which the reader takes its turn), the
/// server's writer sends its answer before the reader handles the next request, though the next
/// has arrived already.
#[tokio::test]
async fn a_large_requests_answer_leaves_before_the_next_request_is_handled() {
    let (mut client, hello_len) = serve().await;
    let data = vec![7; 200_000];
    let mut args = varint(data.len() as u64);
    args.extend_from_slice(&data);
    let both = [
        request(0, "so_far_with", &args),
        request(1, "so_far_with", &args),
    ]
    .concat();
    client.write_all(&both).await.expect("writes");
    let mut seen = [0; 2];
    for _ in 0..2 {
        let answer = within("an answer", read_frame(&mut client)).await;
        let (id, body) = response(&answer);
        let (so_far, at) = read_varint(body);
        assert_eq!(body[at..], [&varint(data.len() as u64)[..], &data].concat());
        seen[id as usize] = so_far;
    }
    assert_eq!(seen[0], hello_len, "nothing was written before the first");
    assert!(
        seen[1] > hello_len + data.len() as u64,
        "the first answer was written before the second request ran: {} bytes",
        seen[1]
    );
}

/// After a large answer, the client's caller gets it before the client's reader reads on, though
/// the next answer has arrived already.
#[tokio::test]
async fn a_large_answers_caller_runs_before_the_next_answer_is_read() {
    let (client_end, mut server) = tokio::io::duplex(4 << 20);
    let client_end = Counted::new(client_end);
    let read = Arc::clone(&client_end.read);
    let len = 1 << 20;
    let answering = async move {
        let client_hello = read_frame(&mut server).await;
        assert_eq!(&client_hello[..5], b"\x00rpcc", "the client's hello");
        server.write_all(&server_hello()).await.expect("writes");
        let mut ids = Vec::new();
        for _ in 0..2 {
            let call = read_frame(&mut server).await;
            ids.push(read_varint(&call[1..]).0);
        }
        // Both answers at once, in the order asked.
        let mut answers = Vec::new();
        for id in ids {
            let mut payload = vec![0x02];
            payload.extend(varint(id));
            payload.push(0x00);
            payload.extend(varint(len));
            payload.resize(payload.len() + len as usize, 0);
            answers.extend(frame(&payload));
        }
        server.write_all(&answers).await.expect("writes");
        (server, answers.len() as u64)
    };
    let serving = tokio::spawn(answering);
    let client = WrittenClient::from_stream(client_end)
        .await
        .expect("a handshake");
    let hello_len = read.load(Ordering::SeqCst);
    let first = tokio::spawn({
        let client = client.clone();
        let read = Arc::clone(&read);
        async move {
            let zeros = client.zeros(len).await.expect("zeros");
            assert_eq!(zeros.len() as u64, len);
            read.load(Ordering::SeqCst)
        }
    });
    let second = tokio::spawn({
        let client = client.clone();
        async move { client.zeros(len).await.expect("zeros").len() as u64 }
    });
    let (_server, answers_len) = within("the server", serving).await.expect("answers");
    let read_when_first = within("the first call", first).await.expect("answered");
    assert_eq!(
        within("the second call", second).await.expect("answered"),
        len
    );
    assert!(
        read_when_first < hello_len + answers_len,
        "the first caller had its answer before the second answer was read: \
         {read_when_first} bytes read of {}",
        hello_len + answers_len
    );
}
