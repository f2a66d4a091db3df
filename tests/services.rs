//! Several services on one listener and one connection (`Services`), over real sockets: each
//! service's clients connect, clients of different services share a connection, and a service
//! the server lacks is named in the error.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use rpc_core::dynamic::DynamicClient;
use rpc_core::{Context, RpcError, Server, ServerBuilder, ServiceClient, Services, Streaming};
use rpc_tests::{RawClient, VERSION, hello, read_varint, request, string, varint, within};

#[rpc_core::service]
pub trait Calc {
    /// `a + b`.
    async fn add(&self, a: i64, b: i64) -> i64;
    /// The port the calling client's connection comes from.
    async fn caller_port(&self) -> u16;
}

#[rpc_core::service]
pub trait Kv {
    /// The value of `key`: `a` has one.
    async fn get(&self, key: String) -> Option<String>;
    /// The port the calling client's connection comes from.
    async fn caller_port(&self) -> u16;
    /// `0..to`, streamed.
    async fn keys(&self, to: u32) -> Streaming<u32>;
    /// Never answers: for deadlines.
    async fn hang(&self);
}

/// A service the server does not have.
#[rpc_core::service]
pub trait Absent {
    /// Nothing.
    async fn ping(&self);
}

/// `Kv` as another build of the client sees it: `get` takes a number.
mod kv_v2 {
    #[rpc_core::service]
    pub trait Kv {
        /// `get`, keyed by number.
        async fn get(&self, key: u64) -> Option<String>;
    }
}

struct MyCalc;

fn caller_port() -> u16 {
    Context::current().peer_addr().map_or(0, |addr| addr.port())
}

impl Calc for MyCalc {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
    async fn caller_port(&self) -> u16 {
        caller_port()
    }
}

struct MyKv;

impl Kv for MyKv {
    async fn get(&self, key: String) -> Option<String> {
        (key == "a").then(|| "alpha".to_owned())
    }
    async fn caller_port(&self) -> u16 {
        caller_port()
    }
    async fn keys(&self, to: u32) -> Streaming<u32> {
        Streaming::iter(0..to)
    }
    async fn hang(&self) {
        std::future::pending().await
    }
}

/// A server of `Calc` then `Kv`, on a free port.
async fn start() -> SocketAddr {
    start_with(Server::builder()).await
}

/// A server of `Calc` then `Kv` built by `builder`, on a free port.
async fn start_with(builder: ServerBuilder) -> SocketAddr {
    let server = builder.bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("has an address");
    let services = Services::new()
        .add(CalcServer::new(MyCalc))
        .add(KvServer::new(MyKv));
    tokio::spawn(server.serve(services));
    addr
}

#[tokio::test]
async fn a_client_of_each_service_connects_to_the_one_listener() {
    let addr = start().await;
    let calc = CalcClient::connect(addr).await.expect("Calc connects");
    let kv = KvClient::connect(addr).await.expect("Kv connects");
    assert_eq!(calc.add(2, 3).await.expect("adds"), 5);
    assert_eq!(
        kv.get("a".into()).await.expect("gets"),
        Some("alpha".into())
    );
    assert_eq!(kv.get("b".into()).await.expect("gets"), None);
}

/// Health is asked of any service of a server of several, by name: each it has serves, one it
/// lacks is unknown, and "" is the connection's own. A local client's own service serves.
#[tokio::test]
async fn health_is_asked_of_each_service_by_name() {
    use rpc_core::health::ServingStatus::{ServiceUnknown, Serving};

    let addr = start().await;
    let kv = within("connecting", KvClient::connect(addr))
        .await
        .expect("Kv connects");
    let channel = kv.channel();
    for (service, status) in [("Calc", Serving), ("Kv", Serving), ("", Serving)] {
        let asked = within("a check", channel.service_health(service)).await;
        assert_eq!(asked.expect("answered"), status, "{service:?}");
    }
    let absent = within("a check", channel.service_health("Absent")).await;
    assert_eq!(absent.expect("answered"), ServiceUnknown);
    let mut watched = within("a watch", channel.watch_service_health("Absent"))
        .await
        .expect("watches");
    let first = within("the status now", watched.next()).await;
    assert_eq!(first.expect("an item").expect("a status"), ServiceUnknown);

    let local = KvClient::local(MyKv);
    let own = local.channel().service_health("Kv").await.expect("local");
    let other = local.channel().service_health("Calc").await.expect("local");
    assert_eq!((own, other), (Serving, ServiceUnknown));
}

