//! Interceptors: a server's check before every handler, with the statuses it refuses calls
//! with, on the wire and as errors; a client's change to every call's metadata.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rpc_core::{Context, RpcError, Server, ServerBuilder, Status, StatusCode};
use rpc_tests::{RawClient, frame, string, varint, within};

#[rpc_core::service]
pub trait Door {
    /// Opens the door; counts the handler's runs.
    async fn open(&self) -> String;
}

#[derive(Clone, Default)]
struct MyDoor {
    runs: Arc<AtomicUsize>,
}

impl Door for MyDoor {
    async fn open(&self) -> String {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let call = Context::current();
        call.metadata()
            .get_str("token")
            .unwrap_or("none")
            .to_owned()
    }
}

/// Serves `door` with `builder`.
async fn serve(builder: ServerBuilder, door: MyDoor) -> SocketAddr {
    let server = builder.bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("an address");
    tokio::spawn(server.serve(DoorServer::new(door)));
    addr
}

/// A server that lets through the token `s3cr3t` only.
fn guarded() -> ServerBuilder {
    Server::builder().intercept(|call| match call.metadata().get_str("token") {
        Some("s3cr3t") => Ok(()),
        Some(other) => Err(Status::permission_denied(format!("{other} may not open"))),
        None => Err(Status::unauthenticated("no token")),
    })
}

#[tokio::test]
async fn a_refused_calls_handler_never_runs_and_the_client_learns_why() {
    let door = MyDoor::default();
    let addr = serve(guarded(), door.clone()).await;
    let client = within("connecting", DoorClient::connect(addr))
        .await
        .expect("connects");

    match client.open().await {
        Err(RpcError::Unauthenticated { method, message }) => {
            assert_eq!(method, "open");
            assert_eq!(message, "no token");
        }
        other => panic!("expected Unauthenticated, got {other:?}"),
    }
    match client.with_metadata("token", "guess").open().await {
        Err(error @ RpcError::PermissionDenied { .. }) => {
            assert_eq!(
                error.to_string(),
                "the server refused `open`: permission denied: guess may not open"
            );
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    assert_eq!(door.runs.load(Ordering::SeqCst), 0, "no handler ran");

    let opened = client.with_metadata("token", "s3cr3t").open().await;
    assert_eq!(opened.expect("let through"), "s3cr3t");
    assert_eq!(door.runs.load(Ordering::SeqCst), 1);
}

/// The interceptor sees the service, the method and the client's address.
#[tokio::test]
async fn the_interceptor_sees_the_call() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let builder = Server::builder().intercept(move |call| {
        let peer = call.peer_addr().map(|addr| addr.ip().to_string());
        log.lock()
            .expect("the log")
            .push((call.service(), call.method(), peer));
        Ok(())
    });
    let addr = serve(builder, MyDoor::default()).await;
    let client = within("connecting", DoorClient::connect(addr))
        .await
        .expect("connects");
    client.open().await.expect("a call");
    let seen = seen.lock().expect("the log").clone();
    assert_eq!(seen, [("Door", "open", Some("127.0.0.1".to_owned()))]);
}

#[tokio::test]
async fn other_statuses_come_back_as_refused_with_their_code() {
    for code in [
        StatusCode::InvalidArgument,
        StatusCode::NotFound,
        StatusCode::FailedPrecondition,
        StatusCode::ResourceExhausted,
        StatusCode::Unavailable,
    ] {
        let builder = Server::builder().intercept(move |_| Err(Status::new(code, "not now")));
        let addr = serve(builder, MyDoor::default()).await;
        let client = within("connecting", DoorClient::connect(addr))
            .await
            .expect("connects");
        match client.open().await {
            Err(RpcError::Refused {
                status, message, ..
            }) => {
                assert_eq!(status, code);
                assert_eq!(message, "not now");
            }
            other => panic!("expected Refused({code}), got {other:?}"),
        }
    }
}

/// A server that answers Unavailable did not run the call: a balanced client makes it on
/// another server.
#[tokio::test]
async fn an_unavailable_server_passes_the_call_to_another() {
    let asked = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&asked);
    let busy = Server::builder().intercept(move |_| {
        count.fetch_add(1, Ordering::SeqCst);
        Err(Status::new(StatusCode::Unavailable, "busy"))
    });
    let busy = serve(busy, MyDoor::default()).await;
    let free = MyDoor::default();
    let free_addr = serve(Server::builder(), free.clone()).await;
    let client = DoorClient::builder().balance([busy, free_addr]);
    // Calls go to either server at random; keep calling until the busy one has been asked.
    let mut calls = 0;
    within("a call to reach the busy server", async {
        while asked.load(Ordering::SeqCst) == 0 {
            assert_eq!(
                client.open().await.expect("made on the free server"),
                "none"
            );
            calls += 1;
        }
    })
    .await;
    assert_eq!(
        free.runs.load(Ordering::SeqCst),
        calls,
        "every call ran on the free server"
    );
}

