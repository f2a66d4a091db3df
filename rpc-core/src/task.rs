//! Tying a spawned task's life to its owner's, bounding work by a deadline, giving the other
//! ready tasks a turn, and telling a task from code run off the runtime's workers.

use std::future::Future;
use std::task::Poll;

use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::{Instant, Sleep};

/// Aborts a task when dropped, so that a connection's helper tasks (its writer, its reader) end
/// with the value that owns them instead of outliving it.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(AbortHandle);

impl AbortOnDrop {
    pub(crate) fn new<T>(task: &JoinHandle<T>) -> Self {
        AbortOnDrop(task.abort_handle())
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Lets the other tasks ready on this worker run before the calling task goes on: the task
/// wakes itself and waits one turn, going to the back of its worker's queue.
///
/// Not `tokio::task::yield_now`, which puts the task off until its worker has run out of ready
/// tasks and then polled for I/O, a system call at every turn. A connection's writer takes a
/// turn before most writes with calls in flight, and a server's reader within a long batch:
/// with 100 connections busy across two processes, those polls were a third of both
/// processes' system calls (0.27 a call against 0.18 this way, with 17–40% more calls a
/// second).
pub(crate) async fn take_turn() {
    let mut woken = false;
    std::future::poll_fn(|cx| {
        if woken {
            return Poll::Ready(());
        }
        woken = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// Runs `work`, noting in `waited` whether it had to wait (returned `Pending` at a poll): the
/// calling task then gave up its turn, and the tasks it woke before ran. (Noted through a
/// reference rather than returned beside the output: the pair cost the client's reader 23 more
/// instructions a sequential call, in the poll that moves the frame into it; callgrind.)
pub(crate) async fn noting_wait<F: Future>(work: F, waited: &mut bool) -> F::Output {
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        let polled = work.as_mut().poll(cx);
        if polled.is_pending() {
            *waited = true;
        }
        polled
    })
    .await
}

/// A future that `make`s its work, boxed, when first polled: for a branch of a `select!` that is
/// seldom enabled (a connection draining, lingering, making room). `select!` builds every
/// branch's future each time round, enabled or not, and the task holds them all between turns:
/// built in place, such a branch's future (a timer, a wait for a signal: a hundred bytes and
/// more each) took its room in every connection's task for as long as the connection lasted,
/// where this takes a pointer and what `make` captures.
pub(crate) fn when_polled<F, W>(make: F) -> WhenPolled<F, W>
where
    F: FnOnce() -> W + Unpin,
    W: Future,
{
    WhenPolled {
        make: Some(make),
        work: None,
    }
}

/// See [`when_polled`].
pub(crate) struct WhenPolled<F, W> {
    make: Option<F>,
    work: Option<std::pin::Pin<Box<W>>>,
}

impl<F, W> Future for WhenPolled<F, W>
where
    F: FnOnce() -> W + Unpin,
    W: Future,
{
    type Output = W::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<W::Output> {
        let this = self.get_mut();
        if let Some(make) = this.make.take() {
            this.work = Some(Box::pin(make()));
        }
        match &mut this.work {
            Some(work) => work.as_mut().poll(cx),
            // Polled again after it was ready, as a fused branch never is.
            None => Poll::Pending,
        }
    }
}

/// The deadline passed before the work was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeadlinePassed;

/// Runs `work` until `deadline`, or to completion when there is none.
///
/// The timer is made only once the work waits: work done at its first poll, as the handlers of
/// most calls are, costs no timer (a timer takes a reference to the runtime, which every worker
/// thread writes, and a place in its timer wheel). Like tokio's `timeout`, it polls the work
/// before looking at the timer, so work done at its first poll is done even past its deadline;
/// unlike wrapping the work in `timeout` once it waits, it never polls the work twice in a turn,
/// so work that gives up its turn (a busy sender's yield) still gives it up.
pub(crate) async fn until<F: Future>(
    deadline: Option<Instant>,
    work: F,
) -> Result<F::Output, DeadlinePassed> {
    let Some(deadline) = deadline else {
        return Ok(work.await);
    };
    let mut work = std::pin::pin!(work);
    let mut timer = std::pin::pin!(None::<Sleep>);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = work.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        if timer.is_none() {
            timer.set(Some(tokio::time::sleep_until(deadline)));
        }
        match timer.as_mut().as_pin_mut().map(|timer| timer.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(DeadlinePassed)),
            _ => Poll::Pending,
        }
    })
    .await
}

