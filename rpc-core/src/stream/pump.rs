//! Sending a stream: items encoded straight into their frames, as many as are ready and the
//! credit allows gathered into one write, then the end, which needs no credit.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures_util::Stream;
use serde::Serialize;

use super::registry::{OutboundCredit, SendWindow};
use super::{Streaming, item_cost};
use crate::RpcError;
use crate::protocol::{
    Encode, Frame, FrameStart, Head, LENGTH_PREFIX, OpenScope, Outbox, Outcome, StreamFrames, code,
    finish_frame_at,
};
use crate::task::AbortOnDrop;

/// Items ready at once are gathered into one piece for the writer until it holds this many
/// bytes: a stream of small items then costs one queue entry per batch, not per item.
const BATCH_BYTES: usize = 32 * 1024;

/// The room a batch has past [`BATCH_BYTES`], for the item that crosses the mark: one smaller
/// than this does not reallocate the batch (which copied it whole, once per batch, 1% of the
/// cost of a stream of small numbers).
const BATCH_SLACK: usize = 1024;

/// A pump whose source keeps it busy yields its worker once it has sent this many bytes in full
/// batches in a row and a batch it queued before still waits for the writer ([`takes_turns`]).
/// Until it does, the writer it woke waits in the worker's next-task slot, which no other
/// worker may take: on a runtime shared with the stream's receiver, the pump, the writer and
/// the receiver then tend to stay on one worker while the other sleeps, and a stream of small
/// items ran at half speed in about half the runs. Yielding lets another worker take the pump.
/// A writer that keeps up, on another worker, costs the pump no yield.
const YIELD_AFTER: usize = 4 * BATCH_BYTES;

/// The most bytes of a stream's frames that wait unwritten before its pump waits for the writer
/// to take some. The credit bounds them anyway, below this with a window of 1 MiB, the default;
/// but a receiver may grant up to 4 GiB and read nothing, and a pump that takes no turns
/// ([`takes_turns`]) would then queue all that before the writer it woke (in its worker's
/// next-task slot) had a turn to find the connection stalled. Once the connection's queue is
/// full (a server's `max_queued_bytes_per_connection`, or its budget), a pump waits while any of
/// its frames wait ([`StreamFrames::wait_for_room`]), so that however many streams a connection
/// sends, they hold about its limit together.
const UNWRITTEN_MOST: usize = 1024 * 1024;

/// Whether a pump yields after [`YIELD_AFTER`] bytes: unless the stream's receiver runs on
/// threads of its own and the pump's runtime has other workers. There a yield hands the pump to
/// another worker, a wakeup no receiver is waiting for: across two processes a stream of small
/// numbers whose call id took four bytes (as once a connection's calls pass 2^21) made 62–68M
/// items/s with the yields and 77–82M without, one whose id took a byte 74–88M and 81–83M
/// (three interleaved rounds each). On a runtime of one worker the yield costs no wakeup and
/// lets the writer start sooner: between two single-thread runtimes, without it, such streams
/// ran 5–8% slower.
fn takes_turns(credit: &OutboundCredit) -> bool {
    !credit.receiver_elsewhere()
        || tokio::runtime::Handle::try_current()
            .is_ok_and(|runtime| runtime.metrics().num_workers() == 1)
}

/// An outgoing stream whose item type has been erased: it encodes each item into a frame.
pub struct Outbound {
    items: Pin<Box<dyn EncodeNext>>,
}

impl Outbound {
    /// Erases the item type of `stream`.
    pub fn new<T: Serialize + Send + 'static>(stream: Streaming<T>) -> Self {
        Outbound {
            items: Box::pin(stream),
        }
    }

    /// A stream of items encoded already.
    pub(crate) fn encoded(stream: Streaming<crate::dynamic::Encoded>) -> Self {
        Outbound {
            items: Box::pin(stream),
        }
    }
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").finish_non_exhaustive()
    }
}

/// Where and how the items of one stream are encoded.
struct Encoding<'a> {
    /// How every item's frame starts (StreamItem and the call's id), encoded once.
    start: FrameStart,
    frame: &'a mut Frame,
    max_frame_len: usize,
}

/// Why an item could not be sent, which ends its stream. Boxed, so that the outcome of each
/// item fits in two registers: with a `String`, it was returned through memory and read back
/// in wide loads of narrower stores, a stall on every item that cost small items 17-20% of
/// their rate, depending on how the compiler laid the caller out.
type Failure = Box<str>;

/// Polls the next item and appends it to a frame as a whole StreamItem frame, returning what it
/// costs. `Err` ends the stream with that message; nothing of the failed item stays in the
/// frame.
trait EncodeNext: Send {
    fn poll_encode(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        into: &mut Encoding<'_>,
        scope: Option<&OpenScope>,
    ) -> Poll<Option<Result<i64, Failure>>>;

