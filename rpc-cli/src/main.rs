//! `rpc`: describe and call any rpc-core server from the command line, with JSON.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use rpc_cli::json;
use rpc_cli::lockfile::{self, LockError};
use rpc_core::dynamic::{DynamicClient, DynamicReply, Encoded};
use rpc_core::health::ServingStatus;
use rpc_core::schema::ServiceSchema;
use rpc_core::tls::ClientTls;
use rpc_core::{ClientBuilder, RpcError, Streaming};
use serde_json::Value;

/// Describe and call any rpc-core server, with JSON.
#[derive(Parser, Debug)]
#[command(name = "rpc", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the server's service as Rust that compiles (beside serde and rpc-core) into a
    /// client of it: its types and its trait; for a server of several, each in a module of its
    /// own (or the one `--service` names).
    Describe {
        #[command(flatten)]
        target: Target,
    },
    /// Call a method: arguments as JSON, the result printed as JSON (a streamed result as one
    /// JSON line per item, or, when the method returned an error instead, `{"Err": ...}` and
    /// exit code 1; a streamed argument is read as JSON lines from stdin).
    Call {
        #[command(flatten)]
        target: Target,
        /// The method to call: `add`, or `Kv.get` for a method of another service of a server
        /// of several.
        method: String,
        /// The arguments, as JSON: each argument's value in order (`2 3`, `'"text"'`), or all of
        /// them as one object keyed by name (`'{"a": 2, "b": 3}'`) or one array (`[2, 3]`);
        /// nothing for a method without arguments. A lone object or array is read as all the
        /// arguments, so an argument that is a struct goes as `'{"order": {...}}'`.
        #[arg(allow_negative_numbers = true)]
        args: Vec<String>,
    },
    /// Ask whether the server is serving (its own service, or the one `--service` names):
    /// prints `serving`, `not serving` or `service unknown`, and exits 0 only for `serving`.
    /// Needs no reflection: a probe for load balancers and orchestrators.
    Health {
        #[command(flatten)]
        target: Target,
        /// Print the status now, then each change, until the server shuts down (with no
        /// deadline unless `--deadline` is given); the exit code follows the last one.
        #[arg(long)]
        watch: bool,
    },
    /// Write the server's schema to a lock file, to check in.
    Lock {
        #[command(flatten)]
        target: Target,
        /// The lock file to write.
        file: PathBuf,
    },
    /// Check the server against a lock file: fail on each change that breaks callers built
    /// from it; added methods pass.
    Check {
        #[command(flatten)]
        target: Target,
        /// The lock file to check against.
        file: PathBuf,
    },
}

/// Where the server is, and how to reach it.
#[derive(Args, Debug)]
struct Target {
    /// The server: `host:port`, or `unix:PATH` for a Unix socket.
    addr: String,
    /// Metadata for the call, `key=value`; may be given more than once.
    #[arg(short = 'H', long = "header", value_name = "KEY=VALUE")]
    headers: Vec<String>,
    /// How long to wait for the answer: `500ms`, `5s`, `2m` (30s unless given). Given, it bounds
    /// connecting and the handshake too (10s unless given).
    #[arg(long, value_parser = parse_duration)]
    deadline: Option<Duration>,
    /// Connect over TLS, trusting the platform's authorities unless `--ca` is given.
    #[arg(long)]
    tls: bool,
    /// Trust the authority in this PEM file (implies `--tls`).
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// Present this certificate chain, for mutual TLS (with `--key`; implies `--tls`).
    #[arg(long, value_name = "PEM", requires = "key")]
    cert: Option<PathBuf>,
    /// The private key of `--cert`.
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
    /// The name the server's certificate must carry, if not the host connected to.
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// For a server of several services: the one to describe, lock, check, call or ask the
    /// health of (by default its first).
    #[arg(long, value_name = "NAME")]
    service: Option<String>,
}

/// What went wrong, and the exit code it gives.
enum Failure {
    /// The input was wrong: exit code 2.
    Usage(String),
    /// The call, the connection or the check failed: exit code 1.
    Failed(String),
    /// Whatever read the output stopped reading it (`rpc call ... | head -3`): the work is
    /// dropped, a call in flight cancelled, and `rpc` exits quietly, with code 0.
    OutputClosed,
}

