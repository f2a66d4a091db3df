//! The readers waiting for a server's memory for large frames, in the order they are served.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Context;

use futures_util::task::AtomicWaker;

use std::time::Duration;

use super::Holder;

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
    units: u32,
    /// The bytes its frame lacks.
    missing: u64,
    /// Since when it waits, in nanoseconds from its memory's epoch.
    began: u64,
    ticket: Arc<Ticket>,
}

/// The readers waiting for memory. The one whose frame lacks the least goes first: the nearest
/// to finishing, which gives its memory back soonest, where a peer that claims a huge frame and
/// sends it slowly comes last. A reader that has waited [`OVERDUE`] goes before those that have
/// not, first come first served among them, so that no frame waits for ever behind smaller ones
/// that keep coming. No one passes the first in line: what is given back waits for it until
/// there is enough. Each reader's place, given when it joins, breaks ties first come first
/// served and is how it leaves; finding the first, joining and leaving take a time that grows
/// with the logarithm of the line's length.
#[derive(Debug, Default)]
pub(super) struct Queue {
    waiters: HashMap<u64, Waiter>,
    /// Places, by what their frames lack.
    by_missing: BTreeSet<(u64, u64)>,
    /// Places, by when their readers began to wait.
    by_age: BTreeSet<(u64, u64)>,
    /// The units the readers in line wait for, together.
    units: u64,
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
        self.by_missing.insert((missing, place));
        self.by_age.insert((began, place));
        self.units += u64::from(units);
        let waiter = Waiter {
            units,
            missing,
            began,
            ticket,
        };
        self.waiters.insert(place, waiter);
        place
    }

    /// Takes the reader at `place` out of line; returns whether it was still waiting (it was
    /// given its memory otherwise).
    pub(super) fn remove(&mut self, place: u64) -> bool {
        self.take(place).is_some()
    }

    fn take(&mut self, place: u64) -> Option<Waiter> {
        let waiter = self.waiters.remove(&place)?;
        self.by_missing.remove(&(waiter.missing, place));
        self.by_age.remove(&(waiter.began, place));
        self.units -= u64::from(waiter.units);
        Some(waiter)
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
        self.units
    }

    /// The place of the first in line at `now` (nanoseconds from the epoch).
    fn first(&self, now: u64) -> Option<u64> {
        match self.by_age.first() {
            Some(&(began, place)) if has_waited(began, now) => Some(place),
            _ => self.by_missing.first().map(|&(_, place)| place),
        }
    }

    /// Whether a reader that is not in line, whose frame lacks `missing`, would stand behind
    /// one that is.
    pub(super) fn is_ahead_of(&self, missing: u64, now: u64) -> bool {
        let waited = |&(began, _): &(u64, u64)| has_waited(began, now);
        self.by_age.first().is_some_and(waited)
            || self
                .by_missing
                .first()
                .is_some_and(|&(first, _)| first <= missing)
    }

    /// Gives the first in line their units out of `free` while there are enough for the
    /// first, and tells them.
    pub(super) fn serve(&mut self, free: &mut u64, now: u64) {
        while let Some(place) = self.first(now) {
            let Some(units) = self
                .waiters
                .get(&place)
                .map(|waiter| u64::from(waiter.units))
            else {
                return;
            };
            if units > *free {
                return;
            }
            *free -= units;
            if let Some(waiter) = self.take(place) {
                waiter.ticket.grant();
            }
        }
    }
}

/// How long a reader waits before it goes before those that have not waited as long: long
/// enough that a frame which lacks little, and will give its memory back soon, is not put
/// behind large ones that have waited a little; short enough that a large frame is not held
/// back for long by smaller ones that keep coming.
pub(super) const OVERDUE: Duration = Duration::from_secs(4);

/// Whether a reader waiting since `began` has waited [`OVERDUE`] by `now`.
fn has_waited(began: u64, now: u64) -> bool {
    now.saturating_sub(began) >= OVERDUE.as_nanos() as u64
}
