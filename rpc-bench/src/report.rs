//! The results as markdown tables, BENCHMARKS.md, and an SVG chart of the headline ratios.

use std::fmt::Write as _;
use std::process::Command;

use crate::machine::Probes;
use crate::setup::Setup;
use crate::workloads::{BusyFigures, Figures, TlsFigures, TracedFigures};

/// Every system's figures in one setup.
#[derive(Debug)]
pub struct Results {
    pub setup: Setup,
    /// Each figure's median over the setup's rounds: what its table shows, and what the goals
    /// are judged by.
    pub figures: Systems,
    /// Each round's figures, in the order measured.
    pub rounds: Vec<Systems>,
    /// What the machine's probes found while the setup was measured.
    pub probes: Probes,
}

/// Each system's figures: one round's, or each figure's median over a setup's rounds.
#[derive(Debug, Clone, Default)]
pub struct Systems {
    pub rpc: Figures,
    pub tarpc: Figures,
    pub tonic: Figures,
    pub raw: Figures,
}

impl Systems {
    /// Each system's every figure's median over `rounds`.
    pub fn median(rounds: &[Systems]) -> Systems {
        let median = |system: fn(&Systems) -> &Figures| {
            let figures: Vec<Figures> = rounds.iter().map(|round| system(round).clone()).collect();
            Figures::median(&figures)
        };
        Systems {
            rpc: median(|round| &round.rpc),
            tarpc: median(|round| &round.tarpc),
            tonic: median(|round| &round.tonic),
            raw: median(|round| &round.raw),
        }
    }
}

/// Whether a larger figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// What rpc-core's figure is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Baseline {
    Raw,
    Tarpc,
    Tonic,
    /// rpc-core's own figure, against a fixed limit.
    Absolute,
}

impl Baseline {
    fn name(self) -> &'static str {
        match self {
            Baseline::Raw => "raw",
            Baseline::Tarpc => "tarpc",
            Baseline::Tonic => "tonic",
            Baseline::Absolute => "",
        }
    }

    fn pick(self, systems: &Systems) -> &Figures {
        match self {
            Baseline::Raw => &systems.raw,
            Baseline::Tarpc => &systems.tarpc,
            Baseline::Tonic => &systems.tonic,
            Baseline::Absolute => &systems.rpc,
        }
    }
}

/// One workload's row: how to read its figure, and rpc-core's goals against the others.
struct Row {
    label: &'static str,
    unit: &'static str,
    pick: fn(&Figures) -> Option<f64>,
    better: Better,
    goals: &'static [(Baseline, f64)],
}

fn rows() -> Vec<Row> {
    use Baseline::{Absolute, Raw, Tarpc, Tonic};
    vec![
        Row {
            label: "Sequential latency, p50",
            unit: "µs",
            pick: |f| f.latency_p50_us,
            better: Better::Lower,
            goals: &[(Raw, 1.10), (Tarpc, 0.9)],
        },
        Row {
            label: "Sequential latency, p99",
            unit: "µs",
            pick: |f| f.latency_p99_us,
            better: Better::Lower,
            goals: &[(Tarpc, 1.0)],
        },
        Row {
            label: "Sequential latency from `main`, p50",
            unit: "µs",
            pick: |f| f.main_p50_us,
            better: Better::Lower,
            goals: &[(Raw, 1.10), (Tarpc, 0.9)],
        },
        Row {
            label: "Sequential latency from `main`, p99",
            unit: "µs",
            pick: |f| f.main_p99_us,
            better: Better::Lower,
            goals: &[(Tarpc, 1.0)],
        },
        Row {
            label: "1 connection, 32 callers",
            unit: "calls/s",
            pick: |f| f.pipelined_32,
            better: Better::Higher,
            goals: &[(Tarpc, 3.0), (Tonic, 5.0)],
        },
        Row {
            label: "1 connection, 256 callers",
            unit: "calls/s",
            pick: |f| f.pipelined_256,
            better: Better::Higher,
            goals: &[(Tarpc, 4.0), (Tonic, 5.0)],
        },
        Row {
            label: "1 connection, 256 callers, handler awaits once",
            unit: "calls/s",
            pick: |f| f.awaiting_256,
            better: Better::Higher,
            goals: &[(Tonic, 5.0)],
        },
        Row {
            label: "4 connections, 64 callers each",
            unit: "calls/s",
            pick: |f| f.four_connections,
            better: Better::Higher,
            goals: &[(Tonic, 5.0)],
        },
        Row {
            label: "100 connections, 32 callers each",
            unit: "calls/s",
            pick: |f| f.many_connections,
            better: Better::Higher,
            goals: &[(Tarpc, 3.0), (Tonic, 5.0)],
        },
        Row {
            label: "1 MiB echo, `Vec<u8>`, 4 in flight",
            unit: "MiB/s",
            pick: |f| f.bulk_vec,
            better: Better::Higher,
            goals: &[(Tarpc, 2.0), (Tonic, 5.0)],
        },
        Row {
            label: "1 MiB echo, `ByteBuf`, 4 in flight",
            unit: "MiB/s",
            pick: |f| f.bulk_buf,
            better: Better::Higher,
            goals: &[(Tarpc, 2.0), (Tonic, 5.0)],
        },
        Row {
            label: "1 MiB echo, `Payload` / `Bytes`, 4 in flight",
            unit: "MiB/s",
            pick: |f| f.bulk_shared,
            better: Better::Higher,
            goals: &[(Tonic, 5.0)],
        },
        Row {
            label: "Stream of small items",
            unit: "items/s",
            pick: |f| f.stream_items,
            better: Better::Higher,
            goals: &[(Tonic, 5.0)],
        },
        Row {
            label: "Page faults per 1 MiB echo, `Vec<u8>`",
            unit: "",
            pick: |f| f.faults_vec,
            better: Better::Lower,
            goals: &[],
        },
        Row {
            label: "Page faults per 1 MiB echo, `ByteBuf`",
            unit: "",
            pick: |f| f.faults_buf,
            better: Better::Lower,
            goals: &[],
        },
        Row {
            label: "Allocations per call",
            unit: "",
            pick: |f| f.allocations_per_call,
            better: Better::Lower,
            goals: &[(Tarpc, 0.5)],
        },
        Row {
            label: "Heap per idle connection",
            unit: "KiB",
            pick: |f| f.idle_connection_bytes.map(|b| b / 1024.0),
            better: Better::Lower,
            goals: &[(Absolute, 16.0)],
        },
    ]
}

