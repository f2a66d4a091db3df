//! Busy polling ([`ClientBuilder::busy_poll`], [`ServerBuilder::busy_poll`]): when a reader polls
//! again at the runtime's next turn instead of waiting to be woken. It does for its window after
//! the last bytes it read, and, on a client, after the look at which it sees a call sent while it
//! polls: the answers to calls made one after another then find the reader's thread awake. It is on
//! by default, up to [`DEFAULT_WINDOW`], on every connection whose peer runs in another process, or
//! on another runtime of this one ([`crate::peer_process`]). On one runtime a call's two ends meet
//! without a thread woken, and polling after a lone call only slows them: there a reader polls only
//! after a read that brought several frames, a pipelining peer's, and a client's only while few of
//! its calls are in flight ([`BusyPoll::after_batches_only`]), unless a call made off the runtime's
//! workers polls it itself, whose two ends are on two threads ([`BusyPoll::batches_only`]).
//!
//! The window adapts to the connection, between nothing and the window the builder was given
//! (its most), as a guest kernel's halt polling does:
//!
//! - Bytes that come once the window after the bytes before them is over, but within reach of
//!   the most, for the second time in a row, double it (from nothing, to two microseconds):
//!   polling a little longer would have found them awake, and not by chance. Bytes that come
//!   within the window leave it as it is. Once was enough before: then a tenth of calls started
//!   a millisecond apart, which came within the most of the call before as a tenth of calls
//!   made at random would, grew the window again and again.
//! - Every second time in a row that the reader polls through its window and finds nothing, it
//!   goes to sleep with the window halved, and with none once that is under a microsecond,
//!   unless bytes within reach of the most came in between. A frame late now and then is no
//!   reason to stop: halving at every such sleep cost calls on one busy connection about 5% of
//!   their rate.
//! - Within reach of the most is within twice the most of the bytes before. A reader that went
//!   to sleep sees bytes only once it is woken, and waking it takes up to about the most
//!   ([`DEFAULT_WINDOW`]): counted from its read, bytes that came soon after its window had
//!   closed look later than they came. Held to the most itself, sequential calls between two
//!   processes on a two-core virtual machine, whose sleeping readers took about 100 µs to
//!   wake, lost their window to a few slow answers in a row, and then seldom got it back, each
//!   answer now a wakeup late: 2.3–5.3% of calls took over 50 µs (the gaps between the
//!   client's reads of answers, from `perf`'s system-call tracepoints), against 1.3–1.6% within
//!   twice the most, and the p99 went from 66–122 µs to 27–78 (eight interleaved pairs of
//!   runs, 2026-12-06; the p50 was 7.6–7.9 µs either way).
//! - A reader that went to sleep sleeps until its next bytes, as without busy polling, whatever
//!   wakes its task meanwhile (a call sent, a deadline to watch).
//! - A reader whose connection has a stream open, either way, does not poll: while a stream's
//!   items flow they keep its reader busy, and a reader polling between them took the CPU time
//!   its peer needed to send them (on a two-core virtual machine, a stream of small items
//!   between two processes went a third slower with both ends polling).
//! - A reader does not poll while the rest of a large frame (128 KiB or more) is still to come,
//!   nor after handing one on, until its next bytes. Such frames come at the pace of the
//!   copies that move them, which a wakeup does not slow much; a reader polling through them
//!   took the CPU time its peer and the kernel needed to send them (between two processes on
//!   a two-core virtual machine, 1 MiB echoes made five times the system calls they make
//!   without polling, and ran about a tenth slower). A smaller frame's rest comes within a
//!   window, and is polled for (`frame::UNPOLLED_FRAME`).
//! - A client's reader on a runtime of several workers that has handed on the answer to its
//!   only call in flight does not poll, but waits for the next call to be sent, which wakes it
//!   to poll for that call's answer ([`BusyPoll::wait_for_call`]): no answer is on its way, and
//!   its polling took the core that its caller needed to send the next call.
//! - A call made off such a runtime's workers, in a `block_on` as `#[tokio::main]`'s body is,
//!   mostly polls the reader itself while it waits (`client::shared_reader`), and its thread
//!   polls then, with its TCP socket's low-water mark raised so that the answer it reads
//!   itself wakes no worker ([`crate::socket`]).
//!   A reader that its task polls for the answer to such a call (one another caller
//!   drives, or one crowded by other calls) yields its thread between looks
//!   ([`BusyPoll::poll_again`]): the caller's thread is one more than the workers, and on two
//!   cores, with the reader and its server both polling, a caller woken with its answer waited
//!   at times for one of them to be preempted.
//!
//! A reader of a TCP or Unix socket that polls looks at the socket itself when tokio finds
//! nothing: on a multi-thread runtime, tokio sees a socket's bytes only once the worker holding
//! its I/O driver, often one asleep, is woken ([`crate::socket`]). A reader over TLS has the TCP
//! stream beneath look so for it.
//!
//! So a connection whose frames come closer together than the most polls for them, and one
//! whose frames come further apart than twice the most stops after a few windows' worth of CPU
//! time, rather than polling a whole window after every frame. (Frames between the two keep
//! the window they have: such a connection polls for up to the most after each, for frames
//! that a sleeping reader would read a wakeup late.) On a two-core virtual machine, with 100 µs
//! on both ends, calls started a millisecond apart (`rpc-bench --busy-poll`, its last two rows)
//! took a median 13.4–14.6 µs, against 12.8–13.4 with busy polling off, at 40–55 µs of CPU time
//! a call across both processes either way, when the window began to adapt. With the window
//! fixed they had taken 57–64 µs, at 276–280 µs of CPU time: each end paid its whole window
//! after every frame, and a thread that polls while its peer's sleeps slowed the peer's wakeup
//! there. Calls close together went as fast either way. In two full runs of 2026-12-06, on a slower
//! virtual machine of that kind, calls 1 ms apart took 20.5 and 23.1 µs against 20.2 and 20.5 with
//! polling off, at 65 and 90 µs of CPU time a call against 60 and 75; in the next, on one where a
//! thread woken after a millisecond asleep took longer, 83.1 µs against 70.5, at 75 against 70 (by
//! hand there, three pairs: 73.8–82.0 against 75.4–93.9).
//!
//! Times come from the system's clock, not tokio's: a spin never lets a paused clock advance,
//! so under tokio's paused clock it would never end.
//!
//! [`ClientBuilder::busy_poll`]: crate::ClientBuilder::busy_poll
//! [`ServerBuilder::busy_poll`]: crate::ServerBuilder::busy_poll

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;

