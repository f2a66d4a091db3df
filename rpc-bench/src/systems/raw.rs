//! The floor: length-prefixed postcard frames over one TCP connection, one call at a time, with
//! no ids, no multiplexing, no handshake, no lock and no copy a socket does not force: a caller
//! owns its connection, encodes into one reused buffer and sends it with one write; each side
//! reads whatever has arrived into one reused buffer and decodes frames where they lie. A
//! stream's items are encoded in 64 KiB chunks that a task of their own writes, the two
//! passing the chunks back and forth: on one shared runtime, writing from the encoding task
//! left a core idle, and the floor fell below rpc-core's streams. A large byte string is
//! written from its own memory, not copied into a frame, and the client reads an echoed one back
//! into the memory it sent from (or, shared, as a slice of its read buffer): the floor had
//! copied each MiB twice on each end, and rpc-core, which does not, beat it. While the rest of a
//! large frame comes in, each side raises its socket's receive low-water mark as rpc-core's
//! readers do ([`LowWater`]): without it, on single-thread runtimes the floor's 1 MiB echoes
//! fell below rpc-core's in two full runs.

use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::System;

/// Raw postcard over TCP.
#[derive(Debug)]
pub struct Raw;

/// One connection, owned by its one caller.
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
    read: BytesMut,
    write: Vec<u8>,
    mark: LowWater,
}

/// Requests: a tag byte, then the postcard arguments.
const ADD: u8 = 0;
const ECHO: u8 = 1;
const COUNT: u8 = 2;

/// The length prefix.
const PREFIX: usize = 4;

/// A byte string this long or longer is written from its own memory, not copied into a frame.
const LARGE: usize = 64 * 1024;

/// Appends a frame: its length, an optional tag, then `value` in postcard.
fn encode(out: &mut Vec<u8>, tag: Option<u8>, value: &impl Serialize) {
    let start = out.len();
    out.extend_from_slice(&[0; PREFIX]);
    out.extend(tag);
    postcard::serialize_with_flavor(value, Append(out)).expect("encodes");
    let len = (out.len() - start - PREFIX) as u32;
    out[start..start + PREFIX].copy_from_slice(&len.to_be_bytes());
}

/// postcard's output appended to a vector where it is: a varint or a short string a byte at a
/// time, anything longer in one copy. (`postcard::to_extend` goes through `Extend` a byte at a
/// time, and how the compiler inlined it moved the floor's stream by half from build to build.)
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() <= 16 {
            self.0.reserve(data.len());
            for &byte in data {
                self.0.push(byte);
            }
        } else {
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// The length of the first frame in `buf`, if its prefix has arrived.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let prefix: [u8; PREFIX] = buf.get(..PREFIX)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix) as usize)
}

/// Reads until a whole frame is in `read`; its body is `read[PREFIX..PREFIX + len]`. The rest
/// of a large frame is waited for under `mark`, raised.
async fn read_frame(
    stream: &mut (impl AsyncRead + Unpin),
    read: &mut BytesMut,
    mark: &mut LowWater,
) -> Option<usize> {
    loop {
        if let Some(len) = frame_len(read) {
            if read.len() >= PREFIX + len {
                mark.lower();
                return Some(len);
            }
            read.reserve(PREFIX + len - read.len());
            if len >= LARGE {
                mark.before_waiting_for(PREFIX + len - read.len());
            }
        }
        if stream.read_buf(read).await.ok()? == 0 {
            return None;
        }
    }
}

async fn serve_connection(stream: TcpStream) {
    // Halves that own the socket between them, without a lock, so that a stream's writes can
    // go to a task of their own.
    let mut mark = LowWater::of(&stream);
    let (mut stream, mut writer) = stream.into_split();
    let mut read = BytesMut::with_capacity(64 * 1024);
    let mut write = Vec::with_capacity(64 * 1024);
    while read_frame(&mut stream, &mut read, &mut mark)
        .await
        .is_some()
    {
        // Answer every whole frame that has arrived, then send the answers in one write.
        while let Some(len) = frame_len(&read).filter(|len| read.len() >= PREFIX + len) {
            let Some((&tag, args)) = read[PREFIX..PREFIX + len].split_first() else {
                return;
            };
            match tag {
                ADD => {
                    let Ok((a, b)) = postcard::from_bytes::<(u64, u64)>(args) else {
                        return;
                    };
                    encode(&mut write, None, &a.wrapping_add(b));
                }
                ECHO => {
                    // The arguments are a byte string in postcard, and so is the answer: sent
                    // from where it was read, after the answers before it.
                    write.extend_from_slice(&(args.len() as u32).to_be_bytes());
                    if args.len() < LARGE {
                        write.extend_from_slice(args);
                    } else if writer
                        .write_all_buf(&mut Buf::chain(write.as_slice(), args))
                        .await
                        .is_err()
                    {
                        return;
                    } else {
                        write.clear();
                    }
                }
                COUNT => {
                    let Ok(items) = postcard::from_bytes::<u64>(args) else {
                        return;
                    };
                    let Some(back) = stream_items(writer, &mut write, items).await else {
                        return;
                    };
                    writer = back;
                }
                _ => return,
            }
            read.advance(PREFIX + len);
        }
        if writer.write_all(&write).await.is_err() {
            return;
        }
        write.clear();
    }
}

