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
//! Workers come and go: unless told not to, the coordinator kills one with SIGKILL (`kill -9`) a
//! third of the way through, with tasks in flight on it, and starts a new one, which joins. The
//! tasks the killed worker held fail on the coordinator's side (its connection is gone) and are
//! handed to the others. At the end the coordinator checks that every task was counted exactly
//! once and that the total is right.

use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rpc_core::{Context, Server, ServiceClient};
use rpc_examples::primes::{
    Counted, Counter, Job, PrimeWorkerClient, PrimeWorkerServer, Processes, Tally, spread,
};
use tokio::sync::Notify;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How many tasks are in flight at once, over all workers.
const IN_FLIGHT: usize = 32;

/// How long the coordinator waits for a worker when it has none.
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

/// The workers that joined, as the coordinator calls them.
#[derive(Default)]
struct Pool {
    workers: Mutex<Vec<Joined>>,
    joined: Notify,
    next: AtomicUsize,
}

#[derive(Clone)]
struct Joined {
    name: String,
    client: PrimeWorkerClient,
}

impl Pool {
    /// The next worker whose connection is open, round robin; waits for one to join if none
    /// is, for at most [`NO_WORKER_LIMIT`].
    async fn pick(&self) -> Result<Joined, Error> {
        let wait = async {
            loop {
                let joined = self.joined.notified();
                if let Some(worker) = self.next_open() {
                    return worker;
                }
                joined.await;
            }
        };
        tokio::time::timeout(NO_WORKER_LIMIT, wait)
            .await
            .map_err(|_| format!("no worker in the pool for {NO_WORKER_LIMIT:?}").into())
    }

    /// The workers whose connections are open: one whose connection is gone leaves the pool.
    fn open_workers(&self) -> std::sync::MutexGuard<'_, Vec<Joined>> {
        let mut workers = self.workers.lock().expect("pool lock");
        workers.retain(|worker| !worker.client.channel().is_closed());
        workers
    }

    fn next_open(&self) -> Option<Joined> {
        let workers = self.open_workers();
        let count = workers.len();
        (count > 0).then(|| workers[self.next.fetch_add(1, Ordering::Relaxed) % count].clone())
    }

    /// Returns once `count` workers with open connections are in the pool.
    async fn wait_for(&self, count: usize) {
        loop {
            let joined = self.joined.notified();
            if self.len() >= count {
                return;
            }
            joined.await;
        }
    }

    /// How many workers with open connections the pool has.
    fn len(&self) -> usize {
        self.open_workers().len()
    }
}

struct MyCoordinator {
    pool: Arc<Pool>,
}

impl Coordinator for MyCoordinator {
    async fn join(&self, name: String) -> Result<(), String> {
        // A client of what the caller serves back, on the connection it opened.
        let client = Context::current()
            .caller::<PrimeWorkerClient>()
            .await
            .map_err(|error| error.to_string())?;
        println!("workers: {name} joined");
        self.pool
            .workers
            .lock()
            .expect("pool lock")
            .push(Joined { name, client });
        self.pool.joined.notify_waiters();
        Ok(())
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
    let pool = Arc::new(Pool::default());
    let server = Server::bind("127.0.0.1:0").await?;
    let addr = server.local_addr()?.to_string();
    println!("workers: coordinator listening on {addr}");
    let service = CoordinatorServer::new(MyCoordinator {
        pool: Arc::clone(&pool),
    });
    let serving = tokio::spawn(server.serve(service));

    let mut workers = Processes::default();
    for _ in 0..options.workers {
        start_worker(&mut workers, &addr)?;
    }

    let handed_again = Arc::new(AtomicU64::new(0));
    let mut done = spread(options.tasks, IN_FLIGHT, {
        let (pool, handed_again, span) = (pool.clone(), handed_again.clone(), options.span);
        move |task| {
            let (pool, handed_again) = (pool.clone(), handed_again.clone());
            async move { run_task(&pool, task, span, &handed_again).await }
        }
    });

    let kill_at = options.tasks / 3;
    let mut tally = Tally::default();
    while tally.len() < options.tasks {
        let (task, counted) = done.recv().await.ok_or("the dispatcher stopped")?;
        tally.record(task, counted?)?;
        if options.kill_one && tally.len() == kill_at {
            let victim = &mut workers.0[0];
            victim.kill()?; // SIGKILL: the process dies with calls in flight
            victim.wait()?;
            println!(
                "workers: killed worker pid {} (kill -9) with tasks in flight",
                victim.id()
            );
            let pid = start_worker(&mut workers, &addr)?;
            println!("workers: started worker pid {pid} to take its place");
        }
    }
    // The worker started in the place of the killed one may still be joining.
    tokio::time::timeout(NO_WORKER_LIMIT, pool.wait_for(options.workers))
        .await
        .map_err(|_| "the workers started did not all join")?;
    println!("workers: {} workers in the pool at the end", pool.len());

    println!(
        "workers: {} tasks handed to another worker after theirs was lost",
        handed_again.load(Ordering::Relaxed)
    );
    serving.abort();
    tally.verify("workers", options.tasks, options.span)?;
    Ok(())
}

/// Counts one task's primes on a worker of the pool; if that worker is lost before it
/// answers, hands the task to another.
async fn run_task(
    pool: &Pool,
    task: u64,
    span: u64,
    handed_again: &AtomicU64,
) -> Result<Counted, Error> {
    let (from, to) = (task * span, task * span + span);
    let mut attempts = 0;
    loop {
        let worker = pool.pick().await?;
        match worker.client.count_primes(from, to).await {
            Ok(counted) => return Ok(counted),
            Err(error) if attempts < 5 => {
                attempts += 1;
                handed_again.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "workers: task {task} handed again after {}: {error}",
                    worker.name
                );
            }
            Err(error) => return Err(error.into()),
        }
    }
}
