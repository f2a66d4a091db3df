//! A client facing a broken or hostile server, played by hand over real sockets: whatever the
//! server sends, the calls it touches fail with an error that says what happened, none hangs,
//! and a server that breaks the protocol has its connection closed by the client. (What such a
//! server can make the client hold in memory is in `memory.rs`.)

use rpc_core::{RpcError, Streaming};
use rpc_tests::{
    LabClient, RawClient, STREAM_WINDOW, frame, lab_hello, lab_hello_with_window, lab_methods,
    loopback_listener, service_hello, string, varint, within,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// Accepts the client on `listener` as a server of `Lab` with no limits, and reads its first
/// call's request: the connection and the request's payload.
async fn first_call(listener: &TcpListener) -> (RawClient, Vec<u8>) {
    let (mut raw, _) = RawClient::accept(listener).await;
    raw.send(&lab_hello(lab_methods(), 0, 0)).await;
    let request = raw.read_frame().await.expect("the request");
    assert_eq!(request[0], 0x01, "a request");
    (raw, request)
}

/// Reads what the client still sends until it closes the connection: the server broke the
/// protocol, and the client is to hang up on it. Fails the test if the client keeps it open.
async fn client_hangs_up(mut raw: RawClient) {
    let mut rest = Vec::new();
    // A reset counts as hanging up too.
    let _ = within(
        "the client to close the connection",
        raw.stream.read_to_end(&mut rest),
    )
    .await;
}

/// A Response frame to call `id` (below 128) carrying `body` as its `Ok` value.
fn ok_response(id: u8, body: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x02, id, 0x00];
    payload.extend_from_slice(body);
    frame(&payload)
}

/// Fails the test unless `error` is a broken protocol, saying `says`, as the cause of an
/// interrupted call.
fn broke_the_protocol(error: RpcError, says: &str) {
    let cause = match error {
        RpcError::Interrupted { cause, .. } => *cause,
        other => other,
    };
    match cause {
        RpcError::Protocol(why) => assert_eq!(why, says),
        other => panic!("expected a protocol error saying {says:?}, got {other:?}"),
    }
}