use super::SendGate;
use crate::slots::CallSlots;
use crate::stream::Streams;

/// The most window of a client's and a server's busy polling unless set: about what a call's
/// answer takes between two processes on one machine when their threads are awake (8 µs in
/// this crate's benchmark) many times over, and what waking a sleeping thread can take on a
/// virtual machine.
pub(crate) const DEFAULT_WINDOW: Duration = Duration::from_micros(100);

/// A window halved below this many nanoseconds is no window: the reader stops polling. Doubled
/// from none, a window starts at twice this.
const SHORTEST_WINDOW: u64 = 1_000;

/// How many times in a row the reader polls through its window in vain before it halves.
const IN_VAIN_TO_HALVE: u8 = 2;

/// How many times in a row bytes come just after the window before it doubles.
const MISSED_TO_DOUBLE: u8 = 2;

/// A reader's busy polling: its window, and when it last had reason to poll. Windows are in
/// nanoseconds, which takes a reader's state down a size class from `Duration`s: every
/// connection with a peer elsewhere holds one.
#[derive(Debug)]
pub(super) struct BusyPoll {
    /// The longest window: the one the builder was given.
    most: u64,
    /// The window now, up to `most` (see the module's doc).
    window: u64,
    /// When the reader last read bytes, as the look that timed them read the clock
    /// ([`BusyPoll::read`]).
    read: Instant,
    /// Bytes were read since `read` was last set: their time is the next look's that reads the
    /// clock.
    unclocked: bool,
    /// What the window runs from: the last bytes read, or the look since at which the reader
    /// last saw that a call had gone out ([`CallSent`]), whichever came later.
    from: Instant,
    /// What the reader has done since its last bytes.
    since_read: SinceRead,
    /// How many times in a row, up to [`IN_VAIN_TO_HALVE`], it polled through its window in vain.
    in_vain: u8,
    /// How many times in a row, up to [`MISSED_TO_DOUBLE`], bytes came just after its window.
    missed: u8,
    /// What the connection's callers tell it.
    calls: Arc<CallSent>,
    /// The connection's streams: it does not poll while any is open.
    streams: Arc<Streams>,
    /// Whether it polls only after reads that brought [`BATCH`] frames or more
    /// ([`BusyPoll::after_batches_only`]).
    after_batches_only: bool,
    /// A client's calls in flight ([`BusyPoll::count_calls`]).
    in_flight: Option<Arc<CallSlots>>,
    /// The frames handed on since the last read, up to [`BATCH`].
    frames_since_read: u8,
    /// A client's gate, raised while its writer sends on the same socket: it waits for such
    /// a send before it reads ([`SendGate`]).
    send_gate: Option<Arc<SendGate>>,
    /// Whether a client's reader waits for a call to be sent after answering its only call in
    /// flight ([`BusyPoll::wait_for_call`]).
    waits_for_calls: bool,
}

/// How many frames one read must bring for a reader polling only after batches to poll.
const BATCH: u8 = 2;

/// How many calls in flight a client's reader takes its worker's next turn with, at most,
/// unless it polls only after batches ([`BusyPoll::count_calls`]).
const FEW_CALLS: usize = 64;

/// What a reader has done since its last bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SinceRead {
    /// Nothing yet.
    Nothing,
    /// It polled again, within its window.
    Polled,
    /// It went to sleep: it polls no more until its next bytes come.
    Slept,
    /// A client's reader handed on the answer to its only call in flight: it polls no more
    /// until a call is sent or bytes come ([`BusyPoll::wait_for_call`]).
    AwaitsCall,
}

/// Where a client's callers tell its reader that a call went out: the answer is on its way, so
/// a reader that polls does for a window from when it sees that, at its next look. The reader
/// reads the clock at each look anyway; a caller that did at every call spent about 110
/// instructions on it, 2.3% of the client's with 32 callers on one connection (callgrind).
///
/// A reader that answered its only call in flight waits for the next call here rather than
/// poll ([`BusyPoll::wait_for_call`]), and the call sent wakes it.
#[derive(Debug, Default)]
pub(crate) struct CallSent {
    /// A call went out since the reader last looked.
    sent: AtomicBool,
    /// The reader waits for a call to be sent, to poll for its answer.
    waits: AtomicBool,
    /// The last call went out from a thread that is not one of the runtime's workers (a
    /// `block_on`, as `#[tokio::main]`'s body runs on): a reader polling for its answer yields
    /// its thread between looks ([`BusyPoll::poll_again`]).
    off_workers: AtomicBool,
    /// Where the reader waits.
    reader: AtomicWaker,
}

impl CallSent {
    /// A call went out, from a thread `off_workers` or from a task on one of the runtime's
    /// workers: a reader that polls does for its window from its next look, and one that waits
    /// for a call is woken.
    pub(crate) fn now(&self, off_workers: bool) {
        if self.off_workers.load(Ordering::Relaxed) != off_workers {
            self.off_workers.store(off_workers, Ordering::Relaxed);
        }
        // Written only if it changes: with many callers, a store at every call would take the
        // line from the reader's core each time.
        if !self.sent.load(Ordering::Relaxed) {
            // Sequentially consistent with the reader's note that it waits and its look at
            // this flag after it ([`CallSent::wait`]): one of the two sees the other's.
            self.sent.store(true, Ordering::SeqCst);
        }
        if self.waits.load(Ordering::SeqCst) && self.waits.swap(false, Ordering::SeqCst) {
            self.reader.wake();
        }
    }

