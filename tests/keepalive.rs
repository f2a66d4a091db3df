//! Keep-alive: a peer that goes silent without closing the connection is detected on both
//! sides, and an idle but healthy connection stays up.

use std::time::Duration;

use rpc_core::{RpcError, Server, ServiceClient};
use rpc_tests::{
    LabClient, LabImpl, RawClient, frame, lab_hello, lab_methods, loopback_listener,
    read_frame_from, request, start_tcp_with, within,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;
use tokio::time::Instant;

const INTERVAL: Duration = Duration::from_millis(50);
const TIMEOUT: Duration = Duration::from_millis(200);

/// A client pinging every `INTERVAL` that gives a server up after `TIMEOUT` of silence, busy
/// polling for up to `window` (as by default if `None`).
async fn keepalive_client(addr: std::net::SocketAddr, window: Option<Duration>) -> LabClient {
    let mut builder = LabClient::builder().keepalive(INTERVAL, TIMEOUT);
    if let Some(window) = window {
        builder = builder.busy_poll(window);
    }
    builder.connect(addr).await.expect("connects")
}

/// Asserts that `call`, made to a server gone silent, fails for its silence of `TIMEOUT`.
async fn fails_for_silence<T: std::fmt::Debug>(call: impl Future<Output = Result<T, RpcError>>) {
    match within("a call to a silent server", call).await {
        Err(RpcError::Interrupted { cause, .. }) => {
            assert!(
                matches!(*cause, RpcError::KeepaliveTimeout(silence) if silence == TIMEOUT),
                "{cause}"
            );
        }
        other => panic!("expected Interrupted by the keep-alive timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_detects_a_server_gone_silent_and_fails_its_calls() {
    let (listener, addr) = loopback_listener().await;
    let silent_server = tokio::spawn(async move {
        let (mut raw, _) = RawClient::accept(&listener).await;
        raw.send(&lab_hello(lab_methods(), 50, 0)).await;
        // Hold the connection open and say nothing, like a machine that vanished.
        raw.read_frame().await;
        raw
    });
    let client = keepalive_client(addr, None).await;
    fails_for_silence(client.add(1, 2)).await;
    assert!(client.channel().is_closed());
    silent_server.abort();
}

/// A client's reader polling for its call's answer, within a window far longer than the
/// keep-alive's timeout, watches for silence all the same: a server that reads the call and
/// then says nothing is found silent, and the call fails, rather than wait for the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_polling_for_an_answer_detects_a_server_gone_silent() {
    let (listener, addr) = loopback_listener().await;
    let silent_server = tokio::spawn(async move {
        let (mut raw, _) = RawClient::accept(&listener).await;
        raw.send(&lab_hello(lab_methods(), 50, 0)).await;
        // The call is read and never answered; then nothing, the connection held open.
        raw.read_frame().await.expect("the request");
        raw.read_frame().await;
        raw
    });
    let client = keepalive_client(addr, Some(Duration::from_secs(3600))).await;
    fails_for_silence(client.add(1, 2)).await;
    silent_server.abort();
}

/// A client's reader that has answered its only call waits for the next call rather than poll
/// (busy polling on a runtime of several workers, its server elsewhere as far as it can tell),
/// and watches for silence all the same: a server that answers and then says nothing is found
/// silent, and the idle connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_for_its_next_call_detects_a_server_gone_silent() {
    let (listener, addr) = loopback_listener().await;
    let silent_server = tokio::spawn(async move {
        let (mut raw, _) = RawClient::accept(&listener).await;
        raw.send(&lab_hello(lab_methods(), 50, 0)).await;
        let request = raw.read_frame().await.expect("the request");
        // The answer to call `request[1]` (an id below 128): `Ok(5)`, zigzag-encoded.
        raw.send(&frame(&[0x02, request[1], 0x00, 10])).await;
        // Then nothing, the connection held open.
        raw.read_frame().await;
        raw
    });
    let client = keepalive_client(addr, Some(Duration::from_secs(3600))).await;
    assert_eq!(within("the call", client.add(2, 3)).await.expect("add"), 5);
    within(
        "the silent server's connection to close",
        client.channel().closed(),
    )
    .await;
    silent_server.abort();
}

/// A client that announces pings and then says nothing: the server pings it meanwhile, and
/// closes the connection once the client has been silent for the timeout, not before.
#[tokio::test]
async fn a_server_closes_the_connection_of_a_client_gone_silent() {
    let addr = start_tcp_with(
        Server::builder().keepalive(INTERVAL, TIMEOUT),
        LabImpl::default(),
    )
    .await;
    let mut raw = RawClient::connect(addr).await;
    raw.send(&lab_hello(&[], 50, 0)).await;
    let last_said = Instant::now();
    let hello = within("the server's hello", raw.read_frame())
        .await
        .expect("a hello");
    assert_eq!(hello[..5], *b"\x00rpcc");
    let pings = within("the server to give up", async {
        let mut pings = 0;
        while let Some(frame) = raw.read_frame().await {
            assert_eq!(frame, [0x04], "only pings until the server closes");
            pings += 1;
        }
        pings
    })
    .await;
    assert!(pings >= 1, "the server pinged while it waited");
    assert!(
        last_said.elapsed() >= TIMEOUT,
        "closed after {:?}, before the client had been silent for {TIMEOUT:?}",
        last_said.elapsed()
    );
}

/// Writes a ping to `writer` every `INTERVAL` until `stop` fires, then hands the writer back.
fn ping_until(
    mut writer: OwnedWriteHalf,
    stop: oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<OwnedWriteHalf> {
    tokio::spawn(async move {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return writer,
                () = tokio::time::sleep(INTERVAL) => {
                    writer.write_all(&frame(&[0x04])).await.expect("the connection is up");
                }
            }
        }
    })
}