    /// Appends the items the source has ready at once, while `credit` is above zero and the
    /// frame holds less than [`BATCH_BYTES`], taking each item's cost off `credit`. Returns the
    /// end if the source reached it: `Some(None)` for a clean one, `Some(Some(message))` for a
    /// failure.
    ///
    /// Provided here so that it is compiled for each source: the items of a batch cost no
    /// dynamic call but the source's own.
    fn encode_ready(
        mut self: Pin<&mut Self>,
        into: &mut Encoding<'_>,
        credit: &mut i64,
    ) -> Option<Option<String>> {
        let mut cx = Context::from_waker(Waker::noop());
        let scope = OpenScope::open();
        let (mut end, mut reserved) = (None, false);
        while *credit > 0 && into.frame.len() < BATCH_BYTES {
            match self.as_mut().poll_encode(&mut cx, into, Some(&scope)) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok(cost))) => *credit -= cost,
                Poll::Ready(Some(Err(message))) => {
                    end = Some(Some(message.into_string()));
                    break;
                }
                Poll::Ready(None) => {
                    end = Some(None);
                    break;
                }
            }
            if !reserved {
                // More than one item is ready: room for a whole batch at once, rather than
                // growing into it step by step.
                into.frame.reserve(BATCH_BYTES + BATCH_SLACK);
                reserved = true;
            }
        }
        end
    }
}

impl<T: Encode + Send + 'static> EncodeNext for Streaming<T> {
    // Inlined into `encode_ready`'s loop, with `encode_item`: as calls, the two saved and
    // restored registers for every item, 99 of the 503 instructions a small number cost both
    // ends (callgrind), and such a stream ran 15-20% slower between two processes.
    #[inline(always)]
    fn poll_encode(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        into: &mut Encoding<'_>,
        scope: Option<&OpenScope>,
    ) -> Poll<Option<Result<i64, Failure>>> {
        // Looked at where the source put it, not moved out: moved, it was copied in wide loads
        // of what the source had just stored in narrower pieces, a stall on every item.
        let polled = self.poll_next(cx);
        let Poll::Ready(next) = &polled else {
            return Poll::Pending;
        };
        Poll::Ready(match next {
            Some(Ok(item)) => Some(encode_item(into, scope, item)),
            Some(Err(error)) => Some(Err(failure(error))),
            None => None,
        })
    }
}

/// Why a stream whose source failed with `error` ends: the sender's own message crosses as it
/// is; another error (a stream relayed from elsewhere that broke) crosses as its sentence.
#[cold]
fn failure(error: &RpcError) -> Failure {
    match error {
        RpcError::StreamFailed { message } => message.as_str().into(),
        error => error.to_string().into(),
    }
}

/// Appends `item` as a whole StreamItem frame, returning its cost; within `scope` if one is
/// open for the batch. Always inlined, for the reason `poll_encode` is.
#[inline(always)]
fn encode_item<T: Encode>(
    into: &mut Encoding<'_>,
    scope: Option<&OpenScope>,
    item: &T,
) -> Result<i64, Failure> {
    let at = into.frame.start_frame(&into.start);
    let encode = |bytes: &mut Vec<u8>| item.encode(bytes);
    let encoded = match scope {
        Some(scope) => into.frame.encode_within(scope, encode),
        None => into.frame.encode(encode),
    };
    if let Err(error) = encoded {
        let why = format_args!("an item could not be encoded: {error}");
        return Err(not_sent(into.frame, at, why));
    }
    match finish_frame_at(into.frame, at, into.max_frame_len) {
        Ok(payload_len) => Ok(item_cost(payload_len)),
        Err(too_large) => {
            let why = format_args!("a stream item is too large: {too_large}");
            Err(not_sent(into.frame, at, why))
        }
    }
}

/// Cuts off the frame of an item that could not be sent, begun at `at`, and says `why`.
#[cold]
fn not_sent(frame: &mut Frame, at: usize, why: std::fmt::Arguments<'_>) -> Failure {
    frame.truncate(at);
    why.to_string().into()
}

