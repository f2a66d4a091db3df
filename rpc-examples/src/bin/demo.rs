//! The whole cycle in one program: define (in `rpc_examples`), implement, serve, call.
//!
//! ```text
//! cargo run -p rpc-examples --bin demo
//! ```

use std::error::Error;

use rpc_core::{RpcError, Server};
use rpc_examples::{CalcClient, CalcServer, Calculator, GreeterClient, GreeterServer};
use rpc_examples::{FriendlyGreeter, MathError};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // Serve: bind a free port and run the calculator there.
    let server = Server::bind("127.0.0.1:0").await?;
    let addr = server.local_addr()?;
    tokio::spawn(server.serve(CalcServer::new(Calculator::default())));
    println!("server: serving Calc on {addr}");

    // Call: the client's methods mirror the trait's.
    let calc = CalcClient::connect(addr).await?;
    println!("client: connected to {addr}");
    println!("client: add(2, 3)  = {:?}", calc.add(2, 3).await?);
    println!("client: mul(6, 7)  = {:?}", calc.mul(6, 7).await?);

    // An application error is a value, not a transport failure.
    match calc.div(1, 0).await? {
        Ok(quotient) => println!("client: div(1, 0)  = {quotient}"),
        Err(MathError::DivideByZero) => println!("client: div(1, 0)  refused: division by zero"),
        Err(other) => println!("client: div(1, 0)  refused: {other}"),
    }

    // One connection carries many calls at once; clones share it.
    let calls = (1..=100).map(|i| {
        let calc = calc.clone();
        tokio::spawn(async move { calc.mul(i, i).await })
    });
    let mut sum = 0;
    for call in calls {
        sum += call.await???; // join error, transport error, application error
    }
    println!("client: 100 concurrent mul(i, i) on one connection, sum = {sum}");
    assert_eq!(sum, (1..=100).map(|i| i * i).sum::<i64>());
    println!(
        "client: the server did {} calculations",
        calc.count().await?
    );

    // Talking to the wrong service fails at connect time, with a sentence.
    match GreeterClient::connect(addr).await {
        Err(error @ RpcError::WrongService { .. }) => println!("client: as expected: {error}"),
        other => return Err(format!("expected a wrong-service error, got {other:?}").into()),
    }

    // The same service over an in-memory pipe, no sockets involved.
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    tokio::spawn(rpc_core::serve_connection(
        server_end,
        GreeterServer::new(FriendlyGreeter),
    ));
    let greeter = GreeterClient::from_stream(client_end).await?;
    println!(
        "client: over memory: {}",
        greeter.hello("demo".into()).await?
    );

    println!("demo: done");
    Ok(())
}
