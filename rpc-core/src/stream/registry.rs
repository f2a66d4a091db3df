//! The streams of one connection: where incoming items go, and how much credit each outgoing
//! stream has. Both sides of a connection use the same registry.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::Stream;
use serde::de::DeserializeOwned;

use crate::protocol::Decode;
use tokio::sync::{Notify, mpsc};
use tokio::time::Sleep;

use super::{Streaming, grant_at, item_cost};
use crate::protocol::{self, FrameReader, Head, LENGTH_PREFIX, Outbox, code, length_prefix};
use crate::slots::{CallSlot, CallSlots, OVER_SERVER_LIMIT, Reservation};
use crate::telemetry::{CallEnd, OK};
use crate::{RpcError, StatusCode};

/// What the connection's reader hands an incoming stream.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// One encoded item, and the credit it cost.
    Item { bytes: Bytes, cost: i64 },
    /// Whole StreamItem frames of the stream, length prefixes included, each with a head of
    /// `head_len` bytes before its item.
    Run { frames: Bytes, head_len: usize },
    /// The sender ended the stream.
    Finished,
    /// The sender ended the stream with an error.
    Failed { code: u32, message: String },
    /// What the items before it cost past the stream's window, counted among what the server's
    /// calls hold ([`Streams::deliver`]) until the consumer has taken them.
    Held(Reservation),
    /// The connection ended.
    Lost(RpcError),
}

impl From<crate::protocol::Outcome<'_>> for Inbound {
    fn from(outcome: crate::protocol::Outcome<'_>) -> Self {
        match outcome {
            crate::protocol::Outcome::Ok => Inbound::Finished,
            crate::protocol::Outcome::Err { code, message } => Inbound::Failed {
                code,
                message: message.into_owned(),
            },
        }
    }
}

/// The streams of one connection, by call id.
#[derive(Debug)]
pub(crate) struct Streams {
    state: Mutex<State>,
    /// How many streams are open, both ways, as of the last change to `state`: a connection's
    /// reader does not busy poll while any is.
    open: AtomicUsize,
    /// The credit each incoming stream starts with: this side's window.
    own_window: u32,
    /// The credit each outgoing stream starts with: the window the peer announced.
    peer_window: u32,
    /// Whether the peer runs on threads of its own (another process, another runtime), so that
    /// no stream it receives waits on this runtime's workers for a sender's turn.
    peer_elsewhere: bool,
}

#[derive(Debug, Default)]
struct State {
    inbound: HashMap<u64, InboundEntry>,
    outbound: HashMap<u64, Arc<SendWindow>>,
    closed: Option<RpcError>,
}

#[derive(Debug)]
struct InboundEntry {
    tx: mpsc::UnboundedSender<Inbound>,
    /// The peer's credit, in bytes: it may send an item while this is above zero.
    credit: Arc<AtomicI64>,
}

/// The receiving end of an incoming stream, before it is wrapped for its item type. Dropped, it
/// unregisters the stream: later items for it are discarded.
#[derive(Debug)]
pub(crate) struct InboundParts {
    rx: mpsc::UnboundedReceiver<Inbound>,
    credit: Arc<AtomicI64>,
    /// How much the consumer takes before granting it back.
    grant_at: i64,
    streams: Arc<Streams>,
    id: u64,
}

impl Drop for InboundParts {
    fn drop(&mut self) {
        self.streams.close_inbound(self.id);
    }
}

impl Streams {
    /// The streams of a connection on which this side grants `own_window` bytes of credit to
    /// each incoming stream, and the peer `peer_window` to each outgoing one.
    pub(crate) fn new(own_window: u32, peer_window: u32) -> Self {
        Streams {
            state: Mutex::default(),
            open: AtomicUsize::new(0),
            own_window,
            peer_window,
            peer_elsewhere: false,
        }
    }

