//! Graceful shutdown: stop accepting, let running calls finish within the grace period, refuse
//! new calls with an error that says they did not run, then close. No call ever hangs.

use std::time::Duration;

use rpc_core::{RpcError, Server, ServiceClient};
use rpc_tests::{LabClient, LabImpl, LabServer, Probe, within};
use tokio::sync::oneshot;

/// Starts a server that shuts down when the returned sender fires.
async fn server_with_grace(
    grace: Duration,
    lab: LabImpl,
) -> (
    std::net::SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let server = Server::builder()
        .shutdown_grace(grace)
        .bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = server.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel();
    let serving = tokio::spawn(server.serve_with_shutdown(LabServer::new(lab), async {
        let _ = stopped.await;
    }));
    (addr, stop, serving)
}

/// A call that waits on `client` for its gate, once its handler runs.
async fn a_running_call(
    client: &LabClient,
    probe: &Probe,
) -> tokio::task::JoinHandle<Result<String, RpcError>> {
    let running = tokio::spawn({
        let client = client.clone();
        async move { client.wait("finish me".into()).await }
    });
    assert_eq!(probe.next_event().await, "waiting finish me");
    running
}

/// The error of the first of `client`'s calls to fail, calling until one does.
async fn first_failure(client: &LabClient) -> RpcError {
    within("a call to fail", async {
        loop {
            match client.add(1, 1).await {
                Ok(_) => tokio::task::yield_now().await,
                Err(error) => break error,
            }
        }
    })
    .await
}

/// Opens the running call's gate: it completes, and then the server stops cleanly.
async fn finish(
    probe: &Probe,
    running: tokio::task::JoinHandle<Result<String, RpcError>>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
) {
    probe.open("finish me");
    let finished = within("the running call", running).await.expect("joins");
    assert_eq!(finished.expect("the running call completes"), "finish me");
    within("the server to stop", serving)
        .await
        .expect("joins")
        .expect("a clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_calls_finish_and_new_ones_are_refused() {
    let lab = LabImpl::default();
    let probe = lab.probe();
    let (addr, stop, serving) = server_with_grace(Duration::from_secs(20), lab).await;
    // One stream, which cannot be re-established: it shows what the server tells a connection.
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let client = LabClient::from_stream(stream).await.expect("handshake");
    let running = a_running_call(&client, &probe).await;

    stop.send(()).expect("the server listens for the signal");
    match first_failure(&client).await {
        RpcError::ServerClosing { method } => assert_eq!(method, "add"),
        other => panic!("expected ServerClosing, got {other:?}"),
    }
    assert!(
        matches!(
            LabClient::connect(addr).await,
            Err(RpcError::Connect { .. })
        ),
        "new connections are refused"
    );
    // Well after the signal, measured in the server's own work: two thousand more calls refused
    // on the same connection, each a round trip. A server without grace would have dropped the
    // running call, and this connection with it, long before.
    for _ in 0..2000 {
        match client.add(1, 1).await {
            Err(RpcError::ServerClosing { .. }) => {}
            other => panic!("expected ServerClosing while draining, got {other:?}"),
        }
    }
    assert!(!running.is_finished(), "the running call is still running");
    finish(&probe, running, serving).await;
}

/// A client that dials its server itself sends no new call on a connection the server is
/// draining: it dials again (here in vain, the server accepting no more), while the running
/// call finishes on the old connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialing_client_sends_no_new_call_on_a_draining_connection() {
    let lab = LabImpl::default();
    let probe = lab.probe();
    let (addr, stop, serving) = server_with_grace(Duration::from_secs(20), lab).await;
    let client = LabClient::connect(addr).await.expect("connects");
    let running = a_running_call(&client, &probe).await;

    stop.send(()).expect("the server listens for the signal");
    let failed = first_failure(&client).await;
    assert!(matches!(failed, RpcError::Connect { .. }), "{failed:?}");
    finish(&probe, running, serving).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_still_running_when_the_grace_ends_fail_instead_of_hanging() {
    let lab = LabImpl::default();
    let probe = lab.probe();
    let (addr, stop, serving) = server_with_grace(Duration::from_millis(100), lab).await;
    let client = LabClient::connect(addr).await.expect("connects");
    let stuck = tokio::spawn({
        let client = client.clone();
        async move { client.hold("stuck".into()).await }
    });
    assert_eq!(probe.next_event().await, "started stuck");

    stop.send(()).expect("the server listens for the signal");
    within("the server to stop", serving)
        .await
        .expect("joins")
        .expect("a clean shutdown");
    assert_eq!(
        probe.next_event().await,
        "dropped stuck",
        "the handler was dropped"
    );
    match within("the stuck call", stuck).await.expect("joins") {
        Err(RpcError::Interrupted { method, .. }) => assert_eq!(method, "hold"),
        other => panic!("expected Interrupted, got {other:?}"),
    }
}

/// `Duration::MAX` given for every duration a server or a client takes means "never", not a
/// panic: an instant that far off overflowed, killing the server's accept loop (handshake
/// timeout) and the caller of a client that failed to reconnect (backoff).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_duration_setting_takes_duration_max_as_never() {
    let never = Duration::MAX;
    let lab = LabImpl::default();
    let probe = lab.probe();
    let server = Server::builder()
        .handshake_timeout(never)
        .idle_timeout(never)
        .keepalive(never, never)
        .shutdown_grace(never)
        .busy_poll(never)
        .bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = server.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_with_shutdown(LabServer::new(lab), async {
        let _ = stopped.await;
    }));
    let client = within(
        "connecting",
        LabClient::builder()
            .deadline(never)
            .keepalive(never, never)
            .reconnect_backoff(never, never)
            .connect_timeout(never)
            .busy_poll(never)
            .connect(addr),
    )
    .await
    .expect("connects");
    assert_eq!(within("a call", client.add(2, 3)).await.expect("adds"), 5);

    // Draining with a grace of "never", the running call finishes and the server stops.
    let running = a_running_call(&client, &probe).await;
    stop.send(()).expect("the server listens for its stop");
    finish(&probe, running, serving).await;
    // Reconnecting fails, and backs off for "never" without a panic. (A call after that would
    // wait out the backoff within its deadline: with both "never", forever, as asked.)
    let mut failed = first_failure(&client).await;
    if !matches!(failed, RpcError::Connect { .. }) {
        failed = within("a call to a server that is gone", client.add(1, 1))
            .await
            .expect_err("the server is gone");
    }
    assert!(matches!(failed, RpcError::Connect { .. }), "{failed:?}");
}

