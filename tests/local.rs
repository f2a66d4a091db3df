//! In-process clients: the same generated client type, calling the implementation directly,
//! with the deadline, cancellation and context of a remote call.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use rpc_core::{Context, RpcError, ServiceClient, Streaming};
use rpc_tests::within;
use tokio::sync::{Notify, Semaphore};

#[rpc_core::service]
pub trait Depot {
    async fn add(&self, a: i64, b: i64) -> i64;
    async fn whoami(&self) -> String;
    async fn stall(&self);
    async fn explode(&self) -> u8;
    async fn count(&self, to: u32) -> Streaming<u32>;
    async fn sum(&self, items: Streaming<u32>) -> u64;
    async fn bytes(&self, data: Vec<u8>) -> Vec<u8>;
}

#[derive(Clone)]
struct MyDepot {
    started: Arc<Semaphore>,
    dropped: Arc<AtomicUsize>,
    never: Arc<Notify>,
}

impl Default for MyDepot {
    fn default() -> Self {
        MyDepot {
            started: Arc::new(Semaphore::new(0)),
            dropped: Arc::default(),
            never: Arc::default(),
        }
    }
}

/// Counts the handlers dropped before they finished.
struct DropGuard(Arc<AtomicUsize>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Depot for MyDepot {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn whoami(&self) -> String {
        let call = Context::current();
        assert_eq!(call.service(), "Depot");
        assert_eq!(call.method(), "whoami");
        assert!(call.deadline().is_some());
        assert_eq!(call.peer_addr(), None);
        call.metadata()
            .get_str("user")
            .unwrap_or("nobody")
            .to_owned()
    }

    async fn stall(&self) {
        let _guard = DropGuard(Arc::clone(&self.dropped));
        self.started.add_permits(1);
        self.never.notified().await;
    }

    async fn explode(&self) -> u8 {
        panic!("the depot exploded")
    }

    async fn count(&self, to: u32) -> Streaming<u32> {
        Streaming::iter(0..to)
    }

    async fn sum(&self, mut items: Streaming<u32>) -> u64 {
        let mut sum = 0;
        while let Some(Ok(item)) = StreamExt::next(&mut items).await {
            sum += u64::from(item);
        }
        sum
    }

    async fn bytes(&self, mut data: Vec<u8>) -> Vec<u8> {
        data.reverse();
        data
    }
}

#[tokio::test]
async fn a_local_client_is_the_same_type_and_calls_directly() {
    let client: DepotClient = DepotClient::local(MyDepot::default());
    assert!(client.channel().is_local());
    let shown = format!("{:?}", client.channel());
    assert!(
        shown.starts_with(r#"Channel { local: Local { service: "Depot", .. }"#),
        "{shown}"
    );
    assert_eq!(client.add(2, 3).await.expect("adds"), 5);
    assert_eq!(client.bytes(vec![1, 2, 3]).await.expect("bytes"), [3, 2, 1]);
    let items: Vec<u32> = client
        .count(3)
        .await
        .expect("streams")
        .map(|item| item.expect("an item"))
        .collect()
        .await;
    assert_eq!(items, [0, 1, 2]);
    let sum = client.sum(Streaming::iter([1, 2, 39])).await.expect("sums");
    assert_eq!(sum, 42);
    let schema = client.channel().describe().await.expect("its own schema");
    assert_eq!(schema.name, "Depot");
}

#[tokio::test]
async fn a_local_call_carries_metadata_and_a_context() {
    let client = DepotClient::builder()
        .metadata("user", "ada")
        .local(DepotServer::new(MyDepot::default()));
    assert_eq!(client.whoami().await.expect("a context"), "ada");
    let other = client.with_metadata("user", "grace");
    assert_eq!(other.whoami().await.expect("a context"), "grace");
}

#[tokio::test]
async fn a_local_call_past_its_deadline_is_dropped() {
    let depot = MyDepot::default();
    let client = DepotClient::local(depot.clone()).with_deadline(Duration::from_millis(50));
    match within("the deadline", client.stall()).await {
        Err(RpcError::DeadlineExceeded { method, deadline }) => {
            assert_eq!(method, "stall");
            assert_eq!(deadline, Duration::from_millis(50));
        }
        other => panic!("expected an expired deadline, got {other:?}"),
    }
    assert_eq!(
        depot.dropped.load(Ordering::SeqCst),
        1,
        "the handler was dropped"
    );
}

#[tokio::test]
async fn dropping_a_local_call_cancels_its_handler() {
    let depot = MyDepot::default();
    let client = DepotClient::local(depot.clone());
    let call = tokio::spawn(async move { client.stall().await });
    within("the handler to start", depot.started.acquire())
        .await
        .expect("started")
        .forget();
    call.abort();
    let _ = call.await;
    assert_eq!(
        depot.dropped.load(Ordering::SeqCst),
        1,
        "the handler was dropped"
    );
}

#[tokio::test]
async fn a_local_handler_that_panics_fails_its_call_alone() {
    let client = DepotClient::local(MyDepot::default());
    match client.explode().await {
        Err(RpcError::HandlerPanicked {
            method, message, ..
        }) => {
            assert_eq!(method, "explode");
            assert_eq!(message.as_deref(), Some("the depot exploded"));
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    assert_eq!(client.add(1, 1).await.expect("still serves"), 2);
}

#[tokio::test]
async fn a_local_streamed_result_is_read_within_the_deadline() {
    #[rpc_core::service]
    pub trait Ticker {
        async fn forever(&self) -> Streaming<u32>;
    }
    struct Endless;
    impl Ticker for Endless {
        async fn forever(&self) -> Streaming<u32> {
            Streaming::new(futures_util::stream::pending())
        }
    }
    let client = TickerClient::local(Endless).with_deadline(Duration::from_millis(50));
    let mut items = client.forever().await.expect("a stream");
    match within("the deadline", StreamExt::next(&mut items)).await {
        Some(Err(RpcError::DeadlineExceeded { method, .. })) => assert_eq!(method, "forever"),
        other => panic!("expected an expired deadline, got {other:?}"),
    }
    assert!(
        StreamExt::next(&mut items).await.is_none(),
        "then the stream ends"
    );
}
