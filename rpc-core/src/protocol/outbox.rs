//! The queue every task of a connection sends its frames through, and what it costs.
//!
//! Frames leave in the order queued, so a cancellation never overtakes its request. The queue
//! holds three kinds of entry:
//!
//! - a frame, encoded and ready;
//! - a claim on a frame kept elsewhere (a request in the client's table of waiting calls, an
//!   item of an outgoing stream): the writer takes the frame when its turn comes, and a call
//!   abandoned before then takes it back, so an abandoned call leaves no bytes queued (a
//!   request's claim names only its id: a client's connection has one table of waiting calls,
//!   which the queue knows);
//! - the connection's last frame, after which the writer closes its direction.
//!
//! Every queued byte is counted in the connection's [`Meter`] and, on a server, in the
//! server-wide [`Budget`]: the connection's reader stops reading while either is over its
//! limit, so a peer that does not read what it asked for cannot make this side hold more; and a
//! server at its budget closes the connection whose peer has kept it waiting longest
//! (`budget.rs`).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use tokio::sync::Notify;

use super::budget::{Budget, Share};
use super::frame::LARGE_FRAME;
use super::writer::{COALESCE_BELOW, COALESCE_LIMIT};
use super::{Frame, Head};
use crate::slots::{CallSlot, CallSlots};

/// What a queued frame costs beyond its bytes (its allocation's bookkeeping, the queue's node),
/// counted so that many small frames are not mistaken for few bytes.
pub(crate) const ENTRY_OVERHEAD: usize = 128;

/// The bytes a queued frame is counted for.
fn cost(frame: &Frame) -> usize {
    frame.len() + ENTRY_OVERHEAD
}

/// A frame kept outside the queue until the writer claims it.
pub(crate) trait Claim: Send + Sync + fmt::Debug {
    /// Takes the frame queued under `key`, or `None` if it was taken back.
    fn claim(&self, key: u64) -> Option<Frame>;

    /// Takes the frame queued under `key` if its bytes are all in one piece, to be written
    /// straight through; otherwise leaves it for the writer to claim.
    fn claim_contiguous(&self, key: u64) -> Option<Frame>;
}

/// The connection's writer, as the tasks that queue frames see it.
pub(crate) trait WriteThrough: Send + Sync {
    /// Calls `write` with the writer if it is idle, holding it off meanwhile.
    fn if_idle(&self, write: &mut dyn FnMut(&mut dyn WriteNow));
}

/// An idle writer, lent to a task that writes its frame straight through.
pub(crate) trait WriteNow {
    /// Writes what the transport takes of `bytes` without waiting; `None` when it took none
    /// (or the frame is too large to try).
    fn write_now(&mut self, bytes: &[u8]) -> Option<WroteNow>;

    /// Writes what the transport takes of a large `frame` without waiting; `None` when it took
    /// none.
    fn write_large_now(&mut self, frame: &Frame) -> Option<WroteNow>;

    /// Has `gather` copy frames into the writer's own buffer, then writes them as
    /// [`WriteNow::write_now`] does; `gather` says whether it copied every frame it was to, and
    /// if not, nothing is written.
    fn write_gathered_now(
        &mut self,
        gather: &mut dyn FnMut(&mut Vec<u8>) -> bool,
    ) -> Option<WroteNow>;
}

/// What a write straight through left for the writer to do.
#[derive(Debug)]
pub(crate) struct WroteNow {
    /// The bytes the transport did not take, if any.
    pub(crate) rest: Option<Frame>,
    /// Whether the bytes it took are flushed (a transport that buffers, as TLS does, may still
    /// hold them).
    pub(crate) flushed: bool,
}

/// What the queue needs to write a frame straight through.
#[derive(Debug)]
struct Through {
    writer: Weak<dyn WriteThrough>,
    /// Frames go straight through only while at most one call is in flight.
    calls: Arc<CallSlots>,
}

/// One entry of the queue.
pub(crate) struct Outgoing {
    pub(super) item: Item,
    /// The slot of the call this frame answers, given back once the frame is written.
    pub(super) _slot: Option<CallSlot>,
}

pub(super) enum Item {
    Frame(Frame),
    Claim(Arc<dyn Claim>, u64),
    /// A claim on the request of call `id` in the connection's table of waiting calls
    /// ([`Outbox::claim_requests_from`]).
    Request(u64),
    /// The connection's last frame: the writer closes its direction after it.
    Last(Frame),
}

