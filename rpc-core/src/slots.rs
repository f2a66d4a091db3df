//! A connection's call slots: how many of its calls are in flight, up to its limit. Each call
//! holds a slot from before its request is encoded until it is answered (on a server, until
//! its answer is written).
//!
//! A counter, not tokio's `Semaphore`: every call takes a slot and gives it back, from tasks on
//! every worker, and the semaphore locks its list of waiters on each release, waiters or not.
//! Here a release is one atomic subtraction, and a look at whether anyone waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

use crate::protocol::HeldBytes;

/// The slots of one connection.
#[derive(Debug)]
pub(crate) struct CallSlots {
    /// Slots taken.
    taken: AtomicUsize,
    /// How many there are.
    capacity: usize,
    /// Tasks waiting for a slot; a release wakes one of them.
    waiting: AtomicUsize,
    freed: Notify,
}

/// One call's slot, given back when dropped, with the call's place among the connection's
/// uploads if it sends a streamed argument (a slot of the connection's upload slots, given back
/// with it), and on a server the bytes of a large request, counted until the call is over.
#[derive(Debug)]
pub(crate) struct CallSlot {
    slots: Arc<CallSlots>,
    _upload: Option<Box<CallSlot>>,
    _arguments: Option<HeldBytes>,
}

impl CallSlots {
    /// `capacity` slots (at least one), none taken.
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(CallSlots {
            taken: AtomicUsize::new(0),
            capacity: capacity.max(1),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// A slot, if one is free.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<CallSlot> {
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
                    return Some(CallSlot {
                        slots: Arc::clone(self),
                        _upload: None,
                        _arguments: None,
                    });
                }
                Err(now) => taken = now,
            }
        }
    }

    /// A slot, once one is free. Cancel safe: a wakeup meant for a waiter dropped meanwhile
    /// goes to another.
    pub(crate) async fn take(self: &Arc<Self>) -> CallSlot {
        loop {
            if let Some(slot) = self.try_take() {
                return slot;
            }
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            // Listening before saying so, and saying so before looking again: a slot given
            // back after the look sees a waiter, and its wakeup finds this one listening.
            freed.as_mut().enable();
            let _waiting = Waiting::new(&self.waiting);
            if let Some(slot) = self.try_take() {
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

    /// This slot, counting `arguments` (the bytes of the call's request) until it is given back.
    pub(crate) fn with_arguments(mut self, arguments: HeldBytes) -> CallSlot {
        self._arguments = Some(arguments);
        self
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let slots = &self.slots;
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
