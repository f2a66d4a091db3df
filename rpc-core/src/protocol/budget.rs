//! The bytes queued for peers across a server's connections, and taking them back from a peer
//! that does not read.
//!
//! Each connection's [`Meter`](super::Meter) counts what is queued for its peer and adds what
//! is past its first [`Budget::STEP`] to the server's [`Budget`]. While the server is at its
//! budget, the connections with answers waiting stop reading requests. The calls they already
//! run still answer, though, up to `max_in_flight` answers a connection: a client that sends
//! many calls for large results and reads nothing would make the server hold far more than the
//! budget until keep-alive's write-stall timeout closes it, and meanwhile slow every client with
//! answers waiting, whose reads pause while the server is at its budget.
//!
//! So each connection holding a step or more is enlisted with the budget, with the time since
//! which its peer has kept its writer behind: the writer offered bytes the transport did not
//! take all of, and no write has taken all it was offered since (the writer's [`Lag`]). While
//! the server holds its budget, a writer its peer has kept behind for [`PATIENCE`] looks,
//! every [`PATIENCE`] it waits, whether it is the enlisted one kept behind longest; if it is,
//! it gives way ([`Share::gives_way`]): its write fails, its connection closes and what was
//! queued for it is freed. The longest first and one at a time: clients that read as fast as
//! the network carries catch up at the end of every write, and one that reads slowly enough to
//! stay behind is closed only while the server is short.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How long a peer must have kept its writer behind before its connection may give way, and
/// how often a writer kept behind looks again whether it should.
pub(crate) const PATIENCE: Duration = Duration::from_secs(1);

/// A [`Lag`]'s place while it is not enlisted.
const NOT_ENLISTED: usize = usize::MAX;

/// The bytes queued across all of a server's connections, and their limit.
///
/// Each connection's queue is counted in whole steps (64 KiB): a connection adds to the
/// server's count only when its own crosses a step, so the many small answers of a busy server
/// never touch this count, which all connections share. What the budget caps is therefore the
/// bytes queued beyond the first step of each connection.
#[derive(Debug)]
pub(crate) struct Budget {
    /// Signed: a release on one thread may be counted just before the hold it follows.
    queued: AtomicIsize,
    limit: usize,
    step: usize,
    /// What the lags' times count from.
    epoch: Instant,
    /// The connections holding a step or more.
    holders: Mutex<Vec<Arc<Lag>>>,
}

impl Budget {
    /// The step in which each connection's queue is counted.
    pub(crate) const STEP: usize = 64 * 1024;

    pub(crate) fn new(limit: usize) -> Self {
        Self::with_step(limit, Self::STEP)
    }

    pub(super) fn with_step(limit: usize, step: usize) -> Self {
        Budget {
            queued: AtomicIsize::new(0),
            limit,
            step,
            epoch: Instant::now(),
            holders: Mutex::new(Vec::new()),
        }
    }

    /// The bytes queued across the server, counted in steps.
    pub(crate) fn queued(&self) -> usize {
        usize::try_from(self.queued.load(Ordering::Acquire)).unwrap_or(0)
    }

    /// Whether the server holds its budget: the connections with answers waiting stop reading,
    /// and one kept behind may have to give way.
    pub(super) fn reached(&self) -> bool {
        self.queued() >= self.limit
    }

    fn holders(&self) -> MutexGuard<'_, Vec<Arc<Lag>>> {
        // The list is consistent after every statement: a panic elsewhere leaves it usable.
        self.holders.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `at` in nanoseconds from the epoch, plus one, so that 0 can mean "never".
    fn nanos(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1
    }
}

/// How far behind its peer keeps one connection's writer, as the other connections see it.
#[derive(Debug)]
pub(crate) struct Lag {
    /// Since when the writer has been behind, in nanoseconds from the budget's epoch plus one;
    /// 0 while it is caught up. Written by the writer alone.
    behind_since: AtomicU64,
    /// Its index in the budget's holders while it is enlisted, or [`NOT_ENLISTED`]. Changed
    /// only under the holders' lock.
    place: AtomicUsize,
    /// It gave way, and is never enlisted again.
    gave_way: AtomicBool,
}

/// One connection's share of its server's [`Budget`]: what its meter adds to the budget, and
/// what its writer tells of its peer. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Share {
    budget: Arc<Budget>,
    lag: Arc<Lag>,
}

