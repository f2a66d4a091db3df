//! tower middleware: layers around a server's handlers (tower's own and hand-written ones),
//! the statuses their refusals reach the client as, and a client used as a `tower::Service`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use rpc_core::middleware::{BoxError, Call, Next, Reply};
use rpc_core::{Context, RpcError, Server, ServerBuilder, Status, StatusCode, Streaming};
use rpc_tests::within;
use tokio::sync::{Semaphore, mpsc};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

#[rpc_core::service]
pub trait Vault {
    /// Adds; counts the handler's runs.
    async fn add(&self, a: i64, b: i64) -> i64;
    /// Says it started, then waits for the gate to let it through.
    async fn hold(&self) -> u32;
    /// The `user` the call's metadata names.
    async fn whoami(&self) -> String;
    /// `0..count`, streamed.
    async fn count(&self, count: u32) -> Streaming<u32>;
    /// `len` bytes, each its position modulo 251.
    async fn blob(&self, len: u32) -> Vec<u8>;
}

#[derive(Clone)]
struct MyVault {
    adds: Arc<AtomicUsize>,
    started: mpsc::UnboundedSender<()>,
    gate: Arc<Semaphore>,
}

impl Vault for MyVault {
    async fn add(&self, a: i64, b: i64) -> i64 {
        self.adds.fetch_add(1, Ordering::SeqCst);
        a + b
    }

    async fn hold(&self) -> u32 {
        let _ = self.started.send(());
        self.gate
            .acquire()
            .await
            .expect("the gate stays open")
            .forget();
        7
    }

    async fn whoami(&self) -> String {
        let call = Context::current();
        call.metadata()
            .get_str("user")
            .unwrap_or("nobody")
            .to_owned()
    }

    async fn count(&self, count: u32) -> Streaming<u32> {
        Streaming::iter(0..count)
    }

    async fn blob(&self, len: u32) -> Vec<u8> {
        (0..len).map(|n| (n % 251) as u8).collect()
    }
}

/// A served vault: its address, its handlers' view, and the gate `hold` waits at.
struct Served {
    addr: SocketAddr,
    adds: Arc<AtomicUsize>,
    started: mpsc::UnboundedReceiver<()>,
    gate: Arc<Semaphore>,
}

async fn serve(builder: ServerBuilder) -> Served {
    let (started_tx, started) = mpsc::unbounded_channel();
    let vault = MyVault {
        adds: Arc::default(),
        started: started_tx,
        gate: Arc::new(Semaphore::new(0)),
    };
    let (adds, gate) = (Arc::clone(&vault.adds), Arc::clone(&vault.gate));
    let server = builder.bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("an address");
    tokio::spawn(server.serve(VaultServer::new(vault)));
    Served {
        addr,
        adds,
        started,
        gate,
    }
}

async fn connect(addr: SocketAddr) -> VaultClient {
    within("connecting", VaultClient::connect(addr))
        .await
        .expect("connects")
}

fn expired<T: std::fmt::Debug>(result: Result<T, RpcError>) -> bool {
    match result {
        Err(RpcError::DeadlineExceeded { .. }) => true,
        other => {
            eprintln!("not an expired deadline: {other:?}");
            false
        }
    }
}

#[tokio::test]
async fn a_concurrency_limit_holds_further_calls_until_one_finishes() {
    let mut vault =
        serve(Server::builder().layer(tower::limit::ConcurrencyLimitLayer::new(2))).await;
    let client = connect(vault.addr).await;
    let running: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn({
                let client = client.clone();
                async move { client.hold().await }
            })
        })
        .collect();
    for _ in 0..2 {
        within("a call to start", vault.started.recv()).await;
    }

    // A third call waits for the limit, within its deadline, and never starts.
    let third = client
        .with_deadline(Duration::from_millis(200))
        .hold()
        .await;
    assert!(expired(third), "the third call waits until its deadline");
    assert!(vault.started.try_recv().is_err(), "no third call started");

    vault.gate.add_permits(2);
    for call in running {
        assert_eq!(
            within("a held call", call)
                .await
                .expect("joins")
                .expect("answers"),
            7
        );
    }
    assert_eq!(client.add(2, 3).await.expect("the limit has room again"), 5);
}

