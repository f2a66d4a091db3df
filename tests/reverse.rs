//! Calls from a server to its client over the connection the client opened
//! (`ClientBuilder::serve`, `Context::caller`), over real sockets: plain calls, calls back
//! during a call and calls forward during those, deadlines, cancellation, streams both ways,
//! the client's limit on calls, clear errors, a client that goes, and the bytes on the wire.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use rpc_core::{Context, RpcError, Server, ServerBuilder, ServiceClient, Streaming};
use rpc_tests::{
    RawClient, STREAM_WINDOW, VERSION, frame, go_away_frame, hello_serving_back, loopback_listener,
    read_varint, request, reverse_frame, service_hello, string, varint, within,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

/// The server's service.
#[rpc_core::service]
pub trait Hub {
    /// Keeps a client of what the caller serves back, for the test to call.
    async fn join(&self) -> Result<(), String>;
    /// Asks the caller's worker to double `x`, while this call runs.
    async fn ask(&self, x: i64) -> Result<i64, String>;
    /// `x + 1`.
    async fn incr(&self, x: i64) -> i64;
}

/// What a client serves back.
#[rpc_core::service]
pub trait Worker {
    /// `2 * x`.
    async fn double(&self, x: i64) -> i64;
    /// Reports "started {tag}", then waits for ever; reports "dropped {tag}" when dropped.
    async fn hold(&self, tag: String);
    /// Reports "started {tag}", then waits until the test lets one such call go, and returns
    /// `tag`.
    async fn finish(&self, tag: String) -> String;
    /// `0..to`, streamed.
    async fn count(&self, to: u64) -> Streaming<u64>;
    /// The sum of a stream of numbers.
    async fn sum(&self, numbers: Streaming<u64>) -> u64;
    /// `hub.incr(x)`, called over the worker's own connection while the hub waits for this.
    async fn via_hub(&self, x: i64) -> i64;
}

/// An older build of `Worker`, whose `double` took and gave text.
mod older {
    #[rpc_core::service]
    pub trait Worker {
        /// `x` twice.
        async fn double(&self, x: String) -> String;
    }

    pub struct Doubler;

    impl Worker for Doubler {
        async fn double(&self, x: String) -> String {
            x.repeat(2)
        }
    }
}

/// A service of another name, served back by a client the hub takes for a worker.
#[rpc_core::service]
pub trait Other {
    /// Nothing.
    async fn nothing(&self);
}

struct MyHub {
    joined: mpsc::UnboundedSender<WorkerClient>,
}

impl Hub for MyHub {
    async fn join(&self) -> Result<(), String> {
        let worker = Context::current()
            .caller::<WorkerClient>()
            .await
            .map_err(|error| error.to_string())?;
        let _ = self.joined.send(worker);
        Ok(())
    }

    async fn ask(&self, x: i64) -> Result<i64, String> {
        let worker = Context::current()
            .caller::<WorkerClient>()
            .await
            .map_err(|error| error.to_string())?;
        worker.double(x).await.map_err(|error| error.to_string())
    }

    async fn incr(&self, x: i64) -> i64 {
        x + 1
    }
}

struct MyWorker {
    events: mpsc::UnboundedSender<String>,
    hub: Arc<OnceLock<HubClient>>,
    /// Each permit lets one `finish` return.
    release: Arc<Notify>,
}

/// Reports "dropped {tag}" when the handler holding it is dropped.
struct Dropped(mpsc::UnboundedSender<String>, String);

impl Drop for Dropped {
    fn drop(&mut self) {
        let _ = self.0.send(format!("dropped {}", self.1));
    }
}

impl Worker for MyWorker {
    async fn double(&self, x: i64) -> i64 {
        2 * x
    }

    async fn hold(&self, tag: String) {
        let _guard = Dropped(self.events.clone(), tag.clone());
        let _ = self.events.send(format!("started {tag}"));
        std::future::pending::<()>().await;
    }

    async fn finish(&self, tag: String) -> String {
        let _ = self.events.send(format!("started {tag}"));
        self.release.notified().await;
        tag
    }

    async fn count(&self, to: u64) -> Streaming<u64> {
        Streaming::iter(0..to)
    }

    async fn sum(&self, mut numbers: Streaming<u64>) -> u64 {
        let mut total = 0;
        while let Some(Ok(number)) = numbers.next().await {
            total += number;
        }
        total
    }

    async fn via_hub(&self, x: i64) -> i64 {
        let hub = self.hub.get().expect("the worker knows its hub");
        hub.incr(x).await.unwrap_or(i64::MIN)
    }
}

/// A hub server, a client of it that serves a worker back with `worker_settings`, and the
/// hub's client of that worker.
struct Setup {
    hub: HubClient,
    worker: WorkerClient,
    events: mpsc::UnboundedReceiver<String>,
    /// Each permit lets one of the worker's `finish` calls return.
    release: Arc<Notify>,
    addr: std::net::SocketAddr,
}

async fn start_hub(
    builder: ServerBuilder,
) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<WorkerClient>) {
    let (addr, joined, _serving) = start_hub_until(builder, std::future::pending()).await;
    (addr, joined)
}

