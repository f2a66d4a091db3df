//! A probe of the machine's state: how fast memory written by one core is read by another.
//!
//! On the virtual machine the benchmark was first run on, that rate moves between two states
//! for seconds to minutes at a time: a 1 MiB buffer handed between two threads (this probe)
//! went across at about 10,000 MiB/s, then at about 2,000, with a one-thread copy unchanged at
//! 44,000 (the host puts the two virtual cores where they share no cache, it seems). Every
//! byte a socket carries between the two ends of a connection makes that crossing, so in the
//! slow state 1 MiB echoes ran at half their rate, the raw floor's among them: measured one
//! system after the other, a row's figures had compared one state with the other. A full run
//! now measures every system in turn for each workload, and probes this rate before each
//! system's turn and after the last, to tell how often the state moved meanwhile ([`steady`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The bytes handed over each time.
const HANDOFF: usize = 1024 * 1024;

/// How long a probe hands buffers over for.
const PROBE: Duration = Duration::from_millis(100);

/// MiB/s at which one thread reads what another has just written: a 1 MiB buffer, filled by
/// one thread and copied out by the other in turn, for 100 ms, the two threads held to the
/// first two cores this process may run on (left to the scheduler, they sometimes shared one
/// for the whole probe, and read as the slow state). `None` with fewer than two cores.
pub fn cross_core_copy_rate() -> Option<f64> {
    let [writer_core, reader_core] = cores::first_two()?;
    let shared = Arc::new(Mutex::new(vec![0u8; HANDOFF]));
    // Whose turn it is: the writer's while false.
    let written = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (shared, written, done) = (shared.clone(), written.clone(), done.clone());
        std::thread::spawn(move || {
            cores::hold_this_thread_to(writer_core);
            let source = vec![1u8; HANDOFF];
            while !done.load(Ordering::Acquire) {
                if written.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                    continue;
                }
                shared
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .copy_from_slice(&source);
                written.store(true, Ordering::Release);
            }
        })
    };
    let reader = std::thread::spawn(move || {
        cores::hold_this_thread_to(reader_core);
        let mut copy = vec![0u8; HANDOFF];
        let mut handed = 0u64;
        let start = Instant::now();
        while start.elapsed() < PROBE {
            if !written.load(Ordering::Acquire) {
                std::hint::spin_loop();
                continue;
            }
            copy.copy_from_slice(&shared.lock().unwrap_or_else(PoisonError::into_inner));
            written.store(false, Ordering::Release);
            handed += 1;
        }
        let elapsed = start.elapsed().as_secs_f64();
        done.store(true, Ordering::Release);
        std::hint::black_box(&copy);
        (handed * HANDOFF as u64) as f64 / (1024.0 * 1024.0) / elapsed
    });
    let rate = reader.join().ok();
    let _ = writer.join();
    rate
}

/// Whether the lowest and the highest rate probed around a measurement are of one state:
/// within a factor of two of each other (the two states differ fivefold to ninefold).
pub fn steady(low: f64, high: f64) -> bool {
    low.max(high) <= 2.0 * low.min(high)
}

/// What the probes of one setup's run found.
#[derive(Debug, Clone, Copy, Default)]
pub struct Probes {
    /// The lowest and the highest rate probed, in MiB/s; `None` before the first probe.
    pub range: Option<(f64, f64)>,
    /// How many parts of the workloads were probed.
    pub parts: usize,
    /// How many of them saw the rate move more than twofold while their systems were measured.
    pub unsteady: usize,
}

impl Probes {
    /// Notes the rates probed around one part of the workloads (`None` where a probe measured
    /// nothing); gives the lowest and the highest if they are not of one state.
    pub fn note_part(&mut self, rates: &[Option<f64>]) -> Option<(f64, f64)> {
        let rates: Vec<f64> = rates.iter().copied().flatten().collect();
        let (low, high) = rates
            .iter()
            .fold(None, |range: Option<(f64, f64)>, &rate| {
                Some(range.map_or((rate, rate), |(low, high)| (low.min(rate), high.max(rate))))
            })?;
        self.parts += 1;
        let unsteady = !steady(low, high);
        if unsteady {
            self.unsteady += 1;
        }
        self.range = Some(match self.range {
            Some((lowest, highest)) => (lowest.min(low), highest.max(high)),
            None => (low, high),
        });
        unsteady.then_some((low, high))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_hands_buffers_across_where_there_are_two_cores() {
        let rate = cross_core_copy_rate();
        match std::thread::available_parallelism().map_or(1, |n| n.get()) {
            1 => assert_eq!(rate, None),
            _ => assert!(rate.is_some_and(|rate| rate > 0.0), "{rate:?}"),
        }
    }

    #[test]
    fn a_part_is_unsteady_if_its_probes_span_more_than_twofold() {
        let mut probes = Probes::default();
        assert_eq!(
            probes.note_part(&[Some(9_800.0), Some(10_200.0), None]),
            None
        );
        assert_eq!(
            probes.note_part(&[Some(10_000.0), Some(2_000.0), Some(9_900.0)]),
            Some((2_000.0, 10_000.0))
        );
        assert_eq!(probes.note_part(&[None, None]), None);
        assert_eq!(probes.parts, 2, "a part with no rate is not counted");
        assert_eq!(probes.unsteady, 1);
        assert_eq!(probes.range, Some((2_000.0, 10_200.0)));
    }

    #[test]
    fn a_state_is_steady_within_twofold() {
        assert!(steady(20_000.0, 12_000.0));
        assert!(steady(2_500.0, 5_000.0));
        assert!(!steady(22_000.0, 2_500.0));
        assert!(!steady(2_400.0, 21_000.0));
    }
}

/// The cores a thread may run on, through libc, which alone sets a thread's affinity.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod cores {
    /// The first two cores this process may run on.
    pub(super) fn first_two() -> Option<[usize; 2]> {
        // SAFETY: a `cpu_set_t` is plain bits, valid all zero; the kernel writes at most its
        // size, which is passed.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let done =
            unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) };
        if done != 0 {
            return None;
        }
        // SAFETY: `set` is a valid `cpu_set_t`, read for cores below its capacity.
        let mut allowed =
            (0..libc::CPU_SETSIZE as usize).filter(|&core| unsafe { libc::CPU_ISSET(core, &set) });
        Some([allowed.next()?, allowed.next()?])
    }

    /// Holds the calling thread to `core`, if the kernel lets it.
    pub(super) fn hold_this_thread_to(core: usize) {
        // SAFETY: as in `first_two`; the kernel only reads the set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::CPU_SET(core, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
        }
    }
}

/// Off Linux, the first two cores by count, and threads left where the scheduler puts them.
#[cfg(not(target_os = "linux"))]
mod cores {
    pub(super) fn first_two() -> Option<[usize; 2]> {
        (std::thread::available_parallelism().ok()?.get() >= 2).then_some([0, 1])
    }

    pub(super) fn hold_this_thread_to(_core: usize) {}
}
