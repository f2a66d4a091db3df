//! Serving one connection: read frames, start each request as its own call, write answers as
//! they finish; drain on shutdown, idleness or when another connection needs the room.
//!
//! The reader never waits on anything but the peer's bytes and the connection's own limits:
//!
//! - a request that finds every in-flight slot taken is parked, and reading goes on, so that
//!   the peer's cancellations, credits and stream ends still arrive and free slots; only a
//!   second request beyond the limit stops reading until a slot frees;
//! - while the answers queued for the peer are over the connection's limit or the server's
//!   budget, reading pauses until the writer drains them; a peer that reads nothing is dropped
//!   by the writer's stall limit;
//! - shutdown, idleness, keep-alive and giving way are watched whatever the reader does.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::ServerConfig;
use super::attention::{Attention, RaiseOnDrop, Signal};
use super::calls::{Calls, Link, NewCall};
use super::kept_box::KeptBox;
use super::registry::{Handshake, Registration};
use super::services::{Served, ServiceSet};
use crate::alarm::{self, Alarm};
use crate::health::{self, service::HealthServer, service::Reporting};
use crate::metadata::{MetadataError, MetadataLimits};
use crate::peer::Peer;
use crate::peer_process::PeerProcess;
use crate::protocol::{
    self, Budget, DESCRIBE_METHOD, FrameMemory, FrameReader, FrameWriter, GaveWay, Head, Hello,
    Meter, Outbox, Outcome, PeerInfo, Sender, Tail, code, error_response, finish_frame, go_away,
    write_frames_through,
};
use crate::reverse::{self, Caller, Tunnel};
use crate::service::DecodeError;
use crate::slots::{CallSlot, CallSlots, HeldRequests, OVER_SERVER_LIMIT, Reservation};
use crate::stream::{InboundSlot, Streams};
use crate::task::{AbortOnDrop, when_polled};
use crate::telemetry::{OpenConnection, Side, Traffic};
use crate::{Metadata, RpcError, StatusCode};

/// At most this many requests wait for an in-flight slot at once; past the first, the server
/// stops reading until one of them starts.
const MAX_PARKED: usize = 2;

/// After closing on a protocol error, how long and how much the server goes on reading (and
/// discarding) of what the peer still sends, so that closing the socket with unread bytes does
/// not reset the connection before the peer has read the go-away; and how long a connection
/// drained for shutdown or idleness goes on reading requests that crossed its go-away, to
/// answer them "not run".
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

/// Of the requests one read brought, the reader handles this many, writes their answers (or
/// leaves them to the writer, if it is busy) and gives the runtime a turn before it handles
/// more: the client starts on the answers sooner, the tasks the reader woke run, and the two
/// ends work at once rather than in turns. (Across two processes with 256 callers on one
/// connection, 32 to 64 measured 8–16% more calls per second than never, 128 about half that,
/// and 16 less than never: each turn costs a wakeup.)
const HANDLED_PER_TURN: usize = 64;

/// Where a connection belongs.
#[derive(Debug)]
pub(crate) enum Place {
    /// To a listening server, whose connections share its budgets and registry.
    Listener(Shared),
    /// To no listener: a connection served on its own, or a reverse connection, which the one
    /// holding the other end of `stop` may tell to drain, as a server shutting down would.
    Alone { stop: Arc<Attention> },
}

/// What a connection of a listening server shares with the server.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The bytes queued for peers across the server.
    pub(crate) budget: Arc<Budget>,
    /// The memory the server's connections hold for large frames they are reading.
    pub(crate) frame_memory: Arc<FrameMemory>,
    /// The bytes of requests the server's calls hold, running or parked.
    pub(crate) requests: Arc<HeldRequests>,
    /// The connection's place among the server's: in its handshake, where a newcomer at the
    /// connection limit may close it, until it registers; then asked to give way when idle, and
    /// told when the server shuts down.
    pub(crate) handshake: Handshake,
}

/// The span of one connection on the server, which its calls' spans are under.
pub(crate) fn span(service: &'static str, peer: Option<std::net::SocketAddr>) -> tracing::Span {
    if !crate::telemetry::spans_wanted() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "rpc.connection",
        otel.kind = %"server",
        rpc.system = %"rpc-core",
        rpc.service = %service,
        client.address = tracing::field::Empty,
    );
    if let Some(peer) = peer {
        span.record("client.address", tracing::field::display(peer));
    }
    span
}

