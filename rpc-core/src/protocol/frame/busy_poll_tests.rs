//! The frame reader's busy polling: when it asks to be polled again, and its reads past tokio.

use std::sync::atomic::Ordering;
use std::task::Waker;

use tokio::io::{AsyncWriteExt, DuplexStream};

use super::split_tests::ending_in_bytes;
use super::tests::frame;
use super::*;
use crate::task::Wakes;
use crate::test_sockets::blocking_pair;

/// Polls `reader` once for its next frame, with `waker`.
fn poll_once<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    waker: &Waker,
) -> Poll<Result<Option<Bytes>, RpcError>> {
    let mut cx = Context::from_waker(waker);
    std::pin::pin!(reader.next_frame()).poll(&mut cx)
}

/// A zero window, as the builders pass it on, is no busy polling at all.
#[test]
fn a_zero_window_turns_busy_polling_off() {
    let (_tx, rx) = tokio::io::duplex(1024);
    let mut reader = FrameReader::new(rx, 1024);
    let streams = Arc::new(Streams::new(1024, 1024));
    assert!(
        reader
            .set_busy_poll(Some(Duration::ZERO), &streams)
            .is_none()
    );
    assert!(reader.busy_poll.is_none());
    let window = Some(Duration::from_micros(1));
    assert!(reader.set_busy_poll(window, &streams).is_some());
}

/// An in-memory pipe's near end, and a reader of its far end that busy polls for an hour if
/// `busy`.
fn pipe_reader(busy: bool) -> (DuplexStream, FrameReader<DuplexStream>) {
    let (tx, rx) = tokio::io::duplex(1024);
    let mut reader = FrameReader::new(rx, 1024);
    let streams = Arc::new(Streams::new(1024, 1024));
    reader.set_busy_poll(busy.then_some(Duration::from_secs(3600)), &streams);
    (tx, reader)
}

/// A reader that busy polls and finds nothing asks to be polled again, though no bytes came
/// to wake it, read after read; one that does not waits for the bytes' wakeup. Polled
/// outside a runtime, where tokio wakes a task that defers itself at once.
#[test]
fn a_busy_reader_asks_to_be_polled_again_without_bytes_to_wake_it() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    for busy in [true, false] {
        let (mut tx, mut reader) = pipe_reader(busy);
        runtime
            .block_on(tx.write_all(&frame(b"one")))
            .expect("writes");
        let count = Arc::new(Wakes::default());
        let waker = Waker::from(Arc::clone(&count));
        let first = poll_once(&mut reader, &waker);
        assert!(
            matches!(&first, Poll::Ready(Ok(Some(payload))) if payload[..] == b"one"[..]),
            "{first:?}"
        );
        for polled in 1..=3 {
            assert!(poll_once(&mut reader, &waker).is_pending());
            let woken = count.0.load(Ordering::SeqCst);
            assert_eq!(woken, if busy { polled } else { 0 }, "busy: {busy}");
        }
    }
}

/// A busy polling reader of a layer over TCP (TLS) turns on reads past tokio in the TCP stream
/// beneath for its reads while it polls, so that its bytes are found there as a reader of the
/// socket itself finds them, and turns them off while the rest of a large frame is to come. A
/// reader that does not poll leaves them off.
#[test]
fn a_busy_reader_over_tls_turns_on_reads_past_tokio_beneath_it_while_it_polls() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    for busy in [true, false] {
        let (mut tx, rx) = tokio::io::duplex(1024);
        let mut reader = FrameReader::new(rx, 2 * UNPOLLED_FRAME);
        let streams = Arc::new(Streams::new(1024, 1024));
        reader.set_busy_poll(busy.then_some(Duration::from_secs(3600)), &streams);
        let beneath = Arc::new(ReadsPastTokio::default());
        reader.set_tcp_beneath(Some(Arc::clone(&beneath)));

        runtime
            .block_on(tx.write_all(&frame(b"one")))
            .expect("writes");
        assert!(poll_once(&mut reader, Waker::noop()).is_ready());
        // Past the turn a busy reader takes after handing a frame on, to a read that finds
        // nothing.
        for _ in 0..3 {
            assert!(poll_once(&mut reader, Waker::noop()).is_pending());
        }
        assert_eq!(beneath.is_on(), busy, "busy: {busy}");

        let large = frame(&vec![7; UNPOLLED_FRAME]);
        runtime
            .block_on(tx.write_all(&large[..100]))
            .expect("writes");
        for _ in 0..3 {
            assert!(poll_once(&mut reader, Waker::noop()).is_pending());
            assert!(!beneath.is_on(), "on amid a large frame; busy: {busy}");
        }
    }
}

