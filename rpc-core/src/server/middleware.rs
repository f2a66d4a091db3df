//! tower middleware around a server's calls (feature `tower`).
//!
//! [`ServerBuilder::layer`](crate::ServerBuilder::layer) puts a [`tower::Layer`] around the
//! server's handlers. The layers see each call as a [`Call`]: its service, method, metadata,
//! peer and encoded arguments, and answer it with a [`Reply`]. tower's own middleware works
//! unchanged: `ConcurrencyLimitLayer`, `RateLimitLayer`, `TimeoutLayer`, `LoadShedLayer`.
//!
//! ```
//! use std::time::Duration;
//! use rpc_core::Server;
//! use tower::ServiceBuilder;
//!
//! let builder = Server::builder().layer(
//!     ServiceBuilder::new()
//!         .load_shed()
//!         .concurrency_limit(64)
//!         .timeout(Duration::from_secs(1)),
//! );
//! ```
//!
//! # How a call goes through the layers
//!
//! - The server's [interceptor](crate::ServerBuilder::intercept), if any, runs first; then the
//!   layers, the first one added outermost; then the handler.
//! - Each connection gets its own stack, made with [`Layer::layer`] when it opens: a
//!   `ConcurrencyLimitLayer` limits the calls of each connection, a `GlobalConcurrencyLimitLayer`
//!   those of the whole server.
//! - A call waits for the stack to be ready (`poll_ready`) in its own task, never in the
//!   connection's reader: a rate limit slows calls down and holds their slots, while
//!   cancellations and stream credit keep flowing. The wait counts against the call's deadline.
//! - A layer refuses a call by failing with an error; the client gets a status, and the
//!   connection stays open. A [`Status`] goes as it is; tower's `Elapsed` (from `Timeout`) as
//!   [`RpcError::DeadlineExceeded`](crate::RpcError::DeadlineExceeded);
//!   tower's `Overloaded` (from `LoadShed`) as [`StatusCode::Unavailable`], which a balancing
//!   client retries on another server; any other error as [`StatusCode::Internal`], its text
//!   kept in the server's log. Fail a call with `Unavailable` only before its handler ran: the
//!   client may make it again on another server.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use tower::{Layer, Service};

use super::calls::Answer;
use crate::protocol::code;
use crate::{Context, Metadata, Status, StatusCode};

/// An error a layer fails a call with, as tower's middleware does.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What runs the handler, once the layers let the call through.
type Handler = Box<dyn FnOnce(Context) -> BoxFuture<Answer> + Send>;

/// One call, as the server's layers see it.
pub struct Call {
    context: Context,
    arguments: Bytes,
    /// The largest response frame the client takes.
    client_max_frame_len: usize,
    handler: Handler,
}

impl Call {
    pub(crate) fn new(
        context: Context,
        arguments: Bytes,
        client_max_frame_len: usize,
        handler: Handler,
    ) -> Self {
        Call {
            context,
            arguments,
            client_max_frame_len,
            handler,
        }
    }

    /// The call's context: service, method, call id, deadline, metadata, and who the client
    /// is (address, TLS identity, Unix credentials). The handler gets the same context.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The call's metadata, to change before the handler sees it: an authenticating layer may
    /// replace a token with the name of the user it proved.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.context.metadata
    }

    /// The postcard encoding of the call's arguments, as a tuple in the order the method
    /// declares them (a streamed argument is not in it): a key for caching, or a record for
    /// auditing.
    pub fn encoded_arguments(&self) -> &[u8] {
        &self.arguments
    }
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("service", &self.context.service)
            .field("method", &self.context.method)
            .field("request_id", &self.context.request_id)
            .field("arguments", &self.arguments.len())
            .finish_non_exhaustive()
    }
}

/// A call's answer, as the server's layers see it on its way back to the client.
pub struct Reply {
    answer: Answer,
}

impl Reply {
    /// A reply to `call` with `result`, the postcard encoding of its return value, without
    /// running its handler: what a caching layer answers with for a result it keeps (from
    /// [`Reply::encoded_result`]). The client decodes `result` as the method's return type.
    pub fn from_encoded(call: &Call, result: &[u8]) -> Reply {
        Reply {
            answer: Answer::encoded(call.context.request_id, result, call.client_max_frame_len),
        }
    }

    /// Whether the call returned (what it returned may still be the method's own error type),
    /// rather than failing with an error of the server's.
    pub fn is_ok(&self) -> bool {
        self.answer.is_ok()
    }

    /// The postcard encoding of what the call returned; `None` for a failed call, and for a
    /// streamed result, which is sent after the reply.
    pub fn encoded_result(&self) -> Option<Vec<u8>> {
        self.answer.encoded_result()
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("ok", &self.is_ok())
            .finish_non_exhaustive()
    }
}

