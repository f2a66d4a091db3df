//! Writing frames: the writer task that drains a connection's queue, gathering small frames
//! into few writes and pinging when silent, and the straight path by which a lone call's frame
//! skips it.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use futures_util::lock::Mutex;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::budget::Share;
use super::outbox::{Item, Outgoing, Queue, WriteNow, WriteThrough, WroteNow};
use super::stall::StallGuard;
use super::{Frame, Head};
use crate::alarm;
use crate::slots::CallSlots;
use crate::telemetry::Traffic;

/// Frames smaller than this are copied together into one write; larger ones go out directly.
pub(super) const COALESCE_BELOW: usize = 16 * 1024;

/// The most bytes gathered into one coalesced write.
pub(super) const COALESCE_LIMIT: usize = 64 * 1024;

/// Writes whole frames that are already encoded, length prefix included.
#[derive(Debug)]
pub(crate) struct FrameWriter<W> {
    io: StallGuard<W>,
    batch: Vec<u8>,
    /// The connection's call slots, to tell when a single call is in flight: then nobody else
    /// is about to queue a frame, and the writer sends at once.
    calls: Option<Arc<CallSlots>>,
    /// Where the bytes written are counted, once the connection is established.
    traffic: Option<Traffic>,
    /// When bytes were last written, by the writer or straight through it.
    last_write: Instant,
    /// The transport failed or was shut down: nothing more goes straight through.
    closed: bool,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(crate) fn new(io: W) -> Self {
        FrameWriter {
            io: StallGuard::new(io, None),
            batch: Vec::new(),
            calls: None,
            traffic: None,
            last_write: Instant::now(),
            closed: false,
        }
    }

    /// Counts the bytes written from here on in `traffic`.
    pub(crate) fn count_traffic(&mut self, traffic: Traffic) {
        self.traffic = Some(traffic);
    }

    /// Notes `bytes` written.
    fn sent(&self, bytes: usize) {
        if let Some(traffic) = &self.traffic {
            traffic.sent(bytes);
        }
    }

    /// The transport, to change how it writes before the writer starts.
    pub(crate) fn transport_mut(&mut self) -> &mut W {
        self.io.get_mut()
    }

    /// Lets the writer see how many calls are in flight: `slots`, each held by one call.
    pub(crate) fn watch_calls(&mut self, slots: Arc<CallSlots>) {
        self.calls = Some(slots);
    }

    /// Whether at most one call is in flight, as far as the writer was told.
    fn lone_call(&self) -> bool {
        self.calls.as_deref().is_some_and(CallSlots::lone_call)
    }

    /// Writes what the transport takes of `bytes` at once, without waiting: a task queueing a
    /// frame while the writer is idle sends it this way, rather than waking the writer to. Only
    /// a small frame ([`FrameWriter::write_large_now`] takes large ones): what the transport
    /// did not take at once is copied aside. `None` when it took none, and the frame goes to the
    /// writer whole.
    pub(super) fn write_now(&mut self, bytes: &[u8]) -> Option<WroteNow> {
        if bytes.len() >= COALESCE_BELOW {
            return None;
        }
        self.write_without_waiting(bytes)
    }

    /// Writes what the transport takes of a large `frame` at once, without waiting, in one
    /// vectored write of its pieces; what it did not take is the rest of the frame, its
    /// spliced payloads shared rather than copied. `None` when it took none.
    pub(super) fn write_large_now(&mut self, frame: &Frame) -> Option<WroteNow> {
        if self.closed {
            return None;
        }
        // Past the stall guard, as in `write_without_waiting`.
        let mut io = Pin::new(self.io.get_mut());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut slices = Vec::new();
        frame.push_slices(&mut slices);
        let mut unwritten = &mut slices[..];
        let mut written = 0;
        while !unwritten.is_empty() {
            match io.as_mut().poll_write_vectored(&mut cx, unwritten) {
                Poll::Ready(Ok(taken)) if taken > 0 => {
                    written += taken;
                    IoSlice::advance_slices(&mut unwritten, taken);
                }
                _ => break,
            }
        }
        let whole = unwritten.is_empty();
        self.wrote_without_waiting(written, whole, || frame.rest_after(written))
    }

    /// Has `gather` copy frames into the batch, then writes it as [`FrameWriter::write_now`]
    /// does a frame; `None` when `gather` declined or nothing was taken. The batch is empty
    /// again after.
    fn write_gathered_now(
        &mut self,
        gather: &mut dyn FnMut(&mut Vec<u8>) -> bool,
    ) -> Option<WroteNow> {
        let mut batch = std::mem::take(&mut self.batch);
        let wrote = if gather(&mut batch) && !batch.is_empty() {
            self.write_without_waiting(&batch)
        } else {
            None
        };
        batch.clear();
        self.batch = batch;
        wrote
    }

    /// Writes what the transport takes of `bytes` at once; what it did not take is copied
    /// aside. `None` when it took none.
    fn write_without_waiting(&mut self, bytes: &[u8]) -> Option<WroteNow> {
        if self.closed {
            return None;
        }
        // Past the stall guard: nothing waits here, so there is no stall to time. A transport
        // that is full or failing takes nothing more, and the writer meets it as it would have.
        let mut io = Pin::new(self.io.get_mut());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut written = 0;
        while written < bytes.len() {
            match io.as_mut().poll_write(&mut cx, &bytes[written..]) {
                Poll::Ready(Ok(taken)) if taken > 0 => written += taken,
                _ => break,
            }
        }
        let whole = written == bytes.len();
        self.wrote_without_waiting(written, whole, || Frame::from(bytes[written..].to_vec()))
    }

