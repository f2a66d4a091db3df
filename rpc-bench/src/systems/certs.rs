//! The certificates of the TLS systems: an authority and a server certificate for `localhost`
//! and 127.0.0.1, made by rcgen once per run. The benchmark writes them to a directory and
//! hands its path to the server processes it starts, which read them from there.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// The environment variable that gives a server process the certificates' directory.
pub const DIR_VARIABLE: &str = "RPC_BENCH_CERTS";

/// PEM text of the authority, the server's certificate and the server's key.
#[derive(Debug)]
pub struct Certs {
    pub authority: String,
    pub server: String,
    pub key: String,
}

/// The run's certificates: read from the directory the parent process named, or made here.
pub fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        let dir = dir();
        let read = |file: &str| std::fs::read_to_string(dir.join(file)).expect("a certificate");
        Certs {
            authority: read("ca.pem"),
            server: read("server.pem"),
            key: read("server.key"),
        }
    })
}

/// The directory this process made for the run's certificates, if it made one.
static MADE: OnceLock<PathBuf> = OnceLock::new();

/// The directory of the run's certificates, made on first use unless a parent process named
/// one.
pub fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| match std::env::var_os(DIR_VARIABLE) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let dir = std::env::temp_dir().join(format!("rpc-bench-certs-{}", std::process::id()));
            make(&dir);
            let _ = MADE.set(dir.clone());
            dir
        }
    })
}

/// Removes, when dropped, the certificates' directory this process made (with a private key
/// in it), so that runs leave none behind; one a parent process named is its to remove.
#[derive(Debug)]
pub struct RemovedAtExit;

impl Drop for RemovedAtExit {
    fn drop(&mut self) {
        if let Some(dir) = MADE.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Writes an authority, and a server certificate it signs, to `dir`.
fn make(dir: &Path) {
    std::fs::create_dir_all(dir).expect("a directory for the certificates");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "rpc-bench");
    let authority_key = KeyPair::generate().expect("a key");
    let authority = params.self_signed(&authority_key).expect("signs");
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let params = CertificateParams::new(names).expect("parameters");
    let key = KeyPair::generate().expect("a key");
    let server = params
        .signed_by(&key, &authority, &authority_key)
        .expect("signs");
    let write = |file: &str, text: String| std::fs::write(dir.join(file), text).expect("writes");
    write("ca.pem", authority.pem());
    write("server.pem", server.pem());
    write("server.key", key.serialize_pem());
}
