//! `rpc` against real servers, the way grpcurl is used against gRPC ones: describing a service,
//! calling it with JSON (streams both ways, metadata, deadlines, TLS), the errors a person
//! gets for JSON that does not fit, lock files, and what it does with a server whose answers
//! come mutated.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};

use rpc_core::health::ServingStatus;
use rpc_core::{Context, Server, ServerBuilder, Streaming};
use rpc_tests::certs::Authority;
use rpc_tests::{ScratchDir, within};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Size {
    Small,
    Large { grams: u32 },
    Custom(f64),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Order {
    pub(crate) item: String,
    pub(crate) quantity: u32,
    pub(crate) size: Size,
    pub(crate) note: Option<String>,
    pub(crate) tags: Vec<String>,
    pub(crate) extras: BTreeMap<String, u8>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Receipt {
    pub(crate) total: u64,
    pub(crate) size: Size,
    pub(crate) message: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Price(pub(crate) u64);

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum NotSold {
    Unknown { item: String },
}

#[rpc_core::service]
pub(crate) trait Shop {
    async fn add(&self, a: i64, b: i64) -> i64;
    async fn order(&self, order: Order) -> Receipt;
    async fn countdown(&self, from: u32) -> Streaming<u32>;
    async fn total(&self, prices: Streaming<Price>) -> u64;
    async fn whoami(&self) -> String;
    async fn wait(&self);
    async fn prices(&self, item: String) -> Result<Streaming<u64>, NotSold>;
}

struct MyShop;

impl Shop for MyShop {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn order(&self, order: Order) -> Receipt {
        let extras: u64 = order.extras.values().map(|&n| u64::from(n)).sum();
        Receipt {
            total: u64::from(order.quantity) * 100 + extras,
            size: order.size,
            message: format!(
                "{} x{} [{}] {}",
                order.item,
                order.quantity,
                order.tags.join(","),
                order.note.unwrap_or_default()
            ),
        }
    }

    async fn countdown(&self, from: u32) -> Streaming<u32> {
        Streaming::iter((1..=from).rev())
    }

    async fn total(&self, mut prices: Streaming<Price>) -> u64 {
        let mut total = 0;
        while let Some(Ok(Price(price))) = prices.next().await {
            total += price;
        }
        total
    }

    async fn whoami(&self) -> String {
        let call = Context::current();
        call.metadata()
            .get_str("user")
            .unwrap_or("nobody")
            .to_owned()
    }

    async fn wait(&self) {
        std::future::pending::<()>().await;
    }

    async fn prices(&self, item: String) -> Result<Streaming<u64>, NotSold> {
        match item.as_str() {
            "tea" => Ok(Streaming::iter([3, 4])),
            _ => Err(NotSold::Unknown { item }),
        }
    }
}

async fn serve(builder: ServerBuilder) -> SocketAddr {
    let server = builder.bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("an address");
    tokio::spawn(server.serve(ShopServer::new(MyShop)));
    addr
}

/// Runs `rpc` with `args`, feeding it `stdin`, off the runtime's threads.
async fn rpc(args: &[&str], stdin: &str) -> Output {
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    let stdin = stdin.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rpc"))
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runs rpc");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin.as_bytes()).expect("feeds stdin");
        drop(input);
        child.wait_with_output().expect("rpc finishes")
    })
    .await
    .expect("joins")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `rpc` and expects it to succeed; returns what it printed.
async fn ok(args: &[&str]) -> String {
    let output = rpc(args, "").await;
    assert!(output.status.success(), "rpc {args:?}: {}", stderr(&output));
    stdout(&output)
}

/// Runs `rpc` and expects it to fail with `code`; returns what it said.
async fn fails(args: &[&str], code: i32) -> String {
    let output = rpc(args, "").await;
    assert_eq!(
        output.status.code(),
        Some(code),
        "rpc {args:?}: {}",
        stdout(&output)
    );
    stderr(&output)
}

/// A deadline given bounds connecting too: a probe of something that listens but never speaks
/// our protocol fails within it, saying so, instead of after the 10 s handshake timeout.
#[tokio::test]
async fn a_deadline_bounds_the_handshake_too() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("an address").to_string();
    let mute = tokio::spawn(async move {
        let mut accepted = Vec::new();
        loop {
            let (stream, _) = listener.accept().await.expect("accepts");
            accepted.push(stream);
        }
    });
    for command in ["health", "describe"] {
        let said = fails(&[command, "--deadline", "200ms", &addr], 1).await;
        assert!(
            said.contains("did not complete the handshake within 200ms"),
            "{command}: {said}"
        );
    }
    mute.abort();
}

/// `rpc health` asks without reflection, prints the status, and exits 0 only for serving.
#[tokio::test]
async fn health_prints_the_status_and_fails_unless_serving() {
    let server = Server::builder()
        .reflection(false)
        .bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = server.local_addr().expect("an address").to_string();
    let health = server.health();
    tokio::spawn(server.serve(ShopServer::new(MyShop)));

    assert_eq!(ok(&["health", &addr]).await, "serving\n");
    assert_eq!(
        ok(&["health", &addr, "--service", "Shop"]).await,
        "serving\n"
    );
    health.set(ServingStatus::NotServing);
    let output = rpc(&["health", &addr], "").await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "not serving\n");
    assert!(stderr(&output).contains("the server is not serving"));
    let output = rpc(&["health", &addr, "--service", "Kv"], "").await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "service unknown\n");
    assert!(stderr(&output).contains("the server does not serve `Kv`"));

    let said = fails(&["call", &addr, "rpc.health.check"], 2).await;
    assert!(said.contains("`rpc health` checks health"), "{said}");
}

