//! Workers that dial out: a coordinator listens, worker processes connect to it and serve
//! `PrimeWorker` back over the connection they opened, and the coordinator hands them tasks by
//! calling them there. No worker listens on a port, so workers behind NAT or a firewall work
//! the same.
//!
//! ```text
//! cargo run -p rpc-examples --bin workers                        # 3 workers, 10,000 tasks
//! cargo run -p rpc-examples --bin workers -- --workers 6 --tasks 50000 --no-kill
//! ```
//!
//! The workers that join form a `CallerPool`: one client balances the tasks over them, each to
//! the less busy of two picked at random. Workers come and go: unless told not to, the
//! coordinator kills one with SIGKILL (`kill -9`) a third of the way through, with tasks in
//! flight on it, and starts a new one, which joins. The killed worker leaves the pool as its
//! connection closes, and the tasks it held are made again on the others (`count_primes` is
//! `#[rpc(idempotent)]`). At the end the coordinator checks that every task was counted exactly
//! once and that the total is right.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rpc_core::{CallerPool, Context, Server, ServiceClient};
use rpc_examples::primes::{
    Counted, Counter, Job, PrimeWorkerClient, PrimeWorkerServer, Processes, Tally, spread,
};
use tokio::sync::Notify;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How many tasks are in flight at once, over all workers.
const IN_FLIGHT: usize = 32;

/// How long a task waits for a worker when the pool has none, and the coordinator for the
/// workers it started to join.
const NO_WORKER_LIMIT: Duration = Duration::from_secs(30);

/// The coordinator's service: what a worker calls once it has connected.
#[rpc_core::service]
pub trait Coordinator {
    /// Joins the pool: from now on the coordinator calls the worker's `PrimeWorker` on this
    /// connection.
    async fn join(&self, name: String) -> Result<(), String>;
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, addr] = args.as_slice()
        && mode == "worker"
    {
        return worker(addr).await;
    }
    let options = Job::parse("workers", &args, 3)?;
    coordinate(options).await
}

/// A worker process: connects to the coordinator, serving `PrimeWorker` back, joins, and serves
/// until the coordinator's connection closes.
async fn worker(addr: &str) -> Result<(), Error> {
    let coordinator = CoordinatorClient::builder()
        .serve(PrimeWorkerServer::new(Counter))
        .connect(addr)
        .await?;
    coordinator
        .join(format!("pid {}", std::process::id()))
        .await??;
    coordinator.channel().closed().await;
    Ok(())
}

struct MyCoordinator {
    /// The workers that joined, as one client balances its calls over them.
    workers: CallerPool,
    joined: Arc<Notify>,
}

impl Coordinator for MyCoordinator {
    async fn join(&self, name: String) -> Result<(), String> {
        // The caller, serving `PrimeWorker` back on the connection it opened, joins the pool;
        // it leaves by itself when that connection closes.
        self.workers
            .add(&Context::current())
            .await
            .map_err(|error| error.to_string())?;
        println!("workers: {name} joined");
        self.joined.notify_waiters();
        Ok(())
    }
}

/// Returns once `count` workers are in the pool.
async fn wait_for(pool: &CallerPool, joined: &Notify, count: usize) {
    loop {
        let notified = joined.notified();
        if pool.len() >= count {
            return;
        }
        notified.await;
    }
}

/// Starts a worker process that connects to the coordinator at `addr`; returns its id.
fn start_worker(workers: &mut Processes, addr: &str) -> Result<u32, Error> {
    let child = Command::new(std::env::current_exe()?)
        .args(["worker", addr])
        .spawn()?;
    let pid = child.id();
    workers.0.push(child);
    Ok(pid)
}

async fn coordinate(options: Job) -> Result<(), Error> {
    // Calls made before any worker has joined wait for one, within their deadline.
    let (workers, pool) = PrimeWorkerClient::builder()
        .wait_for_ready(true)
        .deadline(NO_WORKER_LIMIT)
        .caller_pool();
    let joined = Arc::new(Notify::new());
    let server = Server::bind("127.0.0.1:0").await?;
    let addr = server.local_addr()?.to_string();
    println!("workers: coordinator listening on {addr}");
    let service = CoordinatorServer::new(MyCoordinator {
        workers: pool.clone(),
        joined: Arc::clone(&joined),
    });
    let serving = tokio::spawn(server.serve(service));

    let mut processes = Processes::default();
    for _ in 0..options.workers {
        start_worker(&mut processes, &addr)?;
    }

    let resubmitted = Arc::new(AtomicU64::new(0));
    let mut done = spread(options.tasks, IN_FLIGHT, {
        let (workers, resubmitted, span) = (workers.clone(), resubmitted.clone(), options.span);
        move |task| {
            let (workers, resubmitted) = (workers.clone(), resubmitted.clone());
            async move { run_task(&workers, task, span, &resubmitted).await }
        }
    });

    let kill_at = options.tasks / 3;
    let mut tally = Tally::default();
    while tally.len() < options.tasks {
        let (task, counted) = done.recv().await.ok_or("the dispatcher stopped")?;
        tally.record(task, counted?)?;
        if options.kill_one && tally.len() == kill_at {
            let victim = &mut processes.0[0];
            victim.kill()?; // SIGKILL: the process dies with calls in flight
            victim.wait()?;
            println!(
                "workers: killed worker pid {} (kill -9) with tasks in flight",
                victim.id()
            );
            let pid = start_worker(&mut processes, &addr)?;
            println!("workers: started worker pid {pid} to take its place");
        }
    }
    // The worker started in the place of the killed one may still be joining.
    tokio::time::timeout(NO_WORKER_LIMIT, wait_for(&pool, &joined, options.workers))
        .await
        .map_err(|_| "the workers started did not all join")?;
    println!("workers: {} workers in the pool at the end", pool.len());

    println!(
        "workers: {} tasks submitted again by the coordinator (the client made the other lost \
         calls again by itself)",
        resubmitted.load(Ordering::Relaxed)
    );
    serving.abort();
    tally.verify("workers", options.tasks, options.span)?;
    Ok(())
}

/// Counts one task's primes on the least busy of two workers of the pool. The client already
/// makes a call lost with its worker again on another when its retry budget allows; past that,
/// the coordinator submits the task again itself, a few times, before giving up on the job.
async fn run_task(
    workers: &PrimeWorkerClient,
    task: u64,
    span: u64,
    resubmitted: &AtomicU64,
) -> Result<Counted, Error> {
    let (from, to) = (task * span, task * span + span);
    let mut attempts = 0;
    loop {
        match workers.count_primes(from, to).await {
            Ok(counted) => return Ok(counted),
            Err(error) if attempts < 5 => {
                attempts += 1;
                resubmitted.fetch_add(1, Ordering::Relaxed);
                eprintln!("workers: task {task} submitted again after: {error}");
            }
            Err(error) => return Err(error.into()),
        }
    }
}
