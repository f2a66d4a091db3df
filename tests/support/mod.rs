//! What the integration tests share: a test service whose handlers can be held at a gate, a
//! server starter, and a raw client that speaks the protocol byte by byte, as `docs/wire.md`
//! describes it, to send the server what no well-behaved client would.

pub mod certs;
pub mod greeter;
pub mod nest;
pub mod odd;
pub mod rng;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Barrier, mpsc, watch};

/// An application error, returned as a plain value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MathError {
    /// The divisor was zero.
    DivideByZero,
}

/// The service every integration test talks to.
#[rpc_core::service]
pub trait Lab {
    /// Adds two numbers.
    async fn add(&self, a: i64, b: i64) -> i64;
    /// Divides, or says why not.
    async fn div(&self, a: i64, b: i64) -> Result<i64, MathError>;
    /// Returns its argument.
    async fn echo(&self, bytes: Vec<u8>) -> Vec<u8>;
    /// Returns its argument, received without a copy out of its frame.
    async fn echo_payload(&self, bytes: rpc_core::Payload) -> rpc_core::Payload;
    /// Returns `len` zero bytes.
    async fn zeros(&self, len: u64) -> Vec<u8>;
    /// Adds one to a counter shared by every connection, and returns it.
    async fn incr(&self) -> u64;
    /// Reports "waiting {gate}", waits until `gate` is opened, then returns its name.
    async fn wait(&self, gate: String) -> String;
    /// Opens `gate`, releasing every call waiting at it, now and later.
    async fn open(&self, gate: String);
    /// Returns once `parties` calls (the number given at construction) are inside at once.
    async fn rendezvous(&self);
    /// Panics with `message`.
    async fn panic(&self, message: String) -> u64;
    /// Returns nothing.
    async fn reset(&self);
    /// Reports "started {tag}", then would run for 10 s before reporting "finished {tag}";
    /// reports "dropped {tag}" if its future is dropped before that.
    async fn hold(&self, tag: String);
    /// What the handler sees of its call through `rpc_core::Context`.
    async fn whoami(&self) -> CallInfo;
    /// Counts itself as running, yields a few times, and returns.
    async fn tracked(&self) -> u64;
    /// Streams the numbers from 0 up to, not including, `to`.
    async fn count(&self, to: u64) -> rpc_core::Streaming<u64>;
    /// Adds up a stream of numbers.
    async fn sum(&self, numbers: rpc_core::Streaming<u64>) -> u64;
    /// Returns its argument, a `serde_bytes::ByteBuf`.
    async fn echo_buf(&self, bytes: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf;
    /// Waits until `gate` is opened, then returns `len` zero bytes.
    async fn zeros_at(&self, gate: String, len: u64) -> Vec<u8>;
}

/// A handler's view of its call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallInfo {
    /// `Context::request_id`.
    pub request_id: u64,
    /// `Context::method`.
    pub method: String,
    /// `Context::peer_addr`.
    pub peer: Option<SocketAddr>,
    /// Milliseconds left until `Context::deadline`, if there is one.
    pub deadline_left_ms: Option<u64>,
    /// `Context::metadata`, as pairs.
    pub metadata: Vec<(String, Vec<u8>)>,
    /// `Context::peer_credentials`: user, group and process ids.
    pub credentials: Option<(u32, u32, Option<i32>)>,
}

/// What a test can see of, and do to, a [`LabImpl`] it gave to a server.
#[derive(Debug)]
pub struct Probe {
    gates: Mutex<HashMap<String, watch::Sender<bool>>>,
    events_tx: mpsc::UnboundedSender<String>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    running: AtomicU64,
    most_running: AtomicU64,
    /// How many `zeros_at` calls wait at their gates.
    at_gates: watch::Sender<u64>,
}

