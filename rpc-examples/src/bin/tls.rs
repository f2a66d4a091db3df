//! Mutual TLS: a server that admits only clients holding a certificate from its authority, and
//! an interceptor that decides, by the name on that certificate, who may call what.
//!
//! ```text
//! cargo run -p rpc-examples --bin tls                      # all of it, in one process
//! cargo run -p rpc-examples --bin tls -- certs ./certs     # write an authority and certificates
//! cargo run -p rpc-examples --bin tls -- server ./certs 0.0.0.0:7443
//! cargo run -p rpc-examples --bin tls -- client ./certs localhost:7443 teller-1
//! ```
//!
//! The certificates are made by `certs` (with rcgen): one authority that signs the server's
//! certificate (for `localhost` and 127.0.0.1) and the clients' (`teller-1`, `auditor-1`). For
//! machines of your own, make the server's certificate carry the name clients connect to.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};
use rpc_core::tls::{ClientTls, ServerTls};
use rpc_core::{Context, Server, Status};

/// A ledger that only tellers may write to.
#[rpc_core::service]
pub trait Ledger {
    /// Adds `amount` to the balance and returns the new one; tellers only.
    async fn deposit(&self, amount: u64) -> u64;
    /// Who the server took the caller for.
    async fn whoami(&self) -> String;
}

#[derive(Default)]
struct MyLedger {
    balance: std::sync::atomic::AtomicU64,
}

/// The common name on the verified certificate of the caller in `call`.
fn caller(call: &Context) -> Option<&str> {
    call.peer_identity()?.common_name()
}

/// Who may call what, checked before any handler runs: anyone with a certificate may ask who
/// they are; only tellers may deposit.
fn authorize(call: &Context) -> Result<(), Status> {
    match (call.method(), caller(call)) {
        (_, None) => Err(Status::unauthenticated("no certificate with a name")),
        ("deposit", Some(name)) if !name.starts_with("teller-") => {
            Err(Status::permission_denied(format!("{name} is not a teller")))
        }
        _ => Ok(()),
    }
}

impl Ledger for MyLedger {
    async fn deposit(&self, amount: u64) -> u64 {
        let before = self
            .balance
            .fetch_add(amount, std::sync::atomic::Ordering::SeqCst);
        before + amount
    }

    async fn whoami(&self) -> String {
        let call = Context::current();
        caller(&call).unwrap_or("nobody").to_owned()
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ran = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => everything().await,
        ["certs", dir] => write_certs(Path::new(dir)),
        ["server", dir, addr] => serve(Path::new(dir), addr).await,
        ["client", dir, addr, name] => call(Path::new(dir), addr, name).await,
        _ => Err("usage: tls [certs DIR | server DIR ADDR | client DIR ADDR NAME]".into()),
    };
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

type Failure = Box<dyn std::error::Error>;

/// Certificates in a temporary directory, a server, and three clients: a teller, an auditor,
/// and one with no certificate.
async fn everything() -> Result<(), Failure> {
    let dir = std::env::temp_dir().join(format!("rpc-tls-example-{}", std::process::id()));
    write_certs(&dir)?;
    let server = Server::builder()
        .tls(server_tls(&dir)?)
        .intercept(authorize);
    let server = server.bind("127.0.0.1:0").await?;
    let addr = format!("localhost:{}", server.local_addr()?.port());
    tokio::spawn(server.serve(LedgerServer::new(MyLedger::default())));

    call(&dir, &addr, "teller-1").await?;
    call(&dir, &addr, "auditor-1").await?;
    let anonymous = ClientTls::trusting_pem(read(&dir, "ca.pem")?)?;
    match LedgerClient::builder().tls(anonymous).connect(&addr).await {
        Ok(_) => println!("a client with no certificate got in: that is a bug"),
        Err(error) => println!("a client with no certificate: {error}"),
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Serves the ledger at `addr` with the certificates in `dir`.
async fn serve(dir: &Path, addr: &str) -> Result<(), Failure> {
    let server = Server::builder().tls(server_tls(dir)?).intercept(authorize);
    let server = server.bind(addr).await?;
    println!("serving on {} over mutual TLS", server.local_addr()?);
    server.serve(LedgerServer::new(MyLedger::default())).await?;
    Ok(())
}

/// The server's TLS: its certificate, and clients required to hold one from the authority.
fn server_tls(dir: &Path) -> Result<ServerTls, Failure> {
    let tls = ServerTls::from_pem_files(dir.join("server.pem"), dir.join("server.key"))?;
    Ok(tls.require_client_certificates(read(dir, "ca.pem")?)?)
}

/// Connects to `addr` as `name` and deposits 10.
async fn call(dir: &Path, addr: &str, name: &str) -> Result<(), Failure> {
    let tls = ClientTls::trusting_pem(read(dir, "ca.pem")?)?.identity_pem(
        read(dir, &format!("{name}.pem"))?,
        read(dir, &format!("{name}.key"))?,
    )?;
    let ledger = LedgerClient::builder().tls(tls).connect(addr).await?;
    let whoami = ledger.whoami().await?;
    match ledger.deposit(10).await {
        Ok(balance) => println!("{whoami}: deposited 10, the balance is {balance}"),
        Err(refusal @ rpc_core::RpcError::PermissionDenied { .. }) => {
            println!("{whoami}: {refusal}");
        }
        Err(other) => return Err(other.into()),
    }
    Ok(())
}

fn read(dir: &Path, file: &str) -> Result<Vec<u8>, Failure> {
    let path: PathBuf = dir.join(file);
    std::fs::read(&path).map_err(|error| format!("{}: {error}", path.display()).into())
}

/// Writes an authority (`ca.pem`), the server's certificate and key, and two clients'.
fn write_certs(dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(dir)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "example authority");
    let ca_key = KeyPair::generate()?;
    let ca = params.self_signed(&ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    let issue = |name: &str, names: Vec<String>| -> Result<(), Failure> {
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate()?;
        let certificate: Certificate = params.signed_by(&key, &ca, &ca_key)?;
        std::fs::write(dir.join(format!("{name}.pem")), certificate.pem())?;
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
        Ok(())
    };
    issue("server", vec!["localhost".into(), "127.0.0.1".into()])?;
    issue("teller-1", Vec::new())?;
    issue("auditor-1", Vec::new())?;
    println!(
        "wrote ca.pem, server, teller-1 and auditor-1 to {}",
        dir.display()
    );
    Ok(())
}