    /// These streams, with a peer that runs on threads of its own if `elsewhere`
    /// ([`PeerProcess::is_elsewhere`](crate::peer_process::PeerProcess::is_elsewhere)): their
    /// senders then take no turns for the peer's sake (`pump`).
    pub(crate) fn peer_elsewhere(mut self, elsewhere: bool) -> Self {
        self.peer_elsewhere = elsewhere;
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; if one ever did, the maps are still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the streams open in `state`, after a change to it.
    fn recount(&self, state: &State) {
        let open = state.inbound.len() + state.outbound.len();
        self.open.store(open, Ordering::Relaxed);
    }

    /// Whether any stream is open, either way.
    pub(crate) fn any_open(&self) -> bool {
        self.open.load(Ordering::Relaxed) > 0
    }

    /// Opens the receiving side of call `id`'s incoming stream.
    pub(crate) fn open_inbound(self: &Arc<Self>, id: u64) -> InboundParts {
        let (tx, rx) = mpsc::unbounded_channel();
        let credit = Arc::new(AtomicI64::new(i64::from(self.own_window)));
        let mut state = self.state();
        match &state.closed {
            Some(reason) => {
                let _ = tx.send(Inbound::Lost(reason.clone()));
            }
            None => {
                let entry = InboundEntry {
                    tx,
                    credit: Arc::clone(&credit),
                };
                state.inbound.insert(id, entry);
                self.recount(&state);
            }
        }
        InboundParts {
            rx,
            credit,
            grant_at: grant_at(self.own_window),
            streams: Arc::clone(self),
            id,
        }
    }

    /// Hands call `id`'s item to its incoming stream, together with the items of the same
    /// stream that follow it in `reader`'s buffer: `payload` is the frame's payload, `item` what
    /// follows its head. Items for a stream nobody reads any more are dropped; an item sent
    /// with no credit left breaks the protocol.
    ///
    /// An item may go while any credit is left, whatever it costs: what the items cost past the
    /// window is reserved in `holding` (a server connection's slots), if given, until the
    /// consumer has taken them. If the server may not hold that much, the items are dropped and
    /// the stream ends for its consumer with an error.
    pub(crate) fn deliver<R>(
        &self,
        id: u64,
        payload: &Bytes,
        item: &[u8],
        reader: &mut FrameReader<R>,
        holding: Option<&Arc<CallSlots>>,
    ) -> Result<(), RpcError> {
        let mut state = self.state();
        let Some(entry) = state.inbound.get(&id) else {
            return Ok(());
        };
        // Only this reader spends the credit; the consumer adds to it before granting, so what
        // the peer may rely on is all there now.
        let before = entry.credit.load(Ordering::Acquire);
        if before <= 0 {
            return Err(RpcError::Protocol(format!(
                "the peer sent an item of stream {id} without credit for it"
            )));
        }
        let mut credit = before - item_cost(payload.len());
        // The same stream's frames right behind, as far as the credit goes: one sent without
        // credit stays in the buffer, and is refused when it is read on its own.
        let head_len = payload.len() - item.len();
        let run = reader.take_run(&payload[..head_len], |size| {
            let has_credit = credit > 0;
            if has_credit {
                credit -= item_cost(size);
            }
            has_credit
        });
        entry.credit.fetch_sub(before - credit, Ordering::AcqRel);
        let past_window = usize::try_from(-credit).unwrap_or(0);
        let held = match holding {
            Some(slots) if past_window > 0 => match slots.reserve(past_window) {
                Some(reservation) => Some(reservation),
                None => {
                    if let Some(entry) = state.inbound.remove(&id) {
                        self.recount(&state);
                        let _ = entry.tx.send(Inbound::Failed {
                            code: StatusCode::Unavailable.wire_code(),
                            message: format!(
                                "{OVER_SERVER_LIMIT}: an item past the stream's window was dropped"
                            ),
                        });
                    }
                    return Ok(());
                }
            },
            _ => None,
        };
        let bytes = payload.slice_ref(item);
        let cost = item_cost(payload.len());
        let _ = entry.tx.send(Inbound::Item { bytes, cost });
        if let Some(frames) = run {
            let _ = entry.tx.send(Inbound::Run { frames, head_len });
        }
        if let Some(held) = held {
            let _ = entry.tx.send(Inbound::Held(held));
        }
        Ok(())
    }

    /// Ends call `id`'s incoming stream as the sender said.
    pub(crate) fn end(&self, id: u64, end: Inbound) {
        let mut state = self.state();
        if let Some(entry) = state.inbound.remove(&id) {
            self.recount(&state);
            let _ = entry.tx.send(end);
        }
    }

    /// Forgets call `id`'s incoming stream: its reader is gone.
    fn close_inbound(&self, id: u64) {
        let mut state = self.state();
        state.inbound.remove(&id);
        self.recount(&state);
    }

    /// Opens the sending side of call `id`'s outgoing stream, with a whole window of credit.
    pub(crate) fn open_outbound(self: &Arc<Self>, id: u64) -> OutboundCredit {
        let window = Arc::new(SendWindow::new(self.peer_window));
        let mut state = self.state();
        if state.closed.is_some() {
            window.close();
        } else {
            state.outbound.insert(id, Arc::clone(&window));
            self.recount(&state);
        }
        OutboundCredit {
            window,
            streams: Arc::clone(self),
            id,
        }
    }

    /// Adds the credit the receiver granted to call `id`'s outgoing stream.
    pub(crate) fn grant(&self, id: u64, bytes: u32) -> Result<(), RpcError> {
        if let Some(window) = self.state().outbound.get(&id)
            && !window.grant(bytes)
        {
            return Err(RpcError::Protocol(format!(
                "the peer granted stream {id} more credit than its items cost"
            )));
        }
        Ok(())
    }

    /// Forgets call `id`'s outgoing stream.
    fn close_outbound(&self, id: u64) {
        let mut state = self.state();
        state.outbound.remove(&id);
        self.recount(&state);
    }

    /// The connection ended: every incoming stream gets `reason` as its last item, every
    /// outgoing stream stops, and streams opened later end at once.
    pub(crate) fn close_all(&self, reason: RpcError) {
        let mut state = self.state();
        if state.closed.is_some() {
            return;
        }
        for (_, entry) in state.inbound.drain() {
            let _ = entry.tx.send(Inbound::Lost(reason.clone()));
        }
        for (_, window) in state.outbound.drain() {
            window.close();
        }
        self.recount(&state);
        state.closed = Some(reason);
    }
}

/// The credit of an outgoing stream. Dropped, it unregisters the stream.
#[derive(Debug)]
pub(crate) struct OutboundCredit {
    pub(crate) window: Arc<SendWindow>,
    streams: Arc<Streams>,
    id: u64,
}

/// How much an outgoing stream may still send, in bytes of item cost. An item may go while the
/// credit is above zero, whatever it costs, so that an item larger than the whole window still
/// goes, alone; the credit then falls below zero until the receiver has taken it.
#[derive(Debug)]
pub(crate) struct SendWindow {
    credit: AtomicI64,
    /// The credit the stream started with, which grants never take it past.
    window: i64,
    closed: AtomicBool,
    changed: Notify,
}

impl SendWindow {
    fn new(window: u32) -> Self {
        SendWindow {
            credit: AtomicI64::new(i64::from(window)),
            window: i64::from(window),
            closed: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    /// Whether an item may be sent now; `None` once the stream is stopped (the connection
    /// ended).
    pub(crate) fn open(&self) -> Option<bool> {
        self.credit().map(|credit| credit > 0)
    }

    /// The credit left, which only grants change meanwhile; `None` once the stream is stopped.
    #[inline]
    pub(crate) fn credit(&self) -> Option<i64> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        Some(self.credit.load(Ordering::Acquire))
    }

    /// Waits until an item may be sent: `false` if the stream was stopped instead.
    pub(crate) async fn ready(&self) -> bool {
        loop {
            let changed = self.changed.notified();
            match self.open() {
                Some(true) => return true,
                None => return false,
                Some(false) => changed.await,
            }
        }
    }

    /// Counts items of `cost` in all sent.
    #[inline]
    pub(crate) fn spend(&self, cost: i64) {
        self.credit.fetch_sub(cost, Ordering::AcqRel);
    }

    /// Adds `bytes` the receiver granted; `false` (and nothing added) if that would be more
    /// than the window: the receiver granted more than the items it took cost.
    fn grant(&self, bytes: u32) -> bool {
        let granted = self
            .credit
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |credit| {
                let after = credit + i64::from(bytes);
                (after <= self.window).then_some(after)
            })
            .is_ok();
        if granted {
            self.changed.notify_one();
        }
        granted
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.changed.notify_one();
    }
}

impl OutboundCredit {
    /// Whether the stream's receiver runs on threads of its own: [`Streams::peer_elsewhere`].
    pub(crate) fn receiver_elsewhere(&self) -> bool {
        self.streams.peer_elsewhere
    }
}

impl Drop for OutboundCredit {
    fn drop(&mut self) {
        self.streams.close_outbound(self.id);
    }
}

/// What the generated `decode_request` uses to attach the incoming stream of a request.
///
/// It borrows the connection's streams and outbox: a request without a stream argument, which
/// most are, costs no reference counting.
#[derive(Debug)]
pub struct InboundSlot<'a> {
    pub(crate) id: u64,
    pub(crate) streams: &'a Arc<Streams>,
    pub(crate) outbox: &'a Outbox,
}

