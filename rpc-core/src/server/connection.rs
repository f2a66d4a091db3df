//! Serving one connection: read frames, start each request as its own call, write answers as
//! they finish; drain on shutdown or idleness.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use super::ServerConfig;
use super::calls::{Calls, Link, NewCall};
use crate::RpcError;
use crate::protocol::{
    FrameReader, FrameWriter, Head, Hello, Outbox, code, error_response, write_frames,
};
use crate::service::{DecodeError, Service};
use crate::stream::{InboundSlot, Streams};
use crate::task::AbortOnDrop;

/// Where a connection learns that the server is shutting down; `None` for a connection served
/// on its own.
pub(crate) type ShutdownSignal = Option<watch::Receiver<bool>>;

/// Serves one connection until the client closes it, breaks the protocol, goes silent, or the
/// server shuts down.
pub(crate) async fn serve<S, IO>(
    io: IO,
    service: Arc<S>,
    config: &ServerConfig,
    peer_addr: Option<SocketAddr>,
    mut shutdown: ShutdownSignal,
) -> Result<(), RpcError>
where
    S: Service,
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(io);
    let mut reader = FrameReader::new(read, config.max_frame_len);
    let mut writer = FrameWriter::new(write);

    let client = tokio::time::timeout(
        config.handshake_timeout,
        Hello::receive(&mut reader, config.max_frame_len, S::INFO.name),
    )
    .await
    .unwrap_or_else(|_| {
        Err(RpcError::Handshake(format!(
            "the client sent no hello within {:?}",
            config.handshake_timeout
        )))
    });
    // A client of another service or version still gets this side's hello, so that it can say
    // exactly what does not match.
    if let Ok(_) | Err(RpcError::WrongService { .. } | RpcError::VersionMismatch { .. }) = &client {
        let hello = Hello::new(
            &S::INFO,
            config.max_frame_len,
            config.keepalive,
            Some(config.max_in_flight),
        );
        hello.send(&mut writer).await?;
    }
    let client = client?;
    reader.set_silence_limit(client.silence_limit(config.keepalive));

    let (outbox, queue) = Outbox::new();
    let heartbeat = config.keepalive.map(|keepalive| keepalive.interval);
    let mut writer = tokio::spawn(write_frames(writer, queue, heartbeat));
    // If this future is dropped (the server's grace period ran out), the connection closes and
    // its handlers stop: running calls would otherwise keep the writer, and the socket, open.
    let _writer_guard = AbortOnDrop::new(&writer);
    let calls = Arc::new(Calls::default());
    let _calls_guard = AbortCallsOnDrop(Arc::clone(&calls));

    let streams = Arc::new(Streams::default());
    let mut connection = Connection {
        service: &*service,
        calls: &calls,
        link: Link {
            outbox,
            streams: Arc::clone(&streams),
            client_max_frame_len: client.max_frame_len,
        },
        slots: Arc::new(Semaphore::new(config.max_in_flight)),
        peer_addr,
        draining: false,
    };
    let mut last_request = Instant::now();
    let ended = loop {
        if connection.draining && calls.is_empty() {
            break Ok(());
        }
        tokio::select! {
            written = &mut writer => {
                break Err(match written {
                    Ok(Err(error)) => error.into(),
                    _ => RpcError::ConnectionClosed,
                });
            }
            () = shutdown_requested(&mut shutdown), if !connection.draining => {
                connection.start_draining();
            }
            () = calls.wait_idle(), if connection.draining => {}
            () = idle_for(&calls, config.idle_timeout, last_request), if !connection.draining => {
                tracing::debug!(?peer_addr, "closing an idle connection");
                connection.start_draining();
            }
            frame = reader.next_frame() => match frame {
                Ok(Some(payload)) => match connection.handle(&payload, reader.arrived()).await {
                    Ok(Handled::Request) => last_request = reader.arrived(),
                    Ok(Handled::Other) => {}
                    Err(error) => break Err(error),
                },
                Ok(None) => break Ok(()),
                Err(error) => break Err(error),
            },
        }
    };
    // No more stream items come from the client: the streams it was sending end with an error.
    streams.close_all(match &ended {
        Ok(()) => RpcError::ConnectionClosed,
        Err(error) => error.clone(),
    });
    drop(connection);
    match ended {
        // The client finished sending, or the connection drained: the calls still running
        // answer, then the writer closes the connection.
        Ok(()) => match writer.await {
            Ok(written) => written.map_err(RpcError::from),
            Err(_) => Err(RpcError::ConnectionClosed),
        },
        Err(error) => Err(error),
    }
}

