//! What a process has spent: heap allocations, live heap bytes and minor page faults.

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
}

impl Counters {
    /// This process's counters.
    pub fn here() -> Counters {
        Counters {
            allocations: alloc::allocations(),
            live_bytes: alloc::live_bytes() as i64,
            minor_faults: minor_faults(),
        }
    }

    /// The counters as one line, for a pipe between processes.
    pub fn to_line(self) -> String {
        format!(
            "{} {} {}",
            self.allocations, self.live_bytes, self.minor_faults
        )
    }

    /// Reads what [`Counters::to_line`] wrote.
    pub fn from_line(line: &str) -> Option<Counters> {
        let mut fields = line.split_whitespace();
        Some(Counters {
            allocations: fields.next()?.parse().ok()?,
            live_bytes: fields.next()?.parse().ok()?,
            minor_faults: fields.next()?.parse().ok()?,
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
        }
    }
}

/// This process's minor page faults, the tenth field of `/proc/self/stat` (0 where there is no
/// such file).
fn minor_faults() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // The second field, the command's name in parentheses, may hold spaces: count from the
    // parenthesis that closes it. The state is the third field, so minflt is the eighth after.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(7))
        .and_then(|field| field.parse().ok())
        .unwrap_or(0)
}
