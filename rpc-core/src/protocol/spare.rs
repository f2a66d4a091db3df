//! The memory of large frames, kept after they are dropped for the next large frames to take
//! up. glibc gives large freed blocks back to the system, and a fresh megabyte costs 256 page
//! faults to touch again: a large value copied into its frame (a `serde_bytes::ByteBuf`, a long
//! string) paid them for every call, on both ends. A frame is encoded on its caller's thread and
//! dropped by the connection's writer, often on another, so the process keeps one small store
//! of them, which every connection shares.
//!
//! A `Vec<u8>` argument or result takes part too: decoded into a spare's memory, and its
//! memory kept when the frame that sent it from there is done with it.
//!
//! Small frames (a call's request or response of a few numbers) are kept too, a few dozen per
//! thread: each call began two of them in fresh memory, which the writer freed on whatever
//! thread it ran, and glibc's per-thread cache overflowed into its slower shared lists when
//! hundreds of calls were in flight. A thread that drops more small frames than it makes (a
//! connection's writer) passes the surplus, a batch at a time, to a store the process shares,
//! where a thread that makes more than it drops (callers on another worker) takes a batch when
//! it has none left: one lock per batch, not an allocation and a free per frame.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

/// A frame's memory is kept once it is dropped only if it holds at least this much.
const SPARE_MIN: usize = 64 * 1024;

/// The most memory the process keeps: four frames of 1 MiB values, each with its head and the
/// page of slack fresh memory gets, so that four such calls in flight all find memory here.
const BUDGET: usize = 4 * (1024 * 1024 + 16 * 1024);

/// The memory page's usual size: fresh memory for a large frame is rounded up to whole pages,
/// with one to spare.
const PAGE: usize = 4096;

/// A small frame's memory is kept once it is dropped only if it holds at most this much, which
/// is no more than the bytes a queued frame is counted for beyond its own
/// ([`ENTRY_OVERHEAD`](super::outbox::ENTRY_OVERHEAD)): a frame in kept memory costs no more
/// than it is counted for.
pub(super) const SMALL_MAX: usize = 128;

/// How many small frames' memory a thread keeps.
const SMALL_KEPT: usize = 64;

/// How many small frames' memory a thread passes to the process's store, or takes from it, at
/// once.
const SMALL_BATCH: usize = 32;

/// How many small frames' memory the process's store keeps: 32 KiB at most, eight batches.
const SMALL_SHARED: usize = 256;

thread_local! {
    /// The memory of small frames dropped on this thread, each empty.
    static SMALL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// The memory of small frames that threads had no room for, each empty, up to
/// [`SMALL_SHARED`]; and how many it holds, read without the lock.
#[derive(Debug, Default)]
struct SharedSmall {
    frames: Mutex<Vec<Vec<u8>>>,
    len: AtomicUsize,
}

impl SharedSmall {
    fn frames(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        // Nothing panics while holding the lock.
        self.frames.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves up to [`SMALL_BATCH`] frames' memory into `kept`, a thread's empty store.
    fn take_batch(&self, kept: &mut Vec<Vec<u8>>) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut frames = self.frames();
        let from = frames.len().saturating_sub(SMALL_BATCH);
        kept.extend(frames.drain(from..));
        self.len.store(frames.len(), Ordering::Relaxed);
    }

    /// Moves [`SMALL_BATCH`] frames' memory out of `kept`, a thread's full store, if the
    /// process's store has room for them; those it has no room for stay in `kept`.
    fn give_batch(&self, kept: &mut Vec<Vec<u8>>) {
        if self.len.load(Ordering::Relaxed) + SMALL_BATCH > SMALL_SHARED {
            return;
        }
        let mut frames = self.frames();
        if frames.len() + SMALL_BATCH <= SMALL_SHARED {
            frames.extend(kept.drain(kept.len() - SMALL_BATCH..));
            self.len.store(frames.len(), Ordering::Relaxed);
        }
    }
}

/// The process's store of small frames' memory.
#[cfg(not(test))]
fn shared_small() -> &'static SharedSmall {
    static SHARED_SMALL: SharedSmall = SharedSmall {
        frames: Mutex::new(Vec::new()),
        len: AtomicUsize::new(0),
    };
    &SHARED_SMALL
}

#[cfg(test)]
thread_local! {
    static SHARED_SMALL: std::cell::Cell<&'static SharedSmall> =
        std::cell::Cell::new(Box::leak(Box::default()));
}

/// In unit tests, each test's thread has a store of its own, as with [`spares`], unless it is
/// given another thread's ([`share_small_with`]).
#[cfg(test)]
fn shared_small() -> &'static SharedSmall {
    SHARED_SMALL.get()
}

