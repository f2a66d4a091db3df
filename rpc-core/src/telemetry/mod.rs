//! What every call and connection tells an operator: the call's span (see `tracing`), and,
//! with the `metrics` feature, its metrics through the `metrics` facade. Without the feature the
//! metric functions here are empty.
//!
//! The metrics, each labelled with `side` (`client` or `server`) and `service`:
//!
//! | metric | kind | more labels |
//! |---|---|---|
//! | `rpc_calls_started_total` | counter | `method` |
//! | `rpc_calls_finished_total` | counter | `method`, `code` (`0` for a result, else the error code of `docs/wire.md`; `cancelled` for a call dropped before it ended; on a client, `error` for any failure) |
//! | `rpc_call_duration_seconds` | histogram | `method` (on a server, from the request's arrival) |
//! | `rpc_calls_in_flight` | gauge | |
//! | `rpc_connections_open` | gauge | |
//! | `rpc_client_retries_total` | counter | `method` |
//! | `rpc_client_reconnections_total` | counter | |
//! | `rpc_client_endpoint_failures_total` | counter | (an endpoint that could not be reached, passed over while it backs off) |
//! | `rpc_bytes_received_total`, `rpc_bytes_sent_total` | counter | (the protocol's bytes, after the handshake; under TLS, before encryption) |

#[cfg(feature = "metrics")]
mod labels;
#[cfg(feature = "metrics")]
mod meters;

#[cfg(feature = "metrics")]
pub(crate) use meters::Meters;

/// The handles of the call metrics of the methods one channel or server calls: without the
/// `metrics` feature, nothing.
#[cfg(not(feature = "metrics"))]
#[derive(Debug)]
pub(crate) struct Meters;

#[cfg(not(feature = "metrics"))]
impl Meters {
    pub(crate) fn new(_side: Side) -> Self {
        Meters
    }
}

/// Which end of a call or connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Server,
}

impl Side {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    fn label(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// The status code of a call answered with its result.
pub(crate) const OK: u32 = 0;

/// Whether any subscriber may want rpc-core's spans, a connection's and a call's, which are at
/// `INFO`. When none does, none is made ([`tracing::Span::none`]): where tracing's `log` feature
/// is on (some other crate turns it on), even a span no subscriber wants checks for a logger at
/// each step of its life, made, entered, left and dropped, about 3% of a small call's work, and
/// a connection's span is entered and left at every turn of its task.
pub(crate) fn spans_wanted() -> bool {
    tracing::level_enabled!(tracing::Level::INFO)
}

/// A future polled inside a span it borrows: [`tracing::Instrument`] without the clone of the
/// span it owns, which a subscriber pays for twice (the clone and its drop each look the span
/// up in the subscriber's registry).
pub(crate) struct InSpan<'a, F> {
    span: &'a tracing::Span,
    future: F,
}

impl<'a, F> InSpan<'a, F> {
    pub(crate) fn new(span: &'a tracing::Span, future: F) -> Self {
        InSpan { span, future }
    }
}

impl<F: std::future::Future + Unpin> std::future::Future for InSpan<'_, F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.get_mut();
        let _entered = this.span.enter();
        std::pin::Pin::new(&mut this.future).poll(cx)
    }
}

/// A clone of `span` to keep beyond the code that made it, unless it is
/// [`tracing::Span::none`]: then nothing is kept, and nothing is left to drop.
pub(crate) fn kept_span(span: &tracing::Span) -> Option<tracing::Span> {
    (!span.is_none()).then(|| span.clone())
}

/// One call from its start to its end: records its outcome in its span and its metrics. Dropped
/// before [`CallEnd::finish`], the call was cancelled (the client stopped waiting, or the
/// connection ended).
#[derive(Debug)]
pub(crate) struct CallEnd {
    /// The call's span, unless it is [`tracing::Span::none`]: then nothing is kept to drop.
    span: Option<tracing::Span>,
    #[cfg(feature = "metrics")]
    running: meters::Running,
    finished: bool,
}

