//! The deadlines of one connection's waiting calls, watched by one timer for the connection
//! rather than one per call.
//!
//! A call's own timer was registered with the runtime's timer wheel when the call started
//! waiting and removed when its answer came, both under the wheel's lock, on every call: with
//! 32 callers on one connection, 3–4% more calls a second went through without it. Here a
//! call's deadline costs an entry in a queue the connection already locks to register the
//! call. Calls mostly share the channel's deadline, so
//! entries arrive in order and go on the back; the one task that expires calls sleeps until the
//! first deadline and is woken only when a call's deadline comes before the one it sleeps
//! until.
//!
//! Entries of calls that were answered stay until the expiring task passes them, or until they
//! outnumber the waiting calls, when they are swept out: the queue holds at most about twice as
//! many entries as calls wait.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::time::Instant;

use super::pending::Pending;
use crate::protocol::{Head, Outbox};

/// Answered calls' entries may outnumber waiting calls by this many before they are swept out,
/// so that a connection with few calls waiting does not sweep on every call.
const SLACK: usize = 32;

/// Deadlines by call id, earliest first.
#[derive(Debug, Default)]
pub(super) struct Deadlines {
    queue: VecDeque<(Instant, u64)>,
    /// When the expiring task will look next: `None` while it waits to be told of a deadline.
    wakes_at: Option<Instant>,
}

/// What the expiring task is to do next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Expire this call, whose deadline has passed.
    Expire(u64),
    /// Sleep until this instant, unless told of an earlier deadline.
    SleepUntil(Instant),
    /// Wait to be told of a deadline: none is watched.
    Wait,
}

impl Deadlines {
    /// Watches call `id`'s deadline, `expires`. `waiting` is how many calls wait, and
    /// `is_waiting` says whether a call still does. Returns whether the expiring task must be
    /// woken: the deadline comes before the instant it sleeps until.
    pub(super) fn insert(
        &mut self,
        expires: Instant,
        id: u64,
        waiting: usize,
        is_waiting: impl Fn(u64) -> bool,
    ) -> bool {
        if self.queue.len() >= 2 * waiting + SLACK {
            self.queue.retain(|&(_, id)| is_waiting(id));
        }
        // Almost always the back: a deadline shorter than the calls' before it goes further in.
        let at = self.queue.partition_point(|&(other, _)| other <= expires);
        self.queue.insert(at, (expires, id));
        if self.wakes_at.is_none_or(|wakes_at| expires < wakes_at) {
            self.wakes_at = Some(expires);
            return true;
        }
        false
    }

    /// What the expiring task does next at `now`: the first call still waiting whose deadline
    /// has passed, taken off the queue; otherwise when to look again.
    pub(super) fn next(&mut self, now: Instant, is_waiting: impl Fn(u64) -> bool) -> Next {
        while let Some(&(expires, id)) = self.queue.front() {
            if !is_waiting(id) {
                self.queue.pop_front();
            } else if expires <= now {
                self.queue.pop_front();
                return Next::Expire(id);
            } else {
                self.wakes_at = Some(expires);
                return Next::SleepUntil(expires);
            }
        }
        self.wakes_at = None;
        Next::Wait
    }

    /// How many entries the queue holds, answered calls' included.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.len()
    }
}

/// Expires the calls of `pending` whose deadlines pass, telling the server through `outbox` to
/// drop those whose requests it has, until the connection closes.
pub(super) async fn expire_calls(pending: Arc<Pending>, outbox: Outbox) {
    let expiring = async {
        // One timer for the connection, moved to each next deadline.
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        loop {
            let next = pending.expire(Instant::now(), |id| {
                // The request is ahead of this in the outbox, so the server sees it first.
                outbox.send_head(&Head::Cancel { id });
            });
            match next {
                Some(at) => {
                    timer.as_mut().reset(at);
                    tokio::select! {
                        () = &mut timer => {}
                        () = pending.deadline_added() => {}
                    }
                }
                None => pending.deadline_added().await,
            }
        }
    };
    tokio::select! {
        () = pending.wait_closed() => {}
        () = expiring => {}
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::*;

    fn after(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn calls_expire_in_the_order_of_their_deadlines() {
        let start = Instant::now();
        let mut deadlines = Deadlines::default();
        let all = |_| true;
        assert!(
            deadlines.insert(after(start, 30), 1, 1, all),
            "the first wakes the task"
        );
        assert_eq!(
            deadlines.next(start, all),
            Next::SleepUntil(after(start, 30))
        );
        assert!(
            !deadlines.insert(after(start, 40), 2, 2, all),
            "a later one does not"
        );
        assert!(
            deadlines.insert(after(start, 10), 3, 3, all),
            "an earlier one does"
        );
        assert_eq!(deadlines.next(after(start, 35), all), Next::Expire(3));
        assert_eq!(deadlines.next(after(start, 35), all), Next::Expire(1));
        assert_eq!(
            deadlines.next(after(start, 35), all),
            Next::SleepUntil(after(start, 40))
        );
        assert_eq!(deadlines.next(after(start, 40), all), Next::Expire(2));
        assert_eq!(deadlines.next(after(start, 40), all), Next::Wait);
        assert!(
            deadlines.insert(after(start, 90), 4, 1, all),
            "a task told of none is woken"
        );
    }

    #[test]
    fn answered_calls_are_passed_over() {
        let start = Instant::now();
        let mut deadlines = Deadlines::default();
        for id in 0..4 {
            deadlines.insert(after(start, 10 + id), id, 4, |_| true);
        }
        let waiting = |id| id == 2;
        assert_eq!(
            deadlines.next(start, waiting),
            Next::SleepUntil(after(start, 12))
        );
        assert_eq!(deadlines.next(after(start, 20), waiting), Next::Expire(2));
        assert_eq!(deadlines.next(after(start, 20), waiting), Next::Wait);
    }

    #[test]
    fn answered_calls_entries_stay_within_twice_the_waiting_calls() {
        let start = Instant::now();
        let mut deadlines = Deadlines::default();
        let mut waiting = HashSet::new();
        // Ten calls wait for ever; a thousand others are answered as soon as they start.
        for id in 0..1010 {
            waiting.insert(id);
            deadlines.insert(after(start, id), id, waiting.len(), |id| {
                waiting.contains(&id)
            });
            if id >= 10 {
                waiting.remove(&id);
            }
        }
        assert!(
            deadlines.len() <= 2 * 11 + SLACK,
            "{} entries",
            deadlines.len()
        );
        let is_waiting = |id| waiting.contains(&id);
        for id in 0..10 {
            assert_eq!(
                deadlines.next(after(start, 5000), is_waiting),
                Next::Expire(id)
            );
        }
        assert_eq!(deadlines.next(after(start, 5000), is_waiting), Next::Wait);
    }
}
