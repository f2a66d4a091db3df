//! With the `opentelemetry` feature, a call carries its client span's W3C trace context in its
//! metadata, and the server's span continues that trace: checked with an in-memory exporter.

use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use rpc_core::{Context, Server};
use rpc_tests::within;
use tracing_subscriber::layer::SubscriberExt;

#[rpc_core::service]
pub trait Greeter {
    /// Greets `name`, and says what trace context the call carried.
    async fn greet(&self, name: String) -> (String, Option<String>);
}

struct MyGreeter;

impl Greeter for MyGreeter {
    async fn greet(&self, name: String) -> (String, Option<String>) {
        let call = Context::current();
        let traceparent = call.metadata().get_str("traceparent").map(str::to_owned);
        (format!("hello, {name}"), traceparent)
    }
}

/// All on one thread, so that the subscriber set for this test sees both sides.
#[tokio::test]
async fn the_server_span_continues_the_client_span_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("rpc-tests"));
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));

    let server = Server::bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("an address");
    tokio::spawn(server.serve(GreeterServer::new(MyGreeter)));
    let client = within("connecting", GreeterClient::connect(addr))
        .await
        .expect("connects");
    let (greeting, traceparent) = client.greet("Ada".into()).await.expect("a call");
    assert_eq!(greeting, "hello, Ada");
    let traceparent = traceparent.expect("the call carried a traceparent");
    drop(client);

    let spans = exporter.get_finished_spans().expect("the finished spans");
    let of_kind = |kind: SpanKind| {
        spans
            .iter()
            .find(|span| span.name == "rpc.call" && span.span_kind == kind)
            .unwrap_or_else(|| panic!("a {kind:?} span among {spans:#?}"))
    };
    let (client_span, server_span) = (of_kind(SpanKind::Client), of_kind(SpanKind::Server));
    assert_eq!(
        server_span.span_context.trace_id(),
        client_span.span_context.trace_id(),
        "one trace"
    );
    assert_eq!(
        server_span.parent_span_id,
        client_span.span_context.span_id(),
        "the server's span is the client's child"
    );
    // W3C: version 00, the trace id, the client span's id, the flags.
    let expected = format!(
        "00-{}-{}-",
        client_span.span_context.trace_id(),
        client_span.span_context.span_id()
    );
    assert!(traceparent.starts_with(&expected), "{traceparent}");
}
