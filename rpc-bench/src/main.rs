//! Benchmarks of rpc-core against tarpc, tonic and a raw postcard-over-TCP floor, over
//! loopback TCP, on one machine and in one run, in three setups: the server in a child process
//! with each process on the default multi-thread runtime (the headline: what users run), both
//! in one process on one shared runtime, and both in one process on a single-thread runtime
//! each.
//!
//! ```text
//! cargo run --release -p rpc-bench                           # every setup; print the tables
//! cargo run --release -p rpc-bench -- --write                # also write BENCHMARKS.md and its chart
//! cargo run --release -p rpc-bench -- --setup cross-process  # one setup: cross-process, shared, isolated
//! cargo run --release -p rpc-bench -- --quick                # a short run, to see that it works
//! cargo run --release -p rpc-bench -- --tls                  # only rpc-core and tonic over TLS
//! cargo run --release -p rpc-bench -- --busy-poll            # only rpc-core, busy polling on or off
//! cargo run --release -p rpc-bench -- --profile 256 --tracing  # with a tracing subscriber
//! cargo run --release -p rpc-bench -- --profile 256 --tracing fmt  # with tracing's fmt layer
//! cargo run --release -p rpc-bench --features metrics -- --profile 256 --metrics  # recorded
//! cargo run --release -p rpc-bench -- --profile WORKLOAD [SYSTEM] [--setup S]  # for perf
//! ```
//!
//! Across two machines, the servers on one and the clients on the other:
//!
//! ```text
//! cargo run --release -p rpc-bench -- --serve-all 0.0.0.0:7700  # on the server's machine
//! cargo run --release -p rpc-bench -- --remote HOST:7700         # on the client's machine
//! ```
//!
//! `--serve-all` serves rpc-core, tarpc, tonic and the raw floor on the port given and the
//! three after it, to anyone who reaches them and without TLS (serve on a private network);
//! `--remote` measures them from here (with `--quick` or `--profile` too), leaving out what
//! needs both processes' counters (allocations, heap, page faults).
//!
//! `WORKLOAD` is `latency`, `latency-main` (the same calls made on the thread that runs the
//! runtime's `block_on`, as a `#[tokio::main]` function makes them, not on one of its workers),
//! `spaced` (sequential calls 1 ms apart), `32` or `256` (callers on one connection),
//! `256-awaiting` (256 callers of a handler that awaits once), `4x64` (4 connections with 64
//! callers each), `100x32` (100 connections with 32 each), `vec`, `buf` or `shared` (the 1 MiB
//! echoes; `vec:BYTES` and so on for echoes of another size), `stream`, `chunks` (a stream of
//! 64 KiB chunks, or `chunks:BYTES`; rpc-core alone), `idle` (heap per idle connection, for a heap profiler), `allocs` (allocations
//! per call), or `local` (sequential calls through an in-process client, with no server); `SYSTEM`
//! is `rpc-core` (the default), `tarpc`, `tonic`, `raw`, `rpc-core-tls`, `tonic-tls`,
//! `rpc-core-no-busy-poll` (busy polling off at both ends), `rpc-core-busy-poll-server` or
//! `rpc-core-busy-poll-client` (on at that end alone), `rpc-core-4-connections` (one client over
//! four connections to the server, through `ClientBuilder::balance`), `rpc-core-token` (a bearer
//! token in every call's metadata, checked by the server's interceptor), or `rpc-core-raw-client`
//! (rpc-core's server, called by a client written by hand as the floor's is: set beside the floor
//! and rpc-core, its sequential figures split rpc-core's cost between its two ends).

mod alloc;
mod counters;
mod machine;
mod report;
mod setup;
mod systems;
mod workloads;

use std::future::Future;
use std::sync::Arc;

use setup::{Deployment, ServerEnd, Setup};
use systems::System;
use systems::raw::Raw;
use systems::rpc::{
    RpcCore, RpcCoreBusyClient, RpcCoreBusyServer, RpcCoreFourConnections, RpcCoreNoBusyPoll,
    RpcCoreTls, RpcCoreToken,
};
use systems::tarpc::Tarpc;
use systems::tonic::{Tonic, TonicTls};
use systems::wire::RpcCoreRawClient;
use workloads::{Bytes, Call, Effort, Part};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

