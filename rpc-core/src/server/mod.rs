//! The server side: listening, accepting, serving connections, shutting down gracefully.
//!
//! ```no_run
//! # #[rpc_core::service] pub trait Calc { async fn add(&self, a: i64, b: i64) -> i64; }
//! # struct MyCalc;
//! # impl Calc for MyCalc { async fn add(&self, a: i64, b: i64) -> i64 { a + b } }
//! # async fn run() -> std::io::Result<()> {
//! use std::time::Duration;
//!
//! let server = rpc_core::Server::builder()
//!     .max_connections(1000)
//!     .max_in_flight_per_connection(256)
//!     .shutdown_grace(Duration::from_secs(10))
//!     .bind("127.0.0.1:7000")
//!     .await?;
//! println!("listening on {}", server.local_addr()?);
//! // Runs until Ctrl-C, then lets running calls finish for up to 10 s.
//! let ctrl_c = async { tokio::signal::ctrl_c().await.ok(); };
//! server.serve_with_shutdown(CalcServer::new(MyCalc), ctrl_c).await
//! # }
//! ```

mod attention;
mod calls;
mod connection;
mod kept_box;
mod listener;
mod services;

pub(crate) use calls::panic_message;
#[cfg(feature = "tower")]
pub mod middleware;
mod registry;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "tls")]
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Either};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::alarm;
use crate::intercept::ServerInterceptor;
use crate::metadata::MetadataLimits;
use crate::peer::Peer;
#[cfg(unix)]
use crate::peer::PeerCredentials;
use crate::peer_process::PeerProcess;
use crate::protocol::{self, Budget, DEFAULT_MAX_FRAME_LEN, FrameMemory, KeepAlive};
use crate::slots::HeldRequests;
use crate::transport;
use crate::{Context, RpcError, Status};
use attention::Attention;
use listener::{AcceptError, Accepted, Listener};
use registry::{Handshake, Registry};
pub(crate) use services::Served;
pub use services::{ServiceSet, Services};

/// A bound listener, ready to serve a service.
pub struct Server {
    listener: Listener,
    config: Arc<ServerConfig>,
}

/// Settings for a server's connections, with bounded defaults.
#[derive(Debug)]
#[must_use = "a builder does nothing until it binds or serves"]
pub struct ServerBuilder {
    config: ServerConfig,
}

/// A clone has a health status of its own ([`ServerBuilder::health`]): each server reports its
/// own, even when two are built from one builder.
impl Clone for ServerBuilder {
    fn clone(&self) -> Self {
        let mut config = self.config.clone();
        config.health = crate::health::HealthReporter::default();
        ServerBuilder { config }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    pub(crate) max_frame_len: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) max_connections: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) keepalive: Option<KeepAlive>,
    pub(crate) shutdown_grace: Duration,
    pub(crate) metadata: MetadataLimits,
    pub(crate) max_queued_per_connection: usize,
    pub(crate) max_queued: usize,
    pub(crate) max_argument_bytes_per_connection: usize,
    pub(crate) max_argument_bytes: usize,
    pub(crate) max_frame_memory: usize,
    pub(crate) stream_window: u32,
    pub(crate) max_uploads: usize,
    pub(crate) panic_messages: bool,
    /// The most window of busy polling, for clients in other processes; zero for none.
    pub(crate) busy_poll: Duration,
    pub(crate) reflection: bool,
    /// The server's status, as health calls report it.
    pub(crate) health: crate::health::HealthReporter,
    pub(crate) interceptor: Option<ServerInterceptor>,
    /// The handles of the calls' metrics, shared by the servers the builder makes.
    pub(crate) meters: Arc<crate::telemetry::Meters>,
    #[cfg(feature = "tower")]
    pub(crate) layers: middleware::Layers,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::tls::ServerTls>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            config: ServerConfig {
                max_frame_len: DEFAULT_MAX_FRAME_LEN,
                max_in_flight: 1024,
                max_connections: 10_000,
                handshake_timeout: Duration::from_secs(10),
                idle_timeout: Some(Duration::from_secs(300)),
                keepalive: Some(KeepAlive::DEFAULT),
                shutdown_grace: Duration::from_secs(30),
                metadata: MetadataLimits::DEFAULT,
                max_queued_per_connection: protocol::DEFAULT_QUEUE_LIMIT,
                max_queued: 256 * 1024 * 1024,
                max_argument_bytes_per_connection: 64 * 1024 * 1024,
                max_argument_bytes: 1024 * 1024 * 1024,
                max_frame_memory: 1024 * 1024 * 1024,
                stream_window: crate::stream::DEFAULT_WINDOW,
                max_uploads: 64,
                panic_messages: false,
                busy_poll: crate::protocol::busy::DEFAULT_WINDOW,
                reflection: true,
                health: crate::health::HealthReporter::default(),
                interceptor: None,
                meters: Arc::new(crate::telemetry::Meters::new(
                    crate::telemetry::Side::Server,
                )),
                #[cfg(feature = "tower")]
                layers: middleware::Layers::default(),
                #[cfg(feature = "tls")]
                tls: None,
            },
        }
    }
}