/// A busy reader that has handed on the frames of a read takes a turn before it reads again,
/// though the next frame's bytes are already there: the task the frame woke runs first. A
/// reader that does not poll reads them at once.
#[test]
fn a_busy_reader_takes_a_turn_after_handing_on_a_read_before_it_reads_again() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    for busy in [true, false] {
        let (mut tx, mut reader) = pipe_reader(busy);
        let count = Arc::new(Wakes::default());
        let waker = Waker::from(Arc::clone(&count));
        for (payload, number) in [(&b"one"[..], 1), (&b"two"[..], 2)] {
            runtime
                .block_on(tx.write_all(&frame(payload)))
                .expect("writes");
            if busy && number > 1 {
                assert!(poll_once(&mut reader, &waker).is_pending(), "a turn first");
                assert_eq!(count.0.load(Ordering::SeqCst), 1, "and woken for it");
            }
            let read = poll_once(&mut reader, &waker);
            assert!(
                matches!(&read, Poll::Ready(Ok(Some(read))) if read[..] == payload[..]),
                "busy: {busy}, frame {number}: {read:?}"
            );
        }
    }
}

/// A busy reader does not poll while the rest of a frame of [`UNPOLLED_FRAME`] or more is
/// still to come, whether it reads the frame whole or its byte string apart, nor after handing
/// it on, until its next bytes: those come at the pace of the copies that move such frames. A
/// small frame after it starts polling again.
#[test]
fn a_busy_reader_does_not_poll_through_or_after_a_large_frame() {
    // With timers: an empty buffer that held a large frame times its quiet spell.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let _inside = runtime.enter();
    let length = UNPOLLED_FRAME.max(tail::MIN_TAIL) + 100;
    for split_at in [None, Some(1)] {
        let (mut tx, rx) = tokio::io::duplex(4 * length);
        let mut reader = FrameReader::new(rx, 4 * length);
        let streams = Arc::new(Streams::new(1024, 1024));
        reader.set_busy_poll(Some(Duration::from_secs(3600)), &streams);
        let mut split = |prefix: &[u8]| split_at.filter(|_| prefix.starts_with(b"h"));
        let count = Arc::new(Wakes::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let mut poll = |reader: &mut FrameReader<_>| {
            std::pin::pin!(reader.next_frame_split(&mut split)).poll(&mut cx)
        };

        let large = frame(&ending_in_bytes(b"h", length, 7));
        let (start, rest) = large.split_at(1000);
        runtime.block_on(tx.write_all(start)).expect("writes");
        for _ in 0..3 {
            assert!(poll(&mut reader).is_pending());
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "polled amid the frame");

        // Wakes the reader, as bytes written do.
        runtime.block_on(tx.write_all(rest)).expect("writes");
        let woken = count.0.load(Ordering::SeqCst);
        let read = poll(&mut reader);
        assert!(
            matches!(&read, Poll::Ready(Ok(Some((head, tail))))
                if head.len() + tail.as_ref().map_or(0, Tail::len) > length),
            "{read:?}"
        );
        assert!(poll(&mut reader).is_pending());
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            woken,
            "polled after the frame"
        );

        runtime
            .block_on(tx.write_all(&frame(b"one")))
            .expect("writes");
        let woken = count.0.load(Ordering::SeqCst);
        assert!(poll(&mut reader).is_ready());
        assert!(poll(&mut reader).is_pending());
        let polled = count.0.load(Ordering::SeqCst) - woken;
        assert_eq!(polled, 1, "a small frame: it polls");
    }
}

