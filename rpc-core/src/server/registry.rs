//! The established connections of a server, so that at its connection limit the one idle the
//! longest can be asked to give way to a newcomer: idle peers cannot lock others out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::calls::Calls;

/// The connections that have completed their handshake and take calls.
#[derive(Debug)]
pub(crate) struct Registry {
    /// The instant activity is measured from.
    epoch: Instant,
    next_key: AtomicU64,
    connections: Mutex<HashMap<u64, Arc<Entry>>>,
}

#[derive(Debug)]
struct Entry {
    calls: Arc<Calls>,
    /// When the connection registered or last received a request, in nanoseconds since the
    /// registry's epoch. Each connection writes only its own: no line shared between them.
    last_active: AtomicU64,
    give_way: Notify,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            epoch: Instant::now(),
            next_key: AtomicU64::new(0),
            connections: Mutex::new(HashMap::new()),
        }
    }
}

impl Registry {
    fn connections(&self) -> MutexGuard<'_, HashMap<u64, Arc<Entry>>> {
        // Nothing panics while holding the lock; the map is consistent either way.
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `at` in nanoseconds since the epoch.
    fn since_epoch(&self, at: Instant) -> u64 {
        let elapsed = at.saturating_duration_since(self.epoch);
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Adds a connection whose calls are `calls`, until the returned registration is dropped.
    pub(crate) fn register(self: &Arc<Self>, calls: Arc<Calls>) -> Registration {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry {
            calls,
            last_active: AtomicU64::new(self.since_epoch(Instant::now())),
            give_way: Notify::new(),
        });
        self.connections().insert(key, Arc::clone(&entry));
        Registration {
            registry: Arc::clone(self),
            key,
            entry,
        }
    }

    /// Asks the connection with no call running that has gone longest without a request to
    /// give way. `false` if every connection has a call running.
    pub(crate) fn ask_idlest_to_give_way(&self) -> bool {
        let idlest = self
            .connections()
            .values()
            .filter(|entry| entry.calls.is_empty())
            .min_by_key(|entry| entry.last_active.load(Ordering::Relaxed))
            .cloned();
        match idlest {
            Some(entry) => {
                entry.give_way.notify_one();
                true
            }
            None => false,
        }
    }
}

/// One connection's place in the [`Registry`]; dropped, it leaves.
#[derive(Debug)]
pub(crate) struct Registration {
    registry: Arc<Registry>,
    key: u64,
    entry: Arc<Entry>,
}

impl Registration {
    /// Notes that a request arrived `at`.
    pub(crate) fn touch(&self, at: Instant) {
        let at = self.registry.since_epoch(at);
        self.entry.last_active.store(at, Ordering::Relaxed);
    }

    /// Returns when the server asks this connection to give way.
    pub(crate) async fn asked_to_give_way(&self) {
        self.entry.give_way.notified().await;
    }

    /// Leaves the registry early: a draining connection is no longer a candidate.
    pub(crate) fn leave(&self) {
        self.registry.connections().remove(&self.key);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_connection_idle_longest_is_asked_first_and_busy_ones_never() {
        let registry = Arc::new(Registry::default());
        let recent = registry.register(Arc::new(Calls::default()));
        let old = registry.register(Arc::new(Calls::default()));
        recent.touch(Instant::now() + std::time::Duration::from_secs(1));
        assert!(registry.ask_idlest_to_give_way());
        tokio::time::timeout(std::time::Duration::from_secs(10), old.asked_to_give_way())
            .await
            .expect("the oldest was asked");
        old.leave();
        assert!(registry.ask_idlest_to_give_way());
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            recent.asked_to_give_way(),
        )
        .await
        .expect("then the next");
        drop(recent);
        assert!(!registry.ask_idlest_to_give_way(), "nobody is left to ask");
    }
}
