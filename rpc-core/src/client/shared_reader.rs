//! A connection's reader that a lone call drives itself while it waits.
//!
//! A client's reader runs as a task on one of the runtime's workers. A call made on the thread
//! that runs `block_on` (as a `#[tokio::main]` function's body is) waits for that task to read
//! its answer and wake it: a thread's wakeup for every answer, and another for every call, whose
//! request wakes the reader's worker, asleep since the last answer. On a VM a wakeup takes
//! microseconds, and the two were most of what such calls took beyond the floor's
//! (BENCHMARKS.md). Here the reader's future is kept where such a caller can poll it: while it
//! waits, the caller reads the socket itself, as a program with no framework would, and the
//! reader's task stands aside, woken for nothing.
//!
//! A call from a task, on a worker, drives the reader too while it is the connection's only
//! call in flight. It spares no thread's wakeup (the reader's task would run on the caller's
//! worker), but the hand-over of its answer from the reader's task to its own, and the reader's
//! next look at its socket, which came between the answer and the caller: the reader stops
//! once it has answered the call of the caller that polls it ([`stops_for_driver`]), and its
//! task takes that look once the caller waits again, its next request sent.
//!
//! Whoever polls the reader's future (its task, or the one caller that drives it at a time)
//! polls it with one waker, [`Route`]'s, which wakes the caller while one drives and the task
//! otherwise, so that what the future waits for (the socket, its timers, the next call) wakes
//! whoever will poll it next. Until a caller first drives, the task polls with its own waker.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// The reader's future, boxed so that its task and its callers share one type.
type ReaderFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection's reader, polled by its task ([`SharedReader::task`]) or by a caller that
/// drives it while it waits for its answer ([`Driving::drive`]).
pub(crate) struct SharedReader {
    /// The reader's future, `None` once it has ended. Locked only while it is polled.
    future: Mutex<Option<ReaderFuture>>,
    route: Arc<Route>,
    /// The waker that is `route`'s.
    waker: Waker,
}

/// Where a wake of the reader goes: to the caller that drives it, if one does, else to its
/// task.
#[derive(Default)]
struct Route {
    /// A caller drives the reader: wakes go to `caller`, unless `crowded`.
    driven: AtomicBool,
    /// Another call is in flight, or a stream open, while a caller drives the reader: wakes go
    /// to the task, which is sure to poll it. A caller's future may be left unpolled for a
    /// while (kept aside, or polled once with a waker that does nothing), and only its own
    /// answer may wait for it.
    crowded: AtomicBool,
    /// A caller has driven the reader at least once: its task polls it with this route's waker
    /// from then on, rather than its own.
    routed: AtomicBool,
    /// Woken since the last poll of the future began: a caller that stops driving hands the
    /// wake to the task, which would otherwise have missed it.
    woken: AtomicBool,
    /// Someone found the future locked, polled by another, and did not poll it: the one polling
    /// it wakes whoever drives it once it is done, so that the wake that was found is not lost.
    contended: AtomicBool,
    caller: AtomicWaker,
    task: AtomicWaker,
}

impl Wake for Route {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Sequentially consistent with a caller's stop (`Driving::drop`): either this sees
        // that no caller drives, or the caller sees this wake and hands it to the task.
        self.woken.store(true, Ordering::SeqCst);
        if self.driven.load(Ordering::SeqCst) && !self.crowded.load(Ordering::SeqCst) {
            self.caller.wake();
        } else {
            self.task.wake();
        }
    }
}

thread_local! {
    /// The call whose caller, a task on one of the runtime's workers, polls a reader on this
    /// thread now ([`Driving::drive`]), if one does.
    static DRIVEN_FOR: Cell<Option<u64>> = const { Cell::new(None) };
    /// The reader that caller polls stopped after answering its call ([`stop_for_driver`]).
    static STOPPED_FOR_DRIVER: Cell<bool> = const { Cell::new(false) };
}

/// Whether the reader, having just handed call `id` its answer, stops there: if `id`'s caller,
/// a task on one of the runtime's workers, is polling it now ([`Driving::drive`]). The caller
/// then has its answer at once, and the reader's next look at its socket waits for its task,
/// which the caller wakes: it runs on the caller's worker once the caller waits again, having
/// sent its next call. Looked at first, that look came between the answer and its caller,
/// some 0.13-0.16 µs (TSC probes on a two-core VM, 2026-12-08). A caller off the workers takes
/// no such stop: its reader's task would run on a worker, while the caller's next call looks
/// for the reader and finds it busy.
#[inline]
pub(crate) fn stops_for_driver(id: u64) -> bool {
    if DRIVEN_FOR.with(Cell::get) != Some(id) {
        return false;
    }
    STOPPED_FOR_DRIVER.with(|stopped| stopped.set(true));
    true
}

