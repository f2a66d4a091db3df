//! The connections of a server: at its connection limit, the established one idle the longest
//! can be asked to give way to a newcomer, or else the one longest in its handshake closed for
//! it (neither idle nor mute peers can lock others out), or else one of the peer address that
//! holds the most, busy as it is (nor can one address with every connection busy); and each
//! established one hears when the server shuts down.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::attention::{Attention, Signal};
use super::calls::Calls;
use crate::reverse::Caller;

/// The address a client is counted under when connections are counted per address: an IPv4
/// address itself (also when mapped into IPv6), an IPv6 address by its /64 prefix, which one
/// host or network is commonly given whole, so that a client cannot pass for many by taking
/// addresses from its own prefix.
pub(crate) fn counted_address(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// The connections that have completed their handshake and take calls, and those still in it.
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
    /// How many of `entries` each peer address holds.
    per_address: HashMap<IpAddr, usize>,
    /// Connections asked to make room though busy, which have not closed yet: while one is
    /// draining, no other is asked.
    making_room: usize,
    /// The connections in their handshake, oldest first (keys count up).
    handshakes: BTreeMap<u64, InHandshake>,
    /// The server is shutting down: a connection that registers now is told at once.
    shutting_down: bool,
}

/// A connection in its handshake.
#[derive(Debug)]
struct InHandshake {
    /// The task that serves it, once named ([`Registry::name_task`]).
    task: Option<AbortHandle>,
    /// Its peer's address, for a connection over IP.
    address: Option<IpAddr>,
    /// When it was admitted, in nanoseconds since the registry's epoch: the time it has been
    /// idle since, once established, until its first call.
    since: u64,
    /// Its client said hello: it is no mute peer to close for a newcomer, though its task has
    /// yet to answer and register it.
    said_hello: bool,
}

#[derive(Debug)]
struct Entry {
    calls: Arc<Calls>,
    /// The server's client of what the connection's client serves back, if it does.
    calls_back: Option<Arc<Caller>>,
    /// The peer's address, for a connection over IP.
    address: Option<IpAddr>,
    /// It was asked to make room though busy ([`Registry::ask_busiest_address_to_give_way`]).
    making_room: AtomicBool,
    /// When the connection was admitted (its handshake began) or last received a request, in
    /// nanoseconds since the registry's epoch. Each connection writes only its own: no line
    /// shared between them.
    last_active: AtomicU64,
    /// Where the connection hears that it is to give way, or that the server shuts down.
    attention: Arc<Attention>,
}

impl Entry {
    /// Whether the connection has no call running: none of its client's, and none of the
    /// server's to a client that serves back.
    fn is_idle(&self) -> bool {
        self.calls.is_empty() && !self.calls_back.as_ref().is_some_and(|c| c.is_calling())
    }
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

    /// Adds a connection just admitted from `address`, in its handshake until the returned
    /// handshake is registered or dropped.
    pub(crate) fn begin_handshake(self: &Arc<Self>, address: Option<IpAddr>) -> Handshake {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let since = self.since_epoch(Instant::now());
        let handshake = InHandshake {
            task: None,
            address,
            since,
            said_hello: false,
        };
        self.connections().handshakes.insert(key, handshake);
        Handshake {
            registry: Arc::clone(self),
            key,
        }
    }

    /// Names the task serving the connection whose handshake is `key`, which closing the
    /// connection aborts; nothing if its handshake is over already.
    pub(crate) fn name_task(&self, key: u64, task: AbortHandle) {
        if let Some(handshake) = self.connections().handshakes.get_mut(&key) {
            handshake.task = Some(task);
        }
    }

    /// Closes the connection that has been in its handshake the longest, its client silent so
    /// far, whose slot then frees. `false` if no connection is.
    pub(crate) fn close_longest_handshake(&self) -> bool {
        let task = {
            let mut connections = self.connections();
            let Some(key) = connections
                .handshakes
                .iter()
                .filter(|(_, handshake)| !handshake.said_hello)
                .find_map(|(key, handshake)| handshake.task.as_ref().map(|_| *key))
            else {
                return false;
            };
            connections
                .handshakes
                .remove(&key)
                .and_then(|handshake| handshake.task)
        };
        if let Some(task) = task {
            task.abort();
        }
        true
    }

