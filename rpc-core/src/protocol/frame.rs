//! Reading length-prefixed frames, with memory bounded whatever lengths the peer claims.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{Instant, Sleep};

use super::LENGTH_PREFIX;
use super::SendGate;
use super::busy::{BusyPoll, CallSent};
use super::frame_memory::{self, FrameMemory, Share};
use super::spare;
use super::tail::{self, Split, Tail};
use crate::RpcError;
use crate::alarm::Alarm;
use crate::slots::CallSlots;
use crate::socket::{self, ReadsPastTokio, Socket};
use crate::stream::Streams;
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

/// The most room a read makes for small frames that keep coming: a peer that fills every read
/// is read in steps growing up to this, fewer and cheaper, rather than a kilobyte at a time.
const MAX_READ_ROOM: usize = 16 * 1024;

/// How long a reader whose peer seems silent waits once more, after lowering the socket's
/// low-water mark, for bytes already there below it to wake it.
const SILENCE_RECHECK: Duration = Duration::from_secs(1);

/// A read buffer up to this size is kept between frames whatever happens.
const IDLE_BUFFER_KEEP: usize = 2 * MIN_READ;

/// A larger buffer, left by a large frame, is kept for the next one while the connection is
/// busy, and given up once the connection has been quiet this long: reallocating it for every
/// frame costs more than the frame's own copy, holding it while idle costs memory.
const LARGE_BUFFER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// How many large allocations a reader keeps aside while frames handed on still share them.
/// A client's reader goes on to the next answer before the caller of the last has decoded
/// it, so the buffer cannot be reused in place; a fresh allocation for each large frame costs
/// its size in page faults, as the allocator gives large freed blocks back to the system. Each
/// is taken up again once its frames are dropped: enough for a few large calls in flight.
/// Memory stays bounded: besides its buffer, a reader holds at most this many allocations, each
/// no larger than the buffer once grew for a frame within `max_frame_len`, and none once the
/// connection has been quiet for `LARGE_BUFFER_IDLE`.
const SPARES: usize = 4;

/// Reads frames from a byte stream.
///
/// A large frame that ends in a byte string its receiver takes as a vector can be read in two
/// parts ([`FrameReader::next_frame_split`]): its head into the buffer, its byte string into a
/// vector of its own, which grows with the bytes that come as the buffer does, so the two
/// together hold no more than the frame would.
#[derive(Debug)]
pub(crate) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    max_frame_len: usize,
    silence_limit: Option<Duration>,
    /// The timer that enforces `silence_limit`, made at the first read that waits under one and
    /// kept for the connection's life. It runs to the end of the silence as it was when last
    /// set, never past it; when it fires early (bytes came since), it is set again, so reads
    /// cost the timer wheel nothing while bytes keep coming, and the read that waits looks at
    /// it for the price of a load ([`Alarm`]).
    silence: Option<Alarm>,
    /// A large frame, or a spell of reads larger than [`IDLE_BUFFER_KEEP`], passed through
    /// `buf`, whose allocation the (empty-looking) buffer may still hold for reuse.
    holds_large: bool,
    /// While an empty buffer that holds a large allocation waits for bytes: when it gives the
    /// allocation up ([`LARGE_BUFFER_IDLE`] after the wait began). Boxed, and made only then.
    large_idle: Option<Pin<Box<Sleep>>>,
    /// The room a read makes at least: doubled after a read that filled the room it had (more
    /// was waiting), halved after one that took less than half, from [`MIN_READ`] up to
    /// [`MAX_READ_ROOM`].
    read_room: usize,
    /// Allocations that held a large frame, which `buf` moved away from while frames still
    /// shared them, oldest first, to be reused once they are free, each with its size; given up
    /// with the large buffer when the connection goes quiet.
    spares: Vec<(BytesMut, usize)>,
    /// The size of the allocation `buf` is in, as the reader made it.
    buf_alloc: usize,
    /// On a server, this reader's share of the memory all its connections hold for large
    /// frames ([`frame_memory`]). Boxed: clients have none.
    share: Option<Box<Share>>,
    /// `buf`'s allocation held a large frame: worth keeping as a spare once `buf` leaves it.
    large_here: bool,
    /// When the last read returned bytes: when the frames it completed arrived, near enough
    /// for deadlines and idleness, for one clock reading per read rather than per frame.
    last_read: Instant,
    /// The largest frame read in full so far. Room for a frame up to this size is made at once:
    /// the peer has shown it sends such frames, and making room for one in steps would copy the
    /// bytes received so far at every step.
    largest_delivered: usize,
    /// Where the bytes read are counted, once the connection is established.
    traffic: Option<Traffic>,
    /// The frame being read in two parts: its head in `buf`, its trailing byte string here.
    /// Boxed: every connection holds a reader, few ever split a frame.
    splitting: Option<Box<Splitting>>,
    /// The frame at the start of `buf` was offered for a split and is read whole.
    split_refused: bool,
    /// Busy polling, if on. Boxed: few connections have it, and every idle one holds a reader.
    busy_poll: Option<Box<BusyPoll>>,
    /// The socket this reads, if it reads one directly, TCP or Unix ([`crate::socket`]): a
    /// busy polling reader reads it past tokio, and a TCP socket's receive low-water mark is
    /// raised while a frame's byte string comes in.
    socket: Option<Socket>,
    /// The switch of the TCP stream beneath the layer this reads through (TLS), if it is one:
    /// on while the reader busy polls, for that stream to read its socket past tokio.
    beneath: Option<Arc<ReadsPastTokio>>,
}

