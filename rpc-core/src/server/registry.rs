//! The established connections of a server, so that at its connection limit the one idle the
//! longest can be asked to give way to a newcomer (idle peers cannot lock others out), and so
//! that each hears when the server shuts down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;

use super::attention::{Attention, Signal};
use super::calls::Calls;

/// The connections that have completed their handshake and take calls.
#[derive(Debug)]
pub(crate) struct Registry {
    /// The instant activity is measured from.
    epoch: Instant,
    next_key: AtomicU64,
    connections: Mutex<Connections>,
}

#[derive(Debug, Default)]
struct Connections {
    entries: HashMap<u64, Arc<Entry>>,
    /// The server is shutting down: a connection that registers now is told at once.
    shutting_down: bool,
}

#[derive(Debug)]
struct Entry {
    calls: Arc<Calls>,
    /// When the connection registered or last received a request, in nanoseconds since the
    /// registry's epoch. Each connection writes only its own: no line shared between them.
    last_active: AtomicU64,
    /// Where the connection hears that it is to give way, or that the server shuts down.
    attention: Arc<Attention>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            epoch: Instant::now(),
            next_key: AtomicU64::new(0),
            connections: Mutex::default(),
        }
    }
}

impl Registry {
    fn connections(&self) -> MutexGuard<'_, Connections> {
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
    /// It is asked to give way, and told that the server shuts down (at once, if it is shutting
    /// down already), through `attention`.
    pub(crate) fn register(
        self: &Arc<Self>,
        calls: Arc<Calls>,
        attention: Arc<Attention>,
    ) -> Registration {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry {
            calls,
            last_active: AtomicU64::new(self.since_epoch(Instant::now())),
            attention,
        });
        let mut connections = self.connections();
        if connections.shutting_down {
            entry.attention.raise(Signal::ShuttingDown);
        }
        connections.entries.insert(key, Arc::clone(&entry));
        drop(connections);
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
            .entries
            .values()
            .filter(|entry| entry.calls.is_empty())
            .min_by_key(|entry| entry.last_active.load(Ordering::Relaxed))
            .cloned();
        match idlest {
            Some(entry) => {
                entry.attention.raise(Signal::GiveWay);
                true
            }
            None => false,
        }
    }

    /// Tells every connection, and every one that registers from now on, that the server is
    /// shutting down.
    pub(crate) fn shut_down(&self) {
        let mut connections = self.connections();
        connections.shutting_down = true;
        for entry in connections.entries.values() {
            entry.attention.raise(Signal::ShuttingDown);
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

    /// Leaves the registry early: a draining connection is no longer a candidate.
    pub(crate) fn leave(&self) {
        self.registry.connections().entries.remove(&self.key);
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

    /// A connection and the attention it is told things through.
    fn connection(registry: &Arc<Registry>) -> (Registration, Arc<Attention>) {
        let attention = Arc::new(Attention::default());
        let registration = registry.register(Arc::new(Calls::default()), Arc::clone(&attention));
        (registration, attention)
    }

    async fn told(attention: &Attention, signal: Signal) -> bool {
        let raised = tokio::time::timeout(std::time::Duration::from_secs(10), attention.taken());
        raised.await.is_ok_and(|raised| raised.has(signal))
    }

    #[tokio::test]
    async fn the_connection_idle_longest_is_asked_first_and_busy_ones_never() {
        let registry = Arc::new(Registry::default());
        let (recent, recent_attention) = connection(&registry);
        let (old, old_attention) = connection(&registry);
        recent.touch(Instant::now() + std::time::Duration::from_secs(1));
        assert!(registry.ask_idlest_to_give_way());
        assert!(
            told(&old_attention, Signal::GiveWay).await,
            "the oldest was asked"
        );
        old.leave();
        assert!(registry.ask_idlest_to_give_way());
        assert!(
            told(&recent_attention, Signal::GiveWay).await,
            "then the next"
        );
        drop(recent);
        assert!(!registry.ask_idlest_to_give_way(), "nobody is left to ask");
    }

    /// Shutting down reaches every connection registered, and every one that registers later;
    /// not one that left.
    #[tokio::test]
    async fn shutting_down_reaches_connections_registered_before_and_after() {
        let registry = Arc::new(Registry::default());
        let (_before, before) = connection(&registry);
        let (gone, gone_attention) = connection(&registry);
        gone.leave();
        registry.shut_down();
        assert!(told(&before, Signal::ShuttingDown).await);
        let (_after, after) = connection(&registry);
        assert!(told(&after, Signal::ShuttingDown).await, "registered after");
        let nothing = tokio::time::timeout(std::time::Duration::ZERO, gone_attention.taken());
        assert!(nothing.await.is_err(), "one that left hears nothing");
    }
}