/// A client that pings as it announced keeps an idle connection up through many of the
/// server's silence limits; the server's own pings, counted as they come, are the clock.
#[tokio::test]
async fn an_idle_client_that_pings_stays_connected() {
    let addr = start_tcp_with(
        Server::builder().keepalive(INTERVAL, TIMEOUT),
        LabImpl::default(),
    )
    .await;
    let (mut reader, mut writer) = TcpStream::connect(addr)
        .await
        .expect("connects")
        .into_split();
    writer
        .write_all(&lab_hello(&[], 50, 0))
        .await
        .expect("writes");
    read_frame_from(&mut reader)
        .await
        .expect("the server's hello");
    let (stop, stopped) = oneshot::channel();
    let pinging = ping_until(writer, stopped);
    // Twenty pings from the server: a second, five times its silence limit.
    within("twenty pings", async {
        for _ in 0..20 {
            let ping = read_frame_from(&mut reader).await.expect("still connected");
            assert_eq!(ping, [0x04]);
        }
    })
    .await;
    stop.send(()).expect("the pinger listens");
    let mut writer = pinging.await.expect("joins");
    writer
        .write_all(&request(1, "add", &[0x02, 0x04]))
        .await
        .expect("writes");
    let answer = within("the answer", async {
        loop {
            match read_frame_from(&mut reader).await.expect("still connected") {
                ping if ping == [0x04] => continue,
                answer => break answer,
            }
        }
    })
    .await;
    assert_eq!(answer, [0x02, 0x01, 0x00, 0x06]);
}