fn number(value: Option<f64>) -> String {
    match value {
        None => "—".to_owned(),
        Some(v) if v >= 10_000.0 => {
            let digits = (v.round() as u64).to_string();
            let mut out = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i).is_multiple_of(3) {
                    out.push(',');
                }
                out.push(c);
            }
            out
        }
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

/// One goal of a row judged: the ratio, how it reads, and whether it is met. `None` where a
/// figure is missing, or the one it is compared with is zero (no ratio to read).
struct Verdict {
    ratio: f64,
    goal: f64,
    reads: String,
    met: bool,
    /// The raw floor's own ratio against the same peer, and whether that meets the goal: a goal
    /// against tarpc or tonic that the floor misses too is past what this machine reaches with
    /// no framework at all. `None` for goals against the floor itself or a fixed limit, and
    /// where the floor has no figure.
    floor: Option<(f64, bool)>,
}

fn verdict(row: &Row, (baseline, goal): (Baseline, f64), systems: &Systems) -> Option<Verdict> {
    let ours = (row.pick)(&systems.rpc)?;
    if baseline == Baseline::Absolute {
        return Some(Verdict {
            ratio: ours,
            goal,
            reads: format!("{ours:.1} {} (goal < {goal})", row.unit),
            met: ours < goal,
            floor: None,
        });
    }
    let theirs = (row.pick)(baseline.pick(systems)).filter(|&theirs| theirs > 0.0)?;
    let meets = |ratio: f64| match row.better {
        Better::Higher => ratio >= goal,
        Better::Lower => ratio <= goal,
    };
    let sign = match row.better {
        Better::Higher => "≥",
        Better::Lower => "≤",
    };
    let ratio = ours / theirs;
    let floor = match baseline {
        Baseline::Tarpc | Baseline::Tonic => {
            (row.pick)(&systems.raw).map(|raw| (raw / theirs, meets(raw / theirs)))
        }
        Baseline::Raw | Baseline::Absolute => None,
    };
    Some(Verdict {
        ratio,
        goal,
        reads: format!(
            "{}× {} (goal {sign} {goal}×)",
            shown(ratio, goal),
            baseline.name()
        ),
        met: meets(ratio),
        floor,
    })
}

/// A ratio to two decimals, or to three where two would print the goal itself (1.10× against a
/// goal of 1.1× when the ratio is 1.1004), so that a verdict never reads as its own opposite.
fn shown(ratio: f64, goal: f64) -> String {
    let two = format!("{ratio:.2}");
    if ratio != goal && two == format!("{goal:.2}") {
        format!("{ratio:.3}")
    } else {
        two
    }
}

