//! The handles of the metrics recorded at every call and every read or write, registered once
//! and kept: registering looks a metric up by its name and labels, in rpc-core's table of label
//! sets and then in the recorder's, under their locks, which every call on every thread would
//! otherwise do several times over (BENCHMARKS.md says what that cost).
//!
//! As with any handle of the `metrics` facade, what is registered stays with the recorder
//! installed then: a channel's or server's, when it first calls or serves each method; a
//! connection's, when it opens. Install the recorder before the first connection.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Label};

use super::{Side, labels};

/// The values of a finished call's `code` label: the status codes of docs/wire.md by number,
/// then any other, then a call dropped before it ended and a failure on a client.
const CODES: [&str; 20] = [
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    "10",
    "11",
    "12",
    "13",
    "14",
    "15",
    "16",
    "other",
    "cancelled",
    "error",
];

/// Where a call's end is among [`CODES`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Code(usize);

impl Code {
    /// A call dropped before it ended.
    pub(crate) const CANCELLED: Code = Code(18);
    /// A call that failed on a client.
    pub(crate) const ERROR: Code = Code(19);

    /// The call ended with status `code`.
    pub(crate) fn of(code: u32) -> Code {
        const OTHER: usize = 17;
        Code(usize::try_from(code).map_or(OTHER, |code| code.min(OTHER)))
    }
}

/// One method's call metrics on one side: `rpc_calls_started_total`, `rpc_calls_in_flight`,
/// `rpc_call_duration_seconds`, and `rpc_calls_finished_total` by code, each code's counter
/// registered when a call first ends with it.
///
/// Every client keeps one of these for each method it calls, so every idle client connection
/// made by a client of its own holds one: the counters of codes other than `0` are a table
/// made only when a call first ends with one of them (in place, the twenty took 480 bytes of
/// every such connection, which the benchmark's *heap per idle connection* counted).
#[derive(Debug)]
pub(crate) struct CallMeters {
    /// `side`, `service` and `method`, to which a finished call's code is added.
    side: &'static str,
    service: &'static str,
    method: &'static str,
    started: Counter,
    in_flight: Gauge,
    duration: Histogram,
    /// The counter of calls that ended with code `0`, as most do.
    finished_ok: OnceLock<Counter>,
    /// The counters of every other code, by their place in [`CODES`] (the first unused).
    finished_otherwise: OnceLock<Box<[OnceLock<Counter>; CODES.len()]>>,
}

impl CallMeters {
    fn register(side: Side, service: &'static str, method: &'static str) -> Self {
        let side = side.label();
        let of_method = labels::of(&[("side", side), ("service", service), ("method", method)]);
        let of_service = labels::of(&[("side", side), ("service", service)]);
        CallMeters {
            side,
            service,
            method,
            started: labels::counter("rpc_calls_started_total", of_method),
            in_flight: labels::gauge("rpc_calls_in_flight", of_service),
            duration: labels::histogram("rpc_call_duration_seconds", of_method),
            finished_ok: OnceLock::new(),
            finished_otherwise: OnceLock::new(),
        }
    }

    /// A call started.
    fn started(&self) {
        self.started.increment(1);
        self.in_flight.increment(1.0);
    }

    /// A call that started `took` ago ended with `code`.
    fn finished(&self, code: Code, took: Duration) {
        let slot = match code.0 {
            0 => &self.finished_ok,
            other => &self.finished_otherwise.get_or_init(Box::default)[other],
        };
        let counter = slot.get_or_init(|| {
            let labels: &'static [Label] = labels::of(&[
                ("side", self.side),
                ("service", self.service),
                ("method", self.method),
                ("code", CODES[code.0]),
            ]);
            labels::counter("rpc_calls_finished_total", labels)
        });
        counter.increment(1);
        self.duration.record(took.as_secs_f64());
        self.in_flight.decrement(1.0);
    }
}

/// How many methods' handles one [`Segment`] of a [`Meters`] keeps: a few, in place in every
/// client's (and so in every idle connection of a client of its own, which the benchmark's *heap
/// per idle connection* counts), the next few in a segment made when they are filled. Sixteen
/// in place took 768 bytes of every such connection, most clients calling only a few methods.
const SEGMENT: usize = 4;

/// The [`CallMeters`] of the methods one channel or server calls or serves, each registered at
/// its first call and found by its names after that, with no lock: a method's entry, once
/// filled, never changes. The methods are the program's own, named by its code, so there are
/// as many entries as it has methods at most.
#[derive(Debug)]
pub(crate) struct Meters {
    side: Side,
    first: Segment,
}

/// Room for [`SEGMENT`] methods' meters, and the next segment once they are filled.
#[derive(Debug, Default)]
struct Segment {
    kept: [OnceLock<Kept>; SEGMENT],
    next: OnceLock<Box<Segment>>,
}

#[derive(Debug)]
struct Kept {
    service: &'static str,
    method: &'static str,
    meters: Arc<CallMeters>,
}