impl ServerBuilder {
    /// Serves every TCP connection over TLS: the handshake, within the
    /// [handshake timeout](ServerBuilder::handshake_timeout), comes before anything else, and a
    /// client that does not complete it is dropped. See [`tls`](crate::tls).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::tls::ServerTls) -> Self {
        self.config.tls = Some(tls);
        self
    }

    /// The largest frame payload accepted from a client, in bytes (default 16 MiB, at least
    /// 1 KiB, at most `u32::MAX`). Clients learn it in the handshake and refuse to send a
    /// larger request; a frame over it closes that connection without being read. The hello
    /// that opens a connection may be larger, up to 64 KiB.
    pub fn max_frame_len(mut self, bytes: usize) -> Self {
        self.config.max_frame_len = protocol::frame_limit(bytes);
        self
    }

    /// How many calls of one connection may run at once (default 1024, at least 1). Clients
    /// learn it in the handshake and hold further calls back; from a client that sends more
    /// anyway, the server reads nothing until a call finishes, so memory stays bounded and
    /// nothing is dropped.
    pub fn max_in_flight_per_connection(mut self, calls: usize) -> Self {
        self.config.max_in_flight = calls.clamp(1, u32::MAX as usize);
        self
    }

    /// How many connections are served at once (default 10,000, at least 1). At the limit, the
    /// connection with no call running that has gone longest without a request is asked to give way
    /// (its client is told, then it closes) so that a newcomer is admitted; with every established
    /// connection running a call, the connection that has been in its handshake the longest (TLS
    /// included) without a hello from its client is closed instead, so that peers that connect and
    /// say nothing cannot keep clients out. With none of those either, if one client address (IPv6:
    /// its /64 prefix) holds at least two more connections than the newcomer's, its connection that
    /// has gone longest without a request makes room, busy as it is: its client is told, it takes
    /// no new calls, and the calls still running after the [shutdown grace](Self::shutdown_grace)
    /// are dropped; so one address cannot keep others out by keeping every connection busy. Only
    /// one connection makes room so at a time. Failing all that, newcomers wait until one closes.
    ///
    /// Each connection takes a file descriptor, and many systems let a process open only 1024
    /// unless told otherwise (`ulimit -n`): raise that limit above this one. A server that runs
    /// out of descriptors first makes room the same way, as if at this limit, for each newcomer
    /// that waits (on Linux, where it can tell; elsewhere whenever an accept fails for want of
    /// one).
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.config.max_connections = connections.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// How long a new connection may take to send its hello before it is closed (default 10 s).
    /// At the [connection limit](ServerBuilder::max_connections) it may be closed sooner, for a
    /// newcomer.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// Closes a connection that has had no call running and received no request for this long
    /// (default 5 minutes). Its client is told first, so its next call fails with
    /// [`RpcError::ServerClosing`] (and a reconnecting client connects again) instead of being
    /// lost. A peer that completes the handshake and then says nothing holds its connection
    /// no longer than this, whatever ping interval it announced. Zero closes every connection
    /// as soon as it opens; [`disable_idle_timeout`](Self::disable_idle_timeout) turns the
    /// timeout off.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = Some(timeout);
        self
    }

    /// Keeps idle connections open for as long as their clients like. Idle connections still
    /// give way to new ones at the [connection limit](ServerBuilder::max_connections).
    pub fn disable_idle_timeout(mut self) -> Self {
        self.config.idle_timeout = None;
        self
    }

    /// Busy polling for clients in other processes, for the lowest latency at the cost of CPU
    /// time (default: up to 100 µs). For a window after each read that brought a connection's
    /// bytes, its task, finding nothing more, asks to be polled again at the runtime's next turn
    /// instead of waiting to be woken: its worker thread runs on, giving every other task its
    /// turns, so a client's next request that comes within the window finds a thread awake.
    /// Where waking a sleeping thread is slow, as in many virtual machines, that wakeup is most
    /// of a call's latency (see the client's [`busy_poll`](crate::ClientBuilder::busy_poll),
    /// which it pairs with).
    ///
    /// The window adapts, up to `window`, as the client's does, so a connection whose requests
    /// come further apart stops polling after a few windows in vain, and one with a stream open
    /// or a large frame coming does not poll (see the client's). A client on the same runtime
    /// (one of this crate's, over TCP) is polled for only after a read that brought several of
    /// its requests: there a call's two ends meet without a thread to wake, and polling after a
    /// lone call only slows it, but pipelined callers' next requests come sooner than a
    /// sleeping worker wakes (on a two-core machine, 32 callers on one connection made about a
    /// quarter more calls a second). A client in this process over a Unix socket is never
    /// polled for, nor one whose connection came through
    /// [`serve_connection`](ServerBuilder::serve_connection), which cannot be placed. A client
    /// on another runtime of this process is, as another process's. Polling never starts
    /// before a connection's handshake is done.
    ///
    /// The price is CPU time: a worker thread stays busy while a connection's requests keep
    /// coming within the window. A client that sends a byte within every window can keep one
    /// worker thread busy, and one that sends a byte within every two windows half the time or
    /// more, since bytes that come a wakeup late keep the window open (see the client's).
    /// Every connection polling on a thread shares its polling, so no more than the runtime's
    /// worker threads are ever busy for it, and its other tasks keep their turns. A server whose
    /// cores are better spent elsewhere, or which serves clients it does not trust with that,
    /// turns it off with a zero window.
    pub fn busy_poll(mut self, window: Duration) -> Self {
        self.config.busy_poll = window;
        self
    }

    /// How many bytes of a streamed argument a client may send ahead of what the handler has
    /// taken from the stream (default 1 MiB, at least 1). Items count their frame's bytes plus
    /// 32. A larger window keeps an upload moving over a link with a long round trip; it is
    /// also what one upload may hold in memory here when its handler falls behind (with one
    /// more item, which a client may send while it has any credit left), so a connection holds
    /// at most this times its [limit on uploads](ServerBuilder::max_uploads_per_connection),
    /// and the server's uploads together count it, and the items past it, within
    /// [`max_argument_bytes`](ServerBuilder::max_argument_bytes).
    pub fn stream_window(mut self, bytes: u32) -> Self {
        self.config.stream_window = bytes.max(1);
        self
    }

    /// How many calls with a streamed argument one connection may have running at once (default
    /// 64, at least 1). Each may hold its [stream window](ServerBuilder::stream_window) of
    /// items its handler has not taken yet (and one item more), so this bounds what a
    /// connection's uploads hold: 64 MiB and 64 items by default. The server's hello announces
    /// it, and an rpc-core client holds a call past it back until an upload on the connection
    /// is over, as it does calls past
    /// [`max_in_flight_per_connection`](ServerBuilder::max_in_flight_per_connection). From a
    /// client that does not, the server parks one such request, with its items, and reads on;
    /// at a second it stops reading until an upload is over.
    pub fn max_uploads_per_connection(mut self, uploads: usize) -> Self {
        self.config.max_uploads = uploads.max(1);
        self
    }

    /// Checks every call before its handler runs. `check` sees the call's [`Context`]: the
    /// service and method, the metadata, the client's address and, where there is one, its
    /// verified TLS certificate or Unix credentials. Returning a [`Status`] refuses the call:
    /// its handler never runs, and the client gets the status as [`RpcError::Unauthenticated`],
    /// [`RpcError::PermissionDenied`] or [`RpcError::Refused`].
    ///
    /// ```
    /// use rpc_core::{Server, Status};
    ///
    /// let builder = Server::builder().intercept(|call| {
    ///     match call.metadata().get_str("token") {
    ///         Some("s3cr3t") => Ok(()),
    ///         Some(_) => Err(Status::permission_denied("that token may not call this")),
    ///         None => Err(Status::unauthenticated("no token")),
    ///     }
    /// });
    /// ```
    ///
    /// The check runs on the connection's reader, before the call's task: keep it quick (a
    /// lookup, a signature check), and do slow work in the handler.
    pub fn intercept(
        mut self,
        check: impl Fn(&Context) -> Result<(), Status> + Send + Sync + 'static,
    ) -> Self {
        self.config.interceptor = Some(ServerInterceptor::new(check));
        self
    }

    /// Runs every call through `layer`, a [`tower::Layer`] around the server's handlers: tower's
    /// own middleware (concurrency and rate limits, timeouts, load shedding) or yours (auth,
    /// audit, caching). Layers see each call as a [`Call`](middleware::Call) and answer with a
    /// [`Reply`](middleware::Reply); a layer that fails a call sends the client a status, and
    /// the connection goes on. Called again, adds a layer inside those already added. See
    /// [`middleware`] for how calls go through the layers.
    ///
    /// ```
    /// use std::time::Duration;
    /// use rpc_core::Server;
    /// use tower::limit::GlobalConcurrencyLimitLayer;
    /// use tower::timeout::TimeoutLayer;
    ///
    /// // At most 100 calls running on the whole server; each given up after 2 s.
    /// let builder = Server::builder()
    ///     .layer(GlobalConcurrencyLimitLayer::new(100))
    ///     .layer(TimeoutLayer::new(Duration::from_secs(2)));
    /// ```
    #[cfg(feature = "tower")]
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: tower::Layer<middleware::Next> + Send + Sync + 'static,
        L::Service: tower::Service<middleware::Call, Response = middleware::Reply> + Send + 'static,
        <L::Service as tower::Service<middleware::Call>>::Error: Into<middleware::BoxError>,
        <L::Service as tower::Service<middleware::Call>>::Future: Send + 'static,
    {
        self.config.layers.push(layer);
        self
    }

    /// Whether the server describes its service to clients that ask (default: on): its
    /// methods, their arguments' names and every type's structure, as
    /// [`Channel::describe`](crate::Channel::describe) and the `rpc` command-line tool read
    /// it. A client whose method differs from the server's is then told what differs. Turn it
    /// off where the service's shape is not for every client to see; the server then refuses
    /// describe requests like an unknown method.
    pub fn reflection(mut self, on: bool) -> Self {
        self.config.reflection = on;
        self
    }

    /// Sends a panicking handler's message to the client, in [`RpcError::HandlerPanicked`]
    /// (default: off). Panic messages can hold what clients should not see (paths, data,
    /// internal state), so by default the client learns only that the handler panicked, and the
    /// call's id under which the server logged the message. Turn it on where the clients are
    /// your own tests.
    pub fn expose_panic_messages(mut self, expose: bool) -> Self {
        self.config.panic_messages = expose;
        self
    }

    /// The most bytes of metadata (keys and values together) one call may carry (default
    /// 16 KiB). A call over it fails with [`RpcError::LimitExceeded`] without running; the
    /// connection stays up.
    pub fn max_metadata_len(mut self, bytes: usize) -> Self {
        self.config.metadata.max_len = bytes;
        self
    }

    /// The most metadata entries one call may carry (default 64). A call over it fails with
    /// [`RpcError::LimitExceeded`] without running; the connection stays up.
    pub fn max_metadata_entries(mut self, entries: usize) -> Self {
        self.config.metadata.max_entries = entries;
        self
    }

    /// How many bytes of answers may wait for one client to read them before the server stops
    /// reading that client's requests (default 4 MiB). The server reads on once the client has
    /// read enough; a connection with nothing queued is always read, so one answer of any size
    /// still goes through. Past it, each stream the connection sends waits too while any of its
    /// items wait unwritten, so that a client's streams, however many and whatever windows it
    /// grants them, hold about this much together.
    pub fn max_queued_bytes_per_connection(mut self, bytes: usize) -> Self {
        self.config.max_queued_per_connection = bytes;
        self
    }

    /// How many bytes of answers may wait for their clients across the whole server, past each
    /// connection's first 64 KiB, before connections that have answers waiting stop reading
    /// requests, and streams with items waiting unwritten stop sending more (default 256 MiB).
    /// Connections with nothing queued are still read, and streams with nothing waiting still
    /// send, so no client is locked out by others that do not read.
    ///
    /// The calls a connection runs when it stops reading still answer, up to
    /// [`max_in_flight_per_connection`](Self::max_in_flight_per_connection) of them, so a
    /// client that asks for large results and reads none could make the server hold far more,
    /// and slow everyone else, until [keep-alive](Self::keepalive) gives up on it. So while the
    /// server holds this many bytes, the connection whose client has kept its writes waiting
    /// longest, a second or more since a write last took all it was given, is closed and its
    /// answers freed; then the next, one at a time, until the server holds less. A client that
    /// reads as fast as the network carries catches up at the end of every write, and is not
    /// the one closed.
    pub fn max_queued_bytes(mut self, bytes: usize) -> Self {
        self.config.max_queued = bytes;
        self
    }

    /// How many bytes of requests (their frames' lengths) the calls running on one connection
    /// may hold together (default 64 MiB). A handler holds its arguments until it answers, so
    /// without this a client could pin
    /// [`max_in_flight_per_connection`](Self::max_in_flight_per_connection) times
    /// [`max_frame_len`](Self::max_frame_len) bytes (16 GiB by default) with calls to a slow
    /// method. A request that arrives past it is parked, like a call past the in-flight limit,
    /// until calls end: the server reads on past one such request and stops reading at a
    /// second. A connection under the limit starts the next request whatever its size, so it
    /// may go past the limit by one request, and a single request up to `max_frame_len` always
    /// runs.
    pub fn max_argument_bytes_per_connection(mut self, bytes: usize) -> Self {
        self.config.max_argument_bytes_per_connection = bytes;
        self
    }

    /// How many bytes of requests (their frames' lengths) the calls of the whole server may
    /// hold together, running or parked, past each connection's first 64 KiB (default 1 GiB). A
    /// call with a streamed argument counts its [window](Self::stream_window) too, the items
    /// its client may send before the handler takes any, and what an item its client sends past
    /// the window costs until the handler takes it: an item the server may not hold is dropped,
    /// and the handler's stream fails.
    /// [`max_argument_bytes_per_connection`](Self::max_argument_bytes_per_connection) bounds
    /// what one connection's running calls hold; this bounds them all, however many connect. A
    /// request that would take the server past it is not run: its client gets
    /// [`RpcError::Refused`] with [`StatusCode::Unavailable`](crate::StatusCode::Unavailable),
    /// which a channel with retries tries on another server. It is not parked: a client whose
    /// slow calls hold the server's bytes would otherwise keep every other client's large
    /// requests waiting. Small calls, within their connection's first 64 KiB, are never refused
    /// for it, and a server holding nothing past those runs a request of any size.
    pub fn max_argument_bytes(mut self, bytes: usize) -> Self {
        self.config.max_argument_bytes = bytes;
        self
    }

    /// How much memory the server's connections may hold together for the large frames they
    /// are reading (default 1 GiB; never less than [`max_frame_len`](Self::max_frame_len), so
    /// that the largest frame can always be read). Each connection's first 64 KiB do not count:
    /// small calls never wait for this memory.
    ///
    /// A connection that needs more than is left stops reading until frames that arrive whole
    /// give some back. What is given back goes first to the connection whose frame lacks the
    /// least, and before it, first come first served, to those that have waited four seconds,
    /// so that none waits for ever. After waiting a second a connection takes memory back: from
    /// the connections whose clients have kept them waiting a second or more in all since their
    /// last whole frame, the longest first, as many as it takes to cover what the waiting
    /// connections need; or, when every connection holding memory is waiting for more (none
    /// could finish), from the one whose frame lacks the most. A connection given memory after
    /// waiting a second or more for it, whose client then turns out to have sent nothing
    /// meanwhile, gives it back at once if others wait. A connection between frames gives up
    /// only what it kept for reuse; one in the middle of a frame is closed, its client told why
    /// in a GoAway (reason 4). A peer that sends a large frame slowly, or never finishes it,
    /// cannot keep others from the memory. With the `metrics` feature, the gauges
    /// `rpc_server_frame_memory_bytes` and `rpc_server_frame_memory_waiting` show how much the
    /// process's servers hold and how many connections wait.
    pub fn max_frame_memory(mut self, bytes: usize) -> Self {
        self.config.max_frame_memory = bytes;
        self
    }

    /// Sends a ping after `interval` of sending nothing else, and closes a connection whose
    /// client sent nothing for `timeout`: a client that vanished without closing. The timeout is
    /// never shorter than twice the client's own ping interval. A write the client does not
    /// read for `timeout` closes the connection too, freeing what was queued for it. Defaults:
    /// 15 s and 45 s; an interval under 10 ms is taken as 10 ms.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.config.keepalive = Some(KeepAlive::new(interval, timeout));
        self
    }

    /// Neither pings nor watches for silent clients, nor for clients that stop reading.
    pub fn disable_keepalive(mut self) -> Self {
        self.config.keepalive = None;
        self
    }

    /// How long [`Server::serve_with_shutdown`] lets running calls finish once shutdown starts
    /// (default 30 s), and a busy connection asked to make room at the
    /// [connection limit](Self::max_connections) its own. Calls still running then are dropped
    /// and their connections closed.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// Listens on a TCP address. Port 0 picks a free port; [`Server::local_addr`] tells which.
    pub async fn bind(self, addr: impl ToSocketAddrs) -> io::Result<Server> {
        Ok(self.server(Listener::Tcp(TcpListener::bind(addr).await?)))
    }

    /// Listens on a Unix domain socket at `path`. A socket file left there by a server that is
    /// gone (it crashed, or stopped: nothing removes the file) is replaced; a socket some
    /// process still listens on, or any other file, is an error
    /// ([`io::ErrorKind::AddrInUse`]), as is a missing directory.
    #[cfg(unix)]
    pub fn bind_unix(self, path: impl AsRef<std::path::Path>) -> io::Result<Server> {
        let path = path.as_ref();
        let listener = match tokio::net::UnixListener::bind(path) {
            Err(error) if error.kind() == io::ErrorKind::AddrInUse && is_stale_socket(path) => {
                std::fs::remove_file(path)?;
                tokio::net::UnixListener::bind(path)?
            }
            bound => bound?,
        };
        Ok(self.server(Listener::Unix(listener)))
    }

    /// Serves `service` on one connection you established (an in-memory pipe from
    /// `tokio::io::duplex`, a TLS stream, ...) until the client closes it. Returns why the
    /// connection ended, if not cleanly.
    pub async fn serve_connection<S, IO>(&self, io: IO, service: S) -> Result<(), RpcError>
    where
        S: ServiceSet,
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let never = std::future::pending();
        self.serve_connection_with_shutdown(io, service, never)
            .await
    }

    /// Serves `service` on one connection you established, as
    /// [`serve_connection`](Self::serve_connection) does, until the client closes it or
    /// `signal` completes; then drains it as [`Server::serve_with_shutdown`] drains its
    /// connections: tells the client that the connection takes no new calls (a call that
    /// arrives anyway fails with [`RpcError::ServerClosing`]), lets the running calls finish and
    /// answer for up to the [shutdown grace](ServerBuilder::shutdown_grace), then drops those
    /// still running and closes.
    pub async fn serve_connection_with_shutdown<S, IO, F>(
        &self,
        io: IO,
        service: S,
        signal: F,
    ) -> Result<(), RpcError>
    where
        S: ServiceSet,
        IO: AsyncRead + AsyncWrite + Send + 'static,
        F: Future<Output = ()> + Send,
    {
        let service = Arc::new(Served::new(service)?);
        let stop = Stop::default();
        let serving = serve_alone(io, service, &self.config, stop.clone());
        let mut serving = std::pin::pin!(serving);
        tokio::select! {
            served = &mut serving => return served,
            () = signal => stop.stop(),
        }
        let grace_over = alarm::after(tokio::time::Instant::now(), self.config.shutdown_grace);
        match tokio::time::timeout_at(grace_over, serving).await {
            Ok(served) => served,
            Err(_) => {
                tracing::warn!("the shutdown grace ran out; dropping the calls still running");
                Ok(())
            }
        }
    }

    /// The settings, for a client that serves a service back to its server
    /// ([`ClientBuilder::serve_with`](crate::ClientBuilder::serve_with)).
    pub(crate) fn into_config(self) -> ServerConfig {
        self.config
    }

    fn server(self, listener: Listener) -> Server {
        Server {
            listener,
            config: Arc::new(self.config),
        }
    }

    /// Sets the status health calls report, as [`Server::health`] does, for what this builder
    /// makes: the server it binds, the connections it serves on their own
    /// ([`serve_connection`](Self::serve_connection)), or the service a client serves back with
    /// it ([`ClientBuilder::serve_with`](crate::ClientBuilder::serve_with)), where a worker
    /// tells a coordinator that checks its callers' health
    /// ([`ClientBuilder::health_checks`](crate::ClientBuilder::health_checks)) to send it no
    /// tasks for a while. A clone of the builder has a status of its own.
    ///
    /// ```
    /// use rpc_core::health::ServingStatus;
    ///
    /// let builder = rpc_core::Server::builder();
    /// let health = builder.health();
    /// health.set(ServingStatus::NotServing);
    /// assert_eq!(builder.health().status(), ServingStatus::NotServing);
    /// assert_eq!(builder.clone().health().status(), ServingStatus::Serving);
    /// ```
    pub fn health(&self) -> crate::health::HealthReporter {
        self.config.health.clone()
    }
}

