//! One server address: the connection to it, reconnecting with exponential backoff and jitter
//! when it is lost, and how many calls are outstanding on it.

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::ClientConfig;
use super::connection::Connection;
use crate::alarm;
use crate::peer_process::PeerProcess;
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
    /// A server as written (`host:port`, or numbers), resolved again at each connection: a
    /// balanced client's.
    Named {
        name: String,
        host: Option<Arc<str>>,
    },
    /// A Unix domain socket.
    #[cfg(unix)]
    Unix(std::path::PathBuf),
    /// A connection made elsewhere and given to the endpoint, named for listings: a caller's
    /// reverse connection ([`CallerPool`](crate::CallerPool)). It is never made again: once it
    /// is gone, so is the endpoint.
    Given(String),
}

/// How many calls in a row may fail on an endpoint before it is ejected for a while.
const EJECT_AFTER: u32 = 5;

/// What an endpoint of a client is doing, as [`Channel::endpoints`](crate::Channel::endpoints)
/// lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointState {
    /// A connection is up and takes calls.
    Connected,
    /// A connection is being made.
    Connecting,
    /// The last attempts to connect failed; the next waits for its backoff.
    BackingOff,
    /// Calls kept failing on it: no call goes to it until its backoff has passed, unless
    /// every endpoint is out.
    Ejected,
    /// Its last health probe said it is not serving: no call goes to it until one says it
    /// is, unless every endpoint is out.
    NotServing,
    /// No connection, none being made, and free to make one when a call needs it.
    Idle,
}

/// One endpoint of a client, as [`Channel::endpoints`](crate::Channel::endpoints) lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStatus {
    /// The server, as it was given (`host:port`, an address, a socket's path).
    pub endpoint: String,
    /// What it is doing.
    pub state: EndpointState,
    /// How many calls are in flight on it.
    pub outstanding: usize,
    /// Why its last connection attempt failed, if it did.
    pub last_error: Option<String>,
}

/// Tells a client's watchers that an endpoint's state changed: a counter they wait on.
pub(crate) type Changes = Arc<tokio::sync::watch::Sender<u64>>;

/// A new counter of changes.
pub(crate) fn changes() -> Changes {
    Arc::new(tokio::sync::watch::channel(0).0)
}

pub(crate) fn changed(changes: &Changes) {
    changes.send_modify(|count| *count = count.wrapping_add(1));
}

/// One server, and the connection to it.
pub(crate) struct Endpoint {
    target: Target,
    service: ServiceInfo,
    config: Arc<ClientConfig>,
    changes: Changes,
    live: Mutex<Live>,
    /// One reconnection at a time; the calls that need it wait for it.
    connecting: tokio::sync::Mutex<()>,
    outstanding: AtomicUsize,
    /// Whether calls failed on it lately (`Live::call_failures` or `Live::ejections` is not
    /// 0): set and cleared under the lock, read without it, so that a call that succeeds on
    /// an endpoint with nothing to forget does not take the lock every call takes.
    failing: AtomicBool,
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
    /// Calls that failed on it in a row.
    call_failures: u32,
    /// How many times it was ejected in a row, for the length of the next ejection.
    ejections: u32,
    /// Ejected until then.
    ejected_until: Option<Instant>,
    /// Its last health probe said it is not serving.
    not_serving: bool,
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
    pub(crate) fn new(
        target: Target,
        service: ServiceInfo,
        config: Arc<ClientConfig>,
        changes: Changes,
    ) -> Self {
        Endpoint {
            target,
            service,
            config,
            changes,
            live: Mutex::new(Live::default()),
            connecting: tokio::sync::Mutex::new(()),
            outstanding: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
        }
    }

    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// The counter of its state's changes.
    pub(crate) fn changes(&self) -> &Changes {
        &self.changes
    }

    /// The server, as it was given.
    pub(crate) fn name(&self) -> String {
        match &self.target {
            Target::Tcp { addrs, host } => match (host, addrs.first()) {
                (Some(host), Some(addr)) => format!("{host}:{}", addr.port()),
                (None, Some(addr)) => addr.to_string(),
                (_, None) => "(no address)".to_owned(),
            },
            Target::Named { name, .. } | Target::Given(name) => name.clone(),
            #[cfg(unix)]
            Target::Unix(path) => path.display().to_string(),
        }
    }