/// A hub server that shuts down once `stop` is over: its address, the clients of what its
/// callers serve back as they join, and the task serving it.
async fn start_hub_until(
    builder: ServerBuilder,
    stop: impl Future<Output = ()> + Send + 'static,
) -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<WorkerClient>,
    JoinHandle<std::io::Result<()>>,
) {
    let (joined_tx, joined) = mpsc::unbounded_channel();
    let server = builder.bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("has an address");
    let hub = HubServer::new(MyHub { joined: joined_tx });
    let serving = tokio::spawn(server.serve_with_shutdown(hub, stop));
    (addr, joined, serving)
}

async fn setup_with(hub_settings: ServerBuilder, worker_settings: ServerBuilder) -> Setup {
    setup_linked(hub_settings, worker_settings, true).await
}

/// With `link` false, the worker keeps no client of the hub: one that does keeps the
/// connection it is served on open for as long as it lives.
async fn setup_linked(
    hub_settings: ServerBuilder,
    worker_settings: ServerBuilder,
    link: bool,
) -> Setup {
    let (addr, joined) = start_hub(hub_settings).await;
    connect_worker(addr, joined, worker_settings, link).await
}

/// A client of the hub at `addr` that serves a worker back with `worker_settings`, joined.
async fn connect_worker(
    addr: std::net::SocketAddr,
    mut joined: mpsc::UnboundedReceiver<WorkerClient>,
    worker_settings: ServerBuilder,
    link: bool,
) -> Setup {
    let (events_tx, events) = mpsc::unbounded_channel();
    let hub_cell = Arc::new(OnceLock::new());
    let release = Arc::new(Notify::new());
    let worker = MyWorker {
        events: events_tx,
        hub: Arc::clone(&hub_cell),
        release: Arc::clone(&release),
    };
    let hub = HubClient::builder()
        .serve_with(worker_settings, WorkerServer::new(worker))
        .connect(addr)
        .await
        .expect("connects");
    if link {
        hub_cell.set(hub.clone()).expect("set once");
    }
    let worker = join(&hub, &mut joined).await;
    Setup {
        hub,
        worker,
        events,
        release,
        addr,
    }
}

/// Calls `join` with `hub`, and returns the hub's client of what `hub` serves back.
async fn join(hub: &HubClient, joined: &mut mpsc::UnboundedReceiver<WorkerClient>) -> WorkerClient {
    within("join", hub.join())
        .await
        .expect("answered")
        .expect("joined");
    within("the worker client", joined.recv())
        .await
        .expect("a worker")
}

async fn setup() -> Setup {
    setup_with(Server::builder(), Server::builder()).await
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<String>) -> String {
    within("a worker event", events.recv())
        .await
        .expect("the worker is alive")
}

#[tokio::test]
async fn a_server_calls_its_client_on_the_connection_the_client_opened() {
    let setup = setup().await;
    assert_eq!(
        within("double", setup.worker.double(21))
            .await
            .expect("answered"),
        42
    );
    // Back during a call: the hub's handler calls the worker that called it.
    assert_eq!(
        within("ask", setup.hub.ask(5)).await.expect("answered"),
        Ok(10)
    );
    // And forward during that: the worker's handler calls the hub while the hub waits.
    assert_eq!(
        within("via_hub", setup.worker.via_hub(1))
            .await
            .expect("answered"),
        2
    );
    // Many at once, in both directions.
    let calls = (0..200).map(|i| {
        let (hub, worker) = (setup.hub.clone(), setup.worker.clone());
        async move {
            let (a, b) = tokio::join!(worker.double(i), hub.ask(i));
            (a.expect("double"), b.expect("ask").expect("worker"))
        }
    });
    let answers = within("200 calls each way", futures_util::future::join_all(calls)).await;
    for (i, (a, b)) in answers.into_iter().enumerate() {
        assert_eq!((a, b), (2 * i as i64, 2 * i as i64));
    }
}