impl fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.item {
            Item::Frame(frame) => f.debug_tuple("Frame").field(&frame.len()).finish(),
            Item::Claim(_, key) => f.debug_tuple("Claim").field(key).finish(),
            Item::Request(id) => f.debug_tuple("Request").field(id).finish(),
            Item::Last(frame) => f.debug_tuple("Last").field(&frame.len()).finish(),
        }
    }
}

impl Outgoing {
    /// The bytes this entry holds in the queue itself (a claim holds none there).
    pub(super) fn queued_len(&self) -> usize {
        match &self.item {
            Item::Frame(frame) | Item::Last(frame) => cost(frame),
            Item::Claim(..) | Item::Request(_) => 0,
        }
    }
}

/// The sending side of a connection's queue. Cheap to clone.
#[derive(Debug)]
pub(crate) struct Outbox {
    channel: Arc<Channel>,
    meter: Arc<Meter>,
}

/// The receiving side, which the writer drains. Dropped with frames still queued (the
/// connection died), it uncounts them, and the outboxes queue nothing more.
#[derive(Debug)]
pub(crate) struct Queue {
    channel: Arc<Channel>,
    pub(super) meter: Arc<Meter>,
    /// The entries the writer took out of the channel at once and has not sent yet; empty
    /// whenever the writer is idle, so that nothing written straight through overtakes them.
    taken: VecDeque<Outgoing>,
}

/// The queue between the outboxes and the writer: a plain deque under a lock, which holds no
/// memory beyond the entries it has room for (a connection that waits idle holds next to
/// nothing here), and which the writer empties at once by swapping it for its own
/// ([`Queue::try_recv`]).
#[derive(Debug, Default)]
struct Channel {
    state: Mutex<State>,
    /// How many outboxes there are; when the last is gone, the queue ends once drained.
    senders: AtomicUsize,
    /// Wakes the writer when it waits for an entry.
    ready: Notify,
    /// Set when the writer lets frames go straight through it.
    through: OnceLock<Through>,
    /// The client's table of waiting calls, which queued requests are claimed from. Named once
    /// for the queue, not in every entry: cloning a shared handle for each request would update
    /// its count, on a line of memory every call also locks, twice per call.
    requests: OnceLock<Arc<dyn Claim>>,
}

#[derive(Debug, Default)]
struct State {
    entries: VecDeque<Outgoing>,
    /// The writer is gone: nothing more is queued.
    closed: bool,
    /// The writer waits for an entry, and the next one queued wakes it.
    waiting: bool,
    /// More frames are coming at once (the server's reader has more requests in hand, each
    /// answered in turn): nothing goes straight through, and a frame queued meanwhile does not
    /// wake the writer; the task that gathers writes them all when it is done
    /// ([`Gathering`]).
    gathering: bool,
}

impl Channel {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; the queue is consistent either way.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The frame `claim` names, taken from where it is kept: `None` if it was taken back (or,
    /// if `contiguous`, is not in one piece), and for an entry that holds its frame itself.
    fn claim(&self, claim: &Item, contiguous: bool) -> Option<Frame> {
        let (source, key) = match claim {
            Item::Claim(source, key) => (source, *key),
            Item::Request(id) => (self.requests.get()?, *id),
            Item::Frame(_) | Item::Last(_) => return None,
        };
        if contiguous {
            source.claim_contiguous(key)
        } else {
            source.claim(key)
        }
    }
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.channel.senders.fetch_add(1, Ordering::Relaxed);
        Outbox {
            channel: Arc::clone(&self.channel),
            meter: Arc::clone(&self.meter),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.channel.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last one: a writer waiting for more learns there is none to come.
            let waiting = std::mem::take(&mut self.channel.lock().waiting);
            if waiting {
                self.channel.ready.notify_one();
            }
        }
    }
}

impl Queue {
    /// Returns `true` once an entry is queued, `false` when every outbox is gone and nothing is
    /// left. Takes nothing.
    pub(super) async fn ready(&self) -> bool {
        loop {
            // Made before looking, so that an entry queued right after the look still wakes it.
            let ready = self.channel.ready.notified();
            {
                let mut state = self.channel.lock();
                if !state.entries.is_empty() {
                    return true;
                }
                if self.channel.senders.load(Ordering::Acquire) == 0 {
                    return false;
                }
                state.waiting = true;
            }
            ready.await;
        }
    }

    /// The next entry, once there is one; `None` when every outbox is gone and nothing is
    /// left. Cancel safe: an entry is taken only when it is returned.
    #[cfg(test)]
    pub(super) async fn recv(&mut self) -> Option<Outgoing> {
        if self.ready().await {
            self.try_recv()
        } else {
            None
        }
    }