impl Kept {
    /// Whether this is `service`'s `method`: the same names, most often at the same place.
    fn is(&self, service: &str, method: &str) -> bool {
        let same = |kept: &str, name: &str| std::ptr::eq(kept, name) || kept == name;
        same(self.method, method) && same(self.service, service)
    }
}

impl Meters {
    /// No method's meters yet, for calls on `side`.
    pub(crate) fn new(side: Side) -> Self {
        Meters {
            side,
            first: Segment::default(),
        }
    }

    /// The meters of `service`'s `method`, registered if this is its first call here.
    pub(crate) fn of(&self, service: &'static str, method: &'static str) -> Arc<CallMeters> {
        let mut segment = &self.first;
        loop {
            for slot in &segment.kept {
                let kept = match slot.get() {
                    Some(kept) => kept,
                    // The first free slot: filled with this method's, unless another call fills
                    // it first (with its own method's, perhaps).
                    None => slot.get_or_init(|| Kept {
                        service,
                        method,
                        meters: Arc::new(CallMeters::register(self.side, service, method)),
                    }),
                };
                if kept.is(service, method) {
                    return Arc::clone(&kept.meters);
                }
            }
            segment = segment.next.get_or_init(Box::default);
        }
    }
}

/// A call's meters and when it started, until it ends.
#[derive(Debug)]
pub(crate) struct Running {
    meters: Arc<CallMeters>,
    started: Instant,
}

impl Running {
    /// A call of `service`'s `method` started at `started`, counted in `meters`.
    pub(crate) fn start(
        meters: &Meters,
        service: &'static str,
        method: &'static str,
        started: Instant,
    ) -> Self {
        let meters = meters.of(service, method);
        meters.started();
        Running { meters, started }
    }

    /// The call ended with `code`.
    pub(crate) fn end(&self, code: Code) {
        self.meters.finished(code, self.started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Code, Meters};
    use crate::telemetry::Side;

    #[test]
    fn a_status_code_is_its_own_label_and_any_other_is_other() {
        assert_eq!(super::CODES[Code::of(0).0], "0");
        assert_eq!(super::CODES[Code::of(16).0], "16");
        assert_eq!(super::CODES[Code::of(17).0], "other");
        assert_eq!(super::CODES[Code::of(u32::MAX).0], "other");
        assert_eq!(super::CODES[Code::CANCELLED.0], "cancelled");
        assert_eq!(super::CODES[Code::ERROR.0], "error");
    }

    /// A method's meters are registered once and found again, however many methods come
    /// before it.
    #[test]
    fn a_methods_meters_are_kept_and_found_by_its_names() {
        let meters = Meters::new(Side::Server);
        let first = meters.of("Calc", "add");
        assert!(Arc::ptr_eq(&first, &meters.of("Calc", "add")));
        assert!(!Arc::ptr_eq(&first, &meters.of("Calc", "sub")));
        assert!(!Arc::ptr_eq(&first, &meters.of("Other", "add")));
        // The same name, made at another place, is the same method.
        let elsewhere: &'static str = Box::leak(String::from("add").into_boxed_str());
        assert!(Arc::ptr_eq(&first, &meters.of("Calc", elsewhere)));
        let names: Vec<&'static str> = (0..3 * super::SEGMENT)
            .map(|n| &*Box::leak(format!("m{n}").into_boxed_str()))
            .collect();
        let kept: Vec<_> = names.iter().map(|name| meters.of("Calc", name)).collect();
        for (name, kept) in names.iter().zip(&kept) {
            assert!(Arc::ptr_eq(kept, &meters.of("Calc", name)), "{name}");
        }
        assert!(Arc::ptr_eq(&first, &meters.of("Calc", "add")));
    }

    /// A call records through the handles its method's first call registered, in the recorder
    /// installed then: registering at each call again would record the second call below in
    /// the second recorder.
    #[test]
    fn a_call_records_through_the_handles_of_its_methods_first_call() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        let calls_started = |recorder: &DebuggingRecorder| -> Vec<u64> {
            let snapshot = recorder.snapshotter().snapshot().into_vec();
            snapshot
                .into_iter()
                .filter(|(key, ..)| key.key().name() == "rpc_calls_started_total")
                .filter_map(|(.., value)| match value {
                    DebugValue::Counter(count) => Some(count),
                    _ => None,
                })
                .collect()
        };
        let meters = Meters::new(Side::Client);
        let call = || {
            let started = std::time::Instant::now();
            let running = super::Running::start(&meters, "Calc", "add", started);
            running.end(Code::of(0));
        };
        let (first, second) = (DebuggingRecorder::new(), DebuggingRecorder::new());
        metrics::with_local_recorder(&first, call);
        metrics::with_local_recorder(&second, call);
        assert_eq!(calls_started(&first), [2]);
        assert_eq!(calls_started(&second), Vec::<u64>::new());
    }
}
