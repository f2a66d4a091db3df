//! Streams of values in either direction of a call, with flow control.
//!
//! A method that returns [`Streaming<T>`] streams its results to the client; a method that takes
//! one (as its one streamed argument) receives a stream from the client; a method may do both.
//! One that returns `Result<Streaming<T>, E>` may answer an error instead of its stream, which
//! the client gets typed, with no stream.
//! Items travel as their own frames on the call's connection, interleaved with every other call,
//! and the receiver grants the sender credit as it consumes, so a slow reader holds back a fast
//! writer instead of letting memory grow.

mod pump;
pub(crate) mod registry;

pub use pump::Outbound;
pub(crate) use pump::{Upload, pump};
pub use registry::InboundSlot;
pub(crate) use registry::{InboundOptions, Streams, inbound_stream};

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::RpcError;

/// The default stream window: how many bytes of items (by [`item_cost`]) a stream's sender may
/// send that the receiver's consumer has not taken yet. Each side announces its window in its
/// hello, and every stream it receives starts with that much credit.
pub(crate) const DEFAULT_WINDOW: u32 = 1024 * 1024;

/// A receiver with `window` grants credit back once its consumer has taken this many bytes'
/// worth of items: often enough that the sender does not run dry while the grant is on its way,
/// seldom enough that grants cost next to nothing. A quarter: granting at an eighth or at a
/// half, streams of small numbers between two processes ran 9% and 25% slower (medians of four
/// interleaved pairs each, 2026-12-07).
pub(crate) fn grant_at(window: u32) -> i64 {
    i64::from(window / 4).max(1)
}

/// What an item costs beyond its frame's bytes: what holding it costs the receiver (its place
/// in a queue, its handle), so that a stream of tiny items cannot hold far more memory than its
/// window says. HTTP/2 counts each header's size the same way.
pub(crate) const ITEM_OVERHEAD: u32 = 32;

/// The credit an item costs, given its frame's payload length (everything after the length
/// prefix).
pub(crate) fn item_cost(payload_len: usize) -> i64 {
    (crate::protocol::LENGTH_PREFIX + payload_len + ITEM_OVERHEAD as usize) as i64
}

/// A stream of `T` that crosses the connection: returned by a method to stream results, taken as
/// an argument to stream input.
///
/// It is a [`Stream`] of `Result<T, RpcError>`: an `Err` item (the sender failed, the deadline
/// passed, the connection died) is the stream's last. [`Streaming::next`] reads it without
/// importing a stream trait.
///
/// Build one from any stream, or from a channel:
///
/// ```
/// use rpc_core::Streaming;
///
/// let numbers: Streaming<u32> = Streaming::iter(1..=3);
///
/// # async fn feed() {
/// let (sender, lines) = Streaming::<String>::channel(16);
/// tokio::spawn(async move {
///     for n in 0..3 {
///         if sender.send(format!("line {n}")).await.is_err() {
///             break; // the receiver is gone: the call was cancelled
///         }
///     }
/// });
/// # }
/// ```
///
/// Dropping a stream received as a call's result cancels the call: the server stops producing.
pub struct Streaming<T> {
    items: Pin<Box<dyn Stream<Item = Result<T, RpcError>> + Send>>,
}