/// How to run the benchmark, for `--help` and a flag it does not know.
const USAGE: &str = "\
usage: rpc-bench [--write] [--setup cross-process|shared|isolated] [--quick] [--tls|--busy-poll]
       rpc-bench --profile WORKLOAD [SYSTEM] [--setup S] [--tracing [registry|fmt]] [--metrics]
       rpc-bench --serve-all ADDR           (servers for another machine's --remote)
       rpc-bench --remote HOST:PORT [--quick] [--profile WORKLOAD [SYSTEM]]
WORKLOAD: latency, latency-main, spaced, 32, 256, 256-awaiting, 4x64, 100x32, vec[:BYTES],
          buf[:BYTES], shared[:BYTES], stream, chunks[:BYTES], idle, allocs or local
SYSTEM: rpc-core (the default), tarpc, tonic, raw, rpc-core-tls, tonic-tls, rpc-core-no-busy-poll,
        rpc-core-busy-poll-server, rpc-core-busy-poll-client, rpc-core-4-connections,
        rpc-core-token or rpc-core-raw-client";

/// The flags `main` reads; any other is refused rather than ignored, so that a mistyped flag
/// does not start a run of several minutes.
const FLAGS: &[&str] = &[
    "--serve",
    "--serve-all",
    "--remote",
    "--setup",
    "--tracing",
    "--metrics",
    "--traced-figures",
    "--profile",
    "--quick",
    "--tls",
    "--busy-poll",
    "--write",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return;
    }
    if let Some(unknown) = args
        .iter()
        .find(|a| a.starts_with('-') && !FLAGS.contains(&a.as_str()))
    {
        eprintln!("rpc-bench: no flag {unknown}\n{USAGE}");
        std::process::exit(2);
    }
    let flag = |name: &str| args.iter().position(|a| a == name);
    if let Some(at) = flag("--serve") {
        let system = args.get(at + 1).map_or("", String::as_str);
        if let Err(error) = setup::serve_child(system) {
            eprintln!("rpc-bench --serve: {error}");
            std::process::exit(2);
        }
        return;
    }
    if let Some(at) = flag("--serve-all") {
        let served = args.get(at + 1).map_or("", String::as_str);
        let result = resolve(served).and_then(setup::serve_all);
        if let Err(error) = result {
            eprintln!("rpc-bench --serve-all: {error}");
            std::process::exit(2);
        }
        return;
    }
    // The run's certificates, if it makes them, go with it.
    let _certs = systems::certs::RemovedAtExit;
    if let Some(at) = flag("--remote") {
        let servers = args.get(at + 1).map_or("", String::as_str);
        let only_here = [
            "--setup",
            "--write",
            "--tls",
            "--busy-poll",
            "--tracing",
            "--metrics",
        ];
        if let Some(other) = only_here.iter().find(|name| flag(name).is_some()) {
            eprintln!("rpc-bench: {other} measures on this machine alone, not with --remote");
            std::process::exit(2);
        }
        match resolve(servers) {
            Ok(first) => setup::use_remote_servers(first),
            Err(error) => {
                eprintln!("rpc-bench --remote: {error}");
                std::process::exit(2);
            }
        }
    }
    let setups: Vec<Setup> = match flag("--setup") {
        None if flag("--remote").is_some() => vec![Setup::Remote],
        None => Setup::ALL.to_vec(),
        Some(at) => {
            let name = args.get(at + 1).map_or("", String::as_str);
            match Setup::from_name(name) {
                Some(setup) => vec![setup],
                None => {
                    eprintln!("no setup called {name}: cross-process, shared or isolated");
                    std::process::exit(2);
                }
            }
        }
    };
    if let Some(at) = flag("--tracing") {
        if flag("--profile").is_none() && flag("--traced-figures").is_none() {
            eprintln!(
                "rpc-bench: --tracing goes with --profile; a full run measures tracing's cost \
                 in a section of its own"
            );
            std::process::exit(2);
        }
        // A word after the flag names the subscriber; a mistyped one is refused, not measured
        // as the default.
        let subscriber = match args.get(at + 1).filter(|word| !word.starts_with('-')) {
            None => setup::Subscriber::Registry,
            Some(name) => setup::Subscriber::from_name(name).unwrap_or_else(|| {
                eprintln!("rpc-bench: no subscriber called {name}: registry (the default) or fmt");
                std::process::exit(2);
            }),
        };
        setup::trace_everything(subscriber);
    }
    if flag("--metrics").is_some() {
        if flag("--profile").is_none() {
            eprintln!("rpc-bench: --metrics goes with --profile");
            std::process::exit(2);
        }
        #[cfg(feature = "metrics")]
        setup::record_metrics();
        #[cfg(not(feature = "metrics"))]
        {
            eprintln!(
                "rpc-bench: --metrics needs a build with rpc-core's metrics: --features metrics"
            );
            std::process::exit(2);
        }
    }
    if flag("--traced-figures").is_some() {
        // A client of the tracing section's (`traced_rounds`), in a process of its own.
        let effort = if flag("--quick").is_some() {
            Effort::QUICK
        } else {
            Effort::FULL
        };
        let what = match flag("--tracing") {
            Some(_) => " with tracing on",
            None => " with tracing off",
        };
        let figures = across_processes::<RpcCore, _>(what, |server| {
            workloads::traced::<RpcCore>(server, effort)
        });
        println!("{}", figures.to_line());
        return;
    }
    if let Some(at) = flag("--profile") {
        let workload = args.get(at + 1).cloned().unwrap_or_default();
        if workload == "local" {
            let (p50, p99) = measure_local(Effort::PROFILE);
            println!("rpc-core in process: sequential p50 {p50:.2} µs, p99 {p99:.2} µs");
            return;
        }
        let system = args.get(at + 2).filter(|a| !a.starts_with("--"));
        let system = system.map_or("rpc-core", String::as_str);
        if setups[0] == Setup::Remote
            && !setup::SERVED_FOR_REMOTE.contains(&setup::served_as(system))
        {
            eprintln!(
                "rpc-bench: --remote measures rpc-core, tarpc, tonic, raw or \
                 rpc-core-raw-client, not {system}"
            );
            std::process::exit(2);
        }
        let report = match system {
            RpcCore::NAME => profile::<RpcCore>(setups[0], workload),
            Tarpc::NAME => profile::<Tarpc>(setups[0], workload),
            Tonic::NAME => profile::<Tonic>(setups[0], workload),
            Raw::NAME => profile::<Raw>(setups[0], workload),
            RpcCoreTls::NAME => profile::<RpcCoreTls>(setups[0], workload),
            TonicTls::NAME => profile::<TonicTls>(setups[0], workload),
            RpcCoreNoBusyPoll::NAME => profile::<RpcCoreNoBusyPoll>(setups[0], workload),
            RpcCoreBusyServer::NAME => profile::<RpcCoreBusyServer>(setups[0], workload),
            RpcCoreBusyClient::NAME => profile::<RpcCoreBusyClient>(setups[0], workload),
            RpcCoreFourConnections::NAME => profile::<RpcCoreFourConnections>(setups[0], workload),
            RpcCoreToken::NAME => profile::<RpcCoreToken>(setups[0], workload),
            RpcCoreRawClient::NAME => profile::<RpcCoreRawClient>(setups[0], workload),
            other => format!(
                "no system called {other}: rpc-core, tarpc, tonic, raw, rpc-core-tls, tonic-tls, \
                 rpc-core-no-busy-poll, rpc-core-busy-poll-server, rpc-core-busy-poll-client, \
                 rpc-core-4-connections, rpc-core-token or rpc-core-raw-client"
            ),
        };
        println!("{report}");
        return;
    }
    let effort = if flag("--quick").is_some() {
        Effort::QUICK
    } else {
        Effort::FULL
    };
    let tls_only = flag("--tls").is_some();
    let busy_only = flag("--busy-poll").is_some();
    if flag("--write").is_some() && (tls_only || busy_only) {
        eprintln!("rpc-bench: --write rewrites every table, so it needs the full run");
        std::process::exit(2);
    }
    let mut runs: Vec<report::Results> = Vec::new();
    for setup in setups.iter().copied().filter(|_| !tls_only && !busy_only) {
        let mut rounds = Vec::with_capacity(effort.rounds);
        // Judged from its first turn by the fastest rate the setups before it probed.
        let mut probes = probes_after(&runs);
        for round in 1..=effort.rounds {
            eprintln!("round {round} of {} ({})", effort.rounds, setup.name());
            let [raw, tarpc, tonic, rpc] = measure_round(setup, effort, round, &mut probes);
            rounds.push(report::Systems {
                rpc,
                tarpc,
                tonic,
                raw,
            });
        }
        let results = report::Results {
            setup,
            figures: report::Systems::median(&rounds),
            rounds,
            probes,
        };
        println!(
            "\n## {}\n\n{}\n{}",
            setup.name(),
            report::table(&results),
            report::probed(&results.probes).trim_end()
        );
        runs.push(results);
    }
    // The sections below measure one system or configuration whole after another: each in the
    // machine's fast state when it can be, judged by the fastest rate the setups probed.
    let mut gate = probes_after(&runs);
    // Over TLS only across processes, where users run it: sequential calls, and the workloads
    // where encryption costs most.
    let tls = (setups.contains(&Setup::CrossProcess) && !busy_only).then(|| {
        let results = report::TlsResults {
            tonic: across_processes_in_fast_state::<TonicTls, _>(&mut gate, |server| {
                workloads::over_tls::<TonicTls>(server, effort)
            }),
            rpc: across_processes_in_fast_state::<RpcCoreTls, _>(&mut gate, |server| {
                workloads::over_tls::<RpcCoreTls>(server, effort)
            }),
        };
        println!(
            "\n## over TLS, cross-process\n\n{}",
            report::tls_table(&results)
        );
        results
    });
    // Across processes only, where a sleeping thread's wakeup costs most.
    let busy = (setups.contains(&Setup::CrossProcess) && !tls_only).then(|| {
        let results = report::BusyResults {
            off: across_processes_in_fast_state::<RpcCoreNoBusyPoll, _>(&mut gate, |server| {
                workloads::busy::<RpcCoreNoBusyPoll>(server, effort)
            }),
            server: across_processes_in_fast_state::<RpcCoreBusyServer, _>(&mut gate, |server| {
                workloads::busy::<RpcCoreBusyServer>(server, effort)
            }),
            client: across_processes_in_fast_state::<RpcCoreBusyClient, _>(&mut gate, |server| {
                workloads::busy::<RpcCoreBusyClient>(server, effort)
            }),
            both: across_processes_in_fast_state::<RpcCore, _>(&mut gate, |server| {
                workloads::busy::<RpcCore>(server, effort)
            }),
        };
        println!(
            "\n## busy polling, cross-process\n\n{}",
            report::busy_table(&results)
        );
        results
    });
    let traced = (setups.contains(&Setup::CrossProcess) && !tls_only && !busy_only).then(|| {
        let results = traced_rounds(effort, flag("--quick").is_some(), &mut gate);
        println!(
            "\n## tracing on, cross-process\n\n{}",
            report::traced_table(&results)
        );
        results
    });
    let local = runs
        .iter()
        .find(|run| run.setup == Setup::CrossProcess)
        .map(|run| {
            let results = report::LocalResults {
                local: measure_local(effort),
                remote: (
                    run.figures.rpc.latency_p50_us,
                    run.figures.rpc.latency_p99_us,
                ),
            };
            println!("\n## in-process calls\n\n{}", report::local_table(&results));
            results
        });
    if flag("--write").is_some() {
        report::write(
            &runs,
            tls.as_ref(),
            busy.as_ref(),
            traced.as_ref(),
            local.as_ref(),
        )
        .expect("writes BENCHMARKS.md and the chart");
        println!("wrote BENCHMARKS.md and docs/benchmarks.svg");
    }
}