/// `schema` as Rust, in a module named after the service (`LogTail` in `pub mod log_tail`).
fn in_module(schema: &ServiceSchema) -> String {
    let mut module = String::new();
    for (at, c) in schema.name.chars().enumerate() {
        if c.is_uppercase() {
            if at > 0 {
                module.push('_');
            }
            module.extend(c.to_lowercase());
        } else {
            module.push(c);
        }
    }
    let mut out = format!(
        "pub mod {} {{\n",
        rpc_core::schema::rust_identifier(&module)
    );
    for line in schema.to_rust().lines() {
        if !line.is_empty() {
            out.push_str("    ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("}\n");
    out
}

/// Writes `text` to standard output; a reader that went away ends the command quietly
/// ([`Failure::OutputClosed`]) instead of with a panic, as `println!` would.
fn out(text: std::fmt::Arguments<'_>) -> Result<(), Failure> {
    std::io::stdout()
        .lock()
        .write_fmt(text)
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::BrokenPipe => Failure::OutputClosed,
            _ => Failure::Failed(format!("the output could not be written: {error}")),
        })
}

impl From<RpcError> for Failure {
    fn from(error: RpcError) -> Self {
        Failure::Failed(error.to_string())
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 500ms, 5s or 2m"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("`{text}`: the unit is one of ms, s, m, h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(()) | Err(Failure::OutputClosed) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("rpc: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(message)) => {
            eprintln!("rpc: {message}");
            ExitCode::from(1)
        }
    }
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Describe { target } => {
            let (client, schema) = connect(&target).await?;
            if target.service.is_some() {
                out(format_args!("{}", schema.to_rust()))?;
                return Ok(());
            }
            let services = client.services().await?;
            if let [_] = services.as_slice() {
                return out(format_args!("{}", schema.to_rust()));
            }
            // Several: each in a module of its own, so that the whole compiles as it is even
            // where two services use types of one name.
            for (at, service) in services.iter().enumerate() {
                let schema = if *service == schema.name {
                    schema.clone()
                } else {
                    client.describe_service(service).await?
                };
                if at > 0 {
                    out(format_args!("\n"))?;
                }
                out(format_args!("{}", in_module(&schema)))?;
            }
            Ok(())
        }
        Command::Call {
            mut target,
            method,
            args,
        } => {
            if method.starts_with("rpc.") {
                return Err(Failure::Usage(format!(
                    "`{method}` is one of every server's own methods, not its service's: \
                     `rpc health` checks health, `rpc describe` describes"
                )));
            }
            // `Kv.get`: the method `get` of the service `Kv`.
            let method = match method.split_once('.') {
                Some((service, name)) => {
                    target.service = Some(service.to_owned());
                    name.to_owned()
                }
                None => method,
            };
            let args = typed_args(&args)?;
            let (client, schema) = connect(&target).await?;
            let service = target.service.as_deref();
            call(&client, &schema, service, &method, &args).await
        }
        Command::Health { target, watch } => health(&target, watch).await,
        Command::Lock { target, file } => {
            let (_, schema) = connect(&target).await?;
            lockfile::write(&schema, &file).map_err(|e| Failure::Failed(e.to_string()))?;
            out(format_args!(
                "wrote the schema of `{}` to {}\n",
                schema.name,
                file.display()
            ))?;
            Ok(())
        }
        Command::Check { target, file } => {
            let (_, schema) = connect(&target).await?;
            let locked = lockfile::read(&file).map_err(|e| Failure::Usage(e.to_string()))?;
            let broken = rpc_core::schema::incompatibilities(&locked, &schema);
            if !broken.is_empty() {
                return Err(Failure::Failed(LockError::Incompatible(broken).to_string()));
            }
            out(format_args!(
                "`{}` is compatible with {}\n",
                schema.name,
                file.display()
            ))?;
            Ok(())
        }
    }
}

/// The deadline of a call that `--deadline` does not set.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// Connects as `target` says and asks the server for its schema.
async fn connect(target: &Target) -> Result<(DynamicClient, ServiceSchema), Failure> {
    let client = connect_only(target, target.deadline.unwrap_or(DEFAULT_DEADLINE)).await?;
    let schema = match &target.service {
        Some(service) => client.describe_service(service).await?,
        None => client.describe().await?,
    };
    Ok((client, schema))
}

