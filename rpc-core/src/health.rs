//! Health: whether a server is serving, for load balancers, orchestrators and balancing
//! clients to ask, or to watch.
//!
//! Every server answers health requests beside its own service (docs/wire.md, "Health"):
//! `rpc.health.check` with the service's status now, `rpc.health.watch` with it now and then at
//! each change. [`Server::health`](crate::Server::health) sets it (and
//! [`ServerBuilder::health`](crate::ServerBuilder::health) for what a builder makes, a service
//! that a client serves back included: a worker that takes no task for a while); graceful
//! shutdown marks the server not serving before it drains. A client asks with
//! [`Channel::health`] or [`Channel::watch_health`] (about one service of a server of several,
//! [`Channel::service_health`]), and a balanced client can probe its endpoints with it
//! ([`ClientBuilder::health_checks`](crate::ClientBuilder::health_checks)), passing over those
//! not serving.
//!
//! ```no_run
//! # #[rpc_core::service] pub trait Calc { async fn add(&self, a: i64, b: i64) -> i64; }
//! # struct MyCalc;
//! # impl Calc for MyCalc { async fn add(&self, a: i64, b: i64) -> i64 { a + b } }
//! # async fn run() -> std::io::Result<()> {
//! use rpc_core::health::ServingStatus;
//!
//! let server = rpc_core::Server::bind("0.0.0.0:7000").await?;
//! let health = server.health();
//! health.set(ServingStatus::NotServing); // until its caches are warm, say
//! tokio::spawn(server.serve(CalcServer::new(MyCalc)));
//! // ...
//! health.set(ServingStatus::Serving);
//! # Ok(()) }
//! ```
//!
//! [`Channel::health`]: crate::Channel::health
//! [`Channel::watch_health`]: crate::Channel::watch_health
//! [`Channel::service_health`]: crate::Channel::service_health

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{MethodInfo, Streaming};

/// Whether a service takes calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ServingStatus {
    /// It takes calls.
    Serving,
    /// It does not take calls now (starting, shutting down, or told so).
    NotServing,
    /// The server has no service of the name asked about.
    ServiceUnknown,
}

impl fmt::Display for ServingStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServingStatus::Serving => "serving",
            ServingStatus::NotServing => "not serving",
            ServingStatus::ServiceUnknown => "service unknown",
        })
    }
}

/// The prefix of the health service's method names on the wire.
pub(crate) const PREFIX: &str = "rpc.health.";

/// `rpc.health.check`, as a client calls it.
pub(crate) static CHECK: MethodInfo = MethodInfo {
    name: "rpc.health.check",
    idempotent: true,
};

/// `rpc.health.watch`, as a client calls it.
pub(crate) static WATCH: MethodInfo = MethodInfo {
    name: "rpc.health.watch",
    idempotent: true,
};

/// Sets a server's status. Cheap to clone; clones set the same status.
#[derive(Clone)]
pub struct HealthReporter {
    /// The status, and whether it is final (the server is shutting down: watches end).
    status: Arc<watch::Sender<(ServingStatus, bool)>>,
}

impl fmt::Debug for HealthReporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthReporter")
            .field("status", &self.status())
            .finish()
    }
}

impl Default for HealthReporter {
    fn default() -> Self {
        HealthReporter {
            status: Arc::new(watch::channel((ServingStatus::Serving, false)).0),
        }
    }
}

impl HealthReporter {
    /// Sets the server's status: [`ServingStatus::Serving`] or
    /// [`ServingStatus::NotServing`]. Every watcher hears of the change.
    pub fn set(&self, status: ServingStatus) {
        self.status.send_if_modified(|(now, last)| {
            let changed = !*last && *now != status;
            if changed {
                *now = status;
            }
            changed
        });
    }

    /// The server's status now.
    pub fn status(&self) -> ServingStatus {
        self.status.borrow().0
    }

    /// Marks the server not serving for good: it is shutting down. Watches say so, then end.
    pub(crate) fn shut_down(&self) {
        self.status.send_replace((ServingStatus::NotServing, true));
    }

    fn watch(&self) -> watch::Receiver<(ServingStatus, bool)> {
        self.status.subscribe()
    }
}

/// The health service, as a server runs it beside its own.
pub(crate) mod service {
    #![allow(unreachable_pub, dead_code)]

    use super::{HealthReporter, ServingStatus};
    use crate::Streaming;

    /// The health service's methods, as the server decodes and runs them (the client side
    /// calls them under their `rpc.health.` names, through `Channel`).
    #[crate::service]
    pub trait Health {
        /// The status of `service` ("" for the server's own).
        async fn check(&self, service: String) -> ServingStatus;
        /// The status of `service` now, then at each change; ends when the server shuts down.
        async fn watch(&self, service: String) -> Streaming<ServingStatus>;
    }

    /// What a connection answers health calls with.
    pub struct Reporting {
        pub(crate) reporter: HealthReporter,
        /// The names of the services the server serves.
        pub(crate) services: std::sync::Arc<[&'static str]>,
    }

    impl Reporting {
        fn knows(&self, service: &str) -> bool {
            service.is_empty() || self.services.contains(&service)
        }
    }

    impl Health for Reporting {
        async fn check(&self, service: String) -> ServingStatus {
            if self.knows(&service) {
                self.reporter.status()
            } else {
                ServingStatus::ServiceUnknown
            }
        }

        async fn watch(&self, service: String) -> Streaming<ServingStatus> {
            if !self.knows(&service) {
                return Streaming::iter([ServingStatus::ServiceUnknown]);
            }
            super::watching(self.reporter.watch())
        }
    }
}

/// The statuses `status` takes, starting with the current one, until the final one.
fn watching(status: watch::Receiver<(ServingStatus, bool)>) -> Streaming<ServingStatus> {
    let first = true;
    Streaming::new(futures_util::stream::unfold(
        (status, first, false),
        |(mut status, first, ended)| async move {
            if ended {
                return None;
            }
            if !first && status.changed().await.is_err() {
                return None;
            }
            let (now, last) = *status.borrow_and_update();
            Some((now, (status, false, last)))
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status set again wakes no watcher; once the server shuts down, no status set moves it
    /// from not serving.
    #[test]
    fn a_status_changes_only_when_it_differs_and_the_server_is_not_shutting_down() {
        let reporter = HealthReporter::default();
        let mut watcher = reporter.watch();
        reporter.set(ServingStatus::Serving);
        assert!(!watcher.has_changed().expect("open"), "the same status");
        reporter.set(ServingStatus::NotServing);
        assert!(watcher.has_changed().expect("open"));
        assert_eq!(watcher.borrow_and_update().0, ServingStatus::NotServing);

        reporter.set(ServingStatus::Serving);
        reporter.shut_down();
        watcher.borrow_and_update();
        reporter.set(ServingStatus::Serving);
        assert!(!watcher.has_changed().expect("open"), "shut down");
        assert_eq!(reporter.status(), ServingStatus::NotServing);
    }

    /// What the `rpc` tool prints, and what a reporter shows of itself.
    #[test]
    fn statuses_read_as_words() {
        let words = [
            ServingStatus::Serving,
            ServingStatus::NotServing,
            ServingStatus::ServiceUnknown,
        ]
        .map(|status| status.to_string());
        assert_eq!(words, ["serving", "not serving", "service unknown"]);
        assert_eq!(
            format!("{:?}", HealthReporter::default()),
            "HealthReporter { status: Serving }"
        );
    }
}
