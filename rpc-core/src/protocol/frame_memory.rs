//! The memory a server's connections hold together for the large frames they are reading.
//!
//! Each connection's reader bounds what it holds by the frames its peer has sent
//! ([`FrameReader`](super::FrameReader)), up to `max_frame_len` and a few allocations kept for
//! reuse; across thousands of connections that is still more than any machine has. So a
//! server's readers draw what they hold past the first [`FREE`] bytes each from one
//! [`FrameMemory`]. A reader that needs more than is left stops reading (its peer's sends back
//! up into TCP) and waits in line ([`queue`]: the frame that lacks the least first, and before
//! them, first come first served, the readers that have waited four seconds), while the memory
//! freed by frames that arrive whole goes round.
//!
//! A peer could hold its share for ever by sending a large frame slowly, or not at all, and
//! lock everyone else out. So a reader that has waited [`PATIENCE`] takes shares back
//! ([`FrameMemory::take_back`]): those of the holders whose peers have kept them waiting
//! longest, for [`PATIENCE`] or more in all since the last frame they read (a connection busy
//! with large frames for hours waits a little between many of them, and is not idle for that),
//! as many as it takes to cover what the line waits for. Time a reader spends waiting for
//! memory, not reading, counts against its peer only if the peer sent nothing meanwhile, which
//! the reader learns when its first read after the wait finds nothing; a holder that learns so,
//! past [`PATIENCE`], gives its share back at once to those waiting
//! ([`Share::waiting_for_peer`]). If no holder's peer has kept it waiting, and every holder
//! waits for more memory, none would ever finish: the one whose frame lacks the most gives way.
//! Otherwise the holders are reading, and give memory back as their frames arrive. A holder
//! between frames gives up only the allocations it kept for reuse; one in the middle of a frame
//! has its connection closed, and its client told why. Honest peers, whose large frames come as
//! fast as the network carries them, seldom keep their reader waiting.

mod queue;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::time::{Instant, Sleep};

use queue::{Queue, Ticket};

/// What a reader holds without a share of the server's memory: its buffer for small frames,
/// many to a read, and the start of a larger one.
pub(crate) const FREE: usize = 64 * 1024;

/// How long a reader waits for memory before it takes back a holder's share, and how long a
/// holder's peer must have kept it waiting, in all, for its share to be taken back.
pub(crate) const PATIENCE: Duration = Duration::from_secs(1);

/// How often, at most, the holders are looked over to take shares back.
const LOOK_OVER: Duration = Duration::from_millis(250);

/// Shares are counted in units of this many bytes, so that a `u32` counts terabytes.
const UNIT: usize = 1024;

/// The memory a server's readers hold together past [`FREE`] bytes each.
#[derive(Debug)]
pub(crate) struct FrameMemory {
    /// What the holders' times count from.
    epoch: Instant,
    state: Mutex<State>,
}

/// What a server's readers hold and wait for.
#[derive(Debug)]
struct State {
    /// The units no reader holds.
    free: u64,
    /// The readers holding a share now.
    holders: Vec<Arc<Holder>>,
    /// The readers waiting for more.
    queue: Queue,
    /// When the holders were last looked over to take shares back, in nanoseconds from the
    /// epoch.
    looked_over: Option<u64>,
    /// How many times they were.
    #[cfg(test)]
    looks: usize,
}