    /// An endpoint over `connection`, made elsewhere, which it never makes again.
    pub(crate) fn given(
        name: String,
        connection: Arc<Connection>,
        service: ServiceInfo,
        config: Arc<ClientConfig>,
        changes: Changes,
    ) -> Self {
        connection.count_close_in(Arc::clone(&changes));
        let endpoint = Endpoint::new(Target::Given(name), service, config, changes);
        endpoint.live().connection = Some(connection);
        endpoint
    }

    /// Whether its connection was given and is gone, or takes no new calls: it will never
    /// take another.
    pub(crate) fn is_spent(&self) -> bool {
        matches!(self.target, Target::Given(_)) && self.live_connection().is_none()
    }

    /// What it is doing, for a listing.
    pub(crate) fn status(&self) -> EndpointStatus {
        let connected = self.live_connection().is_some();
        let connecting = self.connecting.try_lock().is_err();
        let now = Instant::now();
        let live = self.live();
        let state = if live.ejected_until.is_some_and(|until| until > now) {
            EndpointState::Ejected
        } else if live.not_serving {
            EndpointState::NotServing
        } else if connected {
            EndpointState::Connected
        } else if connecting {
            EndpointState::Connecting
        } else if live.retry_at.is_some_and(|at| at > now) {
            EndpointState::BackingOff
        } else {
            EndpointState::Idle
        };
        EndpointStatus {
            endpoint: self.name(),
            state,
            outstanding: self.outstanding(),
            last_error: live.last_error.as_ref().map(ToString::to_string),
        }
    }

    /// Records what a health probe said.
    pub(crate) fn set_serving(&self, serving: bool) {
        let mut live = self.live();
        if live.not_serving == serving {
            live.not_serving = !serving;
            drop(live);
            tracing::info!(endpoint = %self.name(), serving, "the endpoint's health changed");
            changed(&self.changes);
        }
    }

    /// Counts how a call on it went: calls failing in a row eject it for a backoff that grows
    /// with each ejection; one that succeeds puts it back.
    pub(crate) fn record_call(&self, failed: bool) {
        if !failed && !self.failing.load(Ordering::Acquire) {
            return;
        }
        let mut live = self.live();
        if !failed {
            let was_out = live.call_failures > 0 || live.ejections > 0;
            live.call_failures = 0;
            live.ejections = 0;
            self.failing.store(false, Ordering::Release);
            drop(live);
            if was_out {
                changed(&self.changes);
            }
            return;
        }
        live.call_failures += 1;
        self.failing.store(true, Ordering::Release);
        if live.call_failures < EJECT_AFTER {
            return;
        }
        live.call_failures = 0;
        live.ejections = live.ejections.saturating_add(1);
        let wait = backoff(live.ejections, &self.config);
        live.ejected_until = Some(alarm::after(Instant::now(), wait));
        drop(live);
        tracing::info!(endpoint = %self.name(), ?wait, "calls kept failing: ejected for a while");
        changed(&self.changes);
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
            .filter(|connection| connection.takes_new_calls())
            .cloned()
    }

    /// Whether a call may go here now, as far as the endpoint knows, in one look at its state:
    /// not a given connection that is gone, not backing off after failed attempts to connect,
    /// not ejected, not reported as not serving. (An endpoint with no connection that may
    /// make one may take a call: it connects for it.)
    pub(crate) fn takes_calls(&self) -> bool {
        let live = self.live();
        let connected = live
            .connection
            .as_ref()
            .is_some_and(|connection| connection.takes_new_calls());
        if live.not_serving || (!connected && matches!(self.target, Target::Given(_))) {
            return false;
        }
        // The clock is read only where a wait is set: a healthy endpoint costs no look at it.
        let now = Instant::now;
        let not_ejected = live.ejected_until.is_none_or(|until| until <= now());
        not_ejected && (connected || live.retry_at.is_none_or(|retry_at| retry_at <= now()))
    }

