//! Many servers of one service: which endpoints there are (a fixed list, or what a DNS name
//! resolves to, re-read periodically), and which one takes the next call.

use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use super::ClientConfig;
use super::connection::Connection;
use super::discovery::{Found, Source};
use super::endpoint::{Changes, Endpoint, Target, changed, changes, random};
use crate::health::ServingStatus;
use crate::service::ServiceInfo;
use crate::task::AbortOnDrop;
use crate::{RpcError, alarm};

/// The endpoints of a balanced client.
#[derive(Debug)]
pub(crate) struct Pool {
    endpoints: RwLock<Vec<Arc<Endpoint>>>,
    service: ServiceInfo,
    config: Arc<ClientConfig>,
    /// Re-reads the DNS name, for a pool that follows one.
    resolver: std::sync::Mutex<Option<AbortOnDrop>>,
    /// Counts changes of its endpoints' states, for watchers.
    changes: Changes,
    /// Probes the endpoints' health, for a pool that does.
    prober: std::sync::Mutex<Option<AbortOnDrop>>,
}

impl Pool {
    /// A pool of the servers a lookup `found`.
    pub(crate) fn new(
        found: Vec<Found>,
        service: ServiceInfo,
        config: Arc<ClientConfig>,
    ) -> Arc<Self> {
        let pool = Pool::start(Vec::new(), service, config, changes());
        pool.update(found);
        pool
    }

    /// A pool of the servers `targets` name, each resolved when it connects.
    pub(crate) fn fixed(
        targets: Vec<Target>,
        service: ServiceInfo,
        config: Arc<ClientConfig>,
    ) -> Arc<Self> {
        let changes = changes();
        let endpoints = targets
            .into_iter()
            .map(|target| {
                let endpoint =
                    Endpoint::new(target, service, Arc::clone(&config), Arc::clone(&changes));
                Arc::new(endpoint)
            })
            .collect();
        Pool::start(endpoints, service, config, changes)
    }

    /// A pool of `endpoints`, probing their health if the client asked for it.
    fn start(
        endpoints: Vec<Arc<Endpoint>>,
        service: ServiceInfo,
        config: Arc<ClientConfig>,
        changes: Changes,
    ) -> Arc<Self> {
        let pool = Arc::new(Pool {
            endpoints: RwLock::new(endpoints),
            service,
            config,
            resolver: std::sync::Mutex::new(None),
            changes,
            prober: std::sync::Mutex::new(None),
        });
        pool.probe_health();
        pool
    }

    /// Starts probing the endpoints' health, if the client asked for it.
    fn probe_health(self: &Arc<Self>) {
        let Some(every) = self.config.health_checks else {
            return;
        };
        let task = tokio::spawn(probe(every, Arc::downgrade(self)));
        *self.prober.lock().unwrap_or_else(PoisonError::into_inner) = Some(AbortOnDrop::new(&task));
    }

    /// The service its client calls.
    pub(crate) fn service(&self) -> ServiceInfo {
        self.service
    }

    /// The counter of its endpoints' changes.
    pub(crate) fn changes(&self) -> &Changes {
        &self.changes
    }

    /// A pool of the servers `source` finds, looked up again every `refresh`: servers that
    /// appear are added, servers that vanish are removed.
    pub(crate) async fn resolving(
        source: Source,
        refresh: Duration,
        service: ServiceInfo,
        config: Arc<ClientConfig>,
    ) -> Result<Arc<Self>, RpcError> {
        let found = source.lookup().await?;
        let pool = Pool::new(found, service, config);
        let weak = Arc::downgrade(&pool);
        let task = tokio::spawn(follow(source, refresh, weak));
        *pool.resolver.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(AbortOnDrop::new(&task));
        Ok(pool)
    }

    /// Makes the pool's endpoints exactly the servers `found`, keeping the endpoints (and
    /// connections) of those it already had.
    pub(crate) fn update(&self, found: Vec<Found>) {
        let mut endpoints = self
            .endpoints
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut kept: Vec<Arc<Endpoint>> = Vec::with_capacity(found.len());
        for Found { addr, host } in found {
            let target = Target::Tcp {
                addrs: vec![addr],
                host,
            };
            if kept.iter().any(|endpoint| *endpoint.target() == target) {
                continue;
            }
            let existing = endpoints
                .iter()
                .find(|endpoint| *endpoint.target() == target);
            kept.push(match existing {
                Some(endpoint) => Arc::clone(endpoint),
                None => Arc::new(Endpoint::new(
                    target,
                    self.service,
                    Arc::clone(&self.config),
                    Arc::clone(&self.changes),
                )),
            });
        }
        *endpoints = kept;
        drop(endpoints);
        changed(&self.changes);
    }

