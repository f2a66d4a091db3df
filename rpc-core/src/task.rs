//! Tying a spawned task's life to its owner's, and bounding work by a deadline.

use std::future::Future;
use std::task::Poll;

use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

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

/// Runs `work` until `deadline`, or to completion when there is none.
///
/// Work done at its first poll, as the handlers of most calls are, is done without a timer: a
/// timer costs a reference to the runtime, shared by every worker thread, and a place in its
/// timer wheel. A deadline already past does not stop work done at its first poll (nor does
/// tokio's `timeout`, which polls the work first too).
pub(crate) async fn until<F: Future>(
    deadline: Option<Instant>,
    work: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let Some(deadline) = deadline else {
        return Ok(work.await);
    };
    let mut work = std::pin::pin!(work);
    if let Poll::Ready(output) =
        std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await
    {
        return Ok(output);
    }
    tokio::time::timeout_at(deadline, work).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
}
