//! Calls over real TCP: results, application errors, shared state, concurrency on the server,
//! and many calls multiplexed on one connection, answered out of order.

use futures_util::future::join_all;
use rpc_tests::{
    LabClient, MathError, RawClient, echoed_as_sent, frame, go_away_frame, loopback_listener,
    start_tcp, within,
};

#[tokio::test]
async fn a_call_returns_the_handlers_result() {
    let client = LabClient::connect(start_tcp().await)
        .await
        .expect("connects");
    assert_eq!(client.add(2, 3).await.expect("add"), 5);
    assert_eq!(client.echo(vec![1, 2, 3]).await.expect("echo"), [1, 2, 3]);
    client.reset().await.expect("a unit method returns ()");
}

#[tokio::test]
async fn application_errors_are_plain_values() {
    let client = LabClient::connect(start_tcp().await)
        .await
        .expect("connects");
    assert_eq!(client.div(7, 2).await.expect("call succeeds"), Ok(3));
    assert_eq!(
        client.div(1, 0).await.expect("call succeeds"),
        Err(MathError::DivideByZero)
    );
}

#[tokio::test]
async fn state_is_shared_by_every_connection() {
    let addr = start_tcp().await;
    let first = LabClient::connect(addr).await.expect("connects");
    let second = LabClient::connect(addr).await.expect("connects");
    assert_eq!(first.incr().await.expect("incr"), 1);
    assert_eq!(second.incr().await.expect("incr"), 2);
    assert_eq!(first.incr().await.expect("incr"), 3);
}

#[tokio::test]
async fn calls_on_one_connection_run_concurrently_on_the_server() {
    // `rendezvous` returns only once two calls are inside it at the same time: run one after
    // the other, they would wait forever.
    let client = LabClient::connect(start_tcp().await)
        .await
        .expect("connects");
    let (a, b) = within("two concurrent rendezvous calls", async {
        tokio::join!(client.rendezvous(), client.rendezvous())
    })
    .await;
    a.expect("first");
    b.expect("second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_call_does_not_hold_back_the_fast_ones_behind_it() {
    let client = LabClient::connect(start_tcp().await)
        .await
        .expect("connects");
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.wait("slow".into()).await }
    });

    let fast = join_all((0..100).map(|i| {
        let client = client.clone();
        async move { client.add(i, 1).await }
    }));
    let results = within("100 fast calls behind a blocked one", fast).await;
    for (i, result) in (0..).zip(results) {
        assert_eq!(result.expect("fast call"), i + 1);
    }
    assert!(
        !slow.is_finished(),
        "the slow call is still waiting at its gate"
    );

    client.open("slow".into()).await.expect("open");
    let slow = within("the slow call", slow).await.expect("joins");
    assert_eq!(slow.expect("slow call"), "slow");
}

/// A call made off the runtime's workers (this test's body runs in `block_on`) reads its own
/// answer, driving the connection's reader while it waits; polled once and then left aside, it
/// keeps no other call waiting for theirs: a call from a task, and another from `block_on`,
/// are answered meanwhile, and the call left aside is answered once polled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_left_aside_off_the_workers_keeps_no_other_call_waiting() {
    let client = LabClient::connect(start_tcp().await)
        .await
        .expect("connects");
    let mut aside = Box::pin(client.wait("aside".into()));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        aside.as_mut().poll(&mut cx).is_pending(),
        "held at its gate"
    );

    let from_a_task = tokio::spawn({
        let client = client.clone();
        async move { client.add(1, 2).await }
    });
    let answer = within("a call from a task", from_a_task).await;
    assert_eq!(answer.expect("joins").expect("add"), 3);
    let answer = within("another call from block_on", client.add(3, 4)).await;
    assert_eq!(answer.expect("add"), 7);

    client.open("aside".into()).await.expect("open");
    let answer = within("the call left aside", aside).await;
    assert_eq!(answer.expect("wait"), "aside");
}

/// The same for a call from a task on one of the runtime's workers, which reads its own answer
/// too while it is the connection's only call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_left_aside_on_a_worker_keeps_no_other_call_waiting() {
    let client = LabClient::connect(start_tcp().await)
        .await
        .expect("connects");
    let (held, is_held) = tokio::sync::oneshot::channel();
    let (resume, resumed) = tokio::sync::oneshot::channel::<()>();
    let aside = tokio::spawn({
        let client = client.clone();
        async move {
            let mut aside = Box::pin(client.wait("aside".into()));
            let pending = aside
                .as_mut()
                .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
                .is_pending();
            held.send(pending).expect("the test waits");
            resumed.await.expect("resumed");
            aside.await
        }
    });
    assert!(
        within("the call held aside", is_held).await.expect("sent"),
        "held at its gate"
    );

    let from_a_task = tokio::spawn({
        let client = client.clone();
        async move { client.add(1, 2).await }
    });
    let answer = within("a call from another task", from_a_task).await;
    assert_eq!(answer.expect("joins").expect("add"), 3);
    let answer = within("a call from block_on", client.add(3, 4)).await;
    assert_eq!(answer.expect("add"), 7);

    client.open("aside".into()).await.expect("open");
    resume.send(()).expect("the task waits");
    let answer = within("the call left aside", aside).await;
    assert_eq!(answer.expect("joins").expect("wait"), "aside");
}

