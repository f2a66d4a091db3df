//! The calls of one connection: each runs as its own task, under its deadline and context,
//! until it answers, is cancelled, or the connection goes away.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{AbortHandle, Abortable};
use tokio::sync::Notify;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::Instant;
use tracing::Instrument;

use super::kept_box::{KeptBox, Pinned};
use super::services::ServiceSet;
use crate::intercept::ServerInterceptor;
use crate::peer::Peer;
use crate::protocol::{
    Frame, Head, Outbox, Outcome, StreamFrames, code, error_response, finish_frame,
};
use crate::slots::CallSlot;
use crate::stream::{self, Outbound, Streams};
use crate::task::until;
use crate::telemetry::{CallEnd, Meters, OK};
use crate::{Context, Metadata};

/// The calls of one connection that are running, by request id.
#[derive(Debug)]
pub(crate) struct Calls {
    running: Mutex<Running>,
    /// How many calls `running` holds, for a look without the lock: most calls answer on their
    /// first poll and are never in it.
    count: AtomicUsize,
    /// The highest id of a call that became a task: no call of a higher id is running, and a
    /// client whose ids only grow, as rpc-core's do, is never looked up for one.
    highest: AtomicU64,
    /// Woken when the last running call ends.
    idle: Notify,
}

#[derive(Debug)]
struct Running {
    calls: HashMap<u64, AbortHandle>,
    /// When the last call ended (or the connection began).
    idle_since: Instant,
}

impl Default for Calls {
    fn default() -> Self {
        Calls {
            running: Mutex::new(Running {
                calls: HashMap::new(),
                idle_since: Instant::now(),
            }),
            count: AtomicUsize::new(0),
            highest: AtomicU64::new(0),
            idle: Notify::new(),
        }
    }
}

/// One call to start: what the connection decoded from a request.
#[derive(Debug)]
pub(crate) struct NewCall<R> {
    pub(crate) id: u64,
    pub(crate) request: R,
    /// The encoded arguments, for the server's layers.
    #[cfg(feature = "tower")]
    pub(crate) arguments: bytes::Bytes,
    /// When the request had arrived: its deadline counts from there.
    pub(crate) arrived: Instant,
    pub(crate) timeout_ms: u64,
    pub(crate) metadata: Metadata,
    pub(crate) peer: Arc<Peer>,
    /// The share of the connection's in-flight budget the call holds until its answer is
    /// written.
    pub(crate) slot: CallSlot,
}

impl Calls {
    fn running(&self) -> MutexGuard<'_, Running> {
        // No code panics while holding the lock; if one ever did, the map is still consistent.
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a call. A handler that finishes on its first poll, as most do, is answered at once,
    /// from here: no task, no timer, nothing to cancel. Any other becomes its own task, under
    /// its deadline, until it answers or is cancelled. The answer goes to `outbox`, followed by
    /// the call's streamed result if it has one. The connection has made sure that no call
    /// with the same id is running.
    ///
    /// The future that answers is pinned in `kept`'s box, if it holds one of its type, and its
    /// box goes back there if it answers on its first poll.
    pub(crate) fn start<S: ServiceSet>(
        self: &Arc<Self>,
        service: &S,
        call: NewCall<S::Request>,
        link: &Link,
        kept: &KeptBox,
    ) {
        let NewCall {
            id,
            request,
            #[cfg(feature = "tower")]
            arguments,
            arrived,
            timeout_ms,
            metadata,
            peer,
            slot,
        } = call;
        let (service_name, method) = S::names(&request);
        let deadline = (timeout_ms > 0)
            .then(|| arrived.checked_add(Duration::from_millis(timeout_ms)))
            .flatten();
        let context = Context {
            service: service_name,
            request_id: id,
            method,
            deadline: deadline.map(Instant::into_std),
            peer,
            metadata,
        };
        let span = call_span(&context);
        #[cfg(feature = "opentelemetry")]
        if !span.is_disabled() {
            crate::telemetry::trace_context::extract(&context.metadata, &span);
        }
        let _entered = span.enter();
        let end = CallEnd::start(&span, &link.meters, service_name, method, || arrived);
        if let Some(refusal) = intercept(link, &context) {
            refusal.send(end, link, slot);
            return;
        }
        let limit = link.client_max_frame_len;
        let panic_messages = link.panic_messages;
        let handler = service.call(request);
        let started = Started {
            id,
            method,
            deadline,
            end,
            slot,
        };
        #[cfg(feature = "tower")]
        if let Some(stack) = &link.stack {
            let call = crate::middleware::Call::new(
                context.clone(),
                arguments,
                limit,
                Box::new(move |context: Context| {
                    Box::pin(async move {
                        let response = context.scope(handler).await;
                        respond::<S>(id, method, response, limit, panic_messages)
                    })
                }),
            );
            let answering = context.scope(stack.clone().run(call));
            self.run(kept.pin(answering), started, link, kept);
            return;
        }
        let answering = context
            .scope(async move { respond::<S>(id, method, handler.await, limit, panic_messages) });
        self.run(kept.pin(answering), started, link, kept);
    }

