//! A probe of the machine's state: how fast memory written by one core is read by another.
//!
//! On the virtual machine the benchmark was first run on, that rate moves between two states
//! for seconds to minutes at a time: a 1 MiB buffer handed between two threads (this probe)
//! went across at about 10,000 MiB/s, then at about 2,000, with a one-thread copy unchanged at
//! 44,000 (the host puts the two virtual cores where they share no cache, it seems). Every
//! byte a socket carries between the two ends of a connection makes that crossing, so in the
//! slow state 1 MiB echoes ran at half their rate, the raw floor's among them: measured one
//! system after the other, a row's figures had compared one state with the other. A full run
//! now measures every system in turn for each workload, each turn in the fast state when it
//! can be ([`Probes::turn`]).

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

/// The longest a turn waits for the machine's fast state before it is measured anyway.
const WAIT: Duration = Duration::from_secs(10);

/// The probes of one setup's run: each system's turn at each workload is measured in the
/// machine's fast state when it can be. A rate below a quarter of the fastest probed so far in
/// the whole run (this setup's probes and those of the runs it [learned](Probes::learn) from) is
/// the slow state: the fast state reads about 10,000 MiB/s here, at times twice that, and the
/// slow one 2,000 (a machine without such states is always fast).
#[derive(Debug, Clone, Copy)]
pub struct Probes {
    /// What probes the machine: [`cross_core_copy_rate`], but in tests.
    rate_now: fn() -> Option<f64>,
    /// The lowest and the highest rate these probes read, in MiB/s; `None` before the first.
    pub range: Option<(f64, f64)>,
    /// The fastest rate probed in the run so far, these probes' and those learned: what the
    /// state is judged by. `None` before any.
    fastest: Option<f64>,
    /// How many turns were measured.
    pub turns: usize,
    /// How many measurings were made again, of turns that began or ended in the slow state: a
    /// turn measured three times counts two.
    pub measured_again: usize,
    /// How many turns began or ended in the slow state at their third measuring, too.
    pub slow: usize,
}

impl Default for Probes {
    fn default() -> Self {
        Probes {
            rate_now: cross_core_copy_rate,
            range: None,
            fastest: None,
            turns: 0,
            measured_again: 0,
            slow: 0,
        }
    }
}

impl Probes {
    /// Probes once, and notes the rate.
    pub fn probe(&mut self) -> Option<f64> {
        let rate = (self.rate_now)()?;
        self.range = Some(match self.range {
            Some((lowest, highest)) => (lowest.min(rate), highest.max(rate)),
            None => (rate, rate),
        });
        self.learn_of(rate);
        Some(rate)
    }

    /// Judges the state by the fastest rate `other` knows too, without taking its rates into
    /// the range these probes report: a setup measured after another knows from its first
    /// turn what the fast state reads.
    pub fn learn(&mut self, other: &Probes) {
        if let Some(rate) = other.fastest {
            self.learn_of(rate);
        }
    }

    /// Takes `rate` as the fastest known if it is.
    fn learn_of(&mut self, rate: f64) {
        self.fastest = Some(self.fastest.map_or(rate, |fastest| fastest.max(rate)));
    }

    /// Whether `rate` is of the fast state.
    pub fn is_fast(&self, rate: f64) -> bool {
        self.fastest.is_none_or(|fastest| 4.0 * rate >= fastest)
    }

    /// Probes until the machine is in its fast state, for up to 10 s: whether it is.
    pub fn wait_for_fast(&mut self) -> bool {
        let start = Instant::now();
        loop {
            let Some(rate) = self.probe() else {
                return true;
            };
            if self.is_fast(rate) || start.elapsed() >= WAIT {
                return self.is_fast(rate);
            }
        }
    }

