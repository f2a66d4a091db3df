//! The calls of one connection that wait for an answer, with the requests not yet written.
//!
//! A request waits here, not in the connection's queue: the queue holds only a claim on it.
//! A call abandoned before the writer reached it takes its request back, so it leaves no bytes
//! behind, and the server never hears of it.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::endpoint::{self, Changes};
use crate::RpcError;
use crate::protocol::{Claim, Frame, Tail};

/// What the connection's reader hands a waiting call.
#[derive(Debug)]
pub(crate) enum Reply {
    /// The call returned; the bytes are its encoded return value, with its byte string if the
    /// reader read that into memory of its own.
    Ok(Bytes, Option<Tail>),
    /// The call returned a value of a few bytes, copied out of the frame it came in.
    Small(SmallValue),
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

/// A returned value of at most [`SmallValue::MAX`] bytes, kept as a copy rather than as a
/// share of the buffer the connection's reader reads into: a share would update that buffer's
/// reference count from the caller's thread, on memory the reader keeps updating from its own,
/// and a value this small costs less to copy than to share.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SmallValue {
    len: u8,
    bytes: [u8; SmallValue::MAX],
}

impl SmallValue {
    /// The most bytes a value kept as a copy has.
    pub(crate) const MAX: usize = 32;

    /// A copy of `bytes`, if there are at most [`SmallValue::MAX`].
    pub(crate) fn copy_of(bytes: &[u8]) -> Option<Self> {
        let mut value = SmallValue {
            len: u8::try_from(bytes.len()).ok()?,
            bytes: [0; Self::MAX],
        };
        value.bytes.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(value)
    }

    /// The value's bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
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

#[derive(Debug)]
enum Slot {
    /// No reply yet: the task to wake when it comes, and the request until the writer claims
    /// it (a reply ends the wait, and with it a request not yet worth sending).
    Waiting {
        waker: Option<Waker>,
        unsent: Option<Frame>,
    },
    Ready(Reply),
}

impl Waiter {
    fn is_waiting(&self) -> bool {
        matches!(self.reply, Slot::Waiting { .. })
    }

    /// Whether the call waits and its request has been written (claimed by the writer).
    fn is_written(&self) -> bool {
        matches!(self.reply, Slot::Waiting { unsent: None, .. })
    }

    /// The request, if the call waits and the writer has not claimed it; `contiguous_only` if
    /// only a request in one piece is wanted.
    fn claim(&mut self, contiguous_only: bool) -> Option<Frame> {
        let Slot::Waiting { unsent, .. } = &mut self.reply else {
            return None;
        };
        if contiguous_only {
            unsent.as_ref()?.contiguous()?;
        }
        unsent.take()
    }

    /// The reply, if it came.
    fn into_reply(self) -> Option<Reply> {
        match self.reply {
            Slot::Ready(reply) => Some(reply),
            Slot::Waiting { .. } => None,
        }
    }