impl InboundSlot<'_> {
    /// The stream the client sends with this request, as argument of `method`.
    pub fn stream<T: DeserializeOwned + Send + 'static>(
        &mut self,
        method: &'static str,
    ) -> Streaming<T> {
        let parts = self.streams.open_inbound(self.id);
        inbound_stream(
            parts,
            InboundOptions {
                id: self.id,
                method,
                outbox: self.outbox.clone(),
                deadline: None,
                cancel_on_drop: false,
                slot: None,
                upload: None,
                end: None,
            },
        )
    }
}

/// How an incoming stream behaves.
pub(crate) struct InboundOptions {
    pub(crate) id: u64,
    pub(crate) method: &'static str,
    pub(crate) outbox: Outbox,
    /// When the whole call must be over, and how long it was given.
    pub(crate) deadline: Option<(tokio::time::Instant, Duration)>,
    /// Whether dropping the stream before its end cancels the call (a client's result stream).
    pub(crate) cancel_on_drop: bool,
    /// The call's in-flight slot, held until the stream ends.
    pub(crate) slot: Option<CallSlot>,
    /// The call's upload, which lives as long as the stream.
    pub(crate) upload: Option<super::Upload>,
    /// What records how the call whose result this is ended: when the stream ends, fails, or is
    /// dropped first (a client's result stream).
    pub(crate) end: Option<CallEnd>,
}

