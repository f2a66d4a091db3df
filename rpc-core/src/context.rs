//! What a handler can learn about the call it is running, without a parameter for it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::task::futures::TaskLocalFuture;

use crate::peer::{Peer, PeerCredentials, PeerIdentity};
use crate::{Metadata, RpcError};

tokio::task_local! {
    static CURRENT: Context;
}

/// The call a handler is running: its id, method, deadline, the client's address, and the
/// metadata the client attached.
///
/// Read it with [`Context::current`] anywhere inside a handler (in the handler's own task; a task
/// the handler spawns does not inherit it):
///
/// ```
/// #[rpc_core::service]
/// pub trait Vault {
///     async fn open(&self) -> bool;
/// }
///
/// struct MyVault;
///
/// impl Vault for MyVault {
///     async fn open(&self) -> bool {
///         let call = rpc_core::Context::current();
///         call.metadata().get_str("token") == Some("s3cr3t")
///     }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) service: &'static str,
    pub(crate) request_id: u64,
    pub(crate) method: &'static str,
    pub(crate) deadline: Option<Instant>,
    /// Shared by the calls of a connection: a handle, not a copy, moves with each call.
    pub(crate) peer: Arc<Peer>,
    pub(crate) metadata: Metadata,
}

impl Context {
    /// The context of the call being handled.
    ///
    /// # Panics
    ///
    /// Outside a handler's task. Use [`Context::try_current`] where that can happen.
    pub fn current() -> Context {
        Self::try_current()
            .expect("rpc_core::Context::current() called outside an rpc handler's task")
    }

    /// The context of the call being handled, or `None` outside a handler's task.
    pub fn try_current() -> Option<Context> {
        CURRENT.try_with(Context::clone).ok()
    }

    /// The service called, as the trait is named.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// The call's id: unique among the calls in flight on its connection.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// The method called, as named in the trait.
    pub fn method(&self) -> &'static str {
        self.method
    }

    /// When the client stops waiting. The server drops the handler at this instant.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The client's address, for TCP connections.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.addr
    }

    /// The certificate the client presented, verified, on a server that requires client
    /// certificates (mutual TLS); `None` otherwise.
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.peer.identity.as_deref()
    }

    /// The user, group and process of the client, for a Unix socket connection; `None` for
    /// other transports.
    pub fn peer_credentials(&self) -> Option<PeerCredentials> {
        self.peer.credentials
    }

    /// What the client attached to this call: its per-client metadata, overridden by per-call
    /// entries of the same keys.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// A client of the service `C` that the caller serves back over its connection
    /// ([`ClientBuilder::serve`](crate::ClientBuilder::serve)): the server calls its client on
    /// the connection the client opened, so a client behind NAT or a firewall can be called.
    /// The client stays usable after this call ends, for as long as the connection lives;
    /// keep it to call the client later. Its calls have the deadline, cancellation, streams
    /// and limits of any client's (the deadline is 30 s unless changed with `with_deadline`),
    /// and fail with [`RpcError::ConnectionClosed`] once the connection is gone.
    ///
    /// To spread calls over many such callers, add each to a [`CallerPool`](crate::CallerPool)
    /// instead.
    ///
    /// Fails with [`RpcError::CallerServesNothing`] if the caller serves nothing back. A
    /// caller that serves another service than `C` fails each call with
    /// [`RpcError::WrongService`].
    ///
    /// ```
    /// #[rpc_core::service]
    /// pub trait Worker {
    ///     async fn run(&self, task: u64) -> u64;
    /// }
    ///
    /// #[rpc_core::service]
    /// pub trait Coordinator {
    ///     async fn join(&self) -> u64;
    /// }
    ///
    /// struct MyCoordinator;
    ///
    /// impl Coordinator for MyCoordinator {
    ///     async fn join(&self) -> u64 {
    ///         let Ok(worker) = rpc_core::Context::current().caller::<WorkerClient>().await else {
    ///             return 0;
    ///         };
    ///         worker.run(41).await.unwrap_or(0)
    ///     }
    /// }
    /// ```
    pub async fn caller<C: crate::ServiceClient>(&self) -> Result<C, RpcError> {
        match &self.peer.caller {
            Some(caller) => caller.client::<C>().await,
            None => Err(RpcError::CallerServesNothing),
        }
    }

    /// Runs `future` with this context as the current one; the context can be taken back
    /// from the returned future ([`TaskLocalFuture::take_value`]).
    pub(crate) fn scope<F: Future>(self, future: F) -> TaskLocalFuture<Context, F> {
        CURRENT.scope(self, future)
    }
}