/// When every server answers Unavailable, a balanced client makes the call once on each and
/// once more, then gives up with the refusal, long before its deadline.
#[tokio::test]
async fn when_every_server_is_unavailable_the_call_is_made_once_per_server_and_once_more() {
    let asked = Arc::new(AtomicUsize::new(0));
    let busy = || {
        let count = Arc::clone(&asked);
        Server::builder().intercept(move |_| {
            count.fetch_add(1, Ordering::SeqCst);
            Err(Status::new(StatusCode::Unavailable, "busy"))
        })
    };
    let first = serve(busy(), MyDoor::default()).await;
    let second = serve(busy(), MyDoor::default()).await;
    let client = DoorClient::builder()
        .deadline(std::time::Duration::from_secs(600))
        .balance([first, second]);
    match within("the call", client.open()).await {
        Err(RpcError::Refused { status, .. }) => assert_eq!(status, StatusCode::Unavailable),
        other => panic!("expected Refused(Unavailable), got {other:?}"),
    }
    assert_eq!(asked.load(Ordering::SeqCst), 3);
}

/// A refusal on the wire, byte for byte as docs/wire.md gives it: a Response with outcome Err,
/// code 10 and the interceptor's sentence.
#[tokio::test]
async fn a_refusal_is_an_error_response_with_the_status_code() {
    let addr = serve(guarded(), MyDoor::default()).await;
    let mut raw = RawClient::greet(addr, &rpc_tests::hello("Door", rpc_tests::VERSION)).await;
    let mut request = vec![0x01];
    request.extend(varint(1));
    request.extend(string("open"));
    request.extend([0x00, 0x00]); // no deadline, no metadata
    raw.send(&frame(&request)).await;
    let answer = within("the refusal", raw.read_frame())
        .await
        .expect("answered");
    let mut expected = vec![0x02, 0x01, 0x01, 10];
    expected.extend(string("no token"));
    assert_eq!(answer, expected);
}

/// A client's interceptor changes every call's metadata, reading what may have changed since
/// the last call.
#[tokio::test]
async fn a_client_interceptor_adds_a_token_that_is_refreshed() {
    let addr = serve(guarded(), MyDoor::default()).await;
    let token = Arc::new(RwLock::new(String::from("s3cr3t")));
    let current = Arc::clone(&token);
    let client = DoorClient::builder().intercept(move |metadata| {
        let token = current.read().expect("the token");
        metadata.insert("token", token.as_bytes());
    });
    let client = within("connecting", client.connect(addr))
        .await
        .expect("connects");
    assert_eq!(client.open().await.expect("let through"), "s3cr3t");
    *token.write().expect("the token") = String::from("expired");
    assert!(matches!(
        client.open().await,
        Err(RpcError::PermissionDenied { .. })
    ));
}

/// An interceptor that panics refuses the call as a panicking handler would, and the server
/// serves on.
#[tokio::test]
async fn a_panicking_interceptor_fails_only_that_call() {
    let builder = Server::builder().intercept(|call| {
        if call.metadata().get_str("boom").is_some() {
            panic!("the interceptor broke");
        }
        Ok(())
    });
    let addr = serve(builder, MyDoor::default()).await;
    let client = within("connecting", DoorClient::connect(addr))
        .await
        .expect("connects");
    let broken = client.with_metadata("boom", "1").open().await;
    assert!(
        matches!(broken, Err(RpcError::HandlerPanicked { message: None, .. })),
        "{broken:?}"
    );
    assert_eq!(client.open().await.expect("the next call"), "none");
}
