//! The readers waiting for a server's memory for large frames, in the order they are served.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Context;

use futures_util::task::AtomicWaker;

use super::{Holder, PATIENCE};

/// How a waiting reader learns that it was given what it waits for.
#[derive(Debug)]
pub(super) struct Ticket {
    granted: AtomicBool,
    reader: AtomicWaker,
    /// The reader's holder, if it holds memory already: from the moment it is given more, it
    /// is not stuck waiting for memory, even before it has looked.
    holder: Option<Arc<Holder>>,
}

impl Ticket {
    pub(super) fn new(holder: Option<Arc<Holder>>) -> Self {
        Ticket {
            granted: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            holder,
        }
    }

    /// Whether the reader was given what it waits for; if not, `cx` is woken when it is.
    pub(super) fn poll_granted(&self, cx: &mut Context<'_>) -> bool {
        if self.granted.load(Ordering::Acquire) {
            return true;
        }
        self.reader.register(cx.waker());
        self.granted.load(Ordering::Acquire)
    }

    fn grant(&self) {
        if let Some(holder) = &self.holder {
            holder.waiting_for_memory.store(false, Ordering::Release);
        }
        self.granted.store(true, Ordering::Release);
        self.reader.wake();
    }
}

/// One reader in line.
#[derive(Debug)]
struct Waiter {
    /// Its place in line, by which it leaves, and which breaks ties first come first served.
    place: u64,
    units: u32,
    /// The bytes its frame lacks.
    missing: u64,
    /// Since when it waits, in nanoseconds from its memory's epoch.
    began: u64,
    ticket: Arc<Ticket>,
}

impl Waiter {
    /// Where it stands at `now`: the bytes its frame lacks, halved for every [`PATIENCE`] it has
    /// waited.
    fn rank(&self, now: u64) -> u64 {
        let halvings = now.saturating_sub(self.began) / PATIENCE.as_nanos() as u64;
        let halvings = u32::try_from(halvings).unwrap_or(u32::MAX);
        self.missing.checked_shr(halvings).unwrap_or(0)
    }
}

/// The readers waiting for memory. The one whose frame lacks the least goes first: the nearest
/// to finishing, which gives its memory back soonest, where a peer that claims a huge frame and
/// sends it slowly comes last. What a frame lacks counts half as much for every [`PATIENCE`] its
/// reader has waited, so that no frame waits for ever behind smaller ones that keep coming. No
/// one passes the first in line: what is given back waits for it until there is enough.
#[derive(Debug, Default)]
pub(super) struct Queue {
    waiters: Vec<Waiter>,
    next_place: u64,
}

impl Queue {
    /// Puts a reader in line for `units`, its frame lacking `missing` bytes, waiting since
    /// `began`; returns its place, by which it leaves.
    pub(super) fn push(
        &mut self,
        units: u32,
        missing: u64,
        began: u64,
        ticket: Arc<Ticket>,
    ) -> u64 {
        let place = self.next_place;
        self.next_place += 1;
        self.waiters.push(Waiter {
            place,
            units,
            missing,
            began,
            ticket,
        });
        place
    }

    /// Takes the reader at `place` out of line; returns whether it was still waiting (it was
    /// given its memory otherwise).
    pub(super) fn remove(&mut self, place: u64) -> bool {
        let at = self.waiters.iter().position(|waiter| waiter.place == place);
        at.map(|at| self.waiters.swap_remove(at)).is_some()
    }

    /// Whether no reader is waiting.
    pub(super) fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    /// How many readers are waiting.
    pub(super) fn len(&self) -> usize {
        self.waiters.len()
    }

    /// The units the readers in line wait for, together.
    pub(super) fn units(&self) -> u64 {
        self.waiters
            .iter()
            .map(|waiter| u64::from(waiter.units))
            .sum()
    }

    /// Where the first in line is in `waiters` at `now` (nanoseconds from the epoch).
    fn first(&self, now: u64) -> Option<usize> {
        let ranks = self
            .waiters
            .iter()
            .map(|waiter| (waiter.rank(now), waiter.place));
        let (at, _) = ranks.enumerate().min_by_key(|(_, rank)| *rank)?;
        Some(at)
    }

    /// Whether a reader that is not in line, whose frame lacks `missing`, would stand behind
    /// one that is.
    pub(super) fn is_ahead_of(&self, missing: u64, now: u64) -> bool {
        self.waiters
            .iter()
            .any(|waiter| waiter.rank(now) <= missing)
    }

    /// Gives the first in line their units out of `free` while there are enough for the
    /// first, and tells them. Finding the first takes one look at each reader in line; when
    /// there is enough for it, the line is put in order once, so that a large amount given
    /// back to a long line costs a sort rather than a look at every reader for each served.
    pub(super) fn serve(&mut self, free: &mut u64, now: u64) {
        let Some(first) = self.first(now) else {
            return;
        };
        if u64::from(self.waiters[first].units) > *free {
            return;
        }
        self.waiters
            .sort_unstable_by_key(|waiter| (waiter.rank(now), waiter.place));
        let served = self
            .waiters
            .iter()
            .take_while(|waiter| {
                let enough = u64::from(waiter.units) <= *free;
                if enough {
                    *free -= u64::from(waiter.units);
                }
                enough
            })
            .count();
        for waiter in self.waiters.drain(..served) {
            waiter.ticket.grant();
        }
    }
}