/// Wraps the receiving end of an incoming stream as a [`Streaming`] of `T`.
pub(crate) fn inbound_stream<T: Decode + Send + 'static>(
    parts: InboundParts,
    options: InboundOptions,
) -> Streaming<T> {
    let deadline = options
        .deadline
        .map(|(at, given)| (Box::pin(tokio::time::sleep_until(at)), given));
    Streaming::from_inner(InboundStream::<T> {
        parts,
        run: Bytes::new(),
        head_len: 0,
        ahead: Vec::new(),
        consumed: 0,
        deadline,
        done: false,
        options,
        item: PhantomData,
    })
}

struct InboundStream<T> {
    parts: InboundParts,
    /// Items handed over in one piece ([`Inbound::Run`]) and not taken yet.
    run: Bytes,
    /// The length of the head before each item in `run`.
    head_len: usize,
    /// Items of `run` decoded already and not taken yet, the next last: taken with `pop`, which
    /// cost a stream of small numbers 12 fewer instructions an item than a `VecDeque` taken
    /// from its front (callgrind). The first that failed to decode ends the stream, and the
    /// items that came after it are dropped with it.
    ahead: Vec<Result<T, protocol::CodecError>>,
    /// The cost of the items taken since credit was last granted back.
    consumed: i64,
    deadline: Option<(Pin<Box<Sleep>>, Duration)>,
    done: bool,
    options: InboundOptions,
    item: PhantomData<fn() -> T>,
}

/// Nothing in the stream is pinned: items decoded ahead are only ever moved out whole.
impl<T> Unpin for InboundStream<T> {}

impl<T> InboundStream<T> {
    fn finish(&mut self, item: Option<Result<T, RpcError>>) -> Poll<Option<Result<T, RpcError>>> {
        self.done = true;
        // Items after one that failed to decode, or past the deadline, are not handed on.
        self.ahead = Vec::new();
        self.run = Bytes::new();
        self.options.slot = None;
        self.options.upload = None;
        if let Some(end) = self.options.end.take() {
            match &item {
                Some(Err(error)) => end.fail(error),
                _ => end.finish(OK),
            }
        }
        Poll::Ready(item)
    }

    /// Grants the sender credit for an item of `cost` taken, once enough has been taken.
    fn return_credit(&mut self, cost: i64) {
        self.consumed += cost;
        while self.consumed >= self.parts.grant_at {
            // One grant says at most u32::MAX bytes; a larger item's cost takes several.
            let bytes = u32::try_from(self.consumed).unwrap_or(u32::MAX);
            self.consumed -= i64::from(bytes);
            // Counted before the frame leaves, so the sender's next items are always covered.
            self.parts
                .credit
                .fetch_add(i64::from(bytes), Ordering::AcqRel);
            let id = self.options.id;
            self.options.outbox.send_head(&Head::Credit { id, bytes });
        }
    }
}