/// The results of one setup as a markdown table.
pub fn table(results: &Results) -> String {
    let systems = &results.figures;
    let mut out = String::new();
    out.push_str(
        "| Workload | rpc-core | tarpc | tonic | raw floor | rpc-core against its goals |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---|\n");
    // A row no system has a figure for (the counters, with the server on another machine) is
    // left out rather than shown empty.
    let all = [&systems.rpc, &systems.tarpc, &systems.tonic, &systems.raw];
    for row in rows() {
        if all.iter().all(|figures| (row.pick)(figures).is_none()) {
            continue;
        }
        let unit = if row.unit.is_empty() {
            String::new()
        } else {
            format!(" ({})", row.unit)
        };
        let mut reads: Vec<String> = row
            .goals
            .iter()
            .filter_map(|goal| verdict(&row, *goal, systems))
            .map(|v| match (v.met, v.floor) {
                (true, _) => format!("{}: met", v.reads),
                (false, None) => format!("{}: **not met**", v.reads),
                (false, Some((floor, _))) => format!(
                    "{}: **not met** (the floor: {}×)",
                    v.reads,
                    shown(floor, v.goal)
                ),
            })
            .collect();
        // A ratio to a figure of zero reads as nothing (tarpc's page faults, all reused memory
        // on one runtime, printed `NaN×` and `inf×`).
        if row.goals.is_empty()
            && let (Some(ours), Some(theirs)) =
                ((row.pick)(&systems.rpc), (row.pick)(&systems.tarpc))
            && theirs > 0.0
        {
            reads.push(format!("{:.2}× tarpc", ours / theirs));
        }
        let _ = writeln!(
            out,
            "| {}{unit} | {} | {} | {} | {} | {} |",
            row.label,
            number((row.pick)(&systems.rpc)),
            number((row.pick)(&systems.tarpc)),
            number((row.pick)(&systems.tonic)),
            number((row.pick)(&systems.raw)),
            reads.join("; "),
        );
    }
    out
}

/// The goals a setup's run did not meet, as two markdown lists under their headings: those the
/// raw floor meets (or has no figure for), and those it misses too, which no framework could
/// have met on this machine in this run.
fn unmet(results: &Results) -> String {
    let (mut within, mut past) = (String::new(), String::new());
    for row in rows() {
        for goal in row.goals {
            let Some(v) = verdict(&row, *goal, &results.figures).filter(|v| !v.met) else {
                continue;
            };
            match v.floor {
                None => {
                    let _ = writeln!(within, "- {}: {}", row.label, v.reads);
                }
                Some((floor, floor_met)) => {
                    let list = if floor_met { &mut within } else { &mut past };
                    let _ = writeln!(
                        list,
                        "- {}: {}; the floor {}×",
                        row.label,
                        v.reads,
                        shown(floor, v.goal)
                    );
                }
            }
        }
    }
    for list in [&mut within, &mut past] {
        if list.is_empty() {
            list.push_str("- none\n");
        }
    }
    format!(
        "Goals not met in this setup, where the raw floor meets them (or has no figure):\n\n\
         {within}\nGoals not met in this setup that the raw floor misses too, with no framework \
         at all:\n\n{past}"
    )
}

/// The goals that some of a setup's rounds met and others did not, each with its figure in
/// every round, after a blank line: a verdict on the medians that a round reverses is as near
/// its goal as the machine's noise, whichever way it went. Nothing for a run of one round.
fn split_by_rounds(results: &Results) -> String {
    if results.rounds.len() < 2 {
        return String::new();
    }
    let mut list = String::new();
    for row in rows() {
        for &goal in row.goals {
            let Some(median) = verdict(&row, goal, &results.figures) else {
                continue;
            };
            let rounds: Vec<Option<Verdict>> = results
                .rounds
                .iter()
                .map(|round| verdict(&row, goal, round))
                .collect();
            let judged = rounds.iter().flatten().count();
            let met = rounds.iter().flatten().filter(|v| v.met).count();
            if met == 0 || met == judged {
                continue;
            }
            let figures: Vec<String> = rounds
                .iter()
                .map(|round| match (round, goal.0) {
                    (None, _) => "—".to_owned(),
                    (Some(v), Baseline::Absolute) => format!("{:.1} {}", v.ratio, row.unit),
                    (Some(v), _) => format!("{}×", shown(v.ratio, v.goal)),
                })
                .collect();
            let _ = writeln!(
                list,
                "- {}: {}, met in {met} of {judged} rounds: {}",
                row.label,
                median.reads,
                figures.join(", ")
            );
        }
    }
    if list.is_empty() {
        list.push_str("- none\n");
    }
    format!(
        "\nGoals met in some rounds and not in others (each round's figure, in the order \
         measured; the verdicts above are the medians'):\n\n{list}"
    )
}

/// What the machine's probes found while a setup was measured, as a paragraph (ending in a
/// blank line); nothing if it was not probed.
pub fn probed(probes: &Probes) -> String {
    let Some((low, high)) = probes.range else {
        return String::new();
    };
    format!(
        "The machine's cross-core copy rate (a 1 MiB buffer handed between two threads, \
         `rpc-bench/src/machine.rs`), probed before and after each system's turn at a workload: \
         {} to {} MiB/s. A turn that began or ended in the slow state (below a quarter of the \
         fastest rate probed so far in the run) was measured again, up to twice: {} measurings \
         in all were made again, and {} of the {} turns were in the slow state still at their \
         third.\n\n",
        number(Some(low)),
        number(Some(high)),
        probes.measured_again,
        probes.slow,
        probes.turns,
    )
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let output = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    // Named because 1 MiB echoes over loopback depend on it: across two processes rpc-core's
    // ran 5-127% faster under CUBIC, Linux's default, than under BBR, whose window on loopback
    // stays near 1 MiB (BENCHMARKS.md, *How it was measured*).
    let congestion = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .map_or_else(|_| "unknown".to_owned(), |name| name.trim().to_owned());
    format!(
        "{cpu}, {cores} cores; {}; TCP congestion control {congestion}; {}",
        output("uname", &["-srm"]),
        output("rustc", &["--version"])
    )
}

