//! The handshake: a client finds out at connect time that it reached the wrong thing, and per
//! call that the server lacks a method or has changed its signature.

use std::time::Duration;

use rpc_core::{RpcError, Server};
use rpc_tests::{
    LabClient, LabImpl, RawClient, VERSION, frame, held_loopback_port, hello, lab_hello,
    lab_methods, loopback_listener, start_tcp, start_tcp_with, string, varint, within,
};

/// The largest hello a peer accepts (docs/wire.md, section 2: "until the hellos are exchanged").
const MAX_HELLO_LEN: usize = 64 * 1024;
use tokio::io::AsyncWriteExt;

/// A later version of `Lab`: one method added, two changed, the others as they were.
mod v2 {
    use rpc_tests::MathError;

    #[rpc_core::service]
    pub trait Lab {
        async fn add(&self, a: i64, b: i64) -> i64;
        async fn div(&self, a: i64, b: i64) -> Result<i64, MathError>;
        async fn echo(&self, text: String) -> String;
        async fn mul(&self, a: i64, b: i64) -> i64;
        /// Only the argument's type differs from `Lab::zeros` (`u64`): same name, same result.
        async fn zeros(&self, len: u32) -> Vec<u8>;
    }
}

#[rpc_core::service]
pub trait Other {
    async fn ping(&self);
}

#[tokio::test]
async fn a_method_the_server_lacks_is_named() {
    let client = v2::LabClient::connect(start_tcp().await)
        .await
        .expect("a newer client still connects");
    assert_eq!(client.add(2, 3).await.expect("unchanged methods work"), 5);
    match client.mul(2, 3).await {
        Err(RpcError::UnknownMethod { method }) => assert_eq!(method, "mul"),
        other => panic!("expected UnknownMethod, got {other:?}"),
    }
}

#[tokio::test]
async fn a_changed_signature_is_named_not_garbled() {
    let client = v2::LabClient::connect(start_tcp().await)
        .await
        .expect("connects");
    let error = client
        .echo("hi".into())
        .await
        .expect_err("signature changed");
    match &error {
        RpcError::SignatureMismatch { method, .. } => assert_eq!(method, "echo"),
        other => panic!("expected SignatureMismatch, got {other:?}"),
    }
    assert!(error.to_string().contains("`echo`"), "{error}");
}

