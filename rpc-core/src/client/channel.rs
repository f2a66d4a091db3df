//! What a generated client calls through: the server or servers it talks to, and the options
//! its calls are made with. Failover and retries live here.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::connection::{Answered, CallSpec, Connection, Failure};
use super::endpoint::{Endpoint, EndpointState, EndpointStatus};
use super::local::Local;
use super::pool::Pool;
use super::retry::RetryBudget;
use crate::__private::ByteVec;
use crate::health::ServingStatus;
use crate::intercept::ClientInterceptor;
use crate::protocol::{Decode, Encode};
use crate::schema::ServiceSchema;
use crate::service::{MethodInfo, ServiceInfo};
use crate::stream::Outbound;
use crate::task::until;
use crate::telemetry::{self, CallEnd, Meters, Side};
use crate::{Metadata, RpcError, Streaming};

/// The connection or connections of a generated client, with the options its calls are made
/// with (deadline, metadata).
///
/// Cheap to clone: clones share the connections. A channel is one of:
///
/// - **one server** (`connect`, `connect_unix`): any number of calls in flight on one
///   connection, which is re-established, with exponential backoff and jitter, when it is lost;
/// - **many servers** (`ClientBuilder::balance`, `ClientBuilder::resolve`): each call goes to
///   the less busy of two servers picked at random; servers that fail are passed over while
///   they reconnect;
/// - **one stream you opened** (`from_stream`), which cannot be re-established.
///
/// A call that never ran (the connection was already down, the server was shutting down) is
/// made again, on another server where there is one. A call whose connection was lost after it
/// was sent may or may not have run: a method marked `#[rpc(idempotent)]` is then made again
/// on another server, within its deadline and a retry budget; any other fails with
/// [`RpcError::Interrupted`].
#[derive(Clone)]
pub struct Channel {
    backend: Arc<Backend>,
    deadline: Duration,
    metadata: Arc<Metadata>,
    interceptor: Option<ClientInterceptor>,
    /// The service: its name for the calls' spans, its schema to explain a mismatch.
    service: ServiceInfo,
    /// Whether a call waits for a server to come back rather than failing at once.
    wait_for_ready: bool,
    /// The handles of its calls' metrics, shared with its clones.
    meters: Arc<Meters>,
}

/// Where calls go.
pub(crate) enum Backend {
    /// The service itself, in this process.
    Local(Local),
    Fixed(Arc<Connection>),
    Endpoint(Arc<Endpoint>, RetryBudget),
    Pool(Arc<Pool>, RetryBudget),
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Channel");
        match &*self.backend {
            Backend::Local(local) => out.field("local", local),
            Backend::Fixed(connection) => out.field("connection", connection),
            Backend::Endpoint(endpoint, _) => out.field("endpoint", endpoint),
            Backend::Pool(pool, _) => out.field("pool", pool),
        };
        out.field("deadline", &self.deadline)
            .field("metadata", &self.metadata)
            .finish()
    }
}

/// Awaits `future` inside `span` when a subscriber wants the span, and as it is otherwise.
macro_rules! in_span {
    ($span:expr, $future:expr) => {
        if $span.is_disabled() {
            $future.await
        } else {
            crate::telemetry::InSpan::new(&$span, std::pin::pin!($future)).await
        }
    };
}

/// The error for a pool none of whose endpoints could be reached: the one error if there was
/// one endpoint, else each endpoint and its error.
fn all_unavailable(mut causes: Vec<(String, RpcError)>) -> RpcError {
    if causes.len() == 1 {
        let (_, error) = causes.remove(0);
        return error;
    }
    RpcError::Unavailable {
        causes: causes
            .into_iter()
            .map(|(endpoint, error)| (endpoint, error.to_string()))
            .collect(),
    }
}

/// What a local channel answers to a call made as to a remote one.
fn not_remote() -> RpcError {
    RpcError::Protocol(
        "a local client calls its service directly: call it through its generated methods"
            .to_owned(),
    )
}

/// Records how a call ended: in its span and its metrics.
fn ended<T>(end: CallEnd, result: Result<T, RpcError>) -> Result<T, RpcError> {
    match &result {
        Ok(_) => end.finish(telemetry::OK),
        Err(error) => end.fail(error),
    }
    result
}

/// The server's own method that describes a service (docs/wire.md, section 6.1).
static DESCRIBE: MethodInfo = MethodInfo {
    name: crate::protocol::DESCRIBE_METHOD,
    idempotent: true,
};