/// A reader of `accepted`, registered with the runtime entered, polling for an hour if
/// `busy`.
fn reader_of(
    accepted: std::net::TcpStream,
    busy: bool,
) -> FrameReader<tokio::net::tcp::OwnedReadHalf> {
    accepted.set_nonblocking(true).expect("non-blocking");
    let stream = tokio::net::TcpStream::from_std(accepted).expect("registers");
    let (read, _write) = stream.into_split();
    let socket = Socket::of_tcp(read.as_ref());
    let mut reader = FrameReader::new(read, 1024);
    reader.set_socket(socket);
    let streams = Arc::new(Streams::new(1024, 1024));
    reader.set_busy_poll(busy.then_some(Duration::from_secs(3600)), &streams);
    reader
}

/// A current-thread runtime with I/O, to enter without ever awaiting: it never polls its
/// driver.
fn runtime_with_io() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("a runtime")
}

/// A busy polling reader of a TCP socket finds a frame that has come though no thread has
/// polled tokio's I/O driver since (on a multi-thread runtime, a sleeping worker may hold
/// it): it reads the socket itself. A reader that does not busy poll waits for the driver.
#[test]
fn a_busy_reader_finds_bytes_the_driver_has_not_seen() {
    use std::io::Write;

    let runtime = runtime_with_io();
    let _inside = runtime.enter();
    for busy in [true, false] {
        let (mut peer, accepted) = blocking_pair();
        peer.write_all(&frame(b"one")).expect("writes");
        // Waits, blocking, until the frame is in the socket.
        accepted.peek(&mut [0; 1]).expect("the frame comes");
        let mut reader = reader_of(accepted, busy);
        finds_the_frame_only_if_busy(&mut reader, busy);
    }
}

/// Polls `reader`, whose peer has sent a frame its runtime's driver has not seen, once: it
/// reads the frame if `busy`, and waits for the driver if not.
fn finds_the_frame_only_if_busy<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>, busy: bool) {
    let polled = poll_once(reader, Waker::noop());
    if busy {
        assert!(
            matches!(&polled, Poll::Ready(Ok(Some(payload))) if payload[..] == b"one"[..]),
            "{polled:?}"
        );
    } else {
        assert!(polled.is_pending(), "{polled:?}");
    }
}

/// So does a busy polling reader of a Unix socket, whose bytes tokio sees as late.
#[test]
fn a_busy_reader_of_a_unix_socket_finds_bytes_the_driver_has_not_seen() {
    use std::io::Write;

    let runtime = runtime_with_io();
    let _inside = runtime.enter();
    for busy in [true, false] {
        let (mut peer, ours) = std::os::unix::net::UnixStream::pair().expect("a pair");
        peer.write_all(&frame(b"one")).expect("writes");
        ours.set_nonblocking(true).expect("non-blocking");
        let stream = tokio::net::UnixStream::from_std(ours).expect("registers");
        let (read, _write) = stream.into_split();
        let socket = Socket::of_unix(read.as_ref());
        let mut reader = FrameReader::new(read, 1024);
        reader.set_socket(socket);
        let streams = Arc::new(Streams::new(1024, 1024));
        reader.set_busy_poll(busy.then_some(Duration::from_secs(3600)), &streams);
        finds_the_frame_only_if_busy(&mut reader, busy);
    }
}

