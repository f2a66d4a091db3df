//! Reading and writing length-prefixed frames.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

use super::outbox::{Item, Outgoing, Queue, WriteNow, WriteThrough};
use super::stall::StallGuard;
use super::{Frame, Head, LENGTH_PREFIX};
use crate::RpcError;
use crate::telemetry::Traffic;

/// The least room a read makes: small frames arrive many to a read.
pub(super) const MIN_READ: usize = 1024;

/// A read with less room than this left in the buffer makes room first; with more, it reads
/// into what is left, so that one allocation serves many small frames.
const SMALL_ROOM: usize = 256;

/// How much room a read makes at most on the word of a length prefix that passed the limit
/// check. Beyond it the buffer grows with the bytes that actually arrive, at most doubling
/// them, or up to the largest frame the peer has already sent in full; never to a number the
/// peer merely claimed.
pub(super) const READ_CHUNK: usize = 256 * 1024;

/// A read buffer up to this size is kept between frames whatever happens.
const IDLE_BUFFER_KEEP: usize = 2 * MIN_READ;

/// A larger buffer, left by a large frame, is kept for the next one while the connection is
/// busy, and given up once the connection has been quiet this long: reallocating it for every
/// frame costs more than the frame's own copy, holding it while idle costs memory.
const LARGE_BUFFER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Frames smaller than this are copied together into one write; larger ones go out directly.
const COALESCE_BELOW: usize = 16 * 1024;

/// The most bytes gathered into one coalesced write.
const COALESCE_LIMIT: usize = 64 * 1024;

/// Reads frames from a byte stream.
#[derive(Debug)]
pub(crate) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    max_frame_len: usize,
    silence_limit: Option<Duration>,
    /// A large frame passed through `buf`, whose allocation the (empty-looking) buffer may
    /// still hold for reuse.
    holds_large: bool,
    /// When the last read returned bytes: when the frames it completed arrived, near enough
    /// for deadlines and idleness, for one clock reading per read rather than per frame.
    last_read: Instant,
    /// The largest frame read in full so far. Room for a frame up to this size is made at once:
    /// the peer has shown it sends such frames, and making room for one in steps would copy the
    /// bytes received so far at every step.
    largest_delivered: usize,
    /// Where the bytes read are counted, once the connection is established.
    traffic: Option<Traffic>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, max_frame_len: usize) -> Self {
        FrameReader {
            io,
            buf: BytesMut::new(),
            max_frame_len,
            silence_limit: None,
            holds_large: false,
            last_read: Instant::now(),
            largest_delivered: 0,
            traffic: None,
        }
    }

    /// Counts the bytes read from here on in `traffic`.
    pub(crate) fn count_traffic(&mut self, traffic: Traffic) {
        self.traffic = Some(traffic);
    }

    /// Fails a read that waits longer than `limit` for the next bytes: the peer is presumed dead.
    /// A live peer sends a ping at least every keep-alive interval, so it is never silent that
    /// long.
    pub(crate) fn set_silence_limit(&mut self, limit: Option<Duration>) {
        self.silence_limit = limit;
    }

    /// Reads what has arrived into the buffer: `Some(0)` at the end of the stream, `None` if a
    /// large, empty buffer was given up after a quiet spell instead.
    async fn read_more(&mut self) -> Result<Option<usize>, RpcError> {
        let read = async {
            if self.buf.is_empty() && self.holds_large {
                tokio::select! {
                    read = self.io.read_buf(&mut self.buf) => read.map(Some),
                    () = tokio::time::sleep(LARGE_BUFFER_IDLE) => {
                        self.buf = BytesMut::new();
                        self.holds_large = false;
                        Ok(None)
                    }
                }
            } else {
                self.io.read_buf(&mut self.buf).await.map(Some)
            }
        };
        Ok(match self.silence_limit {
            None => read.await?,
            Some(limit) => tokio::time::timeout(limit, read)
                .await
                .map_err(|_| RpcError::KeepaliveTimeout(limit))??,
        })
    }

    /// Reads and drops what the peer still sends, up to `limit` bytes, until it closes its
    /// direction or the stream fails. For a connection being closed: closing a socket with
    /// unread bytes resets it, and a reset can destroy what the peer has not read yet.
    pub(crate) async fn discard_until_end(&mut self, limit: usize) {
        self.buf = BytesMut::new();
        let mut sink = [0; MIN_READ];
        let mut left = limit;
        while left > 0 {
            match self.io.read(&mut sink[..left.min(MIN_READ)]).await {
                Ok(0) | Err(_) => return,
                Ok(read) => left -= read,
            }
        }
    }

    /// The room the read buffer holds.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Changes the largest payload accepted from here on.
    pub(crate) fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.max_frame_len = max_frame_len;
    }

    /// Reads the next frame's payload. `Ok(None)` means the peer closed the stream cleanly,
    /// between frames.
    ///
    /// Cancel safe: bytes read so far stay buffered for the next call.
    pub(crate) async fn next_frame(&mut self) -> Result<Option<Bytes>, RpcError> {
        loop {
            let wanted = if let Some(size) = length_prefix(&self.buf) {
                if size > self.max_frame_len {
                    return Err(RpcError::FrameTooLarge {
                        size: size as u64,
                        limit: self.max_frame_len as u64,
                    });
                }
                let needed = LENGTH_PREFIX + size;
                if self.buf.len() >= needed {
                    self.buf.advance(LENGTH_PREFIX);
                    let payload = self.buf.split_to(size).freeze();
                    self.delivered(size);
                    return Ok(Some(payload));
                }
                needed - self.buf.len()
            } else {
                LENGTH_PREFIX - self.buf.len()
            };
            let trusted = READ_CHUNK
                .max(self.buf.len())
                .max(LENGTH_PREFIX + self.largest_delivered);
            let room = wanted.min(trusted);
            // Frames handed on still share the buffer's memory, so making room means a new
            // allocation: it is done only when little room is left, and then for many frames.
            if self.buf.capacity() - self.buf.len() < room.max(SMALL_ROOM) {
                self.buf.reserve(room.max(MIN_READ));
            }
            let Some(read) = self.read_more().await? else {
                continue; // a large buffer was given up: make room again
            };
            if read == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(RpcError::Protocol(
                        "the stream ended in the middle of a frame".into(),
                    ))
                };
            }
            self.last_read = Instant::now();
            if let Some(traffic) = self.traffic {
                traffic.received(read);
            }
        }
    }
}

