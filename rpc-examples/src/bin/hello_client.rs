//! The hello-world client: greets each name given, through the server `hello_server` runs.
//!
//! ```text
//! cargo run -p rpc-examples --bin hello_client -- Ada Grace
//! HELLO_ADDR=127.0.0.1:7001 cargo run -p rpc-examples --bin hello_client -- Ada
//! ```

use rpc_examples::GreeterClient;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("HELLO_ADDR").unwrap_or_else(|_| "127.0.0.1:7000".into());
    let mut names: Vec<String> = std::env::args().skip(1).collect();
    if names.is_empty() {
        names.push("world".into());
    }
    let client = GreeterClient::connect(&addr).await.map_err(|error| {
        format!("{error} (is `cargo run -p rpc-examples --bin hello_server` running?)")
    })?;
    for name in names {
        println!("{}", client.hello(name).await?);
    }
    Ok(())
}
