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
//! fell below rpc-core's in two full runs. And where its peer runs on threads of its own (in
//! another process, or on another runtime of this one), a reader that finds nothing polls its
//! socket again for a while after sending a small frame rather than sleep, as rpc-core's
//! readers do by default there ([`Spin`]): without it the floor's sequential calls across two
//! processes took ten times rpc-core's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::{Handle, Id, RuntimeFlavor};
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
    spin: Spin,
}

/// Requests: a tag byte, then the postcard arguments.
const ADD: u8 = 0;
const ECHO: u8 = 1;
const COUNT: u8 = 2;
const ADD_AWAITING: u8 = 3;

/// The length prefix.
const PREFIX: usize = 4;

/// A byte string this long or longer is written from its own memory, not copied into a frame.
const LARGE: usize = 64 * 1024;

/// Appends a frame: its length, an optional tag, then `value` in postcard.
pub(super) fn encode(out: &mut Vec<u8>, tag: Option<u8>, value: &impl Serialize) {
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

/// The length of the frame at the start of `buf`, if all of it is there.
fn whole_frame_len(buf: &[u8]) -> Option<usize> {
    frame_len(buf).filter(|len| buf.len() >= PREFIX + len)
}

/// Reads until a whole frame is in `read`; its body is `read[PREFIX..PREFIX + len]`. The rest
/// of a large frame is waited for under `mark`, raised; anything else is polled for while
/// `spin` polls, after a frame was sent.
async fn read_frame(
    stream: &mut (impl AsyncRead + Unpin),
    read: &mut BytesMut,
    mark: &mut LowWater,
    spin: &mut Spin,
) -> Option<usize> {
    loop {
        let mut large = false;
        if let Some(len) = frame_len(read) {
            if read.len() >= PREFIX + len {
                if !spin.keeps_the_mark_raised() {
                    mark.lower();
                }
                return Some(len);
            }
            read.reserve(PREFIX + len - read.len());
            large = len >= LARGE;
            if large {
                mark.before_waiting_for(PREFIX + len - read.len());
            }
        }
        if !large && spin.polls() {
            if spin.keeps_the_mark_raised() {
                mark.raise_for_polling();
            }
            match spin.read_now(read) {
                Ok(0) => return None,
                Ok(_) => continue,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    take_turn().await;
                    continue;
                }
                Err(_) => return None,
            }
        }
        // Waiting through tokio, which the mark raised for polling would keep from waking the
        // reader for a small frame: lowered first, which wakes it at once for bytes below the
        // mark that came meanwhile.
        mark.lower_after_polling();
        if stream.read_buf(read).await.ok()? == 0 {
            return None;
        }
    }
}