    /// Runs a call's future, which answers it in the call's context: polls it once here, and
    /// spawns it under the call's deadline if it has more to do. A streamed result is produced
    /// in the same context, taken from the future once it has answered.
    fn run<F>(
        self: &Arc<Self>,
        mut answering: Pinned<TaskLocalFuture<Context, F>>,
        started: Started,
        link: &Link,
        kept: &KeptBox,
    ) where
        F: Future<Output = Answer> + Send + 'static,
    {
        let Started {
            id,
            method,
            deadline,
            end,
            slot,
        } = started;
        let mut waker = std::task::Context::from_waker(std::task::Waker::noop());
        let first_poll = std::panic::catch_unwind(AssertUnwindSafe(|| {
            pinned_future(&mut answering).poll(&mut waker)
        }));
        let panic_messages = link.panic_messages;
        let first = match first_poll {
            Ok(Poll::Pending) => None,
            Ok(Poll::Ready(answer)) => match answer.stream {
                None => {
                    answer.send(end, link, slot);
                    kept.keep(answering);
                    return;
                }
                Some(_) => Some(answer),
            },
            Err(panic) => {
                panicked(id, method, &*panic, panic_messages).send(end, link, slot);
                return;
            }
        };

        let (abort, registration) = AbortHandle::new_pair();
        {
            let mut running = self.running();
            running.calls.insert(id, abort);
            self.highest.fetch_max(id, Ordering::Relaxed);
            self.count.store(running.calls.len(), Ordering::Release);
        }
        let link = link.clone();
        // A call that outlives its first poll runs on in its span: cloned only then.
        let span = end.span().cloned();
        let run = async move {
            let answer = match first {
                None => {
                    let answering = pinned_future(&mut answering);
                    answer(id, method, answering, deadline, panic_messages).await
                }
                Some(answer) => answer,
            };
            match answer.stream {
                None => answer.send(end, &link, slot),
                Some(stream) => {
                    // Boxed: in place, the stream's sending (its pump, its credit, its deadline)
                    // made this future 1,968 bytes where it is 768 without, for every call
                    // that outlives its first poll, streamed or not.
                    let sending =
                        Box::pin(stream_out(id, answer.frame, stream, deadline, &link, slot));
                    let code = match pinned_future(&mut answering).take_value() {
                        Some(context) => context.scope(sending).await,
                        None => sending.await,
                    };
                    end.finish(code);
                }
            }
        };
        let calls = Arc::clone(self);
        // Boxed, so that the task tokio makes holds a pointer: its future is moved into the
        // task, and its stage rewritten as the task ends, each a copy of the whole future. A
        // handler that awaited once (`yield_now`) cost a call 8,200 more instructions than one
        // that answered on its first poll, 4,500 of them in such copies of a future of 2 KiB,
        // and 256 callers on one connection across two processes made 0.44M-0.50M calls/s
        // against 1.5M. Both boxes: 4,240 more, and 0.73M-0.76M calls/s.
        let run = Box::pin(run.instrument(span.unwrap_or_else(tracing::Span::none)));
        tokio::spawn(async move {
            // Aborted means cancelled by the client, or the connection is gone: nobody waits.
            let _ = Abortable::new(run, registration).await;
            calls.finish(id);
        });
    }

    fn finish(&self, id: u64) {
        let mut running = self.running();
        running.calls.remove(&id);
        self.count.store(running.calls.len(), Ordering::Release);
        if running.calls.is_empty() {
            running.idle_since = Instant::now();
            self.idle.notify_waiters();
        }
    }

    /// Drops the handler of call `id`, if it is still running. Unknown ids are ignored: the
    /// call may have just finished.
    pub(crate) fn cancel(&self, id: u64) {
        if let Some(abort) = self.running().calls.get(&id) {
            abort.abort();
        }
    }

    /// Drops every running handler.
    pub(crate) fn abort_all(&self) {
        for abort in self.running().calls.values() {
            abort.abort();
        }
    }

    /// Whether call `id` is running. Asked by the connection's task, which alone starts calls.
    pub(crate) fn is_running(&self, id: u64) -> bool {
        id <= self.highest.load(Ordering::Relaxed)
            && self.count.load(Ordering::Acquire) > 0
            && self.running().calls.contains_key(&id)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.running().calls.is_empty()
    }

    /// Since when no call has been running; `None` while one is.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        let running = self.running();
        running.calls.is_empty().then_some(running.idle_since)
    }

    /// Returns once no call is running.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.is_empty() {
                return;
            }
            idle.await;
        }
    }
}