/// rpc-core and tonic over TLS, both across two processes.
#[derive(Debug)]
pub struct TlsResults {
    pub rpc: TlsFigures,
    pub tonic: TlsFigures,
}

/// The table of the TLS run: each workload, each system, and rpc-core's ratio to tonic.
pub fn tls_table(results: &TlsResults) -> String {
    let rows = [
        (
            "Sequential latency, p50 (µs)",
            results.rpc.latency_p50_us,
            results.tonic.latency_p50_us,
        ),
        (
            "Sequential latency, p99 (µs)",
            results.rpc.latency_p99_us,
            results.tonic.latency_p99_us,
        ),
        (
            "1 connection, 256 callers (calls/s)",
            results.rpc.pipelined_256,
            results.tonic.pipelined_256,
        ),
        (
            "1 MiB echo, `Vec<u8>`, 4 in flight (MiB/s)",
            results.rpc.bulk_vec,
            results.tonic.bulk_vec,
        ),
    ];
    let rows = rows.map(|(label, rpc, tonic)| {
        let ratio = match (rpc, tonic) {
            (Some(rpc), Some(tonic)) if tonic > 0.0 => format!("{:.2}×", rpc / tonic),
            _ => "—".to_owned(),
        };
        (label, [rpc, tonic], ratio)
    });
    compared_table(
        ["rpc-core over TLS", "tonic over TLS"],
        "rpc-core / tonic",
        &rows,
    )
}

/// A table of workloads each measured several ways, and a last column comparing them: `ways`
/// names the ways, `comparison` the last column, and each row holds a figure for each way.
fn compared_table<const N: usize>(
    ways: [&str; N],
    comparison: &str,
    rows: &[(&str, [Option<f64>; N], String)],
) -> String {
    let mut out = String::from("| Workload |");
    for way in ways {
        let _ = write!(out, " {way} |");
    }
    let _ = writeln!(out, " {comparison} |\n|---|{}", "---:|".repeat(N + 1));
    for (label, figures, compared) in rows {
        let _ = write!(out, "| {label} |");
        for figure in figures {
            let _ = write!(out, " {} |", number(*figure));
        }
        let _ = writeln!(out, " {compared} |");
    }
    out
}

/// rpc-core across two processes without and with a tracing subscriber.
#[derive(Debug)]
pub struct TracedResults {
    pub off: TracedFigures,
    pub on: TracedFigures,
}

/// The table of the tracing run: each workload without and with a subscriber, and the cost.
pub fn traced_table(results: &TracedResults) -> String {
    let rows = [
        (
            "Sequential latency, p50 (µs)",
            results.off.latency_p50_us,
            results.on.latency_p50_us,
            Better::Lower,
        ),
        (
            "1 connection, 256 callers (calls/s)",
            results.off.pipelined_256,
            results.on.pipelined_256,
            Better::Higher,
        ),
    ];
    let rows = rows.map(|(label, off, on, better)| {
        let cost = match (off, on) {
            (Some(off), Some(on)) if off > 0.0 && on > 0.0 => {
                let worse = match better {
                    Better::Lower => on / off - 1.0,
                    Better::Higher => off / on - 1.0,
                };
                format!("{:+.0}%", worse * 100.0)
            }
            _ => "—".to_owned(),
        };
        (label, [off, on], cost)
    });
    compared_table(
        ["no subscriber", "a subscriber recording every span"],
        "cost",
        &rows,
    )
}

/// rpc-core across two processes with busy polling off, on at each end alone and on at both
/// (its defaults).
#[derive(Debug)]
pub struct BusyResults {
    pub off: BusyFigures,
    pub server: BusyFigures,
    pub client: BusyFigures,
    pub both: BusyFigures,
}

