//! With the `metrics` feature, calls, their outcomes and durations, calls in flight, open
//! connections, bytes, retries, endpoints that could not be reached, the memory a server holds
//! for large frames and the connections waiting for it, frames whose memory a server took back,
//! calls it shed and connections it closed for answers unread are recorded
//! through the `metrics` facade: here into metrics-util's debugging recorder.

use metrics::{SharedString, Unit};
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use rpc_core::{RpcError, Server, Status, StatusCode};
use rpc_tests::greeter::{self, GreeterClient, GreeterServer, MyGreeter};
use rpc_tests::{
    LabClient, LabImpl, RawClient, VERSION, answers_at, held_loopback_port, hello, request,
    start_tcp_with, varint, within,
};

/// What the recorder held at one moment. (Taking it drains it: counters and gauges start again
/// from zero, histograms empty.)
type Snapshot = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

/// The value of the metric `name` whose labels include all of `labels`, summed over the
/// series that match; for a histogram, how many values it holds.
fn value(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for (key, _, _, value) in snapshot {
        let key = key.key();
        let matches = key.name() == name
            && labels.iter().all(|(want_key, want_value)| {
                key.labels()
                    .any(|label| label.key() == *want_key && label.value() == *want_value)
            });
        if matches {
            sum += match value {
                DebugValue::Counter(count) => *count as f64,
                DebugValue::Gauge(gauge) => gauge.into_inner(),
                DebugValue::Histogram(samples) => samples.len() as f64,
            };
        }
    }
    sum
}

/// The gauges of the memory the process's servers hold for large frames, summed over the
/// snapshots taken, each of which drains what changed since the last.
#[derive(Debug, Default)]
struct FrameMemoryGauges {
    bytes: f64,
    waiting: f64,
}

impl FrameMemoryGauges {
    fn add(&mut self, snapshot: &Snapshot) {
        let server = [("side", "server")];
        self.bytes += value(snapshot, "rpc_server_frame_memory_bytes", &server);
        self.waiting += value(snapshot, "rpc_server_frame_memory_waiting", &server);
    }