/// `rpc health --watch` prints each change until the server shuts down, and its exit code
/// follows the last status: shutting down is not serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_watch_follows_each_change_until_shutdown() {
    use std::io::BufRead;

    let server = Server::builder().bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("an address").to_string();
    let health = server.health();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server.serve_with_shutdown(ShopServer::new(MyShop), async {
        let _ = stopped.await;
    }));

    let mut watch = Command::new(env!("CARGO_BIN_EXE_rpc"))
        .args(["health", &addr, "--watch"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("runs rpc");
    let (line_sent, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let out = watch.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            if line_sent.send(line.expect("a line")).is_err() {
                return;
            }
        }
    });
    let mut next = async || within("a status", lines.recv()).await.expect("a line");
    assert_eq!(next().await, "serving");
    health.set(ServingStatus::NotServing);
    assert_eq!(next().await, "not serving");
    health.set(ServingStatus::Serving);
    assert_eq!(next().await, "serving");
    stop.send(()).expect("the server listens");
    assert_eq!(next().await, "not serving", "shutting down, first");
    let status = within(
        "rpc's exit",
        tokio::task::spawn_blocking(move || watch.wait().expect("waits")),
    )
    .await
    .expect("joins");
    assert_eq!(status.code(), Some(1));
    within("the server's end", served)
        .await
        .expect("joins")
        .expect("served");
}

#[tokio::test]
async fn describe_prints_the_service_as_rust() {
    let addr = serve(Server::builder()).await.to_string();
    let rust = ok(&["describe", &addr]).await;
    assert!(
        rust.contains("#[rpc_core::service]\npub trait Shop {"),
        "{rust}"
    );
    assert!(
        rust.contains("    async fn add(&self, a: i64, b: i64) -> i64;"),
        "{rust}"
    );
    assert!(
        rust.contains("    async fn order(&self, order: Order) -> Receipt;"),
        "{rust}"
    );
    assert!(
        rust.contains("async fn countdown(&self, from: u32) -> Streaming<u32>;"),
        "{rust}"
    );
    assert!(
        rust.contains("async fn total(&self, prices: Streaming<Price>) -> u64;"),
        "{rust}"
    );
    assert!(rust.contains("    async fn wait(&self);"), "{rust}");
    assert!(
        rust.contains(
            "    async fn prices(&self, item: String) -> Result<Streaming<u64>, NotSold>;"
        ),
        "{rust}"
    );
    assert!(rust.contains("pub struct Price(pub u64);"), "{rust}");
    assert!(rust.contains("pub enum Size {\n    Small,\n    Large {\n        grams: u32,\n    },\n    Custom(f64),\n}"), "{rust}");
    assert!(
        rust.contains("    pub extras: HashMap<String, u8>,"),
        "{rust}"
    );
    assert!(
        rust.starts_with(
            "use rpc_core::Streaming;\nuse serde::{Deserialize, Serialize};\n\
             use std::collections::HashMap;\n\n"
        ),
        "{rust}"
    );
    assert!(
        rust.contains(
            "#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]\npub struct Order {"
        ),
        "{rust}"
    );
}

