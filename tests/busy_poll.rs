//! Busy polling: with it on, a connection's reader keeps its thread running for the window after
//! its last bytes instead of letting it sleep, on the server and on the client, when its peer
//! runs in another process or on another runtime of this one; calls, streams and large byte
//! strings go through as without it; once the window is over the thread sleeps again; a peer
//! on the same runtime is polled for only after a read that brought several frames at once, by
//! a server or by a client; a client's reader on a multi-thread runtime polls while a call
//! is in flight, not once its only call is answered; and a call made off the runtime's workers
//! polls for its answer itself, which wakes none of them.
//!
//! Each end runs on a single-thread runtime of its own (the client of the last, on two workers)
//! that watches its threads go to sleep and wake (`on_thread_park`, `on_thread_unpark`): a
//! thread kept running by a reader that finds nothing never sleeps. A peer "in another process" is reached through a relay of raw sockets,
//! whose ends are not this crate's: as far as either end can tell, the relay is its peer, and
//! it runs elsewhere.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rpc_core::{Server, Streaming};
use rpc_tests::{LabClient, LabImpl, LabServer, RawClient, loopback_listener, within};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// A window longer than any test: the reader polls on for as long as the test looks.
const FOREVER: Duration = Duration::from_secs(3600);

/// How long each end is watched while no call is made.
const QUIET: Duration = Duration::from_millis(100);

/// How a runtime's thread has slept.
#[derive(Debug, Default)]
struct Sleeps {
    /// How many times it went to sleep.
    count: AtomicUsize,
    /// Whether it sleeps now.
    asleep: AtomicBool,
}

impl Sleeps {
    /// How many times the thread has gone to sleep so far.
    fn so_far(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Whether the thread has slept since it had gone to sleep `before` times: it went to sleep
    /// again, or it has been asleep all along.
    fn slept_since(&self, before: usize) -> bool {
        self.so_far() > before || self.asleep.load(Ordering::SeqCst)
    }
}

/// A single-thread runtime, and how its thread sleeps.
fn watched_runtime() -> (Runtime, Arc<Sleeps>) {
    let sleeps = Arc::new(Sleeps::default());
    let (parked, unparked) = (Arc::clone(&sleeps), Arc::clone(&sleeps));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(move || {
            parked.asleep.store(true, Ordering::SeqCst);
            parked.count.fetch_add(1, Ordering::SeqCst);
        })
        .on_thread_unpark(move || unparked.asleep.store(false, Ordering::SeqCst))
        .build()
        .expect("a runtime");
    (runtime, sleeps)
}

/// A server of `lab` on a thread and runtime of its own, busy polling for up to `window` (as by
/// default if `None`): its address, and how its thread sleeps. It serves until the test ends.
fn start_server(window: Option<Duration>, lab: LabImpl) -> (std::net::SocketAddr, Arc<Sleeps>) {
    let (runtime, sleeps) = watched_runtime();
    let (bound, address) = oneshot::channel();
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let _ = bound.send(serve_here(window, lab).await);
            std::future::pending::<()>().await
        });
    });
    let addr = address.blocking_recv().expect("the server's address");
    (addr, sleeps)
}

/// A server of `lab` on the runtime this runs on, busy polling for up to `window` (as by
/// default if `None`): its address. It serves until the test ends.
async fn serve_here(window: Option<Duration>, lab: LabImpl) -> SocketAddr {
    let mut builder = Server::builder();
    if let Some(window) = window {
        builder = builder.busy_poll(window);
    }
    let server = builder.bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("an address");
    tokio::spawn(async move { server.serve(LabServer::new(lab)).await.expect("serves") });
    addr
}

/// A client of the server at `addr`, busy polling for up to `window` (as by default if `None`),
/// once its first call is answered.
async fn called_once(addr: SocketAddr, window: Option<Duration>) -> LabClient {
    let mut builder = LabClient::builder();
    if let Some(window) = window {
        builder = builder.busy_poll(window);
    }
    let client = within("a connection", builder.connect(addr))
        .await
        .expect("connects");
    assert_eq!(within("a call", client.add(2, 3)).await.expect("add"), 5);
    client
}