/// Where one attempt at a call goes.
struct Target<'a> {
    connection: Arc<Connection>,
    /// The endpoint of the connection, which counts the call among its outstanding ones until
    /// the target is dropped; `None` for a channel's one connection. Borrowed from a channel of
    /// one endpoint: its reference count, which every caller shares, is left alone.
    endpoint: Option<Cow<'a, Arc<Endpoint>>>,
}

impl Drop for Target<'_> {
    fn drop(&mut self) {
        if let Some(endpoint) = &self.endpoint {
            endpoint.end_call();
        }
    }
}

impl<'a> Target<'a> {
    /// The one connection of a channel over a stream.
    fn fixed(connection: &Arc<Connection>) -> Self {
        Target {
            connection: Arc::clone(connection),
            endpoint: None,
        }
    }

    /// `connection` to `endpoint`, counted among the endpoint's outstanding calls until the
    /// attempt ends.
    fn on(endpoint: Cow<'a, Arc<Endpoint>>, connection: Arc<Connection>) -> Self {
        endpoint.begin_call();
        Target {
            connection,
            endpoint: Some(endpoint),
        }
    }
}

impl Channel {
    pub(crate) fn new(
        backend: Backend,
        deadline: Duration,
        metadata: Metadata,
        interceptor: Option<ClientInterceptor>,
        service: ServiceInfo,
        wait_for_ready: bool,
    ) -> Channel {
        Channel {
            backend: Arc::new(backend),
            deadline,
            metadata: Arc::new(metadata),
            interceptor,
            service,
            wait_for_ready,
            meters: Arc::new(Meters::new(Side::Client)),
        }
    }

    /// The span of one call of `method`, in OpenTelemetry's terms for RPC.
    fn span(&self, method: &MethodInfo) -> tracing::Span {
        if !telemetry::spans_wanted() {
            return tracing::Span::none();
        }
        tracing::info_span!(
            "rpc.call",
            otel.kind = %"client",
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            rpc.system = %"rpc-core",
            rpc.service = %self.service.name,
            rpc.method = %method.name,
            rpc.status_code = tracing::field::Empty,
        )
    }

    /// The record of a call of `method` from its start to its end, under `span`, counted in the
    /// channel's metrics; its duration counts from what `started` says, asked only when the
    /// metrics record one.
    fn call_end(
        &self,
        span: &tracing::Span,
        method: &MethodInfo,
        started: impl FnOnce() -> Instant,
    ) -> CallEnd {
        CallEnd::start(span, &self.meters, self.service.name, method.name, started)
    }

    /// A client of another service over the same connections: for a server of several
    /// services ([`Services`](crate::Services)), clients of each share one connection, and one
    /// reconnection policy, deadline and metadata.
    ///
    /// Whether the server has the service is checked at each call, on the connection it goes
    /// over: a server without it fails the call with [`RpcError::WrongService`]. A local
    /// client serves its one service only, and fails calls of any other the same way.
    pub fn client<C: crate::ServiceClient>(&self) -> C {
        C::from_channel(self.for_service(C::INFO))
    }

    /// The same connections, for calls of `service`.
    pub(crate) fn for_service(&self, service: ServiceInfo) -> Channel {
        let mut channel = self.clone();
        channel.service = service;
        channel
    }

    /// The same connections, with calls that wait at most `deadline` (from when each call is
    /// made, retries included). The server learns the deadline and drops the handler when it
    /// passes.
    #[must_use]
    pub fn with_deadline(&self, deadline: Duration) -> Channel {
        Channel {
            deadline,
            ..self.clone()
        }
    }

    /// The same connections, with calls that, while no server can be reached, wait within their
    /// deadline for one to come back instead of failing at once (gRPC's wait-for-ready). The
    /// default comes from [`ClientBuilder::wait_for_ready`](crate::ClientBuilder::wait_for_ready).
    #[must_use]
    pub fn wait_for_ready(&self, wait: bool) -> Channel {
        let mut channel = self.clone();
        channel.wait_for_ready = wait;
        channel
    }