impl Server {
    /// Settings to change before binding.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// Listens on a TCP address with the default settings.
    pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<Server> {
        Self::builder().bind(addr).await
    }

    /// Listens on a Unix domain socket with the default settings.
    #[cfg(unix)]
    pub fn bind_unix(path: impl AsRef<std::path::Path>) -> io::Result<Server> {
        Self::builder().bind_unix(path)
    }

    /// Sets the status health calls report (serving unless set otherwise): for a server not
    /// ready yet, or one that should be taken out of its clients' rotation. Graceful shutdown
    /// sets it to not serving before draining. See [`health`](crate::health).
    pub fn health(&self) -> crate::health::HealthReporter {
        self.config.health.clone()
    }

    /// The TCP address this server listens on. Fails for a Unix socket server.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.listener {
            Listener::Tcp(listener) => listener.local_addr(),
            #[cfg(unix)]
            Listener::Unix(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a Unix socket server has no TCP address",
            )),
        }
    }

    /// Accepts connections and serves `service` on each, every connection in its own task and
    /// every call in its own task, all sharing the one `service`.
    ///
    /// Runs until accepting fails for a reason that retrying cannot fix. A misbehaving client
    /// only ever closes its own connection.
    pub async fn serve<S: ServiceSet>(self, service: S) -> io::Result<()> {
        self.serve_with_shutdown(service, std::future::pending())
            .await
    }

    /// Like [`Server::serve`], until `signal` completes; then shuts down gracefully:
    ///
    /// 1. stops accepting: new connections are refused;
    /// 2. tells every client that the connection takes no new calls; a call that arrives anyway
    ///    fails with [`RpcError::ServerClosing`], which says it did not run;
    /// 3. lets the running calls finish and answer, for up to the
    ///    [shutdown grace](ServerBuilder::shutdown_grace);
    /// 4. drops the calls still running then, and closes every connection: their clients get
    ///    [`RpcError::ConnectionClosed`].
    ///
    /// Returns once every connection is closed. Fails at once, accepting nothing, if a type of
    /// the service cannot be described (see [`schema`](crate::schema)).
    pub async fn serve_with_shutdown<S, F>(self, service: S, signal: F) -> io::Result<()>
    where
        S: ServiceSet,
        F: Future<Output = ()> + Send,
    {
        let service = Arc::new(Served::new(service).map_err(io::Error::other)?);
        let Server { listener, config } = self;
        let slots = Arc::new(Semaphore::new(config.max_connections));
        let mut connections = JoinSet::new();
        let budget = Arc::new(Budget::new(config.max_queued));
        let frame_memory = FrameMemory::new(config.max_frame_memory, config.max_frame_len);
        let requests = HeldRequests::new(config.max_argument_bytes);
        let registry = Arc::new(Registry::default());
        let spawner = Spawner {
            service: &service,
            config: &config,
            budget: &budget,
            frame_memory: &frame_memory,
            requests: &requests,
        };
        tokio::pin!(signal);
        loop {
            // Reap the connections that ended, so that the set holds only live ones.
            while connections.try_join_next().is_some() {}
            let accepted = tokio::select! {
                () = &mut signal => break,
                accepted = listener.accept() => accepted,
            };
            let (io, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => match AcceptError::of(&error) {
                    AcceptError::ConnectionOnly => {
                        tracing::debug!(%error, "a connection failed while being accepted");
                        continue;
                    }
                    AcceptError::OutOfResources => {
                        // Out of file descriptors, most often: the process is as full as at its
                        // connection limit, and makes room the same way, so that idle and mute
                        // peers holding every descriptor cannot keep newcomers out. Only for a
                        // newcomer that waits: the accept after the one that took the last
                        // descriptor fails too, with no one to make room for.
                        if listener.has_newcomer() {
                            tracing::warn!(
                                %error,
                                "a newcomer waits, and the server is out of resources to accept \
                                 it: an idle connection is asked to give way (is the process's \
                                 limit of open files under max_connections?)"
                            );
                            make_room(&registry, None);
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    AcceptError::Fatal => return Err(error),
                },
            };
            let address = peer.map(|peer| registry::counted_address(peer.ip()));
            let slot = tokio::select! {
                () = &mut signal => break,
                slot = admit(&slots, &registry, address) => slot,
            };
            let handshake = registry.begin_handshake(address);
            let key = handshake.key();
            let task = connections.spawn(spawner.connection(io, peer, slot, handshake));
            registry.name_task(key, task);
        }

        // Not serving, before draining: health watchers and probing clients hear it first.
        config.health.shut_down();
        drop(listener);
        registry.shut_down();
        let drained = tokio::time::timeout(config.shutdown_grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = connections.len(),
                "the shutdown grace ran out; dropping the calls still running"
            );
            connections.shutdown().await;
        }
        Ok(())
    }
}