/// A frame's payload, with the byte string that ends it when that was read into memory of its
/// own ([`FrameReader::next_frame_split`]).
pub(crate) type SplitFrame = (Bytes, Option<Tail>);

/// The byte string that ends a frame being read, which goes into memory of its own.
#[derive(Debug)]
struct Splitting {
    tail: Tail,
    /// The room asked for the byte string so far.
    room: usize,
    /// The byte string's length.
    length: usize,
    /// The frame's payload length.
    size: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, max_frame_len: usize) -> Self {
        FrameReader {
            io,
            buf: BytesMut::new(),
            max_frame_len,
            silence_limit: None,
            silence: None,
            holds_large: false,
            large_idle: None,
            read_room: MIN_READ,
            spares: Vec::new(),
            buf_alloc: 0,
            share: None,
            large_here: false,
            last_read: Instant::now(),
            largest_delivered: 0,
            traffic: None,
            splitting: None,
            split_refused: false,
            busy_poll: None,
            socket: None,
            beneath: None,
        }
    }

    /// Gives the reader `socket`, the socket it reads: it reads the socket past tokio while
    /// busy polling, and moves a TCP socket's low-water mark while a large frame's byte string
    /// comes in, so that it is woken once much of it has come.
    pub(crate) fn set_socket(&mut self, socket: Option<Socket>) {
        self.socket = socket;
    }

    /// Gives the reader the switch of the TCP stream beneath the layer it reads through (TLS),
    /// which it turns on while it busy polls, so that the stream reads its socket past tokio
    /// then, as the reader itself does with a TCP socket it reads directly.
    pub(crate) fn set_tcp_beneath(&mut self, switch: Option<Arc<ReadsPastTokio>>) {
        self.beneath = switch;
    }

    /// Makes each read between frames wait for a small send under way on the same socket, as
    /// `gate` tells ([`SendGate`]), if the reader busy polls: the gate is kept with what busy
    /// polling keeps, boxed, so that the readers that have neither hold no more. Returns
    /// whether it does.
    pub(crate) fn wait_for_sends(&mut self, gate: &Arc<SendGate>) -> bool {
        match &mut self.busy_poll {
            Some(busy) => {
                busy.wait_for_sends(Arc::clone(gate));
                true
            }
            None => false,
        }
    }

    /// Makes a read that finds nothing within a window of the last bytes read, or of the last
    /// call sent, poll again at the runtime's next turn rather than wait to be woken: the
    /// thread stays busy, so bytes that come within the window need no sleeping thread woken.
    /// The window adapts to the connection, up to `window` ([`busy`](super::busy)), and the
    /// reader does not poll while any of `streams` is open. A zero window, or none, turns it
    /// off. Returns where the callers of a client tell the reader of each call they send.
    pub(crate) fn set_busy_poll(
        &mut self,
        window: Option<Duration>,
        streams: &Arc<Streams>,
    ) -> Option<Arc<CallSent>> {
        self.busy_poll = window
            .filter(|window| !window.is_zero())
            .map(|window| Box::new(BusyPoll::new(window, Arc::clone(streams))));
        self.busy_poll.as_ref().map(|busy| Arc::clone(busy.calls()))
    }

    /// Makes busy polling, if set, poll only after reads that brought several frames: for a
    /// reader whose peer runs on the same runtime ([`busy`](super::busy)).
    pub(crate) fn busy_poll_after_batches_only(&mut self) {
        if let Some(busy) = &mut self.busy_poll {
            busy.after_batches_only();
        }
    }

    /// Has busy polling, if set, count a client's calls `in_flight`: with many, a reader polls
    /// more sparingly; and if `waits_for_calls`, one that has answered its only call in flight
    /// waits for the next instead of polling ([`busy`](super::busy)).
    pub(crate) fn busy_poll_counting_calls(
        &mut self,
        in_flight: &Arc<CallSlots>,
        waits_for_calls: bool,
    ) {
        if let Some(busy) = &mut self.busy_poll {
            busy.count_calls(Arc::clone(in_flight), waits_for_calls);
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
        // A timer set under an earlier limit may run past the end of the new one.
        self.silence = None;
    }

    /// Reads what has arrived into the buffer: `Some(0)` at the end of the stream, `None` if a
    /// large, empty buffer was given up after a quiet spell instead. A poll, not a future kept
    /// between polls: each makes its read afresh, which leaves nothing half done when the wait
    /// is dropped, and costs no future's state on the way in and out of every read.
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<usize>, RpcError>> {
        if self.beneath.is_some() {
            let on = self.looks_past_tokio();
            if let Some(switch) = &self.beneath {
                switch.set(on);
            }
        }
        // Whether the reader is polled, busy polling a TCP socket between frames, by a caller off
        // the runtime's workers (`client::shared_reader`): its socket's mark is raised while so,
        // so that the frames the caller reads itself wake no worker ([`crate::socket`]).
        let by_caller = self.read_by_caller_off_the_workers();
        let polls_for_caller = by_caller && self.looks_past_tokio();
        // Or whether that caller's answer was handed on and the reader waits for the next call,
        // which will tell it ([`BusyPoll::awaits_a_call_it_is_told_of`]): the mark raised for
        // the caller's polling stays raised until then, rather than be lowered now and raised
        // again as the next call is sent, two system calls a call, the first of them between
        // the answer and the next request. No answer, and no stream's item, is on its way
        // meanwhile. What else the peer sends below the mark (a ping, a going-away) is read at
        // the next call, or once the reader's task polls it, which lowers the mark (the call
        // may have been the caller's last): at the peer's silence
        // ([`FrameReader::set_silence_limit`]), or when a call made from a task wakes it. The
        // peer's end of the stream wakes it whatever the mark.
        let keeps_mark = by_caller
            && !polls_for_caller
            && self
                .busy_poll
                .as_deref()
                .is_some_and(BusyPoll::awaits_a_call_it_is_told_of);
        // Or whether the reader polls for the rest of a frame read in two, one under
        // [`UNPOLLED_FRAME`] ([`FrameReader::awaits_large_rest`]): read past tokio, with the
        // mark at one byte.
        let polls_for_rest = self.splitting.is_some() && self.looks_past_tokio();
        let (io, buf) = (&mut self.io, &mut self.buf);
        let read = match &mut self.splitting {
            Some(splitting) => {
                let missing = splitting.length - splitting.tail.bytes.len();
                if let Some(socket) = &mut self.socket {
                    if polls_for_rest {
                        socket.lower();
                    } else {
                        socket.before_waiting_for(missing);
                    }
                }
                let read = {
                    let mut room = (&mut splitting.tail.bytes).limit(missing);
                    std::pin::pin!(io.read_buf(&mut room)).poll(cx)
                };
                match (read, &self.socket) {
                    (Poll::Pending, Some(socket)) if polls_for_rest => {
                        let tail = &mut splitting.tail.bytes;
                        socket::poll_past_tokio(cx, || socket.read_now_onto(tail, missing))
                    }
                    (read, _) => read,
                }
            }
            None => {
                if let Some(socket) = &mut self.socket {
                    if polls_for_caller {
                        socket.raise_while_polling();
                    } else if !keeps_mark {
                        socket.lower();
                    }
                }
                if let Some(gate) = self.busy_poll.as_deref().and_then(BusyPoll::send_gate) {
                    gate.wait_for_send();
                }
                match std::pin::pin!(io.read_buf(&mut *buf)).poll(cx) {
                    Poll::Pending => self.poll_read_past_tokio(cx, polls_for_caller),
                    read => read,
                }
            }
        };
        if let Poll::Ready(read) = read {
            if let Some(socket) = &mut self.socket {
                socket.heard();
            }
            self.large_idle = None;
            if let Some(share) = &mut self.share {
                share.heard_from_peer();
            }
            return Poll::Ready(Ok(Some(read?)));
        }
        if let Some(share) = &mut self.share {
            share.waiting_for_peer();
        }
        let polls_again = self.poll_again(cx);
        if !polls_again && self.splitting.is_none() {
            // A mark raised for a caller's polling is lowered before the reader waits, so that
            // what comes from now on, or came below it, wakes the reader through tokio: but
            // for the caller's next call (`keeps_mark`).
            if let Some(socket) = self.socket.as_mut().filter(|_| !keeps_mark) {
                socket.lower();
            }
            // An empty buffer that holds a large allocation gives it up if nothing comes for a
            // while: a reader that waits for its bytes, not one that polls for them.
            if self.buf.is_empty() && self.holds_large {
                let idle = self
                    .large_idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(LARGE_BUFFER_IDLE)));
                if idle.as_mut().poll(cx).is_ready() {
                    self.large_idle = None;
                    self.give_up_large();
                    return Poll::Ready(Ok(None));
                }
            }
        }
        // A read that found nothing has a silence to time, whether it waits or polls again: a
        // reader polling within a window longer than the limit, or kept polling by calls sent
        // to a peer that answers none, would otherwise never find the peer silent. No bytes
        // come in during it but its own: the silence ends where it ends now. A limit past the
        // clock's range, from a peer's absurd ping interval, is no limit.
        let Some((limit, silent_until)) = self
            .silence_limit
            .and_then(|limit| Some((limit, self.last_read.checked_add(limit)?)))
        else {
            return Poll::Pending;
        };
        let timer = self.silence.get_or_insert_with(|| Alarm::at(silent_until));
        while timer.poll_fired(cx).is_ready() {
            let now = Instant::now();
            if silent_until > now {
                timer.reset(silent_until);
                continue;
            }
            // Bytes below a raised low-water mark wake no one: lowered, any already here wake
            // the reader, which then reads them; the peer is silent only if none do.
            if let Some(socket) = &mut self.socket
                && socket.lower_for_silence()
            {
                timer.reset(now + SILENCE_RECHECK);
                continue;
            }
            return Poll::Ready(Err(RpcError::KeepaliveTimeout(limit)));
        }
        Poll::Pending
    }

    /// Whether the reader waits for the rest of a frame of [`UNPOLLED_FRAME`] bytes or more,
    /// which comes at the pace of the copies that move it, not of a peer's answer: it does not
    /// busy poll then. The low-water mark wakes it once much of it has come, and the CPU time
    /// a poll would spend is the time the peer and the kernel need to send it (1 MiB echoes
    /// between two processes on two cores ran about a tenth slower with the reader polling
    /// through them). The rest of a smaller frame is polled for, as a small frame is, and read
    /// past tokio when its byte string is read apart.
    fn awaits_large_rest(&self) -> bool {
        let size = match &self.splitting {
            Some(splitting) => splitting.size,
            None => length_prefix(&self.buf).unwrap_or(0),
        };
        size >= UNPOLLED_FRAME
    }

    /// Whether a polling reader that has handed on the frames of its last read takes a turn
    /// before it reads again (it has asked to be polled again, then): the tasks those frames
    /// woke, a caller its answer, run first, rather than after the reader has looked for more
    /// bytes in vain, which took a sequential call's answer a look at the socket (a system
    /// call) and a poll of tokio's longer to reach its caller. Across two processes, sequential
    /// calls' median went from 7.5–7.7 µs to 7.1–7.4, and 32 callers on one connection made
    /// 12–14% more calls a second (interleaved, 2026-12-05).
    ///
    /// A client's reader that answered its only call in flight takes no such turn: it reads on
    /// without polling, and waits for the next call to be sent ([`BusyPoll::wait_for_call`]).
    fn turn_before_reading(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(busy) = self.busy_poll.as_deref_mut() else {
            return false;
        };
        busy.handed_on_since_read() && !busy.wait_for_call(cx) && self.poll_again(cx)
    }

    /// Whether the reader, between frames of a TCP socket, is polled by a caller off the
    /// runtime's workers (`client::shared_reader`), whose socket mark it moves (`poll_read_more`).
    fn read_by_caller_off_the_workers(&self) -> bool {
        self.splitting.is_none()
            && self.socket.as_ref().is_some_and(Socket::is_tcp)
            && crate::task::is_off_the_workers()
    }

    /// Whether the reader, busy polling and not waiting for the rest of a large frame, asks to
    /// be polled again rather than wait for its bytes ([`BusyPoll::poll_again`]).
    fn poll_again(&mut self, cx: &mut Context<'_>) -> bool {
        let large_rest = self.awaits_large_rest();
        let reads_socket_itself = self.socket.is_some() || self.beneath.is_some();
        self.busy_poll
            .as_deref_mut()
            .is_some_and(|busy| !large_rest && busy.poll_again(cx, reads_socket_itself))
    }

    /// While busy polling, the bytes that have come that tokio has not seen yet: it sees a
    /// socket's bytes only when a thread polls its I/O driver, which a sleeping worker may hold
    /// ([`crate::socket`]). Pending if there are none, or the reader does not poll (nor
    /// while it waits for the rest of a large frame, [`FrameReader::awaits_large_rest`]). Such a
    /// read spends the task's budget as tokio's own reads do, and none is made once the budget
    /// is spent (the task yields then): a peer whose bytes keep coming would otherwise keep
    /// its reader from ever giving the other tasks on its thread their turn. `polls_for_caller`
    /// if the read was made for a caller off the workers, already known to poll: not asked again,
    /// which would read the clock a second time.
    fn poll_read_past_tokio(
        &mut self,
        cx: &mut Context<'_>,
        polls_for_caller: bool,
    ) -> Poll<std::io::Result<usize>> {
        if self.socket.is_none() || !(polls_for_caller || self.looks_past_tokio()) {
            return Poll::Pending;
        }
        let Some(socket) = &self.socket else {
            return Poll::Pending;
        };
        socket::poll_past_tokio(cx, || socket.read_now(&mut self.buf))
    }

    /// Whether a read that tokio finds nothing for looks at the socket past tokio: the reader
    /// busy polls now, and does not wait for the rest of a large frame.
    fn looks_past_tokio(&mut self) -> bool {
        let large_rest = self.awaits_large_rest();
        self.busy_poll
            .as_deref_mut()
            .is_some_and(|busy| !large_rest && busy.polls_now())
    }

    /// Reads and drops what the peer still sends, up to `limit` bytes, until it closes its
    /// direction or the stream fails. For a connection being closed: closing a socket with
    /// unread bytes resets it, and a reset can destroy what the peer has not read yet.
    pub(crate) async fn discard_until_end(&mut self, limit: usize) {
        if let Some(socket) = &mut self.socket {
            socket.lower();
        }
        if let Some(switch) = &self.beneath {
            switch.set(false);
        }
        self.splitting = None;
        self.buf.clear();
        self.give_up_large();
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
        let frame = self.next_frame_split(|_| None).await?;
        Ok(frame.map(|(payload, _)| payload))
    }

    /// Reads the next frame's payload, as [`FrameReader::next_frame`], with the large byte
    /// string that ends it, if any, read into memory of its own ([`tail`]). `split` is asked
    /// once about each frame that may end in one and is not all read yet: given the payload's
    /// first bytes, where the byte string's length may begin, if the frame may end in one that
    /// the receiver takes as a vector.
    ///
    /// Cancel safe: bytes read so far stay buffered for the next call.
    pub(crate) fn next_frame_split(
        &mut self,
        mut split: impl FnMut(&[u8]) -> Option<usize>,
    ) -> impl Future<Output = Result<Option<SplitFrame>, RpcError>> {
        std::future::poll_fn(move |cx| self.poll_next_frame_split(cx, &mut split))
    }

    /// Polls for the next frame, as [`FrameReader::next_frame_split`] waits for it.
    fn poll_next_frame_split(
        &mut self,
        cx: &mut Context<'_>,
        split: &mut impl FnMut(&[u8]) -> Option<usize>,
    ) -> Poll<Result<Option<SplitFrame>, RpcError>> {
        if self
            .share
            .as_ref()
            .is_some_and(|share| share.is_taken_back())
        {
            self.give_back()?;
        }
        let polled = self.poll_frame_or_wait(cx, split);
        // A reader going to wait with a share, even one it took in this poll, is woken if
        // another reader takes it back; it gives it back at its next poll.
        if polled.is_pending()
            && let Some(share) = &self.share
            && share.poll_taken_back(cx)
        {
            cx.waker().wake_by_ref();
        }
        polled
    }

    /// Polls for the next frame as [`FrameReader::poll_next_frame_split`] does, which looks
    /// after a share taken back before and after.
    fn poll_frame_or_wait(
        &mut self,
        cx: &mut Context<'_>,
        split: &mut impl FnMut(&[u8]) -> Option<usize>,
    ) -> Poll<Result<Option<SplitFrame>, RpcError>> {
        loop {
            let room = match &self.splitting {
                Some(splitting) => {
                    let (read, length) = (splitting.tail.bytes.len(), splitting.length);
                    if read == length {
                        return Poll::Ready(Ok(Some(self.finish_split())));
                    }
                    // Room for twice the bytes it sent so far, or as many as the peer has shown
                    // it sends.
                    if splitting.tail.bytes.capacity() == read {
                        let room = length.min(trusted(2 * read, self.largest_delivered));
                        ready!(self.poll_memory(cx, room, Replaced::Tail));
                        if let Some(splitting) = &mut self.splitting {
                            splitting.tail.bytes.reserve_exact(room - read);
                            splitting.room = room;
                        }
                    }
                    None
                }
                None => {
                    if let Some(payload) = self.buffered_frame()? {
                        return Poll::Ready(Ok(Some((payload, None))));
                    }
                    if self.turn_before_reading(cx) {
                        return Poll::Pending;
                    }
                    if let Some(size) = self.may_split() {
                        // Reading apart saves a copy, for the memory of a second allocation
                        // beside the buffer: short of memory, the frame is read whole.
                        let room = size.min(trusted(self.buf.len(), self.largest_delivered));
                        let prefix = &self.buf[LENGTH_PREFIX..];
                        match split(prefix).and_then(|from| tail::find(prefix, from, size)) {
                            Some(at) if self.has_memory_now(room, Replaced::Nothing) => {
                                self.begin_split(at, size);
                                self.settle();
                            }
                            _ => self.split_refused = true,
                        }
                        continue;
                    }
                    Some(ready!(self.poll_make_room_for_next(cx)))
                }
            };
            let Some(read) = ready!(self.poll_read_more(cx))? else {
                continue; // a large buffer was given up: make room again
            };
            if let Some(free) = room {
                self.read_room = next_read_room(self.read_room, read, free);
            }
            if read == 0 {
                return Poll::Ready(if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(RpcError::Protocol(
                        "the stream ended in the middle of a frame".into(),
                    ))
                });
            }
            self.last_read = Instant::now();
            if let Some(busy) = &mut self.busy_poll {
                busy.read();
            }
            if let Some(traffic) = &self.traffic {
                traffic.received(read);
            }
        }
    }

    /// Makes room for the next read into the buffer; returns the room it has.
    fn poll_make_room_for_next(&mut self, cx: &mut Context<'_>) -> Poll<usize> {
        // What the next frame still lacks: its length prefix checked, the rest of it.
        let wanted = match length_prefix(&self.buf) {
            Some(size) => LENGTH_PREFIX + size - self.buf.len(),
            None => LENGTH_PREFIX - self.buf.len(),
        };
        let trusted = trusted(self.buf.len(), self.largest_delivered);
        let room = wanted.min(trusted);
        let free = self.buf.capacity() - self.buf.len();
        // Frames handed on still share the buffer's memory, so making room means a new
        // allocation: it is done only when little room is left, and then for many frames. A
        // frame longer than is trusted takes what room there is first: making room before
        // that would allocate again, and double, for the few bytes a slow or lying peer sent
        // into the last allocation.
        let enough = if wanted > trusted {
            free >= MAX_READ_ROOM
        } else {
            free >= room.max(SMALL_ROOM)
        };
        if !enough {
            ready!(self.poll_make_room(cx, room.max(self.read_room)));
            self.holds_large |= self.read_room > IDLE_BUFFER_KEEP;
        }
        Poll::Ready(self.buf.capacity() - self.buf.len())
    }

    /// The payload length of the frame at the buffer's start, if it is large enough to end in
    /// a byte string worth reading apart and has not been offered for a split yet.
    fn may_split(&self) -> Option<usize> {
        let size = length_prefix(&self.buf)?;
        (!self.split_refused && size > tail::MIN_TAIL).then_some(size)
    }

    /// Reads the frame at the buffer's start, of `size` bytes, in two parts from here on: its
    /// head, with the byte string's length rewritten to `0`, stays in the buffer; the byte
    /// string's bytes, those read so far moved first, go into a vector of their own.
    fn begin_split(&mut self, split: Split, size: usize) {
        let length_at = LENGTH_PREFIX + split.at;
        let bytes_at = length_at + split.length_len;
        let mut bytes = Vec::new();
        let trusted = trusted(self.buf.len(), self.largest_delivered);
        spare::reserve(&mut bytes, split.length.min(trusted));
        bytes.extend_from_slice(&self.buf[bytes_at..]);
        let tail = Tail::new(bytes, &self.buf[length_at..bytes_at]);
        self.buf.truncate(length_at);
        self.buf.extend_from_slice(&[0]);
        self.splitting = Some(Box::new(Splitting {
            tail,
            room: split.length.min(trusted),
            length: split.length,
            size,
        }));
    }

    /// The frame read in two parts, now whole: its head and its byte string.
    fn finish_split(&mut self) -> (Bytes, Option<Tail>) {
        let Some(Splitting { tail, size, .. }) = self.splitting.take().map(|split| *split) else {
            unreachable!("a split is finished only while one is under way");
        };
        self.buf.advance(LENGTH_PREFIX);
        let head = self.buf.split().freeze();
        self.arrived_whole(size);
        self.settle();
        (head, Some(tail))
    }
}

