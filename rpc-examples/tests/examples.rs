//! The example programs run and say what they should.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

fn run(program: &str, args: &[&str]) -> (bool, String, Option<i32>) {
    let output = Command::new(program).args(args).output().expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.success(), stdout, output.status.code())
}

#[test]
fn demo_runs_end_to_end() {
    let (ok, stdout, _) = run(env!("CARGO_BIN_EXE_demo"), &[]);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("add(2, 3)  = Ok(5)"), "{stdout}");
    assert!(stdout.contains("refused: division by zero"), "{stdout}");
    assert!(stdout.contains("sum = 338350"), "{stdout}");
    assert!(stdout.contains("did 103 calculations"), "{stdout}");
    assert!(
        stdout.contains("the server does not serve `Greeter`: it serves `Calc`"),
        "{stdout}"
    );
    assert!(stdout.contains("Hello, demo!"), "{stdout}");
    assert!(stdout.ends_with("demo: done\n"), "{stdout}");
}

#[test]
fn calc_reports_application_errors_as_values() {
    let calc = env!("CARGO_BIN_EXE_calc");
    let (ok, stdout, _) = run(calc, &["84", "/", "2"]);
    assert!(ok);
    assert_eq!(stdout, "84 / 2 = 42\n");
    let (_, stdout, code) = run(calc, &["1", "/", "0"]);
    assert_eq!(
        (stdout.as_str(), code),
        ("1 / 0: division by zero\n", Some(2))
    );
    let (_, stdout, code) = run(calc, &["9223372036854775807", "+", "1"]);
    assert_eq!(code, Some(2));
    assert!(stdout.contains("does not fit"), "{stdout}");
}

/// A server in a process of its own, killed when dropped: a test that fails leaves no server
/// behind holding the test run's output open. Its standard input is closed first, for a server
/// started through a launcher (pyenv's `python3` runs Python as a child of its own, which the
/// kill does not reach) that ends at the end of its input.
struct Running {
    process: Child,
    input: Option<std::process::ChildStdin>,
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.input.take());
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Starts the server `program` on a free port; returns it and the address it printed first.
fn start_server(program: &str) -> (Running, String) {
    start_server_with(program, &[])
}

/// Starts `program` with `args` and a free port to listen on.
fn start_server_with(program: &str, args: &[&str]) -> (Running, String) {
    let mut server = Command::new(program)
        .args(args)
        .arg("127.0.0.1:0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starts the server");
    let stdout = server.stdout.take().expect("stdout");
    let server = Running {
        input: server.stdin.take(),
        process: server,
    };
    let mut first_line = String::new();
    BufReader::new(stdout)
        .read_line(&mut first_line)
        .expect("reads the address");
    let addr = first_line
        .trim()
        .strip_prefix("listening on ")
        .expect("the server prints its address first")
        .to_owned();
    (server, addr)
}

#[test]
fn hello_client_talks_to_hello_server_in_another_process() {
    let (server, addr) = start_server(env!("CARGO_BIN_EXE_hello_server"));
    let output = Command::new(env!("CARGO_BIN_EXE_hello_client"))
        .args(["Ada", "Grace"])
        .env("HELLO_ADDR", &addr)
        .output()
        .expect("runs the client");
    drop(server);
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "Hello, Ada!\nHello, Grace!\n"
    );
}

