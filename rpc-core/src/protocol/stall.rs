//! Detecting a peer that stopped reading: a write that makes no progress for a whole limit
//! fails, so the connection is closed and what was queued for the peer is freed. On a server,
//! one that keeps its writer behind fails sooner when the server holds all it may for peers
//! that have not read (`budget.rs`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};

use super::budget::{GaveWay, PATIENCE, Share};
use crate::alarm;

/// Wraps a writer so that a write (or flush, or shutdown) that cannot make progress for
/// `limit` fails with [`io::ErrorKind::TimedOut`]. The timer is armed only while the transport
/// is full, so writes that go straight through cost nothing more.
#[derive(Debug)]
pub(crate) struct StallGuard<W> {
    io: W,
    limit: Option<Duration>,
    /// The connection's share of its server's budget: the guard tells it whether the peer keeps
    /// up, and fails a write when the connection should give way.
    share: Option<WriterShare>,
    /// Allocated at the first stall, then reused.
    timer: Option<Pin<Box<Sleep>>>,
    /// When the current stall began; `None` while the transport takes what it is given.
    stalled_since: Option<Instant>,
}

impl<W> StallGuard<W> {
    pub(crate) fn new(io: W, limit: Option<Duration>) -> Self {
        StallGuard {
            io,
            limit,
            share: None,
            timer: None,
            stalled_since: None,
        }
    }

    /// The transport itself, for a write that waits for nothing and so needs no guard.
    pub(crate) fn get_mut(&mut self) -> &mut W {
        &mut self.io
    }

    /// Changes the limit for the writes to come.
    pub(crate) fn set_limit(&mut self, limit: Option<Duration>) {
        self.limit = limit;
        self.stalled_since = None;
    }

    /// Tells `share` whether the peer keeps up, and fails a stalled write when the server
    /// needs the connection to give way.
    pub(crate) fn share_budget(&mut self, share: Share) {
        self.share = Some(WriterShare(share));
    }

    /// Notes a write that took `taken` of `offered` bytes, or none yet: whether the peer keeps
    /// the writer behind.
    fn note_write(&self, polled: &Poll<io::Result<usize>>, offered: usize) {
        if let Some(WriterShare(share)) = &self.share {
            match polled {
                Poll::Ready(Ok(taken)) if *taken >= offered => share.caught_up(),
                Poll::Ready(Err(_)) => {}
                _ => share.behind(),
            }
        }
    }

    /// When the timer of a stall that began at `since` should next fire: at the limit, or
    /// sooner to look whether the connection should give way.
    fn next_look(&self, since: Instant, now: Instant) -> Option<Instant> {
        let limit = self.limit.map(|limit| alarm::after(since, limit));
        let give_way = self.share.as_ref().map(|_| now + PATIENCE);
        match (limit, give_way) {
            (Some(limit), Some(give_way)) => Some(limit.min(give_way)),
            (limit, give_way) => limit.or(give_way),
        }
    }

    /// Notes the outcome of one poll of the transport: progress ends the stall, a stall arms
    /// the timer (once), and when it fires the write fails if the stall reached the limit or
    /// the connection gives way, or the timer is armed again.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled_since = None;
            return polled;
        }
        let now = Instant::now();
        let starting = self.stalled_since.is_none();
        let since = *self.stalled_since.get_or_insert(now);
        let Some(first_look) = self.next_look(since, now) else {
            return polled;
        };
        let mut timer = self
            .timer
            .take()
            .unwrap_or_else(|| Box::pin(tokio::time::sleep_until(first_look)));
        if starting {
            timer.as_mut().reset(first_look);
        }
        let outcome = loop {
            if timer.as_mut().poll(cx).is_pending() {
                break Poll::Pending;
            }
            let now = Instant::now();
            if let Some(limit) = self.limit
                && now >= alarm::after(since, limit)
            {
                break Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the peer read nothing of what was sent to it for {limit:?}"),
                )));
            }
            if self.share.as_ref().is_some_and(|share| share.0.gives_way()) {
                break Poll::Ready(Err(GaveWay::error()));
            }
            timer
                .as_mut()
                .reset(self.next_look(since, now).unwrap_or(now + PATIENCE));
        };
        self.timer = Some(timer);
        outcome
    }
}