impl<T: Send + 'static> Streaming<T> {
    /// A stream of the items of `stream`.
    pub fn new(stream: impl Stream<Item = T> + Send + 'static) -> Self {
        // No item is an error, so none needs to end the stream early.
        Self::from_inner(stream.map(Ok))
    }

    /// A stream of the items of `items`, such as a `Vec` or a range.
    pub fn iter<I>(items: I) -> Self
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        Self::new(futures_util::stream::iter(items))
    }

    /// A stream of the items of `stream`, where an `Err` ends the stream with that error: the
    /// receiver gets it as its last item ([`RpcError::StreamFailed`] on the other side of a
    /// connection).
    pub fn from_results<E: fmt::Display>(
        stream: impl Stream<Item = Result<T, E>> + Send + 'static,
    ) -> Self {
        let items = stream.map(|item| {
            item.map_err(|error| RpcError::StreamFailed {
                message: error.to_string(),
            })
        });
        Streaming {
            items: Box::pin(StopAfterError::new(items)),
        }
    }

    /// A stream fed through the returned sender, holding at most `buffer` items (at least 1)
    /// that the receiving side has not taken yet.
    pub fn channel(buffer: usize) -> (StreamSender<T>, Self) {
        let (tx, mut rx) = mpsc::channel(buffer.max(1));
        let items = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        (
            StreamSender { tx },
            Streaming {
                items: Box::pin(StopAfterError::new(items)),
            },
        )
    }

    /// A stream of items already checked to be results.
    pub(crate) fn from_inner(
        items: impl Stream<Item = Result<T, RpcError>> + Send + 'static,
    ) -> Self {
        Streaming {
            items: Box::pin(items),
        }
    }

    /// This stream, ended with [`RpcError::DeadlineExceeded`] if it has not ended by `expires`
    /// (the deadline of a call of `method`, `deadline` long).
    pub(crate) fn within(
        self,
        expires: tokio::time::Instant,
        method: &'static str,
        deadline: std::time::Duration,
    ) -> Self {
        Self::from_inner(Within {
            items: self.items,
            expiry: Some(Box::pin(tokio::time::sleep_until(expires))),
            method,
            deadline,
        })
    }

    /// The next item, or `None` once the stream has ended.
    // `StreamExt::next`'s future itself, not one of an `async fn` around it: that future's own
    // state machine cost a stream of small numbers 8 more instructions an item (callgrind). It
    // returns a future, as `async fn next` did, not an item as `Iterator::next` does.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> impl Future<Output = Option<Result<T, RpcError>>> + '_ {
        StreamExt::next(self)
    }
}

impl<T> Stream for Streaming<T> {
    type Item = Result<T, RpcError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.items.as_mut().poll_next(cx)
    }
}

/// An empty stream. It is what a streamed field of a request or response enum holds after the
/// enum is deserialized: the stream itself never travels inside a value.
impl<T: Send + 'static> Default for Streaming<T> {
    fn default() -> Self {
        Streaming::new(futures_util::stream::empty())
    }
}

impl<T> fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streaming").finish_non_exhaustive()
    }
}

/// Feeds a [`Streaming`] made by [`Streaming::channel`].
#[derive(Debug)]
pub struct StreamSender<T> {
    tx: mpsc::Sender<Result<T, RpcError>>,
}

impl<T> Clone for StreamSender<T> {
    fn clone(&self) -> Self {
        StreamSender {
            tx: self.tx.clone(),
        }
    }
}

/// The receiving side of a stream is gone: the call was cancelled or has ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the receiving side of the stream is gone")]
pub struct StreamClosed;

impl<T> StreamSender<T> {
    /// Sends one item, waiting while the receiver is that far behind.
    pub async fn send(&self, item: T) -> Result<(), StreamClosed> {
        self.tx.send(Ok(item)).await.map_err(|_| StreamClosed)
    }

    /// Ends the stream with an error: the receiver gets [`RpcError::StreamFailed`] with
    /// `message` as its last item.
    pub async fn fail(self, message: impl Into<String>) -> Result<(), StreamClosed> {
        let error = RpcError::StreamFailed {
            message: message.into(),
        };
        self.tx.send(Err(error)).await.map_err(|_| StreamClosed)
    }

    /// Whether the receiving side is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A stream read within a call's deadline.
struct Within<T> {
    items: Pin<Box<dyn Stream<Item = Result<T, RpcError>> + Send>>,
    /// Until the deadline has passed and said so.
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    method: &'static str,
    deadline: std::time::Duration,
}

impl<T> Stream for Within<T> {
    type Item = Result<T, RpcError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(expiry) = self.expiry.as_mut() else {
            return Poll::Ready(None);
        };
        if expiry.as_mut().poll(cx).is_ready() {
            self.expiry = None;
            return Poll::Ready(Some(Err(RpcError::DeadlineExceeded {
                method: self.method.to_owned(),
                deadline: self.deadline,
            })));
        }
        let item = std::task::ready!(self.items.as_mut().poll_next(cx));
        if item.is_none() {
            self.expiry = None;
        }
        Poll::Ready(item)
    }
}

