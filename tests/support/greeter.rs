//! A small service for the tests of what calls tell an operator (spans, metrics): one method
//! that logs as it runs, and one that a server refuses (see [`refusing`](crate::refusing)).

/// Greets; its `secret` is for refusing.
#[rpc_core::service]
pub trait Greeter {
    /// Greets `name`, logging as it starts and, after a yield, as it ends.
    async fn greet(&self, name: String) -> String;
    /// Refused by the server's interceptor.
    async fn secret(&self) -> String;
    /// `0..to`, streamed.
    async fn count(&self, to: u32) -> rpc_core::Streaming<u32>;
}

/// The implementation.
#[derive(Debug)]
pub struct MyGreeter;

impl Greeter for MyGreeter {
    async fn greet(&self, name: String) -> String {
        tracing::info!(who = %name, "greeting");
        // Not done on its first poll: the rest runs in a task of its own.
        tokio::task::yield_now().await;
        tracing::info!(who = %name, "greeted");
        format!("hello, {name}")
    }

    async fn secret(&self) -> String {
        unreachable!("the interceptor refuses every call to it")
    }

    async fn count(&self, to: u32) -> rpc_core::Streaming<u32> {
        rpc_core::Streaming::iter(0..to)
    }
}

/// Serves [`MyGreeter`] with `builder` on `addr` (`"127.0.0.1:0"` for any free port) in a task
/// of its own; returns the address it listens on.
pub async fn serve(builder: rpc_core::ServerBuilder, addr: &str) -> std::net::SocketAddr {
    let server = builder.bind(addr).await.expect("binds");
    let addr = server.local_addr().expect("an address");
    tokio::spawn(server.serve(GreeterServer::new(MyGreeter)));
    addr
}
