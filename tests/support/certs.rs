//! Certificates made at test time: a certificate authority, and certificates it signs. No
//! private key is committed anywhere.

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};

/// A certificate authority that signs server and client certificates.
pub struct Authority {
    certificate: Certificate,
    key: KeyPair,
}

/// A certificate chain and its key, PEM-encoded.
pub struct Issued {
    /// The certificate, then the authority's.
    pub chain: String,
    /// The certificate's private key.
    pub key: String,
    /// The chain's certificates, DER-encoded, in the same order.
    pub ders: Vec<Vec<u8>>,
}

impl Authority {
    /// A new authority named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a key");
        let certificate = params.self_signed(&key).expect("signs itself");
        Authority { certificate, key }
    }

    /// The authority's certificate, PEM-encoded: what a peer that trusts it is given.
    pub fn pem(&self) -> String {
        self.certificate.pem()
    }

    /// A certificate for `common_name` carrying the subject alternative `names` (DNS names or
    /// IP addresses), valid now.
    pub fn issue(&self, common_name: &str, names: &[&str]) -> Issued {
        self.sign(common_name, names, |_| {})
    }

    /// The same, but valid only in the year 2000.
    pub fn issue_expired(&self, common_name: &str, names: &[&str]) -> Issued {
        self.sign(common_name, names, |params| {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        })
    }

    fn sign(
        &self,
        common_name: &str,
        names: &[&str],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Issued {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        adjust(&mut params);
        let key = KeyPair::generate().expect("a key");
        let certificate = params
            .signed_by(&key, &self.certificate, &self.key)
            .expect("signs");
        Issued {
            chain: format!("{}{}", certificate.pem(), self.certificate.pem()),
            key: key.serialize_pem(),
            ders: vec![certificate.der().to_vec(), self.certificate.der().to_vec()],
        }
    }
}
