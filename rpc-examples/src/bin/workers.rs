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

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rpc_core::{Context, Server, ServiceClient};
use rpc_examples::primes::{Counted, Counter, PrimeWorkerClient, PrimeWorkerServer, count_primes};
use tokio::sync::{Notify, Semaphore};

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
    let options = Options::parse(&args)?;
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

struct Options {
    workers: usize,
    tasks: u64,
    /// How many numbers each task counts.
    span: u64,
    kill_one: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, Error> {
        let mut options = Options {
            workers: 3,
            tasks: 10_000,
            span: 1_000,
            kill_one: true,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || -> Result<u64, Error> {
                let value = args.next().ok_or(format!("{arg} needs a value"))?;
                Ok(value.parse()?)
            };
            match arg.as_str() {
                "--workers" => options.workers = value()? as usize,
                "--tasks" => options.tasks = value()?,
                "--span" => options.span = value()?,
                "--no-kill" => options.kill_one = false,
                other => {
                    return Err(format!(
                        "unknown argument {other}; usage: workers [--workers N] [--tasks N] \
                         [--span N] [--no-kill]"
                    )
                    .into());
                }
            }
        }
        if options.workers == 0 {
            return Err("at least one worker is needed".into());
        }
        Ok(options)
    }
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

/// The worker processes; killed when dropped, so that none outlives the coordinator.
struct Workers(Vec<Child>);

impl Workers {
    fn start(&mut self, addr: &str) -> Result<u32, Error> {
        let child = Command::new(std::env::current_exe()?)
            .args(["worker", addr])
            .spawn()?;
        let pid = child.id();
        self.0.push(child);
        Ok(pid)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn coordinate(options: Options) -> Result<(), Error> {
    let pool = Arc::new(Pool::default());
    let server = Server::bind("127.0.0.1:0").await?;
    let addr = server.local_addr()?.to_string();
    println!("workers: coordinator listening on {addr}");
    let service = CoordinatorServer::new(MyCoordinator {
        pool: Arc::clone(&pool),
    });
    let serving = tokio::spawn(server.serve(service));

    let mut workers = Workers(Vec::new());
    for _ in 0..options.workers {
        workers.start(&addr)?;
    }

    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let handed_again = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    let dispatcher = tokio::spawn({
        let (pool, slots, handed_again) = (pool.clone(), slots.clone(), handed_again.clone());
        let (tasks, span) = (options.tasks, options.span);
        async move {
            for task in 0..tasks {
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let (pool, handed_again, done) =
                    (pool.clone(), handed_again.clone(), done_tx.clone());
                tokio::spawn(async move {
                    let counted = run_task(&pool, task, span, &handed_again).await;
                    drop(slot);
                    let _ = done.send((task, counted));
                });
            }
        }
    });

    let kill_at = options.tasks / 3;
    let mut results: HashMap<u64, Counted> = HashMap::new();
    let mut per_worker: HashMap<u32, u64> = HashMap::new();
    while (results.len() as u64) < options.tasks {
        let (task, counted) = done.recv().await.ok_or("the dispatcher stopped")?;
        let counted = counted?;
        if results.insert(task, counted).is_some() {
            return Err(format!("task {task} was reported twice").into());
        }
        *per_worker.entry(counted.worker).or_default() += 1;
        if options.kill_one && results.len() as u64 == kill_at {
            let victim = &mut workers.0[0];
            victim.kill()?; // SIGKILL: the process dies with calls in flight
            victim.wait()?;
            println!(
                "workers: killed worker pid {} (kill -9) with tasks in flight",
                victim.id()
            );
            let pid = workers.start(&addr)?;
            println!("workers: started worker pid {pid} to take its place");
        }
    }
    dispatcher.await?;
    // The worker started in the place of the killed one may still be joining.
    tokio::time::timeout(NO_WORKER_LIMIT, pool.wait_for(options.workers))
        .await
        .map_err(|_| "the workers started did not all join")?;
    println!("workers: {} workers in the pool at the end", pool.len());

    let primes: u64 = results.values().map(|counted| counted.primes).sum();
    let limit = options.tasks * options.span;
    let expected = count_primes(0, limit);
    let mut pids: Vec<_> = per_worker.into_iter().collect();
    pids.sort_unstable();
    for (pid, tasks) in pids {
        println!("workers: worker pid {pid} counted {tasks} tasks");
    }
    println!(
        "workers: {} tasks handed to another worker after theirs was lost",
        handed_again.load(Ordering::Relaxed)
    );
    serving.abort();
    if primes != expected {
        return Err(format!("counted {primes} primes below {limit}, expected {expected}").into());
    }
    println!(
        "workers: verified: {} tasks, each counted exactly once; {primes} primes below {limit}",
        results.len()
    );
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