    /// Takes snapshots until the gauges are `wanted`: a server's connections move them as
    /// they read, with nothing to await.
    async fn until(
        &mut self,
        snapshotter: &metrics_util::debugging::Snapshotter,
        wanted: impl Fn(&Self) -> bool,
    ) {
        loop {
            self.add(&snapshotter.snapshot().into_vec());
            if wanted(self) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// The labels of the server's metrics for `Lab`.
fn lab_labels() -> [(&'static str, &'static str); 2] {
    [("side", "server"), ("service", "Lab")]
}

/// A service whose one method runs until it is dropped, saying when it has started. Not Lab's
/// `hold`: the gauges of calls in flight and open connections are labelled by service alone,
/// and the Lab connections of the sections before may still be closing while its series are
/// summed.
#[rpc_core::service]
trait Held {
    async fn hold(&self);
}

struct Holding(tokio::sync::mpsc::UnboundedSender<()>);

impl Held for Holding {
    async fn hold(&self) {
        let _ = self.0.send(());
        std::future::pending::<()>().await;
    }
}

/// A service whose stream of numbers fails after its first.
#[rpc_core::service]
trait Failing {
    async fn numbers(&self) -> rpc_core::Streaming<u64>;
}

struct Broken;

impl Failing for Broken {
    async fn numbers(&self) -> rpc_core::Streaming<u64> {
        rpc_core::Streaming::from_results(futures_util::stream::iter([
            Ok(1),
            Err("the source broke"),
        ]))
    }
}

/// One test in this binary: the recorder is global.
#[tokio::test]
async fn calls_connections_retries_failures_and_reconnections_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("the only recorder");

    let addr = greeter::serve(rpc_tests::refusing("secret"), "127.0.0.1:0").await;
    let client = within("connecting", GreeterClient::connect(addr))
        .await
        .expect("connects");
    for name in ["Ada", "Grace"] {
        client.greet(name.into()).await.expect("a call");
    }
    client.secret().await.expect_err("refused");

    let snapshot = snapshotter.snapshot().into_vec();
    let greet = [("service", "Greeter"), ("method", "greet")];
    for side in ["client", "server"] {
        let started = [&greet[..], &[("side", side)]].concat();
        assert_eq!(value(&snapshot, "rpc_calls_started_total", &started), 2.0);
        assert_eq!(value(&snapshot, "rpc_call_duration_seconds", &started), 2.0);
        let in_flight = [("side", side), ("service", "Greeter")];
        assert_eq!(value(&snapshot, "rpc_calls_in_flight", &in_flight), 0.0);
        assert_eq!(value(&snapshot, "rpc_connections_open", &in_flight), 1.0);
        // Each side read what the other wrote, byte for byte, frames only (the hellos are not
        // counted): three requests one way, three answers the other.
        let received = value(&snapshot, "rpc_bytes_received_total", &in_flight);
        let other = if side == "client" { "server" } else { "client" };
        let sent = value(
            &snapshot,
            "rpc_bytes_sent_total",
            &[("side", other), ("service", "Greeter")],
        );
        assert!(received > 0.0, "{side} received {received}");
        assert_eq!(received, sent, "what the {other} sent, the {side} received");
    }
    let ok = [&greet[..], &[("side", "server"), ("code", "0")]].concat();
    assert_eq!(value(&snapshot, "rpc_calls_finished_total", &ok), 2.0);
    let refused = [("side", "server"), ("method", "secret"), ("code", "11")];
    assert_eq!(value(&snapshot, "rpc_calls_finished_total", &refused), 1.0);
    let failed = [("side", "client"), ("method", "secret"), ("code", "error")];
    assert_eq!(value(&snapshot, "rpc_calls_finished_total", &failed), 1.0);

    // A pool with a server that refuses as unavailable: calls are made again on the other, and
    // each retry is counted.
    let busy = Server::builder().intercept(|_| Err(Status::new(StatusCode::Unavailable, "busy")));
    let busy_addr = greeter::serve(busy, "127.0.0.1:0").await;
    // A port nothing listens on: its endpoint fails to connect and is passed over.
    let (_dead, dead_addr) = held_loopback_port();
    let pool = GreeterClient::builder().balance([busy_addr, dead_addr, addr]);
    let retries = [("service", "Greeter"), ("method", "greet")];
    let failures = [("service", "Greeter")];
    // Taking a snapshot resets the counters: what each shows is added up.
    let (mut retried, mut failed) = (0.0, 0.0);
    within("a retry and an endpoint failure", async {
        loop {
            let snapshot = snapshotter.snapshot().into_vec();
            retried += value(&snapshot, "rpc_client_retries_total", &retries);
            failed += value(&snapshot, "rpc_client_endpoint_failures_total", &failures);
            if retried > 0.0 && failed > 0.0 {
                break;
            }
            let greeting = pool.greet("Linus".into()).await;
            greeting.expect("made on the server that answers");
        }
    })
    .await;

    // A server that restarts: the client connects to it again, and says so.
    let (_held, addr) = held_loopback_port();
    let server = Server::bind(addr).await.expect("binds");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped = async {
        let _ = stopped.await;
    };
    let serving = tokio::spawn(server.serve_with_shutdown(GreeterServer::new(MyGreeter), stopped));
    let client = within("connecting", GreeterClient::connect(addr))
        .await
        .expect("connects");
    client.greet("Ada".into()).await.expect("a call");
    stop.send(()).expect("the server listens for it");
    within("the shutdown", serving)
        .await
        .expect("joins")
        .expect("shuts down");
    let again = Server::bind(addr).await.expect("binds the same port again");
    tokio::spawn(again.serve(GreeterServer::new(MyGreeter)));
    let reconnected = async { while client.greet("Ada".into()).await.is_err() {} };
    within("a call after the restart", reconnected).await;
    let snapshot = snapshotter.snapshot().into_vec();
    let reconnections = [("service", "Greeter")];
    assert_eq!(
        value(&snapshot, "rpc_client_reconnections_total", &reconnections),
        1.0
    );

    // A server short of memory for large frames: a client that sent most of one and stopped
    // loses it to one that sends its own whole, and the server counts what it took back.
    const MIB: usize = 1024 * 1024;
    let short = Server::builder().max_frame_len(MIB).max_frame_memory(MIB);
    let addr = greeter::serve(short, "127.0.0.1:0").await;
    let mut stalled = RawClient::greet(addr, &hello("Greeter", VERSION)).await;
    let mut start = request(1, "greet", &varint((MIB - 64) as u64));
    let claimed = (start.len() - 4 + MIB - 64) as u32;
    start[..4].copy_from_slice(&claimed.to_be_bytes());
    start.resize(start.len() + 900 * 1024, b'a');
    stalled.send(&start).await;
    // The server holds what it read of the frame past the connection's first 64 KiB.
    let mut memory = FrameMemoryGauges::default();
    let held = |memory: &FrameMemoryGauges| memory.bytes >= (900 - 64) as f64 * 1024.0;
    within("the stalled frame held", memory.until(&snapshotter, held)).await;
    let client = within("connecting", GreeterClient::connect(addr))
        .await
        .expect("connects");
    let name = "b".repeat(600 * 1024);
    let call = tokio::spawn({
        let name = name.clone();
        async move { client.greet(name).await }
    });
    let waiting = |memory: &FrameMemoryGauges| memory.waiting == 1.0;
    within("the call waiting", memory.until(&snapshotter, waiting)).await;
    let greeting = within("a large call", call).await.expect("no panic");
    assert_eq!(greeting.expect("served"), format!("hello, {name}"));
    within(
        "the go-away",
        stalled.expect_go_away(4, "ran short of memory"),
    )
    .await;
    let snapshot = snapshotter.snapshot().into_vec();
    memory.add(&snapshot);
    assert_eq!(memory.waiting, 0.0, "no one waits");
    let server = [("side", "server"), ("service", "Greeter")];
    assert_eq!(
        value(
            &snapshot,
            "rpc_server_frame_memory_reclaimed_total",
            &server
        ),
        1.0
    );

    // A server whose calls hold as many bytes of requests as it allows sheds the next large
    // call, and counts it.
    let lab = LabImpl::default();
    let probe = lab.probe();
    let addr = start_tcp_with(Server::builder().max_argument_bytes(MIB), lab).await;
    let (holder, other) = (
        LabClient::connect(addr).await.expect("connects"),
        LabClient::connect(addr).await.expect("connects"),
    );
    let gate = "a".repeat(900 * 1024);
    let holding = tokio::spawn({
        let gate = gate.clone();
        async move { holder.wait(gate).await }
    });
    probe.next_event().await;
    let shed = within("the refusal", other.wait("b".repeat(400 * 1024))).await;
    shed.expect_err("refused");
    probe.open(&gate);
    within("the held call", holding)
        .await
        .expect("no panic")
        .expect("answered");
    let snapshot = snapshotter.snapshot().into_vec();
    // The client made the call again (code 16: it did not run), and was refused again.
    let retries = [("service", "Lab"), ("method", "wait")];
    let made_again = value(&snapshot, "rpc_client_retries_total", &retries);
    assert_eq!(
        value(&snapshot, "rpc_server_calls_shed_total", &lab_labels()),
        1.0 + made_again
    );

    // A server at its budget of answers queued closes the connection of a client that reads
    // none of its own, and counts it.
    let lab = LabImpl::default();
    let probe = lab.probe();
    let builder = Server::builder().disable_keepalive().max_queued_bytes(MIB);
    let addr = start_tcp_with(builder, lab).await;
    let mut raw = RawClient::handshake(addr).await;
    // More than the network holds for a client that reads nothing.
    raw.send(&answers_at("answers", 64, MIB as u64)).await;
    probe.open("answers");
    // Reading nothing meanwhile: the server looks once a second whether to give up on it.
    let mut closed = 0.0;
    within("the connection to be closed", async {
        while closed == 0.0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            let snapshot = snapshotter.snapshot().into_vec();
            let name = "rpc_server_unread_answers_reclaimed_total";
            closed += value(&snapshot, name, &lab_labels());
        }
    })
    .await;
    assert_eq!(closed, 1.0);
    // What the network held of the answers is read, then the connection's end.
    let mut sink = tokio::io::sink();
    let read = tokio::io::copy(&mut raw.stream, &mut sink);
    let _ = within("the end of the connection", read).await;

    // A call whose client stops waiting is counted as cancelled on both sides, and neither
    // counts as in flight any more; a connection that closes no longer counts as open.
    let (started, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let server = Server::bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("an address");
    tokio::spawn(server.serve(HeldServer::new(Holding(started))));
    let client = within("connecting", HeldClient::connect(addr))
        .await
        .expect("connects");
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.hold().await }
    });
    within("the handler to start", started_rx.recv()).await;
    call.abort();
    assert!(call.await.is_err_and(|error| error.is_cancelled()));
    drop(client);
    // Summed over the snapshots taken, each of which drains what changed since the last.
    let (mut cancelled, mut in_flight, mut open) = ([0.0; 2], [0.0; 2], [0.0; 2]);
    within(
        "the cancelled call and the closed connection counted",
        async {
            while cancelled != [1.0; 2] || in_flight != [0.0; 2] || open != [0.0; 2] {
                let snapshot = snapshotter.snapshot().into_vec();
                for (i, side) in ["client", "server"].into_iter().enumerate() {
                    let held = [("side", side), ("service", "Held")];
                    let code = [&held[..], &[("code", "cancelled")]].concat();
                    cancelled[i] += value(&snapshot, "rpc_calls_finished_total", &code);
                    in_flight[i] += value(&snapshot, "rpc_calls_in_flight", &held);
                    open[i] += value(&snapshot, "rpc_connections_open", &held);
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        },
    )
    .await;

    // A call whose streamed result ends in an error is counted as failed on the client when
    // its caller reads the error.
    let server = Server::bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("an address");
    tokio::spawn(server.serve(FailingServer::new(Broken)));
    let client = within("connecting", FailingClient::connect(addr))
        .await
        .expect("connects");
    let mut numbers = within("a call", client.numbers()).await.expect("answers");
    assert_eq!(
        within("an item", numbers.next()).await.map(Result::ok),
        Some(Some(1))
    );
    let failed = within("the failure", numbers.next()).await;
    assert!(
        matches!(failed, Some(Err(RpcError::StreamFailed { .. }))),
        "{failed:?}"
    );
    let snapshot = snapshotter.snapshot().into_vec();
    let numbers = [
        ("side", "client"),
        ("service", "Failing"),
        ("method", "numbers"),
    ];
    for (code, count) in [("error", 1.0), ("0", 0.0)] {
        let finished = [&numbers[..], &[("code", code)]].concat();
        let counted = value(&snapshot, "rpc_calls_finished_total", &finished);
        assert_eq!(counted, count, "code {code}");
    }
}