/// The allocation a new one takes the place of, whose memory is given back once it is made.
#[derive(Debug, Clone, Copy)]
enum Replaced {
    /// None: the new allocation comes on top.
    Nothing,
    /// The read buffer's, unless it is kept as a spare.
    Buffer,
    /// The vector of the byte string being read apart.
    Tail,
}

/// How much memory a frame may be given at once: as much as `held` (so what is held at most
/// doubles), a chunk, or room for a frame as large as the largest the peer has already sent in
/// full (`largest_delivered`); never a length it merely claimed.
fn trusted(held: usize, largest_delivered: usize) -> usize {
    READ_CHUNK.max(held).max(LENGTH_PREFIX + largest_delivered)
}

/// The least room the next read makes, after a read that took `read` bytes of the `free` it
/// had: twice `room` if it filled them (more was waiting), half if it took less than half,
/// within [`MIN_READ`] and [`MAX_READ_ROOM`]; else `room` again.
fn next_read_room(room: usize, read: usize, free: usize) -> usize {
    if read == free {
        (room * 2).min(MAX_READ_ROOM)
    } else if read < free / 2 {
        (room / 2).max(MIN_READ)
    } else {
        room
    }
}

impl<R> FrameReader<R> {
    /// Draws what this reader holds past [`frame_memory::FREE`] bytes from `memory`, which the
    /// server's other connections share.
    pub(crate) fn share_memory(&mut self, memory: Arc<FrameMemory>) {
        self.share = Some(Box::new(Share::new(memory)));
    }