/// A client in Python, written from docs/wire.md alone, makes calls, streams both ways and
/// breaks the protocol on purpose against `example_server`, checking every answer against the
/// document. Skipped, saying so, where python3 is not installed.
#[test]
fn a_client_written_from_the_wire_document_speaks_to_the_example_server() {
    if !python3() {
        return;
    }
    let (server, addr) = start_server(env!("CARGO_BIN_EXE_example_server"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/wire_client.py");
    let output = Command::new("python3")
        .args([script, &addr])
        .output()
        .expect("runs the client");
    drop(server);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.ends_with("all checks passed\n"), "{stdout}");
}

/// Whether python3 runs here; the tests of the clients and servers in Python skip, saying so,
/// where it does not.
fn python3() -> bool {
    let found = Command::new("python3").arg("--version").output().is_ok();
    if !found {
        eprintln!("skipped: python3 is not installed");
    }
    found
}

/// The server in Python written from docs/wire.md (`interop/wire_server.py`), ending with its
/// standard input; `None` where python3 is not installed.
fn start_python_server() -> Option<(Running, String)> {
    if !python3() {
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/wire_server.py");
    Some(start_server_with("python3", &[script, "--exit-with-stdin"]))
}

/// rpc-core's generated clients call a server in Python written from docs/wire.md alone: calls
/// and application errors, a streamed result of 100,000 items that needs credit granted back,
/// one dropped midway, and uploads within and over the server's limit, under a window of 64 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_clients_call_a_server_written_from_the_wire_document() {
    use futures_util::StreamExt;
    use rpc_core::Streaming;
    use rpc_examples::streams::{FileStoreClient, LogTailClient, UploadError, checksum};
    use rpc_examples::{CalcClient, MathError};
    use serde_bytes::ByteBuf;

    let Some((server, addr)) = start_python_server() else {
        return;
    };
    let calc = CalcClient::builder()
        .keepalive(
            std::time::Duration::from_millis(20),
            std::time::Duration::from_secs(30),
        )
        .connect(addr.as_str())
        .await
        .expect("the handshake with the Python server");
    assert_eq!(calc.add(2, 3).await.expect("add"), Ok(5));
    assert_eq!(
        calc.div(1, 0).await.expect("div"),
        Err(MathError::DivideByZero)
    );
    assert_eq!(
        calc.mul(i64::MAX, 2).await.expect("mul"),
        Err(MathError::Overflow)
    );
    assert_eq!(calc.count().await.expect("count"), 3);

    let log = LogTailClient::connect(addr.as_str())
        .await
        .expect("connects");
    let mut lines = log.tail(0).await.expect("tail");
    let mut read = 0u64;
    while let Some(line) = lines.next().await {
        read += 1;
        assert_eq!(line.expect("an item"), format!("line {read}"));
    }
    assert_eq!(
        read, 100_000,
        "every line, as the client granted credit back"
    );
    let mut lines = log.tail(10).await.expect("tail");
    let first = lines.next().await.expect("an item").expect("a line");
    assert_eq!(first, "line 11");
    drop(lines); // cancels the call on the server
    let last: Vec<String> = log
        .tail(99_998)
        .await
        .expect("tail")
        .map(|line| line.expect("a line"))
        .collect()
        .await;
    assert_eq!(last, ["line 99999", "line 100000"]);

    let store = FileStoreClient::connect(addr.as_str())
        .await
        .expect("connects");
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<ByteBuf> = data
        .chunks(10_000)
        .map(|c| ByteBuf::from(c.to_vec()))
        .collect();
    let receipt = store
        .upload("a.bin".into(), Streaming::iter(chunks))
        .await
        .expect("upload")
        .expect("within the limit");
    assert_eq!((receipt.bytes, receipt.chunks), (1_000_000, 100));
    assert_eq!(receipt.checksum, checksum(&data));
    let too_large = std::iter::repeat_with(|| ByteBuf::from(vec![7u8; 100_000])).take(20);
    let refused = store
        .upload("b.bin".into(), Streaming::iter(too_large))
        .await
        .expect("answered");
    assert_eq!(refused, Err(UploadError::TooLarge { limit: 1 << 20 }));
    assert_eq!(
        calc.count()
            .await
            .expect("the first connection still works"),
        3
    );
    drop(server);
}

/// The server in Python calls back a client that serves `Greeter` (docs/wire.md section 12):
/// it opens the reverse connection inside the client's, checks the client's reverse Hello and
/// its fingerprint, and answers `add` only once `hello("Calc")` has come back right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_written_from_the_wire_document_calls_its_client_back() {
    use rpc_examples::{CalcClient, FriendlyGreeter, GreeterServer};

    let Some((server, addr)) = start_python_server() else {
        return;
    };
    let calc = CalcClient::builder()
        .serve(GreeterServer::new(FriendlyGreeter))
        .connect(addr.as_str())
        .await
        .expect("the handshake with the Python server");
    assert_eq!(
        calc.add(2, 3).await.expect("add, after the call back"),
        Ok(5)
    );
    assert_eq!(calc.add(4, 5).await.expect("add, after another"), Ok(9));
    drop(server);
}

