//! The memory a server's connections hold together for the large frames they are reading.
//!
//! Each connection's reader bounds what it holds by the frames its peer has sent
//! ([`FrameReader`](super::FrameReader)), up to `max_frame_len` and a few allocations kept for
//! reuse; across thousands of connections that is still more than any machine has. So a
//! server's readers draw what they hold past the first [`FREE`] bytes each from one
//! [`FrameMemory`]. A reader that needs more than is left stops reading (its peer's sends back
//! up into TCP) and waits its turn, first come first served, while the memory freed by frames
//! that arrive whole goes round.
//!
//! A peer could hold its share for ever by sending a large frame slowly, or not at all, and
//! lock everyone else out. So a reader that has waited [`PATIENCE`] takes a share back
//! ([`FrameMemory::take_back`]): that of the holder whose peer has kept it waiting longest, for
//! [`PATIENCE`] or more in all since the last frame it read (a connection busy with large
//! frames for hours waits a little between many of them, and is not idle for that; time a
//! reader spends waiting for memory, not reading, does not count against its peer, which would
//! send if it read). If no holder's peer has, and every holder waits for more memory, none
//! would ever finish: the one whose frame lacks the most gives way. Otherwise the holders are
//! reading, and give memory back as their frames arrive. A holder between frames gives up only
//! the allocations it kept for reuse; one in the middle of a frame has its connection closed,
//! and its client told why. Honest peers, whose large frames come as fast as the network
//! carries them, seldom keep their reader waiting.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// What a reader holds without a share of the server's memory: its buffer for small frames,
/// many to a read, and the start of a larger one.
pub(crate) const FREE: usize = 64 * 1024;

/// How long a reader waits for memory before it takes back a holder's share, and how long a
/// holder's peer must have kept it waiting, in all, for its share to be taken back.
pub(crate) const PATIENCE: Duration = Duration::from_secs(1);

/// Shares are counted in units of this many bytes, so that a `u32` counts terabytes.
const UNIT: usize = 1024;

/// The memory a server's readers hold together past [`FREE`] bytes each.
#[derive(Debug)]
pub(crate) struct FrameMemory {
    units: Arc<Semaphore>,
    /// What the holders' times count from.
    epoch: Instant,
    /// The readers holding a share now.
    holders: Mutex<Vec<Arc<Holder>>>,
}

/// One reader holding a share: what others read to pick whose share to take back, and how they
/// tell it.
#[derive(Debug)]
struct Holder {
    /// How long it has waited for its peer's bytes since the last frame it read whole, in
    /// nanoseconds, up to its last read.
    waited: AtomicU64,
    /// Since when it has waited for its peer's bytes, in nanoseconds from the memory's epoch,
    /// plus one; 0 while it is not waiting for them.
    waiting_since: AtomicU64,
    /// The bytes its frame in progress lacked when it last asked for memory.
    missing: AtomicU64,
    /// It is waiting for more memory: not reading, through no fault of its peer.
    waiting_for_memory: AtomicBool,
    /// Its share is taken back: it gives up what it holds at its next turn.
    taken_back: AtomicBool,
    reader: AtomicWaker,
}

