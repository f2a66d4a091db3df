//! Tying a spawned task's life to its owner's, and bounding work by a deadline.

use std::future::Future;

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
pub(crate) async fn until<F: Future>(
    deadline: Option<Instant>,
    work: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, work).await,
        None => Ok(work.await),
    }
}