    /// The bytes the reader holds: its buffer's allocation, the spares, and the room made for a
    /// byte string read apart (a recycled vector may have more, out of the process's spares).
    fn held(&self) -> usize {
        let spares: usize = self.spares.iter().map(|(_, size)| size).sum();
        let tail = self
            .splitting
            .as_ref()
            .map_or(0, |splitting| splitting.room);
        self.buf_alloc + spares + tail
    }

    /// Ready once the reader's share of the server's memory covers what it will hold with
    /// `more` bytes allocated, in place of the allocation `replaced` names; at once on a reader
    /// with no share. Short of memory, the reader keeps nothing for reuse any more (the spares,
    /// the buffer it moves away from, room in its buffer it does not use) before it waits:
    /// that is only to be faster, and a reader holding a large buffer from an earlier frame
    /// could otherwise wait for more than there is.
    fn poll_memory(&mut self, cx: &mut Context<'_>, more: usize, replaced: Replaced) -> Poll<()> {
        if self.has_memory_now(more, replaced) {
            return Poll::Ready(());
        }
        self.spares = Vec::new();
        self.large_here = false;
        if !matches!(replaced, Replaced::Buffer) {
            self.compact();
        }
        self.settle();
        let wanted = self.will_hold(more, replaced);
        match &mut self.share {
            Some(share) => share.poll_cover(cx, wanted),
            None => Poll::Ready(()),
        }
    }