    /// A connection that takes calls: the current one, or a new one, made once the backoff
    /// after failed attempts has passed. Calls that need a connection while an attempt is
    /// under way share that attempt's outcome: one attempt per backoff period, however many
    /// calls wait.
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>, RpcError> {
        if let Some(connection) = self.live_connection() {
            return Ok(connection);
        }
        if matches!(self.target, Target::Given(_)) {
            return Err(RpcError::ConnectionClosed);
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
        changed(&self.changes);
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
                // Watchers hear of the connection's end too.
                connection.count_close_in(Arc::clone(&self.changes));
            }
            Err(error) => {
                live.last_error = Some(error.clone());
                live.failures = live.failures.saturating_add(1);
                let wait = backoff(live.failures, &self.config);
                live.retry_at = Some(alarm::after(Instant::now(), wait));
                tracing::debug!(target = ?self.target, %error, ?wait, "connecting failed");
                telemetry::endpoint_failed(self.service.name);
            }
        }
        drop(live);
        changed(&self.changes);
        connected
    }

    async fn connect(&self) -> Result<Arc<Connection>, RpcError> {
        let timeout = self.config.connect_timeout;
        let failed = |cause| RpcError::Connect {
            endpoint: self.name(),
            cause: Arc::new(cause),
        };
        let connecting = async {
            // A balanced client's servers are resolved at each connection; others, once.
            let (addrs, host) = match &self.target {
                Target::Tcp { addrs, host } => (Cow::Borrowed(&addrs[..]), host),
                Target::Named { name, host } => {
                    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(name.as_str())
                        .await
                        .map_err(failed)?
                        .collect();
                    (Cow::Owned(addrs), host)
                }
                Target::Given(_) => return Err(RpcError::ConnectionClosed),
                #[cfg(unix)]
                Target::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(failed)?;
                    let credentials = crate::peer::PeerCredentials::of(&stream);
                    let peer = PeerProcess::of_pid(credentials.and_then(|peer| peer.pid()));
                    return Connection::establish(stream, peer, &self.service, &self.config).await;
                }
            };
            let stream = transport::connect_tcp(&*addrs).await.map_err(failed)?;
            let peer = PeerProcess::of_tcp(&stream);
            #[cfg(feature = "tls")]
            if let Some(tls) = &self.config.tls {
                let addr = stream.peer_addr().map_err(failed)?;
                let stream = tls.connect(stream, host.as_deref(), addr).await?;
                return Connection::establish(stream, peer, &self.service, &self.config)
                    .await
                    .map_err(crate::tls::refused_after_handshake);
            }
            #[cfg(not(feature = "tls"))]
            let _ = host;
            Connection::establish(stream, peer, &self.service, &self.config).await
        };
        tokio::time::timeout(timeout, connecting)
            .await
            .unwrap_or(Err(RpcError::ConnectTimeout(timeout)))
    }

    /// How many calls are in flight on this endpoint.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Counts a call as outstanding, until [`Endpoint::end_call`].
    pub(crate) fn begin_call(&self) {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an outstanding call as ended.
    pub(crate) fn end_call(&self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
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

/// A random number, enough for jitter and for picking endpoints, without a random-number
/// crate: each thread runs its own xorshift64* generator, seeded from the standard library's
/// random hash keys: a hash of nothing under fresh keys at each draw costs about 80
/// instructions a number, and a pool draws two at every call.
pub(crate) fn random() -> u64 {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(
            // Never zero: xorshift stays at zero from there.
            RandomState::new().build_hasher().finish() | 1,
        );
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
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

    /// An endpoint of port 1 on loopback, where nothing listens.
    fn unreachable(config: ClientConfig) -> Endpoint {
        let target = Target::Tcp {
            addrs: vec![SocketAddr::from(([127, 0, 0, 1], 1))],
            host: None,
        };
        let service = ServiceInfo {
            name: "Test",
            methods: &[],
            schema: crate::service::no_methods,
        };
        Endpoint::new(target, service, Arc::new(config), changes())
    }

    /// Five calls failing in a row eject an endpoint, four do not, and a success in between
    /// starts the count over. Watchers hear of the ejection and of the success that ends a run
    /// of failures, not of every success.
    #[tokio::test(start_paused = true)]
    async fn five_failures_in_a_row_eject_and_a_success_starts_the_count_over() {
        let endpoint = unreachable(ClientConfig::default());
        let mut watch = endpoint.changes().subscribe();
        let mut heard = || {
            let changed = watch.has_changed().expect("the endpoint lives");
            watch.mark_unchanged();
            changed
        };
        endpoint.record_call(false);
        assert!(!heard(), "a success after successes");
        for _ in 0..EJECT_AFTER - 1 {
            endpoint.record_call(true);
        }
        assert!(endpoint.takes_calls(), "one failure short");
        endpoint.record_call(false);
        assert!(heard(), "a success after failures");
        for _ in 0..EJECT_AFTER - 1 {
            endpoint.record_call(true);
        }
        assert!(endpoint.takes_calls(), "the count started over");
        endpoint.record_call(true);
        assert!(!endpoint.takes_calls(), "the last failure in a row ejects");
        assert!(heard(), "the ejection");
        endpoint.record_call(false);
        assert!(heard(), "a success after an ejection");
    }

    /// An ejection and a backoff last until their instant and no longer, for the listing and
    /// for the pool's choice alike; an endpoint reported not serving takes no call until it is
    /// reported serving again.
    #[tokio::test(start_paused = true)]
    async fn an_ejection_and_a_backoff_end_at_their_instant() {
        let endpoint = unreachable(ClientConfig::default());
        let shown = format!("{endpoint:?}");
        assert!(shown.starts_with("Endpoint { target: Tcp"), "{shown}");
        assert_eq!(endpoint.status().state, EndpointState::Idle);
        assert!(
            endpoint.takes_calls(),
            "not connected yet, it connects for a call"
        );

        let ten_seconds = Duration::from_secs(10);
        endpoint.live().ejected_until = Some(Instant::now() + ten_seconds);
        assert_eq!(endpoint.status().state, EndpointState::Ejected);
        assert!(!endpoint.takes_calls(), "ejected");
        tokio::time::advance(ten_seconds).await;
        assert_eq!(endpoint.status().state, EndpointState::Idle);
        assert!(endpoint.takes_calls(), "the ejection is over");

        endpoint.live().retry_at = Some(Instant::now() + ten_seconds);
        assert_eq!(endpoint.status().state, EndpointState::BackingOff);
        assert!(!endpoint.takes_calls(), "backing off");
        tokio::time::advance(ten_seconds).await;
        assert_eq!(endpoint.status().state, EndpointState::Idle);
        assert!(endpoint.takes_calls(), "the backoff is over");

        endpoint.set_serving(false);
        assert!(!endpoint.takes_calls(), "not serving");
        endpoint.set_serving(true);
        assert!(endpoint.takes_calls(), "serving again");
    }

    #[tokio::test(start_paused = true)]
    async fn calls_waiting_for_a_connection_share_one_attempt() {
        let endpoint = Arc::new(unreachable(ClientConfig {
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            ..ClientConfig::default()
        }));
        assert!(
            endpoint.connection().await.is_err(),
            "the first attempt fails"
        );
        assert_eq!(endpoint.status().state, EndpointState::BackingOff);
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
        // A port bound but not listened on: every attempt is refused, and no other test's
        // socket can take the port before it is opened (as one may take a port freed by
        // dropping a listener).
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind("127.0.0.1:0".parse().expect("an address"))
            .expect("binds");
        let addr = socket.local_addr().expect("an address");
        let config = ClientConfig {
            reconnect_min: Duration::from_millis(20),
            reconnect_max: Duration::from_secs(60),
            ..ClientConfig::default()
        };
        let target = Target::Tcp {
            addrs: vec![addr],
            host: None,
        };
        let endpoint = Endpoint::new(target, SERVICE, Arc::new(config), changes());
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

        let listener = socket.listen(8).expect("listens");
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

    /// Each thread draws its own numbers: two threads started alike do not draw the same.
    #[test]
    fn threads_draw_different_random_numbers() {
        let draw = || std::thread::spawn(|| (0..4).map(|_| random()).collect::<Vec<_>>());
        let (a, b) = (draw(), draw());
        assert_ne!(a.join().expect("draws"), b.join().expect("draws"));
    }
}
