//! Distributed task dispatch: a coordinator spreads a job over worker processes, and survives
//! one of them being killed mid-job.
//!
//! ```text
//! cargo run -p rpc-examples --bin dispatch                       # 4 workers, 10,000 tasks
//! cargo run -p rpc-examples --bin dispatch -- --workers 8 --tasks 50000 --no-kill
//! ```
//!
//! The coordinator starts the workers as separate processes on loopback ports, balances the
//! tasks over them (each call goes to the less busy of two workers picked at random), and,
//! unless told not to, kills one with SIGKILL (`kill -9`) a third of the way through. The calls
//! that were in flight on it are made again on the others (`count_primes` is
//! `#[rpc(idempotent)]`), and the job completes. At the end the coordinator checks that every
//! task was counted exactly once and that the total is right.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use rpc_core::{EndpointState, RpcError, Server, ServiceClient};
use rpc_examples::primes::{
    Counted, Counter, Job, PrimeWorkerClient, PrimeWorkerServer, Processes, Tally, spread,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How many tasks are in flight at once.
const IN_FLIGHT: usize = 64;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("worker") {
        return worker().await;
    }
    let options = Job::parse("dispatch", &args, 4)?;
    if options.workers < 2 && options.kill_one {
        return Err("killing a worker needs at least two; add --no-kill".into());
    }
    coordinate(options).await
}

/// A worker process: serves on a free port, announced on the first line of its output.
async fn worker() -> Result<(), Error> {
    let server = Server::bind("127.0.0.1:0").await?;
    println!("listening on {}", server.local_addr()?);
    server.serve(PrimeWorkerServer::new(Counter)).await?;
    Ok(())
}

async fn coordinate(options: Job) -> Result<(), Error> {
    let mut workers = Processes::default();
    let mut addrs = Vec::new();
    for _ in 0..options.workers {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("worker")
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or("no worker output")?).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| format!("unexpected worker output: {line:?}"))?
            .to_owned();
        println!("dispatch: worker pid {} on {addr}", child.id());
        addrs.push(addr);
        workers.0.push(child);
    }

    let client = PrimeWorkerClient::builder()
        .reconnect_backoff(Duration::from_millis(50), Duration::from_secs(1))
        .balance(addrs);
    let progress = ProgressBar::new(options.tasks).with_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} tasks  {per_sec}  {msg}",
    )?);

    // The pool's state as it changes: which workers are connected, backing off or ejected.
    let watcher = tokio::spawn({
        let (changes, progress) = (client.channel().endpoint_changes(), progress.clone());
        async move {
            let mut changes = Box::pin(changes);
            let mut last = String::new();
            while let Some(endpoints) = changes.next().await {
                let states: Vec<String> = endpoints
                    .iter()
                    .map(|e| format!("{} {}", e.endpoint, state_name(e.state)))
                    .collect();
                let line = states.join(", ");
                if line != last {
                    progress.suspend(|| println!("dispatch: pool: {line}"));
                    last = line;
                }
            }
        }
    });

    let resubmitted = Arc::new(AtomicU64::new(0));
    let mut done = spread(options.tasks, IN_FLIGHT, {
        let (client, resubmitted, span) = (client.clone(), resubmitted.clone(), options.span);
        move |task| {
            let (client, resubmitted) = (client.clone(), resubmitted.clone());
            async move { run_task(&client, task, span, &resubmitted).await }
        }
    });

    let kill_at = options.tasks / 3;
    let mut tally = Tally::default();
    while tally.len() < options.tasks {
        let (task, counted) = done.recv().await.ok_or("the dispatcher stopped")?;
        tally.record(task, counted?)?;
        progress.inc(1);
        if tally.len().is_multiple_of(100) {
            progress.set_message(live_state(&client, tally.per_worker()));
        }
        if options.kill_one && tally.len() == kill_at {
            let victim = &mut workers.0[1];
            victim.kill()?; // SIGKILL: the process dies with calls in flight
            victim.wait()?;
            // Printed around the bar, and also when there is no terminal to draw it on.
            progress.suspend(|| {
                println!(
                    "dispatch: killed worker pid {} (kill -9) with tasks in flight",
                    victim.id()
                );
            });
            progress.set_message(format!("{} workers left", options.workers - 1));
        }
    }
    progress.finish();
    watcher.abort();
    let endpoints = client.channel().endpoints();
    let connected = endpoints
        .iter()
        .filter(|e| e.state == EndpointState::Connected)
        .count();
    println!(
        "dispatch: pool at the end: {connected} of {} workers connected",
        endpoints.len()
    );

    println!(
        "dispatch: {} calls made again by the coordinator after the client gave up",
        resubmitted.load(Ordering::Relaxed)
    );
    tally.verify("dispatch", options.tasks, options.span)?;
    Ok(())
}

/// How a worker's state reads in the example's output.
fn state_name(state: EndpointState) -> &'static str {
    match state {
        EndpointState::Connected => "connected",
        EndpointState::Connecting => "connecting",
        EndpointState::BackingOff => "backing off",
        EndpointState::Ejected => "ejected",
        EndpointState::NotServing => "not serving",
        _ => "idle",
    }
}

/// The progress bar's message: per worker, its state, calls in flight, and tasks done.
fn live_state(client: &PrimeWorkerClient, per_worker: &HashMap<u32, u64>) -> String {
    let states: Vec<String> = client
        .channel()
        .endpoints()
        .iter()
        .map(|e| {
            let port = e.endpoint.rsplit(':').next().unwrap_or(&e.endpoint);
            format!(
                ":{port} {} ({} in flight)",
                state_name(e.state),
                e.outstanding
            )
        })
        .collect();
    let done: u64 = per_worker.values().sum();
    format!(
        "{}; {} workers have answered {done}",
        states.join(", "),
        per_worker.len()
    )
}

/// Counts one task's primes. The client already makes a lost call again on another worker
/// when its retry budget allows; past that, the coordinator submits the task again itself, a
/// few times, before giving up on the job.
async fn run_task(
    client: &PrimeWorkerClient,
    task: u64,
    span: u64,
    resubmitted: &AtomicU64,
) -> Result<Counted, RpcError> {
    let (from, to) = (task * span, task * span + span);
    let mut attempts = 0;
    loop {
        match client.count_primes(from, to).await {
            Ok(counted) => return Ok(counted),
            Err(error) if attempts < 5 => {
                attempts += 1;
                resubmitted.fetch_add(1, Ordering::Relaxed);
                report_resubmission(task, &error);
            }
            Err(error) => return Err(error),
        }
    }
}

fn report_resubmission(task: u64, error: &RpcError) {
    eprintln!("dispatch: task {task} submitted again after: {error}");
}