impl Share {
    pub(crate) fn new(budget: Arc<Budget>) -> Self {
        Share {
            budget,
            lag: Arc::new(Lag {
                behind_since: AtomicU64::new(0),
                place: AtomicUsize::new(NOT_ENLISTED),
                gave_way: AtomicBool::new(false),
            }),
        }
    }

    pub(super) fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Counts the connection's queue going from `before` to `after` bytes; `queued` reads what
    /// it holds now. A connection that comes to hold a step is enlisted, and one that no
    /// longer does leaves the list.
    pub(super) fn add(&self, before: usize, after: usize, queued: impl Fn() -> usize) {
        let budget = &*self.budget;
        let steps = |bytes: usize| (bytes / budget.step) as isize;
        let (from, to) = (steps(before), steps(after));
        if from == to {
            return;
        }
        budget
            .queued
            .fetch_add((to - from) * budget.step as isize, Ordering::AcqRel);
        if (from == 0) != (to == 0) {
            // Under the lock, by what the queue holds then: of two crossings made at once in
            // opposite directions, whichever takes the lock last sees where the queue ended.
            let mut holders = budget.holders();
            let holds = queued() >= budget.step && !self.lag.gave_way.load(Ordering::Relaxed);
            let place = self.lag.place.load(Ordering::Relaxed);
            if holds && place == NOT_ENLISTED {
                self.lag.place.store(holders.len(), Ordering::Relaxed);
                holders.push(Arc::clone(&self.lag));
            } else if !holds && place != NOT_ENLISTED {
                self.leave(&mut holders, place);
            }
        }
    }

    fn leave(&self, holders: &mut Vec<Arc<Lag>>, place: usize) {
        holders.swap_remove(place);
        if let Some(moved) = holders.get(place) {
            moved.place.store(place, Ordering::Relaxed);
        }
        self.lag.place.store(NOT_ENLISTED, Ordering::Relaxed);
    }

    /// The writer's last write took everything it was offered.
    pub(super) fn caught_up(&self) {
        if self.lag.behind_since.load(Ordering::Relaxed) != 0 {
            self.lag.behind_since.store(0, Ordering::Relaxed);
        }
    }

    /// The writer's last write did not take everything it was offered.
    pub(super) fn behind(&self) {
        if self.lag.behind_since.load(Ordering::Relaxed) == 0 {
            let now = self.budget.nanos(Instant::now());
            self.lag.behind_since.store(now, Ordering::Relaxed);
        }
    }

    /// Whether the connection should give way, its queue freed: the server holds its budget,
    /// and of the connections holding a step, this one's peer has kept its writer
    /// behind the longest, [`PATIENCE`] or more. If so, it leaves the list at once, so that the
    /// next writer to look need not wait for its queue to be freed to find the next.
    pub(super) fn gives_way(&self) -> bool {
        let budget = &*self.budget;
        let since = self.lag.behind_since.load(Ordering::Relaxed);
        if since == 0 || !budget.reached() {
            return false;
        }
        let patience = u64::try_from(PATIENCE.as_nanos()).unwrap_or(u64::MAX);
        if budget.nanos(Instant::now()).saturating_sub(since) < patience {
            return false;
        }
        let mut holders = budget.holders();
        let place = self.lag.place.load(Ordering::Relaxed);
        if place == NOT_ENLISTED {
            return false;
        }
        let longest = holders
            .iter()
            .filter_map(|lag| match lag.behind_since.load(Ordering::Relaxed) {
                0 => None,
                since => Some(since),
            })
            .min();
        if longest != Some(since) {
            return false;
        }
        self.lag.gave_way.store(true, Ordering::Relaxed);
        self.leave(&mut holders, place);
        true
    }
}

/// What a write fails with when its connection gave way for a server short of memory for
/// answers.
#[derive(Debug)]
pub(crate) struct GaveWay;

impl fmt::Display for GaveWay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the server holds as many answers as it may for clients that have not read them \
             (max_queued_bytes), and this client kept them waiting longest",
        )
    }
}

impl std::error::Error for GaveWay {}

impl GaveWay {
    /// The error a write fails with.
    pub(super) fn error() -> std::io::Error {
        std::io::Error::other(GaveWay)
    }

