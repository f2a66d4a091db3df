//! The hello-world server. Run it in one terminal, then `hello_client` in another:
//!
//! ```text
//! cargo run -p rpc-examples --bin hello_server            # listens on 127.0.0.1:7000
//! cargo run -p rpc-examples --bin hello_client -- Ada     # in a second terminal
//! ```
//!
//! An address as the first argument overrides the default; port 0 picks a free port.

use rpc_core::Server;
use rpc_examples::{FriendlyGreeter, GreeterServer};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".into());
    let server = Server::bind(&addr).await?;
    // Printed first and flushed at once: scripts and tests read the address from here.
    println!("listening on {}", server.local_addr()?);
    server.serve(GreeterServer::new(FriendlyGreeter)).await
}