/// Sends `outbound` as call `id`'s stream while it has credit, until the stream ends; then
/// sends the end, which needs no credit. Stops early, sending nothing more, when the credit is
/// closed (the connection ended) or the outbox is gone.
///
/// No item is taken from the source without credit for it, but one: out of credit, the pump
/// still polls the source, to learn of its end at once. An item found instead waits, alone,
/// until credit comes. Items the source has ready at once go out together, up to
/// [`BATCH_BYTES`] and as far as the credit goes.
///
/// Items and the end are queued through `frames`, so that whoever owns the stream can take back
/// what is not written yet. Dropped before the end (the call was cancelled, or its deadline
/// passed), the pump takes them back itself, so that they are freed at once.
pub(crate) async fn pump(
    id: u64,
    mut outbound: Outbound,
    credit: OutboundCredit,
    outbox: Outbox,
    frames: Arc<StreamFrames>,
    max_frame_len: usize,
) {
    let mut unsent = TakeBackOnDrop {
        frames: Arc::clone(&frames),
        armed: true,
    };
    let window = &credit.window;
    let yields = takes_turns(&credit);
    let head = Head::StreamItem { id }.frame();
    let start = FrameStart::new(&head[LENGTH_PREFIX..]).expect("a stream item's head fits");
    // The bytes sent in full batches since the pump last yielded or found its source not ready.
    let mut busy = 0;
    // `None` for a clean end; otherwise why the stream failed.
    let failure = loop {
        if !frames.has_room(UNWRITTEN_MOST) {
            frames.wait_for_room(UNWRITTEN_MOST).await;
        }
        let mut batch = Frame::default();
        let mut into = Encoding {
            start,
            frame: &mut batch,
            max_frame_len,
        };
        // The first item of a batch: wait for credit, and meanwhile learn of the end.
        let first = {
            let next =
                std::future::poll_fn(|cx| outbound.items.as_mut().poll_encode(cx, &mut into, None));
            tokio::pin!(next);
            let turn = match window.open() {
                None => return,
                Some(true) => Turn::Credit,
                Some(false) => tokio::select! {
                    biased;
                    open = window.ready() => if open { Turn::Credit } else { return },
                    item = &mut next => Turn::Ahead(item),
                },
            };
            match turn {
                Turn::Credit => next.await,
                Turn::Ahead(Some(Ok(cost))) => {
                    if !window.ready().await {
                        return;
                    }
                    Some(Ok(cost))
                }
                Turn::Ahead(end) => end,
            }
        };
        let mut end = settle(window, first);
        // More items, as long as they are ready at once and credit lasts. Credit only grows
        // meanwhile, so what there is now is spent locally, and the whole batch's cost at once.
        if end.is_none()
            && let Some(before) = window.credit()
        {
            let mut credit = before;
            end = outbound.items.as_mut().encode_ready(&mut into, &mut credit);
            window.spend(before - credit);
        }
        let sent = batch.len();
        if sent > 0 && !frames.send(&outbox, batch) {
            return;
        }
        if let Some(failure) = end {
            break failure;
        }
        busy = if sent >= BATCH_BYTES { busy + sent } else { 0 };
        if yields && busy >= YIELD_AFTER && frames.any_unwritten() {
            busy = 0;
            tokio::task::yield_now().await;
        }
    };
    unsent.armed = false;
    let outcome = match &failure {
        None => Outcome::Ok,
        Some(message) => Outcome::error(code::STREAM_FAILED, message),
    };
    frames.send(&outbox, Head::StreamEnd { id, outcome }.frame().into());
}

/// What an item the source gave means for the stream: its cost spent, and `None`; or the end,
/// `Some(None)` for a clean one, `Some(Some(message))` for a failure.
fn settle(window: &SendWindow, polled: Option<Result<i64, Failure>>) -> Option<Option<String>> {
    match polled {
        Some(Ok(cost)) => {
            window.spend(cost);
            None
        }
        Some(Err(message)) => Some(Some(message.into_string())),
        None => Some(None),
    }
}

/// A client's upload in progress: its pump, and its frames not yet written. Dropped (the call
/// was answered or abandoned), it stops the pump and takes those frames back, the end
/// included: the server needs none of them any more.
#[derive(Debug)]
pub(crate) struct Upload {
    _pump: AbortOnDrop,
    frames: Arc<StreamFrames>,
}

impl Upload {
    /// Starts pumping `outbound` as call `id`'s upload.
    pub(crate) fn start(
        id: u64,
        outbound: Outbound,
        credit: OutboundCredit,
        outbox: &Outbox,
        max_frame_len: usize,
    ) -> Upload {
        let frames = StreamFrames::new(outbox);
        let task = pump(
            id,
            outbound,
            credit,
            outbox.clone(),
            Arc::clone(&frames),
            max_frame_len,
        );
        Upload {
            _pump: AbortOnDrop::new(&tokio::spawn(task)),
            frames,
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.frames.take_back();
    }
}

/// What a pump found when it had a turn: credit, or (out of credit) what the source had, with
/// its cost.
enum Turn {
    Credit,
    Ahead(Option<Result<i64, Failure>>),
}

/// Takes back a stream's unwritten items when its pump is dropped before the end.
struct TakeBackOnDrop {
    frames: Arc<StreamFrames>,
    armed: bool,
}

impl Drop for TakeBackOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.frames.take_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::Streams;