/// One system deployed for a round, with the figures it has measured so far.
trait Contender {
    /// The system's name.
    fn name(&self) -> &'static str;
    /// Measures one part of the workloads.
    fn measure(&mut self, part: Part, effort: Effort);
    /// The round's figures; the system's deployment ends.
    fn into_figures(self: Box<Self>) -> workloads::Figures;
}

/// A [`Contender`]: system `S` deployed, and what it has measured.
struct Deployed<S> {
    deployment: Deployment,
    figures: workloads::Figures,
    system: std::marker::PhantomData<S>,
}

impl<S: System> Deployed<S> {
    fn start(setup: Setup) -> Box<dyn Contender> {
        Box::new(Deployed::<S> {
            deployment: Deployment::start::<S>(setup),
            figures: workloads::Figures::default(),
            system: std::marker::PhantomData,
        })
    }
}

impl<S: System> Contender for Deployed<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn measure(&mut self, part: Part, effort: Effort) {
        let figures = std::mem::take(&mut self.figures);
        self.figures = workloads::measure_part::<S>(&self.deployment, part, effort, figures);
    }

    fn into_figures(self: Box<Self>) -> workloads::Figures {
        self.figures
    }
}

/// One round of a setup: every system deployed at once, then each part of the workloads
/// measured for every system in turn (in the opposite order every other round) before the
/// next part, so that a row's figures are measured within seconds of each other rather than
/// minutes apart; each turn in the machine's fast state when it can be (`probes`). The figures
/// of raw, tarpc, tonic and rpc-core, in that order.
fn measure_round(
    setup: Setup,
    effort: Effort,
    round: usize,
    probes: &mut machine::Probes,
) -> [workloads::Figures; 4] {
    let mut systems = [
        Deployed::<Raw>::start(setup),
        Deployed::<Tarpc>::start(setup),
        Deployed::<Tonic>::start(setup),
        Deployed::<RpcCore>::start(setup),
    ];
    let mut order = [0, 1, 2, 3];
    if round.is_multiple_of(2) {
        order.reverse();
    }
    for part in Part::ALL {
        for &at in &order {
            let system = &mut systems[at];
            eprintln!(
                "measuring {} ({}): {}",
                system.name(),
                setup.name(),
                part.name()
            );
            probes.turn(|| system.measure(part, effort));
        }
    }
    systems.map(|system| {
        let name = system.name();
        let figures = system.into_figures();
        eprintln!("  {name}: {}", figures.summary());
        figures
    })
}