impl CallEnd {
    /// Counts a call of `service`'s `method` started, under `span`, in `meters`; its duration
    /// counts from what `started` says (on a server, when its request arrived), asked only when
    /// a duration is recorded.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn start(
        span: &tracing::Span,
        meters: &Meters,
        service: &'static str,
        method: &'static str,
        started: impl FnOnce() -> tokio::time::Instant,
    ) -> Self {
        CallEnd {
            span: kept_span(span),
            #[cfg(feature = "metrics")]
            running: meters::Running::start(meters, service, method, started().into_std()),
            finished: false,
        }
    }

    /// The call's span, unless it is [`tracing::Span::none`].
    pub(crate) fn span(&self) -> Option<&tracing::Span> {
        self.span.as_ref()
    }

    /// The call ended with status `code`: [`OK`], or the error code it was answered with.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn finish(mut self, code: u32) {
        // A span no subscriber wants still looks each field up by name: skipped.
        if let Some(span) = self.span.as_ref().filter(|span| !span.is_disabled()) {
            span.record("rpc.status_code", code);
            if code != OK {
                span.record("otel.status_code", "ERROR");
            }
        }
        self.finished = true;
        #[cfg(feature = "metrics")]
        self.running.end(meters::Code::of(code));
    }

    /// The call failed on the client: `error` says how.
    pub(crate) fn fail(mut self, error: &crate::RpcError) {
        if let Some(span) = &self.span {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", tracing::field::display(error));
        }
        self.finished = true;
        #[cfg(feature = "metrics")]
        self.running.end(meters::Code::ERROR);
    }
}

impl Drop for CallEnd {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        if !self.finished {
            self.running.end(meters::Code::CANCELLED);
        }
    }
}

/// One open connection, counted in `rpc_connections_open` until dropped.
#[derive(Debug)]
pub(crate) struct OpenConnection {
    /// Its `side` and `service`'s gauge.
    #[cfg(feature = "metrics")]
    open: metrics::Gauge,
}

impl OpenConnection {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(side: Side, service: &'static str) -> Self {
        #[cfg(feature = "metrics")]
        let open = labels::gauge(
            "rpc_connections_open",
            labels::of(&[("side", side.label()), ("service", service)]),
        );
        #[cfg(feature = "metrics")]
        open.increment(1.0);
        OpenConnection {
            #[cfg(feature = "metrics")]
            open,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        self.open.decrement(1.0);
    }
}

/// Which connection's bytes a reader or writer counts (`rpc_bytes_received_total`,
/// `rpc_bytes_sent_total`), through handles registered when the connection opens.
#[derive(Debug, Clone)]
pub(crate) struct Traffic {
    #[cfg(feature = "metrics")]
    received: metrics::Counter,
    #[cfg(feature = "metrics")]
    sent: metrics::Counter,
}

impl Traffic {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(side: Side, service: &'static str) -> Self {
        #[cfg(feature = "metrics")]
        let labels = labels::of(&[("side", side.label()), ("service", service)]);
        Traffic {
            #[cfg(feature = "metrics")]
            received: labels::counter("rpc_bytes_received_total", labels),
            #[cfg(feature = "metrics")]
            sent: labels::counter("rpc_bytes_sent_total", labels),
        }
    }

    /// `bytes` more were read from the connection.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn received(&self, bytes: usize) {
        #[cfg(feature = "metrics")]
        self.received.increment(bytes as u64);
    }

    /// `bytes` more were written to the connection.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn sent(&self, bytes: usize) {
        #[cfg(feature = "metrics")]
        self.sent.increment(bytes as u64);
    }
}

/// A call of `method` is made again.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn retried(service: &'static str, method: &'static str) {
    #[cfg(feature = "metrics")]
    labels::counter(
        "rpc_client_retries_total",
        labels::of(&[("service", service), ("method", method)]),
    )
    .increment(1);
}

/// A client connected again to a server it had been connected to.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn reconnected(service: &'static str) {
    #[cfg(feature = "metrics")]
    labels::counter(
        "rpc_client_reconnections_total",
        labels::of(&[("service", service)]),
    )
    .increment(1);
}