/// Whether the code running now is off the runtime's workers: not a task, but a future driven
/// by `block_on`, as `#[tokio::main]`'s body is, on a thread of its own.
pub(crate) fn is_off_the_workers() -> bool {
    tokio::task::try_id().is_none()
}

/// Whether the code running now runs on a runtime of several workers: one a task woken here
/// may move to another worker of, unlike a runtime of one thread.
pub(crate) fn runs_on_several_workers() -> bool {
    tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
        runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread
    })
}

/// A waker that counts how often it is woken: the tests' stand-in for a task.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Wakes(pub(crate) std::sync::atomic::AtomicUsize);

#[cfg(test)]
impl std::task::Wake for Wakes {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A branch's future is made only when polled, and takes a pointer's room until then where
    /// the future it makes takes far more.
    #[tokio::test]
    async fn work_made_when_polled_is_made_then_and_not_before() {
        let made = std::cell::Cell::new(0);
        let waiting = when_polled(|| {
            made.set(made.get() + 1);
            tokio::time::sleep(Duration::from_millis(1))
        });
        let sleep = tokio::time::sleep(Duration::from_millis(1));
        assert!(std::mem::size_of_val(&waiting) * 2 < std::mem::size_of_val(&sleep));
        assert_eq!(made.get(), 0, "nothing made before the first poll");
        waiting.await;
        assert_eq!(made.get(), 1);
        let never = when_polled(|| -> std::future::Ready<()> { unreachable!("never polled") });
        drop(never);
    }

    /// Work that returns `Pending` at a poll is noted as having waited; work ready at once is
    /// not.
    #[tokio::test]
    async fn a_wait_is_noted_only_where_the_work_waited() {
        let mut waited = false;
        assert_eq!(noting_wait(async { 3 }, &mut waited).await, 3);
        assert!(!waited, "ready at its first poll");
        let output = noting_wait(
            async {
                take_turn().await;
                4
            },
            &mut waited,
        )
        .await;
        assert_eq!(output, 4);
        assert!(waited, "it gave up a turn");
    }

    /// Work done at its first poll is done, deadline or not, as with tokio's `timeout`; work
    /// that waits is cut off at the deadline, and work that finishes before it is not.
    #[tokio::test(start_paused = true)]
    async fn work_runs_until_its_deadline() {
        let past = Instant::now() - Duration::from_secs(1);
        assert_eq!(until(Some(past), async { 5 }).await, Ok(5));
        let soon = Instant::now() + Duration::from_secs(1);
        let never = until(Some(soon), std::future::pending::<()>()).await;
        assert!(never.is_err(), "cut off");
        assert_eq!(Instant::now(), soon, "at the deadline");
        let later = Instant::now() + Duration::from_secs(10);
        let slow = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            7
        };
        assert_eq!(until(Some(later), slow).await, Ok(7));
        assert_eq!(until(None, async { 9 }).await, Ok(9));
    }

    /// Work that gives up its turn is polled once in that turn, not again at once: a sender
    /// that yields to let other tasks run must not be run on regardless.
    #[tokio::test]
    async fn work_that_yields_is_polled_once_a_turn() {
        let polls = std::cell::Cell::new(0);
        let yielding = std::future::poll_fn(|cx| {
            polls.set(polls.get() + 1);
            if polls.get() == 1 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(polls.get())
        });
        let soon = Instant::now() + Duration::from_secs(60);
        let mut running = std::pin::pin!(until(Some(soon), yielding));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(running.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.get(), 1, "one poll in the turn");
        assert_eq!(running.await, Ok(2));
    }

    /// Code run in `block_on`'s future is off the workers; code run in a spawned task is not.
    #[test]
    fn a_future_driven_by_block_on_is_off_the_workers() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("a runtime");
        assert!(runtime.block_on(async { is_off_the_workers() }));
        let in_task = runtime
            .block_on(runtime.spawn(async { is_off_the_workers() }))
            .expect("the task");
        assert!(!in_task);
    }
}