    /// Whether the reader's share of the server's memory covers what it will hold with `more`
    /// bytes allocated in place of `replaced`, taking more if there is enough left now;
    /// always, on a reader with no share.
    fn has_memory_now(&mut self, more: usize, replaced: Replaced) -> bool {
        let missing = self.missing();
        let wanted = self.will_hold(more, replaced);
        let Some(share) = &mut self.share else {
            return true;
        };
        share.lacks(missing);
        share.try_cover(wanted)
    }

    /// The bytes the frame being read still lacks.
    fn missing(&self) -> usize {
        match &self.splitting {
            Some(splitting) => splitting.length - splitting.tail.bytes.len(),
            None => length_prefix(&self.buf).map_or(0, |size| {
                (LENGTH_PREFIX + size).saturating_sub(self.buf.len())
            }),
        }
    }

    /// What the reader holds once `more` bytes are allocated in place of `replaced`.
    fn will_hold(&self, more: usize, replaced: Replaced) -> usize {
        let freed = match replaced {
            Replaced::Nothing => 0,
            Replaced::Buffer if self.large_here => 0,
            Replaced::Buffer => self.buf_alloc,
            Replaced::Tail => self
                .splitting
                .as_ref()
                .map_or(0, |splitting| splitting.room),
        };
        self.held() - freed + more
    }