/// A client asked which services its server serves names each, in the order the server was
/// built with; one over a stream it was given shows that connection.
#[tokio::test]
async fn a_client_lists_the_services_of_its_server() {
    let addr = start().await;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let kv = KvClient::builder()
        .connect_stream(stream)
        .await
        .expect("Kv shakes hands");
    let services = within("the listing", kv.channel().services())
        .await
        .expect("lists");
    assert_eq!(services, ["Calc", "Kv"]);
    let shown = format!("{:?}", kv.channel());
    assert!(
        shown.starts_with("Channel { connection: Connection { closed: false, .. }"),
        "{shown}"
    );
}

#[tokio::test]
async fn clients_of_different_services_share_one_connection() {
    let addr = start().await;
    let calc = CalcClient::connect(addr).await.expect("connects");
    let kv = KvClient::sharing(&calc);
    let calc_port = calc.caller_port().await.expect("Calc answers");
    let kv_port = kv.caller_port().await.expect("Kv answers");
    assert_ne!(calc_port, 0);
    assert_eq!(calc_port, kv_port, "both calls came over one connection");

    // Everything a call can do works for the service the hello did not name: results,
    // streams, deadlines; and the connection goes on serving both.
    assert_eq!(
        kv.get("a".into()).await.expect("gets"),
        Some("alpha".into())
    );
    let keys: Vec<u32> = kv
        .keys(5)
        .await
        .expect("streams")
        .map(|key| key.expect("an item"))
        .collect()
        .await;
    assert_eq!(keys, [0, 1, 2, 3, 4]);
    let hanging = kv.with_deadline(Duration::from_millis(50)).hang().await;
    assert!(
        matches!(&hanging, Err(RpcError::DeadlineExceeded { method, .. }) if method == "hang"),
        "{hanging:?}"
    );
    assert_eq!(calc.add(1, 1).await.expect("adds"), 2);
}

#[tokio::test]
async fn a_service_the_server_lacks_is_named_at_connect() {
    let addr = start().await;
    let refused = AbsentClient::connect(addr).await;
    let Err(error @ RpcError::WrongService { .. }) = &refused else {
        panic!("expected WrongService, got {refused:?}");
    };
    assert_eq!(
        error.to_string(),
        "the server does not serve `Absent`: it serves `Calc`, `Kv`"
    );
}

#[tokio::test]
async fn a_shared_client_of_a_service_the_server_lacks_fails_its_calls_alone() {
    let addr = start().await;
    let calc = CalcClient::connect(addr).await.expect("connects");
    let absent = AbsentClient::sharing(&calc);
    let refused = absent.ping().await;
    assert!(
        matches!(&refused, Err(RpcError::WrongService { expected, served })
            if expected == "Absent" && served == &["Calc", "Kv"]),
        "{refused:?}"
    );
    assert_eq!(calc.add(1, 2).await.expect("still serves"), 3);
}

