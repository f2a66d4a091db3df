//! A server's listener: what it accepts, and what a failed accept means.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::transport;

/// A bound listener, TCP or (on Unix) a Unix socket.
pub(super) enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
}

/// A stream accepted by a [`Listener`].
pub(super) enum Accepted {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Listener {
    /// Accepts one connection, with the client's address for TCP.
    pub(super) async fn accept(&self) -> io::Result<(Accepted, Option<SocketAddr>)> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, peer) = transport::accept_tcp(listener).await?;
                Ok((Accepted::Tcp(stream), Some(peer)))
            }
            #[cfg(unix)]
            Listener::Unix(listener) => {
                let (stream, _) = listener.accept().await?;
                Ok((Accepted::Unix(stream), None))
            }
        }
    }

    /// Whether a newcomer waits to be accepted. An accept that fails for want of a file
    /// descriptor says nothing of that: the kernel takes the descriptor for the newcomer
    /// before it looks for one, so the accept tried after the connection that took the
    /// process's last descriptor fails the same whether anyone waits or not. Where this cannot
    /// be told (outside Linux, or if asking fails), someone is taken to wait.
    #[cfg(target_os = "linux")]
    pub(super) fn has_newcomer(&self) -> bool {
        use std::os::fd::AsRawFd;
        let fd = match self {
            Listener::Tcp(listener) => listener.as_raw_fd(),
            Listener::Unix(listener) => listener.as_raw_fd(),
        };
        sys::readable_now(fd).unwrap_or(true)
    }

    /// Whether a newcomer waits to be accepted: taken to be so outside Linux (above).
    #[cfg(not(target_os = "linux"))]
    pub(super) fn has_newcomer(&self) -> bool {
        true
    }
}

/// What a failed accept means for the server.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum AcceptError {
    /// Only the connection being accepted is affected.
    ConnectionOnly,
    /// The process is out of file descriptors or memory; it may recover.
    OutOfResources,
    /// The listener itself is broken.
    Fatal,
}

impl AcceptError {
    /// Tells a failed accept by its cause.
    pub(super) fn of(error: &io::Error) -> Self {
        use io::ErrorKind::*;
        match error.kind() {
            ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
            | TimedOut | BrokenPipe | NotConnected => AcceptError::ConnectionOnly,
            OutOfMemory | QuotaExceeded => AcceptError::OutOfResources,
            // EMFILE and ENFILE (24 and 23 on Linux and macOS) have no ErrorKind of their own.
            _ if matches!(error.raw_os_error(), Some(23 | 24)) => AcceptError::OutOfResources,
            _ => AcceptError::Fatal,
        }
    }
}

/// A listening socket's readiness, asked of the kernel: tokio's is of no use here, as a
/// listener stays ready to tokio after an accept that failed for want of a descriptor.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod sys {
    use std::io;
    use std::os::fd::RawFd;

    /// Whether `fd`, a listening socket, has a connection waiting to be accepted, without
    /// waiting.
    pub(super) fn readable_now(fd: RawFd) -> io::Result<bool> {
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `poll` is one valid `pollfd` the kernel writes `revents` of, and the count
        // passed is one; `fd` is the listener's, open while `self` is borrowed; a zero
        // timeout returns at once.
        if unsafe { libc::poll(&raw mut poll, 1, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // `revents` stays 0 when nothing is ready.
        Ok(poll.revents & libc::POLLIN != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed accept is the connection's alone, a shortage the server waits out, or the end
    /// of the listener.
    #[test]
    fn a_failed_accept_is_told_by_its_cause() {
        use io::ErrorKind;
        let kind = |kind: ErrorKind| AcceptError::of(&io::Error::from(kind));
        for alone in [ErrorKind::ConnectionAborted, ErrorKind::ConnectionReset] {
            assert_eq!(kind(alone), AcceptError::ConnectionOnly, "{alone:?}");
        }
        for short in [ErrorKind::OutOfMemory, ErrorKind::QuotaExceeded] {
            assert_eq!(kind(short), AcceptError::OutOfResources, "{short:?}");
        }
        // EMFILE and ENFILE.
        for code in [23, 24] {
            let error = io::Error::from_raw_os_error(code);
            assert_eq!(AcceptError::of(&error), AcceptError::OutOfResources);
        }
        assert_eq!(kind(ErrorKind::PermissionDenied), AcceptError::Fatal);
        let other = io::Error::from_raw_os_error(22);
        assert_eq!(AcceptError::of(&other), AcceptError::Fatal, "EINVAL");
    }

    /// A listener tells whether someone waits to be accepted, and stops telling so once they
    /// are accepted.
    #[tokio::test]
    async fn a_tcp_listener_tells_whether_a_newcomer_waits() {
        let listener = Listener::Tcp(TcpListener::bind("127.0.0.1:0").await.expect("binds"));
        let Listener::Tcp(tcp) = &listener else {
            unreachable!("bound over TCP")
        };
        let addr = tcp.local_addr().expect("an address");
        #[cfg(target_os = "linux")]
        assert!(!listener.has_newcomer(), "no one has connected");
        let _client = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        // The kernel queues the connection once the client's last handshake segment is in,
        // which on loopback is at once or nearly: nothing to await but the queue itself.
        until(|| listener.has_newcomer()).await;
        let _accepted = listener.accept().await.expect("accepts");
        #[cfg(target_os = "linux")]
        assert!(!listener.has_newcomer(), "the queue is empty again");
    }

    /// The same of a Unix socket's listener, whose waiting connections the kernel queues as
    /// messages.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_unix_listener_tells_whether_a_newcomer_waits() {
        let path = std::env::temp_dir().join(format!("rpc-core-listener-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let unix = tokio::net::UnixListener::bind(&path).expect("binds");
        let listener = Listener::Unix(unix);
        assert!(!listener.has_newcomer(), "no one has connected");
        let _client = tokio::net::UnixStream::connect(&path)
            .await
            .expect("connects");
        assert!(listener.has_newcomer(), "a connection waits in the queue");
        let _accepted = listener.accept().await.expect("accepts");
        assert!(!listener.has_newcomer(), "the queue is empty again");
        std::fs::remove_file(&path).expect("removes the socket's file");
    }

    /// Gives other tasks turns until `seen`, for at most ten seconds.
    async fn until(mut seen: impl FnMut() -> bool) {
        let waited = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while !seen() {
                tokio::task::yield_now().await;
            }
        });
        waited.await.expect("a connection waits in the queue");
    }
}
