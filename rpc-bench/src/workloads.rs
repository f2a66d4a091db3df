//! The workloads, each generic over the system it measures, and the figures they produce.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;

use crate::counters::{self, Counters};
use crate::setup::{Deployment, ServerEnd};
use crate::systems::System;

/// How long each throughput figure is measured for, how many calls the sequential ones make,
/// how many items the stream carries, and in how many rounds a full run measures every system.
#[derive(Debug, Clone, Copy)]
pub struct Effort {
    pub window: Duration,
    pub rounds: usize,
    pub sequential_calls: usize,
    pub stream_items: u64,
}

impl Effort {
    /// The effort of `--profile`: one workload for 5 s (or 200,000 sequential calls; streams of
    /// 10,000,000 items for 5 s), for a profiler to watch.
    pub const PROFILE: Effort = Effort {
        window: Duration::from_secs(5),
        rounds: 1,
        sequential_calls: 200_000,
        stream_items: 10_000_000,
    };

    /// The effort of a full run: three rounds, each measuring every system in turn, so that a
    /// spell of noise on the machine falls on one round of a few systems rather than on one
    /// system's every figure; each figure is the median of its rounds.
    pub const FULL: Effort = Effort {
        window: Duration::from_secs(2),
        rounds: 3,
        sequential_calls: 30_000,
        stream_items: 1_000_000,
    };

    /// A short run, to see that everything works.
    pub const QUICK: Effort = Effort {
        window: Duration::from_millis(300),
        rounds: 1,
        sequential_calls: 2_000,
        stream_items: 100_000,
    };
}

/// One system's figures in one setup; `None` where the system does not take part.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Sequential calls: median and 99th-percentile latency, in microseconds.
    pub latency_p50_us: Option<f64>,
    pub latency_p99_us: Option<f64>,
    /// The same, made on the thread that runs the runtime's `block_on`, as a `#[tokio::main]`
    /// function makes them, not on one of its workers.
    pub main_p50_us: Option<f64>,
    pub main_p99_us: Option<f64>,
    /// Calls per second on one connection with 32 and 256 concurrent callers.
    pub pipelined_32: Option<f64>,
    pub pipelined_256: Option<f64>,
    /// The same with 256 callers, of a handler that awaits once before it answers.
    pub awaiting_256: Option<f64>,
    /// Calls per second over 4 connections, 64 callers on each.
    pub four_connections: Option<f64>,
    /// Calls per second over 100 connections, 32 callers on each.
    pub many_connections: Option<f64>,
    /// MiB/s of 1 MiB payloads echoed, 4 in flight, as `Vec<u8>`, as `ByteBuf` and as the
    /// system's shared byte type.
    pub bulk_vec: Option<f64>,
    pub bulk_buf: Option<f64>,
    pub bulk_shared: Option<f64>,
    /// Minor page faults per 1 MiB echo, both ends, as `Vec<u8>` and as `ByteBuf`.
    pub faults_vec: Option<f64>,
    pub faults_buf: Option<f64>,
    /// Items per second of a stream of small items.
    pub stream_items: Option<f64>,
    /// Heap allocations per sequential call, both ends.
    pub allocations_per_call: Option<f64>,
    /// Heap bytes held per idle connection, both ends.
    pub idle_connection_bytes: Option<f64>,
}

impl Figures {
    /// Every figure measured, on one line, for the run's log: each round's figures are printed
    /// as they come, so that a median that stands out can be traced to its round.
    pub fn summary(&self) -> String {
        let figures = [
            ("p50 µs", self.latency_p50_us),
            ("p99 µs", self.latency_p99_us),
            ("from main p50 µs", self.main_p50_us),
            ("from main p99 µs", self.main_p99_us),
            ("32 callers/s", self.pipelined_32),
            ("256 callers/s", self.pipelined_256),
            ("256 awaiting/s", self.awaiting_256),
            ("4x64/s", self.four_connections),
            ("100x32/s", self.many_connections),
            ("vec MiB/s", self.bulk_vec),
            ("buf MiB/s", self.bulk_buf),
            ("shared MiB/s", self.bulk_shared),
            ("stream items/s", self.stream_items),
            ("allocations", self.allocations_per_call),
            ("idle bytes", self.idle_connection_bytes),
        ];
        let measured: Vec<String> = figures
            .iter()
            .filter_map(|(name, figure)| figure.map(|value| format!("{name} {value:.1}")))
            .collect();
        measured.join(", ")
    }

