//! A connection's call slots: how many of its calls are in flight, up to its limit. Each call
//! holds a slot from before its request is encoded until it is answered (on a server, until
//! its answer is written). On a server, a slot also counts the bytes of its call's request,
//! which the handler holds until it answers, against a limit of their own; and the bytes a
//! connection holds for its calls, running or parked (their requests, uploads' windows and
//! items past them), past its first [`UNSHARED`], count against a limit of the whole server's
//! ([`HeldRequests`], [`CallSlots::reserve`]).
//!
//! A counter, not tokio's `Semaphore`: every call takes a slot and gives it back, from tasks on
//! every worker, and the semaphore locks its list of waiters on each release, waiters or not.
//! Here a release is one atomic subtraction (two with bytes), and a look at whether anyone
//! waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Why the server would not hold more for a call: said to the client of a request it sheds,
/// and to the handler of an upload whose item past the window it drops.
pub(crate) const OVER_SERVER_LIMIT: &str = "the server's calls hold as many bytes of requests \
                                            and uploaded items as it allows (max_argument_bytes)";

/// What a connection's calls may hold of their requests before the server's limit on them all
/// counts it: small calls never touch the count the server's connections share.
pub(crate) const UNSHARED: usize = 64 * 1024;

/// The bytes a whole server's calls hold of what their clients sent (requests, uploads'
/// windows and items past them), running or parked, past each connection's first
/// [`UNSHARED`], and how many they may.
#[derive(Debug)]
pub(crate) struct HeldRequests {
    /// Signed: each change is worked out from its connection's count, and two changes of one
    /// connection may land here in the other order than they were counted there, for a moment
    /// below zero.
    held: AtomicIsize,
    limit: isize,
}

impl HeldRequests {
    /// None held, at most `limit` (past which a request is held only while none is).
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(HeldRequests {
            held: AtomicIsize::new(0),
            limit: isize::try_from(limit).unwrap_or(isize::MAX),
        })
    }

    /// The bytes held now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst).max(0) as usize
    }
}

/// The slots of one connection.
#[derive(Debug)]
pub(crate) struct CallSlots {
    /// Slots taken.
    taken: AtomicUsize,
    /// How many there are.
    capacity: usize,
    /// The bytes the slots taken count.
    bytes: AtomicUsize,
    /// While the slots taken count this many bytes or more, no slot is free for a call that
    /// counts any. Below it, one is, whatever its bytes: so the bytes go past it by one call's
    /// at most, and a single call of any size always gets a slot.
    byte_limit: usize,
    /// The bytes reserved on this connection for its calls, running or parked; what they come
    /// to past [`UNSHARED`] is counted in `server` too.
    reserved: AtomicUsize,
    server: Option<Arc<HeldRequests>>,
    /// Tasks waiting for a slot; a release wakes one of them.
    waiting: AtomicUsize,
    freed: Notify,
}

/// One call's slot, given back when dropped, with the bytes it counts, the bytes of the
/// reservation it took over ([`CallSlot::holding`]), and the call's place among the
/// connection's uploads if it sends a streamed argument (a slot of the connection's upload
/// slots, given back with it).
#[derive(Debug)]
pub(crate) struct CallSlot {
    slots: Arc<CallSlots>,
    bytes: usize,
    reserved: usize,
    _upload: Option<Box<CallSlot>>,
}

/// Bytes a connection holds for a call (its request's, with an upload's window; or what an
/// upload's items cost past that window), counted among those the connection holds, and among
/// the server's past the connection's first [`UNSHARED`], until it is dropped or its call's
/// slot takes it over.
#[derive(Debug)]
pub(crate) struct Reservation {
    slots: Arc<CallSlots>,
    bytes: usize,
}