    /// Lets the tasks that queue frames write them straight through `writer` while it is idle,
    /// nothing is queued and at most one of the connection's `calls` is in flight.
    pub(super) fn write_through(&self, writer: Weak<dyn WriteThrough>, calls: Arc<CallSlots>) {
        let _ = self.channel.through.set(Through { writer, calls });
    }

    /// Takes the frame a claim entry names from where it is kept, or `None` if it was taken
    /// back.
    pub(super) fn claim(&self, claim: &Item) -> Option<Frame> {
        self.channel.claim(claim, false)
    }

    /// The next entry, if one is queued. The writer takes every entry queued so far under one
    /// lock, which the tasks queueing more take once per entry: the two deques swap, so neither
    /// allocates.
    pub(super) fn try_recv(&mut self) -> Option<Outgoing> {
        if self.taken.is_empty() {
            std::mem::swap(&mut self.channel.lock().entries, &mut self.taken);
        }
        self.taken.pop_front()
    }

    /// How many entries are queued.
    pub(super) fn len(&self) -> usize {
        self.taken.len() + self.channel.lock().entries.len()
    }
}

/// Frames being gathered into one write, until dropped ([`Outbox::gather`]).
#[derive(Debug)]
pub(crate) struct Gathering<'a>(&'a Outbox);

impl Drop for Gathering<'_> {
    fn drop(&mut self) {
        self.0.end_gathering();
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        let entries = {
            let mut state = self.channel.lock();
            state.closed = true;
            std::mem::take(&mut state.entries)
        };
        for outgoing in self.taken.drain(..).chain(entries) {
            self.meter.release(outgoing.queued_len());
        }
    }
}

impl Outbox {
    /// A queue without limit, for tests of what goes through it.
    #[cfg(test)]
    pub(crate) fn new() -> (Outbox, Queue) {
        Self::with_meter(Meter::new(usize::MAX, None))
    }

    /// A queue measured by `meter`.
    pub(crate) fn with_meter(meter: Meter) -> (Outbox, Queue) {
        let channel = Arc::new(Channel {
            senders: AtomicUsize::new(1),
            ..Channel::default()
        });
        let meter = Arc::new(meter);
        let queue = Queue {
            taken: VecDeque::new(),
            channel: Arc::clone(&channel),
            meter: Arc::clone(&meter),
        };
        (Outbox { channel, meter }, queue)
    }

    /// Queues a complete frame; `slot` is released once the frame is written. `false` when the
    /// writer is gone, and with it the connection.
    pub(crate) fn send(&self, frame: impl Into<Frame>, slot: Option<CallSlot>) -> bool {
        self.push(Item::Frame(frame.into()), slot)
    }

    /// Queues a frame that is only a head (cancel, credit).
    pub(crate) fn send_head(&self, head: &Head<'_>) -> bool {
        self.send(head.frame(), None)
    }

    /// Queues the connection's last frame: once it is written, the writer closes its direction
    /// and ends, whatever is queued behind it.
    pub(crate) fn send_last(&self, frame: impl Into<Frame>) -> bool {
        self.push(Item::Last(frame.into()), None)
    }

    /// Queues a claim on the frame `source` keeps under `key`.
    pub(crate) fn send_claim(&self, source: Arc<dyn Claim>, key: u64) -> bool {
        self.push(Item::Claim(source, key), None)
    }

    /// Names the client's table of waiting calls, which the requests queued with
    /// [`Outbox::send_request`] are claimed from: once, before the first is queued.
    pub(crate) fn claim_requests_from(&self, requests: Arc<dyn Claim>) {
        let named = self.channel.requests.set(requests);
        debug_assert!(named.is_ok(), "a connection has one table of waiting calls");
    }

    /// Queues a claim on the request of call `id` in the table named with
    /// [`Outbox::claim_requests_from`]. `false` when the writer is gone, or no table was named.
    pub(crate) fn send_request(&self, id: u64) -> bool {
        debug_assert!(self.channel.requests.get().is_some(), "no table was named");
        self.channel.requests.get().is_some() && self.push(Item::Request(id), None)
    }

    fn push(&self, item: Item, mut slot: Option<CallSlot>) -> bool {
        let item = match self.write_through(item, &mut slot) {
            Ok(()) => return true,
            Err(item) => item,
        };
        let outgoing = Outgoing { item, _slot: slot };
        let len = outgoing.queued_len();
        let mut state = self.channel.lock();
        if state.closed {
            drop(state);
            // Dropped here, outside the lock: its slot wakes whoever waits for one.
            drop(outgoing);
            return false;
        }
        self.meter.hold(len);
        state.entries.push_back(outgoing);
        let wake = !state.gathering && std::mem::take(&mut state.waiting);
        drop(state);
        if wake {
            self.channel.ready.notify_one();
        }
        true
    }