async fn serve_connection(stream: TcpStream) {
    // Halves that own the socket between them, without a lock, so that a stream's writes can
    // go to a task of their own.
    let mut mark = LowWater::of(&stream);
    // Where the client runs is looked up once its first request has come: it notes its end
    // before it sends anything, but perhaps after this task has begun.
    let mut spin = Spin::of(&stream, Where::Client(stream.peer_addr().ok()));
    let (mut stream, mut writer) = stream.into_split();
    let mut read = BytesMut::with_capacity(64 * 1024);
    let mut write = Vec::with_capacity(64 * 1024);
    while read_frame(&mut stream, &mut read, &mut mark, &mut spin)
        .await
        .is_some()
    {
        // Answer every whole frame that has arrived, then send the answers in one write.
        while let Some(len) = whole_frame_len(&read) {
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
                ADD_AWAITING => {
                    let Ok((a, b)) = postcard::from_bytes::<(u64, u64)>(args) else {
                        return;
                    };
                    super::handler_awaits().await;
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
                        spin.after_frame(args.len());
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
        if write.is_empty() {
            continue;
        }
        if writer.write_all(&write).await.is_err() {
            return;
        }
        spin.after_frame(write.len());
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

    /// A connection over `stream`, whose peer runs on threads of its own if `elsewhere`.
    pub(super) fn over(stream: TcpStream, elsewhere: bool) -> Self {
        RawClient {
            mark: LowWater::of(&stream),
            spin: Spin::of(&stream, Where::Known(elsewhere)),
            stream,
            read: BytesMut::with_capacity(64 * 1024),
            write: Vec::with_capacity(64 * 1024),
        }
    }

    async fn send<A: Serialize>(&mut self, tag: u8, args: &A) {
        self.send_frame(|write| encode(write, Some(tag), args))
            .await;
    }

    /// Sends the frame that `build` appends to the (cleared) write buffer, in one write.
    pub(super) async fn send_frame(&mut self, build: impl FnOnce(&mut Vec<u8>)) {
        self.write.clear();
        build(&mut self.write);
        self.stream.write_all(&self.write).await.expect("writes");
        self.spin.after_frame(self.write.len());
    }

    /// Sends an echo of `bytes`, a large byte string, from their own memory.
    async fn send_large_echo(&mut self, bytes: &[u8]) {
        // Its answer is read through tokio, not polled for.
        self.mark.lower_after_polling();
        // The frame of the byte string's length alone, made the frame of the whole string.
        self.write.clear();
        encode(&mut self.write, Some(ECHO), &bytes.len());
        let len = (self.write.len() - PREFIX + bytes.len()) as u32;
        self.write[..PREFIX].copy_from_slice(&len.to_be_bytes());
        let mut frame = Buf::chain(self.write.as_slice(), bytes);
        self.stream.write_all_buf(&mut frame).await.expect("writes");
        self.spin.after_frame(bytes.len());
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
        let len = read_frame(
            &mut self.stream,
            &mut self.read,
            &mut self.mark,
            &mut self.spin,
        )
        .await
        .expect("an answer");
        let frame = self.read.split_to(PREFIX + len).freeze();
        let (_, rest) = postcard::take_from_bytes::<usize>(&frame[PREFIX..]).expect("decodes");
        frame.slice(frame.len() - rest.len()..)
    }

    async fn receive<R: DeserializeOwned>(&mut self) -> R {
        self.receive_with(|payload| postcard::from_bytes(payload).expect("decodes"))
            .await
    }

    /// What `take` makes of the next frame's payload, read where it lies.
    pub(super) async fn receive_with<T>(&mut self, take: impl FnOnce(&[u8]) -> T) -> T {
        // A frame already read is taken without a read's future: a stream's items mostly are,
        // and making that future cost its rate a fifth.
        let len = match whole_frame_len(&self.read) {
            Some(len) => len,
            None => read_frame(
                &mut self.stream,
                &mut self.read,
                &mut self.mark,
                &mut self.spin,
            )
            .await
            .expect("a frame"),
        };
        let taken = take(&self.read[PREFIX..PREFIX + len]);
        self.read.advance(PREFIX + len);
        taken
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
        add_end(&SERVER_ENDS, addr);
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
        add_end(&CLIENT_ENDS, stream.local_addr().expect("address"));
        RawClient::over(stream, runs_elsewhere(&SERVER_ENDS, addr))
    }

    fn share(_: &RawClient) -> Option<RawClient> {
        None
    }

    async fn add(client: &mut RawClient, a: u64, b: u64) -> u64 {
        client.call(ADD, &(a, b)).await
    }

    async fn add_awaiting(client: &mut RawClient, a: u64, b: u64) -> u64 {
        client.call(ADD_AWAITING, &(a, b)).await
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

/// How long after sending a small frame a reader polls, as rpc-core's do at most by default.
const SPIN_WINDOW: Duration = Duration::from_micros(100);

/// The floor's ends in this process, by address, each with the runtime it runs on: its
/// servers' listening addresses and its clients' local ones.
pub(super) type Ends = LazyLock<Mutex<HashMap<SocketAddr, Id>>>;
pub(super) static SERVER_ENDS: Ends = LazyLock::new(Mutex::default);
static CLIENT_ENDS: Ends = LazyLock::new(Mutex::default);

/// Notes an end at `addr`, on this runtime.
pub(super) fn add_end(ends: &Ends, addr: SocketAddr) {
    let mut ends = ends.lock().unwrap_or_else(PoisonError::into_inner);
    ends.insert(addr, Handle::current().id());
}

/// Whether the peer at `addr` runs on threads of its own: not one of `ends` on this runtime.
pub(super) fn runs_elsewhere(ends: &Ends, addr: SocketAddr) -> bool {
    let ends = ends.lock().unwrap_or_else(PoisonError::into_inner);
    ends.get(&addr) != Some(&Handle::current().id())
}

/// Busy polling, as rpc-core's readers do by default for a peer on threads of its own: for
/// [`SPIN_WINDOW`] after a small frame is written (a request, or answers), a reader that finds
/// nothing reads its socket again at its worker's next turn rather than wait to be woken, which
/// on this machine costs tens of microseconds; after a large frame it waits at once (the rest
/// of a 1 MiB frame is long in coming, and a spinning core is one the sender could use). A peer
/// on the same runtime is never polled for: there the two ends meet on the runtime's threads,
/// and a reader that polls only takes turns from the task it waits for. But a caller off the
/// workers ([`off_the_workers`]) polls for its answer whoever its peer is, as rpc-core's does:
/// its thread is one of its own, which a worker would otherwise wake for every answer.
#[derive(Debug)]
struct Spin {
    /// The socket, open for as long as the connection whose reader holds this.
    fd: std::os::fd::RawFd,
    /// Where the peer runs.
    peer: Where,
    /// Until when the reader polls.
    until: Option<Instant>,
    /// Whether the reader is a caller's off the workers, which polls with the mark raised.
    off_the_workers: bool,
}

/// Where a connection's peer runs.
#[derive(Debug)]
enum Where {
    /// Whether it is on threads of its own.
    Known(bool),
    /// A client at this address, not yet looked up; `None` if the address is not known.
    Client(Option<SocketAddr>),
}

impl Spin {
    fn of(stream: &TcpStream, peer: Where) -> Self {
        use std::os::fd::AsRawFd;
        Spin {
            fd: stream.as_raw_fd(),
            peer,
            until: None,
            off_the_workers: false,
        }
    }

    /// After a frame whose payload has `len` bytes was written.
    fn after_frame(&mut self, len: usize) {
        if let Where::Client(addr) = self.peer {
            let elsewhere = addr.is_some_and(|addr| runs_elsewhere(&CLIENT_ENDS, addr));
            self.peer = Where::Known(elsewhere);
        }
        self.off_the_workers = off_the_workers();
        let on = matches!(self.peer, Where::Known(true)) || self.off_the_workers;
        self.until = (on && len < LARGE).then(|| Instant::now() + SPIN_WINDOW);
    }

    /// Whether the reader polls with its socket's mark at [`POLLING_MARK`], and keeps it there
    /// between its calls, as rpc-core's caller off the workers does (`rpc-core/src/socket.rs`):
    /// the small frames it reads itself then wake no worker, which on two cores may take the
    /// caller's. Kept between calls, where nothing is on its way, it costs no system call a
    /// call; it is lowered before the reader waits through tokio.
    fn keeps_the_mark_raised(&self) -> bool {
        self.off_the_workers && self.until.is_some()
    }

    /// Whether a reader that finds nothing reads again rather than wait.
    fn polls(&self) -> bool {
        self.until.is_some_and(|until| Instant::now() < until)
    }

    /// Reads what has come into `read`'s spare room, without waiting: tokio learns of bytes
    /// only when a worker polls its I/O driver, which a polling reader would otherwise wait
    /// for (as rpc-core's readers read theirs, `rpc-core/src/socket.rs`).
    fn read_now(&self, read: &mut BytesMut) -> std::io::Result<usize> {
        read.reserve(4096);
        let spare = read.spare_capacity_mut();
        let came = socket::receive_now(self.fd, spare)?;
        // SAFETY: the kernel wrote `came` bytes at the start of the spare room.
        #[allow(unsafe_code)]
        unsafe {
            read.set_len(read.len() + came);
        }
        Ok(came)
    }
}

/// Whether the code running now is off a multi-thread runtime's workers: a future driven by
/// `block_on`, as `#[tokio::main]`'s body is, on a thread of its own (as rpc-core tells it).
/// A single-thread runtime's `block_on` is its only thread, whose tasks a caller that polled
/// would hold up.
fn off_the_workers() -> bool {
    tokio::task::try_id().is_none()
        && Handle::try_current()
            .is_ok_and(|runtime| runtime.runtime_flavor() != RuntimeFlavor::CurrentThread)
}

/// Wakes the task and lets its worker run the others queued before it polls the task again:
/// tokio's `yield_now` would wait for the worker's next poll for I/O, a system call each time.
async fn take_turn() {
    let mut woken = false;
    std::future::poll_fn(|cx| {
        if woken {
            return std::task::Poll::Ready(());
        }
        woken = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await;
}

/// The most a mark is raised to, as rpc-core's readers raise theirs.
const MAX_MARK: usize = 128 * 1024;

/// The mark while a caller off the workers polls for its answer, as rpc-core's is then: above
/// any small frame.
const POLLING_MARK: usize = 4096;

/// A TCP socket's receive low-water mark (`SO_RCVLOWAT`, on Linux), moved as rpc-core's readers
/// move theirs (`rpc-core/src/socket.rs`): raised, while the rest of a large frame comes in,
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
        } else if self.mark == 1 || self.mark == POLLING_MARK {
            let room = socket::receive_buffer(self.fd).map_or(0, |bytes| bytes / 2);
            self.set(missing.min(MAX_MARK).min(room).max(1));
        }
    }

    /// Back to one byte.
    fn lower(&mut self) {
        self.set(1);
    }

    /// To [`POLLING_MARK`], unless raised for a large frame.
    fn raise_for_polling(&mut self) {
        if self.mark == 1 {
            self.set(POLLING_MARK);
        }
    }

    /// Back to one byte if raised for polling.
    fn lower_after_polling(&mut self) {
        if self.mark == POLLING_MARK {
            self.lower();
        }
    }

    fn set(&mut self, mark: usize) {
        if mark != self.mark && socket::set_mark(self.fd, mark).is_ok() {
            self.mark = mark;
        }
    }
}

/// The two socket options, through libc, which alone sets `SO_RCVLOWAT`, and a read that
/// does not wait.
#[allow(unsafe_code)]
mod socket {
    use std::io;
    use std::mem::MaybeUninit;
    use std::os::fd::RawFd;

    /// Reads what `fd` has into `into`, failing with `WouldBlock` if it has nothing.
    pub(super) fn receive_now(fd: RawFd, into: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
        // SAFETY: `fd` is the socket of a connection its holder keeps open; `into` is valid
        // for writes of its length, which is all the kernel writes.
        let came =
            unsafe { libc::recv(fd, into.as_mut_ptr().cast(), into.len(), libc::MSG_DONTWAIT) };
        usize::try_from(came).map_err(|_| io::Error::last_os_error())
    }

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
