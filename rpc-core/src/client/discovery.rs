//! Where a pool that follows a name finds its servers: the system resolver's A/AAAA records,
//! or, with the `dns` feature, SRV records through a resolver whose name servers can be set.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::RpcError;

/// A server a lookup found, and the host name it was found under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) addr: SocketAddr,
    pub(crate) host: Option<Arc<str>>,
}

/// How a pool finds its servers.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// `host:port` through the system's resolver.
    System(String),
    /// SRV records, with hickory.
    #[cfg(feature = "dns")]
    Srv(crate::dns::Discovery),
}

impl Source {
    /// The servers the name stands for now. Fails if there are none.
    pub(crate) async fn lookup(&self) -> Result<Vec<Found>, RpcError> {
        let found = match self {
            Source::System(name) => {
                let host = super::address::host_of(name).map(Arc::from);
                tokio::net::lookup_host(name.as_str())
                    .await
                    .map_err(|cause| RpcError::Connect {
                        endpoint: name.clone(),
                        cause: Arc::new(cause),
                    })?
                    .map(|addr| Found {
                        addr,
                        host: host.clone(),
                    })
                    .collect()
            }
            #[cfg(feature = "dns")]
            Source::Srv(discovery) => discovery.lookup().await?,
        };
        if Vec::is_empty(&found) {
            return Err(RpcError::NoEndpoints);
        }
        Ok(found)
    }

    /// The name, for logs.
    pub(crate) fn name(&self) -> &str {
        match self {
            Source::System(name) => name,
            #[cfg(feature = "dns")]
            Source::Srv(discovery) => discovery.name(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed lookup's warning names what was looked up.
    #[test]
    fn a_source_is_named_as_given() {
        let source = Source::System("workers.internal:7000".into());
        assert_eq!(source.name(), "workers.internal:7000");
    }
}
