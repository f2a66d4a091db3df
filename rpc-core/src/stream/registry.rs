//! The streams of one connection: where incoming items go, and how much credit each outgoing
//! stream has. Both sides of a connection use the same registry.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Sleep;

use super::{CREDIT_BATCH, INITIAL_CREDIT, Streaming};
use crate::RpcError;
use crate::protocol::{self, Head, Outbox, code};

/// What the connection's reader hands an incoming stream.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// One encoded item.
    Item(Bytes),
    /// The sender ended the stream.
    Finished,
    /// The sender ended the stream with an error.
    Failed { code: u32, message: String },
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
#[derive(Debug, Default)]
pub(crate) struct Streams {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    inbound: HashMap<u64, InboundEntry>,
    outbound: HashMap<u64, Arc<Semaphore>>,
    closed: Option<RpcError>,
}

#[derive(Debug)]
struct InboundEntry {
    tx: mpsc::UnboundedSender<Inbound>,
    /// How many more items the peer may send; an item past it breaks the protocol.
    credit: Arc<AtomicU32>,
}

/// The receiving end of an incoming stream, before it is wrapped for its item type. Dropped, it
/// unregisters the stream: later items for it are discarded.
#[derive(Debug)]
pub(crate) struct InboundParts {
    rx: mpsc::UnboundedReceiver<Inbound>,
    credit: Arc<AtomicU32>,
    streams: Arc<Streams>,
    id: u64,
}

impl Drop for InboundParts {
    fn drop(&mut self) {
        self.streams.close_inbound(self.id);
    }
}

impl Streams {
    fn state(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; if one ever did, the maps are still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens the receiving side of call `id`'s incoming stream.
    pub(crate) fn open_inbound(self: &Arc<Self>, id: u64) -> InboundParts {
        let (tx, rx) = mpsc::unbounded_channel();
        let credit = Arc::new(AtomicU32::new(INITIAL_CREDIT));
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
            }
        }
        InboundParts {
            rx,
            credit,
            streams: Arc::clone(self),
            id,
        }
    }

    /// Hands an item to call `id`'s incoming stream. Items for a stream nobody reads any more
    /// are dropped; an item past the credit granted breaks the protocol.
    pub(crate) fn deliver(&self, id: u64, item: Bytes) -> Result<(), RpcError> {
        let state = self.state();
        let Some(entry) = state.inbound.get(&id) else {
            return Ok(());
        };
        let had_credit = entry
            .credit
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1))
            .is_ok();
        if !had_credit {
            return Err(RpcError::Protocol(format!(
                "the peer sent an item of stream {id} without credit for it"
            )));
        }
        let _ = entry.tx.send(Inbound::Item(item));
        Ok(())
    }

    /// Ends call `id`'s incoming stream as the sender said.
    pub(crate) fn end(&self, id: u64, end: Inbound) {
        if let Some(entry) = self.state().inbound.remove(&id) {
            let _ = entry.tx.send(end);
        }
    }

    /// Forgets call `id`'s incoming stream: its reader is gone.
    fn close_inbound(&self, id: u64) {
        self.state().inbound.remove(&id);
    }

    /// Opens the sending side of call `id`'s outgoing stream, with the initial credit.
    pub(crate) fn open_outbound(self: &Arc<Self>, id: u64) -> OutboundCredit {
        let credit = Arc::new(Semaphore::new(INITIAL_CREDIT as usize));
        let mut state = self.state();
        if state.closed.is_some() {
            credit.close();
        } else {
            state.outbound.insert(id, Arc::clone(&credit));
        }
        OutboundCredit {
            credit,
            streams: Arc::clone(self),
            id,
        }
    }

    /// Adds the credit the receiver granted to call `id`'s outgoing stream.
    pub(crate) fn grant(&self, id: u64, items: u32) -> Result<(), RpcError> {
        if let Some(credit) = self.state().outbound.get(&id) {
            // A receiver never has more than its window outstanding; more is a broken peer.
            if credit.available_permits() + items as usize > 64 * INITIAL_CREDIT as usize {
                return Err(RpcError::Protocol(format!(
                    "the peer granted stream {id} more credit than it can have used"
                )));
            }
            credit.add_permits(items as usize);
        }
        Ok(())
    }

    /// Forgets call `id`'s outgoing stream.
    fn close_outbound(&self, id: u64) {
        self.state().outbound.remove(&id);
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
        for (_, credit) in state.outbound.drain() {
            credit.close();
        }
        state.closed = Some(reason);
    }
}

