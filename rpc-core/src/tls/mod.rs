//! Calls between machines over TLS, with [rustls] (its `ring` backend): a server presents a
//! certificate, a client verifies it against the authorities it trusts, and with mutual TLS the
//! server verifies the client's certificate too.
//!
//! Enable the crate's `tls` feature. Then give the server a [`ServerTls`] and the client a
//! [`ClientTls`]; everything else (limits, keep-alive, graceful shutdown, reconnection,
//! balancing, resolution) works as over plain TCP.
//!
//! ```no_run
//! # #[rpc_core::service]
//! # pub trait Calc { async fn add(&self, a: i64, b: i64) -> i64; }
//! # struct MyCalc;
//! # impl Calc for MyCalc { async fn add(&self, a: i64, b: i64) -> i64 { a + b } }
//! use rpc_core::tls::{ClientTls, ServerTls};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The server: its certificate chain and key, and the authority its clients' certificates
//! // must come from.
//! let tls = ServerTls::from_pem_files("server.pem", "server.key")?
//!     .require_client_certificates(std::fs::read("clients-ca.pem")?)?;
//! let server = rpc_core::Server::builder().tls(tls).bind("0.0.0.0:7443").await?;
//! tokio::spawn(server.serve(CalcServer::new(MyCalc)));
//!
//! // A client: the authority that signed the server's certificate, and its own identity.
//! let tls = ClientTls::trusting_pem(std::fs::read("server-ca.pem")?)?
//!     .identity_pem(std::fs::read("worker.pem")?, std::fs::read("worker.key")?)?;
//! let calc = CalcClient::builder().tls(tls).connect("calc.internal:7443").await?;
//! assert_eq!(calc.add(2, 3).await?, 5);
//! # Ok(())
//! # }
//! ```
//!
//! The client checks the server's certificate against the host name it connected to (or, given
//! a bare IP address, that address), unless [`ClientTls::server_name`] says otherwise.

mod certs;
mod identity;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The rustls this crate uses, for [`ServerTls::from_config`] and [`ClientTls::from_config`].
pub use tokio_rustls::rustls;

use crate::RpcError;
use crate::peer::PeerIdentity;
use crate::socket::TcpUnderTls;
use crate::transport::TlsOverTcp;
use certs::{Identity, Reloadable};

/// A server's side of a TLS session, over TCP.
pub(crate) type ServerStream = tokio_rustls::server::TlsStream<TcpUnderTls>;

/// A client's side of a TLS session, over TCP.
pub(crate) type ClientStream = tokio_rustls::client::TlsStream<TcpUnderTls>;

/// A TLS setting could not be made: a file could not be read, a PEM held nothing usable, or
/// rustls refused the result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("could not read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The PEM text holds no certificate.
    #[error("the PEM text holds no certificate")]
    NoCertificate,
    /// The PEM text holds no private key.
    #[error("the PEM text holds no private key (PKCS#8, PKCS#1 or SEC1)")]
    NoPrivateKey,
    /// The PEM text is malformed.
    #[error("the PEM text could not be read: {0}")]
    Pem(String),
    /// The name given as the server's is neither a DNS name nor an IP address.
    #[error("`{0}` is not a valid server name: give a DNS name or an IP address")]
    ServerName(String),
    /// rustls refused the certificates, the key or the settings.
    #[error("rustls refused the TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
    /// The platform's trusted authorities could not be loaded.
    #[error("the platform's root certificates could not be loaded: {0}")]
    PlatformRoots(String),
    /// The setting was built from a rustls configuration (`from_config`), which decides this
    /// itself: change the configuration instead.
    #[error(
        "this TLS setting was built from a rustls configuration, which decides this itself: \
         change the configuration instead"
    )]
    FromConfig,
}