/// A lab server that answers at once (its readers not polling), reached through a relay so
/// that its client sees a peer on threads of its own, and the probe of its handlers.
fn relayed_lab() -> (Arc<rpc_tests::Probe>, SocketAddr) {
    let lab = LabImpl::default();
    let probe = lab.probe();
    let (addr, _) = start_server(Some(Duration::ZERO), lab);
    (probe, relay_to(addr))
}

/// A relay to `target` on a thread and runtime of its own: the address that reaches `target`
/// through it. Its sockets are not this crate's, so each end takes it for a peer in another
/// process. It relays until the test ends.
fn relay_to(target: SocketAddr) -> SocketAddr {
    let (bound, address) = oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let (listener, addr) = loopback_listener().await;
            let _ = bound.send(addr);
            loop {
                let (mut inbound, _) = listener.accept().await.expect("accepts");
                let mut outbound = TcpStream::connect(target).await.expect("connects");
                inbound.set_nodelay(true).expect("sets nodelay");
                outbound.set_nodelay(true).expect("sets nodelay");
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
    });
    address.blocking_recv().expect("the relay's address")
}

/// Where a test's client and server meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meeting {
    /// Directly: each finds the other in this process.
    Directly,
    /// Through a relay: each takes its peer for another process's.
    ThroughARelay,
}

/// The address a client uses to meet the server at `addr` in the way given.
fn meet(addr: SocketAddr, meeting: Meeting) -> SocketAddr {
    match meeting {
        Meeting::Directly => addr,
        Meeting::ThroughARelay => relay_to(addr),
    }
}

/// Makes a call from a client that busy polls for up to `window` (as by default if `None`) to a
/// server that does the same, met as given, then leaves both alone for [`QUIET`]: whether the
/// server's thread and the client's slept meanwhile.
fn slept_after_a_call(window: Option<Duration>, meeting: Meeting) -> (bool, bool) {
    let (addr, server_sleeps) = start_server(window, LabImpl::default());
    let addr = meet(addr, meeting);
    let (runtime, client_sleeps) = watched_runtime();
    runtime.block_on(async move {
        let _client = called_once(addr, window).await;
        let (server_before, client_before) = (server_sleeps.so_far(), client_sleeps.so_far());
        // The spell watched, not a wait for something to happen: nothing is sent during it.
        tokio::time::sleep(QUIET).await;
        // The client's thread is awake to look: it slept if it went to sleep meanwhile.
        (
            server_sleeps.slept_since(server_before),
            client_sleeps.slept_since(client_before),
        )
    })
}

#[test]
fn within_the_window_neither_end_lets_its_thread_sleep() {
    let slept = slept_after_a_call(Some(FOREVER), Meeting::ThroughARelay);
    assert_eq!(slept, (false, false));
}

#[test]
fn with_busy_polling_off_both_ends_sleep_while_nothing_comes() {
    let slept = slept_after_a_call(Some(Duration::ZERO), Meeting::ThroughARelay);
    assert_eq!(slept, (true, true));
}

#[test]
fn once_the_window_is_over_both_ends_sleep_again() {
    let window = Duration::from_millis(1);
    let slept = slept_after_a_call(Some(window), Meeting::ThroughARelay);
    assert_eq!(slept, (true, true));
}

/// A client and a server on two runtimes of one process poll for each other, as if in two
/// processes: each runtime has a thread of its own to keep awake.
#[test]
fn ends_on_two_runtimes_of_one_process_poll_for_each_other() {
    let slept = slept_after_a_call(Some(FOREVER), Meeting::Directly);
    assert_eq!(slept, (false, false));
}

/// A client and a server on one runtime do not poll for each other after a lone call,
/// whatever their window: there a call's two ends meet without a sleeping thread to wake.
#[test]
fn ends_on_one_runtime_do_not_poll_for_each_other() {
    for window in [Some(FOREVER), None] {
        let (runtime, sleeps) = watched_runtime();
        let slept = runtime.block_on(async move {
            let addr = serve_here(window, LabImpl::default()).await;
            let _client = called_once(addr, window).await;
            let before = sleeps.so_far();
            // The spell watched, not a wait for something to happen: nothing is sent during it.
            tokio::time::sleep(QUIET).await;
            sleeps.slept_since(before)
        });
        assert!(slept, "the window: {window:?}");
    }
}

