//! What a process has spent: heap allocations, live heap bytes, minor page faults and CPU time.

use std::ops::{Add, Sub};

use crate::alloc;

/// One process's counters, or the sum of several processes'.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Heap allocations made so far, reallocations included.
    pub allocations: u64,
    /// Heap bytes allocated and not yet freed.
    pub live_bytes: i64,
    /// Minor page faults: memory the kernel had to map in on first touch.
    pub minor_faults: u64,
    /// CPU time, user and system, of every thread, in ticks of [`TICKS_PER_SECOND`].
    pub cpu_ticks: u64,
}

/// The unit of the CPU times in `/proc/self/stat`: Linux's `USER_HZ`, 100 on every architecture
/// it runs on, whatever the kernel's own tick rate.
pub const TICKS_PER_SECOND: f64 = 100.0;

impl Counters {
    /// This process's counters.
    pub fn here() -> Counters {
        let (minor_faults, cpu_ticks) = faults_and_cpu();
        Counters {
            allocations: alloc::allocations(),
            live_bytes: alloc::live_bytes() as i64,
            minor_faults,
            cpu_ticks,
        }
    }

    /// The counters as one line, for a pipe between processes.
    pub fn to_line(self) -> String {
        format!(
            "{} {} {} {}",
            self.allocations, self.live_bytes, self.minor_faults, self.cpu_ticks
        )
    }

    /// Reads what [`Counters::to_line`] wrote.
    pub fn from_line(line: &str) -> Option<Counters> {
        let mut fields = line.split_whitespace();
        Some(Counters {
            allocations: fields.next()?.parse().ok()?,
            live_bytes: fields.next()?.parse().ok()?,
            minor_faults: fields.next()?.parse().ok()?,
            cpu_ticks: fields.next()?.parse().ok()?,
        })
    }
}

impl Add for Counters {
    type Output = Counters;
    fn add(self, other: Counters) -> Counters {
        Counters {
            allocations: self.allocations + other.allocations,
            live_bytes: self.live_bytes + other.live_bytes,
            minor_faults: self.minor_faults + other.minor_faults,
            cpu_ticks: self.cpu_ticks + other.cpu_ticks,
        }
    }
}

impl Sub for Counters {
    type Output = Counters;
    fn sub(self, other: Counters) -> Counters {
        Counters {
            allocations: self.allocations.saturating_sub(other.allocations),
            live_bytes: self.live_bytes - other.live_bytes,
            minor_faults: self.minor_faults.saturating_sub(other.minor_faults),
            cpu_ticks: self.cpu_ticks.saturating_sub(other.cpu_ticks),
        }
    }
}

/// Fields of `/proc/self/stat`, counted from the state (its third field) as 0: minor page faults
/// (the tenth), then user and system CPU time (the fourteenth and fifteenth).
const MINOR_FAULTS: usize = 7;
const USER_TIME: usize = 11;
const SYSTEM_TIME: usize = 12;

/// This process's minor page faults and CPU time in ticks, from `/proc/self/stat` (zeros where
/// there is no such file).
fn faults_and_cpu() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return (0, 0);
    };
    // The second field, the command's name in parentheses, may hold spaces: count from the
    // parenthesis that closes it.
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            // The state is a letter: a zero in its place keeps the places of the numbers.
            let numbers = rest
                .split_whitespace()
                .map(|field| field.parse().unwrap_or(0));
            numbers.take(SYSTEM_TIME + 1).collect()
        })
        .unwrap_or_default();
    let field = |at: usize| fields.get(at).copied().unwrap_or(0);
    (field(MINOR_FAULTS), field(USER_TIME) + field(SYSTEM_TIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What one process writes down the pipe, the other reads back whole, CPU time included.
    #[test]
    fn counters_cross_the_pipe_whole() {
        let counters = Counters {
            allocations: 5,
            live_bytes: -3,
            minor_faults: 7,
            cpu_ticks: 11,
        };
        assert_eq!(Counters::from_line(&counters.to_line()), Some(counters));
        assert_eq!(Counters::from_line("5 -3 7"), None, "a line cut short");
    }

    /// The fields are read from their places: a process has page faults by the time it runs
    /// a test, and its CPU time grows while it works.
    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_faults_and_cpu_time_that_grows() {
        let first = Counters::here();
        assert!(first.minor_faults > 0);
        // Work until a tick of CPU time has passed; a minute of it would be a field misread.
        let start = std::time::Instant::now();
        while Counters::here().cpu_ticks == first.cpu_ticks {
            assert!(start.elapsed().as_secs() < 60, "no CPU time counted");
        }
    }
}