#[tokio::test]
async fn deadlines_and_cancellation_reach_the_clients_handlers() {
    let mut setup = setup().await;
    let hurried = setup.worker.with_deadline(Duration::from_millis(200));
    let late = within("a call past its deadline", hurried.hold("late".into())).await;
    assert!(
        matches!(late, Err(RpcError::DeadlineExceeded { ref method, .. }) if method == "hold"),
        "{late:?}"
    );
    assert_eq!(next_event(&mut setup.events).await, "started late");
    assert_eq!(next_event(&mut setup.events).await, "dropped late");

    let worker = setup.worker.clone();
    let call = tokio::spawn(async move { worker.hold("cancelled".into()).await });
    assert_eq!(next_event(&mut setup.events).await, "started cancelled");
    call.abort();
    assert_eq!(next_event(&mut setup.events).await, "dropped cancelled");
    // The connection serves on.
    assert_eq!(
        within("double", setup.worker.double(2))
            .await
            .expect("answered"),
        4
    );
}

#[tokio::test]
async fn streams_flow_both_ways_with_credit() {
    // Small windows on both sides: the streams run on credit granted back many times over.
    let setup = setup_with(
        Server::builder().stream_window(4096),
        Server::builder().stream_window(4096),
    )
    .await;
    assert_eq!(
        counted(&setup.worker, 20_000).await,
        (0..20_000).collect::<Vec<_>>()
    );
    let numbers = Streaming::iter(1..=20_000u64);
    let sum = within("a streamed argument", setup.worker.sum(numbers)).await;
    assert_eq!(sum.expect("answered"), 20_000 * 20_001 / 2);
}

#[tokio::test]
async fn the_clients_limit_on_calls_holds_for_the_servers_calls() {
    let mut setup = setup_with(
        Server::builder(),
        Server::builder().max_in_flight_per_connection(2),
    )
    .await;
    let mut held = Vec::new();
    for tag in ["a", "b", "c"] {
        let worker = setup.worker.clone();
        held.push(tokio::spawn(async move { worker.hold(tag.into()).await }));
    }
    let mut started = [
        next_event(&mut setup.events).await,
        next_event(&mut setup.events).await,
    ];
    started.sort();
    // Two run; every further call waits for a slot on the hub's side, none reaches the worker.
    let hurried = setup.worker.with_deadline(Duration::from_millis(300));
    let waiting = within("a call over the limit", hurried.double(1)).await;
    assert!(
        matches!(waiting, Err(RpcError::DeadlineExceeded { .. })),
        "{waiting:?}"
    );
    assert!(setup.events.try_recv().is_err(), "a third call started");
    // One ends: the one waiting starts.
    let first = started[0]
        .strip_prefix("started ")
        .expect("an event")
        .to_owned();
    let index = ["a", "b", "c"]
        .iter()
        .position(|tag| *tag == first)
        .expect("a tag");
    held[index].abort();
    assert_eq!(
        next_event(&mut setup.events).await,
        format!("dropped {first}")
    );
    let third = next_event(&mut setup.events).await;
    assert!(third.starts_with("started "), "{third}");
    assert!(!started.contains(&third), "{third} started twice");
}

#[tokio::test]
async fn a_caller_that_serves_nothing_is_told_so() {
    let (addr, _joined) = start_hub(Server::builder()).await;
    let hub = HubClient::connect(addr).await.expect("connects");
    let asked = within("ask", hub.ask(1)).await.expect("answered");
    let error = asked.expect_err("the caller serves nothing");
    assert!(error.contains("serves nothing back"), "{error}");
    // Outside a call, or over no connection, the same.
    let local = HubClient::local(MyHub {
        joined: mpsc::unbounded_channel().0,
    });
    let error = within("ask", local.ask(1)).await.expect("answered");
    assert!(error.expect_err("local").contains("serves nothing back"));
}

