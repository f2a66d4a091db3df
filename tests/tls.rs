//! Calls over TLS and mutual TLS, with certificates made at test time: what is accepted, what
//! is refused and how each side says so, rotation, and TLS under reconnection and balancing.

use std::net::SocketAddr;
use std::time::Duration;

use rpc_core::tls::{ClientTls, ServerTls};
use rpc_core::{Context, RpcError, Server, ServerBuilder};
use rpc_tests::certs::{Authority, Issued};
use rpc_tests::{held_loopback_port, within};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

#[rpc_core::service]
pub trait Vault {
    /// Adds; a call that needs nothing of its caller.
    async fn add(&self, a: i64, b: i64) -> i64;
    /// Who the server says the caller is, if it presented a certificate.
    async fn whoami(&self) -> Option<Caller>;
    /// The caller's address, as the server sees it.
    async fn peer(&self) -> Option<SocketAddr>;
}

/// What a handler reads of a client's verified certificate.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Caller {
    subject: String,
    common_name: Option<String>,
    names: Vec<String>,
    /// DER, the client's certificate first.
    chain: Vec<Vec<u8>>,
}

struct MyVault;

impl Vault for MyVault {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn whoami(&self) -> Option<Caller> {
        let call = Context::current();
        let identity = call.peer_identity()?;
        Some(Caller {
            subject: identity.subject().to_owned(),
            common_name: identity.common_name().map(str::to_owned),
            names: identity.names().to_vec(),
            chain: identity.certificate_chain().to_vec(),
        })
    }

    async fn peer(&self) -> Option<SocketAddr> {
        Context::current().peer_addr()
    }
}

/// The names a test server's certificate carries.
const SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1"];

/// Serves `Vault` with `builder` on a loopback port.
async fn serve(builder: ServerBuilder) -> SocketAddr {
    let server = builder.bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("an address");
    tokio::spawn(server.serve(VaultServer::new(MyVault)));
    addr
}

/// A server presenting `issued`.
fn server_tls(issued: &Issued) -> ServerTls {
    ServerTls::from_pem(&issued.chain, &issued.key).expect("the server's certificate")
}

/// A client trusting `authority`.
fn client_tls(authority: &Authority) -> ClientTls {
    ClientTls::trusting_pem(authority.pem()).expect("the authority")
}

/// Connects to `localhost` at `addr`'s port with `tls`.
async fn connect(addr: SocketAddr, tls: ClientTls) -> Result<VaultClient, RpcError> {
    let connecting = VaultClient::builder()
        .tls(tls)
        .connect(format!("localhost:{}", addr.port()));
    within("connecting", connecting).await
}

/// The sentence of a TLS failure, or a panic naming what came instead.
fn tls_failure(result: Result<VaultClient, RpcError>) -> String {
    match result {
        Err(RpcError::Tls(message)) => message,
        Err(other) => panic!("expected a TLS failure, got {other:?}"),
        Ok(_) => panic!("expected a TLS failure, but the client connected"),
    }
}

#[tokio::test]
async fn calls_go_over_tls_to_the_name_the_certificate_carries() {
    let authority = Authority::new("servers");
    let addr =
        serve(Server::builder().tls(server_tls(&authority.issue("vault", SERVER_NAMES)))).await;
    let client = connect(addr, client_tls(&authority))
        .await
        .expect("connects");
    assert_eq!(client.add(2, 3).await.expect("a call"), 5);
    assert_eq!(
        client.whoami().await.expect("a call"),
        None,
        "no client certificate"
    );
    let peer = client.peer().await.expect("a call");
    assert!(
        peer.is_some_and(|peer| peer.ip().is_loopback() && peer.port() != addr.port()),
        "a handler sees the client's address over TLS too: {peer:?}"
    );

    // By number, the address itself is the name checked.
    let by_number = VaultClient::builder()
        .tls(client_tls(&authority))
        .connect(addr);
    let by_number = within("connecting", by_number).await.expect("connects");
    assert_eq!(by_number.add(1, 1).await.expect("a call"), 2);
}