/// A server polls for a client on its own runtime after a read that brought several of its
/// requests, as pipelined callers' come: calls started together, sent before the server's
/// reader has its turn on their one thread, keep that thread awake afterwards (the client here
/// does not poll).
#[test]
fn a_server_polls_for_pipelined_calls_of_a_client_on_its_runtime() {
    let slept = slept_after_pipelined_calls(Some(FOREVER), None);
    assert!(!slept, "the server's reader polls after the batch");
}

/// Whether the one thread of a runtime on which a server with `server_window` and a client
/// with `client_window` run slept after eight calls made at once.
fn slept_after_pipelined_calls(
    server_window: Option<Duration>,
    client_window: Option<Duration>,
) -> bool {
    let (runtime, sleeps) = watched_runtime();
    runtime.block_on(async move {
        let addr = serve_here(server_window, LabImpl::default()).await;
        let client = called_once(addr, client_window).await;
        let calls = (0..8).map(|i| client.add(i, 1));
        let sums = within("the calls", futures_util::future::join_all(calls)).await;
        for (i, sum) in (0..8).zip(sums) {
            assert_eq!(sum.expect("add"), i + 1);
        }
        let before = sleeps.so_far();
        // The spell watched, not a wait for something to happen: nothing is sent during it.
        tokio::time::sleep(QUIET).await;
        sleeps.slept_since(before)
    })
}

/// A client polls for a server on its own runtime after a read that brought several answers,
/// as pipelined callers' answers come: here
/// the server does not poll at all, and the thread stays awake after the answers.
#[test]
fn a_client_polls_for_pipelined_answers_of_a_server_on_its_runtime() {
    let slept = slept_after_pipelined_calls(None, Some(FOREVER));
    assert!(!slept, "the client's reader polls after the batch");
}

/// A peer that keeps a server's reader polling, as one that sends a byte within every window
/// would, keeps the server's thread busy, the price `ServerBuilder::busy_poll` states, but locks
/// no one out: on its one thread, the server still answers another client's calls, and the
/// thread has not slept meanwhile. (The window here outlasts the test, so a peer that sent part
/// of a frame and then nothing keeps its reader polling as a trickle of bytes would.)
#[test]
fn a_peer_that_keeps_a_reader_polling_locks_no_one_out() {
    let (addr, server_sleeps) = start_server(Some(FOREVER), LabImpl::default());
    let (runtime, _) = watched_runtime();
    runtime.block_on(async move {
        let mut hog = RawClient::handshake(addr).await;
        // A frame's length prefix and a byte of the frame, the rest of which never comes.
        hog.stream
            .write_all(&[0, 0, 1, 0, 1])
            .await
            .expect("writes");
        let client = within("a connection", LabClient::connect(addr))
            .await
            .expect("connects");
        assert_eq!(within("a call", client.add(0, 1)).await.expect("add"), 1);
        let before = server_sleeps.so_far();
        for i in 1..200 {
            assert_eq!(
                within("a call", client.add(i, 1)).await.expect("add"),
                i + 1
            );
        }
        // Its connection closes, and with it its polling: the hog's is left.
        drop(client);
        // The spell watched, not a wait for something to happen.
        tokio::time::sleep(QUIET).await;
        assert!(
            !server_sleeps.slept_since(before),
            "the hog's reader keeps the server's thread busy"
        );
        drop(hog);
    });
}

