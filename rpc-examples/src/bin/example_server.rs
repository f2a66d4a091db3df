//! Every example service on one port, to call from outside Rust: with the `rpc` tool, or with a
//! client of your own written from docs/wire.md.
//!
//! ```text
//! cargo run -p rpc-examples --bin example_server     # listens on 127.0.0.1:7000
//! rpc describe 127.0.0.1:7000
//! rpc call 127.0.0.1:7000 add 2 3
//! rpc call 127.0.0.1:7000 LogTail.tail 0
//! rpc call 127.0.0.1:7000 Evaluator.eval '[{"Add": [{"Num": 2}, {"Neg": {"Num": 5}}]}]'
//! ```
//!
//! It serves `Calc` (its own service: a client that names none gets it), `LogTail`, whose log
//! gains a line every second, `FileStore`, which takes uploads of up to 1 MiB, and `Evaluator`,
//! which evaluates expressions sent as trees. An address as the first argument overrides the
//! default; port 0 picks a free port.

use std::time::Duration;

use rpc_core::{Server, Services};
use rpc_examples::expr::{Arithmetic, EvaluatorServer};
use rpc_examples::streams::{ChecksumStore, FileStoreServer, Log, LogTailServer};
use rpc_examples::{CalcServer, Calculator};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".into());
    let log = Log::default();
    for n in 1..=3 {
        log.write(format!("boot step {n} done"));
    }
    let ticking = log.clone();
    tokio::spawn(async move {
        let mut second = tokio::time::interval(Duration::from_secs(1));
        second.tick().await;
        for n in 1.. {
            second.tick().await;
            ticking.write(format!("tick {n}"));
        }
    });
    let server = Server::bind(&addr).await?;
    // Printed first and flushed at once: scripts and tests read the address from here.
    println!("listening on {}", server.local_addr()?);
    let services = Services::new()
        .add(CalcServer::new(Calculator::default()))
        .add(LogTailServer::new(log))
        .add(FileStoreServer::new(ChecksumStore { limit: 1 << 20 }))
        .add(EvaluatorServer::new(Arithmetic));
    server.serve(services).await
}