#[tokio::test]
async fn load_shedding_refuses_with_unavailable_and_runs_nothing() {
    let layers = ServiceBuilder::new().load_shed().concurrency_limit(1);
    let mut vault = serve(Server::builder().layer(layers)).await;
    let client = connect(vault.addr).await;
    let held = tokio::spawn({
        let client = client.clone();
        async move { client.hold().await }
    });
    within("the held call to start", vault.started.recv()).await;

    match client.add(2, 3).await {
        Err(RpcError::Refused { status, method, .. }) => {
            assert_eq!(status, StatusCode::Unavailable);
            assert_eq!(method, "add");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        vault.adds.load(Ordering::SeqCst),
        0,
        "the shed call never ran"
    );

    vault.gate.add_permits(1);
    assert_eq!(
        within("the held call", held)
            .await
            .expect("joins")
            .expect("answers"),
        7
    );
    assert_eq!(
        client.add(2, 3).await.expect("room again, same connection"),
        5
    );
}

#[tokio::test]
async fn a_layers_timeout_reaches_the_client_as_an_expired_deadline() {
    let timeout = tower::timeout::TimeoutLayer::new(Duration::from_millis(50));
    let vault = serve(Server::builder().layer(timeout)).await;
    let client = connect(vault.addr).await;
    let held = within("the timed-out call", client.hold()).await;
    assert!(expired(held), "the server's timeout ends the call");
    assert_eq!(client.add(2, 3).await.expect("the connection goes on"), 5);
}

#[tokio::test]
async fn a_rate_limit_slows_its_own_connection_and_no_other() {
    let limit = tower::limit::RateLimitLayer::new(1, Duration::from_secs(3600));
    let vault = serve(Server::builder().layer(limit)).await;
    let first = connect(vault.addr).await;
    assert_eq!(first.add(1, 1).await.expect("within the rate"), 2);
    let over = first
        .with_deadline(Duration::from_millis(200))
        .add(1, 1)
        .await;
    assert!(
        matches!(over, Err(RpcError::DeadlineExceeded { .. })),
        "the second call waits for the next period: {over:?}"
    );
    let second = connect(vault.addr).await;
    assert_eq!(
        second
            .add(2, 2)
            .await
            .expect("another connection's own rate"),
        4
    );
    assert_eq!(vault.adds.load(Ordering::SeqCst), 2);
}

/// A hand-written layer: calls with the token `s3cr3t` go on as the user `alice`; others are
/// refused.
#[derive(Clone)]
struct Auth<S>(S);

impl<S> Service<Call> for Auth<S>
where
    S: Service<Call, Response = Reply, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = BoxError;
    type Future = futures_util::future::BoxFuture<'static, Result<Reply, BoxError>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call) -> Self::Future {
        if call.context().metadata().get_str("token") != Some("s3cr3t") {
            let refusal = Status::unauthenticated("no valid token");
            return Box::pin(async move { Err(refusal.into()) });
        }
        call.metadata_mut().remove("token");
        call.metadata_mut().insert("user", "alice");
        Box::pin(self.0.call(call))
    }
}