    /// Writes the frame of `item` straight through the writer, if the writer lets it (it is
    /// idle) and nothing is queued ahead of it: a small frame while at most one call is in
    /// flight, a large one whatever the calls in flight. The writer task is then not woken for
    /// it. What the transport does not take at once is queued first in line, for the writer,
    /// with `slot`. `Err` gives the item back, to be queued.
    ///
    /// A large frame takes as long to write here as in the writer, and the task that queues it
    /// (a server's reader answering inline, a stream's sender) reads or makes nothing more
    /// meanwhile; but waking the writer for it cost a thread woken and put to sleep, a few
    /// times each frame. In two sets of interleaved runs of 1 MiB echoes (four in flight on one
    /// connection), the answers written through took `ByteBuf` echoes 8–10% higher across two
    /// processes and 23–28% on one shared runtime, `Vec<u8>` echoes 6% across two processes;
    /// small calls, pipelined or one at a time, were unchanged.
    fn write_through(&self, item: Item, slot: &mut Option<CallSlot>) -> Result<(), Item> {
        let Some(through) = self.channel.through.get() else {
            return Err(item);
        };
        let large = matches!(&item, Item::Frame(frame) if frame.len() >= LARGE_FRAME);
        if !large && !through.calls.lone_call() {
            return Err(item);
        }
        let Some(writer) = through.writer.upgrade() else {
            return Err(item);
        };
        let mut item = Some(item);
        writer.if_idle(&mut |writer| {
            // The writer takes entries only while it holds itself, as this does now: so the
            // frames queued before this one are written, or still queued.
            {
                let state = self.channel.lock();
                if state.closed || state.gathering || !state.entries.is_empty() {
                    return;
                }
            }
            let frame = match item.take() {
                Some(Item::Frame(frame)) => frame,
                Some(claim @ (Item::Claim(..) | Item::Request(_))) => {
                    match self.channel.claim(&claim, true) {
                        Some(frame) => frame,
                        None => {
                            item = Some(claim);
                            return;
                        }
                    }
                }
                other => {
                    item = other;
                    return;
                }
            };
            let wrote = match frame.contiguous() {
                _ if large => writer.write_large_now(&frame),
                Some(bytes) => writer.write_now(bytes),
                None => None,
            };
            match wrote {
                Some(wrote) => self.leave_to_writer(wrote, slot.take()),
                None => item = Some(Item::Frame(frame)),
            }
        });
        item.map_or(Ok(()), Err)
    }

