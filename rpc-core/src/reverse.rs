//! Calls from a server to its client, over the connection the client opened.
//!
//! A client that serves a service back ([`ClientBuilder::serve`](crate::ClientBuilder::serve))
//! says so in its hello. The server then opens a **reverse connection** inside the outer one: a
//! whole connection of the protocol, hellos included, in which the server is the client and the
//! client the server. Each of its frames travels as the payload of an outer frame of kind 9,
//! after that byte, and a kind-9 frame of that byte alone ends one direction of it
//! (docs/wire.md section 12).
//!
//! Each side runs the reverse connection with the very code it runs in the other role, over an
//! in-memory pipe that a [`Tunnel`] joins to the outer connection: deadlines, cancellation,
//! streams, limits and backpressure hold as they do for calls the other way.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};

use crate::client::Channel;
use crate::dynamic::DynamicClient;
use crate::protocol::{FrameReader, Head, LENGTH_PREFIX, Meter, Outbox};
use crate::server::{Served, ServerBuilder, ServerConfig, ServiceSet, Stop, serve_reverse};
use crate::task::AbortOnDrop;
use crate::{RpcError, ServiceClient};

/// The kind byte of an outer frame that carries a frame of the reverse connection.
pub(crate) const KIND: u8 = 9;

/// How many bytes of the reverse connection an outer connection's reader holds, read but not
/// yet taken by the reverse connection's own reader, before it pauses reading: the peer's
/// reverse calls cannot make it buffer without bound while its own side of them is busy.
const MAX_UNREAD: usize = 1024 * 1024;

/// The room the in-memory pipe of a reverse connection has in each direction.
const PIPE_ROOM: usize = 64 * 1024;

/// What one frame waiting for the reverse connection's reader costs, beyond its bytes.
const FRAME_OVERHEAD: usize = 128;

/// The largest payload one side of a reverse connection may announce: its frames, with the kind
/// byte before them, must fit in the outer connection's frames of `outer` bytes.
pub(crate) fn max_frame_len(outer: usize) -> usize {
    outer.saturating_sub(1).max(1)
}

/// The outer connection's end of a reverse connection: its reader hands over kind-9 frames
/// here, and two pumps carry frames between the outer connection and the in-memory pipe the
/// reverse connection runs on.
pub(crate) struct Tunnel {
    /// `None` once the peer has ended its direction of the reverse connection.
    incoming: Option<mpsc::UnboundedSender<Unread>>,
    /// The bytes handed over and not yet written into the pipe.
    unread: Arc<Meter>,
    /// Closed once this side's reverse connection has ended its direction: the pump carrying
    /// its frames out holds the only receiver.
    sending: watch::Sender<()>,
    _pumps: [AbortOnDrop; 2],
}

impl Tunnel {
    /// Opens a reverse connection inside the outer connection whose frames go out through
    /// `outbox`, to a peer that takes payloads of up to `peer_max_frame_len` bytes. Returns
    /// the tunnel and the end of the pipe the reverse connection's code runs on.
    pub(crate) fn open(outbox: Outbox, peer_max_frame_len: usize) -> (Tunnel, DuplexStream) {
        let (inner, outer) = tokio::io::duplex(PIPE_ROOM);
        let (read, write) = tokio::io::split(outer);
        let (incoming, taken) = mpsc::unbounded_channel();
        let unread = Arc::new(Meter::new(MAX_UNREAD, None));
        let (sending, sent_all) = watch::channel(());
        let max_frame_len = max_frame_len(peer_max_frame_len);
        let send = tokio::spawn(send_out(read, outbox, max_frame_len, sent_all));
        let taking = tokio::spawn(take_in(taken, write));
        let tunnel = Tunnel {
            incoming: Some(incoming),
            unread,
            sending,
            _pumps: [AbortOnDrop::new(&send), AbortOnDrop::new(&taking)],
        };
        (tunnel, inner)
    }

    /// Hands over an outer frame of kind 9, kind byte included. The frame of that byte alone
    /// ends the peer's direction; anything after it is discarded, as is whatever arrives once
    /// the reverse connection has closed.
    pub(crate) fn deliver(&mut self, payload: &[u8]) {
        let inner = payload.get(1..).unwrap_or_default();
        if inner.is_empty() {
            self.incoming = None;
            return;
        }
        let Some(incoming) = &self.incoming else {
            return;
        };
        // Counted until it is written into the pipe or dropped, whichever comes first (a send
        // that fails drops it at once).
        let _ = incoming.send(Unread::hold(inner, &self.unread));
    }