#[tokio::test]
async fn an_auth_layer_refuses_with_a_status_and_names_the_user_to_the_handler() {
    let vault = serve(Server::builder().layer(tower::layer::layer_fn(Auth))).await;
    let client = connect(vault.addr).await;
    match client.whoami().await {
        Err(RpcError::Unauthenticated { message, .. }) => assert_eq!(message, "no valid token"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let user = client.with_metadata("token", "s3cr3t").whoami().await;
    assert_eq!(user.expect("the same connection, with a token"), "alice");
}

/// What an audit layer saw of one call.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    method: &'static str,
    from: Option<SocketAddr>,
    arguments: Vec<u8>,
    ok: bool,
    result: Option<Vec<u8>>,
    /// How the call, the rest of the stack and the reply show themselves (`Debug`).
    shown: String,
}

/// Records every call and how it ended.
#[derive(Clone, Default)]
struct Audit(Arc<Mutex<Vec<Entry>>>);

impl Layer<Next> for Audit {
    type Service = Audited;

    fn layer(&self, next: Next) -> Audited {
        Audited {
            log: self.clone(),
            next,
        }
    }
}

struct Audited {
    log: Audit,
    next: Next,
}

impl Service<Call> for Audited {
    type Response = Reply;
    type Error = BoxError;
    type Future = futures_util::future::BoxFuture<'static, Result<Reply, BoxError>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.next.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let log = self.log.clone();
        let (method, from) = (call.context().method(), call.context().peer_addr());
        let arguments = call.encoded_arguments().to_vec();
        let shown = format!("{call:?} to {:?}", self.next);
        let reply = self.next.call(call);
        Box::pin(async move {
            let reply = reply.await?;
            let (ok, result) = (reply.is_ok(), reply.encoded_result());
            log.0.lock().expect("the log").push(Entry {
                method,
                from,
                arguments,
                ok,
                result,
                shown: format!("{shown}: {reply:?}"),
            });
            Ok(reply)
        })
    }
}