    /// Each figure's median over `rounds` (the lower middle one of an even count).
    pub fn median(rounds: &[Figures]) -> Figures {
        let median = |figure| median_of(rounds, figure);
        Figures {
            latency_p50_us: median(|f| f.latency_p50_us),
            latency_p99_us: median(|f| f.latency_p99_us),
            main_p50_us: median(|f| f.main_p50_us),
            main_p99_us: median(|f| f.main_p99_us),
            pipelined_32: median(|f| f.pipelined_32),
            pipelined_256: median(|f| f.pipelined_256),
            awaiting_256: median(|f| f.awaiting_256),
            four_connections: median(|f| f.four_connections),
            many_connections: median(|f| f.many_connections),
            bulk_vec: median(|f| f.bulk_vec),
            bulk_buf: median(|f| f.bulk_buf),
            bulk_shared: median(|f| f.bulk_shared),
            faults_vec: median(|f| f.faults_vec),
            faults_buf: median(|f| f.faults_buf),
            stream_items: median(|f| f.stream_items),
            allocations_per_call: median(|f| f.allocations_per_call),
            idle_connection_bytes: median(|f| f.idle_connection_bytes),
        }
    }
}

/// The median of one figure over `rounds` that measured it (the lower middle one of an even
/// count); `None` if none did.
fn median_of<T>(rounds: &[T], figure: fn(&T) -> Option<f64>) -> Option<f64> {
    let mut values: Vec<f64> = rounds.iter().filter_map(figure).collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len().saturating_sub(1) / 2).copied()
}

/// A share of the workloads that a full run measures for every system in turn before it moves
/// on to the next, so that a row's figures are measured within seconds of each other (see
/// [`crate::machine`] for why). In [`Part::ALL`]'s order, none disturbs the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Heap per idle connection: first, while nothing else has run and left buffers to be
    /// freed in their own time.
    Idle,
    /// Sequential calls from a task, then allocations per call on the same connection.
    Sequential,
    /// Sequential calls on the thread that runs the runtime's `block_on`.
    FromMain,
    /// 32 and 256 callers on one connection, and 256 callers of a handler that awaits.
    Pipelined,
    /// 4 connections with 64 callers each.
    FourConnections,
    /// 100 connections with 32 callers each.
    ManyConnections,
    /// 1 MiB echoes of one byte type.
    Echoes(Bytes),
    /// A stream of small items.
    Stream,
}

impl Part {
    /// Every part, in the order a round measures them.
    pub const ALL: [Part; 10] = [
        Part::Idle,
        Part::Sequential,
        Part::FromMain,
        Part::Pipelined,
        Part::FourConnections,
        Part::ManyConnections,
        Part::Echoes(Bytes::Vec),
        Part::Echoes(Bytes::Buf),
        Part::Echoes(Bytes::Shared),
        Part::Stream,
    ];

    /// The part's name, for the run's log.
    pub fn name(self) -> &'static str {
        match self {
            Part::Idle => "idle connections",
            Part::Sequential => "sequential calls",
            Part::FromMain => "sequential calls from main",
            Part::Pipelined => "one connection's callers",
            Part::FourConnections => "4 connections",
            Part::ManyConnections => "100 connections",
            Part::Echoes(Bytes::Vec) => "1 MiB echoes of `Vec<u8>`",
            Part::Echoes(Bytes::Buf) => "1 MiB echoes of `ByteBuf`",
            Part::Echoes(Bytes::Shared) => "1 MiB echoes of the shared byte type",
            Part::Stream => "a stream",
        }
    }
}

