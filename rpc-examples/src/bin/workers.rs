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
//! `#[rpc(idempotent)]`). Two thirds of the way through, it asks another to leave (a line on
//! its standard input): that worker stops serving back, takes no new task, finishes those it
//! runs and leaves; another takes its place. At the end the coordinator checks that every task
//! was counted exactly once and that the total is right.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use rpc_core::{CallerPool, Context, Server, ServiceClient};
use rpc_examples::primes::{
    Counted, Counter, Job, PrimeWorkerClient, PrimeWorkerServer, Processes, Tally, spread,
};

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
/// until the coordinator's connection closes, or, asked to leave by a line on its standard
/// input, until the tasks it runs are done.
async fn worker(addr: &str) -> Result<(), Error> {
    let coordinator = CoordinatorClient::builder()
        .serve(PrimeWorkerServer::new(Counter))
        .connect(addr)
        .await?;
    let pid = std::process::id();
    coordinator.join(format!("pid {pid}")).await??;
    let (ask, asked) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        if std::io::stdin()
            .read_line(&mut line)
            .is_ok_and(|read| read > 0)
        {
            let _ = ask.send(());
        }
    });
    tokio::select! {
        () = coordinator.channel().closed() => {}
        Ok(()) = asked => {
            coordinator.channel().stop_serving_back().await;
            println!("workers: pid {pid} left the pool, the tasks it ran done");
        }
    }
    Ok(())
}

struct MyCoordinator {
    /// The workers that joined, as one client balances its calls over them.
    workers: CallerPool,
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
        Ok(())
    }
}

/// Returns once the pool of `workers` holds exactly `count` workers.
async fn wait_for(workers: &PrimeWorkerClient, pool: &CallerPool, count: usize) {
    let mut changes = std::pin::pin!(workers.channel().endpoint_changes());
    while pool.len() != count {
        if changes.next().await.is_none() {
            return;
        }
    }
}

/// Starts a worker process that connects to the coordinator at `addr`; returns its id. A line
/// written to its standard input asks it to leave.
fn start_worker(workers: &mut Processes, addr: &str) -> Result<u32, Error> {
    let child = Command::new(std::env::current_exe()?)
        .args(["worker", addr])
        .stdin(Stdio::piped())
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
    let server = Server::bind("127.0.0.1:0").await?;
    let addr = server.local_addr()?.to_string();
    println!("workers: coordinator listening on {addr}");
    let service = CoordinatorServer::new(MyCoordinator {
        workers: pool.clone(),
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
    let leave_at = options.tasks * 2 / 3;
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
        if options.kill_one && tally.len() == leave_at {
            let leaving = &mut processes.0[1];
            if let Some(stdin) = &mut leaving.stdin {
                writeln!(stdin, "leave")?;
            }
            println!("workers: asked worker pid {} to leave", leaving.id());
            let pid = start_worker(&mut processes, &addr)?;
            println!("workers: started worker pid {pid} to take its place");
        }
    }
    if options.kill_one {
        // The worker asked to leave exits once the tasks it ran are done.
        let leaving = &mut processes.0[1];
        tokio::task::block_in_place(|| leaving.wait())?;
    }
    // The workers started in the places of the others may still be joining.
    tokio::time::timeout(NO_WORKER_LIMIT, wait_for(&workers, &pool, options.workers))
        .await
        .map_err(|_| "the pool did not come back to as many workers as were started")?;
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