/// How often, at the connection limit, the server asks another idle connection to give way
/// while a newcomer waits: the one asked may have taken a call meanwhile.
const GIVE_WAY_RETRY: Duration = Duration::from_millis(100);

/// A connection slot for a newcomer from `address`. At the limit, makes room
/// ([`make_room`]) until a slot frees.
async fn admit(
    slots: &Arc<Semaphore>,
    registry: &Registry,
    address: Option<IpAddr>,
) -> OwnedSemaphorePermit {
    loop {
        if let Ok(slot) = Arc::clone(slots).try_acquire_owned() {
            return slot;
        }
        make_room(registry, address);
        let slot = tokio::time::timeout(GIVE_WAY_RETRY, Arc::clone(slots).acquire_owned()).await;
        match slot {
            Ok(Ok(slot)) => return slot,
            Ok(Err(_)) => unreachable!("the connection semaphore is never closed"),
            Err(_) => {}
        }
    }
}

/// Makes room for a newcomer from `address` (unknown when the accept itself failed): asks the idle
/// connection that has gone longest without a request to give way; with none idle, closes the
/// connection that has been in its handshake the longest without a hello (a peer that connects and
/// says nothing holds a slot no longer than that); with none of those either, asks a busy
/// connection of the address holding the most to make room, if it holds at least two more than the
/// newcomer's; failing that, the newcomer waits for a connection to end.
fn make_room(registry: &Registry, address: Option<IpAddr>) {
    if !registry.ask_idlest_to_give_way() && !registry.close_longest_handshake() {
        registry.ask_busiest_address_to_give_way(address);
    }
}