#[tokio::test]
async fn a_caller_that_serves_another_service_fails_each_call_naming_it() {
    struct MyOther;
    impl Other for MyOther {
        async fn nothing(&self) {}
    }
    let (addr, mut joined) = start_hub(Server::builder()).await;
    let hub = HubClient::builder()
        .serve(OtherServer::new(MyOther))
        .connect(addr)
        .await
        .expect("connects");
    let worker = join(&hub, &mut joined).await;
    let error = within("double", worker.double(1))
        .await
        .expect_err("not a worker");
    assert!(
        matches!(&error, RpcError::WrongService { expected, served }
            if expected == "Worker" && served == &["Other"]),
        "{error:?}"
    );
    let asked = within("ask", hub.ask(1)).await.expect("answered");
    assert!(asked.expect_err("not a worker").contains("`Other`"));
}

#[tokio::test]
async fn when_the_client_goes_the_servers_calls_fail_and_its_handlers_stop() {
    let mut setup = setup_linked(Server::builder(), Server::builder(), false).await;
    let worker = setup.worker.clone();
    let call = tokio::spawn(async move { worker.hold("gone".into()).await });
    assert_eq!(next_event(&mut setup.events).await, "started gone");
    // The last handle on the client's connection: dropping it closes the connection.
    drop(setup.hub);
    assert_eq!(next_event(&mut setup.events).await, "dropped gone");
    let failed = within("the call in flight", call).await.expect("joins");
    assert!(failed.is_err(), "{failed:?}");
    let after = within("a call after", setup.worker.double(1)).await;
    assert!(after.is_err(), "{after:?}");
    assert!(setup.worker.channel().is_closed());
}

/// A server shutting down lets its own calls to a client that serves back finish before it
/// closes their connection, as it lets the client's calls to it finish: a coordinator that
/// stops gracefully gets its workers' answers. A call it makes once it drains is refused
/// before it leaves, as not run.
#[tokio::test]
async fn a_server_shutting_down_waits_for_its_calls_to_its_client() {
    let (stop, stopped) = oneshot::channel::<()>();
    let hub_settings = Server::builder().shutdown_grace(Duration::from_secs(600));
    let (addr, joined, serving) = start_hub_until(hub_settings, async {
        let _ = stopped.await;
    })
    .await;
    let mut setup = connect_worker(addr, joined, Server::builder(), true).await;
    let worker = setup.worker.clone();
    let running = tokio::spawn(async move { worker.finish("last".into()).await });
    assert_eq!(next_event(&mut setup.events).await, "started last");

    stop.send(()).expect("the hub listens for its stop");
    let refused = loop {
        match within("a call back while the hub drains", setup.worker.double(1)).await {
            Ok(doubled) => assert_eq!(doubled, 2),
            Err(error) => break error,
        }
    };
    assert!(
        matches!(&refused, RpcError::ServerClosing { method } if method == "double"),
        "{refused:?}"
    );
    // Well past the second a drained connection reads on before it closes (docs/wire.md
    // section 9), on a paused clock that runs ahead whenever nothing is left to do: the
    // connection is still open for the call that runs.
    tokio::time::pause();
    tokio::time::sleep(Duration::from_secs(5)).await;
    tokio::time::resume();
    setup.release.notify_one();
    let answer = within("the running call", running).await.expect("joins");
    assert_eq!(answer.expect("answered"), "last");
    within("the hub's shutdown", serving)
        .await
        .expect("joins")
        .expect("the hub stops cleanly");
}