    /// What a write without waiting that took `written` bytes, `whole` if that was all of
    /// them, leaves for the writer: `rest` if it was not whole, or a flush if the transport
    /// has yet to make one. `None` when it took none.
    fn wrote_without_waiting(
        &mut self,
        written: usize,
        whole: bool,
        rest: impl FnOnce() -> Frame,
    ) -> Option<WroteNow> {
        if written == 0 {
            return None;
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let io = Pin::new(self.io.get_mut());
        let flushed = whole && matches!(io.poll_flush(&mut cx), Poll::Ready(Ok(())));
        self.sent(written);
        self.last_write = Instant::now();
        Some(WroteNow {
            rest: (!whole).then(rest),
            flushed,
        })
    }

    /// Fails a write that makes no progress for `limit`: the peer stopped reading.
    pub(crate) fn set_stall_limit(&mut self, limit: Option<Duration>) {
        self.io.set_limit(limit);
    }

    /// Tells the server, through the connection's `share` of its budget, whether the peer keeps
    /// up with what is written, and fails a write when the connection should give way.
    pub(crate) fn share_budget(&mut self, share: Share) {
        self.io.share_budget(share);
    }

    /// Writes one frame and flushes it.
    pub(crate) async fn send(&mut self, frame: &Frame) -> std::io::Result<()> {
        self.write_after_batch(frame).await?;
        self.io.flush().await
    }

    /// Writes `first` and every frame already queued behind it, gathering small frames into
    /// few large writes, then flushes. A frame's slot is released once its bytes are written or
    /// copied into the batch, which is itself bounded. Returns `true` if the connection's last
    /// frame was among them: it was written, and nothing after it.
    ///
    /// The small frames queued go out together, up to `COALESCE_LIMIT` bytes to a write. (They
    /// once went out in two writes, half in each, so that the first half would wake the peer
    /// while the second was written: across two processes, and since the server's reader gives
    /// the writer a turn within a long batch, one write measured 6–10% more calls per second
    /// with 32 and 256 callers on one connection, on every runtime.)
    async fn send_queued(&mut self, first: Outgoing, queue: &mut Queue) -> std::io::Result<bool> {
        let mut next = Some(first);
        let mut last = false;
        while let Some(outgoing) = next.take() {
            // Out of the queue: the bytes are the writer's now, one frame or batch at a time.
            queue.meter.release(outgoing.queued_len());
            let frame = match outgoing.item {
                Item::Frame(frame) => frame,
                Item::Last(frame) => {
                    last = true;
                    frame
                }
                claim @ (Item::Claim(..) | Item::Request(_)) => match queue.claim(&claim) {
                    Some(frame) => frame,
                    // Taken back by a call that was abandoned before its turn.
                    None => {
                        next = queue.try_recv();
                        continue;
                    }
                },
            };
            next = if last { None } else { queue.try_recv() };
            let lone = self.batch.is_empty() && next.is_none();
            match frame.contiguous() {
                Some(bytes) if bytes.len() < COALESCE_BELOW && !lone => {
                    self.batch.extend_from_slice(bytes);
                    if self.batch.len() >= COALESCE_LIMIT {
                        self.write_batch().await?;
                    }
                }
                _ => self.write_after_batch(&frame).await?,
            }
        }
        self.write_batch().await?;
        if self.batch.capacity() > 2 * COALESCE_LIMIT {
            self.batch = Vec::new();
        }
        self.io.flush().await?;
        Ok(last)
    }

    /// Writes what is batched, then `frame`, in as few writes as the transport allows: one
    /// vectored write for all of it, unless the transport takes less at a time.
    async fn write_after_batch(&mut self, frame: &Frame) -> std::io::Result<()> {
        match frame.contiguous() {
            Some(bytes) => {
                let mut slices = [IoSlice::new(&self.batch), IoSlice::new(bytes)];
                write_all_vectored(&mut self.io, &mut slices).await?;
            }
            None => {
                let mut slices = vec![IoSlice::new(&self.batch)];
                frame.push_slices(&mut slices);
                write_all_vectored(&mut self.io, &mut slices).await?;
            }
        }
        self.sent(self.batch.len() + frame.len());
        self.batch.clear();
        Ok(())
    }

    async fn write_batch(&mut self) -> std::io::Result<()> {
        if !self.batch.is_empty() {
            self.io.write_all(&self.batch).await?;
            self.sent(self.batch.len());
            self.batch.clear();
        }
        Ok(())
    }
}

/// Writes all of `slices`, however little the transport takes at a time.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let written = io.write_vectored(slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

/// The writer loop without the straight path, for tests whose transport is borrowed.
#[cfg(test)]
pub(crate) async fn write_frames<W: AsyncWrite + Unpin>(
    writer: FrameWriter<W>,
    queue: Queue,
    heartbeat: Option<Duration>,
) -> std::io::Result<()> {
    drive(&Mutex::new(writer), queue, heartbeat).await
}

/// Sends every frame that arrives on `queue` until all its senders are gone or the last frame
/// is written, then shuts the write side down so the peer sees the end of the stream. After
/// `heartbeat` without a frame to send, sends a ping, so that the peer knows this side is
/// alive. Meanwhile the tasks that queue frames may write a lone call's frame straight through
/// while the writer is idle ([`Outbox`](super::Outbox) decides when).
///
/// Not an `async fn`: one would keep room for `writer` in its state for as long as it runs,
/// though the writer moves out at once, and the task that runs it lives as long as its
/// connection.
pub(crate) fn write_frames_through<W: AsyncWrite + Unpin + Send + 'static>(
    writer: FrameWriter<W>,
    queue: Queue,
    heartbeat: Option<Duration>,
) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
    let calls = writer.calls.clone();
    let wire = Arc::new(Mutex::new(writer));
    if let Some(calls) = calls {
        queue.write_through(Arc::downgrade(&wire) as Weak<dyn WriteThrough>, calls);
    }
    async move { drive(&wire, queue, heartbeat).await }
}

