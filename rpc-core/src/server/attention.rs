//! What others tell a connection's reader: the server is shutting down, the server asks the
//! connection to give way to a newcomer, or the connection's writer has ended.
//!
//! One word of flags and one waker for all three. The reader's loop polls them every time it
//! waits for a frame; as a `watch` for shutdown, a `Notify` for giving way and the writer's
//! `JoinHandle`, they took a lock or two at every poll, about 800 instructions of each
//! sequential call's 17,500.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// One connection's flags, raised by others and taken by its reader.
#[derive(Debug, Default)]
pub(crate) struct Attention {
    raised: AtomicU8,
    reader: AtomicWaker,
}

/// What can be raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Signal {
    /// The server is shutting down: the connection takes no new calls.
    ShuttingDown = 1,
    /// The server is at its connection limit and asks this connection to make room.
    GiveWay = 2,
    /// The connection's writer ended: it failed, or wrote the connection's last frame.
    WriterEnded = 4,
    /// The server is at its connection limit, and this connection's peer address holds more
    /// connections than any other: it makes room though busy.
    MakeRoom = 8,
}

/// The signals raised since the reader last took them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Raised(u8);

impl Raised {
    pub(crate) fn has(self, signal: Signal) -> bool {
        self.0 & signal as u8 != 0
    }
}

impl Attention {
    /// Raises `signal` and wakes the reader. A signal raised again before the reader takes it
    /// is taken once.
    pub(crate) fn raise(&self, signal: Signal) {
        self.raised.fetch_or(signal as u8, Ordering::AcqRel);
        self.reader.wake();
    }

    /// Returns the signals raised since the last time, once there is one.
    pub(crate) fn taken(&self) -> impl Future<Output = Raised> + '_ {
        std::future::poll_fn(|cx| self.poll_take(cx))
    }

    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Raised> {
        if let Some(raised) = self.take() {
            return Poll::Ready(raised);
        }
        self.reader.register(cx.waker());
        // Raised between the look and the registration: that raise may have woken the waker
        // registered before.
        match self.take() {
            Some(raised) => Poll::Ready(raised),
            None => Poll::Pending,
        }
    }

    /// The signals raised, cleared; `None` if there are none. A plain load first: nearly always
    /// nothing is raised, and a swap would take the cache line for writing each time.
    fn take(&self) -> Option<Raised> {
        if self.raised.load(Ordering::Acquire) == 0 {
            return None;
        }
        Some(Raised(self.raised.swap(0, Ordering::AcqRel)))
    }
}

/// Raises a signal when dropped: held by a task whose end is the signal, however it ends
/// (finished, panicked or aborted).
#[derive(Debug)]
pub(crate) struct RaiseOnDrop(pub(crate) Arc<Attention>, pub(crate) Signal);

impl Drop for RaiseOnDrop {
    fn drop(&mut self) {
        self.0.raise(self.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signal raised before the reader waits is found at once; one raised while it waits
    /// wakes it; signals raised together are taken together, and taken only once.
    #[tokio::test]
    async fn signals_are_taken_once_each_whenever_they_were_raised() {
        let attention = Arc::new(Attention::default());
        attention.raise(Signal::GiveWay);
        let raised = attention.taken().await;
        assert!(raised.has(Signal::GiveWay));
        assert!(!raised.has(Signal::ShuttingDown));

        let raiser = Arc::clone(&attention);
        let waiting = tokio::spawn(async move { raiser.taken().await });
        tokio::task::yield_now().await;
        {
            let _writer = RaiseOnDrop(Arc::clone(&attention), Signal::WriterEnded);
            attention.raise(Signal::ShuttingDown);
        }
        let raised = waiting.await.expect("the waiter ends");
        let again = match attention.take() {
            Some(rest) => Raised(raised.0 | rest.0),
            None => raised,
        };
        assert!(again.has(Signal::ShuttingDown) && again.has(Signal::WriterEnded));
        assert_eq!(attention.take(), None, "taken once");
    }
}