/// Serves an accepted TCP connection, over TLS if the server has it set. Not an `async fn`,
/// which would keep its arguments, twice, beside the plain connection's future for as long as
/// the connection lives.
fn serve_tcp<'a, S: ServiceSet>(
    io: tokio::net::TcpStream,
    service: Arc<Served<S>>,
    config: &'a ServerConfig,
    addr: Option<SocketAddr>,
    shared: connection::Place,
    deadline: tokio::time::Instant,
) -> impl Future<Output = Result<(), RpcError>> + Send + 'a {
    #[cfg(feature = "tls")]
    if let Some(tls) = &config.tls {
        // Boxed: a TLS connection's state is large, and a plain connection's task should not
        // carry room for it.
        let serving = async move {
            let process = PeerProcess::of_tcp(&io);
            let (io, identity) = accept_tls(tls, io, config, deadline).await?;
            let peer = Peer {
                addr,
                identity,
                ..Peer::default()
            };
            connection::serve(io, service, config, peer, process, shared, deadline).await
        };
        return Either::Left(serving.boxed());
    }
    let peer = Peer {
        addr,
        ..Peer::default()
    };
    let process = PeerProcess::of_tcp(&io);
    let serving = connection::serve(io, service, config, peer, process, shared, deadline);
    Either::<BoxFuture<'a, _>, _>::Right(serving)
}

