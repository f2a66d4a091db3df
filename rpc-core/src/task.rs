//! Tying a spawned task's life to its owner's.

use tokio::task::{AbortHandle, JoinHandle};

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
