//! The results as a markdown table, BENCHMARKS.md, and an SVG chart of the ratios.

use std::fmt::Write as _;
use std::process::Command;

use crate::Figures;

/// Every system's figures.
#[derive(Debug)]
pub struct Results {
    pub rpc: Figures,
    pub tarpc: Figures,
    pub raw: Figures,
}

/// Whether a larger figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// A comparison with a goal: `rpc-core` against `baseline`, as a ratio of at least (or at most)
/// `goal`.
struct Row {
    label: &'static str,
    unit: &'static str,
    pick: fn(&Figures) -> Option<f64>,
    better: Better,
    /// Which system the ratio compares with, and the goal for it.
    target: Option<(Baseline, f64)>,
}

#[derive(Debug, Clone, Copy)]
enum Baseline {
    Tarpc,
    Raw,
    /// An absolute limit on rpc-core's own figure.
    Absolute,
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            label: "Sequential latency, p50",
            unit: "µs",
            pick: |f| f.latency_p50_us,
            better: Better::Lower,
            target: Some((Baseline::Raw, 1.15)),
        },
        Row {
            label: "Sequential latency, p99",
            unit: "µs",
            pick: |f| f.latency_p99_us,
            better: Better::Lower,
            target: None,
        },
        Row {
            label: "Pipelined, 1 connection, 32 callers",
            unit: "calls/s",
            pick: |f| f.pipelined_32,
            better: Better::Higher,
            target: Some((Baseline::Tarpc, 3.0)),
        },
        Row {
            label: "Pipelined, 1 connection, 256 callers",
            unit: "calls/s",
            pick: |f| f.pipelined_256,
            better: Better::Higher,
            target: Some((Baseline::Tarpc, 4.0)),
        },
        Row {
            label: "100 connections, 32 in flight each",
            unit: "calls/s",
            pick: |f| f.many_connections,
            better: Better::Higher,
            target: None,
        },
        Row {
            label: "Bulk 1 MiB echo, `Vec<u8>`, 4 in flight",
            unit: "MiB/s",
            pick: |f| f.bulk_vec,
            better: Better::Higher,
            target: Some((Baseline::Tarpc, 1.5)),
        },
        Row {
            label: "Bulk 1 MiB echo, byte buffer, 4 in flight",
            unit: "MiB/s",
            pick: |f| f.bulk_bytes,
            better: Better::Higher,
            target: Some((Baseline::Tarpc, 2.0)),
        },
        Row {
            label: "Allocations per call (both ends)",
            unit: "",
            pick: |f| f.allocations_per_call,
            better: Better::Lower,
            target: None,
        },
        Row {
            label: "Heap per idle connection (both ends)",
            unit: "KiB",
            pick: |f| f.idle_connection_bytes.map(|b| b / 1024.0),
            better: Better::Lower,
            target: Some((Baseline::Absolute, 16.0)),
        },
    ]
}

