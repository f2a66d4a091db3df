//! tower middleware on both sides: a server that rate-limits each connection and writes an
//! audit line for every call, and a client wrapped in tower's timeout.
//!
//! ```text
//! cargo run -p rpc-examples --bin middleware
//! ```
//!
//! The server's layers are tower's `RateLimitLayer`, unchanged, and `AuditLayer` below, which
//! any service could use: it sees each call's method, client and encoded arguments, and how the
//! call ended. The client is a `tower::Service` of `QuotesRequest`, so tower's layers wrap it
//! too.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use rpc_core::Server;
use rpc_core::middleware::{BoxError, Call, Next, Reply};
use tower::limit::RateLimitLayer;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// Prices, in cents.
#[rpc_core::service]
pub trait Quotes {
    /// The price of `symbol`.
    async fn quote(&self, symbol: String) -> u64;
}

struct MyQuotes;

impl Quotes for MyQuotes {
    async fn quote(&self, symbol: String) -> u64 {
        symbol.bytes().map(u64::from).sum::<u64>() * 10
    }
}

/// Writes a line for every call: who called what, with how many bytes of arguments, how it
/// ended and how long the layers inside took to answer it. (A call waits for the rate limit
/// before any layer is handed it: in `poll_ready`, as tower's services do.)
#[derive(Clone, Copy, Debug)]
struct AuditLayer;

impl Layer<Next> for AuditLayer {
    type Service = Audit;

    fn layer(&self, next: Next) -> Audit {
        Audit { next }
    }
}

/// [`AuditLayer`] around the layers after it.
struct Audit {
    next: Next,
}

impl Service<Call> for Audit {
    type Response = Reply;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.next.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let context = call.context();
        let who = context
            .peer_addr()
            .map_or("?".to_owned(), |addr| addr.to_string());
        let line = format!(
            "audit: {who} called {}.{} with {} bytes of arguments",
            context.service(),
            context.method(),
            call.encoded_arguments().len()
        );
        let began = Instant::now();
        let reply = self.next.call(call);
        Box::pin(async move {
            let reply = reply.await;
            let outcome = match &reply {
                Ok(reply) if reply.is_ok() => "answered",
                Ok(_) => "failed",
                Err(_) => "refused by a layer",
            };
            println!("{line}: {outcome} in {:.1?}", began.elapsed());
            reply
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The first layer added is the outermost: the audit sees every call the rate limit lets
    // through. Each connection gets its own limit: 5 calls a second.
    let server = Server::builder()
        .layer(AuditLayer)
        .layer(RateLimitLayer::new(5, Duration::from_secs(1)))
        .bind("127.0.0.1:0")
        .await?;
    let addr = server.local_addr()?;
    tokio::spawn(server.serve(QuotesServer::new(MyQuotes)));

    // The client is a tower::Service of QuotesRequest: here, with a timeout on every call.
    let client = QuotesClient::connect(addr).await?;
    let mut quotes = ServiceBuilder::new()
        .timeout(Duration::from_secs(10))
        .service(client);
    let began = Instant::now();
    let symbols = [
        "RUST", "TOKIO", "TOWER", "SERDE", "HYPER", "TONIC", "TARPC", "BYTES",
    ];
    for symbol in symbols {
        let request = QuotesRequest::Quote {
            symbol: symbol.to_owned(),
        };
        let QuotesResponse::Quote(cents) = quotes.ready().await?.call(request).await?;
        println!("{symbol:>5} = {cents} cents");
    }
    println!(
        "{} quotes in {:.1?}: the server let 5 calls a second through",
        symbols.len(),
        began.elapsed()
    );
    Ok(())
}