/// Busy polling starts once a connection's handshake is done: a peer that connects and sends
/// part of a hello, or nothing, keeps no server thread awake.
#[test]
fn a_peer_that_has_not_shaken_hands_keeps_no_server_thread_awake() {
    let (addr, server_sleeps) = start_server(Some(FOREVER), LabImpl::default());
    let relayed = relay_to(addr);
    let (runtime, _) = watched_runtime();
    runtime.block_on(async move {
        let mut silent = TcpStream::connect(addr).await.expect("connects");
        let mut halfway = TcpStream::connect(addr).await.expect("connects");
        // A frame's length prefix, for a hello that never comes.
        halfway.write_all(&[0, 0, 0, 40, 0]).await.expect("writes");
        // A call on a connection accepted after theirs, from another process as far as the
        // server can tell: both are being served by its answer. That connection then closes,
        // and with it its polling.
        let client = within("a connection", LabClient::connect(relayed))
            .await
            .expect("connects");
        assert_eq!(within("a call", client.add(1, 1)).await.expect("add"), 2);
        drop(client);
        let before = server_sleeps.so_far();
        // The spell watched: neither peer says more.
        tokio::time::sleep(QUIET).await;
        assert!(server_sleeps.slept_since(before));
        silent.shutdown().await.expect("shuts down");
    });
}

/// A call sent once the window is over does not wake the client's reader to poll: its thread
/// sleeps while the call is in flight and the server takes its time, as without busy polling.
/// (Woken to poll, it made calls a millisecond apart slower on a two-core VM: `busy`'s doc.)
#[test]
fn a_call_sent_after_the_window_leaves_the_clients_thread_asleep_while_in_flight() {
    let window = Duration::from_secs(1);
    let (probe, addr) = relayed_lab();
    let (runtime, client_sleeps) = watched_runtime();
    runtime.block_on(async move {
        let client = LabClient::builder().busy_poll(window).connect(addr);
        let client = within("a connection", client).await.expect("connects");
        // The spell watched: the window since the handshake's last bytes runs out.
        tokio::time::sleep(window + QUIET).await;

        let before = client_sleeps.so_far();
        let call = tokio::spawn(async move { client.wait("gate".to_owned()).await });
        assert_eq!(probe.next_event().await, "waiting gate");
        // The spell watched: the handler holds the call, within the window from when it went
        // out (a reader woken by the call would poll all through it).
        tokio::time::sleep(QUIET).await;
        assert!(
            client_sleeps.slept_since(before),
            "the call in flight does not keep it awake"
        );
        probe.open("gate");
        let answer = within("the answer", call).await.expect("the call's task");
        assert_eq!(answer.expect("wait"), "gate");
    });
}

/// How many workers a watched multi-thread runtime has.
const WORKERS: usize = 2;

/// Whether a multi-thread runtime's workers have all been asleep at once.
#[derive(Debug, Default)]
struct Workers {
    /// How many are asleep now.
    asleep: AtomicUsize,
    /// Whether all have been at once since [`Workers::watch`].
    all_asleep: AtomicBool,
    /// Their threads, by id, as the kernel names them.
    threads: std::sync::Mutex<Vec<String>>,
}

impl Workers {
    /// Watches from now: whether all are asleep now, or will be before the next look.
    fn watch(&self) {
        let all = self.asleep.load(Ordering::SeqCst) == WORKERS;
        self.all_asleep.store(all, Ordering::SeqCst);
    }

    /// Whether all have been asleep at once since [`Workers::watch`].
    fn all_slept(&self) -> bool {
        self.all_asleep.load(Ordering::SeqCst)
    }

    /// How many times their threads have gone to sleep in the kernel, all told: a worker woken
    /// by tokio's I/O driver for an event that gives it nothing to do sleeps again at once,
    /// unseen by the runtime's hooks, but not by the kernel's count.
    fn kernel_sleeps(&self) -> u64 {
        if !cfg!(target_os = "linux") {
            return 0;
        }
        let threads = self.threads.lock().expect("not poisoned");
        threads
            .iter()
            .map(|tid| {
                let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
                    .expect("the thread's status");
                status
                    .lines()
                    .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
                    .and_then(|count| count.trim().parse::<u64>().ok())
                    .expect("a count")
            })
            .sum()
    }
}