/// rpc-core across two processes without and with a tracing subscriber, each figure the median
/// of `effort.rounds` rounds that measure both, one after the other in an order each round
/// reverses. Each measurement's client runs in a process of its own (`--traced-figures`, with
/// its server in a child of that), as a subscriber once installed stays for the rest of its
/// process, and this one measures the other sections without.
fn traced_rounds(effort: Effort, quick: bool, gate: &mut machine::Probes) -> report::TracedResults {
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..effort.rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for traced in order {
            let figures = in_fast_state(gate, || traced_in_child(traced, quick));
            if traced {
                on.push(figures);
            } else {
                off.push(figures);
            }
        }
    }
    report::TracedResults {
        off: workloads::TracedFigures::median(&off),
        on: workloads::TracedFigures::median(&on),
    }
}

/// The probes a section measured after `runs` judges the machine's state with: knowing from
/// its first turn the fastest rate they probed.
fn probes_after(runs: &[report::Results]) -> machine::Probes {
    let mut probes = machine::Probes::default();
    for run in runs {
        probes.learn(&run.probes);
    }
    probes
}

/// [`across_processes`], measured as one turn of `gate` ([`in_fast_state`]).
fn across_processes_in_fast_state<S: System, F>(
    gate: &mut machine::Probes,
    workload: impl Fn(Arc<ServerEnd>) -> F,
) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    in_fast_state(gate, || across_processes::<S, _>("", &workload))
}

