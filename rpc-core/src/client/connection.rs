//! One live, multiplexed connection to a server: many calls in flight, answers in any order.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio::time::Instant;

use super::ClientConfig;
use super::endpoint::Changes;
use super::pending::{Forgotten, Pending, Reply, ReplyFuture};
use super::reader::read_responses;
use super::shared_reader::{Driving, SharedReader};
use crate::peer_process::{End, PeerProcess};
use crate::protocol::{
    self, CallSent, Claim, Decode, Encode, Frame, FrameReader, FrameWriter, GatedWrite, Head,
    Hello, Meter, Outbox, PeerInfo, Queue, SendGate, Tail, code, finish_frame,
    write_frames_through,
};
use crate::reverse::{self, ServingBack, Tunnel};
use crate::service::{MethodInfo, ServiceInfo};
use crate::slots::{CallSlot, CallSlots};
use crate::socket::Socket;
use crate::stream::registry::InboundParts;
use crate::stream::{self, InboundOptions, Outbound, Streams, Upload};
use crate::task::{AbortOnDrop, is_off_the_workers, until};
use crate::telemetry::{CallEnd, OpenConnection, Side, Traffic};
use crate::{Metadata, RpcError, StatusCode, Streaming};

/// A live connection to one server. Calls go through [`Connection::start`].
pub(crate) struct Connection {
    outbox: Outbox,
    /// A call holds a slot from before it is sent until it is answered or abandoned (or its
    /// streamed result ends), so that no more calls are in flight than the server runs at once:
    /// the server then never has to stop reading, and a cancellation always reaches it.
    slots: Arc<CallSlots>,
    /// A call with a streamed argument holds one of these too, with its slot, when the server
    /// runs only so many of them at once: past them, the server would park the call.
    uploads: Option<Arc<CallSlots>>,
    pending: Arc<Pending>,
    streams: Arc<Streams>,
    next_id: AtomicU64,
    server: PeerInfo,
    /// The service whose fingerprints the handshake compared with the server's table (empty
    /// for a generic client's connection, which compared none).
    compared: &'static str,
    /// The last method of the hellos' service found in the server's table, with the same
    /// fingerprint: [`LastChecked`].
    checked: LastChecked,
    /// Once nobody can call any more, the reader has nothing to wait for. (The writer ends by
    /// itself when the last outbox sender is dropped, shutting the connection down.)
    _reader: AbortOnDrop,
    /// The reader, which the connection's only call in flight drives while it waits.
    shared_reader: Arc<SharedReader>,
    /// The runtime the reader's task runs on. A call drives the reader only on it: polled on
    /// another, the reader would make its timers there, on a runtime that may have none, or may
    /// be gone before them.
    runtime: tokio::runtime::Id,
    /// What the client serves back to the server, on the reverse connection inside this one.
    serving_back: Option<ServingBack>,
    /// With busy polling on, where each call sent tells the reader an answer is on its way.
    calls_sent: Option<Arc<CallSent>>,
    /// The server runs on this runtime: only calls made off its workers tell `calls_sent`.
    server_nearby: bool,
    /// Over TCP, this connection's end in this process's table of them, for as long as it
    /// lives.
    _end: Option<End>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Nobody can call any more: whoever waits for the end hears of it now.
        self.pending.close(RpcError::ConnectionClosed);
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// What one call is: its method, and the options it is made with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallSpec<'a> {
    /// The service the call is of: on a server of several, it need not be the one the
    /// connection's hello named.
    pub(crate) service: ServiceInfo,
    pub(crate) method: &'static MethodInfo,
    /// The deadline the caller gave, for error messages.
    pub(crate) deadline: Duration,
    /// When the call, retries included, must be over.
    pub(crate) expires: Option<Instant>,
    /// Nothing has waited since `expires` was set: what is left of the deadline is all of it,
    /// and the clock need not be read again to tell.
    pub(crate) fresh: bool,
    pub(crate) metadata: &'a Metadata,
    /// The result is a byte string the caller takes as it was read: a large one may be read
    /// into memory of its own.
    pub(crate) takes_byte_string: bool,
}

impl CallSpec<'_> {
    pub(crate) fn deadline_exceeded(&self) -> RpcError {
        RpcError::DeadlineExceeded {
            method: self.method.name.to_owned(),
            deadline: self.deadline,
        }
    }
}