/// Returns `Pending` once, waking no one: the reader's stop for the caller polling it
/// ([`stops_for_driver`]), whose [`Driving::drive`] wakes the reader's task.
pub(crate) async fn stop_for_driver() {
    let mut stopped = false;
    std::future::poll_fn(|_| {
        if std::mem::replace(&mut stopped, true) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

/// What one attempt to poll the reader's future did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// It was polled, and waits.
    Polled,
    /// Another was polling it; that one passes on the wake when it is done.
    Busy,
    /// It has ended (now, or before).
    Ended,
}

impl SharedReader {
    /// Keeps `future`, the connection's reader, for its task and its callers.
    pub(crate) fn new(future: impl Future<Output = ()> + Send + 'static) -> Arc<Self> {
        let route = Arc::new(Route::default());
        Arc::new(SharedReader {
            future: Mutex::new(Some(Box::pin(future))),
            waker: Waker::from(Arc::clone(&route)),
            route,
        })
    }

    /// The reader's task: polls the future whenever a caller is not driving it, until it ends.
    pub(crate) fn task(self: Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let mut first = true;
        std::future::poll_fn(move |cx| {
            let routed = self.route.routed.load(Ordering::SeqCst);
            // Until a caller drives the reader, nothing takes the waker registered at the first
            // poll: only a wake through the route does, and the task registers again at the
            // poll that wake brings.
            if routed || std::mem::take(&mut first) {
                self.route.task.register(cx.waker());
            }
            match self.take_turn((!routed).then_some(cx.waker())) {
                Turn::Ended => Poll::Ready(()),
                Turn::Polled | Turn::Busy => Poll::Pending,
            }
        })
    }

    /// Starts driving the reader for a call whose task `waker` wakes (a task on one of the
    /// runtime's workers, then `on_a_worker` is the call's id, or the `block_on` of a thread
    /// off them); `None` if another caller drives it already, or if the call is not `alone`
    /// (the connection's only call in flight, with no stream open). While the returned
    /// [`Driving`] lives, what would wake the reader's task wakes the caller instead, until
    /// another call crowds it ([`SharedReader::crowd`]). Made before the call's request goes
    /// out, so that the wake its sending gives the reader comes to the caller.
    ///
    /// `alone` is asked before and after the reader is taken: a call that starts meanwhile
    /// either sees it driven and crowds it, or is seen here.
    pub(crate) fn start_driving(
        self: &Arc<Self>,
        waker: &Waker,
        on_a_worker: Option<u64>,
        mut alone: impl FnMut() -> bool,
    ) -> Option<Driving> {
        if !alone() {
            return None;
        }
        self.route
            .driven
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()?;
        // Registered only once the reader is this caller's: a wake in between goes to the
        // caller before, for nothing, but this one polls the reader before it waits.
        self.route.caller.register(waker);
        self.route.routed.store(true, Ordering::SeqCst);
        let driving = Driving {
            reader: Arc::clone(self),
            on_a_worker,
        };
        if !alone() {
            self.crowd();
        }
        Some(driving)
    }

    /// A call that does not drive the reader starts (or a stream opens): if a caller drives it,
    /// its wakes go to the task from now on, and the task takes a turn at once, lest a wake it
    /// would have needed went to a caller that does not poll.
    pub(crate) fn crowd_if_driven(&self) {
        if self.route.driven.load(Ordering::SeqCst) {
            self.crowd();
        }
    }

    fn crowd(&self) {
        self.route.crowded.store(true, Ordering::SeqCst);
        self.route.task.wake();
    }

    /// Polls the future once, unless another is polling it, with the route's waker for what it
    /// waits for, or with `unrouted`, the task's own, until a caller has driven the reader (until
    /// then, nobody looks at its wakes).
    fn take_turn(&self, unrouted: Option<&Waker>) -> Turn {
        let locked = match self.future.try_lock() {
            // Found busy: the one polling passes the wake on once it is done. Looked at again
            // after saying so, in case it was done before it could see it.
            Err(TryLockError::WouldBlock) => {
                self.route.contended.store(true, Ordering::SeqCst);
                self.future.try_lock()
            }
            locked => locked,
        };
        let mut future = match locked {
            Ok(future) => future,
            Err(TryLockError::WouldBlock) => return Turn::Busy,
            // The reader panicked in an earlier poll, and cannot be polled again.
            Err(TryLockError::Poisoned(_)) => return Turn::Ended,
        };
        let Some(reader) = future.as_mut() else {
            return Turn::Ended;
        };
        if unrouted.is_none() {
            self.route.woken.store(false, Ordering::SeqCst);
        }
        let waker = unrouted.unwrap_or(&self.waker);
        let turn = match reader.as_mut().poll(&mut Context::from_waker(waker)) {
            Poll::Ready(()) => {
                *future = None;
                Turn::Ended
            }
            Poll::Pending => Turn::Polled,
        };
        drop(future);
        if self.route.contended.load(Ordering::SeqCst)
            && self.route.contended.swap(false, Ordering::SeqCst)
        {
            self.waker.wake_by_ref();
        }
        if turn == Turn::Ended {
            // Its task, if a caller saw the end, ends too.
            self.route.task.wake();
        }
        turn
    }
}

/// A caller drives the connection's reader until this is dropped: [`Driving::drive`] polls
/// it, and from the drop on its task does.
pub(crate) struct Driving {
    reader: Arc<SharedReader>,
    /// The caller's call, if the caller is a task on one of the runtime's workers: the reader
    /// stops once it has answered it ([`stops_for_driver`]).
    on_a_worker: Option<u64>,
}

impl Driving {
    /// Polls the reader for the caller whose task `cx` wakes: what the reader waits for wakes
    /// that caller. Returns whether the reader was polled (it may have read the caller's answer
    /// then).
    pub(crate) fn drive(&self, cx: &Context<'_>) -> bool {
        let route = &self.reader.route;
        route.caller.register(cx.waker());
        DRIVEN_FOR.with(|call| call.set(self.on_a_worker));
        let turn = self.reader.take_turn(None);
        DRIVEN_FOR.with(|call| call.set(None));
        if STOPPED_FOR_DRIVER.with(|stopped| stopped.replace(false)) {
            // Waits for nothing else: its task takes its next turn.
            route.task.wake();
        }
        turn != Turn::Busy
    }
}

impl Drop for Driving {
    fn drop(&mut self) {
        let route = &self.reader.route;
        // Uncrowded before it is free: a caller that takes it next, and finds other calls in
        // flight, crowds it again after.
        route.crowded.store(false, Ordering::SeqCst);
        route.driven.store(false, Ordering::SeqCst);
        // Woken since the caller's last turn began: the caller takes one more, whose wakes go
        // to the task, rather than wake the task for it. (A wake there was one at the end of
        // one call in ten; handed to the task, it woke a worker to take the turn, which a
        // caller starting the next call then found busy.)
        if route.woken.load(Ordering::SeqCst) {
            self.reader.take_turn(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::AtomicUsize;

    use crate::task::Wakes;

    /// A future that counts its polls and waits for `wake` each time, as a reader waits for
    /// its socket.
    #[derive(Default)]
    struct Waits {
        polls: AtomicUsize,
        waker: AtomicWaker,
        done: AtomicBool,
    }

    impl Waits {
        fn future(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
            let waits = Arc::clone(self);
            std::future::poll_fn(move |cx| {
                waits.polls.fetch_add(1, Ordering::SeqCst);
                waits.waker.register(cx.waker());
                if waits.done.load(Ordering::SeqCst) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
        }

        fn wake(&self) {
            self.waker.wake();
        }
    }

    fn counting() -> (Arc<Wakes>, Waker) {
        let counts = Arc::new(Wakes::default());
        (Arc::clone(&counts), Waker::from(counts))
    }

    /// A shared reader of a [`Waits`] future, its task polled once, and a caller's waker: each
    /// counts its wakes.
    struct Fixture {
        waits: Arc<Waits>,
        reader: Arc<SharedReader>,
        task: Pin<Box<dyn Future<Output = ()> + Send>>,
        task_wakes: Arc<Wakes>,
        task_waker: Waker,
        caller_wakes: Arc<Wakes>,
        caller_waker: Waker,
    }

    impl Fixture {
        fn new() -> Self {
            let waits = Arc::new(Waits::default());
            let reader = SharedReader::new(waits.future());
            let task = Box::pin(Arc::clone(&reader).task());
            let (task_wakes, task_waker) = counting();
            let (caller_wakes, caller_waker) = counting();
            let mut fixture = Fixture {
                waits,
                reader,
                task,
                task_wakes,
                task_waker,
                caller_wakes,
                caller_waker,
            };
            assert!(fixture.poll_task().is_pending());
            fixture
        }

        fn poll_task(&mut self) -> Poll<()> {
            let mut cx = Context::from_waker(&self.task_waker);
            self.task.as_mut().poll(&mut cx)
        }

        /// Starts driving for a caller that is alone as long as `alone` says.
        fn start_driving(&self, alone: impl FnMut() -> bool) -> Option<Driving> {
            self.reader.start_driving(&self.caller_waker, None, alone)
        }

        fn drive(&self, driving: &Driving) -> bool {
            driving.drive(&Context::from_waker(&self.caller_waker))
        }

        fn task_wakes(&self) -> usize {
            self.task_wakes.0.load(Ordering::SeqCst)
        }

        fn caller_wakes(&self) -> usize {
            self.caller_wakes.0.load(Ordering::SeqCst)
        }

        fn polls(&self) -> usize {
            self.waits.polls.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn while_a_caller_drives_the_reader_its_wakes_go_to_the_caller_and_after_to_the_task() {
        let mut fixture = Fixture::new();
        let driving = fixture.start_driving(|| true).expect("nobody drives yet");
        assert!(
            fixture.start_driving(|| true).is_none(),
            "one caller at a time"
        );
        // Registered by the task with its own waker: that wake still reaches the task.
        fixture.waits.wake();
        assert_eq!(fixture.task_wakes(), 1);
        assert!(fixture.drive(&driving));
        assert_eq!(fixture.polls(), 2);
        // Registered by the caller's turn: the wake goes to the caller.
        fixture.waits.wake();
        assert_eq!(fixture.caller_wakes(), 1);
        assert_eq!(fixture.task_wakes(), 1);
        // The caller stops with that wake not yet polled for: it takes one more turn itself
        // rather than wake the task.
        drop(driving);
        assert_eq!(fixture.polls(), 3);
        assert_eq!(fixture.task_wakes(), 1);
        // What that turn waits for wakes the task.
        fixture.waits.wake();
        assert_eq!(fixture.task_wakes(), 2);
        assert_eq!(fixture.caller_wakes(), 1);
        assert!(fixture.poll_task().is_pending());
        assert_eq!(fixture.polls(), 4);
        // Polled by the task since, with the route's waker: it wakes the task.
        fixture.waits.wake();
        assert_eq!(fixture.task_wakes(), 3);
        assert_eq!(fixture.caller_wakes(), 1);
    }

    #[test]
    fn a_call_that_crowds_a_driven_reader_sends_its_wakes_to_the_task_and_wakes_it() {
        let mut fixture = Fixture::new();
        let not_alone = fixture.start_driving(|| false);
        assert!(not_alone.is_none(), "a call not alone does not drive");
        fixture.reader.crowd_if_driven();
        assert_eq!(fixture.task_wakes(), 0, "nobody drives");

        let driving = fixture.start_driving(|| true).expect("alone");
        assert!(fixture.drive(&driving));
        fixture.reader.crowd_if_driven();
        assert_eq!(fixture.task_wakes(), 1, "woken to take a turn");
        assert!(fixture.poll_task().is_pending());
        fixture.waits.wake();
        assert_eq!(
            fixture.task_wakes(),
            2,
            "what the reader waits for wakes the task"
        );
        assert_eq!(fixture.caller_wakes(), 0);
        assert!(fixture.poll_task().is_pending());
        drop(driving);

        // Found crowded right after it was taken: the task hears at once.
        let mut looks = [true, false].into_iter();
        let driving = fixture.start_driving(|| looks.next().unwrap_or(false));
        assert!(driving.is_some());
        assert_eq!(fixture.task_wakes(), 3);
        assert!(fixture.poll_task().is_pending());
        drop(driving);

        // Uncrowded for the next caller that finds itself alone.
        let driving = fixture.start_driving(|| true).expect("alone");
        assert!(fixture.drive(&driving));
        fixture.waits.wake();
        assert_eq!(fixture.caller_wakes(), 1);
        assert_eq!(fixture.task_wakes(), 3);
    }

    #[test]
    fn a_caller_that_stops_after_its_turn_with_no_wake_since_leaves_the_task_asleep() {
        let fixture = Fixture::new();
        let driving = fixture.start_driving(|| true).expect("nobody drives yet");
        assert!(fixture.drive(&driving));
        drop(driving);
        assert_eq!(fixture.task_wakes(), 0);
    }

    #[test]
    fn a_reader_that_ends_under_a_caller_ends_its_task() {
        let mut fixture = Fixture::new();
        let driving = fixture.start_driving(|| true).expect("nobody drives yet");
        fixture.waits.done.store(true, Ordering::SeqCst);
        assert!(fixture.drive(&driving));
        assert!(fixture.task_wakes() >= 1);
        assert!(fixture.poll_task().is_ready());
        // Driven after its end, it is not polled again.
        assert!(fixture.drive(&driving));
        assert_eq!(fixture.polls(), 2);
    }

    /// A reader stops after an answer only for the call of the caller on a worker that polls it
    /// then, and that caller's turn wakes the reader's task to take the next one: no other
    /// call's answer, nor an answer read by the task, stops it.
    #[test]
    fn a_reader_stops_only_for_the_call_of_the_caller_on_a_worker_polling_it() {
        let stops: Arc<Mutex<Vec<bool>>> = Arc::default();
        let future = {
            let stops = Arc::clone(&stops);
            std::future::poll_fn(move |_| {
                stops.lock().expect("lock").push(stops_for_driver(7));
                Poll::<()>::Pending
            })
        };
        let reader = SharedReader::new(future);
        let mut task = Box::pin(Arc::clone(&reader).task());
        let (task_wakes, task_waker) = counting();
        let mut poll_task = || {
            task.as_mut()
                .poll(&mut Context::from_waker(&task_waker))
                .is_pending()
        };
        assert!(poll_task(), "polled by its task");
        let (_, caller_waker) = counting();
        let drive = |on_a_worker: Option<u64>| {
            let driving = reader
                .start_driving(&caller_waker, on_a_worker, || true)
                .expect("nobody drives");
            assert!(driving.drive(&Context::from_waker(&caller_waker)));
        };
        drive(Some(7));
        assert_eq!(
            task_wakes.0.load(Ordering::SeqCst),
            1,
            "its task takes the next turn"
        );
        drive(Some(8));
        drive(None);
        assert!(poll_task());
        assert_eq!(
            *stops.lock().expect("lock"),
            [false, true, false, false, false]
        );
        assert_eq!(task_wakes.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_turn_found_busy_is_passed_on_by_the_one_polling() {
        // The reader's future, while the task polls it, is driven by a caller: the caller finds
        // it busy, and the task's turn ends by waking whoever drives it, the caller.
        let reader_slot: Arc<Mutex<Option<Arc<SharedReader>>>> = Arc::default();
        let (caller_wakes, caller_waker) = counting();
        let found_busy = Arc::new(AtomicBool::new(false));
        let future = {
            let reader_slot = Arc::clone(&reader_slot);
            let caller_waker = caller_waker.clone();
            let found_busy = Arc::clone(&found_busy);
            std::future::poll_fn(move |_| {
                let reader = reader_slot.lock().expect("lock").clone();
                if let Some(reader) = reader
                    && let Some(driving) = reader.start_driving(&caller_waker, None, || true)
                {
                    let busy = !driving.drive(&Context::from_waker(&caller_waker));
                    found_busy.store(busy, Ordering::SeqCst);
                    // Still driving when the task's turn ends.
                    std::mem::forget(driving);
                }
                Poll::<()>::Pending
            })
        };
        let reader = SharedReader::new(future);
        *reader_slot.lock().expect("lock") = Some(Arc::clone(&reader));
        let mut task = Box::pin(Arc::clone(&reader).task());
        let (_, task_waker) = counting();
        assert!(
            task.as_mut()
                .poll(&mut Context::from_waker(&task_waker))
                .is_pending()
        );
        assert!(found_busy.load(Ordering::SeqCst));
        assert_eq!(caller_wakes.0.load(Ordering::SeqCst), 1);
        reader_slot.lock().expect("lock").take();
    }
}