/// Serves one connection until the client closes it, breaks the protocol, goes silent, or the
/// server shuts down. The client's hello must arrive by `handshake_deadline`.
///
/// Not an `async fn`, which would hold each argument twice for as long as the connection lives.
pub(crate) fn serve<S, IO>(
    io: IO,
    service: Arc<Served<S>>,
    config: &ServerConfig,
    peer: Peer,
    process: PeerProcess,
    place: Place,
    handshake_deadline: Instant,
) -> impl Future<Output = Result<(), RpcError>>
where
    S: ServiceSet,
    IO: crate::transport::Split,
{
    // The writer ending, the server shutting down and the server asking this connection to
    // give way all come through here.
    let (shared, attention) = match place {
        Place::Listener(shared) => (Some(shared), Arc::default()),
        Place::Alone { stop } => (None, stop),
    };
    let beneath = io.reads_past_tokio();
    let (read, write) = io.split();
    let socket = IO::socket(&read);
    let mut reader = FrameReader::new(read, config.max_frame_len);
    reader.set_socket(socket);
    reader.set_tcp_beneath(beneath);
    if let Some(shared) = &shared {
        reader.share_memory(Arc::clone(&shared.frame_memory));
    }
    let mut writer = FrameWriter::new(write);
    async move {
        // A client that said hello is no longer one to close for a newcomer.
        let said_hello = || {
            if let Some(shared) = &shared {
                shared.handshake.said_hello();
            }
        };
        // Boxed: its state is dead once the hellos are exchanged, and a connection's task should
        // not keep room for it while it serves.
        let handshake = shake_hands(
            &service,
            &mut reader,
            &mut writer,
            config,
            handshake_deadline,
            said_hello,
        );
        let (client, index) = Box::pin(handshake).await?;
        let name = service.infos[index].name;
        let _open = OpenConnection::new(Side::Server, name);
        let traffic = Traffic::new(Side::Server, name);
        reader.count_traffic(traffic.clone());
        writer.count_traffic(traffic);
        reader.set_silence_limit(client.silence_limit(config.keepalive));
        let (elsewhere, end) = process.place();
        let streams = Arc::new(
            Streams::new(config.stream_window, client.stream_window).peer_elsewhere(elsewhere),
        );
        // A client over TCP on this runtime is polled for only after reads of several requests.
        let nearby = !elsewhere && end.is_some();
        reader.set_busy_poll((elsewhere || nearby).then_some(config.busy_poll), &streams);
        if nearby {
            reader.busy_poll_after_batches_only();
        }
        writer.set_stall_limit(config.keepalive.map(|keepalive| keepalive.timeout));

        let budget = shared.as_ref().map(|shared| Arc::clone(&shared.budget));
        let (outbox, queue) =
            Outbox::with_meter(Meter::new(config.max_queued_per_connection, budget));
        let meter = Arc::clone(outbox.meter());
        if let Some(share) = meter.share() {
            writer.share_budget(share.clone());
        }
        let heartbeat = config.keepalive.map(|keepalive| keepalive.interval);
        // A handler holds its arguments until it answers: every call's slot counts the bytes of
        // its request.
        let slots = CallSlots::with_byte_limit(
            config.max_in_flight,
            config.max_argument_bytes_per_connection,
            shared.as_ref().map(|shared| Arc::clone(&shared.requests)),
        );
        writer.watch_calls(Arc::clone(&slots));
        let ended = RaiseOnDrop(Arc::clone(&attention), Signal::WriterEnded);
        // Not an `async` block around the writer's future: that would hold the future twice,
        // as what it captured and as what it awaits (0.6 KiB more per connection).
        let writing = write_frames_through(writer, queue, heartbeat);
        let mut writer = tokio::spawn(writing.map(move |written| {
            drop(ended);
            written
        }));
        // If this future is dropped (the server's grace period ran out), the connection closes and
        // its handlers stop: running calls would otherwise keep the writer, and the socket, open.
        let _writer_guard = AbortOnDrop::new(&writer);
        let calls = Arc::new(Calls::default());
        let _calls_guard = AbortCallsOnDrop(Arc::clone(&calls));
        let peer_addr = peer.addr;
        // A client that serves back gets a reverse connection inside this one, and the server a
        // client of it, which every call's context hands out.
        let mut peer = peer;
        let tunnel = client.serves_back.then(|| {
            let (tunnel, pipe) = Tunnel::open(outbox.clone(), client.max_frame_len);
            let max_frame_len = reverse::max_frame_len(config.max_frame_len);
            let caller = Caller::connect(pipe, max_frame_len, config.stream_window);
            peer.caller = Some(Arc::new(caller));
            tunnel
        });
        // The handshake is over: the connection moves to the established ones.
        let registration = shared.map(|shared| {
            let attention = Arc::clone(&attention);
            let calls_back = peer.caller.clone();
            shared
                .handshake
                .register(Arc::clone(&calls), calls_back, attention)
        });
        let mut connection = Connection {
            service: &service,
            index,
            health: HealthServer::new(Reporting {
                reporter: config.health.clone(),
                services: Arc::clone(&service.names),
            }),
            config,
            calls: &calls,
            link: Link {
                outbox: outbox.clone(),
                streams: Arc::clone(&streams),
                client_max_frame_len: client.max_frame_len,
                panic_messages: config.panic_messages,
                interceptor: config.interceptor.clone(),
                meters: Arc::clone(&config.meters),
                #[cfg(feature = "tower")]
                stack: config.layers.stack(),
            },
            slots,
            uploads: CallSlots::new(config.max_uploads),
            parked: VecDeque::new(),
            peer: Arc::new(peer),
            tunnel,
            registration: registration.as_ref(),
            draining: false,
            lingers: false,
            kept: KeptBox::default(),
        };
        let byte_strings = ByteStrings {
            service: connection.service,
            index: connection.index,
            metadata: config.metadata,
            #[cfg(feature = "tower")]
            layered: connection.link.stack.is_some(),
            #[cfg(not(feature = "tower"))]
            layered: false,
        };
        let mut last_request = Instant::now();
        // The futures that wait for the server, kept across turns of the loop: made anew for every
        // frame, each would register and unregister itself every time.
        // The server may call a client that serves back at any time: such a connection is never
        // idle (it still gives way at the connection limit).
        let mut idle = config
            .idle_timeout
            .filter(|_| !client.serves_back)
            .map(IdleTimer::new);
        // Nothing else of the client's hello is needed: its method table, kept, would cost
        // every connection for as long as it lasts.
        drop(client);
        let mut turn_due = false;
        // When the calls of a connection asked to make room, busy as it was, are dropped if they
        // are still running.
        let mut room_due: Option<Instant> = None;
        // Drained for shutdown or idleness, the connection still reads until the client closes
        // it, for at most LINGER: a request the client sent before it read the go-away is
        // answered "not run" (which the client may make again elsewhere), not lost unread.
        let mut linger_due: Option<Instant> = None;
        let ended = 'serve: loop {
            if std::mem::take(&mut turn_due) {
                crate::task::take_turn().await;
            }
            if connection.draining
                && calls.is_empty()
                && connection.parked.is_empty()
                && reverse::has_ended(connection.tunnel.as_ref())
                && linger_due.is_none()
            {
                if !connection.lingers {
                    break Ok(());
                }
                linger_due = Some(Instant::now() + LINGER);
            }
            let gate = connection.read_gate(&meter);
            // In order: the signals and the idle timer cost a load each while nothing is up
            // ([`Attention`], [`Alarm`]), so they are looked at first, and a shutdown or a
            // failed writer is seen before another frame is read; no branch stays ready
            // without the loop acting on it, so reading is never starved. (Unbiased, the
            // `select!` drew a random first branch at every wait.)
            tokio::select! {
                biased;
                raised = attention.taken() => {
                    if raised.has(Signal::WriterEnded) {
                        break Err(match (&mut writer).await {
                            Ok(Err(error)) => {
                                if GaveWay::is(&error) {
                                    tracing::warn!(
                                        ?peer_addr,
                                        "the server holds as many answers as it may for clients \
                                         that have not read them (max_queued_bytes): closing \
                                         the connection whose client kept them waiting longest"
                                    );
                                    crate::telemetry::unread_answers_reclaimed(name);
                                }
                                error.into()
                            }
                            _ => RpcError::ConnectionClosed,
                        });
                    }
                    // Asked to make room, a connection draining already gives its running
                    // calls the grace too: the server asks no other until this one closes.
                    if raised.has(Signal::MakeRoom) && room_due.is_none() {
                        room_due = Some(alarm::after(Instant::now(), config.shutdown_grace));
                    }
                    if connection.draining {
                        continue;
                    }
                    if raised.has(Signal::ShuttingDown) {
                        let message = "the server is shutting down";
                        connection.start_draining(go_away::SHUTTING_DOWN, message);
                    } else if raised.has(Signal::MakeRoom) {
                        tracing::info!(
                            ?peer_addr,
                            "a connection of the client address holding the most gives way to \
                             a new one"
                        );
                        connection.start_draining(
                            go_away::MAKING_ROOM,
                            "the server is at its connection limit, and this client's address \
                             holds more of its connections than any other",
                        );
                    } else if raised.has(Signal::GiveWay) {
                        if calls.is_empty()
                            && connection.parked.is_empty()
                            && !connection.calls_back()
                        {
                            tracing::debug!(?peer_addr, "an idle connection gives way to a new one");
                            connection.start_draining(
                                go_away::MAKING_ROOM,
                                "the server is at its connection limit and needs this idle \
                                 connection",
                            );
                        } else if let Some(registration) = &registration {
                            // Busy after all: the next ask goes to another connection.
                            registration.touch(Instant::now());
                        }
                    }
                }
                // Draining, the connection waits for its calls to finish, and for the server's
                // own calls to a client that serves back. These branches and the two timers
                // after them are seldom enabled: their futures are made when first polled.
                () = when_polled(|| calls.wait_idle()),
                    if connection.draining && linger_due.is_none() && !calls.is_empty() => {}
                () = when_polled(|| reverse::ended(connection.tunnel.as_ref())),
                    if connection.draining
                        && linger_due.is_none()
                        && !reverse::has_ended(connection.tunnel.as_ref()) => {}
                () = when_polled(|| until(linger_due)), if linger_due.is_some() => break Ok(()),
                () = when_polled(|| until(room_due)), if room_due.is_some() => {
                    tracing::debug!(?peer_addr, "dropping the calls still running to make room");
                    calls.abort_all();
                    break Ok(());
                }
                () = IdleTimer::fired(&mut idle), if !connection.draining => {
                    let idle_since = calls.idle_since().map(|since| since.max(last_request));
                    let parked = !connection.parked.is_empty();
                    if let Some(timer) = &mut idle
                        && timer.is_over(idle_since.filter(|_| !parked))
                    {
                        tracing::debug!(?peer_addr, "closing an idle connection");
                        connection.start_draining(go_away::IDLE, "the connection was idle");
                    }
                }
                slot = connection.slots_for_parked(),
                    if !connection.parked.is_empty() =>
                {
                    connection.start_parked(slot);
                }
                // Enabled only while the client leaves answers unread: made when polled too.
                () = when_polled(|| meter.wait_may_read()),
                    if gate.room_to_park && !gate.answers_drained => {}
                () = when_polled(|| reverse::wait_may_read(connection.tunnel.as_ref())),
                    if gate.room_to_park && gate.answers_drained && !gate.reverse_taken => {}
                frame = reader.next_frame_split(|prefix| byte_strings.from(prefix)),
                    if gate.is_open() => match frame {
                    Ok(Some((mut payload, mut tail))) => {
                        // More requests already read: their answers are gathered into one write,
                        // made when this read's requests are handled (the guard is dropped).
                        let mut gathering = None;
                        for handled in 1.. {
                            if gathering.is_none() && reader.has_buffered() {
                                gathering = Some(outbox.gather());
                            }
                            let large = protocol::is_large(&payload, tail.as_ref());
                            match connection.handle(&payload, tail.take(), &mut reader) {
                                // The requests of one read arrived at once: noted once.
                                Ok(Handled::Request) if reader.arrived() != last_request => {
                                    last_request = reader.arrived();
                                    if let Some(registration) = &registration {
                                        registration.touch(last_request);
                                    }
                                }
                                Ok(Handled::Request | Handled::Other) => {}
                                Err(error) => break 'serve Err(error),
                            }
                            // The frames the same read brought are handled here, while the
                            // connection may read on, rather than each after a turn of every
                            // branch above.
                            if !connection.read_gate(&meter).is_open() {
                                break;
                            }
                            // A turn after a large request too (`protocol::is_large`), taken at
                            // the top of the loop, where no frame is held.
                            if large || handled % HANDLED_PER_TURN == 0 && reader.has_buffered() {
                                turn_due = true;
                                break;
                            }
                            match reader.buffered_frame() {
                                Ok(Some(next)) => payload = next,
                                Ok(None) => break,
                                Err(error) => break 'serve Err(error),
                            }
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(error) => break Err(error),
                },
            }
        };
        // No more stream items come from the client: the streams it was sending end with an error.
        streams.close_all(match &ended {
            Ok(()) => RpcError::ConnectionClosed,
            Err(error) => error.clone(),
        });
        drop(connection);
        match ended {
            // The client finished sending, or the connection drained: the calls still running
            // answer, then the writer closes the connection.
            Ok(()) => {
                drop(outbox);
                match writer.await {
                    Ok(written) => written.map_err(RpcError::from),
                    Err(_) => Err(RpcError::ConnectionClosed),
                }
            }
            // The client broke the protocol, or the server took back the memory of the frame it
            // was sending: the calls still running stop, the answers already queued go out,
            // then a go-away saying why, then the connection closes.
            Err(
                error @ (RpcError::Protocol(_)
                | RpcError::FrameTooLarge { .. }
                | RpcError::FrameMemoryReclaimed),
            ) => {
                if matches!(error, RpcError::FrameMemoryReclaimed) {
                    tracing::warn!(
                        ?peer_addr,
                        "the server is short of memory for large frames (max_frame_memory): \
                         closing the connection whose client kept it waiting longest"
                    );
                    crate::telemetry::frame_memory_reclaimed(name);
                } else {
                    tracing::debug!(?peer_addr, %error, "closing a connection, saying why");
                }
                calls.abort_all();
                let (reason, message) = match &error {
                    RpcError::Protocol(how) => (go_away::PROTOCOL_ERROR, how.clone()),
                    RpcError::FrameMemoryReclaimed => {
                        (go_away::MEMORY_RECLAIMED, error.to_string())
                    }
                    other => (go_away::PROTOCOL_ERROR, other.to_string()),
                };
                outbox.send_last(Head::go_away(reason, &message).frame());
                drop(outbox);
                let flushed = tokio::time::timeout(config.handshake_timeout, &mut writer).await;
                if matches!(flushed, Ok(Ok(Ok(())))) {
                    // Boxed: with its buffer, the largest state of the connection's future, which
                    // every connection would otherwise hold for as long as it is open.
                    let discard = Box::pin(reader.discard_until_end(LINGER_BYTES));
                    let _ = tokio::time::timeout(LINGER, discard).await;
                }
                Err(error)
            }
            Err(error) => Err(error),
        }
    }
}

/// Returns at `due`, or never. (A `select!` builds every branch's future, enabled or not: built
/// from this, a branch rarely enabled reads no clock.)
async fn until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Reads the client's hello by `deadline` and answers with the server's. A client of another
/// service or version still gets the server's hello, so that it can say exactly what does not
/// match, and then the handshake fails.
///
/// Returns the client's hello and the index of the service it named, whose methods its
/// unqualified requests call. Calls `said_hello` once a client's hello for a service the server
/// has is read, before answering it.
async fn shake_hands<S: ServiceSet, R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    service: &Served<S>,
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    config: &ServerConfig,
    deadline: Instant,
    said_hello: impl FnOnce(),
) -> Result<(PeerInfo, usize), RpcError> {
    let client = tokio::time::timeout_at(deadline, Hello::receive(reader, config.max_frame_len))
        .await
        .unwrap_or_else(|_| {
            Err(RpcError::Handshake(format!(
                "the client sent no hello within {:?}",
                config.handshake_timeout
            )))
        });
    let named = match &client {
        Ok(client) => service
            .index_of(&client.service)
            .ok_or_else(|| client.service.clone()),
        Err(_) => Ok(0),
    };
    if client.is_ok() && named.is_ok() {
        said_hello();
    }
    if let Ok(_) | Err(RpcError::VersionMismatch { .. }) = &client {
        // A client of a service the server lacks is answered as by the first, and can tell.
        let hello = Hello::new(
            &service.infos[named.as_ref().map_or(0, |&index| index)],
            config.max_frame_len,
            config.keepalive,
            Some(config.max_in_flight),
            config.stream_window,
        )
        .taking_uploads(config.max_uploads);
        hello.send_with_services(&service.infos, writer).await?;
    }
    match named {
        Ok(index) => client.map(|client| (client, index)),
        Err(missing) => Err(RpcError::WrongService {
            expected: missing,
            served: service
                .names
                .iter()
                .map(|name| (*name).to_owned())
                .collect(),
        }),
    }
}