/// Sends `items` numbers as frames, encoded here in chunks of 64 KiB while a task of their own
/// writes the chunks before them, so that encoding and writing run at once on two cores, as a
/// streaming sender's should; the chunks' memory goes back and forth, never allocated anew.
/// Gives the write half back once all is written, with `write` empty; `None` if a write failed.
async fn stream_items(
    mut writer: OwnedWriteHalf,
    write: &mut Vec<u8>,
    items: u64,
) -> Option<OwnedWriteHalf> {
    let (full, mut to_write) = mpsc::channel::<Vec<u8>>(2);
    let (written, mut empty) = mpsc::channel::<Vec<u8>>(2);
    for _ in 0..2 {
        let _ = written.try_send(Vec::with_capacity(64 * 1024));
    }
    let writing = tokio::spawn(async move {
        while let Some(mut chunk) = to_write.recv().await {
            writer.write_all(&chunk).await.ok()?;
            chunk.clear();
            let _ = written.try_send(chunk);
        }
        Some(writer)
    });
    for item in 0..items {
        encode(write, None, &item);
        if write.len() >= 64 * 1024 {
            let next = empty.recv().await?;
            full.send(std::mem::replace(write, next)).await.ok()?;
        }
    }
    drop(full);
    writing.await.ok()?
}

impl RawClient {
    async fn call<A: Serialize, R: DeserializeOwned>(&mut self, tag: u8, args: &A) -> R {
        self.send(tag, args).await;
        self.receive().await
    }

    async fn send<A: Serialize>(&mut self, tag: u8, args: &A) {
        self.write.clear();
        encode(&mut self.write, Some(tag), args);
        self.stream.write_all(&self.write).await.expect("writes");
    }

    /// Sends an echo of `bytes`, a large byte string, from their own memory.
    async fn send_large_echo(&mut self, bytes: &[u8]) {
        // The frame of the byte string's length alone, made the frame of the whole string.
        self.write.clear();
        encode(&mut self.write, Some(ECHO), &bytes.len());
        let len = (self.write.len() - PREFIX + bytes.len()) as u32;
        self.write[..PREFIX].copy_from_slice(&len.to_be_bytes());
        let mut frame = Buf::chain(self.write.as_slice(), bytes);
        self.stream.write_all_buf(&mut frame).await.expect("writes");
    }

    /// Echoes `bytes`: sent from their own memory when large, and read back into it, as a
    /// caller done with them would: the copies a socket forces, and no fresh memory.
    async fn echo(&mut self, mut bytes: Vec<u8>) -> Vec<u8> {
        if bytes.len() < LARGE {
            let back: ByteBuf = self.call(ECHO, &serde_bytes::Bytes::new(&bytes)).await;
            return back.into_vec();
        }
        self.send_large_echo(&bytes).await;
        // The answer: its head into the read buffer; its bytes, but for those that came with
        // the head, straight into the vector.
        let (head, len) = loop {
            if self.read.len() > PREFIX
                && let Ok((len, rest)) = postcard::take_from_bytes::<usize>(&self.read[PREFIX..])
            {
                break (self.read.len() - rest.len(), len);
            }
            let read = self.stream.read_buf(&mut self.read).await.expect("reads");
            assert_ne!(read, 0, "an answer");
        };
        bytes.clear();
        bytes.reserve_exact(len);
        let came = (self.read.len() - head).min(len);
        bytes.extend_from_slice(&self.read[head..head + came]);
        self.read.advance(head + came);
        while bytes.len() < len {
            self.mark.before_waiting_for(len - bytes.len());
            let wanted = (len - bytes.len()) as u64;
            let read = (&mut self.stream)
                .take(wanted)
                .read_buf(&mut bytes)
                .await
                .expect("reads");
            assert_ne!(read, 0, "the rest of an answer");
        }
        self.mark.lower();
        bytes
    }

    /// Echoes shared `bytes`: sent from their memory when large, and read back as a slice of
    /// the read buffer, whose memory is reused once the caller drops the slice.
    async fn echo_shared(&mut self, bytes: &Bytes) -> Bytes {
        if bytes.len() < LARGE {
            return self.call(ECHO, bytes).await;
        }
        self.send_large_echo(bytes).await;
        let len = read_frame(&mut self.stream, &mut self.read, &mut self.mark)
            .await
            .expect("an answer");
        let frame = self.read.split_to(PREFIX + len).freeze();
        let (_, rest) = postcard::take_from_bytes::<usize>(&frame[PREFIX..]).expect("decodes");
        frame.slice(frame.len() - rest.len()..)
    }

