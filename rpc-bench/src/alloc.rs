//! A global allocator that counts, so that the benchmark can report allocations per call and
//! the heap memory an idle connection holds.
//!
//! Every system measured runs under it, so its counting must not slow one system more than
//! another: each thread counts in a shard of its own, on a line of memory of its own, and a
//! reading sums the shards. With one pair of counters for the whole process, every allocation
//! took their line from the core that made the last one, which cost most the systems that
//! allocate most, on most threads at once: across two processes, tonic's 256 callers on one
//! connection made a median 4% more calls a second under the system allocator alone than under
//! those counters (eleven interleaved pairs, more in eight); under the shards, a median 2% more
//! than under those counters (eight pairs), as many as under the system allocator alone.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, AtomicU64, AtomicUsize, Ordering};

/// The system allocator, counting allocations and live bytes.
pub struct Counting;

/// One group of threads' counts, on lines of memory of their own (two, as a core's prefetcher
/// fetches lines in pairs).
#[repr(align(128))]
struct Shard {
    allocations: AtomicU64,
    live_bytes: AtomicIsize,
}

/// More shards than the benchmark's processes have threads: each thread counts alone.
const SHARDS: usize = 64;

static COUNTS: [Shard; SHARDS] = [const {
    Shard {
        allocations: AtomicU64::new(0),
        live_bytes: AtomicIsize::new(0),
    }
}; SHARDS];

/// The shard the next thread to count takes.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard, once it has counted (`usize::MAX` before). Const and without a
    /// destructor, so that reading it allocates nothing and works until the thread is gone.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The calling thread's shard.
fn shard() -> &'static Shard {
    let index = SHARD
        .try_with(|shard| {
            if shard.get() == usize::MAX {
                shard.set(NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS);
            }
            shard.get()
        })
        .unwrap_or(0);
    &COUNTS[index]
}

// SAFETY: every call is passed unchanged to the system allocator; the counters are only
// bookkeeping.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let shard = shard();
        shard.allocations.fetch_add(1, Ordering::Relaxed);
        shard
            .live_bytes
            .fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shard()
            .live_bytes
            .fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let shard = shard();
        shard.allocations.fetch_add(1, Ordering::Relaxed);
        shard.live_bytes.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract, which we pass on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations made so far, reallocations included.
pub fn allocations() -> u64 {
    COUNTS
        .iter()
        .map(|shard| shard.allocations.load(Ordering::Relaxed))
        .sum()
}

/// Bytes allocated and not yet freed (a block freed on another thread than the one that
/// allocated it counts in both threads' shards, and the sum is right).
pub fn live_bytes() -> isize {
    COUNTS
        .iter()
        .map(|shard| shard.live_bytes.load(Ordering::Relaxed))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two threads count in shards of their own, and the sums see what each counted: its
    /// allocations, and a block allocated on one thread and freed on the other.
    #[test]
    fn threads_count_apart_and_the_sums_see_them_all() {
        const BLOCK: usize = 16 << 20;
        // What tests running meanwhile may hold at once: the machine's probe holds 3 MiB.
        const OTHERS: usize = 4 << 20;
        let here = std::ptr::from_ref(shard());
        let before = live_bytes();
        let block = vec![1_u8; BLOCK];
        let held = live_bytes();
        assert!(
            held - before >= (BLOCK - OTHERS) as isize,
            "the block is counted live"
        );
        let (there, allocated) = std::thread::spawn(move || {
            let counted = allocations();
            let boxes: Vec<Box<usize>> = (0..1000).map(Box::new).collect();
            let allocated = allocations() - counted;
            drop(boxes);
            drop(block);
            (std::ptr::from_ref(shard()) as usize, allocated)
        })
        .join()
        .expect("the other thread counts");
        assert_ne!(here as usize, there, "each thread has a shard of its own");
        assert!(
            allocated >= 1000,
            "{allocated} allocations counted of 1000 at least"
        );
        assert!(
            held - live_bytes() >= (BLOCK - OTHERS) as isize,
            "the block freed on the other thread is no longer live"
        );
    }
}