/// A request decoded and checked, waiting for an in-flight slot.
struct Parked<R> {
    id: u64,
    request: R,
    /// It sends a streamed argument: it waits for a place among the connection's uploads too.
    upload: bool,
    /// The bytes of its request, which its slot counts.
    bytes: usize,
    /// What it holds, its request and, for an upload, the window of items its client may send
    /// ahead, which its slot takes over.
    reservation: Reservation,
    #[cfg(feature = "tower")]
    arguments: bytes::Bytes,
    arrived: Instant,
    timeout_ms: u64,
    metadata: Metadata,
}

/// The state of one connection's reading side.
struct Connection<'a, S: ServiceSet> {
    service: &'a Served<S>,
    /// The service the client's hello named, whose methods its unqualified requests call.
    index: usize,
    /// The health service, served beside `service`.
    health: HealthServer<Reporting>,
    config: &'a ServerConfig,
    calls: &'a Arc<Calls>,
    link: Link,
    /// Every running call holds one until its answer is written.
    slots: Arc<CallSlots>,
    /// Every running call with a streamed argument holds one of these too, with its slot.
    uploads: Arc<CallSlots>,
    /// Requests that found no free slot, oldest first.
    parked: VecDeque<Parked<S::Request>>,
    peer: Arc<Peer>,
    /// The reverse connection, if the client serves back.
    tunnel: Option<Tunnel>,
    registration: Option<&'a Registration>,
    /// The server takes no new calls on this connection.
    draining: bool,
    /// Drained, the connection goes on reading for a while (see `LINGER`): not when it makes
    /// room for a newcomer, whose place it must give up at once.
    lingers: bool,
    /// The box of the last call to answer on its first poll, for the next call's future.
    kept: KeptBox,
}