    /// Measures one turn with `measure`, between a wait for the fast state and a probe after
    /// it; measured again, up to twice, while it began or ended in the slow state.
    pub fn turn(&mut self, mut measure: impl FnMut()) {
        self.turns += 1;
        for attempt in 1..=3 {
            let began_fast = self.wait_for_fast();
            measure();
            let ended_fast = self.probe().is_none_or(|rate| self.is_fast(rate));
            if began_fast && ended_fast {
                return;
            }
            if attempt == 3 {
                self.slow += 1;
                return;
            }
            eprintln!("  the machine was in its slow state: measured again");
            self.measured_again += 1;
        }
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
    fn the_slow_state_is_below_a_quarter_of_the_fastest_rate() {
        let mut probes = Probes::default();
        assert!(
            probes.is_fast(1.0),
            "anything is fast before the first probe"
        );
        probes.learn_of(2_000.0);
        probes.learn_of(20_000.0);
        assert!(probes.is_fast(10_000.0));
        assert!(probes.is_fast(5_000.0));
        assert!(!probes.is_fast(4_999.0));
        assert!(!probes.is_fast(2_000.0));
    }

    thread_local! {
        /// The rates a test's machine gives, in turn.
        static RATES: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Probes that read `rates` (the first first), as a test's machine.
    fn scripted(rates: &[f64]) -> Probes {
        RATES.set(rates.iter().rev().copied().collect());
        Probes {
            rate_now: || RATES.with_borrow_mut(Vec::pop),
            ..Probes::default()
        }
    }

    #[test]
    fn probes_judge_by_the_fastest_rate_others_probed_and_report_their_own() {
        let mut setup = scripted(&[2_000.0, 10_000.0]);
        setup.probe();
        setup.probe();
        setup.turns = 40;
        let mut later = scripted(&[2_400.0, 9_000.0]);
        later.learn(&Probes::default());
        assert!(
            later.is_fast(1.0),
            "nothing learned from probes that probed nothing"
        );
        later.learn(&setup);
        assert!(!later.is_fast(2_400.0), "slow against the fastest learned");
        assert_eq!(later.range, None, "the rates learned are not this setup's");
        assert_eq!(later.turns, 0, "only the rates");
        // Its first turn waits for the fast state, though it has probed nothing of its own.
        let mut left_at_measuring = Vec::new();
        later.turn(|| left_at_measuring.push(RATES.with_borrow(Vec::len)));
        assert_eq!(
            left_at_measuring,
            [0],
            "measured once, after the fast probe"
        );
        assert_eq!(later.range, Some((2_400.0, 9_000.0)));
    }

    #[test]
    fn a_turn_in_the_fast_state_is_measured_once() {
        let mut probes = scripted(&[10_000.0, 9_800.0]);
        let mut measured = 0;
        probes.turn(|| measured += 1);
        assert_eq!(measured, 1);
        assert_eq!(
            (probes.turns, probes.measured_again, probes.slow),
            (1, 0, 0)
        );
    }

    #[test]
    fn a_turn_that_ends_slow_is_measured_again_after_waiting_for_the_fast_state() {
        // Fast, then slow after the turn; slow twice more before the second turn may begin.
        let mut probes = scripted(&[10_000.0, 2_000.0, 2_100.0, 1_900.0, 9_900.0, 10_100.0]);
        let mut measured = 0;
        probes.turn(|| measured += 1);
        assert_eq!(measured, 2);
        assert_eq!(
            (probes.turns, probes.measured_again, probes.slow),
            (1, 1, 0)
        );
        assert_eq!(probes.range, Some((1_900.0, 10_100.0)));
        assert!(RATES.with_borrow(Vec::is_empty), "every rate probed");
    }

    #[test]
    fn a_turn_slow_three_times_is_counted_slow() {
        let mut probes = scripted(&[10_000.0, 2_000.0, 10_000.0, 2_000.0, 10_000.0, 2_000.0]);
        let mut measured = 0;
        probes.turn(|| measured += 1);
        assert_eq!(measured, 3);
        assert_eq!(
            (probes.turns, probes.measured_again, probes.slow),
            (1, 2, 1)
        );
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