/// The fingerprint follows each argument's type: a method whose only change is one argument's
/// type (same name, same result) is refused, not sent with bytes the server would misread.
#[tokio::test]
async fn an_argument_whose_type_alone_changed_is_a_signature_mismatch() {
    let client = v2::LabClient::connect(start_tcp().await)
        .await
        .expect("connects");
    match client.zeros(3).await {
        Err(RpcError::SignatureMismatch { method, .. }) => assert_eq!(method, "zeros"),
        other => panic!("expected SignatureMismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn another_service_is_refused_at_connect() {
    match OtherClient::connect(start_tcp().await).await {
        Err(error @ RpcError::WrongService { .. }) => {
            assert_eq!(
                error.to_string(),
                "the server does not serve `Other`: it serves `Lab`"
            );
        }
        other => panic!("expected WrongService, got {other:?}"),
    }
}

#[tokio::test]
async fn something_that_is_not_a_server_is_refused_at_connect() {
    let (listener, addr) = loopback_listener().await;
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accepts");
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    });
    match within("connecting", LabClient::connect(addr)).await {
        Err(error @ RpcError::Handshake(_)) => {
            assert!(
                error.to_string().contains("not an rpc-core hello"),
                "{error}"
            );
        }
        other => panic!("expected a handshake error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let (listener, addr) = loopback_listener().await;
    let held = tokio::spawn(async move { listener.accept().await });
    let connecting = LabClient::builder()
        .connect_timeout(Duration::from_millis(100))
        .connect(addr);
    match within("connecting", connecting).await {
        Err(RpcError::ConnectTimeout(timeout)) => {
            assert_eq!(timeout, Duration::from_millis(100));
        }
        other => panic!("expected ConnectTimeout, got {other:?}"),
    }
    held.abort();
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let (_held, addr) = held_loopback_port();
    match LabClient::connect(addr).await {
        Err(error @ RpcError::Connect { .. }) => {
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("could not connect to {addr}: ")),
                "the error names the server: {error}"
            );
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_of_another_version_is_reported_with_both_versions() {
    let (listener, addr) = loopback_listener().await;
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accepts");
        let mut raw = RawClient { stream };
        raw.read_frame().await.expect("the client's hello");
        let mut payload = vec![0x00];
        payload.extend_from_slice(b"rpcc");
        payload.extend(varint(3));
        payload.extend(varint(1024));
        payload.extend(string("Lab"));
        payload.extend([0, 0, 0, 1]); // methods, ping interval, max concurrent calls, window
        raw.send(&frame(&payload)).await;
        raw.expect_closed().await;
    });
    match within("connecting", LabClient::connect(addr)).await {
        Err(RpcError::VersionMismatch { ours: 2, theirs: 3 }) => {}
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
}

/// Reads the server's answer to a hello it will not serve: its own hello (version 2), then the
/// close. Returns the hello.
async fn servers_hello_then_close(raw: &mut RawClient) -> Vec<u8> {
    let answer = within("the server's hello", raw.read_frame())
        .await
        .expect("the server answers with its own hello");
    assert_eq!(answer[..6], *b"\x00rpcc\x02", "kind 0, magic, version 2");
    within("closing", raw.expect_closed()).await;
    answer
}

#[tokio::test]
async fn a_client_of_another_version_gets_the_servers_hello_then_is_closed() {
    let addr = start_tcp().await;
    let mut raw = RawClient::connect(addr).await;
    raw.send(&hello("Lab", 1)).await;
    servers_hello_then_close(&mut raw).await;
}

/// A hello is small: a first frame claiming more than 64 KiB is refused as soon as its length
/// arrives, though the server takes frames far larger once the handshake is done. The server
/// does not wait for the rest, which would pin its memory for the whole handshake timeout.
#[tokio::test]
async fn a_hello_over_64_kib_is_refused_at_its_length() {
    let builder = Server::builder().handshake_timeout(Duration::from_secs(600));
    let addr = start_tcp_with(builder, LabImpl::default()).await;
    let mut raw = RawClient::connect(addr).await;
    let claimed = u32::try_from(MAX_HELLO_LEN + 1).expect("fits");
    raw.stream
        .write_all(&claimed.to_be_bytes())
        .await
        .expect("writes");
    within("closing", raw.expect_closed()).await;
}

/// A hello of exactly 64 KiB is read: the server answers it (here with its own hello, since
/// the long name is no service it serves).
#[tokio::test]
async fn a_hello_of_exactly_64_kib_is_read() {
    let addr = start_tcp().await;
    let mut raw = RawClient::connect(addr).await;
    let short = hello("", VERSION).len() - 4;
    // The name's length varint grows from one byte to three.
    let largest = hello(&"x".repeat(MAX_HELLO_LEN - short - 2), VERSION);
    assert_eq!(largest.len() - 4, MAX_HELLO_LEN);
    raw.send(&largest).await;
    servers_hello_then_close(&mut raw).await;
}

/// A hello may be larger than the frames a side takes after it (its method tables grow with
/// the service): it is read up to 64 KiB whatever `max_frame_len` says. With the hello held to
/// the limit, a server or client built with a small one could not finish a handshake.
#[tokio::test]
async fn a_hello_larger_than_the_frames_a_side_takes_is_read() {
    let addr = start_tcp_with(Server::builder().max_frame_len(1024), LabImpl::default()).await;
    let mut raw = RawClient::connect(addr).await;
    raw.send(&hello(&"x".repeat(8 * 1024), VERSION)).await;
    servers_hello_then_close(&mut raw).await;

    let (listener, addr) = loopback_listener().await;
    let server = tokio::spawn(async move {
        let (mut raw, _) = RawClient::accept(&listener).await;
        // Bytes after a hello's fields are ignored (section 11): 8 KiB of them.
        let mut payload = lab_hello(lab_methods(), 0, 0)[4..].to_vec();
        payload.extend(vec![0; 8 * 1024]);
        raw.send(&frame(&payload)).await;
        raw
    });
    let client = LabClient::builder().max_frame_len(1024).connect(addr);
    within("the handshake", client).await.expect("connects");
    drop(server.await.expect("the raw server"));
}

/// A limit on frames under 1 KiB, which no connection could work within (its own pings and
/// error answers are larger), is raised to 1 KiB on either side: calls go through.
#[tokio::test]
async fn a_frame_limit_under_one_kib_is_raised_to_it() {
    let addr = start_tcp_with(Server::builder().max_frame_len(0), LabImpl::default()).await;
    let client = within(
        "connecting",
        LabClient::builder().max_frame_len(0).connect(addr),
    )
    .await
    .expect("connects");
    assert_eq!(within("a call", client.add(2, 3)).await.expect("adds"), 5);
    let refused = within("a call over the limit", client.echo(vec![7; 2048])).await;
    assert!(
        matches!(refused, Err(RpcError::FrameTooLarge { .. })),
        "{refused:?}"
    );
}

/// The same of a server's hello, for a client.
#[tokio::test]
async fn a_servers_hello_over_64_kib_is_refused_at_its_length() {
    let (listener, addr) = loopback_listener().await;
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accepts");
        let claimed = u32::try_from(MAX_HELLO_LEN + 1).expect("fits");
        stream
            .write_all(&claimed.to_be_bytes())
            .await
            .expect("writes");
        stream
    });
    let connecting = LabClient::builder()
        .connect_timeout(Duration::from_secs(600))
        .connect(addr);
    match within("connecting", connecting).await {
        Err(error @ RpcError::Handshake(_)) => {
            assert!(
                error.to_string().contains("not an rpc-core hello"),
                "{error}"
            );
        }
        other => panic!("expected a handshake error, got {other:?}"),
    }
    drop(server);
}