/// Measures `part` of `S`'s workloads on `deployment`, into `figures`: each part on a
/// connection (or several) of its own, as a task of the clients' runtime, but for the calls
/// from main, made on the thread that runs its `block_on`.
pub fn measure_part<S: System>(
    deployment: &Deployment,
    part: Part,
    effort: Effort,
    figures: Figures,
) -> Figures {
    let server = deployment.server.clone();
    let addr = server.addr;
    match part {
        Part::Idle => deployment.run(async move {
            Figures {
                idle_connection_bytes: idle_connection_bytes::<S>(&server).await,
                ..figures
            }
        }),
        Part::Sequential => deployment.run(async move {
            let mut client = S::connect(addr).await;
            let (p50, p99) = latency::<S>(&mut client, effort).await;
            Figures {
                latency_p50_us: Some(p50),
                latency_p99_us: Some(p99),
                allocations_per_call: allocations_per_call::<S>(&server, &mut client, effort).await,
                ..figures
            }
        }),
        Part::FromMain => {
            let (p50, p99) = deployment.run_here(sequential_from_here::<S>(addr, effort));
            Figures {
                main_p50_us: Some(p50),
                main_p99_us: Some(p99),
                ..figures
            }
        }
        Part::Pipelined => deployment.run(async move {
            let client = S::connect(addr).await;
            let one = std::slice::from_ref(&client);
            Figures {
                pipelined_32: throughput::<S>(one, 32, effort).await,
                pipelined_256: throughput::<S>(one, 256, effort).await,
                awaiting_256: counted_throughput::<S>(one, 256, Call::AddAwaiting, effort)
                    .await
                    .map(|rate| rate.per_second),
                ..figures
            }
        }),
        Part::FourConnections => deployment.run(async move {
            let four = connections::<S>(addr, 4).await;
            Figures {
                four_connections: throughput::<S>(&four, 64, effort).await,
                ..figures
            }
        }),
        Part::ManyConnections => deployment.run(async move {
            let many = connections::<S>(addr, 100).await;
            Figures {
                many_connections: throughput::<S>(&many, 32, effort).await,
                ..figures
            }
        }),
        Part::Echoes(bytes) => deployment.run(async move {
            let client = S::connect(addr).await;
            let echoes = bulk::<S>(&server, &client, bytes, ECHO_BYTES, effort).await;
            let rate = Some(echoes.mib_per_s);
            match bytes {
                Bytes::Vec => Figures {
                    bulk_vec: rate,
                    faults_vec: echoes.faults_per_call,
                    ..figures
                },
                Bytes::Buf => Figures {
                    bulk_buf: rate,
                    faults_buf: echoes.faults_per_call,
                    ..figures
                },
                Bytes::Shared => Figures {
                    bulk_shared: rate,
                    ..figures
                },
            }
        }),
        Part::Stream => deployment.run(async move {
            let mut client = S::connect(addr).await;
            Figures {
                stream_items: stream::<S>(&mut client, effort).await,
                ..figures
            }
        }),
    }
}

/// Sequential calls' median and 99th-percentile latency, in microseconds, on a connection of
/// their own, made wherever this future runs: on the thread that runs the runtime's `block_on`,
/// when run there (`Deployment::run_here`).
pub async fn sequential_from_here<S: System>(
    addr: std::net::SocketAddr,
    effort: Effort,
) -> (f64, f64) {
    let mut client = S::connect(addr).await;
    latency::<S>(&mut client, effort).await
}

/// One system's figures over TLS: the workloads where encryption costs most.
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsFigures {
    /// Sequential calls: median latency, in microseconds.
    pub latency_p50_us: Option<f64>,
    /// Sequential calls: 99th percentile latency, in microseconds.
    pub latency_p99_us: Option<f64>,
    /// Calls per second on one connection with 256 concurrent callers.
    pub pipelined_256: Option<f64>,
    /// MiB/s of 1 MiB `Vec<u8>` payloads echoed, 4 in flight.
    pub bulk_vec: Option<f64>,
}

/// The figures of a system whose connections are encrypted.
pub async fn over_tls<S: System>(server: Arc<ServerEnd>, effort: Effort) -> TlsFigures {
    let mut client = S::connect(server.addr).await;
    let (p50, p99) = latency::<S>(&mut client, effort).await;
    let pipelined_256 = throughput::<S>(std::slice::from_ref(&client), 256, effort).await;
    let bulk_vec = bulk::<S>(&server, &client, Bytes::Vec, ECHO_BYTES, effort).await;
    TlsFigures {
        latency_p50_us: Some(p50),
        latency_p99_us: Some(p99),
        pipelined_256,
        bulk_vec: Some(bulk_vec.mib_per_s),
    }
}