/// Runs the TLS handshake on an accepted TCP connection, by `deadline`: the encrypted stream,
/// and the client's verified certificate if it presented one.
#[cfg(feature = "tls")]
async fn accept_tls(
    tls: &crate::tls::ServerTls,
    io: tokio::net::TcpStream,
    config: &ServerConfig,
    deadline: tokio::time::Instant,
) -> Result<
    (
        transport::TlsOverTcp<crate::tls::ServerStream>,
        Option<Arc<crate::PeerIdentity>>,
    ),
    RpcError,
> {
    match tokio::time::timeout_at(deadline, tls.accept(io)).await {
        Ok(Ok(accepted)) => Ok(accepted),
        Ok(Err(error)) => Err(crate::tls::handshake_failed(&error)),
        Err(_) => Err(RpcError::Handshake(format!(
            "the client did not finish the TLS handshake within {:?}",
            config.handshake_timeout
        ))),
    }
}

/// What every connection of a server shares.
struct Spawner<'a, S> {
    service: &'a Arc<Served<S>>,
    config: &'a Arc<ServerConfig>,
    budget: &'a Arc<Budget>,
    frame_memory: &'a Arc<FrameMemory>,
    requests: &'a Arc<HeldRequests>,
}

impl<S: ServiceSet> Spawner<'_, S> {
    /// The task that serves one accepted connection; it holds its connection slot until done,
    /// and its place in its handshake until that is over.
    fn connection(
        &self,
        io: Accepted,
        peer: Option<SocketAddr>,
        slot: OwnedSemaphorePermit,
        handshake: Handshake,
    ) -> impl Future<Output = ()> + Send + 'static {
        let service = Arc::clone(self.service);
        let config = Arc::clone(self.config);
        let shared = connection::Place::Listener(connection::Shared {
            budget: Arc::clone(self.budget),
            frame_memory: Arc::clone(self.frame_memory),
            requests: Arc::clone(self.requests),
            handshake,
        });
        // The whole handshake, TLS included, must be over by then.
        let deadline = alarm::after(tokio::time::Instant::now(), config.handshake_timeout);
        let span = connection::span(self.service.first_name(), peer);
        let serving = async move {
            let served = match io {
                Accepted::Tcp(io) => serve_tcp(io, service, &config, peer, shared, deadline).await,
                #[cfg(unix)]
                Accepted::Unix(io) => {
                    // A Unix socket's client has no address; the system names its process.
                    let credentials = PeerCredentials::of(&io);
                    let process = PeerProcess::of_pid(credentials.and_then(|peer| peer.pid()));
                    let peer = Peer {
                        credentials,
                        ..Peer::default()
                    };
                    connection::serve(io, service, &config, peer, process, shared, deadline).await
                }
            };
            match served {
                Ok(()) => tracing::debug!(?peer, "connection closed"),
                Err(error @ RpcError::Tls(_)) => {
                    tracing::info!(?peer, %error, "a client failed the TLS handshake");
                }
                Err(error) => tracing::debug!(?peer, %error, "connection closed"),
            }
            drop(slot);
        };
        serving.instrument(span)
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Server");
        match &self.listener {
            Listener::Tcp(listener) => out.field("tcp", &listener.local_addr().ok()),
            #[cfg(unix)]
            Listener::Unix(listener) => out.field("unix", &listener.local_addr().ok()),
        };
        out.field("config", &self.config).finish()
    }
}