/// The table of the busy polling run: each figure with busy polling off, on at the server
/// alone, at the client alone and at both (the defaults), and the defaults over off.
pub fn busy_table(results: &BusyResults) -> String {
    let runs = [
        &results.off,
        &results.server,
        &results.client,
        &results.both,
    ];
    /// Where a row's figure is in a run's figures.
    type Pick = fn(&BusyFigures) -> Option<f64>;
    let workloads: [(&str, Pick); 8] = [
        ("Sequential latency, p50 (µs)", |f| f.latency_p50_us),
        ("Sequential latency, p99 (µs)", |f| f.latency_p99_us),
        ("CPU time per sequential call, both processes (µs)", |f| {
            f.latency_cpu_us
        }),
        ("1 connection, 32 callers (calls/s)", |f| f.pipelined_32),
        ("CPU time per call, 32 callers, both processes (µs)", |f| {
            f.pipelined_32_cpu_us
        }),
        ("1 connection, 256 callers (calls/s)", |f| f.pipelined_256),
        ("Sequential calls 1 ms apart, p50 (µs)", |f| {
            f.spaced_p50_us
        }),
        ("CPU time per call 1 ms apart, both processes (µs)", |f| {
            f.spaced_cpu_us
        }),
    ];
    let rows = workloads.map(|(label, pick)| {
        let [off, server, client, both] = runs.map(pick);
        let ratio = match (off, both) {
            (Some(off), Some(both)) if off > 0.0 => format!("{:.2}×", both / off),
            _ => "—".to_owned(),
        };
        (label, [off, server, client, both], ratio)
    });
    compared_table(
        [
            "off",
            "the server alone",
            "the client alone",
            "both ends (the defaults)",
        ],
        "defaults / off",
        &rows,
    )
}

/// Sequential calls of rpc-core's benchmark service in this process and across two.
#[derive(Debug)]
pub struct LocalResults {
    /// Through `BenchClient::local`: median and 99th percentile, in microseconds.
    pub local: (f64, f64),
    /// Over TCP to another process, from the headline run.
    pub remote: (Option<f64>, Option<f64>),
}

/// The table of local calls against remote ones.
pub fn local_table(results: &LocalResults) -> String {
    let ratio = |remote: Option<f64>, local: f64| {
        remote
            .filter(|_| local > 0.0)
            .map_or("—".to_owned(), |remote| format!("{:.0}×", remote / local))
    };
    let rows = [
        (
            "Sequential latency, p50 (µs)",
            [Some(results.local.0), results.remote.0],
            ratio(results.remote.0, results.local.0),
        ),
        (
            "Sequential latency, p99 (µs)",
            [Some(results.local.1), results.remote.1],
            ratio(results.remote.1, results.local.1),
        ),
    ];
    compared_table(
        ["in process (`local`)", "two processes, TCP"],
        "remote / local",
        &rows,
    )
}

/// Writes BENCHMARKS.md, a section per setup, one over TLS, one with busy polling, one with
/// tracing on and one for in-process calls, and docs/benchmarks.svg from the first setup.
pub fn write(
    runs: &[Results],
    tls: Option<&TlsResults>,
    busy: Option<&BusyResults>,
    traced: Option<&TracedResults>,
    local: Option<&LocalResults>,
) -> std::io::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut sections = String::new();
    for results in runs {
        let setup = results.setup;
        let _ = write!(
            sections,
            "## {}\n\n{}\n\n```sh\ncargo run --release -p rpc-bench -- --setup {}\n```\n\n{}\n\
             {}{}{}\n",
            setup_title(setup),
            setup.describe(),
            setup.name(),
            table(results),
            probed(&results.probes),
            unmet(results),
            split_by_rounds(results),
        );
    }
    if let Some(tls) = tls {
        let _ = write!(
            sections,
            "## Over TLS, two processes\n\nrpc-core and tonic with TLS on (rustls with the ring \
             backend for both, a certificate made by rcgen for the run), server and client in two \
             processes on default runtimes.\n\n```sh\ncargo run --release -p rpc-bench -- --tls\n\
             ```\n\n{}\n",
            tls_table(tls)
        );
    }
    if let Some(busy) = busy {
        let _ = write!(
            sections,
            "## Busy polling, two processes\n\nrpc-core with busy polling (`busy_poll`: by \
             default up to 100 µs at both ends, for a peer in another process or runtime) off, \
             on at the \
             server alone, at the client alone and at both, as by default, measured one after \
             the other in one round: a reader that finds nothing keeps its thread running for a \
             window after its last bytes (and, on a client, its last call sent), so the next \
             frame needs no sleeping thread woken, at the price of CPU time (both processes' \
             user and system time, from `/proc/self/stat`, in ticks of 10 ms). The window \
             adapts, up to the one given: the last two rows are sequential calls started 1 ms \
             apart, further than it. The tables above measure rpc-core as its defaults build \
             it: polling across two processes and between the single-thread runtimes of one; \
             on one shared runtime, where a call's two ends meet without a wakeup, a reader \
             polls only after a read that brought several frames.\n\n```sh\ncargo run \
             --release -p rpc-bench -- --busy-poll\n```\n\n{}\n",
            busy_table(busy)
        );
    }
    if let Some(traced) = traced {
        let _ = write!(
            sections,
            "## Tracing on, two processes\n\nrpc-core with a `tracing` subscriber installed in \
             both processes (`tracing-subscriber`'s registry, which records every span and \
             event and writes nothing: what spans cost before any output), against the same \
             workloads without one, measured in the same rounds: each round measures both, in \
             turn, the client of each in a process of its own.\n\n```sh\ncargo run --release -p rpc-bench -- --profile \
             latency --tracing\n```\n\n{}\n",
            traced_table(traced)
        );
    }
    if let Some(local) = local {
        let _ = write!(
            sections,
            "## In-process calls\n\nThe same sequential `add` through `BenchClient::local`, \
             which calls the implementation directly (no serialization, no socket; deadline, \
             context and panic catching as for a remote call), against the headline run's \
             calls to another process.\n\n```sh\ncargo run --release -p rpc-bench -- \
             --profile local\n```\n\n{}\n",
            local_table(local)
        );
    }
    let markdown = include_str!("benchmarks.md")
        .replace("{machine}", &machine())
        .replace("{sections}", sections.trim_end());
    std::fs::write(format!("{root}/BENCHMARKS.md"), markdown)?;
    if let Some(headline) = runs.first() {
        std::fs::write(format!("{root}/docs/benchmarks.svg"), chart(headline))?;
    }
    Ok(())
}

