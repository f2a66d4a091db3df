//! A million mutated frames thrown at a server, then a well-behaved client served as if nothing
//! had happened. The frames are made from valid ones (requests, cancellations, pings, credits,
//! stream frames) with bytes changed at random; most stay framed, so the server reads and
//! answers or refuses them, and the few that break the protocol cost only their connection.
//! The same, fewer, for a service of the types that cost a decoder most for their bytes
//! (values nested deep, and sequences of items of no bytes), and for one of odd types, as
//! arguments and as the items of uploads. And the rest of what a client sends a server:
//! hellos, requests' deadlines and metadata, and credit for streamed results.

use std::time::Duration;

use rpc_core::Server;
use rpc_tests::rng::Rng;
use rpc_tests::{
    LabClient, LabImpl, RawClient, frame, request, start_tcp_with, string, varint, within,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A call to mutate: the method, and valid arguments.
type Call<'a> = (&'a str, &'a [u8]);

/// Valid calls of Lab to mutate. None of them asks the server for more than a few bytes,
/// however its arguments are changed.
const CALLS: [Call<'static>; 7] = [
    ("add", &[0x04, 0x06]),
    ("div", &[0x08, 0x00]),
    ("echo", &[3, 1, 2, 3]),
    ("echo_payload", &[2, 9, 9]),
    ("whoami", &[]),
    ("tracked", &[]),
    ("incr", &[]),
];

/// One mutated frame with call id `id` (unique on its connection), appended to `out`:
/// - mostly a request with its method name or arguments changed (answered, or refused as
///   unknown or undecodable, on a connection that lives on);
/// - a cancellation, ping, credit or stream frame with its numbers changed;
/// - one in 20,000: any byte of a frame changed, which may break the protocol and cost the
///   connection.
fn mutate(rng: &mut Rng, calls: &[Call<'_>], id: u64, out: &mut Vec<u8>) {
    let (method, args) = calls[rng.below(calls.len())];
    let mut payload = request(id, method, args)[4..].to_vec();
    let args_at = payload.len() - args.len();
    match rng.below(100) {
        0..=59 => {
            // The arguments: bytes changed, taken out, added, or cut off.
            let mut args = payload.split_off(args_at);
            rng.mutate(&mut args);
            payload.extend(args);
        }
        60..=79 => {
            // A letter of the method's name: an unknown method, or rarely another one.
            let name_at = args_at - method.len() - 2;
            payload[name_at + rng.below(method.len())] = b'a' + rng.below(26) as u8;
        }
        _ => {
            let id = rng.next_u64() as u8 & 0x7f;
            payload = match rng.below(5) {
                0 => vec![0x03, id],
                1 => vec![0x04],
                2 => vec![0x08, id, rng.next_u64() as u8 & 0x7f],
                3 => vec![0x06, id, rng.next_u64() as u8],
                _ if rng.below(2) == 0 => vec![0x07, id, 0x00],
                _ => vec![0x07, id, 0x01, 0x08, 0x00],
            };
        }
    }
    if rng.below(20_000) == 0 {
        let at = rng.below(payload.len());
        payload[at] = rng.next_u64() as u8;
    }
    out.extend(frame(&payload));
}

const FRAMES: usize = 1_000_000;
const BATCH: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_mutated_frames_then_a_client_is_served_correctly() {
    let addr = start_tcp_with(
        Server::builder().handshake_timeout(Duration::from_secs(5)),
        LabImpl::default(),
    )
    .await;
    let hello = rpc_tests::hello("Lab", rpc_tests::VERSION);
    flood(addr, &hello, &CALLS, FRAMES).await;

    let client = within("a client", LabClient::connect(addr))
        .await
        .expect("connects");
    assert_eq!(client.add(20, 22).await.expect("add"), 42);
    assert_eq!(client.echo(vec![1, 2, 3]).await.expect("echo"), [1, 2, 3]);
    let mut numbers = client.count(100).await.expect("a stream");
    let mut got = Vec::new();
    while let Some(number) = numbers.next().await {
        got.push(number.expect("an item"));
    }
    assert_eq!(got, (0..100).collect::<Vec<u64>>());
    let upload = rpc_core::Streaming::iter(1..=10u64);
    assert_eq!(client.sum(upload).await.expect("sum"), 55);
}

/// Sends `frames` frames mutated from `calls` to the server at `addr`, `BATCH` at a time, each
/// connection greeted with `hello`, a new one whenever the server closes the last; checks
/// that the server worked through them.
async fn flood(addr: std::net::SocketAddr, hello: &[u8], calls: &[Call<'_>], frames: usize) {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut sent = 0;
    let mut connections = 0;
    let mut answered = 0;
    let mut batch = Vec::new();
    within("the flood", async {
        while sent < frames {
            let raw = RawClient::greet(addr, hello).await;
            connections += 1;
            let mut sent_here = 0;
            let (mut reader, mut writer) = raw.stream.into_split();
            // Whatever the server answers is read and dropped, so that it never stops reading
            // for want of a reader.
            let drain = tokio::spawn(async move {
                let mut sink = vec![0; 64 * 1024];
                let mut total = 0;
                while let Ok(n @ 1..) = reader.read(&mut sink).await {
                    total += n;
                }
                total
            });
            while sent < frames {
                batch.clear();
                for _ in 0..BATCH {
                    sent_here += 1;
                    mutate(&mut rng, calls, sent_here, &mut batch);
                }
                if writer.write_all(&batch).await.is_err() {
                    break; // the server closed this connection: a protocol error
                }
                sent += BATCH;
            }
            drop(writer);
            answered += drain.await.expect("joins");
        }
    })
    .await;
    assert!(sent >= frames);
    // Four in five frames are requests, each answered in a few bytes: the server worked through
    // the flood rather than dropping connections early.
    assert!(
        answered > frames,
        "{answered} bytes answered over {connections} connections"
    );
}

/// Valid calls of Nest to mutate: a chain of links, each a level deeper, and vectors of units,
/// whose count alone is on the wire (one written in five bytes, so that a changed byte can
/// claim billions).
const NEST_CALLS: [Call<'static>; 3] = [
    ("length", &[0x01, 0x01, 0x01, 0x00]),
    ("count", &[0x03]),
    ("count", &[0x80, 0x80, 0x80, 0x80, 0x00]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_frames_of_deep_and_empty_values_then_a_client_is_served_correctly() {
    use rpc_tests::nest::{self, Chain, NestClient};
    let addr = nest::serve().await;
    let hello = rpc_tests::hello("Nest", rpc_tests::VERSION);
    flood(addr, &hello, &NEST_CALLS, FRAMES / 10).await;

    let client = within("a client", NestClient::connect(addr))
        .await
        .expect("connects");
    assert_eq!(client.count(vec![(); 7]).await.expect("count"), 7);
    assert_eq!(client.length(Chain::of(9)).await.expect("length"), 9);
}

/// Mutated calls of a service of odd types (structs of no fields, options of options, 128-bit
/// integers, characters, floats, maps keyed by enums, sets of strings and of units, arrays of
/// arrays), each with rules a changed byte breaks: the server refuses what does not decode,
/// answers what does, never panics, and then serves a client correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_frames_of_odd_types_then_a_client_is_served_correctly() {
    flood_odds(rpc_tests::odd::serve().await).await;
}

/// The same through tower layers and an interceptor, where a call's arguments reach the
/// middleware before the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_frames_of_odd_types_through_middleware_then_a_client_is_served() {
    use rpc_tests::odd::{OddsImpl, OddsServer};

    let layers = tower::ServiceBuilder::new()
        .layer(tower::limit::ConcurrencyLimitLayer::new(4))
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(5)));
    let builder = Server::builder()
        .intercept(|call| match call.metadata().get_str("token") {
            Some("no") => Err(rpc_core::Status::permission_denied("not for you")),
            _ => Ok(()),
        })
        .layer(layers);
    flood_odds(rpc_tests::serve_on_loopback(builder, OddsServer::new(OddsImpl)).await).await;
}

/// Throws 100,000 mutated calls of `Odds` at the server at `addr`, then checks that nothing
/// panicked and that a client is served correctly.
async fn flood_odds(addr: std::net::SocketAddr) {
    use std::collections::{HashMap, HashSet};
    use std::sync::atomic::Ordering;

    use rpc_tests::odd::{Empty, Key, Odd, OddsClient, Unit};

    let before = rpc_tests::panics().load(Ordering::SeqCst);
    let odd = Odd::sample();
    let by_key = HashMap::from([
        (Key::Named { at: -5 }, Some(Some(-1i128 << 100))),
        (Key::Plain, Some(None)),
        (Key::Numbered(3), None),
    ]);
    let sets = vec![
        HashSet::from(["x".to_owned(), "yz".to_owned()]),
        HashSet::new(),
    ];
    let odd_bytes = postcard::to_stdvec(&odd).expect("encodes");
    let by_key_bytes = postcard::to_stdvec(&by_key).expect("encodes");
    let names_bytes = postcard::to_stdvec(&(&sets, Unit, Empty {})).expect("encodes");
    let calls: [Call<'_>; 4] = [
        ("items", &odd_bytes),
        ("echo", &odd_bytes),
        ("present", &by_key_bytes),
        ("names", &names_bytes),
    ];
    let hello = rpc_tests::hello("Odds", rpc_tests::VERSION);
    flood(addr, &hello, &calls, FRAMES / 10).await;

    let client = within("a client", OddsClient::connect(addr))
        .await
        .expect("connects");
    assert_eq!(client.items(odd.clone()).await.expect("items"), 36);
    assert_eq!(client.echo(odd.clone()).await.expect("echo"), odd);
    assert_eq!(client.present(by_key).await.expect("present"), 1);
    assert_eq!(client.names(sets, Unit, Empty {}).await.expect("names"), 2);
    let panics = rpc_tests::panics().load(Ordering::SeqCst);
    assert_eq!(panics, before, "a panic in the server");
}

/// Uploads of odd values, mutated: each a `tally` call whose three streamed items are
/// `Odd::sample`, one in two of them mutated (bytes changed, taken out, added or cut off), then
/// the stream's end.
/// The server answers every call, from the items it could read, on the one connection, and
/// then serves a client correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_uploads_of_odd_values_are_each_answered_then_a_client_is_served() {
    use rpc_tests::odd::{self, Odd, OddsClient};
    use rpc_tests::read_frame_from;

    const UPLOADS: u64 = 20_000;
    const ITEMS: usize = 3;
    let item = postcard::to_stdvec(&Odd::sample()).expect("encodes");
    let addr = odd::serve().await;
    let raw = RawClient::greet(addr, &rpc_tests::hello("Odds", rpc_tests::VERSION)).await;
    let (mut reader, mut writer) = raw.stream.into_split();
    // The answers are read as they come, so that the server never waits for a reader.
    let answers = tokio::spawn(async move {
        let mut answered = 0;
        while answered < UPLOADS {
            let frame = read_frame_from(&mut reader).await.expect("an answer");
            assert_eq!(frame[0], 0x02, "a response, not {frame:?}");
            answered += 1;
        }
        answered
    });
    let mut rng = Rng(0x0dd5_5eed_0f0d);
    let mut batch = Vec::new();
    for id in 1..=UPLOADS {
        batch.extend(request(id, "tally", &[]));
        for _ in 0..ITEMS {
            let mut payload = vec![0x06];
            payload.extend(varint(id));
            // Half the items unchanged, so that calls read on past a good item or two.
            let mut body = item.clone();
            if rng.below(2) == 0 {
                rng.mutate(&mut body);
            }
            payload.extend(body);
            batch.extend(frame(&payload));
        }
        let mut end = vec![0x07];
        end.extend(varint(id));
        end.push(0x00);
        batch.extend(frame(&end));
        if id % 500 == 0 {
            within("an upload", writer.write_all(&batch))
                .await
                .expect("the server reads on");
            batch.clear();
        }
    }
    let answered = within("every answer", answers).await.expect("joins");
    assert_eq!(answered, UPLOADS);

    let client = within("a client", OddsClient::connect(addr))
        .await
        .expect("connects");
    let uploads = rpc_core::Streaming::iter([Odd::sample(), Odd::sample()]);
    assert_eq!(client.tally(uploads).await.expect("tally"), 72);
}

