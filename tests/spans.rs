//! Every call has a span on each side, in OpenTelemetry's terms for RPC, under its connection's
//! span on the server; handler code runs inside the server's span; the outcome is recorded
//! when the call ends.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rpc_core::RpcError;
use rpc_tests::greeter::{self, GreeterClient};
use rpc_tests::within;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A span as a test sees it.
#[derive(Debug, Clone, Default)]
struct Seen {
    name: &'static str,
    parent: Option<u64>,
    fields: BTreeMap<String, String>,
    closed: bool,
}

/// An event's message, and the span it happened in.
type SeenEvent = (String, Option<u64>);

/// Every span and event, recorded for the test to look at.
#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<BTreeMap<u64, Seen>>>,
    events: Arc<Mutex<Vec<SeenEvent>>>,
}

/// Fields as text.
struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, context: Context<'_, S>) {
        let mut seen = Seen {
            name: attributes.metadata().name(),
            parent: context
                .span(id)
                .and_then(|span| span.parent())
                .map(|parent| parent.id().into_u64()),
            ..Seen::default()
        };
        attributes.record(&mut Fields(&mut seen.fields));
        self.spans
            .lock()
            .expect("spans")
            .insert(id.into_u64(), seen);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(seen) = self.spans.lock().expect("spans").get_mut(&id.into_u64()) {
            values.record(&mut Fields(&mut seen.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, context: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let message = fields.remove("message").unwrap_or_default();
        let span = context.event_span(event).map(|span| span.id().into_u64());
        self.events.lock().expect("events").push((message, span));
    }

    fn on_close(&self, id: Id, _: Context<'_, S>) {
        if let Some(seen) = self.spans.lock().expect("spans").get_mut(&id.into_u64()) {
            seen.closed = true;
        }
    }
}

impl Capture {
    /// The closed call spans of `kind` (client or server) for `method`, with their ids.
    fn calls(&self, kind: &str, method: &str) -> Vec<(u64, Seen)> {
        let spans = self.spans.lock().expect("spans");
        spans
            .iter()
            .filter(|(_, seen)| {
                seen.name == "rpc.call"
                    && seen.fields.get("otel.kind").map(String::as_str) == Some(kind)
                    && seen.fields.get("rpc.method").map(String::as_str) == Some(method)
            })
            .map(|(id, seen)| (*id, seen.clone()))
            .collect()
    }

    fn span(&self, id: u64) -> Seen {
        self.spans.lock().expect("spans")[&id].clone()
    }
}

/// A client of the greeter at `addr`, which has greeted Ada once.
async fn greeted_ada(addr: std::net::SocketAddr) -> GreeterClient {
    let client = within("connecting", GreeterClient::connect(addr))
        .await
        .expect("connects");
    assert_eq!(
        client.greet("Ada".into()).await.expect("a call"),
        "hello, Ada"
    );
    client
}

/// All on one thread, so that the subscriber set for this test sees both sides.
#[tokio::test]
async fn each_call_has_a_span_on_each_side_with_its_outcome() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let addr = greeter::serve(rpc_tests::refusing("secret"), "127.0.0.1:0").await;
    let client = greeted_ada(addr).await;
    let refused = client.secret().await;
    assert!(
        matches!(refused, Err(RpcError::PermissionDenied { .. })),
        "{refused:?}"
    );
    drop(client);

    // The server's span for `greet`: its fields, its outcome, its connection.
    let served = capture.calls("server", "greet");
    assert_eq!(served.len(), 1, "one server span: {served:?}");
    let (server_span, seen) = &served[0];
    assert_eq!(seen.fields["rpc.system"], "rpc-core");
    assert_eq!(seen.fields["rpc.service"], "Greeter");
    assert!(seen.fields.contains_key("rpc.request_id"), "{seen:?}");
    assert_eq!(seen.fields["rpc.status_code"], "0");
    assert!(seen.closed, "closed when the call ended");
    let connection = capture.span(seen.parent.expect("under its connection"));
    assert_eq!(connection.name, "rpc.connection");
    assert_eq!(
        connection.fields["rpc.service"], "Greeter",
        "{connection:?}"
    );
    assert!(
        connection.fields["client.address"].starts_with("127.0.0.1:"),
        "{connection:?}"
    );

    // The handler's own logs are inside the server's span, before its first yield and after,
    // when the call runs on in a task of its own.
    let events = capture.events.lock().expect("events").clone();
    for logged in ["greeting", "greeted"] {
        let event = events
            .iter()
            .find(|(message, _)| message == logged)
            .expect("the handler's event");
        assert_eq!(event.1, Some(*server_span), "{logged}");
    }

    // The client's span for `greet`.
    let called = capture.calls("client", "greet");
    assert_eq!(called.len(), 1, "one client span: {called:?}");
    assert_eq!(called[0].1.fields["rpc.service"], "Greeter");
    assert_eq!(called[0].1.fields["rpc.status_code"], "0");

    // The refused call: an error on both sides, with the status code on the server.
    let refused = capture.calls("server", "secret");
    assert_eq!(refused[0].1.fields["rpc.status_code"], "11");
    assert_eq!(refused[0].1.fields["otel.status_code"], "ERROR");
    let failed = capture.calls("client", "secret");
    assert_eq!(failed[0].1.fields["otel.status_code"], "ERROR");
    assert!(
        failed[0].1.fields["otel.status_description"].contains("not for you"),
        "{:?}",
        failed[0].1
    );
}

/// A subscriber that keeps rpc-core's target below `INFO` out, as README's Observability
/// suggests for a program that wants its own logs and not the spans' cost, gets no span of a
/// call or a connection, while the handler's own logs still reach it.
#[tokio::test]
async fn a_filter_on_rpc_cores_target_leaves_its_spans_out() {
    let capture = Capture::default();
    let filter = Targets::new()
        .with_default(Level::INFO)
        .with_target("rpc_core", Level::WARN);
    let subscriber = tracing_subscriber::registry().with(capture.clone().with_filter(filter));
    let _guard = tracing::subscriber::set_default(subscriber);

    let addr = greeter::serve(rpc_core::Server::builder(), "127.0.0.1:0").await;
    let client = greeted_ada(addr).await;
    drop(client);

    let spans = capture.spans.lock().expect("spans").clone();
    assert!(spans.is_empty(), "no span of rpc-core's: {spans:?}");
    let events = capture.events.lock().expect("events").clone();
    for logged in ["greeting", "greeted"] {
        assert!(
            events
                .iter()
                .any(|(message, span)| message == logged && span.is_none()),
            "the handler's {logged:?}, in no span: {events:?}"
        );
    }
}

#[tokio::test]
async fn a_streamed_calls_client_span_lasts_until_its_stream_ends() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let addr = greeter::serve(rpc_core::Server::builder(), "127.0.0.1:0").await;
    let client = within("connecting", GreeterClient::connect(addr))
        .await
        .expect("connects");
    let mut numbers = client.count(3).await.expect("a stream");
    assert_eq!(numbers.next().await.expect("an item").expect("a number"), 0);

    let called = capture.calls("client", "count");
    assert_eq!(called.len(), 1, "one client span: {called:?}");
    let (_, open) = &called[0];
    assert!(!open.closed, "open while the stream runs: {open:?}");
    assert!(!open.fields.contains_key("rpc.status_code"), "{open:?}");

    while let Some(item) = numbers.next().await {
        item.expect("a number");
    }
    let (_, ended) = &capture.calls("client", "count")[0];
    assert!(ended.closed, "closed once the stream ended: {ended:?}");
    assert_eq!(ended.fields["rpc.status_code"], "0");
}