impl<T: Decode> Stream for InboundStream<T> {
    type Item = Result<T, RpcError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Items decoded ahead were decoded after a look at the timer, a batch at a time: they
        // are handed out without another (a look for each item took 2% of the CPU time of a
        // stream of small numbers, both ends), and without the stack the rest needs. A stream
        // that is done has none.
        match self.ahead.pop() {
            Some(item) => self.decoded(item),
            None => self.poll_beyond_ahead(cx),
        }
    }
}

impl<T: Decode> InboundStream<T> {
    /// The next item when none is decoded ahead: from the run being read, or from what the
    /// connection's reader sends next.
    #[inline(never)]
    fn poll_beyond_ahead(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, RpcError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let method = self.options.method;
        // With items in hand a glance at the timer will do; before waiting for more, the timer
        // must also be set to wake this task.
        let in_hand = !self.run.is_empty();
        if let Some((sleep, given)) = self.deadline.as_mut()
            && (if in_hand {
                sleep.is_elapsed()
            } else {
                sleep.as_mut().poll(cx).is_ready()
            })
        {
            let error = RpcError::DeadlineExceeded {
                method: method.to_owned(),
                deadline: *given,
            };
            return self.finish(Some(Err(error)));
        }
        if in_hand {
            return self.next_in_run();
        }
        let item = match std::task::ready!(self.parts.rx.poll_recv(cx)) {
            Some(Inbound::Held(held)) => {
                // The items before it are taken: what they held past the window goes back.
                drop(held);
                return self.poll_beyond_ahead(cx);
            }
            Some(Inbound::Item { mut bytes, cost }) => {
                self.return_credit(cost);
                let whole = 0..bytes.len();
                T::decode(&mut bytes, whole)
            }
            Some(Inbound::Run { frames, head_len }) => {
                self.run = frames;
                self.head_len = head_len;
                return self.next_in_run();
            }
            Some(Inbound::Finished) => return self.finish(None),
            Some(Inbound::Failed { code, message }) => {
                let error = match (code, self.deadline.as_ref()) {
                    (code::DEADLINE_EXCEEDED, Some((_, given))) => RpcError::DeadlineExceeded {
                        method: method.to_owned(),
                        deadline: *given,
                    },
                    _ => RpcError::StreamFailed { message },
                };
                return self.finish(Some(Err(error)));
            }
            Some(Inbound::Lost(reason)) => return self.finish(Some(Err(reason))),
            None => return self.finish(Some(Err(RpcError::ConnectionClosed))),
        };
        self.decoded(item)
    }

    /// Decodes the next items of the run being read, none being left from before, and takes
    /// the first.
    fn next_in_run(&mut self) -> Poll<Option<Result<T, RpcError>>> {
        self.decode_ahead();
        match self.ahead.pop() {
            Some(item) => self.decoded(item),
            None => unreachable!("a run holds whole frames, checked as they were read"),
        }
    }

    /// Decodes the next items of the run, as many as [`AHEAD_BYTES`] of them fill, with the
    /// run lent for decoding once for all of them: a stream of small items then costs one
    /// lending per batch, not per item.
    fn decode_ahead(&mut self) {
        let room = (AHEAD_BYTES / size_of::<Result<T, protocol::CodecError>>().max(1)).max(1);
        // Room for a whole batch at the first: grown item by item, a stream of ten numbers
        // allocated three times for it.
        self.ahead.reserve_exact(room);
        let (head_len, ahead) = (self.head_len, &mut self.ahead);
        let whole = 0..self.run.len();
        let (taken, cost) = crate::payload::decoding(&mut self.run, whole, |frames| {
            let (mut taken, mut cost) = (0, 0);
            while ahead.len() < room
                && let Some((size, rest)) = split_frame(&frames[taken..])
            {
                ahead.push(T::decode_lent(&rest[head_len.min(size)..size]));
                taken += LENGTH_PREFIX + size;
                cost += item_cost(size);
            }
            (taken, cost)
        });
        // Taken from the end: the next item last.
        self.ahead.reverse();
        self.run.advance(taken);
        self.return_credit(cost);
    }