    /// Tells this side's client of the reverse connection, as a GoAway from its peer would,
    /// to make no new call and to close once the calls it made are answered and its streams
    /// are done: the server's side, as the outer connection drains. Once the peer has ended
    /// its direction, the client has closed, or soon will, all the same.
    pub(crate) fn go_away(&self, reason: u32, message: &str) {
        if let Some(incoming) = &self.incoming {
            let frame = Head::go_away(reason, message).frame();
            let _ = incoming.send(Unread::hold(&frame[LENGTH_PREFIX..], &self.unread));
        }
    }

    /// Whether this side's reverse connection has ended its direction, its last frame handed
    /// to the outer connection: whatever its side called is over.
    pub(crate) fn has_ended(&self) -> bool {
        self.sending.is_closed()
    }

    /// Returns once [`Tunnel::has_ended`] holds.
    pub(crate) async fn ended(&self) {
        self.sending.closed().await;
    }

    /// Whether the outer reader may read another frame: the reverse connection has taken all
    /// but a little of what was handed over.
    pub(crate) fn may_read(&self) -> bool {
        self.unread.may_read()
    }

    /// Returns once [`Tunnel::may_read`] holds.
    pub(crate) async fn wait_may_read(&self) {
        self.unread.wait_may_read().await;
    }
}

/// Whether the outer reader may read on, with or without a reverse connection.
pub(crate) fn may_read(tunnel: Option<&Tunnel>) -> bool {
    tunnel.is_none_or(Tunnel::may_read)
}

/// Whether the reverse connection, if any, has ended its direction ([`Tunnel::has_ended`]).
pub(crate) fn has_ended(tunnel: Option<&Tunnel>) -> bool {
    tunnel.is_none_or(Tunnel::has_ended)
}

/// Returns once [`has_ended`] holds for `tunnel`; never without one (then it always holds, and
/// nobody waits).
pub(crate) async fn ended(tunnel: Option<&Tunnel>) {
    match tunnel {
        Some(tunnel) => tunnel.ended().await,
        None => std::future::pending().await,
    }
}

/// Returns once [`may_read`] holds for `tunnel`; never without one (then it always holds, and
/// nobody waits).
pub(crate) async fn wait_may_read(tunnel: Option<&Tunnel>) {
    match tunnel {
        Some(tunnel) => tunnel.wait_may_read().await,
        None => std::future::pending().await,
    }
}

/// Carries the reverse connection's frames out, each in an outer frame of kind 9 behind the
/// outer connection's other frames; when the reverse connection ends its direction, so does
/// the last frame this sends, the kind byte alone. Waits while the outer connection has more
/// queued than its limit, so that the reverse connection's own limits hold it back. Drops
/// `_sent_all` when it is over.
async fn send_out(
    read: ReadHalf<DuplexStream>,
    outbox: Outbox,
    max_frame_len: usize,
    _sent_all: watch::Receiver<()>,
) {
    let mut reader = FrameReader::new(read, max_frame_len);
    loop {
        outbox.meter().wait_may_read().await;
        let Ok(Some(inner)) = reader.next_frame().await else {
            break;
        };
        let mut frame = Vec::with_capacity(LENGTH_PREFIX + 1 + inner.len());
        // Fits: the reverse connection's frames are one byte under the peer's limit.
        frame.extend_from_slice(&(inner.len() as u32 + 1).to_be_bytes());
        frame.push(KIND);
        frame.extend_from_slice(&inner);
        if !outbox.send(frame, None) {
            return;
        }
    }
    let mut end = 1u32.to_be_bytes().to_vec();
    end.push(KIND);
    outbox.send(end, None);
}

/// A frame handed to the reverse connection and not yet written into its pipe, counted against
/// the outer reader's bound for as long as it lives.
struct Unread {
    /// A copy: a slice would keep the whole buffer the outer reader read it into.
    frame: Bytes,
    meter: Arc<Meter>,
}

impl Unread {
    fn hold(frame: &[u8], meter: &Arc<Meter>) -> Self {
        meter.hold(frame.len() + FRAME_OVERHEAD);
        Unread {
            frame: Bytes::copy_from_slice(frame),
            meter: Arc::clone(meter),
        }
    }
}