impl Probe {
    fn new() -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        Probe {
            gates: Mutex::new(HashMap::new()),
            events_tx,
            events: tokio::sync::Mutex::new(events),
            running: AtomicU64::new(0),
            most_running: AtomicU64::new(0),
            at_gates: watch::channel(0).0,
        }
    }

    /// Returns once `calls` calls of `zeros_at` (or more) wait at their gates: all of a
    /// client's requests are read and running, and opening the gate answers them at once.
    pub async fn until_at_gates(&self, calls: u64) {
        let mut at_gates = self.at_gates.subscribe();
        let waiting = at_gates.wait_for(|&waiting| waiting >= calls);
        within("the calls at their gates", waiting)
            .await
            .expect("the lab is alive");
    }

    fn gate(&self, name: &str) -> watch::Sender<bool> {
        let mut gates = self.gates.lock().expect("gates lock");
        gates
            .entry(name.to_owned())
            .or_insert_with(|| watch::channel(false).0)
            .clone()
    }

    /// Opens `gate`, as the `open` method does.
    pub fn open(&self, gate: &str) {
        self.gate(gate).send_replace(true);
    }

    /// The next event a handler reported.
    pub async fn next_event(&self) -> String {
        within("a handler event", async {
            self.events
                .lock()
                .await
                .recv()
                .await
                .expect("the lab is alive")
        })
        .await
    }

    /// The next event a handler reported, if one is waiting.
    pub fn try_next_event(&self) -> Option<String> {
        self.events.try_lock().ok()?.try_recv().ok()
    }

    /// The most `wait` and `tracked` calls that ever ran at once.
    pub fn most_running(&self) -> u64 {
        self.most_running.load(Ordering::SeqCst)
    }

    fn report(&self, event: String) {
        let _ = self.events_tx.send(event);
    }

    fn enter(&self) -> Running<'_> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        Running(self)
    }
}

/// Counts a call as running until dropped.
struct Running<'a>(&'a Probe);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a `zeros_at` call as waiting at its gate until dropped.
struct AtGate<'a>(&'a Probe);

impl<'a> AtGate<'a> {
    fn enter(probe: &'a Probe) -> Self {
        probe.at_gates.send_modify(|waiting| *waiting += 1);
        AtGate(probe)
    }
}

impl Drop for AtGate<'_> {
    fn drop(&mut self) {
        self.0.at_gates.send_modify(|waiting| *waiting -= 1);
    }
}

/// Reports whether the handler holding it finished or was dropped.
struct HoldGuard<'a> {
    probe: &'a Probe,
    tag: String,
    finished: bool,
}

impl Drop for HoldGuard<'_> {
    fn drop(&mut self) {
        let outcome = if self.finished { "finished" } else { "dropped" };
        self.probe.report(format!("{outcome} {}", self.tag));
    }
}

/// The implementation of [`Lab`].
#[derive(Debug)]
pub struct LabImpl {
    counter: AtomicU64,
    barrier: Barrier,
    probe: Arc<Probe>,
}

impl LabImpl {
    /// A lab whose `rendezvous` waits for `parties` calls.
    pub fn new(parties: usize) -> Self {
        LabImpl {
            counter: AtomicU64::new(0),
            barrier: Barrier::new(parties),
            probe: Arc::new(Probe::new()),
        }
    }

    /// A handle to watch and steer this lab after giving it to a server.
    pub fn probe(&self) -> Arc<Probe> {
        Arc::clone(&self.probe)
    }
}

impl Default for LabImpl {
    fn default() -> Self {
        Self::new(2)
    }
}

impl Lab for LabImpl {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn div(&self, a: i64, b: i64) -> Result<i64, MathError> {
        a.checked_div(b).ok_or(MathError::DivideByZero)
    }

    async fn echo(&self, bytes: Vec<u8>) -> Vec<u8> {
        bytes
    }

    async fn echo_payload(&self, bytes: rpc_core::Payload) -> rpc_core::Payload {
        bytes
    }

    async fn zeros(&self, len: u64) -> Vec<u8> {
        vec![0; len as usize]
    }