/// Why one attempt at a call failed, by what a retry could do about it.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The call did not run: it never left, or the server refused to start it. Safe to try
    /// again, on this server or another.
    NotRun(RpcError),
    /// The connection was lost with the call in flight: it may or may not have run.
    Lost(RpcError),
    /// Anything else: the answer stands.
    Final(RpcError),
}

impl Failure {
    /// Whether the failure counts against the server: the connection was lost or the server
    /// did not run the call, or no answer came in time. Answers the server gave, errors
    /// included, do not.
    pub(crate) fn is_the_servers(&self) -> bool {
        match self {
            Failure::Lost(_) | Failure::NotRun(_) => true,
            Failure::Final(error) => matches!(
                error,
                RpcError::DeadlineExceeded { .. }
                    | RpcError::KeepaliveTimeout(_)
                    | RpcError::ConnectionClosed
                    | RpcError::Io(_)
            ),
        }
    }

    /// The error a caller sees when the failure is not retried.
    pub(crate) fn into_error(self, method: &str) -> RpcError {
        match self {
            Failure::NotRun(error) | Failure::Final(error) => error,
            Failure::Lost(cause) => RpcError::Interrupted {
                method: method.to_owned(),
                cause: Box::new(cause),
            },
        }
    }
}

impl Connection {
    /// Asks the server on this connection whether it is serving, waiting at most `within`.
    pub(crate) async fn check_health(
        self: &Arc<Self>,
        within: Duration,
    ) -> Result<crate::health::ServingStatus, RpcError> {
        let metadata = Metadata::new();
        let spec = CallSpec {
            // The server's own method, unqualified, as a generic client calls it.
            service: <crate::dynamic::DynamicClient as crate::ServiceClient>::INFO,
            method: &crate::health::CHECK,
            deadline: within,
            expires: Instant::now().checked_add(within),
            fresh: true,
            metadata: &metadata,
            takes_byte_string: false,
        };
        self.start(spec, &("",), None, false)
            .await
            .and_then(Answered::into_value)
            .map_err(|failure| failure.into_error(crate::health::CHECK.name))
    }