/// The writer, shared with the tasks that write straight through it. Behind `futures`' mutex,
/// not tokio's: a lone call's frame takes and releases it on each end of every call, and
/// tokio's release locks its waiter list each time (about 210 of a sequential call's 16,400
/// instructions); this one's is one atomic operation while nobody waits, and only the writer
/// task ever waits for it.
impl<W: AsyncWrite + Unpin + Send> WriteThrough for Mutex<FrameWriter<W>> {
    fn if_idle(&self, write: &mut dyn FnMut(&mut dyn WriteNow)) {
        if let Some(mut writer) = self.try_lock() {
            write(&mut *writer);
        }
    }
}

impl<W: AsyncWrite + Unpin> WriteNow for FrameWriter<W> {
    fn write_now(&mut self, bytes: &[u8]) -> Option<WroteNow> {
        FrameWriter::write_now(self, bytes)
    }

    fn write_large_now(&mut self, frame: &Frame) -> Option<WroteNow> {
        FrameWriter::write_large_now(self, frame)
    }

    fn write_gathered_now(
        &mut self,
        gather: &mut dyn FnMut(&mut Vec<u8>) -> bool,
    ) -> Option<WroteNow> {
        FrameWriter::write_gathered_now(self, gather)
    }
}

/// The writer's loop. It takes entries from the queue only while it holds `wire`, so that a
/// frame written straight through never overtakes one queued before it.
async fn drive<W: AsyncWrite + Unpin>(
    wire: &Mutex<FrameWriter<W>>,
    mut queue: Queue,
    heartbeat: Option<Duration>,
) -> std::io::Result<()> {
    let result = write_queued(wire, &mut queue, heartbeat).await;
    wire.lock().await.closed = true;
    result
}