#[tokio::test]
async fn an_audit_layer_sees_method_peer_arguments_and_outcome_of_every_call() {
    let audit = Audit::default();
    let builder = Server::builder().layer(audit.clone());
    let shown = format!("{builder:?}");
    assert!(shown.contains("layers: Layers(1)"), "{shown}");
    let vault = serve(builder).await;
    let client = connect(vault.addr).await;
    assert_eq!(client.add(2, -3).await.expect("adds"), -1);
    let items: Vec<u32> = client
        .count(3)
        .await
        .expect("streams")
        .map(|item| item.expect("an item"))
        .collect()
        .await;
    assert_eq!(
        items,
        [0, 1, 2],
        "a streamed result goes through the layers too"
    );

    let log = audit.0.lock().expect("the log").clone();
    assert_eq!(log.len(), 2);
    // postcard: zigzag varints, 2 → 4 and -3 → 5; then a varint 3.
    assert_eq!(log[0].arguments, [4, 5]);
    assert_eq!(log[1].arguments, [3]);
    assert_eq!([log[0].method, log[1].method], ["add", "count"]);
    assert!(log.iter().all(|entry| entry.ok && entry.from.is_some()));
    assert_eq!(log[0].result, Some(vec![1]), "-1, zigzag-encoded");
    assert_eq!(
        log[1].result, None,
        "a streamed result is sent after the reply"
    );
    let shown = &log[0].shown;
    assert!(
        shown.starts_with(r#"Call { service: "Vault", method: "add", request_id: "#)
            && shown.ends_with("arguments: 2, .. } to Next: Reply { ok: true, .. }"),
        "{shown}"
    );
}

/// A layer sees a result large enough to be sent from its own memory as the very bytes of its
/// encoding, and a call that failed (its result too large for its client) as failed, with no
/// result.
#[tokio::test]
async fn a_layer_sees_a_large_result_and_a_failed_call_as_they_are() {
    let audit = Audit::default();
    let vault = serve(Server::builder().layer(audit.clone())).await;
    let client = connect(vault.addr).await;
    let blob = client.blob(100_000).await.expect("a blob");
    let small = VaultClient::builder()
        .max_frame_len(1024)
        .connect(vault.addr);
    let small = within("connecting", small).await.expect("connects");
    let failed = small.blob(2000).await;
    assert!(
        matches!(&failed, Err(RpcError::Server { .. })),
        "{failed:?}"
    );

    let log = audit.0.lock().expect("the log").clone();
    assert_eq!([log[0].method, log[1].method], ["blob", "blob"]);
    assert!(log[0].ok);
    let encoded = postcard::to_stdvec(&blob).expect("encodes");
    assert!(
        log[0].result.as_ref() == Some(&encoded),
        "the blob's encoding, whole"
    );
    assert!(
        !log[1].ok,
        "a result too large for its client failed the call"
    );
    assert_eq!(log[1].result, None);
}

/// A method and its encoded arguments.
type CacheKey = (&'static str, Vec<u8>);

/// Answers a call it has answered before from what it kept, without the handler.
#[derive(Clone, Default)]
struct Cache(Arc<Mutex<HashMap<CacheKey, Vec<u8>>>>);

impl Layer<Next> for Cache {
    type Service = Cached;

    fn layer(&self, next: Next) -> Cached {
        Cached {
            kept: self.clone(),
            next,
        }
    }
}

struct Cached {
    kept: Cache,
    next: Next,
}

impl Service<Call> for Cached {
    type Response = Reply;
    type Error = BoxError;
    type Future = futures_util::future::BoxFuture<'static, Result<Reply, BoxError>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.next.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let key = (call.context().method(), call.encoded_arguments().to_vec());
        if let Some(result) = self.kept.0.lock().expect("the cache").get(&key) {
            let reply = Reply::from_encoded(&call, result);
            return Box::pin(async move { Ok(reply) });
        }
        let kept = self.kept.clone();
        let reply = self.next.call(call);
        Box::pin(async move {
            let reply = reply.await?;
            if let Some(result) = reply.encoded_result() {
                kept.0.lock().expect("the cache").insert(key, result);
            }
            Ok(reply)
        })
    }
}

#[tokio::test]
async fn a_caching_layer_answers_a_repeated_call_without_its_handler() {
    let vault = serve(Server::builder().layer(Cache::default())).await;
    let client = connect(vault.addr).await;
    assert_eq!(client.add(20, 22).await.expect("adds"), 42);
    assert_eq!(client.add(20, 22).await.expect("from the cache"), 42);
    assert_eq!(client.add(1, 2).await.expect("other arguments"), 3);
    assert_eq!(
        vault.adds.load(Ordering::SeqCst),
        2,
        "the repeated call never ran"
    );
}

#[tokio::test]
async fn a_layers_own_error_reaches_the_client_as_internal_without_its_text() {
    let failing = tower::layer::layer_fn(|_next: Next| {
        tower::service_fn(|_call: Call| async {
            Err::<Reply, BoxError>("the database password is hunter2".into())
        })
    });
    let vault = serve(Server::builder().layer(failing)).await;
    let client = connect(vault.addr).await;
    for _ in 0..2 {
        match client.add(1, 2).await {
            Err(RpcError::Refused {
                status, message, ..
            }) => {
                assert_eq!(status, StatusCode::Internal);
                assert!(!message.contains("hunter2"), "leaked: {message}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(vault.adds.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn layers_run_in_order_inside_the_interceptor() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let mark = |name: &'static str| {
        let order = Arc::clone(&order);
        tower::layer::layer_fn(move |next: Next| {
            let order = Arc::clone(&order);
            tower::util::MapRequestLayer::new(move |call: Call| {
                order.lock().expect("the order").push(name);
                call
            })
            .layer(next)
        })
    };
    let intercepted = Arc::clone(&order);
    let builder = Server::builder()
        .intercept(move |_| {
            intercepted.lock().expect("the order").push("interceptor");
            Ok(())
        })
        .layer(mark("outer"))
        .layer(mark("inner"));
    let vault = serve(builder).await;
    let client = connect(vault.addr).await;
    assert_eq!(client.add(1, 2).await.expect("adds"), 3);
    assert_eq!(
        *order.lock().expect("the order"),
        ["interceptor", "outer", "inner"]
    );
}

#[tokio::test]
async fn a_client_is_a_tower_service_of_its_request_enum() {
    let vault = serve(Server::builder()).await;
    let client = connect(vault.addr).await;
    let mut service = ServiceBuilder::new()
        .concurrency_limit(4)
        .timeout(Duration::from_secs(30))
        .service(client);
    let answer = service
        .ready()
        .await
        .expect("ready")
        .call(VaultRequest::Add { a: 2, b: 3 })
        .await
        .expect("answers");
    assert!(matches!(answer, VaultResponse::Add(5)), "the sum");

    let streamed = service
        .ready()
        .await
        .expect("ready")
        .call(VaultRequest::Count { count: 2 })
        .await
        .expect("answers");
    let VaultResponse::Count(items) = streamed else {
        panic!("the response of another method");
    };
    let items: Vec<u32> = items.map(|item| item.expect("an item")).collect().await;
    assert_eq!(items, [0, 1]);
}
