//! A balanced client's endpoints, as an operator sees them: named in errors, listed with their
//! states and changes, ejected when calls keep failing on them, and waited for when asked.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use rpc_core::{EndpointState, RpcError, Server, ServiceClient, Status, StatusCode};
use rpc_tests::greeter::{self, GreeterClient};
use rpc_tests::{
    LabClient, RawClient, held_loopback_port, lab_hello, lab_methods, loopback_listener, within,
};

#[tokio::test]
async fn when_every_endpoint_is_down_the_error_names_each() {
    let held = [
        held_loopback_port(),
        held_loopback_port(),
        held_loopback_port(),
    ];
    let addrs = held.each_ref().map(|(_, addr)| *addr);
    let names: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let client = GreeterClient::builder().balance(names.clone());
    let error = within("a call", client.greet("x".into()))
        .await
        .expect_err("nobody listens");
    let RpcError::Unavailable { causes } = &error else {
        panic!("expected every endpoint unavailable, got {error:?}");
    };
    assert_eq!(causes.len(), 3);
    let text = error.to_string();
    assert!(
        text.starts_with("all 3 endpoints are unavailable: "),
        "{text}"
    );
    for name in &names {
        assert!(
            text.contains(&format!("{name} (could not connect to {name}: ")),
            "{text}"
        );
    }
}

#[tokio::test]
async fn endpoints_are_listed_with_their_states_and_changes_are_reported() {
    let up = greeter::serve(Server::builder(), "127.0.0.1:0").await;
    let (_held, down) = held_loopback_port();
    let client = GreeterClient::builder()
        .reconnect_backoff(Duration::from_secs(60), Duration::from_secs(60))
        .balance([up.to_string(), down.to_string()]);
    let listed = client.channel().endpoints();
    assert_eq!(listed.len(), 2);
    assert!(
        listed.iter().all(|e| e.state == EndpointState::Idle),
        "{listed:?}"
    );
    let shown = format!("{:?}", client.channel());
    assert!(shown.starts_with("Channel { pool: "), "{shown}");
    assert!(shown.contains(&down.to_string()), "{shown}");

    let mut changes = Box::pin(client.channel().endpoint_changes());
    // Calls go to the live one, after the other, when picked, fails once; until it has been.
    let tried_down = |client: &GreeterClient| {
        client
            .channel()
            .endpoints()
            .iter()
            .any(|e| e.endpoint == down.to_string() && e.state != EndpointState::Idle)
    };
    for _ in 0..200 {
        within("a call", client.greet("x".into()))
            .await
            .expect("the live endpoint answers");
        if tried_down(&client) {
            break;
        }
    }
    let listed = within("a change", changes.next())
        .await
        .expect("changes are reported");
    assert_eq!(listed.len(), 2);
    let listed = client.channel().endpoints();
    let of = |addr: SocketAddr| {
        listed
            .iter()
            .find(|e| e.endpoint == addr.to_string())
            .expect("listed under the address it was given")
            .clone()
    };
    assert_eq!(of(up).state, EndpointState::Connected);
    assert_eq!(of(up).outstanding, 0, "the calls are over");
    assert_eq!(of(up).last_error, None);
    let failed = of(down);
    assert_eq!(failed.state, EndpointState::BackingOff, "{failed:?}");
    let why = failed.last_error.expect("why it failed");
    assert!(
        why.contains(&format!("could not connect to {down}")),
        "{why}"
    );
}

/// A server's answers are its word, refusals included: calls it refuses as a matter of course
/// do not count against it, and it is not ejected for them.
#[tokio::test]
async fn an_endpoint_whose_answers_are_refusals_is_not_ejected() {
    let refusing =
        Server::builder().intercept(|_| Err(Status::new(StatusCode::PermissionDenied, "no")));
    let addr = greeter::serve(refusing, "127.0.0.1:0").await;
    let client = GreeterClient::builder().balance([addr]);
    for _ in 0..20 {
        let refused = within("a call", client.greet("x".into())).await;
        assert!(
            matches!(refused, Err(RpcError::PermissionDenied { .. })),
            "{refused:?}"
        );
    }
    let listed = client.channel().endpoints();
    assert_eq!(listed[0].state, EndpointState::Connected, "{listed:?}");
}