    /// Adds an endpoint over `connection`, made elsewhere and named `name`, unless one is
    /// there already; takes it out again once the connection closes.
    pub(crate) fn add_given(self: &Arc<Self>, name: String, connection: &Arc<Connection>) {
        let mut endpoints = self
            .endpoints
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let held = endpoints.iter().any(|endpoint| {
            endpoint
                .live_connection()
                .is_some_and(|held| Arc::ptr_eq(&held, connection))
        });
        if held {
            return;
        }
        let endpoint = Arc::new(Endpoint::given(
            name,
            Arc::clone(connection),
            self.service,
            Arc::clone(&self.config),
            Arc::clone(&self.changes),
        ));
        endpoints.push(Arc::clone(&endpoint));
        drop(endpoints);
        changed(&self.changes);
        let pool = Arc::downgrade(self);
        let connection = Arc::clone(connection);
        tokio::spawn(async move {
            connection.closed().await;
            if let Some(pool) = pool.upgrade() {
                pool.remove(&endpoint);
            }
        });
    }

    /// Takes `endpoint` out of the pool, if it is in it.
    fn remove(&self, endpoint: &Arc<Endpoint>) {
        self.endpoints
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|kept| !Arc::ptr_eq(kept, endpoint));
        changed(&self.changes);
    }

    /// How many endpoints may take calls or come back: not those whose given connection is
    /// gone.
    pub(crate) fn len(&self) -> usize {
        self.endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|endpoint| !endpoint.is_spent())
            .count()
    }

    /// The endpoints, in no particular order.
    pub(crate) fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many endpoints it has, whatever their state.
    pub(crate) fn count(&self) -> usize {
        self.endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The endpoint for the next call: of two picked at random, the one with fewer calls
    /// outstanding ("power of two choices"). Endpoints waiting to reconnect or ejected are
    /// passed over while others are up, and so are those in `avoid` (where the call just
    /// failed) while there are others; those whose given connection takes no new calls always.
    ///
    /// Two endpoints drawn from all of them are looked at first, and when both may take the
    /// call, the less busy takes it: a pair drawn so is as likely as any other of those that
    /// may, so the choice is the same as drawing among those, without looking at every
    /// endpoint at every call, which a pool of many workers would pay for at each. Otherwise
    /// (an endpoint down, out or to avoid was drawn) every endpoint is looked at.
    pub(crate) fn pick(&self, avoid: &[Arc<Endpoint>]) -> Result<Arc<Endpoint>, RpcError> {
        let endpoints = self
            .endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let takes = |endpoint: &Arc<Endpoint>| {
            endpoint.takes_calls() && !avoid.iter().any(|avoid| Arc::ptr_eq(avoid, endpoint))
        };
        let drawn = match endpoints.len() {
            0 => None,
            1 => Some((&endpoints[0], &endpoints[0])),
            n => {
                let (first, second) = two_of(n);
                Some((&endpoints[first], &endpoints[second]))
            }
        };
        if let Some((a, b)) = drawn
            && takes(a)
            && (Arc::ptr_eq(a, b) || takes(b))
        {
            return Ok(Arc::clone(less_busy(a, b)));
        }
        Self::pick_looking_at_all(&endpoints, avoid)
    }

    /// [`Pool::pick`], looking at every endpoint.
    fn pick_looking_at_all(
        endpoints: &[Arc<Endpoint>],
        avoid: &[Arc<Endpoint>],
    ) -> Result<Arc<Endpoint>, RpcError> {
        // A connection given to the pool that takes no new calls (a caller that stopped
        // serving back) will never take one again: its endpoint is passed over, and an empty
        // pool waits for ready as for a first caller.
        let usable = || endpoints.iter().filter(|endpoint| !endpoint.is_spent());
        let others: Vec<&Arc<Endpoint>> = usable()
            .filter(|endpoint| !avoid.iter().any(|avoid| Arc::ptr_eq(avoid, endpoint)))
            .collect();
        let others = if others.is_empty() {
            usable().collect()
        } else {
            others
        };
        let up: Vec<&Arc<Endpoint>> = others
            .iter()
            .copied()
            .filter(|endpoint| endpoint.takes_calls())
            .collect();
        let candidates = if up.is_empty() { others } else { up };
        match candidates.len() {
            0 => Err(RpcError::NoEndpoints),
            1 => Ok(Arc::clone(candidates[0])),
            n => {
                let (first, second) = two_of(n);
                Ok(Arc::clone(less_busy(candidates[first], candidates[second])))
            }
        }
    }
}

/// Two different indexes below `n` (at least 2), drawn at random.
fn two_of(n: usize) -> (usize, usize) {
    let first = (random() % n as u64) as usize;
    let mut second = (random() % (n as u64 - 1)) as usize;
    if second >= first {
        second += 1;
    }
    (first, second)
}

/// Of `a` and `b`, the one with fewer calls outstanding; `a` if they have as many.
fn less_busy<'a>(a: &'a Arc<Endpoint>, b: &'a Arc<Endpoint>) -> &'a Arc<Endpoint> {
    if b.outstanding() < a.outstanding() {
        b
    } else {
        a
    }
}