    /// Exchanges hellos over `stream`, then starts the connection's reader and writer tasks.
    pub(crate) async fn establish<S>(
        stream: S,
        peer: PeerProcess,
        service: &ServiceInfo,
        config: &ClientConfig,
    ) -> Result<Arc<Connection>, RpcError>
    where
        S: crate::transport::Split,
    {
        // Before a byte is sent: a type that cannot be described is reported here, and so is a
        // set of services to serve back that cannot be served.
        service.describe()?;
        let serve_back = config.serve_back.clone().transpose()?;
        let beneath = stream.reads_past_tokio();
        let (read, write) = stream.split();
        let socket = S::socket(&read);
        // Whether the reader reads a TCP socket itself, not through TLS.
        let plain_tcp = socket.as_ref().is_some_and(Socket::is_tcp);
        let mut reader = FrameReader::new(read, config.max_frame_len);
        reader.set_socket(socket);
        reader.set_tcp_beneath(beneath);
        let mut writer = FrameWriter::new(GatedWrite::new(write));
        let window = config.stream_window;
        Hello::new(
            service,
            config.max_frame_len,
            config.keepalive,
            None,
            window,
        )
        .serving_back(serve_back.is_some())
        .send(&mut writer)
        .await?;
        let mut server = Hello::receive(&mut reader, config.max_frame_len).await?;
        server.check_serves(service.name)?;
        server.compare(service.describe()?);
        let traffic = Traffic::new(Side::Client, service.name);
        reader.count_traffic(traffic.clone());
        writer.count_traffic(traffic);
        reader.set_silence_limit(server.silence_limit(config.keepalive));
        let (elsewhere, end) = peer.place();
        let streams =
            Arc::new(Streams::new(window, server.stream_window).peer_elsewhere(elsewhere));
        // A server over TCP on this runtime is polled for only after reads of several answers,
        // whatever the calls in flight.
        let nearby = !elsewhere && end.is_some();
        let polling = (elsewhere || nearby).then_some(config.busy_poll);
        let calls_sent = reader.set_busy_poll(polling, &streams);
        writer.set_stall_limit(config.keepalive.map(|keepalive| keepalive.timeout));

        let slots = CallSlots::new(server.max_concurrent_calls.unwrap_or(usize::MAX));
        // There a lone call's answer is polled for only by a caller off the runtime's workers
        // that drives the reader (`BusyPoll::batches_only`): only such callers say when a call
        // went out.
        // Having answered its only call in flight, the reader waits for the next call rather
        // than poll, where a turn it took could wake a second worker of the runtime to displace
        // the caller's: unless the server calls back, whose calls it polls on for.
        let several_workers = crate::task::runs_on_several_workers();
        reader.busy_poll_counting_calls(&slots, several_workers && serve_back.is_none());
        if nearby {
            reader.busy_poll_after_batches_only();
        }
        // The server shares this runtime, whose workers run the writer and the reader side by
        // side: a reader of the TCP socket itself waits for a small send under way rather than
        // sleep in the socket's lock. (Over TLS the halves take turns at the lock
        // `tokio::io::split` holds across each read and write.)
        if nearby && plain_tcp {
            let gate = Arc::new(SendGate::default());
            if reader.wait_for_sends(&gate) {
                writer.transport_mut().raise_around_writes(gate);
            }
        }
        writer.watch_calls(Arc::clone(&slots));
        // A client serving back queues its answers like a server, within a limit, so that a
        // server that reads nothing cannot make it hold them without bound. Its uploads keep to
        // the limit together either way (`StreamFrames::wait_for_room`).
        let queue_limit = serve_back
            .as_ref()
            .map_or(protocol::DEFAULT_QUEUE_LIMIT, |serve_back| {
                serve_back.queue_limit()
            });
        let (outbox, queue) = Outbox::with_meter(Meter::new(queue_limit, None));
        let pending = Arc::new(Pending::default());
        outbox.claim_requests_from(Arc::clone(&pending) as Arc<dyn Claim>);
        let heartbeat = config.keepalive.map(|keepalive| keepalive.interval);
        let closer = Closer {
            pending: Arc::clone(&pending),
            streams: Arc::clone(&streams),
        };
        let writer = tokio::spawn(write_requests(writer, queue, heartbeat, closer.clone()));
        // Counted open for as long as the reader reads.
        let open = OpenConnection::new(Side::Client, service.name);
        let (tunnel, serving) = match serve_back {
            Some(serve_back) => {
                let (tunnel, pipe) = Tunnel::open(outbox.clone(), server.max_frame_len);
                let max_frame_len = reverse::max_frame_len(config.max_frame_len);
                let serving = ServingBack::start(&serve_back, pipe, max_frame_len);
                (Some(tunnel), Some(serving))
            }
            None => (None, None),
        };
        let reading = read_responses(
            reader,
            closer,
            writer.abort_handle(),
            outbox.clone(),
            open,
            tunnel,
        );
        let shared_reader = SharedReader::new(reading);
        let reader = tokio::spawn(Arc::clone(&shared_reader).task());
        let runtime = tokio::runtime::Handle::current().id();
        Ok(Arc::new(Connection {
            outbox,
            slots,
            uploads: server.max_uploads.map(CallSlots::new),
            pending,
            streams,
            next_id: AtomicU64::new(0),
            server,
            compared: service.name,
            checked: LastChecked::default(),
            _reader: AbortOnDrop::new(&reader),
            shared_reader,
            serving_back: serving,
            calls_sent,
            server_nearby: nearby,
            runtime,
            _end: end,
        }))
    }

    /// Checks a call of `method` of `service` against the server's table: that the server has
    /// it, with the same fingerprint. The handshake compared the fingerprints of the service
    /// the connection was made for; another, called over a generic client's connection (as a
    /// server calls a client that serves back), is compared here.
    pub(crate) fn check_call(
        &self,
        service: &ServiceInfo,
        method: &MethodInfo,
    ) -> Result<(), RpcError> {
        if service.name.is_empty() || service.name == self.compared {
            self.server.check_method(method)
        } else {
            self.server.check_other(service, method)
        }
    }

    /// Whether `service` is the one the server's hello named, whose methods go unqualified. A
    /// generic client's server names its first service; the client names its methods as they
    /// are.
    fn is_own(&self, service: &ServiceInfo) -> bool {
        service.name.is_empty() || service.name == self.server.service
    }

