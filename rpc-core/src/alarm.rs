//! A timer that a loop can look at every time it waits, for the price of a load and a compare.
//!
//! Polling a tokio `Sleep` spends the task's budget and registers the task's waker with the
//! timer again, every time. A connection's reader waits for its next frame once or more per
//! call, and its keep-alive, idle and deadline timers were polled at each wait: about 650 of a
//! sequential call's 17,000 instructions for the keep-alive timers alone. An [`Alarm`] polls
//! its `Sleep` only when the timer has fired, or when it is armed for another task than the one
//! polling now; otherwise the waker it was armed with is still the one the timer will wake.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// About thirty years: where a setting's duration would take an instant past what an `Instant`
/// holds (`Duration::MAX` given for "never"), the instant is this far off instead, as tokio's
/// own timers do.
const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// `at` plus `by`; never past [`FAR`] after `at`, so that a setting of `Duration::MAX` means
/// "never" rather than a panic.
pub(crate) fn after(at: Instant, by: Duration) -> Instant {
    at.checked_add(by.min(FAR)).unwrap_or(at)
}

/// The shortest period of what a side does over and over by itself (pings, health checks,
/// lookups of a name): a setting of zero would do it in a loop without pause, burning a core
/// and flooding the peer.
pub(crate) const MIN_PERIOD: Duration = Duration::from_millis(10);

/// `period`, or [`MIN_PERIOD`] if shorter.
pub(crate) fn period(period: Duration) -> Duration {
    period.max(MIN_PERIOD)
}

/// A timer polled cheaply while it has not fired. See the module's documentation.
#[derive(Debug)]
pub(crate) struct Alarm {
    sleep: Pin<Box<Sleep>>,
    /// The waker the timer holds, since it was last polled; `None` if it holds none (never
    /// polled since made or reset, or fired).
    armed_for: Option<Waker>,
}

impl Alarm {
    /// An alarm that goes off at `deadline`.
    pub(crate) fn at(deadline: Instant) -> Self {
        Alarm {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            armed_for: None,
        }
    }

    /// When it goes off.
    pub(crate) fn deadline(&self) -> Instant {
        self.sleep.deadline()
    }

    /// Sets it to go off at `deadline` instead.
    pub(crate) fn reset(&mut self, deadline: Instant) {
        self.sleep.as_mut().reset(deadline);
        self.armed_for = None;
    }

    /// Ready once it has gone off (and ready again at every poll until it is reset).
    pub(crate) fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.sleep.is_elapsed()
            && let Some(armed_for) = &self.armed_for
            && armed_for.will_wake(cx.waker())
        {
            return Poll::Pending;
        }
        // Outside the task's budget: a poll refused for want of budget would register no
        // waker, and the alarm would take the timer for armed.
        let mut sleep = tokio::task::unconstrained(self.sleep.as_mut());
        match Pin::new(&mut sleep).poll(cx) {
            Poll::Ready(()) => {
                self.armed_for = None;
                Poll::Ready(())
            }
            Poll::Pending => {
                self.armed_for = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Returns once it has gone off.
    pub(crate) fn fired(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_fired(cx))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A setting of `Duration::MAX` ("never") gives an instant far off, not an overflow.
    #[test]
    fn a_duration_past_what_an_instant_holds_is_far_off_not_a_panic() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert_eq!(after(now, Duration::MAX), now + FAR);
        assert!(FAR > Duration::from_secs(29 * 365 * 24 * 60 * 60));
    }

    /// Armed once, the alarm still wakes the task that waits on it, polled cheaply in between;
    /// reset, it goes off at its new deadline and not at the old one.
    #[tokio::test(start_paused = true)]
    async fn an_alarm_polled_cheaply_still_goes_off_and_reset_moves_it() {
        let start = Instant::now();
        let mut alarm = Alarm::at(start + Duration::from_secs(5));
        // Polled many times before it goes off, as a loop would at each wait.
        for _ in 0..3 {
            let polled = tokio::time::timeout(Duration::from_secs(1), alarm.fired()).await;
            assert!(polled.is_err(), "not yet");
        }
        alarm.fired().await;
        assert_eq!(Instant::now(), start + Duration::from_secs(5));

        alarm.reset(Instant::now() + Duration::from_secs(10));
        let early = tokio::time::timeout(Duration::from_secs(9), alarm.fired()).await;
        assert!(early.is_err(), "the old deadline is gone");
        alarm.fired().await;
        assert_eq!(Instant::now(), start + Duration::from_secs(15));
        assert_eq!(alarm.deadline(), start + Duration::from_secs(15));
    }

    /// Armed in one task and then awaited in another, the alarm wakes the second.
    #[tokio::test(start_paused = true)]
    async fn an_alarm_armed_by_one_task_wakes_the_next_that_waits() {
        let mut alarm = Alarm::at(Instant::now() + Duration::from_secs(5));
        let armed = tokio::time::timeout(Duration::from_secs(1), alarm.fired()).await;
        assert!(armed.is_err());
        let woken = tokio::spawn(async move {
            alarm.fired().await;
        });
        tokio::time::timeout(Duration::from_secs(10), woken)
            .await
            .expect("the alarm goes off for the task now waiting")
            .expect("the task ends");
    }
}