    async fn receive<R: DeserializeOwned>(&mut self) -> R {
        let len = read_frame(&mut self.stream, &mut self.read, &mut self.mark)
            .await
            .expect("an answer");
        let answer = postcard::from_bytes(&self.read[PREFIX..PREFIX + len]).expect("decodes");
        self.read.advance(PREFIX + len);
        answer
    }
}

impl System for Raw {
    const NAME: &str = "raw";
    type Client = RawClient;
    type Shared = Bytes;

    async fn serve(bind: SocketAddr) -> Result<SocketAddr, String> {
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|error| format!("cannot listen on {bind}: {error}"))?;
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(stream));
            }
        });
        Ok(addr)
    }

    async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("connects");
        stream.set_nodelay(true).expect("nodelay");
        RawClient {
            mark: LowWater::of(&stream),
            stream,
            read: BytesMut::with_capacity(64 * 1024),
            write: Vec::with_capacity(64 * 1024),
        }
    }

    fn share(_: &RawClient) -> Option<RawClient> {
        None
    }

    async fn add(client: &mut RawClient, a: u64, b: u64) -> u64 {
        client.call(ADD, &(a, b)).await
    }

    async fn echo_vec(client: &mut RawClient, bytes: Vec<u8>) -> Vec<u8> {
        client.echo(bytes).await
    }

    async fn echo_buf(client: &mut RawClient, bytes: ByteBuf) -> ByteBuf {
        ByteBuf::from(client.echo(bytes.into_vec()).await)
    }

    async fn echo_shared(client: &mut RawClient, bytes: Bytes) -> Bytes {
        client.echo_shared(&bytes).await
    }

    async fn count(client: &mut RawClient, items: u64) -> Option<u64> {
        client.send(COUNT, &items).await;
        for expected in 0..items {
            let item: u64 = client.receive().await;
            assert_eq!(item, expected);
        }
        Some(items)
    }
}

/// The most a mark is raised to, as rpc-core's readers raise theirs.
const MAX_MARK: usize = 128 * 1024;

/// A TCP socket's receive low-water mark (`SO_RCVLOWAT`, on Linux), moved as rpc-core's readers
/// move theirs (`rpc-core/src/tcp_socket.rs`): raised, while the rest of a large frame comes in,
/// to what is missing of it, up to [`MAX_MARK`] and half the socket's receive buffer, so that
/// the reader is woken once much of it has come rather than at every segment; back to one byte
/// between frames. The mark never passes what is missing, which the peer sends whole.
#[derive(Debug)]
struct LowWater {
    /// The socket, open for as long as the connection whose reader holds this.
    fd: std::os::fd::RawFd,
    /// The mark now: 1, the kernel's default, unless raised.
    mark: usize,
}

impl LowWater {
    fn of(stream: &TcpStream) -> Self {
        use std::os::fd::AsRawFd;
        LowWater {
            fd: stream.as_raw_fd(),
            mark: 1,
        }
    }

    /// Before waiting for `missing` more bytes of a large frame.
    fn before_waiting_for(&mut self, missing: usize) {
        if self.mark > missing {
            self.set(missing.max(1));
        } else if self.mark == 1 {
            let room = socket::receive_buffer(self.fd).map_or(0, |bytes| bytes / 2);
            self.set(missing.min(MAX_MARK).min(room).max(1));
        }
    }

    /// Back to one byte.
    fn lower(&mut self) {
        self.set(1);
    }

    fn set(&mut self, mark: usize) {
        if mark != self.mark && socket::set_mark(self.fd, mark).is_ok() {
            self.mark = mark;
        }
    }
}

/// The two socket options, through libc, which alone sets `SO_RCVLOWAT`.
#[allow(unsafe_code)]
mod socket {
    use std::io;
    use std::os::fd::RawFd;

    /// Sets `fd`'s `SO_RCVLOWAT` to `mark` bytes.
    #[cfg(target_os = "linux")]
    pub(super) fn set_mark(fd: RawFd, mark: usize) -> io::Result<()> {
        let value = libc::c_int::try_from(mark).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fd` is the socket of a connection its holder keeps open; the value is a
        // `c_int` whose address and size are passed, and the kernel only reads it.
        let done = unsafe {
            libc::setsockopt(
                fd,
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

    /// `fd`'s receive buffer (`SO_RCVBUF`), in bytes.
    #[cfg(target_os = "linux")]
    pub(super) fn receive_buffer(fd: RawFd) -> io::Result<usize> {
        let mut value: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: as in `set_mark`, `fd` is open; `value` and `len` are valid for writes of the
        // sizes given, which is all the kernel writes.
        let done = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
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

    /// Elsewhere the mark stays where it is.
    #[cfg(not(target_os = "linux"))]
    pub(super) fn set_mark(_: RawFd, _: usize) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn receive_buffer(_: RawFd) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }
}
