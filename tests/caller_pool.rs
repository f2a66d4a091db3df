//! One balanced client over the clients that serve a service back (`CallerPool`), over real
//! sockets: calls spread over the callers added, a caller that goes leaves, a call waits for the
//! first caller when it waits for ready, an idempotent call whose caller vanished runs on
//! another, a caller that never answers is ejected, one that stops serving back finishes what
//! it runs and leaves, one that says it is not serving is passed over until it serves again, a
//! worker that rejoins comes back to a restarted coordinator, and callers that serve the wrong
//! thing (or another build of it) are refused with a clear error.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rpc_core::health::ServingStatus;
use rpc_core::{CallerPool, Context, RpcError, Server, ServiceClient};
use rpc_tests::{
    RawClient, STREAM_WINDOW, hello_serving_back, request, reverse_frame, service_hello, within,
};
use tokio::sync::{Notify, mpsc};

/// The coordinator's service.
#[rpc_core::service]
pub trait Coordinator {
    /// Adds the caller to the coordinator's pool of workers.
    async fn join(&self) -> Result<(), String>;
}

/// What a worker serves back.
#[rpc_core::service]
pub trait Worker {
    /// The worker's name.
    async fn name(&self) -> String;
    /// The worker's name; a worker told to hold reports "started {name}" and never answers.
    #[rpc(idempotent)]
    async fn task(&self) -> String;
}

/// An older build of `Worker`, whose `name` gave a number.
mod older {
    #[rpc_core::service]
    pub trait Worker {
        /// The worker's number.
        async fn name(&self) -> u64;
    }

    pub struct Numbered;

    impl Worker for Numbered {
        async fn name(&self) -> u64 {
            7
        }
    }
}

/// A service of another name.
#[rpc_core::service]
pub trait Other {
    /// Nothing.
    async fn nothing(&self);
}

struct MyCoordinator {
    workers: CallerPool,
}

impl Coordinator for MyCoordinator {
    async fn join(&self) -> Result<(), String> {
        self.workers
            .add(&Context::current())
            .await
            .map_err(|error| error.to_string())
    }
}

struct MyWorker {
    name: String,
    /// Where a worker that holds its tasks reports them, and what lets one go; `None` for one
    /// that answers them at once.
    holds: Option<Holds>,
}

/// Where a worker that holds its tasks reports each, and what lets one go.
#[derive(Clone)]
struct Holds {
    started: mpsc::UnboundedSender<String>,
    release: Arc<Notify>,
}

impl Worker for MyWorker {
    async fn name(&self) -> String {
        self.name.clone()
    }

    async fn task(&self) -> String {
        if let Some(holds) = &self.holds {
            let _ = holds.started.send(format!("started {}", self.name));
            holds.release.notified().await;
        }
        self.name.clone()
    }
}

struct NoOther;

impl Other for NoOther {
    async fn nothing(&self) {}
}

/// A coordinator whose pool's client is `workers`, and its address.
async fn coordinator(pool: CallerPool) -> std::net::SocketAddr {
    let server = Server::bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("an address");
    tokio::spawn(server.serve(CoordinatorServer::new(MyCoordinator { workers: pool })));
    addr
}

/// A worker named `name` connected to the coordinator at `addr` and joined; its client of the
/// coordinator holds the connection it serves on.
async fn join(addr: std::net::SocketAddr, name: &str, holds: Option<Holds>) -> CoordinatorClient {
    join_with(Server::builder(), addr, name, holds).await
}

/// [`join`], serving back with the settings of `server`.
async fn join_with(
    server: rpc_core::ServerBuilder,
    addr: std::net::SocketAddr,
    name: &str,
    holds: Option<Holds>,
) -> CoordinatorClient {
    let worker = MyWorker {
        name: name.to_owned(),
        holds,
    };
    let client = CoordinatorClient::builder()
        .serve_with(server, WorkerServer::new(worker))
        .connect(addr)
        .await
        .expect("connects");
    within("join", client.join())
        .await
        .expect("answered")
        .expect("joined");
    client
}