/// rpc-core's figures where tracing costs most: one call at a time, and many on one connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracedFigures {
    /// Sequential calls: median latency, in microseconds.
    pub latency_p50_us: Option<f64>,
    /// Calls per second on one connection with 256 concurrent callers.
    pub pipelined_256: Option<f64>,
}

impl TracedFigures {
    /// Each figure's median over `rounds` (the lower middle one of an even count).
    pub fn median(rounds: &[TracedFigures]) -> TracedFigures {
        let median = |figure| median_of(rounds, figure);
        TracedFigures {
            latency_p50_us: median(|f| f.latency_p50_us),
            pipelined_256: median(|f| f.pipelined_256),
        }
    }

    /// The figures on one line, for the process that measured them to tell the one that
    /// started it: a figure not measured as `-`.
    pub fn to_line(self) -> String {
        let field = |figure: Option<f64>| figure.map_or_else(|| "-".to_owned(), |f| f.to_string());
        format!(
            "{} {}",
            field(self.latency_p50_us),
            field(self.pipelined_256)
        )
    }

    /// Reads what [`TracedFigures::to_line`] wrote.
    pub fn from_line(line: &str) -> Option<TracedFigures> {
        let field = |text: &str| match text {
            "-" => Some(None),
            number => number.parse().ok().map(Some),
        };
        let mut fields = line.split_whitespace();
        Some(TracedFigures {
            latency_p50_us: field(fields.next()?)?,
            pipelined_256: field(fields.next()?)?,
        })
    }
}

/// The figures of a system where tracing costs most (measured with a subscriber installed in
/// both processes and without one, each time in processes of their own: `--traced-figures`).
pub async fn traced<S: System>(server: Arc<ServerEnd>, effort: Effort) -> TracedFigures {
    let mut client = S::connect(server.addr).await;
    let (p50, _) = latency::<S>(&mut client, effort).await;
    let pipelined_256 = throughput::<S>(std::slice::from_ref(&client), 256, effort).await;
    TracedFigures {
        latency_p50_us: Some(p50),
        pipelined_256,
    }
}

/// What busy polling buys and costs: sequential calls and calls on one connection, with the
/// CPU time both processes spent on each call.
#[derive(Debug, Clone, Copy, Default)]
pub struct BusyFigures {
    /// Sequential calls: median latency, in microseconds.
    pub latency_p50_us: Option<f64>,
    /// Sequential calls: 99th percentile, in microseconds.
    pub latency_p99_us: Option<f64>,
    /// Sequential calls: CPU time of both processes per call, in microseconds.
    pub latency_cpu_us: Option<f64>,
    /// Calls per second on one connection with 32 concurrent callers.
    pub pipelined_32: Option<f64>,
    /// The same calls: CPU time of both processes per call, in microseconds.
    pub pipelined_32_cpu_us: Option<f64>,
    /// Calls per second on one connection with 256 concurrent callers.
    pub pipelined_256: Option<f64>,
    /// Sequential calls [`SPACED_BY`] apart: median latency, in microseconds.
    pub spaced_p50_us: Option<f64>,
    /// The same calls: CPU time of both processes per call, in microseconds.
    pub spaced_cpu_us: Option<f64>,
}

/// How far apart [`spaced`] starts its calls: further than a busy poller's window, as a
/// client's calls are that wait on something else between them.
pub const SPACED_BY: Duration = Duration::from_millis(1);

/// The figures of [`BusyFigures`], for a system deployed across two processes.
pub async fn busy<S: System>(server: Arc<ServerEnd>, effort: Effort) -> BusyFigures {
    let mut client = S::connect(server.addr).await;
    let before = server.counters();
    let (p50, p99) = latency::<S>(&mut client, effort).await;
    let latency_cpu_us = cpu_us_per_call(&server, before, latency_calls(effort) as u64);
    let clients = std::slice::from_ref(&client);
    let before = server.counters();
    let rate = counted_throughput::<S>(clients, 32, Call::Add, effort).await;
    let pipelined_32_cpu_us = rate.and_then(|rate| cpu_us_per_call(&server, before, rate.count));
    let pipelined_256 = throughput::<S>(clients, 256, effort).await;
    let before = server.counters();
    let (spaced_p50_us, calls) = spaced::<S>(&mut client, effort).await;
    BusyFigures {
        latency_p50_us: Some(p50),
        latency_p99_us: Some(p99),
        latency_cpu_us,
        pipelined_32: rate.map(|rate| rate.per_second),
        pipelined_32_cpu_us,
        pipelined_256,
        spaced_p50_us: Some(spaced_p50_us),
        spaced_cpu_us: cpu_us_per_call(&server, before, calls),
    }
}