/// What `measure` gives, measured as one turn of `gate`: in the machine's fast state when it
/// can be, and again (up to twice) if it began or ended in the slow one.
fn in_fast_state<T>(gate: &mut machine::Probes, mut measure: impl FnMut() -> T) -> T {
    let mut measured = None;
    gate.turn(|| measured = Some(measure()));
    measured.expect("a turn measures at least once")
}

/// One measurement of [`traced_rounds`]: this program run as `rpc-bench --traced-figures`, with
/// `--tracing` if `traced`, which prints its figures on one line.
fn traced_in_child(traced: bool, quick: bool) -> workloads::TracedFigures {
    let program = std::env::current_exe().expect("the benchmark's own path");
    let mut command = std::process::Command::new(program);
    command.arg("--traced-figures");
    if traced {
        command.arg("--tracing");
    }
    if quick {
        command.arg("--quick");
    }
    let output = command
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("starts the measuring client's process");
    assert!(
        output.status.success(),
        "the measuring client failed: {}",
        output.status
    );
    let line = String::from_utf8_lossy(&output.stdout);
    workloads::TracedFigures::from_line(&line).expect("the measuring client's figures")
}

/// Sequential calls through a local client, on the default multi-thread runtime.
fn measure_local(effort: Effort) -> (f64, f64) {
    eprintln!("measuring rpc-core in process");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let mut client = systems::rpc::local_client();
        workloads::latency::<RpcCore>(&mut client, effort).await
    })
}

