//! The addresses a client connects to, and the host name each one carries, which a TLS client
//! checks the server's certificate against.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use tokio::net::ToSocketAddrs;

/// An address a client can connect to: anything tokio resolves (`"host:port"`, a
/// `SocketAddr`, `(host, port)`, ...). It also says which host it names, if it names one: over
/// TLS, the server's certificate must carry that name.
pub trait ServerAddr: ToSocketAddrs {
    /// The host name or IP address as written, without the port; `None` for an address given
    /// as numbers only.
    fn host(&self) -> Option<String>;

    /// The address as written (`host:port`): what names the server in errors and in a pool's
    /// listing, and what a balanced client resolves each time it connects.
    fn endpoint(&self) -> String;
}

/// The host of `"host:port"` (or `"[v6]:port"`).
pub(crate) fn host_of(name: &str) -> Option<String> {
    let (host, _port) = name.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| host.to_owned())
}

impl ServerAddr for str {
    fn host(&self) -> Option<String> {
        host_of(self)
    }

    fn endpoint(&self) -> String {
        self.to_owned()
    }
}

impl ServerAddr for String {
    fn host(&self) -> Option<String> {
        host_of(self)
    }

    fn endpoint(&self) -> String {
        self.clone()
    }
}

impl ServerAddr for (&str, u16) {
    fn host(&self) -> Option<String> {
        Some(self.0.to_owned())
    }

    fn endpoint(&self) -> String {
        format!("{}:{}", self.0, self.1)
    }
}

impl ServerAddr for (String, u16) {
    fn host(&self) -> Option<String> {
        Some(self.0.clone())
    }

    fn endpoint(&self) -> String {
        format!("{}:{}", self.0, self.1)
    }
}

impl<T: ServerAddr + ?Sized> ServerAddr for &T {
    fn host(&self) -> Option<String> {
        (**self).host()
    }

    fn endpoint(&self) -> String {
        (**self).endpoint()
    }
}

/// Addresses given as numbers name no host: a TLS client checks the certificate against the IP
/// address it connected to.
macro_rules! numeric {
    ($($address:ty),*) => {$(
        impl ServerAddr for $address {
            fn host(&self) -> Option<String> {
                None
            }

            fn endpoint(&self) -> String {
                SocketAddr::from(*self).to_string()
            }
        }
    )*};
}

numeric!(
    SocketAddr,
    SocketAddrV4,
    SocketAddrV6,
    (IpAddr, u16),
    (Ipv4Addr, u16),
    (Ipv6Addr, u16)
);

/// The first address of several is what names them.
impl ServerAddr for &[SocketAddr] {
    fn host(&self) -> Option<String> {
        None
    }

    fn endpoint(&self) -> String {
        let addrs: Vec<String> = self.iter().map(ToString::to_string).collect();
        addrs.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_address_names_its_host() {
        assert_eq!(
            "calc.internal:7443".host().as_deref(),
            Some("calc.internal")
        );
        assert_eq!(
            String::from("10.0.0.7:1").host().as_deref(),
            Some("10.0.0.7")
        );
        assert_eq!("[::1]:7443".host().as_deref(), Some("::1"));
        assert_eq!(
            ("calc.internal", 7443).host().as_deref(),
            Some("calc.internal")
        );
        assert_eq!("no-port".host(), None);
        let numeric = SocketAddr::from(([127, 0, 0, 1], 7443));
        assert_eq!(numeric.host(), None);
    }

    /// Each form of address names its server as it was written, which errors and a pool's
    /// listing show and a balanced client resolves.
    #[test]
    fn an_address_is_named_as_written() {
        assert_eq!("calc.internal:7443".endpoint(), "calc.internal:7443");
        assert_eq!(String::from("[::1]:7443").endpoint(), "[::1]:7443");
        assert_eq!(("calc.internal", 7443).endpoint(), "calc.internal:7443");
        assert_eq!(
            (String::from("calc.internal"), 7443).endpoint(),
            "calc.internal:7443"
        );
        assert_eq!(
            (String::from("calc.internal"), 7443).host().as_deref(),
            Some("calc.internal")
        );
        assert_eq!((&&"calc.internal:7443").endpoint(), "calc.internal:7443");
        assert_eq!(
            (&"calc.internal:7443").host().as_deref(),
            Some("calc.internal")
        );
        let v4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 7), 7443);
        let v6 = SocketAddrV6::new(Ipv6Addr::LOCALHOST, 7443, 0, 0);
        assert_eq!(SocketAddr::from(v4).endpoint(), "10.0.0.7:7443");
        assert_eq!(v4.endpoint(), "10.0.0.7:7443");
        assert_eq!(v6.endpoint(), "[::1]:7443");
        assert_eq!(
            (IpAddr::from([10, 0, 0, 7]), 7443).endpoint(),
            "10.0.0.7:7443"
        );
        assert_eq!(
            (Ipv4Addr::new(10, 0, 0, 7), 7443).endpoint(),
            "10.0.0.7:7443"
        );
        assert_eq!((Ipv6Addr::LOCALHOST, 7443).endpoint(), "[::1]:7443");
        let several = [SocketAddr::from(v4), SocketAddr::from(v6)];
        assert_eq!((&several[..]).endpoint(), "10.0.0.7:7443, [::1]:7443");
        assert_eq!((&several[..]).host(), None);
    }
}