/// Hellos mutated (bytes changed, taken out, added, or cut off), each on a connection of its
/// own: the server answers or refuses each and closes the connection once the client has
/// closed its side, panics nothing, and then serves a client correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_hellos_are_each_answered_or_refused_then_a_client_is_served() {
    use std::sync::atomic::Ordering;

    const HELLOS: usize = 2_000;
    let before = rpc_tests::panics().load(Ordering::SeqCst);
    let addr = start_tcp_with(
        Server::builder().handshake_timeout(Duration::from_secs(5)),
        LabImpl::default(),
    )
    .await;
    let hello = rpc_tests::hello("Lab", rpc_tests::VERSION)[4..].to_vec();
    let mut rng = Rng(0x4e11_0f0d_5eed_0001);
    let mut answered = 0;
    within("the hellos", async {
        for _ in 0..HELLOS {
            let mut payload = hello.clone();
            rng.mutate(&mut payload);
            let mut raw = RawClient::connect(addr).await;
            raw.stream
                .write_all(&frame(&payload))
                .await
                .expect("the server reads a hello");
            raw.stream.shutdown().await.expect("shuts down");
            let mut answer = Vec::new();
            // The server's answer, if any, then its end; a reset ends it too.
            let _ = raw.stream.read_to_end(&mut answer).await;
            answered += usize::from(answer.get(4) == Some(&0));
        }
    })
    .await;
    // A hello changed only in its limits or cut after its service is still a hello the
    // server answers: some are, as the mutations leave many such.
    assert!(answered > 0, "no mutated hello was answered");
    assert!(answered < HELLOS, "every mutated hello was answered");
    panicked_nothing_and_serves_a_client(addr, before).await;
}