/// An endpoint could not be reached, and is passed over while it backs off.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn endpoint_failed(service: &'static str) {
    #[cfg(feature = "metrics")]
    labels::counter(
        "rpc_client_endpoint_failures_total",
        labels::of(&[("service", service)]),
    )
    .increment(1);
}

/// The server took back the memory of the frame a client of `service` was sending, and closed
/// its connection (`frame_memory.rs`).
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn frame_memory_reclaimed(service: &'static str) {
    #[cfg(feature = "metrics")]
    labels::counter(
        "rpc_server_frame_memory_reclaimed_total",
        labels::of(&[("side", "server"), ("service", service)]),
    )
    .increment(1);
}

/// What a server's connections hold for large frames past their first 64 KiB changed by
/// `held` bytes, and the connections waiting for more by `waiting` (`frame_memory.rs`): gauges
/// of the process, summed over its servers, which share no such memory but the machine's.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn frame_memory_changed(held: i64, waiting: i64) {
    #[cfg(feature = "metrics")]
    {
        let labels = labels::of(&[("side", "server")]);
        if held != 0 {
            labels::gauge("rpc_server_frame_memory_bytes", labels).increment(held as f64);
        }
        if waiting != 0 {
            labels::gauge("rpc_server_frame_memory_waiting", labels).increment(waiting as f64);
        }
    }
}

/// The server closed the connection of a client of `service` that kept its answers waiting
/// longest, while it held as many answers as it may for clients that have not read them
/// (`max_queued_bytes`, `budget.rs`).
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn unread_answers_reclaimed(service: &'static str) {
    #[cfg(feature = "metrics")]
    labels::counter(
        "rpc_server_unread_answers_reclaimed_total",
        labels::of(&[("side", "server"), ("service", service)]),
    )
    .increment(1);
}

/// The server refused a call of a client of `service` without running it: its calls held as
/// many bytes of requests as it allows (`max_argument_bytes`, `slots.rs`).
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn call_shed(service: &'static str) {
    #[cfg(feature = "metrics")]
    labels::counter(
        "rpc_server_calls_shed_total",
        labels::of(&[("side", "server"), ("service", service)]),
    )
    .increment(1);
}

/// W3C trace context in a call's metadata (feature `opentelemetry`): the client writes its
/// span's `traceparent` and `tracestate`, and the server's span continues that trace.
#[cfg(feature = "opentelemetry")]
pub(crate) mod trace_context {
    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use crate::Metadata;

    /// The OpenTelemetry context of `span`, if it belongs to a trace.
    pub(crate) fn of(span: &tracing::Span) -> Option<opentelemetry::Context> {
        let context = span.context();
        context.span().span_context().is_valid().then_some(context)
    }

    /// Writes `context` into `metadata` as `traceparent` and `tracestate`.
    pub(crate) fn write(context: &opentelemetry::Context, metadata: &mut Metadata) {
        TraceContextPropagator::new().inject_context(context, &mut Writer(metadata));
    }

    /// Makes `span` continue the trace whose context `metadata` carries, if it carries one.
    pub(crate) fn extract(metadata: &Metadata, span: &tracing::Span) {
        let parent = TraceContextPropagator::new().extract(&Reader(metadata));
        if parent.span().span_context().is_valid() {
            // Fails only for a span no OpenTelemetry layer records, which has nothing to set.
            let _ = span.set_parent(parent);
        }
    }

    struct Writer<'a>(&'a mut Metadata);

    impl Injector for Writer<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key, value);
        }
    }

    struct Reader<'a>(&'a Metadata);

    impl Extractor for Reader<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get_str(key)
        }

        fn keys(&self) -> Vec<&str> {
            self.0.iter().map(|(key, _)| key).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::InSpan;

    /// A future awaited in a span it borrows runs inside the span, and leaves it when polled.
    #[test]
    fn a_future_in_a_borrowed_span_runs_inside_it() {
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("call");
            let inside = async { tracing::Span::current().id() };
            let seen = InSpan::new(&span, std::pin::pin!(inside)).now_or_never();
            assert_eq!(seen, Some(span.id()), "the span was current inside");
            assert_eq!(tracing::Span::current().id(), None, "and is not after");
        });
    }
}
