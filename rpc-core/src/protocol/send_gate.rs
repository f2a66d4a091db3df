//! Sends and receives on one socket that take turns before the kernel's lock makes them.
//!
//! The kernel serializes a TCP socket's sends and receives with the socket's lock: a `recv`
//! made while another thread's `send` on the same socket is under way sleeps until the send is
//! done and is woken after, two switches of threads each time. Where a client and its server
//! share one runtime, the client's writer and reader run side by side on the runtime's
//! workers, and with calls in flight that is the wait they meet most: with 32 callers on one
//! connection of a shared two-worker runtime, three in four of the process's thread switches
//! were a reader's `recv` asleep in `lock_sock` while the other worker sent.
//!
//! A [`SendGate`] is shared by such a client's write half ([`GatedWrite`]), which raises it around
//! each write of a small frame or batch, and its reader, which spins before a read until the gate
//! is down, for at most [`MOST_SPIN`]: a small send on loopback takes a few microseconds, less than
//! the two switches. There, by hand (`rpc-bench --profile 32 --setup shared`, interleaved), 32
//! callers made 448–526k calls/s against 441–478k (medians 493k and 463k, twelve and nine runs),
//! with half the thread switches and 1.75 of the two cores busy against 1.55; 256 callers, 4 and
//! 100 connections, 1 MiB echoes and sequential calls measured as before. Large writes leave the
//! gate down. Connections over TLS have none, their halves taking turns at the lock
//! `tokio::io::split` holds across each read and write; nor have connections whose peer runs
//! elsewhere: there a thread asleep in the lock gives its core to the other process, and a reader
//! that spun for every send kept it (13–27% fewer calls/s across two processes). The reader keeps
//! the gate with its busy polling's state, which is boxed, so it waits only if it busy polls, as it
//! does by default: a gate in every reader took 0.1 KiB more per idle connection. The write half's
//! costs 0.15 KiB (15,394 bytes against 15,240, both ends).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;

use super::frame::LARGE_FRAME;

/// The longest a reader spins for a send to end before it reads anyway.
const MOST_SPIN: Duration = Duration::from_micros(20);

/// Whether a small send is under way on a connection's socket.
#[derive(Debug)]
pub(crate) struct SendGate {
    sending: AtomicBool,
    /// The longest a reader spins for a send to end.
    most_spin: Duration,
}

impl Default for SendGate {
    fn default() -> Self {
        SendGate {
            sending: AtomicBool::new(false),
            most_spin: MOST_SPIN,
        }
    }
}

impl SendGate {
    /// Runs `send`, a send of `len` bytes, with the gate raised if it is small. One send at a
    /// time: the connection's writer is behind a lock.
    pub(crate) fn around<T>(&self, len: usize, send: impl FnOnce() -> T) -> T {
        // A large send takes longer than a reader should spin for.
        if len >= LARGE_FRAME {
            return send();
        }
        let _raised = Raised::new(&self.sending);
        send()
    }

    /// Waits, spinning, until no small send is under way, or until the most it spins for has
    /// passed. Returns whether a send was under way.
    pub(crate) fn wait_for_send(&self) -> bool {
        if !self.sending.load(Ordering::Acquire) {
            return false;
        }
        let began = Instant::now();
        while self.sending.load(Ordering::Acquire) && began.elapsed() < self.most_spin {
            std::hint::spin_loop();
        }
        true
    }
}

/// A client's write half, which raises its gate, if it has one, around each small write.
#[derive(Debug)]
pub(crate) struct GatedWrite<W> {
    io: W,
    gate: Option<Arc<SendGate>>,
}

impl<W> GatedWrite<W> {
    /// `io`, with no gate yet.
    pub(crate) fn new(io: W) -> Self {
        GatedWrite { io, gate: None }
    }

