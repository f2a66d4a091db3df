//! A server that answers with mutated frames, and a client that must take whatever it sends:
//! every call ends, with its result or an error, within its deadline; nothing in the client
//! panics; and the process's clients then call a well-behaved server correctly. The answers are
//! made from valid ones (results of `add`, `echo` and `zeros`, small and large enough to be
//! read into memory of their own; `count`'s stream of items and its end) with bytes changed,
//! cut or added at random, answers lost or sent twice, and frames the client did not ask for
//! (pings, GoAways, credits, stream frames and results of other ids) sent between them. The
//! same for a service of odd types (`rpc_tests::odd`), whose results a changed byte makes
//! invalid in more ways: a `bool` of `2`, a `char` past `0x10FFFF`, text that is not UTF-8, a
//! variant that does not exist. And the other things a server sends a client: its hello, its
//! description of itself (which a client refused for a changed fingerprint compares with its
//! own schema), and its calls back to a client that serves.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::TryStreamExt;
use rpc_core::{RpcError, ServiceClient};
use rpc_tests::odd::{self, Empty, Key, Odd, OddsClient, Unit};
use rpc_tests::rng::Rng;
use rpc_tests::{
    LabClient, RawClient, STREAM_WINDOW, frame, lab_hello, lab_methods, loopback_listener,
    service_hello, start_tcp, varint, within,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// The length of `zeros`' large answer: past the 64 KiB from which a byte string that is a
/// call's whole result is read into memory of its own.
const LARGE: u64 = 100_000;

/// A varint at the start of `bytes`, and the bytes after it.
fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (at, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * at);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[at + 1..]));
        }
    }
    None
}

/// The id and method of a Request's payload; `None` for any other frame.
fn id_and_method(payload: &[u8]) -> Option<(u64, &str)> {
    let (&kind, rest) = payload.split_first()?;
    if kind != 0x01 {
        return None;
    }
    let (id, rest) = read_varint(rest)?;
    let (len, rest) = read_varint(rest)?;
    let method = std::str::from_utf8(rest.get(..len as usize)?).ok()?;
    Some((id, method))
}

/// The payload of a frame of `kind` for call `id`, before its body.
fn head(kind: u8, id: u64) -> Vec<u8> {
    let mut payload = vec![kind];
    payload.extend(varint(id));
    payload
}

/// The payload of call `id`'s successful result, `body`.
fn ok(id: u64, body: &[u8]) -> Vec<u8> {
    let mut payload = head(0x02, id);
    payload.push(0x00);
    payload.extend_from_slice(body);
    payload
}

/// The payloads of call `id`'s streamed result: its response, a StreamItem for each of
/// `items` (each an item's encoding), and the stream's end.
fn streamed(id: u64, items: impl Iterator<Item = Vec<u8>>) -> Vec<Vec<u8>> {
    let mut payloads = vec![ok(id, &[])];
    payloads.extend(items.map(|item| [head(0x06, id), item].concat()));
    let mut end = head(0x07, id);
    end.push(0x00);
    payloads.push(end);
    payloads
}

/// The payloads of a valid answer to call `id` of Lab's `method`, as the client made it below.
fn lab_answer(id: u64, method: &str) -> Vec<Vec<u8>> {
    match method {
        "add" => vec![ok(id, &[0x0a])],
        "echo" => vec![ok(id, &[3, 1, 2, 3])],
        "zeros" => {
            let len = if id.is_multiple_of(2) { 10 } else { LARGE };
            let mut body = varint(len);
            body.resize(body.len() + len as usize, 0);
            vec![ok(id, &body)]
        }
        "count" => streamed(id, (0..5).map(|item| vec![item])),
        other => panic!("the client makes no call of `{other}`"),
    }
}