/// A server announcing a frame over the client's limit (16 MiB by default) is cut off at the
/// length, before any of its payload is read, and the call learns why.
#[tokio::test]
async fn a_frame_over_the_clients_limit_fails_the_call_at_its_length() {
    let (listener, addr) = loopback_listener().await;
    let server = tokio::spawn(async move {
        let (mut raw, _) = first_call(&listener).await;
        // A length of 4 GiB, and a few bytes of what it claims.
        raw.send(&[0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00]).await;
        client_hangs_up(raw).await;
    });
    let client = LabClient::connect(addr).await.expect("connects");
    let error = within("the call", client.add(2, 3))
        .await
        .expect_err("no answer came");
    let cause = match error {
        RpcError::Interrupted { cause, .. } => *cause,
        other => other,
    };
    match cause {
        RpcError::FrameTooLarge { size, limit } => {
            assert_eq!(size, u64::from(u32::MAX));
            assert_eq!(limit, 16 * 1024 * 1024);
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    within("the server", server).await.expect("joins");
}

/// A frame of length 0 has no head: a protocol error.
#[tokio::test]
async fn an_empty_frame_from_the_server_is_a_protocol_error() {
    let (listener, addr) = loopback_listener().await;
    let server = tokio::spawn(async move {
        let (mut raw, _) = first_call(&listener).await;
        raw.send(&frame(&[])).await;
        client_hangs_up(raw).await;
    });
    let client = LabClient::connect(addr).await.expect("connects");
    let error = within("the call", client.add(2, 3))
        .await
        .expect_err("broken");
    broke_the_protocol(error, "the server sent an empty frame, which has no head");
    within("the server", server).await.expect("joins");
}

/// A kind byte the protocol does not have, and kinds only a client sends, break the protocol
/// when a server sends them.
#[tokio::test]
async fn frames_a_server_may_not_send_are_protocol_errors() {
    let mut request = vec![0x01, 0x00];
    request.extend(string("add"));
    request.extend([0x00, 0x00, 0x04, 0x06]);
    let cases = [
        (
            vec![0x7f, 0x00],
            "the server sent a frame of kind 0x7f, which the protocol does not have",
        ),
        (
            request,
            "the server sent a request frame, which only clients send",
        ),
        (
            vec![0x03, 0x00],
            "the server sent a cancel frame, which only clients send",
        ),
        (
            lab_hello(lab_methods(), 0, 0)[4..].to_vec(),
            "the server sent a second hello frame",
        ),
    ];
    for (payload, says) in cases {
        let (listener, addr) = loopback_listener().await;
        let server = tokio::spawn(async move {
            let (mut raw, _) = first_call(&listener).await;
            raw.send(&frame(&payload)).await;
            client_hangs_up(raw).await;
        });
        let client = LabClient::connect(addr).await.expect("connects");
        let error = within(says, client.add(2, 3))
            .await
            .expect_err("no answer came");
        broke_the_protocol(error, says);
        within("the server", server).await.expect("joins");
    }
}

/// A Response to an id the client never used (or no longer waits for) is passed over; the call
/// it does wait for is answered on the same connection.
#[tokio::test]
async fn a_response_to_an_id_never_asked_is_ignored() {
    let (listener, addr) = loopback_listener().await;
    let server = tokio::spawn(async move {
        let (mut raw, request) = first_call(&listener).await;
        assert_eq!(request[1], 0x00, "call 0");
        // 99 was never asked; then call 0's answer, 5 as a zigzag varint.
        raw.send(&ok_response(99, &[0x0a])).await;
        raw.send(&ok_response(0, &[0x0a])).await;
        raw
    });
    let client = LabClient::connect(addr).await.expect("connects");
    let sum = within("the call", client.add(2, 3))
        .await
        .expect("answered");
    assert_eq!(sum, 5);
    drop(within("the server", server).await.expect("joins"));
}

/// A result that does not decode into the method's return type fails that call alone, naming
/// the method; the connection goes on carrying the next call.
#[tokio::test]
async fn a_result_that_does_not_decode_fails_only_that_call() {
    let (listener, addr) = loopback_listener().await;
    let server = tokio::spawn(async move {
        let (mut raw, _) = first_call(&listener).await;
        // An `i64` whose varint never ends, then one with bytes left over after it.
        raw.send(&ok_response(0, &[0x80])).await;
        let second = raw.read_frame().await.expect("the second request");
        assert_eq!(second[..2], [0x01, 0x01], "call 1");
        raw.send(&ok_response(1, &[0x0a, 0x00])).await;
        let third = raw.read_frame().await.expect("the third request");
        assert_eq!(third[..2], [0x01, 0x02], "call 2, on the same connection");
        raw.send(&ok_response(2, &[0x0a])).await;
        raw
    });
    let client = LabClient::connect(addr).await.expect("connects");
    for call in ["a truncated result", "a result with bytes left over"] {
        match within(call, client.add(2, 3)).await {
            Err(RpcError::Decode { method, .. }) => assert_eq!(method, "add", "{call}"),
            other => panic!("expected a decoding error for {call}, got {other:?}"),
        }
    }
    let sum = within("the third call", client.add(2, 3))
        .await
        .expect("answered");
    assert_eq!(sum, 5);
    drop(within("the server", server).await.expect("joins"));
}

/// An error code the client does not know is a generic server error for that call, with the
/// server's message.
#[tokio::test]
async fn an_unknown_error_code_is_a_server_error() {
    let (listener, addr) = loopback_listener().await;
    let server = tokio::spawn(async move {
        let (mut raw, _) = first_call(&listener).await;
        let mut payload = vec![0x02, 0x00, 0x01];
        payload.extend(varint(999));
        payload.extend(string("a code from the future"));
        raw.send(&frame(&payload)).await;
        raw
    });
    let client = LabClient::connect(addr).await.expect("connects");
    match within("the call", client.add(2, 3)).await {
        Err(RpcError::Server { method, message }) => {
            assert_eq!(method, "add");
            assert_eq!(message, "a code from the future");
        }
        other => panic!("expected a server error, got {other:?}"),
    }
    drop(within("the server", server).await.expect("joins"));
}

/// A server streaming a result past the credit the client gave it breaks the protocol: the
/// client hangs up rather than buffer without end, and the stream, read afterwards, gives the
/// items that came within the credit, then an error saying why.
#[tokio::test]
async fn stream_items_past_the_clients_credit_close_the_connection() {
    // The client's window of 1 MiB holds 26,887 items of 39 bytes' credit, and one more may
    // go while credit is above zero: this is 113 items past it.
    const SENT: usize = 27_000;
    let (listener, addr) = loopback_listener().await;
    let server = tokio::spawn(async move {
        let (mut raw, request) = first_call(&listener).await;
        let id = request[1];
        raw.send(&ok_response(id, &[])).await;
        let items: Vec<u8> = (0..SENT).flat_map(|_| frame(&[0x06, id, 0x01])).collect();
        // The client may hang up before taking all of it.
        let _ = tokio::io::AsyncWriteExt::write_all(&mut raw.stream, &items).await;
        client_hangs_up(raw).await;
    });
    let client = LabClient::connect(addr).await.expect("connects");
    let mut stream: Streaming<u64> = within("the call", client.count(3))
        .await
        .expect("the stream starts");
    // Nothing is read, and so no credit granted, until the client has hung up.
    within("the server", server).await.expect("joins");
    let (taken, error) = within("the stream to fail", async {
        let mut taken = 0;
        loop {
            match futures_util::StreamExt::next(&mut stream).await {
                Some(Ok(n)) => {
                    assert_eq!(n, 1);
                    taken += 1;
                }
                Some(Err(error)) => break (taken, error),
                None => panic!("the stream ended without an error after {taken} items"),
            }
        }
    })
    .await;
    assert_eq!(taken, 26_887, "the items within the credit");
    broke_the_protocol(
        error,
        "the peer sent an item of stream 0 without credit for it",
    );
}

/// A server granting an upload more credit than the items it took cost breaks the protocol:
/// the client hangs up rather than send past the window it was given.
#[tokio::test]
async fn a_grant_past_what_the_items_cost_closes_the_connection() {
    // Room for 32 items of one byte, each costing 39 bytes of credit.
    const WINDOW: u32 = 32 * 39;
    let (listener, addr) = loopback_listener().await;
    let server = tokio::spawn(async move {
        let (mut raw, _) = RawClient::accept(&listener).await;
        raw.send(&lab_hello_with_window(lab_methods(), 0, 0, WINDOW))
            .await;
        let request = raw.read_frame().await.expect("the request");
        let id = request[1];
        for n in 0..32 {
            let item = raw.read_frame().await.expect("an item");
            assert_eq!(item, [0x06, id, n], "item {n}");
        }
        let mut credit = vec![0x08, id];
        credit.extend(varint(u64::from(WINDOW) + 39));
        raw.send(&frame(&credit)).await;
        client_hangs_up(raw).await;
    });
    let client = LabClient::connect(addr).await.expect("connects");
    let error = within("the upload", client.sum(Streaming::iter(0..64u64)))
        .await
        .expect_err("no answer came");
    broke_the_protocol(
        error,
        "the peer granted stream 0 more credit than its items cost",
    );
    within("the server", server).await.expect("joins");
}

/// A server of `Nest` that answers the first call with `first` and the next with `second`,
/// each the bytes of a result: its task, which returns the connection, and its address.
async fn nest_answering(
    first: Vec<u8>,
    second: Vec<u8>,
) -> (tokio::task::JoinHandle<RawClient>, std::net::SocketAddr) {
    use rpc_core::ServiceClient;
    let (listener, addr) = loopback_listener().await;
    let server = tokio::spawn(async move {
        let (mut raw, _) = RawClient::accept(&listener).await;
        let methods = &rpc_tests::nest::NestClient::INFO
            .describe()
            .expect("described")
            .methods;
        raw.send(&service_hello("Nest", methods, 0, 0, STREAM_WINDOW))
            .await;
        for result in [first, second] {
            let request = raw.read_frame().await.expect("a request");
            raw.send(&ok_response(request[1], &result)).await;
        }
        raw
    });
    (server, addr)
}

/// A result nested deeper than a decoder goes (docs/wire.md, section 3) fails its call rather
/// than overflow the client's stack, and the connection goes on.
#[tokio::test]
async fn a_result_nested_too_deep_fails_only_that_call() {
    use rpc_tests::nest::{self, NestClient};
    let (server, addr) = nest_answering(nest::chain_bytes(1_000_000), nest::chain_bytes(2)).await;
    let client = NestClient::connect(addr).await.expect("connects");
    match within("the call", client.make(5)).await {
        Err(RpcError::Decode { method, reason }) => {
            assert_eq!(method, "make");
            assert_eq!(reason, "the value nests deeper than 256 levels");
        }
        other => panic!("expected a decoding error, got {other:?}"),
    }
    let chain = within("the next call", client.make(2))
        .await
        .expect("answered");
    assert_eq!(chain.links(), 2);
    drop(within("the server", server).await.expect("joins"));
}

/// A result that claims more items of no bytes than its bytes allow (docs/wire.md, section 3)
/// fails its call rather than keep the client's thread counting them, and the connection goes
/// on.
#[tokio::test]
async fn a_result_claiming_countless_empty_items_fails_only_that_call() {
    use rpc_tests::nest::NestClient;
    let (server, addr) = nest_answering(rpc_tests::varint(u64::MAX), rpc_tests::varint(3)).await;
    let client = NestClient::connect(addr).await.expect("connects");
    match within("the call", client.units(5)).await {
        Err(RpcError::Decode { method, reason }) => {
            assert_eq!(method, "units");
            assert!(reason.ends_with("too many items of no bytes"), "{reason}");
        }
        other => panic!("expected a decoding error, got {other:?}"),
    }
    let units = within("the next call", client.units(3))
        .await
        .expect("answered");
    assert_eq!(units.len(), 3);
    drop(within("the server", server).await.expect("joins"));
}

/// A server that closes in the middle of a frame fails the call; nothing waits for the rest.
#[tokio::test]
async fn a_server_that_closes_mid_frame_fails_the_call() {
    let (listener, addr) = loopback_listener().await;
    let server = tokio::spawn(async move {
        let (mut raw, _) = first_call(&listener).await;
        // A frame of 100 bytes, of which 3 come.
        raw.send(&[0x00, 0x00, 0x00, 0x64, 0x02, 0x00, 0x00]).await;
    });
    let client = LabClient::connect(addr).await.expect("connects");
    let error = within("the call", client.add(2, 3))
        .await
        .expect_err("cut off");
    broke_the_protocol(error, "the stream ended in the middle of a frame");
    within("the server", server).await.expect("joins");
}

/// A server that ends a streamed result with code 6 says the call's deadline passed: the
/// client reports the deadline it gave the call, as for any call past its deadline, not a
/// failed stream.
#[tokio::test]
async fn a_stream_the_server_ends_for_the_deadline_is_a_deadline_exceeded() {
    let (listener, addr) = loopback_listener().await;
    let server = tokio::spawn(async move {
        let (mut raw, request) = first_call(&listener).await;
        let id = request[1];
        raw.send(&ok_response(id, &[])).await;
        raw.send(&frame(&[0x06, id, 0x01])).await;
        let mut end = vec![0x07, id, 0x01, 0x06];
        end.extend(string("the deadline passed"));
        raw.send(&frame(&end)).await;
        raw
    });
    let deadline = std::time::Duration::from_secs(600);
    let connecting = LabClient::builder().deadline(deadline).connect(addr);
    let client = within("connecting", connecting).await.expect("connects");
    let mut stream: Streaming<u64> = within("the call", client.count(3))
        .await
        .expect("the stream starts");
    let first = within("an item", stream.next()).await;
    assert_eq!(first.map(Result::ok), Some(Some(1)));
    match within("the end", stream.next()).await {
        Some(Err(RpcError::DeadlineExceeded {
            method,
            deadline: given,
        })) => {
            assert_eq!(method, "count");
            assert_eq!(given, deadline);
        }
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    let _raw = within("the server", server).await.expect("joins");
}