/// Finds, for the connection's reader, the requests whose arguments end in a byte string their
/// service takes as it was read, so that a large one is read into memory of its own.
struct ByteStrings<'a, S> {
    service: &'a Served<S>,
    /// The service the client's hello named.
    index: usize,
    metadata: MetadataLimits,
    /// The server's layers see the arguments whole: no frame is split under them.
    layered: bool,
}

impl<S: ServiceSet> ByteStrings<'_, S> {
    /// Where the arguments begin of the request whose payload starts with `prefix`, if they
    /// end in such a byte string.
    fn from(&self, prefix: &[u8]) -> Option<usize> {
        if self.layered {
            return None;
        }
        let Ok((Head::Request { method, .. }, rest)) = Head::decode(prefix) else {
            return None;
        };
        let (index, method) = self.service.route(method, self.index).ok()?;
        if !S::ends_in_byte_string(index, method) {
            return None;
        }
        let (_, args) = Metadata::decode_prefix(rest, self.metadata).ok()?;
        Some(prefix.len() - args.len())
    }
}

/// What lets a connection read its next frame; it reads only when all three hold.
struct ReadGate {
    /// A request that finds every in-flight slot taken can still be parked.
    room_to_park: bool,
    /// The answers queued for the client are within the connection's budget.
    answers_drained: bool,
    /// The reverse connection, if any, has taken what was handed to it.
    reverse_taken: bool,
}