/// Busy polling reads through TLS as through TCP: a reader that finds nothing in the TLS
/// stream polls it again, one call at a time and many at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_over_tls_with_busy_polling_on_both_ends() {
    let window = std::time::Duration::from_micros(100);
    let authority = Authority::new("servers");
    let tls = server_tls(&authority.issue("vault", SERVER_NAMES));
    let addr = serve(Server::builder().tls(tls).busy_poll(window)).await;
    let connecting = VaultClient::builder()
        .tls(client_tls(&authority))
        .busy_poll(window)
        .connect(format!("localhost:{}", addr.port()));
    let client = within("connecting", connecting).await.expect("connects");
    for i in 0..100 {
        assert_eq!(client.add(i, 1).await.expect("a call"), i + 1);
    }
    let calls = (0..32).map(|i| {
        let client = client.clone();
        async move { client.add(i, i).await.expect("a call") }
    });
    let sums = within("calls at once", futures_util::future::join_all(calls)).await;
    assert_eq!(sums, (0..32).map(|i| 2 * i).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_server_certificate_from_an_unknown_authority_is_refused() {
    let addr = serve(Server::builder().tls(server_tls(
        &Authority::new("servers").issue("vault", SERVER_NAMES),
    )))
    .await;
    let stranger = Authority::new("someone else");
    let message = tls_failure(connect(addr, client_tls(&stranger)).await);
    assert!(message.contains("certificate was refused"), "{message}");
    assert!(message.contains("UnknownIssuer"), "{message}");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused_unless_that_name_is_asked_for() {
    let authority = Authority::new("servers");
    let issued = authority.issue("vault", &["vault.internal"]);
    let addr = serve(Server::builder().tls(server_tls(&issued))).await;
    let message = tls_failure(connect(addr, client_tls(&authority)).await);
    assert!(message.contains("NotValidForName"), "{message}");

    let tls = client_tls(&authority)
        .server_name("vault.internal")
        .expect("a name");
    let client = connect(addr, tls)
        .await
        .expect("connects under the name asked for");
    assert_eq!(client.add(2, 2).await.expect("a call"), 4);
}

/// The mutual-TLS setting of the tests below: servers signed by one authority, clients by
/// another, which the server requires.
struct Mutual {
    servers: Authority,
    clients: Authority,
    addr: SocketAddr,
}

impl Mutual {
    async fn start() -> Mutual {
        let servers = Authority::new("servers");
        let clients = Authority::new("clients");
        let tls = server_tls(&servers.issue("vault", SERVER_NAMES))
            .require_client_certificates(clients.pem())
            .expect("the clients' authority");
        let addr = serve(Server::builder().tls(tls)).await;
        Mutual {
            servers,
            clients,
            addr,
        }
    }

    /// Connects presenting `issued`.
    async fn connect_as(&self, issued: &Issued) -> Result<VaultClient, RpcError> {
        let tls = client_tls(&self.servers)
            .identity_pem(&issued.chain, &issued.key)
            .expect("the client's certificate");
        connect(self.addr, tls).await
    }
}

#[tokio::test]
async fn with_mutual_tls_a_handler_reads_the_clients_verified_certificate() {
    let mutual = Mutual::start().await;
    let worker = mutual
        .clients
        .issue("worker-1", &["worker-1.pool.internal", "10.0.0.7"]);
    let client = mutual.connect_as(&worker).await.expect("connects");
    let caller = client.whoami().await.expect("a call").expect("an identity");
    assert_eq!(caller.subject, "CN=worker-1");
    assert_eq!(caller.common_name.as_deref(), Some("worker-1"));
    assert_eq!(caller.names, ["worker-1.pool.internal", "10.0.0.7"]);
    assert_eq!(caller.chain, worker.ders, "the chain as the client sent it");
}

#[tokio::test]
async fn with_mutual_tls_a_client_without_a_certificate_is_refused() {
    let mutual = Mutual::start().await;
    let message = tls_failure(connect(mutual.addr, client_tls(&mutual.servers)).await);
    assert!(message.contains("requires a certificate"), "{message}");
}

#[tokio::test]
async fn with_mutual_tls_a_client_certificate_from_another_authority_is_refused() {
    let mutual = Mutual::start().await;
    let impostor = Authority::new("clients").issue("worker-1", &["worker-1.pool.internal"]);
    let message = tls_failure(mutual.connect_as(&impostor).await);
    assert!(
        message.contains("did not accept this side's certificate"),
        "{message}"
    );
}

#[tokio::test]
async fn with_mutual_tls_an_expired_client_certificate_is_refused() {
    let mutual = Mutual::start().await;
    let expired = mutual
        .clients
        .issue_expired("worker-1", &["worker-1.pool.internal"]);
    let message = tls_failure(mutual.connect_as(&expired).await);
    assert!(message.contains("expired"), "{message}");
}

#[tokio::test]
async fn a_plaintext_client_of_a_tls_server_is_told_at_once() {
    let authority = Authority::new("servers");
    let addr =
        serve(Server::builder().tls(server_tls(&authority.issue("vault", SERVER_NAMES)))).await;
    let plain = within("connecting", VaultClient::connect(addr)).await;
    match plain {
        Err(RpcError::Handshake(message)) => assert!(message.contains("speaks TLS"), "{message}"),
        other => panic!("expected a handshake failure naming TLS, got {other:?}"),
    }
}

#[tokio::test]
async fn a_tls_client_of_a_plaintext_server_is_told_at_once() {
    let addr = serve(Server::builder()).await;
    let message = tls_failure(connect(addr, client_tls(&Authority::new("servers"))).await);
    assert!(message.contains("may not speak TLS"), "{message}");
}

/// A stranger that opens a connection and says nothing is dropped at the handshake timeout:
/// the TLS handshake counts against it.
#[tokio::test]
async fn a_client_stalled_in_the_tls_handshake_is_dropped() {
    let authority = Authority::new("servers");
    let builder = Server::builder()
        .tls(server_tls(&authority.issue("vault", SERVER_NAMES)))
        .handshake_timeout(Duration::from_millis(100));
    let addr = serve(builder).await;
    let mut silent = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let mut rest = Vec::new();
    // Closed or reset: either way, nothing was sent.
    let _ = within("the server to drop it", silent.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "the server sent {rest:?}");
    // The server serves on.
    let client = connect(addr, client_tls(&authority))
        .await
        .expect("connects");
    assert_eq!(client.add(1, 2).await.expect("a call"), 3);
}

#[tokio::test]
async fn a_reloaded_certificate_serves_new_connections_while_open_ones_keep_running() {
    let old = Authority::new("old servers");
    let new = Authority::new("new servers");
    let tls = server_tls(&old.issue("vault", SERVER_NAMES));
    let addr = serve(Server::builder().tls(tls.clone())).await;
    let before = connect(addr, client_tls(&old)).await.expect("connects");
    assert_eq!(before.add(1, 1).await.expect("a call"), 2);

    let renewed = new.issue("vault", SERVER_NAMES);
    tls.reload_pem(&renewed.chain, &renewed.key)
        .expect("reloads");

    let after = connect(addr, client_tls(&new))
        .await
        .expect("connects to the new certificate");
    assert_eq!(after.add(2, 2).await.expect("a call"), 4);
    let message = tls_failure(connect(addr, client_tls(&old)).await);
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert_eq!(
        before.add(3, 3).await.expect("the open connection"),
        6,
        "the connection made before the reload keeps running"
    );

    let broken = tls.reload_pem(&renewed.chain, "not a key");
    assert!(broken.is_err(), "a bad key is refused");
    let still = connect(addr, client_tls(&new))
        .await
        .expect("the certificate kept");
    assert_eq!(still.add(0, 1).await.expect("a call"), 1);
}

/// Every endpoint of a balanced client connects over TLS, and a connection lost when its
/// server restarts is made again over TLS.
#[tokio::test]
async fn balanced_and_reconnected_connections_use_tls() {
    let authority = Authority::new("servers");
    let issued = authority.issue("vault", SERVER_NAMES);
    let first = serve(Server::builder().tls(server_tls(&issued))).await;
    let second = serve(Server::builder().tls(server_tls(&issued))).await;
    let client = VaultClient::builder()
        .tls(client_tls(&authority))
        .balance([first, second]);
    for n in 0..20 {
        assert_eq!(client.add(n, 1).await.expect("a call"), n + 1);
    }
    // A pool that follows a DNS name checks each server's certificate against that name.
    let resolved = VaultClient::builder().tls(client_tls(&authority)).resolve(
        format!("localhost:{}", first.port()),
        Duration::from_secs(60),
    );
    let resolved = within("resolving", resolved).await.expect("resolves");
    assert_eq!(resolved.add(5, 5).await.expect("a call"), 10);

    let (_held, addr) = held_loopback_port();
    let server = Server::builder().tls(server_tls(&issued)).bind(addr);
    let server = server.await.expect("binds");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped = async {
        let _ = stopped.await;
    };
    let serving = tokio::spawn(server.serve_with_shutdown(VaultServer::new(MyVault), stopped));
    let lone = connect(addr, client_tls(&authority))
        .await
        .expect("connects");
    assert_eq!(lone.add(1, 1).await.expect("a call"), 2);
    stop.send(()).expect("the server listens for it");
    within("the shutdown", serving)
        .await
        .expect("joins")
        .expect("shuts down");
    let again = Server::builder().tls(server_tls(&issued)).bind(addr);
    let again = again.await.expect("binds the same port again");
    tokio::spawn(again.serve(VaultServer::new(MyVault)));
    // The first calls may still meet the closed connection; the client then connects again,
    // over TLS.
    let reconnected = async {
        loop {
            if let Ok(sum) = lone.add(2, 2).await {
                return sum;
            }
        }
    };
    assert_eq!(within("a call after the restart", reconnected).await, 4);
}

/// Printed, TLS settings say what they hold and nothing of a key.
#[test]
fn tls_settings_print_what_they_hold() {
    let authority = Authority::new("servers");
    let issued = authority.issue("vault", SERVER_NAMES);
    let server = server_tls(&issued);
    assert_eq!(format!("{server:?}"), "ServerTls { reloadable: true, .. }");
    let client = client_tls(&authority)
        .identity_pem(&issued.chain, &issued.key)
        .expect("the client's certificate")
        .server_name("vault.internal")
        .expect("a name");
    assert_eq!(
        format!("{client:?}"),
        "ClientTls { roots: Some(1), presents_a_certificate: true, \
         server_name: Some(DnsName(\"vault.internal\")), .. }"
    );
}

#[tokio::test]
async fn a_server_reads_its_certificate_and_key_from_files() {
    let authority = Authority::new("servers");
    let issued = authority.issue("vault", SERVER_NAMES);
    let dir = rpc_tests::ScratchDir::new("tls-files");
    let (chain, key) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&chain, &issued.chain).expect("writes");
    std::fs::write(&key, &issued.key).expect("writes");
    let tls = ServerTls::from_pem_files(&chain, &key).expect("reads both");
    let missing = ServerTls::from_pem_files(dir.join("none.pem"), &key);
    drop(dir);

    let addr = serve(Server::builder().tls(tls)).await;
    let client = connect(addr, client_tls(&authority))
        .await
        .expect("connects");
    assert_eq!(client.add(2, 3).await.expect("a call"), 5);
    let error = missing.expect_err("no such file");
    assert!(error.to_string().contains("none.pem"), "{error}");
}
