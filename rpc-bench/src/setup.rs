//! Where a system's server and its clients run: in two processes on default runtimes (what
//! users run), in one process on one shared runtime, on two single-thread runtimes, or on two
//! machines.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use crate::counters::Counters;
use crate::systems::System;
use crate::systems::certs;
use crate::systems::raw::Raw;
use crate::systems::rpc::{
    RpcCore, RpcCoreBusyClient, RpcCoreBusyServer, RpcCoreFourConnections, RpcCoreNoBusyPoll,
    RpcCoreTls, RpcCoreToken,
};
use crate::systems::tarpc::Tarpc;
use crate::systems::tonic::{Tonic, TonicTls};
use crate::systems::wire::RpcCoreRawClient;

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
    /// The servers on another machine (`rpc-bench --serve-all`), the clients here; each on the
    /// default multi-thread runtime. Chosen with `--remote`, never part of a full run.
    Remote,
}

/// A free port on the loopback interface, where the servers of the one-machine setups listen.
pub const LOOPBACK: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// The systems `rpc-bench --serve-all` serves, on its port and the ones after it in this order.
/// The TLS systems are not among them: their certificate is made for the loopback interface.
pub const SERVED_FOR_REMOTE: [&str; 4] = [RpcCore::NAME, Tarpc::NAME, Tonic::NAME, Raw::NAME];

/// Where `rpc-bench --serve-all` serves the first of [`SERVED_FOR_REMOTE`], for the remote
/// setup; set once, from `--remote`.
static REMOTE_SERVERS: OnceLock<SocketAddr> = OnceLock::new();

/// Makes the remote setup call the servers that `rpc-bench --serve-all` started at `first`.
pub fn use_remote_servers(first: SocketAddr) {
    REMOTE_SERVERS
        .set(first)
        .expect("the remote servers are chosen once");
}

/// The system among [`SERVED_FOR_REMOTE`] whose server `system`'s client calls: its own, but
/// for `rpc-core-raw-client`, a hand-written client of rpc-core's server.
pub fn served_as(system: &str) -> &str {
    if system == RpcCoreRawClient::NAME {
        RpcCore::NAME
    } else {
        system
    }
}

/// The address of the server that `system`'s client calls among those served from `first` on.
fn served_at(first: SocketAddr, system: &str) -> Option<SocketAddr> {
    let system = served_as(system);
    let index = SERVED_FOR_REMOTE.iter().position(|name| *name == system)?;
    let port = first.port().checked_add(u16::try_from(index).ok()?)?;
    Some(SocketAddr::new(first.ip(), port))
}

impl Setup {
    /// Every setup, the headline first.
    pub const ALL: [Setup; 3] = [Setup::CrossProcess, Setup::Shared, Setup::Isolated];

    /// The name `--setup` takes (`remote` is chosen with `--remote` instead).
    pub fn name(self) -> &'static str {
        match self {
            Setup::CrossProcess => "cross-process",
            Setup::Shared => "shared",
            Setup::Isolated => "isolated",
            Setup::Remote => "remote",
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
            Setup::Remote => {
                "The servers run on another machine (`rpc-bench --serve-all`), the clients on \
                 this one, each process on the default multi-thread runtime. Allocations, heap \
                 and page faults are not measured: they count both processes."
            }
        }
    }
}

/// A server's address, and a way to read its process's counters.
#[derive(Debug)]
pub struct ServerEnd {
    pub addr: SocketAddr,
    process: ServerProcess,
}

/// Where a server runs, for its counters.
#[derive(Debug)]
enum ServerProcess {
    /// In this process.
    This,
    /// In a child process of this one, which answers for its counters.
    Child(Mutex<ChildServer>),
    /// On another machine: its counters cannot be read.
    Elsewhere,
}

