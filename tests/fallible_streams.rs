//! Methods that return `Result<Streaming<T>, E>`: the error comes instead of the stream, typed,
//! over real TCP and in process; the stream follows only an `Ok`; a failed call holds nothing
//! on either end; the bytes on the wire are those docs/wire.md gives (sections 5.1, 6.1 and 7).

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::StreamExt;
use rpc_core::{Server, ServiceClient, Streaming};
use rpc_tests::{RawClient, VERSION, hello, request, serve_on_loopback, string, varint, within};
use serde::{Deserialize, Serialize};

/// Why a file cannot be opened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OpenError {
    /// No file has this name.
    NotFound(String),
    /// The file may not be written.
    ReadOnly,
}

#[rpc_core::service]
pub trait Files {
    /// The lines of `name`, or why it cannot be read.
    async fn lines(&self, name: String) -> Result<Streaming<String>, OpenError>;
    /// Appends each line of `lines` to `name`, answering each with the file's new line count;
    /// refuses at once a file that may not be written.
    async fn append(
        &self,
        name: String,
        lines: Streaming<String>,
    ) -> Result<Streaming<u64>, OpenError>;
}

/// Files in memory; `motd` may not be written.
#[derive(Default)]
struct Memory {
    files: Mutex<HashMap<String, Vec<String>>>,
}

impl Memory {
    fn with(name: &str, lines: &[&str]) -> Self {
        let memory = Memory::default();
        let lines = lines.iter().map(|line| (*line).to_owned()).collect();
        memory
            .files
            .lock()
            .expect("unpoisoned")
            .insert(name.to_owned(), lines);
        memory
    }
}

impl Files for Memory {
    async fn lines(&self, name: String) -> Result<Streaming<String>, OpenError> {
        let files = self.files.lock().expect("unpoisoned");
        let lines = files.get(&name).ok_or(OpenError::NotFound(name))?;
        Ok(Streaming::iter(lines.clone()))
    }

    async fn append(
        &self,
        name: String,
        mut lines: Streaming<String>,
    ) -> Result<Streaming<u64>, OpenError> {
        if name == "motd" {
            return Err(OpenError::ReadOnly);
        }
        let (counts, stream) = Streaming::channel(4);
        let mut count = self
            .files
            .lock()
            .expect("unpoisoned")
            .get(&name)
            .map_or(0, Vec::len);
        tokio::spawn(async move {
            while let Some(Ok(_line)) = lines.next().await {
                count += 1;
                if counts.send(count as u64).await.is_err() {
                    return;
                }
            }
        });
        Ok(stream)
    }
}

fn memory() -> Memory {
    Memory::with("notes", &["one", "two", "three"])
}

async fn client() -> FilesClient {
    let addr = serve_on_loopback(Server::builder(), FilesServer::new(memory())).await;
    FilesClient::connect(addr).await.expect("connects")
}

async fn collect<T>(stream: Streaming<T>) -> Vec<T> {
    let items = stream.map(|item| item.expect("an item, not an error"));
    within("the stream", items.collect()).await
}

#[tokio::test]
async fn the_stream_comes_when_the_method_returns_ok() {
    let client = client().await;
    let lines = client.lines("notes".into()).await.expect("answered");
    let lines = lines.expect("the file is there");
    assert_eq!(collect(lines).await, ["one", "two", "three"]);
}

#[tokio::test]
async fn the_error_comes_typed_instead_of_the_stream() {
    let client = client().await;
    let answer = client.lines("missing".into()).await.expect("answered");
    let Err(error) = answer else {
        panic!("a stream for a file that is not there");
    };
    assert_eq!(error, OpenError::NotFound("missing".into()));
}

/// A call answered with an error holds no call slot on either end, nor a stream: with one call
/// allowed at a time, failed calls one after another would otherwise hang the next.
#[tokio::test]
async fn a_call_answered_with_an_error_holds_nothing() {
    let server = Server::builder()
        .max_in_flight_per_connection(1)
        .max_uploads_per_connection(1);
    let addr = serve_on_loopback(server, FilesServer::new(memory())).await;
    let client = FilesClient::connect(addr).await.expect("connects");
    for _ in 0..20 {
        let answer = within("a failing call", client.lines("missing".into())).await;
        assert!(
            matches!(answer, Ok(Err(OpenError::NotFound(_)))),
            "{answer:?}"
        );
        let answer = within(
            "a failing call",
            client.append("motd".into(), Streaming::iter([])),
        )
        .await;
        assert!(matches!(answer, Ok(Err(OpenError::ReadOnly))), "{answer:?}");
    }
    let lines = client.lines("notes".into()).await.expect("answered");
    assert_eq!(collect(lines.expect("there")).await.len(), 3);
}