/// A multi-thread runtime of [`WORKERS`] workers, and how they sleep.
fn watched_multi_thread_runtime() -> (Runtime, Arc<Workers>) {
    let workers = Arc::new(Workers::default());
    let (parked, unparked) = (Arc::clone(&workers), Arc::clone(&workers));
    let started = Arc::clone(&workers);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .on_thread_park(move || {
            if parked.asleep.fetch_add(1, Ordering::SeqCst) + 1 == WORKERS {
                parked.all_asleep.store(true, Ordering::SeqCst);
            }
        })
        .on_thread_unpark(move || {
            unparked.asleep.fetch_sub(1, Ordering::SeqCst);
        })
        .on_thread_start(move || {
            // `/proc/thread-self` links to `PID/task/TID`.
            if let Ok(link) = std::fs::read_link("/proc/thread-self")
                && let Some(tid) = link.file_name()
            {
                let mut threads = started.threads.lock().expect("not poisoned");
                threads.push(tid.to_string_lossy().into_owned());
            }
        })
        .build()
        .expect("a runtime");
    (runtime, workers)
}

/// On a multi-thread runtime, a client's reader that has handed on the answer to its only call
/// in flight waits for the next call rather than poll, even within its window: every worker
/// sleeps. (A worker that its turn woke displaced the caller's, and polled for the whole window
/// while the caller waited to send its next call: `busy`'s doc.) The next call sent wakes the
/// reader to poll for its answer: while that call is in flight within the window, a worker is
/// always awake.
#[test]
fn a_clients_reader_on_a_multi_thread_runtime_polls_while_a_call_is_in_flight() {
    let (probe, addr) = relayed_lab();
    let (runtime, workers) = watched_multi_thread_runtime();
    runtime.block_on(async move {
        let client = called_once(addr, Some(FOREVER)).await;
        workers.watch();
        // The spell watched, not a wait for something to happen: no call is made during it.
        tokio::time::sleep(QUIET).await;
        assert!(
            workers.all_slept(),
            "with no call in flight, every worker sleeps"
        );

        let call = tokio::spawn(async move { client.wait("gate".to_owned()).await });
        assert_eq!(probe.next_event().await, "waiting gate");
        workers.watch();
        // The spell watched: the handler holds the call, well within the window.
        tokio::time::sleep(QUIET).await;
        assert!(
            !workers.all_slept(),
            "with a call in flight, the reader polls for its answer"
        );
        probe.open("gate");
        let answer = within("the answer", call).await.expect("the call's task");
        assert_eq!(answer.expect("wait"), "gate");
    });
}

/// A call made off the runtime's workers, in `block_on` as a `#[tokio::main]` function's body
/// makes it, polls for its answer itself, on its own thread: while it is in flight within the
/// window, every worker sleeps (where a call made from a task keeps one awake, its reader
/// polling there: the test above). Its answer, which it reads itself, wakes none of them either:
/// while it polls, its socket's low-water mark is above the answer, so that the kernel does not
/// wake the worker asleep in tokio's I/O driver for bytes already taken care of (on a machine of
/// two cores, that worker took the caller's core at times, `rpc-core/src/socket.rs`). Such a
/// wakeup leaves the worker nothing to do: the kernel's count of the workers' sleeps tells it,
/// not the runtime's hooks.
#[test]
fn a_call_made_off_the_workers_polls_for_its_own_answer() {
    let (probe, addr) = relayed_lab();
    let (runtime, workers) = watched_multi_thread_runtime();
    let client = runtime.block_on(called_once(addr, Some(FOREVER)));
    let watched = Arc::clone(&workers);
    // Watched from a thread of its own, while the call waits in `block_on`.
    let watcher = std::thread::spawn(move || {
        let (watching, _) = watched_runtime();
        watching.block_on(async move {
            assert_eq!(within("the call", probe.next_event()).await, "waiting gate");
            watched.watch();
            // The spell watched: the handler holds the call, well within the window.
            tokio::time::sleep(QUIET).await;
            let all_slept = watched.all_slept();
            let sleeps = watched.kernel_sleeps();
            probe.open("gate");
            (all_slept, sleeps)
        })
    });
    let answer = runtime.block_on(within("the answer", client.wait("gate".to_owned())));
    assert_eq!(answer.expect("wait"), "gate");
    // The spell watched after the answer: a worker it woke would have slept again within it.
    std::thread::sleep(QUIET);
    let sleeps_after = workers.kernel_sleeps();
    let (all_slept, sleeps_before) = watcher.join().expect("the watcher");
    assert!(
        all_slept,
        "with a call made off the workers in flight, every worker sleeps"
    );
    assert_eq!(sleeps_after, sleeps_before, "the answer woke a worker");
}