    /// Each server of this client: its address, what it is doing, its calls in flight, and
    /// why it last failed. One for a client of one server; none for a local one.
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        match &*self.backend {
            Backend::Local(_) => Vec::new(),
            Backend::Fixed(connection) => vec![EndpointStatus {
                endpoint: "(a stream)".to_owned(),
                state: if connection.is_closed() {
                    EndpointState::Idle
                } else {
                    EndpointState::Connected
                },
                outstanding: 0,
                last_error: None,
            }],
            Backend::Endpoint(endpoint, _) => vec![endpoint.status()],
            Backend::Pool(pool, _) => pool.endpoints().iter().map(|e| e.status()).collect(),
        }
    }

    /// The [`endpoints`](Self::endpoints) each time one of them changes: connects, fails,
    /// loses its connection, is ejected or comes back, appears or vanishes. For a client of one
    /// server or of a pool, it ends only with the channel's last clone; for a client of one
    /// stream, or a local one, which have nothing to report, it ends at once.
    pub fn endpoint_changes(
        &self,
    ) -> impl futures_util::Stream<Item = Vec<EndpointStatus>> + Send + 'static {
        let changes = match &*self.backend {
            Backend::Endpoint(endpoint, _) => Some(endpoint.changes().subscribe()),
            Backend::Pool(pool, _) => Some(pool.changes().subscribe()),
            Backend::Local(_) | Backend::Fixed(_) => None,
        };
        let channel = self.clone();
        futures_util::stream::unfold((channel, changes), |(channel, changes)| async move {
            let mut changes = changes?;
            changes.changed().await.ok()?;
            changes.mark_unchanged();
            Some((channel.endpoints(), (channel, Some(changes))))
        })
    }

    /// The same connections, with `key` set to `value` in the metadata of every call.
    #[must_use]
    pub fn with_metadata(&self, key: impl AsRef<str>, value: impl AsRef<[u8]>) -> Channel {
        let mut channel = self.clone();
        Arc::make_mut(&mut channel.metadata).insert(key, value);
        channel
    }

    /// How long each call waits for its answer.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// What each call carries to the server.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Tells the service this client serves back ([`ClientBuilder::serve`]) to take no new
    /// call from the server on the client's connections, at once, when this is called: the
    /// server hears so at once (a GoAway on the reverse connection), and calls it makes from then
    /// on fail there as not run (a [`CallerPool`](crate::CallerPool) makes them on its other
    /// callers). The future returned resolves once the calls already running have answered.
    /// The client's own calls go on. A worker leaving its coordinator gracefully calls this,
    /// awaits it, then drops its client. A connection made after this (a reconnection) serves
    /// back again.
    ///
    /// [`ClientBuilder::serve`]: crate::ClientBuilder::serve
    pub fn stop_serving_back(&self) -> impl Future<Output = ()> + Send + use<> {
        let connections: Vec<Arc<Connection>> = match &*self.backend {
            Backend::Local(_) => Vec::new(),
            Backend::Fixed(connection) => vec![Arc::clone(connection)],
            Backend::Endpoint(endpoint, _) => endpoint.live_connection().into_iter().collect(),
            Backend::Pool(pool, _) => pool
                .endpoints()
                .iter()
                .filter_map(|endpoint| endpoint.live_connection())
                .collect(),
        };
        let stopping: Vec<_> = connections
            .iter()
            .map(|connection| connection.stop_serving_back())
            .collect();
        async move {
            futures_util::future::join_all(stopping).await;
        }
    }

    /// The one connection of a channel over a given stream (`connect_stream`, as the server's
    /// client of a reverse connection is); `None` for any other channel.
    pub(crate) fn fixed_connection(&self) -> Option<&Arc<Connection>> {
        match &*self.backend {
            Backend::Fixed(connection) => Some(connection),
            Backend::Local(_) | Backend::Endpoint(..) | Backend::Pool(..) => None,
        }
    }

    /// Whether no connection is up: for one stream, that it closed for good; for a server or
    /// servers, that the next call will have to connect first.
    pub fn is_closed(&self) -> bool {
        match &*self.backend {
            Backend::Local(_) => false,
            Backend::Fixed(connection) => connection.is_closed(),
            Backend::Endpoint(endpoint, _) => endpoint.live_connection().is_none(),
            Backend::Pool(pool, _) => pool
                .endpoints()
                .iter()
                .all(|endpoint| endpoint.live_connection().is_none()),
        }
    }

    /// Returns once the current connection has closed, for whatever reason: the server went
    /// away, shut down, closed it as idle, or went silent. For many servers, once every
    /// connection has.
    pub async fn closed(&self) {
        match &*self.backend {
            // An in-process service has no connection to lose.
            Backend::Local(_) => std::future::pending().await,
            Backend::Fixed(connection) => connection.closed().await,
            Backend::Endpoint(endpoint, _) => {
                if let Some(connection) = endpoint.live_connection() {
                    connection.closed().await;
                }
            }
            Backend::Pool(pool, _) => {
                for endpoint in pool.endpoints() {
                    if let Some(connection) = endpoint.live_connection() {
                        connection.closed().await;
                    }
                }
            }
        }
    }

    /// Calls `method` with its encoded argument tuple and decodes the result, failing over and
    /// retrying as the channel's kind allows.
    ///
    /// Generated clients call this; call it directly only to talk to a service without its
    /// generated client. Dropping the future before it completes cancels the call: the server
    /// drops its handler.
    pub async fn call<A, R>(&self, method: &'static MethodInfo, args: &A) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.call_as(method, args).await
    }

    /// [`Channel::call`], for arguments encoded as serde or already, and results decoded
    /// either way.
    pub(crate) async fn call_as<A, R>(
        &self,
        method: &'static MethodInfo,
        args: &A,
    ) -> Result<R, RpcError>
    where
        A: Encode + ?Sized,
        R: Decode,
    {
        self.call_taking(method, args, false).await
    }

    /// [`Channel::call`] of a method whose result is a byte string: a large one is read into
    /// memory of its own, which becomes the result without a copy.
    pub(crate) async fn call_byte_string<A>(
        &self,
        method: &'static MethodInfo,
        args: &A,
    ) -> Result<ByteVec, RpcError>
    where
        A: Encode + ?Sized,
    {
        self.call_taking(method, args, true).await
    }

    /// [`Channel::call_as`]; `takes_byte_string` if `R` is a byte string taken as it was read.
    async fn call_taking<A, R>(
        &self,
        method: &'static MethodInfo,
        args: &A,
        takes_byte_string: bool,
    ) -> Result<R, RpcError>
    where
        A: Encode + ?Sized,
        R: Decode,
    {
        let span = self.span(method);
        let now = Instant::now();
        let end = self.call_end(&span, method, || now);
        let metadata = self.call_metadata(&span);
        let mut spec = self.spec(method, &metadata, now);
        spec.takes_byte_string = takes_byte_string;
        let mut avoid = None;
        // Counted at the first call that did not run: a pool's endpoints are not counted at
        // every call.
        let mut not_run_retries = None;
        // The span is entered around each step rather than wrapped around the whole call, and
        // only when a subscriber wants it: a wrapper would move the call's large state once
        // more on every call.
        loop {
            let target = in_span!(span, self.target(&mut spec, avoid.as_ref()));
            let target = match target {
                Ok(target) => target,
                Err(error) => return ended(end, Err(error)),
            };
            let attempt = in_span!(span, target.connection.start(spec, args, None, false));
            let outcome = attempt.and_then(Answered::into_value);
            if let Some(endpoint) = &target.endpoint {
                endpoint.record_call(outcome.as_ref().err().is_some_and(Failure::is_the_servers));
            }
            let failure = match outcome {
                Ok(value) => {
                    if let Some(budget) = self.budget() {
                        budget.deposit();
                    }
                    return ended(end, Ok(value));
                }
                Err(failure) => failure,
            };
            let retry = match (&failure, self.budget()) {
                (Failure::NotRun(_), Some(_)) => {
                    let left = not_run_retries.get_or_insert_with(|| self.not_run_retries());
                    *left = left.saturating_sub(1);
                    *left > 0
                }
                (Failure::Lost(_), Some(budget)) => method.idempotent && budget.withdraw(),
                _ => false,
            };
            let expired = spec
                .expires
                .is_some_and(|expires| expires <= Instant::now());
            if !retry || expired {
                return ended(end, Err(self.failed(failure, method).await));
            }
            span.in_scope(|| tracing::debug!(?failure, "retrying a call"));
            spec.fresh = false;
            telemetry::retried(self.service.name, method.name);
            avoid = target.endpoint.as_deref().cloned();
        }
    }

    /// Whether this channel calls a service in this process ([`ClientBuilder::local`]).
    ///
    /// [`ClientBuilder::local`]: crate::ClientBuilder::local
    pub fn is_local(&self) -> bool {
        matches!(&*self.backend, Backend::Local(_))
    }

    /// Calls the local service with `request`, a value of its request enum, under this
    /// channel's deadline and metadata, and returns its response.
    pub(crate) async fn call_local<Req, Resp>(
        &self,
        method: &'static MethodInfo,
        request: Req,
    ) -> Result<Resp, RpcError>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        let Backend::Local(local) = &*self.backend else {
            return Err(RpcError::Protocol("this client is not local".to_owned()));
        };
        if local.service_name() != self.service.name {
            return Err(RpcError::WrongService {
                expected: self.service.name.to_owned(),
                served: vec![local.service_name().to_owned()],
            });
        }
        let span = self.span(method);
        let end = self.call_end(&span, method, Instant::now);
        let metadata = self.call_metadata(&span).into_owned();
        let called = local.call(method, request, self.deadline, metadata);
        ended(end, in_span!(span, called))
    }

    /// The deadline a streamed result of a local call of `method` is read under, from now.
    pub(crate) fn local_stream<T: Send + 'static>(
        &self,
        method: &'static MethodInfo,
        stream: Streaming<T>,
    ) -> Streaming<T> {
        match tokio::time::Instant::now().checked_add(self.deadline) {
            Some(expires) => stream.within(expires, method.name, self.deadline),
            None => stream,
        }
    }

    /// Asks the server whether it is serving (see [`health`](crate::health)). A local client's
    /// service always is.
    pub async fn health(&self) -> Result<ServingStatus, RpcError> {
        self.service_health("").await
    }

    /// The server's status now, then each time it changes, until it shuts down.
    pub async fn watch_health(&self) -> Result<Streaming<ServingStatus>, RpcError> {
        self.watch_service_health("").await
    }

    /// Asks the server whether it serves `service`, one of a server of several
    /// ([`Services`](crate::Services)); `""` asks about the connection's own, as
    /// [`health`](Self::health) does. A server without that service answers
    /// [`ServingStatus::ServiceUnknown`].
    pub async fn service_health(&self, service: &str) -> Result<ServingStatus, RpcError> {
        if self.is_local() {
            return Ok(self.local_health(service));
        }
        self.call(&crate::health::CHECK, &(service,)).await
    }

    /// `service`'s status now, then each time it changes, until the server shuts down.
    pub async fn watch_service_health(
        &self,
        service: &str,
    ) -> Result<Streaming<ServingStatus>, RpcError> {
        if self.is_local() {
            return Ok(Streaming::iter([self.local_health(service)]));
        }
        self.call_streaming(&crate::health::WATCH, &(service,))
            .await
    }

    /// The health of `service` as a local client's: its own service always serves.
    fn local_health(&self, service: &str) -> ServingStatus {
        if service.is_empty() || service == self.service.name {
            ServingStatus::Serving
        } else {
            ServingStatus::ServiceUnknown
        }
    }

    /// Asks the server for its schema: its methods, their arguments' names, and the structure
    /// of every type they send. Fails with [`RpcError::UnknownMethod`] from a server whose
    /// reflection is off.
    pub async fn describe(&self) -> Result<ServiceSchema, RpcError> {
        if self.is_local() {
            return Ok(self.service.describe()?.clone());
        }
        self.call(&DESCRIBE, &()).await
    }

    /// The services the server serves, as its hello announced them: one, unless it serves
    /// several ([`Services`](crate::Services)). Connects first if need be; for a pool, asks
    /// the server the next call would go to.
    pub async fn services(&self) -> Result<Vec<String>, RpcError> {
        if self.is_local() {
            return Ok(vec![self.service.name.to_owned()]);
        }
        let metadata = Metadata::new();
        let mut spec = self.spec(&DESCRIBE, &metadata, Instant::now());
        let target = self.target(&mut spec, None).await?;
        Ok(target.connection.served())
    }

    /// The error a failed call reports; for a method whose signature differs from the
    /// server's, with what differs, if the server describes itself.
    async fn failed(&self, failure: Failure, method: &MethodInfo) -> RpcError {
        self.explain(failure.into_error(method.name)).await
    }

    /// `error`; for a method whose signature differs from the server's, with what differs, if
    /// the server describes itself.
    pub(crate) async fn explain(&self, error: RpcError) -> RpcError {
        match error {
            RpcError::SignatureMismatch {
                method,
                difference: None,
            } => {
                let difference = self.difference(&method).await;
                RpcError::SignatureMismatch { method, difference }
            }
            other => other,
        }
    }

    /// What differs between this client's `method` and the server's, as the server describes
    /// it.
    fn difference<'a>(
        &'a self,
        method: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<String>> + Send + 'a>> {
        Box::pin(async move {
            let ours = self.service.describe().ok()?;
            let asking = self.with_deadline(self.deadline.min(Duration::from_secs(5)));
            let theirs = asking.describe().await.ok()?;
            crate::schema::difference(ours, &theirs, method)
        })
    }

    /// Calls a method that takes a stream: sends `upload` item by item, as the server grants
    /// credit, and decodes the result. A call with a stream is made once: the stream cannot be
    /// replayed.
    pub async fn call_upload<A, U, R>(
        &self,
        method: &'static MethodInfo,
        args: &A,
        upload: Streaming<U>,
    ) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        U: Serialize + Send + 'static,
        R: DeserializeOwned,
    {
        self.upload(method, args, Outbound::new(upload)).await
    }

    /// Makes a call with a streamed argument and decodes its result.
    pub(crate) async fn upload<A, R>(
        &self,
        method: &'static MethodInfo,
        args: &A,
        upload: Outbound,
    ) -> Result<R, RpcError>
    where
        A: Encode + ?Sized,
        R: Decode,
    {
        let answered = self.call_once(method, args, Some(upload), false).await;
        let (value, end) = answered?;
        ended(
            end,
            value
                .into_value()
                .map_err(|failure| failure.into_error(method.name)),
        )
    }

    /// Calls a method that returns a stream. The call's deadline covers the whole stream;
    /// dropping the stream cancels the call.
    pub async fn call_streaming<A, T>(
        &self,
        method: &'static MethodInfo,
        args: &A,
    ) -> Result<Streaming<T>, RpcError>
    where
        A: Serialize + ?Sized,
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        self.download(method, args, None).await
    }

    /// Calls a method that takes a stream and returns one; `upload` goes on being sent while the
    /// returned stream is read.
    pub async fn call_bidi<A, U, T>(
        &self,
        method: &'static MethodInfo,
        args: &A,
        upload: Streaming<U>,
    ) -> Result<Streaming<T>, RpcError>
    where
        A: Serialize + ?Sized,
        U: Serialize + Send + 'static,
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let upload = Some(Outbound::new(upload));
        self.download(method, args, upload).await
    }

    /// Calls a method that returns a stream or, instead of it, an error
    /// (`Result<Streaming<T>, E>`). The call's deadline covers the whole stream; dropping the
    /// stream cancels the call.
    pub async fn call_streaming_or_error<A, T, E>(
        &self,
        method: &'static MethodInfo,
        args: &A,
    ) -> Result<Result<Streaming<T>, E>, RpcError>
    where
        A: Serialize + ?Sized,
        T: serde::de::DeserializeOwned + Send + 'static,
        E: serde::de::DeserializeOwned,
    {
        self.download_or_error(method, args, None).await
    }

    /// Calls a method that takes a stream and returns one or, instead of it, an error; `upload`
    /// goes on being sent while the returned stream is read, and stops if an error comes.
    pub async fn call_bidi_or_error<A, U, T, E>(
        &self,
        method: &'static MethodInfo,
        args: &A,
        upload: Streaming<U>,
    ) -> Result<Result<Streaming<T>, E>, RpcError>
    where
        A: Serialize + ?Sized,
        U: Serialize + Send + 'static,
        T: serde::de::DeserializeOwned + Send + 'static,
        E: serde::de::DeserializeOwned,
    {
        let upload = Some(Outbound::new(upload));
        self.download_or_error(method, args, upload).await
    }

    /// Makes a call whose result is a stream or an error in its place. The call's span, and
    /// its count in the metrics, last until the stream ends or is dropped, or the error comes.
    pub(crate) async fn download_or_error<A, T, E>(
        &self,
        method: &'static MethodInfo,
        args: &A,
        upload: Option<Outbound>,
    ) -> Result<Result<Streaming<T>, E>, RpcError>
    where
        A: Encode + ?Sized,
        T: Decode + Send + 'static,
        E: Decode,
    {
        let (answered, end) = self.call_once(method, args, upload, true).await?;
        match answered.into_stream_or_error(end) {
            Ok(Ok(stream)) => Ok(Ok(stream)),
            Ok(Err((error, end))) => ended(end, Ok(Err(error))),
            Err(failed) => {
                let (failure, end) = *failed;
                ended(end, Err(self.failed(failure, method).await))
            }
        }
    }

    /// Makes a call whose result is a stream. The call's span, and its count in the metrics,
    /// last until the stream ends or is dropped.
    pub(crate) async fn download<A, T>(
        &self,
        method: &'static MethodInfo,
        args: &A,
        upload: Option<Outbound>,
    ) -> Result<Streaming<T>, RpcError>
    where
        A: Encode + ?Sized,
        T: Decode + Send + 'static,
    {
        let (answered, end) = self.call_once(method, args, upload, true).await?;
        match answered.into_stream(end) {
            Ok(stream) => Ok(stream),
            Err(failed) => {
                let (failure, end) = *failed;
                ended(end, Err(self.failed(failure, method).await))
            }
        }
    }

    /// Makes a call that is made once (a stream cannot be replayed) inside its span: its
    /// answer, and what records how the call ends; or how it failed, recorded.
    async fn call_once<A>(
        &self,
        method: &'static MethodInfo,
        args: &A,
        upload: Option<Outbound>,
        download: bool,
    ) -> Result<(Answered, CallEnd), RpcError>
    where
        A: Encode + ?Sized,
    {
        let span = self.span(method);
        let call = self.stream_once(method, args, upload, download, &span);
        let end = self.call_end(&span, method, Instant::now);
        match in_span!(span, call) {
            Ok(answered) => Ok((answered, end)),
            Err(failure) => ended(end, Err(self.failed(failure, method).await)),
        }
    }

    async fn stream_once<A: Encode + ?Sized>(
        &self,
        method: &'static MethodInfo,
        args: &A,
        upload: Option<Outbound>,
        download: bool,
        span: &tracing::Span,
    ) -> Result<Answered, Failure> {
        let metadata = self.call_metadata(span);
        let mut spec = self.spec(method, &metadata, Instant::now());
        let target = self.target(&mut spec, None).await;
        let target = target.map_err(Failure::Final)?;
        target.connection.start(spec, args, upload, download).await
    }

    /// What a call of `method` made `now` goes out with.
    fn spec<'a>(
        &self,
        method: &'static MethodInfo,
        metadata: &'a Metadata,
        now: Instant,
    ) -> CallSpec<'a> {
        CallSpec {
            service: self.service,
            method,
            deadline: self.deadline,
            expires: now.checked_add(self.deadline),
            fresh: true,
            metadata,
            takes_byte_string: false,
        }
    }

    /// The metadata of the next call: the channel's, as the client's interceptor changes it.
    /// With the `opentelemetry` feature, it also carries the trace context of `span`, the
    /// call's span, when that belongs to an OpenTelemetry trace.
    #[cfg_attr(not(feature = "opentelemetry"), allow(unused_variables))]
    fn call_metadata(&self, span: &tracing::Span) -> Cow<'_, Metadata> {
        #[cfg_attr(not(feature = "opentelemetry"), allow(unused_mut))]
        let mut metadata = match &self.interceptor {
            None => Cow::Borrowed(&*self.metadata),
            Some(interceptor) => Cow::Owned(interceptor.apply(&self.metadata)),
        };
        #[cfg(feature = "opentelemetry")]
        if !span.is_disabled()
            && let Some(context) = telemetry::trace_context::of(span)
        {
            telemetry::trace_context::write(&context, metadata.to_mut());
        }
        metadata
    }

    fn budget(&self) -> Option<&RetryBudget> {
        match &*self.backend {
            Backend::Local(_) | Backend::Fixed(_) => None,
            Backend::Endpoint(_, budget) | Backend::Pool(_, budget) => Some(budget),
        }
    }

    /// How many times a call that did not run may be made: once per server, and once more.
    fn not_run_retries(&self) -> usize {
        match &*self.backend {
            Backend::Local(_) | Backend::Fixed(_) => 1,
            Backend::Endpoint(..) => 2,
            Backend::Pool(pool, _) => pool.count() + 1,
        }
    }

    /// A connection for the next attempt at a call, connecting if needed, within the call's
    /// deadline. A connection that is there already is taken at once, with no future of its
    /// own: waiting for one (connecting, a handshake, the backoff after failures) is a large
    /// future, which only the calls that wait box. A call that waits has less of its deadline
    /// left when it is sent: `spec` then says so.
    fn target<'a: 'b, 'b, 'c: 'b>(
        &'a self,
        spec: &mut CallSpec<'c>,
        avoid: Option<&'b Arc<Endpoint>>,
    ) -> impl Future<Output = Result<Target<'a>, RpcError>> + Send + use<'a, 'b> {
        let live = self.live_target(avoid);
        spec.fresh &= live.is_some();
        let spec: CallSpec<'b> = *spec;
        async move {
            match live {
                Some(target) => Ok(target),
                None => Box::pin(self.wait_for_target(spec, avoid)).await,
            }
        }
    }

    /// The target of a call when its connection is live: the fixed one, the endpoint's, or
    /// that of the endpoint the pool picks.
    fn live_target(&self, avoid: Option<&Arc<Endpoint>>) -> Option<Target<'_>> {
        let endpoint = match &*self.backend {
            Backend::Local(_) => return None,
            Backend::Fixed(connection) => return Some(Target::fixed(connection)),
            Backend::Endpoint(endpoint, _) => Cow::Borrowed(endpoint),
            Backend::Pool(pool, _) => {
                Cow::Owned(pool.pick(avoid.map_or(&[], std::slice::from_ref)).ok()?)
            }
        };
        let connection = endpoint.live_connection()?;
        Some(Target::on(endpoint, connection))
    }

    /// A connection for the next attempt at a call, waited for. In a pool, a server that cannot
    /// be reached is passed over for the others. Waiting for ready, a call whose servers cannot
    /// be reached waits, within its deadline, for one of them to come back.
    async fn wait_for_target(
        &self,
        spec: CallSpec<'_>,
        avoid: Option<&Arc<Endpoint>>,
    ) -> Result<Target<'_>, RpcError> {
        loop {
            // Seen before the pool is looked at: an endpoint added after that is not missed.
            let mut pool_changes = match &*self.backend {
                Backend::Pool(pool, _) if self.wait_for_ready => Some(pool.changes().subscribe()),
                _ => None,
            };
            let found = self.target_once(spec, avoid).await;
            // A pool with no endpoint yet (no caller added, no server found) may be given one:
            // waited for, within the deadline.
            if let (Err(RpcError::NoEndpoints), Some(changes)) = (&found, &mut pool_changes) {
                until(spec.expires, changes.changed())
                    .await
                    .map_err(|_| spec.deadline_exceeded())?
                    .map_err(|_| RpcError::NoEndpoints)?;
                continue;
            }
            match found {
                Err(
                    RpcError::Connect { .. }
                    | RpcError::ConnectTimeout(_)
                    | RpcError::Unavailable { .. },
                ) if self.wait_for_ready => {
                    // Each endpoint waits out its backoff before its next attempt: no spin.
                    tokio::task::yield_now().await;
                }
                other => return other,
            }
        }
    }

    async fn target_once(
        &self,
        spec: CallSpec<'_>,
        avoid: Option<&Arc<Endpoint>>,
    ) -> Result<Target<'_>, RpcError> {
        let connect = |endpoint: Arc<Endpoint>| async move {
            if let Some(connection) = endpoint.live_connection() {
                return Ok((endpoint, Ok(connection)));
            }
            let connection = until(spec.expires, endpoint.connection())
                .await
                .map_err(|_| spec.deadline_exceeded())?;
            Ok::<_, RpcError>((endpoint, connection))
        };
        let (endpoint, connection) = match &*self.backend {
            Backend::Local(_) => return Err(not_remote()),
            Backend::Fixed(connection) => return Ok(Target::fixed(connection)),
            Backend::Endpoint(endpoint, _) => {
                let (endpoint, connection) = connect(Arc::clone(endpoint)).await?;
                (endpoint, connection?)
            }
            Backend::Pool(pool, _) => {
                // Each endpoint at most once: a server that cannot be reached is passed over
                // for the others, and when none can be, the error names each one.
                let mut tried: Vec<Arc<Endpoint>> = avoid.into_iter().cloned().collect();
                let mut causes = Vec::new();
                let endpoints = pool.count().max(1);
                loop {
                    let (endpoint, connection) = connect(pool.pick(&tried)?).await?;
                    match connection {
                        Ok(connection) => break (endpoint, connection),
                        Err(error) => {
                            causes.push((endpoint.name(), error));
                            tried.push(endpoint);
                            if causes.len() >= endpoints {
                                return Err(all_unavailable(causes));
                            }
                        }
                    }
                }
            }
        };
        Ok(Target::on(Cow::Owned(endpoint), connection))
    }
}