    async fn incr(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::SeqCst) + 1
    }

    async fn zeros_at(&self, gate: String, len: u64) -> Vec<u8> {
        let mut open = self.probe.gate(&gate).subscribe();
        let at_gate = AtGate::enter(&self.probe);
        open.wait_for(|open| *open).await.expect("gate kept");
        drop(at_gate);
        vec![0; len as usize]
    }

    async fn wait(&self, gate: String) -> String {
        let _running = self.probe.enter();
        let mut open = self.probe.gate(&gate).subscribe();
        self.probe.report(format!("waiting {gate}"));
        open.wait_for(|open| *open).await.expect("gate kept");
        gate
    }

    async fn open(&self, gate: String) {
        self.probe.open(&gate);
    }

    async fn rendezvous(&self) {
        self.barrier.wait().await;
    }

    async fn panic(&self, message: String) -> u64 {
        panic!("{message}");
    }

    async fn reset(&self) {
        self.counter.store(0, Ordering::SeqCst);
    }

    async fn hold(&self, tag: String) {
        self.probe.report(format!("started {tag}"));
        let mut guard = HoldGuard {
            probe: &self.probe,
            tag,
            finished: false,
        };
        tokio::time::sleep(Duration::from_secs(10)).await;
        guard.finished = true;
    }

    async fn whoami(&self) -> CallInfo {
        let call = rpc_core::Context::current();
        CallInfo {
            request_id: call.request_id(),
            method: call.method().to_owned(),
            peer: call.peer_addr(),
            credentials: call
                .peer_credentials()
                .map(|who| (who.uid(), who.gid(), who.pid())),
            deadline_left_ms: call.deadline().map(|deadline| {
                deadline
                    .saturating_duration_since(std::time::Instant::now())
                    .as_millis() as u64
            }),
            metadata: call
                .metadata()
                .iter()
                .map(|(key, value)| (key.to_owned(), value.to_vec()))
                .collect(),
        }
    }

    async fn tracked(&self) -> u64 {
        let _running = self.probe.enter();
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        self.probe.running.load(Ordering::SeqCst)
    }

    async fn count(&self, to: u64) -> rpc_core::Streaming<u64> {
        rpc_core::Streaming::iter(0..to)
    }

    async fn sum(&self, mut numbers: rpc_core::Streaming<u64>) -> u64 {
        let mut total = 0;
        while let Some(number) = numbers.next().await {
            match number {
                Ok(number) => total += number,
                Err(_) => return u64::MAX,
            }
        }
        total
    }

    async fn echo_buf(&self, bytes: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
        bytes
    }
}

/// Starts a TCP server for a fresh [`LabImpl`] on a free loopback port.
pub async fn start_tcp() -> SocketAddr {
    start_tcp_with(rpc_core::Server::builder(), LabImpl::default()).await
}

/// Starts a TCP server with `builder`'s settings, serving `lab`.
pub async fn start_tcp_with(builder: rpc_core::ServerBuilder, lab: LabImpl) -> SocketAddr {
    serve_on_loopback(builder, LabServer::new(lab)).await
}

/// Serves `services` with `builder`'s settings on a free loopback port, in a task of its own;
/// returns the address.
pub async fn serve_on_loopback(
    builder: rpc_core::ServerBuilder,
    services: impl rpc_core::ServiceSet,
) -> SocketAddr {
    let server = builder.bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("has an address");
    tokio::spawn(server.serve(services));
    addr
}

/// A server builder whose interceptor refuses every call to `method`: permission denied, "not
/// for you".
pub fn refusing(method: &'static str) -> rpc_core::ServerBuilder {
    rpc_core::Server::builder().intercept(move |call| {
        if call.method() == method {
            Err(rpc_core::Status::permission_denied("not for you"))
        } else {
            Ok(())
        }
    })
}

/// A TCP listener on a free loopback port, for tests that play the server by hand.
pub async fn loopback_listener() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("has an address");
    (listener, addr)
}

/// A free loopback port held for as long as the returned socket lives: bound (with
/// `SO_REUSEADDR`, as a listener binds) but not listened on, so connections to it are refused,
/// a server may bind it beside the socket, and bind it again after it stops, and no other socket
/// of the suite takes the port meanwhile. A port freed by dropping a listener is not safe for
/// that: any test binding port 0 in the meantime may be given it.
pub fn held_loopback_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.set_reuseaddr(true).expect("reuses the address");
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    socket.bind(any_port).expect("binds");
    let addr = socket.local_addr().expect("has an address");
    (socket, addr)
}

/// A fresh directory of this test process under the system's temporary directory, removed
/// with everything in it when dropped, so that a test leaves no files behind (a private key
/// among them), whether it passes or panics.
#[derive(Debug)]
pub struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    /// Makes `rpc-{tag}-{process id}`, emptied first of what an earlier process of the same id
    /// may have left.
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("rpc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        ScratchDir(dir)
    }

    /// The path of `name` in the directory.
    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fails the test, instead of hanging it, if `work` does not finish in 20 s. A guard against