impl ReadGate {
    fn is_open(&self) -> bool {
        self.room_to_park && self.answers_drained && self.reverse_taken
    }
}

impl<S: ServiceSet> Connection<'_, S> {
    /// Whether the connection may read its next frame now, with `meter` counting the answers
    /// queued for the client.
    fn read_gate(&self, meter: &Meter) -> ReadGate {
        ReadGate {
            room_to_park: self.parked.len() < MAX_PARKED,
            answers_drained: meter.may_read(),
            reverse_taken: reverse::may_read(self.tunnel.as_ref()),
        }
    }

    /// Whether a call the server made to a client that serves back is still running: the
    /// connection is busy with it as with the client's own calls.
    fn calls_back(&self) -> bool {
        self.peer
            .caller
            .as_ref()
            .is_some_and(|caller| caller.is_calling())
    }

    /// Takes no new calls: tells the client why, and answers the parked requests, which never
    /// ran, as not run.
    fn start_draining(&mut self, reason: u32, message: &str) {
        self.draining = true;
        self.lingers = reason != go_away::MAKING_ROOM;
        if let Some(registration) = self.registration {
            registration.leave();
        }
        self.link.outbox.send_head(&Head::go_away(reason, message));
        if let Some(tunnel) = &self.tunnel {
            tunnel.go_away(reason, message);
        }
        for parked in std::mem::take(&mut self.parked) {
            self.refuse(
                parked.id,
                code::NOT_RUN,
                "the server is closing this connection",
            );
        }
    }

    /// Acts on one frame from the client, just read by `reader`.
    fn handle<R>(
        &mut self,
        payload: &Bytes,
        tail: Option<Tail>,
        reader: &mut FrameReader<R>,
    ) -> Result<Handled, RpcError> {
        let arrived = reader.arrived();
        if payload.first() == Some(&reverse::KIND) {
            let Some(tunnel) = &mut self.tunnel else {
                return Err(RpcError::Protocol(
                    "the client sent a frame of a reverse connection, but its hello announced \
                     no service to serve back"
                        .into(),
                ));
            };
            tunnel.deliver(payload);
            return Ok(Handled::Other);
        }
        let (head, rest) = Head::decode(payload)
            .map_err(|error| protocol::undecodable(Sender::Client, payload, &error))?;
        let (id, method, timeout_ms) = match head {
            Head::Request {
                id,
                method,
                timeout_ms,
            } => (id, method, timeout_ms),
            Head::Cancel { id } => {
                self.calls.cancel(id);
                return Ok(Handled::Other);
            }
            Head::Ping => return Ok(Handled::Other),
            Head::StreamItem { id } => {
                // What an item costs past its stream's window, the connection's calls hold.
                let streams = &self.link.streams;
                streams.deliver(id, payload, rest, reader, Some(&self.slots))?;
                return Ok(Handled::Other);
            }
            Head::StreamEnd { id, outcome } => {
                self.link.streams.end(id, outcome.into());
                return Ok(Handled::Other);
            }
            Head::Credit { id, bytes } => {
                self.link.streams.grant(id, bytes)?;
                return Ok(Handled::Other);
            }
            head @ (Head::Hello(_) | Head::Response { .. } | Head::GoAway { .. }) => {
                return Err(protocol::misplaced(Sender::Client, &head));
            }
        };
        // Before anything of the request runs, decoding included: a reused id is refused, not
        // started beside the call that has it.
        if self.calls.is_running(id)
            || !self.parked.is_empty() && self.parked.iter().any(|parked| parked.id == id)
        {
            return Err(RpcError::Protocol(format!(
                "the client reused the id {id} of a call still running"
            )));
        }
        if self.draining {
            self.refuse(id, code::NOT_RUN, "the server is closing this connection");
            return Ok(Handled::Request);
        }
        let (index, method) = match self.service.route(method, self.index) {
            Ok(routed) => routed,
            Err(refusal) => {
                self.refuse(id, code::UNKNOWN_METHOD, &refusal);
                return Ok(Handled::Request);
            }
        };
        if method == DESCRIBE_METHOD {
            self.describe(id, index);
            return Ok(Handled::Request);
        }
        let (metadata, args) = match Metadata::decode_prefix(rest, self.config.metadata) {
            Ok(decoded) => decoded,
            Err(MetadataError::OverLimit(why)) => {
                self.refuse(id, code::LIMIT_EXCEEDED, &why);
                return Ok(Handled::Request);
            }
            Err(MetadataError::Malformed(error)) => {
                return Err(RpcError::Protocol(format!(
                    "the client sent a request whose metadata does not decode: {error}"
                )));
            }
        };
        if let Some(name) = method.strip_prefix(health::PREFIX) {
            self.health_call(id, name, args, payload, arrived, timeout_ms, metadata);
            return Ok(Handled::Request);
        }
        // An upload holds its window of items until its handler takes them: a connection runs
        // only so many at once, and parks one past them as it does a call past its slots; and
        // the window counts among what the server's calls hold.
        let upload = self.service.takes_upload(index, method);
        let bytes = payload.len() + tail.as_ref().map_or(0, Tail::len);
        let window = if upload {
            self.config.stream_window as usize
        } else {
            0
        };
        let name = self.service.infos[index].name;
        let Some(reservation) = self.slots.reserve(bytes + window) else {
            let message = format!("{OVER_SERVER_LIMIT}; the call did not run");
            self.refuse(id, StatusCode::Unavailable.wire_code(), &message);
            crate::telemetry::call_shed(name);
            return Ok(Handled::Request);
        };
        let request = self.decode::<S>(id, (index, name), method, (args, tail), payload);
        let Some(request) = request else {
            return Ok(Handled::Request);
        };
        let parked = Parked {
            id,
            request,
            upload,
            bytes,
            reservation,
            // Shares the frame's memory: no copy.
            #[cfg(feature = "tower")]
            arguments: payload.slice_ref(args),
            arrived,
            timeout_ms,
            metadata,
        };
        // Requests start in the order they came: behind any already waiting for a slot. With
        // none free, the call waits while the reader goes on (backpressure).
        let slot = self
            .parked
            .is_empty()
            .then(|| self.try_slots(upload, bytes))
            .flatten();
        match slot {
            Some(slot) => self.start(parked, slot),
            None => self.parked.push_back(parked),
        }
        Ok(Handled::Request)
    }

    /// Decodes the request for `method` of the service at `index` in the set `T`, named `name`,
    /// or refuses it, saying why.
    fn decode<T: ServiceSet>(
        &self,
        id: u64,
        (index, name): (usize, &str),
        method: &str,
        (args, tail): (&[u8], Option<Tail>),
        payload: &bytes::Bytes,
    ) -> Option<T::Request> {
        let mut streams = InboundSlot {
            id,
            streams: &self.link.streams,
            outbox: &self.link.outbox,
        };
        // The arguments end the frame. A handle on the frame is lent to the decoder: the reader
        // still holds the frame, and it is this thread's own buffer, so the clone is cheap.
        debug_assert_eq!(args.as_ptr_range().end, payload.as_ptr_range().end);
        let mut frame = payload.clone();
        let args = frame.len() - args.len()..frame.len();
        let decoded = protocol::decode_with(&mut frame, args, tail, |args| {
            T::decode_request(index, method, args, &mut streams)
        });
        match decoded {
            Ok(request) => Some(request),
            Err(DecodeError::UnknownMethod) => {
                let message = format!("the service `{name}` has no method `{method}`");
                self.refuse(id, code::UNKNOWN_METHOD, &message);
                None
            }
            Err(DecodeError::InvalidArguments(error)) => {
                self.refuse(id, code::INVALID_ARGUMENTS, &error.to_string());
                None
            }
        }
    }

    /// Runs a call of the health service, which every server serves beside its own, if a
    /// call slot is free; a health call is never parked.
    #[allow(clippy::too_many_arguments)]
    fn health_call(
        &self,
        id: u64,
        name: &str,
        args: &[u8],
        payload: &bytes::Bytes,
        arrived: Instant,
        timeout_ms: u64,
        metadata: Metadata,
    ) {
        let health = (0, <HealthServer<Reporting> as crate::Service>::INFO.name);
        let decoded =
            self.decode::<HealthServer<Reporting>>(id, health, name, (args, None), payload);
        let Some(request) = decoded else {
            return;
        };
        let Some(slot) = self.slots.try_take() else {
            let message = "the server has no call slot free for a health call";
            return self.refuse(id, code::LIMIT_EXCEEDED, message);
        };
        let call = NewCall {
            id,
            request,
            #[cfg(feature = "tower")]
            arguments: payload.slice_ref(args),
            arrived,
            timeout_ms,
            metadata,
            peer: Arc::clone(&self.peer),
            slot,
        };
        // The health service's futures are of a type of their own: their boxes are not kept,
        // so that the service's box stays.
        self.calls
            .start(&self.health, call, &self.link, &KeptBox::default());
    }

    /// A slot for a call, with a place among the uploads if it sends a streamed argument, if
    /// both are free.
    fn try_slots(&self, upload: bool, bytes: usize) -> Option<CallSlot> {
        let slot = self.slots.try_take_counting(bytes)?;
        if !upload {
            return Some(slot);
        }
        Some(slot.with_upload(self.uploads.try_take()?))
    }

    /// What the oldest parked request needs to start, once it is free. It borrows the slots:
    /// built at every turn of the connection's loop, parked requests or not, a future that
    /// owned them cost two reference-count updates a turn on counts that every call's slot
    /// updates too.
    fn slots_for_parked(&self) -> impl Future<Output = CallSlot> + '_ {
        let (slots, uploads) = (&self.slots, &self.uploads);
        let front = self.parked.front();
        let upload = front.is_some_and(|parked| parked.upload);
        let bytes = front.map_or(0, |parked| parked.bytes);
        async move {
            let slot = slots.take_counting(bytes).await;
            if upload {
                slot.with_upload(uploads.take().await)
            } else {
                slot
            }
        }
    }

    /// Starts the oldest parked request with `slot`.
    fn start_parked(&mut self, slot: CallSlot) {
        if let Some(parked) = self.parked.pop_front() {
            self.start(parked, slot);
        }
    }

    fn start(&self, parked: Parked<S::Request>, slot: CallSlot) {
        let call = NewCall {
            id: parked.id,
            request: parked.request,
            #[cfg(feature = "tower")]
            arguments: parked.arguments,
            arrived: parked.arrived,
            timeout_ms: parked.timeout_ms,
            metadata: parked.metadata,
            peer: Arc::clone(&self.peer),
            slot: slot.holding(parked.reservation),
        };
        self.calls
            .start(&self.service.set, call, &self.link, &self.kept);
    }

    /// Answers a describe request with the service's schema, or refuses it if reflection is
    /// off. Its answer is queued like any other, so describing costs a flooding peer its own
    /// reading.
    fn describe(&self, id: u64, index: usize) {
        if !self.config.reflection {
            let message = "this server does not describe its service: its reflection is off";
            self.refuse(id, code::UNKNOWN_METHOD, message);
            return;
        }
        // Checked when the server started.
        let Ok(schema) = self.service.infos[index].describe() else {
            return self.refuse(
                id,
                code::RESPONSE_ENCODE_FAILED,
                "the schema cannot be made",
            );
        };
        let head = Head::Response {
            id,
            outcome: Outcome::Ok,
        };
        let encoded = head.begin_frame().and_then(|mut frame| {
            frame.append(schema)?;
            Ok(frame)
        });
        match encoded.map(|mut frame| {
            finish_frame(&mut frame, self.link.client_max_frame_len).map(|()| frame)
        }) {
            Ok(Ok(frame)) => {
                self.link.outbox.send(frame, None);
            }
            Ok(Err(too_large)) => {
                let message = format!("the schema is too large for the client: {too_large}");
                self.refuse(id, code::RESPONSE_TOO_LARGE, &message);
            }
            Err(error) => {
                let message = format!("the schema could not be encoded: {error}");
                self.refuse(id, code::RESPONSE_ENCODE_FAILED, &message);
            }
        }
    }

    /// Answers a request with an error, without running it. The answer counts against the
    /// connection's queued bytes like any other, so a peer that sends refused calls and reads
    /// nothing is held back like one that sends good ones.
    fn refuse(&self, id: u64, code: u32, message: &str) {
        tracing::debug!(id, code, message, "refused a call");
        self.link
            .outbox
            .send(error_response(id, code, message), None);
    }
}