/// What a call's task needs of its connection.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) outbox: Outbox,
    pub(crate) streams: Arc<Streams>,
    pub(crate) client_max_frame_len: usize,
    /// Whether a panic's message goes to the client (it always goes to the log).
    pub(crate) panic_messages: bool,
    /// The server's check of every call before its handler runs.
    pub(crate) interceptor: Option<ServerInterceptor>,
    /// The handles of the server's call metrics.
    pub(crate) meters: Arc<Meters>,
    /// The connection's layers around its handlers.
    #[cfg(feature = "tower")]
    pub(crate) stack: Option<crate::middleware::Stack>,
}

/// The future pinned in `pinned`, which holds one until it is kept for the next call.
fn pinned_future<F>(pinned: &mut Pinned<F>) -> Pin<&mut F> {
    match pinned.as_mut().as_pin_mut() {
        Some(future) => future,
        None => unreachable!("a call's box holds its future until it is kept"),
    }
}

/// The answer refusing the call in `context`, if the server's interceptor refuses it (or
/// panics): then its handler never runs.
fn intercept(link: &Link, context: &Context) -> Option<Answer> {
    let interceptor = link.interceptor.as_ref()?;
    let (id, method) = (context.request_id, context.method);
    match std::panic::catch_unwind(AssertUnwindSafe(|| interceptor.check(context))) {
        Ok(Ok(())) => None,
        Ok(Err(status)) => {
            tracing::debug!(method, request_id = id, %status, "the interceptor refused a call");
            let code = status.code().wire_code();
            Some(Answer::failure(id, code, status.message()))
        }
        Err(panic) => Some(panicked(id, method, &*panic, link.panic_messages)),
    }
}

/// What a call that has started carries until it ends.
struct Started {
    id: u64,
    method: &'static str,
    deadline: Option<Instant>,
    /// Ends the call, and holds its span.
    end: CallEnd,
    /// The call's share of the connection's in-flight budget.
    slot: CallSlot,
}

/// Runs a call's future to completion, within its deadline: the response frame, and the stream
/// to send after it if the result is streamed. A panic in the handler becomes an error answer
/// for this call alone.
async fn answer(
    id: u64,
    method: &'static str,
    answering: impl Future<Output = Answer>,
    deadline: Option<Instant>,
    panic_messages: bool,
) -> Answer {
    // On the deadline the handler is dropped: nobody waits for its answer any more.
    match AssertUnwindSafe(until(deadline, answering))
        .catch_unwind()
        .await
    {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Answer::failure(
            id,
            code::DEADLINE_EXCEEDED,
            "the deadline passed before the handler finished",
        ),
        Err(panic) => panicked(id, method, &*panic, panic_messages),
    }
}

/// Encodes a handler's result. A result over the client's frame limit, one that does not
/// encode, or a `Serialize` that panics becomes an error answer instead.
fn respond<S: ServiceSet>(
    id: u64,
    method: &'static str,
    response: S::Response,
    client_max_frame_len: usize,
    panic_messages: bool,
) -> Answer {
    let encoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut frame = Head::Response {
            id,
            outcome: Outcome::Ok,
        }
        .begin_frame()?;
        let result_at = frame.len();
        let stream = frame.encode(|bytes| S::encode_response(response, bytes))?;
        Ok::<_, crate::protocol::CodecError>((frame, result_at, stream))
    }));
    match encoded {
        Ok(Ok((mut frame, result_at, stream))) => {
            match finish_frame(&mut frame, client_max_frame_len) {
                Ok(()) => Answer::result(frame, result_at, stream),
                Err(too_large) => {
                    tracing::warn!(method, %too_large, "a result is over the client's frame limit");
                    let message = format!("the result is too large for the client: {too_large}");
                    Answer::failure(id, code::RESPONSE_TOO_LARGE, &message)
                }
            }
        }
        Ok(Err(error)) => {
            tracing::warn!(method, %error, "a result could not be encoded");
            let message = format!("the result could not be encoded: {error}");
            Answer::failure(id, code::RESPONSE_ENCODE_FAILED, &message)
        }
        Err(panic) => panicked(id, method, &*panic, panic_messages),
    }
}

/// A call's answer: the response frame, the stream that follows it when the result is
/// streamed, and the status code the call ends with (`OK` for its result).
pub(crate) struct Answer {
    frame: Frame,
    /// Where in `frame` the encoded result begins (read by the server's layers).
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    result_at: usize,
    stream: Option<Outbound>,
    code: u32,
}

impl Answer {
    /// The answer carrying the call's result, encoded in `frame` from `result_at` on.
    fn result(frame: Frame, result_at: usize, stream: Option<Outbound>) -> Self {
        Answer {
            frame,
            result_at,
            stream,
            code: OK,
        }
    }