    /// Raises `gate` around each small write from now on.
    pub(crate) fn raise_around_writes(&mut self, gate: Arc<SendGate>) {
        self.gate = Some(gate);
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for GatedWrite<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let GatedWrite { io, gate } = &mut *self;
        let io = Pin::new(io);
        match gate {
            Some(gate) => gate.around(buf.len(), || io.poll_write(cx, buf)),
            None => io.poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let GatedWrite { io, gate } = &mut *self;
        let io = Pin::new(io);
        match gate {
            Some(gate) => {
                let len = bufs.iter().map(|buf| buf.len()).sum();
                gate.around(len, || io.poll_write_vectored(cx, bufs))
            }
            None => io.poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The gate raised for as long as this lives: a send that panics lowers it too.
struct Raised<'a>(&'a AtomicBool);

impl<'a> Raised<'a> {
    fn new(sending: &'a AtomicBool) -> Self {
        sending.store(true, Ordering::Release);
        Raised(sending)
    }
}

impl Drop for Raised<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;

    fn is_raised(gate: &SendGate) -> bool {
        gate.sending.load(Ordering::Acquire)
    }

    #[test]
    fn only_a_small_send_raises_the_gate_and_it_is_down_after() {
        let gate = SendGate::default();
        assert!(gate.around(LARGE_FRAME - 1, || is_raised(&gate)));
        assert!(!gate.around(LARGE_FRAME, || is_raised(&gate)));
        assert!(!is_raised(&gate));
        let panicked = std::panic::catch_unwind(|| gate.around(10, || panic!("a send failed")));
        assert!(panicked.is_err());
        assert!(!is_raised(&gate), "a send that panics lowers the gate");
    }

    /// With no limit to its spin, a reader that finds a send under way waits until it is over.
    /// The send lasts until the reader is about to wait, and a while after: in one of a hundred
    /// tries at least, the reader finds it under way.
    #[test]
    fn a_reader_that_finds_a_send_under_way_waits_until_it_is_over() {
        let gate = Arc::new(SendGate {
            sending: AtomicBool::new(false),
            most_spin: Duration::MAX,
        });
        let mut found_under_way = 0;
        for _ in 0..100 {
            let raised = Arc::new(Barrier::new(2));
            let about_to_wait = Arc::new(AtomicBool::new(false));
            let reader = std::thread::spawn({
                let (gate, raised) = (Arc::clone(&gate), Arc::clone(&raised));
                let about_to_wait = Arc::clone(&about_to_wait);
                move || {
                    raised.wait();
                    about_to_wait.store(true, Ordering::Release);
                    let waited = gate.wait_for_send();
                    (waited, is_raised(&gate))
                }
            });
            gate.around(10, || {
                raised.wait();
                while !about_to_wait.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                for _ in 0..100 {
                    std::thread::yield_now();
                }
            });
            let (waited, raised_when_done) = reader.join().expect("the reader ends");
            assert!(!raised_when_done, "the wait ended with the send under way");
            found_under_way += usize::from(waited);
        }
        assert!(found_under_way > 0, "no reader found the send under way");
    }

    /// Records, for each write, whether the gate was raised while it was made.
    struct Probe {
        gate: Arc<SendGate>,
        raised: Vec<bool>,
    }

    impl AsyncWrite for Probe {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let raised = is_raised(&self.gate);
            self.raised.push(raised);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let raised = is_raised(&self.gate);
            self.raised.push(raised);
            Poll::Ready(Ok(bufs.iter().map(|buf| buf.len()).sum()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A write half raises its gate around small writes once given one, and only then.
    #[tokio::test]
    async fn a_write_half_raises_its_gate_around_small_writes_once_given_one() {
        use tokio::io::AsyncWriteExt;

        let gate = Arc::new(SendGate::default());
        let mut write = GatedWrite::new(Probe {
            gate: Arc::clone(&gate),
            raised: Vec::new(),
        });
        write.write_all(b"before the gate").await.expect("written");
        write.raise_around_writes(Arc::clone(&gate));
        write.write_all(b"a small frame").await.expect("written");
        let large = vec![0; LARGE_FRAME];
        let small = [0; 8];
        let slices = [IoSlice::new(&small), IoSlice::new(&small)];
        let written = write.write_vectored(&slices).await.expect("written");
        assert_eq!(written, 2 * small.len());
        let written = write.write_vectored(&[IoSlice::new(&large)]).await;
        assert_eq!(written.expect("written"), large.len());
        assert_eq!(write.io.raised, [false, true, true, false]);
        assert!(!is_raised(&gate), "down after each write");
    }

    /// A send that never ends holds a reader for the most it spins, not for ever: here the
    /// reader waits from within the send itself.
    #[test]
    fn a_send_that_does_not_end_holds_a_reader_for_a_while_only() {
        let gate = SendGate::default();
        assert!(gate.around(10, || gate.wait_for_send()));
        assert!(!gate.wait_for_send());
    }
}
