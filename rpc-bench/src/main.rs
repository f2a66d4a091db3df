//! Benchmarks of rpc-core against tarpc and a raw postcard-over-TCP floor, all over loopback in
//! one process, on the same machine and in one run.
//!
//! ```text
//! cargo run --release -p rpc-bench               # measure and print the table
//! cargo run --release -p rpc-bench -- --write    # also write BENCHMARKS.md and its chart
//! cargo run --release -p rpc-bench -- --quick    # a short run, to see that it works
//! cargo run --release -p rpc-bench -- --profile  # only rpc-core, 256 callers, 5 s: for perf
//! cargo run --release -p rpc-bench -- --profile WORKLOAD [SYSTEM]  # one workload, one system
//! ```
//!
//! `WORKLOAD` is `latency`, `bulk` (the byte-buffer echo), `bulk-vec`, `32` or `256` (callers on
//! one connection); `SYSTEM` is `rpc-core` (the default), `tarpc` or `raw`.
//!
//! ```text
//! ```

mod alloc;
mod report;
mod systems;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use systems::System;
use systems::raw::Raw;
use systems::rpc::RpcCore;
use systems::tarpc::Tarpc;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

/// How long each throughput figure is measured for, and how many calls the sequential ones make.
#[derive(Debug, Clone, Copy)]
struct Effort {
    window: Duration,
    sequential_calls: usize,
}

/// One system's figures; `None` where the system does not take part.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Sequential calls: median and 99th-percentile latency, in microseconds.
    pub latency_p50_us: Option<f64>,
    pub latency_p99_us: Option<f64>,
    /// Calls per second on one connection with 32 and 256 concurrent callers.
    pub pipelined_32: Option<f64>,
    pub pipelined_256: Option<f64>,
    /// Calls per second over 100 connections, 32 calls in flight on each.
    pub many_connections: Option<f64>,
    /// MiB/s of 1 MiB payloads echoed, 4 in flight, as `Vec<u8>` and as a byte buffer.
    pub bulk_vec: Option<f64>,
    pub bulk_bytes: Option<f64>,
    /// Heap allocations per sequential call, client and server together.
    pub allocations_per_call: Option<f64>,
    /// Heap bytes held per idle connection, client and server ends together.
    pub idle_connection_bytes: Option<f64>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let effort = if args.iter().any(|a| a == "--quick") {
        Effort {
            window: Duration::from_millis(300),
            sequential_calls: 2_000,
        }
    } else {
        Effort {
            window: Duration::from_secs(3),
            sequential_calls: 30_000,
        }
    };
    // Servers and clients each get a runtime with a worker thread of its own, as if they were
    // two processes: no system gets to run both ends on one thread without any wakeup.
    let runtime = one_thread_runtime();
    if let Some(at) = args.iter().position(|a| a == "--profile") {
        let workload = args.get(at + 1).cloned().unwrap_or_default();
        let report = match args.get(at + 2).map(String::as_str) {
            None | Some("rpc-core") => on_worker(&runtime, profile::<RpcCore>(workload)),
            Some("tarpc") => on_worker(&runtime, profile::<Tarpc>(workload)),
            Some("raw") => on_worker(&runtime, profile::<Raw>(workload)),
            Some(other) => format!("no system called {other}: rpc-core, tarpc or raw"),
        };
        println!("{report}");
        return;
    }
    let results = on_worker(&runtime, async move {
        let raw = measure_floor::<Raw>(effort).await;
        let tarpc = measure::<Tarpc>("tarpc", effort).await;
        let rpc = measure::<RpcCore>("rpc-core", effort).await;
        report::Results { rpc, tarpc, raw }
    });
    let table = report::table(&results);
    println!("{table}");
    if args.iter().any(|a| a == "--write") {
        report::write(&results, &table).expect("writes BENCHMARKS.md and the chart");
        println!("wrote BENCHMARKS.md and docs/benchmarks.svg");
    }
}

/// Runs one workload for 5 s (or 200,000 sequential calls), for a profiler to watch.
async fn profile<S: System>(workload: String) -> String {
    let client = S::connect(serve::<S>()).await;
    let effort = Effort {
        window: Duration::from_secs(5),
        sequential_calls: 200_000,
    };
    match workload.as_str() {
        "latency" => {
            let (p50, p99) = latency::<S>(&client, effort).await;
            format!("sequential p50 {p50:.1} µs, p99 {p99:.1} µs")
        }
        "bulk" | "bulk-vec" => {
            let figure = bulk::<S>(&client, workload == "bulk", effort).await;
            format!("{figure:.0} MiB/s of 1 MiB echoes")
        }
        "" | "32" | "256" => {
            let callers = workload.parse().unwrap_or(256);
            let figure = throughput::<S>(std::slice::from_ref(&client), callers, effort).await;
            format!("{figure:.0} calls/s with {callers} callers")
        }
        other => format!("no workload called {other}: latency, bulk, bulk-vec, 32 or 256"),
    }
}

/// A multi-thread runtime with one worker.
fn one_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Runs `work` as a task on `runtime`'s worker thread, and waits for its output.
///
/// `block_on` alone would run it on the calling thread instead, putting a second thread into
/// every client and a thread wakeup into every call of every system.
fn on_worker<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    work: impl Future<Output = T> + Send + 'static,
) -> T {
    runtime
        .block_on(runtime.spawn(work))
        .expect("the benchmark runs to its end")
}

