//! Distributed dispatch over real TCP servers: one client over many workers, balancing,
//! reconnection, and failover when a worker dies mid-run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rpc_core::{RpcError, Server};
use rpc_tests::{held_loopback_port, within};
use tokio::net::TcpSocket;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

#[rpc_core::service]
pub trait Worker {
    /// Counts the primes in `from..to`; says which worker did.
    #[rpc(idempotent)]
    async fn count_primes(&self, from: u64, to: u64) -> (u32, u64);
    /// Never returns: keeps a call in flight until its worker dies. Not idempotent.
    async fn park(&self);
    /// The same, marked idempotent.
    #[rpc(idempotent)]
    async fn park_idempotent(&self);
}

struct PrimeCounter {
    id: u32,
    /// Told of every call that parks.
    parked: mpsc::UnboundedSender<u32>,
}

impl Worker for PrimeCounter {
    async fn count_primes(&self, from: u64, to: u64) -> (u32, u64) {
        // Yield now and then, so that calls are really in flight together.
        tokio::task::yield_now().await;
        (self.id, count_primes(from, to))
    }

    async fn park(&self) {
        let _ = self.parked.send(self.id);
        std::future::pending().await
    }

    async fn park_idempotent(&self) {
        let _ = self.parked.send(self.id);
        std::future::pending().await
    }
}