/// The crypto provider every configuration here uses: rustls' `ring` backend, which builds with
/// a C compiler alone.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's side of TLS: its certificate and key, and whether clients must present
/// certificates of their own. Give it to [`ServerBuilder::tls`](crate::ServerBuilder::tls).
///
/// Clones share the certificate: [`ServerTls::reload_pem`] on any of them replaces it for new
/// connections, while the connections already open keep running.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    certificate: Option<Arc<Reloadable>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("reloadable", &self.certificate.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// A server presenting the certificate chain (its own certificate first) and private key
    /// in `chain` and `key`, PEM-encoded. Clients need not present certificates.
    pub fn from_pem(chain: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Result<Self, TlsError> {
        let identity = Identity::from_pem(chain.as_ref(), key.as_ref())?;
        let certificate = Arc::new(Reloadable::new(identity.certified_key(&provider())?));
        let config = server_config(&certificate, None)?;
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate: Some(certificate),
        })
    }

    /// [`ServerTls::from_pem`] with the chain and key read from files.
    pub fn from_pem_files(
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        Self::from_pem(certs::read(chain.as_ref())?, certs::read(key.as_ref())?)
    }

    /// Uses a rustls configuration as it is, for settings this type does not offer. Its
    /// certificate cannot then be reloaded through [`ServerTls::reload_pem`].
    pub fn from_config(config: Arc<ServerConfig>) -> Self {
        ServerTls {
            acceptor: TlsAcceptor::from(config),
            certificate: None,
        }
    }

    /// Requires every client to present a certificate signed by one of the authorities in
    /// `trusted`, PEM-encoded, and valid now. A client without one, or with another, is refused
    /// during the handshake; a handler reads the accepted client's certificate with
    /// [`Context::peer_identity`](crate::Context::peer_identity).
    pub fn require_client_certificates(self, trusted: impl AsRef<[u8]>) -> Result<Self, TlsError> {
        let Some(certificate) = self.certificate else {
            return Err(TlsError::FromConfig);
        };
        let roots = certs::roots_from_pem(trusted.as_ref())?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|error| TlsError::Rustls(rustls::Error::General(error.to_string())))?;
        let config = server_config(&certificate, Some(verifier))?;
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate: Some(certificate),
        })
    }

    /// Replaces the certificate chain and key that new connections are offered. Connections
    /// already open keep the one they were made with. Fails, changing nothing, if the new chain
    /// and key cannot be used.
    pub fn reload_pem(
        &self,
        chain: impl AsRef<[u8]>,
        key: impl AsRef<[u8]>,
    ) -> Result<(), TlsError> {
        let Some(certificate) = &self.certificate else {
            return Err(TlsError::FromConfig);
        };
        let identity = Identity::from_pem(chain.as_ref(), key.as_ref())?;
        certificate.replace(identity.certified_key(&provider())?);
        Ok(())
    }

    /// Runs the server's side of the handshake on `io`, returning the encrypted stream and the
    /// client's verified certificate, if it presented one.
    pub(crate) async fn accept(
        &self,
        io: TcpStream,
    ) -> io::Result<(TlsOverTcp<ServerStream>, Option<Arc<PeerIdentity>>)> {
        let io = TcpUnderTls::new(io);
        let reads_past_tokio = io.switch();
        let stream = self.acceptor.accept(io).await?;
        let identity = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(identity::read)
            .map(Arc::new);
        Ok((TlsOverTcp::new(stream, reads_past_tokio), identity))
    }
}