/// In unit tests, makes this thread use `store` as the process's store of small frames.
#[cfg(test)]
fn share_small_with(store: &'static SharedSmall) {
    SHARED_SMALL.set(store);
}

/// Memory for a small frame of up to `capacity` bytes to start with (at most [`SMALL_MAX`]): a
/// dropped small frame's, if this thread kept one or the process's store has some.
#[inline]
pub(super) fn small(capacity: usize) -> Vec<u8> {
    debug_assert!(capacity <= SMALL_MAX);
    SMALL
        .try_with(|kept| {
            let mut kept = kept.try_borrow_mut().ok()?;
            if kept.is_empty() {
                shared_small().take_batch(&mut kept);
            }
            kept.pop()
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| Vec::with_capacity(capacity))
}

/// Keeps the memory of `bytes`, a dropped small frame's, if this thread, or else the process,
/// has room for it.
fn keep_small(bytes: &mut Vec<u8>) {
    // During the thread's teardown the store is gone, and the memory is freed with `bytes`.
    let _ = SMALL.try_with(|kept| {
        let Ok(mut kept) = kept.try_borrow_mut() else {
            return;
        };
        if kept.len() >= SMALL_KEPT {
            shared_small().give_batch(&mut kept);
        }
        if kept.len() < SMALL_KEPT {
            let mut spare = std::mem::take(bytes);
            spare.clear();
            kept.push(spare);
        }
    });
}

/// Large frames' memory, kept up to [`BUDGET`].
#[derive(Debug, Default)]
struct Spares {
    buffers: Mutex<Vec<Vec<u8>>>,
}

/// The process's spares. Only frames of [`SPARE_MIN`] bytes or more take the lock, whose cost
/// is nothing beside their copy.
#[cfg(not(test))]
fn spares() -> &'static Spares {
    static SPARES: Spares = Spares {
        buffers: Mutex::new(Vec::new()),
    };
    &SPARES
}

/// In unit tests, each test's thread has its own spares, so that tests running side by side
/// do not take each other's.
#[cfg(test)]
fn spares() -> &'static Spares {
    thread_local! {
        static SPARES: &'static Spares = Box::leak(Box::default());
    }
    SPARES.with(|spares| *spares)
}