/// Metadata on the wire (docs/wire.md, section 4): a W3C trace context, a text value and a
/// binary one.
fn metadata() -> Vec<u8> {
    let mut metadata = varint(3);
    for (key, value) in [
        (
            "traceparent",
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..],
        ),
        ("token", b"s3cr3t"),
        ("bin", &[0, 1, 0xfe, 0xff]),
    ] {
        metadata.extend(string(key));
        metadata.extend(varint(value.len() as u64));
        metadata.extend_from_slice(value);
    }
    metadata
}

/// Requests whose deadline and metadata come mutated, each on a connection of its own and
/// followed by a valid call: a head that still decodes gets its call answered or refused, and
/// the valid call after it answered, on a connection that lives on; one that does not is a
/// protocol error that closes its connection (docs/wire.md, section 4). Nothing panics, and a
/// client is then served correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_metadata_fails_its_call_or_its_connection_and_nothing_panics() {
    use std::sync::atomic::Ordering;

    use rpc_tests::read_frame_from;

    const REQUESTS: usize = 3_000;
    let before = rpc_tests::panics().load(Ordering::SeqCst);
    let addr = start_tcp_with(Server::builder(), LabImpl::default()).await;
    let hello = rpc_tests::hello("Lab", rpc_tests::VERSION);
    let valid = request(2, "add", &[0x04, 0x06]);
    let mut rng = Rng(0x3e7a_da7a_0f0d_0001);
    let (mut lived, mut closed) = (0, 0);
    within("the requests", async {
        for _ in 0..REQUESTS {
            let mut payload = request(1, "add", &[])[4..].to_vec();
            payload.truncate(payload.len() - 2); // before the deadline's and metadata's zeros
            let mut rest = varint(rng.below(2) as u64 * 1000);
            rest.extend(metadata());
            rest.extend_from_slice(&[0x04, 0x06]);
            rng.mutate(&mut rest);
            payload.extend(rest);
            let mut raw = RawClient::greet(addr, &hello).await;
            raw.stream
                .write_all(&[frame(&payload), valid.clone()].concat())
                .await
                .expect("the server reads them");
            raw.stream.shutdown().await.expect("shuts down");
            let mut answered_valid = false;
            while let Some(answer) = read_frame_from(&mut raw.stream).await {
                answered_valid |= answer.starts_with(&[0x02, 0x02, 0x00]);
            }
            if answered_valid {
                lived += 1;
            } else {
                closed += 1;
            }
        }
    })
    .await;
    assert!(lived > 0 && closed > 0, "{lived} lived, {closed} closed");
    panicked_nothing_and_serves_a_client(addr, before).await;
}

