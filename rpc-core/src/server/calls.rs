//! The calls of one connection: each runs as its own task, under its deadline and context,
//! until it answers, is cancelled, or the connection goes away.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{AbortHandle, Abortable};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;

use crate::protocol::{Head, Outbox, Outcome, code, error_response, finish_frame};
use crate::service::Service;
use crate::{Context, Metadata, RpcError};

/// Error messages sent to clients are cut to this many bytes.
const MAX_ERROR_MESSAGE: usize = 1024;

/// The calls of one connection that are running, by request id.
#[derive(Debug)]
pub(crate) struct Calls {
    running: Mutex<Running>,
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
            idle: Notify::new(),
        }
    }
}

/// One call to start: what the connection decoded from a request.
#[derive(Debug)]
pub(crate) struct NewCall<R> {
    pub(crate) id: u64,
    pub(crate) request: R,
    pub(crate) timeout_ms: u64,
    pub(crate) metadata: Metadata,
    pub(crate) peer_addr: Option<SocketAddr>,
    /// The share of the connection's in-flight budget the call holds until its answer is
    /// written.
    pub(crate) slot: OwnedSemaphorePermit,
}

impl Calls {
    fn running(&self) -> MutexGuard<'_, Running> {
        // No code panics while holding the lock; if one ever did, the map is still consistent.
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a call as its own task. Its answer, if the call is not cancelled, goes to
    /// `outbox`. Fails if the client reused the id of a call still running.
    pub(crate) fn start<S: Service>(
        self: &Arc<Self>,
        service: &S,
        call: NewCall<S::Request>,
        outbox: &Outbox,
        client_max_frame_len: usize,
    ) -> Result<(), RpcError> {
        let (abort, registration) = AbortHandle::new_pair();
        {
            let mut running = self.running();
            if running.calls.contains_key(&call.id) {
                return Err(RpcError::Protocol(format!(
                    "the client reused the id {} of a call still running",
                    call.id
                )));
            }
            running.calls.insert(call.id, abort);
        }
        let NewCall {
            id,
            request,
            timeout_ms,
            metadata,
            peer_addr,
            slot,
        } = call;
        let method = S::method_name(&request);
        let deadline = (timeout_ms > 0)
            .then(|| Instant::now().checked_add(Duration::from_millis(timeout_ms)))
            .flatten();
        let context = Context {
            request_id: id,
            method,
            deadline: deadline.map(Instant::into_std),
            peer_addr,
            metadata,
        };
        let handler = service.call(request);
        let answer = context.scope(answer::<S>(
            id,
            method,
            handler,
            deadline,
            client_max_frame_len,
        ));
        let calls = Arc::clone(self);
        let outbox = outbox.clone();
        tokio::spawn(async move {
            // Aborted means cancelled by the client, or the connection is gone: nobody waits.
            if let Ok(frame) = Abortable::new(answer, registration).await {
                outbox.send(frame, Some(slot));
            }
            calls.finish(id);
        });
        Ok(())
    }

    fn finish(&self, id: u64) {
        let mut running = self.running();
        running.calls.remove(&id);
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

    pub(crate) fn is_empty(&self) -> bool {
        self.running().calls.is_empty()
    }

    /// Returns once no call has run, and no request has come since `last_request`, for `idle`.
    pub(crate) async fn idle_for(&self, idle: Duration, last_request: Instant) {
        loop {
            self.wait_idle().await;
            let since = self.running().idle_since.max(last_request);
            let Some(until) = since.checked_add(idle) else {
                return std::future::pending().await;
            };
            tokio::time::sleep_until(until).await;
            let running = self.running();
            if running.calls.is_empty() && running.idle_since <= since {
                return;
            }
        }
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

/// Runs one call to completion, within its deadline, and encodes its answer. A panic in the
/// handler, or in the result's `Serialize`, becomes an error answer for this call alone.
async fn answer<S: Service>(
    id: u64,
    method: &'static str,
    handler: impl Future<Output = S::Response>,
    deadline: Option<Instant>,
    client_max_frame_len: usize,
) -> Vec<u8> {
    let answered = AssertUnwindSafe(async move {
        let response = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, handler).await {
                Ok(response) => response,
                // The handler is dropped here: nobody waits for its answer any more.
                Err(_) => return Ok(None),
            },
            None => handler.await,
        };
        let mut frame = Head::Response {
            id,
            outcome: Outcome::Ok,
        }
        .begin_frame()?;
        S::encode_response(&response, &mut frame)?;
        Ok(Some(frame))
    })
    .catch_unwind()
    .await;
    match answered {
        Ok(Ok(Some(mut frame))) => match finish_frame(&mut frame, client_max_frame_len) {
            Ok(()) => frame,
            Err(too_large) => {
                tracing::warn!(method, %too_large, "a result is over the client's frame limit");
                error_response(
                    id,
                    code::RESPONSE_TOO_LARGE,
                    &format!("the result is too large for the client: {too_large}"),
                )
            }
        },
        Ok(Ok(None)) => error_response(
            id,
            code::DEADLINE_EXCEEDED,
            "the deadline passed before the handler finished",
        ),
        Ok(Err(error)) => {
            let error: crate::protocol::CodecError = error;
            tracing::warn!(method, %error, "a result could not be encoded");
            error_response(
                id,
                code::RESPONSE_ENCODE_FAILED,
                &format!("the result could not be encoded: {error}"),
            )
        }
        Err(panic) => {
            let message = panic_message(&*panic);
            tracing::error!(method, message, "a handler panicked");
            error_response(id, code::HANDLER_PANICKED, truncate(message))
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(message) = panic.downcast_ref::<&'static str>() {
        message
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message
    } else {
        "the panic carried no message"
    }
}

/// Cuts a message to at most [`MAX_ERROR_MESSAGE`] bytes, on a character boundary.
pub(crate) fn truncate(message: &str) -> &str {
    if message.len() <= MAX_ERROR_MESSAGE {
        return message;
    }
    let mut end = MAX_ERROR_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncate_respects_char_boundaries() {
        let long = "é".repeat(1000);
        let cut = truncate(&long);
        assert!(cut.len() <= super::MAX_ERROR_MESSAGE);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(truncate("short"), "short");
    }
}
