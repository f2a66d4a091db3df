//! What a connection's reader does with its socket past tokio, on Linux: it moves a TCP
//! socket's receive low-water mark, and while busy polling it reads its socket, TCP or Unix,
//! itself.
//!
//! # The low-water mark
//!
//! Waking a reader once much of a large frame has come, not at every segment: a 1 MiB byte
//! string arrives in pieces as its sender writes and the window opens; a reader woken at each
//! piece reads a few hundred kilobytes, finds nothing more and sleeps again, and on a machine
//! where waking an idle core is dear, those wakeups are much of the frame's cost. With the mark
//! (`SO_RCVLOWAT`) raised to what is missing of the frame (up to [`MAX_MARK`]), the kernel wakes
//! the reader only once that much is there: 1 MiB echoes over one connection between two
//! processes measured a tenth faster (docs/benchmark-history.md).
//!
//! The mark never exceeds what is still missing of the frame, which a peer keeping to the
//! protocol sends whole; it is back to one byte before anything else is read (but while a
//! caller off the runtime's workers polls, below). It stays within
//! half the socket's receive buffer, so that raising it never makes the kernel grow the buffer
//! and clamp the window to the mark. Bytes below it wake no one, so before a reader judges its
//! peer silent it lowers the mark ([`Socket::lower_for_silence`]) and looks again. A Unix
//! socket's mark is left alone: its readiness does not heed it, and a reader would be woken at
//! every arrival all the same.
//!
//! # The mark while a caller off the workers polls
//!
//! A call made off the runtime's workers (in `#[tokio::main]`'s body) polls its connection's
//! reader itself while it waits, and reads its answer past tokio. The runtime's workers are idle
//! then, and the one holding tokio's I/O driver sleeps in it: without more, each answer's
//! arrival woke that worker to find it already read, and on a machine of two cores, where the
//! caller's thread and the server's polling reader keep both busy, the worker woken took the
//! caller's core at times. Across two processes on a two-core VM, such calls' p50 settled, from
//! one process to the next, either at about 8.3 µs or, in one run in ten to one in four, at
//! 12-14 µs, where a client worker woken at each answer shared the caller's core and the caller
//! lost 2.7 µs a call between reading its answer and sending the next request. So while such a
//! caller polls, the mark is [`POLLING_MARK`]: the small frames the caller reads itself wake no
//! thread. It is back to one byte whenever the reader stops polling, before it waits: lowering
//! the mark wakes the reader through tokio at once if bytes below it came meanwhile, as the
//! kernel checks the new mark against what is there. But for the wait between that caller's
//! answer and its next call, with the server in another process or on another runtime and no
//! stream open, when nothing is on its way: lowered there and raised again as the next call went
//! out, the mark cost two system calls a call, the first of them between the answer and the next
//! request (its client's turnaround went from 1.50 µs to 1.24, 2026-12-06). It is lowered once
//! the reader's task polls the reader instead, at the peer's silence or for a call made from a
//! task, which tells the reader it went out (with the server on the client's runtime it tells
//! nothing, and the mark is lowered at once); the peer's end of the stream wakes the reader
//! whatever the mark.
//!
//! # Reads while busy polling
//!
//! tokio learns that a socket has bytes only when a thread polls its I/O driver, and its reads find
//! nothing until then. On a multi-thread runtime the driver is held by whichever worker went to
//! sleep first, waiting in it for events: a reader busy polling on another worker would find
//! nothing until that sleeping worker was woken, which is the wakeup busy polling is there to
//! spare. So a busy polling reader whose read through tokio finds nothing reads the socket itself
//! ([`Socket::read_now`]). Between two processes on a two-core machine, sequential calls' p99
//! fell from 110-115 µs to 70-75 and their median from 7.7-8.1 to 6.8-7.0
//! (docs/benchmark-history.md); over a Unix socket, where polling through tokio had found
//! nothing until a wakeup, their p99 fell from 120-139 µs to 17-34 (BENCHMARKS.md). tokio is not
//! misled: bytes read here leave its readiness as it was, and the event their arrival raised at
//! most wakes the reader once more to find nothing.
//! Such a read reports what a read through tokio would, the stream's end and its errors too: a
//! socket reports a reset once, and a reader that passed over it would then read a clean end. It
//! spends the task's budget as tokio's reads do, so that a peer whose bytes keep coming cannot
//! keep its reader from yielding to the other tasks on its thread.
//!
//! A reader of a stream layered over TCP, TLS, reads through its layer, which reads the socket
//! through tokio: it looks past tokio through the TCP stream beneath (`TcpUnderTls`, with the
//! `tls` feature).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