    /// Gives back to the server's memory what the reader no longer holds.
    fn settle(&mut self) {
        let held = self.held();
        if let Some(share) = &mut self.share {
            share.shrink_to(held);
        }
    }

    /// Gives up the large allocations kept for the next large frames.
    fn give_up_large(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
            self.buf_alloc = 0;
        }
        self.spares = Vec::new();
        self.holds_large = false;
        self.large_here = false;
        self.read_room = MIN_READ;
        self.settle();
    }

    /// Another reader took this one's share of the server's memory back. Between frames (or
    /// early in a small one) it gives up the allocations it kept for reuse, and reads on; in
    /// the middle of a large frame, it has nothing to give up but the frame, at once: the
    /// connection closes, but its peer may take a while to read why.
    fn give_back(&mut self) -> Result<(), RpcError> {
        self.compact();
        self.give_up_large();
        if self.held() > frame_memory::FREE {
            self.splitting = None;
            self.buf.clear();
            self.give_up_large();
            return Err(RpcError::FrameMemoryReclaimed);
        }
        Ok(())
    }

    /// Moves the bytes in the buffer to an allocation their own size, if the one they are in is
    /// large and mostly unused (a large frame's, with the start of the next in it).
    fn compact(&mut self) {
        let size = MIN_READ.max(self.buf.len());
        if self.buf_alloc > frame_memory::FREE && self.buf_alloc > 2 * size {
            let mut small = BytesMut::with_capacity(size);
            small.extend_from_slice(&self.buf);
            self.buf = small;
            self.buf_alloc = size;
        }
    }

    /// Makes room in the buffer for `additional` more bytes: in its own allocation if no frame
    /// handed on shares it any more, else in a spare whose frames are all gone, else in a new
    /// one, once the server's memory has room for it. A large allocation left behind is kept
    /// as a spare.
    fn poll_make_room(&mut self, cx: &mut Context<'_>, additional: usize) -> Poll<()> {
        if self.buf.try_reclaim(additional) {
            return Poll::Ready(());
        }
        let needed = self.buf.len() + additional;
        let free = self
            .spares
            .iter_mut()
            .position(|(spare, _)| spare.try_reclaim(needed));
        if free.is_none() {
            ready!(self.poll_memory(cx, needed, Replaced::Buffer));
        }
        // An empty handle on the allocation being left, which keeps it for a spare.
        let left = std::mem::take(&mut self.large_here).then(|| self.buf.split_off(self.buf.len()));
        let left_size = std::mem::replace(&mut self.buf_alloc, needed);
        match free {
            Some(at) => {
                let (mut spare, size) = self.spares.remove(at);
                spare.extend_from_slice(&self.buf);
                self.buf = spare;
                self.buf_alloc = size;
            }
            None => {
                let mut fresh = BytesMut::with_capacity(needed);
                fresh.extend_from_slice(&self.buf);
                self.buf = fresh;
            }
        }
        if let Some(left) = left {
            if self.spares.len() == SPARES {
                self.spares.remove(0);
            }
            self.spares.push((left, left_size));
        }
        self.settle();
        Poll::Ready(())
    }

    /// When the read that brought the last frame returned, or a later one: the frame had
    /// arrived by then.
    pub(crate) fn arrived(&self) -> Instant {
        self.last_read
    }

    /// The next frame's payload if the reads so far brought all of it, without reading: for a
    /// loop that handles every frame one read brought before it turns to anything else.
    ///
    /// An empty buffer, which four of the six looks a sequential call's two ends take find, is
    /// told inline: as calls that returned their answer through memory, those looks took 150 of
    /// the 16,700 instructions of such a call on a shared runtime (callgrind).
    #[inline]
    pub(crate) fn buffered_frame(&mut self) -> Result<Option<Bytes>, RpcError> {
        if self.buf.len() < LENGTH_PREFIX {
            return Ok(None);
        }
        self.take_buffered_frame()
    }

    /// [`FrameReader::buffered_frame`] with the buffer holding at least a length prefix.
    fn take_buffered_frame(&mut self) -> Result<Option<Bytes>, RpcError> {
        let Some(size) = length_prefix(&self.buf) else {
            return Ok(None);
        };
        if size > self.max_frame_len {
            return Err(RpcError::FrameTooLarge {
                size: size as u64,
                limit: self.max_frame_len as u64,
            });
        }
        if self.buf.len() < LENGTH_PREFIX + size {
            return Ok(None);
        }
        // The prefix goes with the frame and is stepped over once frozen: a `Bytes` advances
        // by moving its pointer, a `BytesMut` by first asking what kind of memory it holds.
        let mut payload = self.buf.split_to(LENGTH_PREFIX + size).freeze();
        payload.advance(LENGTH_PREFIX);
        self.delivered(size);
        Ok(Some(payload))
    }

    /// Whether bytes past the last frame are already read: more frames, or the start of one.
    pub(crate) fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Whether the next frame is already read whole: it is taken without waiting for the peer.
    pub(crate) fn has_whole_frame(&self) -> bool {
        self.splitting.is_none()
            && length_prefix(&self.buf).is_some_and(|size| self.buf.len() >= LENGTH_PREFIX + size)
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
        let head = RunHead::new(head);
        let (mut end, mut largest) = (0, 0);
        while let Some(size) = length_prefix(&self.buf[end..]) {
            let payload = end + LENGTH_PREFIX;
            if size > self.max_frame_len
                || self.buf.len() - payload < size
                || !head.starts(&self.buf[payload..], size)
                || !accept(size)
            {
                break;
            }
            largest = largest.max(size);
            end = payload + size;
        }
        if end == 0 {
            return None;
        }
        // What handing on the frames means for the buffer depends on the largest alone.
        self.delivered(largest);
        Some(self.buf.split_to(end).freeze())
    }

    /// Notes a frame of `size` bytes handed on from the buffer.
    fn delivered(&mut self, size: usize) {
        self.arrived_whole(size);
        self.holds_large |= size > IDLE_BUFFER_KEEP;
        self.large_here |= size > IDLE_BUFFER_KEEP;
    }

    /// Notes a frame of `size` bytes read whole, from the buffer or in two parts.
    fn arrived_whole(&mut self, size: usize) {
        if let Some(share) = &self.share {
            share.frame_arrived();
        }
        if let Some(busy) = &mut self.busy_poll {
            busy.frame(size >= UNPOLLED_FRAME);
        }
        self.split_refused = false;
        self.largest_delivered = self.largest_delivered.max(size);
    }
}