/// A frame the client did not ask for: a ping, a GoAway (any reason, rarely), or a credit,
/// stream frame or result for an id that may be any call's or none.
fn unasked(rng: &mut Rng) -> Vec<u8> {
    if rng.below(50) == 0 {
        let mut go_away = vec![0x05];
        go_away.extend(varint(rng.below(6) as u64));
        go_away.extend(rpc_tests::string("going"));
        return go_away;
    }
    let id = varint(rng.below(300) as u64);
    let mut payload = match rng.below(5) {
        0 => return vec![0x04],
        1 => vec![0x08],
        2 => vec![0x06],
        3 => vec![0x07],
        _ => vec![0x02],
    };
    payload.extend(id);
    payload.extend((0..rng.below(4)).map(|_| rng.next_u64() as u8));
    payload
}

/// `payload`, framed, after what `rng` does to it: mostly nothing; else bytes changed, taken
/// out, added or cut off ([`Rng::mutate`]); rarely a length prefix that claims less than follows, so that the frames after it
/// are read out of step, which sets `out_of_step`.
fn mutated(rng: &mut Rng, mut payload: Vec<u8>, out_of_step: &mut bool) -> Vec<u8> {
    if rng.below(100) >= 85 {
        rng.mutate(&mut payload);
    }
    let mut framed = frame(&payload);
    if rng.below(200) == 0 {
        let length = payload.len().saturating_sub(1 + rng.below(64)) as u32;
        framed[..4].copy_from_slice(&length.to_be_bytes());
        *out_of_step = true;
    }
    framed
}

/// The payloads of a valid answer to a call, by its id and method.
type Answers = Arc<dyn Fn(u64, &str) -> Vec<Vec<u8>> + Send + Sync>;

/// Serves every connection to `listener` with `hello`, then with mutated `answers`, each
/// connection from its own seed, until the test ends. A connection whose frames were sent out
/// of step is closed once they are written: read out of step, a length prefix may claim more
/// bytes than ever follow, and then the connection would stall, its calls failing at their
/// deadlines, until keep-alive gave it up (`tests/keepalive.rs` tests that), which a few such
/// connections would make longer than the test.
async fn serve_mutated(listener: TcpListener, hello: Vec<u8>, answers: Answers) {
    let mut seed = 0x0bad_5eed_0000_0001u64;
    loop {
        let (mut raw, _) = RawClient::accept(&listener).await;
        seed += 1;
        let mut rng = Rng(seed);
        let (hello, answers) = (hello.clone(), Arc::clone(&answers));
        tokio::spawn(async move {
            // Written past `RawClient::send`, which fails the test when the client has gone.
            if raw.stream.write_all(&hello).await.is_err() {
                return;
            }
            while let Some(request) = raw.read_frame().await {
                let Some((id, method)) = id_and_method(&request) else {
                    continue; // a cancel, ping or credit of the client's
                };
                let mut out = Vec::new();
                let mut out_of_step = false;
                if rng.below(10) == 0 {
                    let unasked = unasked(&mut rng);
                    out.extend(mutated(&mut rng, unasked, &mut out_of_step));
                }
                let copies = match rng.below(50) {
                    0 => 0,
                    1 => 2,
                    _ => 1,
                };
                for _ in 0..copies {
                    for payload in answers(id, method) {
                        out.extend(mutated(&mut rng, payload, &mut out_of_step));
                    }
                }
                if raw.stream.write_all(&out).await.is_err() || out_of_step {
                    return;
                }
            }
        });
    }
}

/// How the calls ended.
#[derive(Debug, Default)]
struct Outcomes {
    /// With the right result.
    right: AtomicUsize,
    /// With a result, not the one asked for: a lie that decodes.
    wrong: AtomicUsize,
    /// With an error.
    failed: AtomicUsize,
}

