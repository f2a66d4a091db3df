//! The calls of one connection that wait for an answer, with the requests not yet written.
//!
//! A request waits here, not in the connection's queue: the queue holds only a claim on it.
//! A call abandoned before the writer reached it takes its request back, so it leaves no bytes
//! behind, and the server never hears of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

use super::deadlines::{Deadlines, Next};
use crate::RpcError;
use crate::protocol::{Claim, Frame};

/// What the connection's reader hands a waiting call.
#[derive(Debug)]
pub(crate) enum Reply {
    /// The call returned; the bytes are its encoded return value.
    Ok(Bytes),
    /// The server reported an error.
    Err { code: u32, message: String },
    /// The connection ended before an answer came.
    Failed(RpcError),
    /// The connection ended before the request was written: the call did not run.
    NotSent(RpcError),
    /// The call's deadline passed first. The server was told to drop the call if its request
    /// had been written; otherwise the request was taken back.
    Expired,
}

/// What [`Pending::forget`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forgotten {
    /// The call was no longer waiting: answered, or the connection closed.
    NotWaiting,
    /// The request was still waiting for the writer: it was taken back and never sent.
    Unsent,
    /// The request was written: the server may be running it.
    Sent,
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
    /// Wakes the task that expires calls when a deadline comes before the one it sleeps until.
    expiring: Notify,
}

#[derive(Debug, Default)]
struct State {
    calls: HashMap<u64, Waiter>,
    /// The deadlines of the waiting calls that have one.
    deadlines: Deadlines,
    closed: Option<RpcError>,
    /// The server said it takes no new calls.
    draining: bool,
}

#[derive(Debug)]
struct Waiter {
    reply: oneshot::Sender<Reply>,
    /// The request, until the writer claims it.
    unsent: Option<Frame>,
}