#[tokio::test]
async fn calls_spread_over_the_callers_added() {
    let (workers, pool) = WorkerClient::builder().caller_pool();
    let addr = coordinator(pool.clone()).await;
    let _joined = [
        join(addr, "w1", None).await,
        join(addr, "w2", None).await,
        join(addr, "w3", None).await,
    ];
    assert_eq!(pool.len(), 3);
    let listed = workers.channel().endpoints();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|endpoint| endpoint.state == rpc_core::EndpointState::Connected),
        "{listed:?}"
    );
    let mut answered = HashSet::new();
    for _ in 0..60 {
        answered.insert(within("a call", workers.name()).await.expect("answered"));
    }
    let all: HashSet<String> = ["w1", "w2", "w3"].map(String::from).into();
    assert_eq!(
        answered, all,
        "each of two picked at random: 60 calls reach all three"
    );
}

#[tokio::test]
async fn a_caller_added_twice_is_in_the_pool_once() {
    let (workers, pool) = WorkerClient::builder().caller_pool();
    let addr = coordinator(pool.clone()).await;
    let joined = join(addr, "w1", None).await;
    within("join again", joined.join())
        .await
        .expect("answered")
        .expect("joined");
    assert_eq!(pool.len(), 1);
    assert_eq!(workers.channel().endpoints().len(), 1);
}

#[tokio::test]
async fn a_caller_whose_connection_closes_leaves_the_pool() {
    let (workers, pool) = WorkerClient::builder().caller_pool();
    let addr = coordinator(pool.clone()).await;
    let first = join(addr, "w1", None).await;
    let _second = join(addr, "w2", None).await;
    drop(first);
    until_the_pool_holds(&workers, &pool, 1).await;
    assert_eq!(pool.len(), 1);
    every_call_answered_by(&workers, "w2").await;
}

/// Returns once the pool of `workers` holds exactly `count` callers, counted and listed alike.
async fn until_the_pool_holds(workers: &WorkerClient, pool: &CallerPool, count: usize) {
    // Subscribed before the pool is first looked at: no change is missed.
    let mut changes = std::pin::pin!(workers.channel().endpoint_changes());
    within("the pool to change", async {
        while pool.len() != count || workers.channel().endpoints().len() != count {
            changes.next().await.expect("changes go on");
        }
    })
    .await;
}

/// Makes ten calls with `workers`, each answered by the worker named `name`.
async fn every_call_answered_by(workers: &WorkerClient, name: &str) {
    for _ in 0..10 {
        assert_eq!(
            within("a call", workers.name()).await.expect("answered"),
            name
        );
    }
}

/// Returns once as many of the endpoints of `workers` as `count` are listed not serving.
async fn until_not_serving(workers: &WorkerClient, count: usize) {
    let mut changes = std::pin::pin!(workers.channel().endpoint_changes());
    let not_serving = || {
        let listed = workers.channel().endpoints();
        let state = rpc_core::EndpointState::NotServing;
        listed
            .iter()
            .filter(|endpoint| endpoint.state == state)
            .count()
    };
    within("the health probes to see it", async {
        while not_serving() != count {
            changes.next().await.expect("changes go on");
        }
    })
    .await;
}

/// A worker that says it is not serving (`ServerBuilder::health` of what it serves back with)
/// gets no call from a coordinator that checks its callers' health, until it serves again.
#[tokio::test]
async fn a_worker_that_says_it_is_not_serving_gets_no_calls_until_it_serves_again() {
    let checked = WorkerClient::builder().health_checks(Duration::from_millis(10));
    let (workers, pool) = checked.caller_pool();
    let addr = coordinator(pool.clone()).await;
    let server = Server::builder();
    let health = server.health();
    let _first = join_with(server, addr, "w1", None).await;
    let _second = join(addr, "w2", None).await;
    until_the_pool_holds(&workers, &pool, 2).await;

    health.set(ServingStatus::NotServing);
    until_not_serving(&workers, 1).await;
    every_call_answered_by(&workers, "w2").await;

    health.set(ServingStatus::Serving);
    until_not_serving(&workers, 0).await;
    let mut answered = HashSet::new();
    for _ in 0..40 {
        answered.insert(within("a call", workers.name()).await.expect("answered"));
    }
    assert!(answered.contains("w1"), "back in the pool: {answered:?}");
}

