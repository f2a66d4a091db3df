//! A calculator whose errors are part of its interface: `div` by zero and overflow come back as
//! `MathError` values, while transport problems stay `RpcError`s.
//!
//! ```text
//! cargo run -p rpc-examples --bin calc -- 84 / 2
//! cargo run -p rpc-examples --bin calc -- 1 / 0
//! cargo run -p rpc-examples --bin calc -- 9223372036854775807 + 1
//! ```

use std::process::ExitCode;

use rpc_core::Server;
use rpc_examples::{CalcClient, CalcServer, Calculator};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (a, op, b) = match args.as_slice() {
        [a, op, b] => match (a.parse::<i64>(), b.parse::<i64>()) {
            (Ok(a), Ok(b)) => (a, op.clone(), b),
            _ => return usage("both operands must be integers"),
        },
        [] => (84, "/".to_owned(), 2),
        _ => return usage("expected three arguments"),
    };

    let calc = match connect().await {
        Ok(calc) => calc,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let answer = match op.as_str() {
        "+" => calc.add(a, b).await,
        "*" | "x" => calc.mul(a, b).await,
        "/" => calc.div(a, b).await,
        _ => return usage("the operator must be +, * or /"),
    };
    match answer {
        Ok(Ok(value)) => {
            println!("{a} {op} {b} = {value}");
            ExitCode::SUCCESS
        }
        Ok(Err(math_error)) => {
            println!("{a} {op} {b}: {math_error}");
            ExitCode::from(2)
        }
        Err(rpc_error) => {
            eprintln!("error: {rpc_error}");
            ExitCode::FAILURE
        }
    }
}

/// Starts a calculator server on a free port and connects to it.
async fn connect() -> Result<CalcClient, Box<dyn std::error::Error>> {
    let server = Server::bind("127.0.0.1:0").await?;
    let addr = server.local_addr()?;
    tokio::spawn(server.serve(CalcServer::new(Calculator::default())));
    Ok(CalcClient::connect(addr).await?)
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("{problem}\nusage: calc <integer> <+|*|/> <integer>");
    ExitCode::FAILURE
}