/// The other side: a client whose server pings but has nothing to say keeps its connection
/// through many of its own silence limits; the client's pings, counted by the server, are the
/// clock.
#[tokio::test]
async fn a_client_keeps_an_idle_connection_to_a_server_that_pings() {
    let (listener, addr) = loopback_listener().await;
    let (twenty, counted) = oneshot::channel();
    let mut twenty = Some(twenty);
    let quiet_server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accepts");
        let (mut reader, mut writer) = stream.into_split();
        read_frame_from(&mut reader)
            .await
            .expect("the client's hello");
        writer
            .write_all(&lab_hello(lab_methods(), 50, 0))
            .await
            .expect("writes");
        let (stop, stopped) = oneshot::channel();
        let pinging = ping_until(writer, stopped);
        let mut pings = 0;
        let request = loop {
            let payload = read_frame_from(&mut reader).await.expect("still connected");
            if payload == [0x04] {
                pings += 1;
                if pings == 20 {
                    // Twenty pings from the client: a second, five times its silence limit.
                    if let Some(twenty) = twenty.take() {
                        let _ = twenty.send(());
                    }
                }
                continue;
            }
            break payload;
        };
        assert_eq!(request[0], 0x01, "a request");
        stop.send(()).expect("the pinger listens");
        let mut writer = pinging.await.expect("joins");
        let id = request[1];
        writer
            .write_all(&frame(&[0x02, id, 0x00, 0x06]))
            .await
            .expect("answers");
        writer
    });
    let client = keepalive_client(addr, None).await;
    within("twenty client pings", counted)
        .await
        .expect("the server counts");
    assert!(!client.channel().is_closed());
    assert_eq!(
        within("a call", client.add(1, 2))
            .await
            .expect("still connected"),
        3
    );
    drop(quiet_server);
}

/// A connection, its hellos exchanged, to a Lab server with this file's keep-alive, from a
/// client that announces pings every 50 ms.
async fn lab_client_of_a_keepalive_server() -> (OwnedReadHalf, OwnedWriteHalf) {
    let addr = start_tcp_with(
        Server::builder().keepalive(INTERVAL, TIMEOUT),
        LabImpl::default(),
    )
    .await;
    let stream = TcpStream::connect(addr).await.expect("connects");
    let (mut read, mut write) = stream.into_split();
    write
        .write_all(&lab_hello(lab_methods(), 50, 0))
        .await
        .expect("writes the hello");
    within("the server's hello", read_frame_from(&mut read))
        .await
        .expect("a hello");
    (read, write)
}

/// The request frame of `echo(bytes)`, whose byte string the server reads into memory of its
/// own: on Linux, with the socket's receive low-water mark raised while it comes in.
fn echo_request(id: u64, bytes: &[u8]) -> Vec<u8> {
    let mut args = rpc_tests::varint(bytes.len() as u64);
    args.extend_from_slice(bytes);
    request(id, "echo", &args)
}

/// A large frame that comes in slowly, each piece well within the keep-alive timeout but the
/// whole far past it, is read to its end: bytes held below the socket's raised low-water mark
/// (which wake no reader) are looked for before the client is judged silent.
#[tokio::test]
async fn a_large_frame_sent_slowly_is_not_taken_for_silence() {
    let (mut read, mut write) = lab_client_of_a_keepalive_server().await;
    let bytes: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let frame = echo_request(1, &bytes);
    // 4 KiB every 20 ms: 1.3 s for the whole, ten times the timeout of 200 ms.
    let sent = Instant::now();
    for piece in frame.chunks(4096) {
        write.write_all(piece).await.expect("writes a piece");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sent.elapsed() > TIMEOUT * 4, "sent slowly");
    let answer = within("the echo", async {
        loop {
            match read_frame_from(&mut read).await {
                Some(ping) if ping == [0x04] => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("answered, not closed for silence");
    let mut expected = vec![0x02, 0x01, 0x00];
    expected.extend(rpc_tests::varint(bytes.len() as u64));
    expected.extend_from_slice(&bytes);
    assert!(answer == expected, "the echo comes back whole");
}

/// A client that stops in the middle of a large frame is still found silent, whatever mark
/// the server's socket had while it waited.
#[tokio::test]
async fn a_client_that_stops_inside_a_large_frame_is_found_silent() {
    let (mut read, mut write) = lab_client_of_a_keepalive_server().await;
    let frame = echo_request(1, &vec![7; 1 << 20]);
    write
        .write_all(&frame[..300 * 1024])
        .await
        .expect("writes part of the frame");
    // Then nothing: the server closes the connection for silence.
    let closed = within("the server to give up", async {
        while let Some(frame) = read_frame_from(&mut read).await {
            assert_eq!(frame, [0x04], "only pings until the server closes");
        }
    })
    .await;
    assert_eq!(closed, ());
}