/// The state of one connection's reading side.
struct Connection<'a, S> {
    service: &'a S,
    calls: &'a Arc<Calls>,
    link: Link,
    /// Every running call holds one until its answer is written.
    slots: Arc<Semaphore>,
    peer_addr: Option<SocketAddr>,
    /// The server takes no new calls on this connection.
    draining: bool,
}

impl<S: Service> Connection<'_, S> {
    fn start_draining(&mut self) {
        self.draining = true;
        self.link.outbox.send_head(&Head::GoAway);
    }

    /// Acts on one frame from the client, which had arrived by `arrived`.
    async fn handle(&mut self, payload: &Bytes, arrived: Instant) -> Result<Handled, RpcError> {
        let (head, args) = Head::decode(payload).map_err(|error| {
            RpcError::Protocol(format!("the client sent an undecodable frame: {error}"))
        })?;
        let (id, method, timeout_ms, metadata) = match head {
            Head::Request {
                id,
                method,
                timeout_ms,
                metadata,
            } => (id, method, timeout_ms, metadata),
            Head::Cancel { id } => {
                self.calls.cancel(id);
                return Ok(Handled::Other);
            }
            Head::Ping => return Ok(Handled::Other),
            Head::StreamItem { id } => {
                self.link.streams.deliver(id, payload.slice_ref(args))?;
                return Ok(Handled::Other);
            }
            Head::StreamEnd { id, outcome } => {
                self.link.streams.end(id, outcome.into());
                return Ok(Handled::Other);
            }
            Head::Credit { id, items } => {
                self.link.streams.grant(id, items)?;
                return Ok(Handled::Other);
            }
            head @ (Head::Hello(_) | Head::Response { .. } | Head::GoAway) => {
                return Err(RpcError::Protocol(format!(
                    "the client sent a {} frame, which only servers send",
                    head.kind()
                )));
            }
        };
        if self.draining {
            return self.refuse(id, code::NOT_RUN, "the server is closing this connection");
        }
        let mut streams = InboundSlot {
            id,
            streams: Arc::clone(&self.link.streams),
            outbox: self.link.outbox.clone(),
        };
        let decoded =
            crate::payload::decoding(payload, || S::decode_request(method, args, &mut streams));
        let request = match decoded {
            Ok(request) => request,
            Err(DecodeError::UnknownMethod) => {
                let message = format!("the service `{}` has no method `{method}`", S::INFO.name);
                return self.refuse(id, code::UNKNOWN_METHOD, &message);
            }
            Err(DecodeError::InvalidArguments(error)) => {
                return self.refuse(id, code::INVALID_ARGUMENTS, &error.to_string());
            }
        };
        // Backpressure: a client that has more calls running than the server announced waits
        // here, unread, until one finishes.
        let slot = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else {
                    unreachable!("the in-flight semaphore is never closed");
                };
                slot
            }
        };
        let call = NewCall {
            id,
            request,
            arrived,
            timeout_ms,
            metadata: metadata.into_owned(),
            peer_addr: self.peer_addr,
            slot,
        };
        self.calls.start(self.service, call, &self.link)?;
        Ok(Handled::Request)
    }

    /// Answers a request with an error, without running it.
    fn refuse(&self, id: u64, code: u32, message: &str) -> Result<Handled, RpcError> {
        tracing::debug!(id, code, message, "refused a call");
        if self
            .link
            .outbox
            .send(error_response(id, code, message), None)
        {
            Ok(Handled::Request)
        } else {
            Err(RpcError::ConnectionClosed)
        }
    }
}

/// Returns when the server starts shutting down, or is gone; never for a connection served on
/// its own.
async fn shutdown_requested(shutdown: &mut ShutdownSignal) {
    match shutdown {
        Some(signal) => {
            let _ = signal.wait_for(|stopping| *stopping).await;
        }
        None => std::future::pending().await,
    }
}

/// Returns once the connection has been idle for `timeout`; never without one. Pings do not
/// count as activity: a client that only pings is idle.
async fn idle_for(calls: &Calls, timeout: Option<Duration>, last_request: Instant) {
    match timeout {
        Some(timeout) => calls.idle_for(timeout, last_request).await,
        None => std::future::pending().await,
    }
}

/// What a frame from the client was.
enum Handled {
    /// A request: activity that keeps the connection from being idle.
    Request,
    /// A cancellation or a ping.
    Other,
}

/// Drops every running handler of a connection when the connection is dropped.
struct AbortCallsOnDrop(Arc<Calls>);

impl Drop for AbortCallsOnDrop {
    fn drop(&mut self) {
        self.0.abort_all();
    }
}
