//! Busy polling ([`ClientBuilder::busy_poll`], [`ServerBuilder::busy_poll`]): when a reader
//! polls again at the runtime's next turn instead of waiting to be woken. It does for its window
//! after the last bytes it read, and, on a client, after the last call sent: the answer to a
//! call made after a quiet spell then finds the reader's thread awake too.
//!
//! Times come from the system's clock, not tokio's: a spin never lets a paused clock advance,
//! so under tokio's paused clock it would never end.
//!
//! [`ClientBuilder::busy_poll`]: crate::ClientBuilder::busy_poll
//! [`ServerBuilder::busy_poll`]: crate::ServerBuilder::busy_poll

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Context;
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;

/// A reader's busy polling: its window, and when it last had reason to poll.
#[derive(Debug)]
pub(super) struct BusyPoll {
    window: Duration,
    /// When the reader last read bytes.
    read: Instant,
    /// What the connection's callers tell it.
    calls: Arc<CallSent>,
}

/// Where a client's callers tell its reader that a call went out: the answer is on its way, so
/// the reader polls for a window from then, and is woken for it if its thread sleeps.
#[derive(Debug)]
pub(crate) struct CallSent {
    /// What `at` counts from.
    base: Instant,
    /// When the last call went out, in nanoseconds after `base` (0 before any).
    at: AtomicU64,
    /// The reader's task, while it waits past its window.
    sleeper: AtomicWaker,
}

impl CallSent {
    /// A call went out: the reader polls for its window from now, woken if it waits.
    pub(crate) fn now(&self) {
        let nanos = self.base.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        self.at.store(nanos.max(1), Ordering::Release);
        self.sleeper.wake();
    }

    /// When the last call went out, if one has.
    fn last(&self) -> Option<Instant> {
        match self.at.load(Ordering::Acquire) {
            0 => None,
            nanos => self.base.checked_add(Duration::from_nanos(nanos)),
        }
    }
}

impl BusyPoll {
    /// Busy polling for `window` from now.
    pub(super) fn new(window: Duration) -> Self {
        let now = Instant::now();
        BusyPoll {
            window,
            read: now,
            calls: Arc::new(CallSent {
                base: now,
                at: AtomicU64::new(0),
                sleeper: AtomicWaker::new(),
            }),
        }
    }

    /// Where callers tell this reader of the calls they send.
    pub(super) fn calls(&self) -> &Arc<CallSent> {
        &self.calls
    }

    /// The reader read bytes just now.
    pub(super) fn read(&mut self) {
        self.read = Instant::now();
    }

    /// Whether a read that found nothing at `now` polls again at the runtime's next turn.
    pub(super) fn polls_at(&self, now: Instant) -> bool {
        let since = match self.calls.last() {
            Some(sent) => sent.max(self.read),
            None => self.read,
        };
        now.saturating_duration_since(since) < self.window
    }

    /// Whether a read that found nothing now polls again at the runtime's next turn (it has
    /// asked to be, then) rather than waits, woken by its bytes or by the next call sent.
    pub(super) fn poll_again(&self, cx: &mut Context<'_>) -> bool {
        if !self.polls_at(Instant::now()) {
            self.calls.sleeper.register(cx.waker());
            // A call sent before the waker was in place woke nobody: look again.
            if !self.polls_at(Instant::now()) {
                return false;
            }
        }
        // Deferred to the runtime's next turn, after the tasks already waiting: tokio polls its
        // I/O driver without sleeping first, and no other thread is woken for it.
        let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::task::{Context, Waker};

    use super::super::writer::through_tests::Wakes;
    use super::*;

    /// The window runs from the last bytes read or the last call sent, whichever came later.
    #[test]
    fn the_window_runs_from_the_last_read_or_call_sent() {
        let window = Duration::from_millis(50);
        let mut busy = BusyPoll::new(window);
        let read = busy.read;
        assert!(busy.polls_at(read + window - Duration::from_nanos(1)));
        assert!(!busy.polls_at(read + window), "the window is over");

        busy.calls().now();
        let sent = busy.calls.last().expect("a call went out");
        assert!(sent >= read);
        assert!(busy.polls_at(sent + window - Duration::from_nanos(1)));
        assert!(!busy.polls_at(sent + window));

        busy.read();
        assert!(busy.read >= sent);
        assert!(busy.polls_at(busy.read + window - Duration::from_nanos(1)));
        assert!(!busy.polls_at(busy.read + window));
    }

    /// A reader past its window waits, and the next call sent wakes it to poll again.
    #[test]
    fn a_call_sent_wakes_a_reader_past_its_window() {
        let busy = BusyPoll::new(Duration::ZERO);
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        assert!(!busy.poll_again(&mut cx), "past its window, it waits");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        busy.calls().now();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "woken by the call sent");
        busy.calls().now();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "woken once a wait");
    }
}