/// Serves `lab` on the server end of an in-memory pipe with `grace`, until the returned sender
/// fires (`serve_connection_with_shutdown`), and connects a client on the other end.
async fn serve_alone_until(
    grace: Duration,
    lab: LabImpl,
) -> (
    LabClient,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), RpcError>>,
) {
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        let signal = async {
            let _ = stopped.await;
        };
        Server::builder()
            .shutdown_grace(grace)
            .serve_connection_with_shutdown(server_end, LabServer::new(lab), signal)
            .await
    });
    let client = LabClient::from_stream(client_end).await.expect("handshake");
    (client, stop, serving)
}

/// A connection served on its own drains as a listener's do when its signal comes: the
/// running call finishes, new calls are refused as not run, then the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_served_alone_drains_when_told() {
    let lab = LabImpl::default();
    let probe = lab.probe();
    let (client, stop, serving) = serve_alone_until(Duration::from_secs(20), lab).await;
    let running = a_running_call(&client, &probe).await;

    stop.send(())
        .expect("the connection listens for the signal");
    match first_failure(&client).await {
        RpcError::ServerClosing { method } => assert_eq!(method, "add"),
        other => panic!("expected ServerClosing, got {other:?}"),
    }
    probe.open("finish me");
    let finished = within("the running call", running).await.expect("joins");
    assert_eq!(finished.expect("the running call completes"), "finish me");
    within("the connection to close", serving)
        .await
        .expect("joins")
        .expect("a clean shutdown");
    assert!(client.channel().is_closed());
}

/// A connection served on its own drops the calls still running when its grace ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_served_alone_drops_its_calls_when_the_grace_ends() {
    let lab = LabImpl::default();
    let probe = lab.probe();
    let (client, stop, serving) = serve_alone_until(Duration::from_millis(100), lab).await;
    let stuck = tokio::spawn({
        let client = client.clone();
        async move { client.hold("stuck".into()).await }
    });
    assert_eq!(probe.next_event().await, "started stuck");

    stop.send(())
        .expect("the connection listens for the signal");
    within("the connection to close", serving)
        .await
        .expect("joins")
        .expect("a clean shutdown");
    assert_eq!(probe.next_event().await, "dropped stuck");
    match within("the stuck call", stuck).await.expect("joins") {
        Err(RpcError::Interrupted { method, .. }) => assert_eq!(method, "hold"),
        other => panic!("expected Interrupted, got {other:?}"),
    }
}
