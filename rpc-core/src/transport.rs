//! Opening TCP connections the way every connection of this crate is opened: with
//! `TCP_NODELAY` set, because a call is a small message whose answer someone waits for.
//!
//! Any other byte stream (`AsyncRead + AsyncWrite`) plugs in through
//! [`ClientBuilder::connect_stream`](crate::ClientBuilder::connect_stream) and
//! [`ServerBuilder::serve_connection`](crate::ServerBuilder::serve_connection).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};

use crate::socket::{ReadsPastTokio, Socket};

/// A byte stream a connection runs over, split into the half its reader task reads from and
/// the half its writer task writes to.
pub(crate) trait Split {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;

    fn split(self) -> (Self::Read, Self::Write);

    /// The socket `read` reads, if it reads one directly (TCP or Unix, not through TLS): its
    /// reader reads it past tokio while busy polling, and moves a TCP socket's receive
    /// low-water mark.
    fn socket(read: &Self::Read) -> Option<Socket> {
        let _ = read;
        None
    }

    /// The switch of the TCP stream beneath, if the stream is layered over one (TLS): its
    /// reader turns on reads past tokio there while it busy polls.
    fn reads_past_tokio(&self) -> Option<Arc<ReadsPastTokio>> {
        None
    }
}

/// A TCP stream splits into halves that read and write at the same time.
impl Split for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;

    fn split(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }

    fn socket(read: &Self::Read) -> Option<Socket> {
        Socket::of_tcp(read.as_ref())
    }
}

/// So does a Unix socket.
#[cfg(unix)]
impl Split for tokio::net::UnixStream {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;

    fn split(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }

    fn socket(read: &Self::Read) -> Option<Socket> {
        Socket::of_unix(read.as_ref())
    }
}

/// Any other byte stream, whose halves take turns with it through a lock: a read in progress
/// holds up a write, so the streams this crate opens itself split without one.
pub(crate) struct Shared<S>(pub(crate) S);

impl<S: AsyncRead + AsyncWrite + Send + 'static> Split for Shared<S> {
    type Read = tokio::io::ReadHalf<S>;
    type Write = tokio::io::WriteHalf<S>;

    fn split(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self.0)
    }
}

/// A TLS stream over TCP, split as [`Shared`] is, whose reader reads the TCP socket beneath
/// past tokio while it busy polls ([`TcpUnderTls`](crate::socket::TcpUnderTls)).
#[cfg(feature = "tls")]
pub(crate) struct TlsOverTcp<S> {
    stream: S,
    reads_past_tokio: Arc<ReadsPastTokio>,
}

#[cfg(feature = "tls")]
impl<S> TlsOverTcp<S> {
    /// `stream`, a TLS session over a [`TcpUnderTls`](crate::socket::TcpUnderTls) whose
    /// switch is `reads_past_tokio`.
    pub(crate) fn new(stream: S, reads_past_tokio: Arc<ReadsPastTokio>) -> Self {
        TlsOverTcp {
            stream,
            reads_past_tokio,
        }
    }
}

#[cfg(feature = "tls")]
impl<S: AsyncRead + AsyncWrite + Send + 'static> Split for TlsOverTcp<S> {
    type Read = tokio::io::ReadHalf<S>;
    type Write = tokio::io::WriteHalf<S>;

    fn split(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self.stream)
    }

    fn reads_past_tokio(&self) -> Option<Arc<ReadsPastTokio>> {
        Some(Arc::clone(&self.reads_past_tokio))
    }
}

/// Connects to `addr` with `TCP_NODELAY` set.
pub(crate) async fn connect_tcp(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Accepts a connection and sets `TCP_NODELAY` on it.
pub(crate) async fn accept_tcp(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    let (stream, peer) = listener.accept().await?;
    stream.set_nodelay(true)?;
    Ok((stream, peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_ends_have_nodelay_set() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("address");
        let (client, accepted) = tokio::join!(connect_tcp(addr), accept_tcp(&listener));
        assert!(
            client
                .expect("connects")
                .nodelay()
                .expect("reads the option")
        );
        assert!(
            accepted
                .expect("accepts")
                .0
                .nodelay()
                .expect("reads the option")
        );
    }

    /// A connection's reader over TCP reads its socket directly when busy polling, and moves
    /// its low-water mark: the socket it is given is the read half's own.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_read_half_of_a_tcp_stream_gives_its_own_socket() {
        use tokio::io::AsyncWriteExt;

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("address");
        let (client, accepted) = tokio::join!(connect_tcp(addr), accept_tcp(&listener));
        let (read, _write) = Split::split(client.expect("connects"));
        let socket = <TcpStream as Split>::socket(&read).expect("a TCP socket on Linux");
        let mut peer = accepted.expect("accepts").0;
        peer.write_all(b"ping").await.expect("writes");
        let mut buf = bytes::BytesMut::with_capacity(16);
        loop {
            read.readable().await.expect("waits");
            if let Some(read) = socket.read_now(&mut buf) {
                assert_eq!(read.expect("reads"), 4);
                break;
            }
        }
        assert_eq!(&buf[..], b"ping");
    }
}
