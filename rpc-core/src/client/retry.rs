//! How much retrying a client allows itself: a budget that keeps retries a fraction of the
//! calls made, so that a failing server is not hit by a storm of retries on top of its load.

use std::sync::atomic::{AtomicU64, Ordering};

/// Retries are paid for by calls: each call deposits `ratio` of a retry, each retry withdraws
/// one, and at most `burst` retries can be saved up.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    /// Thousandths of a retry.
    balance: AtomicU64,
    deposit: u64,
    cap: u64,
}

/// What one retry costs, in thousandths.
const RETRY: u64 = 1000;

impl RetryBudget {
    /// A budget that starts full.
    pub(crate) fn new(ratio: f64, burst: u32) -> Self {
        let cap = u64::from(burst) * RETRY;
        RetryBudget {
            balance: AtomicU64::new(cap),
            deposit: (ratio.clamp(0.0, 1.0) * RETRY as f64) as u64,
            cap,
        }
    }

    /// A call was made.
    pub(crate) fn deposit(&self) {
        // Mostly the budget is full: then it is only read, and the memory every caller of the
        // channel shares here is not written, which would take it from the other cores.
        if self.balance.load(Ordering::Acquire) >= self.cap {
            return;
        }
        let _ = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |balance| {
                Some((balance + self.deposit).min(self.cap))
            });
    }

    /// Takes one retry from the budget; `false` if it cannot afford one.
    pub(crate) fn withdraw(&self) -> bool {
        self.balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |balance| {
                balance.checked_sub(RETRY)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_fraction_of_calls() {
        let budget = RetryBudget::new(0.25, 2);
        assert!(budget.withdraw());
        assert!(budget.withdraw());
        assert!(!budget.withdraw(), "the burst is spent");
        for _ in 0..3 {
            budget.deposit();
        }
        assert!(
            !budget.withdraw(),
            "three calls pay for three quarters of a retry"
        );
        budget.deposit();
        assert!(budget.withdraw(), "four pay for one");
        for _ in 0..100 {
            budget.deposit();
        }
        assert!(
            budget.withdraw() && budget.withdraw() && !budget.withdraw(),
            "capped"
        );
    }
}