/// hangs, not a measure of speed: every use finishes in milliseconds when the code works.
pub async fn within<T>(what: &str, work: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), work)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

/// How many panics the process has had since this was first called, on any thread: the fuzz
/// tests check that what they throw at a side panics nothing in it, which a panic caught by a
/// task or a server (and so not failing the test) would otherwise hide.
pub fn panics() -> &'static std::sync::atomic::AtomicUsize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    static COUNTING: std::sync::Once = std::sync::Once::new();
    COUNTING.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            report(info);
        }));
    });
    &PANICS
}

/// Calls the echoing Lab `method` with `args`, encoded by hand, and checks that the answer is
/// a Response to id 4, Ok, then the same bytes.
pub async fn echoed_as_sent(method: &str, args: &[u8]) {
    let mut raw = RawClient::handshake(start_tcp().await).await;
    raw.send(&request(4, method, args)).await;
    let answer = within("an answer", raw.read_frame())
        .await
        .expect("answered");
    assert_eq!(answer[..3], [0x02, 0x04, 0x00]);
    assert_eq!(answer[3..], args[..]);
}

/// postcard's unsigned varint: seven bits a byte, least significant first.
pub fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Reads postcard's unsigned varint at the start of `bytes`: the value and the bytes it took.
pub fn read_varint(bytes: &[u8]) -> (u64, usize) {
    let mut value = 0;
    for (at, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * at);
        if byte & 0x80 == 0 {
            return (value, at + 1);
        }
    }
    panic!("not a varint: {bytes:?}");
}

/// A postcard string: varint length, then UTF-8.
pub fn string(text: &str) -> Vec<u8> {
    let mut out = varint(text.len() as u64);
    out.extend_from_slice(text.as_bytes());
    out
}

/// A frame: 4-byte big-endian payload length, then the payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// `add(2, 3)`'s arguments, as a request frame carries them: two zigzag varints.
pub const ADD_2_3: [u8; 2] = [0x04, 0x06];

/// The protocol version rpc-core speaks.
pub const VERSION: u32 = 2;

/// The stream window rpc-core announces by default: the credit each stream it receives starts
/// with, in bytes.
pub const STREAM_WINDOW: u32 = 1024 * 1024;

/// What a stream item costs in credit: its frame's length with the prefix, plus 32.
pub const fn item_cost(frame_payload_len: usize) -> u64 {
    4 + frame_payload_len as u64 + 32
}

/// A hello for `service`: no methods of its own, no pings, no limit on concurrent calls, the
/// default stream window.
pub fn hello(service: &str, version: u32) -> Vec<u8> {
    hello_with_window(service, version, STREAM_WINDOW)
}

/// [`hello`] with the given stream window.
pub fn hello_with_window(service: &str, version: u32, stream_window: u32) -> Vec<u8> {
    let mut payload = vec![0x00];
    payload.extend_from_slice(b"rpcc");
    payload.extend(varint(version.into()));
    payload.extend(varint(16 * 1024 * 1024));
    payload.extend(string(service));
    payload.extend(varint(0)); // methods
    payload.extend(varint(0)); // ping interval
    payload.extend(varint(0)); // max concurrent calls
    payload.extend(varint(stream_window.into()));
    frame(&payload)
}

/// A client's hello for `service` that announces serving back: the services table (empty),
/// then `01` (docs/wire.md section 5).
pub fn hello_serving_back(service: &str) -> Vec<u8> {
    let mut hello = hello(service, VERSION);
    hello.extend([0x00, 0x01]);
    let length = (hello.len() - 4) as u32;
    hello[..4].copy_from_slice(&length.to_be_bytes());
    hello
}

/// A go-away frame: `reason` (0 shutting down, 1 idle, 2 making room, 3 protocol error), then
/// `message`, of fewer than 128 bytes.
pub fn go_away_frame(reason: u8, message: &str) -> Vec<u8> {
    let len = u8::try_from(message.len()).expect("a short message");
    assert!(len < 0x80, "a one-byte length");
    let mut payload = vec![0x05, reason, len];
    payload.extend_from_slice(message.as_bytes());
    frame(&payload)
}