/// A busy polling reader that reads its socket itself reports a peer's reset as the failure
/// it is, not as a clean end: a socket reports a reset once, so whoever reads it first must
/// pass it on (a server drops the handlers of a client reset mid-call, and finishes those
/// of one that only closed its side).
#[test]
fn a_busy_reader_reports_a_reset_it_reads_itself() {
    let runtime = runtime_with_io();
    let _inside = runtime.enter();
    let (peer, accepted) = blocking_pair();
    let mut reader = reader_of(accepted, true);
    peer.set_nonblocking(true).expect("non-blocking");
    let peer = tokio::net::TcpStream::from_std(peer).expect("registers");
    // A linger of zero closes with a reset, at once.
    #[allow(deprecated)]
    peer.set_linger(Some(Duration::ZERO))
        .expect("a reset on close");
    drop(peer);
    // Only the reader's own reads can see the reset: the driver never runs. Polled until
    // it comes, which on loopback is at once.
    let guard = std::time::Instant::now() + Duration::from_secs(20);
    let polled = loop {
        match poll_once(&mut reader, Waker::noop()) {
            Poll::Ready(polled) => break polled,
            Poll::Pending => assert!(std::time::Instant::now() < guard, "no reset came"),
        }
    };
    assert!(
        matches!(&polled, Err(RpcError::Io(error)) if error.kind() == std::io::ErrorKind::ConnectionReset),
        "{polled:?}"
    );
}

/// A read past tokio spends the task's budget as tokio's own reads do: once the task has
/// spent it, the reader reads nothing more until the task's next turn, whatever has come.
#[test]
fn a_busy_reader_whose_task_spent_its_budget_waits_for_its_next_turn() {
    use std::io::Write;

    let runtime = runtime_with_io();
    let (mut peer, accepted) = blocking_pair();
    peer.write_all(&frame(b"one")).expect("writes");
    accepted.peek(&mut [0; 1]).expect("the frame comes");
    let mut reader = {
        let _inside = runtime.enter();
        reader_of(accepted, true)
    };
    // One turn of a task: its budget spent, then the reader polled. The runtime's driver
    // never runs: each turn is over at its first poll.
    let spent = runtime.block_on(std::future::poll_fn(|cx| {
        while let Poll::Ready(budget) = tokio::task::coop::poll_proceed(cx) {
            budget.made_progress();
        }
        Poll::Ready(poll_once(&mut reader, Waker::noop()))
    }));
    assert!(spent.is_pending(), "{spent:?}");
    let next = runtime.block_on(std::future::poll_fn(|_| {
        Poll::Ready(poll_once(&mut reader, Waker::noop()))
    }));
    assert!(
        matches!(&next, Poll::Ready(Ok(Some(payload))) if payload[..] == b"one"[..]),
        "{next:?}"
    );
}

/// A busy polling reader that reads its TCP socket itself asks for its worker's next turn: it
/// is woken at once. One that reads through tokio (here, of an in-memory pipe) is woken only
/// once the runtime has polled its I/O driver, where its bytes would show.
#[test]
fn a_busy_reader_of_its_own_socket_is_polled_again_without_a_look_for_io() {
    let runtime = runtime_with_io();
    let (_peer, accepted) = blocking_pair();
    let mut own_socket = {
        let _inside = runtime.enter();
        reader_of(accepted, true)
    };
    let (_tx, mut through_tokio) = pipe_reader(true);

    let woken = |poll: &mut dyn FnMut(&Waker) -> bool| {
        runtime.block_on(async {
            let count = Arc::new(Wakes::default());
            let waker = Waker::from(Arc::clone(&count));
            assert!(poll(&waker), "nothing to read: pending");
            let at_once = count.0.load(Ordering::SeqCst);
            tokio::task::yield_now().await;
            (at_once, count.0.load(Ordering::SeqCst))
        })
    };
    let own = woken(&mut |waker| poll_once(&mut own_socket, waker).is_pending());
    assert_eq!(own, (1, 1), "its own socket: woken at once");
    let tokio = woken(&mut |waker| poll_once(&mut through_tokio, waker).is_pending());
    assert_eq!(tokio, (0, 1), "through tokio: woken after the look for I/O");
}