    /// A pump dropped before its stream's end (the call was cancelled, or its deadline
    /// passed) takes back what it queued and the writer has not written: none of it goes out,
    /// and the connection's queue is uncounted at once.
    #[tokio::test]
    async fn a_pump_dropped_before_the_end_takes_back_its_unwritten_items() {
        let (outbox, _queue) = Outbox::new();
        let streams = Arc::new(Streams::new(1 << 20, 1 << 20));
        let frames = StreamFrames::new(&outbox);
        let (sender, items) = Streaming::channel(4);
        let pumping = tokio::spawn(pump(
            1,
            Outbound::new(items),
            streams.open_outbound(1),
            outbox.clone(),
            Arc::clone(&frames),
            1 << 20,
        ));
        sender.send(7u64).await.expect("open");
        // Nothing writes the queue: the item waits there, counted, once the pump has had a
        // turn.
        let queued = async {
            while !frames.any_unwritten() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), queued)
            .await
            .expect("the pump queues the item");
        assert!(outbox.meter().queued() > 0);

        pumping.abort();
        let _ = pumping.await;
        assert!(!frames.any_unwritten(), "taken back");
        assert_eq!(outbox.meter().queued(), 0, "uncounted");
        drop(sender);
    }

    /// The bytes queued by a pump of an endless, always ready source when another task of the
    /// runtime first runs, and once the pump has spent all its credit (nothing writes the
    /// queue, and nothing grants more).
    async fn queued_at_first_turn_and_in_all(receiver_elsewhere: bool) -> (usize, usize) {
        let (outbox, _queue) = Outbox::new();
        let streams = Arc::new(Streams::new(1 << 20, 1 << 20).peer_elsewhere(receiver_elsewhere));
        let frames = StreamFrames::new(&outbox);
        let pumping = tokio::spawn(pump(
            1,
            Outbound::new(Streaming::iter(0..u64::MAX)),
            streams.open_outbound(1),
            outbox.clone(),
            frames,
            1 << 20,
        ));
        let probe = outbox.clone();
        let first = tokio::spawn(async move { probe.meter().queued() })
            .await
            .expect("the probe runs");
        let mut in_all = outbox.meter().queued();
        loop {
            tokio::task::yield_now().await;
            let now = outbox.meter().queued();
            if now == in_all {
                break;
            }
            in_all = now;
        }
        pumping.abort();
        (first, in_all)
    }

    /// On a runtime of one worker, a busy pump gives the other tasks a turn after
    /// [`YIELD_AFTER`] bytes, wherever its receiver runs: the writer it woke then writes
    /// before the pump has spent all its credit.
    #[tokio::test]
    async fn a_busy_pump_takes_turns_on_a_runtime_of_one_worker() {
        for elsewhere in [false, true] {
            let (first, in_all) = queued_at_first_turn_and_in_all(elsewhere).await;
            assert!(
                first >= YIELD_AFTER,
                "{first}: a turn only after {YIELD_AFTER} bytes"
            );
            assert!(
                first < in_all,
                "{first} of {in_all}: a turn before the credit ran out"
            );
        }
    }

    /// On a runtime of several workers, a pump takes turns only if its receiver may run there
    /// too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pump_takes_no_turns_for_a_receiver_elsewhere_on_a_runtime_of_several_workers() {
        let streams = |elsewhere| Arc::new(Streams::new(1024, 1024).peer_elsewhere(elsewhere));
        assert!(takes_turns(&streams(false).open_outbound(1)));
        assert!(!takes_turns(&streams(true).open_outbound(1)));
    }

    /// Items ready at once are encoded into one frame, each a whole StreamItem frame, and the
    /// frame makes room for a whole batch as soon as a second item is ready, rather than
    /// growing into it step by step.
    #[test]
    fn ready_items_share_a_frame_with_room_for_the_batch() {
        let mut source: Pin<Box<dyn EncodeNext>> = Box::pin(Streaming::iter(0..100u64));
        let head = Head::StreamItem { id: 1 }.frame();
        let mut frame = Frame::default();
        let mut into = Encoding {
            start: FrameStart::new(&head[LENGTH_PREFIX..]).expect("a short head"),
            frame: &mut frame,
            max_frame_len: 1024,
        };
        let mut credit = i64::MAX;
        let end = source.as_mut().encode_ready(&mut into, &mut credit);
        assert_eq!(end, Some(None), "the source ended");
        assert!(
            frame.capacity() >= BATCH_BYTES + BATCH_SLACK,
            "{}",
            frame.capacity()
        );
        let bytes = frame.contiguous().expect("nothing spliced");
        let mut expected = Vec::new();
        for n in 0..100u64 {
            let mut item = head[LENGTH_PREFIX..].to_vec();
            item.extend(postcard::to_stdvec(&n).expect("encodes"));
            expected.extend(crate::protocol::frame(&item));
        }
        assert_eq!(bytes, expected);
    }
}