/// Sequential calls started [`SPACED_BY`] apart for the effort's window: their median latency,
/// in microseconds, and how many were made.
pub async fn spaced<S: System>(client: &mut S::Client, effort: Effort) -> (f64, u64) {
    let mut tick = tokio::time::interval(SPACED_BY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Instant::now() + effort.window;
    let mut samples = Vec::new();
    while Instant::now() < end {
        tick.tick().await;
        let start = Instant::now();
        let sum = S::add(client, samples.len() as u64, 1).await;
        samples.push(start.elapsed());
        assert_eq!(sum, samples.len() as u64);
    }
    let calls = samples.len() as u64;
    (quantiles(samples).0, calls)
}

/// The CPU time both processes spent since `before`, per call of `calls`, in microseconds.
fn cpu_us_per_call(server: &ServerEnd, before: Option<Counters>, calls: u64) -> Option<f64> {
    let spent = server.counters()? - before?;
    let seconds = spent.cpu_ticks as f64 / counters::TICKS_PER_SECOND;
    Some(seconds * 1e6 / calls.max(1) as f64)
}

/// `count` connections to `addr`.
pub async fn connections<S: System>(addr: std::net::SocketAddr, count: usize) -> Vec<S::Client> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        clients.push(S::connect(addr).await);
    }
    clients
}

/// How many calls [`latency`] makes: a tenth more than it times, to warm up.
pub fn latency_calls(effort: Effort) -> usize {
    effort.sequential_calls + effort.sequential_calls / 10
}

/// Sequential calls, one in flight: the median and 99th percentile, in microseconds.
pub async fn latency<S: System>(client: &mut S::Client, effort: Effort) -> (f64, f64) {
    for i in 0..latency_calls(effort) - effort.sequential_calls {
        S::add(client, i as u64, 1).await;
    }
    let mut samples = Vec::with_capacity(effort.sequential_calls);
    for i in 0..effort.sequential_calls {
        let start = Instant::now();
        let sum = S::add(client, i as u64, 1).await;
        samples.push(start.elapsed());
        assert_eq!(sum, i as u64 + 1);
    }
    quantiles(samples)
}

/// The median and 99th percentile of `samples` (at least one), in microseconds.
fn quantiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort_unstable();
    let at = |quantile: f64| {
        let index = ((samples.len() as f64 * quantile) as usize).min(samples.len() - 1);
        samples[index].as_secs_f64() * 1e6
    };
    (at(0.50), at(0.99))
}

/// Heap allocations per sequential call, both ends; `None` when the server's process cannot
/// be counted (it runs on another machine).
pub async fn allocations_per_call<S: System>(
    server: &ServerEnd,
    client: &mut S::Client,
    effort: Effort,
) -> Option<f64> {
    let calls = effort.sequential_calls / 3;
    let before = server.counters()?;
    for i in 0..calls {
        S::add(client, i as u64, 1).await;
    }
    let spent = server.counters()? - before;
    Some(spent.allocations as f64 / calls as f64)
}

/// How many calls or items a workload got through, and how fast.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    pub count: u64,
}

/// Calls per second with `callers` concurrent callers on each of `clients`; `None` for a
/// system that makes one call at a time.
pub async fn throughput<S: System>(
    clients: &[S::Client],
    callers: usize,
    effort: Effort,
) -> Option<f64> {
    let rate = counted_throughput::<S>(clients, callers, Call::Add, effort).await?;
    Some(rate.per_second)
}

/// Which method the callers of [`counted_throughput`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `add`, whose handler answers on its first poll.
    Add,
    /// `add_awaiting`, whose handler awaits once first ([`crate::systems::handler_awaits`]).
    AddAwaiting,
}

