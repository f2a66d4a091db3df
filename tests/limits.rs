//! Server limits: in-flight calls per connection, connections, idle connections. Memory stays
//! bounded because the server holds at most its limit of calls, and nothing is dropped.

use std::time::Duration;

use futures_util::future::join_all;
use rpc_core::{RpcError, Server, ServiceClient};
use rpc_tests::{LabClient, LabImpl, RawClient, request, start_tcp_with, string, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_calls_runs_within_the_limit_and_every_call_is_answered() {
    let lab = LabImpl::default();
    let probe = lab.probe();
    let addr = start_tcp_with(Server::builder().max_in_flight_per_connection(16), lab).await;
    let client = LabClient::connect(addr).await.expect("connects");

    let calls = join_all((0..100_000).map(|_| client.tracked()));
    let answers = within("100,000 calls", calls).await;
    assert_eq!(answers.len(), 100_000);
    for answer in answers {
        let running = answer.expect("every call is answered");
        assert!(running <= 16, "{running} calls ran at once");
    }
    assert!(probe.most_running() <= 16, "at most the limit ran at once");
    assert!(probe.most_running() > 1, "calls did run concurrently");
}

/// A client that ignores the limit the server announced: the server stops reading its
/// connection rather than buffer what it sends, and answers everything once calls finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_the_limit_is_slowed_down_not_buffered() {
    let lab = LabImpl::default();
    let probe = lab.probe();
    let addr = start_tcp_with(Server::builder().max_in_flight_per_connection(4), lab).await;
    let mut raw = RawClient::handshake(addr).await;
    let mut burst = Vec::new();
    for id in 0..200 {
        burst.extend(request(id, "wait", &string("flood")));
    }
    let (mut read_half, mut write_half) = raw.stream.split();
    let (written, answers) = tokio::join!(
        async {
            tokio::io::AsyncWriteExt::write_all(&mut write_half, &burst).await?;
            // Only the limit's worth of calls are running, waiting at the gate: open it.
            probe.open("flood");
            Ok::<_, std::io::Error>(())
        },
        within("200 answers", async {
            let mut ids = Vec::new();
            for _ in 0..200 {
                let answer = read_answer(&mut read_half).await;
                assert_eq!(answer[0], 0x02, "a response");
                ids.push(answer[1]);
            }
            ids
        })
    );
    written.expect("the burst is written");
    assert_eq!(answers.len(), 200);
    assert!(
        probe.most_running() <= 4,
        "{} ran at once",
        probe.most_running()
    );
}

async fn read_answer(stream: &mut tokio::net::tcp::ReadHalf<'_>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut prefix = [0; 4];
    stream.read_exact(&mut prefix).await.expect("a frame");
    let mut payload = vec![0; u32::from_be_bytes(prefix) as usize];
    stream.read_exact(&mut payload).await.expect("a frame");
    payload
}

#[tokio::test]
async fn past_max_connections_new_clients_wait_until_one_leaves() {
    let addr = start_tcp_with(Server::builder().max_connections(2), LabImpl::default()).await;
    let first = LabClient::connect(addr).await.expect("first");
    let second = LabClient::connect(addr).await.expect("second");
    assert_eq!(first.add(1, 1).await.expect("first serves"), 2);
    assert_eq!(second.add(2, 2).await.expect("second serves"), 4);

    let refused = LabClient::builder()
        .connect_timeout(Duration::from_millis(200))
        .connect(addr)
        .await;
    assert!(
        matches!(refused, Err(RpcError::ConnectTimeout(_))),
        "a third connection is not served: {refused:?}"
    );

    drop(first);
    let third = within("a connection once a slot is free", LabClient::connect(addr))
        .await
        .expect("connects once the first has left");
    assert_eq!(third.add(3, 3).await.expect("third serves"), 6);
    assert_eq!(second.add(4, 4).await.expect("second still serves"), 8);
}

#[tokio::test]
async fn an_idle_connection_is_told_and_closed() {
    let addr = start_tcp_with(
        Server::builder().idle_timeout(Duration::from_millis(100)),
        LabImpl::default(),
    )
    .await;
    let mut raw = RawClient::handshake(addr).await;
    raw.send(&request(1, "add", &[0x02, 0x02])).await;
    let answer = within("an answer", raw.read_frame())
        .await
        .expect("answered");
    assert_eq!(answer, [0x02, 0x01, 0x00, 0x04]);
    let go_away = within("going away", raw.read_frame()).await;
    assert_eq!(go_away.as_deref(), Some(&[0x05][..]), "a go-away frame");
    within("closing", raw.expect_closed()).await;
}

#[tokio::test]
async fn a_connection_told_to_go_away_sends_no_new_calls() {
    let addr = start_tcp_with(
        Server::builder().idle_timeout(Duration::from_millis(100)),
        LabImpl::default(),
    )
    .await;
    // One stream, which cannot be re-established: it shows the connection's own behaviour.
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let client = LabClient::from_stream(stream).await.expect("handshake");
    assert_eq!(client.add(1, 1).await.expect("add"), 2);
    within("the idle connection to close", client.channel().closed()).await;
    match client.add(1, 1).await {
        Err(RpcError::ServerClosing { method }) => assert_eq!(method, "add"),
        other => panic!("expected ServerClosing, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_whose_idle_connection_was_closed_connects_again() {
    let addr = start_tcp_with(
        Server::builder().idle_timeout(Duration::from_millis(100)),
        LabImpl::default(),
    )
    .await;
    let client = LabClient::connect(addr).await.expect("connects");
    assert_eq!(client.add(1, 1).await.expect("add"), 2);
    within("the idle connection to close", client.channel().closed()).await;
    assert!(client.channel().is_closed());
    assert_eq!(
        within("a call", client.add(2, 2))
            .await
            .expect("a new connection"),
        4
    );
}