#[tokio::test]
async fn call_takes_arguments_by_name_or_in_order() {
    let addr = serve(Server::builder()).await.to_string();
    assert_eq!(
        ok(&["call", &addr, "add", r#"{"a": 2, "b": 3}"#]).await,
        "5\n"
    );
    assert_eq!(ok(&["call", &addr, "add", "[40, 2]"]).await, "42\n");
    assert_eq!(ok(&["call", &addr, "whoami"]).await, "\"nobody\"\n");
}

/// Each argument may follow the method on its own, negative numbers too; a method of one
/// argument takes its value alone; a word that is not JSON is told how to quote a string,
/// before anything is sent.
#[tokio::test]
async fn call_takes_each_argument_on_its_own() {
    let addr = serve(Server::builder()).await.to_string();
    assert_eq!(ok(&["call", &addr, "add", "2", "-3"]).await, "-1\n");
    assert_eq!(ok(&["call", &addr, "countdown", "2"]).await, "2\n1\n");
    let said = fails(&["call", &addr, "add", "1", "2", "3"], 2).await;
    assert!(
        said.contains("`add` takes 2 arguments (a: i64, b: i64), and 3 were given"),
        "{said}"
    );
    let said = fails(&["call", &addr, "add", "2"], 2).await;
    assert!(
        said.contains("`add` takes 2 arguments (a: i64, b: i64), and 1 was given (the number 2)"),
        "{said}"
    );
    // Judged before connecting: no server listens at this address's port 9.
    let said = fails(&["call", "127.0.0.1:9", "add", "two", "3"], 2).await;
    assert!(
        said.contains(
            "the argument `two` is not JSON (a string is written in double quotes, inside the \
             shell's: '\"two\"')"
        ),
        "{said}"
    );
}

/// A reader of the output that goes away (`rpc call ... | head -1`) ends `rpc` quietly, with
/// exit code 0, rather than with a panic about a broken pipe.
#[tokio::test]
async fn output_closed_early_ends_quietly() {
    let addr = serve(Server::builder()).await.to_string();
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rpc"))
            .args(["call", &addr, "countdown", "4000000000"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runs rpc");
        let mut first = String::new();
        let mut items = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        std::io::BufRead::read_line(&mut items, &mut first).expect("reads an item");
        assert_eq!(first, "4000000000\n");
        drop(items);
        child.wait_with_output().expect("rpc finishes")
    })
    .await
    .expect("joins");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stderr(&output), "", "nothing said");
}

#[tokio::test]
async fn call_encodes_and_decodes_nested_types() {
    let addr = serve(Server::builder()).await.to_string();
    let order = json!({
        "order": {
            "item": "tea",
            "quantity": 2,
            "size": {"Large": {"grams": 500}},
            "note": "green",
            "tags": ["hot", "to go"],
            "extras": {"honey": 7, "lemon": 3}
        }
    });
    let printed = ok(&["call", &addr, "order", &order.to_string()]).await;
    let receipt: Value = serde_json::from_str(&printed).expect("JSON");
    assert_eq!(
        receipt,
        json!({"total": 210, "size": {"Large": {"grams": 500}}, "message": "tea x2 [hot,to go] green"})
    );

    let plain = json!({"order": {"item": "tea", "quantity": 1, "size": "Small", "note": null,
        "tags": [], "extras": {}}});
    let printed = ok(&["call", &addr, "order", &plain.to_string()]).await;
    let receipt: Value = serde_json::from_str(&printed).expect("JSON");
    assert_eq!(receipt["size"], json!("Small"));
    let custom = json!({"order": {"item": "tea", "quantity": 1, "size": {"Custom": 0.5},
        "note": null, "tags": [], "extras": {}}});
    let printed = ok(&["call", &addr, "order", &custom.to_string()]).await;
    let receipt: Value = serde_json::from_str(&printed).expect("JSON");
    assert_eq!(receipt["size"], json!({"Custom": 0.5}));
}

#[tokio::test]
async fn json_that_does_not_fit_is_refused_naming_the_field_and_the_type() {
    let addr = serve(Server::builder()).await.to_string();
    let said = fails(&["call", &addr, "add", r#"{"a": "two", "b": 3}"#], 2).await;
    assert!(
        said.contains("`a`: expected an integer (i64), found the string \"two\""),
        "{said}"
    );
    let said = fails(&["call", &addr, "add", r#"{"a": 1}"#], 2).await;
    assert!(said.contains("the argument `b` (i64) is missing"), "{said}");
    let said = fails(&["call", &addr, "add", r#"{"a": 1, "b": 2, "c": 3}"#], 2).await;
    assert!(
        said.contains("`add` has no argument `c`; its arguments are (a: i64, b: i64)"),
        "{said}"
    );
    let said = fails(&["call", &addr, "add", "[1]"], 2).await;
    assert!(
        said.contains("`add` takes 2 arguments (a: i64, b: i64), and 1 was given"),
        "{said}"
    );

    // A struct given as all the arguments, rather than by its argument's name, is told how.
    let unwrapped = json!({"item": "tea", "quantity": 1, "size": "Small", "note": null,
        "tags": [], "extras": {}});
    let said = fails(&["call", &addr, "order", &unwrapped.to_string()], 2).await;
    assert!(
        said.contains(
            "`order` has no argument `item`; its arguments are (order: Order) (an object for \
             `order` itself goes by its name: {\"order\": {...}})"
        ),
        "{said}"
    );

    let missing =
        json!({"order": {"item": "tea", "quantity": 1, "note": null, "tags": [], "extras": {}}});
    let said = fails(&["call", &addr, "order", &missing.to_string()], 2).await;
    assert!(said.contains("`order.size` (Size) is missing"), "{said}");
    let wrong_variant = json!({"order": {"item": "tea", "quantity": 1, "size": "Huge", "note": null,
        "tags": [], "extras": {}}});
    let said = fails(&["call", &addr, "order", &wrong_variant.to_string()], 2).await;
    assert!(
        said.contains(
            "`order.size`: `Size` has no variant `Huge`; its variants are Small, Large, Custom"
        ),
        "{said}"
    );
    let too_big = json!({"order": {"item": "tea", "quantity": -1, "size": "Small", "note": null,
        "tags": [], "extras": {}}});
    let said = fails(&["call", &addr, "order", &too_big.to_string()], 2).await;
    assert!(
        said.contains("`order.quantity`: -1 does not fit in u32"),
        "{said}"
    );

    let said = fails(&["call", &addr, "refund", "{}"], 2).await;
    assert!(
        said.contains("`Shop` has no method `refund`; its methods are add, order"),
        "{said}"
    );
    let said = fails(&["call", &addr, "add", "{not json"], 2).await;
    assert!(
        said.contains("the argument `{not json` is not JSON: key must be a string"),
        "{said}"
    );
}

#[tokio::test]
async fn streams_go_as_json_lines_both_ways() {
    let addr = serve(Server::builder()).await.to_string();
    assert_eq!(ok(&["call", &addr, "countdown", "[3]"]).await, "3\n2\n1\n");
    let output = rpc(&["call", &addr, "total"], "5\n7\n\n30\n").await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "42\n");

    let output = rpc(&["call", &addr, "total"], "5\n\"seven\"\n").await;
    assert_eq!(
        output.status.code(),
        Some(2),
        "bad input: {}",
        stdout(&output)
    );
    assert!(
        stderr(&output).contains("`prices[1]`: expected an integer (u64)"),
        "{}",
        stderr(&output)
    );

    // A method that returns `Result<Streaming<T>, E>`: its items, or its error and code 1.
    assert_eq!(ok(&["call", &addr, "prices", "\"tea\""]).await, "3\n4\n");
    let output = rpc(&["call", &addr, "prices", "\"gold\""], "").await;
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let printed: Value = serde_json::from_str(&stdout(&output)).expect("JSON");
    assert_eq!(printed, json!({"Err": {"Unknown": {"item": "gold"}}}));
    assert!(
        stderr(&output).contains("`prices` returned an error instead of its stream"),
        "{}",
        stderr(&output)
    );

    // Reading stops at the first bad line: the lines after it are never judged.
    let output = rpc(&["call", &addr, "total"], "\"five\"\n\"six\"\n\"seven\"\n").await;
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    let said = stderr(&output);
    assert!(said.contains("`prices[0]`"), "{said}");
    assert!(!said.contains("`prices[1]`"), "{said}");
    assert!(!said.contains("`prices[2]`"), "{said}");
}

#[tokio::test]
async fn metadata_and_deadlines_go_with_the_call() {
    let addr = serve(Server::builder()).await.to_string();
    assert_eq!(
        ok(&["call", &addr, "whoami", "-H", "user=ada"]).await,
        "\"ada\"\n"
    );
    let said = fails(&["call", &addr, "wait", "--deadline", "100ms"], 1).await;
    assert!(said.contains("deadline"), "{said}");
    let said = fails(&["call", &addr, "wait", "--deadline", "soon"], 2).await;
    assert!(said.contains("not a duration"), "{said}");
}

#[tokio::test]
async fn calls_go_over_tls_with_the_authority_given() {
    let authority = Authority::new("test CA");
    let issued = authority.issue("localhost", &["localhost", "127.0.0.1"]);
    let tls = rpc_core::tls::ServerTls::from_pem(&issued.chain, &issued.key).expect("TLS");
    let addr = serve(Server::builder().tls(tls)).await.to_string();
    let dir = ScratchDir::new("cli-tls");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, authority.pem()).expect("writes");
    let ca = ca.to_str().expect("UTF-8");
    assert_eq!(
        ok(&["call", &addr, "add", "[1, 2]", "--ca", ca]).await,
        "3\n"
    );
    let said = fails(&["call", &addr, "add", "[1, 2]"], 1).await;
    assert!(said.contains("TLS"), "a plaintext client is told: {said}");
}

/// The same service, later: `add` takes an `i32` now, and a method was added.
mod changed {
    #[rpc_core::service]
    pub(crate) trait Shop {
        async fn add(&self, a: i32, b: i64) -> i64;
        async fn order(&self, order: super::Order) -> super::Receipt;
        async fn countdown(&self, from: u32) -> rpc_core::Streaming<u32>;
        async fn total(&self, prices: rpc_core::Streaming<super::Price>) -> u64;
        async fn whoami(&self) -> String;
        async fn wait(&self);
        async fn prices(&self, item: String) -> Result<rpc_core::Streaming<u64>, super::NotSold>;
        async fn refund(&self, order: u64) -> bool;
    }
}

/// The same service with a method added, and nothing else changed.
mod grown {
    #[rpc_core::service]
    pub(crate) trait Shop {
        async fn add(&self, a: i64, b: i64) -> i64;
        async fn order(&self, order: super::Order) -> super::Receipt;
        async fn countdown(&self, from: u32) -> rpc_core::Streaming<u32>;
        async fn total(&self, prices: rpc_core::Streaming<super::Price>) -> u64;
        async fn whoami(&self) -> String;
        async fn wait(&self);
        async fn prices(&self, item: String) -> Result<rpc_core::Streaming<u64>, super::NotSold>;
        async fn refund(&self, order: u64) -> bool;
    }
}

#[tokio::test]
async fn a_lock_file_catches_incompatible_changes_and_lets_additions_pass() {
    use rpc_cli::lockfile::{self, Checked, LockError};
    use rpc_core::ServiceClient;

    let addr = serve(Server::builder()).await.to_string();
    let dir = ScratchDir::new("cli-lock");
    let file = dir.join("shop.lock.json");
    let path = file.to_str().expect("UTF-8");
    let _ = std::fs::remove_file(&file);
    let said = ok(&["lock", &addr, path]).await;
    assert!(said.contains("wrote the schema of `Shop`"), "{said}");
    assert!(ok(&["check", &addr, path]).await.contains("compatible"));

    let locked = lockfile::read(&file).expect("reads");
    assert_eq!(&locked, ShopClient::INFO.describe().expect("a schema"));

    let grown = grown::ShopClient::INFO.describe().expect("a schema");
    assert_eq!(
        lockfile::check(grown, &file).expect("compatible"),
        Checked::Compatible {
            added: vec!["refund".to_owned()]
        }
    );
    let changed = changed::ShopClient::INFO.describe().expect("a schema");
    let Err(LockError::Incompatible(changes)) = lockfile::check(changed, &file) else {
        panic!("`add` changed");
    };
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].method, "add");
    assert_eq!(
        changes[0].change,
        "the argument `a` is `i64` before and `i32` now"
    );

    // The check a user's own test makes: silent when compatible, a panic listing each
    // change and how to accept them when not.
    lockfile::assert_compatible::<ShopClient>(&file);
    let panicked = std::panic::catch_unwind(|| {
        lockfile::assert_compatible::<changed::ShopClient>(&file);
    });
    let payload = panicked.expect_err("`add` changed");
    let message = payload
        .downcast_ref::<String>()
        .expect("a formatted message");
    assert!(
        message.starts_with("the service changed in ways that break its callers:\n  - "),
        "{message}"
    );
    assert!(
        message.contains("the argument `a` is `i64` before and `i32` now"),
        "{message}"
    );
    assert!(message.ends_with("(`rpc lock`, or delete it and rerun) and commit it."));

    let fresh = dir.join("fresh.lock.json");
    let _ = std::fs::remove_file(&fresh);
    assert_eq!(
        lockfile::check(grown, &fresh).expect("written"),
        Checked::Written
    );
    assert!(fresh.exists());

    // A file that cannot be read is named.
    let missing = dir.join("missing").join("shop.lock.json");
    let unread = lockfile::read(&missing).expect_err("no such file");
    let said = unread.to_string();
    assert!(
        said.starts_with(&format!("the lock file {} ", missing.display())),
        "{said}"
    );
}

/// A second service, to serve beside `Shop`.
#[rpc_core::service]
pub trait Clock {
    /// Seconds since the epoch, fixed for the test.
    async fn now(&self) -> u64;
    /// `count` ticks, ten apart.
    async fn ticks(&self, count: u32) -> Streaming<u64>;
}

struct MyClock;

impl Clock for MyClock {
    async fn now(&self) -> u64 {
        1_700_000_000
    }

    async fn ticks(&self, count: u32) -> Streaming<u64> {
        Streaming::iter((0..u64::from(count)).map(|tick| tick * 10))
    }
}

#[tokio::test]
async fn a_server_of_several_services_is_described_and_called_service_by_service() {
    let server = Server::bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("an address").to_string();
    let services = rpc_core::Services::new()
        .add(ShopServer::new(MyShop))
        .add(ClockServer::new(MyClock));
    tokio::spawn(server.serve(services));

    let rust = ok(&["describe", &addr]).await;
    // Each service as its own schema prints it, in the order served, a blank line apart, in
    // a module of its own, so that the whole compiles where two services use types of one
    // name (each module has its own `use`s and types).
    use rpc_core::ServiceClient;
    let each = |info: &rpc_core::ServiceInfo, module: &str| {
        let rust = info.describe().expect("a schema").to_rust();
        let indented: String = rust
            .lines()
            .map(|line| match line {
                "" => "\n".to_owned(),
                line => format!("    {line}\n"),
            })
            .collect();
        format!("pub mod {module} {{\n{indented}}}\n")
    };
    assert_eq!(
        rust,
        format!(
            "{}\n{}",
            each(&ShopClient::INFO, "shop"),
            each(&ClockClient::INFO, "clock")
        )
    );
    assert!(
        rust.contains("\n    pub trait Clock {\n        async fn now(&self) -> u64;"),
        "{rust}"
    );
    let clock_only = ok(&["describe", &addr, "--service", "Clock"]).await;
    assert!(!clock_only.contains("pub trait Shop"), "{clock_only}");
    assert!(!clock_only.contains("pub mod"), "{clock_only}");
    assert!(
        clock_only.starts_with("use rpc_core::Streaming;"),
        "{clock_only}"
    );

    assert_eq!(ok(&["call", &addr, "Clock.now"]).await.trim(), "1700000000");
    assert_eq!(
        ok(&["call", &addr, "Clock.ticks", "[3]"]).await,
        "0\n10\n20\n"
    );
    assert_eq!(ok(&["call", &addr, "add", "[2, 3]"]).await.trim(), "5");

    let missing = fails(&["call", &addr, "Till.open"], 1).await;
    assert!(
        missing.contains("the server does not serve `Till`: it serves `Shop`, `Clock`"),
        "{missing}"
    );
}

/// A relay to the server at `target` that passes on what a client sends as it is, and the
/// server's hello, but changes (bytes changed, taken out, added or cut off) one in two of the
/// frames the server sends after it, framed again so that they stay frames: descriptions,
/// results and stream items alike. Each connection from its own seed, drawn from `seed`.
async fn mutating_relay(target: SocketAddr, seed: u64) -> SocketAddr {
    use rpc_tests::rng::Rng;
    use rpc_tests::{frame, read_frame_from};
    use tokio::io::AsyncWriteExt;

    let (listener, addr) = rpc_tests::loopback_listener().await;
    tokio::spawn(async move {
        let mut seeds = Rng(seed);
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                return;
            };
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
                let _ = to_server.shutdown().await;
            });
            let mut rng = Rng(seeds.next_u64());
            tokio::spawn(async move {
                let mut hello = true;
                while let Some(mut payload) = read_frame_from(&mut from_server).await {
                    if !hello && rng.below(2) == 0 {
                        rng.mutate(&mut payload);
                    }
                    hello = false;
                    if to_client.write_all(&frame(&payload)).await.is_err() {
                        return;
                    }
                }
                let _ = to_client.shutdown().await;
            });
        }
    });
    addr
}