/// Checks that the process has panicked nothing since the panics counted were `before`, and
/// that the Lab server at `addr` serves a client correctly.
async fn panicked_nothing_and_serves_a_client(addr: std::net::SocketAddr, before: usize) {
    use std::sync::atomic::Ordering;

    let panics = rpc_tests::panics().load(Ordering::SeqCst);
    assert_eq!(panics, before, "a panic in the server");
    let client = within("a client", LabClient::connect(addr))
        .await
        .expect("connects");
    assert_eq!(client.add(20, 22).await.expect("add"), 42);
}

/// Streamed results under credit a client grants at random: on connections of their own, each
/// with a window of five items, five `count` streams of ten items are opened; as items come,
/// the client grants their cost back, now and then grants a byte to an id that streams nothing
/// (ignored) and cancels some streams; on one connection in four it also grants up to
/// 2^64 - 1 bytes at once, past what the items sent cost or past a credit's width, which
/// closes the connection (docs/wire.md, section 7). Nothing overflows or panics, every
/// connection ends once its client has closed its side, and a client is then served correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_credit_ends_its_streams_or_its_connection_and_nothing_panics() {
    use std::sync::atomic::Ordering;

    use rpc_tests::read_frame_from;

    const CONNECTIONS: usize = 300;
    const READS: usize = 100;
    let before = rpc_tests::panics().load(Ordering::SeqCst);
    let addr = start_tcp_with(Server::builder(), LabImpl::default()).await;
    let window = 5 * rpc_tests::item_cost(3);
    let hello = rpc_tests::hello_with_window("Lab", rpc_tests::VERSION, window as u32);
    let mut rng = Rng(0xc2ed_17f0_0f0d_0001);
    let (mut ended, mut cut_off) = (0, 0);
    within("every connection", async {
        for _ in 0..CONNECTIONS {
            let mut raw = RawClient::greet(addr, &hello).await;
            let requests: Vec<u8> = (1..=5).flat_map(|id| request(id, "count", &[10])).collect();
            raw.stream
                .write_all(&requests)
                .await
                .expect("the server reads");
            let lies = rng.below(4) == 0;
            let mut closed = false;
            // Until every stream has ended or been cancelled (after which the server sends
            // nothing more of it): a stream granted each item's cost back never starves, so
            // frames keep coming until then.
            let mut open: std::collections::BTreeSet<u8> = (1..=5).collect();
            for _ in 0..READS {
                if open.is_empty() {
                    break;
                }
                let Some(payload) = read_frame_from(&mut raw.stream).await else {
                    closed = true;
                    break;
                };
                if payload[0] == 0x07 {
                    ended += 1;
                    open.remove(&payload[1]);
                }
                if payload[0] != 0x06 || !open.contains(&payload[1]) {
                    continue;
                }
                // An item of stream `id`: its cost granted back, or now and then the stream
                // cancelled; a lying client grants anything besides, now and then.
                let id = varint(u64::from(payload[1]));
                let cost = rpc_tests::item_cost(payload.len());
                let mut answer = if rng.below(10) == 0 {
                    open.remove(&payload[1]);
                    frame(&[&[0x03][..], &id].concat())
                } else {
                    frame(&[&[0x08][..], &id, &varint(cost)].concat())
                };
                if lies && rng.below(10) == 0 {
                    // Besides the cost: within what the items sent cost, still honest; past it,
                    // or past a credit's width, a protocol error.
                    let bits = [12, 32, 63, 64][rng.below(4)];
                    let lie = varint(rng.next_u64() >> (64 - bits));
                    answer.extend(frame(&[&[0x08][..], &id, &lie].concat()));
                }
                if rng.below(10) == 0 {
                    // A grant to an id that streams nothing: ignored (docs/wire.md, section 7).
                    let other = varint(6 + rng.below(100) as u64);
                    answer.extend(frame(&[&[0x08][..], &other, &varint(1)].concat()));
                }
                if raw.stream.write_all(&answer).await.is_err() {
                    closed = true;
                    break;
                }
            }
            cut_off += usize::from(closed);
            raw.stream.shutdown().await.ok();
            let mut rest = Vec::new();
            let _ = raw.stream.read_to_end(&mut rest).await;
        }
    })
    .await;
    // Streams ran to their end, and lying grants cut connections off.
    assert!(
        ended > 0 && cut_off > 0,
        "{ended} streams ended, {cut_off} cut off"
    );
    panicked_nothing_and_serves_a_client(addr, before).await;
}
