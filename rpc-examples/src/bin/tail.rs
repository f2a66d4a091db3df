//! Server streaming: follow a log as it is written, like `tail -f`.
//!
//! ```text
//! cargo run -p rpc-examples --bin tail
//! ```
//!
//! The server writes a line every 50 ms; the client reads the backlog and then new lines as they
//! come, and stops after ten. Dropping its stream cancels the call on the server. Then it asks
//! for lines written already, which the server may refuse before streaming any
//! (`Result<Streaming<String>, TooFewLines>`): the first two, and a million.

use std::time::Duration;

use rpc_core::Server;
use rpc_examples::streams::{Log, LogTailClient, LogTailServer, TooFewLines};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let log = Log::default();
    for n in 1..=3 {
        log.write(format!("boot step {n} done"));
    }
    let server = Server::bind("127.0.0.1:0").await?;
    let addr = server.local_addr()?;
    tokio::spawn(server.serve(LogTailServer::new(log.clone())));
    tokio::spawn(async move {
        for n in 1.. {
            tokio::time::sleep(Duration::from_millis(50)).await;
            log.write(format!("request {n} served"));
        }
    });

    let client = LogTailClient::connect(addr).await?;
    let mut lines = client.tail(0).await?;
    for _ in 0..10 {
        match lines.next().await {
            Some(line) => println!("tail: {}", line?),
            None => break,
        }
    }
    drop(lines);
    println!("tail: stopped after 10 lines");

    for count in [2, 1_000_000] {
        match client.lines(0, count).await? {
            Ok(mut lines) => {
                while let Some(line) = lines.next().await {
                    println!("tail: written already: {}", line?);
                }
            }
            Err(TooFewLines { written }) => {
                println!("tail: {count} lines refused: the log holds {written}")
            }
        }
    }
    Ok(())
}
