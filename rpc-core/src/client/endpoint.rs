//! One server address: the connection to it, reconnecting with exponential backoff and jitter
//! when it is lost, and how many calls are outstanding on it.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::ClientConfig;
use super::connection::Connection;
use crate::service::ServiceInfo;
use crate::{RpcError, telemetry, transport};

/// Where an endpoint connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// The addresses of one TCP server, tried in order, and the host name they were found
    /// under, if they were.
    Tcp {
        addrs: Vec<SocketAddr>,
        host: Option<Arc<str>>,
    },
    /// A Unix domain socket.
    #[cfg(unix)]
    Unix(std::path::PathBuf),
}

/// One server, and the connection to it.
pub(crate) struct Endpoint {
    target: Target,
    service: ServiceInfo,
    config: Arc<ClientConfig>,
    live: Mutex<Live>,
    /// One reconnection at a time; the calls that need it wait for it.
    connecting: tokio::sync::Mutex<()>,
    outstanding: AtomicUsize,
}

#[derive(Debug, Default)]
struct Live {
    connection: Option<Arc<Connection>>,
    /// Connection attempts that failed in a row.
    failures: u32,
    /// No new attempt before this.
    retry_at: Option<Instant>,
    /// Connection attempts made so far.
    attempts: u64,
    /// Why the last attempt failed.
    last_error: Option<RpcError>,
    /// A connection was made before: the next one is a reconnection.
    connected_before: bool,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("target", &self.target)
            .field("outstanding", &self.outstanding())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    pub(crate) fn new(target: Target, service: ServiceInfo, config: Arc<ClientConfig>) -> Self {
        Endpoint {
            target,
            service,
            config,
            live: Mutex::new(Live::default()),
            connecting: tokio::sync::Mutex::new(()),
            outstanding: AtomicUsize::new(0),
        }
    }

    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        // No code panics while holding the lock; if one ever did, the state is still usable.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current connection, if it is up and takes calls.
    pub(crate) fn live_connection(&self) -> Option<Arc<Connection>> {
        self.live()
            .connection
            .as_ref()
            .filter(|connection| !connection.is_closed() && !connection.is_draining())
            .cloned()
    }

    /// Whether the last attempts to connect failed and the next may not be made yet.
    pub(crate) fn is_backing_off(&self) -> bool {
        self.live_connection().is_none()
            && self
                .live()
                .retry_at
                .is_some_and(|retry_at| retry_at > Instant::now())
    }

    /// A connection that takes calls: the current one, or a new one, made once the backoff
    /// after failed attempts has passed. Calls that need a connection while an attempt is
    /// under way share that attempt's outcome: one attempt per backoff period, however many
    /// calls wait.
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>, RpcError> {
        if let Some(connection) = self.live_connection() {
            return Ok(connection);
        }
        let attempts_seen = self.live().attempts;
        let _turn = self.connecting.lock().await;
        if let Some(connection) = self.live_connection() {
            return Ok(connection);
        }
        {
            let live = self.live();
            if live.attempts != attempts_seen {
                // An attempt was made while this call waited for its turn, and it failed.
                return Err(live
                    .last_error
                    .clone()
                    .unwrap_or(RpcError::ConnectionClosed));
            }
        }
        let retry_at = self.live().retry_at;
        if let Some(retry_at) = retry_at {
            tokio::time::sleep_until(retry_at).await;
        }
        let connected = self.connect().await;
        let mut live = self.live();
        live.attempts += 1;
        match &connected {
            Ok(connection) => {
                if live.connected_before {
                    telemetry::reconnected(self.service.name);
                }
                live.connected_before = true;
                live.connection = Some(Arc::clone(connection));
                live.failures = 0;
                live.retry_at = None;
                live.last_error = None;
            }
            Err(error) => {
                live.last_error = Some(error.clone());
                live.failures = live.failures.saturating_add(1);
                let wait = backoff(live.failures, &self.config);
                live.retry_at = Some(Instant::now() + wait);
                tracing::debug!(target = ?self.target, %error, ?wait, "connecting failed");
                telemetry::endpoint_failed(self.service.name);
            }
        }
        connected
    }

    async fn connect(&self) -> Result<Arc<Connection>, RpcError> {
        let timeout = self.config.connect_timeout;
        let connecting = async {
            match &self.target {
                Target::Tcp { addrs, host } => {
                    let stream = transport::connect_tcp(&addrs[..])
                        .await
                        .map_err(|e| RpcError::Connect(Arc::new(e)))?;
                    #[cfg(feature = "tls")]
                    if let Some(tls) = &self.config.tls {
                        let addr = stream
                            .peer_addr()
                            .map_err(|e| RpcError::Connect(Arc::new(e)))?;
                        let stream = tls.connect(stream, host.as_deref(), addr).await?;
                        let stream = transport::Shared(stream);
                        return Connection::establish(stream, &self.service, &self.config)
                            .await
                            .map_err(crate::tls::refused_after_handshake);
                    }
                    let _ = host;
                    Connection::establish(stream, &self.service, &self.config).await
                }
                #[cfg(unix)]
                Target::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|e| RpcError::Connect(Arc::new(e)))?;
                    Connection::establish(stream, &self.service, &self.config).await
                }
            }
        };
        tokio::time::timeout(timeout, connecting)
            .await
            .unwrap_or(Err(RpcError::ConnectTimeout(timeout)))
    }

    /// How many calls are in flight on this endpoint.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Counts a call as outstanding until the returned guard is dropped.
    pub(crate) fn begin_call(self: &Arc<Self>) -> Outstanding {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        Outstanding(Arc::clone(self))
    }
}