    /// Hands the call `reply`, unless it already has one; returns the task to wake.
    fn answer(&mut self, reply: Reply) -> Option<Waker> {
        let Slot::Waiting { waker, .. } = &mut self.reply else {
            return None;
        };
        let waker = waker.take();
        self.reply = Slot::Ready(reply);
        waker
    }
}

/// The waiting calls of one connection, by request id. Once closed, it accepts no new call and
/// every call that was waiting has been told why.
///
/// The calls are spread over [`SHARDS`] tables by id, each behind a lock of its own on a line
/// of memory of its own: every call takes its table's lock four times (registered, claimed by
/// the writer, answered, and its answer taken), from the caller's thread, the writer's and the
/// reader's, and behind one lock for them all the threads of a runtime waited for each other.
/// On one shared runtime, in medians of six interleaved runs, four tables each on a line of its
/// own took 256 callers on one connection 5% higher (four sharing lines, 1%); 32 callers, and
/// two processes, saw no change. They cost an idle connection 0.3 KiB (15,389 bytes to 15,712,
/// both ends, `--profile idle`).
#[derive(Debug)]
pub(crate) struct Pending {
    shards: [Shard; SHARDS],
    /// The deadline the connection's reader has its timer set for: the earliest of the waiting
    /// calls' when it last looked, or an earlier one registered since.
    timer_at: Mutex<Option<Instant>>,
    /// A copy of `timer_at` that a call reads without the lock, in nanoseconds from `origin`
    /// (`u64::MAX` for none); while [`Pending::expire`] works out the next, `u64::MAX` too, so
    /// that a call registered meanwhile takes the lock and waits for the answer.
    timer_at_nanos: AtomicU64,
    origin: Instant,
    /// Why the table closed, and whom to tell: locked only to close it and to read why.
    ending: Mutex<Ending>,
    /// Wakes those waiting for the table to close ([`Pending::wait_closed`]) when it does: a
    /// `Notify` in place, where a `watch` channel allocated a third of a kilobyte per connection.
    closed: Notify,
    /// Whether the table is closed, and whether the server said it takes no new calls: set
    /// before the tables are gone through, and read under a table's lock by a call joining it,
    /// so that a call either sees them or is in its table when the closing comes to it.
    is_closed: AtomicBool,
    is_draining: AtomicBool,
    /// Set, and the connection's reader woken, when a call's deadline comes before the one the
    /// reader's timer is set for.
    earlier_deadline: AtomicBool,
    reader: AtomicWaker,
}

/// How many tables the waiting calls are spread over: call `id` waits in table `id %
/// SHARDS`. Ids count up, so calls made one after another go to different tables.
const SHARDS: usize = 4;

/// One of the tables, on a line of memory of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Shard(Mutex<Calls>);

/// The calls of one table, by id.
type Calls = HashMap<u64, Waiter, BuildHasherDefault<IdHasher>>;

#[derive(Debug, Default)]
struct Ending {
    closed: Option<RpcError>,
    /// Counted once the table closes: the watchers of the client whose connection this is.
    count_close_in: Option<Changes>,
}

/// Hashes the ids this side gives its own calls, one after another from 1: a multiplication
/// spreads them over the table's buckets (its low bits) and sets its tags (the high bits) apart.
/// The bits that pick the table are the same for all of a table's ids, and are left out.
/// SipHash, the map's default, guards against keys a peer picks to collide; a peer picks none of
/// these, and SipHash cost two hashes per call for nothing.
#[derive(Debug, Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, id: u64) {
        let within_table = id / SHARDS as u64;
        self.0 = (self.0 ^ within_table).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Debug)]
struct Waiter {
    /// The reply once it came, kept here for the call to take; until then, the waker of the
    /// task waiting for it and its request. A reply has no channel of its own: one fewer
    /// allocation per call.
    reply: Slot,
    /// When the call's deadline passes, if it has one.
    expires: Option<Instant>,
    /// The call's result is a byte string it takes as it was read: a large one may be read
    /// into memory of its own.
    takes_byte_string: bool,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            shards: Default::default(),
            timer_at: Mutex::new(None),
            timer_at_nanos: AtomicU64::new(u64::MAX),
            origin: Instant::now(),
            ending: Mutex::default(),
            closed: Notify::new(),
            is_closed: AtomicBool::default(),
            is_draining: AtomicBool::default(),
            earlier_deadline: AtomicBool::default(),
            reader: AtomicWaker::default(),
        }
    }
}