/// A connection's share of its server's budget, as its writer holds it. Dropped with the
/// writer, it leaves the connection caught up: a writer gone waits for nobody, and whatever its
/// connection's queue still counts, it must not be the one kept behind longest, which the
/// others would wait for to give way.
#[derive(Debug)]
struct WriterShare(Share);

impl Drop for WriterShare {
    fn drop(&mut self) {
        self.0.caught_up();
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for StallGuard<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note_write(&polled, buf.len());
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if self.share.is_some() {
            let offered = bufs.iter().map(|buf| buf.len()).sum();
            self.note_write(&polled, offered);
        }
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

    /// A guard sharing a budget that holds `queued` bytes of its connection against `limit`,
    /// and its peer, which reads nothing.
    fn sharing(
        limit: usize,
        queued: usize,
    ) -> (StallGuard<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (tx, rx) = tokio::io::duplex(16);
        let share = Share::new(std::sync::Arc::new(super::super::Budget::with_step(
            limit, 1,
        )));
        share.add(0, queued, || queued);
        let mut guarded = StallGuard::new(tx, Some(Duration::from_secs(45)));
        guarded.share_budget(share);
        (guarded, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_kept_behind_gives_way_when_the_server_holds_its_budget() {
        let (mut guarded, _peer) = sharing(11, 11);
        let started = Instant::now();
        let error = guarded.write_all(&[0; 64]).await.expect_err("gives way");
        assert!(GaveWay::is(&error), "{error}");
        assert_eq!(started.elapsed(), PATIENCE);
    }

    #[tokio::test(start_paused = true)]
    async fn under_the_budget_a_write_kept_behind_waits_for_the_limit() {
        let (mut guarded, _peer) = sharing(12, 11);
        let started = Instant::now();
        let error = guarded.write_all(&[0; 64]).await.expect_err("stalls");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(45));
    }

    /// A write the transport takes only part of keeps the writer behind (its peer reads slower
    /// than it is sent to); one that takes all it was offered keeps it caught up; a failed one
    /// says nothing of the peer. Seen through the budget: behind for [`PATIENCE`] with the
    /// server at its budget, a connection gives way.
    #[tokio::test(start_paused = true)]
    async fn a_write_taking_part_of_what_it_was_offered_keeps_the_writer_behind() {
        let share = |guarded: &StallGuard<_>| match &guarded.share {
            Some(WriterShare(share)) => share.clone(),
            None => unreachable!("the guard shares the budget"),
        };
        let (mut part, _peer) = sharing(0, 10);
        assert_eq!(part.write(&[0; 64]).await.expect("a part"), 16);
        let (mut whole, _peer) = sharing(0, 10);
        assert_eq!(whole.write(&[0; 8]).await.expect("all"), 8);
        let (mut failed, peer) = sharing(0, 10);
        drop(peer);
        failed.write(&[0; 8]).await.expect_err("no peer");
        tokio::time::advance(PATIENCE).await;
        assert!(share(&part).gives_way(), "behind for a second");
        assert!(!share(&whole).gives_way(), "caught up");
        assert!(!share(&failed).gives_way(), "nothing said");
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_gone_is_never_the_one_kept_behind_longest() {
        let budget = std::sync::Arc::new(super::super::Budget::with_step(0, 1));
        let gone = Share::new(std::sync::Arc::clone(&budget));
        let waiting = Share::new(budget);
        for share in [&gone, &waiting] {
            share.add(0, 10, || 10);
        }
        let mut guarded = StallGuard::new(tokio::io::sink(), None);
        guarded.share_budget(gone.clone());
        gone.behind();
        tokio::time::advance(PATIENCE / 2).await;
        waiting.behind();
        tokio::time::advance(PATIENCE).await;
        assert!(!waiting.gives_way(), "the other was behind longer");
        drop(guarded);
        assert!(waiting.gives_way(), "the other's writer is gone");
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