    /// Gathers the frames queued from now until the guard is dropped (the server's reader holds
    /// more requests to answer, each in turn): none goes straight through and none wakes the
    /// writer; then, if the writer is idle, the dropping task writes them itself in one write,
    /// and otherwise wakes the writer for them. Not held across an `.await`: frames other tasks
    /// queue meanwhile wait for it too.
    pub(crate) fn gather(&self) -> Gathering<'_> {
        self.channel.lock().gathering = true;
        Gathering(self)
    }

    /// Ends gathering: writes what is queued straight through if the writer is waiting idle
    /// and every entry is a small frame, and otherwise wakes the writer if it waits.
    fn end_gathering(&self) {
        {
            let mut state = self.channel.lock();
            state.gathering = false;
            if state.entries.is_empty() || !state.waiting {
                // Nothing queued, or the writer was woken already.
                return;
            }
        }
        if !self.write_gathered() {
            let wake = std::mem::take(&mut self.channel.lock().waiting);
            if wake {
                self.channel.ready.notify_one();
            }
        }
    }

    /// Writes every queued entry straight through in one write, if the writer is idle and
    /// each entry is a frame in one piece; the transport's leftovers go first in line, for the
    /// writer. `false` if it wrote nothing, and the writer is to be woken.
    fn write_gathered(&self) -> bool {
        let Some(writer) = self
            .channel
            .through
            .get()
            .and_then(|through| through.writer.upgrade())
        else {
            return false;
        };
        let mut gathered = 0;
        let mut wrote = None;
        writer.if_idle(&mut |writer| {
            // Holding the writer, as this does, is what the writer takes entries under: the
            // entries copied are still first in line when they are taken out below.
            wrote = writer.write_gathered_now(&mut |batch| {
                let state = self.channel.lock();
                if state.closed {
                    return false;
                }
                for outgoing in &state.entries {
                    let Item::Frame(frame) = &outgoing.item else {
                        return false;
                    };
                    match frame.contiguous() {
                        Some(bytes)
                            if bytes.len() < COALESCE_BELOW
                                && batch.len() + bytes.len() <= COALESCE_LIMIT =>
                        {
                            batch.extend_from_slice(bytes);
                        }
                        _ => return false,
                    }
                }
                gathered = state.entries.len();
                true
            });
            if wrote.is_some() {
                // Out of the queue while the writer is still held.
                let mut state = self.channel.lock();
                if !state.closed {
                    for outgoing in state.entries.drain(..gathered) {
                        self.meter.release(outgoing.queued_len());
                    }
                }
            }
        });
        match wrote {
            Some(wrote) => {
                self.leave_to_writer(wrote, None);
                true
            }
            None => false,
        }
    }

    /// Queues first in line what a write straight through left undone, with the slot of the
    /// call the frame answers, if any: the bytes the transport did not take, or, if it took
    /// them all but has yet to flush them, an empty frame that has the writer flush.
    fn leave_to_writer(&self, wrote: WroteNow, slot: Option<CallSlot>) {
        match wrote {
            WroteNow {
                rest: Some(rest), ..
            } => self.push_first(rest, slot),
            WroteNow {
                rest: None,
                flushed: false,
            } => self.push_first(Frame::default(), slot),
            WroteNow {
                rest: None,
                flushed: true,
            } => {}
        }
    }

    /// Queues `frame` first in line, with `slot`: the rest of a frame written straight through
    /// in part. Dropped if the writer is gone (aborted with its connection) since the caller
    /// looked.
    fn push_first(&self, frame: Frame, slot: Option<CallSlot>) {
        let outgoing = Outgoing {
            item: Item::Frame(frame),
            _slot: slot,
        };
        let mut state = self.channel.lock();
        if state.closed {
            return;
        }
        self.meter.hold(outgoing.queued_len());
        state.entries.push_front(outgoing);
        let wake = std::mem::take(&mut state.waiting);
        drop(state);
        if wake {
            self.channel.ready.notify_one();
        }
    }

    /// The meter of this queue's bytes.
    pub(crate) fn meter(&self) -> &Arc<Meter> {
        &self.meter
    }
}

/// How many bytes may wait unwritten on one connection unless told otherwise: a server's
/// `max_queued_bytes_per_connection` by default, and a client's own limit, past which its
/// uploads wait for the writer ([`StreamFrames::wait_for_room`]). A peer that grants every
/// stream a vast window and reads nothing then makes the sender hold about this much, rather
/// than 1 MiB a stream.
pub(crate) const DEFAULT_QUEUE_LIMIT: usize = 4 * 1024 * 1024;

/// Counts the bytes queued on one connection, against the connection's own limit and the
/// server-wide budget.
#[derive(Debug)]
pub(crate) struct Meter {
    queued: AtomicUsize,
    limit: usize,
    share: Option<Share>,
    /// The connection's reader waits for this when the queue is over its limit.
    drained: Notify,
    reader_waiting: AtomicBool,
}

impl Meter {
    /// A meter for one connection: `limit` bytes of its own, and a share of `budget`.
    pub(crate) fn new(limit: usize, budget: Option<Arc<Budget>>) -> Self {
        Meter {
            queued: AtomicUsize::new(0),
            limit,
            share: budget.map(Share::new),
            drained: Notify::new(),
            reader_waiting: AtomicBool::new(false),
        }
    }

    /// Counts `bytes` more queued.
    pub(crate) fn hold(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let before = self.queued.fetch_add(bytes, Ordering::AcqRel);
        if let Some(share) = &self.share {
            share.add(before, before + bytes, || self.queued());
        }
    }

    /// Counts `bytes` fewer queued: they were written, or dropped.
    pub(crate) fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let before = self.queued.fetch_sub(bytes, Ordering::AcqRel);
        if self.reader_waiting.load(Ordering::Acquire) {
            self.drained.notify_one();
        }
        if let Some(share) = &self.share {
            share.add(before, before - bytes, || self.queued());
        }
    }

    /// The connection's share of the server's budget, if it has one.
    pub(crate) fn share(&self) -> Option<&Share> {
        self.share.as_ref()
    }

    /// The bytes queued on this connection.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Whether the connection may read another frame: its queue is empty, or under both its
    /// own limit and the server-wide budget. A connection with nothing queued always may, so
    /// that no connection is locked out by the others' backlog.
    pub(crate) fn may_read(&self) -> bool {
        self.queued() == 0 || !self.is_full()
    }

    /// Whether the connection's queue is at its own limit, or the server at its budget.
    pub(crate) fn is_full(&self) -> bool {
        self.queued() >= self.limit
            || self
                .share
                .as_ref()
                .is_some_and(|share| share.budget().reached())
    }

    /// Returns once [`Meter::may_read`] holds.
    ///
    /// Only this connection's own writes wake it: a connection that may not read has bytes of
    /// its own queued (one with none always may), so its writer is at work, and each write it
    /// makes is a moment to look again, at its own queue and at the server's.
    pub(crate) async fn wait_may_read(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            self.reader_waiting.store(true, Ordering::Release);
            let ready = self.may_read();
            if !ready {
                drained.await;
            }
            self.reader_waiting.store(false, Ordering::Release);
            if ready {
                return;
            }
        }
    }
}