impl Pending {
    /// The table of call `id`, locked.
    fn calls(&self, id: u64) -> MutexGuard<'_, Calls> {
        // `id % SHARDS` is below `SHARDS`, which fits in a `u64`.
        let shard = &self.shards[(id % SHARDS as u64) as usize];
        lock(&shard.0)
    }

    fn ending(&self) -> MutexGuard<'_, Ending> {
        lock(&self.ending)
    }

    /// Registers a call to `method` whose request is `request`, to be claimed by the writer, or
    /// says why the connection takes no more calls. Past `expires`, if the call has a deadline,
    /// [`Pending::expire`] fails it with [`Reply::Expired`]. The reply wakes `waker`: the
    /// call's own, so that the reply's future, first polled with it, need not look at the table
    /// again before anything can have come.
    pub(crate) fn register(
        &self,
        id: u64,
        method: &str,
        request: Frame,
        expires: Option<Instant>,
        takes_byte_string: bool,
        waker: Waker,
    ) -> Result<ReplyFuture<'_>, RpcError> {
        let mut calls = self.calls(id);
        // The server said it takes no new calls: that says more than how the connection ended.
        if self.is_draining() {
            return Err(RpcError::ServerClosing {
                method: method.to_owned(),
            });
        }
        if self.is_closed() {
            drop(calls);
            return Err(self.close_reason());
        }
        let registered = WakerIdentity::of(&waker);
        let waiter = Waiter {
            reply: Slot::Waiting {
                waker: Some(waker),
                unsent: Some(request),
            },
            expires,
            takes_byte_string,
        };
        calls.insert(id, waiter);
        drop(calls);
        // Calls mostly share their channel's deadline, so this is rare: the first call's, and
        // one shorter than those before it.
        if let Some(expires) = expires
            && self.nanos(expires) < self.timer_at_nanos.load(Ordering::Acquire)
        {
            let mut timer_at = lock(&self.timer_at);
            if timer_at.is_none_or(|at| expires < at) {
                *timer_at = Some(expires);
                self.timer_at_nanos
                    .store(self.nanos(expires), Ordering::Release);
                self.earlier_deadline.store(true, Ordering::Release);
                self.reader.wake();
            }
        }
        Ok(ReplyFuture {
            pending: self,
            id,
            registered: Some(registered),
        })
    }

    /// Whether call `id` waits for a result that is a byte string it takes as it was read.
    pub(crate) fn takes_byte_string(&self, id: u64) -> bool {
        let calls = self.calls(id);
        let waiter = calls.get(&id);
        waiter.is_some_and(|waiter| waiter.takes_byte_string && waiter.is_waiting())
    }

    /// The reply to call `id` if it came, taken with the call's place in the table; otherwise
    /// the call waits, to be woken when it comes. `None` if the call is not in the table.
    fn poll_reply(&self, id: u64, cx: &mut Context<'_>) -> Poll<Option<Reply>> {
        let mut calls = self.calls(id);
        let Some(waiter) = calls.get_mut(&id) else {
            return Poll::Ready(None);
        };
        if let Slot::Waiting { waker, .. } = &mut waiter.reply {
            match waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => *waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        Poll::Ready(calls.remove(&id).and_then(Waiter::into_reply))
    }

    /// Fails each waiting call whose deadline has passed at `now` with [`Reply::Expired`],
    /// calling `cancel` with the id of each whose request was written. Returns the earliest
    /// deadline of the calls still waiting, for the reader to set its timer to; `None` if none
    /// has one, until [`Pending::poll_earlier_deadline`].
    ///
    /// It looks at every waiting call, but only when the timer fires or a call's deadline
    /// comes before the one its table knew of: about once per deadline's length while calls
    /// share one.
    pub(crate) fn expire(&self, now: Instant, mut cancel: impl FnMut(u64)) -> Option<Instant> {
        // Each expired call: its id, whether its request was written, its task.
        let mut expired = Vec::new();
        let mut next = None::<Instant>;
        let mut timer_at = lock(&self.timer_at);
        // A call registered while the tables are gone through waits for the lock, and then
        // compares its deadline with the one found.
        self.timer_at_nanos.store(u64::MAX, Ordering::Release);
        for shard in &self.shards {
            let mut calls = lock(&shard.0);
            let waiting = calls.iter_mut().filter(|(_, w)| w.is_waiting());
            for (&id, waiter) in waiting {
                match waiter.expires {
                    Some(at) if at <= now => {
                        let written = waiter.is_written();
                        expired.push((id, written, waiter.answer(Reply::Expired)));
                    }
                    Some(at) => next = Some(next.map_or(at, |next| next.min(at))),
                    None => {}
                }
            }
        }
        *timer_at = next;
        let at = next.map_or(u64::MAX, |at| self.nanos(at));
        self.timer_at_nanos.store(at, Ordering::Release);
        drop(timer_at);
        // Outside the locks: a Cancel may be written to the socket straight away.
        for (id, written, waker) in expired {
            if written {
                cancel(id);
            }
            if let Some(waker) = waker {
                waker.wake();
            }
        }
        next
    }

    /// Ready once a call has registered a deadline earlier than the one [`Pending::expire`]
    /// last returned (or any, after it returned `None`); the connection's reader polls it.
    pub(crate) fn poll_earlier_deadline(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        self.reader.register(cx.waker());
        if self.take_earlier_deadline() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Whether a call has registered a deadline earlier than the one [`Pending::expire`] last
    /// returned, since it was last asked.
    pub(crate) fn take_earlier_deadline(&self) -> bool {
        self.earlier_deadline.swap(false, Ordering::AcqRel)
    }

    /// Hands `reply` to the call waiting on `id`. A reply nobody waits for any more (the call
    /// was dropped) is discarded.
    pub(crate) fn complete(&self, id: u64, reply: Reply) {
        let waker = self
            .calls(id)
            .get_mut(&id)
            .and_then(|waiter| waiter.answer(reply));
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Hands each of `answers`' replies to the call waiting for it, under one lock of each table
    /// they wait in, then wakes those calls. Replies nobody waits for any more are discarded.
    pub(crate) fn complete_all(&self, answers: &mut Answers) {
        if answers.replies.is_empty() {
            return;
        }
        for (index, shard) in self.shards.iter().enumerate() {
            if !answers.replies.iter().any(|(id, _)| in_shard(*id, index)) {
                continue;
            }
            let mut calls = lock(&shard.0);
            let mut at = 0;
            while at < answers.replies.len() {
                if !in_shard(answers.replies[at].0, index) {
                    at += 1;
                    continue;
                }
                let (id, reply) = answers.replies.swap_remove(at);
                let waiter = calls.get_mut(&id);
                if let Some(waker) = waiter.and_then(|waiter| waiter.answer(reply)) {
                    answers.wakers.push(waker);
                }
            }
        }
        for waker in answers.wakers.drain(..) {
            waker.wake();
        }
    }

    /// Forgets a call that stopped waiting, taking its request back if it was not written yet.
    pub(crate) fn forget(&self, id: u64) -> Forgotten {
        match self.calls(id).remove(&id).map(|waiter| waiter.reply) {
            None | Some(Slot::Ready(_)) => Forgotten::NotWaiting,
            Some(Slot::Waiting {
                unsent: Some(_), ..
            }) => Forgotten::Unsent,
            Some(Slot::Waiting { unsent: None, .. }) => Forgotten::Sent,
        }
    }

    /// Whether the server said it takes no new calls.
    pub(crate) fn is_draining(&self) -> bool {
        self.is_draining.load(Ordering::Acquire)
    }

    /// Whether any call still waits for its answer.
    pub(crate) fn any_waiting(&self) -> bool {
        let waits = |shard: &Shard| lock(&shard.0).values().any(Waiter::is_waiting);
        self.shards.iter().any(waits)
    }

    /// Takes no new calls; the ones waiting still get their answers.
    pub(crate) fn drain(&self) {
        self.is_draining.store(true, Ordering::Release);
    }

    /// Closes the table: every waiting call fails with `reason`, and so does every later
    /// [`Pending::register`]. Only the first reason is kept.
    pub(crate) fn close(&self, reason: RpcError) {
        let count_close_in = {
            let mut ending = self.ending();
            if ending.closed.is_some() {
                return;
            }
            ending.closed = Some(reason.clone());
            self.is_closed.store(true, Ordering::Release);
            ending.count_close_in.take()
        };
        // Each call takes its reply, and its place in the table, when it is woken.
        let mut wakers = Vec::new();
        for shard in &self.shards {
            let mut calls = lock(&shard.0);
            let waiting = calls.values_mut().filter(|w| w.is_waiting());
            wakers.extend(waiting.filter_map(|waiter| {
                let reply = if waiter.is_written() {
                    Reply::Failed(reason.clone())
                } else {
                    Reply::NotSent(reason.clone())
                };
                waiter.answer(reply)
            }));
        }
        for waker in wakers {
            waker.wake();
        }
        self.closed.notify_waiters();
        if let Some(changes) = count_close_in {
            endpoint::changed(&changes);
        }
    }

    /// Counts the table's closing in `changes` once it closes, at once if it has: how a
    /// client's watchers hear that a connection ended, with no task of its own (half a
    /// kilobyte for every connection) waiting for that.
    pub(crate) fn count_close_in(&self, changes: Changes) {
        let mut ending = self.ending();
        if ending.closed.is_none() {
            ending.count_close_in = Some(changes);
            return;
        }
        drop(ending);
        endpoint::changed(&changes);
    }

    /// Returns once the table is closed.
    pub(crate) async fn wait_closed(&self) {
        let mut notified = std::pin::pin!(self.closed.notified());
        // Enabled before the flag is looked at: a close after the look wakes it.
        notified.as_mut().enable();
        if !self.is_closed() {
            notified.await;
        }
    }

    /// Why the table closed; [`RpcError::ConnectionClosed`] if it has not (yet) recorded one.
    pub(crate) fn close_reason(&self) -> RpcError {
        self.ending()
            .closed
            .clone()
            .unwrap_or(RpcError::ConnectionClosed)
    }

    /// Whether the connection is closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.is_closed.load(Ordering::Acquire)
    }

    /// `at` in nanoseconds from `origin` (0 before it), below `u64::MAX`.
    fn nanos(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX).min(u64::MAX - 1)
    }
}