impl<R> FrameReader<R> {
    /// When the read that brought the last frame returned, or a later one: the frame had
    /// arrived by then.
    pub(crate) fn arrived(&self) -> Instant {
        self.last_read
    }

    /// Whether bytes past the last frame are already read: more frames, or the start of one.
    pub(crate) fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Whether what was read so far starts like a TLS record (a handshake or an alert): the peer
    /// speaks TLS where a frame was expected.
    pub(crate) fn starts_with_tls_record(&self) -> bool {
        matches!(self.buf.get(..3), Some([0x15 | 0x16, 0x03, 0x00..=0x04]))
    }

    /// Takes the frames already complete in the buffer, one after another from its start, whose
    /// payloads begin with `head` and whose payload lengths `accept` takes: the frames of one
    /// stream that came right behind the frame just read. They come whole, each with its length
    /// prefix, so that a stream of small items is handed on in one piece instead of item by
    /// item. `None` if the next frame is another's, incomplete, over the limit (the next read
    /// reports that), or refused by `accept` (the next read returns it on its own).
    pub(crate) fn take_run(
        &mut self,
        head: &[u8],
        mut accept: impl FnMut(usize) -> bool,
    ) -> Option<Bytes> {
        let mut end = 0;
        while let Some(size) = length_prefix(&self.buf[end..]) {
            let payload = end + LENGTH_PREFIX;
            if size > self.max_frame_len
                || self.buf.len() - payload < size
                || !same_start(&self.buf[payload..payload + size], head)
                || !accept(size)
            {
                break;
            }
            self.delivered(size);
            end = payload + size;
        }
        (end > 0).then(|| self.buf.split_to(end).freeze())
    }

    /// Notes a frame of `size` bytes handed on from the buffer.
    fn delivered(&mut self, size: usize) {
        self.holds_large |= size > IDLE_BUFFER_KEEP;
        self.largest_delivered = self.largest_delivered.max(size);
    }
}

/// The payload length the length prefix at the start of `bytes` says; `None` while fewer bytes
/// than a prefix are there.
pub(crate) fn length_prefix(bytes: &[u8]) -> Option<usize> {
    let prefix = bytes.first_chunk::<LENGTH_PREFIX>()?;
    Some(u32::from_be_bytes(*prefix) as usize)
}