/// Wraps a frame (length prefix included) of the reverse connection, the calls from a server
/// to its client, in an outer frame of kind 9 (docs/wire.md section 12).
pub fn reverse_frame(inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x09];
    payload.extend_from_slice(&inner[4..]);
    frame(&payload)
}

/// The methods of `Lab`, with their fingerprints, for hellos written by hand.
pub fn lab_methods() -> &'static [rpc_core::schema::MethodSchema] {
    use rpc_core::ServiceClient;
    &LabClient::INFO
        .describe()
        .expect("Lab's types can be described")
        .methods
}

/// A hello for `Lab`, as either side may send it, with the given method table, ping interval
/// and in-flight limit (0 for none, as clients send), and the default stream window.
pub fn lab_hello(
    methods: &[rpc_core::schema::MethodSchema],
    ping_interval_ms: u64,
    max_concurrent_calls: u32,
) -> Vec<u8> {
    lab_hello_with_window(
        methods,
        ping_interval_ms,
        max_concurrent_calls,
        STREAM_WINDOW,
    )
}

/// [`lab_hello`] with the given stream window.
pub fn lab_hello_with_window(
    methods: &[rpc_core::schema::MethodSchema],
    ping_interval_ms: u64,
    max_concurrent_calls: u32,
    stream_window: u32,
) -> Vec<u8> {
    service_hello(
        "Lab",
        methods,
        ping_interval_ms,
        max_concurrent_calls,
        stream_window,
    )
}

/// A hello for `service`, as either side may send it, with the given method table, ping
/// interval, in-flight limit and stream window.
pub fn service_hello(
    service: &str,
    methods: &[rpc_core::schema::MethodSchema],
    ping_interval_ms: u64,
    max_concurrent_calls: u32,
    stream_window: u32,
) -> Vec<u8> {
    let mut payload = vec![0x00];
    payload.extend_from_slice(b"rpcc");
    payload.extend(varint(VERSION.into()));
    payload.extend(varint(16 * 1024 * 1024));
    payload.extend(string(service));
    payload.extend(varint(methods.len() as u64));
    for method in methods {
        payload.extend(string(&method.name));
        payload.extend(varint(method.fingerprint));
    }
    payload.extend(varint(ping_interval_ms));
    payload.extend(varint(max_concurrent_calls.into()));
    payload.extend(varint(stream_window.into()));
    frame(&payload)
}

/// A request frame calling `method` with already-encoded `args`, no deadline, no metadata.
pub fn request(id: u64, method: &str, args: &[u8]) -> Vec<u8> {
    request_with_timeout(id, method, 0, args)
}

/// Request frames for `calls` calls of `zeros_at(gate, len)`, ids from 0: answers of `len` bytes
/// each, which all come at once when `gate` opens.
pub fn answers_at(gate: &str, calls: u64, len: u64) -> Vec<u8> {
    let mut args = string(gate);
    args.extend(varint(len));
    (0..calls)
        .flat_map(|id| request(id, "zeros_at", &args))
        .collect()
}

/// A request frame with a deadline `timeout_ms` from now (0: none).
pub fn request_with_timeout(id: u64, method: &str, timeout_ms: u64, args: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x01];
    payload.extend(varint(id));
    payload.extend(string(method));
    payload.extend(varint(timeout_ms));
    payload.extend(varint(0)); // metadata
    payload.extend_from_slice(args);
    frame(&payload)
}