/// Connects as `target` says, with `deadline` for each call.
async fn connect_only(target: &Target, deadline: Duration) -> Result<DynamicClient, Failure> {
    let mut builder = DynamicClient::builder().deadline(deadline);
    // A probe given a deadline (`rpc health --deadline 1s`) answers within it, also when what
    // listens there never completes a handshake.
    if let Some(deadline) = target.deadline {
        builder = builder.connect_timeout(deadline);
    }
    for header in &target.headers {
        let Some((key, value)) = header.split_once('=') else {
            return Err(Failure::Usage(format!(
                "`-H {header}`: metadata is KEY=VALUE"
            )));
        };
        builder = builder.metadata(key, value);
    }
    builder = tls(builder, target)?;
    Ok(match target.addr.strip_prefix("unix:") {
        Some(path) => builder.connect_unix(path).await?,
        None => builder.connect(target.addr.as_str()).await?,
    })
}

/// `rpc health`: the status, or each status while `watch`ing; fails unless the last is
/// serving.
async fn health(target: &Target, watch: bool) -> Result<(), Failure> {
    // A watch lasts until the server shuts down: no deadline unless one is given (one too far
    // to represent is none).
    let deadline = match (target.deadline, watch) {
        (Some(deadline), _) => deadline,
        (None, true) => Duration::MAX,
        (None, false) => DEFAULT_DEADLINE,
    };
    let client = connect_only(target, deadline).await?;
    let channel = rpc_core::ServiceClient::channel(&client);
    let service = target.service.as_deref().unwrap_or("");
    let last = if watch {
        let mut statuses = channel.watch_service_health(service).await?;
        let mut last = None;
        while let Some(status) = statuses.next().await {
            let status = status?;
            out(format_args!("{status}\n"))?;
            last = Some(status);
        }
        last
    } else {
        let status = channel.service_health(service).await?;
        out(format_args!("{status}\n"))?;
        Some(status)
    };
    match last {
        Some(ServingStatus::Serving) => Ok(()),
        Some(ServingStatus::ServiceUnknown) => Err(Failure::Failed(format!(
            "the server does not serve `{service}`"
        ))),
        Some(ServingStatus::NotServing) => {
            Err(Failure::Failed("the server is not serving".to_owned()))
        }
        None => Err(Failure::Failed(
            "the watch ended before the server told a status".to_owned(),
        )),
    }
}

fn tls(
    builder: ClientBuilder<DynamicClient>,
    target: &Target,
) -> Result<ClientBuilder<DynamicClient>, Failure> {
    let wanted = target.tls || target.ca.is_some() || target.cert.is_some();
    if !wanted {
        return Ok(builder);
    }
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))
    };
    let refused = |e: rpc_core::tls::TlsError| Failure::Usage(e.to_string());
    let mut tls = match &target.ca {
        Some(ca) => ClientTls::trusting_pem(read(ca)?).map_err(refused)?,
        None => ClientTls::platform_roots().map_err(refused)?,
    };
    if let (Some(cert), Some(key)) = (&target.cert, &target.key) {
        tls = tls.identity_pem(read(cert)?, read(key)?).map_err(refused)?;
    }
    if let Some(name) = &target.server_name {
        tls = tls.server_name(name.clone()).map_err(refused)?;
    }
    Ok(builder.tls(tls))
}

/// The arguments as typed after the method: nothing (`null`), one JSON value (all the
/// arguments, or a lone argument's value: [`json::encode_args`] tells), or several, each an
/// argument's value in order (an array of them). Read before connecting, so that a slip of the
/// keyboard is told at once.
fn typed_args(texts: &[String]) -> Result<Value, Failure> {
    let parse = |text: &String| {
        serde_json::from_str(text).map_err(|error| {
            let hint = if text.starts_with(char::is_alphabetic) {
                format!(" (a string is written in double quotes, inside the shell's: '\"{text}\"')")
            } else {
                String::new()
            };
            Failure::Usage(format!("the argument `{text}` is not JSON{hint}: {error}"))
        })
    };
    match texts {
        [] => Ok(Value::Null),
        [one] => parse(one),
        several => several
            .iter()
            .map(parse)
            .collect::<Result<_, _>>()
            .map(Value::Array),
    }
}