/// Tells a connection served on its own to drain, as a server shutting down tells each of
/// its connections: it takes no new call, lets those running answer, then closes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stop(Arc<Attention>);

impl Stop {
    /// Tells the connection, at once; again changes nothing.
    pub(crate) fn stop(&self) {
        self.0.raise(attention::Signal::ShuttingDown);
    }
}

/// Serves the reverse connection on `pipe`: the calls a client's server makes to it over the
/// connection the client opened (`crate::reverse`), until the connection ends or, told by
/// `stop`, it drains.
pub(crate) async fn serve_reverse<S: ServiceSet>(
    service: Arc<Served<S>>,
    config: ServerConfig,
    pipe: tokio::io::DuplexStream,
    stop: Stop,
) {
    if let Err(error) = serve_alone(pipe, service, &config, stop).await {
        tracing::debug!(%error, "the connection serving the server's calls closed");
    }
}

/// Serves one connection that belongs to no listener: no peer address and no connection
/// registry, the handshake due within the configured timeout; it drains when told by `stop`.
async fn serve_alone<S, IO>(
    io: IO,
    service: Arc<Served<S>>,
    config: &ServerConfig,
    stop: Stop,
) -> Result<(), RpcError>
where
    S: ServiceSet,
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let deadline = alarm::after(tokio::time::Instant::now(), config.handshake_timeout);
    let span = connection::span(service.first_name(), None);
    let io = transport::Shared(io);
    let (peer, process) = (Peer::default(), PeerProcess::Unknown);
    let place = connection::Place::Alone { stop: stop.0 };
    let serving = connection::serve(io, service, config, peer, process, place, deadline);
    serving.instrument(span).await
}