impl Outcomes {
    fn count<T: PartialEq>(&self, result: Result<T, RpcError>, right: T) {
        let counter = match result {
            Ok(value) if value == right => &self.right,
            Ok(_) => &self.wrong,
            Err(_) => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One call of Lab's, of the `turn`th kind.
async fn call_lab(client: LabClient, turn: usize, outcomes: Arc<Outcomes>) {
    match turn % 5 {
        0 => outcomes.count(client.add(2, 3).await, 5),
        1 => outcomes.count(client.echo(vec![1, 2, 3]).await, vec![1, 2, 3]),
        2 | 3 => {
            // The server answers even ids with 10 bytes and odd ones with LARGE: either is right.
            let result = client.zeros(LARGE).await.map(|zeros| {
                let len = zeros.len() as u64;
                (len == 10 || len == LARGE) && zeros.iter().all(|&byte| byte == 0)
            });
            outcomes.count(result, true);
        }
        _ => {
            let items = async { client.count(5).await?.try_collect::<Vec<_>>().await };
            outcomes.count(items.await, vec![0, 1, 2, 3, 4]);
        }
    }
}

/// Callers at once, and calls each.
const CALLERS: usize = 8;
const CALLS: usize = 1000;

/// Makes [`CALLERS`] callers of `client`'s each make [`CALLS`] calls, the `turn`th by
/// `call(client, turn, outcomes)`, and checks that every call ended, nothing panicked, most
/// answers were taken as they should be and some mutation failed a call.
async fn call_a_hostile_server<C, Call, Made>(client: C, call: Call)
where
    C: Clone + Send + 'static,
    Call: Fn(C, usize, Arc<Outcomes>) -> Made + Copy + Send + 'static,
    Made: Future<Output = ()> + Send,
{
    let panics = rpc_tests::panics();
    let outcomes = Arc::new(Outcomes::default());
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (client, outcomes) = (client.clone(), Arc::clone(&outcomes));
            tokio::spawn(async move {
                for turn in 0..CALLS {
                    call(client.clone(), caller + turn, Arc::clone(&outcomes)).await;
                }
            })
        })
        .collect();
    within("every call to end", async {
        for caller in callers {
            caller.await.expect("a caller");
        }
    })
    .await;

    let (right, wrong, failed) = (
        outcomes.right.load(Ordering::Relaxed),
        outcomes.wrong.load(Ordering::Relaxed),
        outcomes.failed.load(Ordering::Relaxed),
    );
    assert_eq!(right + wrong + failed, CALLERS * CALLS);
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a panic in the client");
    // Most answers go through unharmed, and are taken as they should be.
    assert!(
        right > CALLERS * CALLS / 4,
        "{right} right, {wrong} wrong, {failed} failed"
    );
    assert!(failed > 0, "no mutation failed a call");
}

/// `builder` set for a hostile server: a call is given up after half a second, and a connection
/// the server closed is made again at once.
fn hostile_client<C: ServiceClient>(
    builder: rpc_core::ClientBuilder<C>,
) -> rpc_core::ClientBuilder<C> {
    builder
        .deadline(Duration::from_millis(500))
        .reconnect_backoff(Duration::from_millis(1), Duration::from_millis(10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_to_a_server_of_mutated_answers_ends_and_nothing_panics() {
    let (listener, addr) = loopback_listener().await;
    let hello = lab_hello(lab_methods(), 0, 0);
    tokio::spawn(serve_mutated(listener, hello, Arc::new(lab_answer)));
    let client = hostile_client(LabClient::builder())
        .connect(addr)
        .await
        .expect("connects");
    call_a_hostile_server(client, call_lab).await;

    // A well-behaved server is then called correctly: nothing the hostile one sent was kept.
    let good = LabClient::connect(start_tcp().await)
        .await
        .expect("connects");
    assert_eq!(good.add(20, 22).await.expect("add"), 42);
    let zeros = good.zeros(LARGE).await.expect("zeros");
    assert!(zeros.len() == LARGE as usize && zeros.iter().all(|&byte| byte == 0));
    let mut numbers = good.count(3).await.expect("a stream");
    let mut got = Vec::new();
    while let Some(number) = numbers.next().await {
        got.push(number.expect("an item"));
    }
    assert_eq!(got, [0, 1, 2]);
}

/// One call of Odds', of the `turn`th kind.
async fn call_odds(client: OddsClient, turn: usize, outcomes: Arc<Outcomes>) {
    match turn % 6 {
        0 => outcomes.count(client.items(Odd::sample()).await, 36),
        1 => outcomes.count(client.echo(Odd::sample()).await, Odd::sample()),
        2 => outcomes.count(client.present(HashMap::new()).await, 1),
        3 => outcomes.count(client.names(Vec::new(), Unit, Empty {}).await, 2),
        4 => {
            let items = async { client.samples(3).await?.try_collect::<Vec<_>>().await };
            outcomes.count(items.await, vec![Odd::sample(); 3]);
        }
        _ => {
            let answer = async {
                match client.numbered(2).await? {
                    Ok(keys) => Ok(Ok(keys.try_collect::<Vec<_>>().await?)),
                    Err(last) => Ok(Err(last)),
                }
            };
            // The server answers the stream to even ids and an error to odd ones: either is
            // right as it was sent.
            let answer = answer.await;
            let right = match &answer {
                Ok(Err(_)) => Err(Key::Numbered(u8::MAX)),
                _ => Ok(vec![Key::Numbered(0), Key::Numbered(1)]),
            };
            outcomes.count(answer, right);
        }
    }
}

/// Results and streamed items of odd types mutated (structs of no fields, options of options,
/// 128-bit integers, characters, floats, maps keyed by enums, sets of strings and of units, an
/// error that comes instead of a stream):
/// every call ends, nothing panics, and a well-behaved server of them is then called correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_for_mutated_values_of_odd_types_ends_and_nothing_panics() {
    let methods = &OddsClient::INFO
        .describe()
        .expect("Odds' types can be described")
        .methods;
    let hello = service_hello("Odds", methods, 0, 0, STREAM_WINDOW);
    let echoed = postcard::to_stdvec(&Odd::sample()).expect("encodes");
    let answers = move |id, method: &str| match method {
        "items" => vec![ok(id, &varint(36))],
        "echo" => vec![ok(id, &echoed)],
        "present" => vec![ok(id, &[1])],
        "names" => vec![ok(id, &[2])],
        "samples" => streamed(id, (0..3).map(|_| echoed.clone())),
        // `Result<Streaming<Key>, Key>`: `Ok(())`, then `Numbered(0)` and `Numbered(1)`; or
        // `Err(Numbered(255))`.
        "numbered" if id.is_multiple_of(2) => {
            let mut payloads = streamed(id, (0..2).map(|n| vec![0x01, n]));
            payloads[0] = ok(id, &[0x00]);
            payloads
        }
        "numbered" => vec![ok(id, &[0x01, 0x01, 0xff])],
        other => panic!("the client makes no call of `{other}`"),
    };
    let (listener, addr) = loopback_listener().await;
    tokio::spawn(serve_mutated(listener, hello, Arc::new(answers)));
    let client = hostile_client(OddsClient::builder())
        .connect(addr)
        .await
        .expect("connects");
    call_a_hostile_server(client, call_odds).await;

    let good = OddsClient::connect(odd::serve().await)
        .await
        .expect("connects");
    assert_eq!(good.echo(Odd::sample()).await.expect("echo"), Odd::sample());
}

/// Serves every connection to `listener` with Lab's hello mutated (bytes changed, taken out,
/// added, or cut off), then answers each `add` it is sent, and any other call (the schema a
/// client asks for when a fingerprint differs) as an unknown method, until the test ends.
async fn serve_mutated_hellos(listener: TcpListener) {
    let hello = lab_hello(lab_methods(), 0, 0)[4..].to_vec();
    let mut rng = Rng(0x4e11_0c11_e27f_0001);
    loop {
        let (mut raw, _) = RawClient::accept(&listener).await;
        let mut payload = hello.clone();
        rng.mutate(&mut payload);
        tokio::spawn(async move {
            if raw.stream.write_all(&frame(&payload)).await.is_err() {
                return;
            }
            while let Some(request) = raw.read_frame().await {
                let answer = match id_and_method(&request) {
                    Some((id, "add")) => ok(id, &[0x0a]),
                    Some((id, _)) => [head(0x02, id), vec![0x01, 0x01, 0x00]].concat(),
                    None => continue,
                };
                if raw.stream.write_all(&frame(&answer)).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// A client meeting a server's mutated hellos, a connection each: every connect ends, with a
/// client or an error; a client made calls on; nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connect_to_a_server_of_mutated_hellos_ends_and_nothing_panics() {
    const HELLOS: usize = 1_000;
    let panics = rpc_tests::panics();
    let (listener, addr) = loopback_listener().await;
    tokio::spawn(serve_mutated_hellos(listener));
    let (mut connected, mut called) = (0, 0);
    within("every connect and call", async {
        for _ in 0..HELLOS {
            let client = LabClient::builder()
                .connect_timeout(Duration::from_secs(2))
                .deadline(Duration::from_millis(500))
                .connect(addr)
                .await;
            if let Ok(client) = client {
                connected += 1;
                called += usize::from(client.add(2, 3).await.is_ok());
            }
        }
    })
    .await;
    // Hellos changed only in their limits or past their methods still connect: some do, and
    // their calls go through; most are refused.
    assert!(called > 0, "no call went through");
    assert!(connected < HELLOS, "every mutated hello was taken");
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a panic in the client");
}

/// A server whose `length` differs from the client's (its fingerprint changed, in its hello and
/// in its description) and whose description of itself comes mutated: the client, refused a
/// call for the difference, asks what differs and compares its schema with whatever the server
/// sent, recursive types included (`Chain` holds itself); every call ends refused, saying what
/// differs when it can tell; a description that decodes can be shown as Rust and its methods'
/// canonical forms made; and nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_refused_for_a_difference_against_mutated_descriptions_end_and_nothing_panics() {
    use rpc_tests::nest::{Chain, NestClient};

    const CALLS: usize = 2_000;
    let panics = rpc_tests::panics();
    let mut schema = NestClient::INFO
        .describe()
        .expect("Nest's types can be described")
        .clone();
    let length = schema
        .methods
        .iter_mut()
        .find(|method| method.name == "length")
        .expect("a method `length`");
    length.fingerprint ^= 1;
    let hello = service_hello("Nest", &schema.methods, 0, 0, STREAM_WINDOW);
    let description = postcard::to_stdvec(&schema).expect("encodes");
    let (listener, addr) = loopback_listener().await;
    tokio::spawn(async move {
        let mut rng = Rng(0xde5c_21be_0f0d_0001);
        let (mut raw, _) = RawClient::accept(&listener).await;
        raw.stream.write_all(&hello).await.expect("sends its hello");
        while let Some(request) = raw.read_frame().await {
            let Some((id, "rpc.describe")) = id_and_method(&request) else {
                continue;
            };
            let mut described = description.clone();
            if rng.below(4) != 0 {
                rng.mutate(&mut described);
            }
            if raw
                .stream
                .write_all(&frame(&ok(id, &described)))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let client = NestClient::connect(addr).await.expect("connects");
    let (mut told, mut described) = (0, 0);
    within("every call", async {
        for _ in 0..CALLS {
            match client.length(Chain::of(3)).await {
                Err(RpcError::SignatureMismatch { difference, .. }) => {
                    told += usize::from(difference.is_some());
                }
                other => panic!("a call refused for its signature, not {other:?}"),
            }
            // A description that decodes is shown as Rust (its names made identifiers), and
            // its methods' canonical forms made, as `rpc describe` and the fingerprints do.
            if let Ok(schema) = client.channel().describe().await {
                described += 1;
                let trait_name = rpc_core::schema::rust_identifier(&schema.name);
                assert!(
                    schema
                        .to_rust()
                        .contains(&format!("pub trait {trait_name} {{"))
                );
                for method in &schema.methods {
                    let _ = schema.canonical_form(method);
                }
            }
        }
    })
    .await;
    assert!(described > 0, "no description decoded");
    // The descriptions left whole, and some changed where it does not matter, say what differs.
    assert!(told > 0, "no difference told");
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a panic in the client");
}

/// A server that calls its client back with calls mutated, on connections of their own: in
/// three connections of four, the arguments of each call back (bytes changed, taken out, added
/// or cut off), each of which the client answers, with its result or an error, before the
/// server answers the client's own call; in the fourth, one whole frame of the reverse
/// connection, which may end it. The client's own call on the outer connection is answered
/// every time, and nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_calls_back_fail_only_the_reverse_connection_and_nothing_panics() {
    use rpc_tests::{LabImpl, LabServer, reverse_frame, string};

    const CONNECTIONS: usize = 200;
    const CALLS_BACK: u64 = 20;
    let panics = rpc_tests::panics();
    // The server's reverse hello (docs/wire.md, section 12): no service, no methods.
    let mut reverse_hello = vec![0x00];
    reverse_hello.extend(b"rpcc");
    reverse_hello.extend(varint(rpc_tests::VERSION.into()));
    reverse_hello.extend(varint(16 * 1024 * 1024 - 1));
    reverse_hello.extend(string(""));
    reverse_hello.extend([0x00, 0x00, 0x00]);
    reverse_hello.extend(varint(STREAM_WINDOW.into()));
    // Calls back answered, and reverse connections the client ended, over all connections.
    let seen = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let counted = Arc::clone(&seen);
    let (listener, addr) = loopback_listener().await;
    tokio::spawn(async move {
        let mut seeds = Rng(0x2e7e_25e0_0f0d_0001);
        loop {
            let (mut raw, _) = RawClient::accept(&listener).await;
            let mut rng = Rng(seeds.next_u64());
            let mut opening = lab_hello(lab_methods(), 0, 0);
            opening.extend(reverse_frame(&frame(&reverse_hello)));
            let seen = Arc::clone(&counted);
            tokio::spawn(async move {
                if raw.stream.write_all(&opening).await.is_err() {
                    return;
                }
                let whole_frame = rng.below(4) == 0;
                let mutated_whole = 1 + rng.below(CALLS_BACK as usize) as u64;
                let mut calls_back = Vec::new();
                for id in 1..=CALLS_BACK {
                    let mut call = rpc_tests::request(id, "add", &[])[4..].to_vec();
                    let mut args = vec![0x04, 0x06];
                    if whole_frame {
                        call.extend(args);
                        if id == mutated_whole {
                            rng.mutate(&mut call);
                        }
                    } else {
                        rng.mutate(&mut args);
                        call.extend(args);
                    }
                    calls_back.extend(frame(&[&[0x09][..], &call].concat()));
                }
                let (mut answered, mut ended, mut held) = (0, false, None);
                while let Some(payload) = raw.read_frame().await {
                    if payload.starts_with(&[0x09, 0x00]) {
                        // The client's reverse hello: the calls back go.
                        if raw.stream.write_all(&calls_back).await.is_err() {
                            return;
                        }
                    } else if let Some((id, "add")) = id_and_method(&payload) {
                        held = Some(id);
                    } else if payload.starts_with(&[0x09, 0x02]) {
                        answered += 1;
                        seen.0.fetch_add(1, Ordering::Relaxed);
                    } else if payload == [0x09] {
                        ended = true;
                        seen.1.fetch_add(1, Ordering::Relaxed);
                    }
                    // The client's own call is answered once every call back has been, unless
                    // a whole frame was mutated, which may leave some unanswered.
                    let settled = whole_frame || ended || answered >= CALLS_BACK;
                    if let Some(id) = held.filter(|_| settled) {
                        held = None;
                        if raw
                            .stream
                            .write_all(&frame(&ok(id, &[0x0a])))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    within("every connection", async {
        for _ in 0..CONNECTIONS {
            let client = LabClient::builder()
                .serve(LabServer::new(LabImpl::default()))
                .connect(addr)
                .await
                .expect("connects");
            let added = client.add(2, 3).await;
            assert_eq!(added.expect("the outer connection serves on"), 5);
        }
    })
    .await;
    let (answered, ended) = (
        seen.0.load(Ordering::Relaxed),
        seen.1.load(Ordering::Relaxed),
    );
    assert!(
        answered >= CONNECTIONS / 2 * CALLS_BACK as usize,
        "{answered} calls back answered"
    );
    assert!(ended > 0, "no mutated frame ended a reverse connection");
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a panic in the client");
}