/// Calls one at a time and many at once, a stream each way and large byte strings (read in two
/// parts) go through as they do without busy polling, on the default multi-thread runtime,
/// between ends that take each other for other processes'. The test's body runs in `block_on`,
/// as a `#[tokio::main]` function's does: its calls are made off the runtime's workers, whose
/// answers the client's reader polls for yielding its thread between looks; calls from a
/// spawned task, in between, go through as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_streams_and_large_byte_strings_go_through_with_busy_polling() {
    let window = Duration::from_micros(100);
    let server = Server::builder()
        .busy_poll(window)
        .bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = server.local_addr().expect("an address");
    tokio::spawn(server.serve(LabServer::new(LabImpl::default())));
    let addr = tokio::task::spawn_blocking(move || relay_to(addr))
        .await
        .expect("a relay");
    let client = within(
        "a connection",
        LabClient::builder().busy_poll(window).connect(addr),
    )
    .await
    .expect("connects");

    calls_here_then_from_a_task(&client, 200).await;
    for i in 0..50 {
        assert_eq!(client.add(i, 3).await.expect("add"), i + 3);
    }
    let calls = (0..64).map(|i| {
        let client = client.clone();
        async move { client.add(i, i).await.expect("add") }
    });
    let sums = within("calls at once", futures_util::future::join_all(calls)).await;
    assert_eq!(sums, (0..64).map(|i| 2 * i).collect::<Vec<_>>());

    counts_to(&client, 10_000).await;
    let upload = Streaming::iter(1..=1000u64);
    assert_eq!(
        within("an upload", client.sum(upload)).await.expect("sum"),
        500_500
    );

    let large: Vec<u8> = (0..3 << 20).map(|i| i as u8).collect();
    let echoed = within("a large echo", client.echo(large.clone()))
        .await
        .expect("echo");
    assert!(echoed == large, "the large byte string came back as sent");
}

/// With its server on the same runtime, calls made in `block_on` (which poll for their own
/// answers, on the caller's thread) leave the connection's reader ready to be woken by what
/// comes next: answers to calls from tasks, which tell the reader nothing when they go out
/// there, and a stream's small items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_from_tasks_after_calls_made_off_the_workers_go_through_with_the_server_nearby() {
    let addr = serve_here(Some(FOREVER), LabImpl::default()).await;
    let client = within(
        "a connection",
        LabClient::builder().busy_poll(FOREVER).connect(addr),
    )
    .await
    .expect("connects");
    for round in 0..3 {
        calls_here_then_from_a_task(&client, 20).await;
        assert_eq!(client.add(round, 3).await.expect("add"), round + 3);
        counts_to(&client, 100).await;
    }
}

/// `calls` sequential calls made here, then as many from a spawned task, each answered.
async fn calls_here_then_from_a_task(client: &LabClient, calls: i64) {
    for i in 0..calls {
        assert_eq!(client.add(i, 1).await.expect("add"), i + 1);
    }
    let from_a_task = client.clone();
    let spawned = tokio::spawn(async move {
        for i in 0..calls {
            assert_eq!(from_a_task.add(i, 2).await.expect("add"), i + 2);
        }
    });
    within("calls from a task", spawned)
        .await
        .expect("the task");
}

/// Reads a stream of the numbers below `count` to its end.
async fn counts_to(client: &LabClient, count: u64) {
    let mut numbers = within("a stream", client.count(count))
        .await
        .expect("a stream");
    let mut expected = 0;
    while let Some(number) = within("an item", numbers.next()).await {
        assert_eq!(number.expect("an item"), expected);
        expected += 1;
    }
    assert_eq!(expected, count);
}