    /// The names of the services the server announced.
    pub(crate) fn served(&self) -> Vec<String> {
        self.server.served()
    }

    /// Whether the connection has closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.pending.is_closed()
    }

    /// Tells the service this client serves back on this connection, at once, to take no new
    /// call from the server; the future returned resolves once the calls running have answered
    /// and the reverse connection has closed (at once if the client serves nothing back).
    pub(crate) fn stop_serving_back(&self) -> impl Future<Output = ()> + Send + use<> {
        let stopping = self.serving_back.as_ref().map(ServingBack::stop);
        async move {
            if let Some(stopping) = stopping {
                stopping.await;
            }
        }
    }

    /// Checks that the server serves `service`.
    pub(crate) fn check_has(&self, service: &str) -> Result<(), RpcError> {
        self.server.check_has(service)
    }

    /// Whether a call made on this connection still waits for its answer, or a stream of one
    /// is open.
    pub(crate) fn has_calls_waiting(&self) -> bool {
        self.pending.any_waiting() || self.streams.any_open()
    }

    /// Whether the server said it takes no new calls on this connection.
    pub(crate) fn is_draining(&self) -> bool {
        self.pending.is_draining()
    }

    /// Whether new calls may go over it: it is open, and the server has not said otherwise.
    pub(crate) fn takes_new_calls(&self) -> bool {
        !self.is_closed() && !self.is_draining()
    }

    /// Returns once the connection has closed.
    pub(crate) async fn closed(&self) {
        self.pending.wait_closed().await;
    }

    /// Counts the connection's end in `changes` once it closes, or at once if it has.
    pub(crate) fn count_close_in(&self, changes: Changes) {
        self.pending.count_close_in(changes);
    }

    /// Sends a call, with its upload if any, and waits for the server's response.
    pub(crate) async fn start<A: Encode + ?Sized>(
        self: &Arc<Self>,
        mut spec: CallSpec<'_>,
        args: &A,
        upload: Option<Outbound>,
        download: bool,
    ) -> Result<Answered, Failure> {
        let method = spec.method;
        let own = self.is_own(&spec.service);
        let checked = if own {
            self.checked
                .check(method, || self.check_call(&spec.service, method))
        } else {
            self.server.check_other(&spec.service, method)
        };
        checked.map_err(Failure::Final)?;
        // The slots first: a call waiting for one holds no encoded request. An upload's place
        // before its slot, so that a call waiting for a place holds no slot either. Each is
        // taken in place, not through a helper `async fn`: awaited, a helper is a future of its
        // own even when a slot is free, and cost a sequential call 59 more instructions
        // (callgrind, one shared runtime).
        let uploads = self.uploads.as_ref().filter(|_| upload.is_some());
        let place = match uploads {
            Some(uploads) => Some(match uploads.try_take() {
                Some(place) => place,
                None => Box::pin(self.wait_for_slot(uploads, &mut spec)).await?,
            }),
            None => None,
        };
        let slot = match self.slots.try_take() {
            Some(slot) => slot,
            None => Box::pin(self.wait_for_slot(&self.slots, &mut spec)).await?,
        };
        let slot = match place {
            Some(place) => slot.with_upload(place),
            None => slot,
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = self
            .request_frame(id, spec, own, args)
            .map_err(Failure::Final)?;
        // This task's waker, which the reply wakes: taken in the same poll as the reply's future
        // is first polled (nothing below waits before it).
        let waker = std::future::poll_fn(|cx| std::task::Poll::Ready(cx.waker().clone())).await;
        // The call reads its own answer, if no other call does already and it is the only one in
        // flight: from before the request leaves, so that the reader's wake at its sending comes
        // here rather than to the reader's task. Made off the runtime's workers (in a `block_on`),
        // it spares a thread's wakeup for each answer and each request; from a task on a worker,
        // the reader's hand-over to the caller's task and its look at its socket before the caller
        // runs (`shared_reader::stops_for_driver`): a sequential call's p50 across two processes on
        // default runtimes went from 9.9-10.1 µs to 9.7-9.8 (six interleaved pairs, 2026-12-08),
        // and pinned to a core each 0.1-0.3 µs lower in ten pairs, one worker or two.
        let off_workers = is_off_the_workers();
        // Not on a connection that serves calls back, nor with a stream open: their frames come
        // whether or not a caller polls.
        let alone = || {
            self.slots.taken_now() <= 1 && !self.streams.any_open() && self.serving_back.is_none()
        };
        // Only on the runtime the reader's task runs on: polled on another, the reader would make
        // its timers there, on a runtime that may have none or may be gone before them. A task
        // drives only a reader that polls for its answer (`BusyPoll`), its server elsewhere: one
        // that waits for the runtime to wake it gains nothing from the hand-over spared, and a
        // caller woken by the runtime itself waited longer (with the server on the caller's
        // runtime, a p50 of 24-27 µs against 15; with busy polling off across two processes,
        // 58.4-59.8 µs against 57.8-58.9).
        let on_its_runtime = || {
            tokio::runtime::Handle::try_current().is_ok_and(|runtime| runtime.id() == self.runtime)
        };
        let (may_drive, on_a_worker) = if off_workers {
            (on_its_runtime(), None)
        } else {
            let polls = self.calls_sent.is_some() && !self.server_nearby;
            (polls && alone() && on_its_runtime(), Some(id))
        };
        let driving = may_drive
            .then(|| self.shared_reader.start_driving(&waker, on_a_worker, alone))
            .flatten();
        if driving.is_none() {
            self.shared_reader.crowd_if_driven();
        }
        let answer = self
            .pending
            .register(
                id,
                method.name,
                frame,
                spec.expires,
                spec.takes_byte_string,
                waker,
            )
            .map_err(Failure::NotRun)?;
        let mut waiting = Waiting {
            connection: self,
            id,
            armed: true,
        };
        // Streams are registered before the request leaves, so nothing the server sends back
        // arrives before there is a place for it.
        let inbound = download.then(|| self.streams.open_inbound(id));
        let credit = upload.as_ref().map(|_| self.streams.open_outbound(id));
        if !self.outbox.send_request(id) {
            waiting.armed = false;
            self.pending.forget(id);
            return Err(Failure::NotRun(self.pending.close_reason()));
        }
        // Told after the request went out: a reader woken by it then overlaps no write. A
        // request written straight through may be answered, and its answer read, before this
        // runs on, and the reader then polls one window for nothing (bounded by its window,
        // which such polls in vain shrink). Told before the write, calls made from `main`
        // took a median 2–3 µs longer (four interleaved pairs, 2026-12-06).
        if let Some(calls_sent) = &self.calls_sent
            && (off_workers || !self.server_nearby)
        {
            calls_sent.now(off_workers);
        }
        let upload = upload.zip(credit).map(|(items, credit)| {
            Upload::start(id, items, credit, &self.outbox, self.server.max_frame_len)
        });
        // Past the deadline, the connection's reader answers `Reply::Expired`, having
        // told the server if need be.
        let reply = match &driving {
            Some(driving) => answer_driving(answer, driving).await,
            None => answer.await,
        };
        drop(driving);
        waiting.armed = false; // answered: nothing to cancel, unless a stream follows
        let reply = reply.ok_or_else(|| Failure::Lost(self.pending.close_reason()))?;
        Ok(Answered {
            method,
            id,
            deadline: spec.deadline,
            reply,
            expires: spec.expires,
            slot,
            inbound: inbound.map(|parts| (parts, self.outbox.clone())),
            upload,
        })
    }

    /// One of `slots`, none being free now: waits for it until the call's deadline. Boxed by
    /// the calls that wait: in place, its timer and its place in the queue (488 bytes, twice
    /// over, for a call's upload and for the call) were in every call's future, which a caller
    /// that spawns a task for each call copies whole, at 1,440 bytes, several times a call.
    async fn wait_for_slot(
        &self,
        slots: &Arc<CallSlots>,
        spec: &mut CallSpec<'_>,
    ) -> Result<CallSlot, Failure> {
        spec.fresh = false;
        until(spec.expires, slots.take())
            .await
            .map_err(|_| Failure::Final(spec.deadline_exceeded()))
    }

    fn request_frame<A: Encode + ?Sized>(
        &self,
        id: u64,
        spec: CallSpec<'_>,
        own: bool,
        args: &A,
    ) -> Result<Frame, RpcError> {
        let encode_failed = |e: protocol::CodecError| RpcError::Encode {
            method: spec.method.name.to_owned(),
            reason: e.to_string(),
        };
        // What is left of the deadline, in whole milliseconds rounded up so that a short
        // deadline never reads as "none".
        let timeout_ms = match spec.expires {
            Some(expires) => {
                let left = if spec.fresh {
                    spec.deadline
                } else {
                    expires.saturating_duration_since(Instant::now())
                };
                millis_rounded_up(left)
            }
            None => 0,
        };
        // A service other than the one the hellos named (not `own`) is called by its qualified
        // name.
        let service = (!own).then_some(spec.service.name);
        let method = spec.method.name;
        let mut frame = protocol::begin_request(id, service, method, timeout_ms, spec.metadata);
        frame
            .encode(|bytes| args.encode(bytes))
            .map_err(encode_failed)?;
        finish_frame(&mut frame, self.server.max_frame_len)?;
        Ok(frame)
    }
}