impl Drop for Unread {
    fn drop(&mut self) {
        self.meter.release(self.frame.len() + FRAME_OVERHEAD);
    }
}

/// Writes the frames handed over into the pipe, for the reverse connection's reader; ends the
/// pipe's direction when the peer ends its own. Once the reverse connection has gone, what
/// remains is dropped with the channel.
async fn take_in(mut taken: mpsc::UnboundedReceiver<Unread>, mut write: WriteHalf<DuplexStream>) {
    while let Some(unread) = taken.recv().await {
        let length = (unread.frame.len() as u32).to_be_bytes();
        let written = match write.write_all(&length).await {
            Ok(()) => write.write_all(&unread.frame).await,
            Err(error) => Err(error),
        };
        if written.is_err() {
            return;
        }
    }
    let _ = write.shutdown().await;
}

/// A service a client serves back to the server over each connection it opens, with the
/// settings it serves it with; its type erased, so that client builders stay of one type.
#[derive(Clone)]
pub(crate) struct ServeBack(Arc<dyn ServeBackSet>);

impl fmt::Debug for ServeBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServeBack")
    }
}

impl ServeBack {
    /// Checks `service` as a server checks what it serves, and keeps it, with the settings of
    /// `builder`, for the client's connections.
    pub(crate) fn new<S: ServiceSet>(builder: ServerBuilder, service: S) -> Result<Self, RpcError> {
        let served = Arc::new(Served::new(service)?);
        let mut config = builder.into_config();
        // The outer connection pings and watches for silence; and the server may call at any
        // time, so the reverse connection is never idle.
        config.keepalive = None;
        config.idle_timeout = None;
        Ok(ServeBack(Arc::new(Prepared { served, config })))
    }

    /// How many bytes the client may queue for the server before the reverse connection waits:
    /// the server builder's limit for one connection.
    pub(crate) fn queue_limit(&self) -> usize {
        self.0.queue_limit()
    }

    /// Serves the reverse connection on `pipe` until it ends or, told by `stop`, drains,
    /// taking frames of at most `max_frame_len` bytes.
    pub(crate) fn serve(
        &self,
        pipe: DuplexStream,
        max_frame_len: usize,
        stop: Stop,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        self.0.serve(pipe, max_frame_len, stop)
    }
}

/// A client's service served back on one of its connections: the task serving it, and what
/// tells it to stop.
pub(crate) struct ServingBack {
    stop: Stop,
    /// Never changes; closed once the task serving ends.
    ended: watch::Receiver<()>,
    _task: AbortOnDrop,
}

impl ServingBack {
    /// Serves `serve_back` on the reverse connection's `pipe`, taking frames of at most
    /// `max_frame_len` bytes.
    pub(crate) fn start(serve_back: &ServeBack, pipe: DuplexStream, max_frame_len: usize) -> Self {
        let stop = Stop::default();
        let (alive, ended) = watch::channel(());
        let serving = serve_back.serve(pipe, max_frame_len, stop.clone());
        let task = tokio::spawn(async move {
            serving.await;
            drop(alive);
        });
        ServingBack {
            stop,
            ended,
            _task: AbortOnDrop::new(&task),
        }
    }

    /// Tells the service served back, at once, to take no new call: the server hears so on the
    /// reverse connection (a GoAway), the calls running answer, then the reverse connection
    /// closes, and the future returned with it.
    pub(crate) fn stop(&self) -> impl Future<Output = ()> + Send + use<> {
        self.stop.stop();
        let mut ended = self.ended.clone();
        async move {
            // Nothing is ever sent: this returns once the task has ended.
            let _ = ended.changed().await;
        }
    }
}

trait ServeBackSet: Send + Sync {
    fn queue_limit(&self) -> usize;