    /// The reader waits for a call to be sent, to be woken with `waker`; false if one was
    /// already (it does not wait then).
    fn wait(&self, waker: &Waker) -> bool {
        self.reader.register(waker);
        self.waits.store(true, Ordering::SeqCst);
        if self.sent.load(Ordering::SeqCst) {
            self.waits.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Whether a call went out since the reader last looked, leaving that for its look.
    fn is_sent(&self) -> bool {
        self.sent.load(Ordering::Acquire)
    }

    /// Whether the last call went out from a thread off the runtime's workers.
    fn off_workers(&self) -> bool {
        self.off_workers.load(Ordering::Relaxed)
    }

    /// Whether a call went out since the last time this was asked.
    fn take(&self) -> bool {
        self.sent.load(Ordering::Relaxed) && self.sent.swap(false, Ordering::Acquire)
    }
}

impl BusyPoll {
    /// Busy polling for up to `most`, from now, on a connection with `streams`.
    pub(super) fn new(most: Duration, streams: Arc<Streams>) -> Self {
        let now = Instant::now();
        BusyPoll {
            most: nanos(most),
            window: nanos(most),
            read: now,
            from: now,
            unclocked: false,
            since_read: SinceRead::Nothing,
            in_vain: 0,
            missed: 0,
            calls: Arc::default(),
            streams,
            after_batches_only: false,
            in_flight: None,
            frames_since_read: 0,
            send_gate: None,
            waits_for_calls: false,
        }
    }

    /// Polls only after a read that brought several frames: a server's reader of a client on
    /// its own runtime. There a reader polling after a lone call's request only keeps a worker
    /// from the tasks that answer it (a sequential call on one shared runtime of two workers
    /// took 15 µs, and 21–27 with the server polling); requests that come several to a read
    /// are pipelined callers', whose next ones come sooner than a sleeping worker wakes (32
    /// callers on one connection: 336–388k calls/s, 423–493k polling after batches, in
    /// interleaved runs of `rpc-bench --profile 32 --setup shared`).
    ///
    /// A client's reader so polls whatever its calls in flight, and when it reads its socket
    /// itself, at its worker's next turn ([`BusyPoll::poll_again`]). When a polling reader
    /// waited at each turn for its worker to look for I/O, polling with more than 64 calls in
    /// flight cost 256 callers on one connection about 5% on that setup (747–813k calls/s
    /// against 819–841k), and a client's reader polled only with fewer; taking turns, polling
    /// whatever the calls in flight made 256 callers 1.23–1.44M calls/s against 1.00–1.06M
    /// (interleaved, 2026-12-05), and other workloads as before.
    pub(super) fn after_batches_only(&mut self) {
        self.after_batches_only = true;
    }

    /// Counts a client's calls `in_flight`. While more than [`FEW_CALLS`] are, a reader that
    /// does not poll only after batches (its server is elsewhere) polls again only once its
    /// worker has polled for I/O, not at its next turn ([`BusyPoll::poll_again`]): its answers
    /// then come in full batches, its worker has the callers they wake to run, and a reader
    /// taking a turn among them made 256 callers on one connection 4–11% slower across two
    /// processes and 2–8% between single-thread runtimes (interleaved, 2026-12-05), where with
    /// 32 callers taking turns gained a quarter across two processes and lost nothing between
    /// those runtimes. A reader polling only after batches takes its turns whatever the calls
    /// in flight ([`BusyPoll::after_batches_only`]). If `waits_for_calls`, a reader that has
    /// answered its only call in flight waits for the next call rather than poll
    /// ([`BusyPoll::wait_for_call`]).
    pub(super) fn count_calls(&mut self, in_flight: Arc<CallSlots>, waits_for_calls: bool) {
        self.in_flight = Some(in_flight);
        self.waits_for_calls = waits_for_calls;
    }

    /// Whether a reader that reads its socket itself takes its worker's next turn to poll
    /// again: unless it counts more than [`FEW_CALLS`] calls in flight and does not poll only
    /// after batches.
    fn takes_turns(&self) -> bool {
        self.after_batches_only
            || self
                .in_flight
                .as_ref()
                .is_none_or(|in_flight| in_flight.taken() <= FEW_CALLS)
    }

    /// Waits before each read for a small send under way on the same socket, as `gate` tells.
    pub(super) fn wait_for_sends(&mut self, gate: Arc<SendGate>) {
        self.send_gate = Some(gate);
    }

    /// The gate to wait at before a read, if any.
    pub(super) fn send_gate(&self) -> Option<&SendGate> {
        self.send_gate.as_deref()
    }

    /// A frame the last read brought was handed on, a `large` one or not. After a large frame
    /// the reader sleeps until its next bytes: they come at the pace of the copies that move
    /// large frames, not of a peer's answer, and a reader polling for them takes the CPU time
    /// its peer and the kernel need to send them.
    pub(super) fn frame(&mut self, large: bool) {
        self.frames_since_read = self.frames_since_read.saturating_add(1).min(BATCH);
        if large {
            self.since_read = SinceRead::Slept;
        }
    }

    /// Whether frames of the last read were handed on, and the reader has not polled again
    /// (nor gone to sleep) since.
    pub(super) fn handed_on_since_read(&self) -> bool {
        self.frames_since_read > 0 && self.since_read == SinceRead::Nothing
    }

    /// At the turn a reader takes after handing on a read's frames, whether it waits for a call to
    /// be sent instead, having answered its only call in flight: no answer is on its way. It
    /// registers `cx`'s waker for the next call sent ([`CallSent::now`] wakes it), and reads on
    /// without polling, for the bytes that may come anyway (a ping, a call back) and its silence
    /// timer. Only a client that says so waits ([`BusyPoll::count_calls`]): one on a runtime of
    /// several workers that serves nothing back. There, the turn had the reader polled on while its
    /// caller, woken by the answer, sent the next call; and a turn wakes a parked worker to share
    /// the work, which took the reader from the queue and polled for the whole window, 100 µs, on
    /// the core of the worker running the caller, which waited to send the call that would end it.
    /// Across two processes on a two-core VM, waiting for the call took the sequential calls over
    /// 50 µs from 0.96–1.82% to 0.32–0.57%, of which those late in the client's turnaround from
    /// 76–88% to 25–32% (`scripts/turnaround.sh`, three interleaved pairs, 2026-12-06); the p99
    /// from 27.2–128.9 µs to 25.8–36.3 untraced (five pairs), the p50 and the rates with 32 and 256
    /// callers the same within noise.
    pub(super) fn wait_for_call(&mut self, cx: &mut Context<'_>) -> bool {
        let alone = self.waits_for_calls
            && !self.batches_only()
            && self.frames_since_read == 1
            && self.in_flight.as_deref().is_some_and(CallSlots::lone_call);
        if !alone || !self.calls.wait(cx.waker()) {
            return false;
        }
        self.since_read = SinceRead::AwaitsCall;
        true
    }

    /// Whether the reader has handed on the answer to its only call in flight and waits for the
    /// next call to be sent ([`BusyPoll::wait_for_call`]), with no stream open, and every call
    /// sent will tell it so: its server is elsewhere. (With the server on the client's runtime,
    /// where the reader polls only after batches, calls from tasks tell it nothing.)
    pub(super) fn awaits_a_call_it_is_told_of(&self) -> bool {
        self.since_read == SinceRead::AwaitsCall
            && !self.after_batches_only
            && !self.streams.any_open()
    }

    /// Whether a reader may poll as far as a call goes: one waiting for a call polls once one
    /// has been sent, for a window from the look that sees it.
    fn call_allows(&mut self) -> bool {
        if self.since_read != SinceRead::AwaitsCall {
            return true;
        }
        if self.calls.is_sent() {
            self.since_read = SinceRead::Nothing;
            return true;
        }
        false
    }

    /// Whether a client's reader that polls yields its thread between looks: one on a runtime of
    /// several workers ([`BusyPoll::count_calls`]) whose last call went out from a thread off
    /// them ([`CallSent::now`]), polled by its task on a worker. Polled by that caller itself
    /// (`client::shared_reader`), it does not: the thread it would yield is the caller's.
    fn yields_thread(&self) -> bool {
        self.waits_for_calls
            && !self.after_batches_only
            && self.calls.off_workers()
            && !crate::task::is_off_the_workers()
    }

    /// Whether the last read's frames allow polling.
    fn batch_allows(&self) -> bool {
        !self.batches_only() || self.frames_since_read >= BATCH
    }

    /// Whether the reader polls only after batches now: if it is to
    /// ([`BusyPoll::after_batches_only`]), unless a caller off the runtime's workers polls it
    /// (`client::shared_reader`). A call's two ends then run on two threads, the caller's and a
    /// worker, as they do with the peer elsewhere, and the caller polls for its answer as it
    /// would there, rather than sleep until a worker finds the answer and wakes it.
    fn batches_only(&self) -> bool {
        self.after_batches_only && !crate::task::is_off_the_workers()
    }

    /// Where callers tell this reader of the calls they send.
    pub(super) fn calls(&self) -> &Arc<CallSent> {
        &self.calls
    }

    /// The reader read bytes just now. The clock is read for them at the reader's next look
    /// ([`BusyPoll::clock`]), not here: a server's comes once it has answered the request they
    /// brought, and a client's that waits for its next call ([`BusyPoll::wait_for_call`]) at
    /// the look that call brings, each off a lone call's way from its request to its answer
    /// and on to its next request, where a clock read took 30-40 ns (TSC probes on a two-core
    /// VM, 2026-12-08). The bytes came a little earlier than that look says, as the bytes
    /// before them did: the gap between two reads, which adapts the window, is measured much
    /// as it was, and the window runs from the look as it would from the read.
    pub(super) fn read(&mut self) {
        // A call that went out before these bytes came starts no later window than they do.
        self.calls.take();
        self.unclocked = true;
        self.since_read = SinceRead::Nothing;
        self.frames_since_read = 0;
    }

    /// The reader read bytes at `now`.
    #[cfg(test)]
    fn read_at(&mut self, now: Instant) {
        self.read();
        self.clock(now);
    }

    /// The reader looks at `now`: if it read bytes since its last look, they came then, as far
    /// as the window goes. If they came once the window after the bytes before them was over
    /// (as it ends, polling has stopped: [`BusyPoll::polls_at`]) but within reach of the most
    /// ([`BusyPoll::within_reach`]), for the second time in a row, the window doubles.
    fn clock(&mut self, now: Instant) {
        if !self.unclocked {
            return;
        }
        self.unclocked = false;
        let gap = nanos(now.saturating_duration_since(self.read));
        let within_reach = self.within_reach(gap);
        let just_missed = gap >= self.window && within_reach;
        self.missed = if just_missed { self.missed + 1 } else { 0 };
        if self.missed >= MISSED_TO_DOUBLE {
            self.missed = 0;
            let doubled = self.window.saturating_mul(2).max(SHORTEST_WINDOW * 2);
            self.window = doubled.min(self.most);
        }
        if within_reach {
            self.in_vain = 0;
        }
        self.read = now;
        self.from = now;
    }

    /// Whether bytes read `gap` nanoseconds after the bytes before them may have come within
    /// the most: within twice the most, since a reader that slept read them only once woken,
    /// which takes up to about the most (the module's doc).
    fn within_reach(&self, gap: u64) -> bool {
        gap <= self.most.saturating_mul(2)
    }

    /// What the window runs from at `now`: a call sent since the last look is seen now.
    fn since(&mut self, now: Instant) -> Instant {
        if self.calls.take() {
            self.from = self.from.max(now);
        }
        self.from
    }

    /// Whether a read that found nothing at `now` polls again at the runtime's next turn.
    pub(super) fn polls_at(&mut self, now: Instant) -> bool {
        self.clock(now);
        nanos(now.saturating_duration_since(self.since(now))) < self.window
    }

    /// Whether a read that finds nothing now would poll again: the reader has not gone to
    /// sleep since its last bytes, has no stream open, and is within its window. Such a read
    /// may look past tokio for bytes its driver has not seen yet ([`crate::socket`]).
    pub(super) fn polls_now(&mut self) -> bool {
        self.call_allows()
            && self.since_read != SinceRead::Slept
            && !self.streams.any_open()
            && self.batch_allows()
            && self.polls_at(Instant::now())
    }

    /// The reader polled until its window was over and found nothing: it goes to sleep, and at
    /// every [`IN_VAIN_TO_HALVE`]th time in a row polls for half as long from then on, or not at
    /// all once that is under [`SHORTEST_WINDOW`].
    fn polled_in_vain(&mut self) {
        self.in_vain += 1;
        if self.in_vain < IN_VAIN_TO_HALVE {
            return;
        }
        self.in_vain = 0;
        self.window /= 2;
        if self.window < SHORTEST_WINDOW {
            self.window = 0;
        }
    }

    /// Whether a read that found nothing now polls again at the runtime's next turn (it has
    /// asked to be, then) rather than waits for its bytes: whether it is within its window, has
    /// not gone to sleep since its last bytes, and has no stream open. A reader that
    /// `reads_socket_itself` ([`crate::socket`]), or has the TCP stream beneath its TLS
    /// read it, is polled again at its worker's next turn,
    /// unless it counts more than [`FEW_CALLS`] calls in flight and its server is elsewhere
    /// ([`BusyPoll::count_calls`]); otherwise once its worker has polled for I/O, where the
    /// bytes of a reader through tokio show.
    pub(super) fn poll_again(&mut self, cx: &mut Context<'_>, reads_socket_itself: bool) -> bool {
        self.poll_again_at(cx, reads_socket_itself, Instant::now)
    }

    /// [`BusyPoll::poll_again`], at the time `now` tells: read only if the reader may poll at
    /// all, or to time the bytes read since its last look ([`BusyPoll::read`]), so that a
    /// reader asleep, or one of a lone call's request, reads no clock at its other looks.
    fn poll_again_at(
        &mut self,
        cx: &mut Context<'_>,
        reads_socket_itself: bool,
        mut now: impl FnMut() -> Instant,
    ) -> bool {
        // Read once at most, at this look.
        let mut at = None;
        let mut now = || *at.get_or_insert_with(&mut now);
        if self.since_read == SinceRead::Slept {
            if self.unclocked {
                self.clock(now());
            }
            return false;
        }
        // A client's reader waiting for its next call times its last bytes at the look that
        // call brings, off the way from their answer to that call.
        if !self.call_allows() {
            return false;
        }
        if self.streams.any_open() || !self.batch_allows() {
            if self.unclocked {
                self.clock(now());
            }
            self.since_read = SinceRead::Slept;
            return false;
        }
        if !self.polls_at(now()) {
            if self.since_read == SinceRead::Polled {
                self.polled_in_vain();
            }
            self.since_read = SinceRead::Slept;
            return false;
        }
        self.since_read = SinceRead::Polled;
        if reads_socket_itself && self.takes_turns() {
            // Back of its worker's queue, after the tasks already waiting: its next look at
            // the socket needs no I/O polled for, which tokio's `yield_now` does at each turn
            // (an `epoll_wait` each), and each turn it stays on the CPU then costs less. With
            // 32 callers on one connection, taking turns this way made 1.28–1.40 times the
            // calls a second on one shared runtime and 1.25–1.32 times across two processes
            // (five times fewer context switches, a third the writes), 256 callers 1.08–1.13
            // times on a shared runtime but 0.90–0.96 across two processes, which
            // [`BusyPoll::count_calls`] takes back; a sequential call's p99 across two
            // processes fell from 60–73 µs to 9 (interleaved runs, 2026-12-05).
            cx.waker().wake_by_ref();
        } else {
            // Deferred until the worker has polled its I/O driver, without sleeping first:
            // what a read through tokio waits for to see new bytes (over a stream the user
            // connected). Woken at once instead, such a reader found nothing
            // until the runtime's periodic look for I/O (a sequential call over TLS across two
            // processes, when TLS read through tokio alone, went from a median of 9.5–10.2 µs
            // to 17.3–18.5). A client's reader with many calls in flight and its server
            // elsewhere waits so too ([`BusyPoll::count_calls`]).
            let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
        }
        if self.yields_thread() {
            // The caller's thread is one more than the runtime's workers, which a sequential
            // caller's reader and its server's, both polling, keep busy: on two cores, a caller
            // woken with its answer waited at times for one of them to be preempted. Yielding
            // between looks lets it, and any thread its call woke, run first. Across two
            // processes on a two-core VM, calls made in `main`'s `block_on` one after another
            // went from a p99 of 78-128 µs to 23.5-28.6 and a median of 11.7-12.2 µs to
            // 14.1-15.6 (four interleaved pairs, 2026-12-06; over TLS, a p99 of 121-135 µs to
            // 27-31). Yielding only in the first 3 µs of the window did as well, and only after
            // 6 µs or more spared no tail. Yielding so for calls made from tasks too took their
            // median from 11.5 µs to 15-16, and 256 callers' calls/s to a third.
            std::thread::yield_now();
        }
        true
    }
}

/// `duration` in nanoseconds, the most a `u64` holds if longer (over 500 years).
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::task::{Context, Waker};

    use super::*;
    use crate::task::Wakes;

    /// What `work` returns, run in a task on one of a runtime's workers, as a reader's task
    /// polls it; the test's own thread is off the workers, as a caller driving a reader is.
    fn on_a_worker<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("a runtime");
        runtime
            .block_on(runtime.spawn(async move { work() }))
            .expect("the task")
    }

