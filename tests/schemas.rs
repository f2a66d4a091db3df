//! Schemas over real sockets: fingerprints that follow the bytes on the wire, mismatches that
//! say what differs, and a server that describes its service to any client that asks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rpc_core::schema::{Schema, TypeDef};
use rpc_core::{RpcError, Server, ServerBuilder, ServiceClient};
use rpc_tests::{RawClient, VERSION, frame, hello, serve_on_loopback, string, varint, within};

/// The server's version of the service.
mod served {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Note {
        pub title: String,
        pub body: String,
    }

    #[rpc_core::service]
    pub trait Notes {
        /// Keeps a note, and says what it kept.
        async fn put(&self, note: Note) -> String;
        #[rpc(idempotent)]
        async fn count(&self) -> u64;
    }
}

/// A client built from another spelling of the same service: other field names, another path
/// to `String`. The bytes on the wire are the same.
mod respelled {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Memo {
        pub heading: std::string::String,
        pub text: String,
    }

    #[rpc_core::service]
    pub trait Notes {
        async fn put(&self, note: Memo) -> std::string::String;
        #[rpc(idempotent)]
        async fn count(&self) -> u64;
    }
}

/// A client from before the server added a field: its `put` is encoded differently.
mod older {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Note {
        pub title: String,
    }

    #[rpc_core::service]
    pub trait Notes {
        async fn put(&self, note: Note) -> String;
        #[rpc(idempotent)]
        async fn count(&self) -> u64;
    }
}

#[derive(Clone, Default)]
struct Kept(Arc<AtomicUsize>);

impl served::Notes for Kept {
    async fn put(&self, note: served::Note) -> String {
        self.0.fetch_add(1, Ordering::SeqCst);
        format!("{}: {}", note.title, note.body)
    }

    async fn count(&self) -> u64 {
        self.0.load(Ordering::SeqCst) as u64
    }
}

async fn serve(builder: ServerBuilder, kept: Kept) -> SocketAddr {
    let server = builder.bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("an address");
    tokio::spawn(server.serve(served::NotesServer::new(kept)));
    addr
}

#[tokio::test]
async fn another_spelling_of_the_same_types_calls_the_server() {
    let addr = serve(Server::builder(), Kept::default()).await;
    let client = within("connecting", respelled::NotesClient::connect(addr))
        .await
        .expect("connects");
    let memo = respelled::Memo {
        heading: "groceries".into(),
        text: "milk".into(),
    };
    assert_eq!(
        client.put(memo).await.expect("the same bytes"),
        "groceries: milk"
    );
}

#[tokio::test]
async fn a_field_added_on_the_server_is_a_mismatch_that_names_it() {
    let kept = Kept::default();
    let addr = serve(Server::builder(), kept.clone()).await;
    let client = within("connecting", older::NotesClient::connect(addr))
        .await
        .expect("connects");
    let note = older::Note {
        title: "groceries".into(),
    };
    let error = client.put(note).await.expect_err("encoded differently");
    let RpcError::SignatureMismatch { method, difference } = &error else {
        panic!("expected a signature mismatch, got {error:?}");
    };
    assert_eq!(method, "put");
    let difference = difference.as_deref().expect("the server describes itself");
    assert!(difference.contains("the argument `note`"), "{difference}");
    assert!(difference.contains("(title: String) here"), "{difference}");
    assert!(
        difference.contains("(title: String, body: String) on the server"),
        "{difference}"
    );
    assert!(error.to_string().contains(difference), "{error}");
    assert_eq!(kept.0.load(Ordering::SeqCst), 0, "nothing was sent to run");
    assert_eq!(client.count().await.expect("unchanged methods work"), 0);
}