    /// Hands on a decoded item; one that failed to decode ends the stream.
    #[inline]
    fn decoded(
        &mut self,
        item: Result<T, protocol::CodecError>,
    ) -> Poll<Option<Result<T, RpcError>>> {
        match item {
            Ok(item) => Poll::Ready(Some(Ok(item))),
            Err(error) => self.undecodable(&error),
        }
    }

    /// Ends the stream at an item that failed to decode.
    #[cold]
    fn undecodable(&mut self, error: &protocol::CodecError) -> Poll<Option<Result<T, RpcError>>> {
        let error = RpcError::Decode {
            method: self.options.method.to_owned(),
            reason: error.to_string(),
        };
        self.finish(Some(Err(error)))
    }
}

/// How much memory a stream gives the items it decodes ahead of its consumer: 48 `u64`s (16
/// bytes each as a result), fewer of larger types, at least one.
const AHEAD_BYTES: usize = 48 * 16;

/// The payload size of the whole frame at the start of `frames`, and the bytes after its length
/// prefix; `None` if no whole frame is there.
#[inline]
fn split_frame(frames: &[u8]) -> Option<(usize, &[u8])> {
    let size = length_prefix(frames)?;
    let rest = &frames[LENGTH_PREFIX..];
    (rest.len() >= size).then_some((size, rest))
}