/// A call in flight on an endpoint.
#[derive(Debug)]
pub(crate) struct Outstanding(Arc<Endpoint>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long to wait before connection attempt `failures + 1`: doubling from the minimum up to
/// the maximum, each wait drawn between half and all of that, so that clients that lost the
/// same server do not all come back at the same instant.
fn backoff(failures: u32, config: &ClientConfig) -> Duration {
    let doubled = config
        .reconnect_min
        .saturating_mul(1 << failures.saturating_sub(1).min(20));
    let ceiling = doubled.min(config.reconnect_max);
    let half = ceiling / 2;
    let jitter_range = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_nanos(random() % jitter_range)
}

/// A random number, from the standard library's per-instance hash keys: enough for jitter and
/// for picking endpoints, without a random-number crate.
pub(crate) fn random() -> u64 {
    RandomState::new().build_hasher().finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter() {
        let config = ClientConfig {
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
            ..ClientConfig::default()
        };
        for (failures, ceiling) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (5, 1600),
            (6, 2000),
            (40, 2000),
        ] {
            let ceiling = Duration::from_millis(ceiling);
            for _ in 0..50 {
                let wait = backoff(failures, &config);
                assert!(
                    wait >= ceiling / 2 && wait <= ceiling,
                    "{failures}: {wait:?}"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn calls_waiting_for_a_connection_share_one_attempt() {
        // Port 1 on loopback: nothing listens, every attempt is refused.
        let target = Target::Tcp {
            addrs: vec![SocketAddr::from(([127, 0, 0, 1], 1))],
            host: None,
        };
        let service = ServiceInfo {
            name: "Test",
            methods: &[],
            schema: crate::service::no_methods,
        };
        let config = ClientConfig {
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            ..ClientConfig::default()
        };
        let endpoint = Arc::new(Endpoint::new(target, service, Arc::new(config)));
        assert!(
            endpoint.connection().await.is_err(),
            "the first attempt fails"
        );
        assert!(endpoint.is_backing_off());
        let waiting: Vec<_> = (0..10)
            .map(|_| {
                let endpoint = Arc::clone(&endpoint);
                tokio::spawn(async move { endpoint.connection().await })
            })
            .collect();
        for call in waiting {
            assert!(call.await.expect("joins").is_err());
        }
        assert_eq!(
            endpoint.live().attempts,
            2,
            "ten waiting calls, one more attempt"
        );
    }

    /// Plays a server on `listener` for one connection: answers the client's hello, then holds
    /// the connection until `hang_up` fires.
    async fn serve_one(
        listener: tokio::net::TcpListener,
        service: &'static ServiceInfo,
        hang_up: tokio::sync::oneshot::Receiver<()>,
    ) {
        use crate::protocol::{FrameReader, FrameWriter, Hello};
        let (stream, _) = listener.accept().await.expect("accepts");
        let (read, write) = stream.into_split();
        let mut reader = FrameReader::new(read, 1 << 20);
        reader
            .next_frame()
            .await
            .expect("reads")
            .expect("the hello");
        Hello::new(service, 1 << 20, None, None, 1)
            .send(&mut FrameWriter::new(write))
            .await
            .expect("answers");
        let _ = hang_up.await;
    }

    #[tokio::test]
    async fn the_backoff_starts_over_after_a_connection_succeeds() {
        static SERVICE: ServiceInfo = ServiceInfo {
            name: "Test",
            methods: &[],
            schema: crate::service::no_methods,
        };
        // A free port, closed for now: every attempt is refused.
        let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds")
            .local_addr()
            .expect("an address");
        let config = ClientConfig {
            reconnect_min: Duration::from_millis(20),
            reconnect_max: Duration::from_secs(60),
            ..ClientConfig::default()
        };
        let target = Target::Tcp {
            addrs: vec![addr],
            host: None,
        };
        let endpoint = Endpoint::new(target, SERVICE, Arc::new(config));
        let wait = |endpoint: &Endpoint| {
            let retry_at = endpoint.live().retry_at.expect("backing off");
            retry_at.saturating_duration_since(Instant::now())
        };
        for _ in 0..4 {
            assert!(endpoint.connection().await.is_err(), "refused");
        }
        assert!(
            wait(&endpoint) > Duration::from_millis(20),
            "four failures wait longer than the minimum"
        );

        let listener = tokio::net::TcpListener::bind(addr).await.expect("rebinds");
        let (hang_up, hung_up) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(serve_one(listener, &SERVICE, hung_up));
        let connection = endpoint.connection().await.expect("connects");
        drop(hang_up);
        server.await.expect("joins");
        tokio::time::timeout(Duration::from_secs(20), connection.closed())
            .await
            .expect("the lost connection is noticed");

        assert!(endpoint.connection().await.is_err(), "refused again");
        assert!(
            wait(&endpoint) <= Duration::from_millis(20),
            "one failure since the success waits at most the minimum"
        );
    }

    #[test]
    fn random_numbers_differ() {
        let draws: std::collections::HashSet<u64> = (0..100).map(|_| random()).collect();
        assert!(draws.len() > 90);
    }
}
