//! Hooks around every call: on a server, one that may refuse a call before its handler runs;
//! on a client, one that may change the metadata every call carries.

use std::fmt;
use std::sync::Arc;

use crate::{Context, Metadata, Status};

/// Whether a call may run, decided from its context.
type Check = dyn Fn(&Context) -> Result<(), Status> + Send + Sync;

/// A server's check of every call before its handler runs.
#[derive(Clone)]
pub(crate) struct ServerInterceptor(Arc<Check>);

impl ServerInterceptor {
    pub(crate) fn new(
        check: impl Fn(&Context) -> Result<(), Status> + Send + Sync + 'static,
    ) -> Self {
        ServerInterceptor(Arc::new(check))
    }

    /// Whether the call in `context` may run.
    pub(crate) fn check(&self, context: &Context) -> Result<(), Status> {
        (self.0)(context)
    }
}

impl fmt::Debug for ServerInterceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerInterceptor")
    }
}

/// A client's change to the metadata of every call.
#[derive(Clone)]
pub(crate) struct ClientInterceptor(Arc<dyn Fn(&mut Metadata) + Send + Sync>);

impl ClientInterceptor {
    pub(crate) fn new(change: impl Fn(&mut Metadata) + Send + Sync + 'static) -> Self {
        ClientInterceptor(Arc::new(change))
    }

    /// The metadata a call carries: `metadata`, as the hook changes it.
    pub(crate) fn apply(&self, metadata: &Metadata) -> Metadata {
        let mut metadata = metadata.clone();
        (self.0)(&mut metadata);
        metadata
    }
}

impl fmt::Debug for ClientInterceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientInterceptor")
    }
}