    /// Adds a connection whose calls are `calls`, and whose calls back to a client that serves
    /// back go through `calls_back`, until the returned registration is dropped. It is asked
    /// to give way, and told that the server shuts down (at once, if it is shutting down
    /// already), through `attention`.
    fn register(
        self: &Arc<Self>,
        key: u64,
        calls: Arc<Calls>,
        calls_back: Option<Arc<Caller>>,
        attention: Arc<Attention>,
    ) -> Registration {
        let mut connections = self.connections();
        let handshake = connections.handshakes.remove(&key);
        let address = handshake.as_ref().and_then(|handshake| handshake.address);
        // Idle since it was admitted: a connection whose handshake ended later, its task slower
        // to get there, has not been idle for less.
        let since = handshake.map_or_else(|| self.since_epoch(Instant::now()), |h| h.since);
        let entry = Arc::new(Entry {
            calls,
            calls_back,
            address,
            making_room: AtomicBool::new(false),
            last_active: AtomicU64::new(since),
            attention,
        });
        if connections.shutting_down {
            entry.attention.raise(Signal::ShuttingDown);
        }
        if let Some(address) = address {
            *connections.per_address.entry(address).or_default() += 1;
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
            .filter(|entry| entry.is_idle())
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

    /// Asks a connection of the peer address holding the most connections to make room, busy
    /// as it is, if that address holds at least two more than `newcomer`'s: the one that has
    /// gone longest without a request. `false` if no address holds that many more, or a
    /// connection asked before is still making room. Connections without an address (over a
    /// Unix socket) are never asked.
    pub(crate) fn ask_busiest_address_to_give_way(&self, newcomer: Option<IpAddr>) -> bool {
        let mut connections = self.connections();
        if connections.making_room > 0 {
            return false;
        }
        let newcomer_holds = newcomer
            .and_then(|address| connections.per_address.get(&address).copied())
            .unwrap_or(0);
        let Some((&busiest, &holds)) = connections
            .per_address
            .iter()
            .max_by_key(|(_, holds)| **holds)
        else {
            return false;
        };
        if holds < newcomer_holds + 2 {
            return false;
        }
        let Some(asked) = connections
            .entries
            .values()
            .filter(|entry| entry.address == Some(busiest))
            .min_by_key(|entry| entry.last_active.load(Ordering::Relaxed))
            .cloned()
        else {
            return false;
        };
        // Counted under the lock that checked the count: two newcomers at once ask one.
        asked.making_room.store(true, Ordering::Relaxed);
        connections.making_room += 1;
        drop(connections);
        asked.attention.raise(Signal::MakeRoom);
        true
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

/// A connection's place among those in their handshake; dropped, it leaves.
#[derive(Debug)]
pub(crate) struct Handshake {
    registry: Arc<Registry>,
    key: u64,
}

impl Handshake {
    /// What names the connection's task to the registry ([`Registry::name_task`]).
    pub(crate) fn key(&self) -> u64 {
        self.key
    }

    /// The client said hello: the connection is no longer one to close for a newcomer, while
    /// its task answers and then registers it.
    pub(crate) fn said_hello(&self) {
        if let Some(handshake) = self.registry.connections().handshakes.get_mut(&self.key) {
            handshake.said_hello = true;
        }
    }

    /// The handshake is over: the connection, whose calls are `calls` and whose calls back go
    /// through `calls_back`, is established until the returned registration is dropped. It is
    /// asked to give way, and told that the server shuts down (at once, if it is shutting down
    /// already), through `attention`.
    pub(crate) fn register(
        self,
        calls: Arc<Calls>,
        calls_back: Option<Arc<Caller>>,
        attention: Arc<Attention>,
    ) -> Registration {
        // Moved from one list to the other under the lock a newcomer chooses under: a
        // connection is chosen to be closed only while it is still in its handshake. (Dropping
        // `self` afterwards finds nothing left to remove.)
        self.registry
            .register(self.key, calls, calls_back, attention)
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.registry.connections().handshakes.remove(&self.key);
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
        let mut connections = self.registry.connections();
        if connections.entries.remove(&self.key).is_none() {
            return;
        }
        if let Some(address) = self.entry.address
            && let Some(holds) = connections.per_address.get_mut(&address)
        {
            *holds -= 1;
            if *holds == 0 {
                connections.per_address.remove(&address);
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.leave();
        // Closed: a connection asked to make room has made it.
        if self.entry.making_room.load(Ordering::Relaxed) {
            self.registry.connections().making_room -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection and the attention it is told things through.
    fn connection(registry: &Arc<Registry>) -> (Registration, Arc<Attention>) {
        connection_from(registry, None)
    }

    /// A connection from `address`, and the attention it is told things through.
    fn connection_from(
        registry: &Arc<Registry>,
        address: Option<IpAddr>,
    ) -> (Registration, Arc<Attention>) {
        let attention = Arc::new(Attention::default());
        let registration = registry.begin_handshake(address).register(
            Arc::new(Calls::default()),
            None,
            Arc::clone(&attention),
        );
        (registration, attention)
    }

    fn address(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    /// Whether `attention` has had `signal` raised, without waiting.
    fn raised(attention: &Attention, signal: Signal) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut taken = std::pin::pin!(attention.taken());
        matches!(taken.as_mut().poll(&mut cx), std::task::Poll::Ready(raised) if raised.has(signal))
    }

    #[test]
    fn the_address_holding_at_least_two_more_than_the_newcomers_makes_room_one_at_a_time() {
        let registry = Arc::new(Registry::default());
        let (hog_old, hog_old_attention) = connection_from(&registry, address(1));
        let hog_new = connection_from(&registry, address(1));
        hog_new
            .0
            .touch(Instant::now() + std::time::Duration::from_secs(1));
        let other = connection_from(&registry, address(2));

        assert!(
            !registry.ask_busiest_address_to_give_way(address(1)),
            "a newcomer from the address holding the most"
        );
        assert!(
            !registry.ask_busiest_address_to_give_way(address(2)),
            "two against one: one more is not enough"
        );
        assert!(registry.ask_busiest_address_to_give_way(address(3)));
        assert!(
            raised(&hog_old_attention, Signal::MakeRoom),
            "the hog's connection gone longest without a request"
        );
        assert!(!raised(&hog_new.1, Signal::MakeRoom));
        assert!(!raised(&other.1, Signal::MakeRoom));

        // Draining, it leaves the candidates, but no other is asked until it has closed.
        hog_old.leave();
        let third = connection_from(&registry, address(2));
        let fourth = connection_from(&registry, address(2));
        assert!(
            !registry.ask_busiest_address_to_give_way(None),
            "one is making room"
        );
        drop(hog_old);
        assert!(registry.ask_busiest_address_to_give_way(None), "it closed");
        assert!(
            raised(&other.1, Signal::MakeRoom),
            "now the address holding three"
        );
        drop((hog_new, third, fourth));
    }

    /// A connection that left early (it drains) no longer counts for its address, while the
    /// others of that address still do.
    #[test]
    fn a_connection_that_left_no_longer_counts_for_its_address() {
        let registry = Arc::new(Registry::default());
        let two = [
            connection_from(&registry, address(1)),
            connection_from(&registry, address(1)),
        ];
        two[0].0.leave();
        assert!(
            !registry.ask_busiest_address_to_give_way(address(2)),
            "one left against none: not enough"
        );

        let registry = Arc::new(Registry::default());
        let three = [
            connection_from(&registry, address(1)),
            connection_from(&registry, address(1)),
            connection_from(&registry, address(1)),
        ];
        three[0].0.leave();
        assert!(
            registry.ask_busiest_address_to_give_way(address(2)),
            "two left against none"
        );
        drop((two, three));
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_bit_prefix_and_mapped_ipv4_as_ipv4() {
        let parse = |text: &str| text.parse::<IpAddr>().expect("an address");
        assert_eq!(
            counted_address(parse("2001:db8:1:2:aaaa::1")),
            counted_address(parse("2001:db8:1:2:bbbb::9")),
        );
        assert_eq!(
            counted_address(parse("2001:db8:1:2:aaaa::1")),
            parse("2001:db8:1:2::")
        );
        assert_ne!(
            counted_address(parse("2001:db8:1:2::1")),
            counted_address(parse("2001:db8:1:3::1")),
        );
        assert_eq!(counted_address(parse("::ffff:10.0.0.1")), parse("10.0.0.1"));
        assert_eq!(counted_address(parse("10.0.0.1")), parse("10.0.0.1"));
    }

    #[test]
    fn connections_without_an_address_are_never_asked_to_make_room() {
        let registry = Arc::new(Registry::default());
        let _connections = [connection(&registry), connection(&registry)];
        assert!(!registry.ask_busiest_address_to_give_way(address(1)));
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

    /// Idle since admitted: a connection whose task took longer to finish its handshake has
    /// not been idle for less than one admitted after it that registered first.
    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_from_when_it_was_admitted() {
        let registry = Arc::new(Registry::default());
        let first = registry.begin_handshake(None);
        tokio::time::advance(std::time::Duration::from_millis(1)).await;
        let (_second, second_attention) = connection(&registry);
        let first_attention = Arc::new(Attention::default());
        let _first = first.register(
            Arc::new(Calls::default()),
            None,
            Arc::clone(&first_attention),
        );
        assert!(registry.ask_idlest_to_give_way());
        assert!(
            raised(&first_attention, Signal::GiveWay),
            "the first admitted"
        );
        assert!(!raised(&second_attention, Signal::GiveWay));
    }

    /// A task that waits until aborted, standing for a connection's.
    fn waiting_task() -> tokio::task::JoinHandle<()> {
        tokio::spawn(std::future::pending())
    }

    #[tokio::test]
    async fn the_connection_longest_in_its_handshake_is_closed_first_and_established_ones_never() {
        let registry = Arc::new(Registry::default());
        let (oldest, older, newest) = (waiting_task(), waiting_task(), waiting_task());
        let first = registry.begin_handshake(None);
        registry.name_task(first.key(), oldest.abort_handle());
        let second = registry.begin_handshake(None);
        registry.name_task(second.key(), older.abort_handle());
        // Its handshake over, the second is no longer one to close.
        let _established = second.register(Arc::new(Calls::default()), None, Arc::default());
        let third = registry.begin_handshake(None);
        registry.name_task(third.key(), newest.abort_handle());
        let unnamed = registry.begin_handshake(None);

        assert!(registry.close_longest_handshake());
        assert!(oldest.await.is_err_and(|error| error.is_cancelled()));
        assert!(registry.close_longest_handshake());
        assert!(newest.await.is_err_and(|error| error.is_cancelled()));
        assert!(
            !registry.close_longest_handshake(),
            "one whose task is not named yet is not closed"
        );
        assert!(!older.is_finished(), "the established one was left alone");
        drop((first, third, unnamed));
        older.abort();
    }

    /// A connection whose handshake failed leaves no trace: it is not taken for one still in its
    /// handshake, to close for a newcomer (which would free no slot), nor kept.
    #[tokio::test]
    async fn a_connection_whose_handshake_failed_leaves_the_registry() {
        let registry = Arc::new(Registry::default());
        let failed = waiting_task();
        let handshake = registry.begin_handshake(None);
        registry.name_task(handshake.key(), failed.abort_handle());
        drop(handshake);
        assert!(!registry.close_longest_handshake(), "nobody to close");
        assert!(registry.connections().handshakes.is_empty());
        failed.abort();
    }

    /// A connection whose client said hello is no mute peer: not closed for a newcomer in the
    /// moment before its task answers and registers it.
    #[tokio::test]
    async fn a_connection_whose_client_said_hello_is_not_closed_for_a_newcomer() {
        let registry = Arc::new(Registry::default());
        let (greeted, mute) = (waiting_task(), waiting_task());
        let first = registry.begin_handshake(None);
        registry.name_task(first.key(), greeted.abort_handle());
        first.said_hello();
        assert!(!registry.close_longest_handshake(), "nobody mute to close");
        let second = registry.begin_handshake(None);
        registry.name_task(second.key(), mute.abort_handle());
        assert!(registry.close_longest_handshake());
        assert!(
            mute.await.is_err_and(|error| error.is_cancelled()),
            "the mute one"
        );
        assert!(
            !greeted.is_finished(),
            "the one that said hello was left alone"
        );
        drop((first, second));
        greeted.abort();
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
