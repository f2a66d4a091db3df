//! Finding servers through DNS SRV records (feature `dns`), as Kubernetes publishes the named
//! ports of a headless service and Consul its services, with hickory's resolver.
//!
//! ```no_run
//! # #[rpc_core::service] pub trait Calc { async fn add(&self, a: i64, b: i64) -> i64; }
//! # async fn run() -> Result<(), rpc_core::RpcError> {
//! use std::time::Duration;
//! use rpc_core::dns::Discovery;
//!
//! // Each SRV record's target and port is a server; re-read every 10 s.
//! let calc = CalcClient::builder()
//!     .discover(Discovery::srv("_rpc._tcp.calc.default.svc.cluster.local."), Duration::from_secs(10))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Each SRV record names a target host and a port; the target's A/AAAA records, looked up
//! through the same resolver, give the addresses. Over TLS, a server's certificate must carry
//! its target's name. Records are read again every refresh: servers that appear are added,
//! those that vanish removed, and calls follow them. Priorities and weights are not used: calls
//! are balanced over every server found.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};

use crate::RpcError;
use crate::client::discovery::Found;

/// A DNS name whose SRV records list a service's servers, and the name servers to ask.
#[derive(Clone)]
pub struct Discovery {
    name: String,
    name_servers: Vec<SocketAddr>,
    resolver: Option<Arc<TokioResolver>>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("name", &self.name)
            .field("name_servers", &self.name_servers)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// The servers the SRV records of `name` list (`_service._proto.domain.`), asked of the
    /// system's name servers unless [`name_servers`](Self::name_servers) says others.
    pub fn srv(name: impl Into<String>) -> Self {
        Discovery {
            name: name.into(),
            name_servers: Vec::new(),
            resolver: None,
        }
    }

    /// Asks these name servers (over UDP, then TCP), instead of the system's.
    pub fn name_servers(mut self, servers: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.name_servers = servers.into_iter().collect();
        self
    }

    /// The name looked up.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes the resolver, once.
    pub(crate) fn ready(mut self) -> Result<Self, RpcError> {
        let failed = |error: &dyn std::fmt::Display| {
            RpcError::Protocol(format!("the DNS resolver could not be set up: {error}"))
        };
        let resolver = if self.name_servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| failed(&e))?
                .build()
                .map_err(|e| failed(&e))?
        } else {
            let servers = self
                .name_servers
                .iter()
                .map(|server| {
                    let mut config = NameServerConfig::udp_and_tcp(server.ip());
                    for connection in &mut config.connections {
                        connection.port = server.port();
                    }
                    config
                })
                .collect();
            let config = ResolverConfig::from_name_servers(servers);
            let mut builder =
                TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
            // Each refresh asks again: the records' TTLs still bound how stale they may be.
            builder.options_mut().cache_size = 0;
            builder.build().map_err(|e| failed(&e))?
        };
        self.resolver = Some(Arc::new(resolver));
        Ok(self)
    }

    /// The servers the records list now.
    pub(crate) async fn lookup(&self) -> Result<Vec<Found>, RpcError> {
        let Some(resolver) = &self.resolver else {
            return Err(RpcError::Protocol(
                "the DNS resolver is not set up".to_owned(),
            ));
        };
        let failed = |error: &dyn std::fmt::Display| RpcError::Connect {
            endpoint: self.name.clone(),
            cause: Arc::new(std::io::Error::other(format!(
                "the SRV lookup failed: {error}"
            ))),
        };
        let records = resolver
            .lookup(self.name.as_str(), RecordType::SRV)
            .await
            .map_err(|e| failed(&e))?;
        let mut found = Vec::new();
        for record in records.answers() {
            let RData::SRV(srv) = &record.data else {
                continue;
            };
            let target = srv.target.to_utf8();
            let host: Arc<str> = Arc::from(target.trim_end_matches('.'));
            // A target that does not resolve is left out; the others still count.
            let Ok(ips) = resolver.lookup_ip(srv.target.clone()).await else {
                continue;
            };
            for ip in ips.iter() {
                found.push(Found {
                    addr: SocketAddr::new(ip, srv.port),
                    host: Some(Arc::clone(&host)),
                });
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_names_what_is_asked_of_whom() {
        let discovery = Discovery::srv("_rpc._tcp.calc.")
            .name_servers(["127.0.0.1:53".parse().expect("an address")]);
        assert_eq!(discovery.name(), "_rpc._tcp.calc.");
        assert_eq!(
            format!("{discovery:?}"),
            r#"Discovery { name: "_rpc._tcp.calc.", name_servers: [127.0.0.1:53], .. }"#
        );
    }
}