/// Starts `S`'s server on a runtime of its own, which lives as long as the process.
fn serve<S: System>() -> std::net::SocketAddr {
    let runtime = Box::leak(Box::new(one_thread_runtime()));
    std::thread::scope(|scope| {
        scope
            .spawn(|| runtime.block_on(S::serve()))
            .join()
            .expect("the server starts")
    })
}

/// The raw floor takes part in what one call at a time can show.
async fn measure_floor<S: System>(effort: Effort) -> Figures {
    eprintln!("measuring raw postcard over TCP");
    let addr = serve::<S>();
    let client = S::connect(addr).await;
    let (p50, p99) = latency::<S>(&client, effort).await;
    Figures {
        latency_p50_us: Some(p50),
        latency_p99_us: Some(p99),
        allocations_per_call: Some(allocations_per_call::<S>(&client, effort).await),
        ..Figures::default()
    }
}

async fn measure<S: System>(name: &str, effort: Effort) -> Figures {
    eprintln!("measuring {name}");
    let addr = serve::<S>();
    // First, while nothing else has run: later workloads leave buffers that are freed in
    // their own time, which would blur the figure.
    let idle = idle_connection_bytes::<S>(addr).await;
    let client = S::connect(addr).await;
    let (p50, p99) = latency::<S>(&client, effort).await;
    let allocations = allocations_per_call::<S>(&client, effort).await;
    let pipelined_32 = throughput::<S>(std::slice::from_ref(&client), 32, effort).await;
    let pipelined_256 = throughput::<S>(std::slice::from_ref(&client), 256, effort).await;
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(S::connect(addr).await);
    }
    let many = throughput::<S>(&clients, 32, effort).await;
    drop(clients);
    let bulk_vec = bulk::<S>(&client, false, effort).await;
    let bulk_bytes = bulk::<S>(&client, true, effort).await;
    Figures {
        latency_p50_us: Some(p50),
        latency_p99_us: Some(p99),
        pipelined_32: Some(pipelined_32),
        pipelined_256: Some(pipelined_256),
        many_connections: Some(many),
        bulk_vec: Some(bulk_vec),
        bulk_bytes: Some(bulk_bytes),
        allocations_per_call: Some(allocations),
        idle_connection_bytes: Some(idle),
    }
}

/// Sequential calls, one in flight: the median and 99th percentile, in microseconds.
async fn latency<S: System>(client: &S::Client, effort: Effort) -> (f64, f64) {
    for i in 0..effort.sequential_calls / 10 {
        S::add(client, i as u64, 1).await;
    }
    let mut samples = Vec::with_capacity(effort.sequential_calls);
    for i in 0..effort.sequential_calls {
        let start = Instant::now();
        let sum = S::add(client, i as u64, 1).await;
        samples.push(start.elapsed());
        assert_eq!(sum, i as u64 + 1);
    }
    samples.sort_unstable();
    let at = |quantile: f64| {
        let index = ((samples.len() as f64 * quantile) as usize).min(samples.len() - 1);
        samples[index].as_secs_f64() * 1e6
    };
    (at(0.50), at(0.99))
}

/// Heap allocations per sequential call, client and server together.
async fn allocations_per_call<S: System>(client: &S::Client, effort: Effort) -> f64 {
    let calls = effort.sequential_calls / 3;
    let before = alloc::allocations();
    for i in 0..calls {
        S::add(client, i as u64, 1).await;
    }
    (alloc::allocations() - before) as f64 / calls as f64
}

/// Calls per second with `callers` concurrent callers on each of `clients`.
async fn throughput<S: System>(clients: &[S::Client], callers: usize, effort: Effort) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + effort.window;
    let mut tasks = Vec::new();
    for client in clients {
        for caller in 0..callers {
            let (client, done) = (client.clone(), Arc::clone(&done));
            tasks.push(tokio::spawn(async move {
                let mut i = caller as u64;
                while Instant::now() < until {
                    S::add(&client, i, 1).await;
                    i += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("a caller");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// MiB/s of 1 MiB payloads echoed, 4 in flight on one connection.
async fn bulk<S: System>(client: &S::Client, as_bytes: bool, effort: Effort) -> f64 {
    const PAYLOAD: usize = 1024 * 1024;
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + effort.window;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (client, done) = (client.clone(), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            let payload = vec![7u8; PAYLOAD];
            // Sent again and again as a user would: a byte buffer as a clone of one buffer
            // (a shared handle), a `Vec<u8>` as a copy.
            let buf = S::Buf::from(payload.clone());
            while Instant::now() < until {
                let back = if as_bytes {
                    S::echo_bytes(&client, buf.clone()).await.as_ref().len()
                } else {
                    S::echo_vec(&client, payload.clone()).await.len()
                };
                assert_eq!(back, PAYLOAD);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("a caller");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Heap bytes per idle connection, both ends, after a call on each has set it up.
async fn idle_connection_bytes<S: System>(addr: std::net::SocketAddr) -> f64 {
    const CONNECTIONS: usize = 200;
    let before = alloc::live_bytes();
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let client = S::connect(addr).await;
        S::add(&client, i as u64, 1).await;
        clients.push(client);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = alloc::live_bytes();
    drop(clients);
    (after - before) as f64 / CONNECTIONS as f64
}