#[tokio::test]
async fn an_empty_pool_fails_a_call_at_once_unless_it_waits_for_ready() {
    let (workers, pool) = WorkerClient::builder().caller_pool();
    assert!(pool.is_empty());
    assert!(matches!(
        within("a call", workers.name()).await,
        Err(RpcError::NoEndpoints)
    ));

    let (workers, pool) = WorkerClient::builder().wait_for_ready(true).caller_pool();
    let addr = coordinator(pool).await;
    let call = tokio::spawn(async move { workers.name().await });
    // On this test's one thread, the call runs until it waits before the worker connects.
    tokio::task::yield_now().await;
    let _joined = join(addr, "late", None).await;
    let answer = within("the waiting call", call).await.expect("joins");
    assert_eq!(answer.expect("answered once a worker joined"), "late");

    let (workers, _pool) = WorkerClient::builder()
        .wait_for_ready(true)
        .deadline(Duration::from_millis(50))
        .caller_pool();
    assert!(matches!(
        within("a call", workers.name()).await,
        Err(RpcError::DeadlineExceeded { .. })
    ));
}

#[tokio::test]
async fn an_idempotent_call_whose_caller_vanished_runs_on_another() {
    let (workers, pool) = WorkerClient::builder().caller_pool();
    let addr = coordinator(pool.clone()).await;
    let (started, mut events) = mpsc::unbounded_channel();
    let holds = Holds {
        started,
        release: Arc::default(),
    };
    let holding = join(addr, "holding", Some(holds)).await;
    let call = tokio::spawn(async move { workers.task().await });
    assert_eq!(
        within("the task to start", events.recv()).await.as_deref(),
        Some("started holding")
    );
    let _other = join(addr, "other", None).await;
    drop(holding);
    let answer = within("the task", call).await.expect("joins");
    assert_eq!(answer.expect("made again on the other"), "other");
}

/// A worker that takes tasks and never answers them fails them at their deadlines, and is
/// ejected after five in a row: the pool's calls then go to the worker that answers.
#[tokio::test]
async fn a_worker_that_never_answers_is_ejected() {
    let (workers, pool) = WorkerClient::builder()
        .deadline(Duration::from_millis(100))
        .reconnect_backoff(Duration::from_secs(600), Duration::from_secs(600))
        .caller_pool();
    let addr = coordinator(pool.clone()).await;
    let (started, _events) = mpsc::unbounded_channel();
    let mute = Holds {
        started,
        release: Arc::default(),
    };
    let _mute = join(addr, "mute", Some(mute)).await;
    let _answering = join(addr, "answering", None).await;
    let mut timed_out = 0;
    while timed_out < 5 {
        match within("a task", workers.task()).await {
            Ok(name) => assert_eq!(name, "answering"),
            Err(RpcError::DeadlineExceeded { .. }) => timed_out += 1,
            Err(error) => panic!("{error}"),
        }
    }
    let listed = workers.channel().endpoints();
    assert!(
        listed
            .iter()
            .any(|endpoint| endpoint.state == rpc_core::EndpointState::Ejected),
        "{listed:?}"
    );
    for _ in 0..20 {
        let answer = within("a task", workers.task()).await;
        assert_eq!(answer.expect("answered"), "answering");
    }
}