impl Spares {
    fn buffers(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        // Nothing panics while holding the lock.
        self.buffers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps the memory of `bytes`, a dropped frame's, if it is large and the budget has room for
/// it, or small and this thread's store or the process's has room (else it is freed with
/// `bytes`).
#[inline]
pub(super) fn keep(bytes: &mut Vec<u8>) {
    let capacity = bytes.capacity();
    if capacity >= SPARE_MIN {
        keep_large(bytes);
    } else if capacity != 0 && capacity <= SMALL_MAX {
        keep_small(bytes);
    }
}

fn keep_large(bytes: &mut Vec<u8>) {
    let mut buffers = spares().buffers();
    let kept: usize = buffers.iter().map(Vec::capacity).sum();
    if kept + bytes.capacity() <= BUDGET {
        let mut spare = std::mem::take(bytes);
        spare.clear();
        buffers.push(spare);
    }
}

/// `bytes` copied into a vector of their own, in a spare's memory if they are large and one is
/// there.
pub(crate) fn copied(bytes: &[u8]) -> Vec<u8> {
    if bytes.len() < SPARE_MIN {
        return bytes.to_vec();
    }
    let mut copy = Vec::new();
    reserve(&mut copy, bytes.len());
    copy.extend_from_slice(bytes);
    copy
}

/// `bytes` as [`Bytes`] without a copy; a large vector's memory is kept (as a dropped frame's
/// is) once the last `Bytes` sharing it is dropped.
pub(crate) fn shared(bytes: Vec<u8>) -> Bytes {
    if bytes.capacity() < SPARE_MIN {
        return Bytes::from(bytes);
    }
    Bytes::from_owner(KeptOnDrop(bytes))
}

/// A large vector shared as [`Bytes`], whose memory is kept when the last of them is dropped.
struct KeptOnDrop(Vec<u8>);

impl AsRef<[u8]> for KeptOnDrop {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for KeptOnDrop {
    fn drop(&mut self) {
        keep(&mut self.0);
    }
}

/// Makes room in `bytes`, a frame's, for `additional` more, which are many: in a spare's memory
/// if one is large enough, else in fresh memory with room for the next frame of about the same
/// size (a request's header grows with its id).
pub(super) fn reserve(bytes: &mut Vec<u8>, additional: usize) {
    if bytes.capacity() - bytes.len() >= additional {
        return;
    }
    let needed = bytes.len() + additional;
    let spare = {
        let mut buffers = spares().buffers();
        let fits = buffers.iter().position(|spare| spare.capacity() >= needed);
        fits.map(|at| buffers.swap_remove(at))
    };
    match spare {
        Some(mut spare) => {
            spare.extend_from_slice(bytes);
            *bytes = spare;
        }
        None => bytes.reserve_exact((needed + PAGE).next_multiple_of(PAGE) - bytes.len()),
    }
}

#[cfg(test)]
mod tests {
    use serde_bytes::ByteBuf;

    use super::*;
    use crate::protocol::{Frame, Head, LENGTH_PREFIX};

    /// `bytes` copied into a frame, as a `ByteBuf` is.
    fn copied_in(bytes: &ByteBuf) -> Frame {
        let mut frame = Frame::from(vec![0; LENGTH_PREFIX]);
        frame.append(bytes).expect("encodes");
        frame
    }

    /// Where a frame's bytes start, and how much memory they hold.
    fn memory_of(frame: &Frame) -> (*const u8, usize) {
        let bytes = frame.contiguous().expect("nothing spliced");
        (bytes.as_ptr(), frame.capacity())
    }

    fn kept() -> usize {
        spares().buffers().iter().map(Vec::capacity).sum()
    }

    fn small_kept() -> usize {
        SMALL.with_borrow(Vec::len)
    }

    fn small_shared() -> usize {
        let shared = shared_small();
        let len = shared.frames().len();
        assert_eq!(shared.len.load(Ordering::Relaxed), len, "the count is true");
        len
    }

    /// A small frame begins in the memory of the last small frame dropped on its thread; the
    /// thread keeps at most [`SMALL_KEPT`] of them, and none that grew past [`SMALL_MAX`].
    #[test]
    fn a_dropped_small_frames_memory_is_taken_up_by_the_next() {
        let first = Head::Cancel { id: 1 }.begin_frame().expect("encodes");
        let (at, room) = memory_of(&first);
        assert!(room <= SMALL_MAX);
        drop(first);
        assert_eq!(small_kept(), 1);
        let second = Head::Cancel { id: 2 }.begin_frame().expect("encodes");
        assert_eq!(
            memory_of(&second),
            (at, room),
            "in the first frame's memory"
        );
        assert_eq!(second.contiguous(), Some(&[0, 0, 0, 0, 0x03, 0x02][..]));
        assert_eq!(small_kept(), 0);

        let many: Vec<Frame> = (0..SMALL_KEPT as u64 + 8)
            .map(|id| Head::Cancel { id }.begin_frame().expect("encodes"))
            .collect();
        drop(many);
        assert!(small_kept() <= SMALL_KEPT, "at most {SMALL_KEPT} are kept");
        assert_eq!(
            small_kept() + small_shared(),
            SMALL_KEPT + 8,
            "the thread passed those it had no room for to the process's store"
        );
        SMALL.with_borrow_mut(Vec::clear);
        shared_small().frames().clear();
        shared_small().len.store(0, Ordering::Relaxed);

        let mut grown = Head::Cancel { id: 3 }.begin_frame().expect("encodes");
        grown.append(&vec![7u8; SMALL_MAX]).expect("encodes");
        assert!(grown.capacity() > SMALL_MAX);
        drop(grown);
        assert_eq!(
            small_kept(),
            0,
            "a frame grown past {SMALL_MAX} bytes is freed"
        );
    }

    /// Small frames dropped on one thread (a writer's) are made again on another (a caller's)
    /// in the same memory, through the process's store, which keeps at most [`SMALL_SHARED`].
    #[test]
    fn small_frames_dropped_on_one_thread_are_taken_up_on_another() {
        let made: Vec<Frame> = (0..SMALL_SHARED as u64 + 2 * SMALL_KEPT as u64)
            .map(|id| Head::Cancel { id }.begin_frame().expect("encodes"))
            .collect();
        let memory: std::collections::HashSet<*const u8> =
            made.iter().map(|frame| memory_of(frame).0).collect();
        // Dropped on another thread, as a writer drops the frames callers made.
        let store = shared_small();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                share_small_with(store);
                drop(made);
                assert!(small_kept() <= SMALL_KEPT);
            });
        });
        assert_eq!(small_kept(), 0);
        assert_eq!(
            small_shared(),
            SMALL_SHARED,
            "the process keeps {SMALL_SHARED}"
        );