/// A client that asks for a service the server does not serve gets the server's hello, so that
/// it can say what differs, and then the connection closes: it is never served.
#[tokio::test]
async fn a_client_asking_for_another_service_gets_the_servers_hello_then_is_closed() {
    let addr = start_tcp().await;
    let mut raw = RawClient::connect(addr).await;
    raw.send(&hello("Other", VERSION)).await;
    let answer = servers_hello_then_close(&mut raw).await;
    assert_eq!(answer[10..14], *b"\x03Lab", "the server names its service");
}

/// The newer server, for the older client.
struct V2;

impl v2::Lab for V2 {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
    async fn div(&self, a: i64, b: i64) -> Result<i64, rpc_tests::MathError> {
        a.checked_div(b).ok_or(rpc_tests::MathError::DivideByZero)
    }
    async fn echo(&self, text: String) -> String {
        text
    }
    async fn mul(&self, a: i64, b: i64) -> i64 {
        a * b
    }
    async fn zeros(&self, len: u32) -> Vec<u8> {
        vec![0; len as usize]
    }
}

#[tokio::test]
async fn adding_methods_to_the_server_does_not_break_old_clients() {
    let server = rpc_core::Server::bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("address");
    tokio::spawn(server.serve(v2::LabServer::new(V2)));

    let old = LabClient::connect(addr)
        .await
        .expect("an older client connects");
    assert_eq!(old.add(2, 3).await.expect("unchanged"), 5);
    assert_eq!(old.div(9, 3).await.expect("unchanged"), Ok(3));
    match old.echo(vec![1]).await {
        Err(RpcError::SignatureMismatch { method, .. }) => assert_eq!(method, "echo"),
        other => panic!("expected SignatureMismatch, got {other:?}"),
    }
    match old.incr().await {
        Err(RpcError::UnknownMethod { method }) => assert_eq!(method, "incr"),
        other => panic!("expected UnknownMethod, got {other:?}"),
    }
}