/// A streamed argument stops going once the error has come: the client drops its source.
#[tokio::test]
async fn an_error_stops_the_streamed_argument() {
    let client = client().await;
    let (lines, source) = Streaming::channel(1);
    let feeding = tokio::spawn(async move {
        // Sends until the client drops the stream's other end.
        while lines.send("more".to_owned()).await.is_ok() {}
    });
    let answer = client.append("motd".into(), source).await;
    assert!(matches!(answer, Ok(Err(OpenError::ReadOnly))), "{answer:?}");
    within("the source to be dropped", feeding)
        .await
        .expect("the feeder ends");
}

#[tokio::test]
async fn both_ways_stream_when_the_method_returns_ok() {
    let client = client().await;
    let lines = Streaming::iter(["four".to_owned(), "five".to_owned()]);
    let counts = client
        .append("notes".into(), lines)
        .await
        .expect("answered");
    assert_eq!(collect(counts.expect("writable")).await, [4, 5]);
}

#[tokio::test]
async fn a_local_client_gets_the_same_answers() {
    let client = FilesClient::local(memory());
    let lines = client.lines("notes".into()).await.expect("answered");
    assert_eq!(
        collect(lines.expect("there")).await,
        ["one", "two", "three"]
    );
    let answer = client.lines("missing".into()).await.expect("answered");
    assert!(matches!(answer, Err(OpenError::NotFound(_))), "{answer:?}");
}

/// The schema says the method may fail instead of streaming, and its Rust says so too.
#[tokio::test]
async fn the_schema_names_the_error() {
    let client = client().await;
    let schema = client.channel().describe().await.expect("described");
    let lines = schema.method("lines").expect("described");
    assert_eq!(
        lines.download,
        rpc_core::schema::Download::ItemsOrError(rpc_core::schema::Schema::Named(
            "OpenError".into()
        ))
    );
    let rust = schema.to_rust();
    assert!(
        rust.contains(
            "async fn lines(&self, name: String) -> Result<Streaming<String>, OpenError>;"
        ),
        "{rust}"
    );
}

/// docs/wire.md, section 7: the Response's body is `Result<(), E>`; the items follow only
/// `Ok`, then the StreamEnd.
#[tokio::test]
async fn the_bytes_are_as_the_wire_document_says() {
    let addr = serve_on_loopback(Server::builder(), FilesServer::new(memory())).await;
    let mut raw = RawClient::greet(addr, &hello("Files", VERSION)).await;
    // `lines("nope")`: a string argument, as the request's body.
    raw.send(&request(1, "lines", b"\x04nope")).await;
    let answer = within("the answer", raw.read_frame())
        .await
        .expect("a frame");
    assert_eq!(
        answer, b"\x02\x01\x00\x01\x00\x04nope",
        "Response, id 1, Ok; body Err (01), NotFound (00), \"nope\""
    );
    // The next frame answers the next call: no stream followed the error.
    raw.send(&request(2, "lines", b"\x05notes")).await;
    let frames = [
        &b"\x02\x02\x00\x00"[..], // Response, id 2, Ok; body Ok(()) (00)
        b"\x06\x02\x03one",       // StreamItem, id 2, "one"
        b"\x06\x02\x03two",
        b"\x06\x02\x05three",
        b"\x07\x02\x00", // StreamEnd, id 2, Ok
    ];
    for expected in frames {
        let got = within("a frame", raw.read_frame()).await.expect("a frame");
        assert_eq!(got, expected);
    }
}

/// docs/wire.md, sections 6.1 and 5.1: the method's schema says `download` `02` with the error's
/// schema after it, and its fingerprint hashes the canonical form with shape `06` and the error's
/// node at the end.
#[tokio::test]
async fn the_schema_on_the_wire_names_the_error_and_the_fingerprint_hashes_it() {
    let addr = serve_on_loopback(Server::builder(), FilesServer::new(memory())).await;
    let mut raw = RawClient::greet(addr, &hello("Files", VERSION)).await;
    raw.send(&request(1, "rpc.describe", b"")).await;
    let answer = within("the description", raw.read_frame())
        .await
        .expect("a frame");
    // Response, id 1, Ok; then the ServiceSchema: "Files", two methods, the first "lines".
    let mut expected = vec![0x02, 0x01, 0x00];
    expected.extend(string("Files"));
    expected.push(0x02);
    expected.extend(string("lines"));
    expected.push(0x01); // one argument:
    expected.extend(string("name"));
    expected.push(15); // a string
    expected.push(0x00); // no streamed argument
    expected.push(15); // items: strings
    expected.push(0x02); // download: a stream or an error, of the schema
    expected.push(21); // named
    expected.extend(string("OpenError"));
    expected.push(0x00); // not idempotent
    // `06` a stream or an error; the arguments: a string; `18` the stream; its items: strings;
    // the error: an enum of two variants, a string and a unit.
    let canonical: [u8; 8] = [0x06, 0x0f, 0x18, 0x0f, 0x15, 0x02, 0x0f, 0x00];
    let fingerprint = canonical
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    expected.extend(varint(fingerprint));
    assert!(
        answer.starts_with(&expected),
        "{:02x?}\n{:02x?}",
        &answer[..expected.len().min(answer.len())],
        expected
    );
}