/// A reader of an accepted TCP socket, of frames up to `max_frame_len`, that busy polls for an
/// hour and reads the socket itself; the socket's peer, and the write half kept open.
fn polling_tcp_reader(
    max_frame_len: usize,
) -> (
    std::net::TcpStream,
    FrameReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let (peer, accepted) = blocking_pair();
    accepted.set_nonblocking(true).expect("non-blocking");
    let stream = tokio::net::TcpStream::from_std(accepted).expect("registers");
    let (read, write) = stream.into_split();
    let socket = Socket::of_tcp(read.as_ref());
    let mut reader = FrameReader::new(read, max_frame_len);
    reader.set_socket(socket);
    let streams = Arc::new(Streams::new(1024, 1024));
    reader.set_busy_poll(Some(Duration::from_secs(3600)), &streams);
    (peer, reader, write)
}

/// The receive low-water mark the kernel holds for `reader`'s socket, if it has one.
fn socket_mark<R>(reader: &FrameReader<R>) -> Option<usize> {
    reader.socket.as_ref().map(Socket::kernel_mark)
}

/// A frame of 64 KiB or more but under [`UNPOLLED_FRAME`] is polled for as a small one is, whole
/// or read apart: its rest comes within a polling window, and readers that slept for it (and
/// after it) and were woken cost echoes of 70,000 bytes across two processes a third of their
/// rate. Here the runtime never polls its I/O driver, so that only a reader that reads the
/// socket itself gets the rest.
#[test]
fn a_busy_reader_polls_through_a_frame_under_the_unpolled_size() {
    use std::io::Write;

    let runtime = runtime_with_io();
    let _inside = runtime.enter();
    let length = LARGE_FRAME.max(tail::MIN_TAIL) + 100;
    assert!(length + 100 < UNPOLLED_FRAME);
    for split_at in [None, Some(1)] {
        let (mut peer, mut reader, _write) = polling_tcp_reader(2 * UNPOLLED_FRAME);
        let mut split = |prefix: &[u8]| split_at.filter(|_| prefix.starts_with(b"h"));
        let mut cx = Context::from_waker(Waker::noop());
        let whole = frame(&ending_in_bytes(b"h", length, 7));
        let (start, rest) = whole.split_at(1000);
        peer.write_all(start).expect("writes");
        // A guard against a reader that never reads the socket itself, which would leave the
        // rest unread for ever.
        let give_up = std::time::Instant::now() + Duration::from_secs(10);
        while reader.buf.is_empty() {
            let polled = std::pin::pin!(reader.next_frame_split(&mut split)).poll(&mut cx);
            assert!(polled.is_pending(), "{polled:?}");
            assert!(std::time::Instant::now() < give_up, "the start never read");
        }
        peer.write_all(rest).expect("writes");
        let read = loop {
            match std::pin::pin!(reader.next_frame_split(&mut split)).poll(&mut cx) {
                Poll::Pending => {
                    let waiting = std::time::Instant::now() < give_up;
                    assert!(waiting, "split at {split_at:?}: the rest never read");
                }
                Poll::Ready(read) => break read,
            }
        };
        assert!(
            matches!(&read, Ok(Some((head, tail)))
                if head.len() + tail.as_ref().map_or(0, Tail::len) > length
                    && tail.is_some() == split_at.is_some()),
            "split at {split_at:?}: {read:?}"
        );
    }
}