impl CallSlots {
    /// `capacity` slots (at least one), none taken, with no limit on bytes.
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Self::with_byte_limit(capacity, usize::MAX, None)
    }

    /// `capacity` slots (at least one), none taken; while those taken count `byte_limit` bytes
    /// or more, none is free for a call that counts any. Reservations past [`UNSHARED`] count
    /// in `server`, if any.
    pub(crate) fn with_byte_limit(
        capacity: usize,
        byte_limit: usize,
        server: Option<Arc<HeldRequests>>,
    ) -> Arc<Self> {
        Arc::new(CallSlots {
            taken: AtomicUsize::new(0),
            capacity: capacity.max(1),
            bytes: AtomicUsize::new(0),
            byte_limit,
            reserved: AtomicUsize::new(0),
            server,
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Reserves `bytes` the connection holds for a call, for as long as it holds them, if the
    /// server may: `None` if what they add past the connection's first [`UNSHARED`] would take
    /// the server's requests past its limit while it holds any.
    pub(crate) fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        let before = self.reserved.fetch_add(bytes, Ordering::SeqCst);
        let reservation = Reservation {
            slots: Arc::clone(self),
            bytes,
        };
        let shared = past_unshared(before.saturating_add(bytes)) - past_unshared(before);
        if shared > 0
            && let Some(server) = &self.server
        {
            let shared = shared as isize;
            let held = server.held.fetch_add(shared, Ordering::SeqCst);
            if held > 0 && held.saturating_add(shared) > server.limit {
                // Dropping it takes back what it added.
                return None;
            }
        }
        Some(reservation)
    }

    /// Takes back `bytes` reserved, here and from the server's count.
    fn release(&self, bytes: usize) {
        let before = self.reserved.fetch_sub(bytes, Ordering::SeqCst);
        let shared = past_unshared(before) - past_unshared(before - bytes);
        if shared > 0
            && let Some(server) = &self.server
        {
            server.held.fetch_sub(shared as isize, Ordering::SeqCst);
        }
    }

    /// A slot, if one is free.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<CallSlot> {
        self.try_take_counting(0)
    }

    /// A slot counting `bytes`, if one is free for them. Only one task takes slots that count
    /// bytes (a server connection's reader): two could both find room under the limit.
    pub(crate) fn try_take_counting(self: &Arc<Self>, bytes: usize) -> Option<CallSlot> {
        if bytes > 0 {
            let counted = self.bytes.load(Ordering::SeqCst);
            if counted > 0 && counted >= self.byte_limit {
                return None;
            }
        }
        let mut taken = self.taken.load(Ordering::SeqCst);
        loop {
            if taken >= self.capacity {
                return None;
            }
            match self.taken.compare_exchange_weak(
                taken,
                taken + 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    if bytes > 0 {
                        self.bytes.fetch_add(bytes, Ordering::SeqCst);
                    }
                    return Some(CallSlot {
                        slots: Arc::clone(self),
                        bytes,
                        reserved: 0,
                        _upload: None,
                    });
                }
                Err(now) => taken = now,
            }
        }
    }

    /// A slot, once one is free. Cancel safe: a wakeup meant for a waiter dropped meanwhile
    /// goes to another.
    pub(crate) fn take(self: &Arc<Self>) -> impl Future<Output = CallSlot> + '_ {
        // Not an `async fn` around it: that would hold its state inside one more, in every
        // call that waits for a slot.
        self.take_counting(0)
    }

    /// A slot counting `bytes`, once one is free for them. Cancel safe, like
    /// [`CallSlots::take`].
    pub(crate) async fn take_counting(self: &Arc<Self>, bytes: usize) -> CallSlot {
        loop {
            if let Some(slot) = self.try_take_counting(bytes) {
                return slot;
            }
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            // Listening before saying so, and saying so before looking again: a slot given
            // back after the look sees a waiter, and its wakeup finds this one listening.
            freed.as_mut().enable();
            let _waiting = Waiting::new(&self.waiting);
            if let Some(slot) = self.try_take_counting(bytes) {
                return slot;
            }
            freed.await;
        }
    }

    /// How many slots are taken.
    pub(crate) fn taken(&self) -> usize {
        self.taken.load(Ordering::Relaxed)
    }

    /// How many slots are taken, sequentially consistent with their taking and giving back:
    /// of two calls, one taking a slot and then looking at a flag, the other setting the flag
    /// and then looking here, one sees the other's.
    pub(crate) fn taken_now(&self) -> usize {
        self.taken.load(Ordering::SeqCst)
    }

    /// Whether at most one call is in flight.
    pub(crate) fn lone_call(&self) -> bool {
        self.taken() <= 1
    }
}