/// The credit of an outgoing stream. Dropped, it unregisters the stream.
#[derive(Debug)]
pub(crate) struct OutboundCredit {
    pub(crate) credit: Arc<Semaphore>,
    streams: Arc<Streams>,
    id: u64,
}

impl Drop for OutboundCredit {
    fn drop(&mut self) {
        self.streams.close_outbound(self.id);
    }
}

/// What the generated `decode_request` uses to attach the incoming stream of a request.
#[derive(Debug)]
pub struct InboundSlot {
    pub(crate) id: u64,
    pub(crate) streams: Arc<Streams>,
    pub(crate) outbox: Outbox,
}

impl InboundSlot {
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
    pub(crate) slot: Option<OwnedSemaphorePermit>,
    /// The call's upload, which lives as long as the stream.
    pub(crate) upload: Option<super::Upload>,
}

/// Wraps the receiving end of an incoming stream as a [`Streaming`] of `T`.
pub(crate) fn inbound_stream<T: DeserializeOwned + Send + 'static>(
    parts: InboundParts,
    options: InboundOptions,
) -> Streaming<T> {
    let deadline = options
        .deadline
        .map(|(at, given)| (Box::pin(tokio::time::sleep_until(at)), given));
    Streaming::from_inner(InboundStream::<T> {
        parts,
        consumed: 0,
        deadline,
        done: false,
        options,
        item: PhantomData,
    })
}

struct InboundStream<T> {
    parts: InboundParts,
    /// Items taken since credit was last granted back.
    consumed: u32,
    deadline: Option<(Pin<Box<Sleep>>, Duration)>,
    done: bool,
    options: InboundOptions,
    item: PhantomData<fn() -> T>,
}

impl<T> InboundStream<T> {
    fn finish(&mut self, item: Option<Result<T, RpcError>>) -> Poll<Option<Result<T, RpcError>>> {
        self.done = true;
        self.options.slot = None;
        self.options.upload = None;
        Poll::Ready(item)
    }

    /// Grants the sender credit for the items taken, once enough have been.
    fn return_credit(&mut self) {
        self.consumed += 1;
        if self.consumed >= CREDIT_BATCH {
            let items = std::mem::take(&mut self.consumed);
            // Counted before the frame leaves, so the sender's next items are always covered.
            self.parts.credit.fetch_add(items, Ordering::AcqRel);
            let id = self.options.id;
            self.options.outbox.send_head(&Head::Credit { id, items });
        }
    }
}

impl<T: DeserializeOwned> Stream for InboundStream<T> {
    type Item = Result<T, RpcError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let method = self.options.method;
        if let Some((sleep, given)) = self.deadline.as_mut()
            && sleep.as_mut().poll(cx).is_ready()
        {
            let error = RpcError::DeadlineExceeded {
                method: method.to_owned(),
                deadline: *given,
            };
            return self.finish(Some(Err(error)));
        }
        let item = match std::task::ready!(self.parts.rx.poll_recv(cx)) {
            Some(Inbound::Item(bytes)) => {
                self.return_credit();
                crate::payload::decoding(&bytes, || protocol::decode_exact(&bytes)).map_err(|e| {
                    RpcError::Decode {
                        method: method.to_owned(),
                        reason: e.to_string(),
                    }
                })
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
        if item.is_err() {
            return self.finish(Some(item));
        }
        Poll::Ready(Some(item))
    }
}

impl<T> Drop for InboundStream<T> {
    fn drop(&mut self) {
        if self.options.cancel_on_drop && !self.done {
            let id = self.options.id;
            self.options.outbox.send_head(&Head::Cancel { id });
        }
    }
}