/// Watches for a connection idle for its timeout: no call running, no request received. Pings
/// do not count as activity: a client that only pings is idle. One timer for the connection's
/// life, set again only when it fires, rather than one per frame, and looked at cheaply while
/// it has not ([`Alarm`]).
struct IdleTimer {
    timeout: Duration,
    timer: Alarm,
}

impl IdleTimer {
    fn new(timeout: Duration) -> Self {
        IdleTimer {
            timeout,
            timer: Alarm::at(alarm::after(Instant::now(), timeout)),
        }
    }

    /// Returns when the timer fires; never without one.
    async fn fired(idle: &mut Option<IdleTimer>) {
        match idle {
            Some(idle) => idle.timer.fired().await,
            None => std::future::pending().await,
        }
    }

    /// Whether a connection idle since `idle_since` (`None`: not idle now) has been idle for
    /// the whole timeout. If not, sets the timer for when it would be.
    fn is_over(&mut self, idle_since: Option<Instant>) -> bool {
        let now = Instant::now();
        let due = alarm::after(idle_since.unwrap_or(now), self.timeout);
        if due <= now {
            return true;
        }
        self.timer.reset(due);
        false
    }
}

/// What a frame from the client was.
enum Handled {
    /// A request: activity that keeps the connection from being idle.
    Request,
    /// A cancellation, a ping, or a frame of a stream.
    Other,
}

