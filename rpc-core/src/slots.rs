//! A connection's call slots: how many of its calls are in flight, up to its limit. Each call
//! holds a slot from before its request is encoded until it is answered (on a server, until
//! its answer is written). On a server, a slot also counts the bytes of its call's request,
//! which the handler holds until it answers, against a limit of their own.
//!
//! A counter, not tokio's `Semaphore`: every call takes a slot and gives it back, from tasks on
//! every worker, and the semaphore locks its list of waiters on each release, waiters or not.
//! Here a release is one atomic subtraction (two with bytes), and a look at whether anyone
//! waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

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
    /// Tasks waiting for a slot; a release wakes one of them.
    waiting: AtomicUsize,
    freed: Notify,
}

/// One call's slot, given back when dropped, with the bytes it counts, and the call's place
/// among the connection's uploads if it sends a streamed argument (a slot of the connection's
/// upload slots, given back with it).
#[derive(Debug)]
pub(crate) struct CallSlot {
    slots: Arc<CallSlots>,
    bytes: usize,
    _upload: Option<Box<CallSlot>>,
}

impl CallSlots {
    /// `capacity` slots (at least one), none taken, with no limit on bytes.
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Self::with_byte_limit(capacity, usize::MAX)
    }

    /// `capacity` slots (at least one), none taken; while those taken count `byte_limit` bytes
    /// or more, none is free for a call that counts any.
    pub(crate) fn with_byte_limit(capacity: usize, byte_limit: usize) -> Arc<Self> {
        Arc::new(CallSlots {
            taken: AtomicUsize::new(0),
            capacity: capacity.max(1),
            bytes: AtomicUsize::new(0),
            byte_limit,
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        })
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
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let slots = &self.slots;
        if self.bytes > 0 {
            slots.bytes.fetch_sub(self.bytes, Ordering::SeqCst);
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
        let slots = CallSlots::with_byte_limit(8, 100);
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
