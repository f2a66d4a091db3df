//! Who is at the other end of a connection, as far as the transport can tell.

use std::net::SocketAddr;
use std::sync::Arc;

/// What a server knows of a connection's client before any call: its address, the
/// certificate it proved it holds (over TLS with client certificates), and the process behind a
/// Unix socket.
#[derive(Debug, Clone, Default)]
pub(crate) struct Peer {
    pub(crate) addr: Option<SocketAddr>,
    pub(crate) identity: Option<Arc<PeerIdentity>>,
    pub(crate) credentials: Option<PeerCredentials>,
    /// A client of what the client serves back over its connection, if it does.
    pub(crate) caller: Option<Arc<crate::reverse::Caller>>,
}

/// The user, group and process of a client connected over a Unix socket, as the operating
/// system reports them for the socket (`SO_PEERCRED`): a local server can authorize by user
/// without any secret. Read it in a handler with
/// [`Context::peer_credentials`](crate::Context::peer_credentials).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    uid: u32,
    gid: u32,
    pid: Option<i32>,
}

impl PeerCredentials {
    /// The credentials of the process at the other end of `stream`, if the system tells.
    #[cfg(unix)]
    pub(crate) fn of(stream: &tokio::net::UnixStream) -> Option<Self> {
        let credentials = stream.peer_cred().ok()?;
        Some(PeerCredentials {
            uid: credentials.uid(),
            gid: credentials.gid(),
            pid: credentials.pid(),
        })
    }

    /// The client process's user id.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The client process's group id.
    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// The client process's id, where the system reports it (Linux, Android, macOS and others).
    pub fn pid(&self) -> Option<i32> {
        self.pid
    }
}

/// The certificate a client presented over mutual TLS, verified by the server against the
/// certificate authorities it trusts. Read it in a handler with
/// [`Context::peer_identity`](crate::Context::peer_identity).
///
/// ```ignore
/// let call = rpc_core::Context::current();
/// let Some(client) = call.peer_identity() else { return Err(Denied) };
/// if !client.names().iter().any(|name| name == "worker.internal") { return Err(Denied) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    chain: Vec<Vec<u8>>,
    subject: String,
    common_name: Option<String>,
    names: Vec<String>,
}

impl PeerIdentity {
    /// An identity read from a verified chain.
    #[cfg(feature = "tls")]
    pub(crate) fn new(
        chain: Vec<Vec<u8>>,
        subject: String,
        common_name: Option<String>,
        names: Vec<String>,
    ) -> Self {
        PeerIdentity {
            chain,
            subject,
            common_name,
            names,
        }
    }

    /// The certificates as the client sent them, DER-encoded, its own first, then the
    /// intermediates that lead to a trusted authority.
    pub fn certificate_chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// The client certificate's subject, as a distinguished name (`CN=worker-1, O=Acme`).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The common name (`CN`) in the certificate's subject, if it has one.
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// The certificate's subject alternative names: DNS names, IP addresses, URIs (such as
    /// SPIFFE ids) and email addresses, each as text.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The socket tests run as whoever runs them, often root, whose ids are the zeros a broken
    /// accessor could return too.
    #[test]
    fn credentials_read_back_as_the_system_gave_them() {
        let credentials = PeerCredentials {
            uid: 1000,
            gid: 100,
            pid: Some(42),
        };
        assert_eq!(credentials.uid(), 1000);
        assert_eq!(credentials.gid(), 100);
        assert_eq!(credentials.pid(), Some(42));
    }
}