impl ServerEnd {
    /// The counters of every process taking part: this one, and the server's if it has its
    /// own; `None` when the server runs on another machine.
    pub fn counters(&self) -> Option<Counters> {
        let here = Counters::here();
        match &self.process {
            ServerProcess::This => Some(here),
            ServerProcess::Child(child) => {
                let mut child = child.lock().expect("the counters' lock");
                Some(here + child.counters())
            }
            ServerProcess::Elsewhere => None,
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
                let child = ChildServer::spawn(S::NAME);
                Deployment {
                    clients: default_runtime(),
                    _servers: None,
                    server: Arc::new(ServerEnd {
                        addr: child.addr,
                        process: ServerProcess::Child(Mutex::new(child)),
                    }),
                }
            }
            Setup::Shared => {
                let runtime = default_runtime();
                let addr = runtime
                    .block_on(S::serve(LOOPBACK))
                    .expect("serves on loopback");
                Deployment {
                    clients: runtime,
                    _servers: None,
                    server: Arc::new(ServerEnd {
                        addr,
                        process: ServerProcess::This,
                    }),
                }
            }
            Setup::Isolated => {
                let servers = one_thread_runtime();
                let addr = servers
                    .block_on(S::serve(LOOPBACK))
                    .expect("serves on loopback");
                Deployment {
                    clients: one_thread_runtime(),
                    _servers: Some(servers),
                    server: Arc::new(ServerEnd {
                        addr,
                        process: ServerProcess::This,
                    }),
                }
            }
            Setup::Remote => {
                let first = REMOTE_SERVERS
                    .get()
                    .expect("`--remote` names the servers of the remote setup");
                let addr = served_at(*first, S::NAME).unwrap_or_else(|| {
                    panic!("`rpc-bench --serve-all` does not serve {}", S::NAME)
                });
                Deployment {
                    clients: default_runtime(),
                    _servers: None,
                    server: Arc::new(ServerEnd {
                        addr,
                        process: ServerProcess::Elsewhere,
                    }),
                }
            }
        }
    }

    /// Runs `work` on this thread, in the clients' runtime's `block_on`, as a program's
    /// `#[tokio::main]` function runs: one thread more than the runtime's workers, which wakes
    /// it for each answer.
    pub fn run_here<T>(&self, work: impl Future<Output = T>) -> T {
        self.clients.block_on(work)
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

/// The subscriber [`trace_everything`] installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscriber {
    /// `tracing-subscriber`'s registry, which records every span and event, and writes
    /// nothing: what tracing costs before any output.
    Registry,
    /// `tracing-subscriber`'s `fmt` subscriber as `fmt::init()` builds it, at `INFO`, writing
    /// to nowhere: what a program that logs through `tracing` has, before the cost of writing
    /// its lines. It formats each span's fields when the span is made or records more.
    Fmt,
}

impl Subscriber {
    fn name(self) -> &'static str {
        match self {
            Subscriber::Registry => "registry",
            Subscriber::Fmt => "fmt",
        }
    }

    /// The subscriber called `name` (as `--tracing` takes it).
    pub fn from_name(name: &str) -> Option<Self> {
        [Subscriber::Registry, Subscriber::Fmt]
            .into_iter()
            .find(|subscriber| subscriber.name() == name)
    }
}

/// The subscriber this process installed, if any.
static TRACING: std::sync::OnceLock<Subscriber> = std::sync::OnceLock::new();

/// Installs `subscriber` for the rest of this process. Server processes started afterwards do
/// the same.
pub fn trace_everything(subscriber: Subscriber) {
    use tracing_subscriber::layer::SubscriberExt;
    TRACING.set(subscriber).expect("the only subscriber");
    let set = match subscriber {
        Subscriber::Registry => tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(tracing_subscriber::layer::Identity::new()),
        ),
        // As `fmt::init()` builds it, at its default level.
        Subscriber::Fmt => tracing::subscriber::set_global_default(
            tracing_subscriber::fmt()
                .with_writer(std::io::sink)
                .finish(),
        ),
    };
    set.expect("the only subscriber");
}

