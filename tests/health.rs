//! Health: every server reports whether it is serving, to a check or a watch; graceful
//! shutdown says not serving first; a balanced client that probes passes over servers that
//! are not serving.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use rpc_core::health::{HealthReporter, ServingStatus};
use rpc_core::{EndpointState, Server, ServerBuilder, ServiceClient};
use rpc_tests::greeter::{GreeterClient, GreeterServer, MyGreeter};
use rpc_tests::{RawClient, VERSION, frame, hello, string, within};

async fn serve(builder: ServerBuilder) -> (SocketAddr, HealthReporter) {
    let server = builder.bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("an address");
    let health = server.health();
    tokio::spawn(server.serve(GreeterServer::new(MyGreeter)));
    (addr, health)
}

#[tokio::test]
async fn a_server_reports_what_it_is_set_to() {
    let (addr, health) = serve(Server::builder()).await;
    let client = within("connecting", GreeterClient::connect(addr))
        .await
        .expect("connects");
    assert_eq!(
        client.channel().health().await.expect("answers"),
        ServingStatus::Serving
    );
    health.set(ServingStatus::NotServing);
    assert_eq!(
        client.channel().health().await.expect("answers"),
        ServingStatus::NotServing
    );
    health.set(ServingStatus::Serving);
    assert_eq!(
        client.channel().health().await.expect("answers"),
        ServingStatus::Serving
    );
}

#[tokio::test]
async fn a_watch_hears_each_change_and_shutdown_first() {
    let server = Server::builder()
        .shutdown_grace(Duration::from_secs(600))
        .bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = server.local_addr().expect("an address");
    let health = server.health();
    let (stop, stopping) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(
        server.serve_with_shutdown(GreeterServer::new(MyGreeter), async {
            let _ = stopping.await;
        }),
    );
    let client = within("connecting", GreeterClient::connect(addr))
        .await
        .expect("connects");
    let mut watch = client.channel().watch_health().await.expect("a watch");
    assert_eq!(
        within("a status", watch.next())
            .await
            .expect("now")
            .expect("a status"),
        ServingStatus::Serving
    );
    health.set(ServingStatus::NotServing);
    assert_eq!(
        within("a status", watch.next())
            .await
            .expect("a change")
            .expect("a status"),
        ServingStatus::NotServing
    );
    health.set(ServingStatus::Serving);
    assert_eq!(
        within("a status", watch.next())
            .await
            .expect("a change")
            .expect("a status"),
        ServingStatus::Serving
    );

    let _ = stop.send(());
    assert_eq!(
        within("a status", watch.next())
            .await
            .expect("shutdown says")
            .expect("a status"),
        ServingStatus::NotServing
    );
    assert!(
        within("a status", watch.next()).await.is_none(),
        "then the watch ends"
    );
    // With the watch over, draining does not wait out the 600 s grace.
    within("the shutdown", serving)
        .await
        .expect("joins")
        .expect("shuts down");
}

#[tokio::test]
async fn a_probing_pool_passes_over_a_server_that_is_not_serving() {
    let counter = |count: &Arc<AtomicUsize>| {
        let count = Arc::clone(count);
        // Greeter's calls only: the prober's health checks pass the interceptor too.
        Server::builder().intercept(move |call| {
            if call.service() == "Greeter" {
                count.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        })
    };
    let (sick_calls, well_calls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (sick, sick_health) = serve(counter(&sick_calls)).await;
    let (well, _) = serve(counter(&well_calls)).await;
    let client = GreeterClient::builder()
        .health_checks(Duration::from_millis(20))
        .balance([sick, well]);
    // Both connected first, so that the prober has both to ask.
    for _ in 0..200 {
        client.greet("x".into()).await.expect("answers");
        if client
            .channel()
            .endpoints()
            .iter()
            .all(|e| e.state == EndpointState::Connected)
        {
            break;
        }
    }
    let mut changes = Box::pin(client.channel().endpoint_changes());
    sick_health.set(ServingStatus::NotServing);
    loop {
        let listed = within("a change", changes.next()).await.expect("changes");
        let state = |addr: SocketAddr| {
            listed
                .iter()
                .find(|e| e.endpoint == addr.to_string())
                .map(|e| e.state)
        };
        if state(sick) == Some(EndpointState::NotServing) {
            break;
        }
    }
    let before = sick_calls.load(Ordering::SeqCst);
    for _ in 0..50 {
        client.greet("x".into()).await.expect("answers");
    }
    assert_eq!(
        sick_calls.load(Ordering::SeqCst),
        before,
        "no call went to the sick server"
    );
    assert!(well_calls.load(Ordering::SeqCst) >= 50);
}

/// docs/wire.md, "Health": `rpc.health.check` with the service's name ("" for the server's
/// own) is answered with a ServingStatus, postcard-encoded.
#[tokio::test]
async fn a_health_check_on_the_wire() {
    let (addr, health) = serve(Server::builder()).await;
    let mut raw = RawClient::connect(addr).await;
    raw.send(&hello("", VERSION)).await;
    within("the hello", raw.read_frame())
        .await
        .expect("a hello");
    let check = |id: u8| {
        let mut request = vec![0x01, id];
        request.extend(string("rpc.health.check"));
        request.extend([0x00, 0x00]); // no timeout, no metadata
        request.extend(string("")); // the server's own service
        frame(&request)
    };
    // The bytes docs/wire.md gives.
    let mut documented = vec![0x00, 0x00, 0x00, 0x16, 0x01, 0x01, 0x10];
    documented.extend(b"rpc.health.check");
    documented.extend([0x00, 0x00, 0x00]);
    assert_eq!(check(1), documented);
    raw.send(&check(1)).await;
    let answer = within("the answer", raw.read_frame())
        .await
        .expect("answered");
    assert_eq!(
        answer,
        [0x02, 0x01, 0x00, 0x00],
        "Response, id 1, Ok, Serving (0)"
    );
    health.set(ServingStatus::NotServing);
    raw.send(&check(2)).await;
    let answer = within("the answer", raw.read_frame())
        .await
        .expect("answered");
    assert_eq!(answer, [0x02, 0x02, 0x00, 0x01], "NotServing (1)");
}