/// Asks each connected endpoint of `pool` whether it is serving, every `every`, for as long as
/// the pool lives; an endpoint that says it is not is passed over until it says it is. An
/// endpoint that cannot answer keeps its standing: failing calls eject it anyway.
async fn probe(every: Duration, pool: Weak<Pool>) {
    loop {
        tokio::time::sleep(every).await;
        let Some(endpoints) = pool.upgrade().map(|pool| pool.endpoints()) else {
            return;
        };
        for endpoint in endpoints {
            let Some(connection) = endpoint.live_connection() else {
                continue;
            };
            if let Ok(status) = connection.check_health(every).await {
                endpoint.set_serving(status == ServingStatus::Serving);
            }
        }
    }
}

/// Looks `source` up again every `refresh` (at least [`MIN_PERIOD`](alarm::MIN_PERIOD)) for as
/// long as the pool lives. A failed lookup keeps the endpoints the pool has.
async fn follow(source: Source, refresh: Duration, pool: Weak<Pool>) {
    let refresh = alarm::period(refresh);
    loop {
        tokio::time::sleep(refresh).await;
        let found = source.lookup().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        match found {
            Ok(found) => pool.update(found),
            Err(error) => {
                let name = source.name();
                tracing::warn!(%name, %error, "looking up the servers failed; keeping the endpoints")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::MethodInfo;
    use std::net::SocketAddr;

    const SERVICE: ServiceInfo = ServiceInfo {
        name: "Test",
        methods: &[] as &[MethodInfo],
        schema: crate::service::no_methods,
    };

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn found(ports: &[u16]) -> Vec<Found> {
        ports
            .iter()
            .map(|&port| Found {
                addr: addr(port),
                host: None,
            })
            .collect()
    }

    #[test]
    fn update_keeps_known_endpoints_and_drops_vanished_ones() {
        let pool = Pool::new(found(&[1, 2]), SERVICE, Arc::default());
        let before = pool.endpoints();
        pool.update(found(&[2, 3, 3]));
        let after = pool.endpoints();
        assert_eq!(after.len(), 2);
        assert!(
            Arc::ptr_eq(&after[0], &before[1]),
            "the endpoint of :2 is kept"
        );
        let third = Target::Tcp {
            addrs: vec![addr(3)],
            host: None,
        };
        assert_eq!(*after[1].target(), third);
    }

    #[test]
    fn pick_prefers_the_less_busy_and_avoids_where_a_call_failed() {
        let pool = Pool::new(found(&[1, 2]), SERVICE, Arc::default());
        let endpoints = pool.endpoints();
        endpoints[0].begin_call();
        for _ in 0..20 {
            let picked = pool.pick(&[]).expect("an endpoint");
            assert!(Arc::ptr_eq(&picked, &endpoints[1]), "the idle one");
        }
        let picked = pool.pick(&endpoints[1..]).expect("an endpoint");
        assert!(
            Arc::ptr_eq(&picked, &endpoints[0]),
            "not where the call just failed"
        );
        let empty = Pool::new(Vec::new(), SERVICE, Arc::default());
        assert!(matches!(empty.pick(&[]), Err(RpcError::NoEndpoints)));
    }

    /// An endpoint reported not serving is passed over while others are up, whichever two are
    /// drawn; when none is up, calls still go to one (which fails them, or has come back).
    #[test]
    fn pick_passes_over_an_endpoint_out_while_others_are_up() {
        let pool = Pool::new(found(&[1, 2, 3, 4, 5, 6, 7, 8]), SERVICE, Arc::default());
        let endpoints = pool.endpoints();
        endpoints[3].set_serving(false);
        let mut picked = [0; 8];
        for _ in 0..4000 {
            let endpoint = pool.pick(&[]).expect("an endpoint");
            let at = endpoints
                .iter()
                .position(|each| Arc::ptr_eq(each, &endpoint))
                .expect("one of the pool's");
            picked[at] += 1;
        }
        assert_eq!(picked[3], 0, "the endpoint out: {picked:?}");
        assert!(
            picked
                .iter()
                .enumerate()
                .all(|(at, count)| at == 3 || *count > 200),
            "every other is picked about as often: {picked:?}"
        );
        for endpoint in &endpoints {
            endpoint.set_serving(false);
        }
        assert!(
            pool.pick(&[]).is_ok(),
            "with none up, one still takes the call"
        );
    }

    /// A call that did not run on every endpoint but one goes to that one.
    #[test]
    fn pick_goes_where_the_call_did_not_fail() {
        let pool = Pool::new(found(&[1, 2, 3, 4]), SERVICE, Arc::default());
        let endpoints = pool.endpoints();
        for _ in 0..100 {
            let picked = pool.pick(&endpoints[1..]).expect("an endpoint");
            assert!(Arc::ptr_eq(&picked, &endpoints[0]));
        }
    }
}