/// Tells a server process to record metrics as its parent does.
const METRICS_VARIABLE: &str = "RPC_BENCH_METRICS";

/// Whether this process installed a recorder ([`record_metrics`]).
static RECORDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Installs, for the rest of this process, a Prometheus recorder (which keeps every metric for
/// a scrape that never comes here): what rpc-core's `metrics` feature costs a program that
/// exports its metrics. Server processes started afterwards do the same.
#[cfg(feature = "metrics")]
pub fn record_metrics() {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder");
    RECORDING.store(true, std::sync::atomic::Ordering::Relaxed);
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
/// exits on an `exit` line or when its standard input closes.
#[derive(Debug)]
struct ChildServer {
    addr: SocketAddr,
    child: Child,
    commands: ChildStdin,
    answers: BufReader<ChildStdout>,
}

impl ChildServer {
    fn spawn(system: &str) -> ChildServer {
        let program = std::env::current_exe().expect("the benchmark's own path");
        let mut command = Command::new(program);
        if let Some(subscriber) = TRACING.get() {
            command.env(TRACING_VARIABLE, subscriber.name());
        }
        if RECORDING.load(std::sync::atomic::Ordering::Relaxed) {
            command.env(METRICS_VARIABLE, "1");
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
        ChildServer {
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

impl Drop for ChildServer {
    /// Asks the server to exit, so that it ends as a process does (a profiler watching it, such
    /// as `valgrind --trace-children=yes`, then writes what it counted); kills it if it cannot
    /// be asked.
    fn drop(&mut self) {
        if writeln!(self.commands, "exit").is_err() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The child's side of [`ChildServer`]: serves `system` on the default runtime until told to
/// exit or its standard input closes.
pub fn serve_child(system: &str) -> Result<(), String> {
    if let Ok(name) = std::env::var(TRACING_VARIABLE) {
        let subscriber = Subscriber::from_name(&name).ok_or("no such subscriber")?;
        trace_everything(subscriber);
    }
    #[cfg(feature = "metrics")]
    if std::env::var_os(METRICS_VARIABLE).is_some() {
        record_metrics();
    }
    let runtime = default_runtime();
    let addr = match system {
        RpcCoreTls::NAME => runtime.block_on(RpcCoreTls::serve(LOOPBACK))?,
        RpcCoreNoBusyPoll::NAME => runtime.block_on(RpcCoreNoBusyPoll::serve(LOOPBACK))?,
        RpcCoreBusyServer::NAME => runtime.block_on(RpcCoreBusyServer::serve(LOOPBACK))?,
        RpcCoreBusyClient::NAME => runtime.block_on(RpcCoreBusyClient::serve(LOOPBACK))?,
        RpcCoreFourConnections::NAME => {
            runtime.block_on(RpcCoreFourConnections::serve(LOOPBACK))?
        }
        RpcCoreToken::NAME => runtime.block_on(RpcCoreToken::serve(LOOPBACK))?,
        RpcCoreRawClient::NAME => runtime.block_on(RpcCoreRawClient::serve(LOOPBACK))?,
        TonicTls::NAME => runtime.block_on(TonicTls::serve(LOOPBACK))?,
        other => runtime.block_on(serve_plain(other, LOOPBACK))?,
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{addr}").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        match line.trim() {
            "counters" => {
                writeln!(out, "{}", Counters::here().to_line()).map_err(|e| e.to_string())?;
                out.flush().map_err(|e| e.to_string())?;
            }
            // At once, without waiting for the runtime's tasks: the benchmark is done with them.
            "exit" => std::process::exit(0),
            _ => {}
        }
    }
    Ok(())
}

/// Starts the server of `system`, one of [`SERVED_FOR_REMOTE`], listening on `bind`, on the
/// current runtime.
async fn serve_plain(system: &str, bind: SocketAddr) -> Result<SocketAddr, String> {
    match system {
        RpcCore::NAME => RpcCore::serve(bind).await,
        Tarpc::NAME => Tarpc::serve(bind).await,
        Tonic::NAME => Tonic::serve(bind).await,
        Raw::NAME => Raw::serve(bind).await,
        other => Err(format!("no system called {other}")),
    }
}

/// `rpc-bench --serve-all ADDR`: serves each of [`SERVED_FOR_REMOTE`] on the default runtime,
/// the first on `first` and each next one on the next port, for `rpc-bench --remote` to call
/// from another machine; prints where each listens, and serves until the process is stopped.
pub fn serve_all(first: SocketAddr) -> Result<(), String> {
    let runtime = default_runtime();
    runtime.block_on(async {
        for system in SERVED_FOR_REMOTE {
            let bind = served_at(first, system)
                .ok_or_else(|| format!("no port after {first} for {system}"))?;
            let addr = serve_plain(system, bind)
                .await
                .map_err(|error| format!("{system}: {error}"))?;
            println!("{system} listening on {addr}");
        }
        println!(
            "on the client's machine: rpc-bench --remote {first} (the address this machine \
             is reached at, with port {})",
            first.port()
        );
        std::future::pending::<Result<(), String>>().await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--serve-all` and `--remote` agree on where each system is: the one named first on the
    /// port given, each next one on the next port.
    #[test]
    fn each_served_system_is_on_the_port_after_the_one_before() {
        let first: SocketAddr = "192.0.2.7:7700".parse().expect("an address");
        let ports: Vec<u16> = SERVED_FOR_REMOTE
            .iter()
            .map(|system| served_at(first, system).expect("served").port())
            .collect();
        assert_eq!(ports, [7700, 7701, 7702, 7703]);
        let tonic = served_at(first, Tonic::NAME).expect("served");
        assert_eq!(tonic, "192.0.2.7:7702".parse().expect("an address"));
        assert_eq!(
            served_at(first, RpcCoreRawClient::NAME),
            Some(first),
            "the hand-written client calls rpc-core's server"
        );
    }

    /// The remote setup calls the server that `--serve-all` put first, at the address given to
    /// `--remote`, and counts nothing of a process it cannot read. (The only test that chooses
    /// the remote servers: they are chosen once per process.)
    #[test]
    fn the_remote_setup_calls_the_servers_given_and_counts_nothing_of_them() {
        let servers = default_runtime();
        let first = servers
            .block_on(serve_plain(SERVED_FOR_REMOTE[0], LOOPBACK))
            .expect("serves rpc-core");
        use_remote_servers(first);
        let deployment = Deployment::start::<RpcCore>(Setup::Remote);
        assert_eq!(deployment.server.addr, first);
        assert_eq!(deployment.server.counters(), None);
        let server = Arc::clone(&deployment.server);
        let (sum, allocations) = deployment.run(async move {
            let mut client = RpcCore::connect(server.addr).await;
            let sum = RpcCore::add(&mut client, 2, 3).await;
            let effort = crate::workloads::Effort::QUICK;
            let allocations =
                crate::workloads::allocations_per_call::<RpcCore>(&server, &mut client, effort);
            (sum, allocations.await)
        });
        assert_eq!(sum, 5);
        assert_eq!(allocations, None);
    }

    /// A system `--serve-all` does not serve has no address, nor does one whose port would be
    /// past the last.
    #[test]
    fn no_address_for_a_system_not_served_or_past_the_last_port() {
        let first: SocketAddr = "192.0.2.7:7700".parse().expect("an address");
        assert_eq!(served_at(first, RpcCoreTls::NAME), None);
        let last: SocketAddr = "192.0.2.7:65534".parse().expect("an address");
        assert!(served_at(last, RpcCore::NAME).is_some());
        assert_eq!(served_at(last, Tonic::NAME), None);
    }
}
