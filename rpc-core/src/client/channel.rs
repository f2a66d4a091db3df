//! One multiplexed connection to a server: many calls in flight, answers in any order.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::ClientConfig;
use super::pending::{Pending, Reply};
use crate::protocol::{
    self, FrameReader, FrameWriter, Head, Hello, Outbox, Outcome, PeerInfo, code, finish_frame,
    write_frames,
};
use crate::service::{MethodInfo, ServiceInfo};
use crate::stream::registry::InboundParts;
use crate::stream::{self, InboundOptions, Outbound, Streams};
use crate::task::AbortOnDrop;
use crate::{Metadata, RpcError, Streaming};

/// A connection to a server, shared by every clone of a generated client, with the options its
/// calls are made with (deadline, metadata).
///
/// Cheap to clone: clones share the connection. Any number of calls may be in flight at once;
/// each completes when its own answer arrives. When the connection dies, every pending call
/// fails with the reason, and so does every later call.
///
/// The connection closes when the last clone is dropped.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<Inner>,
    deadline: Duration,
    metadata: Arc<Metadata>,
}

struct Inner {
    service: &'static str,
    outbox: Outbox,
    /// A call holds a slot from before it is sent until it is answered or abandoned (or its
    /// streamed result ends), so that no more calls are in flight than the server runs at once:
    /// the server then never has to stop reading, and a cancellation always reaches it.
    slots: Arc<Semaphore>,
    pending: Arc<Pending>,
    streams: Arc<Streams>,
    next_id: AtomicU64,
    server: PeerInfo,
    /// Once nobody can call any more, the reader has nothing to wait for. (The writer ends by
    /// itself when the last outbox sender is dropped, shutting the connection down.)
    _reader: AbortOnDrop,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("service", &self.inner.service)
            .field("closed", &self.is_closed())
            .field("deadline", &self.deadline)
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// Exchanges hellos over `stream`, then starts the connection's reader and writer tasks.
    pub(crate) async fn establish<S>(
        stream: S,
        service: &ServiceInfo,
        config: &ClientConfig,
    ) -> Result<Channel, RpcError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(stream);
        let mut reader = FrameReader::new(read, config.max_frame_len);
        let mut writer = FrameWriter::new(write);
        Hello::new(service, config.max_frame_len, config.keepalive, None)
            .send(&mut writer)
            .await?;
        let server = Hello::receive(&mut reader, config.max_frame_len, service.name).await?;
        reader.set_silence_limit(server.silence_limit(config.keepalive));