#[tokio::test]
async fn an_endpoint_whose_calls_keep_failing_is_ejected() {
    let unavailable =
        Server::builder().intercept(|_| Err(Status::new(StatusCode::Unavailable, "draining")));
    let sick = greeter::serve(unavailable, "127.0.0.1:0").await;
    let healthy = greeter::serve(Server::builder(), "127.0.0.1:0").await;
    let client = GreeterClient::builder().balance([sick, healthy]);
    // Unavailable means not run: each call is made again on the other server and succeeds,
    // while the sick one's failures add up.
    for _ in 0..400 {
        within("a call", client.greet("x".into()))
            .await
            .expect("answered");
        let sick_state = client
            .channel()
            .endpoints()
            .into_iter()
            .find(|e| e.endpoint == sick.to_string())
            .expect("listed")
            .state;
        if sick_state == EndpointState::Ejected {
            return;
        }
    }
    panic!(
        "the sick endpoint was never ejected: {:?}",
        client.channel().endpoints()
    );
}

/// A client of one server reports its endpoint's changes too: here, the connection lost.
#[tokio::test]
async fn a_client_of_one_server_reports_a_lost_connection() {
    let (listener, addr) = loopback_listener().await;
    let (hang_up, hung_up) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (mut raw, _) = RawClient::accept(&listener).await;
        raw.send(&lab_hello(lab_methods(), 0, 0)).await;
        let _ = hung_up.await;
    });
    let client = LabClient::connect(addr).await.expect("connects");
    let listed = client.channel().endpoints();
    assert_eq!(listed[0].state, EndpointState::Connected, "{listed:?}");
    let mut changes = Box::pin(client.channel().endpoint_changes());
    drop(hang_up);
    server.await.expect("joins");
    let listed = within("a change", changes.next())
        .await
        .expect("changes are reported");
    assert_ne!(listed[0].state, EndpointState::Connected, "{listed:?}");
}

#[tokio::test]
async fn waiting_for_ready_rides_out_a_server_that_is_not_up_yet() {
    let (_held, addr) = held_loopback_port();
    let client = GreeterClient::builder()
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .deadline(Duration::from_secs(20))
        .wait_for_ready(true)
        .balance([addr]);

    // Told not to wait, a call fails at once.
    let impatient = GreeterClient::from_channel(client.channel().wait_for_ready(false));
    let refused = within("a call", impatient.greet("x".into())).await;
    assert!(
        matches!(refused, Err(RpcError::Connect { .. })),
        "{refused:?}"
    );

    // The client's calls wait.
    let mut changes = Box::pin(client.channel().endpoint_changes());
    let call = tokio::spawn(async move { client.greet("ada".into()).await });
    // Once the waiting call has failed an attempt, the server comes up.
    loop {
        let listed = within("a change", changes.next()).await.expect("changes");
        if listed[0].state == EndpointState::BackingOff {
            break;
        }
    }
    greeter::serve(Server::builder(), &addr.to_string()).await;
    let greeting = within("the waiting call", call).await.expect("joins");
    assert_eq!(
        greeting.expect("answered once the server is up"),
        "hello, ada"
    );
}

/// An address given more than once is a server to reach over as many connections: calls that
/// move large payloads spread over several TCP connections to one server, as four clients'
/// would, behind one client.
#[tokio::test]
async fn an_address_given_more_than_once_gets_a_connection_each_time() {
    let addr = rpc_tests::start_tcp().await;
    let client = LabClient::builder().balance([addr; 4]);
    let mut ports = std::collections::BTreeSet::new();
    // Each call goes to the less busy of two endpoints picked at random: 400 calls miss one
    // of four with a chance of 4 × (3/4)^400.
    for _ in 0..400 {
        let me = within("a call", client.whoami()).await.expect("answers");
        ports.insert(me.peer.expect("over TCP").port());
        if ports.len() == 4 {
            break;
        }
    }
    assert_eq!(ports.len(), 4, "connections seen: {ports:?}");
    let listed = client.channel().endpoints();
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|endpoint| endpoint.state == EndpointState::Connected),
        "{listed:?}"
    );
}
