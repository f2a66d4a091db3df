//! Detecting a peer that stopped reading: a write that makes no progress for a whole limit
//! fails, so the connection is closed and what was queued for the peer is freed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};

/// Wraps a writer so that a write (or flush, or shutdown) that cannot make progress for
/// `limit` fails with [`io::ErrorKind::TimedOut`]. The timer is armed only while the transport
/// is full, so writes that go straight through cost nothing more.
#[derive(Debug)]
pub(crate) struct StallGuard<W> {
    io: W,
    limit: Option<Duration>,
    /// Allocated at the first stall, then reused.
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer runs for the current stall.
    armed: bool,
}

impl<W> StallGuard<W> {
    pub(crate) fn new(io: W, limit: Option<Duration>) -> Self {
        StallGuard {
            io,
            limit,
            timer: None,
            armed: false,
        }
    }

    /// The transport itself, for a write that waits for nothing and so needs no guard.
    pub(crate) fn get_mut(&mut self) -> &mut W {
        &mut self.io
    }

    /// Changes the limit for the writes to come.
    pub(crate) fn set_limit(&mut self, limit: Option<Duration>) {
        self.limit = limit;
        self.armed = false;
    }

    /// Notes the outcome of one poll of the transport: progress disarms the timer, a stall arms
    /// it (once) and fails when it fires.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let Some(limit) = self.limit else {
            return polled;
        };
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        let deadline = Instant::now() + limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer read nothing of what was sent to it for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for StallGuard<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_reads_fails_after_the_limit() {
        let (tx, _rx) = tokio::io::duplex(16);
        let mut guarded = StallGuard::new(tx, Some(Duration::from_secs(5)));
        let started = Instant::now();
        let error = guarded.write_all(&[0; 64]).await.expect_err("stalls");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    /// The guard writes vectored exactly when its transport does, so that the writer gathers
    /// frames into one vectored write only where that is one system call.
    #[test]
    fn the_guard_writes_vectored_as_its_transport_does() {
        /// A transport that writes one buffer at a time.
        struct OneAtATime;
        impl AsyncWrite for OneAtATime {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Ok(buf.len()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        assert!(!StallGuard::new(OneAtATime, None).is_write_vectored());
        let (vectored, _rx) = tokio::io::duplex(16);
        assert!(vectored.is_write_vectored());
        assert!(StallGuard::new(vectored, None).is_write_vectored());
    }

    /// Flushing and shutting down go through to the transport: a buffered one (as TLS is)
    /// sends nothing until flushed, and its peer sees the end only once it is shut down.
    #[tokio::test]
    async fn flush_and_shutdown_reach_the_transport() {
        let (tx, mut rx) = tokio::io::duplex(1024);
        let mut guarded =
            StallGuard::new(tokio::io::BufWriter::new(tx), Some(Duration::from_secs(5)));
        guarded.write_all(b"hello").await.expect("buffered");
        guarded.flush().await.expect("flushed");
        let mut got = [0; 5];
        let read = tokio::io::AsyncReadExt::read_exact(&mut rx, &mut got);
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the flush sent the bytes")
            .expect("reads");
        assert_eq!(&got, b"hello");
        guarded.shutdown().await.expect("shut down");
        let mut rest = Vec::new();
        let end = tokio::io::AsyncReadExt::read_to_end(&mut rx, &mut rest);
        tokio::time::timeout(Duration::from_secs(10), end)
            .await
            .expect("the peer sees the end")
            .expect("reads");
        assert!(rest.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_not_a_stall() {
        let (tx, mut rx) = tokio::io::duplex(16);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0; 16];
            loop {
                // Each read comes after 4 s: slower than nothing, faster than the limit.
                tokio::time::sleep(Duration::from_secs(4)).await;
                match tokio::io::AsyncReadExt::read(&mut rx, &mut buf).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        let mut guarded = StallGuard::new(tx, Some(Duration::from_secs(5)));
        guarded.write_all(&[7; 64]).await.expect("keeps going");
        guarded.shutdown().await.expect("closes");
        drop(guarded);
        assert_eq!(reader.await.expect("joins"), [7; 64]);
    }
}