/// The method that last passed a check, by address: a client calls the same few methods over
/// and over, and the server's table does not change, so the check, a lookup by name in the
/// table, is made again only for another method. (A `&'static` one is never freed: no other
/// method ever has its address.)
#[derive(Debug, Default)]
struct LastChecked(AtomicUsize);

impl LastChecked {
    fn check(
        &self,
        method: &'static MethodInfo,
        check: impl FnOnce() -> Result<(), RpcError>,
    ) -> Result<(), RpcError> {
        let address = std::ptr::from_ref(method).addr();
        if self.0.load(Ordering::Relaxed) == address {
            return Ok(());
        }
        check()?;
        self.0.store(address, Ordering::Relaxed);
        Ok(())
    }
}

/// `left` in whole milliseconds, whole microseconds rounded up, and at least 1: a short
/// deadline never reads as none. Whole seconds and the rest apart: no 128-bit division.
fn millis_rounded_up(left: Duration) -> u64 {
    let rest = u64::from(left.subsec_micros().div_ceil(1000));
    left.as_secs()
        .saturating_mul(1000)
        .saturating_add(rest)
        .max(1)
}

/// A call the server has answered; for a streaming result, the stream's parts.
pub(crate) struct Answered {
    method: &'static MethodInfo,
    id: u64,
    deadline: Duration,
    reply: Reply,
    expires: Option<Instant>,
    slot: CallSlot,
    /// For a streamed result, the stream's parts, and the outbox its credits and cancellation
    /// go out through.
    inbound: Option<(InboundParts, Outbox)>,
    upload: Option<Upload>,
}