        let again = Head::Cancel { id: 1 }.begin_frame().expect("encodes");
        assert!(
            memory.contains(&memory_of(&again).0),
            "in a dropped frame's memory"
        );
        assert_eq!(small_kept(), SMALL_BATCH - 1, "a batch was taken at once");
        assert_eq!(small_shared(), SMALL_SHARED - SMALL_BATCH);
    }

    /// A large value copied into a frame takes up the memory of a large frame dropped before
    /// it, not fresh memory, even when it is a little larger; the bytes are those of a copy.
    #[test]
    fn a_dropped_large_frames_memory_is_taken_up_by_the_next() {
        let first = copied_in(&ByteBuf::from(vec![7; 100_000]));
        let (at, room) = memory_of(&first);
        // Fresh memory: the frame's length, rounded up to whole pages with one to spare.
        let needed = first.len();
        assert_eq!(room, (needed + PAGE).next_multiple_of(PAGE));
        drop(first);
        assert_eq!(kept(), room);
        let larger = ByteBuf::from(vec![8; 100_000 + PAGE / 2]);
        let second = copied_in(&larger);
        assert_eq!(
            memory_of(&second),
            (at, room),
            "in the first frame's memory"
        );
        assert_eq!(kept(), 0);
        let mut copied = vec![0; LENGTH_PREFIX];
        copied.extend(postcard::to_stdvec(&larger).expect("encodes"));
        assert_eq!(second.contiguous(), Some(&copied[..]));
    }

    /// A large vector sent as shared bytes leaves its memory for the next large vector decoded,
    /// once the last share is dropped; a small one is freed and copied as usual.
    #[test]
    fn a_sent_vectors_memory_is_taken_up_by_the_next_decoded() {
        let sent = vec![7u8; 100_000];
        let (at, room) = (sent.as_ptr(), sent.capacity());
        let whole = shared(sent);
        let share = whole.slice(10..20);
        drop(whole);
        assert_eq!(kept(), 0, "a share is still alive");
        drop(share);
        assert_eq!(kept(), room);
        let decoded = copied(&[8; 90_000]);
        assert_eq!((decoded.as_ptr(), decoded.capacity()), (at, room));
        assert_eq!(decoded, [8; 90_000]);
        assert_eq!(kept(), 0);

        drop(shared(vec![1; SPARE_MIN - 1]));
        assert_eq!(kept(), 0, "a vector under {SPARE_MIN} bytes is not kept");
        assert_eq!(copied(&[1, 2, 3]), [1, 2, 3]);

        let mut exactly = Vec::with_capacity(SPARE_MIN);
        exactly.resize(SPARE_MIN, 1);
        drop(shared(exactly));
        assert_eq!(kept(), SPARE_MIN, "a vector of {SPARE_MIN} bytes is kept");
        let small = copied(&[1, 2, 3]);
        assert_eq!((small.as_slice(), small.capacity()), (&[1, 2, 3][..], 3));
        assert_eq!(kept(), SPARE_MIN, "a small copy leaves the spare alone");
    }

    /// A frame that already holds many bytes, with no room left, still moves into a spare to
    /// take a large value, rather than growing into fresh memory.
    #[test]
    fn a_full_frame_moves_into_a_spare_for_a_large_value() {
        let (at, room) = memory_of(&copied_in(&ByteBuf::from(vec![7; 300_000])));
        assert_eq!(kept(), room);
        let mut frame = Frame::from(vec![5; 60_000]);
        frame
            .append(&ByteBuf::from(vec![8; 100_000]))
            .expect("encodes");
        assert_eq!(memory_of(&frame), (at, room), "in the spare's memory");
        let bytes = frame.contiguous().expect("nothing spliced");
        assert_eq!(bytes[..60_000], [5; 60_000]);
        assert_eq!(bytes[bytes.len() - 100_000..], [8; 100_000]);
    }

    /// A frame under 64 KiB (a stream's batch of 32 KiB, say) is freed, not kept; large ones are
    /// kept up to the budget, which holds the frames of four 1 MiB values.
    #[test]
    fn small_frames_are_freed_and_large_ones_kept_within_the_budget() {
        drop(copied_in(&ByteBuf::from(vec![7; 32 * 1024])));
        assert_eq!(kept(), 0, "a frame of 32 KiB is not kept");
        drop(Frame::from(Vec::with_capacity(SPARE_MIN)));
        assert_eq!(kept(), SPARE_MIN, "a frame of {SPARE_MIN} bytes is kept");
        spares().buffers().clear();

        let large = ByteBuf::from(vec![7; 1 << 20]);
        let room = memory_of(&copied_in(&large)).1;
        let many: Vec<Frame> = (0..BUDGET / room + 2).map(|_| copied_in(&large)).collect();
        drop(many);
        let kept = kept();
        assert!(kept <= BUDGET, "{kept} bytes kept");
        assert!(kept + room > BUDGET, "only {kept} bytes kept");
        assert_eq!(kept / room, 4, "the frames of four 1 MiB values are kept");
    }
}