/// A frame of this many bytes or more comes at the pace of the copies that move it: its reader
/// does not busy poll for its rest, nor after handing it on, until its next bytes
/// ([`FrameReader::awaits_large_rest`]). A smaller one's rest comes within a polling window: when
/// a reader also slept for the rest of every frame of [`LARGE_FRAME`] or more (and after it), its
/// thread woken for each, echoes of 70,000 bytes across two processes ran at 1,269-1,371 MiB/s
/// against 1,888-2,019 with the reader polling, at a fifth more CPU time a byte and twenty times
/// the context switches; echoes of 60 KiB, under both marks, ran at the faster rate.
pub(super) const UNPOLLED_FRAME: usize = 128 * 1024;

/// A frame of this many bytes or more is large to send: one goes straight through an idle
/// writer whatever the calls in flight (`Outbox::write_through`), and a send of as many bytes
/// leaves a client's send gate down (`SendGate`).
pub(super) const LARGE_FRAME: usize = 64 * 1024;

/// Whether a frame read, its `payload` and the `tail` its byte string was read into if it came
/// apart, is large to read: [`UNPOLLED_FRAME`] bytes or more. A connection's reader that has
/// handed on a large frame gives the runtime a turn before it reads on. Handing it on woke a
/// task (the caller it answers, the reader of its stream, or the writer with the answer to it)
/// into its worker's next-task slot, which no other worker takes: without the turn that task
/// waits until the reader runs out of bytes, and with large frames arriving one after another it
/// rarely does. With it, the woken task runs at once and the reader goes on, on another worker
/// if one is free. A turn costs a wakeup of a worker that may be asleep: with the line at 64
/// KiB, a stream of 64 KiB chunks across two processes took a fifth more CPU time a byte and
/// three to four times the context switches than with it where it is (`rpc-bench --profile
/// chunks`); echoes of 70,000 and 98,304 bytes moved within the noise.
pub(crate) fn is_large(payload: &[u8], tail: Option<&Tail>) -> bool {
    payload.len() + tail.map_or(0, Tail::len) >= UNPOLLED_FRAME
}

