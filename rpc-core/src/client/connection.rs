//! One live, multiplexed connection to a server: many calls in flight, answers in any order.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::ClientConfig;
use super::endpoint::Changes;
use super::pending::{Answers, Forgotten, Pending, Reply, ReplyFuture, SmallValue};
use super::shared_reader::{Driving, SharedReader};
use crate::alarm::Alarm;
use crate::peer_process::{End, PeerProcess};
use crate::protocol::{
    self, CallSent, Claim, Decode, Encode, Frame, FrameReader, FrameWriter, GatedWrite, Head,
    Hello, Meter, Outbox, Outcome, PeerInfo, Queue, SendGate, Sender, Tail, code, finish_frame,
    go_away, write_frames_through,
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
    /// The reader, which a call made off the runtime's workers drives while it waits.
    shared_reader: Arc<SharedReader>,
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
        // Made off the runtime's workers (in a `block_on`), the call reads its own answer, if no
        // other call does already: from before the request leaves, so that the reader's wake
        // at its sending comes here rather than to the reader's worker. Only within a runtime,
        // whose timers the reader may set.
        let off_workers = is_off_the_workers();
        // Not on a connection that serves calls back, nor with a stream open: their frames come
        // whether or not a caller polls.
        let alone = || {
            self.slots.taken_now() <= 1 && !self.streams.any_open() && self.serving_back.is_none()
        };
        let driving = (off_workers && tokio::runtime::Handle::try_current().is_ok())
            .then(|| self.shared_reader.start_driving(&waker, alone))
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
struct Closer {
    pending: Arc<Pending>,
    streams: Arc<Streams>,
}

impl Closer {
    fn close(&self, reason: RpcError) {
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

/// How many frames in a row the reader reads at most before it looks whether the first deadline
/// has passed; otherwise it looks only when it has nothing to read.
const LOOK_AT_DEADLINES_EVERY: u32 = 256;

/// After handing on this many responses in a row, the reader takes a turn (to the back of its
/// worker's queue) before it reads on, so that the calls it woke run first. Without it a reader
/// with many calls in flight woke them by the hundred in one poll, and on one shared runtime
/// 256 callers on one connection fell at random, run by run, to half their calls a second
/// (0.64M-0.99M against 1.31M-1.52M), with both cores busy and the functions that touch what
/// the callers share taking four to eight times as long a call: the callers ran on both
/// workers, and those lines went from core to core at every call. With the turn every 64, by
/// hand (5 s runs, interleaved with the build before): 1.25M-1.47M calls/s in all of nine runs
/// there; across two processes 256 callers made 1.32M-1.39M against 1.17M-1.26M (five runs of
/// each) and, with handlers that await, 0.80M-0.84M against 0.67M (two); 32 callers, 4 and 100
/// connections moved within the noise. (Every 32: 1.30M-1.32M on one shared runtime and
/// 1.15M-1.26M across two processes; every 128: 1.49M-1.50M and 1.19M-1.25M.) On a runtime of
/// one thread, where the woken calls run on the reader's thread whatever it does, the reader
/// takes no such turn: between single-thread runtimes the turns cost 256 callers a twentieth
/// (1.47M-1.48M against 1.56M). How they are counted is [`Turns`]'s.
const ANSWERS_PER_TURN: u32 = 64;

/// Counts the responses a client's reader hands on, for when it takes a turn
/// ([`ANSWERS_PER_TURN`]).
///
/// A reader that hands on one response and then waits for the next frame answers a caller
/// that makes one call at a time: the wait gave that caller its turn, and the count begins
/// again. Counted regardless, such a reader took a turn every 64 calls with nothing else to
/// run, and a turn can wake the runtime's other worker to steal the reader: in two of seven
/// counted runs by hand of 220,000 sequential calls on one shared runtime, 5,605 context
/// switches in one (its p99 54 µs) and 6,924 `futex` calls in the other, two for each turn,
/// against 68-85 context switches in the five others (p99 24-44 µs; the floor's 70); counted
/// this way, 79-520 in five runs. Responses that come several to a wait keep counting across
/// it: many calls in flight are what the turn is for.
#[derive(Debug, Default)]
struct Turns {
    /// Responses handed on since the last turn, or since the count began again.
    since_turn: u32,
    /// Responses handed on since the reader last waited for a frame.
    since_wait: u32,
}

impl Turns {
    /// The reader handed a response on. The counts stop at their most rather than wrap: a
    /// reader on a runtime of one thread, which takes no turns, counts on for as long as its
    /// connection lasts.
    fn answered(&mut self) {
        self.since_turn = self.since_turn.saturating_add(1);
        self.since_wait = self.since_wait.saturating_add(1);
    }

    /// The reader waited for its next frame (gave up its turn).
    fn waited(&mut self) {
        if self.since_wait <= 1 {
            self.since_turn = 0;
        }
        self.since_wait = 0;
    }

    /// Whether the reader takes a turn now; the count begins again if it does.
    fn take_due(&mut self) -> bool {
        let due = self.since_turn >= ANSWERS_PER_TURN;
        if due {
            self.since_turn = 0;
        }
        due
    }
}

/// Where the value begins of the response whose payload starts with `prefix`, if it answers a
/// call that takes its result, a byte string, as it was read: for the reader to read a large
/// one into memory of its own.
fn byte_string_result(pending: &Pending, prefix: &[u8]) -> Option<usize> {
    match Head::decode(prefix) {
        Ok((
            Head::Response {
                id,
                outcome: Outcome::Ok,
            },
            value,
        )) if pending.takes_byte_string(id) => Some(prefix.len() - value.len()),
        _ => None,
    }
}

/// Fails the calls of `pending` past their deadlines, queueing a Cancel on `outbox` for each
/// whose request was written, and sets `timer` for the next deadline. Returns whether it is set:
/// whether any call still waits with a deadline.
fn expire_calls(pending: &Pending, outbox: &Outbox, timer: &mut Alarm) -> bool {
    let next = pending.expire(Instant::now(), |id| {
        // The request is ahead of this in the outbox, so the server sees it first.
        outbox.send_head(&Head::Cancel { id });
    });
    if let Some(at) = next {
        timer.reset(at);
    }
    next.is_some()
}

/// Reads the server's frames until the connection ends, then fails the calls still waiting and
/// stops the writer. (Aborted instead when the last client handle is dropped: the writer then
/// sends what is queued, cancellations included, and shuts the connection down by itself.)
///
/// An `async fn`, though it then holds its arguments twice (0.2 KiB per connection): made by a
/// plain function returning an `async` block, it measured streams of small items 6–8% slower on
/// one runtime, in interleaved runs, for no cause a profile showed.
async fn read_responses<R: AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    closer: Closer,
    writer: tokio::task::AbortHandle,
    outbox: Outbox,
    _open: OpenConnection,
    mut tunnel: Option<Tunnel>,
) {
    let Closer { pending, streams } = &closer;
    // The connection's one timer for its calls' deadlines, set while any call waits with one.
    let mut deadline = Alarm::at(Instant::now());
    let mut deadline_set = false;
    let mut frames_unlooked = 0;
    // The task the last frame woke, if it was large, runs before this reads on
    // (`protocol::is_large`). Taken at the top of the loop, where no frame is held.
    let mut turn_due = false;
    // Responses that came in one read with more behind them, handed to their calls together
    // once the frames read so far are all taken (or before anything else is done).
    let mut answers = Answers::default();
    // When the reader takes a turn: see `ANSWERS_PER_TURN`. A runtime of one thread has no
    // other worker to spread the woken calls to, and no turn to take.
    let mut turns = Turns::default();
    let turns_per_batch = crate::task::runs_on_several_workers();
    let reason = loop {
        if std::mem::take(&mut turn_due) {
            tokio::task::yield_now().await;
        }
        if turns_per_batch && turns.take_due() {
            pending.complete_all(&mut answers);
            crate::task::take_turn().await;
        }
        // The server's calls back wait for what this side serves them with to take them, unless
        // the connection ends meanwhile (the writer gave up on a server that reads nothing).
        if let Some(tunnel) = &tunnel
            && !tunnel.may_read()
        {
            pending.complete_all(&mut answers);
            tokio::select! {
                () = tunnel.wait_may_read() => {}
                () = pending.wait_closed() => break pending.close_reason(),
                () = deadline.fired(), if deadline_set => {
                    deadline_set = expire_calls(pending, &outbox, &mut deadline);
                }
                () = std::future::poll_fn(|cx| pending.poll_earlier_deadline(cx)) => {
                    deadline_set = expire_calls(pending, &outbox, &mut deadline);
                }
            }
            continue;
        }
        // Frames first: deadlines are looked at when there is nothing to read, and every
        // `LOOK_AT_DEADLINES_EVERY` frames, so that a server that never stops sending cannot
        // keep calls waiting past them (`select!` then only ever finds a frame ready, or the
        // task's budget spent, when it polls nothing).
        frames_unlooked += 1;
        if frames_unlooked >= LOOK_AT_DEADLINES_EVERY {
            frames_unlooked = 0;
            pending.complete_all(&mut answers);
            let passed = deadline_set && deadline.deadline() <= Instant::now();
            if passed || pending.take_earlier_deadline() {
                deadline_set = expire_calls(pending, &outbox, &mut deadline);
            }
        }
        let mut waited = false;
        let next = async {
            tokio::select! {
                biased;
                frame = reader.next_frame_split(|prefix| byte_string_result(pending, prefix)) => {
                    Some(frame)
                }
                () = deadline.fired(), if deadline_set => None,
                () = std::future::poll_fn(|cx| pending.poll_earlier_deadline(cx)) => None,
            }
        };
        let frame = crate::task::noting_wait(next, &mut waited).await;
        if waited {
            turns.waited();
        }
        let (payload, tail) = match frame {
            Some(Ok(Some(frame))) => frame,
            Some(Ok(None)) => break RpcError::ConnectionClosed,
            Some(Err(error)) => break error,
            None => {
                deadline_set = expire_calls(pending, &outbox, &mut deadline);
                continue;
            }
        };
        turn_due = protocol::is_large(&payload, tail.as_ref());
        // A frame of the reverse connection has no head of this one's.
        let head = (payload.first() != Some(&reverse::KIND)).then(|| Head::decode(&payload));
        if let Some(Ok((Head::Response { id, outcome }, body))) = head {
            let reply = match outcome {
                Outcome::Ok => match (tail, SmallValue::copy_of(body)) {
                    (None, Some(value)) => Reply::Small(value),
                    (tail, _) => Reply::Ok(payload.slice_ref(body), tail),
                },
                Outcome::Err { code, message } => Reply::Err {
                    code,
                    message: message.into_owned(),
                },
            };
            turns.answered();
            let more = !turn_due && reader.has_whole_frame();
            if !more && answers.is_empty() {
                // One response in the read, as a sequential caller gets.
                pending.complete(id, reply);
            } else if !answers.keep(id, reply) || !more {
                pending.complete_all(&mut answers);
            }
            if done_draining(pending, streams, &mut answers, tunnel.as_ref()) {
                break RpcError::ConnectionClosed;
            }
            continue;
        }
        // Whatever else the frame is, the responses before it reach their calls first.
        pending.complete_all(&mut answers);
        let Some(head) = head else {
            match &mut tunnel {
                Some(tunnel) => tunnel.deliver(&payload),
                None => {
                    break RpcError::Protocol(
                        "the server sent a frame of a reverse connection to a client that \
                         serves nothing back"
                            .into(),
                    );
                }
            }
            continue;
        };
        match head {
            Ok((Head::StreamItem { id }, item)) => {
                if let Err(error) = streams.deliver(id, &payload, item, &mut reader, None) {
                    break error;
                }
            }
            Ok((Head::StreamEnd { id, outcome }, _)) => {
                streams.end(id, outcome.into());
                if done_draining(pending, streams, &mut answers, tunnel.as_ref()) {
                    break RpcError::ConnectionClosed;
                }
            }
            Ok((Head::Credit { id, bytes }, _)) => {
                if let Err(error) = streams.grant(id, bytes) {
                    break error;
                }
            }
            Ok((Head::Ping, _)) => {}
            Ok((Head::GoAway { reason, message }, _)) => {
                pending.drain();
                if reason == go_away::PROTOCOL_ERROR || reason == go_away::MEMORY_RECLAIMED {
                    // Every answer the server had ready came before this; the rest never will.
                    closer.close(RpcError::ClosedByServer {
                        reason: message.into_owned(),
                    });
                } else if done_draining(pending, streams, &mut answers, tunnel.as_ref()) {
                    break RpcError::ConnectionClosed;
                }
            }
            Ok((head, _)) => break protocol::misplaced(Sender::Server, &head),
            Err(error) => break protocol::undecodable(Sender::Server, &payload, &error),
        }
    };
    pending.complete_all(&mut answers);
    tracing::debug!(%reason, "client connection closed");
    closer.close(reason);
    writer.abort();
}

/// Whether the server sent the connection away (an atomic load while it has not, as each
/// answer comes) and it has nothing left to wait for: no call waiting for its answer (the
/// answers read are handed over first), no stream open, and no service served back, whose
/// calls from the server may still be running or come. Then the client closes it, which tells
/// the server at once; the server otherwise reads on for a while, for requests that crossed
/// its go-away.
fn done_draining(
    pending: &Pending,
    streams: &Streams,
    answers: &mut Answers,
    tunnel: Option<&Tunnel>,
) -> bool {
    if !pending.is_draining() {
        return false;
    }
    pending.complete_all(answers);
    tunnel.is_none() && !pending.any_waiting() && !streams.any_open()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Wakes;

    /// A reader that never takes its turns (a runtime of one thread) counts on without
    /// overflowing, and would take one at once if asked.
    #[test]
    fn a_reader_that_takes_no_turns_counts_on_at_the_most() {
        let mut turns = Turns {
            since_turn: u32::MAX - 1,
            since_wait: u32::MAX - 1,
        };
        turns.answered();
        turns.answered();
        assert_eq!((turns.since_turn, turns.since_wait), (u32::MAX, u32::MAX));
        assert!(turns.take_due());
    }

    /// A reader answering one call at a time never takes a turn, however many calls it
    /// answers; one handing on responses several to a read takes one every 64, waits and all.
    #[test]
    fn a_reader_takes_turns_only_amid_many_responses() {
        let mut one_at_a_time = Turns::default();
        for _ in 0..10 * ANSWERS_PER_TURN {
            one_at_a_time.answered();
            assert!(!one_at_a_time.take_due());
            one_at_a_time.waited();
        }
        let mut several_a_read = Turns::default();
        let mut taken = 0;
        for _ in 0..10 * ANSWERS_PER_TURN / 4 {
            for _ in 0..4 {
                if several_a_read.take_due() {
                    taken += 1;
                }
                several_a_read.answered();
            }
            several_a_read.waited();
        }
        assert_eq!(taken, 9, "one every 64 responses");
        let mut in_one_read = Turns::default();
        for _ in 0..ANSWERS_PER_TURN {
            assert!(!in_one_read.take_due());
            in_one_read.answered();
        }
        assert!(in_one_read.take_due());
        assert!(!in_one_read.take_due(), "the count begins again");
    }

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

    /// A reader that finds many responses read at once hands on `ANSWERS_PER_TURN` of them,
    /// then takes a turn, so that the calls it woke run before it wakes more; and it hands on
    /// the rest at its next polls, a batch at a time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_reader_takes_a_turn_after_handing_on_a_batch_of_answers() {
        let woken = calls_woken_at_each_poll(200).await;
        assert_eq!(woken, [64, 128, 192, 200], "calls woken after each poll");
    }

    /// On a runtime of one thread, which has no other worker to spread the woken calls to, the
    /// reader takes no such turn: one poll hands on every response read.
    #[tokio::test]
    async fn a_reader_on_one_thread_hands_on_every_answer_read_in_one_poll() {
        assert_eq!(calls_woken_at_each_poll(200).await, [200]);
    }

    /// Registers `calls` calls, makes their responses come in one read, and polls the reader
    /// until every call is woken: how many are woken by the end of each poll. Each poll but the
    /// last ends with the reader waking itself for its turn.
    async fn calls_woken_at_each_poll(calls: u64) -> Vec<usize> {
        let pending = Arc::new(Pending::default());
        let callers = Arc::new(Wakes::default());
        let replies: Vec<_> = (1..=calls)
            .map(|id| {
                let request = Frame::from(vec![0u8; 8]);
                let waker = std::task::Waker::from(Arc::clone(&callers));
                pending
                    .register(id, "f", request, None, false, waker)
                    .expect("registers")
            })
            .collect();
        // Every response at once: `Ok` with the value 1.
        let mut bytes = Vec::new();
        for id in 1..=calls {
            let mut payload = postcard::to_stdvec(&Head::Response {
                id,
                outcome: Outcome::Ok,
            })
            .expect("encodes");
            payload.push(2);
            let len = u32::try_from(payload.len()).expect("small");
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(&payload);
        }
        let (mut server, client) = tokio::io::duplex(bytes.len() + 1024);
        tokio::io::AsyncWriteExt::write_all(&mut server, &bytes)
            .await
            .expect("writes");
        let writer = tokio::spawn(std::future::pending::<()>());
        let reading = read_responses(
            FrameReader::new(client, 1 << 20),
            Closer {
                pending: Arc::clone(&pending),
                streams: Arc::new(Streams::new(1 << 20, 1 << 20)),
            },
            writer.abort_handle(),
            Outbox::new().0,
            OpenConnection::new(Side::Client, "svc"),
            None,
        );
        let mut reading = std::pin::pin!(reading);
        let reader = Arc::new(Wakes::default());
        let waker = std::task::Waker::from(Arc::clone(&reader));
        let mut cx = std::task::Context::from_waker(&waker);
        let mut woken = Vec::new();
        while woken.last() != Some(&usize::try_from(calls).expect("few")) {
            assert!(woken.len() < 10, "calls woken after each poll: {woken:?}");
            assert!(reading.as_mut().poll(&mut cx).is_pending());
            woken.push(callers.0.load(Ordering::SeqCst));
        }
        assert_eq!(
            reader.0.load(Ordering::SeqCst),
            woken.len() - 1,
            "a turn, the reader waking itself, after each batch but the last"
        );
        drop(replies);
        writer.abort();
        drop(server);
        woken
    }

    /// A response's value is offered for a split only if it answers a waiting call that takes
    /// its result as a byte string as it was read, and only where the value begins.
    #[test]
    fn only_a_byte_string_result_of_a_waiting_call_is_read_apart() {
        let pending = Pending::default();
        let register = |id, takes_byte_string| {
            let request = Frame::from(vec![0u8; 8]);
            let waker = std::task::Waker::noop().clone();
            pending.register(id, "f", request, None, takes_byte_string, waker)
        };
        let _bytes = register(1, true);
        let _value = register(2, false);
        let response = |id, outcome| {
            let mut payload =
                postcard::to_stdvec(&Head::Response { id, outcome }).expect("encodes");
            payload.extend_from_slice(&[0x80, 0x80, 0x04, 1, 2, 3]);
            payload
        };
        let ok = response(1, Outcome::Ok);
        assert_eq!(byte_string_result(&pending, &ok), Some(ok.len() - 6));
        assert_eq!(
            byte_string_result(&pending, &response(2, Outcome::Ok)),
            None
        );
        assert_eq!(
            byte_string_result(&pending, &response(3, Outcome::Ok)),
            None,
            "no such call"
        );
        let failed = Outcome::Err {
            code: code::NOT_RUN,
            message: "no".into(),
        };
        assert_eq!(byte_string_result(&pending, &response(1, failed)), None);
        pending.complete(1, Reply::Ok(Bytes::new(), None));
        assert_eq!(byte_string_result(&pending, &ok), None, "answered already");
    }
}
