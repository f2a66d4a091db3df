//! The TCP stream under a TLS session, which its reader reads past tokio while busy polling.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{ReadsPastTokio, poll_past_tokio, sys};

/// A TCP stream under a TLS session: read and written through tokio, but for a read that tokio
/// finds nothing for while [`ReadsPastTokio`] is on, which reads the socket itself, as a busy
/// polling reader of plain TCP does ([`crate::socket`]). A TLS session reads its bytes
/// through this, and its reader could not reach the socket otherwise: over TLS between two
/// processes, a sequential call's p99 was about 128 µs with tokio alone, its answers seen a
/// wakeup late while the worker holding tokio's I/O driver slept (docs/benchmark-history.md).
#[derive(Debug)]
pub(crate) struct TcpUnderTls {
    stream: TcpStream,
    reads_past_tokio: Arc<ReadsPastTokio>,
}

impl TcpUnderTls {
    /// `stream`, with reads past tokio off until the switch ([`TcpUnderTls::switch`]) turns
    /// them on.
    pub(crate) fn new(stream: TcpStream) -> Self {
        TcpUnderTls {
            stream,
            reads_past_tokio: Arc::default(),
        }
    }

    /// The switch that turns reads past tokio on and off, for the reader of the layer above.
    pub(crate) fn switch(&self) -> Arc<ReadsPastTokio> {
        Arc::clone(&self.reads_past_tokio)
    }

    /// Reads what has come past tokio, as a read through tokio would ([`poll_past_tokio`]).
    /// Pending if nothing has.
    fn poll_read_now(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        poll_past_tokio(cx, || sys::read_now_into(&self.stream, buf)).map_ok(drop)
    }
}

impl AsyncRead for TcpUnderTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending if this.reads_past_tokio.is_on() => this.poll_read_now(cx, buf),
            polled => polled,
        }
    }
}

impl AsyncWrite for TcpUnderTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::Write;
    use std::task::Waker;

    use super::*;
    use crate::test_sockets::blocking_pair;

    /// Polls `stream` for a read once, outside any task, into `buf`.
    fn poll_once(stream: &mut TcpUnderTls, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut read = ReadBuf::new(buf);
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(stream)
            .poll_read(&mut cx, &mut read)
            .map_ok(|()| read.filled().len())
    }

    /// Bytes that have come though no thread has polled tokio's I/O driver since are read
    /// with the switch on, and not with it off; the stream's end reads as through tokio.
    #[test]
    fn with_the_switch_on_a_read_finds_bytes_the_driver_has_not_seen() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("a runtime");
        let _inside = runtime.enter();
        let (mut peer, accepted) = blocking_pair();
        accepted.set_nonblocking(true).expect("non-blocking");
        let watched = accepted.try_clone().expect("a second handle");
        let mut stream = TcpUnderTls::new(TcpStream::from_std(accepted).expect("registers"));
        let mut buf = [0; 16];
        // Nothing has come, and tokio's driver, never polled here, has seen nothing.
        assert!(poll_once(&mut stream, &mut buf).is_pending());

        peer.write_all(b"ping").expect("writes");
        // Waits, blocking, until the bytes are in the socket.
        watched.peek(&mut [0; 1]).expect("the bytes come");
        assert!(poll_once(&mut stream, &mut buf).is_pending(), "switch off");
        stream.switch().set(true);
        let read = poll_once(&mut stream, &mut buf);
        assert!(matches!(read, Poll::Ready(Ok(4))), "{read:?}");
        assert_eq!(&buf[..4], b"ping");

        drop(peer);
        let guard = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match poll_once(&mut stream, &mut buf) {
                Poll::Ready(read) => break assert_eq!(read.expect("the end"), 0),
                Poll::Pending => assert!(std::time::Instant::now() < guard, "no end came"),
            }
        }
    }
}
