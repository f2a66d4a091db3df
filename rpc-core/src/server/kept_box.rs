//! The memory of the future that answers a call, kept by a connection from one call to the
//! next: most calls answer on their first poll, and each then left a box to free and the next
//! call one to allocate.

use std::any::Any;
use std::cell::Cell;
use std::pin::Pin;

/// A future pinned in memory that outlives it: the box holds `None` once the future is dropped,
/// and another future of the same type can be pinned in it.
pub(crate) type Pinned<F> = Pin<Box<Option<F>>>;

/// One box kept between calls, of whatever type of future the connection's calls have; a
/// connection's reader owns it. It holds the box in a box of its own, allocated once: a pinned
/// box cannot be taken out of its pin to be stored with its type erased.
#[derive(Default)]
pub(crate) struct KeptBox(Cell<Option<Box<dyn Any + Send>>>);

impl std::fmt::Debug for KeptBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptBox").finish_non_exhaustive()
    }
}

impl KeptBox {
    /// `future`, pinned in the box kept if there is one of its type, else in a new one.
    pub(crate) fn pin<F: Send + 'static>(&self, future: F) -> Pinned<F> {
        let mut kept = self.0.take();
        let reused = slot::<F>(&mut kept).and_then(Option::take);
        self.0.set(kept);
        match reused {
            Some(mut pinned) => {
                pinned.as_mut().set(Some(future));
                pinned
            }
            None => Box::pin(Some(future)),
        }
    }

    /// Drops the future in `pinned` and keeps its box for the next call's; a box of another
    /// type kept before gives way.
    pub(crate) fn keep<F: Send + 'static>(&self, mut pinned: Pinned<F>) {
        pinned.as_mut().set(None);
        let mut kept = self.0.take();
        match slot::<F>(&mut kept) {
            Some(slot) => *slot = Some(pinned),
            None => kept = Some(Box::new(Some(pinned))),
        }
        self.0.set(kept);
    }
}

/// The place of a box for futures of type `F` in what is kept, if what is kept is one.
fn slot<F: 'static>(kept: &mut Option<Box<dyn Any + Send>>) -> Option<&mut Option<Pinned<F>>> {
    kept.as_mut()?.downcast_mut()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts its drops.
    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A box kept is the one the next future of its type is pinned in, the future it held
    /// having been dropped when it was kept; a box of another type replaces it.
    #[test]
    fn the_next_future_of_a_type_takes_the_box_kept() {
        let kept = KeptBox::default();
        let drops = Arc::new(AtomicUsize::new(0));
        let first = kept.pin(Counted(Arc::clone(&drops)));
        let address = std::ptr::from_ref(&*first);
        kept.keep(first);
        assert_eq!(
            drops.load(Ordering::Relaxed),
            1,
            "the first future was dropped"
        );

        let second = kept.pin(Counted(Arc::clone(&drops)));
        assert_eq!(std::ptr::from_ref(&*second), address, "the same box");
        let other = kept.pin(7u64);
        assert_eq!(*other, Some(7));
        kept.keep(second);
        assert_eq!(drops.load(Ordering::Relaxed), 2);

        let other_address = std::ptr::from_ref(&*other);
        kept.keep(other);
        let next = kept.pin(8u64);
        assert_eq!(
            std::ptr::from_ref(&*next),
            other_address,
            "the other type's box"
        );
        assert_eq!(*next, Some(8));
    }
}