/// Serves `service` on one connection you established, with the default settings. See
/// [`ServerBuilder::serve_connection`].
pub async fn serve_connection<S, IO>(io: IO, service: S) -> Result<(), RpcError>
where
    S: ServiceSet,
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    Server::builder().serve_connection(io, service).await
}

/// Whether `path` is a Unix socket that no process listens on: connecting to it is refused.
#[cfg(unix)]
fn is_stale_socket(path: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;

    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_socket());
    is_socket
        && std::os::unix::net::UnixStream::connect(path)
            .is_err_and(|error| error.kind() == io::ErrorKind::ConnectionRefused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MAX_FRAME_LEN_CAP, MIN_FRAME_LEN};

    #[test]
    fn every_default_is_bounded() {
        let config = Server::builder().config;
        assert_eq!(config.max_frame_len, DEFAULT_MAX_FRAME_LEN);
        assert_eq!(config.max_in_flight, 1024);
        assert_eq!(config.max_uploads, 64);
        assert_eq!(config.max_connections, 10_000);
        assert_eq!(config.handshake_timeout, Duration::from_secs(10));
        assert_eq!(config.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(config.keepalive, Some(KeepAlive::DEFAULT));
        assert_eq!(config.metadata, MetadataLimits::DEFAULT);
        assert_eq!(config.max_queued_per_connection, 4 * 1024 * 1024);
        assert_eq!(config.max_queued, 256 * 1024 * 1024);
        assert_eq!(config.max_argument_bytes_per_connection, 64 * 1024 * 1024);
        assert_eq!(config.max_argument_bytes, 1024 * 1024 * 1024);
        assert_eq!(config.max_frame_memory, 1024 * 1024 * 1024);
        // Bounded too: a worker thread polls for at most this after a client's last bytes.
        assert_eq!(config.busy_poll, Duration::from_micros(100));
    }

    #[test]
    fn every_setting_lands_where_it_is_used() {
        let config = Server::builder()
            .max_frame_len(1001 * 1024)
            .max_in_flight_per_connection(2)
            .max_connections(3)
            .handshake_timeout(Duration::from_secs(4))
            .idle_timeout(Duration::from_secs(5))
            .keepalive(Duration::from_secs(6), Duration::from_secs(7))
            .shutdown_grace(Duration::from_secs(8))
            .max_metadata_len(9)
            .max_metadata_entries(10)
            .max_queued_bytes_per_connection(11)
            .max_queued_bytes(12)
            .max_frame_memory(13)
            .max_argument_bytes_per_connection(14)
            .max_argument_bytes(15)
            .config;
        assert_eq!(config.max_frame_len, 1001 * 1024);
        assert_eq!(config.max_in_flight, 2);
        assert_eq!(config.max_connections, 3);
        assert_eq!(config.handshake_timeout, Duration::from_secs(4));
        assert_eq!(config.idle_timeout, Some(Duration::from_secs(5)));
        let keepalive = KeepAlive {
            interval: Duration::from_secs(6),
            timeout: Duration::from_secs(7),
        };
        assert_eq!(config.keepalive, Some(keepalive));
        assert_eq!(config.shutdown_grace, Duration::from_secs(8));
        assert_eq!(config.metadata.max_len, 9);
        assert_eq!(config.metadata.max_entries, 10);
        assert_eq!(config.max_queued_per_connection, 11);
        assert_eq!(config.max_queued, 12);
        assert_eq!(config.max_frame_memory, 13);
        assert_eq!(config.max_argument_bytes_per_connection, 14);
        assert_eq!(config.max_argument_bytes, 15);

        let off = Server::builder()
            .disable_idle_timeout()
            .disable_keepalive()
            .config;
        assert_eq!((off.idle_timeout, off.keepalive), (None, None));
    }

    #[test]
    fn limits_are_kept_within_what_they_can_mean() {
        let config = Server::builder()
            .max_frame_len(usize::MAX)
            .max_in_flight_per_connection(0)
            .max_connections(0)
            .max_uploads_per_connection(0)
            .config;
        assert_eq!(config.max_frame_len, MAX_FRAME_LEN_CAP);
        assert_eq!(config.max_in_flight, 1);
        assert_eq!(config.max_connections, 1);
        assert_eq!(config.max_uploads, 1);
        let tiny = Server::builder()
            .max_frame_len(0)
            .keepalive(Duration::ZERO, Duration::from_secs(1))
            .config;
        assert_eq!(tiny.max_frame_len, MIN_FRAME_LEN);
        let keepalive = tiny.keepalive.expect("on");
        assert_eq!(keepalive.interval, crate::alarm::MIN_PERIOD);
    }

    #[tokio::test]
    async fn a_servers_debug_names_where_it_listens() {
        let server = Server::bind("127.0.0.1:0").await.expect("binds");
        let addr = server.local_addr().expect("an address");
        let shown = format!("{server:?}");
        assert!(shown.contains(&format!("tcp: Some({addr})")), "{shown}");
        assert!(shown.contains("max_frame_len"), "and its settings: {shown}");
    }
}