fn setup_title(setup: Setup) -> &'static str {
    match setup {
        Setup::CrossProcess => "Two processes, default runtimes (the headline)",
        Setup::Shared => "One process, one shared runtime",
        Setup::Isolated => "One process, a single-thread runtime for each side",
        Setup::Remote => "Two machines, default runtimes",
    }
}

/// A bar per goal: how far rpc-core got, with the goal marked.
fn chart(results: &Results) -> String {
    let mut bars = Vec::new();
    for row in rows() {
        for goal in row.goals {
            if let Some(v) = verdict(&row, *goal, &results.figures) {
                let label = match goal.0 {
                    Baseline::Absolute => row.label.to_owned(),
                    baseline => format!("{} vs {}", row.label, baseline.name()),
                };
                bars.push((label, v));
            }
        }
    }
    let (width, bar_left, bar_width, row_height) = (1100.0, 420.0, 480.0, 34.0);
    let height = 60.0 + row_height * bars.len() as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"13\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"20\" y=\"28\" font-size=\"16\" font-weight=\"bold\">rpc-core against its \
         goals, {} (bar: achieved ratio; line: goal; dashed: the raw floor's ratio)</text>\n",
        results.setup.name()
    );
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = 45.0 + row_height * i as f64;
        let floor = v.floor.map(|(floor, _)| floor);
        let scale = (v.ratio.max(v.goal).max(floor.unwrap_or(0.0)) * 1.15).max(1.0);
        let bar = bar_width * v.ratio / scale;
        let mark = bar_left + bar_width * v.goal / scale;
        let color = if v.met { "#2e7d32" } else { "#c62828" };
        let label = label
            .replace('`', "")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let _ = write!(
            svg,
            "<text x=\"20\" y=\"{}\">{label}</text>\n\
             <rect x=\"{bar_left}\" y=\"{y}\" width=\"{bar:.1}\" height=\"20\" fill=\"{color}\"/>\n\
             <line x1=\"{mark:.1}\" y1=\"{}\" x2=\"{mark:.1}\" y2=\"{}\" stroke=\"black\" \
             stroke-width=\"2\"/>\n\
             <text x=\"{:.1}\" y=\"{}\">{:.2} (goal {})</text>\n",
            y + 15.0,
            y - 3.0,
            y + 23.0,
            bar_left + bar + 6.0,
            y + 15.0,
            v.ratio,
            v.goal,
        );
        if let Some(floor) = floor {
            let at = bar_left + bar_width * floor / scale;
            let _ = writeln!(
                svg,
                "<line x1=\"{at:.1}\" y1=\"{}\" x2=\"{at:.1}\" y2=\"{}\" stroke=\"#888\" \
                 stroke-width=\"2\" stroke-dasharray=\"3,2\"/>",
                y - 3.0,
                y + 23.0,
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BENCHMARKS.md is the template filled in by the last `--write`: prose edited by hand in
    /// one and not the other would be lost, or contradicted, at the next run.
    #[test]
    fn benchmarks_md_has_the_templates_prose() {
        let template = include_str!("benchmarks.md");
        let written =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../BENCHMARKS.md"))
                .expect("BENCHMARKS.md is read");
        let (opening, rest) = template.split_once("{machine}").expect("a {machine} mark");
        let (between, closing) = rest.split_once("{sections}").expect("a {sections} mark");
        let edit_both = "edit BENCHMARKS.md and rpc-bench/src/benchmarks.md alike";
        assert!(
            written.starts_with(opening),
            "the opening differs: {edit_both}"
        );
        assert!(
            written.contains(between),
            "the prose before the tables differs: {edit_both}"
        );
        assert!(
            written.ends_with(closing),
            "the prose after the tables differs: {edit_both}"
        );
    }

    /// A row that no system has a figure for (the counters, with the server on another machine)
    /// is left out; a row with a figure stays.
    #[test]
    fn a_row_without_any_figure_is_left_out() {
        let measured = Figures {
            latency_p50_us: Some(20.0),
            ..Figures::default()
        };
        let results = Results {
            setup: Setup::Remote,
            figures: Systems {
                rpc: measured.clone(),
                tarpc: measured.clone(),
                tonic: measured.clone(),
                raw: measured,
            },
            rounds: Vec::new(),
            probes: Probes::default(),
        };
        let table = table(&results);
        assert!(
            table.contains("| Sequential latency, p50 (µs) | 20.0 |"),
            "{table}"
        );
        assert!(!table.contains("Allocations per call"), "{table}");
        assert_eq!(table.lines().count(), 3, "{table}");
    }

    /// A figure compared with one of zero has no ratio: the row shows the figures and no `NaN×`
    /// or `inf×`.
    #[test]
    fn a_ratio_to_a_figure_of_zero_is_left_out() {
        let faults = |faults: f64| Figures {
            faults_vec: Some(faults),
            ..Figures::default()
        };
        let results = Results {
            setup: Setup::Shared,
            figures: Systems {
                rpc: faults(0.0),
                tarpc: faults(0.0),
                tonic: faults(191.0),
                raw: faults(0.0),
            },
            rounds: Vec::new(),
            probes: Probes::default(),
        };
        let row = |results: &Results| {
            table(results)
                .lines()
                .find(|line| line.starts_with("| Page faults per 1 MiB echo, `Vec<u8>`"))
                .expect("the row")
                .to_owned()
        };
        assert_eq!(
            row(&results),
            "| Page faults per 1 MiB echo, `Vec<u8>` | 0.0 | 0.0 | 191 | 0.0 |  |"
        );
        let results = Results {
            figures: Systems {
                tarpc: faults(4.0),
                ..results.figures
            },
            ..results
        };
        assert!(
            row(&results).ends_with("| 0.00× tarpc |"),
            "{}",
            row(&results)
        );
    }

    #[test]
    fn the_probes_read_as_a_range_and_counts() {
        assert_eq!(probed(&Probes::default()), "");
        let mut probes = Probes::default();
        probes.range = Some((2_473.0, 22_041.4));
        probes.turns = 120;
        probes.measured_again = 31;
        probes.slow = 2;
        let paragraph = probed(&probes);
        assert!(paragraph.contains(": 2473 to 22,041 MiB/s."), "{paragraph}");
        assert!(
            paragraph.contains("31 measurings in all were made again"),
            "{paragraph}"
        );
        assert!(
            paragraph
                .contains("and 2 of the 120 turns were in the slow state still at their third."),
            "{paragraph}"
        );
        assert!(paragraph.ends_with(".\n\n"), "{paragraph}");
    }

    /// The busy polling table shows each of the four runs in its own column, in the order of
    /// its heading, and compares the defaults (both ends) with busy polling off.
    #[test]
    fn the_busy_polling_table_has_a_column_for_each_end() {
        let at = |p50: f64| BusyFigures {
            latency_p50_us: Some(p50),
            ..BusyFigures::default()
        };
        let table = busy_table(&BusyResults {
            off: at(100.0),
            server: at(40.0),
            client: at(44.0),
            both: at(10.0),
        });
        let heading = table.lines().next().unwrap_or_default();
        assert!(
            heading.contains(
                "| off | the server alone | the client alone | both ends (the defaults) |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| Sequential latency, p50 (µs) | 100 | 40.0 | 44.0 | 10.0 | 0.10× |"),
            "{table}"
        );
        assert!(
            table.contains("| Sequential latency, p99 (µs) | — | — | — | — | — |"),
            "{table}"
        );
    }

    /// A goal missed against tarpc or tonic says what the raw floor made against the same peer,
    /// and one the floor misses too is listed apart: past what this machine reached with no
    /// framework in the run. Goals against the floor itself, and rows the floor has no figure
    /// for, stay in the first list with no floor to quote.
    #[test]
    fn unmet_goals_are_split_by_whether_the_floor_meets_them() {
        let systems = Systems {
            rpc: Figures {
                latency_p50_us: Some(12.0),
                pipelined_32: Some(660_000.0),
                bulk_buf: Some(1223.0),
                stream_items: Some(48.0e6),
                ..Figures::default()
            },
            tarpc: Figures {
                latency_p50_us: Some(105.0),
                pipelined_32: Some(244_000.0),
                bulk_buf: Some(899.0),
                ..Figures::default()
            },
            tonic: Figures {
                latency_p50_us: Some(174.0),
                pipelined_32: Some(30_000.0),
                bulk_buf: Some(384.0),
                stream_items: Some(22.0e6),
                ..Figures::default()
            },
            raw: Figures {
                latency_p50_us: Some(9.7),
                bulk_buf: Some(2097.0),
                stream_items: Some(61.0e6),
                ..Figures::default()
            },
        };
        let results = Results {
            setup: Setup::CrossProcess,
            figures: systems.clone(),
            rounds: Vec::new(),
            probes: Probes::default(),
        };
        let lists = unmet(&results);
        let (within, past) = lists
            .split_once("that the raw floor misses too")
            .expect("two lists");
        assert!(
            within.contains("- Sequential latency, p50: 1.24× raw (goal ≤ 1.1×)\n"),
            "{lists}"
        );
        assert!(
            within.contains("- 1 connection, 32 callers: 2.70× tarpc (goal ≥ 3×)\n"),
            "{lists}"
        );
        assert!(
            within.contains(
                "- 1 MiB echo, `ByteBuf`, 4 in flight: 1.36× tarpc (goal ≥ 2×); the floor 2.33×\n"
            ),
            "{lists}"
        );
        assert!(
            within.contains(
                "- 1 MiB echo, `ByteBuf`, 4 in flight: 3.18× tonic (goal ≥ 5×); the floor 5.46×\n"
            ),
            "{lists}"
        );
        assert!(!past.contains("ByteBuf"), "{lists}");
        assert!(
            past.contains("- Stream of small items: 2.18× tonic (goal ≥ 5×); the floor 2.77×\n"),
            "{lists}"
        );
        assert!(!within.contains("Stream of small items"), "{lists}");
        let table = table(&results);
        assert!(
            table.contains("2.18× tonic (goal ≥ 5×): **not met** (the floor: 2.77×) |"),
            "{table}"
        );
        assert!(
            table.contains("0.11× tarpc (goal ≤ 0.9×): met |"),
            "a met goal quotes no floor: {table}"
        );
        let without_a_floor = unmet(&Results {
            figures: Systems {
                rpc: systems.tarpc.clone(),
                tarpc: systems.tarpc,
                tonic: Figures::default(),
                raw: Figures::default(),
            },
            ..results
        });
        assert!(
            without_a_floor.contains("- 1 connection, 32 callers: 1.00× tarpc (goal ≥ 3×)\n")
                && without_a_floor.ends_with("with no framework at all:\n\n- none\n"),
            "{without_a_floor}"
        );
    }

    /// A goal that some rounds met and others did not is listed with its figure in every round,
    /// under the medians' verdict; one that every round met, or none did, is not; and a run of
    /// one round lists nothing.
    #[test]
    fn goals_the_rounds_split_are_listed_with_each_rounds_figure() {
        let round = |p50: f64, callers_32: f64, idle_kib: f64| Systems {
            rpc: Figures {
                latency_p50_us: Some(p50),
                pipelined_32: Some(callers_32),
                pipelined_256: Some(300_000.0),
                idle_connection_bytes: Some(idle_kib * 1024.0),
                ..Figures::default()
            },
            tarpc: Figures {
                latency_p50_us: Some(100.0),
                pipelined_32: Some(100_000.0),
                pipelined_256: Some(100_000.0),
                ..Figures::default()
            },
            tonic: Figures::default(),
            raw: Figures {
                latency_p50_us: Some(10.0),
                ..Figures::default()
            },
        };
        let rounds = vec![
            round(11.6, 290_000.0, 15.0),
            round(10.6, 320_000.0, 15.5),
            round(10.6, 310_000.0, 16.5),
        ];
        let results = Results {
            setup: Setup::CrossProcess,
            figures: Systems::median(&rounds),
            rounds,
            probes: Probes::default(),
        };
        let list = split_by_rounds(&results);
        assert!(
            list.starts_with("\nGoals met in some rounds and not in others"),
            "{list}"
        );
        assert!(
            list.contains(
                "- Sequential latency, p50: 1.06× raw (goal ≤ 1.1×), met in 2 of 3 rounds: \
                 1.16×, 1.06×, 1.06×\n"
            ),
            "{list}"
        );
        assert!(
            list.contains(
                "- 1 connection, 32 callers: 3.10× tarpc (goal ≥ 3×), met in 2 of 3 rounds: \
                 2.90×, 3.20×, 3.10×\n"
            ),
            "{list}"
        );
        assert!(
            list.contains(
                "- Heap per idle connection: 15.5 KiB (goal < 16), met in 2 of 3 rounds: 15.0 \
                 KiB, 15.5 KiB, 16.5 KiB\n"
            ),
            "{list}"
        );
        assert!(
            !list.contains("(goal ≤ 0.9×)"),
            "met in every round: {list}"
        );
        assert!(!list.contains("256 callers"), "met in no round: {list}");
        let one_round = Results {
            rounds: results.rounds[..1].to_vec(),
            ..results
        };
        assert_eq!(split_by_rounds(&one_round), "");
    }

    /// A ratio that misses its goal by less than two decimals show is printed with a third, so
    /// that "1.10× (goal ≤ 1.1×): not met" cannot appear; others keep two.
    #[test]
    fn a_ratio_rounding_to_its_goal_shows_a_third_decimal() {
        assert_eq!(shown(103.0 / 93.6, 1.1), "1.100");
        assert_eq!(shown(3.996, 4.0), "3.996");
        assert_eq!(shown(1.1, 1.1), "1.10");
        assert_eq!(shown(1.06, 1.1), "1.06");
        assert_eq!(shown(2.11, 3.0), "2.11");
    }
}