/// Runs `workload` against `S`'s server in a child process, the clients on this process's
/// default runtime; `what` says what is measured, on the way.
fn across_processes<S: System, F>(
    what: &str,
    workload: impl FnOnce(Arc<ServerEnd>) -> F,
) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    eprintln!("measuring {}{what} (cross-process)", S::NAME);
    let deployment = Deployment::start::<S>(Setup::CrossProcess);
    let server = deployment.server.clone();
    deployment.run(workload(server))
}

/// A profile's line for sequential calls' median and p99: `scripts/instructions.sh` reads the
/// count of calls that ends it.
fn sequential_report((p50, p99): (f64, f64), effort: Effort) -> String {
    let calls = workloads::latency_calls(effort);
    format!("sequential p50 {p50:.1} µs, p99 {p99:.1} µs ({calls} calls)")
}

/// A workload's name and the size after it (`vec:70000`), or `default` where it names none;
/// `None` for a size that is not a count of bytes above zero.
fn sized(workload: &str, default: usize) -> Option<(&str, usize)> {
    match workload.split_once(':') {
        Some((name, size)) => Some((name, size.parse().ok().filter(|&size| size > 0)?)),
        None => Some((workload, default)),
    }
}

/// The echoes `workload` names, if it is one of them: `vec`, `buf` or `shared`, of
/// [`workloads::ECHO_BYTES`], or of as many bytes as `:BYTES` after the name says (`vec:70000`).
fn echo_workload(workload: &str) -> Option<(Bytes, usize)> {
    let (name, size) = sized(workload, workloads::ECHO_BYTES)?;
    let bytes = match name {
        "vec" => Bytes::Vec,
        "buf" => Bytes::Buf,
        "shared" => Bytes::Shared,
        _ => return None,
    };
    Some((bytes, size))
}

/// The size of the chunks `workload` streams: `chunks`, of 64 KiB, or `chunks:BYTES`.
fn chunk_size(workload: &str) -> Option<usize> {
    match sized(workload, 64 * 1024)? {
        ("chunks", size) => Some(size),
        _ => None,
    }
}