impl Pending {
    fn state(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; if one ever did, the map is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a call to `method` whose request is `request`, to be claimed by the writer, or
    /// says why the connection takes no more calls. Past `expires`, if the call has a deadline,
    /// [`Pending::expire`] fails it with [`Reply::Expired`].
    pub(crate) fn register(
        &self,
        id: u64,
        method: &str,
        request: Frame,
        expires: Option<Instant>,
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
        let (reply, rx) = oneshot::channel();
        let waiter = Waiter {
            reply,
            unsent: Some(request),
        };
        let State {
            calls, deadlines, ..
        } = &mut *state;
        calls.insert(id, waiter);
        if let Some(expires) = expires
            && deadlines.insert(expires, id, calls.len(), |id| calls.contains_key(&id))
        {
            self.expiring.notify_one();
        }
        Ok(rx)
    }

    /// Fails each waiting call whose deadline has passed at `now` with [`Reply::Expired`],
    /// calling `cancel` with the id of each whose request was written. Returns when a deadline
    /// passes next; `None` when no call waits with one, until [`Pending::deadline_added`].
    pub(crate) fn expire(&self, now: Instant, mut cancel: impl FnMut(u64)) -> Option<Instant> {
        loop {
            let (id, waiter) = {
                let mut state = self.state();
                let State {
                    calls, deadlines, ..
                } = &mut *state;
                match deadlines.next(now, |id| calls.contains_key(&id)) {
                    Next::Expire(id) => (id, calls.remove(&id)),
                    Next::SleepUntil(at) => return Some(at),
                    Next::Wait => return None,
                }
            };
            if let Some(waiter) = waiter {
                if waiter.unsent.is_none() {
                    cancel(id);
                }
                // The caller may have given up meanwhile; then nobody needs to hear it.
                let _ = waiter.reply.send(Reply::Expired);
            }
        }
    }

    /// Returns once a call registers a deadline earlier than the one [`Pending::expire`] last
    /// returned (or any, after it returned `None`); at once if one did since.
    pub(crate) async fn deadline_added(&self) {
        self.expiring.notified().await;
    }

    /// Hands `reply` to the call waiting on `id`. A reply nobody waits for any more (the call
    /// was dropped) is discarded.
    pub(crate) fn complete(&self, id: u64, reply: Reply) {
        let waiting = self.state().calls.remove(&id);
        if let Some(waiter) = waiting {
            // The call may have been dropped since; then nobody needs the reply.
            let _ = waiter.reply.send(reply);
        }
    }

    /// Forgets a call that stopped waiting, taking its request back if it was not written yet.
    pub(crate) fn forget(&self, id: u64) -> Forgotten {
        match self.state().calls.remove(&id) {
            None => Forgotten::NotWaiting,
            Some(Waiter {
                unsent: Some(_), ..
            }) => Forgotten::Unsent,
            Some(Waiter { unsent: None, .. }) => Forgotten::Sent,
        }
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
            state.deadlines = Deadlines::default();
            std::mem::take(&mut state.calls)
        };
        for (_, waiter) in calls {
            let reply = match waiter.unsent {
                Some(_) => Reply::NotSent(reason.clone()),
                None => Reply::Failed(reason.clone()),
            };
            let _ = waiter.reply.send(reply);
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

impl Claim for Pending {
    fn claim(&self, id: u64) -> Option<Frame> {
        self.state().calls.get_mut(&id)?.unsent.take()
    }

    fn claim_contiguous(&self, id: u64) -> Option<Frame> {
        let mut state = self.state();
        let unsent = &mut state.calls.get_mut(&id)?.unsent;
        unsent.as_ref()?.contiguous()?;
        unsent.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Frame {
        Frame::from(vec![0u8; 8])
    }

    #[test]
    fn only_a_request_in_one_piece_is_claimed_to_go_straight_through() {
        let pending = Pending::default();
        let _small = pending.register(1, "f", request(), None).expect("open");
        let mut spliced = Frame::default();
        spliced
            .append(&crate::Payload::from(vec![7u8; 1 << 20]))
            .expect("encodes");
        let _large = pending.register(2, "f", spliced, None).expect("open");
        assert_eq!(
            pending.claim_contiguous(1).map(|frame| frame.len()),
            Some(8)
        );
        assert!(pending.claim(1).is_none(), "taken");
        assert!(
            pending.claim_contiguous(2).is_none(),
            "spliced: left for the writer"
        );
        assert!(pending.claim(2).is_some(), "which still finds it");
    }

    #[tokio::test]
    async fn close_fails_waiting_and_later_calls() {
        let pending = Pending::default();
        let sent = pending.register(1, "f", request(), None).expect("open");
        let unsent = pending.register(3, "f", request(), None).expect("open");
        assert!(
            pending.claim(1).is_some(),
            "the writer took call 1's request"
        );
        pending.close(RpcError::ConnectionClosed);
        assert!(matches!(
            sent.await,
            Ok(Reply::Failed(RpcError::ConnectionClosed))
        ));
        assert!(
            matches!(unsent.await, Ok(Reply::NotSent(RpcError::ConnectionClosed))),
            "a request never written did not run"
        );
        assert!(matches!(
            pending.register(2, "f", request(), None),
            Err(RpcError::ConnectionClosed)
        ));
    }

    #[tokio::test]
    async fn replies_reach_their_own_call() {
        let pending = Pending::default();
        let one = pending.register(1, "f", request(), None).expect("open");
        let two = pending.register(2, "f", request(), None).expect("open");
        pending.complete(2, Reply::Ok(Bytes::from_static(b"2")));
        pending.complete(1, Reply::Ok(Bytes::from_static(b"1")));
        pending.complete(3, Reply::Ok(Bytes::new()));
        assert!(matches!(one.await, Ok(Reply::Ok(b)) if b == "1"));
        assert!(matches!(two.await, Ok(Reply::Ok(b)) if b == "2"));
    }

    #[tokio::test]
    async fn draining_refuses_new_calls_and_answers_old_ones() {
        let pending = Pending::default();
        let old = pending.register(1, "f", request(), None).expect("open");
        pending.drain();
        assert!(matches!(
            pending.register(2, "g", request(), None),
            Err(RpcError::ServerClosing { method }) if method == "g"
        ));
        pending.complete(1, Reply::Ok(Bytes::new()));
        assert!(matches!(old.await, Ok(Reply::Ok(_))));
        assert_eq!(
            pending.forget(1),
            Forgotten::NotWaiting,
            "answered calls are gone"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn calls_past_their_deadline_expire_and_written_ones_are_cancelled() {
        let pending = Pending::default();
        let now = Instant::now();
        let soon = now + std::time::Duration::from_millis(10);
        let later = now + std::time::Duration::from_secs(1);
        let written = pending
            .register(1, "f", request(), Some(soon))
            .expect("open");
        let unwritten = pending
            .register(2, "f", request(), Some(soon))
            .expect("open");
        let _waits = pending
            .register(3, "f", request(), Some(later))
            .expect("open");
        let _forever = pending.register(4, "f", request(), None).expect("open");
        assert!(
            pending.claim(1).is_some(),
            "the writer took call 1's request"
        );
        let mut cancelled = Vec::new();
        assert_eq!(pending.expire(now, |id| cancelled.push(id)), Some(soon));
        assert_eq!(pending.expire(soon, |id| cancelled.push(id)), Some(later));
        assert_eq!(cancelled, [1], "only the written request is cancelled");
        assert!(matches!(written.await, Ok(Reply::Expired)));
        assert!(matches!(unwritten.await, Ok(Reply::Expired)));
        assert!(
            pending.claim(2).is_none(),
            "call 2's request was taken back"
        );
        assert_eq!(pending.forget(3), Forgotten::Unsent, "call 3 still waits");
        assert_eq!(pending.expire(later, |id| cancelled.push(id)), None);
        assert_eq!(
            pending.forget(4),
            Forgotten::Unsent,
            "call 4 has no deadline"
        );
    }

    #[test]
    fn a_call_forgotten_before_its_turn_takes_its_request_back() {
        let pending = Pending::default();
        pending.register(1, "f", request(), None).expect("open");
        pending.register(2, "f", request(), None).expect("open");
        assert!(pending.claim(2).is_some());
        assert_eq!(pending.forget(1), Forgotten::Unsent);
        assert!(pending.claim(1).is_none(), "nothing left for the writer");
        assert_eq!(pending.forget(2), Forgotten::Sent);
    }
}