    /// The answer to call `id` carrying `result`, an encoded return value; an error answer if
    /// it is over `client_max_frame_len`.
    #[cfg(feature = "tower")]
    pub(crate) fn encoded(id: u64, result: &[u8], client_max_frame_len: usize) -> Self {
        let head = Head::Response {
            id,
            outcome: Outcome::Ok,
        };
        let mut frame = Frame::from(head.frame());
        let result_at = frame.len();
        frame.encode(|bytes| bytes.extend_from_slice(result));
        match finish_frame(&mut frame, client_max_frame_len) {
            Ok(()) => Answer::result(frame, result_at, None),
            Err(too_large) => {
                let message = format!("the result is too large for the client: {too_large}");
                Answer::failure(id, code::RESPONSE_TOO_LARGE, &message)
            }
        }
    }

    /// Whether the call returned, rather than failed with an error of the server's.
    #[cfg(feature = "tower")]
    pub(crate) fn is_ok(&self) -> bool {
        self.code == OK
    }

    /// The encoded return value, unless the call failed or its result is streamed.
    #[cfg(feature = "tower")]
    pub(crate) fn encoded_result(&self) -> Option<Vec<u8>> {
        if self.code != OK || self.stream.is_some() {
            return None;
        }
        let mut slices = Vec::new();
        self.frame.push_slices(&mut slices);
        let mut result = Vec::with_capacity(self.frame.len() - self.result_at);
        let mut skip = self.result_at;
        for slice in &slices {
            let taken = skip.min(slice.len());
            result.extend_from_slice(&slice[taken..]);
            skip -= taken;
        }
        Some(result)
    }

    /// An error answer to call `id`.
    pub(crate) fn failure(id: u64, code: u32, message: &str) -> Self {
        Answer {
            frame: error_response(id, code, message),
            result_at: 0,
            stream: None,
            code,
        }
    }

    /// Ends the call with this answer, which has no stream after it: records how it ended and
    /// queues the frame, which releases the call's `slot` once written.
    fn send(self, end: CallEnd, link: &Link, slot: CallSlot) {
        end.finish(self.code);
        link.outbox.send(self.frame, Some(slot));
    }
}

/// The span of one call on the server, under its connection's, in OpenTelemetry's terms for
/// RPC. Its status code is recorded when the call is answered; it closes when the call ends.
fn call_span(context: &Context) -> tracing::Span {
    if !crate::telemetry::spans_wanted() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "rpc.call",
        otel.kind = %"server",
        otel.status_code = tracing::field::Empty,
        rpc.system = %"rpc-core",
        rpc.service = %context.service,
        rpc.method = %context.method,
        rpc.request_id = context.request_id,
        rpc.status_code = tracing::field::Empty,
    )
}

/// The answer to a call whose handler panicked: the panic's message is logged with the call's
/// id, and sent only if `send_message`.
fn panicked(id: u64, method: &'static str, panic: &(dyn Any + Send), send_message: bool) -> Answer {
    let message = panic_message(panic);
    tracing::error!(method, request_id = id, message, "a handler panicked");
    let sent = if send_message { message } else { "" };
    Answer::failure(id, code::HANDLER_PANICKED, sent)
}

/// Sends a streamed result: the response, then the stream, within the call's deadline; returns
/// the status code the stream ended with. The
/// call's slot is held until the stream ends.
async fn stream_out(
    id: u64,
    frame: Frame,
    stream: Outbound,
    deadline: Option<Instant>,
    link: &Link,
    slot: CallSlot,
) -> u32 {
    let credit = link.streams.open_outbound(id);
    link.outbox.send(frame, None);
    let pump = stream::pump(
        id,
        stream,
        credit,
        link.outbox.clone(),
        StreamFrames::new(&link.outbox),
        link.client_max_frame_len,
    );
    let ended = match AssertUnwindSafe(until(deadline, pump)).catch_unwind().await {
        Ok(Ok(())) => None,
        Ok(Err(_)) => Some((
            code::DEADLINE_EXCEEDED,
            "the deadline passed before the stream ended".to_owned(),
        )),
        Err(panic) => {
            let message = panic_message(&*panic);
            tracing::error!(request_id = id, message, "a streamed result panicked");
            let sent = if link.panic_messages {
                format!("the stream panicked: {message}")
            } else {
                format!("the stream panicked (call {id}); its message is in the server's log")
            };
            Some((code::STREAM_FAILED, sent))
        }
    };
    match ended {
        None => OK,
        Some((code, message)) => {
            let outcome = Outcome::error(code, &message);
            link.outbox
                .send(Head::StreamEnd { id, outcome }.frame(), Some(slot));
            code
        }
    }
}

/// The text a panic carried.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(message) = panic.downcast_ref::<&'static str>() {
        message
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message
    } else {
        "the panic carried no message"
    }
}