/// Ends a stream after its first error.
struct StopAfterError<S> {
    inner: Option<Pin<Box<S>>>,
}

impl<S> StopAfterError<S> {
    fn new(inner: S) -> Self {
        StopAfterError {
            inner: Some(Box::pin(inner)),
        }
    }
}

impl<S, T> Stream for StopAfterError<S>
where
    S: Stream<Item = Result<T, RpcError>>,
{
    type Item = Result<T, RpcError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let item = std::task::ready!(inner.as_mut().poll_next(cx));
        if !matches!(item, Some(Ok(_))) {
            self.inner = None;
        }
        Poll::Ready(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/wire.md: rpc-core grants credit back once its consumer has taken a quarter of its
    /// window's worth.
    #[test]
    fn credit_is_granted_back_a_quarter_window_at_a_time() {
        assert_eq!(grant_at(DEFAULT_WINDOW), 256 * 1024);
        assert_eq!(grant_at(1000), 250);
        assert_eq!(grant_at(3), 1, "never less than a byte");
    }

    #[tokio::test]
    async fn an_error_is_the_last_item() {
        let source = futures_util::stream::iter([Ok(1), Err("broken"), Ok(3)]);
        let mut stream = Streaming::from_results(source);
        assert_eq!(stream.next().await.map(|r| r.ok()), Some(Some(1)));
        assert!(matches!(
            stream.next().await,
            Some(Err(RpcError::StreamFailed { message })) if message == "broken"
        ));
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_channel_stream_ends_when_its_senders_are_gone() {
        let (sender, mut stream) = Streaming::channel(4);
        sender.send(7u8).await.expect("open");
        drop(sender);
        assert_eq!(stream.next().await.map(|r| r.ok()), Some(Some(7)));
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_sender_learns_that_the_receiver_is_gone() {
        let (sender, stream) = Streaming::<u8>::channel(1);
        assert!(!sender.is_closed(), "the receiver is there");
        drop(stream);
        assert!(sender.is_closed());
        assert_eq!(sender.send(1).await, Err(StreamClosed));
        assert_eq!(sender.fail("too late").await, Err(StreamClosed));
    }

    #[tokio::test]
    async fn a_sender_that_fails_ends_the_stream_with_its_message() {
        let (sender, mut stream) = Streaming::channel(4);
        sender.send(1u8).await.expect("open");
        let also = sender.clone();
        sender.fail("the disk is full").await.expect("open");
        also.send(2).await.expect("still open");
        assert_eq!(stream.next().await.map(|r| r.ok()), Some(Some(1)));
        assert!(matches!(
            stream.next().await,
            Some(Err(RpcError::StreamFailed { message })) if message == "the disk is full"
        ));
        assert!(stream.next().await.is_none(), "nothing after the failure");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_within_a_deadline_passes_its_items_then_ends_with_the_deadline() {
        let deadline = std::time::Duration::from_secs(5);
        let expires = tokio::time::Instant::now() + deadline;
        let (sender, stream) = Streaming::channel(4);
        let mut stream = stream.within(expires, "watch", deadline);
        sender.send(1u8).await.expect("open");
        assert_eq!(stream.next().await.map(|r| r.ok()), Some(Some(1)));
        // The sender lives on and sends nothing more: the deadline ends the stream.
        assert!(matches!(
            stream.next().await,
            Some(Err(RpcError::DeadlineExceeded { method, deadline: after }))
                if method == "watch" && after == deadline
        ));
        assert!(stream.next().await.is_none());
        assert_eq!(
            tokio::time::Instant::now(),
            expires,
            "not before the deadline"
        );
        drop(sender);

        // A stream that ends in time ends as it does.
        let items = Streaming::new(futures_util::stream::iter([3u8]));
        let mut stream = items.within(tokio::time::Instant::now() + deadline, "watch", deadline);
        assert_eq!(stream.next().await.map(|r| r.ok()), Some(Some(3)));
        assert!(stream.next().await.is_none());
        assert!(stream.next().await.is_none(), "and stays ended");
    }
}