/// [`throughput`] of `call`, with the number of calls made.
pub async fn counted_throughput<S: System>(
    clients: &[S::Client],
    callers: usize,
    call: Call,
    effort: Effort,
) -> Option<Rate> {
    let start = Instant::now();
    // The callers stop when one flag says so, set once when the window ends: a clock reading
    // per call would be a cost of the benchmark's, not the system's.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client in clients {
        for caller in 0..callers {
            let mut client = S::share(client)?;
            let stop = Arc::clone(&stop);
            // Each caller counts its own calls: one counter shared by thousands of callers is
            // a cache line every core fights over, a cost of the benchmark's, not the system's.
            tasks.push(tokio::spawn(async move {
                let mut done = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let a = caller as u64 + done;
                    match call {
                        Call::Add => S::add(&mut client, a, 1).await,
                        Call::AddAwaiting => S::add_awaiting(&mut client, a, 1).await,
                    };
                    done += 1;
                }
                done
            }));
        }
    }
    tokio::time::sleep_until((start + effort.window).into()).await;
    stop.store(true, Ordering::Relaxed);
    let mut done = 0;
    for task in tasks {
        done += task.await.expect("a caller");
    }
    Some(Rate {
        per_second: done as f64 / start.elapsed().as_secs_f64(),
        count: done,
    })
}

/// The byte type an echo sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bytes {
    Vec,
    Buf,
    Shared,
}

/// What a bulk echo measured; the page faults, both ends, only where the server's process can
/// be counted.
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    pub mib_per_s: f64,
    pub faults_per_call: Option<f64>,
}

/// A mebibyte, as a rate's unit.
const MIB: f64 = (1024 * 1024) as f64;

/// The size of the echoes the full run measures.
pub const ECHO_BYTES: usize = 1024 * 1024;

/// Payloads of `size` bytes echoed ([`ECHO_BYTES`] in the full run), 4 in flight on one
/// connection. A system that makes one call at a time (the raw floor) makes them on 4
/// connections of its own: what the machine can move with 4 echoes in flight and no framework,
/// the ceiling for every system's figure.
pub async fn bulk<S: System>(
    server: &ServerEnd,
    client: &S::Client,
    bytes: Bytes,
    size: usize,
    effort: Effort,
) -> Bulk {
    let done = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::with_capacity(4);
    for _ in 0..4 {
        callers.push(match S::share(client) {
            Some(shared) => shared,
            None => S::connect(server.addr).await,
        });
    }
    // A first echo on each, outside the count: buffers sized for the first 1 MiB frame are set
    // up once per connection, not per call.
    for caller in &mut callers {
        S::echo_vec(caller, vec![7u8; size]).await;
    }
    let before = server.counters();
    let start = Instant::now();
    let until = start + effort.window;
    let mut tasks = Vec::new();
    for mut client in callers {
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            let payload = vec![7u8; size];
            // Sent again and again as a user would: a `Vec<u8>` or a `ByteBuf` as a copy, the
            // shared type as a clone of one buffer (a shared handle).
            let shared = S::Shared::from(payload.clone());
            while Instant::now() < until {
                let back = match bytes {
                    Bytes::Vec => S::echo_vec(&mut client, payload.clone()).await.len(),
                    Bytes::Buf => {
                        let buf = ByteBuf::from(payload.clone());
                        S::echo_buf(&mut client, buf).await.len()
                    }
                    Bytes::Shared => {
                        let back = S::echo_shared(&mut client, shared.clone()).await;
                        back.as_ref().len()
                    }
                };
                assert_eq!(back, size);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("a caller");
    }
    let calls = done.load(Ordering::Relaxed);
    let faults = before.zip(server.counters()).map(|(before, after)| {
        let spent = after - before;
        spent.minor_faults as f64 / calls.max(1) as f64
    });
    Bulk {
        mib_per_s: (calls * size as u64) as f64 / MIB / start.elapsed().as_secs_f64(),
        faults_per_call: faults,
    }
}

/// Items per second of streams of `effort.stream_items` numbers, one after another for the
/// effort's window (at least one): a single stream of a million items lasts some 50 ms, too
/// short to measure alone; `None` for a system without streams.
pub async fn stream<S: System>(client: &mut S::Client, effort: Effort) -> Option<f64> {
    let rate = counted_stream::<S>(client, effort).await?;
    Some(rate.per_second)
}

/// MiB/s of streams of chunks of `size` bytes, 256 MiB a stream, one after another for the
/// effort's window (at least one); `None` for a system without such streams.
pub async fn chunk_stream<S: System>(
    client: &mut S::Client,
    size: usize,
    effort: Effort,
) -> Option<f64> {
    let count = ((256 << 20) / size).max(1) as u64;
    let start = Instant::now();
    let mut received = 0;
    loop {
        let bytes = S::chunks(client, size as u64, count).await?;
        assert_eq!(bytes, count * size as u64, "every chunk whole");
        received += bytes;
        if start.elapsed() >= effort.window {
            return Some(received as f64 / MIB / start.elapsed().as_secs_f64());
        }
    }
}

/// [`stream`], with the number of items received.
pub async fn counted_stream<S: System>(client: &mut S::Client, effort: Effort) -> Option<Rate> {
    let start = Instant::now();
    let mut received = 0;
    loop {
        let items = S::count(client, effort.stream_items).await?;
        assert_eq!(items, effort.stream_items);
        received += items;
        if start.elapsed() >= effort.window {
            return Some(Rate {
                per_second: received as f64 / start.elapsed().as_secs_f64(),
                count: received,
            });
        }
    }
}

/// Heap bytes per idle connection, both ends, after a call on each has set it up; `None` when
/// the server's process cannot be counted (it runs on another machine).
pub async fn idle_connection_bytes<S: System>(server: &ServerEnd) -> Option<f64> {
    const CONNECTIONS: usize = 200;
    let before = server.counters()?;
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let mut client = S::connect(server.addr).await;
        S::add(&mut client, i as u64, 1).await;
        clients.push(client);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server.counters()?;
    drop(clients);
    // The next system's idle connections are counted next, in the same processes: their
    // heap first settles, closing these, until two readings 50 ms apart agree (for up to 2 s).
    let mut last = after.live_bytes;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = server.counters()?.live_bytes;
        if now == last {
            break;
        }
        last = now;
    }
    Some((after - before).live_bytes as f64 / CONNECTIONS as f64)
}