#[cfg(feature = "tls")]
mod under_tls;

#[cfg(feature = "tls")]
pub(crate) use under_tls::TcpUnderTls;

/// The highest mark raised. A higher one spared more wakeups between two processes (512 KiB:
/// a fifth faster than none) but left the cores idle in turn within one (a fifth slower), where
/// this one measured within the noise of none (docs/benchmark-history.md).
pub(crate) const MAX_MARK: usize = 128 * 1024;

/// The mark while a caller off the runtime's workers polls the reader: above the small frames
/// such a caller waits for, so that their arrival wakes no worker, and far below half of any
/// receive buffer the kernel sizes itself, so that it never grows the buffer nor clamps the
/// window. A frame of this much or more wakes the driver as it would without.
pub(crate) const POLLING_MARK: usize = 4096;

/// The socket a connection's reader reads, TCP or Unix: a TCP socket's receive low-water mark
/// as the reader moves it, and reads past tokio.
#[derive(Debug)]
pub(crate) struct Socket {
    /// The socket, borrowed for as long as the reader holding this holds its read half.
    #[cfg(target_os = "linux")]
    fd: std::os::fd::RawFd,
    /// The mark now: 1 (the kernel's default) unless raised; at most [`MAX_MARK`]. Four bytes,
    /// as the file descriptor: every connection's reader holds this.
    mark: u32,
    /// Lowered to judge the peer's silence: not raised again until bytes have been read.
    held_low: bool,
    /// A TCP socket, whose mark is moved; a Unix socket's is not (the module's doc).
    tcp: bool,
}

/// Makes `read`, a read past tokio, as tokio makes its own: only while the task has budget
/// left, and spending it when the read brings something (bytes, the end or an error), so that a
/// peer whose bytes keep coming cannot keep its reader from yielding to the other tasks on its
/// thread. Pending if the budget is spent or nothing has come.
pub(crate) fn poll_past_tokio(
    cx: &mut Context<'_>,
    read: impl FnOnce() -> Option<io::Result<usize>>,
) -> Poll<io::Result<usize>> {
    let budget = ready!(tokio::task::coop::poll_proceed(cx));
    let Some(read) = read() else {
        return Poll::Pending;
    };
    budget.made_progress();
    Poll::Ready(read)
}

/// Whether a read of the TCP stream under another layer (TLS) that tokio finds nothing for
/// reads the socket itself: on while the reader of the layer above busy polls, which sets it
/// before each read (`TcpUnderTls`).
#[derive(Debug, Default)]
pub(crate) struct ReadsPastTokio(AtomicBool);

impl ReadsPastTokio {
    /// Turns reads past tokio on or off.
    pub(crate) fn set(&self, on: bool) {
        // One task reads at a time, and tokio orders a task's polls: no other memory depends
        // on this.
        self.0.store(on, Ordering::Relaxed);
    }

    /// Whether reads past tokio are on.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn is_on(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Socket {
    /// `stream`'s socket, for the reader of its read half; `None` where its mark is not moved
    /// nor read past tokio (other systems than Linux).
    #[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
    pub(crate) fn of_tcp(stream: &tokio::net::TcpStream) -> Option<Socket> {
        #[cfg(target_os = "linux")]
        return Some(Socket::new(std::os::fd::AsRawFd::as_raw_fd(stream), true));
        #[cfg(not(target_os = "linux"))]
        None
    }