    /// The window runs from the last bytes read, or from the first look at which a call had
    /// gone out since them, whichever came later. Bytes read after a call went out start the
    /// window themselves: the call sent before them is no later reason to poll.
    #[test]
    fn the_window_runs_from_the_last_read_or_the_look_that_saw_a_call_sent() {
        let window = Duration::from_millis(50);
        let nanosecond = Duration::from_nanos(1);
        let mut busy = BusyPoll::new(window, no_streams());
        let read = busy.read;
        assert!(busy.polls_at(read + window - nanosecond));
        assert!(!busy.polls_at(read + window), "the window is over");

        busy.calls().now(false);
        let seen = read + window * 2;
        assert!(
            busy.polls_at(seen),
            "a call went out: the window runs from this look"
        );
        assert!(busy.polls_at(seen + window - nanosecond));
        assert!(
            !busy.polls_at(seen + window),
            "and is over a window after it"
        );

        busy.calls().now(false);
        let bytes = seen + window * 3;
        busy.read_at(bytes);
        assert!(busy.polls_at(bytes + window - nanosecond));
        assert!(
            !busy.polls_at(bytes + window),
            "the call sent before the bytes extends nothing"
        );
    }

    /// `count` microseconds, as windows are held.
    fn micros(count: u64) -> u64 {
        count * 1_000
    }

