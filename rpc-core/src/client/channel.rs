//! One multiplexed connection to a server: many calls in flight, answers in any order.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::ClientConfig;
use super::pending::{Pending, Reply};
use crate::protocol::{
    self, FrameReader, FrameWriter, Head, Hello, Outbox, Outcome, PeerInfo, code, finish_frame,
    write_frames,
};
use crate::service::{MethodInfo, ServiceInfo};
use crate::task::AbortOnDrop;
use crate::{Metadata, RpcError};

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
    /// A call holds a slot from before it is sent until it is answered or abandoned, so that no
    /// more calls are in flight than the server runs at once: the server then never has to stop
    /// reading, and a cancellation always reaches it.
    slots: Arc<Semaphore>,
    pending: Arc<Pending>,
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
        let heartbeat = config.keepalive.map(|keepalive| keepalive.interval);
        let writer = tokio::spawn(write_requests(writer, queue, heartbeat, pending.clone()));
        let reader = tokio::spawn(read_responses(
            reader,
            pending.clone(),
            writer.abort_handle(),
        ));
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
            _slot: slot,
        };
        if !inner.outbox.send(frame, None) {
            waiting.armed = false;
            return Err(inner.pending.close_reason());
        }
        let reply = until(expires, answer)
            .await
            .map_err(|_| deadline_exceeded())?;
        waiting.armed = false; // answered: nothing to cancel
        match reply.map_err(|_| inner.pending.close_reason())? {
            Reply::Ok(body) => protocol::decode_exact(&body).map_err(|e| RpcError::Decode {
                method: method.name.to_owned(),
                reason: e.to_string(),
            }),
            Reply::Err { code, message } => {
                Err(remote_error(method.name, code, message, self.deadline))
            }
            Reply::Failed(reason) => Err(reason),
        }
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
    _slot: tokio::sync::OwnedSemaphorePermit,
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

async fn write_requests<W: AsyncWrite + Unpin>(
    writer: FrameWriter<W>,
    queue: tokio::sync::mpsc::UnboundedReceiver<protocol::Outgoing>,
    heartbeat: Option<Duration>,
    pending: Arc<Pending>,
) {
    if let Err(error) = write_frames(writer, queue, heartbeat).await {
        pending.close(error.into());
    }
}

/// Reads the server's frames until the connection ends, then fails the calls still waiting and
/// stops the writer. (Aborted instead when the last client handle is dropped: the writer then
/// sends what is queued, cancellations included, and shuts the connection down by itself.)
async fn read_responses<R: AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    pending: Arc<Pending>,
    writer: tokio::task::AbortHandle,
) {
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
                        message: message.to_owned(),
                    },
                };
                pending.complete(id, reply);
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
    pending.close(reason);
    writer.abort();
}