#[tokio::test]
async fn a_changed_signature_of_a_shared_service_is_refused_before_sending() {
    let addr = start().await;
    let calc = CalcClient::connect(addr).await.expect("connects");
    let kv: kv_v2::KvClient = calc.channel().client();
    let refused = kv.get(1).await;
    assert!(
        matches!(&refused, Err(RpcError::SignatureMismatch { method, difference: Some(_) })
            if method == "get"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn each_service_describes_itself() {
    let addr = start().await;
    let calc = CalcClient::connect(addr).await.expect("connects");
    let kv = KvClient::sharing(&calc);
    assert_eq!(
        calc.channel().describe().await.expect("describes").name,
        "Calc"
    );
    let kv_schema = kv.channel().describe().await.expect("describes");
    assert_eq!(kv_schema.name, "Kv");
    assert!(kv_schema.methods.iter().any(|method| method.name == "keys"));

    // A generic client is answered by the first service.
    let generic = DynamicClient::connect(addr).await.expect("connects");
    assert_eq!(generic.describe().await.expect("describes").name, "Calc");
}

#[tokio::test]
async fn two_services_of_one_name_are_refused_at_start() {
    for services in [
        Server::bind("127.0.0.1:0")
            .await
            .expect("binds")
            .serve(
                Services::new()
                    .add(KvServer::new(MyKv))
                    .add(KvServer::new(MyKv)),
            )
            .await,
        Server::bind("127.0.0.1:0")
            .await
            .expect("binds")
            .serve(Services::new())
            .await,
    ] {
        let error = services.expect_err("refused");
        assert!(
            error
                .to_string()
                .starts_with("the services cannot be served"),
            "{error}"
        );
    }
    // Two traits of one name in two modules are two services a client cannot tell apart.
    mod other {
        #[rpc_core::service]
        pub trait Kv {
            async fn size(&self) -> u64;
        }
    }
    impl other::Kv for MyKv {
        async fn size(&self) -> u64 {
            0
        }
    }
    let server = Server::bind("127.0.0.1:0").await.expect("binds");
    let services = Services::new()
        .add(KvServer::new(MyKv))
        .add(other::KvServer::new(MyKv));
    let error = server.serve(services).await.expect_err("refused");
    assert!(
        error.to_string().contains("two are named `Kv`")
            && error.to_string().contains("rename one of the traits"),
        "{error}"
    );
}

/// The bytes: a server of several services appends their table to its hello, and a qualified
/// method name (`Kv.get`) reaches the service it names on a connection whose hello named
/// another.
#[tokio::test]
async fn qualified_requests_route_on_the_wire() {
    let addr = start().await;
    let mut raw = RawClient::connect(addr).await;
    raw.send(&hello("Calc", VERSION)).await;
    let hello = within("the hello", raw.read_frame())
        .await
        .expect("a hello");

    // After the hello's own fields (which name `Calc` and its methods): the table of both.
    let calc = CalcClient::INFO.describe().expect("describes");
    let kv = KvClient::INFO.describe().expect("describes");
    let mut table = varint(2);
    for schema in [calc, kv] {
        table.extend(string(&schema.name));
        table.extend(varint(schema.methods.len() as u64));
        for method in &schema.methods {
            table.extend(string(&method.name));
            table.extend(varint(method.fingerprint));
        }
    }
    // Then `serves_back` 0 and the server's limit on uploads, 64.
    table.extend([0x00, 0x40]);
    assert!(
        hello.ends_with(&table),
        "the hello ends with the services' table, serves_back and max_uploads"
    );
    assert!(
        hello[5..].windows(5).any(|w| w == b"\x04Calc"),
        "it names Calc"
    );

    // `Kv.get("a")`: answered by Kv.
    raw.send(&request(1, "Kv.get", &string("a"))).await;
    let answer = within("the answer", raw.read_frame())
        .await
        .expect("an answer");
    let mut expected = vec![0x02, 0x01, 0x00, 0x01];
    expected.extend(string("alpha"));
    assert_eq!(answer, expected, "Response, id 1, ok, Some(\"alpha\")");

    // A service the server lacks is refused by name; the connection stays up.
    raw.send(&request(2, "Absent.ping", &[])).await;
    let refusal = within("the refusal", raw.read_frame())
        .await
        .expect("a refusal");
    assert_eq!(refusal[..3], [0x02, 0x02, 0x01], "Response, id 2, error");
    let (code, used) = read_varint(&refusal[3..]);
    assert_eq!(code, 1, "unknown method");
    let message = String::from_utf8_lossy(&refusal[3 + used..]);
    assert!(message.contains("no service `Absent`"), "{message}");

    // An unqualified name is the hello's service.
    let mut args = varint(4); // zigzag 2
    args.extend(varint(6)); // zigzag 3
    raw.send(&request(3, "add", &args)).await;
    let answer = within("the sum", raw.read_frame())
        .await
        .expect("an answer");
    assert_eq!(answer, [0x02, 0x03, 0x00, 0x0a], "Response, id 3, ok, 5");

    // Health knows every service: serving (0) for each, unknown (2) for another.
    for (id, service, status) in [(4, "Calc", 0), (5, "Kv", 0), (6, "Absent", 2)] {
        raw.send(&request(id, "rpc.health.check", &string(service)))
            .await;
        let answer = within("the status", raw.read_frame())
            .await
            .expect("an answer");
        assert_eq!(answer, [0x02, id as u8, 0x00, status], "{service}");
    }
}

/// What a server's interceptor, spans and metrics see of a call, on a server of several
/// services: the service and method the request named, whichever service it is.
#[tokio::test]
async fn each_call_is_known_by_its_own_service_and_method() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let addr = start_with(Server::builder().intercept(move |call| {
        let names = (call.service(), call.method());
        record.lock().expect("not poisoned").push(names);
        Ok(())
    }))
    .await;
    let calc = within("connecting", CalcClient::connect(addr))
        .await
        .expect("connects");
    let kv = KvClient::sharing(&calc);
    assert_eq!(calc.add(1, 2).await.expect("adds"), 3);
    assert_eq!(kv.get("b".into()).await.expect("gets"), None);
    assert_eq!(
        *seen.lock().expect("not poisoned"),
        [("Calc", "add"), ("Kv", "get")]
    );
}