        let (outbox, queue) = Outbox::new();
        let pending = Arc::new(Pending::default());
        let streams = Arc::new(Streams::default());
        let heartbeat = config.keepalive.map(|keepalive| keepalive.interval);
        let closer = Closer {
            pending: Arc::clone(&pending),
            streams: Arc::clone(&streams),
        };
        let writer = tokio::spawn(write_requests(writer, queue, heartbeat, closer.clone()));
        let reader = tokio::spawn(read_responses(reader, closer, writer.abort_handle()));
        Ok(Channel {
            inner: Arc::new(Inner {
                service: service.name,
                outbox,
                slots: Arc::new(Semaphore::new(
                    server
                        .max_concurrent_calls
                        .unwrap_or(Semaphore::MAX_PERMITS)
                        .clamp(1, Semaphore::MAX_PERMITS),
                )),
                pending,
                streams,
                next_id: AtomicU64::new(0),
                server,
                _reader: AbortOnDrop::new(&reader),
            }),
            deadline: config.deadline,
            metadata: Arc::new(config.metadata.clone()),
        })
    }

    /// The same connection, with calls that wait at most `deadline` (from when each call is
    /// made). The server learns the deadline and drops the handler when it passes.
    #[must_use]
    pub fn with_deadline(&self, deadline: Duration) -> Channel {
        Channel {
            deadline,
            ..self.clone()
        }
    }

    /// The same connection, with `key` set to `value` in the metadata of every call.
    #[must_use]
    pub fn with_metadata(&self, key: impl Into<String>, value: impl AsRef<[u8]>) -> Channel {
        let mut channel = self.clone();
        Arc::make_mut(&mut channel.metadata).insert(key, value);
        channel
    }

    /// How long each call waits for its answer.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// What each call carries to the server.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Calls `method` with its encoded argument tuple and decodes the result.
    ///
    /// Generated clients call this; call it directly only to talk to a service without its
    /// generated client. Dropping the future before it completes cancels the call: the server
    /// drops its handler.
    pub async fn call<A, R>(&self, method: &'static MethodInfo, args: &A) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.start(method, args, None, false).await?.into_value()
    }

    /// Calls a method that takes a stream: sends `upload` item by item, as the server grants
    /// credit, and decodes the result.
    pub async fn call_upload<A, U, R>(
        &self,
        method: &'static MethodInfo,
        args: &A,
        upload: Streaming<U>,
    ) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        U: Serialize + Send + 'static,
        R: DeserializeOwned,
    {
        let upload = Outbound::new(upload);
        self.start(method, args, Some(upload), false)
            .await?
            .into_value()
    }

    /// Calls a method that returns a stream. The call's deadline covers the whole stream;
    /// dropping the stream cancels the call.
    pub async fn call_streaming<A, T>(
        &self,
        method: &'static MethodInfo,
        args: &A,
    ) -> Result<Streaming<T>, RpcError>
    where
        A: Serialize + ?Sized,
        T: DeserializeOwned + Send + 'static,
    {
        self.start(method, args, None, true).await?.into_stream()
    }

    /// Calls a method that takes a stream and returns one; `upload` goes on being sent while the
    /// returned stream is read.
    pub async fn call_bidi<A, U, T>(
        &self,
        method: &'static MethodInfo,
        args: &A,
        upload: Streaming<U>,
    ) -> Result<Streaming<T>, RpcError>
    where
        A: Serialize + ?Sized,
        U: Serialize + Send + 'static,
        T: DeserializeOwned + Send + 'static,
    {
        let upload = Outbound::new(upload);
        self.start(method, args, Some(upload), true)
            .await?
            .into_stream()
    }

    /// Sends a call, with its upload if any, and waits for the server's response.
    async fn start<A: Serialize + ?Sized>(
        &self,
        method: &'static MethodInfo,
        args: &A,
        upload: Option<Outbound>,
        download: bool,
    ) -> Result<Answered<'_>, RpcError> {
        let inner = &*self.inner;
        inner.server.check_method(method)?;
        let expires = Instant::now().checked_add(self.deadline);
        let deadline_exceeded = || RpcError::DeadlineExceeded {
            method: method.name.to_owned(),
            deadline: self.deadline,
        };

        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = self.request_frame(id, method, args, expires.is_some())?;
        let Ok(slot) = until(expires, inner.slots.clone().acquire_owned())
            .await
            .map_err(|_| deadline_exceeded())?
        else {
            unreachable!("the outgoing slots are never closed");
        };
        let answer = inner.pending.register(id, method.name)?;
        let mut waiting = Waiting {
            inner,
            id,
            armed: true,
        };
        // Streams are registered before the request leaves, so nothing the server sends back
        // arrives before there is a place for it.
        let inbound = download.then(|| inner.streams.open_inbound(id));
        let credit = upload.as_ref().map(|_| inner.streams.open_outbound(id));
        if !inner.outbox.send(frame, None) {
            waiting.armed = false;
            return Err(inner.pending.close_reason());
        }
        let upload = upload.zip(credit).map(|(items, credit)| {
            let max_frame_len = inner.server.max_frame_len;
            let pump = stream::pump(id, items, credit, inner.outbox.clone(), max_frame_len);
            AbortOnDrop::new(&tokio::spawn(pump))
        });
        let reply = until(expires, answer)
            .await
            .map_err(|_| deadline_exceeded())?;
        waiting.armed = false; // answered: nothing to cancel, unless a stream follows
        Ok(Answered {
            channel: self,
            method,
            id,
            reply: reply.map_err(|_| inner.pending.close_reason())?,
            expires,
            slot,
            inbound,
            upload,
        })
    }

    fn request_frame<A: Serialize + ?Sized>(
        &self,
        id: u64,
        method: &MethodInfo,
        args: &A,
        has_deadline: bool,
    ) -> Result<Vec<u8>, RpcError> {
        let encode_failed = |e: protocol::CodecError| RpcError::Encode {
            method: method.name.to_owned(),
            reason: e.to_string(),
        };
        // Whole milliseconds, rounded up so that a short deadline never reads as "none".
        let timeout_ms = if has_deadline {
            u64::try_from(self.deadline.as_micros().div_ceil(1000))
                .unwrap_or(u64::MAX)
                .max(1)
        } else {
            0
        };
        let mut frame = Head::Request {
            id,
            method: method.name,
            timeout_ms,
            metadata: Cow::Borrowed(&self.metadata),
        }
        .begin_frame()
        .map_err(encode_failed)?;
        protocol::append(args, &mut frame).map_err(encode_failed)?;
        finish_frame(&mut frame, self.inner.server.max_frame_len)?;
        Ok(frame)
    }

    /// Whether the connection has closed. A closed channel fails every call at once.
    pub fn is_closed(&self) -> bool {
        self.inner.pending.is_closed()
    }

    /// Returns once the connection has closed, for whatever reason: the server went away, shut
    /// down, closed it as idle, or went silent.
    pub async fn closed(&self) {
        self.inner.pending.wait_closed().await;
    }
}

/// A call the server has answered; for a streaming result, the stream's parts.
struct Answered<'a> {
    channel: &'a Channel,
    method: &'static MethodInfo,
    id: u64,
    reply: Reply,
    expires: Option<Instant>,
    slot: OwnedSemaphorePermit,
    inbound: Option<InboundParts>,
    upload: Option<AbortOnDrop>,
}