/// One reader holding a share: what others read to pick whose share to take back, and how they
/// tell it.
#[derive(Debug)]
struct Holder {
    /// The units it holds; only its share changes them.
    held: AtomicU32,
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
        let total = units(
            bytes
                .max(largest_frame.saturating_add(FREE))
                .saturating_add(FREE),
        );
        Arc::new(FrameMemory {
            epoch: Instant::now(),
            state: Mutex::new(State {
                free: u64::from(total),
                holders: Vec::new(),
                queue: Queue::default(),
                looked_over: None,
                #[cfg(test)]
                looks: 0,
            }),
        })
    }

    /// The bytes left for readers to take now.
    #[cfg(test)]
    pub(crate) fn left(&self) -> usize {
        self.state().free as usize * UNIT
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `change` to what is free and who waits (given the time, in nanoseconds from the
    /// epoch), then hands what is free to the line in its order (memory given back, or a reader
    /// that left or joined, may let the first in line have enough) and reports to the process's
    /// metrics what the readers hold and how many wait.
    fn change<R>(&self, change: impl FnOnce(&mut State, u64) -> R) -> R {
        let now = self.nanos(Instant::now());
        let mut state = self.state();
        let (free_before, waiting_before) = (state.free, state.queue.len());
        let result = change(&mut state, now);
        let State { free, queue, .. } = &mut *state;
        queue.serve(free, now);
        let held = (free_before as i64 - *free as i64) * UNIT as i64;
        let waiting = queue.len() as i64 - waiting_before as i64;
        crate::telemetry::frame_memory_changed(held, waiting);
        result
    }

    /// Takes `units` for a reader whose frame lacks `missing`, if they are left and no reader
    /// waiting stands before it.
    fn try_take(&self, units: u32, missing: u64) -> bool {
        self.change(|state, now| {
            let taken = state.free >= u64::from(units) && !state.queue.is_ahead_of(missing, now);
            if taken {
                state.free -= u64::from(units);
            }
            taken
        })
    }

    /// Puts a reader in line for `units`, its frame lacking `missing` bytes, waiting since
    /// `began`; returns its place.
    fn wait_for(&self, units: u32, missing: u64, began: Instant, ticket: Arc<Ticket>) -> u64 {
        let began = self.nanos(began);
        self.change(|state, _| state.queue.push(units, missing, began, ticket))
    }

    /// Takes the reader at `place` out of line; returns whether it was given its memory first.
    fn leave_line(&self, place: u64) -> bool {
        self.change(|state, _| !state.queue.remove(place))
    }

    /// Gives back `units`, to the readers waiting first.
    fn give_back(&self, units: u32) {
        self.change(|state, _| state.free += u64::from(units));
    }

    /// Takes back shares, but for `asking`'s own: those of the holders whose peers have kept
    /// them waiting for [`PATIENCE`] or more in all since the last frame they read whole (or
    /// since they began to hold), the longest kept waiting first, until what they hold covers
    /// what the line waits for. Failing any, if every holder is waiting for more memory, none
    /// will finish its frame and give memory back: the one whose frame lacks the most, the
    /// furthest from finishing, gives way. Otherwise the holders are reading, and will give
    /// memory back as their frames arrive whole.
    ///
    /// However many readers run out of patience, the holders are looked over at most once every
    /// [`LOOK_OVER`] (each look takes back what the whole line needs): thousands of readers in
    /// line cost a look at every holder a few times a second, not thousands of times. Returns
    /// whether it looked.
    fn take_back(&self, asking: Option<&Arc<Holder>>) -> bool {
        let now = self.nanos(Instant::now());
        let mut state = self.state();
        let recent = |last: u64| now.saturating_sub(last) < LOOK_OVER.as_nanos() as u64;
        if state.looked_over.is_some_and(recent) {
            return false;
        }
        state.looked_over = Some(now);
        #[cfg(test)]
        {
            state.looks += 1;
        }
        let holders = &state.holders;
        let others = || {
            holders.iter().filter(|holder| {
                !asking.is_some_and(|asking| Arc::ptr_eq(asking, holder))
                    && !holder.taken_back.load(Ordering::Acquire)
            })
        };
        let mut idle: Vec<_> = others()
            .map(|holder| (holder.waited_for_peer(now), holder))
            .filter(|(waited, _)| *waited >= PATIENCE.as_nanos() as u64)
            .collect();
        if !idle.is_empty() {
            idle.sort_unstable_by_key(|(waited, _)| std::cmp::Reverse(*waited));
            let coming: u64 = holders
                .iter()
                .filter(|holder| holder.taken_back.load(Ordering::Acquire))
                .map(|holder| u64::from(holder.held.load(Ordering::Relaxed)))
                .sum();
            let mut lacking = state.queue.units().saturating_sub(state.free + coming);
            for (_, holder) in idle {
                holder.take_back();
                lacking = lacking.saturating_sub(u64::from(holder.held.load(Ordering::Relaxed)));
                if lacking == 0 {
                    break;
                }
            }
            return true;
        }
        let stuck = holders.iter().all(|holder| {
            holder.waiting_for_memory.load(Ordering::Acquire)
                && !holder.taken_back.load(Ordering::Acquire)
        });
        if stuck
            && let Some(furthest) =
                others().max_by_key(|holder| holder.missing.load(Ordering::Relaxed))
        {
            furthest.take_back();
        }
        true
    }

    /// `at` in nanoseconds from the epoch.
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Holder {
    /// Tells its reader to give its share back.
    fn take_back(&self) {
        self.taken_back.store(true, Ordering::Release);
        self.reader.wake();
    }

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
    /// The holder others see, with the units held, while the share holds any.
    holder: Option<Arc<Holder>>,
    wait: Option<Box<Wait>>,
    /// When the reader began its last wait for memory, if it has read nothing since it got it.
    memory_wait_began: Option<Instant>,
    /// The bytes the reader's frame in progress lacks, as it last said.
    missing: u64,
}

/// A reader waiting for more memory.
struct Wait {
    units: u32,
    /// Its place in line.
    place: u64,
    ticket: Arc<Ticket>,
    patience: Pin<Box<Sleep>>,
    /// When the reader began to wait, or began an earlier wait not followed by a read.
    began: Instant,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share")
            .field("held", &self.held())
            .field("waiting", &self.wait.as_ref().map(|wait| wait.units))
            .finish()
    }
}

impl Share {
    pub(crate) fn new(memory: Arc<FrameMemory>) -> Self {
        Share {
            memory,
            holder: None,
            wait: None,
            memory_wait_began: None,
            missing: 0,
        }
    }

    /// Makes the share cover `bytes` held by the reader, waiting in line if there is not
    /// enough left. A reader that waits past [`PATIENCE`] takes shares back
    /// ([`FrameMemory::take_back`]), and again every [`PATIENCE`] it waits on.
    pub(crate) fn poll_cover(&mut self, cx: &mut Context<'_>, bytes: usize) -> Poll<()> {
        loop {
            let lacking = units(bytes).saturating_sub(self.held());
            if lacking == 0 {
                if let Some(wait) = self.leave_line() {
                    self.memory_wait_began = Some(wait.began);
                }
                return Poll::Ready(());
            }
            let Some(wait) = &mut self.wait else {
                if self.try_add(lacking) {
                    continue;
                }
                let began = self.memory_wait_began.take().unwrap_or_else(Instant::now);
                let patience = Box::pin(tokio::time::sleep(PATIENCE));
                self.line_up(lacking, patience, began);
                continue;
            };
            if wait.units != lacking {
                // The reader needs another amount: it keeps what it was given, if anything, and
                // waits on for the rest, as patient as before.
                if let Some(wait) = self.leave_line() {
                    let lacking = units(bytes).saturating_sub(self.held());
                    if lacking > 0 {
                        self.line_up(lacking, wait.patience, wait.began);
                    } else {
                        self.memory_wait_began = Some(wait.began);
                    }
                }
                continue;
            }
            if wait.ticket.poll_granted(cx) {
                if let Some(wait) = self.leave_line() {
                    self.memory_wait_began = Some(wait.began);
                }
                continue;
            }
            while wait.patience.as_mut().poll(cx).is_ready() {
                // Another reader looked the holders over just now: this one looks again soon.
                let looked = self.memory.take_back(self.holder.as_ref());
                let next = if looked { PATIENCE } else { LOOK_OVER };
                wait.patience.as_mut().reset(Instant::now() + next);
            }
            return Poll::Pending;
        }
    }

    /// Puts the reader in line for `units`.
    fn line_up(&mut self, units: u32, patience: Pin<Box<Sleep>>, began: Instant) {
        if let Some(holder) = &self.holder {
            holder.waiting_for_memory.store(true, Ordering::Release);
        }
        let ticket = Arc::new(Ticket::new(self.holder.clone()));
        let place = self
            .memory
            .wait_for(units, self.missing, began, Arc::clone(&ticket));
        self.wait = Some(Box::new(Wait {
            units,
            place,
            ticket,
            patience,
            began,
        }));
    }

    /// Takes the reader out of line, if it waits, keeping what it was given; returns its wait.
    fn leave_line(&mut self) -> Option<Box<Wait>> {
        let wait = self.wait.take()?;
        if self.memory.leave_line(wait.place) {
            self.add(wait.units);
        }
        if let Some(holder) = &self.holder {
            holder.waiting_for_memory.store(false, Ordering::Release);
        }
        Some(wait)
    }

    /// Makes the share cover `bytes` if there is memory for it now and no reader waiting for
    /// memory stands before this one (taking none if it already covers them); returns whether
    /// it does.
    pub(crate) fn try_cover(&mut self, bytes: usize) -> bool {
        let lacking = units(bytes).saturating_sub(self.held());
        lacking == 0 || self.try_add(lacking)
    }

    fn try_add(&mut self, units: u32) -> bool {
        let taken = self.memory.try_take(units, self.missing);
        if taken {
            self.add(units);
        }
        taken
    }

    /// The units the share holds.
    fn held(&self) -> u32 {
        let held = self.holder.as_ref().map(|holder| &holder.held);
        held.map_or(0, |held| held.load(Ordering::Relaxed))
    }

    fn add(&mut self, units: u32) {
        if let Some(holder) = &self.holder {
            holder.held.fetch_add(units, Ordering::Relaxed);
        } else {
            let holder = Arc::new(Holder {
                held: AtomicU32::new(units),
                waited: AtomicU64::new(0),
                waiting_since: AtomicU64::new(0),
                missing: AtomicU64::new(self.missing),
                waiting_for_memory: AtomicBool::new(false),
                taken_back: AtomicBool::new(false),
                reader: AtomicWaker::new(),
            });
            self.memory.state().holders.push(Arc::clone(&holder));
            self.holder = Some(holder);
        }
    }

    /// Gives back what the share holds past covering `bytes`.
    pub(crate) fn shrink_to(&mut self, bytes: usize) {
        let keep = units(bytes);
        let held = self.held();
        if keep >= held {
            return;
        }
        if keep > 0 {
            if let Some(holder) = &self.holder {
                holder.held.store(keep, Ordering::Relaxed);
            }
        } else if let Some(holder) = self.holder.take() {
            let mut state = self.memory.state();
            if let Some(at) = state.holders.iter().position(|h| Arc::ptr_eq(h, &holder)) {
                state.holders.swap_remove(at);
            }
        }
        self.memory.give_back(held - keep);
    }

    /// Notes that the reader's frame in progress lacks `bytes` more.
    pub(crate) fn lacks(&mut self, bytes: usize) {
        self.missing = bytes as u64;
        if let Some(holder) = &self.holder {
            holder.missing.store(self.missing, Ordering::Relaxed);
        }
    }

    /// The reader found nothing to read: from now on it waits for its peer. If it last waited
    /// for memory, it has waited for its peer since that wait began: nothing came in the
    /// meantime although nothing was read, so the peer sent nothing while the connection could
    /// take it. A reader whose peer has thus kept it waiting [`PATIENCE`] or more in all since
    /// its last whole frame gives its share back at once if another reader waits for memory:
    /// it would otherwise keep what it got from those behind it, until one of them has waited
    /// its own patience.
    pub(crate) fn waiting_for_peer(&mut self) {
        let began = self.memory_wait_began.take();
        let Some(holder) = &self.holder else {
            return;
        };
        if holder.waiting_since.load(Ordering::Relaxed) != 0 {
            return;
        }
        let now = Instant::now();
        let since = self.memory.nanos(began.unwrap_or(now));
        holder.waiting_since.store(since + 1, Ordering::Release);
        if holder.waited_for_peer(self.memory.nanos(now)) >= PATIENCE.as_nanos() as u64
            && !self.memory.state().queue.is_empty()
        {
            holder.take_back();
        }
    }

    /// The reader read a frame whole: its peer has kept it waiting for none of the next yet.
    pub(crate) fn frame_arrived(&self) {
        if let Some(holder) = &self.holder {
            holder.waited.store(0, Ordering::Release);
        }
    }

    /// The reader read bytes: it no longer waits for its peer.
    pub(crate) fn heard_from_peer(&mut self) {
        self.memory_wait_began = None;
        if let Some(holder) = &self.holder {
            let since = holder.waiting_since.swap(0, Ordering::AcqRel);
            if since != 0 {
                let now = self.memory.nanos(Instant::now());
                let waited = now.saturating_sub(since - 1);
                holder.waited.fetch_add(waited, Ordering::AcqRel);
            }
        }
    }

    /// Whether another reader took the share back.
    pub(crate) fn is_taken_back(&self) -> bool {
        self.holder
            .as_ref()
            .is_some_and(|holder| holder.taken_back.load(Ordering::Acquire))
    }

    /// Whether another reader took the share back; if not, `cx` is woken when one does. A
    /// reader calls it each time it goes to wait holding a share, which it may have taken in
    /// the same poll: a waker registered only when the poll began would be none then, and a
    /// reader whose peer sent nothing more would never hear that its share was taken back.
    pub(crate) fn poll_taken_back(&self, cx: &mut Context<'_>) -> bool {
        let Some(holder) = &self.holder else {
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
        let _ = self.leave_line();
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
        assert!(memory.state().holders.is_empty());
    }

    /// A reader that finds too little left waits; once it has waited its patience, the holder
    /// whose peer kept it waiting longest, for its patience or more, is told to give its share
    /// back; what it gives back ends the wait.
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

    const KIB: usize = 1024;

    /// A share of `bytes` past the free ones, for a frame that lacks `missing`.
    fn holding(memory: &Arc<FrameMemory>, bytes: usize, missing: usize) -> Share {
        let mut share = Share::new(Arc::clone(memory));
        share.lacks(missing);
        assert!(share.try_cover(FREE + bytes), "{bytes} bytes are left");
        share
    }

    /// A share that waits for `bytes` past the free ones, for a frame that lacks `missing`.
    fn waiting(memory: &Arc<FrameMemory>, bytes: usize, missing: usize) -> Share {
        let mut share = Share::new(Arc::clone(memory));
        share.lacks(missing);
        assert!(share.poll_cover(&mut noop(), FREE + bytes).is_pending());
        share
    }

    /// Memory given back goes to the reader whose frame lacks the least, whoever came first;
    /// no one passes the first in line, not even for what is left, but a frame that lacks less
    /// than everyone's in line is not made to wait.
    #[tokio::test(start_paused = true)]
    async fn the_frame_that_lacks_the_least_is_served_first_and_no_one_passes_it() {
        let memory = FrameMemory::new(1 << 20, 0);
        let mut all = holding(&memory, 1 << 20, 0);
        let mut far = waiting(&memory, 256 * KIB, 8 << 20);
        let mut near = waiting(&memory, 256 * KIB, 1 << 20);

        all.shrink_to(FREE + (1 << 20) - 384 * KIB);
        assert!(near.poll_cover(&mut noop(), FREE + 256 * KIB).is_ready());
        assert!(far.poll_cover(&mut noop(), FREE + 256 * KIB).is_pending());
        assert_eq!(memory.left(), 128 * KIB, "kept for the first in line");

        let mut behind = Share::new(Arc::clone(&memory));
        behind.lacks(16 << 20);
        assert!(!behind.try_cover(FREE + 64 * KIB), "the far frame is first");
        let mut small = Share::new(Arc::clone(&memory));
        small.lacks(100 * KIB);
        assert!(
            small.try_cover(FREE + 64 * KIB),
            "it lacks less than the far frame"
        );
    }

    /// A reader that has waited [`queue::OVERDUE`] goes before those that have not, whatever
    /// their frames lack, and those that have waited go first come first served: a large frame
    /// does not wait for ever behind smaller ones that keep coming.
    #[tokio::test(start_paused = true)]
    async fn readers_that_have_waited_go_first_come_first_served() {
        let memory = FrameMemory::new(1 << 20, 0);
        let mut all = holding(&memory, 1 << 20, 0);
        let mut large = waiting(&memory, 256 * KIB, 8 << 20);
        tokio::time::advance(PATIENCE).await;
        let mut medium = waiting(&memory, 256 * KIB, 1 << 20);
        tokio::time::advance(queue::OVERDUE).await;
        let mut small = waiting(&memory, 256 * KIB, 64 * KIB);

        all.shrink_to(FREE + (1 << 20) - 512 * KIB);
        assert!(large.poll_cover(&mut noop(), FREE + 256 * KIB).is_ready());
        assert!(medium.poll_cover(&mut noop(), FREE + 256 * KIB).is_ready());
        assert!(small.poll_cover(&mut noop(), FREE + 256 * KIB).is_pending());
    }

    /// A reader given memory after waiting [`PATIENCE`] for it, whose first read then finds
    /// nothing, has a peer that sent nothing all that time: it gives its share back at once if
    /// another reader waits, and not if its peer sent meanwhile or no one waits.
    #[tokio::test(start_paused = true)]
    async fn a_reader_whose_peer_sent_nothing_while_it_waited_for_memory_gives_way() {
        async fn gives_way(peer_sent: bool, another_waits: bool) -> bool {
            let memory = FrameMemory::new(1 << 20, 0);
            let mut reader = holding(&memory, 512 * KIB, 1 << 20);
            let mut other = holding(&memory, 512 * KIB, 0);
            assert!(
                reader
                    .poll_cover(&mut noop(), FREE + 768 * KIB)
                    .is_pending()
            );
            tokio::time::advance(2 * PATIENCE).await;
            let _behind = another_waits.then(|| waiting(&memory, 512 * KIB, 2 << 20));

            other.shrink_to(0);
            assert!(reader.poll_cover(&mut noop(), FREE + 768 * KIB).is_ready());
            if peer_sent {
                reader.heard_from_peer();
            }
            reader.waiting_for_peer();
            reader.poll_taken_back(&mut noop())
        }
        assert!(gives_way(false, true).await);
        assert!(!gives_way(true, true).await, "its peer sent meanwhile");
        assert!(!gives_way(false, false).await, "no one waits");
    }

    /// A reader out of patience takes back the shares of as many holders kept waiting by
    /// their peers as it takes to cover what the line waits for, those kept waiting longest
    /// first.
    #[tokio::test(start_paused = true)]
    async fn idle_holders_give_way_until_what_the_line_waits_for_is_covered() {
        let memory = FrameMemory::new(1 << 20, 0);
        let mut holders: Vec<Share> = (0..3).map(|_| holding(&memory, 300 * KIB, 0)).collect();
        for holder in &mut holders {
            holder.waiting_for_peer();
            tokio::time::advance(PATIENCE / 4).await;
        }
        let mut line = waiting(&memory, 500 * KIB, 1 << 20);
        tokio::time::advance(PATIENCE).await;
        assert!(line.poll_cover(&mut noop(), FREE + 500 * KIB).is_pending());
        let taken: Vec<bool> = holders
            .iter()
            .map(|holder| holder.poll_taken_back(&mut noop()))
            .collect();
        assert_eq!(taken, [true, true, false], "124 KiB left, 376 more wanted");
    }

    /// A holder given the memory it waited for is no longer stuck, even before its reader has
    /// looked: the others are not all stuck, and none gives way.
    #[tokio::test(start_paused = true)]
    async fn a_holder_given_memory_is_not_stuck_before_it_looks() {
        let memory = FrameMemory::new(1 << 20, 0);
        let mut given = holding(&memory, 384 * KIB, 1 << 20);
        let mut stuck = holding(&memory, 384 * KIB, 4 << 20);
        let mut reading = holding(&memory, 256 * KIB, 0);
        assert!(given.poll_cover(&mut noop(), FREE + 640 * KIB).is_pending());
        assert!(stuck.poll_cover(&mut noop(), FREE + 640 * KIB).is_pending());

        reading.shrink_to(0);
        tokio::time::advance(PATIENCE).await;
        assert!(stuck.poll_cover(&mut noop(), FREE + 640 * KIB).is_pending());
        assert!(
            !given.poll_taken_back(&mut noop()),
            "it was given what it waited for"
        );
        assert!(given.poll_cover(&mut noop(), FREE + 640 * KIB).is_ready());
    }

    /// Memory given back at once goes down the line in order, as far as it reaches: a reader
    /// further back that asks for less does not pass the first it does not reach.
    #[tokio::test(start_paused = true)]
    async fn memory_given_back_goes_down_the_line_in_order() {
        let memory = FrameMemory::new(1 << 20, 0);
        let mut all = holding(&memory, 1 << 20, 0);
        let mut last = waiting(&memory, 256 * KIB, 3 << 20);
        let mut first = waiting(&memory, 256 * KIB, 1 << 20);
        let mut second = waiting(&memory, 512 * KIB, 2 << 20);
        let poll = |share: &mut Share, bytes| share.poll_cover(&mut noop(), FREE + bytes);

        all.shrink_to(FREE + (1 << 20) - 600 * KIB);
        assert!(poll(&mut first, 256 * KIB).is_ready());
        assert!(poll(&mut second, 512 * KIB).is_pending());
        assert!(
            poll(&mut last, 256 * KIB).is_pending(),
            "it does not pass the second"
        );
        assert_eq!(memory.left(), 344 * KIB);

        all.shrink_to(FREE + (1 << 20) - 800 * KIB);
        assert!(poll(&mut second, 512 * KIB).is_ready());
        assert!(poll(&mut last, 256 * KIB).is_pending());
        assert_eq!(memory.left(), 32 * KIB);
    }

    /// Of three holders stuck waiting for one another, all out of patience together, one gives
    /// way, not all three: once one is taken back, the others wait for what it gives back.
    #[tokio::test(start_paused = true)]
    async fn of_holders_stuck_together_one_gives_way() {
        let memory = FrameMemory::new(1 << 20, 0);
        let mut stuck: Vec<Share> = (1..=3)
            .map(|missing| holding(&memory, 300 * KIB, missing << 20))
            .collect();
        for share in &mut stuck {
            assert!(share.poll_cover(&mut noop(), FREE + 600 * KIB).is_pending());
        }
        tokio::time::advance(PATIENCE).await;
        for share in &mut stuck {
            assert!(share.poll_cover(&mut noop(), FREE + 600 * KIB).is_pending());
        }
        let taken: Vec<bool> = stuck
            .iter()
            .map(|share| share.poll_taken_back(&mut noop()))
            .collect();
        assert_eq!(
            taken,
            [false, false, true],
            "the one whose frame lacks the most"
        );
    }

    /// Readers that run out of patience together look the holders over once between them,
    /// however many there are.
    #[tokio::test(start_paused = true)]
    async fn readers_out_of_patience_together_look_the_holders_over_once() {
        let memory = FrameMemory::new(1 << 20, 0);
        let _all = holding(&memory, 1 << 20, 0);
        let mut line: Vec<Share> = (0..100).map(|_| waiting(&memory, KIB, 1 << 20)).collect();
        let tick = |line: &mut Vec<Share>| {
            for share in line {
                assert!(share.poll_cover(&mut noop(), FREE + KIB).is_pending());
            }
        };
        tokio::time::advance(PATIENCE).await;
        tick(&mut line);
        assert_eq!(memory.state().looks, 1, "one look for a hundred readers");
        tokio::time::advance(PATIENCE).await;
        tick(&mut line);
        assert_eq!(memory.state().looks, 2);
    }
}