/// The payload length the length prefix at the start of `bytes` says; `None` while fewer bytes
/// than a prefix are there.
#[inline]
pub(crate) fn length_prefix(bytes: &[u8]) -> Option<usize> {
    let prefix = bytes.first_chunk::<LENGTH_PREFIX>()?;
    Some(u32::from_be_bytes(*prefix) as usize)
}

/// Whether `bytes` starts with `head`: a few bytes, compared without a call to `memcmp`.
fn same_start(bytes: &[u8], head: &[u8]) -> bool {
    bytes.len() >= head.len() && bytes.iter().zip(head).all(|(a, b)| a == b)
}

/// The head a run's frames begin with; a short one also as one word, to compare with the
/// first eight bytes of a payload and those after it at once, masked to the head's length: a
/// frame of a stream of small items holds fewer.
struct RunHead<'a> {
    head: &'a [u8],
    /// The head as a word, and the mask of its length; `None` for a head longer than a word.
    word: Option<(u64, u64)>,
}

impl<'a> RunHead<'a> {
    fn new(head: &'a [u8]) -> Self {
        let word = (head.len() <= 8).then(|| {
            let mut word = [0; 8];
            word[..head.len()].copy_from_slice(head);
            let mask = u64::MAX
                .checked_shr(64 - 8 * head.len() as u32)
                .unwrap_or(0);
            (u64::from_le_bytes(word), mask)
        });
        RunHead { head, word }
    }

    /// Whether the payload of `size` bytes at the start of `from` begins with the head.
    #[inline]
    fn starts(&self, from: &[u8], size: usize) -> bool {
        match (self.word, from.first_chunk::<8>()) {
            (Some((word, mask)), Some(bytes)) => {
                size >= self.head.len() && (u64::from_le_bytes(*bytes) ^ word) & mask == 0
            }
            _ => same_start(&from[..size], self.head),
        }
    }
}

#[cfg(test)]
mod buffer_tests;
#[cfg(test)]
mod busy_poll_tests;
#[cfg(test)]
mod room_tests;
#[cfg(test)]
mod split_tests;
#[cfg(test)]
pub(crate) mod tests;