/// The frames of one outgoing stream that are queued but not yet written. An abandoned stream
/// takes them back ([`StreamFrames::take_back`]), so they are freed at once rather than when
/// the writer reaches them.
pub(crate) struct StreamFrames {
    frames: Mutex<VecDeque<Frame>>,
    meter: Arc<Meter>,
    /// The bytes of the frames here, as the meter counts them.
    unwritten: AtomicUsize,
    /// Told each time frames leave, for the stream's sender waiting for room
    /// ([`StreamFrames::wait_for_room`]).
    left: Notify,
}

impl fmt::Debug for StreamFrames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamFrames").finish_non_exhaustive()
    }
}

impl StreamFrames {
    pub(crate) fn new(outbox: &Outbox) -> Arc<Self> {
        Arc::new(StreamFrames {
            frames: Mutex::new(VecDeque::new()),
            meter: Arc::clone(&outbox.meter),
            unwritten: AtomicUsize::new(0),
            left: Notify::new(),
        })
    }

    /// Queues `frame` on `outbox`, behind everything queued there. `false` when the writer is
    /// gone.
    pub(crate) fn send(self: &Arc<Self>, outbox: &Outbox, frame: Frame) -> bool {
        let cost = cost(&frame);
        self.meter.hold(cost);
        self.unwritten.fetch_add(cost, Ordering::AcqRel);
        self.lock().push_back(frame);
        outbox.send_claim(Arc::clone(self) as Arc<dyn Claim>, 0)
    }