/// At the connection limit, a connection on which the server's own call to its client runs is
/// busy, as one running a call of the client's is: an idle one gives way to the newcomer
/// instead, though it has gone less long without a request.
#[tokio::test]
async fn at_the_connection_limit_a_connection_with_a_call_back_running_is_busy() {
    let (addr, joined, _serving) =
        start_hub_until(Server::builder().max_connections(2), std::future::pending()).await;
    let mut setup = connect_worker(addr, joined, Server::builder(), true).await;
    let worker = setup.worker.clone();
    let running = tokio::spawn(async move { worker.finish("busy".into()).await });
    assert_eq!(next_event(&mut setup.events).await, "started busy");
    // Connected after the worker's last request: the worker's connection has gone longer
    // without one, and is the first asked to give way.
    let mut idle = RawClient::greet(addr, &rpc_tests::hello("Hub", VERSION)).await;

    let newcomer = tokio::spawn(HubClient::connect(addr));
    let before = within(
        "the idle one to be told",
        idle.expect_go_away(2, "connection limit"),
    )
    .await;
    assert!(before.is_empty(), "{before:?}");
    let newcomer = within("the newcomer", newcomer)
        .await
        .expect("joins")
        .expect("admitted");
    assert_eq!(newcomer.incr(1).await.expect("served"), 2);
    assert_eq!(
        within("a call back", setup.worker.double(4))
            .await
            .expect("not sent away"),
        8
    );
    setup.release.notify_one();
    let answer = within("the running call", running).await.expect("joins");
    assert_eq!(answer.expect("answered"), "busy");
}