/// A worker leaves gracefully: told to stop serving back, it takes no new task (calls made
/// from then on wait for, and go to, another worker), finishes the one it runs, and leaves
/// the pool, its own connection still open.
#[tokio::test]
async fn a_worker_that_stops_serving_back_finishes_its_task_and_leaves() {
    let (workers, pool) = WorkerClient::builder().wait_for_ready(true).caller_pool();
    let addr = coordinator(pool.clone()).await;
    let (started, mut events) = mpsc::unbounded_channel();
    let holds = Holds {
        started,
        release: Arc::default(),
    };
    let leaving = join(addr, "leaving", Some(holds.clone())).await;
    let running = tokio::spawn({
        let workers = workers.clone();
        async move { workers.task().await }
    });
    assert_eq!(
        within("the task to start", events.recv()).await.as_deref(),
        Some("started leaving")
    );

    let stopped = leaving.channel().stop_serving_back();
    // Told at once: a call made now waits for another worker rather than going to this one.
    let waiting = tokio::spawn({
        let workers = workers.clone();
        async move { workers.name().await }
    });
    let _staying = join(addr, "staying", None).await;
    let answer = within("the call made after", waiting).await.expect("joins");
    assert_eq!(answer.expect("answered"), "staying");

    holds.release.notify_one();
    let answer = within("the running task", running).await.expect("joins");
    assert_eq!(answer.expect("finished where it ran"), "leaving");
    within("the worker to stop serving", stopped).await;
    until_the_pool_holds(&workers, &pool, 1).await;
    assert!(!leaving.channel().is_closed(), "its own connection stays");
    every_call_answered_by(&workers, "staying").await;
}

#[tokio::test]
async fn callers_that_serve_another_service_another_build_or_nothing_are_refused() {
    let (_workers, pool) = WorkerClient::builder().caller_pool();
    let addr = coordinator(pool.clone()).await;
    let other = CoordinatorClient::builder()
        .serve(OtherServer::new(NoOther))
        .connect(addr)
        .await
        .expect("connects");
    let refused = within("join", other.join()).await.expect("answered");
    assert_eq!(
        refused,
        Err("the server does not serve `Worker`: it serves `Other`".to_owned())
    );
    let older = CoordinatorClient::builder()
        .serve(older::WorkerServer::new(older::Numbered))
        .connect(addr)
        .await
        .expect("connects");
    let refused = within("join", older.join()).await.expect("answered");
    let message = refused.expect_err("refused");
    assert!(
        message.contains("`name`") && message.contains("`String` here and `u64`"),
        "{message}"
    );
    let nothing = CoordinatorClient::connect(addr).await.expect("connects");
    let refused = within("join", nothing.join()).await.expect("answered");
    assert_eq!(refused, Err(RpcError::CallerServesNothing.to_string()));
    assert!(pool.is_empty());
}

/// A worker that joins again whenever its connection closes comes back to a coordinator that
/// restarted on the same address, and the new coordinator's pool calls it.
#[tokio::test]
async fn a_worker_that_joins_again_comes_back_to_a_restarted_coordinator() {
    let (first_workers, first_pool) = WorkerClient::builder().caller_pool();
    let server = Server::builder()
        .shutdown_grace(Duration::from_secs(600))
        .bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = server.local_addr().expect("an address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_with_shutdown(
        CoordinatorServer::new(MyCoordinator {
            workers: first_pool.clone(),
        }),
        async {
            let _ = stopped.await;
        },
    ));
    let worker = WorkerServer::new(MyWorker {
        name: "loyal".to_owned(),
        holds: None,
    });
    let coordinator = CoordinatorClient::builder()
        .serve(worker)
        .wait_for_ready(true)
        .connect(addr)
        .await
        .expect("connects");
    // The worker's loop: join, serve until the connection closes, join again.
    let rejoining = tokio::spawn({
        let coordinator = coordinator.clone();
        async move {
            loop {
                match coordinator.join().await {
                    Ok(Ok(())) => coordinator.channel().closed().await,
                    failed => return failed,
                }
            }
        }
    });
    until_the_pool_holds(&first_workers, &first_pool, 1).await;
    assert_eq!(
        within("a call", first_workers.name())
            .await
            .expect("answered"),
        "loyal"
    );

    stop.send(()).expect("the coordinator listens");
    within("the first coordinator to stop", serving)
        .await
        .expect("joins")
        .expect("stops cleanly");
    let (workers, pool) = WorkerClient::builder().wait_for_ready(true).caller_pool();
    let server = Server::bind(addr)
        .await
        .expect("binds the same address again");
    tokio::spawn(server.serve(CoordinatorServer::new(MyCoordinator { workers: pool })));
    assert_eq!(
        within("a call to the worker come back", workers.name())
            .await
            .expect("answered"),
        "loyal"
    );
    rejoining.abort();
}

