//! A client connection's reader: reads the server's frames until the connection ends, hands
//! each response to the call waiting for it, fails the calls past their deadlines (from one
//! timer) and, once the connection ends, the calls still waiting; and takes the runtime turns
//! that let the calls it woke run.

use tokio::io::AsyncRead;
use tokio::time::Instant;

use super::connection::Closer;
use super::pending::{Answers, Pending, Reply, SmallValue};
use crate::RpcError;
use crate::alarm::Alarm;
use crate::protocol::{self, FrameReader, Head, Outbox, Outcome, Sender, go_away};
use crate::reverse::{self, Tunnel};
use crate::stream::Streams;
use crate::telemetry::OpenConnection;

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
pub(super) async fn read_responses<R: AsyncRead + Unpin>(
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
    // (`protocol::is_large`). Taken at the top of the loop, where no frame is held, and with
    // tokio's `yield_now`, not `task::take_turn` as the server's reader and the writers take
    // theirs: a task that wakes itself waits in its worker's queue, where the other worker can
    // steal it and read the next large answer into fresh memory while the caller woken still
    // holds the last (so the page faults suggest; `yield_now` waits where none can steal it).
    // Across two processes, 1 MiB `Vec<u8>` echoes made 1437–1733 MiB/s at 34–54 page faults
    // an echo that way, against 1855–2039 at 5–8 with `yield_now` (four interleaved pairs);
    // the system call `yield_now` costs, one a large frame, is nothing beside them.
    let mut turn_due = false;
    // The caller that polls the reader has its answer: the reader stops before it reads on
    // (`shared_reader::stops_for_driver`).
    let mut stop_due = false;
    // Responses that came in one read with more behind them, handed to their calls together
    // once the frames read so far are all taken (or before anything else is done).
    let mut answers = Answers::default();
    // When the reader takes a turn: see `ANSWERS_PER_TURN`. A runtime of one thread has no
    // other worker to spread the woken calls to, and no turn to take.
    let mut turns = Turns::default();
    let turns_per_batch = crate::task::runs_on_several_workers();
    let reason = loop {
        if turn_due || stop_due {
            stop_due = false;
            pause(std::mem::take(&mut turn_due)).await;
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
                stop_due = super::shared_reader::stops_for_driver(id);
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

/// The reader's pause before it reads on: a `turn` after a large frame, taken with tokio's
/// `yield_now` (see `read_responses`), or else its stop for the caller that polls it
/// (`shared_reader::stop_for_driver`). One `await` for both in the reader's loop: a second
/// point at which it waits made calls from 32 tasks on one connection 2-13% slower across two
/// processes (interleaved runs, 2026-12-08).
async fn pause(turn: bool) {
    if turn {
        tokio::task::yield_now().await;
    } else {
        super::shared_reader::stop_for_driver().await;
    }
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
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use bytes::Bytes;

    use super::*;
    use crate::protocol::{Frame, code};
    use crate::task::Wakes;
    use crate::telemetry::Side;

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