    /// A connection's streams, none open.
    fn no_streams() -> Arc<Streams> {
        Arc::new(Streams::new(1 << 20, 1 << 20))
    }

    /// A reader with a window of 100 µs, and a time past it.
    fn past_its_window() -> (BusyPoll, Instant) {
        let busy = BusyPoll::new(Duration::from_micros(100), no_streams());
        let past = busy.read + Duration::from_secs(1);
        (busy, past)
    }

    /// A waker that counts its wakes.
    fn counted() -> (Arc<Wakes>, Waker) {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(Arc::clone(&wakes));
        (wakes, waker)
    }

    /// A reader past its window waits for its bytes, and polls no more until they come: not
    /// for a call sent, nor for anything else that polls its task. Bytes start it again.
    #[test]
    fn a_reader_past_its_window_sleeps_until_its_next_bytes() {
        let (mut busy, past) = past_its_window();
        let (wakes, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        assert!(
            !busy.poll_again_at(&mut cx, false, || past),
            "past its window, it waits"
        );
        busy.calls().now(false);
        assert!(
            !busy.poll_again_at(&mut cx, false, || past),
            "asleep, it waits on, though a call went out"
        );
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "and asks for no turn");

        busy.read_at(past);
        assert!(
            busy.poll_again_at(&mut cx, false, || past),
            "its bytes came: it polls again"
        );
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "its turn");
    }

    /// A client's reader with a call in flight that has read a frame and handed it on, within a
    /// window longer than any test.
    fn answered(in_flight: &Arc<CallSlots>, waits_for_calls: bool) -> BusyPoll {
        answered_beside(in_flight, waits_for_calls, no_streams())
    }

    /// [`answered`], on a connection whose streams are `streams`.
    fn answered_beside(
        in_flight: &Arc<CallSlots>,
        waits_for_calls: bool,
        streams: Arc<Streams>,
    ) -> BusyPoll {
        let mut busy = BusyPoll::new(Duration::from_secs(3600), streams);
        busy.count_calls(Arc::clone(in_flight), waits_for_calls);
        busy.read();
        busy.frame(false);
        busy
    }

    /// A client's reader that handed on the answer to its only call in flight waits for the next
    /// call at its turn, within its window: it asks for no turn and polls no more, until a call
    /// sent wakes it (once), and then polls for that call's answer, or until bytes come.
    #[test]
    fn a_reader_that_answered_its_only_call_waits_for_the_next() {
        let in_flight = CallSlots::new(usize::MAX);
        let call = in_flight.try_take().expect("a slot");
        let mut busy = answered(&in_flight, true);
        let (wakes, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        assert!(
            busy.wait_for_call(&mut cx),
            "its only call answered, it waits"
        );
        assert!(!busy.polls_now(), "and polls no more");
        assert!(!busy.poll_again(&mut cx, true), "nor asks for a turn");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);

        drop(call);
        busy.calls().now(false);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "a call sent wakes it");
        busy.calls().now(false);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "once");
        assert!(busy.polls_now(), "and it polls for the call's answer");
        assert!(busy.poll_again(&mut cx, true));

        busy.read();
        busy.frame(false);
        assert!(
            busy.wait_for_call(&mut cx),
            "answered again, it waits again"
        );
        busy.read();
        assert!(busy.polls_now(), "bytes come: it polls after them");
    }

    /// Bytes read are timed at the reader's next look that reads the clock, not as they are
    /// read: the window runs from that look. A client's reader that waits for its next call
    /// reads no clock at its looks until that call is sent, and times its last bytes then.
    #[test]
    fn bytes_read_are_timed_at_the_next_look_that_reads_the_clock() {
        let (_wakes, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        let window = Duration::from_millis(50);
        let nanosecond = Duration::from_nanos(1);
        let mut busy = BusyPoll::new(window, no_streams());
        let look = busy.read + window * 4;
        busy.read();
        assert!(busy.poll_again_at(&mut cx, false, || look));
        assert_eq!(busy.read, look, "timed at the look");
        assert!(busy.polls_at(look + window - nanosecond));
        assert!(
            !busy.polls_at(look + window),
            "the window ran from the look"
        );

        let in_flight = CallSlots::new(usize::MAX);
        let call = in_flight.try_take().expect("a slot");
        let mut busy = answered(&in_flight, true);
        let before = busy.read;
        assert!(busy.wait_for_call(&mut cx));
        let no_clock = || -> Instant { panic!("a reader waiting for a call read the clock") };
        assert!(!busy.poll_again_at(&mut cx, true, no_clock));
        assert_eq!(busy.read, before, "its answer not yet timed");
        drop(call);
        busy.calls().now(false);
        let sent = before + Duration::from_secs(2);
        assert!(busy.poll_again_at(&mut cx, true, || sent));
        assert_eq!(busy.read, sent, "timed at the look the call brought");
    }

    /// A reader waiting for the next call keeps a socket's mark raised for it only if that call
    /// will tell it (its server is elsewhere, not polled for only after batches) and no stream is
    /// open: otherwise an answer or an item may come that only a lowered mark wakes it for.
    #[test]
    fn a_reader_awaits_a_call_it_is_told_of_only_from_afar_with_no_stream_open() {
        let (_wakes, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        let in_flight = CallSlots::new(usize::MAX);
        let _call = in_flight.try_take().expect("a slot");
        let streams = no_streams();
        let mut waiting = |after_batches_only: bool| {
            let mut busy = answered_beside(&in_flight, true, Arc::clone(&streams));
            if after_batches_only {
                busy.after_batches_only();
            }
            // Off the workers (no runtime here), a reader that polls only after batches waits
            // for calls too.
            assert!(busy.wait_for_call(&mut cx), "it waits for the next call");
            busy
        };
        assert!(waiting(false).awaits_a_call_it_is_told_of());
        assert!(
            !waiting(true).awaits_a_call_it_is_told_of(),
            "its server nearby"
        );
        let _download = streams.open_inbound(1);
        assert!(
            !waiting(false).awaits_a_call_it_is_told_of(),
            "a stream open"
        );
    }

    /// A reader with another call in flight, or one sent since its read, takes its turn and
    /// polls on, as does one whose client does not wait for calls (one served back, or on a
    /// single-thread runtime), one that polls only after batches, and one that handed on more
    /// than one frame.
    #[test]
    fn a_reader_waits_for_a_call_only_with_none_in_flight_or_sent() {
        let (_wakes, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        let in_flight = CallSlots::new(usize::MAX);
        let _answered = in_flight.try_take().expect("a slot");

        let other = in_flight.try_take().expect("a slot");
        let mut busy = answered(&in_flight, true);
        assert!(!busy.wait_for_call(&mut cx), "another call in flight");
        drop(other);

        let mut busy = answered(&in_flight, true);
        busy.calls().now(false);
        assert!(!busy.wait_for_call(&mut cx), "a call sent since the read");
        assert!(busy.polls_now());

        let mut busy = answered(&in_flight, false);
        assert!(
            !busy.wait_for_call(&mut cx),
            "a client that does not wait for calls"
        );

        let mut busy = answered(&in_flight, true);
        busy.after_batches_only();
        let (waits, mut busy) = on_a_worker(move || {
            let (_wakes, waker) = counted();
            (busy.wait_for_call(&mut Context::from_waker(&waker)), busy)
        });
        assert!(
            !waits,
            "a reader polling after batches only, polled by its task"
        );
        busy.calls().take();
        assert!(
            busy.wait_for_call(&mut cx),
            "the same, polled off the workers by a caller driving it"
        );

        let mut busy = answered(&in_flight, true);
        busy.frame(false);
        assert!(!busy.wait_for_call(&mut cx), "two frames handed on");
        assert!(busy.polls_now(), "each polls on within its window");
    }

    /// A client's reader on a runtime of several workers, polled by its task, yields its thread
    /// between looks while its last call went out from a thread off the workers, and not once
    /// one goes out from a task; polled by that caller itself, off the workers, it does not; a
    /// reader whose client does not wait for calls (on a single-thread runtime) never does.
    #[test]
    fn a_reader_yields_its_thread_while_its_last_call_came_from_off_the_workers() {
        let on_a_worker = |busy: BusyPoll| on_a_worker(move || (busy.yields_thread(), busy));
        let in_flight = CallSlots::new(usize::MAX);
        let _call = in_flight.try_take().expect("a slot");
        let busy = answered(&in_flight, true);
        let (yields, busy) = on_a_worker(busy);
        assert!(!yields, "no call sent yet");
        busy.calls().now(true);
        let (yields, busy) = on_a_worker(busy);
        assert!(yields, "sent from off the workers");
        assert!(
            !busy.yields_thread(),
            "polled by the caller, off the workers"
        );
        busy.calls().now(false);
        let (yields, _) = on_a_worker(busy);
        assert!(!yields, "the next from a task");

        let single = answered(&in_flight, false);
        single.calls().now(true);
        let (yields, _) = on_a_worker(single);
        assert!(!yields, "one runtime thread: no other to yield to");
    }

    /// Every second time in a row that a reader polls through its window in vain, it polls for
    /// half as long from then on, and not at all once that is under a microsecond. A reader
    /// that waits without having polled keeps its window.
    #[test]
    fn polling_in_vain_halves_the_window_until_it_is_none() {
        let (mut busy, past) = past_its_window();
        let (_wakes, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        assert!(!busy.poll_again_at(&mut cx, false, || past));
        assert_eq!(busy.window, busy.most, "it had not polled");

        // Polls through its window in vain, and goes to sleep, as many times in a row as halve
        // the window once; the window holds until the last.
        let mut poll_in_vain_to_halve = |busy: &mut BusyPoll| {
            let before = busy.window;
            for _ in 0..IN_VAIN_TO_HALVE {
                assert_eq!(busy.window, before, "not before the second time");
                busy.since_read = SinceRead::Polled;
                assert!(
                    !busy.poll_again_at(&mut cx, false, || past),
                    "past its window, it waits"
                );
                assert_eq!(busy.since_read, SinceRead::Slept);
            }
        };

        let mut halvings = 0;
        while busy.window != 0 {
            let before = busy.window;
            poll_in_vain_to_halve(&mut busy);
            assert!(busy.window == before / 2 || busy.window == 0);
            halvings += 1;
        }
        // 100 µs halved seven times is 0.78 µs, under the shortest window.
        assert_eq!(halvings, 7);

        // The shortest window is a window: the one doubling from none gives, halved once.
        busy.window = SHORTEST_WINDOW * 2;
        for expected in [SHORTEST_WINDOW, 0] {
            poll_in_vain_to_halve(&mut busy);
            assert_eq!(busy.window, expected);
        }
        busy.read_at(past);
        busy.calls().now(false);
        assert!(
            !busy.poll_again(&mut cx, false),
            "no window: not even after bytes and a call"
        );
    }

    /// Bytes that come later than the window after the bytes before them, but within reach of
    /// the most, for the second time in a row, double the window (from none, to two
    /// microseconds); such bytes count the polls in vain afresh; bytes within the window leave
    /// it, and bytes past reach (twice the most) leave both, and each starts the count of such
    /// bytes afresh.
    #[test]
    fn bytes_the_window_just_missed_twice_in_a_row_double_it() {
        let most = Duration::from_micros(100);
        let mut busy = BusyPoll::new(most, no_streams());
        busy.window = 0;
        let mut at = busy.read;
        let mut after = |gap: u64| {
            at += Duration::from_micros(gap);
            at
        };

        busy.read_at(after(30));
        assert_eq!(busy.window, 0, "once is not enough");
        busy.read_at(after(30));
        assert_eq!(busy.window, micros(2), "from none");
        for window in [4, 8, 16, 32] {
            busy.read_at(after(30));
            busy.read_at(after(30));
            assert_eq!(busy.window, micros(window));
        }
        busy.read_at(after(90));
        busy.read_at(after(30));
        busy.read_at(after(90));
        assert_eq!(
            busy.window,
            micros(32),
            "found within the window in between"
        );
        busy.read_at(after(90));
        assert_eq!(busy.window, micros(64));
        busy.read_at(after(1_000));
        busy.read_at(after(90));
        assert_eq!(
            busy.window,
            micros(64),
            "a gap past reach (twice the most) in between"
        );
        busy.read_at(after(90));
        busy.read_at(after(90));
        assert_eq!(busy.window, nanos(most), "held to the most");

        busy.window = micros(10);
        busy.in_vain = 1;
        busy.read_at(after(1_000));
        assert_eq!(busy.window, micros(10), "a gap past reach");
        assert_eq!(busy.in_vain, 1);
        busy.read_at(after(3));
        assert_eq!(busy.window, micros(10));
        assert_eq!(busy.in_vain, 0, "bytes close behind others: not in vain");

        assert!(!busy.polls_at(busy.read + Duration::from_micros(10)));
        busy.read_at(after(10));
        busy.read_at(after(10));
        assert_eq!(
            busy.window,
            micros(20),
            "bytes as the window ends came after its polling stopped"
        );
    }

    /// A window polled down to none grows back when each answer is read a wakeup late, later
    /// than the most after the one before but within twice it; polls in vain between such
    /// answers halve it no further. Held to the most, a reader whose wakeups take about the
    /// most lost its window for good to a few slow answers in a row.
    #[test]
    fn answers_a_wakeup_late_grow_a_window_polled_down_to_none() {
        let most = Duration::from_micros(100);
        let (_wakes, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        let mut busy = BusyPoll::new(most, no_streams());
        busy.window = 0;
        let mut at = busy.read;
        let mut sizes = Vec::new();
        for _ in 0..14 {
            // Polled in vain (a window under the answer's time), asleep, read once woken.
            busy.since_read = SinceRead::Polled;
            assert!(!busy.poll_again_at(&mut cx, false, || at + most * 3));
            at += Duration::from_micros(150);
            busy.read_at(at);
            sizes.push(busy.window);
        }
        assert_eq!(busy.window, nanos(most), "back to the most: {sizes:?}");

        busy.read_at(at + most * 2 + Duration::from_nanos(1));
        busy.read_at(at + most * 4 + Duration::from_nanos(2));
        assert_eq!(busy.missed, 0, "past twice the most: not missed");
    }

    /// A reader that finds bytes while it polls keeps its window: only sleeps after polling in
    /// vain shorten it.
    #[test]
    fn bytes_found_while_polling_keep_the_window() {
        let most = Duration::from_secs(3600);
        let mut busy = BusyPoll::new(most, no_streams());
        let (_wakes, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        assert!(
            busy.poll_again(&mut cx, false),
            "within its window, it polls"
        );
        assert_eq!(busy.since_read, SinceRead::Polled);
        busy.read();
        assert_eq!(busy.since_read, SinceRead::Nothing);
        assert_eq!(busy.window, nanos(most));
    }

    /// A reader polling only after batches polls after a read that brought two frames or
    /// more, for its window as any reader, and not after one that brought one.
    #[test]
    fn a_reader_polling_after_batches_only_polls_after_a_read_of_several_frames() {
        on_a_worker(|| {
            let most = Duration::from_secs(3600);
            let mut busy = BusyPoll::new(most, no_streams());
            busy.after_batches_only();
            let (wakes, waker) = counted();
            let mut cx = Context::from_waker(&waker);
            busy.read();
            busy.frame(false);
            assert!(!busy.polls_now(), "one frame: no read past tokio");
            assert!(!busy.poll_again(&mut cx, false), "one frame: it waits");
            assert_eq!(wakes.0.load(Ordering::SeqCst), 0);

            busy.read();
            busy.frame(false);
            busy.frame(false);
            assert!(busy.polls_now());
            assert!(busy.poll_again(&mut cx, false), "two frames: it polls");
            assert!(busy.poll_again(&mut cx, false), "and on, within its window");
            assert_eq!(busy.window, nanos(most), "a lone frame cost no window");

            busy.read();
            busy.frame(false);
            assert!(
                !busy.poll_again(&mut cx, false),
                "the next read brought one"
            );
        });
    }

    /// A reader polling only after batches that a caller off the runtime's workers polls
    /// (`client::shared_reader`) polls after a read of one frame too, as a reader of a peer
    /// elsewhere does: the call's two ends are on two threads.
    #[test]
    fn a_reader_polling_after_batches_only_polls_after_one_frame_when_driven_off_the_workers() {
        let mut busy = BusyPoll::new(Duration::from_secs(3600), no_streams());
        busy.after_batches_only();
        let (_wakes, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        busy.read();
        busy.frame(false);
        assert!(busy.polls_now(), "one frame: a read past tokio");
        assert!(busy.poll_again(&mut cx, true), "one frame: it polls");
    }

    /// A client's reader polling only after batches polls after a read of several answers
    /// whatever its calls in flight, and reading its socket itself, takes its worker's next turn
    /// with more than [`FEW_CALLS`] in flight too.
    #[tokio::test(flavor = "current_thread")]
    async fn a_clients_reader_polling_after_batches_polls_whatever_its_calls_in_flight() {
        // In a task: polled off the workers, a reader polls whatever it is to poll after.
        tokio::spawn(polls_whatever_its_calls_in_flight())
            .await
            .expect("the task");
    }

    async fn polls_whatever_its_calls_in_flight() {
        let in_flight = CallSlots::new(usize::MAX);
        let mut busy = BusyPoll::new(Duration::from_secs(3600), no_streams());
        busy.after_batches_only();
        busy.count_calls(Arc::clone(&in_flight), true);
        let (wakes, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        let _calls: Vec<_> = (0..=FEW_CALLS)
            .map(|_| in_flight.try_take().expect("a slot"))
            .collect();
        busy.read();
        busy.frame(false);
        busy.frame(false);
        assert!(busy.polls_now(), "{} calls in flight", FEW_CALLS + 1);
        assert!(busy.poll_again(&mut cx, true), "it polls");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "at its next turn");
    }

    /// A reader whose connection has a stream open does not poll, whatever its window, and
    /// does not count that against its window; once the stream is closed, its next bytes start
    /// it again.
    #[test]
    fn a_reader_with_a_stream_open_does_not_poll() {
        let streams = no_streams();
        let most = Duration::from_secs(3600);
        let mut busy = BusyPoll::new(most, Arc::clone(&streams));
        let (wakes, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        let now = busy.read;

        let upload = streams.open_outbound(1);
        assert!(
            !busy.poll_again_at(&mut cx, false, || now),
            "a stream going out"
        );
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        busy.read_at(now);
        drop(upload);
        let download = streams.open_inbound(2);
        assert!(
            !busy.poll_again_at(&mut cx, false, || now),
            "a stream coming in"
        );
        drop(download);
        assert!(
            !busy.poll_again_at(&mut cx, false, || now),
            "asleep until its next bytes"
        );

        busy.read_at(now);
        assert!(
            busy.poll_again_at(&mut cx, false, || now),
            "no stream open: it polls"
        );
        assert_eq!(busy.window, nanos(most));
    }

    /// A reader that reads its socket itself is polled again at its worker's next turn: woken
    /// at once. One that reads through tokio is woken only once the runtime has polled for I/O,
    /// where its bytes would show: not before this task's next turn.
    #[tokio::test(flavor = "current_thread")]
    async fn a_reader_of_its_own_socket_is_woken_at_once_one_through_tokio_after_io() {
        let most = Duration::from_secs(3600);
        for reads_socket_itself in [true, false] {
            let mut busy = BusyPoll::new(most, no_streams());
            let (wakes, waker) = counted();
            let mut cx = Context::from_waker(&waker);
            assert!(
                busy.poll_again(&mut cx, reads_socket_itself),
                "within its window"
            );
            let woken_at_once = wakes.0.load(Ordering::SeqCst);
            tokio::task::yield_now().await;
            let woken_after_io = wakes.0.load(Ordering::SeqCst);
            if reads_socket_itself {
                assert_eq!((woken_at_once, woken_after_io), (1, 1));
            } else {
                assert_eq!((woken_at_once, woken_after_io), (0, 1));
            }
        }
    }

    /// A client's reader of its own socket with more than [`FEW_CALLS`] calls in flight, its
    /// server elsewhere (polling after any read), polls again only once its worker has polled
    /// for I/O; with that many or fewer, at its next turn.
    #[tokio::test(flavor = "current_thread")]
    async fn a_clients_reader_with_many_calls_in_flight_polls_again_after_io() {
        let in_flight = CallSlots::new(usize::MAX);
        let mut busy = BusyPoll::new(Duration::from_secs(3600), no_streams());
        busy.count_calls(Arc::clone(&in_flight), true);
        let mut slots: Vec<_> = (0..=FEW_CALLS)
            .map(|_| in_flight.try_take().expect("a slot"))
            .collect();
        let (wakes, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        assert!(busy.poll_again(&mut cx, true), "it polls");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "not at once");
        tokio::task::yield_now().await;
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "after I/O was polled for"
        );

        slots.pop();
        assert!(busy.poll_again(&mut cx, true), "it polls");
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            2,
            "{FEW_CALLS} in flight: at once"
        );
    }
}