/// Reads one frame's payload from `io`, or `None` if the stream ends or fails first.
pub async fn read_frame_from(io: &mut (impl AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let mut prefix = [0; 4];
    io.read_exact(&mut prefix).await.ok()?;
    let mut payload = vec![0; u32::from_be_bytes(prefix) as usize];
    io.read_exact(&mut payload).await.ok()?;
    Some(payload)
}

/// A client that writes raw bytes, for feeding the server what a real client never would.
#[derive(Debug)]
pub struct RawClient {
    /// The connection.
    pub stream: TcpStream,
}

impl RawClient {
    /// Connects without sending anything.
    pub async fn connect(addr: SocketAddr) -> Self {
        RawClient {
            stream: TcpStream::connect(addr).await.expect("connects"),
        }
    }

    /// Accepts a client on `listener`, playing the server by hand, and reads the client's
    /// hello, which it returns with the connection.
    pub async fn accept(listener: &tokio::net::TcpListener) -> (Self, Vec<u8>) {
        let (stream, _) = listener.accept().await.expect("accepts");
        let mut raw = RawClient { stream };
        let hello = within("the client's hello", raw.read_frame())
            .await
            .expect("a hello");
        (raw, hello)
    }

    /// Accepts a client of `Lab` on `listener`, playing the server by hand: reads the client's
    /// hello and answers with a server's.
    pub async fn accept_as_lab(listener: &tokio::net::TcpListener) -> Self {
        let (mut raw, _) = Self::accept(listener).await;
        raw.send(&lab_hello(lab_methods(), 0, 0)).await;
        raw
    }

    /// Connects, sends `hello` (a whole frame) and reads the server's hello.
    pub async fn greet(addr: SocketAddr, hello: &[u8]) -> Self {
        let mut raw = Self::connect(addr).await;
        raw.send(hello).await;
        let server_hello = within("the server's hello", raw.read_frame())
            .await
            .expect("the server answers the hello");
        assert_eq!(&server_hello[..5], b"\x00rpcc", "the server's hello");
        raw
    }

    /// Connects and completes the handshake as a client of `Lab`.
    pub async fn handshake(addr: SocketAddr) -> Self {
        Self::handshake_with_window(addr, STREAM_WINDOW).await
    }

    /// Connects and completes the handshake as a client of `Lab` that gives each stream it
    /// receives `stream_window` bytes of credit.
    pub async fn handshake_with_window(addr: SocketAddr, stream_window: u32) -> Self {
        let mut raw = Self::connect(addr).await;
        raw.send(&hello_with_window("Lab", VERSION, stream_window))
            .await;
        let server_hello = raw
            .read_frame()
            .await
            .expect("the server answers the hello");
        assert_eq!(
            &server_hello[..5],
            b"\x00rpcc",
            "the server's hello starts with its magic"
        );
        raw
    }

    /// Writes bytes as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("writes");
    }

    /// Reads one frame's payload, or `None` if the server closed the connection.
    pub async fn read_frame(&mut self) -> Option<Vec<u8>> {
        read_frame_from(&mut self.stream).await
    }

    /// Reads the next frame, which must be a request, playing the server; returns its id, which
    /// must be under 128 (one byte as a varint).
    pub async fn read_request_id(&mut self) -> u8 {
        let request = within("a request", self.read_frame())
            .await
            .expect("a request, not the connection's end");
        assert_eq!(request.first(), Some(&0x01), "a request: {request:02x?}");
        match request.get(1) {
            Some(&id) if id < 0x80 => id,
            _ => panic!("a request with an id of one byte: {request:02x?}"),
        }
    }

    /// Reads frames until a go-away, which must give `reason` (0 shutting down, 1 idle, 2 making
    /// room, 3 protocol error) and a message containing `says`; returns the frames before it.
    pub async fn expect_go_away(&mut self, reason: u8, says: &str) -> Vec<Vec<u8>> {
        let mut before = Vec::new();
        loop {
            let frame = self
                .read_frame()
                .await
                .unwrap_or_else(|| panic!("closed without a go-away; got {before:?} first"));
            if frame.first() != Some(&0x05) {
                before.push(frame);
                continue;
            }
            assert_eq!(frame[1], reason, "the go-away's reason");
            let message = String::from_utf8_lossy(&frame[3..]).into_owned();
            assert_eq!(
                frame[2] as usize,
                frame.len() - 3,
                "a one-byte length for {message}"
            );
            assert!(message.contains(says), "the go-away says {message:?}");
            return before;
        }
    }

    /// Waits for a go-away for a protocol error whose message contains `says`, then for the
    /// server to close the connection.
    pub async fn expect_refused(&mut self, says: &str) {
        let before = self.expect_go_away(3, says).await;
        assert!(
            before.is_empty(),
            "the server sent {before:?} before its go-away"
        );
        self.expect_closed().await;
    }

    /// Waits until the server closes the connection, failing if it sends a frame instead.
    pub async fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        // A reset counts as closed too.
        let _ = self.stream.read_to_end(&mut rest).await;
        assert!(
            rest.is_empty(),
            "the server sent {rest:?} instead of closing"
        );
    }
}