/// Runs one workload for 5 s (or 200,000 sequential calls; streams of 10,000,000 items for 5 s),
/// for a profiler to watch.
fn profile<S: System>(setup: Setup, workload: String) -> String {
    let effort = Effort::PROFILE;
    let deployment = Deployment::start::<S>(setup);
    let server = deployment.server.clone();
    if workload == "latency-main" {
        let sequential = workloads::sequential_from_here::<S>(server.addr, effort);
        return sequential_report(deployment.run_here(sequential), effort);
    }
    deployment.run(async move {
        let mut client = S::connect(server.addr).await;
        if let Some((bytes, size)) = echo_workload(&workload) {
            let bulk = workloads::bulk::<S>(&server, &client, bytes, size, effort).await;
            let echoes = format!("{:.0} MiB/s of echoes of {size} bytes", bulk.mib_per_s);
            return match bulk.faults_per_call {
                Some(faults) => format!("{echoes}, {faults:.1} page faults per echo"),
                None => echoes,
            };
        }
        let (connections, callers) = match workload.as_str() {
            "idle" => {
                drop(client);
                return match workloads::idle_connection_bytes::<S>(&server).await {
                    Some(bytes) => format!(
                        "{:.1} KiB ({bytes:.0} bytes) of heap per idle connection",
                        bytes / 1024.0
                    ),
                    None => NOT_COUNTED.to_owned(),
                };
            }
            "allocs" => {
                let per_call = workloads::allocations_per_call::<S>(&server, &mut client, effort);
                return match per_call.await {
                    Some(per_call) => format!("{per_call:.2} allocations per call, both ends"),
                    None => NOT_COUNTED.to_owned(),
                };
            }
            "latency" => {
                let quantiles = workloads::latency::<S>(&mut client, effort).await;
                return sequential_report(quantiles, effort);
            }
            "spaced" => {
                let (p50, calls) = workloads::spaced::<S>(&mut client, effort).await;
                return format!("calls 1 ms apart: p50 {p50:.1} µs ({calls} calls)");
            }
            chunks if chunks.starts_with("chunks") => {
                let Some(size) = chunk_size(chunks) else {
                    return format!("no workload called {chunks}: chunks or chunks:BYTES");
                };
                return match workloads::chunk_stream::<S>(&mut client, size, effort).await {
                    Some(rate) => format!("{rate:.0} MiB/s of streamed chunks of {size} bytes"),
                    None => format!("{} has no streams of chunks", S::NAME),
                };
            }
            "stream" => {
                return match workloads::counted_stream::<S>(&mut client, effort).await {
                    Some(rate) => format!("{:.0} items/s ({} items)", rate.per_second, rate.count),
                    None => format!("{} has no streams", S::NAME),
                };
            }
            "" | "256" | "256-awaiting" => (1, 256),
            "32" => (1, 32),
            "4x64" => (4, 64),
            "100x32" => (100, 32),
            other => {
                return format!(
                    "no workload called {other}: latency, latency-main, spaced, 32, 256, \
                     256-awaiting, 4x64, 100x32, vec[:BYTES], buf[:BYTES], shared[:BYTES], stream, \
                     chunks[:BYTES], idle, allocs or local"
                );
            }
        };
        let call = match workload.as_str() {
            "256-awaiting" => Call::AddAwaiting,
            _ => Call::Add,
        };
        drop(client);
        let clients = workloads::connections::<S>(server.addr, connections).await;
        match workloads::counted_throughput::<S>(&clients, callers, call, effort).await {
            Some(rate) => format!(
                "{:.0} calls/s, {connections} × {callers} callers ({} calls)",
                rate.per_second, rate.count
            ),
            None => format!("{} makes one call at a time", S::NAME),
        }
    })
}

/// What `--profile idle` and `--profile allocs` say with `--remote`.
const NOT_COUNTED: &str = "not measured: the server runs on another machine, whose process \
                           this one cannot count";

/// The first address `servers` (`HOST:PORT`, a name or an IP address) resolves to.
fn resolve(servers: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let mut addrs = servers
        .to_socket_addrs()
        .map_err(|error| format!("{servers:?} is not a HOST:PORT that resolves: {error}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{servers:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_workload_names_its_kind_and_may_name_its_size() {
        assert!(matches!(
            echo_workload("vec"),
            Some((Bytes::Vec, workloads::ECHO_BYTES))
        ));
        assert!(matches!(
            echo_workload("buf:70000"),
            Some((Bytes::Buf, 70_000))
        ));
        assert!(matches!(
            echo_workload("shared:4096"),
            Some((Bytes::Shared, 4096))
        ));
        for not_one in ["vec:0", "vec:", "vec:many", "stream", "stream:10"] {
            assert!(echo_workload(not_one).is_none(), "{not_one}");
        }
    }

    #[test]
    fn a_chunked_stream_is_of_64_kib_unless_it_says() {
        assert_eq!(chunk_size("chunks"), Some(64 * 1024));
        assert_eq!(chunk_size("chunks:70000"), Some(70_000));
        for not_one in ["chunks:0", "chunks:", "chunks70000", "chunk", "vec"] {
            assert_eq!(chunk_size(not_one), None, "{not_one}");
        }
    }
}
