//! Sending a stream: one item per credit, each encoded straight into its frame, then the end,
//! which needs no credit.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use serde::Serialize;
use tokio::sync::TryAcquireError;

use super::Streaming;
use super::registry::OutboundCredit;
use crate::RpcError;
use crate::protocol::{Frame, Head, Outbox, Outcome, StreamFrames, code, finish_frame};
use crate::task::AbortOnDrop;

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
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").finish_non_exhaustive()
    }
}

/// Polls the next item and appends its encoding to a frame. `Err` ends the stream with that
/// message.
trait EncodeNext: Send {
    fn poll_encode(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        frame: &mut Frame,
    ) -> Poll<Option<Result<(), String>>>;
}

impl<T: Serialize + Send + 'static> EncodeNext for Streaming<T> {
    fn poll_encode(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        frame: &mut Frame,
    ) -> Poll<Option<Result<(), String>>> {
        Poll::Ready(match std::task::ready!(self.poll_next(cx)) {
            Some(Ok(item)) => Some(
                frame
                    .append(&item)
                    .map_err(|e| format!("an item could not be encoded: {e}")),
            ),
            // The sender's own message crosses as it is; another error (a stream relayed from
            // elsewhere that broke) crosses as its sentence.
            Some(Err(RpcError::StreamFailed { message })) => Some(Err(message)),
            Some(Err(error)) => Some(Err(error.to_string())),
            None => None,
        })
    }
}

/// Sends `outbound` as call `id`'s stream: one item per credit, until the stream ends; then
/// sends the end, which needs no credit. Stops early, sending nothing more, when `credit` is
/// closed (the connection ended) or the outbox is gone.
///
/// No item is taken from the source without a credit for it, but one: out of credit, the pump
/// still polls the source, to learn of its end at once. An item found instead waits, alone,
/// until a credit comes.
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
    // `None` for a clean end; otherwise why the stream failed.
    let failure = loop {
        let Ok(mut frame) = Head::StreamItem { id }.begin_frame() else {
            unreachable!("a stream item head always encodes");
        };
        let item = {
            let next =
                std::future::poll_fn(|cx| outbound.items.as_mut().poll_encode(cx, &mut frame));
            tokio::pin!(next);
            let turn = match credit.credit.try_acquire() {
                Ok(permit) => {
                    permit.forget();
                    Turn::Credit
                }
                Err(TryAcquireError::Closed) => return,
                Err(TryAcquireError::NoPermits) => tokio::select! {
                    biased;
                    permit = credit.credit.acquire() => match permit {
                        Ok(permit) => {
                            permit.forget();
                            Turn::Credit
                        }
                        Err(_) => return,
                    },
                    item = &mut next => Turn::Ahead(item),
                },
            };
            match turn {
                Turn::Credit => next.await,
                Turn::Ahead(Some(Ok(()))) => match credit.credit.acquire().await {
                    Ok(permit) => {
                        permit.forget();
                        Some(Ok(()))
                    }
                    Err(_) => return,
                },
                Turn::Ahead(end) => end,
            }
        };
        match item {
            Some(Ok(())) => {}
            Some(Err(message)) => break Some(message),
            None => break None,
        }
        if let Err(too_large) = finish_frame(&mut frame, max_frame_len) {
            break Some(format!("a stream item is too large: {too_large}"));
        }
        if !frames.send(&outbox, frame) {
            return;
        }
    };
    unsent.armed = false;
    let outcome = match &failure {
        None => Outcome::Ok,
        Some(message) => Outcome::error(code::STREAM_FAILED, message),
    };
    frames.send(&outbox, Head::StreamEnd { id, outcome }.frame().into());
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

/// What a pump found when it had a turn: a credit, or (out of credit) what the source had.
enum Turn {
    Credit,
    Ahead(Option<Result<(), String>>),
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