/// A reader that stops once it has answered the call of a task that reads its own answer
/// (`client::shared_reader`) still looks at its socket after that, with no other call made: the
/// server's go-away, sent after the answer, is read, and the client, with nothing left to wait
/// for, closes the connection.
async fn a_reader_stopped_for_a_task_reads_on() {
    let (listener, addr) = loopback_listener().await;
    let server = tokio::spawn(async move {
        let mut raw = RawClient::accept_as_lab(&listener).await;
        let id = raw.read_request_id().await;
        raw.send(&frame(&[0x02, id, 0x00, 0x04])).await;
        raw.send(&go_away_frame(0, "stopping")).await;
        within("the client to close", raw.expect_closed()).await;
    });
    let client = LabClient::connect(addr).await.expect("connects");
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.add(1, 1).await }
    });
    let answer = within("the call", call).await.expect("joins");
    assert_eq!(answer.expect("answered"), 2);
    within("the server's test", server)
        .await
        .expect("the client closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_stopped_for_a_task_on_a_worker_reads_on() {
    a_reader_stopped_for_a_task_reads_on().await;
}

#[tokio::test]
async fn a_reader_stopped_for_a_task_on_a_runtime_of_one_thread_reads_on() {
    a_reader_stopped_for_a_task_reads_on().await;
}

/// Calls made on another runtime than their connection's, from a task and from `block_on`,
/// are answered; that runtime gone, the connection serves calls from its own as before. (The
/// connection's reader is polled by such calls' waits only on its own runtime, where the timers
/// it makes live as long as it does.)
#[test]
fn calls_from_another_runtime_are_answered_and_outlive_it() {
    let home = tokio::runtime::Runtime::new().expect("a runtime");
    let client = home.block_on(async {
        LabClient::connect(start_tcp().await)
            .await
            .expect("connects")
    });
    let other = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let from_a_task = other.spawn({
        let client = client.clone();
        async move {
            let small = client.add(2, 3).await;
            let large = client.echo(vec![7; 300 * 1024]).await;
            (small, large)
        }
    });
    let (small, large) = other
        .block_on(within("calls from another runtime's task", from_a_task))
        .expect("joins");
    assert_eq!(small.expect("add"), 5);
    assert_eq!(large.expect("echo").len(), 300 * 1024);
    let from_block_on = other.block_on(within("a call from its block_on", client.add(4, 5)));
    assert_eq!(from_block_on.expect("add"), 9);
    drop(other);
    home.block_on(async {
        for i in 0..3 {
            let answer = within("a call from the connection's runtime", client.add(i, 1)).await;
            assert_eq!(answer.expect("add"), i + 1);
        }
        let large = within("a large echo", client.echo(vec![1; 300 * 1024])).await;
        assert_eq!(large.expect("echo").len(), 300 * 1024);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_calls_on_one_client_complete() {
    let client = LabClient::connect(start_tcp().await)
        .await
        .expect("connects");
    let calls = join_all((0..10_000).map(|i| {
        let client = client.clone();
        async move { (i, client.add(i, i).await) }
    }));
    for (i, result) in within("10,000 concurrent calls", calls).await {
        assert_eq!(result.expect("call"), 2 * i);
    }
}

#[tokio::test]
async fn large_values_cross_intact() {
    let client = LabClient::connect(start_tcp().await)
        .await
        .expect("connects");
    let payload: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let back = within("a 3 MiB echo", client.echo(payload.clone()))
        .await
        .expect("echo");
    assert_eq!(back, payload);
}

#[tokio::test]
async fn a_byte_vector_is_on_the_wire_as_serde_describes_it() {
    // `Vec<u8>` goes through the codec as one byte string, which must not change the bytes:
    // a varint length, then the bytes, as for any sequence of `u8`.
    let mut args = vec![0xc8, 0x01]; // 200 as a varint
    args.extend((0..200).map(|i| i as u8));
    echoed_as_sent("echo", &args).await;
}

#[tokio::test]
async fn a_byte_buf_crosses_intact_and_is_on_the_wire_as_serde_describes_it() {
    // A `ByteBuf` argument and result go from their own memory as one byte string: the bytes
    // are serde's, a varint length and the bytes.
    echoed_as_sent("echo_buf", b"\x03abc").await;

    let client = LabClient::connect(start_tcp().await)
        .await
        .expect("connects");
    for len in [0, 200, 3 * 1024 * 1024] {
        let bytes: Vec<u8> = (0..len).map(|i| (i % 249) as u8).collect();
        let back = within("a ByteBuf echo", client.echo_buf(bytes.clone().into()))
            .await
            .expect("echo_buf");
        assert_eq!(back.into_vec(), bytes, "{len} bytes");
    }
}

#[tokio::test]
async fn payloads_cross_intact() {
    let client = LabClient::connect(start_tcp().await)
        .await
        .expect("connects");
    let bytes: Vec<u8> = (0..2 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    let back = within(
        "a 2 MiB payload echo",
        client.echo_payload(bytes.clone().into()),
    )
    .await
    .expect("echo_payload");
    assert_eq!(&back[..], &bytes[..]);
    let empty = client.echo_payload(Vec::new().into()).await.expect("empty");
    assert!(empty.is_empty());
}

#[tokio::test]
async fn a_client_dropped_by_its_last_user_leaves_no_task_behind() {
    let addr = start_tcp().await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let client = LabClient::connect(addr).await.expect("connects");
    assert_eq!(client.add(1, 2).await.expect("add"), 3);
    assert!(
        metrics.num_alive_tasks() > before,
        "the connection runs tasks"
    );
    drop(client);
    // The client's reader, writer and watcher end, and so does the server's connection, which
    // sees the client close.
    within("the connection's tasks to end", async {
        while metrics.num_alive_tasks() > before {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
}