impl Answered {
    /// The result of a call without a streamed result.
    pub(crate) fn into_value<R: Decode>(mut self) -> Result<R, Failure> {
        let decoded = match &self.reply {
            // No frame to lend: a payload in a few bytes is copied.
            Reply::Small(value) => R::decode_lent(value.as_slice()),
            _ => {
                let (mut body, tail) = self.take_body()?;
                let whole = 0..body.len();
                protocol::decode_with(&mut body, whole, tail, R::decode_lent)
            }
        };
        decoded.map_err(|e| {
            Failure::Final(RpcError::Decode {
                method: self.method.name.to_owned(),
                reason: e.to_string(),
            })
        })
    }

    /// The streamed result of a call, which records through `end` how the call ended; or the
    /// failure, with `end` back.
    pub(crate) fn into_stream<T: Decode + Send + 'static>(
        mut self,
        end: CallEnd,
    ) -> Result<Streaming<T>, Box<(Failure, CallEnd)>> {
        if let Err(failure) = self.take_body() {
            return Err(Box::new((failure, end)));
        }
        Ok(self.stream(end))
    }

    /// The streamed result of a call whose method may return an error instead of its stream
    /// (`Result<Streaming<T>, E>`): the answer's body is the postcard encoding of a
    /// `Result<(), E>`, and the stream follows only an `Ok`. An `Err` ends the call: with it
    /// comes `end`, to record that the call is over.
    #[allow(clippy::type_complexity)]
    pub(crate) fn into_stream_or_error<T, E>(
        mut self,
        end: CallEnd,
    ) -> Result<Result<Streaming<T>, (E, CallEnd)>, Box<(Failure, CallEnd)>>
    where
        T: Decode + Send + 'static,
        E: Decode,
    {
        let (mut body, tail) = match self.take_body() {
            Ok(body) => body,
            Err(failure) => return Err(Box::new((failure, end))),
        };
        let decoded = match (body.first(), body.len(), &tail) {
            (Some(&0), 1, None) => return Ok(Ok(self.stream(end))),
            (Some(&1), len, _) => protocol::decode_with(&mut body, 1..len, tail, E::decode_lent)
                .map_err(|error| error.to_string()),
            _ => Err("it is neither `Ok(())` nor an `Err` (a first byte of 0 or 1)".to_owned()),
        };
        match decoded {
            Ok(error) => Ok(Err((error, end))),
            Err(reason) => {
                let method = self.method.name.to_owned();
                let reason = format!("the answer to a call of a streamed result: {reason}");
                Err(Box::new((
                    Failure::Final(RpcError::Decode { method, reason }),
                    end,
                )))
            }
        }
    }

    /// The call's stream, once its answer said it follows.
    fn stream<T: Decode + Send + 'static>(mut self, end: CallEnd) -> Streaming<T> {
        let Some((parts, outbox)) = self.inbound.take() else {
            unreachable!("a streaming call registers its stream");
        };
        let options = InboundOptions {
            id: self.id,
            method: self.method.name,
            outbox,
            deadline: self.expires.map(|at| (at, self.deadline)),
            cancel_on_drop: true,
            slot: Some(self.slot),
            upload: self.upload,
            end: Some(end),
        };
        stream::inbound_stream(parts, options)
    }

    /// The answer's body, moved out: a clone would change the reference count the body
    /// shares with the buffer the connection's reader, on another thread, reads into.
    fn take_body(&mut self) -> Result<(Bytes, Option<Tail>), Failure> {
        let method = self.method.name;
        match &mut self.reply {
            Reply::Ok(body, tail) => Ok((std::mem::take(body), tail.take())),
            Reply::Small(value) => Ok((Bytes::copy_from_slice(value.as_slice()), None)),
            Reply::Err { code, message } => {
                let method = method.to_owned();
                Err(remote_error(
                    method,
                    self.id,
                    *code,
                    message.clone(),
                    self.deadline,
                ))
            }
            Reply::Failed(reason) => Err(Failure::Lost(reason.clone())),
            Reply::NotSent(reason) => Err(Failure::NotRun(reason.clone())),
            Reply::Expired => Err(Failure::Final(RpcError::DeadlineExceeded {
                method: method.to_owned(),
                deadline: self.deadline,
            })),
        }
    }
}

