//! The label sets of the metrics, each made once for the process, and the metrics registered
//! by keys that borrow them. `metrics::counter!` with labels that are not literals builds them
//! into a new vector at each use: a dozen allocations per call, whether a recorder is installed
//! or not. What is recorded at every call or read registers its handles once instead
//! ([`super::meters`]); what is rare registers them here each time.

use std::collections::HashMap;
use std::sync::{OnceLock, PoisonError, RwLock};

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata};

/// What the `metrics` macros would say of a metric recorded in `rpc_core::telemetry`.
static METADATA: Metadata<'static> = Metadata::new(
    "rpc_core::telemetry",
    Level::INFO,
    Some("rpc_core::telemetry"),
);

type Sets = HashMap<Box<[(&'static str, &'static str)]>, &'static [Label]>;

/// The label set of `pairs`, made on its first use and kept for the process. Label values
/// are names the program holds for ever (a side, its services' and methods' names, status
/// codes), so there are a few sets per method, as a recorder keeps a few series.
pub(crate) fn of(pairs: &[(&'static str, &'static str)]) -> &'static [Label] {
    static SETS: OnceLock<RwLock<Sets>> = OnceLock::new();
    let sets = SETS.get_or_init(RwLock::default);
    if let Some(labels) = sets
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(pairs)
    {
        return labels;
    }
    let mut sets = sets.write().unwrap_or_else(PoisonError::into_inner);
    sets.entry(pairs.into()).or_insert_with(|| {
        let labels: Box<[Label]> = pairs
            .iter()
            .map(|&(key, value)| Label::from_static_parts(key, value))
            .collect();
        Box::leak(labels)
    })
}

pub(crate) fn counter(name: &'static str, labels: &'static [Label]) -> Counter {
    let key = Key::from_static_parts(name, labels);
    metrics::with_recorder(|recorder| recorder.register_counter(&key, &METADATA))
}

pub(crate) fn gauge(name: &'static str, labels: &'static [Label]) -> Gauge {
    let key = Key::from_static_parts(name, labels);
    metrics::with_recorder(|recorder| recorder.register_gauge(&key, &METADATA))
}

pub(crate) fn histogram(name: &'static str, labels: &'static [Label]) -> Histogram {
    let key = Key::from_static_parts(name, labels);
    metrics::with_recorder(|recorder| recorder.register_histogram(&key, &METADATA))
}