/// Whether call `id` waits in table `index`.
fn in_shard(id: u64, index: usize) -> bool {
    id % SHARDS as u64 == index as u64
}

/// Locks `mutex`. No code panics while holding one of these locks; if one ever did, what it
/// guards is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The reply to one registered call, as [`Pending::register`] returns it: `None` if the call
/// left the table without one (it cannot, while the call waits for this).
#[derive(Debug)]
pub(crate) struct ReplyFuture<'a> {
    pending: &'a Pending,
    id: u64,
    /// The waker the call was registered with, until the future is first polled.
    registered: Option<WakerIdentity>,
}

impl Future for ReplyFuture<'_> {
    type Output = Option<Reply>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Reply>> {
        // Polled first with the waker the call registered with, there is nothing to look at:
        // a reply that came since has woken that waker, and the call is polled again for it.
        // One lock of the table fewer per call.
        if self.registered.take() == Some(WakerIdentity::of(cx.waker())) {
            return Poll::Pending;
        }
        self.pending.poll_reply(self.id, cx)
    }
}

/// Replies read and not yet handed to their calls: when one read brings many, the connection's
/// reader hands them over together ([`Pending::complete_all`]), taking the table's lock, which
/// every call also takes, once rather than once each.
#[derive(Debug, Default)]
pub(crate) struct Answers {
    replies: Vec<(u64, Reply)>,
    /// The wakers of the calls just answered, kept here only to wake them once the lock is
    /// released; empty in between.
    wakers: Vec<Waker>,
}

