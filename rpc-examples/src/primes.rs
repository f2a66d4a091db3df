//! The work of the `dispatch` example: counting primes in ranges, spread over worker processes.

use serde::{Deserialize, Serialize};

/// What a worker answers for one range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counted {
    /// The process id of the worker that counted.
    pub worker: u32,
    /// How many primes the range holds.
    pub primes: u64,
}

/// A worker process of the dispatch example.
#[rpc_core::service]
pub trait PrimeWorker {
    /// Counts the primes in `from..to`. Idempotent: counting twice does no harm, so a call
    /// lost with its worker is made again on another.
    #[rpc(idempotent)]
    async fn count_primes(&self, from: u64, to: u64) -> Counted;
}

/// Counts primes for its process.
#[derive(Debug)]
pub struct Counter;

impl PrimeWorker for Counter {
    async fn count_primes(&self, from: u64, to: u64) -> Counted {
        Counted {
            worker: std::process::id(),
            primes: count_primes(from, to),
        }
    }
}

/// How many primes `from..to` holds, by a sieve of that segment.
pub fn count_primes(from: u64, to: u64) -> u64 {
    if to <= from {
        return 0;
    }
    let mut composite = vec![false; (to - from) as usize];
    let mut divisor = 2u64;
    while divisor * divisor < to {
        // The first multiple of `divisor` in the range that is not `divisor` itself.
        let first = (from.div_ceil(divisor) * divisor).max(divisor * divisor);
        let mut multiple = first;
        while multiple < to {
            composite[(multiple - from) as usize] = true;
            multiple += divisor;
        }
        divisor += 1;
    }
    (from..to)
        .zip(composite)
        .filter(|&(n, composite)| n >= 2 && !composite)
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::count_primes;

    #[test]
    fn counts_primes_in_segments() {
        assert_eq!(count_primes(0, 10), 4);
        assert_eq!(count_primes(0, 100), 25);
        assert_eq!(count_primes(0, 1_000_000), 78_498);
        let by_segments: u64 = (0..100)
            .map(|i| count_primes(i * 1000, i * 1000 + 1000))
            .sum();
        assert_eq!(by_segments, 9_592, "the primes below 100,000");
    }
}