#[tokio::test]
async fn a_server_describes_its_service() {
    let addr = serve(Server::builder(), Kept::default()).await;
    let client = within("connecting", served::NotesClient::connect(addr))
        .await
        .expect("connects");
    let described = client.channel().describe().await.expect("describes");
    let own = served::NotesClient::INFO.describe().expect("a schema");
    assert_eq!(&described, own);
    assert_eq!(described.name, "Notes");
    let put = described.method("put").expect("put");
    assert_eq!(put.args[0].name, "note");
    assert_eq!(put.args[0].schema, Schema::Named("Note".into()));
    assert_eq!(put.result, Schema::Str);
    assert!(described.method("count").expect("count").idempotent);
    assert!(matches!(&described.types["Note"], TypeDef::Struct(fields) if fields.len() == 2));
    let rust = described.to_rust();
    assert!(
        rust.contains(
            "#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]\n\
             pub struct Note {\n    pub title: String,\n    pub body: String,\n}"
        ),
        "{rust}"
    );
    assert!(
        rust.contains("async fn put(&self, note: Note) -> String;"),
        "{rust}"
    );
    assert!(
        rust.contains("#[rpc(idempotent)]\n    async fn count(&self) -> u64;"),
        "{rust}"
    );
}

#[tokio::test]
async fn a_server_with_reflection_off_describes_nothing_and_still_refuses_mismatches() {
    let addr = serve(Server::builder().reflection(false), Kept::default()).await;
    let served = within("connecting", served::NotesClient::connect(addr))
        .await
        .expect("connects");
    match served.channel().describe().await {
        Err(RpcError::UnknownMethod { method }) => assert_eq!(method, "rpc.describe"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let older = within("connecting", older::NotesClient::connect(addr))
        .await
        .expect("connects");
    let note = older::Note { title: "x".into() };
    match older.put(note).await {
        Err(RpcError::SignatureMismatch { difference, .. }) => assert_eq!(difference, None),
        other => panic!("expected a signature mismatch, got {other:?}"),
    }
}

/// docs/wire.md, "Describing a service": a client that names no service is served, and the
/// describe request is answered with the schema, postcard-encoded.
#[tokio::test]
async fn a_describe_request_on_the_wire() {
    let addr = serve(Server::builder(), Kept::default()).await;
    let mut raw = RawClient::connect(addr).await;
    raw.send(&hello("", VERSION)).await;
    let server_hello = within("the server's hello", raw.read_frame())
        .await
        .expect("the server answers a client that names no service");
    assert_eq!(&server_hello[..5], b"\x00rpcc");

    // Request (kind 1), id 7, method "rpc.describe", no timeout, no metadata, no arguments.
    let mut request = vec![0x01, 0x07];
    request.extend(string("rpc.describe"));
    request.extend([0x00, 0x00]);
    raw.send(&frame(&request)).await;
    let response = within("the description", raw.read_frame())
        .await
        .expect("answered");
    // Response (kind 2), id 7, outcome Ok (0), then the ServiceSchema.
    assert_eq!(&response[..3], [0x02, 0x07, 0x00]);
    let mut expected = string("Notes");
    expected.extend(varint(2)); // two methods
    expected.extend(string("put"));
    expected.extend(varint(1)); // one argument
    expected.extend(string("note"));
    assert!(
        response[3..].starts_with(&expected),
        "{:?}",
        &response[3..40]
    );
    let schema: rpc_core::schema::ServiceSchema =
        postcard::from_bytes(&response[3..]).expect("a ServiceSchema");
    assert_eq!(
        &schema,
        served::NotesClient::INFO.describe().expect("a schema")
    );
}

#[tokio::test]
async fn a_dynamic_client_calls_what_the_server_describes() {
    use rpc_core::dynamic::{DynamicClient, DynamicReply, Encoded};

    let kept = Kept::default();
    let addr = serve(Server::builder(), kept.clone()).await;
    let client = within("connecting", DynamicClient::connect(addr))
        .await
        .expect("a client that names no service is served");
    let schema = client.describe().await.expect("describes");
    let put = schema.method("put").expect("put");
    let note = served::Note {
        title: "a".into(),
        body: "b".into(),
    };
    let args = postcard::to_allocvec(&(note,)).expect("encodes");
    let reply = client
        .call(put, Encoded::new(args), None)
        .await
        .expect("answers");
    let DynamicReply::Value(result) = reply else {
        panic!("a value, not a stream");
    };
    let text: String = postcard::from_bytes(result.as_bytes()).expect("a string");
    assert_eq!(text, "a: b");
    assert_eq!(kept.0.load(Ordering::SeqCst), 1);
}

/// A service with a type no schema describes: postcard cannot carry an untagged enum.
mod loose {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(untagged)]
    pub enum Loose {
        Number(u32),
        Text(String),
    }

    #[rpc_core::service]
    pub trait Undescribable {
        async fn take(&self, value: Loose) -> u32;
    }

    /// Each side builds its own copy of the trait; opaque, both fingerprint its text.
    #[rpc_core::service]
    pub trait Opaque {
        #[rpc(opaque)]
        async fn take(&self, value: Vec<Loose>) -> u32;
        async fn plain(&self, n: u32) -> u32;
    }
}

struct Taker;

impl loose::Undescribable for Taker {
    async fn take(&self, _: loose::Loose) -> u32 {
        0
    }
}

impl loose::Opaque for Taker {
    async fn take(&self, values: Vec<loose::Loose>) -> u32 {
        values.len() as u32
    }

    async fn plain(&self, n: u32) -> u32 {
        n + 1
    }
}

#[tokio::test]
async fn a_type_without_a_schema_is_refused_at_serve_and_at_connect() {
    let server = Server::bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("an address");
    let served = server.serve(loose::UndescribableServer::new(Taker)).await;
    let error = served.expect_err("refused before accepting anything");
    assert!(
        error.to_string().contains("`Undescribable::take`"),
        "{error}"
    );
    assert!(
        error.to_string().contains("cannot travel over rpc-core"),
        "{error}"
    );

    match loose::UndescribableClient::connect(addr).await {
        Err(RpcError::Schema(error)) => {
            assert_eq!(error.method, "take");
            assert_eq!(error.place, "the argument `value`");
            assert_eq!(error.problem, rpc_core::schema::SchemaProblem::NotCarried);
        }
        other => panic!("expected a schema error, got {other:?}"),
    }
}

/// A type whose `Serialize` leaves out a field its `Deserialize` reads: postcard writes no field
/// names, so a call carrying it when the field is empty would fail, or be read as another value.
mod skipping {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Query {
        pub name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub limit: Option<u32>,
        pub tag: u8,
    }

    #[rpc_core::service]
    pub trait Search {
        async fn find(&self, query: Query) -> u32;
    }
}

impl skipping::Search for Taker {
    async fn find(&self, query: skipping::Query) -> u32 {
        query.limit.unwrap_or(0)
    }
}

#[tokio::test]
async fn a_type_that_does_not_read_back_what_it_writes_is_refused_at_serve_and_at_connect() {
    let server = Server::bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("an address");
    let served = server.serve(skipping::SearchServer::new(Taker)).await;
    let error = served.expect_err("refused before accepting anything");
    let said = error.to_string();
    assert!(said.contains("`Search::find`"), "{said}");
    assert!(said.contains("does not read back what it writes"), "{said}");

    match skipping::SearchClient::connect(addr).await {
        Err(RpcError::Schema(error)) => {
            assert_eq!(error.problem, rpc_core::schema::SchemaProblem::NotReadBack);
            assert_eq!(error.place, "the argument `query`");
        }
        other => panic!("expected a schema error, got {other:?}"),
    }
}

/// A validated newtype of a form of its own, and two services carrying it: one that names a
/// text it accepts, one that does not.
mod validated {
    use serde::{Deserialize, Serialize};

    /// Three capitals, a dash, four digits.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(try_from = "String", into = "String")]
    pub struct Sku(String);

    impl TryFrom<String> for Sku {
        type Error = String;
        fn try_from(text: String) -> Result<Sku, String> {
            let bytes = text.as_bytes();
            let valid = bytes.len() == 8
                && bytes[..3].iter().all(u8::is_ascii_uppercase)
                && bytes[3] == b'-'
                && bytes[4..].iter().all(u8::is_ascii_digit);
            match valid {
                true => Ok(Sku(text)),
                false => Err(format!("{text:?} is not a SKU")),
            }
        }
    }

    impl From<Sku> for String {
        fn from(sku: Sku) -> String {
            sku.0
        }
    }

    #[rpc_core::service(texts("ABC-0001"))]
    pub trait Shop {
        async fn price(&self, sku: Sku) -> u64;
        async fn restock(&self, skus: Vec<Sku>) -> Option<Sku>;
    }

    #[rpc_core::service]
    pub trait Unnamed {
        async fn price(&self, sku: Sku) -> u64;
    }
}

impl validated::Shop for Taker {
    async fn price(&self, _: validated::Sku) -> u64 {
        1
    }

    async fn restock(&self, skus: Vec<validated::Sku>) -> Option<validated::Sku> {
        skus.last().cloned()
    }
}

impl validated::Unnamed for Taker {
    async fn price(&self, _: validated::Sku) -> u64 {
        1
    }
}

#[tokio::test]
async fn a_service_names_the_texts_its_validated_types_accept() {
    let addr = serve_on_loopback(Server::builder(), validated::ShopServer::new(Taker)).await;
    let client = within("connecting", validated::ShopClient::connect(addr))
        .await
        .expect("connects");
    let skus = vec!["XYZ-0042".to_owned().try_into().expect("a SKU")];
    let last = within("restocking", client.restock(skus.clone()))
        .await
        .expect("answered");
    assert_eq!(last, skus.last().cloned());
    let sku = "ABC-0001".to_owned().try_into().expect("a SKU");
    let price = within("pricing", client.price(sku))
        .await
        .expect("answered");
    assert_eq!(price, 1);

    // Without the text, the same type cannot be described: serving and connecting say how to
    // name one.
    let server = Server::bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("an address");
    let served = server.serve(validated::UnnamedServer::new(Taker)).await;
    let error = served.expect_err("refused before accepting anything");
    assert!(
        error.to_string().contains("#[rpc_core::service(texts("),
        "{error}"
    );
    match validated::UnnamedClient::connect(addr).await {
        Err(RpcError::Schema(error)) => {
            assert_eq!(error.problem, rpc_core::schema::SchemaProblem::TextRefused);
            assert_eq!(error.place, "the argument `sku`");
        }
        other => panic!("expected a schema error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_opaque_method_is_called_without_a_schema() {
    let server = Server::bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("an address");
    tokio::spawn(server.serve(loose::OpaqueServer::new(Taker)));
    let client = within("connecting", loose::OpaqueClient::connect(addr))
        .await
        .expect("connects");
    let values = vec![loose::Loose::Number(1), loose::Loose::Text("x".into())];
    // postcard cannot decode an untagged enum, so the server answers that the arguments do not
    // decode: what matters here is that the call was checked and sent without a schema.
    let answer = client.take(values).await;
    assert!(
        matches!(answer, Err(RpcError::InvalidArguments { .. })),
        "{answer:?}"
    );
    assert_eq!(
        client
            .take(Vec::new())
            .await
            .expect("an empty list decodes"),
        0
    );
    assert_eq!(
        client
            .plain(1)
            .await
            .expect("described methods work beside it"),
        2
    );
    let described = client.channel().describe().await.expect("describes");
    let take = described.method("take").expect("take");
    assert!(matches!(&take.args[0].schema, Schema::Named(name) if name.contains("Vec<")));
}