/// A busy polling reader of a TCP socket, polled between frames by a caller off the runtime's
/// workers (as `block_on` polls it: no task), raises its socket's mark to
/// [`socket::POLLING_MARK`] while it polls, so that the frames the caller reads itself wake no
/// worker, and lowers it to one byte once it stops polling, here to wait for the rest of a large
/// frame. Polled in a task, it never raises it.
#[test]
fn a_busy_reader_raises_its_mark_only_while_a_caller_off_the_workers_polls_it() {
    use std::io::Write;

    let runtime = runtime_with_io();
    let _inside = runtime.enter();
    let (mut peer, mut reader, _write) = polling_tcp_reader(2 * UNPOLLED_FRAME);

    peer.write_all(&frame(b"one")).expect("writes");
    finds_the_frame_only_if_busy(&mut reader, true);
    assert!(poll_once(&mut reader, Waker::noop()).is_pending());
    assert_eq!(
        socket_mark(&reader),
        Some(socket::POLLING_MARK),
        "raised while it polls"
    );

    // The head of a frame of 128 KiB or more, which the reader waits for without polling. Each
    // poll looks at the socket itself: polled until the head has come.
    let large = frame(&vec![7; UNPOLLED_FRAME]);
    peer.write_all(&large[..100]).expect("writes");
    while reader.buf.is_empty() {
        assert!(poll_once(&mut reader, Waker::noop()).is_pending());
    }
    assert_eq!(
        socket_mark(&reader),
        Some(1),
        "lowered once it stops polling"
    );

    peer.write_all(&large[100..]).expect("writes");
    peer.write_all(&frame(b"two")).expect("writes");
    let in_a_task = runtime.block_on(tokio::spawn(async move {
        for expected in [UNPOLLED_FRAME, 3] {
            let payload = reader
                .next_frame()
                .await
                .expect("a frame")
                .expect("not the end");
            assert_eq!(payload.len(), expected);
        }
        let waits = std::future::poll_fn(|cx| Poll::Ready(poll_once(&mut reader, cx.waker())));
        assert!(waits.await.is_pending(), "nothing more: it polls");
        socket_mark(&reader)
    }));
    assert_eq!(
        in_a_task.expect("the task"),
        Some(1),
        "not raised in a task"
    );
}

/// A client's busy polling reader of a TCP socket, polled by a caller off the runtime's workers,
/// that has handed on the answer to its only call in flight keeps its socket's mark raised for
/// that caller's next call, rather than lower it to wait and raise it again as the call goes
/// out (two system calls a call, one between the answer and the next request). Polled in its
/// task, as once the caller is gone, it lowers it, so that what comes next wakes it.
#[test]
fn a_reader_awaiting_its_callers_next_call_keeps_its_mark_raised_until_its_task_polls() {
    use std::io::Write;

    let runtime = runtime_with_io();
    let _inside = runtime.enter();
    let (mut peer, mut reader, _write) = polling_tcp_reader(1024);
    let in_flight = CallSlots::new(usize::MAX);
    reader.busy_poll_counting_calls(&in_flight, true);
    let calls_sent = |reader: &FrameReader<_>| {
        let busy = reader.busy_poll.as_deref().expect("busy polling");
        busy.calls().now(true);
    };

    for call in 0..2 {
        let _slot = in_flight.try_take().expect("a slot");
        calls_sent(&reader);
        assert!(poll_once(&mut reader, Waker::noop()).is_pending());
        assert_eq!(
            socket_mark(&reader),
            Some(socket::POLLING_MARK),
            "raised while the caller polls for its answer ({call})"
        );
        peer.write_all(&frame(b"one")).expect("writes");
        let answer = loop {
            match poll_once(&mut reader, Waker::noop()) {
                Poll::Pending => std::hint::spin_loop(),
                Poll::Ready(answer) => break answer,
            }
        };
        assert!(
            matches!(&answer, Ok(Some(payload)) if payload[..] == b"one"[..]),
            "{answer:?}"
        );
        assert!(poll_once(&mut reader, Waker::noop()).is_pending());
        assert!(
            reader
                .busy_poll
                .as_deref()
                .is_some_and(BusyPoll::awaits_a_call_it_is_told_of)
        );
        assert_eq!(
            socket_mark(&reader),
            Some(socket::POLLING_MARK),
            "kept for the caller's next call ({call})"
        );
    }

    let in_its_task = runtime.block_on(tokio::spawn(async move {
        let waits = std::future::poll_fn(|cx| Poll::Ready(poll_once(&mut reader, cx.waker())));
        assert!(waits.await.is_pending(), "nothing has come");
        socket_mark(&reader)
    }));
    assert_eq!(
        in_its_task.expect("the task"),
        Some(1),
        "lowered once its task polls it"
    );
}