    fn serve(
        &self,
        pipe: DuplexStream,
        max_frame_len: usize,
        stop: Stop,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

struct Prepared<S> {
    served: Arc<Served<S>>,
    config: ServerConfig,
}

impl<S: ServiceSet> ServeBackSet for Prepared<S> {
    fn queue_limit(&self) -> usize {
        self.config.max_queued_per_connection
    }

    fn serve(
        &self,
        pipe: DuplexStream,
        max_frame_len: usize,
        stop: Stop,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let mut config = self.config.clone();
        config.max_frame_len = config.max_frame_len.min(max_frame_len);
        Box::pin(serve_reverse(Arc::clone(&self.served), config, pipe, stop))
    }
}

/// The server's side of a reverse connection: a client of what the connection's client serves
/// back, once the reverse connection's hellos are exchanged.
pub(crate) struct Caller {
    connected: watch::Receiver<Option<Result<Channel, RpcError>>>,
    _connecting: AbortOnDrop,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller").finish_non_exhaustive()
    }
}

impl Caller {
    /// Connects a client over the reverse connection on `pipe`, accepting frames of at most
    /// `max_frame_len` bytes and giving each stream `stream_window` bytes of credit.
    pub(crate) fn connect(pipe: DuplexStream, max_frame_len: usize, stream_window: u32) -> Self {
        let (publish, connected) = watch::channel(None);
        let connecting = tokio::spawn(async move {
            let client = DynamicClient::builder()
                .disable_keepalive()
                .max_frame_len(max_frame_len)
                .stream_window(stream_window)
                .connect_stream(pipe)
                .await;
            let _ = publish.send(Some(client.map(|client| client.channel().clone())));
        });
        Caller {
            connected,
            _connecting: AbortOnDrop::new(&connecting),
        }
    }

    /// Whether a call the server made over the reverse connection still waits for its
    /// answer, or a stream of one is open.
    pub(crate) fn is_calling(&self) -> bool {
        match &*self.connected.borrow() {
            Some(Ok(channel)) => channel
                .fixed_connection()
                .is_some_and(|connection| connection.has_calls_waiting()),
            _ => false,
        }
    }

    /// A client of the service `C` the connection's client serves back. Each call is checked
    /// against what it serves before it is sent.
    pub(crate) async fn client<C: ServiceClient>(&self) -> Result<C, RpcError> {
        Ok(self.channel().await?.client::<C>())
    }

    /// The channel over the reverse connection, once its hellos are exchanged.
    pub(crate) async fn channel(&self) -> Result<Channel, RpcError> {
        let mut connected = self.connected.clone();
        match connected.wait_for(Option::is_some).await {
            Ok(connected) => match &*connected {
                Some(channel) => channel.clone(),
                None => Err(RpcError::ConnectionClosed),
            },
            Err(_) => Err(RpcError::ConnectionClosed),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    /// An outer frame of kind 9 carrying `len` bytes of the reverse connection.
    fn reverse_frame(len: usize) -> Vec<u8> {
        let mut frame = vec![0; 1 + len];
        frame[0] = KIND;
        frame
    }

    #[crate::service]
    trait Echo {
        async fn echo(&self, text: String) -> String;
    }

    struct Plain;

    impl Echo for Plain {
        async fn echo(&self, text: String) -> String {
            text
        }
    }

    #[test]
    fn a_client_serving_back_queues_what_its_server_builder_lets_a_connection_queue() {
        let builder = ServerBuilder::default().max_queued_bytes_per_connection(12_345);
        let serve_back = ServeBack::new(builder, EchoServer::new(Plain)).expect("serves");
        assert_eq!(serve_back.queue_limit(), 12_345);
        assert_eq!(format!("{serve_back:?}"), "ServeBack");
    }

    #[tokio::test]
    async fn the_outer_reader_reads_on_until_a_mebibyte_waits_for_the_reverse_connection() {
        let (outbox, _queue) = Outbox::new();
        let (mut tunnel, mut inner) = Tunnel::open(outbox, 1024 * 1024);
        const FRAME: usize = 16 * 1024;
        // 62 frames of 16 KiB, 1,023,744 bytes with their overhead, are under a mebibyte
        // however much the pipe has taken: reading goes on.
        for _ in 0..62 {
            tunnel.deliver(&reverse_frame(FRAME));
        }
        assert!(tunnel.may_read(), "under the bound");

        // 70, over a mebibyte even with the pipe's 64 KiB taken: reading pauses.
        for _ in 62..70 {
            tunnel.deliver(&reverse_frame(FRAME));
        }
        assert!(!tunnel.may_read(), "over the bound");

        // The reverse connection reads them all: reading resumes.
        let mut read = 0;
        let mut buffer = vec![0; 64 * 1024];
        while read < 70 * (4 + FRAME) {
            read += inner.read(&mut buffer).await.expect("reads");
        }
        tunnel.wait_may_read().await;
        assert!(tunnel.may_read());
    }
}