/// Drops every running handler of a connection when the connection is dropped.
struct AbortCallsOnDrop(Arc<Calls>);

impl Drop for AbortCallsOnDrop {
    fn drop(&mut self) {
        self.0.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[rpc_core::service]
    trait Store {
        async fn put(&self, key: String, data: Vec<u8>) -> u64;
        async fn rename(&self, key: String) -> String;
    }

    struct Nothing;

    impl Store for Nothing {
        async fn put(&self, _: String, data: Vec<u8>) -> u64 {
            data.len() as u64
        }

        async fn rename(&self, key: String) -> String {
            key
        }
    }

    /// A request payload calling `method` with `args`, under one metadata entry.
    fn request(method: &str, args: &[u8]) -> Vec<u8> {
        let head = Head::Request {
            id: 300,
            method,
            timeout_ms: 30_000,
        };
        let mut payload = postcard::to_stdvec(&head).expect("encodes");
        payload.extend_from_slice(b"\x01\x03key\x02va");
        payload.extend_from_slice(args);
        payload
    }

    /// The reader is told where the arguments begin for a method whose arguments end in a
    /// byte string, named alone or with its service, and for nothing else: another method, a
    /// method of no service, a frame that is not a request, a head not all there, or a server
    /// whose layers see the arguments whole.
    #[test]
    fn only_requests_ending_in_a_byte_string_are_offered_for_a_split() {
        let served = Served::new(StoreServer::new(Nothing)).expect("a valid service");
        let mut finder = ByteStrings {
            service: &served,
            index: 0,
            metadata: MetadataLimits::DEFAULT,
            layered: false,
        };
        let args = b"\x01k\x03abc";
        for method in ["put", "Store.put"] {
            let put = request(method, args);
            assert_eq!(finder.from(&put), Some(put.len() - args.len()), "{method}");
        }
        assert_eq!(finder.from(&request("rename", b"\x01k")), None);
        assert_eq!(finder.from(&request("remove", args)), None);
        assert_eq!(finder.from(&request("Other.put", args)), None);
        let put = request("put", args);
        assert_eq!(
            finder.from(&put[..put.len() - args.len() - 2]),
            None,
            "cut short"
        );
        let response = Head::Response {
            id: 300,
            outcome: protocol::Outcome::Ok,
        };
        let response = postcard::to_stdvec(&response).expect("encodes");
        assert_eq!(finder.from(&response), None);
        finder.layered = true;
        assert_eq!(finder.from(&put), None, "under layers");
    }

    /// The idle timer: a connection not idle now is never over its timeout, and its timer is
    /// set a whole timeout ahead; one idle since a while is over once the timeout has passed
    /// since then, and before that its timer is set for exactly then.
    #[tokio::test(start_paused = true)]
    async fn the_idle_timer_counts_from_when_the_connection_went_idle() {
        let timeout = Duration::from_secs(10);
        let mut idle = IdleTimer::new(timeout);
        let now = Instant::now();
        assert!(!idle.is_over(None), "busy now");
        assert_eq!(idle.timer.deadline(), now + timeout);

        let since = now - Duration::from_secs(4);
        assert!(!idle.is_over(Some(since)), "idle for 4 s of 10");
        assert_eq!(idle.timer.deadline(), since + timeout);

        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(idle.is_over(Some(since)), "idle for the whole 10 s");
    }
}