impl<T> Drop for InboundStream<T> {
    fn drop(&mut self) {
        if self.options.cancel_on_drop && !self.done {
            let id = self.options.id;
            self.options.outbox.send_head(&Head::Cancel { id });
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::protocol::Outbox;

    /// Whether any stream is open follows every way one opens and closes: its sender ending
    /// it, its reader or sender dropped, and the connection ending.
    #[test]
    fn any_open_counts_streams_both_ways() {
        let streams = Arc::new(Streams::new(1 << 20, 1 << 20));
        assert!(!streams.any_open());
        let download = streams.open_inbound(1);
        let upload = streams.open_outbound(2);
        drop(upload);
        assert!(streams.any_open(), "one is still coming in");
        streams.end(1, Inbound::Lost(RpcError::ConnectionClosed));
        assert!(!streams.any_open(), "its sender ended it");
        drop(download);
        assert!(!streams.any_open());

        let (_download, _upload) = (streams.open_inbound(3), streams.open_outbound(4));
        assert!(streams.any_open());
        streams.close_all(RpcError::ConnectionClosed);
        assert!(!streams.any_open(), "the connection ended");
        let _late = streams.open_inbound(5);
        assert!(!streams.any_open(), "opened after the end, it ends at once");
    }

    /// When the connection ends, an outgoing stream waiting for credit stops waiting, and one
    /// opened after it stops at once: its pump ends rather than wait for ever.
    #[tokio::test]
    async fn the_connection_ending_stops_every_outgoing_stream() {
        let streams = Arc::new(Streams::new(1 << 20, 1 << 20));
        let upload = streams.open_outbound(1);
        upload.window.spend(1 << 20);
        assert_eq!(upload.window.open(), Some(false), "out of credit");
        let waiting = tokio::spawn({
            let window = Arc::clone(&upload.window);
            async move { window.ready().await }
        });
        streams.close_all(RpcError::ConnectionClosed);
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(20), waiting)
            .await
            .expect("stops waiting")
            .expect("joins");
        assert!(!stopped, "stopped, not ready");
        assert_eq!(upload.window.credit(), None);

        let late = streams.open_outbound(2);
        assert_eq!(late.window.open(), None, "stopped from the start");
        assert!(!late.window.ready().await);
    }

    /// A stream of `u64` that has been sent the numbers `0..count` as one run, with the
    /// deadline `deadline` from now if one is given.
    fn stream_of_one_run(count: u64, deadline: Option<Duration>) -> InboundStream<u64> {
        let items: Vec<Vec<u8>> = (0..count)
            .map(|n| postcard::to_stdvec(&n).expect("encodes"))
            .collect();
        stream_of_run(&items, deadline)
    }

    /// A stream of `u64` that has been sent one run of StreamItem frames carrying `items`.
    fn stream_of_run(items: &[Vec<u8>], deadline: Option<Duration>) -> InboundStream<u64> {
        let streams = Arc::new(Streams::new(1 << 20, 1 << 20));
        let parts = streams.open_inbound(1);
        let (outbox, _queue) = Outbox::new();
        let head = Head::StreamItem { id: 1 }.frame();
        let head = &head[LENGTH_PREFIX..];
        let mut frames = Vec::new();
        for item in items {
            let mut payload = head.to_vec();
            payload.extend(item);
            frames.extend(protocol::frame(&payload));
        }
        let sent = streams.state().inbound[&1].tx.send(Inbound::Run {
            frames: Bytes::from(frames),
            head_len: head.len(),
        });
        assert!(sent.is_ok());
        InboundStream::<u64> {
            parts,
            run: Bytes::new(),
            head_len: 0,
            ahead: Vec::new(),
            consumed: 0,
            deadline: deadline.map(|given| {
                let at = tokio::time::Instant::now() + given;
                (Box::pin(tokio::time::sleep_until(at)), given)
            }),
            done: false,
            options: InboundOptions {
                id: 1,
                method: "count",
                outbox,
                deadline: None,
                cancel_on_drop: false,
                slot: None,
                upload: None,
                end: None,
            },
            item: PhantomData,
        }
    }

    /// A stream of `u64` taking the items of one run decodes 48 of them ahead of its consumer
    /// at a time, with one lending of the run, and hands them on in order.
    #[tokio::test]
    async fn a_run_of_small_items_is_decoded_48_ahead() {
        let mut stream = stream_of_one_run(100, None);
        let first = stream.next().await.expect("an item").expect("decodes");
        assert_eq!(first, 0);
        assert_eq!(stream.ahead.len(), 47, "48 decoded, one taken");
        for n in 1..100 {
            let item = stream.next().await.expect("an item").expect("decodes");
            assert_eq!(item, n);
            assert!(stream.ahead.len() < 48, "{} ahead", stream.ahead.len());
        }
    }

    /// What the items of a run cost is counted as they are taken, for the credit granted back
    /// to the sender.
    #[tokio::test]
    async fn the_items_of_a_run_taken_count_for_the_credit_granted_back() {
        let mut stream = stream_of_one_run(100, None);
        let head_len = Head::StreamItem { id: 1 }.frame().len() - LENGTH_PREFIX;
        let cost: i64 = (0..100u64)
            .map(|n| item_cost(head_len + postcard::to_stdvec(&n).expect("encodes").len()))
            .sum();
        for n in 0..100 {
            assert_eq!(stream.next().await.expect("an item").expect("decodes"), n);
        }
        assert!(cost < stream.parts.grant_at, "too little yet for a grant");
        assert_eq!(stream.consumed, cost);
    }

    /// An item of a run that does not decode ends the stream with an error naming the method,
    /// after the items before it.
    #[tokio::test]
    async fn an_item_that_does_not_decode_ends_the_stream() {
        // Eleven bytes of continuation: no u64.
        let items = [vec![7], vec![0xff; 11], vec![8]];
        let mut stream = stream_of_run(&items, None);
        assert_eq!(stream.next().await.expect("an item").expect("decodes"), 7);
        match stream.next().await {
            Some(Err(RpcError::Decode { method, .. })) => assert_eq!(method, "count"),
            other => panic!("expected Decode, got {other:?}"),
        }
        assert!(stream.next().await.is_none(), "nothing after it");
    }

    /// Past the deadline, the items decoded before it are still handed on, and the stream ends
    /// with `DeadlineExceeded` before it decodes more of its run.
    #[tokio::test(start_paused = true)]
    async fn past_the_deadline_a_run_ends_after_the_items_decoded_already() {
        let deadline = Duration::from_secs(1);
        let mut stream = stream_of_one_run(100, Some(deadline));
        assert_eq!(stream.next().await.expect("an item").expect("decodes"), 0);
        tokio::time::advance(2 * deadline).await;
        for n in 1..48 {
            assert_eq!(stream.next().await.expect("an item").expect("decodes"), n);
        }
        match stream.next().await {
            Some(Err(RpcError::DeadlineExceeded {
                method,
                deadline: given,
            })) => {
                assert_eq!((method.as_str(), given), ("count", deadline));
            }
            other => panic!("expected DeadlineExceeded, got {other:?}"),
        }
        assert!(stream.next().await.is_none(), "nothing after the error");
    }
}
