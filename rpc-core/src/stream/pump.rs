//! Sending a stream: one item per credit, each encoded straight into its frame, then the end.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use serde::Serialize;

use super::Streaming;
use super::registry::OutboundCredit;
use crate::RpcError;
use crate::protocol::{Frame, Head, Outbox, Outcome, code, finish_frame};

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

/// Sends `outbound` as call `id`'s stream: waits for a credit, then takes and sends one item,
/// until the stream ends; then sends the end. Stops early, sending nothing more, when `credit`
/// is closed (the connection ended) or the outbox is gone.
pub(crate) async fn pump(
    id: u64,
    mut outbound: Outbound,
    credit: OutboundCredit,
    outbox: Outbox,
    max_frame_len: usize,
) {
    // `None` for a clean end; otherwise why the stream failed.
    let failure = loop {
        // Credit first: no item is taken from the source before the receiver can take it.
        match credit.credit.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => return,
        }
        let Ok(mut frame) = Head::StreamItem { id }.begin_frame() else {
            unreachable!("a stream item head always encodes");
        };
        let next = std::future::poll_fn(|cx| outbound.items.as_mut().poll_encode(cx, &mut frame));
        match next.await {
            Some(Ok(())) => {}
            Some(Err(message)) => break Some(message),
            None => break None,
        }
        if let Err(too_large) = finish_frame(&mut frame, max_frame_len) {
            break Some(format!("a stream item is too large: {too_large}"));
        }
        if !outbox.send(frame, None) {
            return;
        }
    };
    let outcome = match &failure {
        None => Outcome::Ok,
        Some(message) => Outcome::error(code::STREAM_FAILED, message),
    };
    outbox.send_head(&Head::StreamEnd { id, outcome });
}