fn count_primes(from: u64, to: u64) -> u64 {
    (from..to)
        .filter(|&n| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
        .count() as u64
}

/// A worker server that can be killed (its listener and every connection dropped at once,
/// as if its process died) and started again on the same address.
struct WorkerProcess {
    id: u32,
    addr: SocketAddr,
    /// Holds the worker's port while it is down too, so that no other test's socket takes it.
    _port: TcpSocket,
    parked: mpsc::UnboundedSender<u32>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl WorkerProcess {
    async fn start(id: u32, parked: mpsc::UnboundedSender<u32>) -> Self {
        let (port, addr) = held_loopback_port();
        let mut worker = WorkerProcess {
            id,
            addr,
            _port: port,
            parked,
            task: None,
        };
        worker.serve().await;
        worker
    }

    async fn serve(&mut self) {
        let server = Server::bind(self.addr).await.expect("binds");
        let counter = PrimeCounter {
            id: self.id,
            parked: self.parked.clone(),
        };
        self.task = Some(tokio::spawn(server.serve(WorkerServer::new(counter))));
    }

    /// Stops the worker and waits until it has: its listener and connections are gone (an
    /// abort alone takes effect only when the runtime next gets to the task).
    async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restart(&mut self) {
        self.kill().await;
        self.serve().await;
    }
}

async fn workers(count: u32) -> Vec<WorkerProcess> {
    workers_reporting(count).await.0
}

/// Workers, and where they report each call that parks.
async fn workers_reporting(count: u32) -> (Vec<WorkerProcess>, mpsc::UnboundedReceiver<u32>) {
    let (parked, reports) = mpsc::unbounded_channel();
    let mut workers = Vec::new();
    for id in 0..count {
        workers.push(WorkerProcess::start(id, parked.clone()).await);
    }
    (workers, reports)
}

fn balanced_client(workers: &[WorkerProcess]) -> WorkerClient {
    WorkerClient::builder()
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .balance(workers.iter().map(|worker| worker.addr))
}

/// The range of task `task`: 200 numbers.
fn range(task: u64) -> (u64, u64) {
    (task * 200, task * 200 + 200)
}

/// Where a job's results arrive: each task with its answer, (worker, primes).
type Results = tokio::sync::mpsc::UnboundedReceiver<(u64, Result<(u32, u64), RpcError>)>;

/// Starts tasks `tasks`, at most `parallel` in flight at once.
fn spawn_job(client: &WorkerClient, tasks: std::ops::Range<u64>, parallel: usize) -> Results {
    let slots = Arc::new(Semaphore::new(parallel));
    let (done, results) = tokio::sync::mpsc::unbounded_channel();
    for task in tasks {
        let client = client.clone();
        let slots = Arc::clone(&slots);
        let done = done.clone();
        tokio::spawn(async move {
            let _slot = slots.acquire().await.expect("open");
            let (from, to) = range(task);
            let _ = done.send((task, client.count_primes(from, to).await));
        });
    }
    results
}

/// Waits for `count` results, failing on any error.
async fn collect(results: &mut Results, count: usize) -> Vec<(u64, u32, u64)> {
    let mut collected = Vec::with_capacity(count);
    while collected.len() < count {
        let (task, answer) = results.recv().await.expect("the job is running");
        let (worker, primes) = answer.unwrap_or_else(|e| panic!("task {task} failed: {e}"));
        collected.push((task, worker, primes));
    }
    collected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_loses_no_task() {
    let mut workers = workers(3).await;
    let client = balanced_client(&workers);
    let mut results = spawn_job(&client, 0..2000, 48);

    let mut done = within("the first 300 tasks", collect(&mut results, 300)).await;
    workers[1].kill().await;
    done.extend(within("the other 1700 tasks", collect(&mut results, 1700)).await);

    let mut seen: HashMap<u64, u64> = HashMap::new();
    for (task, _, primes) in &done {
        assert!(
            seen.insert(*task, *primes).is_none(),
            "task {task} reported twice"
        );
    }
    assert_eq!(seen.len(), 2000, "every task completed exactly once");
    for (task, primes) in seen {
        let (from, to) = range(task);
        assert_eq!(primes, count_primes(from, to), "task {task}");
    }
    let after_kill = done[300..].iter().filter(|(_, worker, _)| *worker == 1);
    assert!(
        after_kill.count() <= 48,
        "only calls already in flight can have been answered by the dead worker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uniform_tasks_spread_over_the_workers() {
    let workers = workers(3).await;
    let client = balanced_client(&workers);
    let mut results = spawn_job(&client, 0..3000, 32);
    let done = within("3000 tasks", collect(&mut results, 3000)).await;
    let mut per_worker = [0usize; 3];
    for (_, worker, _) in done {
        per_worker[worker as usize] += 1;
    }
    for (worker, count) in per_worker.iter().enumerate() {
        assert!(
            *count >= 500,
            "worker {worker} got {count} of 3000 tasks, under half its fair share: {per_worker:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_is_used_again() {
    let mut workers = workers(2).await;
    let client = balanced_client(&workers);
    let mut results = spawn_job(&client, 0..200, 8);
    within("a first job", collect(&mut results, 200)).await;

    workers[0].kill().await;
    let mut results = spawn_job(&client, 0..200, 8);
    let without = within("a job without worker 0", collect(&mut results, 200)).await;
    assert!(without.iter().all(|(_, worker, _)| *worker == 1));

    workers[0].restart().await;
    let used_again = within("worker 0 to take tasks again", async {
        let mut batch = 0;
        loop {
            batch += 1;
            let mut results = spawn_job(&client, batch * 100..batch * 100 + 100, 8);
            let done = collect(&mut results, 100).await;
            if done.iter().any(|(_, worker, _)| *worker == 0) {
                break done;
            }
        }
    })
    .await;
    assert!(used_again.iter().any(|(_, worker, _)| *worker == 0));
}

#[tokio::test]
async fn a_single_server_client_reconnects_after_a_restart() {
    let mut workers = workers(1).await;
    let client = WorkerClient::builder()
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .connect(workers[0].addr)
        .await
        .expect("connects");
    assert_eq!(client.count_primes(0, 10).await.expect("first"), (0, 4));

    workers[0].kill().await;
    within(
        "the connection to drop",
        rpc_core::ServiceClient::channel(&client).closed(),
    )
    .await;
    workers[0].restart().await;
    let again = within("a call after the restart", client.count_primes(0, 10)).await;
    assert_eq!(again.expect("the same client object works again"), (0, 4));
}

#[tokio::test]
async fn a_pool_can_follow_a_dns_name() {
    let workers = workers(1).await;
    let name = format!("localhost:{}", workers[0].addr.port());
    let client = WorkerClient::builder()
        .resolve(name, Duration::from_millis(50))
        .await
        .expect("localhost resolves");
    assert_eq!(
        within("a call", client.count_primes(0, 100))
            .await
            .expect("call"),
        (0, 25)
    );
    match WorkerClient::builder()
        .resolve("name.invalid:80", Duration::from_secs(1))
        .await
    {
        Err(RpcError::Connect { .. } | RpcError::NoEndpoints) => {}
        other => panic!("expected a lookup failure, got {other:?}"),
    }
}

#[tokio::test]
async fn an_empty_pool_says_so() {
    let client = WorkerClient::builder().balance(Vec::<std::net::SocketAddr>::new());
    match client.count_primes(0, 10).await {
        Err(RpcError::NoEndpoints) => {}
        other => panic!("expected NoEndpoints, got {other:?}"),
    }
}

/// Kills every worker once `calls` calls are parked on them, and returns what each call got.
async fn park_and_kill<F, Fut>(
    (mut workers, mut reports): (Vec<WorkerProcess>, mpsc::UnboundedReceiver<u32>),
    calls: usize,
    call: F,
) -> Vec<RpcError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), RpcError>> + Send + 'static,
{
    let parked: Vec<_> = (0..calls).map(|_| tokio::spawn(call())).collect();
    for _ in 0..calls {
        within("a call to park", reports.recv())
            .await
            .expect("workers alive");
    }
    for worker in &mut workers {
        worker.kill().await;
    }
    let mut errors = Vec::new();
    for call in parked {
        errors.push(
            within("a parked call", call)
                .await
                .expect("joins")
                .expect_err("no answer"),
        );
    }
    errors
}

#[tokio::test]
async fn a_call_that_may_have_run_is_not_made_again_unless_idempotent() {
    let workers = workers_reporting(2).await;
    let client = balanced_client(&workers.0);
    let errors = park_and_kill(workers, 4, move || {
        let client = client.clone();
        async move { client.park().await }
    })
    .await;
    for error in errors {
        match &error {
            RpcError::Interrupted { method, .. } => assert_eq!(method, "park"),
            other => panic!("expected Interrupted, got {other:?}"),
        }
        assert!(
            error.to_string().contains("may or may not have run"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn an_exhausted_retry_budget_stops_retries_of_idempotent_calls() {
    let workers = workers_reporting(2).await;
    let client = WorkerClient::builder()
        .retry_budget(0.0, 0)
        .balance(workers.0.iter().map(|worker| worker.addr));
    let errors = park_and_kill(workers, 4, move || {
        let client = client.clone();
        async move { client.park_idempotent().await }
    })
    .await;
    for error in errors {
        assert!(
            matches!(&error, RpcError::Interrupted { method, .. } if method == "park_idempotent"),
            "{error:?}"
        );
    }
}
