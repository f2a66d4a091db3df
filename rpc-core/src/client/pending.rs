//! The calls of one connection that wait for an answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use crate::RpcError;

/// What the connection's reader hands a waiting call.
#[derive(Debug)]
pub(crate) enum Reply {
    /// The call returned; the bytes are its encoded return value.
    Ok(Bytes),
    /// The server reported an error.
    Err { code: u32, message: String },
    /// The connection ended before an answer came.
    Failed(RpcError),
}

/// The waiting calls of one connection, by request id. Once closed, it accepts no new call and
/// every call that was waiting has been told why.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    state: Mutex<State>,
    /// Turns true when the table closes.
    closed: watch::Sender<bool>,
    /// Copies of `state.closed.is_some()` and `state.draining`, read on every call without the
    /// lock; set under it.
    is_closed: AtomicBool,
    is_draining: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    calls: HashMap<u64, oneshot::Sender<Reply>>,
    closed: Option<RpcError>,
    /// The server said it takes no new calls.
    draining: bool,
}

impl Pending {
    fn state(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; if one ever did, the map is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a call to `method` about to be sent, or says why the connection takes no more
    /// calls.
    pub(crate) fn register(
        &self,
        id: u64,
        method: &str,
    ) -> Result<oneshot::Receiver<Reply>, RpcError> {
        let mut state = self.state();
        // The server said it takes no new calls: that says more than how the connection ended.
        if state.draining {
            return Err(RpcError::ServerClosing {
                method: method.to_owned(),
            });
        }
        if let Some(reason) = &state.closed {
            return Err(reason.clone());
        }
        let (tx, rx) = oneshot::channel();
        state.calls.insert(id, tx);
        Ok(rx)
    }

    /// Hands `reply` to the call waiting on `id`. A reply nobody waits for any more (the call
    /// was dropped) is discarded.
    pub(crate) fn complete(&self, id: u64, reply: Reply) {
        let waiting = self.state().calls.remove(&id);
        if let Some(tx) = waiting {
            // The call may have been dropped since; then nobody needs the reply.
            let _ = tx.send(reply);
        }
    }

    /// Forgets a call that stopped waiting. `true` if it was still waiting for its answer.
    pub(crate) fn forget(&self, id: u64) -> bool {
        self.state().calls.remove(&id).is_some()
    }

    /// Whether the server said it takes no new calls.
    pub(crate) fn is_draining(&self) -> bool {
        self.is_draining.load(Ordering::Acquire)
    }

    /// Takes no new calls; the ones waiting still get their answers.
    pub(crate) fn drain(&self) {
        self.state().draining = true;
        self.is_draining.store(true, Ordering::Release);
    }

    /// Closes the table: every waiting call fails with `reason`, and so does every later
    /// [`Pending::register`]. Only the first reason is kept.
    pub(crate) fn close(&self, reason: RpcError) {
        let calls = {
            let mut state = self.state();
            if state.closed.is_some() {
                return;
            }
            state.closed = Some(reason.clone());
            self.is_closed.store(true, Ordering::Release);
            std::mem::take(&mut state.calls)
        };
        for (_, tx) in calls {
            let _ = tx.send(Reply::Failed(reason.clone()));
        }
        self.closed.send_replace(true);
    }

    /// Returns once the table is closed.
    pub(crate) async fn wait_closed(&self) {
        let mut closed = self.closed.subscribe();
        // The sender lives as long as `self`, so this ends only when the value turns true.
        let _ = closed.wait_for(|closed| *closed).await;
    }

    /// Why the table closed; [`RpcError::ConnectionClosed`] if it has not (yet) recorded one.
    pub(crate) fn close_reason(&self) -> RpcError {
        self.state()
            .closed
            .clone()
            .unwrap_or(RpcError::ConnectionClosed)
    }

    /// Whether the connection is closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.is_closed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn close_fails_waiting_and_later_calls() {
        let pending = Pending::default();
        let waiting = pending.register(1, "f").expect("open");
        pending.close(RpcError::ConnectionClosed);
        assert!(matches!(
            waiting.await,
            Ok(Reply::Failed(RpcError::ConnectionClosed))
        ));
        assert!(matches!(
            pending.register(2, "f"),
            Err(RpcError::ConnectionClosed)
        ));
    }

    #[tokio::test]
    async fn replies_reach_their_own_call() {
        let pending = Pending::default();
        let one = pending.register(1, "f").expect("open");
        let two = pending.register(2, "f").expect("open");
        pending.complete(2, Reply::Ok(Bytes::from_static(b"2")));
        pending.complete(1, Reply::Ok(Bytes::from_static(b"1")));
        pending.complete(3, Reply::Ok(Bytes::new()));
        assert!(matches!(one.await, Ok(Reply::Ok(b)) if b == "1"));
        assert!(matches!(two.await, Ok(Reply::Ok(b)) if b == "2"));
    }

    #[tokio::test]
    async fn draining_refuses_new_calls_and_answers_old_ones() {
        let pending = Pending::default();
        let old = pending.register(1, "f").expect("open");
        pending.drain();
        assert!(matches!(
            pending.register(2, "g"),
            Err(RpcError::ServerClosing { method }) if method == "g"
        ));
        pending.complete(1, Reply::Ok(Bytes::new()));
        assert!(matches!(old.await, Ok(Reply::Ok(_))));
        assert!(!pending.forget(1), "answered calls are gone");
    }
}