/// Whether `bytes` starts with `head`: a few bytes, compared without a call to `memcmp`.
fn same_start(bytes: &[u8], head: &[u8]) -> bool {
    bytes.len() >= head.len() && bytes.iter().zip(head).all(|(a, b)| a == b)
}

/// Writes whole frames that are already encoded, length prefix included.
#[derive(Debug)]
pub(crate) struct FrameWriter<W> {
    io: StallGuard<W>,
    batch: Vec<u8>,
    /// The connection's call slots and how many there are, to tell when a single call is in
    /// flight: then nobody else is about to queue a frame, and the writer sends at once.
    calls: Option<(Arc<Semaphore>, usize)>,
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
        if let Some(traffic) = self.traffic {
            traffic.sent(bytes);
        }
    }

    /// Lets the writer see how many calls are in flight: `slots`, of which there are
    /// `capacity`, each held by one call.
    pub(crate) fn watch_calls(&mut self, slots: Arc<Semaphore>, capacity: usize) {
        self.calls = Some((slots, capacity));
    }

    /// Whether at most one call is in flight, as far as the writer was told.
    fn lone_call(&self) -> bool {
        self.calls.as_ref().is_some_and(|(slots, capacity)| {
            capacity.saturating_sub(slots.available_permits()) <= 1
        })
    }

    /// Writes what the transport takes of `bytes` at once, without waiting: a task queueing a
    /// frame while the writer is idle sends it this way, rather than waking the writer to. Only
    /// a small frame: a large one takes long to write whatever wakes the writer, and what the
    /// transport did not take at once would have to be copied aside. Returns how many bytes
    /// were taken and whether they are flushed; `None` when it took none, and the frame goes to
    /// the writer whole.
    pub(super) fn write_now(&mut self, bytes: &[u8]) -> Option<(usize, bool)> {
        if self.closed || bytes.len() >= COALESCE_BELOW {
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
        if written == 0 {
            return None;
        }
        let flushed =
            written == bytes.len() && matches!(io.poll_flush(&mut cx), Poll::Ready(Ok(())));
        self.sent(written);
        self.last_write = Instant::now();
        Some((written, flushed))
    }

    /// Fails a write that makes no progress for `limit`: the peer stopped reading.
    pub(crate) fn set_stall_limit(&mut self, limit: Option<Duration>) {
        self.io.set_limit(limit);
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
    /// The frames queued at the start go out in two writes, half in each. A batch written
    /// whole comes back whole: its calls travel together, and the two ends take turns, each
    /// asleep while the other works. The first half wakes the peer while the second is still
    /// being written, so the halves travel apart and both ends work at once (about a quarter
    /// more calls per second with 32 callers on one connection).
    async fn send_queued(&mut self, first: Outgoing, queue: &mut Queue) -> std::io::Result<bool> {
        let mut next = Some(first);
        // Half of `first` and the frames behind it, rounded down: half of the others, rounded up.
        let mut first_half_left = queue.len().div_ceil(2);
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
                Item::Claim(source, key) => match source.claim(key) {
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
                    first_half_left = first_half_left.saturating_sub(1);
                    if self.batch.len() >= COALESCE_LIMIT || first_half_left == 0 {
                        first_half_left = usize::MAX;
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

/// Sends every frame that arrives on `queue` until all its senders are gone or the last frame
/// is written, then shuts the write side down so the peer sees the end of the stream. After
/// `heartbeat` without a frame to send, sends a ping, so that the peer knows this side is
/// alive.
#[cfg(test)]
pub(crate) async fn write_frames<W: AsyncWrite + Unpin>(
    writer: FrameWriter<W>,
    queue: Queue,
    heartbeat: Option<Duration>,
) -> std::io::Result<()> {
    drive(&Mutex::new(writer), queue, heartbeat).await
}

/// Like [`write_frames`], and lets the tasks that queue frames write them straight through
/// while the writer is idle ([`Outbox`](super::Outbox) decides when).
pub(crate) async fn write_frames_through<W: AsyncWrite + Unpin + Send + 'static>(
    writer: FrameWriter<W>,
    queue: Queue,
    heartbeat: Option<Duration>,
) -> std::io::Result<()> {
    let calls = writer.calls.clone();
    let wire = Arc::new(Mutex::new(writer));
    if let Some((slots, capacity)) = calls {
        queue.write_through(
            Arc::downgrade(&wire) as Weak<dyn WriteThrough>,
            slots,
            capacity,
        );
    }
    drive(&wire, queue, heartbeat).await
}

/// The writer, shared with the tasks that write straight through it.
impl<W: AsyncWrite + Unpin + Send> WriteThrough for Mutex<FrameWriter<W>> {
    fn if_idle(&self, write: &mut dyn FnMut(&mut dyn WriteNow)) {
        if let Ok(mut writer) = self.try_lock() {
            write(&mut *writer);
        }
    }
}

impl<W: AsyncWrite + Unpin> WriteNow for FrameWriter<W> {
    fn write_now(&mut self, bytes: &[u8]) -> Option<(usize, bool)> {
        FrameWriter::write_now(self, bytes)
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
                    let due = writer.last_write + *interval;
                    if due <= Instant::now() {
                        writer.send(&Head::Ping.frame().into()).await?;
                        writer.last_write = Instant::now();
                        timer.as_mut().reset(writer.last_write + *interval);
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
            // thread, a wakeup on every call.
            tokio::task::yield_now().await;
        }
        let Some(first) = queue.try_recv() else {
            continue;
        };
        let last = writer.send_queued(first, queue).await?;
        if ping.is_some() {
            writer.last_write = Instant::now();
        }
        if last {
            writer.closed = true;
            return writer.io.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Outbox;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[tokio::test]
    async fn reads_frames_split_across_reads() {
        let mut bytes = frame(b"hello");
        bytes.extend(frame(b""));
        bytes.extend(frame(&[7; 100_000]));
        let (mut tx, rx) = tokio::io::duplex(17);
        let writer = tokio::spawn(async move { tx.write_all(&bytes).await });
        let mut reader = FrameReader::new(rx, 1 << 20);
        assert_eq!(
            reader.next_frame().await.expect("frame"),
            Some(Bytes::from_static(b"hello"))
        );
        assert_eq!(
            reader.next_frame().await.expect("frame"),
            Some(Bytes::new())
        );
        let big = reader.next_frame().await.expect("frame").expect("some");
        assert_eq!(big.len(), 100_000);
        writer.await.expect("joins").expect("writes");
        assert_eq!(reader.next_frame().await.expect("clean end"), None);
    }

    /// Small frames read one at a time, each still held (as a client's answers are, until their
    /// callers take them), come one after another from one allocation, not one each.
    #[tokio::test]
    async fn small_frames_held_by_their_readers_share_one_buffer() {
        let (mut tx, rx) = tokio::io::duplex(1024);
        let mut reader = FrameReader::new(rx, 1024);
        let mut held = Vec::new();
        for n in 0..20u8 {
            tx.write_all(&frame(&[n; 10])).await.expect("writes");
            let payload = reader.next_frame().await.expect("reads").expect("a frame");
            assert_eq!(payload, [n; 10][..]);
            held.push(payload);
        }
        for pair in held.windows(2) {
            let gap = pair[1].as_ptr() as usize - pair[0].as_ptr() as usize;
            assert_eq!(
                gap, 14,
                "the next frame's payload follows in the same buffer"
            );
        }
    }

    #[tokio::test]
    async fn a_run_is_the_whole_frames_of_the_same_head_that_follow() {
        let mut bytes = Vec::new();
        for payload in [
            &[6, 1, 0][..],
            &[6, 1, 1],
            &[6, 1, 2],
            &[6, 2, 5],
            &[6, 1, 3],
        ] {
            bytes.extend(frame(payload));
        }
        bytes.extend(frame(&[[6, 1].as_slice(), &[9; 48]].concat())); // over the limit of 40
        bytes.extend(frame(&[6, 1, 4]));
        bytes.extend(&frame(&[6, 1, 5])[..5]); // incomplete
        let mut reader = FrameReader::new(&bytes[..], 40);
        let first = reader.next_frame().await.expect("a frame").expect("some");
        assert_eq!(first, [6, 1, 0][..]);
        let run = reader
            .take_run(&first[..2], |_| true)
            .expect("two more of stream 1");
        assert_eq!(run, [frame(&[6, 1, 1]), frame(&[6, 1, 2])].concat());
        assert_eq!(
            reader.take_run(&[6, 1], |_| true),
            None,
            "stream 2's frame is next"
        );
        let other = reader.next_frame().await.expect("a frame").expect("some");
        assert_eq!(other, [6, 2, 5][..]);
        let run = reader.take_run(&[6, 1], |_| true).expect("stream 1 again");
        assert_eq!(run, frame(&[6, 1, 3]), "up to the frame over the limit");
        let too_large = reader.next_frame().await.expect_err("over the limit");
        assert!(matches!(
            too_large,
            RpcError::FrameTooLarge { size: 50, .. }
        ));
        reader.buf.advance(LENGTH_PREFIX + 50);
        reader.next_frame().await.expect("a frame").expect("some");
        assert_eq!(
            reader.take_run(&[6, 1], |_| true),
            None,
            "the last frame is incomplete"
        );
    }

    /// A frame the caller does not accept ends the run, and is read on its own next.
    #[tokio::test]
    async fn a_run_ends_at_the_first_frame_not_accepted() {
        let bytes = [frame(&[6, 1, 0]), frame(&[6, 1, 1]), frame(&[6, 1, 2, 2])].concat();
        let mut reader = FrameReader::new(&bytes[..], 40);
        let first = reader.next_frame().await.expect("a frame").expect("some");
        let mut offered = Vec::new();
        let run = reader.take_run(&first[..2], |size| {
            offered.push(size);
            size < 4
        });
        assert_eq!(run, Some(Bytes::from(frame(&[6, 1, 1]))));
        assert_eq!(
            offered,
            [3, 4],
            "each frame's payload length, up to the refused one"
        );
        let refused = reader.next_frame().await.expect("a frame").expect("some");
        assert_eq!(refused, [6, 1, 2, 2][..]);
    }

    #[tokio::test]
    async fn refuses_an_oversized_length_without_reading_it() {
        let (mut tx, rx) = tokio::io::duplex(64);
        tx.write_all(&u32::MAX.to_be_bytes()).await.expect("writes");
        let mut reader = FrameReader::new(rx, 1024);
        let err = reader.next_frame().await.expect_err("too large");
        assert!(matches!(
            err,
            RpcError::FrameTooLarge {
                size: 4_294_967_295,
                limit: 1024
            }
        ));
        assert!(
            reader.buf.capacity() <= 2 * MIN_READ,
            "room for what arrived, not for the claim"
        );
    }

    #[tokio::test]
    async fn a_frame_at_the_limit_is_read_and_one_byte_over_is_refused() {
        let mut bytes = frame(&[1; 1024]);
        bytes.extend(frame(&[2; 1025]));
        let mut reader = FrameReader::new(&bytes[..], 1024);
        let at_limit = reader.next_frame().await.expect("read").expect("a frame");
        assert_eq!(at_limit.len(), 1024);
        let over = reader.next_frame().await.expect_err("over the limit");
        assert!(
            matches!(
                over,
                RpcError::FrameTooLarge {
                    size: 1025,
                    limit: 1024
                }
            ),
            "{over}"
        );
    }

    #[tokio::test]
    async fn a_stream_cut_inside_a_frame_is_a_protocol_error() {
        let (mut tx, rx) = tokio::io::duplex(64);
        tx.write_all(&frame(b"hello")[..6]).await.expect("writes");
        drop(tx);
        let mut reader = FrameReader::new(rx, 1024);
        let err = reader.next_frame().await.expect_err("truncated");
        assert!(matches!(err, RpcError::Protocol(_)), "{err}");
    }

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
}

#[cfg(test)]
mod write_tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_util::FutureExt;

    use super::*;
    use crate::Payload;
    use crate::protocol::Outbox;
    use crate::protocol::{finish_frame, outgoing::SPLICE_MIN};

    /// A transport that takes at most `limit` bytes per write, gathered from as many slices as
    /// it is given.
    struct Trickle {
        written: Vec<u8>,
        limit: usize,
        /// How many bytes each write took.
        writes: Vec<usize>,
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

    #[tokio::test]
    async fn frames_queued_together_go_out_in_two_halves() {
        let (outbox, queue) = Outbox::new();
        for id in 0..10 {
            assert!(outbox.send(Head::Cancel { id }.frame(), None));
        }
        drop(outbox);
        let mut io = Trickle {
            written: Vec::new(),
            limit: usize::MAX,
            writes: Vec::new(),
        };
        write_frames(FrameWriter::new(&mut io), queue, None)
            .await
            .expect("writes");
        let frame_len = Head::Cancel { id: 0 }.frame().len();
        assert_eq!(io.writes, [5 * frame_len, 5 * frame_len]);
    }

    /// The writes a writer makes when one frame is queued, the writer has a turn, then four
    /// more are queued; `in_flight` of the connection's 8 call slots are held.
    async fn writes_around_a_turn(in_flight: u32) -> Vec<usize> {
        let slots = Arc::new(Semaphore::new(8));
        let _held = Arc::clone(&slots)
            .acquire_many_owned(in_flight)
            .await
            .expect("slots");
        let (outbox, queue) = Outbox::new();
        let mut io = Trickle {
            written: Vec::new(),
            limit: usize::MAX,
            writes: Vec::new(),
        };
        let mut writer = FrameWriter::new(&mut io);
        writer.watch_calls(slots, 8);
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

    #[tokio::test]
    async fn a_lone_calls_frame_goes_out_without_waiting_for_others() {
        let frame_len = Head::Cancel { id: 0 }.frame().len();
        let lone = writes_around_a_turn(1).await;
        assert_eq!(lone[0], frame_len, "written before the others were queued");
        let busy = writes_around_a_turn(2).await;
        assert_eq!(
            busy[0],
            2 * frame_len,
            "with calls in flight, the writer waits a turn and gathers the others"
        );
    }
}

#[cfg(test)]
mod buffer_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_large_buffer_is_kept_while_busy_and_given_up_when_quiet() {
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let mut reader = FrameReader::new(rx, 1 << 20);
        let mut big = (100_000u32).to_be_bytes().to_vec();
        big.extend(vec![1; 100_000]);
        tx.write_all(&big).await.expect("writes");
        let frame = reader.next_frame().await.expect("reads").expect("a frame");
        drop(frame);
        tx.write_all(&big).await.expect("writes");
        reader.next_frame().await.expect("reads").expect("a frame");
        assert!(
            reader.holds_large,
            "the allocation is kept for the next frame"
        );

        let quiet = tokio::spawn(async move {
            let _ = reader.next_frame().await;
            reader
        });
        tokio::time::sleep(LARGE_BUFFER_IDLE * 2).await;
        drop(tx);
        let reader = quiet.await.expect("joins");
        assert!(!reader.holds_large, "given up once quiet");
        assert!(reader.buf.capacity() <= IDLE_BUFFER_KEEP);
    }
}

#[cfg(test)]
mod room_tests {
    use super::*;

    /// Polls `reader` for a frame once, until it waits for bytes that have not arrived.
    async fn read_what_arrived<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>) {
        tokio::select! {
            biased;
            frame = reader.next_frame() => panic!("no frame is complete yet: {frame:?}"),
            () = std::future::ready(()) => {}
        }
    }

    #[tokio::test]
    async fn room_for_a_frame_is_made_at_once_only_up_to_the_largest_delivered() {
        const LIMIT: usize = 4 << 20;
        const BIG: usize = 1 << 20;
        let (mut tx, rx) = tokio::io::duplex(4 << 20);
        let mut reader = FrameReader::new(rx, LIMIT);

        // A first large claim gets room for what arrives, not for the claim.
        tx.write_all(&(BIG as u32).to_be_bytes())
            .await
            .expect("writes");
        tx.write_all(&[1; 10]).await.expect("writes");
        read_what_arrived(&mut reader).await;
        assert!(reader.buf.capacity() < BIG, "{}", reader.buf.capacity());
        tx.write_all(&vec![1; BIG - 10]).await.expect("writes");
        let first = reader.next_frame().await.expect("reads").expect("a frame");
        assert_eq!(first.len(), BIG);

        // Once the peer has sent a frame that large, the next one gets its room in one step, in
        // a new allocation while the first frame is still alive...
        tx.write_all(&(BIG as u32).to_be_bytes())
            .await
            .expect("writes");
        tx.write_all(&[2; 10]).await.expect("writes");
        read_what_arrived(&mut reader).await;
        assert!(reader.buf.capacity() >= BIG, "{}", reader.buf.capacity());

        // ...but a larger claim, still under the limit, is not trusted beyond that.
        tx.write_all(&vec![2; BIG - 10]).await.expect("writes");
        drop(first);
        reader.next_frame().await.expect("reads").expect("a frame");
        tx.write_all(&(3 * BIG as u32).to_be_bytes())
            .await
            .expect("writes");
        tx.write_all(&[3; 10]).await.expect("writes");
        read_what_arrived(&mut reader).await;
        assert!(reader.buf.capacity() < 3 * BIG, "{}", reader.buf.capacity());
    }
}

#[cfg(test)]
mod keepalive_tests {
    use super::*;
    use crate::protocol::Outbox;

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
    async fn a_silent_reader_gives_up_after_its_limit() {
        let (_tx, rx) = tokio::io::duplex(1024);
        let mut reader = FrameReader::new(rx, 1024);
        reader.set_silence_limit(Some(Duration::from_secs(30)));
        let error = within(reader.next_frame()).await.expect_err("silence");
        assert!(matches!(error, RpcError::KeepaliveTimeout(limit) if limit.as_secs() == 30));
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
mod through_tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Wake, Waker};

    use futures_util::FutureExt;
    use tokio::io::{AsyncReadExt, DuplexStream};
    use tokio::sync::OwnedSemaphorePermit;

    use super::*;
    use crate::protocol::{Outbox, StreamFrames};

    /// Counts how often the writer is woken.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    type Writing = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;

    /// A connection's writer, polled once so that it waits idle, with 8 call slots of which
    /// one is held; its peer reads from a pipe.
    struct Idle {
        outbox: Outbox,
        writing: Writing,
        wakes: Arc<Wakes>,
        peer: DuplexStream,
        slots: Arc<Semaphore>,
        _call: OwnedSemaphorePermit,
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
            let slots = Arc::new(Semaphore::new(8));
            let call = Arc::clone(&slots).acquire_owned().await.expect("a slot");
            let (outbox, queue) = Outbox::new();
            let mut writer = FrameWriter::new(io);
            writer.watch_calls(Arc::clone(&slots), 8);
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

        /// The bytes the peer has received so far.
        fn received(&mut self) -> Vec<u8> {
            let mut received = Vec::new();
            let mut buf = [0u8; 256];
            while let Some(Ok(read)) = self.peer.read(&mut buf).now_or_never() {
                if read == 0 {
                    break;
                }
                received.extend_from_slice(&buf[..read]);
            }
            received
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
    async fn frames_go_to_the_writer_while_calls_are_many_or_more_are_coming() {
        let mut idle = Idle::new(1024).await;
        let _second = Arc::clone(&idle.slots).acquire_owned().await;
        assert!(idle.outbox.send(cancel(1), None));
        assert!(idle.received().is_empty(), "two calls in flight: queued");
        assert_eq!(idle.wakes(), 1, "for the writer");
        // Its turn, then (the writer waits one more for the other call's frame) the write.
        assert!(idle.poll_writer().is_pending());
        assert!(idle.poll_writer().is_pending());
        assert_eq!(idle.received(), cancel(1));
        drop(_second);

        idle.outbox.gather(true);
        assert!(idle.outbox.send(cancel(2), None));
        assert!(idle.received().is_empty(), "more answers coming: queued");
        assert!(idle.poll_writer().is_pending());
        assert_eq!(idle.received(), cancel(2));

        idle.outbox.gather(false);
        assert!(idle.outbox.send(cancel(3), None));
        assert_eq!(idle.received(), cancel(3), "straight through again");
    }

    #[tokio::test]
    async fn a_frame_never_overtakes_one_queued_before_it() {
        let mut idle = Idle::new(1024).await;
        idle.outbox.gather(true);
        assert!(idle.outbox.send(cancel(1), None));
        idle.outbox.gather(false);
        assert!(idle.outbox.send(cancel(2), None));
        assert!(
            idle.received().is_empty(),
            "behind the first, for the writer"
        );
        assert!(idle.poll_writer().is_pending());
        assert_eq!(idle.received(), [cancel(1), cancel(2)].concat());
    }

    #[tokio::test]
    async fn what_the_transport_does_not_take_goes_first_to_the_writer() {
        let first = Head::go_away(0, "a message long enough to fill the pipe").frame();
        let idle = Idle::new(8).await;
        assert!(idle.outbox.send(first.clone(), None));
        assert_eq!(idle.wakes(), 1, "the writer is woken for the rest");
        idle.outbox.gather(true);
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