    /// `stream`'s socket, for the reader of its read half, read past tokio while busy polling
    /// but with its mark left alone (the module's doc); `None` on other systems than Linux.
    #[cfg(unix)]
    #[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
    pub(crate) fn of_unix(stream: &tokio::net::UnixStream) -> Option<Socket> {
        #[cfg(target_os = "linux")]
        return Some(Socket::new(std::os::fd::AsRawFd::as_raw_fd(stream), false));
        #[cfg(not(target_os = "linux"))]
        None
    }

    #[cfg(target_os = "linux")]
    fn new(fd: std::os::fd::RawFd, tcp: bool) -> Socket {
        Socket {
            fd,
            mark: 1,
            held_low: false,
            tcp,
        }
    }

    /// Whether this is a TCP socket.
    pub(crate) fn is_tcp(&self) -> bool {
        self.tcp
    }

    /// Before waiting for more of a large frame of which `missing` bytes have not come: raises
    /// the mark to as much of that as the socket's buffer allows, up to [`MAX_MARK`], or lowers
    /// it to `missing` if it is above. A failure leaves the mark where it was, which only
    /// costs wakeups.
    pub(crate) fn before_waiting_for(&mut self, missing: usize) {
        if !self.tcp {
            return;
        }
        if self.held_low || missing <= 1 {
            return self.lower();
        }
        if self.mark() > missing {
            self.set(missing);
        } else if self.mark() == 1 || self.mark() == POLLING_MARK {
            let room = sys::receive_buffer(self).map_or(0, |bytes| bytes / 2);
            self.set(missing.min(MAX_MARK).min(room));
        }
    }

    /// While a caller off the runtime's workers polls the reader for its answer: raises the
    /// mark to [`POLLING_MARK`], so that the small frames the caller reads itself wake no
    /// worker of the runtime (the module's doc). Not a Unix socket's, nor one held low to judge
    /// the peer's silence.
    pub(crate) fn raise_while_polling(&mut self) {
        if self.tcp && !self.held_low {
            self.set(POLLING_MARK);
        }
    }

    /// Back to one byte: between frames, before anything but a large frame's string is read,
    /// and before a reader that polled waits.
    pub(crate) fn lower(&mut self) {
        self.set(1);
    }

    /// Before judging the peer silent: back to one byte, and kept there until bytes are read,
    /// so that bytes already here below the mark wake the reader. `false` if the mark was not
    /// raised, and the peer is as silent as it seems.
    pub(crate) fn lower_for_silence(&mut self) -> bool {
        if self.mark == 1 {
            return false;
        }
        self.lower();
        self.held_low = true;
        true
    }

    /// The mark the kernel holds for the socket, for tests.
    #[cfg(all(test, target_os = "linux"))]
    pub(crate) fn kernel_mark(&self) -> usize {
        sys::get(self, libc::SO_RCVLOWAT).expect("the mark")
    }

    /// Bytes were read: the mark may be raised again.
    pub(crate) fn heard(&mut self) {
        self.held_low = false;
    }

    /// Reads the bytes that have arrived into `buf`'s spare room, straight from the socket and
    /// without waiting, as a read through tokio would: how many, 0 if the stream has ended, or
    /// the error the socket reports (once: a reset read here is not read again through tokio).
    /// `None` if nothing has come, or `buf` has no room.
    pub(crate) fn read_now(&self, buf: &mut bytes::BytesMut) -> Option<io::Result<usize>> {
        sys::read_now(self, buf)
    }

    /// Reads what has arrived, up to `most` bytes, onto the end of `bytes`, within its spare
    /// room, without waiting: the rest of a frame's byte string, read straight into the vector
    /// it is received as. `None` if nothing has come, or there is no room.
    pub(crate) fn read_now_onto(
        &self,
        bytes: &mut Vec<u8>,
        most: usize,
    ) -> Option<io::Result<usize>> {
        sys::read_now_onto(self, bytes, most)
    }

