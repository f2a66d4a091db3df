//! One balanced client over the clients that serve a service back: workers that dial out.

use std::fmt;
use std::sync::Arc;

use super::pool::Pool;
use crate::{Context, RpcError};

/// The clients that serve a service back to servers of this process
/// ([`ClientBuilder::serve`](crate::ClientBuilder::serve)), as the endpoints of one balanced
/// client. Made with [`ClientBuilder::caller_pool`](crate::ClientBuilder::caller_pool), which
/// returns the client beside it; a handler adds its caller with [`CallerPool::add`], and a
/// caller whose connection closes leaves by itself.
///
/// The client calls them as a client of [`balance`](crate::ClientBuilder::balance) calls
/// servers: each call goes to the less busy of two picked at random, a call that did not run
/// is made again on another, an `#[rpc(idempotent)]` call whose caller vanished with it in
/// flight too, and one on which calls keep failing is ejected for a while.
/// `channel().endpoints()` lists them, named by their addresses (over a Unix socket, by their
/// process ids). With
/// [`wait_for_ready`](crate::ClientBuilder::wait_for_ready), a call made while the pool is
/// empty waits, within its deadline, for a caller to be added; without, it fails with
/// [`RpcError::NoEndpoints`].
///
/// ```
/// use rpc_core::{CallerPool, Context, ServiceClient};
///
/// #[rpc_core::service]
/// pub trait Worker {
///     #[rpc(idempotent)]
///     async fn run(&self, task: u64) -> u64;
/// }
///
/// #[rpc_core::service]
/// pub trait Coordinator {
///     /// Called by a worker once it has connected, serving `Worker` back.
///     async fn join(&self) -> Result<(), String>;
/// }
///
/// struct MyCoordinator {
///     workers: CallerPool,
/// }
///
/// impl Coordinator for MyCoordinator {
///     async fn join(&self) -> Result<(), String> {
///         self.workers.add(&Context::current()).await.map_err(|error| error.to_string())
///     }
/// }
///
/// # async fn run() -> Result<(), rpc_core::RpcError> {
/// let (workers, pool) = WorkerClient::builder().wait_for_ready(true).caller_pool();
/// let server = rpc_core::Server::bind("0.0.0.0:7000").await?;
/// tokio::spawn(server.serve(CoordinatorServer::new(MyCoordinator { workers: pool })));
/// // Waits for a worker to join, then runs on whichever is least busy.
/// let answer = workers.run(41).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CallerPool {
    pool: Arc<Pool>,
}

impl fmt::Debug for CallerPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallerPool")
            .field("callers", &self.len())
            .finish()
    }
}

impl CallerPool {
    pub(crate) fn new(pool: Arc<Pool>) -> Self {
        CallerPool { pool }
    }

    /// Adds the caller of the call `context` belongs to (`&Context::current()` in a handler),
    /// once the connection on which it serves back is ready; adding one already there changes
    /// nothing. It stays until its connection closes.
    ///
    /// Fails with [`RpcError::CallerServesNothing`] if the caller serves nothing back, with
    /// [`RpcError::WrongService`] if it serves other services than the pool's client calls, with
    /// [`RpcError::SignatureMismatch`] if it has a method of that service with another
    /// signature (an older or newer build of the trait), and with
    /// [`RpcError::ConnectionClosed`] if its connection is gone.
    pub async fn add(&self, context: &Context) -> Result<(), RpcError> {
        let caller = context
            .peer
            .caller
            .as_ref()
            .ok_or(RpcError::CallerServesNothing)?;
        let channel = caller.channel().await?;
        // A channel of the reverse connection always has its one connection.
        let connection = channel
            .fixed_connection()
            .ok_or(RpcError::ConnectionClosed)?;
        let service = self.pool.service();
        connection.check_has(service.name)?;
        // A method the caller lacks fails its calls as unknown, as a server's does; one it has
        // with another signature would fail a share of the pool's calls, and is refused here.
        for method in service.methods {
            match connection.check_call(&service, method) {
                Ok(()) | Err(RpcError::UnknownMethod { .. }) => {}
                Err(error) => return Err(channel.for_service(service).explain(error).await),
            }
        }
        self.pool.add_given(name(context), connection);
        Ok(())
    }

    /// How many callers are in the pool: added, and with their connections open.
    pub fn len(&self) -> usize {
        self.pool.len()
    }

    /// Whether no caller is in the pool.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a caller's endpoint is called in listings: its address; over a Unix socket, its process
/// id where the system tells it.
fn name(context: &Context) -> String {
    if let Some(addr) = context.peer_addr() {
        return addr.to_string();
    }
    match context.peer_credentials().and_then(|peer| peer.pid()) {
        Some(pid) => format!("pid {pid}"),
        None => "a caller".to_owned(),
    }
}
