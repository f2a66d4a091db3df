//! In-process clients: a generated client whose calls run the implementation directly, with no
//! serialization and no socket, under the same deadline, cancellation and `Context` as a remote
//! call.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;

use crate::peer::Peer;
use crate::service::{MethodInfo, Service};
use crate::task::until;
use crate::{Context, Metadata, RpcError};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A service run in this process, its request and response types erased so that a channel can
/// hold it.
pub(crate) trait LocalService: Send + Sync + 'static {
    /// The service's name.
    fn name(&self) -> &'static str;

    /// Runs `request`, if it is a request of this service.
    fn call(&self, request: Box<dyn Any + Send>) -> Option<BoxFuture<Box<dyn Any + Send>>>;
}

impl<S: Service> LocalService for S {
    fn name(&self) -> &'static str {
        S::INFO.name
    }

    fn call(&self, request: Box<dyn Any + Send>) -> Option<BoxFuture<Box<dyn Any + Send>>> {
        let request = request.downcast::<S::Request>().ok()?;
        let response = Service::call(self, *request);
        Some(Box::pin(async move {
            Box::new(response.await) as Box<dyn Any + Send>
        }))
    }
}

/// A local service and the ids of its calls.
pub(crate) struct Local {
    service: Box<dyn LocalService>,
    next_id: AtomicU64,
    /// The caller as every call's context names it: nobody, in this process.
    peer: Arc<Peer>,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("service", &self.service.name())
            .finish_non_exhaustive()
    }
}

impl Local {
    pub(crate) fn new(service: impl Service) -> Self {
        Local {
            service: Box::new(service),
            next_id: AtomicU64::new(0),
            peer: Arc::default(),
        }
    }

    /// The name of the service this client runs.
    pub(crate) fn service_name(&self) -> &'static str {
        self.service.name()
    }

    /// Runs `request`, a request of method `method`, within `deadline`, with `metadata` in its
    /// context, and returns its response. A panic in the handler is caught, as a server catches
    /// it.
    pub(crate) async fn call<Req, Resp>(
        &self,
        method: &'static MethodInfo,
        request: Req,
        deadline: Duration,
        metadata: Metadata,
    ) -> Result<Resp, RpcError>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let expires = tokio::time::Instant::now().checked_add(deadline);
        let context = Context {
            service: self.service.name(),
            request_id,
            method: method.name,
            deadline: expires.map(tokio::time::Instant::into_std),
            peer: Arc::clone(&self.peer),
            metadata,
        };
        let Some(handler) = self.service.call(Box::new(request)) else {
            return Err(wrong_service(method));
        };
        let running = AssertUnwindSafe(context.scope(handler)).catch_unwind();
        match until(expires, running).await {
            Err(_) => Err(RpcError::DeadlineExceeded {
                method: method.name.to_owned(),
                deadline,
            }),
            Ok(Err(panic)) => {
                let message = crate::server::panic_message(&*panic).to_owned();
                tracing::error!(
                    method = method.name,
                    request_id,
                    message,
                    "a handler panicked"
                );
                Err(RpcError::HandlerPanicked {
                    method: method.name.to_owned(),
                    request_id,
                    message: Some(message),
                })
            }
            Ok(Ok(response)) => response
                .downcast::<Resp>()
                .map(|response| *response)
                .map_err(|_| wrong_service(method)),
        }
    }
}

fn wrong_service(method: &MethodInfo) -> RpcError {
    RpcError::Protocol(format!(
        "the local service does not serve this client's `{}`",
        method.name
    ))
}