/// Callers over a Unix socket have no address: the pool names each by its process id.
#[cfg(unix)]
#[tokio::test]
async fn callers_over_a_unix_socket_are_named_by_their_process() {
    let dir = rpc_tests::ScratchDir::new("core-callers");
    let path = dir.join("coordinator.sock");
    let (workers, pool) = WorkerClient::builder().caller_pool();
    let server = Server::bind_unix(&path).expect("binds");
    tokio::spawn(server.serve(CoordinatorServer::new(MyCoordinator { workers: pool })));
    let worker = MyWorker {
        name: "local".to_owned(),
        holds: None,
    };
    let coordinator = CoordinatorClient::builder()
        .serve(WorkerServer::new(worker))
        .connect_unix(&path)
        .await
        .expect("connects");
    within("join", coordinator.join())
        .await
        .expect("answered")
        .expect("joined");
    let listed = workers.channel().endpoints();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].endpoint, format!("pid {}", std::process::id()));
    assert_eq!(
        within("a call", workers.name()).await.expect("answered"),
        "local"
    );
}

/// A peer that joins as a worker over every connection the coordinator allows, all from one
/// address, and sits on each task it is given, locks no newcomer out: connections busy with
/// the coordinator's calls back are busy to its connection limit too, so with none idle it asks
/// the address holding the most to make room.
#[tokio::test]
async fn workers_that_sit_on_their_tasks_lock_no_newcomer_out() {
    let (workers, pool) = WorkerClient::builder()
        .deadline(Duration::from_secs(600))
        .caller_pool();
    let server = Server::builder()
        .max_connections(2)
        .shutdown_grace(Duration::from_millis(100))
        .bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = server.local_addr().expect("an address");
    tokio::spawn(server.serve(CoordinatorServer::new(MyCoordinator {
        workers: pool.clone(),
    })));
    let mut sitting = [sitting_worker(addr).await, sitting_worker(addr).await];
    assert_eq!(pool.len(), 2);
    // A task each: the second goes to the worker with none (the less busy of the two).
    let _tasks = [
        tokio::spawn({
            let workers = workers.clone();
            async move { workers.task().await }
        }),
        tokio::spawn({
            let workers = workers.clone();
            async move { workers.task().await }
        }),
    ];
    for raw in &mut sitting {
        let task = within("a task", raw.read_frame()).await.expect("a frame");
        assert_eq!(task[..2], [0x09, 0x01], "a Request called back: {task:?}");
    }

    let newcomer = within("a newcomer", CoordinatorClient::connect(addr))
        .await
        .expect("admitted");
    let joined = within("the newcomer's call", newcomer.join()).await;
    assert!(joined.expect("answered").is_err(), "it serves nothing back");
}

/// A raw client from 127.0.0.2 that serves `Worker` back, joins the coordinator at `addr`, and
/// will never answer what it is called.
async fn sitting_worker(addr: std::net::SocketAddr) -> RawClient {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.2:0".parse().expect("an address"))
        .expect("binds another loopback address");
    let stream = socket.connect(addr).await.expect("connects");
    let mut raw = RawClient { stream };
    raw.send(&hello_serving_back("Coordinator")).await;
    let hello = within("the coordinator's hello", raw.read_frame())
        .await
        .expect("a frame");
    assert_eq!(hello[..5], *b"\x00rpcc");
    let inner = within("the reverse hello", raw.read_frame())
        .await
        .expect("a frame");
    assert_eq!(inner[..2], [0x09, 0x00]);
    let methods = &WorkerClient::INFO.describe().expect("described").methods;
    let worker_hello = service_hello("Worker", methods, 0, 0, STREAM_WINDOW);
    raw.send(&reverse_frame(&worker_hello)).await;
    raw.send(&request(1, "join", &[])).await;
    loop {
        let frame = within("the answer to join", raw.read_frame())
            .await
            .expect("a frame");
        if frame[0] == 0x02 {
            assert_eq!(frame, [0x02, 0x01, 0x00, 0x00], "Ok(Ok(()))");
            return raw;
        }
    }
}
