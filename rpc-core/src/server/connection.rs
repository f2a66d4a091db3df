//! Serving one connection: read requests, run each as its own task, write answers as they
//! finish.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::ServerConfig;
use crate::RpcError;
use crate::protocol::{
    FrameReader, FrameWriter, Head, Hello, Outcome, code, error_response, finish_frame,
    write_frames,
};
use crate::service::{DecodeError, Service};
use crate::task::AbortOnDrop;

/// How many finished answers may wait for the writer before handlers wait too.
const RESPONSE_QUEUE: usize = 256;

/// Error messages sent to clients are cut to this many bytes.
const MAX_ERROR_MESSAGE: usize = 1024;

/// Serves one connection until the client closes it or breaks the protocol.
///
/// At most `max_in_flight` calls run at once; while that many are running the connection is not
/// read, so a client sending faster than the service answers is slowed down, not buffered.
pub(crate) async fn serve<S, IO>(
    io: IO,
    service: Arc<S>,
    config: &ServerConfig,
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
        Hello::new(&S::INFO, config.max_frame_len)
            .send(&mut writer)
            .await?;
    }
    let client_max_frame_len = client?.max_frame_len;

    let (responses, queue) = mpsc::channel(RESPONSE_QUEUE);
    let writer = tokio::spawn(write_frames(writer, queue));
    // If this future is dropped, the connection closes: handlers still running would otherwise
    // keep the writer, and with it the socket, open.
    let _writer_guard = AbortOnDrop::new(&writer);
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight));
    let ended = loop {
        // Read nothing more until a call slot is free: this is the connection's backpressure.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            unreachable!("the in-flight semaphore is never closed");
        };
        let payload = match reader.next_frame().await {
            Ok(Some(payload)) => payload,
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        };
        if let Err(error) =
            dispatch(&payload, &*service, &responses, slot, client_max_frame_len).await
        {
            break Err(error);
        }
    };
    drop(responses);
    match ended {
        // The client finished sending; the calls still running answer before the connection
        // closes.
        Ok(()) => match writer.await {
            Ok(written) => written.map_err(RpcError::from),
            Err(_) => Err(RpcError::ConnectionClosed),
        },
        Err(error) => {
            writer.abort();
            Err(error)
        }
    }
}

/// Decodes one request and starts its call, or answers at once with why it cannot run.
async fn dispatch<S: Service>(
    payload: &Bytes,
    service: &S,
    responses: &mpsc::Sender<Vec<u8>>,
    slot: OwnedSemaphorePermit,
    client_max_frame_len: usize,
) -> Result<(), RpcError> {
    let (id, method, args) = match Head::decode(payload) {
        Ok((Head::Request { id, method }, args)) => (id, method, args),
        Ok((head, _)) => {
            return Err(RpcError::Protocol(format!(
                "the client sent a {} frame, where only requests may come",
                head.kind()
            )));
        }
        Err(error) => {
            return Err(RpcError::Protocol(format!(
                "the client sent an undecodable frame: {error}"
            )));
        }
    };
    let request = match S::decode_request(method, args) {
        Ok(request) => request,
        Err(error) => {
            let (code, message) = match error {
                DecodeError::UnknownMethod => (
                    code::UNKNOWN_METHOD,
                    format!("the service `{}` has no method `{method}`", S::INFO.name),
                ),
                DecodeError::InvalidArguments(error) => {
                    (code::INVALID_ARGUMENTS, error.to_string())
                }
            };
            tracing::debug!(method = %truncate(method), %message, "refused a call");
            return responses
                .send(error_response(id, code, truncate(&message)))
                .await
                .map_err(|_| RpcError::ConnectionClosed);
        }
    };
    let method = S::method_name(&request);
    let call = service.call(request);
    let responses = responses.clone();
    tokio::spawn(async move {
        let frame = run::<S>(id, method, call, client_max_frame_len).await;
        // Fails only when the connection is gone, and then nobody waits for the answer.
        let _ = responses.send(frame).await;
        drop(slot);
    });
    Ok(())
}

/// Runs one call to completion and encodes its answer. A panic in the handler, or in the
/// result's `Serialize`, becomes an error answer for this call alone.
async fn run<S: Service>(
    id: u64,
    method: &'static str,
    call: impl Future<Output = S::Response>,
    client_max_frame_len: usize,
) -> Vec<u8> {
    let answered = AssertUnwindSafe(async move {
        let response = call.await;
        let mut frame = Head::Response {
            id,
            outcome: Outcome::Ok,
        }
        .begin_frame()?;
        S::encode_response(&response, &mut frame)?;
        Ok(frame)
    })
    .catch_unwind()
    .await;
    match answered {
        Ok(Ok(mut frame)) => match finish_frame(&mut frame, client_max_frame_len) {
            Ok(()) => frame,
            Err(too_large) => {
                tracing::warn!(method, %too_large, "a result is over the client's frame limit");
                error_response(
                    id,
                    code::RESPONSE_TOO_LARGE,
                    &format!("the result is too large for the client: {too_large}"),
                )
            }
        },
        Ok(Err(error)) => {
            let error: crate::protocol::CodecError = error;
            tracing::warn!(method, %error, "a result could not be encoded");
            error_response(
                id,
                code::RESPONSE_ENCODE_FAILED,
                &format!("the result could not be encoded: {error}"),
            )
        }
        Err(panic) => {
            let message = panic_message(&*panic);
            tracing::error!(method, message, "a handler panicked");
            error_response(id, code::HANDLER_PANICKED, truncate(message))
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(message) = panic.downcast_ref::<&'static str>() {
        message
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message
    } else {
        "the panic carried no message"
    }
}

/// Cuts a message to at most [`MAX_ERROR_MESSAGE`] bytes, on a character boundary.
fn truncate(message: &str) -> &str {
    if message.len() <= MAX_ERROR_MESSAGE {
        return message;
    }
    let mut end = MAX_ERROR_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncate_respects_char_boundaries() {
        let long = "é".repeat(1000);
        let cut = truncate(&long);
        assert!(cut.len() <= super::MAX_ERROR_MESSAGE);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(truncate("short"), "short");
    }
}