impl Answers {
    /// At most this many replies wait to be handed over. Few: the calls handed theirs are woken
    /// at once, and run on the other worker while the reader goes on, where a long list would
    /// keep them waiting, and the table's lock held, for its whole length. (With 256 callers
    /// across two processes, 8 measured 4% more calls per second than 64, and 1, a lock per
    /// answer, about as many as 64.)
    const MAX: usize = 8;

    /// Keeps `reply` to call `id` for the next handover. Returns `false` when no more are kept:
    /// they are to be handed over now.
    pub(crate) fn keep(&mut self, id: u64, reply: Reply) -> bool {
        self.replies.push((id, reply));
        self.replies.len() < Self::MAX
    }

    /// Whether no reply waits to be handed over.
    pub(crate) fn is_empty(&self) -> bool {
        self.replies.is_empty()
    }
}

/// What tells two wakers apart, as [`Waker::will_wake`] does: the same data and functions wake
/// the same task. Kept as addresses, not a clone of the waker, which would cost two atomic
/// updates of the task's reference count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WakerIdentity {
    data: usize,
    vtable: usize,
}

impl WakerIdentity {
    fn of(waker: &Waker) -> Self {
        WakerIdentity {
            data: waker.data() as usize,
            vtable: std::ptr::from_ref(waker.vtable()) as usize,
        }
    }
}

impl Claim for Pending {
    fn claim(&self, id: u64) -> Option<Frame> {
        self.calls(id).get_mut(&id)?.claim(false)
    }