/// The server's calls back are checked against what the client serves, fingerprints included,
/// as a client's calls are against its server's: a client built from another version of the
/// trait is told which signature differs, before anything is sent.
#[tokio::test]
async fn a_call_back_of_a_method_with_another_signature_is_refused() {
    let (addr, mut joined) = start_hub(Server::builder()).await;
    let hub = HubClient::builder()
        .serve(older::WorkerServer::new(older::Doubler))
        .connect(addr)
        .await
        .expect("connects");
    let worker = join(&hub, &mut joined).await;
    let refused = within("a call back", worker.double(2)).await;
    match refused {
        Err(RpcError::SignatureMismatch { method, difference }) => {
            assert_eq!(method, "double");
            let difference = difference.expect("what differs");
            assert!(
                difference.contains("`i64` here and `String`"),
                "{difference}"
            );
        }
        other => panic!("expected a signature mismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn a_set_that_cannot_be_served_fails_the_connection_before_it_is_made() {
    let (addr, _joined) = start_hub(Server::builder()).await;
    let twice = rpc_core::Services::new()
        .add(OtherServer::new(Noop))
        .add(OtherServer::new(Noop));
    let refused = HubClient::builder().serve(twice).connect(addr).await;
    assert!(matches!(refused, Err(RpcError::Services(_))), "{refused:?}");
}

struct Noop;
impl Other for Noop {
    async fn nothing(&self) {}
}

/// The hello a raw client sends on the reverse connection as a server of `Worker` with
/// `double` alone (its real fingerprint).
fn worker_hello() -> Vec<u8> {
    let double = WorkerClient::INFO
        .describe()
        .expect("described")
        .methods
        .iter()
        .find(|method| method.name == "double")
        .expect("double")
        .clone();
    let mut hello = vec![0x00];
    hello.extend(b"rpcc");
    hello.extend(varint(VERSION.into()));
    hello.extend(varint(1024 * 1024));
    hello.extend(string("Worker"));
    hello.extend(varint(1));
    hello.extend(string("double"));
    hello.extend(varint(double.fingerprint));
    hello.extend([0x00, 0x00]);
    hello.extend(varint(64 * 1024));
    hello
}

/// Reads the next call of `double` on the reverse connection, checks that it doubles `x`
/// (zigzag `2 * x` on the wire, under 64) and returns its id.
async fn next_double(raw: &mut RawClient, x: u8) -> u64 {
    let call = within("the call back", raw.read_frame())
        .await
        .expect("a frame");
    assert_eq!(
        &call[..2],
        &[0x09, 0x01],
        "a Request of the reverse connection"
    );
    let (id, used) = read_varint(&call[2..]);
    let rest = &call[2 + used..];
    assert_eq!(&rest[..7], &string("double")[..]);
    let (_timeout_ms, used) = read_varint(&rest[7..]);
    assert_eq!(&rest[7 + used..], &[0x00, 2 * x], "no metadata, then {x}");
    id
}

#[tokio::test]
async fn the_reverse_connection_byte_by_byte() {
    let (addr, _joined) = start_hub(Server::builder()).await;
    let mut raw = RawClient::greet(addr, &hello_serving_back("Hub")).await;
    // The server opens the reverse connection at once: its client's hello, in a kind-9 frame,
    // byte for byte as docs/wire.md section 12 shows it.
    let inner_hello = within("the reverse hello", raw.read_frame())
        .await
        .expect("a frame");
    let wire_md = [
        0x09, 0x00, 0x72, 0x70, 0x63, 0x63, 0x02, 0xff, 0xff, 0xff, 0x07, 0x00, 0x00, 0x00, 0x00,
        0x80, 0x80, 0x40,
    ];
    assert_eq!(inner_hello, wire_md);

    raw.send(&reverse_frame(&frame(&worker_hello()))).await;

    // `ask(21)`: the hub's handler calls `double(21)` back, in a kind-9 Request.
    raw.send(&request(7, "ask", &[42])).await;
    let id = next_double(&mut raw, 21).await;
    // Answered with 42: Response, the id, Ok, zigzag 42 = 84.
    let mut answer = vec![0x02];
    answer.extend(varint(id));
    answer.extend([0x00, 84]);
    raw.send(&reverse_frame(&frame(&answer))).await;
    // The hub answers `ask`: Response 7, Ok, Ok(42).
    let asked = within("the answer", raw.read_frame())
        .await
        .expect("a frame");
    assert_eq!(asked, [0x02, 0x07, 0x00, 0x00, 84]);

    // The client ends its direction of the reverse connection: kind 9 alone. The hub's calls
    // back now fail, and the outer connection serves on.
    raw.send(&frame(&[0x09])).await;
    raw.send(&request(8, "ask", &[2])).await;
    let answer = next_outer_response(&mut raw).await;
    assert_eq!(&answer[..4], &[0x02, 0x08, 0x00, 0x01], "Ok(Err(...))");
    let message = String::from_utf8_lossy(&answer[5..]);
    assert!(message.contains("closed"), "{message}");
}

/// A server shutting down, byte by byte (docs/wire.md sections 9 and 12): the GoAway goes out
/// on the outer connection while the server's call back runs; once it is answered, the server
/// ends its direction of the reverse connection, then closes.
#[tokio::test]
async fn a_server_ends_its_reverse_connection_once_its_calls_back_are_answered() {
    let (stop, stopped) = oneshot::channel::<()>();
    let (addr, mut joined, serving) = start_hub_until(Server::builder(), async {
        let _ = stopped.await;
    })
    .await;
    let mut raw = RawClient::greet(addr, &hello_serving_back("Hub")).await;
    within("the reverse hello", raw.read_frame())
        .await
        .expect("a frame");
    raw.send(&reverse_frame(&frame(&worker_hello()))).await;
    // `join`: answered Ok(()), and the test holds the hub's client of the raw worker.
    raw.send(&request(1, "join", &[])).await;
    assert_eq!(
        next_outer_response(&mut raw).await,
        [0x02, 0x01, 0x00, 0x00]
    );
    let worker = within("the worker client", joined.recv())
        .await
        .expect("a worker");
    let call = tokio::spawn(async move { worker.double(21).await });
    let id = next_double(&mut raw, 21).await;

    stop.send(()).expect("the hub listens for its stop");
    let before = within("the go-away", raw.expect_go_away(0, "shutting down")).await;
    assert!(before.is_empty(), "{before:?}");
    let mut answer = vec![0x02];
    answer.extend(varint(id));
    answer.extend([0x00, 84]);
    raw.send(&reverse_frame(&frame(&answer))).await;
    assert_eq!(
        within("the call back", call)
            .await
            .expect("joins")
            .expect("answered"),
        42
    );
    let end = within("the end of the reverse connection", raw.read_frame()).await;
    assert_eq!(end.expect("a frame, not a close"), [0x09]);
    within("the close", raw.expect_closed()).await;
    within("the hub's shutdown", serving)
        .await
        .expect("joins")
        .expect("the hub stops cleanly");
}

/// Accepts a client that serves back on `listener` as a raw hub would: the hub's hello, then
/// the reverse connection's client hello (docs/wire.md section 12), and the client's answer to
/// it.
async fn accept_as_hub(listener: &tokio::net::TcpListener) -> RawClient {
    let (mut raw, _) = RawClient::accept(listener).await;
    let methods = &HubClient::INFO.describe().expect("described").methods;
    raw.send(&service_hello("Hub", methods, 0, 0, STREAM_WINDOW))
        .await;
    let inner_hello = [
        0x09, 0x00, 0x72, 0x70, 0x63, 0x63, 0x02, 0xff, 0xff, 0xff, 0x07, 0x00, 0x00, 0x00, 0x00,
        0x80, 0x80, 0x40,
    ];
    raw.send(&frame(&inner_hello)).await;
    let worker_hello = within("the worker's hello", raw.read_frame())
        .await
        .expect("a frame");
    assert_eq!(worker_hello[..2], [0x09, 0x00], "{worker_hello:?}");
    raw
}

/// A client of the hub at `addr` that serves a worker back, with no link to the hub.
async fn connect_serving_back(addr: std::net::SocketAddr) -> HubClient {
    let (events, _) = mpsc::unbounded_channel();
    let worker = MyWorker {
        events,
        hub: Arc::new(OnceLock::new()),
        release: Arc::default(),
    };
    HubClient::builder()
        .serve(WorkerServer::new(worker))
        .connect(addr)
        .await
        .expect("connects")
}

/// A client that serves back keeps its connection when the server goes away with none of the
/// client's own calls waiting: the server's calls to it may still be running, or come.
#[tokio::test]
async fn a_client_that_serves_back_stays_for_its_servers_calls_after_a_go_away() {
    let (listener, addr) = loopback_listener().await;
    let hub = tokio::spawn(async move {
        let mut raw = accept_as_hub(&listener).await;
        raw.send(&go_away_frame(0, "stopping")).await;
        // `double(21)`, called back after the go-away: answered 42 (zigzag 84).
        raw.send(&reverse_frame(&request(1, "double", &[42]))).await;
        let answer = within("the worker's answer", raw.read_frame())
            .await
            .expect("answered, not closed");
        assert_eq!(answer, [0x09, 0x02, 0x01, 0x00, 84]);
    });
    let client = connect_serving_back(addr).await;
    within("the hub's test", hub).await.expect("answered");
    drop(client);
}

/// A client that stops serving back, byte by byte (docs/wire.md section 12): it sends, inside
/// the reverse connection, the GoAway of a server shutting down; a request the server sends
/// after it is answered "not run" (code 7); and once the server ends its direction, so does
/// the client, the outer connection staying open.
#[tokio::test]
async fn a_client_that_stops_serving_back_says_so_inside_the_reverse_connection() {
    let (listener, addr) = loopback_listener().await;
    let (stop, stopping) = oneshot::channel::<()>();
    let hub = tokio::spawn(async move {
        let mut raw = accept_as_hub(&listener).await;
        stop.send(()).expect("the test waits");
        let go_away = within("the go-away", raw.read_frame())
            .await
            .expect("a frame");
        let message = b"the server is shutting down";
        let mut expected = vec![0x09, 0x05, 0x00, message.len() as u8];
        expected.extend(message);
        assert_eq!(go_away, expected);
        raw.send(&reverse_frame(&request(1, "double", &[42]))).await;
        let answer = within("the answer", raw.read_frame())
            .await
            .expect("a frame");
        assert_eq!(answer[..5], [0x09, 0x02, 0x01, 0x01, 0x07], "{answer:?}");
        // The hub ends its direction; the client ends its own.
        raw.send(&frame(&[0x09])).await;
        let end = within("the client's end", raw.read_frame()).await;
        assert_eq!(end.expect("a frame, not a close"), [0x09]);
        raw
    });
    let client = connect_serving_back(addr).await;
    within("the hub's hellos", stopping)
        .await
        .expect("the hub said hello");
    within("serving back to stop", client.channel().stop_serving_back()).await;
    let _raw = within("the hub's test", hub).await.expect("as expected");
    assert!(!client.channel().is_closed(), "the outer connection stays");
}

/// The next Response of the outer connection, past frames of the reverse connection (and
/// nothing else).
async fn next_outer_response(raw: &mut RawClient) -> Vec<u8> {
    loop {
        let frame = within("the answer", raw.read_frame())
            .await
            .expect("a frame");
        if frame[0] == 0x02 {
            return frame;
        }
        assert_eq!(frame[0], 0x09, "{frame:?}");
    }
}

#[tokio::test]
async fn a_reverse_frame_from_a_client_that_announced_none_is_a_protocol_error() {
    let (addr, _joined) = start_hub(Server::builder()).await;
    let mut raw = RawClient::greet(addr, &rpc_tests::hello("Hub", VERSION)).await;
    raw.send(&frame(&[0x09, 0x04])).await;
    within("the refusal", raw.expect_refused("reverse connection")).await;
}

#[tokio::test]
async fn garbage_inside_the_reverse_connection_closes_only_it() {
    let (addr, _joined) = start_hub(Server::builder()).await;
    let mut raw = RawClient::greet(addr, &hello_serving_back("Hub")).await;
    within("the reverse hello", raw.read_frame())
        .await
        .expect("a frame");
    // Not a hello: the hub's side of the reverse connection gives up on it.
    raw.send(&frame(&[0x09, 0xff, 0xff, 0xff])).await;
    // Then a flood of frames for it, which are discarded, not held.
    let junk = frame(&[vec![0x09], vec![0x04; 64 * 1024]].concat());
    for _ in 0..256 {
        raw.send(&junk).await;
    }
    raw.send(&request(1, "incr", &[2])).await;
    let answer = next_outer_response(&mut raw).await;
    assert_eq!(answer, [0x02, 0x01, 0x00, 0x04], "incr(1) = 2");
}

#[tokio::test]
async fn a_client_that_serves_nothing_refuses_reverse_frames_from_its_server() {
    let (listener, addr) = rpc_tests::loopback_listener().await;
    let server = tokio::spawn(async move {
        let (mut raw, _) = RawClient::accept(&listener).await;
        raw.send(&rpc_tests::hello("Hub", VERSION)).await;
        raw.send(&frame(&[0x09, 0x04])).await;
        // The client closes the connection.
        raw.expect_closed().await;
    });
    let hub = HubClient::connect(addr).await.expect("connects");
    within("the server", server)
        .await
        .expect("the server saw the close");
    let _ = hub;
}

#[tokio::test]
async fn a_connection_that_serves_back_is_never_closed_as_idle() {
    let setup = setup_linked(
        Server::builder().idle_timeout(Duration::from_millis(200)),
        Server::builder(),
        false,
    )
    .await;
    // A plain client, connected after the worker's last call: idle later than the worker.
    let plain = HubClient::connect(setup.addr).await.expect("connects");
    within("the plain client closed as idle", plain.channel().closed()).await;
    // The worker's connection, idle for longer, is still the one the hub calls it on.
    assert_eq!(
        within("double", setup.worker.double(4))
            .await
            .expect("answered"),
        8
    );
    assert!(!setup.worker.channel().is_closed());
}

#[tokio::test]
async fn calls_back_travel_inside_tls_like_the_rest() {
    use rpc_core::tls::{ClientTls, ServerTls};
    let authority = rpc_tests::certs::Authority::new("servers");
    let issued = authority.issue("hub", &["localhost"]);
    let tls = ServerTls::from_pem(&issued.chain, &issued.key).expect("the hub's certificate");
    let (addr, mut joined) = start_hub(Server::builder().tls(tls)).await;
    let (events, _) = mpsc::unbounded_channel();
    let worker = MyWorker {
        events,
        hub: Arc::new(OnceLock::new()),
        release: Arc::default(),
    };
    let hub = HubClient::builder()
        .tls(ClientTls::trusting_pem(authority.pem()).expect("the authority"))
        .serve(WorkerServer::new(worker))
        .connect(format!("localhost:{}", addr.port()))
        .await
        .expect("connects over TLS");
    let worker = join(&hub, &mut joined).await;
    assert_eq!(
        within("double", worker.double(8)).await.expect("answered"),
        16
    );
    assert_eq!(within("ask", hub.ask(3)).await.expect("answered"), Ok(6));
    assert_eq!(counted(&worker, 1000).await, (0..1000).collect::<Vec<_>>());
}

/// The items of `worker`'s streamed count to `to`, called back from the server.
async fn counted(worker: &WorkerClient, to: u64) -> Vec<u64> {
    within("a streamed result", async {
        let stream = worker.count(to).await.expect("the stream starts");
        stream.map(|item| item.expect("an item")).collect().await
    })
    .await
}