async fn call(
    client: &DynamicClient,
    schema: &ServiceSchema,
    service: Option<&str>,
    name: &str,
    args: &Value,
) -> Result<(), Failure> {
    let Some(method) = schema.method(name) else {
        let names: Vec<&str> = schema.methods.iter().map(|m| m.name.as_str()).collect();
        return Err(Failure::Usage(format!(
            "`{}` has no method `{name}`; its methods are {}",
            schema.name,
            names.join(", ")
        )));
    };
    let encoded = json::encode_args(method, &schema.types, args).map_err(Failure::Usage)?;
    let bad_input = Arc::new(AtomicBool::new(false));
    let upload = method
        .upload
        .as_ref()
        .map(|upload| stdin_items(schema, upload, Arc::clone(&bad_input)));
    // A service named on the command line is called by qualified names, whichever service the
    // connection's hello named.
    let mut qualified = method.clone();
    if let Some(service) = service {
        qualified.name = format!("{service}.{}", method.name);
    }
    let reply = client
        .call(&qualified, Encoded::new(encoded), upload)
        .await?;
    match reply {
        DynamicReply::Value(result) => {
            let value = json::decode(&method.result, &schema.types, result.as_bytes())
                .map_err(Failure::Failed)?;
            out(format_args!("{}\n", pretty(&value)))?;
        }
        DynamicReply::Stream(mut items) => {
            while let Some(item) = items.next().await {
                let item = item?;
                let value = json::decode(&method.result, &schema.types, item.as_bytes())
                    .map_err(Failure::Failed)?;
                out(format_args!("{value}\n"))?;
            }
        }
        // The method returns `Result<Streaming<T>, E>`, and its error came instead of the
        // stream: printed as the `Err` it is, and the exit code says the stream did not come.
        DynamicReply::StreamError(error) => {
            let Some(error_schema) = method.download.error() else {
                return Err(Failure::Failed(
                    "the server answered an error for a stream that cannot fail".to_owned(),
                ));
            };
            let value = json::decode(error_schema, &schema.types, error.as_bytes())
                .map_err(Failure::Failed)?;
            let value = Value::Object([("Err".to_owned(), value)].into_iter().collect());
            out(format_args!("{}\n", pretty(&value)))?;
            return Err(Failure::Failed(format!(
                "`{}` returned an error instead of its stream",
                method.name
            )));
        }
    }
    if bad_input.load(Ordering::Acquire) {
        // The line's error is printed already; the server saw the stream fail there.
        return Err(Failure::Usage(
            "the streamed argument stopped at a line that does not fit".to_owned(),
        ));
    }
    Ok(())
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// The streamed argument's items, read as JSON lines from stdin. A line that does not fit the
/// item type ends the stream with that error, which the server sees as a failed stream.
fn stdin_items(
    schema: &ServiceSchema,
    upload: &rpc_core::schema::Field,
    bad_input: Arc<AtomicBool>,
) -> Streaming<Encoded> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Encoded, String>>(16);
    let (item, types, name) = (
        upload.schema.clone(),
        schema.types.clone(),
        upload.name.clone(),
    );
    std::thread::spawn(move || {
        for (number, line) in std::io::stdin().lock().lines().enumerate() {
            let item = match line {
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => serde_json::from_str::<Value>(&line)
                    .map_err(|e| format!("line {} of stdin is not JSON: {e}", number + 1))
                    .and_then(|value| {
                        json::encode(&item, &types, &value, &format!("{name}[{number}]"))
                    })
                    .map(Encoded::new),
                Err(error) => Err(format!("stdin could not be read: {error}")),
            };
            let failed = item.is_err();
            if let Err(message) = &item {
                eprintln!("rpc: {message}");
                bad_input.store(true, Ordering::Release);
            }
            if sender.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    let mut receiver = receiver;
    Streaming::from_results(futures_util::stream::poll_fn(move |cx| {
        receiver.poll_recv(cx)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_each_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        let unit = parse_duration("5d").expect_err("no such unit");
        assert_eq!(unit, "`5d`: the unit is one of ms, s, m, h");
        let number = parse_duration("soon").expect_err("no number");
        assert_eq!(number, "`soon` is not a duration such as 500ms, 5s or 2m");
    }
}