async fn write_queued<W: AsyncWrite + Unpin>(
    wire: &Mutex<FrameWriter<W>>,
    queue: &mut Queue,
    heartbeat: Option<Duration>,
) -> std::io::Result<()> {
    // One timer for the connection's life, re-armed only when it fires: then, if something was
    // written since it was armed, it is set to the interval after that write; if not, the side
    // has been silent for the whole interval and a ping goes out. (A timer reset at every write
    // would cost a timer-wheel update per batch.)
    let mut ping = heartbeat.map(|interval| (interval, Box::pin(tokio::time::sleep(interval))));
    loop {
        let ready = match &mut ping {
            None => queue.ready().await,
            Some((interval, timer)) => tokio::select! {
                biased;
                ready = queue.ready() => ready,
                () = timer.as_mut() => {
                    let mut writer = wire.lock().await;
                    let due = alarm::after(writer.last_write, *interval);
                    if due <= Instant::now() {
                        writer.send(&Head::Ping.frame().into()).await?;
                        writer.last_write = Instant::now();
                        timer.as_mut().reset(alarm::after(writer.last_write, *interval));
                    } else {
                        timer.as_mut().reset(due);
                    }
                    continue;
                }
            },
        };
        let mut writer = wire.lock().await;
        if !ready {
            return writer.io.shutdown().await;
        }
        if queue.len() == 1 && !writer.lone_call() {
            // The task that queued this frame woke the writer, which the runtime then runs at
            // once, before the other tasks that are about to queue theirs. Letting them run
            // first gathers their frames into this write: one write for many frames costs far
            // less than one each. Not for a lone call: nobody else is about to queue a
            // frame, and on a multi-thread runtime the turn can hand the writer to another
            // thread, a wakeup on every call. (Without the turn, across two processes on a
            // two-core VM where a thread's wakeup is dear: 224–234k calls/s with 32 callers
            // against 304–329k with it, and 267–341k with 256 against 876k–1.05M, interleaved.)
            crate::task::take_turn().await;
        }
        let Some(first) = queue.try_recv() else {
            continue;
        };
        let last = writer.send_queued(first, queue).await?;
        if ping.is_some() {
            writer.last_write = Instant::now();
        }
        if last {
            return writer.io.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::tests::frame;
    use crate::protocol::{FrameReader, Outbox};

    #[tokio::test]
    async fn coalesced_writes_keep_frame_order() {
        let (tx, rx) = tokio::io::duplex(1 << 20);
        let (outbox, queue) = Outbox::new();
        for i in 0..50u8 {
            assert!(outbox.send(frame(&[i; 3]), None));
        }
        assert!(outbox.send(frame(&[99; 20_000]), None));
        drop(outbox);
        write_frames(FrameWriter::new(tx), queue, None)
            .await
            .expect("writes");
        let mut reader = FrameReader::new(rx, 1 << 20);
        for i in 0..50u8 {
            assert_eq!(
                reader.next_frame().await.expect("frame").expect("some")[..],
                [i; 3]
            );
        }
        assert_eq!(
            reader
                .next_frame()
                .await
                .expect("frame")
                .expect("some")
                .len(),
            20_000
        );
        assert_eq!(reader.next_frame().await.expect("clean end"), None);
    }

    /// Queued requests are claimed from the table of waiting calls the outbox was given, in the
    /// order queued; one taken back before its turn leaves nothing on the wire.
    #[tokio::test]
    async fn queued_requests_are_claimed_from_the_table_of_waiting_calls() {
        /// Requests by call id, as a client's table of waiting calls keeps them.
        #[derive(Debug, Default)]
        struct Table(std::sync::Mutex<std::collections::HashMap<u64, Frame>>);
        impl crate::protocol::Claim for Table {
            fn claim(&self, id: u64) -> Option<Frame> {
                self.0.lock().expect("not poisoned").remove(&id)
            }
            fn claim_contiguous(&self, id: u64) -> Option<Frame> {
                self.claim(id)
            }
        }
        let table = Arc::new(Table::default());
        let (outbox, queue) = Outbox::new();
        outbox.claim_requests_from(Arc::clone(&table) as Arc<dyn crate::protocol::Claim>);
        for id in 1..=3u8 {
            let request = Frame::from(frame(&[id; 3]));
            table
                .0
                .lock()
                .expect("not poisoned")
                .insert(id.into(), request);
            assert!(outbox.send_request(id.into()));
        }
        assert!(
            table.0.lock().expect("not poisoned").remove(&2).is_some(),
            "taken back"
        );
        drop(outbox);
        let (tx, rx) = tokio::io::duplex(1 << 16);
        write_frames(FrameWriter::new(tx), queue, None)
            .await
            .expect("writes");
        let mut reader = FrameReader::new(rx, 1 << 16);
        for id in [1u8, 3] {
            let request = reader.next_frame().await.expect("frame").expect("some");
            assert_eq!(request[..], [id; 3]);
        }
        assert_eq!(reader.next_frame().await.expect("clean end"), None);
    }
}

#[cfg(test)]
mod write_tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_util::FutureExt;

    use super::*;
    use crate::Payload;
    use crate::protocol::{FrameReader, Outbox};
    use crate::protocol::{finish_frame, outgoing::SPLICE_MIN};

    /// A transport that takes at most `limit` bytes per write, gathered from as many slices as
    /// it is given (none at all, a write of zero bytes, with a limit of 0).
    pub(super) struct Trickle {
        pub(super) written: Vec<u8>,
        pub(super) limit: usize,
        /// How many bytes each write took.
        pub(super) writes: Vec<usize>,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            slices: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut taken = 0;
            for slice in slices {
                let take = slice.len().min(self.limit - taken);
                self.written.extend_from_slice(&slice[..take]);
                taken += take;
            }
            self.writes.push(taken);
            Poll::Ready(Ok(taken))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn spliced_frames_go_out_whole_and_in_order_through_partial_writes() {
        let big: Vec<u8> = (0..3 * SPLICE_MIN).map(|i| (i % 251) as u8).collect();
        let payload = Payload::from(big.clone());
        let (outbox, queue) = Outbox::new();
        for i in 0..3u8 {
            assert!(outbox.send(Head::Ping.frame(), None));
            let mut frame = Head::StreamItem { id: u64::from(i) }
                .begin_frame()
                .expect("encodes");
            frame.append(&(i, &payload, i)).expect("encodes");
            assert!(frame.contiguous().is_none(), "the payload is spliced in");
            finish_frame(&mut frame, 1 << 20).expect("fits");
            assert!(outbox.send(frame, None));
        }
        drop(outbox);
        let mut io = Trickle {
            written: Vec::new(),
            limit: 1000,
            writes: Vec::new(),
        };
        write_frames(FrameWriter::new(&mut io), queue, None)
            .await
            .expect("writes");

        let mut reader = FrameReader::new(&io.written[..], 1 << 20);
        for i in 0..3u8 {
            let ping = reader.next_frame().await.expect("reads").expect("a ping");
            assert_eq!(ping[..], [0x04]);
            let item = reader.next_frame().await.expect("reads").expect("an item");
            let (head, rest) = Head::decode(&item).expect("a head");
            assert!(matches!(head, Head::StreamItem { id } if id == u64::from(i)));
            let (first, bytes, last): (u8, Payload, u8) =
                postcard::from_bytes(rest).expect("the item");
            assert_eq!((first, last), (i, i));
            assert_eq!(&bytes[..], &big[..]);
        }
        assert_eq!(reader.next_frame().await.expect("clean end"), None);
    }

    /// How many bytes each write took when a writer sent all of `queue` to a transport that
    /// takes whatever it is given.
    async fn writes_of(queue: Queue) -> Vec<usize> {
        let mut io = trickle();
        write_frames(FrameWriter::new(&mut io), queue, None)
            .await
            .expect("writes");
        io.writes
    }

    #[tokio::test]
    async fn frames_queued_together_go_out_in_one_write() {
        let (outbox, queue) = Outbox::new();
        for id in 0..10 {
            assert!(outbox.send(Head::Cancel { id }.frame(), None));
        }
        drop(outbox);
        let frame_len = Head::Cancel { id: 0 }.frame().len();
        assert_eq!(writes_of(queue).await, [10 * frame_len]);
    }

    /// Small frames are copied together until a write holds 64 KiB or more: 200 frames of 504
    /// bytes go out as a write of 131 frames (66,024 bytes), then one of the other 69.
    #[tokio::test]
    async fn small_frames_are_gathered_up_to_64_kib_a_write() {
        let (outbox, queue) = Outbox::new();
        let small = crate::protocol::frame::tests::frame(&[7; 500]);
        for _ in 0..200 {
            assert!(outbox.send(small.clone(), None));
        }
        drop(outbox);
        let first = COALESCE_LIMIT.div_ceil(small.len());
        assert_eq!(first, 131);
        assert_eq!(
            writes_of(queue).await,
            [first * small.len(), (200 - first) * small.len()]
        );
    }

    /// The writes a writer makes when one frame is queued, the writer has a turn, then four
    /// more are queued; `in_flight` of the connection's 8 call slots are held.
    async fn writes_around_a_turn(in_flight: u32) -> Vec<usize> {
        let slots = CallSlots::new(8);
        let _held: Vec<_> = (0..in_flight)
            .map(|_| slots.try_take().expect("a slot"))
            .collect();
        let (outbox, queue) = Outbox::new();
        let mut io = trickle();
        let mut writer = FrameWriter::new(&mut io);
        writer.watch_calls(slots);
        let mut writing = Box::pin(write_frames(writer, queue, None));
        assert!(outbox.send(Head::Cancel { id: 0 }.frame(), None));
        // The writer's turn: it either writes the frame or waits for another turn.
        assert!(writing.as_mut().now_or_never().is_none());
        for id in 1..5 {
            assert!(outbox.send(Head::Cancel { id }.frame(), None));
        }
        drop(outbox);
        writing.await.expect("writes");
        io.writes
    }

    /// Has `writer` send all of `queue` in one go, as its loop does when woken; returns how
    /// much memory its batch buffer holds after.
    async fn sent_by(mut writer: FrameWriter<&mut Trickle>, mut queue: Queue) -> usize {
        let first = queue.try_recv().expect("a frame is queued");
        writer.send_queued(first, &mut queue).await.expect("writes");
        assert!(queue.try_recv().is_none(), "everything was sent");
        writer.batch.capacity()
    }

    /// A transport that takes whatever it is given.
    fn trickle() -> Trickle {
        Trickle {
            written: Vec::new(),
            limit: usize::MAX,
            writes: Vec::new(),
        }
    }

    /// Straight through, a frame goes out in as many writes as the transport needs and no more:
    /// not one of nothing after its last byte.
    #[tokio::test]
    async fn a_frame_written_now_takes_the_writes_the_transport_needs() {
        let mut io = Trickle {
            written: Vec::new(),
            limit: 3,
            writes: Vec::new(),
        };
        let mut writer = FrameWriter::new(&mut io);
        let wrote = writer.write_now(&[1; 10]).expect("written");
        assert!(wrote.rest.is_none(), "all 10 bytes taken");
        assert!(wrote.flushed);
        drop(writer);
        assert_eq!(io.writes, [3, 3, 3, 1]);
        assert_eq!(io.written, [1; 10]);
    }

    /// Frames of 8 KiB are small: four queued together are copied into the batch and go out in
    /// one write.
    #[tokio::test]
    async fn frames_of_eight_kib_are_gathered() {
        let frame = crate::protocol::frame::tests::frame(&[7; 8 * 1024 - 4]);
        let (outbox, queue) = Outbox::new();
        for _ in 0..4 {
            assert!(outbox.send(frame.clone(), None));
        }
        let mut io = trickle();
        let kept = sent_by(FrameWriter::new(&mut io), queue).await;
        assert!(
            kept >= 2 * frame.len(),
            "copied into the batch ({kept} bytes)"
        );
        assert_eq!(io.writes, [4 * frame.len()]);
        assert_eq!(io.written, frame.repeat(4));
    }

    /// A frame of `COALESCE_BELOW` bytes or more, and a frame with nothing else to go with it,
    /// are written from their own memory: copying them into the batch would cost a copy of
    /// every large payload and keep that much memory in the batch.
    #[tokio::test]
    async fn a_large_or_lone_frame_is_written_from_its_own_memory() {
        let large = crate::protocol::frame::tests::frame(&[7; COALESCE_BELOW - 4]);
        assert_eq!(large.len(), COALESCE_BELOW);
        let small = Head::Cancel { id: 1 }.frame();
        let (outbox, queue) = Outbox::new();
        assert!(outbox.send(large.clone(), None));
        assert!(outbox.send(small.clone(), None));
        let mut io = trickle();
        assert_eq!(sent_by(FrameWriter::new(&mut io), queue).await, 0);
        assert_eq!(io.written, [large, small.clone()].concat());

        let (outbox, queue) = Outbox::new();
        assert!(outbox.send(small.clone(), None));
        let mut io = trickle();
        assert_eq!(sent_by(FrameWriter::new(&mut io), queue).await, 0);
        assert_eq!(io.written, small);
    }

    /// The batch buffer keeps its memory between sends up to twice the coalescing limit, which
    /// is all that gathering small frames can ask of it; more is given back after the send.
    #[tokio::test]
    async fn a_batch_keeps_its_memory_only_up_to_twice_the_coalescing_limit() {
        for (capacity, kept) in [
            (2 * COALESCE_LIMIT, 2 * COALESCE_LIMIT),
            (2 * COALESCE_LIMIT + 1, 0),
        ] {
            let (outbox, queue) = Outbox::new();
            assert!(outbox.send(Head::Cancel { id: 1 }.frame(), None));
            let mut io = trickle();
            let mut writer = FrameWriter::new(&mut io);
            writer.batch = Vec::with_capacity(capacity);
            assert_eq!(writer.batch.capacity(), capacity);
            assert_eq!(sent_by(writer, queue).await, kept, "from {capacity} bytes");
        }
    }

    #[tokio::test]
    async fn a_lone_calls_frame_goes_out_without_waiting_for_others() {
        let frame_len = Head::Cancel { id: 0 }.frame().len();
        let lone = writes_around_a_turn(1).await;
        assert_eq!(lone[0], frame_len, "written before the others were queued");
        let busy = writes_around_a_turn(2).await;
        assert_eq!(
            busy,
            [5 * frame_len],
            "with calls in flight, the writer waits a turn and gathers the others"
        );
    }
}

#[cfg(test)]
mod keepalive_tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::{FrameReader, Outbox};

    /// Fails a test that would otherwise wait for ever: a guard, not a measure of speed
    /// (under paused time, only virtual time passes).
    async fn within<T>(work: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(600), work)
            .await
            .expect("did not hang")
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_writer_pings_once_per_interval_of_silence() {
        let (tx, rx) = tokio::io::duplex(1024);
        let (outbox, queue) = Outbox::new();
        let interval = Duration::from_millis(500);
        let writer = tokio::spawn(write_frames(FrameWriter::new(tx), queue, Some(interval)));
        let mut reader = FrameReader::new(rx, 1024);
        let started = Instant::now();
        for n in 1..=4u32 {
            let ping = within(reader.next_frame())
                .await
                .expect("frame")
                .expect("some");
            assert_eq!(ping[..], [0x04]);
            assert_eq!(started.elapsed(), interval * n, "ping {n}");
        }
        // A frame resets the silence: the next ping comes an interval after it.
        tokio::time::sleep(interval / 5).await;
        assert!(outbox.send(Head::Cancel { id: 1 }.frame(), None));
        let cancel = within(reader.next_frame())
            .await
            .expect("frame")
            .expect("some");
        assert_eq!(cancel[..], [0x03, 0x01]);
        let sent = Instant::now();
        let ping = within(reader.next_frame())
            .await
            .expect("frame")
            .expect("some");
        assert_eq!(ping[..], [0x04]);
        assert_eq!(sent.elapsed(), interval);
        drop(outbox);
        within(writer)
            .await
            .expect("joins")
            .expect("closes cleanly");
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_whose_peer_reads_nothing_fails_after_its_limit() {
        let (tx, _rx) = tokio::io::duplex(64);
        let (outbox, queue) = Outbox::new();
        let mut writer = FrameWriter::new(tx);
        writer.set_stall_limit(Some(Duration::from_secs(45)));
        let writing = tokio::spawn(write_frames(writer, queue, None));
        assert!(outbox.send(vec![0u8; 4096], None));
        let error = within(writing).await.expect("joins").expect_err("stalled");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(outbox.meter().queued(), 0, "what was queued is freed");
    }

    #[tokio::test]
    async fn the_last_frame_ends_the_writer_and_nothing_after_it_is_sent() {
        let (tx, rx) = tokio::io::duplex(1024);
        let (outbox, queue) = Outbox::new();
        assert!(outbox.send(Head::Cancel { id: 1 }.frame(), None));
        assert!(outbox.send_last(Head::Ping.frame()));
        assert!(outbox.send(Head::Cancel { id: 2 }.frame(), None));
        within(write_frames(FrameWriter::new(tx), queue, None))
            .await
            .expect("writes");
        let mut reader = FrameReader::new(rx, 1024);
        assert_eq!(
            within(reader.next_frame()).await.expect("frame"),
            Some(Bytes::from_static(&[0x03, 0x01]))
        );
        assert_eq!(
            within(reader.next_frame()).await.expect("frame"),
            Some(Bytes::from_static(&[0x04]))
        );
        assert_eq!(within(reader.next_frame()).await.expect("the end"), None);
    }
}

#[cfg(test)]
pub(super) mod through_tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::Ordering;
    use std::task::{Context, Waker};

    use crate::slots::{CallSlot, CallSlots};
    use crate::task::Wakes;
    use futures_util::FutureExt;
    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::write_tests::Trickle;
    use super::*;
    use crate::protocol::{FrameReader, Outbox, StreamFrames, codec, frame};

    type Writing = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;

    /// A connection's writer, polled once so that it waits idle, with 8 call slots of which
    /// one is held; its peer reads from a pipe.
    struct Idle {
        outbox: Outbox,
        writing: Writing,
        wakes: Arc<Wakes>,
        peer: DuplexStream,
        slots: Arc<CallSlots>,
        _call: CallSlot,
    }

    impl Idle {
        /// Over a pipe of `room` bytes.
        async fn new(room: usize) -> Idle {
            let (io, peer) = tokio::io::duplex(room);
            Self::over(io, peer).await
        }

        async fn over<W>(io: W, peer: DuplexStream) -> Idle
        where
            W: AsyncWrite + Unpin + Send + 'static,
        {
            let slots = CallSlots::new(8);
            let call = slots.try_take().expect("a slot");
            let (outbox, queue) = Outbox::new();
            let mut writer = FrameWriter::new(io);
            writer.watch_calls(Arc::clone(&slots));
            let mut idle = Idle {
                outbox,
                writing: Box::pin(write_frames_through(writer, queue, None)),
                wakes: Arc::default(),
                peer,
                slots,
                _call: call,
            };
            assert!(idle.poll_writer().is_pending(), "nothing to write yet");
            idle
        }

        fn poll_writer(&mut self) -> Poll<std::io::Result<()>> {
            let waker = Waker::from(Arc::clone(&self.wakes));
            self.writing.as_mut().poll(&mut Context::from_waker(&waker))
        }

        fn wakes(&self) -> usize {
            self.wakes.0.load(Ordering::SeqCst)
        }

        /// The bytes the peer receives while the writer is polled, until it has `len`.
        fn received_with_the_writer(&mut self, len: usize) -> Vec<u8> {
            let mut received = self.received();
            while received.len() < len {
                assert!(self.poll_writer().is_pending());
                received.extend(self.received());
            }
            received
        }

        /// The bytes the peer has received so far (read outside tokio's budget for a task,
        /// which a test reading a large frame would spend).
        fn received(&mut self) -> Vec<u8> {
            let mut received = Vec::new();
            let mut buf = [0u8; 256];
            loop {
                let read = tokio::task::unconstrained(self.peer.read(&mut buf)).now_or_never();
                match read {
                    Some(Ok(read)) if read > 0 => received.extend_from_slice(&buf[..read]),
                    _ => return received,
                }
            }
        }
    }

    fn cancel(id: u64) -> Vec<u8> {
        Head::Cancel { id }.frame()
    }

    #[tokio::test]
    async fn a_lone_calls_frame_goes_straight_through_without_waking_the_writer() {
        let mut idle = Idle::new(1024).await;
        assert!(idle.outbox.send(cancel(1), None));
        assert_eq!(idle.received(), cancel(1), "written at once");
        assert_eq!(idle.wakes(), 0, "by the task that queued it");
        assert_eq!(idle.outbox.meter().queued(), 0);

        // A stream's item is claimed and written the same way.
        let items = StreamFrames::new(&idle.outbox);
        assert!(items.send(&idle.outbox, Frame::from(cancel(2))));
        assert_eq!(idle.received(), cancel(2));
        assert_eq!(idle.wakes(), 0);
        assert_eq!(idle.outbox.meter().queued(), 0, "the item is uncounted");
    }

    #[tokio::test]
    async fn frames_go_to_the_writer_while_calls_are_many() {
        let mut idle = Idle::new(1024).await;
        let second = idle.slots.try_take();
        assert!(idle.outbox.send(cancel(1), None));
        assert!(idle.received().is_empty(), "two calls in flight: queued");
        assert_eq!(idle.wakes(), 1, "for the writer");
        // Its turn, then (the writer waits one more for the other call's frame) the write.
        assert!(idle.poll_writer().is_pending());
        assert!(idle.poll_writer().is_pending());
        assert_eq!(idle.received(), cancel(1));
        drop(second);
        assert!(idle.outbox.send(cancel(2), None));
        assert_eq!(idle.received(), cancel(2), "straight through again");
    }

    /// Frames gathered while more are coming go out together in one write, made by the task
    /// that gathered them when it is done: the writer is not woken for them.
    #[tokio::test]
    async fn gathered_frames_go_out_in_one_write_without_waking_the_writer() {
        let mut idle = Idle::new(1024).await;
        let outbox = idle.outbox.clone();
        let gathering = outbox.gather();
        for id in 1..=3 {
            assert!(idle.outbox.send(cancel(id), None));
        }
        assert!(idle.received().is_empty(), "gathered");
        let queued = cancel(1).len() + crate::protocol::outbox::ENTRY_OVERHEAD;
        assert_eq!(idle.outbox.meter().queued(), 3 * queued);
        drop(gathering);
        assert_eq!(idle.received(), [cancel(1), cancel(2), cancel(3)].concat());
        assert_eq!(idle.wakes(), 0, "written by the task that gathered them");
        assert_eq!(idle.outbox.meter().queued(), 0, "and uncounted");
        assert!(idle.poll_writer().is_pending(), "the writer still waits");
        assert!(idle.outbox.send(cancel(4), None));
        assert_eq!(idle.received(), cancel(4), "straight through again");
        assert_eq!(idle.wakes(), 0);
    }

    /// What the transport does not take of a gathered write goes first in line, for the
    /// writer, ahead of anything queued after.
    #[tokio::test]
    async fn what_the_transport_does_not_take_of_a_gathered_write_goes_to_the_writer() {
        let mut idle = Idle::new(8).await;
        let outbox = idle.outbox.clone();
        let gathering = outbox.gather();
        for id in 1..=5 {
            assert!(outbox.send(cancel(id), None));
        }
        drop(gathering);
        assert_eq!(idle.wakes(), 1, "the writer is woken for the rest");
        assert!(outbox.send(cancel(6), None));
        let expected: Vec<u8> = (1..=6).flat_map(cancel).collect();
        assert_eq!(idle.received_with_the_writer(expected.len()), expected);
        assert_eq!(outbox.meter().queued(), 0);
    }

    /// An entry the writer has to claim (a stream's item) or a large frame among those
    /// gathered leaves them all to the writer, woken once gathering ends.
    #[tokio::test]
    async fn gathered_frames_with_a_claim_or_a_large_frame_go_to_the_writer() {
        let large = crate::protocol::frame::tests::frame(&vec![7; COALESCE_BELOW]);
        let mut idle = Idle::new(1 << 20).await;
        let items = StreamFrames::new(&idle.outbox);
        for last in [cancel(3), large] {
            let gathering = idle.outbox.gather();
            assert!(idle.outbox.send(cancel(1), None));
            assert!(items.send(&idle.outbox, Frame::from(last.clone())));
            assert_eq!(idle.wakes(), 0, "not while gathering");
            drop(gathering);
            assert!(idle.received().is_empty(), "left to the writer");
            assert_eq!(idle.wakes(), 1, "woken once gathering ends");
            assert!(idle.poll_writer().is_pending());
            assert_eq!(idle.received(), [cancel(1), last].concat());
            idle.wakes.0.store(0, Ordering::SeqCst);
        }
    }

    /// A writer busy when gathering ends is not disturbed: it takes the gathered frames
    /// after what it is writing.
    #[tokio::test]
    async fn frames_gathered_while_the_writer_is_busy_follow_what_it_writes() {
        let first = Head::go_away(0, "a message long enough to fill the pipe").frame();
        let mut idle = Idle::new(8).await;
        assert!(idle.outbox.send(first.clone(), None));
        assert_eq!(
            idle.wakes(),
            1,
            "the writer is woken for the rest of the first"
        );
        let gathering = idle.outbox.gather();
        assert!(idle.outbox.send(cancel(2), None));
        drop(gathering);
        assert_eq!(idle.wakes(), 1, "already woken");
        let expected = [first, cancel(2)].concat();
        assert_eq!(idle.received_with_the_writer(expected.len()), expected);
    }

    /// A frame too large to copy aside, but not large, goes to the writer while calls are few.
    #[tokio::test]
    async fn a_frame_too_large_to_copy_aside_goes_to_the_writer() {
        let mut idle = Idle::new(1 << 20).await;
        let large = crate::protocol::frame::tests::frame(&vec![7; COALESCE_BELOW]);
        assert!(idle.outbox.send(large.clone(), None));
        assert!(idle.received().is_empty(), "queued");
        assert_eq!(idle.wakes(), 1, "for the writer");
        assert!(idle.poll_writer().is_pending());
        assert_eq!(idle.received(), large);
    }

    /// A large frame goes straight through an idle writer however many calls are in flight,
    /// and gives back the slot of the call it answers once written.
    #[tokio::test]
    async fn a_large_frame_goes_straight_through_whatever_the_calls_in_flight() {
        let mut idle = Idle::new(1 << 20).await;
        let _second = idle.slots.try_take().expect("a slot");
        let answered = idle.slots.try_take().expect("a slot");
        let large = crate::protocol::frame::tests::frame(&vec![7; frame::LARGE_FRAME]);
        assert!(idle.outbox.send(large.clone(), Some(answered)));
        assert_eq!(idle.wakes(), 0, "written by the task that queued it");
        assert_eq!(
            idle.outbox.meter().queued(),
            0,
            "nothing left to the writer"
        );
        assert_eq!(idle.slots.taken(), 2, "the answered call's slot is back");
        let received = idle.received_with_the_writer(large.len());
        assert!(received == large, "the frame, whole");
    }

    /// What the transport does not take of a large frame written straight through goes first
    /// in line to the writer, its spliced payload shared rather than copied, with the slot of
    /// the call it answers, which comes back once the writer has written it.
    #[tokio::test]
    async fn the_rest_of_a_large_frame_goes_to_the_writer_with_its_slot() {
        let mut idle = Idle::new(frame::LARGE_FRAME / 4).await;
        let answered = idle.slots.try_take().expect("a slot");
        let payload = crate::Payload::from(vec![7u8; frame::LARGE_FRAME]);
        let mut large = Frame::from(Head::Cancel { id: 1 }.frame());
        large.append(&payload).expect("encodes");
        let mut expected = Head::Cancel { id: 1 }.frame();
        codec::append(&payload, &mut expected).expect("encodes");
        assert!(idle.outbox.send(large, Some(answered)));
        let mut received = idle.received();
        assert!(!received.is_empty(), "a part written at once");
        assert!(received.len() < expected.len(), "and only a part");
        assert_eq!(idle.wakes(), 1, "the writer is woken for the rest");
        assert_eq!(idle.slots.taken(), 2, "held with the rest");
        assert!(idle.outbox.send(cancel(2), None));
        expected.extend(cancel(2));
        received.extend(idle.received_with_the_writer(expected.len() - received.len()));
        assert!(received == expected, "the rest of the frame, then the next");
        assert_eq!(idle.slots.taken(), 1, "given back once written");
    }

    #[tokio::test]
    async fn a_frame_never_overtakes_one_queued_before_it() {
        let large = crate::protocol::frame::tests::frame(&vec![7; COALESCE_BELOW]);
        let mut idle = Idle::new(1 << 20).await;
        assert!(idle.outbox.send(large.clone(), None));
        assert!(idle.outbox.send(cancel(2), None));
        assert!(
            idle.received().is_empty(),
            "behind the first, for the writer"
        );
        assert!(idle.poll_writer().is_pending());
        assert_eq!(idle.received(), [large, cancel(2)].concat());
    }

    #[tokio::test]
    async fn what_the_transport_does_not_take_goes_first_to_the_writer() {
        let first = Head::go_away(0, "a message long enough to fill the pipe").frame();
        let idle = Idle::new(8).await;
        assert!(idle.outbox.send(first.clone(), None));
        assert_eq!(idle.wakes(), 1, "the writer is woken for the rest");
        assert!(idle.outbox.send(cancel(2), None));
        drop(idle.outbox);
        let writing = idle.writing;
        let mut peer = idle.peer;
        let reading = async move {
            let mut received = Vec::new();
            peer.read_to_end(&mut received).await.map(|_| received)
        };
        let (written, received) = tokio::join!(within(writing), within(reading));
        written.expect("writes");
        assert_eq!(
            received.expect("reads"),
            [first, cancel(2)].concat(),
            "the rest of the first frame, then the second"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_written_straight_through_puts_off_the_next_ping() {
        let slots = CallSlots::new(8);
        let _call = slots.try_take().expect("a slot");
        let (outbox, queue) = Outbox::new();
        let (io, peer) = tokio::io::duplex(1024);
        let mut writer = FrameWriter::new(io);
        writer.watch_calls(slots);
        let interval = Duration::from_secs(10);
        let writing = tokio::spawn(write_frames_through(writer, queue, Some(interval)));
        // The writer has started and waits idle; the frame goes straight through.
        tokio::time::sleep(interval * 6 / 10).await;
        assert!(outbox.send(cancel(1), None));
        let sent = Instant::now();
        let mut reader = FrameReader::new(peer, 1024);
        // Guards against waiting for ever; under paused time only virtual time passes.
        let guard = Duration::from_secs(600);
        let frame = tokio::time::timeout(guard, reader.next_frame()).await;
        assert_eq!(
            frame.expect("in time").expect("read"),
            Some(cancel(1)[4..].to_vec().into())
        );
        let frame = tokio::time::timeout(guard, reader.next_frame()).await;
        assert_eq!(
            frame.expect("in time").expect("read"),
            Some(vec![0x04].into()),
            "a ping"
        );
        assert_eq!(
            sent.elapsed(),
            interval,
            "an interval after the frame, not before"
        );
        drop(outbox);
        writing.await.expect("joins").expect("closes cleanly");
    }

    #[tokio::test]
    async fn a_transport_that_takes_nothing_leaves_the_frame_to_the_writer() {
        let (_, peer) = tokio::io::duplex(8);
        let takes_nothing = Trickle {
            written: Vec::new(),
            limit: 0,
            writes: Vec::new(),
        };
        let mut idle = Idle::over(takes_nothing, peer).await;
        assert!(idle.outbox.send(cancel(1), None), "queued, not lost");
        assert_eq!(idle.wakes(), 1, "for the writer");
        let error = match idle.poll_writer() {
            Poll::Ready(result) => result.expect_err("the writer meets the failure"),
            Poll::Pending => panic!("the writer wrote nothing and ended"),
        };
        assert_eq!(error.kind(), std::io::ErrorKind::WriteZero);
    }

    /// A transport that, like TLS, keeps what it is given until flushed, and flushes only once
    /// `flushing` is set.
    struct Buffering {
        kept: Vec<u8>,
        flushing: Arc<std::sync::atomic::AtomicBool>,
        peer: DuplexStream,
    }

    impl AsyncWrite for Buffering {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.kept.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            if !self.flushing.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
            let this = &mut *self;
            while !this.kept.is_empty() {
                let written =
                    std::task::ready!(Pin::new(&mut this.peer).poll_write(cx, &this.kept))?;
                this.kept.drain(..written);
            }
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.poll_flush(cx)
        }
    }

    #[tokio::test]
    async fn a_frame_written_through_a_buffering_transport_is_flushed_by_the_writer() {
        let (io, peer) = tokio::io::duplex(1024);
        let flushing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let buffering = Buffering {
            kept: Vec::new(),
            flushing: Arc::clone(&flushing),
            peer: io,
        };
        let mut idle = Idle::over(buffering, peer).await;
        assert!(idle.outbox.send(cancel(1), None));
        assert!(idle.received().is_empty(), "kept by the transport");
        assert_eq!(idle.wakes(), 1, "the writer is woken to flush");
        flushing.store(true, Ordering::SeqCst);
        assert!(idle.poll_writer().is_pending());
        assert_eq!(idle.received(), cancel(1), "flushed");
    }

    async fn within<T>(work: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .expect("done in time")
    }
}