    fn claim_contiguous(&self, id: u64) -> Option<Frame> {
        self.calls(id).get_mut(&id)?.claim(true)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::task::Wakes;

    fn request() -> Frame {
        Frame::from(vec![0u8; 8])
    }

    /// A client's watchers hear of a connection's end once, when its table closes, or at once
    /// if it closed before they asked.
    #[test]
    fn the_close_is_counted_once_in_the_changes_given() {
        let pending = Pending::default();
        let changes = endpoint::changes();
        pending.count_close_in(Arc::clone(&changes));
        assert_eq!(*changes.borrow(), 0, "not before the close");
        pending.close(RpcError::ConnectionClosed);
        pending.close(RpcError::ConnectionClosed);
        assert_eq!(*changes.borrow(), 1, "once");

        let late = endpoint::changes();
        pending.count_close_in(Arc::clone(&late));
        assert_eq!(*late.borrow(), 1, "closed already: at once");
    }

    #[test]
    fn only_a_request_in_one_piece_is_claimed_to_go_straight_through() {
        let pending = Pending::default();
        let _small = pending
            .register(1, "f", request(), None, false, Waker::noop().clone())
            .expect("open");
        let mut spliced = Frame::default();
        spliced
            .append(&crate::Payload::from(vec![7u8; 1 << 20]))
            .expect("encodes");
        let _large = pending
            .register(2, "f", spliced, None, false, Waker::noop().clone())
            .expect("open");
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
        let sent = pending
            .register(1, "f", request(), None, false, Waker::noop().clone())
            .expect("open");
        let unsent = pending
            .register(3, "f", request(), None, false, Waker::noop().clone())
            .expect("open");
        assert!(
            pending.claim(1).is_some(),
            "the writer took call 1's request"
        );
        pending.close(RpcError::ConnectionClosed);
        assert!(matches!(
            sent.await,
            Some(Reply::Failed(RpcError::ConnectionClosed))
        ));
        assert!(
            matches!(
                unsent.await,
                Some(Reply::NotSent(RpcError::ConnectionClosed))
            ),
            "a request never written did not run"
        );
        assert!(matches!(
            pending.register(2, "f", request(), None, false, Waker::noop().clone()),
            Err(RpcError::ConnectionClosed)
        ));
    }

    /// A reply that comes before the call first looks for it wakes the waker the call was
    /// registered with: the first poll, which does not look, loses nothing.
    #[test]
    fn a_reply_before_the_first_poll_wakes_the_registered_waker() {
        let count = std::sync::Arc::new(Wakes::default());
        let waker = Waker::from(std::sync::Arc::clone(&count));
        let pending = Pending::default();
        let mut reply = pending
            .register(1, "f", request(), None, false, waker.clone())
            .expect("open");
        pending.complete(1, Reply::Ok(Bytes::from_static(b"1"), None));
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the reply woke the call");
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut reply).poll(&mut cx).is_pending());
        assert!(matches!(
            Pin::new(&mut reply).poll(&mut cx),
            Poll::Ready(Some(Reply::Ok(b, _))) if b == "1"
        ));
    }

    #[test]
    fn a_value_of_a_few_bytes_is_kept_as_a_copy() {
        let bytes: Vec<u8> = (0..=SmallValue::MAX as u8).collect();
        for len in [0, 1, SmallValue::MAX] {
            let value = SmallValue::copy_of(&bytes[..len]).expect("small enough");
            assert_eq!(value.as_slice(), &bytes[..len]);
        }
        assert!(SmallValue::copy_of(&bytes).is_none(), "one byte too many");
        assert!(SmallValue::copy_of(&[0; 300]).is_none());
    }

    #[tokio::test]
    async fn replies_reach_their_own_call() {
        let pending = Pending::default();
        let one = pending
            .register(1, "f", request(), None, false, Waker::noop().clone())
            .expect("open");
        let two = pending
            .register(2, "f", request(), None, false, Waker::noop().clone())
            .expect("open");
        pending.complete(2, Reply::Ok(Bytes::from_static(b"2"), None));
        pending.complete(1, Reply::Ok(Bytes::from_static(b"1"), None));
        pending.complete(3, Reply::Ok(Bytes::new(), None));
        assert!(matches!(one.await, Some(Reply::Ok(b, _)) if b == "1"));
        assert!(matches!(two.await, Some(Reply::Ok(b, _)) if b == "2"));
    }

    /// Replies kept for a handover reach no call until it, then each its own, every call woken
    /// once; a reply for a call gone meanwhile is discarded, and the handover leaves nothing.
    #[test]
    fn replies_handed_over_together_each_reach_and_wake_their_own_call() {
        let pending = Pending::default();
        let counts: Vec<_> = (0..3)
            .map(|_| std::sync::Arc::new(Wakes::default()))
            .collect();
        let wakers: Vec<Waker> = counts.iter().cloned().map(Waker::from).collect();
        let mut replies: Vec<_> = (0..3)
            .map(|id| {
                let waker = wakers[id].clone();
                pending
                    .register(id as u64, "f", request(), None, false, waker)
                    .expect("open")
            })
            .collect();
        assert_eq!(pending.forget(1), Forgotten::Unsent);
        let mut answers = Answers::default();
        for id in [2, 1, 0] {
            let reply = Reply::Ok(Bytes::from(id.to_string()), None);
            assert!(answers.keep(id, reply), "room for more");
        }
        let woken = || counts.iter().map(|count| count.0.load(Ordering::SeqCst));
        assert!(woken().all(|count| count == 0), "kept, not handed over");
        pending.complete_all(&mut answers);
        assert!(answers.is_empty());
        assert_eq!(woken().collect::<Vec<_>>(), [1, 0, 1]);
        for id in [0, 2] {
            let mut cx = Context::from_waker(&wakers[id]);
            let reply = &mut replies[id];
            assert!(
                Pin::new(&mut *reply).poll(&mut cx).is_pending(),
                "first poll"
            );
            assert!(matches!(
                Pin::new(reply).poll(&mut cx),
                Poll::Ready(Some(Reply::Ok(b, _))) if b == id.to_string()
            ));
        }
        assert_eq!(pending.forget(1), Forgotten::NotWaiting, "discarded");
    }

    /// At most `Answers::MAX` replies are kept before they must be handed over.
    #[test]
    fn answers_ask_for_a_handover_when_full() {
        let mut answers = Answers::default();
        for id in 1..Answers::MAX as u64 {
            assert!(answers.keep(id, Reply::Ok(Bytes::new(), None)));
        }
        assert!(!answers.keep(0, Reply::Ok(Bytes::new(), None)), "full");
        Pending::default().complete_all(&mut answers);
        assert!(answers.is_empty(), "replies for no call are dropped");
    }

    #[tokio::test]
    async fn draining_refuses_new_calls_and_answers_old_ones() {
        let pending = Pending::default();
        let old = pending
            .register(1, "f", request(), None, false, Waker::noop().clone())
            .expect("open");
        pending.drain();
        assert!(matches!(
            pending.register(2, "g", request(), None, false, Waker::noop().clone()),
            Err(RpcError::ServerClosing { method }) if method == "g"
        ));
        pending.complete(1, Reply::Ok(Bytes::new(), None));
        assert!(matches!(old.await, Some(Reply::Ok(..))));
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
            .register(1, "f", request(), Some(soon), false, Waker::noop().clone())
            .expect("open");
        let unwritten = pending
            .register(2, "f", request(), Some(soon), false, Waker::noop().clone())
            .expect("open");
        let _waits = pending
            .register(3, "f", request(), Some(later), false, Waker::noop().clone())
            .expect("open");
        let _forever = pending
            .register(4, "f", request(), None, false, Waker::noop().clone())
            .expect("open");
        assert!(
            pending.claim(1).is_some(),
            "the writer took call 1's request"
        );
        let mut cancelled = Vec::new();
        assert_eq!(pending.expire(now, |id| cancelled.push(id)), Some(soon));
        assert_eq!(pending.expire(soon, |id| cancelled.push(id)), Some(later));
        assert_eq!(cancelled, [1], "only the written request is cancelled");
        assert!(matches!(written.await, Some(Reply::Expired)));
        assert!(matches!(unwritten.await, Some(Reply::Expired)));
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

    /// An answer waiting for its call to take it is past expiring: the call is neither failed
    /// nor cancelled at the server, and its deadline no longer sets the reader's timer.
    #[tokio::test(start_paused = true)]
    async fn an_answered_call_does_not_expire() {
        let pending = Pending::default();
        let now = Instant::now();
        let soon = now + std::time::Duration::from_millis(10);
        let answered = pending
            .register(1, "f", request(), Some(soon), false, Waker::noop().clone())
            .expect("open");
        assert!(pending.claim(1).is_some(), "written");
        pending.complete(1, Reply::Ok(Bytes::from_static(b"1"), None));
        let mut cancelled = Vec::new();
        assert_eq!(pending.expire(soon, |id| cancelled.push(id)), None);
        assert!(cancelled.is_empty(), "nothing to cancel: {cancelled:?}");
        assert!(matches!(answered.await, Some(Reply::Ok(b, _)) if b == "1"));
    }

    /// A wait for the close that began before it ends with it, and one that begins after it
    /// ends at once.
    #[tokio::test]
    async fn waiting_for_the_close_ends_when_it_comes() {
        let pending = Pending::default();
        let mut before = std::pin::pin!(pending.wait_closed());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(before.as_mut().poll(&mut cx).is_pending(), "not closed yet");
        pending.close(RpcError::ConnectionClosed);
        let ten_seconds = std::time::Duration::from_secs(10);
        let woken = tokio::time::timeout(ten_seconds, before).await;
        woken.expect("woken by the close");
        let at_once = tokio::time::timeout(ten_seconds, pending.wait_closed()).await;
        at_once.expect("closed already");
    }

    /// A call polled last from another task (a future moved, or raced in a `select!` of a
    /// task that changed) is woken there, not where it was first polled.
    #[test]
    fn the_reply_wakes_the_task_that_polled_last() {
        let pending = Pending::default();
        let mut reply = std::pin::pin!(
            pending
                .register(1, "f", request(), None, false, Waker::noop().clone())
                .expect("open")
        );
        let (first, last) = (
            std::sync::Arc::new(Wakes::default()),
            std::sync::Arc::new(Wakes::default()),
        );
        for wakes in [&first, &last] {
            let waker = Waker::from(std::sync::Arc::clone(wakes));
            assert!(
                reply
                    .as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_pending()
            );
        }
        pending.complete(1, Reply::Ok(Bytes::new(), None));
        assert_eq!(first.0.load(Ordering::Relaxed), 0);
        assert_eq!(last.0.load(Ordering::Relaxed), 1);
    }

    /// The reader looks at the calls' deadlines again only for a call whose deadline comes
    /// before the one its timer is set for, whichever table the call waits in: calls made one
    /// after another, each later than the last, do not make it look at every call each time.
    #[tokio::test(start_paused = true)]
    async fn only_an_earlier_deadline_makes_the_reader_look_again() {
        let pending = Pending::default();
        let now = Instant::now();
        let at = |ms| Some(now + std::time::Duration::from_millis(ms));
        let register = |id, expires| {
            pending
                .register(id, "f", request(), expires, false, Waker::noop().clone())
                .map(drop)
                .expect("open");
        };
        register(1, at(10));
        assert!(pending.take_earlier_deadline(), "the first deadline");
        assert_eq!(pending.expire(now, |_| {}), at(10));
        pending.complete(1, Reply::Ok(Bytes::new(), None));
        assert_eq!(pending.forget(1), Forgotten::NotWaiting);
        for id in 2..2 + SHARDS as u64 {
            register(id, at(10 + id));
            assert!(!pending.take_earlier_deadline(), "call {id} ends later");
        }
        register(100, at(5));
        assert!(pending.take_earlier_deadline(), "earlier than the timer");
        assert_eq!(pending.expire(now, |_| {}), at(5));
    }

    #[test]
    fn a_call_forgotten_before_its_turn_takes_its_request_back() {
        let pending = Pending::default();
        pending
            .register(1, "f", request(), None, false, Waker::noop().clone())
            .expect("open");
        pending
            .register(2, "f", request(), None, false, Waker::noop().clone())
            .expect("open");
        assert!(pending.claim(2).is_some());
        assert_eq!(pending.forget(1), Forgotten::Unsent);
        assert!(pending.claim(1).is_none(), "nothing left for the writer");
        assert_eq!(pending.forget(2), Forgotten::Sent);
    }
}
