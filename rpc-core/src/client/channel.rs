//! One multiplexed connection to a server: many calls in flight, answers in any order.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::ClientConfig;
use super::pending::{Pending, Reply};
use crate::RpcError;
use crate::protocol::{
    self, FrameReader, FrameWriter, Head, Hello, Outcome, PeerInfo, code, finish_frame,
    write_frames,
};
use crate::service::{MethodInfo, ServiceInfo};
use crate::task::AbortOnDrop;

/// How many encoded requests may wait for the writer before callers wait too.
const OUTGOING_QUEUE: usize = 1024;

/// A connection to a server, shared by every clone of a generated client.
///
/// Cheap to clone: clones share the connection. Any number of calls may be in flight at once;
/// each completes when its own answer arrives. When the connection dies, every pending call
/// fails with the reason, and so does every later call.
///
/// The connection closes when the last clone is dropped.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<Inner>,
}

struct Inner {
    service: &'static str,
    outgoing: mpsc::Sender<Vec<u8>>,
    pending: Arc<Pending>,
    next_id: AtomicU64,
    server: PeerInfo,
    /// Once nobody can call any more, the reader has nothing to wait for. (The writer ends by
    /// itself when `outgoing` is dropped, shutting the connection down.)
    _reader: AbortOnDrop,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("service", &self.inner.service)
            .field("closed", &self.is_closed())
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
        Hello::new(service, config.max_frame_len)
            .send(&mut writer)
            .await?;
        let server = Hello::receive(&mut reader, config.max_frame_len, service.name).await?;

        let (outgoing, queue) = mpsc::channel(OUTGOING_QUEUE);
        let pending = Arc::new(Pending::default());
        let writer = tokio::spawn(write_requests(writer, queue, pending.clone()));
        let reader = tokio::spawn(read_responses(
            reader,
            pending.clone(),
            writer.abort_handle(),
        ));
        Ok(Channel {
            inner: Arc::new(Inner {
                service: service.name,
                outgoing,
                pending,
                next_id: AtomicU64::new(0),
                server,
                _reader: AbortOnDrop::new(&reader),
            }),
        })
    }

    /// Calls `method` with its encoded argument tuple and decodes the result.
    ///
    /// Generated clients call this; call it directly only to talk to a service without its
    /// generated client. Dropping the future before it completes abandons the call: its answer
    /// is discarded when it arrives.
    pub async fn call<A, R>(&self, method: &'static MethodInfo, args: &A) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let inner = &*self.inner;
        inner.server.check_method(method)?;
        let encode_failed = |e: protocol::CodecError| RpcError::Encode {
            method: method.name.to_owned(),
            reason: e.to_string(),
        };
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Head::Request {
            id,
            method: method.name,
        }
        .begin_frame()
        .map_err(encode_failed)?;
        protocol::append(args, &mut frame).map_err(encode_failed)?;
        finish_frame(&mut frame, inner.server.max_frame_len)?;

        let answer = inner.pending.register(id)?;
        let waiting = Waiting {
            pending: &inner.pending,
            id,
        };
        if inner.outgoing.send(frame).await.is_err() {
            return Err(inner.pending.close_reason());
        }
        let reply = answer.await;
        std::mem::forget(waiting); // the reader removed the entry when it replied
        match reply.map_err(|_| inner.pending.close_reason())? {
            Reply::Ok(body) => protocol::decode_exact(&body).map_err(|e| RpcError::Decode {
                method: method.name.to_owned(),
                reason: e.to_string(),
            }),
            Reply::Err { code, message } => Err(remote_error(method.name, code, message)),
            Reply::Failed(reason) => Err(reason),
        }
    }

    /// Whether the connection has closed. A closed channel fails every call at once.
    pub fn is_closed(&self) -> bool {
        self.inner.pending.is_closed()
    }
}

/// Removes a call's entry from the pending table if the call is dropped while it waits.
struct Waiting<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.pending.forget(self.id);
    }
}

/// Turns an error response into the error the caller sees.
fn remote_error(method: &str, code: u32, message: String) -> RpcError {
    let method = method.to_owned();
    match code {
        code::UNKNOWN_METHOD => RpcError::UnknownMethod { method },
        code::INVALID_ARGUMENTS => RpcError::InvalidArguments {
            method,
            reason: message,
        },
        code::HANDLER_PANICKED => RpcError::HandlerPanicked { method, message },
        _ => RpcError::Server { method, message },
    }
}

async fn write_requests<W: AsyncWrite + Unpin>(
    writer: FrameWriter<W>,
    queue: mpsc::Receiver<Vec<u8>>,
    pending: Arc<Pending>,
) {
    if let Err(error) = write_frames(writer, queue).await {
        pending.close(error.into());
    }
}

async fn read_responses<R: AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    pending: Arc<Pending>,
    writer: AbortHandle,
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
            Ok((head, _)) => {
                break RpcError::Protocol(format!(
                    "the server sent a {} frame, where only responses may come",
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
