//! Where a system's server and its clients run: in two processes on default runtimes (what
//! users run), in one process on one shared runtime, or on two single-thread runtimes.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::counters::Counters;
use crate::systems::System;
use crate::systems::certs;

/// Where the server and the clients run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// The server in a child process, each process on the default multi-thread runtime, as
    /// `#[tokio::main]` makes it: what users run.
    CrossProcess,
    /// Server and clients in one process, on one default multi-thread runtime.
    Shared,
    /// Server and clients in one process, each on a runtime with one worker thread of its own.
    Isolated,
}

impl Setup {
    /// Every setup, the headline first.
    pub const ALL: [Setup; 3] = [Setup::CrossProcess, Setup::Shared, Setup::Isolated];

    /// The name `--setup` takes.
    pub fn name(self) -> &'static str {
        match self {
            Setup::CrossProcess => "cross-process",
            Setup::Shared => "shared",
            Setup::Isolated => "isolated",
        }
    }

    /// The setup called `name`.
    pub fn from_name(name: &str) -> Option<Setup> {
        Setup::ALL.into_iter().find(|setup| setup.name() == name)
    }

    /// What the setup is, in a sentence.
    pub fn describe(self) -> &'static str {
        match self {
            Setup::CrossProcess => {
                "The server runs in a child process of the benchmark; each process uses the \
                 default multi-thread runtime (`#[tokio::main]`, one worker per core), as users \
                 run a server and a client."
            }
            Setup::Shared => {
                "Server and clients run in one process, on one default multi-thread runtime."
            }
            Setup::Isolated => {
                "Server and clients run in one process, each on a runtime with one worker \
                 thread of its own."
            }
        }
    }
}

/// A server's address, and a way to read its process's counters.
#[derive(Debug)]
pub struct ServerEnd {
    pub addr: SocketAddr,
    remote: Option<Mutex<Remote>>,
}

impl ServerEnd {
    /// The counters of every process taking part: this one, and the server's if it has its
    /// own.
    pub fn counters(&self) -> Counters {
        let here = Counters::here();
        match &self.remote {
            None => here,
            Some(remote) => {
                let mut remote = remote.lock().expect("the counters' lock");
                here + remote.counters()
            }
        }
    }
}

/// One system deployed in one setup: the runtimes and the server's process, if it has one.
#[derive(Debug)]
pub struct Deployment {
    clients: tokio::runtime::Runtime,
    /// The server's own runtime, in the isolated setup; dropped after the clients'.
    _servers: Option<tokio::runtime::Runtime>,
    pub server: Arc<ServerEnd>,
}

impl Deployment {
    /// Starts `S`'s server as `setup` has it.
    pub fn start<S: System>(setup: Setup) -> Deployment {
        match setup {
            Setup::CrossProcess => {
                let remote = Remote::spawn(S::NAME);
                Deployment {
                    clients: default_runtime(),
                    _servers: None,
                    server: Arc::new(ServerEnd {
                        addr: remote.addr,
                        remote: Some(Mutex::new(remote)),
                    }),
                }
            }
            Setup::Shared => {
                let runtime = default_runtime();
                let addr = runtime.block_on(S::serve());
                Deployment {
                    clients: runtime,
                    _servers: None,
                    server: Arc::new(ServerEnd { addr, remote: None }),
                }
            }
            Setup::Isolated => {
                let servers = one_thread_runtime();
                let addr = servers.block_on(S::serve());
                Deployment {
                    clients: one_thread_runtime(),
                    _servers: Some(servers),
                    server: Arc::new(ServerEnd { addr, remote: None }),
                }
            }
        }
    }

    /// Runs `work` as a task on the clients' runtime, and waits for its output.
    ///
    /// A task, not `block_on`: `block_on` would run it on the calling thread, one more thread
    /// than the runtime has.
    pub fn run<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> T {
        self.clients
            .block_on(self.clients.spawn(work))
            .expect("the benchmark runs to its end")
    }
}

/// Tells a server process to trace as its parent does.
const TRACING_VARIABLE: &str = "RPC_BENCH_TRACING";

/// Installs, for the rest of this process, a subscriber that records every span and event (in
/// `tracing-subscriber`'s registry) and writes nothing: what tracing costs a program that has a
/// subscriber, before the cost of its output. Server processes started afterwards do the same.
pub fn trace_everything() {
    use tracing_subscriber::layer::SubscriberExt;
    let subscriber =
        tracing_subscriber::registry().with(tracing_subscriber::layer::Identity::new());
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
}

/// The runtime `#[tokio::main]` builds.
fn default_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A multi-thread runtime with one worker.
fn one_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A server in a child process: this program run as `rpc-bench --serve SYSTEM`, which prints
/// its address, then answers each `counters` line on its standard input with its counters, and
/// exits when its standard input closes.
#[derive(Debug)]
struct Remote {
    addr: SocketAddr,
    child: Child,
    commands: ChildStdin,
    answers: BufReader<ChildStdout>,
}

impl Remote {
    fn spawn(system: &str) -> Remote {
        let program = std::env::current_exe().expect("the benchmark's own path");
        let mut command = Command::new(program);
        if tracing::dispatcher::has_been_set() {
            command.env(TRACING_VARIABLE, "1");
        }
        let mut child = command
            .args(["--serve", system])
            .env(certs::DIR_VARIABLE, certs::dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starts the server's process");
        let commands = child.stdin.take().expect("a pipe to the server");
        let mut answers = BufReader::new(child.stdout.take().expect("a pipe from the server"));
        let mut line = String::new();
        answers.read_line(&mut line).expect("the server's address");
        let addr = line.trim().parse().expect("an address");
        Remote {
            addr,
            child,
            commands,
            answers,
        }
    }

    fn counters(&mut self) -> Counters {
        writeln!(self.commands, "counters").expect("asks the server");
        let mut line = String::new();
        self.answers
            .read_line(&mut line)
            .expect("the server answers");
        Counters::from_line(&line).expect("counters")
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child's side of [`Remote`]: serves `system` on the default runtime until its standard
/// input closes.
pub fn serve_child(system: &str) -> Result<(), String> {
    if std::env::var_os(TRACING_VARIABLE).is_some() {
        trace_everything();
    }
    use crate::systems::raw::Raw;
    use crate::systems::rpc::{RpcCore, RpcCoreTls};
    use crate::systems::tarpc::Tarpc;
    use crate::systems::tonic::{Tonic, TonicTls};
    let runtime = default_runtime();
    let addr = match system {
        RpcCore::NAME => runtime.block_on(RpcCore::serve()),
        Tarpc::NAME => runtime.block_on(Tarpc::serve()),
        Tonic::NAME => runtime.block_on(Tonic::serve()),
        Raw::NAME => runtime.block_on(Raw::serve()),
        RpcCoreTls::NAME => runtime.block_on(RpcCoreTls::serve()),
        TonicTls::NAME => runtime.block_on(TonicTls::serve()),
        other => return Err(format!("no system called {other}")),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{addr}").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim() == "counters" {
            writeln!(out, "{}", Counters::here().to_line()).map_err(|e| e.to_string())?;
            out.flush().map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