impl CallSlot {
    /// This slot, holding `upload` (a slot of the connection's uploads) until it is given back.
    pub(crate) fn with_upload(mut self, upload: CallSlot) -> CallSlot {
        self._upload = Some(Box::new(upload));
        self
    }

    /// This slot, keeping what `reservation` holds, of the connection's own, until it is
    /// given back.
    pub(crate) fn holding(mut self, mut reservation: Reservation) -> CallSlot {
        debug_assert!(Arc::ptr_eq(&self.slots, &reservation.slots));
        self.reserved += std::mem::take(&mut reservation.bytes);
        self
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.slots.release(self.bytes);
        }
    }
}

/// What `reserved` bytes of one connection come to past its first [`UNSHARED`].
fn past_unshared(reserved: usize) -> usize {
    reserved.saturating_sub(UNSHARED)
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let slots = &self.slots;
        if self.bytes > 0 {
            slots.bytes.fetch_sub(self.bytes, Ordering::SeqCst);
        }
        if self.reserved > 0 {
            slots.release(self.reserved);
        }
        slots.taken.fetch_sub(1, Ordering::SeqCst);
        if slots.waiting.load(Ordering::SeqCst) > 0 {
            slots.freed.notify_one();
        }
    }
}

/// Counts a task among the waiters while it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;

    #[test]
    fn slots_run_out_and_come_back() {
        let slots = CallSlots::new(2);
        let one = slots.try_take().expect("a slot");
        let two = slots.try_take().expect("a second");
        assert!(slots.try_take().is_none(), "two in all");
        assert_eq!(slots.taken(), 2);
        assert!(!slots.lone_call());
        drop(one);
        assert!(slots.lone_call());
        let _three = slots.try_take().expect("the first came back");
        drop(two);
        assert_eq!(slots.taken(), 1);
    }

    /// A slot holding an upload place gives both back at once.
    #[test]
    fn an_upload_place_goes_back_with_its_slot() {
        let (slots, uploads) = (CallSlots::new(2), CallSlots::new(1));
        let slot = slots.try_take().expect("a slot");
        let slot = slot.with_upload(uploads.try_take().expect("a place"));
        assert!(uploads.try_take().is_none(), "one place in all");
        drop(slot);
        assert_eq!((slots.taken(), uploads.taken()), (0, 0));
    }

    /// While the slots taken count their limit of bytes or more, none is free for a call that
    /// counts any, though slots are left; below it, one is, whatever its size. Calls that count
    /// none are not held back.
    #[tokio::test]
    async fn slots_that_count_bytes_stop_at_their_limit_and_come_back() {
        let slots = CallSlots::with_byte_limit(8, 100, None);
        let first = slots.try_take_counting(60).expect("under the limit");
        let second = slots
            .try_take_counting(60)
            .expect("still under it: 60 counted");
        assert!(slots.try_take_counting(1).is_none(), "120 counted");
        let _uncounted = slots.try_take().expect("a call that counts nothing");
        let mut waiting = Box::pin(slots.take_counting(500));
        assert!(waiting.as_mut().now_or_never().is_none());
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("60 counted: a slot is free, whatever the size");
        drop((second, third));
        let alone = slots.try_take_counting(10_000).expect("none counted");
        assert!(slots.try_take_counting(1).is_none());
        drop(alone);
        assert_eq!(slots.taken(), 1);
    }

    /// What a connection's requests hold past its first [`UNSHARED`] counts in the server's
    /// total, whoever holds it (a reservation, then the slot that takes it over), until they
    /// let go. A reservation that would take the total past its limit is refused, unless the
    /// server holds nothing; small requests, within their connection's first 64 KiB, never are.
    #[test]
    fn reservations_past_a_connections_first_bytes_count_against_the_servers_limit() {
        const KIB: usize = 1024;
        let server = HeldRequests::new(300 * KIB);
        let one = CallSlots::with_byte_limit(8, usize::MAX, Some(Arc::clone(&server)));
        let other = CallSlots::with_byte_limit(8, usize::MAX, Some(Arc::clone(&server)));

        let small = one.reserve(60 * KIB).expect("within the first 64 KiB");
        assert_eq!(server.held(), 0);
        let large = one.reserve(200 * KIB).expect("the server holds none");
        assert_eq!(server.held(), 196 * KIB, "260 KiB, less the first 64");
        let slot = one.try_take_counting(200 * KIB).expect("a slot");
        let running = slot.holding(large);
        assert_eq!(
            server.held(),
            196 * KIB,
            "the slot holds what the reservation did"
        );

        assert!(other.reserve(200 * KIB).is_none(), "332 KiB past the limit");
        assert_eq!(
            server.held(),
            196 * KIB,
            "a refusal takes back what it added"
        );
        let fits = other.reserve(150 * KIB).expect("282 KiB");
        assert_eq!(server.held(), 282 * KIB);
        let to_the_limit = other.reserve(18 * KIB).expect("300 KiB: the limit itself");
        assert_eq!(server.held(), 300 * KIB);
        drop(to_the_limit);
        let tiny = other.reserve(KIB).expect("other's own first bytes");
        assert_eq!(server.held(), 283 * KIB, "past its first 64 KiB: counted");
        drop(tiny);

        drop(small);
        assert_eq!(
            server.held(),
            222 * KIB,
            "136 KiB of one's and 86 of other's"
        );
        drop(running);
        assert_eq!(server.held(), 86 * KIB);
        drop(fits);
        assert_eq!(server.held(), 0);
        let alone = one.reserve(10 * 1024 * KIB).expect("none held: any size");
        assert!(other.reserve(100 * KIB).is_none());
        drop(alone);
        assert_eq!(server.held(), 0);
    }

    /// A connection's release and reservation, counted in one order on the connection, may
    /// change the server's count in the other, leaving it below zero for a moment: that
    /// refuses nobody.
    #[test]
    fn a_servers_count_below_zero_for_a_moment_refuses_nobody() {
        let server = HeldRequests::new(100 * 1024);
        let slots = CallSlots::with_byte_limit(8, usize::MAX, Some(Arc::clone(&server)));
        // A release's change, landed before that of the reservation counted before it.
        server.held.fetch_sub(50 * 1024, Ordering::SeqCst);
        let reservation = slots.reserve(150 * 1024).expect("the server holds nothing");
        drop(reservation);
        assert_eq!(server.held.load(Ordering::SeqCst), -50 * 1024);
    }

    /// Waiters for slots all get one as the slots come back, each released slot waking one,
    /// with tasks on two workers taking and giving back at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_waiter_gets_a_slot_as_they_come_back() {
        let slots = CallSlots::new(3);
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let slots = Arc::clone(&slots);
            tasks.push(tokio::spawn(async move {
                for _ in 0..200 {
                    let slot = slots.take().await;
                    assert!(slots.taken() <= 3, "never more than the capacity");
                    tokio::task::yield_now().await;
                    drop(slot);
                }
            }));
        }
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("no waiter is left waiting")
                .expect("no panic");
        }
        assert_eq!(slots.taken(), 0);
    }

    /// A waiter dropped after a released slot woke it passes the wakeup on.
    #[tokio::test]
    async fn a_dropped_waiter_passes_its_wakeup_on() {
        let slots = CallSlots::new(1);
        let held = slots.try_take().expect("the slot");
        let mut first = Box::pin(slots.take());
        let mut second = Box::pin(slots.take());
        assert!(first.as_mut().now_or_never().is_none());
        assert!(second.as_mut().now_or_never().is_none());
        drop(held);
        drop(first);
        let slot = tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .expect("the second waiter gets the slot");
        drop(slot);
    }
}
