//! Certificates and keys: read from PEM, and the server's certificate, which can be replaced
//! while the server runs.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, RootCertStore};

use super::TlsError;

/// Reads a whole file.
pub(super) fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in `pem`; at least one.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem(error.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(chain)
}

/// The authorities in `pem`, as a store to verify peers against.
pub(super) fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(pem)? {
        roots.add(certificate)?;
    }
    Ok(roots)
}

/// The authorities the platform trusts.
pub(super) fn platform_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none were found".to_owned(), ToString::to_string);
        return Err(TlsError::PlatformRoots(why));
    }
    let mut roots = RootCertStore::empty();
    // A platform store often holds a few certificates rustls cannot use; the rest still count.
    roots.add_parsable_certificates(found.certs);
    Ok(roots)
}

/// A certificate chain and the private key of its first certificate.
pub(super) struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Identity {
    // The key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    pub(super) fn from_pem(chain: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let chain = certificates(chain)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|error| match error {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey,
            other => TlsError::Pem(other.to_string()),
        })?;
        Ok(Identity { chain, key })
    }

    pub(super) fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.clone()
    }

    pub(super) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// The chain and key ready to sign handshakes, checked to belong together.
    pub(super) fn certified_key(
        &self,
        provider: &CryptoProvider,
    ) -> Result<CertifiedKey, TlsError> {
        let key = provider.key_provider.load_private_key(self.key())?;
        let certified = CertifiedKey::new(self.chain(), key);
        certified.keys_match()?;
        Ok(certified)
    }
}

/// The server's certificate, replaceable while the server runs.
#[derive(Debug)]
pub(super) struct Reloadable {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Reloadable {
    pub(super) fn new(certificate: CertifiedKey) -> Self {
        Reloadable {
            current: RwLock::new(Arc::new(certificate)),
        }
    }

    /// Offers `certificate` to the connections made from now on.
    pub(super) fn replace(&self, certificate: CertifiedKey) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(certificate);
    }
}

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_prints_how_many_certificates_it_holds_and_not_its_key() {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("a certificate");
        let chain = certified.cert.pem();
        let key = certified.key_pair.serialize_pem();
        let identity = Identity::from_pem(chain.as_bytes(), key.as_bytes()).expect("an identity");
        assert_eq!(format!("{identity:?}"), "Identity { certificates: 1, .. }");
    }

    #[test]
    fn a_file_is_read_whole_or_the_error_names_it() {
        let dir = std::env::temp_dir().join(format!("rpc-core-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory");
        let path = dir.join("chain.pem");
        std::fs::write(&path, b"the PEM text").expect("writes");
        assert_eq!(read(&path).expect("reads"), b"the PEM text");

        let missing = dir.join("missing.pem");
        let error = read(&missing).expect_err("no such file");
        assert!(
            matches!(&error, TlsError::Read { path, .. } if *path == missing),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .starts_with(&format!("could not read {}: ", missing.display())),
            "{error}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