/// The service a layer wraps: the layers after it, then the handler.
pub struct Next {
    inner: Box<dyn CallService>,
}

impl fmt::Debug for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Next")
    }
}

impl Service<Call> for Next {
    type Response = Reply;
    type Error = BoxError;
    type Future = BoxFuture<Result<Reply, BoxError>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        self.inner.call(call)
    }
}

/// A layered service with its types erased.
trait CallService: Send {
    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), BoxError>>;
    fn call(&mut self, call: Call) -> BoxFuture<Result<Reply, BoxError>>;
}

impl<S> CallService for S
where
    S: Service<Call, Response = Reply> + Send,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), BoxError>> {
        Service::poll_ready(self, cx).map_err(Into::into)
    }

    fn call(&mut self, call: Call) -> BoxFuture<Result<Reply, BoxError>> {
        let response = Service::call(self, call);
        Box::pin(async move { response.await.map_err(Into::into) })
    }
}

/// The innermost service: runs the handler.
struct Handlers;

impl Service<Call> for Handlers {
    type Response = Reply;
    type Error = BoxError;
    type Future = BoxFuture<Result<Reply, BoxError>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let answer = (call.handler)(call.context);
        Box::pin(async move {
            Ok(Reply {
                answer: answer.await,
            })
        })
    }
}

/// One layer of a server's stack, type-erased so that the builder can hold any number.
type Wrap = dyn Fn(Next) -> Next + Send + Sync;

/// The layers a server puts around its handlers, outermost first.
#[derive(Clone, Default)]
pub(crate) struct Layers(Vec<Arc<Wrap>>);

impl Layers {
    /// Adds `layer` inside the layers already added.
    pub(crate) fn push<L>(&mut self, layer: L)
    where
        L: Layer<Next> + Send + Sync + 'static,
        L::Service: Service<Call, Response = Reply> + Send + 'static,
        <L::Service as Service<Call>>::Error: Into<BoxError>,
        <L::Service as Service<Call>>::Future: Send + 'static,
    {
        self.0.push(Arc::new(move |next| Next {
            inner: Box::new(layer.layer(next)),
        }));
    }

    /// The stack for one connection, or `None` without layers.
    pub(crate) fn stack(&self) -> Option<Stack> {
        if self.0.is_empty() {
            return None;
        }
        let handlers = Next {
            inner: Box::new(Handlers),
        };
        let next = self.0.iter().rev().fold(handlers, |next, wrap| wrap(next));
        Some(Stack(Arc::new(tokio::sync::Mutex::new(next))))
    }
}

impl fmt::Debug for Layers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Layers({})", self.0.len())
    }
}

/// One connection's layers around its handlers. Calls take turns, in the order they came, to
/// wait for it to be ready and hand it their call.
#[derive(Clone)]
pub(crate) struct Stack(Arc<tokio::sync::Mutex<Next>>);

impl fmt::Debug for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Stack")
    }
}

impl Stack {
    /// Runs `call` through the layers: its answer, or the status a layer refused it with.
    pub(crate) async fn run(self, call: Call) -> Answer {
        let (id, method) = (call.context.request_id, call.context.method);
        let response = {
            let mut next = self.0.lock().await;
            match std::future::poll_fn(|cx| Service::poll_ready(&mut *next, cx)).await {
                Ok(()) => Service::call(&mut *next, call),
                Err(error) => return refusal(id, method, &*error),
            }
        };
        match response.await {
            Ok(reply) => reply.answer,
            Err(error) => refusal(id, method, &*error),
        }
    }
}

/// The answer to a call a layer failed with `error`.
fn refusal(id: u64, method: &'static str, error: &(dyn std::error::Error + 'static)) -> Answer {
    if let Some(status) = error.downcast_ref::<Status>() {
        tracing::debug!(method, request_id = id, %status, "a layer refused a call");
        return Answer::failure(id, status.code().wire_code(), status.message());
    }
    if error.is::<tower::timeout::error::Elapsed>() {
        tracing::debug!(method, request_id = id, "a layer's timeout passed");
        let message = "the server's timeout passed before the handler finished";
        return Answer::failure(id, code::DEADLINE_EXCEEDED, message);
    }
    if error.is::<tower::load_shed::error::Overloaded>() {
        tracing::debug!(method, request_id = id, "a layer shed a call");
        let code = StatusCode::Unavailable.wire_code();
        return Answer::failure(id, code, "the server is overloaded");
    }
    tracing::warn!(method, request_id = id, error, "a layer failed a call");
    let message = format!("a layer of the server failed the call (call {id}); see its log");
    Answer::failure(id, StatusCode::Internal.wire_code(), &message)
}