    fn mark(&self) -> usize {
        usize::try_from(self.mark).unwrap_or(usize::MAX)
    }

    fn set(&mut self, mark: usize) {
        let Ok(mark) = u32::try_from(mark.max(1)) else {
            return;
        };
        if mark != self.mark && sys::set_mark(self, mark).is_ok() {
            self.mark = mark;
        }
    }
}

/// The two socket options, read and set through libc, and the read: socket2, nix and rustix
/// set neither `SO_RCVLOWAT` nor, on a borrowed socket, anything this needs, and none reads
/// into a `BytesMut`'s spare room.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod sys {
    use super::{Socket, io};

    /// Sets `SO_RCVLOWAT` to `mark` bytes.
    pub(super) fn set_mark(socket: &Socket, mark: u32) -> io::Result<()> {
        let value = libc::c_int::try_from(mark).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fd` is the socket of a read half its reader holds as long as it holds this
        // (`Socket::of_tcp`), so it is open; the option's value is a `c_int` whose address and
        // size are passed, and the kernel only reads it.
        let done = unsafe {
            libc::setsockopt(
                socket.fd,
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&raw const value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if done == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Reads what has arrived into `buf`'s spare room, without waiting.
    pub(super) fn read_now(
        socket: &Socket,
        buf: &mut bytes::BytesMut,
    ) -> Option<io::Result<usize>> {
        let read = receive_now(socket.fd, buf.spare_capacity_mut())?;
        if let Ok(read) = read {
            // SAFETY: the kernel initialised the first `read` bytes of the spare room, which
            // follows `buf`'s bytes.
            unsafe { buf.set_len(buf.len() + read) };
        }
        Some(read)
    }

    /// Reads what has arrived, up to `most` bytes, into `bytes`' spare room, without waiting.
    pub(super) fn read_now_onto(
        socket: &Socket,
        bytes: &mut Vec<u8>,
        most: usize,
    ) -> Option<io::Result<usize>> {
        let spare = bytes.spare_capacity_mut();
        let room = spare.len().min(most);
        let read = receive_now(socket.fd, &mut spare[..room])?;
        if let Ok(read) = read {
            // SAFETY: the kernel initialised the first `read` bytes of the spare room, which
            // follows `bytes`' bytes.
            unsafe { bytes.set_len(bytes.len() + read) };
        }
        Some(read)
    }

    /// Reads what has arrived into `buf`'s unfilled part, without waiting.
    #[cfg(feature = "tls")]
    pub(super) fn read_now_into(
        stream: &tokio::net::TcpStream,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Option<io::Result<usize>> {
        use std::os::fd::AsRawFd;

        // SAFETY: only the kernel writes there, and it writes bytes: nothing initialised is
        // made uninitialised.
        let read = receive_now(stream.as_raw_fd(), unsafe { buf.unfilled_mut() })?;
        if let Ok(read) = read {
            // SAFETY: the kernel initialised the first `read` bytes of the unfilled part.
            unsafe { buf.assume_init(read) };
            buf.advance(read);
        }
        Some(read)
    }

    /// Reads what has arrived on `fd`, an open socket, into `room`, without waiting: `None`
    /// if nothing has, or `room` is empty.
    fn receive_now(
        fd: std::os::fd::RawFd,
        room: &mut [std::mem::MaybeUninit<u8>],
    ) -> Option<io::Result<usize>> {
        if room.is_empty() {
            return None;
        }
        // SAFETY: `fd` is open: its reader holds the stream it is of (`Socket::of_tcp`,
        // `read_now_into`); `room` is valid for writes of its length, and the kernel writes at
        // most that many bytes there.
        let read =
            unsafe { libc::recv(fd, room.as_mut_ptr().cast(), room.len(), libc::MSG_DONTWAIT) };
        let Ok(read) = usize::try_from(read) else {
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => None,
                _ => Some(Err(error)),
            };
        };
        Some(Ok(read))
    }

    /// The socket's receive buffer (`SO_RCVBUF`), in bytes.
    pub(super) fn receive_buffer(socket: &Socket) -> io::Result<usize> {
        get(socket, libc::SO_RCVBUF)
    }

    /// The socket-level option `name`, an `int`, as a count of bytes.
    pub(super) fn get(socket: &Socket, name: libc::c_int) -> io::Result<usize> {
        let mut value: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: as in `set_mark`, `fd` is open; `value` and `len` are valid for writes of
        // the sizes given, which is all the kernel writes.
        let done = unsafe {
            libc::getsockopt(
                socket.fd,
                libc::SOL_SOCKET,
                name,
                (&raw mut value).cast(),
                &raw mut len,
            )
        };
        if done == 0 {
            Ok(usize::try_from(value).unwrap_or(0))
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Elsewhere no mark is moved (`Socket::of_tcp` gives none), nor a socket read past tokio.
#[cfg(not(target_os = "linux"))]
mod sys {
    use super::{Socket, io};

    pub(super) fn set_mark(_: &Socket, _: u32) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub(super) fn receive_buffer(_: &Socket) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub(super) fn read_now(_: &Socket, _: &mut bytes::BytesMut) -> Option<io::Result<usize>> {
        None
    }

    pub(super) fn read_now_onto(
        _: &Socket,
        _: &mut Vec<u8>,
        _: usize,
    ) -> Option<io::Result<usize>> {
        None
    }

    #[cfg(feature = "tls")]
    pub(super) fn read_now_into(
        _: &tokio::net::TcpStream,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> Option<io::Result<usize>> {
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::test_sockets::pair;

    /// The mark follows what is missing of a frame, within half the receive buffer and
    /// [`MAX_MARK`], and is back to one byte between frames.
    #[tokio::test]
    async fn the_mark_never_passes_what_is_missing_nor_half_the_buffer() {
        let (_client, server) = pair().await;
        let mut socket = Socket::of_tcp(&server).expect("on Linux");
        let half_buffer = sys::receive_buffer(&socket).expect("a buffer") / 2;
        socket.before_waiting_for(8 << 20);
        assert_eq!(socket.kernel_mark(), MAX_MARK.min(half_buffer));
        socket.before_waiting_for(1000);
        assert_eq!(socket.kernel_mark(), 1000, "lowered to what is missing");
        socket.before_waiting_for(5000);
        assert_eq!(socket.kernel_mark(), 1000, "not raised within the frame");
        socket.lower();
        assert_eq!(socket.kernel_mark(), 1);
    }

    /// A Unix socket's mark is never moved, its readiness not heeding it; what has come is
    /// read past tokio all the same.
    #[tokio::test]
    async fn a_unix_sockets_mark_stays_at_one_byte_and_it_is_read_past_tokio() {
        use std::io::Write;

        let (mut peer, ours) = std::os::unix::net::UnixStream::pair().expect("a pair");
        ours.set_nonblocking(true).expect("non-blocking");
        let ours = tokio::net::UnixStream::from_std(ours).expect("registers");
        let mut socket = Socket::of_unix(&ours).expect("on Linux");
        assert!(!socket.is_tcp());
        socket.before_waiting_for(100_000);
        assert_eq!(socket.kernel_mark(), 1);
        socket.raise_while_polling();
        assert_eq!(socket.kernel_mark(), 1, "nor raised for polling");

        peer.write_all(b"bytes").expect("writes");
        let mut buf = bytes::BytesMut::with_capacity(64);
        assert_eq!(socket.read_now(&mut buf).expect("bytes").expect("read"), 5);
        assert_eq!(&buf[..], b"bytes");
    }

    /// Raised while a caller off the runtime's workers polls, the mark is [`POLLING_MARK`],
    /// back to one byte when lowered; a large frame's string raises it on from there, and a
    /// mark held low to judge the peer's silence is not raised for polling.
    #[tokio::test]
    async fn the_mark_while_a_caller_polls_is_the_polling_mark() {
        let (_client, server) = pair().await;
        let mut socket = Socket::of_tcp(&server).expect("on Linux");
        socket.raise_while_polling();
        assert_eq!(socket.kernel_mark(), POLLING_MARK);
        socket.lower();
        assert_eq!(socket.kernel_mark(), 1);

        socket.raise_while_polling();
        let half_buffer = sys::receive_buffer(&socket).expect("a buffer") / 2;
        socket.before_waiting_for(8 << 20);
        assert_eq!(
            socket.kernel_mark(),
            MAX_MARK.min(half_buffer),
            "raised for a large frame's string from the polling mark"
        );

        socket.lower();
        socket.before_waiting_for(100_000);
        assert!(socket.lower_for_silence());
        socket.raise_while_polling();
        assert_eq!(socket.kernel_mark(), 1, "held low");
    }

    /// Lowered to judge the peer's silence, the mark stays low until bytes are read.
    #[tokio::test]
    async fn a_mark_lowered_for_silence_stays_low_until_bytes_are_read() {
        let (_client, server) = pair().await;
        let mut socket = Socket::of_tcp(&server).expect("on Linux");
        assert!(!socket.lower_for_silence(), "not raised: truly silent");
        socket.before_waiting_for(100_000);
        assert!(socket.kernel_mark() > 1);
        assert!(socket.lower_for_silence());
        assert_eq!(socket.kernel_mark(), 1);
        socket.before_waiting_for(100_000);
        assert_eq!(socket.kernel_mark(), 1, "held low");
        socket.heard();
        socket.before_waiting_for(100_000);
        assert!(socket.kernel_mark() > 1, "raised again after a read");
    }

    /// What has arrived is read into the buffer's spare room, after the bytes already there;
    /// nothing is read into a buffer without room, nor from a socket with no bytes. The end of
    /// the stream reads as nothing more, as through tokio.
    #[tokio::test]
    async fn read_now_takes_what_has_arrived_into_the_spare_room() {
        use tokio::io::AsyncWriteExt;

        let (mut client, server) = pair().await;
        let socket = Socket::of_tcp(&server).expect("on Linux");
        let mut buf = bytes::BytesMut::with_capacity(64);
        buf.extend_from_slice(b"kept ");
        assert!(socket.read_now(&mut buf).is_none(), "nothing has come");

        client.write_all(b"bytes").await.expect("writes");
        server.readable().await.expect("the bytes come");
        assert!(
            socket.read_now(&mut bytes::BytesMut::new()).is_none(),
            "no room"
        );
        assert_eq!(socket.read_now(&mut buf).expect("bytes").expect("read"), 5);
        assert_eq!(&buf[..], b"kept bytes");

        drop(client);
        server.readable().await.expect("the end comes");
        assert_eq!(
            socket.read_now(&mut buf).expect("the end").expect("read"),
            0
        );
        assert_eq!(&buf[..], b"kept bytes");
    }

    /// A reset is reported as the error it is: the socket reports it only once, so a read here
    /// that passed over it would leave the reader taking the reset for a clean end.
    #[tokio::test]
    async fn read_now_reports_a_reset() {
        let (client, server) = pair().await;
        let socket = Socket::of_tcp(&server).expect("on Linux");
        // A linger of zero closes with a reset, at once.
        #[allow(deprecated)]
        client
            .set_linger(Some(std::time::Duration::ZERO))
            .expect("linger");
        drop(client);
        server.readable().await.expect("the reset comes");
        let mut buf = bytes::BytesMut::with_capacity(64);
        let error = socket
            .read_now(&mut buf)
            .expect("the reset")
            .expect_err("an error");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    }
}
