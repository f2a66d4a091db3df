//! SRV discovery against a real DNS server, run in the test: as its records change while calls
//! run, endpoints appear and vanish, and calls follow them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use hickory_server::Server as DnsServer;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use rpc_core::dns::Discovery;
use rpc_core::{RpcError, Server, ServiceClient};
use rpc_tests::greeter::{self, GreeterClient};
use rpc_tests::within;

type Zone = InMemoryZoneHandler<TokioRuntimeProvider>;

/// The SRV name the servers are published under.
const SERVICE: &str = "_rpc._tcp.greeter.test.";

fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("a DNS name")
}

/// A DNS server for the zone `test.`, serving from memory, its records changed by the test.
struct Dns {
    zone: Arc<Zone>,
    addr: SocketAddr,
    serial: u32,
    _server: DnsServer<Catalog>,
}

impl Dns {
    async fn start() -> Dns {
        let origin = name("test.");
        let mut zone = Zone::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(name("ns.test."), name("admin.test."), 1, 60, 60, 60, 0);
        zone.upsert_mut(Record::from_rdata(origin.clone(), 0, RData::SOA(soa)), 1);
        let host = Record::from_rdata(name("host.test."), 0, RData::A(A::new(127, 0, 0, 1)));
        zone.upsert_mut(host, 1);
        let zone = Arc::new(zone);
        let mut catalog = Catalog::new();
        let handler: Arc<dyn ZoneHandler> = zone.clone();
        catalog.upsert(LowerName::from(&origin), vec![handler]);
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = socket.local_addr().expect("an address");
        let mut server = DnsServer::new(catalog);
        server.register_socket(socket);
        Dns {
            zone,
            addr,
            serial: 1,
            _server: server,
        }
    }

    /// Publishes the servers on `ports` of `host.test.`, and no others.
    async fn publish(&mut self, ports: &[u16]) {
        let servers: Vec<_> = ports.iter().map(|&port| ("host.test.", port)).collect();
        self.publish_at(&servers).await;
    }

    /// Publishes SRV records naming these targets and ports, and no others.
    async fn publish_at(&mut self, servers: &[(&str, u16)]) {
        self.serial += 1;
        let key = RrKey::new(LowerName::from(&name(SERVICE)), RecordType::SRV);
        self.zone.records_mut().await.remove(&key);
        for &(target, port) in servers {
            let srv = SRV::new(0, 0, port, name(target));
            let record = Record::from_rdata(name(SERVICE), 0, RData::SRV(srv));
            assert!(self.zone.upsert(record, self.serial).await, "published");
        }
    }
}

/// A greeter server that counts its calls.
async fn counted_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counting = Arc::clone(&calls);
    let counted = Server::builder().intercept(move |_| {
        counting.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    (greeter::serve(counted, "127.0.0.1:0").await, calls)
}

/// A client of the servers the SRV records of `name` list, asked of `dns`, read again every
/// `refresh`.
async fn discover(name: &str, dns: &Dns, refresh: Duration) -> Result<GreeterClient, RpcError> {
    let discovery = Discovery::srv(name).name_servers([dns.addr]);
    within(
        "discovering",
        GreeterClient::builder().discover(discovery, refresh),
    )
    .await
}

/// The endpoints `client` balances over, sorted.
fn listed(client: &GreeterClient) -> Vec<String> {
    let mut listed: Vec<String> = client
        .channel()
        .endpoints()
        .into_iter()
        .map(|e| e.endpoint)
        .collect();
    listed.sort();
    listed
}

#[tokio::test]
async fn calls_follow_the_servers_the_srv_records_list() {
    let (first, first_calls) = counted_server().await;
    let (second, second_calls) = counted_server().await;
    let mut dns = Dns::start().await;
    dns.publish(&[first.port()]).await;

    let client = discover(SERVICE, &dns, Duration::from_millis(20))
        .await
        .expect("finds the first server");
    assert_eq!(listed(&client), [format!("host.test:{}", first.port())]);
    for _ in 0..5 {
        within("a call", client.greet("x".into()))
            .await
            .expect("answers");
    }
    assert_eq!(first_calls.load(Ordering::SeqCst), 5);

    // The records change while calls run: the first server vanishes, the second appears.
    let mut changes = Box::pin(client.channel().endpoint_changes());
    dns.publish(&[second.port()]).await;
    let moved = [format!("host.test:{}", second.port())];
    while listed(&client) != moved {
        within("the pool to follow", changes.next())
            .await
            .expect("changes");
    }
    for _ in 0..5 {
        within("a call", client.greet("x".into()))
            .await
            .expect("answers");
    }
    assert_eq!(
        second_calls.load(Ordering::SeqCst),
        5,
        "calls followed the records"
    );
    assert_eq!(
        first_calls.load(Ordering::SeqCst),
        5,
        "none went to the vanished server"
    );

    // Both published: both are used.
    dns.publish(&[first.port(), second.port()]).await;
    while listed(&client).len() != 2 {
        within("the pool to follow", changes.next())
            .await
            .expect("changes");
    }
    for _ in 0..100 {
        within("a call", client.greet("x".into()))
            .await
            .expect("answers");
    }
    assert!(
        first_calls.load(Ordering::SeqCst) > 5,
        "the first is back in use"
    );
}

#[tokio::test]
async fn a_name_with_no_records_is_refused_at_discovery() {
    let dns = Dns::start().await;
    let found = discover("_none._tcp.greeter.test.", &dns, Duration::from_secs(1)).await;
    let error = found.expect_err("nothing to call");
    assert!(
        error.to_string().contains("_none._tcp.greeter.test."),
        "the error names what was looked up: {error}"
    );
}

#[tokio::test]
async fn a_target_that_does_not_resolve_is_left_out_and_the_others_still_count() {
    let (server, calls) = counted_server().await;
    let mut dns = Dns::start().await;
    // `nowhere.test.` has no address record.
    dns.publish_at(&[("nowhere.test.", 1), ("host.test.", server.port())])
        .await;
    let client = discover(SERVICE, &dns, Duration::from_secs(60))
        .await
        .expect("finds the server that resolves");
    assert_eq!(listed(&client), [format!("host.test:{}", server.port())]);
    within("a call", client.greet("x".into()))
        .await
        .expect("answers");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