    /// Whether frames queued here still wait for the writer.
    pub(crate) fn any_unwritten(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Returns once the frames here hold fewer than `most` bytes (as the meter counts them),
    /// and either none at all or the connection's queue is not full ([`Meter::is_full`]).
    ///
    /// So the streams of one connection together queue no more than its limit, past it one
    /// batch each at most, whatever windows their receivers grant: a server's client may open
    /// as many streams as it may make calls. A stream with nothing queued may always send, so
    /// that none is locked out by the others' backlog; one with frames queued is woken as they
    /// leave.
    pub(crate) async fn wait_for_room(&self, most: usize) {
        while !self.has_room(most) {
            // A frame that leaves between the look and the wait leaves a permit: no wakeup is
            // lost.
            self.left.notified().await;
        }
    }

    /// Whether [`StreamFrames::wait_for_room`] would return at once.
    pub(crate) fn has_room(&self, most: usize) -> bool {
        let unwritten = self.unwritten.load(Ordering::Acquire);
        unwritten < most && (unwritten == 0 || !self.meter.is_full())
    }

    /// Drops the frames not yet written.
    pub(crate) fn take_back(&self) {
        let frames = std::mem::take(&mut *self.lock());
        for frame in frames {
            self.uncount(cost(&frame));
        }
    }

    /// Uncounts a frame of `cost` that left.
    fn uncount(&self, cost: usize) {
        self.meter.release(cost);
        self.unwritten.fetch_sub(cost, Ordering::AcqRel);
        self.left.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Frame>> {
        // Nothing panics while holding the lock; the queue is consistent either way.
        self.frames.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Frames still here when the last claim on them goes (the writer ended before it reached
/// them) are uncounted with them.
impl Drop for StreamFrames {
    fn drop(&mut self) {
        let frames = self
            .frames
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for frame in frames.drain(..) {
            self.meter.release(cost(&frame));
        }
    }
}

impl Claim for StreamFrames {
    fn claim(&self, _: u64) -> Option<Frame> {
        let frame = self.lock().pop_front()?;
        self.uncount(cost(&frame));
        Some(frame)
    }

    fn claim_contiguous(&self, _: u64) -> Option<Frame> {
        let frame = {
            let mut frames = self.lock();
            frames.front()?.contiguous()?;
            frames.pop_front()?
        };
        self.uncount(cost(&frame));
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_bytes_are_counted_until_dropped_with_the_queue() {
        let budget = Arc::new(Budget::with_step(1000, 1));
        let (outbox, queue) = Outbox::with_meter(Meter::new(150, Some(Arc::clone(&budget))));
        assert!(outbox.meter().may_read(), "nothing queued");
        assert!(outbox.send(vec![0u8; 60], None));
        assert_eq!(outbox.meter().queued(), 60 + ENTRY_OVERHEAD);
        assert_eq!(budget.queued(), 60 + ENTRY_OVERHEAD);
        assert!(!outbox.meter().may_read(), "over the connection's limit");
        drop(queue);
        assert_eq!(outbox.meter().queued(), 0, "uncounted with the queue");
        assert_eq!(budget.queued(), 0);
        assert!(!outbox.send(vec![0u8; 10], None), "the writer is gone");
        assert_eq!(budget.queued(), 0, "a refused frame is not counted");
    }

    #[test]
    fn a_connection_may_read_until_its_queue_reaches_either_limit() {
        let entry = 100 + ENTRY_OVERHEAD;
        let budget = Arc::new(Budget::with_step(3 * entry, 1));
        let meter = Meter::new(2 * entry, Some(Arc::clone(&budget)));
        meter.hold(entry);
        assert!(meter.may_read(), "under both limits");
        meter.hold(entry - 1);
        assert!(meter.may_read(), "a byte under its own limit");
        meter.hold(1);
        assert!(!meter.may_read(), "at its own limit");
        meter.release(entry);

        // The meter holds one entry; another connection brings the server to its budget.
        let other = Meter::new(usize::MAX, Some(Arc::clone(&budget)));
        other.hold(2 * entry - 1);
        assert!(meter.may_read(), "the server a byte under its budget");
        other.hold(1);
        assert!(!meter.may_read(), "the server at its budget");
        assert!(
            !other.may_read(),
            "for every connection with something queued"
        );
        other.release(2 * entry);
        meter.release(entry);
        assert_eq!(budget.queued(), 0);
    }

    #[test]
    fn the_server_counts_each_queue_in_whole_steps() {
        let budget = Arc::new(Budget::with_step(usize::MAX, 100));
        let meter = Meter::new(usize::MAX, Some(Arc::clone(&budget)));
        meter.hold(99);
        assert_eq!(budget.queued(), 0, "under a step");
        meter.hold(1);
        assert_eq!(budget.queued(), 100, "a step");
        meter.hold(250);
        assert_eq!(budget.queued(), 300, "three steps");
        meter.release(201);
        assert_eq!(budget.queued(), 100, "back under two");
        meter.release(meter.queued());
        assert_eq!(budget.queued(), 0);
    }

    /// A server's budget counts each connection in steps of 64 KiB: the small answers of a
    /// busy connection never touch the count all connections share.
    #[test]
    fn a_servers_budget_steps_are_64_kib() {
        const KIB: usize = 1024;
        let budget = Arc::new(Budget::new(usize::MAX));
        let meter = Meter::new(usize::MAX, Some(Arc::clone(&budget)));
        meter.hold(64 * KIB - 1);
        assert_eq!(budget.queued(), 0, "under a step");
        meter.hold(1);
        assert_eq!(budget.queued(), 64 * KIB, "a step");
    }

    #[test]
    fn a_connection_with_nothing_queued_may_read_whatever_the_server_holds() {
        let budget = Arc::new(Budget::with_step(300, 1));
        let (busy, _busy_queue) = Outbox::with_meter(Meter::new(1000, Some(Arc::clone(&budget))));
        let (idle, _idle_queue) = Outbox::with_meter(Meter::new(1000, Some(Arc::clone(&budget))));
        assert!(busy.send(vec![0u8; 200], None));
        assert!(!busy.meter().may_read(), "over the server's budget");
        assert!(idle.meter().may_read(), "nothing of its own queued");
        assert!(idle.send(vec![0u8; 1], None));
        assert!(!idle.meter().may_read(), "now it holds a share too");
    }

    #[test]
    fn a_queued_entry_shows_its_kind_and_size() {
        let outgoing = Outgoing {
            item: Item::Last(Frame::from(vec![0u8; 7])),
            _slot: None,
        };
        assert_eq!(format!("{outgoing:?}"), "Last(7)");
        let (outbox, _queue) = Outbox::new();
        let frames = format!("{:?}", StreamFrames::new(&outbox));
        assert!(frames.starts_with("StreamFrames"), "{frames}");
    }

    #[test]
    fn stream_frames_taken_back_are_uncounted_and_never_claimed() {
        let (outbox, _queue) = Outbox::new();
        let frames = StreamFrames::new(&outbox);
        assert!(!frames.any_unwritten());
        assert!(frames.send(&outbox, Frame::from(vec![1u8; 30])));
        assert!(frames.send(&outbox, Frame::from(vec![2u8; 20])));
        assert_eq!(outbox.meter().queued(), 50 + 2 * ENTRY_OVERHEAD);
        let first = frames.claim(0).expect("the first frame");
        assert_eq!(first.len(), 30);
        assert_eq!(outbox.meter().queued(), 20 + ENTRY_OVERHEAD);
        assert!(frames.any_unwritten(), "the second still waits");
        frames.take_back();
        assert_eq!(outbox.meter().queued(), 0);
        assert!(frames.claim(0).is_none(), "taken back");
        assert!(!frames.any_unwritten());
    }

    /// A stream whose pump queued its last frames and ended, on a connection whose writer then
    /// ended before writing them: the frames go with the last claim on them, and so does their
    /// count (which the server's budget would otherwise have kept for ever).
    #[test]
    fn stream_frames_dropped_unwritten_are_uncounted() {
        let (outbox, queue) = Outbox::new();
        let frames = StreamFrames::new(&outbox);
        assert!(frames.send(&outbox, Frame::from(vec![1u8; 30])));
        drop(frames);
        assert_eq!(
            outbox.meter().queued(),
            30 + ENTRY_OVERHEAD,
            "claimed in the queue"
        );
        drop(queue);
        assert_eq!(outbox.meter().queued(), 0);
    }

    /// On a full connection, a stream with frames queued waits until enough of them leave,
    /// and one with none sends at once; on any, a stream waits while its own frames hold its
    /// most.
    #[tokio::test]
    async fn a_stream_waits_for_room_while_its_frames_fill_the_connection_or_its_most() {
        // Each frame counts for its length and `ENTRY_OVERHEAD`, 128 bytes.
        let (outbox, _queue) = Outbox::with_meter(Meter::new(300, None));
        let (idle, busy) = (StreamFrames::new(&outbox), StreamFrames::new(&outbox));
        assert!(busy.send(&outbox, Frame::from(vec![1u8; 60])));
        assert!(busy.send(&outbox, Frame::from(vec![2u8; 10])));
        assert!(outbox.meter().is_full());
        let ready_at_once = |frames: &Arc<StreamFrames>, most: usize| {
            let frames = Arc::clone(frames);
            let now = std::time::Duration::ZERO;
            async move {
                tokio::time::timeout(now, frames.wait_for_room(most))
                    .await
                    .is_ok()
            }
        };
        assert!(
            ready_at_once(&idle, usize::MAX).await,
            "nothing of its own queued"
        );
        assert!(
            !ready_at_once(&busy, usize::MAX).await,
            "the connection is full"
        );

        let waiting = tokio::spawn({
            let busy = Arc::clone(&busy);
            async move { busy.wait_for_room(usize::MAX).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // The writer takes the first frame: the connection is no longer full.
        assert_eq!(busy.claim(0).map(|frame| frame.len()), Some(60));
        assert!(!outbox.meter().is_full());
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("woken")
            .expect("joins");
        assert!(ready_at_once(&busy, usize::MAX).await);
        assert!(
            !ready_at_once(&busy, 138).await,
            "its own frames hold its most"
        );
    }

    #[tokio::test]
    async fn a_reader_waiting_for_room_wakes_when_the_queue_drains() {
        let (outbox, mut queue) = Outbox::with_meter(Meter::new(10, None));
        assert!(outbox.send(vec![0u8; 1], None));
        let meter = Arc::clone(outbox.meter());
        let waiting = tokio::spawn(async move { meter.wait_may_read().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let outgoing = queue.recv().await.expect("queued");
        queue.meter.release(outgoing.queued_len());
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("woken")
            .expect("joins");
    }

    /// A writer waiting for frames learns when the last outbox is gone, whichever clone goes
    /// last: it has nothing more to wait for.
    #[tokio::test]
    async fn a_waiting_writer_wakes_when_the_last_outbox_is_dropped() {
        let (outbox, queue) = Outbox::new();
        let other = outbox.clone();
        let writer = tokio::spawn(async move { queue.ready().await });
        tokio::task::yield_now().await;
        drop(outbox);
        tokio::task::yield_now().await;
        assert!(!writer.is_finished(), "another outbox is left");
        drop(other);
        let ready = tokio::time::timeout(std::time::Duration::from_secs(10), writer)
            .await
            .expect("woken")
            .expect("joins");
        assert!(!ready, "nothing queued, and nothing to come");
    }
}
