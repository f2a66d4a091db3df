//! Waking a connection's reader once much of a large frame has come, not at every segment: the
//! receive low-water mark (`SO_RCVLOWAT`) of a TCP socket, on Linux.
//!
//! A 1 MiB byte string arrives in pieces as its sender writes and the window opens; a reader
//! woken at each piece reads a few hundred kilobytes, finds nothing more and sleeps again, and
//! on a machine where waking an idle core is dear, those wakeups are much of the frame's cost.
//! With the mark raised to what is missing of the frame (up to [`MAX_MARK`]), the kernel wakes
//! the reader only once that much is there: 1 MiB echoes over one connection between two
//! processes measured a tenth faster (BENCHMARKS.md).
//!
//! The mark never exceeds what is still missing of the frame, which a peer keeping to the
//! protocol sends whole; it is back to one byte before anything else is read. It stays within
//! half the socket's receive buffer, so that raising it never makes the kernel grow the buffer
//! and clamp the window to the mark. Bytes below it wake no one, so before a reader judges its
//! peer silent it lowers the mark ([`LowWater::lower_for_silence`]) and looks again.

use std::io;

/// The highest mark raised. A higher one spared more wakeups between two processes (512 KiB:
/// a fifth faster than none) but left the cores idle in turn within one (a fifth slower), where
/// this one measured within the noise of none (BENCHMARKS.md).
pub(crate) const MAX_MARK: usize = 128 * 1024;

/// A TCP socket's receive low-water mark, as its reader moves it.
#[derive(Debug)]
pub(crate) struct LowWater {
    /// The socket, borrowed for as long as the reader holding this holds its read half.
    #[cfg(target_os = "linux")]
    fd: std::os::fd::RawFd,
    /// The mark now: 1 (the kernel's default) unless raised; at most [`MAX_MARK`]. Four bytes,
    /// as the file descriptor: every connection's reader holds this.
    mark: u32,
    /// Lowered to judge the peer's silence: not raised again until bytes have been read.
    held_low: bool,
}

impl LowWater {
    /// The mark of `stream`'s socket, for the reader of its read half to move; `None` where
    /// marks are not moved (other systems than Linux).
    #[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
    pub(crate) fn of(stream: &tokio::net::TcpStream) -> Option<LowWater> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            Some(LowWater {
                fd: stream.as_raw_fd(),
                mark: 1,
                held_low: false,
            })
        }
        #[cfg(not(target_os = "linux"))]
        None
    }

    /// Before waiting for more of a large frame of which `missing` bytes have not come: raises
    /// the mark to as much of that as the socket's buffer allows, up to [`MAX_MARK`], or lowers
    /// it to `missing` if it is above. A failure leaves the mark where it was, which only
    /// costs wakeups.
    pub(crate) fn before_waiting_for(&mut self, missing: usize) {
        if self.held_low || missing <= 1 {
            return self.lower();
        }
        if self.mark() > missing {
            self.set(missing);
        } else if self.mark == 1 {
            let room = sys::receive_buffer(self).map_or(0, |bytes| bytes / 2);
            self.set(missing.min(MAX_MARK).min(room));
        }
    }

    /// Back to one byte: between frames, and before anything but a large frame's string is
    /// read.
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

    /// Bytes were read: the mark may be raised again.
    pub(crate) fn heard(&mut self) {
        self.held_low = false;
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

/// The two socket options, read and set through libc: socket2, nix and rustix set neither
/// `SO_RCVLOWAT` nor, on a borrowed socket, anything this needs.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod sys {
    use super::{LowWater, io};

    /// Sets `SO_RCVLOWAT` to `mark` bytes.
    pub(super) fn set_mark(low_water: &LowWater, mark: u32) -> io::Result<()> {
        let value = libc::c_int::try_from(mark).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fd` is the socket of a read half its reader holds as long as it holds this
        // (`LowWater::of`), so it is open; the option's value is a `c_int` whose address and
        // size are passed, and the kernel only reads it.
        let done = unsafe {
            libc::setsockopt(
                low_water.fd,
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

    /// The socket's receive buffer (`SO_RCVBUF`), in bytes.
    pub(super) fn receive_buffer(low_water: &LowWater) -> io::Result<usize> {
        get(low_water, libc::SO_RCVBUF)
    }

    /// The socket-level option `name`, an `int`, as a count of bytes.
    pub(super) fn get(low_water: &LowWater, name: libc::c_int) -> io::Result<usize> {
        let mut value: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: as in `set_mark`, `fd` is open; `value` and `len` are valid for writes of
        // the sizes given, which is all the kernel writes.
        let done = unsafe {
            libc::getsockopt(
                low_water.fd,
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

/// Elsewhere no mark is moved (`LowWater::of` gives none).
#[cfg(not(target_os = "linux"))]
mod sys {
    use super::{LowWater, io};

    pub(super) fn set_mark(_: &LowWater, _: u32) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub(super) fn receive_buffer(_: &LowWater) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The mark the kernel holds for `low_water`'s socket.
    fn kernel_mark(low_water: &LowWater) -> usize {
        sys::get(low_water, libc::SO_RCVLOWAT).expect("the mark")
    }

    async fn connected() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("an address");
        let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), async {
            listener.accept().await.expect("accepts").0
        });
        (client.expect("connects"), accepted)
    }

    /// The mark follows what is missing of a frame, within half the receive buffer and
    /// [`MAX_MARK`], and is back to one byte between frames.
    #[tokio::test]
    async fn the_mark_never_passes_what_is_missing_nor_half_the_buffer() {
        let (_client, server) = connected().await;
        let mut low_water = LowWater::of(&server).expect("on Linux");
        let half_buffer = sys::receive_buffer(&low_water).expect("a buffer") / 2;
        low_water.before_waiting_for(8 << 20);
        assert_eq!(kernel_mark(&low_water), MAX_MARK.min(half_buffer));
        low_water.before_waiting_for(1000);
        assert_eq!(kernel_mark(&low_water), 1000, "lowered to what is missing");
        low_water.before_waiting_for(5000);
        assert_eq!(kernel_mark(&low_water), 1000, "not raised within the frame");
        low_water.lower();
        assert_eq!(kernel_mark(&low_water), 1);
    }

    /// Lowered to judge the peer's silence, the mark stays low until bytes are read.
    #[tokio::test]
    async fn a_mark_lowered_for_silence_stays_low_until_bytes_are_read() {
        let (_client, server) = connected().await;
        let mut low_water = LowWater::of(&server).expect("on Linux");
        assert!(!low_water.lower_for_silence(), "not raised: truly silent");
        low_water.before_waiting_for(100_000);
        assert!(kernel_mark(&low_water) > 1);
        assert!(low_water.lower_for_silence());
        assert_eq!(kernel_mark(&low_water), 1);
        low_water.before_waiting_for(100_000);
        assert_eq!(kernel_mark(&low_water), 1, "held low");
        low_water.heard();
        low_water.before_waiting_for(100_000);
        assert!(kernel_mark(&low_water) > 1, "raised again after a read");
    }
}