#[test]
fn tail_follows_the_log_and_stops() {
    let (ok, stdout, _) = run(env!("CARGO_BIN_EXE_tail"), &[]);
    assert!(ok, "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 14, "{stdout}");
    assert_eq!(lines[0], "tail: boot step 1 done", "the backlog first");
    assert_eq!(
        lines[3], "tail: request 1 served",
        "then new lines as written"
    );
    assert_eq!(lines[9], "tail: request 7 served");
    assert_eq!(lines[10], "tail: stopped after 10 lines");
    assert_eq!(lines[11], "tail: written already: boot step 1 done");
    assert_eq!(lines[12], "tail: written already: boot step 2 done");
    assert!(
        lines[13].starts_with("tail: 1000000 lines refused: the log holds "),
        "a stream refused before it starts: {stdout}"
    );
}

#[test]
fn upload_sends_a_file_in_chunks() {
    let (ok, stdout, _) = run(env!("CARGO_BIN_EXE_upload"), &[]);
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains("sending generated.bin, 5242880 bytes in 80 chunks"),
        "{stdout}"
    );
    assert!(
        stdout.contains("received 5242880 bytes in 80 chunks"),
        "{stdout}"
    );
    assert!(stdout.ends_with("upload: checksums match\n"), "{stdout}");
}

#[test]
fn chat_relays_lines_both_ways() {
    let (ok, stdout, _) = run(env!("CARGO_BIN_EXE_chat"), &[]);
    assert!(ok, "{stdout}");
    assert_eq!(
        stdout,
        "chat: alice: hi bob\n\
         chat: bob: hi alice, streaming works\n\
         chat: alice: both ways, on one call each\n\
         chat: both members heard all 3 lines\n"
    );
}

#[test]
fn dispatch_survives_a_worker_killed_mid_job() {
    let (ok, stdout, _) = run(
        env!("CARGO_BIN_EXE_dispatch"),
        &["--workers", "3", "--tasks", "3000"],
    );
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains("(kill -9) with tasks in flight"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("counted").count(),
        4,
        "three workers and the check: {stdout}"
    );
    assert!(
        stdout.contains(
            "verified: 3000 tasks, each counted exactly once; 216816 primes below 3000000"
        ),
        "{stdout}"
    );
    // The pool's state while it ran: each worker connected at some point, and at the end the
    // killed one is not.
    assert!(stdout.contains("dispatch: pool: "), "{stdout}");
    assert!(stdout.contains(" connected"), "{stdout}");
    assert!(
        stdout.contains("dispatch: pool at the end: 2 of 3 workers connected"),
        "{stdout}"
    );
}

#[test]
fn middleware_audits_every_call_through_the_rate_limit() {
    let (ok, stdout, _) = run(env!("CARGO_BIN_EXE_middleware"), &[]);
    assert!(ok, "{stdout}");
    let audited = stdout
        .lines()
        .filter(|line| line.starts_with("audit: 127.0.0.1:") && line.contains("Quotes.quote"))
        .filter(|line| line.contains("answered"))
        .count();
    assert_eq!(audited, 8, "{stdout}");
    assert!(stdout.contains(" RUST = 3340 cents"), "{stdout}");
    assert!(stdout.contains("8 quotes in"), "{stdout}");
}

#[test]
fn workers_dial_out_and_the_coordinator_survives_one_killed_and_one_leaving() {
    let (ok, stdout, _) = run(env!("CARGO_BIN_EXE_workers"), &["--tasks", "3000"]);
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains("(kill -9) with tasks in flight"),
        "{stdout}"
    );
    // Three workers, then the ones started in the places of the killed one and the one that
    // left.
    assert_eq!(stdout.matches(" joined").count(), 5, "{stdout}");
    assert!(
        stdout.contains("left the pool, the tasks it ran done"),
        "{stdout}"
    );
    assert!(
        stdout.contains("workers: 3 workers in the pool at the end"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "workers: verified: 3000 tasks, each counted exactly once; 216816 primes below 3000000"
        ),
        "{stdout}"
    );
}
