//! The server side: listening, accepting, and serving connections.
//!
//! ```no_run
//! # #[rpc_core::service] pub trait Calc { async fn add(&self, a: i64, b: i64) -> i64; }
//! # struct MyCalc;
//! # impl Calc for MyCalc { async fn add(&self, a: i64, b: i64) -> i64 { a + b } }
//! # async fn run() -> std::io::Result<()> {
//! let server = rpc_core::Server::builder()
//!     .max_in_flight_per_connection(256)
//!     .bind("127.0.0.1:7000")
//!     .await?;
//! println!("listening on {}", server.local_addr()?);
//! server.serve(CalcServer::new(MyCalc)).await
//! # }
//! ```

mod connection;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, ToSocketAddrs};

use crate::RpcError;
use crate::protocol::{DEFAULT_MAX_FRAME_LEN, MAX_FRAME_LEN_CAP};
use crate::service::Service;
use crate::transport;

/// A bound listener, ready to serve a service.
pub struct Server {
    listener: Listener,
    config: Arc<ServerConfig>,
}

enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
}

/// Settings for a server's connections, with bounded defaults.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until it binds or serves"]
pub struct ServerBuilder {
    config: ServerConfig,
}

#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    pub(crate) max_frame_len: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) handshake_timeout: Duration,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            config: ServerConfig {
                max_frame_len: DEFAULT_MAX_FRAME_LEN,
                max_in_flight: 1024,
                handshake_timeout: Duration::from_secs(10),
            },
        }
    }
}

impl ServerBuilder {
    /// The largest frame payload accepted from a client, in bytes (default 16 MiB, at most
    /// `u32::MAX`). Clients learn it in the handshake and refuse to send a larger request; a
    /// frame over it closes that connection without being read.
    pub fn max_frame_len(mut self, bytes: usize) -> Self {
        self.config.max_frame_len = bytes.min(MAX_FRAME_LEN_CAP);
        self
    }

    /// How many calls of one connection may run at once (default 1024, at least 1). While that
    /// many run, the server reads nothing more from the connection, so a fast client is slowed
    /// down instead of buffered without bound.
    pub fn max_in_flight_per_connection(mut self, calls: usize) -> Self {
        self.config.max_in_flight = calls.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        self
    }

    /// How long a new connection may take to send its hello before it is closed (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// Listens on a TCP address. Port 0 picks a free port; [`Server::local_addr`] tells which.
    pub async fn bind(self, addr: impl ToSocketAddrs) -> io::Result<Server> {
        Ok(self.server(Listener::Tcp(TcpListener::bind(addr).await?)))
    }

    /// Listens on a Unix domain socket at `path`, which must not exist yet.
    #[cfg(unix)]
    pub fn bind_unix(self, path: impl AsRef<std::path::Path>) -> io::Result<Server> {
        Ok(self.server(Listener::Unix(tokio::net::UnixListener::bind(path)?)))
    }

    /// Serves `service` on one connection you established (an in-memory pipe from
    /// `tokio::io::duplex`, a TLS stream, ...) until the client closes it. Returns why the
    /// connection ended, if not cleanly.
    pub async fn serve_connection<S, IO>(&self, io: IO, service: S) -> Result<(), RpcError>
    where
        S: Service,
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        connection::serve(io, Arc::new(service), &self.config).await
    }

    fn server(self, listener: Listener) -> Server {
        Server {
            listener,
            config: Arc::new(self.config),
        }
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
    pub async fn serve<S: Service>(self, service: S) -> io::Result<()> {
        let service = Arc::new(service);
        loop {
            let accepted = match &self.listener {
                Listener::Tcp(listener) => {
                    transport::accept_tcp(listener).await.map(|(stream, peer)| {
                        self.spawn_connection(stream, peer.to_string(), &service);
                    })
                }
                #[cfg(unix)]
                Listener::Unix(listener) => listener.accept().await.map(|(stream, peer)| {
                    self.spawn_connection(stream, format!("{peer:?}"), &service);
                }),
            };
            if let Err(error) = accepted {
                match classify_accept_error(&error) {
                    AcceptError::ConnectionOnly => {
                        tracing::debug!(%error, "a connection failed while being accepted");
                    }
                    AcceptError::OutOfResources => {
                        tracing::warn!(%error, "accepting paused: out of resources");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    AcceptError::Fatal => return Err(error),
                }
            }
        }
    }

    fn spawn_connection<S, IO>(&self, io: IO, peer: String, service: &Arc<S>)
    where
        S: Service,
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let service = Arc::clone(service);
        let config = Arc::clone(&self.config);
        tokio::spawn(async move {
            match connection::serve(io, service, &config).await {
                Ok(()) => tracing::debug!(%peer, "connection closed"),
                Err(error) => tracing::debug!(%peer, %error, "connection closed"),
            }
        });
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

enum AcceptError {
    /// Only the connection being accepted is affected.
    ConnectionOnly,
    /// The process is out of file descriptors or memory; it may recover.
    OutOfResources,
    /// The listener itself is broken.
    Fatal,
}

fn classify_accept_error(error: &io::Error) -> AcceptError {
    use io::ErrorKind::*;
    match error.kind() {
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
        | TimedOut | BrokenPipe | NotConnected => AcceptError::ConnectionOnly,
        OutOfMemory | QuotaExceeded => AcceptError::OutOfResources,
        // EMFILE and ENFILE have no ErrorKind of their own.
        _ if matches!(error.raw_os_error(), Some(23 | 24)) => AcceptError::OutOfResources,
        _ => AcceptError::Fatal,
    }
}

/// Serves `service` on one connection you established, with the default settings. See
/// [`ServerBuilder::serve_connection`].
pub async fn serve_connection<S, IO>(io: IO, service: S) -> Result<(), RpcError>
where
    S: Service,
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    Server::builder().serve_connection(io, service).await
}