    /// Whether `error` says a connection gave way.
    pub(crate) fn is(error: &std::io::Error) -> bool {
        error.get_ref().is_some_and(|inner| inner.is::<GaveWay>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holders(budget: &Budget) -> usize {
        budget.holders().len()
    }

    #[test]
    fn a_connection_holding_a_step_is_enlisted_until_it_holds_less() {
        let budget = Arc::new(Budget::with_step(usize::MAX, 100));
        let share = Share::new(Arc::clone(&budget));
        let other = Share::new(Arc::clone(&budget));
        share.add(0, 99, || 99);
        assert_eq!(holders(&budget), 0, "under a step");
        share.add(99, 250, || 250);
        other.add(0, 100, || 100);
        assert_eq!(holders(&budget), 2);
        share.add(250, 150, || 150);
        assert_eq!(holders(&budget), 2, "still a step");
        share.add(150, 0, || 0);
        assert_eq!(holders(&budget), 1, "nothing left");
        assert_eq!(other.lag.place.load(Ordering::Relaxed), 0, "moved up");
        other.add(100, 0, || 0);
        assert_eq!(holders(&budget), 0);
        assert_eq!(budget.queued(), 0);
    }

    #[test]
    fn crossings_seen_out_of_order_leave_the_list_as_the_queue_ended() {
        let budget = Arc::new(Budget::with_step(usize::MAX, 100));
        let share = Share::new(Arc::clone(&budget));
        // A release to nothing counted first, then the hold it followed: the queue holds 100.
        share.add(100, 0, || 100);
        share.add(0, 100, || 100);
        assert_eq!(holders(&budget), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn past_its_budget_the_server_closes_the_connection_kept_behind_longest() {
        let budget = Arc::new(Budget::with_step(150, 100));
        let first = Share::new(Arc::clone(&budget));
        let second = Share::new(Arc::clone(&budget));
        let caught_up = Share::new(Arc::clone(&budget));
        for share in [&first, &second, &caught_up] {
            share.add(0, 100, || 100);
        }
        first.behind();
        tokio::time::advance(PATIENCE / 2).await;
        second.behind();
        tokio::time::advance(PATIENCE / 2).await;
        assert!(!second.gives_way(), "another was kept behind longer");
        assert!(!caught_up.gives_way(), "its peer keeps up");
        assert!(first.gives_way(), "kept behind longest, for a second");
        assert!(!first.gives_way(), "once");
        assert!(!second.gives_way(), "behind for only half a second");
        tokio::time::advance(PATIENCE / 2).await;
        assert!(second.gives_way(), "now the longest, for a second");
        first.add(100, 0, || 0);
        first.add(0, 100, || 100);
        assert_eq!(
            holders(&budget),
            1,
            "one that gave way is not enlisted again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn under_its_budget_no_connection_gives_way() {
        let budget = Arc::new(Budget::with_step(200, 100));
        let share = Share::new(Arc::clone(&budget));
        share.add(0, 100, || 100);
        share.behind();
        tokio::time::advance(PATIENCE * 10).await;
        assert!(!share.gives_way(), "under the budget");
        share.add(100, 200, || 200);
        assert!(share.gives_way(), "at it");
    }

    /// A write failed because its connection gave way is told apart from every other failure
    /// (the server logs and counts only those), and says why.
    #[test]
    fn a_write_failed_for_giving_way_is_told_by_its_error() {
        let gave_way = GaveWay::error();
        assert!(GaveWay::is(&gave_way));
        assert!(
            gave_way.to_string().contains("(max_queued_bytes)"),
            "{gave_way}"
        );
        let others = [
            std::io::Error::from(std::io::ErrorKind::BrokenPipe),
            std::io::Error::other("another failure"),
        ];
        for other in others {
            assert!(!GaveWay::is(&other), "{other}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn catching_up_starts_the_time_behind_again() {
        let budget = Arc::new(Budget::with_step(0, 100));
        let share = Share::new(Arc::clone(&budget));
        share.add(0, 100, || 100);
        share.behind();
        tokio::time::advance(PATIENCE).await;
        share.caught_up();
        share.behind();
        assert!(!share.gives_way(), "behind again only now");
        tokio::time::advance(PATIENCE).await;
        assert!(share.gives_way());
    }
}