impl Answered<'_> {
    /// The result of a call without a streamed result.
    fn into_value<R: DeserializeOwned>(self) -> Result<R, RpcError> {
        let body = self.body()?;
        protocol::decode_exact(&body).map_err(|e| RpcError::Decode {
            method: self.method.name.to_owned(),
            reason: e.to_string(),
        })
    }

    /// The streamed result of a call.
    fn into_stream<T: DeserializeOwned + Send + 'static>(
        mut self,
    ) -> Result<Streaming<T>, RpcError> {
        self.body()?;
        let (Some(parts), Some(expires)) = (self.inbound.take(), Some(self.expires)) else {
            unreachable!("a streaming call registers its stream");
        };
        let options = InboundOptions {
            id: self.id,
            method: self.method.name,
            outbox: self.channel.inner.outbox.clone(),
            deadline: expires.map(|at| (at, self.channel.deadline)),
            cancel_on_drop: true,
            slot: Some(self.slot),
            upload: self.upload,
        };
        Ok(stream::inbound_stream(parts, options))
    }

    fn body(&self) -> Result<Bytes, RpcError> {
        let method = self.method.name;
        match &self.reply {
            Reply::Ok(body) => Ok(body.clone()),
            Reply::Err { code, message } => Err(remote_error(
                method,
                *code,
                message.clone(),
                self.channel.deadline,
            )),
            Reply::Failed(reason) => Err(reason.clone()),
        }
    }
}

/// Runs `work` until `expires`, or without a limit.
async fn until<F: Future>(
    expires: Option<Instant>,
    work: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    match expires {
        Some(expires) => tokio::time::timeout_at(expires, work).await,
        None => Ok(work.await),
    }
}

/// A call that was sent and waits for its answer. Dropped while still armed (the caller gave
/// up, or the deadline passed), it tells the server to drop the handler.
struct Waiting<'a> {
    inner: &'a Inner,
    id: u64,
    armed: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.armed && self.inner.pending.forget(self.id) {
            // The request is ahead of this in the outbox, so the server always sees it first.
            self.inner.outbox.send_head(&Head::Cancel { id: self.id });
        }
    }
}

/// Turns an error response into the error the caller sees.
fn remote_error(method: &str, code: u32, message: String, deadline: Duration) -> RpcError {
    let method = method.to_owned();
    match code {
        code::UNKNOWN_METHOD => RpcError::UnknownMethod { method },
        code::INVALID_ARGUMENTS => RpcError::InvalidArguments {
            method,
            reason: message,
        },
        code::HANDLER_PANICKED => RpcError::HandlerPanicked { method, message },
        code::DEADLINE_EXCEEDED => RpcError::DeadlineExceeded { method, deadline },
        code::NOT_RUN => RpcError::ServerClosing { method },
        _ => RpcError::Server { method, message },
    }
}

/// What fails when the connection ends: the calls waiting for answers and the open streams.
#[derive(Clone)]
struct Closer {
    pending: Arc<Pending>,
    streams: Arc<Streams>,
}

impl Closer {
    fn close(&self, reason: RpcError) {
        self.streams.close_all(reason.clone());
        self.pending.close(reason);
    }
}

async fn write_requests<W: AsyncWrite + Unpin>(
    writer: FrameWriter<W>,
    queue: tokio::sync::mpsc::UnboundedReceiver<protocol::Outgoing>,
    heartbeat: Option<Duration>,
    closer: Closer,
) {
    if let Err(error) = write_frames(writer, queue, heartbeat).await {
        closer.close(error.into());
    }
}

/// Reads the server's frames until the connection ends, then fails the calls still waiting and
/// stops the writer. (Aborted instead when the last client handle is dropped: the writer then
/// sends what is queued, cancellations included, and shuts the connection down by itself.)
async fn read_responses<R: AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    closer: Closer,
    writer: tokio::task::AbortHandle,
) {
    let Closer { pending, streams } = &closer;
    let reason = loop {
        let payload = match reader.next_frame().await {
            Ok(Some(payload)) => payload,
            Ok(None) => break RpcError::ConnectionClosed,
            Err(error) => break error,
        };
        match Head::decode(&payload) {
            Ok((Head::Response { id, outcome }, body)) => {
                let reply = match outcome {
                    Outcome::Ok => Reply::Ok(payload.slice_ref(body)),
                    Outcome::Err { code, message } => Reply::Err {
                        code,
                        message: message.into_owned(),
                    },
                };
                pending.complete(id, reply);
            }
            Ok((Head::StreamItem { id }, item)) => {
                if let Err(error) = streams.deliver(id, payload.slice_ref(item)) {
                    break error;
                }
            }
            Ok((Head::StreamEnd { id, outcome }, _)) => streams.end(id, outcome.into()),
            Ok((Head::Credit { id, items }, _)) => {
                if let Err(error) = streams.grant(id, items) {
                    break error;
                }
            }
            Ok((Head::Ping, _)) => {}
            Ok((Head::GoAway, _)) => pending.drain(),
            Ok((head, _)) => {
                break RpcError::Protocol(format!(
                    "the server sent a {} frame, which only clients send",
                    head.kind()
                ));
            }
            Err(error) => {
                break RpcError::Protocol(format!("the server sent an undecodable frame: {error}"));
            }
        }
    };
    tracing::debug!(%reason, "client connection closed");
    closer.close(reason);
    writer.abort();
}