impl FrameMemory {
    /// Memory for `bytes` in all past each reader's first [`FREE`], and never less than
    /// `largest_frame` and as much again as a reader's free bytes: room for the largest frame a
    /// reader may be asked to read, and the room it makes around it, which it would otherwise
    /// wait for for ever.
    pub(crate) fn new(bytes: usize, largest_frame: usize) -> Arc<Self> {
        let most = u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX);
        let total = units(
            bytes
                .max(largest_frame.saturating_add(FREE))
                .saturating_add(FREE),
        );
        let total = total.min(most);
        Arc::new(FrameMemory {
            units: Arc::new(Semaphore::new(total as usize)),
            epoch: Instant::now(),
            holders: Mutex::new(Vec::new()),
        })
    }

    /// The bytes left for readers to take now.
    #[cfg(test)]
    pub(crate) fn left(&self) -> usize {
        self.units.available_permits() * UNIT
    }

    fn holders(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Holder>>> {
        self.holders.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes back a share, but for `asking`'s own: that of the holder whose peer has kept it
    /// waiting longest, if one has kept it waiting for [`PATIENCE`] or more in all since the
    /// last frame it read whole (or since it began to hold). Failing that, if every holder is
    /// waiting for more memory, none will finish its frame and give memory back: the one whose
    /// frame lacks the most, the furthest from finishing, gives way. Otherwise the holders are
    /// reading, and will give memory back as their frames arrive whole.
    fn take_back(&self, asking: Option<&Arc<Holder>>) {
        let now = self.nanos(Instant::now());
        let holders = self.holders();
        let others = || {
            holders.iter().filter(|holder| {
                !asking.is_some_and(|asking| Arc::ptr_eq(asking, holder))
                    && !holder.taken_back.load(Ordering::Acquire)
            })
        };
        let idlest = others()
            .map(|holder| (holder.waited_for_peer(now), holder))
            .filter(|(waited, _)| *waited >= PATIENCE.as_nanos() as u64)
            .max_by_key(|(waited, _)| *waited)
            .map(|(_, holder)| holder);
        let chosen = idlest.or_else(|| {
            let stuck = holders.iter().all(|holder| {
                holder.waiting_for_memory.load(Ordering::Acquire)
                    && !holder.taken_back.load(Ordering::Acquire)
            });
            stuck
                .then(|| others().max_by_key(|holder| holder.missing.load(Ordering::Relaxed)))
                .flatten()
        });
        if let Some(chosen) = chosen {
            chosen.taken_back.store(true, Ordering::Release);
            chosen.reader.wake();
        }
    }

    /// `at` in nanoseconds from the epoch.
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Holder {
    /// How long it has waited for its peer's bytes, up to `now` (from the epoch).
    fn waited_for_peer(&self, now: u64) -> u64 {
        let since = self.waiting_since.load(Ordering::Acquire);
        let current = match since {
            0 => 0,
            since => now.saturating_sub(since - 1),
        };
        self.waited.load(Ordering::Acquire).saturating_add(current)
    }
}

/// The units that cover `bytes` held by one reader.
fn units(bytes: usize) -> u32 {
    u32::try_from(bytes.saturating_sub(FREE).div_ceil(UNIT)).unwrap_or(u32::MAX)
}

/// One reader's share of a server's [`FrameMemory`].
pub(crate) struct Share {
    memory: Arc<FrameMemory>,
    /// The units held, with the holder others see, while there are any.
    held: Option<(OwnedSemaphorePermit, Arc<Holder>)>,
    wait: Option<Box<Wait>>,
    /// The bytes the reader's frame in progress lacks, as it last said.
    missing: u64,
}

/// A reader waiting for more memory.
struct Wait {
    units: u32,
    acquire: Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>,
    patience: Pin<Box<Sleep>>,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share")
            .field("held", &self.held_units())
            .field("waiting", &self.wait.as_ref().map(|wait| wait.units))
            .finish()
    }
}

impl Share {
    pub(crate) fn new(memory: Arc<FrameMemory>) -> Self {
        Share {
            memory,
            held: None,
            wait: None,
            missing: 0,
        }
    }

    fn held_units(&self) -> u32 {
        self.held
            .as_ref()
            .map_or(0, |(permit, _)| permit.num_permits() as u32)
    }

    /// Makes the share cover `bytes` held by the reader, waiting for others to give memory
    /// back if there is not enough left. A reader that waits past [`PATIENCE`] takes a share
    /// back ([`FrameMemory::take_back`]), and another every [`PATIENCE`] it waits on.
    pub(crate) fn poll_cover(&mut self, cx: &mut Context<'_>, bytes: usize) -> Poll<()> {
        loop {
            let lacking = units(bytes).saturating_sub(self.held_units());
            if lacking == 0 {
                self.wait = None;
                if let Some((_, holder)) = &self.held {
                    holder.waiting_for_memory.store(false, Ordering::Release);
                }
                return Poll::Ready(());
            }
            if let Some(wait) = &mut self.wait
                && wait.units == lacking
            {
                if let Poll::Ready(acquired) = wait.acquire.as_mut().poll(cx) {
                    self.wait = None;
                    // The semaphore is never closed.
                    if let Ok(permit) = acquired {
                        self.add(permit);
                    }
                    continue;
                }
                if let Some((_, holder)) = &self.held {
                    holder.waiting_for_memory.store(true, Ordering::Release);
                }
                while wait.patience.as_mut().poll(cx).is_ready() {
                    let asking = self.held.as_ref().map(|(_, holder)| holder);
                    self.memory.take_back(asking);
                    wait.patience.as_mut().reset(Instant::now() + PATIENCE);
                }
                return Poll::Pending;
            }
            if self.try_add(lacking) {
                continue;
            }
            // A new wait goes to the back of the line; the reader waits for one amount at a time.
            let acquire = Arc::clone(&self.memory.units).acquire_many_owned(lacking);
            let patience = match self.wait.take() {
                Some(wait) => wait.patience,
                None => Box::pin(tokio::time::sleep(PATIENCE)),
            };
            self.wait = Some(Box::new(Wait {
                units: lacking,
                acquire: Box::pin(acquire),
                patience,
            }));
        }
    }

    /// Makes the share cover `bytes` if there is memory for it now (taking none if it already
    /// does); returns whether it does.
    pub(crate) fn try_cover(&mut self, bytes: usize) -> bool {
        let lacking = units(bytes).saturating_sub(self.held_units());
        lacking == 0 || self.try_add(lacking)
    }

    fn try_add(&mut self, units: u32) -> bool {
        match Arc::clone(&self.memory.units).try_acquire_many_owned(units) {
            Ok(permit) => {
                self.add(permit);
                true
            }
            Err(_) => false,
        }
    }

    fn add(&mut self, permit: OwnedSemaphorePermit) {
        match &mut self.held {
            Some((held, _)) => held.merge(permit),
            None => {
                let holder = Arc::new(Holder {
                    waited: AtomicU64::new(0),
                    waiting_since: AtomicU64::new(0),
                    missing: AtomicU64::new(self.missing),
                    waiting_for_memory: AtomicBool::new(false),
                    taken_back: AtomicBool::new(false),
                    reader: AtomicWaker::new(),
                });
                self.memory.holders().push(Arc::clone(&holder));
                self.held = Some((permit, holder));
            }
        }
    }

    /// Gives back what the share holds past covering `bytes`.
    pub(crate) fn shrink_to(&mut self, bytes: usize) {
        let keep = units(bytes);
        let Some((permit, _)) = &mut self.held else {
            return;
        };
        let held = permit.num_permits() as u32;
        if keep >= held {
            return;
        }
        if keep > 0 {
            drop(permit.split((held - keep) as usize));
            return;
        }
        if let Some((permit, holder)) = self.held.take() {
            drop(permit);
            let mut holders = self.memory.holders();
            if let Some(at) = holders.iter().position(|h| Arc::ptr_eq(h, &holder)) {
                holders.swap_remove(at);
            }
        }
    }

    /// Notes that the reader's frame in progress lacks `bytes` more.
    pub(crate) fn lacks(&mut self, bytes: usize) {
        self.missing = bytes as u64;
        if let Some((_, holder)) = &self.held {
            holder.missing.store(self.missing, Ordering::Relaxed);
        }
    }

    /// The reader found nothing to read: from now on it waits for its peer.
    pub(crate) fn waiting_for_peer(&self) {
        if let Some((_, holder)) = &self.held
            && holder.waiting_since.load(Ordering::Relaxed) == 0
        {
            let now = self.memory.nanos(Instant::now());
            holder.waiting_since.store(now + 1, Ordering::Release);
        }
    }

    /// The reader read a frame whole: its peer has kept it waiting for none of the next yet.
    pub(crate) fn frame_arrived(&self) {
        if let Some((_, holder)) = &self.held {
            holder.waited.store(0, Ordering::Release);
        }
    }

    /// The reader read bytes: it no longer waits for its peer.
    pub(crate) fn heard_from_peer(&self) {
        if let Some((_, holder)) = &self.held {
            let since = holder.waiting_since.swap(0, Ordering::AcqRel);
            if since != 0 {
                let now = self.memory.nanos(Instant::now());
                let waited = now.saturating_sub(since - 1);
                holder.waited.fetch_add(waited, Ordering::AcqRel);
            }
        }
    }

    /// Whether another reader took the share back; if not, `cx` is woken when one does.
    pub(crate) fn poll_taken_back(&self, cx: &mut Context<'_>) -> bool {
        let Some((_, holder)) = &self.held else {
            return false;
        };
        if holder.taken_back.load(Ordering::Acquire) {
            return true;
        }
        holder.reader.register(cx.waker());
        holder.taken_back.load(Ordering::Acquire)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.shrink_to(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop() -> Context<'static> {
        Context::from_waker(std::task::Waker::noop())
    }

    /// The first [`FREE`] bytes are the reader's own; past them a share takes from the whole,
    /// gives back what it no longer covers, and gives all back when dropped.
    #[tokio::test]
    async fn a_share_takes_past_the_free_bytes_and_gives_back() {
        let memory = FrameMemory::new(1 << 20, 0);
        let mut share = Share::new(Arc::clone(&memory));
        assert!(share.try_cover(FREE));
        assert_eq!(memory.left(), 1 << 20);
        assert!(share.try_cover(FREE + 100 * 1024));
        assert_eq!(memory.left(), (1 << 20) - 100 * 1024);
        share.shrink_to(FREE + 10 * 1024);
        assert_eq!(memory.left(), (1 << 20) - 10 * 1024);
        assert!(
            !share.try_cover(FREE + (1 << 20) + UNIT),
            "more than there is"
        );
        drop(share);
        assert_eq!(memory.left(), 1 << 20);
        assert!(memory.holders().is_empty());
    }

    /// A reader that finds too little left waits, first come first served; once it has waited
    /// its patience, the holder whose peer kept it waiting longest, for its patience or more,
    /// is told to give its share back; what it gives back ends the wait.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_reader_takes_back_the_share_of_the_holder_kept_waiting_longest() {
        let memory = FrameMemory::new(1 << 20, 0);
        let mut idle = Share::new(Arc::clone(&memory));
        let mut busy = Share::new(Arc::clone(&memory));
        assert!(idle.try_cover(FREE + 400 * 1024));
        assert!(busy.try_cover(FREE + 400 * 1024));
        idle.waiting_for_peer();
        busy.waiting_for_peer();
        tokio::time::advance(PATIENCE / 4).await;
        busy.heard_from_peer();

        let mut waiting = Share::new(Arc::clone(&memory));
        let need = FREE + 400 * 1024;
        assert!(waiting.poll_cover(&mut noop(), need).is_pending());
        assert!(!idle.poll_taken_back(&mut noop()) && !busy.poll_taken_back(&mut noop()));

        tokio::time::advance(PATIENCE).await;
        assert!(waiting.poll_cover(&mut noop(), need).is_pending());
        assert!(
            idle.poll_taken_back(&mut noop()),
            "the one kept waiting longest gives way"
        );
        assert!(!busy.poll_taken_back(&mut noop()));

        idle.shrink_to(0);
        assert!(waiting.poll_cover(&mut noop(), need).is_ready());
        assert_eq!(memory.left(), 224 * 1024);
    }

    /// Holders that are reading keep their shares however long a reader waits: they give
    /// memory back as their frames arrive. Holders that all wait for more memory would never
    /// finish: the one whose frame lacks the most gives way.
    #[tokio::test(start_paused = true)]
    async fn holders_that_read_keep_their_shares_and_stuck_ones_give_way() {
        let memory = FrameMemory::new(1 << 20, 0);
        let mut near = Share::new(Arc::clone(&memory));
        near.lacks(100 * 1024);
        assert!(near.try_cover(FREE + 512 * 1024));
        let mut far = Share::new(Arc::clone(&memory));
        far.lacks(4 << 20);
        assert!(far.try_cover(FREE + 512 * 1024));

        let mut waiting = Share::new(Arc::clone(&memory));
        assert!(
            waiting
                .poll_cover(&mut noop(), FREE + 100 * 1024)
                .is_pending()
        );
        for _ in 0..3 {
            tokio::time::advance(PATIENCE).await;
            assert!(
                waiting
                    .poll_cover(&mut noop(), FREE + 100 * 1024)
                    .is_pending()
            );
        }
        assert!(!near.poll_taken_back(&mut noop()) && !far.poll_taken_back(&mut noop()));

        assert!(near.poll_cover(&mut noop(), FREE + 612 * 1024).is_pending());
        assert!(far.poll_cover(&mut noop(), FREE + (1 << 20)).is_pending());
        tokio::time::advance(PATIENCE).await;
        assert!(
            waiting
                .poll_cover(&mut noop(), FREE + 100 * 1024)
                .is_pending()
        );
        assert!(far.poll_taken_back(&mut noop()), "it lacks the most");
        assert!(!near.poll_taken_back(&mut noop()));
    }

    /// However little is asked for, the whole has room for the largest frame one reader reads.
    #[test]
    fn the_whole_has_room_for_the_largest_frame() {
        let memory = FrameMemory::new(0, 4 << 20);
        let mut share = Share::new(memory);
        assert!(share.try_cover(FREE + (4 << 20)));
    }

    /// A frame read whole forgives the waits before it: a connection busy with large frames
    /// for a long time, waiting a little between them, is not taken for an idle one.
    #[tokio::test(start_paused = true)]
    async fn waits_before_the_last_whole_frame_do_not_count() {
        let memory = FrameMemory::new(1 << 20, 0);
        let mut busy = Share::new(Arc::clone(&memory));
        assert!(busy.try_cover(FREE + (1 << 20)));
        for _ in 0..4 {
            busy.waiting_for_peer();
            tokio::time::advance(PATIENCE / 2).await;
            busy.heard_from_peer();
            busy.frame_arrived();
        }
        let mut waiting = Share::new(Arc::clone(&memory));
        assert!(waiting.poll_cover(&mut noop(), FREE + 1024).is_pending());
        tokio::time::advance(PATIENCE).await;
        assert!(waiting.poll_cover(&mut noop(), FREE + 1024).is_pending());
        assert!(
            !busy.poll_taken_back(&mut noop()),
            "two seconds of waits, half a second each"
        );
    }
}