fn number(value: Option<f64>) -> String {
    match value {
        None => "—".to_owned(),
        Some(v) if v >= 10_000.0 => {
            let whole = v.round() as u64;
            let digits = whole.to_string();
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

/// The ratio a row is judged by, how it reads, and whether it meets its goal.
fn verdict(row: &Row, results: &Results) -> Option<(f64, String, bool)> {
    let (baseline, goal) = row.target?;
    let ours = (row.pick)(&results.rpc)?;
    let (ratio, reads) = match baseline {
        Baseline::Absolute => (ours, format!("{ours:.1} {} (goal < {goal})", row.unit)),
        Baseline::Tarpc | Baseline::Raw => {
            let (theirs, name) = match baseline {
                Baseline::Tarpc => ((row.pick)(&results.tarpc)?, "tarpc"),
                _ => ((row.pick)(&results.raw)?, "raw"),
            };
            let ratio = match row.better {
                Better::Higher => ours / theirs,
                Better::Lower => ours / theirs,
            };
            let goal_reads = match row.better {
                Better::Higher => format!("≥ {goal}×"),
                Better::Lower => format!("≤ {goal}×"),
            };
            (ratio, format!("{ratio:.2}× {name} (goal {goal_reads})"))
        }
    };
    let met = match (baseline, row.better) {
        (Baseline::Absolute, _) | (_, Better::Lower) => ratio <= goal,
        (_, Better::Higher) => ratio >= goal,
    };
    Some((ratio, reads, met))
}

/// The results as a markdown table.
pub fn table(results: &Results) -> String {
    let mut out = String::new();
    out.push_str("| Workload | rpc-core | tarpc | raw floor | rpc-core against its goal | |\n");
    out.push_str("|---|---:|---:|---:|---|---|\n");
    for row in rows() {
        let unit = if row.unit.is_empty() {
            String::new()
        } else {
            format!(" ({})", row.unit)
        };
        let (reads, mark) = match verdict(&row, results) {
            Some((_, reads, met)) => (reads, if met { "met" } else { "**not met**" }),
            None => {
                let vs_tarpc = match ((row.pick)(&results.rpc), (row.pick)(&results.tarpc)) {
                    (Some(ours), Some(theirs)) => format!("{:.2}× tarpc", ours / theirs),
                    _ => String::new(),
                };
                (vs_tarpc, "")
            }
        };
        let _ = writeln!(
            out,
            "| {}{unit} | {} | {} | {} | {reads} | {mark} |",
            row.label,
            number((row.pick)(&results.rpc)),
            number((row.pick)(&results.tarpc)),
            number((row.pick)(&results.raw)),
        );
    }
    out
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
    format!(
        "{cpu}, {cores} cores; {}; {}",
        output("uname", &["-srm"]),
        output("rustc", &["--version"])
    )
}

/// The goals this run did not meet, as a markdown list.
fn unmet(results: &Results) -> String {
    let mut out = String::new();
    for row in rows() {
        if let Some((_, reads, false)) = verdict(&row, results) {
            let _ = writeln!(out, "- {}: {reads}", row.label);
        }
    }
    if out.is_empty() {
        out.push_str("- none\n");
    }
    out
}

/// Writes BENCHMARKS.md and docs/benchmarks.svg.
pub fn write(results: &Results, table: &str) -> std::io::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let markdown = format!(
        "# Benchmarks\n\n\
         rpc-core against [tarpc](https://crates.io/crates/tarpc) 0.38 (bincode over TCP, the \
         same service; byte buffers are `bytes::Bytes` for tarpc, faster there than \
         `serde_bytes::ByteBuf`, and `rpc_core::Payload` for rpc-core) and a raw floor: length-prefixed postcard frames over one TCP connection, \
         one call at a time, with no framework at all. Every system runs client and server in \
         one process over loopback, on the same machine, in one run; each throughput figure is \
         measured for 3 s.\n\n\
         Run them with:\n\n```sh\ncargo run --release -p rpc-bench -- --write\n```\n\n\
         which prints the table and rewrites this file and the chart.\n\n\
         **Machine:** {}\n\n{table}\n\
         ![rpc-core's ratios against their goals](docs/benchmarks.svg)\n\n\
         ## Goals not met in this run\n\n{}\n\
         ## How it was measured\n\n\
         - Servers run on a runtime with one worker thread, clients on another, as two processes \
           would: no system can run both ends of a call on one thread. Each client's calls run \
           as tasks on its runtime's worker, not on the benchmark's main thread.\n\
         - The byte-buffer echo sends one buffer again and again, as a clone of each system's \
           byte type (a shared handle for `Bytes` and `Payload`); the `Vec<u8>` echo copies its \
           vector for every call, as a caller of a `Vec<u8>` method must.\n\
         - Ratios above 1 are better for throughput, below 1 for latency.\n\
         - Allocations and idle memory count client and server together, both being in the \
           benchmark's process; the raw floor allocates per call too (its encode buffers).\n\
         - On this shared two-core machine, figures vary from run to run, the raw floor's \
           latency most of all; compare systems within one run.\n\n\
         ## What profiling found, and what was done\n\n\
         `cargo run --release -p rpc-bench -- --profile WORKLOAD [SYSTEM]` runs one workload \
         (`latency`, `32`, `256`, `bulk` or `bulk-vec`) of one system (`rpc-core`, `tarpc` or \
         `raw`) for 5 s, for `perf record -e cpu-clock -g` or `perf stat`.\n\n\
         - Every call spawned a task on the server. Handlers that finish on their first poll \
           (most do) are now answered inline: no task, no timer, no cancellation entry.\n\
         - Writes carried one frame each: the runtime runs a woken task next, so the writer \
           ran as soon as the first caller queued a frame. It now yields once before writing, \
           and the frames queued meanwhile share the write (about 7 times the throughput at \
           256 callers).\n\
         - The keep-alive armed a timer per write; one ticker per connection now does.\n\
         - Large frames got freshly mapped buffers, page-faulted in, for every frame. The \
           reader now reuses the allocation while the connection is busy and gives it up after \
           a quiet second.\n\
         - `Vec<u8>` went through serde a byte at a time. A `Vec<u8>` argument or result is now \
           encoded and decoded as one byte string (the same bytes on the wire): about 3.5 times \
           the `Vec<u8>` echo.\n\
         - Each side copied every byte payload out of its frame. `rpc_core::Payload`, the byte \
           type of rpc-core's byte-buffer row, is received as a slice of its frame.\n\
         - Payloads were copied into their frames on the way out. A `Payload` of 16 KiB or \
           more is now spliced into its frame by reference and sent with a vectored write (about a tenth more \
           throughput).\n\
         - The read buffer grew by doubling while a large frame arrived, copying what had \
           arrived at each step. Room for a frame is now made at once up to the size of the \
           largest frame the peer has already sent in full (a claim beyond it still grows with \
           the bytes that arrive): about 1.5 times the `Payload` echo.\n\
         - Every call armed a deadline timer around taking a connection and a slot, both \
           nearly always free at once; now only a call that has to wait arms it (a sixth more \
           throughput at 256 callers).\n\
         - At 32 callers the machine was half idle: the calls travelled as one batch that the \
           two ends took turns on, each asleep while the other worked, paying two thread \
           wakeups per round trip (in this virtual machine, sending to a sleeping peer is a \
           fifth of all CPU time). A gathered batch is now written in two halves; the first \
           wakes the peer while the second is written, the halves travel apart and both ends \
           work at once (about 380k to 500k calls/s). Experiments that did worse: writing the \
           first frame at once instead of waiting a scheduler turn (one frame per write, 2.5 \
           times slower), and yielding by waking itself instead of `yield_now` (15% slower at \
           32 callers).\n\n\
         What remains, from the profiles: the second write per batch costs a system call, \
         which shows where the machine is already busy (100 connections). tarpc keeps both \
         cores busy by making a system call per frame, which is why it is slower everywhere; \
         the raw floor crosses no task, where an rpc-core call crosses four (caller, writer, \
         the peer's reader, and back).\n",
        machine(),
        unmet(results),
    );
    std::fs::write(format!("{root}/BENCHMARKS.md"), markdown)?;
    std::fs::write(format!("{root}/docs/benchmarks.svg"), chart(results))
}

/// A bar per goal: how far rpc-core got, with the goal marked.
fn chart(results: &Results) -> String {
    let verdicts: Vec<(&'static str, f64, f64, bool, Better)> = rows()
        .into_iter()
        .filter_map(|row| {
            let (ratio, _, met) = verdict(&row, results)?;
            let (_, goal) = row.target?;
            Some((row.label, ratio, goal, met, row.better))
        })
        .collect();
    let (width, bar_left, bar_width, row_height) = (900.0, 330.0, 520.0, 46.0);
    let height = 60.0 + row_height * verdicts.len() as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"13\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"20\" y=\"28\" font-size=\"16\" font-weight=\"bold\">rpc-core against its \
         goals (bar: achieved; line: goal)</text>\n"
    );
    for (i, (label, ratio, goal, met, _)) in verdicts.iter().enumerate() {
        let y = 50.0 + row_height * i as f64;
        let scale = (ratio.max(*goal) * 1.15).max(1.0);
        let bar = bar_width * ratio / scale;
        let mark = bar_left + bar_width * goal / scale;
        let color = if *met { "#2e7d32" } else { "#c62828" };
        let label = label
            .replace('`', "")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let _ = write!(
            svg,
            "<text x=\"20\" y=\"{}\">{label}</text>\n\
             <rect x=\"{bar_left}\" y=\"{y}\" width=\"{bar:.1}\" height=\"24\" fill=\"{color}\"/>\n\
             <line x1=\"{mark:.1}\" y1=\"{}\" x2=\"{mark:.1}\" y2=\"{}\" stroke=\"black\" \
             stroke-width=\"2\"/>\n\
             <text x=\"{:.1}\" y=\"{}\">{ratio:.2} (goal {goal})</text>\n",
            y + 17.0,
            y - 3.0,
            y + 27.0,
            bar_left + bar + 6.0,
            y + 17.0,
        );
    }
    svg.push_str("</svg>\n");
    svg
}
