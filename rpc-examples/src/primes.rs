//! The work of the `dispatch` and `workers` examples: counting primes in ranges, spread over
//! worker processes, and what both programs are told to do.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};

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

/// Runs tasks `0..tasks`, at most `in_flight` at once, each as `run(task)` in a task of its
/// own; their results arrive on the receiver as they finish, with their task numbers.
pub fn spread<F, Fut, T>(tasks: u64, in_flight: usize, run: F) -> mpsc::UnboundedReceiver<(u64, T)>
where
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let (done_tx, done) = mpsc::unbounded_channel();
    let slots = Arc::new(Semaphore::new(in_flight));
    tokio::spawn(async move {
        for task in 0..tasks {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let (running, done) = (run(task), done_tx.clone());
            tokio::spawn(async move {
                let result = running.await;
                drop(slot);
                let _ = done.send((task, result));
            });
        }
    });
    done
}

/// The tasks counted so far: each once, and by which worker process.
#[derive(Debug, Default)]
pub struct Tally {
    results: HashMap<u64, Counted>,
    per_worker: HashMap<u32, u64>,
}

impl Tally {
    /// Records what task `task` counted; a task reported twice is an error.
    pub fn record(&mut self, task: u64, counted: Counted) -> Result<(), String> {
        if self.results.insert(task, counted).is_some() {
            return Err(format!("task {task} was reported twice"));
        }
        *self.per_worker.entry(counted.worker).or_default() += 1;
        Ok(())
    }

    /// How many tasks are counted.
    pub fn len(&self) -> u64 {
        self.results.len() as u64
    }

    /// Whether no task is counted yet.
    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    /// How many tasks each worker process counted, by process id.
    pub fn per_worker(&self) -> &HashMap<u32, u64> {
        &self.per_worker
    }

    /// Prints what each worker counted, then checks the total against a count of
    /// `0..tasks * span` made here, and says so; `program` starts each line.
    pub fn verify(&self, program: &str, tasks: u64, span: u64) -> Result<(), String> {
        let mut pids: Vec<_> = self.per_worker.iter().collect();
        pids.sort_unstable();
        for (pid, counted) in pids {
            println!("{program}: worker pid {pid} counted {counted} tasks");
        }
        let primes: u64 = self.results.values().map(|counted| counted.primes).sum();
        let limit = tasks * span;
        let expected = count_primes(0, limit);
        if self.len() != tasks || primes != expected {
            return Err(format!(
                "counted {primes} primes below {limit} in {} tasks, expected {expected} in \
                 {tasks}",
                self.len()
            ));
        }
        println!(
            "{program}: verified: {tasks} tasks, each counted exactly once; {primes} primes \
             below {limit}"
        );
        Ok(())
    }
}

/// What the `dispatch` and `workers` examples are told to do.
#[derive(Debug)]
pub struct Job {
    /// How many worker processes to start.
    pub workers: usize,
    /// How many tasks to count.
    pub tasks: u64,
    /// How many numbers each task counts.
    pub span: u64,
    /// Whether to kill a worker with SIGKILL a third of the way through.
    pub kill_one: bool,
}

impl Job {
    /// Reads `[--workers N] [--tasks N] [--span N] [--no-kill]`; `workers` workers unless told
    /// otherwise, 10,000 tasks of 1,000 numbers, one worker killed. `program` names the
    /// program in the usage an unknown argument is answered with.
    pub fn parse(program: &str, args: &[String], workers: usize) -> Result<Self, String> {
        let mut job = Job {
            workers,
            tasks: 10_000,
            span: 1_000,
            kill_one: true,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || -> Result<u64, String> {
                let value = args.next().ok_or(format!("{arg} needs a value"))?;
                value
                    .parse()
                    .map_err(|error| format!("{arg} {value}: {error}"))
            };
            match arg.as_str() {
                "--workers" => job.workers = value()? as usize,
                "--tasks" => job.tasks = value()?,
                "--span" => job.span = value()?,
                "--no-kill" => job.kill_one = false,
                other => {
                    return Err(format!(
                        "unknown argument {other}; usage: {program} [--workers N] [--tasks N] \
                         [--span N] [--no-kill]"
                    ));
                }
            }
        }
        if job.workers == 0 {
            return Err("at least one worker is needed".into());
        }
        Ok(job)
    }
}

/// Child processes, killed when dropped, so that none outlives the program that started them.
#[derive(Debug, Default)]
pub struct Processes(pub Vec<std::process::Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
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