/// `rpc` against a server whose descriptions, results and stream items come mutated: every
/// run ends, with success (a change that still decodes), a failed call (exit code 1) or input
/// the mutated description does not take (exit code 2), never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_ends_cleanly_whatever_a_mutated_server_sends() {
    const RUNS: u64 = 210;
    let addr = mutating_relay(serve(Server::builder()).await, 0x0c11_5eed_0f0d_0001).await;
    let addr = addr.to_string();
    let order = json!({"order": {"item": "tea", "quantity": 2, "size": {"Large": {"grams": 5}},
        "note": "green", "tags": ["hot"], "extras": {"honey": 7}}})
    .to_string();
    let mut codes = BTreeMap::new();
    within("every run", async {
        for run in 0..RUNS {
            // An answer whose id a change made another's is an answer to no call: its call
            // waits for its deadline, which is short here.
            let args = match run % 3 {
                0 => vec!["describe", &addr, "--deadline", "1s"],
                1 => vec!["call", &addr, "order", &order, "--deadline", "1s"],
                _ => vec!["call", &addr, "countdown", "[5]", "--deadline", "1s"],
            };
            let output = rpc(&args, "").await;
            let code = output.status.code();
            assert!(
                matches!(code, Some(0..=2)),
                "rpc {args:?} ended with {code:?}: {}",
                stderr(&output)
            );
            *codes.entry((run % 3, code)).or_insert(0) += 1;
        }
    })
    .await;
    // Of each command, some runs meet only changes that still decode, or none at all; some
    // fail.
    for command in 0..3 {
        assert!(codes.contains_key(&(command, Some(0))), "{codes:?}");
        assert!(codes.contains_key(&(command, Some(1))), "{codes:?}");
    }
}