/// `answer`, the reader driven meanwhile by the caller that waits for it.
async fn answer_driving(mut answer: ReplyFuture<'_>, driving: &Driving) -> Option<Reply> {
    std::future::poll_fn(|cx| {
        if let Poll::Ready(reply) = Pin::new(&mut answer).poll(cx) {
            return Poll::Ready(reply);
        }
        if driving.drive(cx) {
            return Pin::new(&mut answer).poll(cx);
        }
        // The reader's task has it for a turn, a short one: looked at again at once, rather
        // than after a wake from the task's worker, which the caller's thread would sleep for.
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// A call that was queued and waits for its answer. Dropped while still armed (the caller gave
/// up), it takes its request back if it was not written yet, and otherwise tells the server to
/// drop the handler, as the connection's reader does for a call past its deadline.
struct Waiting<'a> {
    connection: &'a Connection,
    id: u64,
    armed: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.armed && self.connection.pending.forget(self.id) == Forgotten::Sent {
            // The request is ahead of this in the outbox, so the server always sees it first.
            self.connection
                .outbox
                .send_head(&Head::Cancel { id: self.id });
        }
    }
}

/// Turns an error response into the failure the caller sees.
fn remote_error(
    method: String,
    id: u64,
    code: u32,
    message: String,
    deadline: Duration,
) -> Failure {
    if let Some(status) = StatusCode::from_wire_code(code) {
        return refused(method, status, message);
    }
    match code {
        code::UNKNOWN_METHOD => Failure::Final(RpcError::UnknownMethod { method }),
        code::INVALID_ARGUMENTS => Failure::Final(RpcError::InvalidArguments {
            method,
            reason: message,
        }),
        code::HANDLER_PANICKED => Failure::Final(RpcError::HandlerPanicked {
            method,
            request_id: id,
            message: (!message.is_empty()).then_some(message),
        }),
        code::DEADLINE_EXCEEDED => Failure::Final(RpcError::DeadlineExceeded { method, deadline }),
        code::NOT_RUN => Failure::NotRun(RpcError::ServerClosing { method }),
        code::LIMIT_EXCEEDED => Failure::Final(RpcError::LimitExceeded { method, message }),
        _ => Failure::Final(RpcError::Server { method, message }),
    }
}

/// A call the server's interceptor refused with `status`: it did not run.
fn refused(method: String, status: StatusCode, message: String) -> Failure {
    match status {
        StatusCode::Unauthenticated => {
            Failure::Final(RpcError::Unauthenticated { method, message })
        }
        StatusCode::PermissionDenied => {
            Failure::Final(RpcError::PermissionDenied { method, message })
        }
        // A server that cannot take the call now: another may.
        StatusCode::Unavailable => Failure::NotRun(RpcError::Refused {
            method,
            status,
            message,
        }),
        status => Failure::Final(RpcError::Refused {
            method,
            status,
            message,
        }),
    }
}

/// What fails when the connection ends: the calls waiting for answers and the open streams.
#[derive(Clone)]
pub(super) struct Closer {
    pub(super) pending: Arc<Pending>,
    pub(super) streams: Arc<Streams>,
}

impl Closer {
    pub(super) fn close(&self, reason: RpcError) {
        self.streams.close_all(reason.clone());
        self.pending.close(reason);
    }
}

/// Writes the connection's frames; a failure fails whatever waits on the connection. An
/// `async fn`, unlike the writer it runs (ARCHITECTURE.md), though it then holds its arguments
/// twice (about 0.4 KiB per connection): made as `write_frames_through(..).map(..)`, it
/// measured streams of small items 13–17% slower, in interleaved runs across two processes and
/// on one runtime, for no cause a profile showed.
async fn write_requests<W: AsyncWrite + Unpin + Send + 'static>(
    writer: FrameWriter<W>,
    queue: Queue,
    heartbeat: Option<Duration>,
    closer: Closer,
) {
    if let Err(error) = write_frames_through(writer, queue, heartbeat).await {
        closer.close(error.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is left of a deadline goes to the server in whole milliseconds, rounded up as a
    /// count of microseconds is, and never as 0, which would mean none.
    #[test]
    fn what_is_left_of_a_deadline_is_rounded_up_to_whole_milliseconds() {
        for (left, ms) in [
            (Duration::ZERO, 1),
            (Duration::from_nanos(999), 1),
            (Duration::from_micros(1), 1),
            (Duration::from_micros(1000), 1),
            (Duration::from_micros(1001), 2),
            (Duration::from_nanos(1_000_999), 1),
            (Duration::from_millis(2000), 2000),
            (Duration::from_micros(2_000_500), 2001),
            (Duration::MAX, u64::MAX),
        ] {
            assert_eq!(millis_rounded_up(left), ms, "{left:?}");
            let by_micros = u64::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u64::MAX);
            assert_eq!(ms, by_micros.max(1), "as a count of microseconds: {left:?}");
        }
    }

    /// A method that passed the check is not checked again until another has passed; one that
    /// failed is checked every time it is called.
    #[test]
    fn a_method_that_passed_is_not_checked_again_and_one_that_failed_always_is() {
        static GOOD: MethodInfo = MethodInfo {
            name: "good",
            idempotent: false,
        };
        static BAD: MethodInfo = MethodInfo {
            name: "bad",
            idempotent: false,
        };
        let checks = std::cell::Cell::new(0);
        let check = |method: &MethodInfo| {
            checks.set(checks.get() + 1);
            if method.name == "bad" {
                Err(RpcError::Protocol("mismatched".into()))
            } else {
                Ok(())
            }
        };
        let last = LastChecked::default();
        assert!(last.check(&GOOD, || check(&GOOD)).is_ok());
        assert!(last.check(&GOOD, || check(&GOOD)).is_ok());
        assert_eq!(checks.get(), 1, "checked once");
        assert!(last.check(&BAD, || check(&BAD)).is_err());
        assert!(last.check(&BAD, || check(&BAD)).is_err());
        assert_eq!(checks.get(), 3, "a failure is checked every time");
        assert!(last.check(&GOOD, || check(&GOOD)).is_ok());
        assert_eq!(checks.get(), 3, "still remembered after a failure");
    }
}
