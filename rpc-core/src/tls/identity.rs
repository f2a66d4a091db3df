//! Reading who a client is from the certificate chain it presented.

use std::net::IpAddr;

use tokio_rustls::rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use crate::peer::PeerIdentity;

/// The identity in a verified `chain`; `None` for an empty chain or one rustls accepted but
/// this parser cannot read.
pub(super) fn read(chain: &[CertificateDer<'_>]) -> Option<PeerIdentity> {
    let (_, certificate) = x509_parser::parse_x509_certificate(chain.first()?).ok()?;
    let subject = certificate.subject();
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|name| name.as_str().ok())
        .map(str::to_owned);
    let mut names = Vec::new();
    if let Ok(Some(alternatives)) = certificate.subject_alternative_name() {
        for name in &alternatives.value.general_names {
            match name {
                GeneralName::DNSName(name)
                | GeneralName::URI(name)
                | GeneralName::RFC822Name(name) => names.push((*name).to_owned()),
                GeneralName::IPAddress(bytes) => {
                    let ip = <[u8; 4]>::try_from(*bytes)
                        .map(IpAddr::from)
                        .or_else(|_| <[u8; 16]>::try_from(*bytes).map(IpAddr::from));
                    if let Ok(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let chain = chain
        .iter()
        .map(|certificate| certificate.to_vec())
        .collect();
    Some(PeerIdentity::new(
        chain,
        subject.to_string(),
        common_name,
        names,
    ))
}