#[cfg(test)]
mod tests {
    use super::{Figures, TracedFigures};

    #[test]
    fn a_rounds_summary_names_each_figure_measured_and_no_other() {
        let figures = Figures {
            latency_p50_us: Some(9.94),
            pipelined_256: Some(1_235_804.4),
            ..Figures::default()
        };
        assert_eq!(figures.summary(), "p50 µs 9.9, 256 callers/s 1235804.4");
        assert_eq!(Figures::default().summary(), "");
    }

    #[test]
    fn traced_figures_cross_the_pipe_whole() {
        let measured = TracedFigures {
            latency_p50_us: Some(14.001),
            pipelined_256: Some(1_198_140.523_478_614_9),
        };
        let read = TracedFigures::from_line(&measured.to_line()).expect("figures");
        assert_eq!(read.latency_p50_us, measured.latency_p50_us);
        assert_eq!(read.pipelined_256, measured.pipelined_256);
        let unmeasured = TracedFigures {
            latency_p50_us: Some(9.5),
            pipelined_256: None,
        };
        let read = TracedFigures::from_line(&unmeasured.to_line()).expect("figures");
        assert_eq!(read.latency_p50_us, Some(9.5));
        assert_eq!(read.pipelined_256, None);
        assert!(
            TracedFigures::from_line("9.5").is_none(),
            "a figure missing"
        );
        assert!(
            TracedFigures::from_line("9.5 fast").is_none(),
            "not a number"
        );
    }

    #[test]
    fn the_median_of_traced_rounds_is_each_figures_middle() {
        let round = |p50, rate| TracedFigures {
            latency_p50_us: Some(p50),
            pipelined_256: rate,
        };
        let rounds = [
            round(14.0, Some(1.2e6)),
            round(10.0, None),
            round(12.0, Some(0.8e6)),
        ];
        let median = TracedFigures::median(&rounds);
        assert_eq!(median.latency_p50_us, Some(12.0));
        assert_eq!(median.pipelined_256, Some(0.8e6), "the lower of two");
    }
}