/// A server configuration choosing its certificate through `certificate`.
fn server_config(
    certificate: &Arc<Reloadable>,
    clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<ServerConfig, TlsError> {
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match clients {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    Ok(builder.with_cert_resolver(Arc::clone(certificate) as _))
}

/// The client's side of TLS: the authorities it trusts to sign servers' certificates, and,
/// for mutual TLS, the certificate it presents. Give it to
/// [`ClientBuilder::tls`](crate::ClientBuilder::tls).
#[derive(Clone)]
pub struct ClientTls {
    /// `None` for a client built from a rustls configuration.
    roots: Option<Arc<RootCertStore>>,
    /// Whether it presents a certificate of its own.
    presents_certificate: bool,
    server_name: Option<ServerName<'static>>,
    connector: TlsConnector,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("roots", &self.roots.as_ref().map(|roots| roots.len()))
            .field("presents_a_certificate", &self.presents_certificate)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// A client trusting the certificate authorities in `trusted`, PEM-encoded.
    pub fn trusting_pem(trusted: impl AsRef<[u8]>) -> Result<Self, TlsError> {
        Self::trusting(certs::roots_from_pem(trusted.as_ref())?)
    }

    /// A client trusting the authorities the platform trusts (the system's certificate store).
    pub fn platform_roots() -> Result<Self, TlsError> {
        Self::trusting(certs::platform_roots()?)
    }

    fn trusting(roots: RootCertStore) -> Result<Self, TlsError> {
        let roots = Arc::new(roots);
        let connector = connector(&roots, None)?;
        Ok(ClientTls {
            roots: Some(roots),
            presents_certificate: false,
            server_name: None,
            connector,
        })
    }

    /// Uses a rustls configuration as it is, for settings this type does not offer.
    pub fn from_config(config: Arc<ClientConfig>) -> Self {
        ClientTls {
            roots: None,
            presents_certificate: false,
            server_name: None,
            connector: TlsConnector::from(config),
        }
    }

    /// Presents the certificate chain (its own certificate first) and private key in `chain`
    /// and `key`, PEM-encoded, to servers that require client certificates. (A client built
    /// with [`ClientTls::from_config`] presents what its configuration says.)
    pub fn identity_pem(
        mut self,
        chain: impl AsRef<[u8]>,
        key: impl AsRef<[u8]>,
    ) -> Result<Self, TlsError> {
        let Some(roots) = &self.roots else {
            return Err(TlsError::FromConfig);
        };
        let identity = Identity::from_pem(chain.as_ref(), key.as_ref())?;
        self.connector = connector(roots, Some(&identity))?;
        self.presents_certificate = true;
        Ok(self)
    }

    /// Checks every server's certificate against `name` (a DNS name or an IP address) rather
    /// than the host each address names: for servers reached by IP address, or through names
    /// their certificates do not carry.
    pub fn server_name(mut self, name: impl Into<String>) -> Result<Self, TlsError> {
        let name = name.into();
        let parsed = ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name))?;
        self.server_name = Some(parsed);
        Ok(self)
    }

    /// Runs the client's side of the handshake with the server at `addr`, reached through the
    /// host name `host` if there was one.
    pub(crate) async fn connect(
        &self,
        io: TcpStream,
        host: Option<&str>,
        addr: SocketAddr,
    ) -> Result<TlsOverTcp<ClientStream>, RpcError> {
        let name = match (&self.server_name, host) {
            (Some(name), _) => name.clone(),
            (None, Some(host)) => ServerName::try_from(host.to_owned()).map_err(|_| {
                RpcError::Tls(format!("`{host}` is not a name a certificate can carry"))
            })?,
            (None, None) => ServerName::IpAddress(addr.ip().into()),
        };
        let io = TcpUnderTls::new(io);
        let reads_past_tokio = io.switch();
        let stream = self.connector.connect(name, io).await;
        let stream = stream.map_err(|error| handshake_failed(&error))?;
        Ok(TlsOverTcp::new(stream, reads_past_tokio))
    }
}

/// A client configuration trusting `roots` and presenting `identity`.
fn connector(
    roots: &Arc<RootCertStore>,
    identity: Option<&Identity>,
) -> Result<TlsConnector, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(Arc::clone(roots));
    let config = match identity {
        Some(identity) => builder.with_client_auth_cert(identity.chain(), identity.key())?,
        None => builder.with_no_client_auth(),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// What a rustls error means, as a sentence.
fn describe(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(why) => {
            format!("the peer's certificate was refused: {why:?}")
        }
        rustls::Error::NoCertificatesPresented => {
            "the peer presented no certificate, and one is required".to_owned()
        }
        rustls::Error::AlertReceived(alert) => {
            use rustls::AlertDescription as Alert;
            let why = match alert {
                Alert::CertificateRequired => {
                    "the peer requires a certificate, and this side presented none"
                }
                Alert::CertificateExpired => "the peer found this side's certificate expired",
                Alert::UnknownCA | Alert::BadCertificate | Alert::DecryptError => {
                    "the peer did not accept this side's certificate"
                }
                _ => "the peer refused the handshake",
            };
            format!("{why} (alert `{alert:?}`)")
        }
        other => other.to_string(),
    }
}

/// The error for a handshake that failed with `error`, as a sentence.
pub(crate) fn handshake_failed(error: &io::Error) -> RpcError {
    if let Some(tls) = tls_error(error) {
        return RpcError::Tls(describe(tls));
    }
    match error.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => RpcError::Tls(
            "the server closed the connection during the handshake: it may not speak TLS".into(),
        ),
        _ => RpcError::Tls(error.to_string()),
    }
}

/// `error`, from a handshake that had passed TLS, as the TLS refusal it was if the server ended
/// the connection with a TLS alert: with TLS 1.3 a server judges the client's certificate only
/// after the client has finished its side of the handshake, so a refusal arrives as the first
/// thing read.
pub(crate) fn refused_after_handshake(error: RpcError) -> RpcError {
    match &error {
        RpcError::Io(io) | RpcError::Connect { cause: io, .. } => match tls_error(io) {
            Some(tls) => RpcError::Tls(describe(tls)),
            None => error,
        },
        _ => error,
    }
}

/// The rustls error inside `error`, if there is one: a certificate refused, or an alert from
/// the peer.
pub(crate) fn tls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}
