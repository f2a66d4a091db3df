//! The handshake: the first frame each side sends.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::io::{AsyncRead, AsyncWrite};

use std::time::Duration;

use super::{FrameReader, FrameWriter, Head, KeepAlive, MAX_FRAME_LEN_CAP, finish_frame};
use crate::RpcError;
use crate::schema::ServiceSchema;
use crate::service::{MethodInfo, ServiceInfo};

/// The first four bytes after a hello's kind byte: "rpcc".
pub(crate) const MAGIC: [u8; 4] = *b"rpcc";

/// The protocol version this crate speaks.
pub(crate) const VERSION: u32 = 2;

/// The largest hello accepted. Generous for any real service, small enough that a peer speaking
/// another protocol is refused at once.
pub(crate) const MAX_HELLO_LEN: usize = 64 * 1024;

/// The methods of one service a peer announced, by name, with their signature fingerprints.
/// Looked up on every call: a sorted map of a few names costs a few comparisons, where hashing
/// the name cost more than the rest of the check, and no table a peer makes up is slow to
/// search.
pub(crate) type Fingerprints = BTreeMap<String, u64>;

/// The handshake frame: who this side is and what it accepts.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Hello<'a> {
    magic: [u8; 4],
    version: u32,
    /// The largest frame payload this side accepts.
    max_frame_len: u32,
    /// The service's name, the trait's identifier.
    service: &'a str,
    /// Every method with its signature fingerprint.
    #[serde(borrow)]
    methods: MethodTable<'a>,
    /// How often this side pings when it has nothing else to send, in milliseconds; 0 if it
    /// does not.
    ping_interval_ms: u64,
    /// How many calls a client may have in flight on the connection at once; 0 for no limit.
    /// A server's limit; clients send 0.
    max_concurrent_calls: u32,
    /// The credit, in bytes, that every stream this side receives starts with; at least 1.
    stream_window: u32,
    /// Whether this side, a client, serves a service back over the connection: appended after
    /// the services table, not a field of the hello's head.
    #[serde(skip)]
    serves_back: bool,
    /// How many calls with a streamed argument a client may have in flight on the connection
    /// at once; 0 for no limit. A server's limit, appended after `serves_back`.
    #[serde(skip)]
    max_uploads: u32,
}

/// What one side learned about the other from its hello.
#[derive(Debug)]
pub(crate) struct PeerInfo {
    /// The largest frame payload the peer accepts.
    pub(crate) max_frame_len: usize,
    /// The service the hello names: for a server, the one this connection's unqualified
    /// requests go to; empty for a generic client.
    pub(crate) service: String,
    /// The methods of that service and their fingerprints.
    pub(crate) methods: Fingerprints,
    /// Every service a server of several announced, with its methods, in its order; empty when
    /// the peer has one service.
    pub(crate) services: Vec<(String, Fingerprints)>,
    /// The methods the peer has with other fingerprints than this side's, and what differs
    /// where that is known.
    pub(crate) mismatched: HashMap<String, Option<String>>,
    /// How often the peer pings when it has nothing else to send.
    pub(crate) ping_interval: Option<Duration>,
    /// How many calls the peer runs at once on this connection.
    pub(crate) max_concurrent_calls: Option<usize>,
    /// How many calls with a streamed argument the peer runs at once on this connection.
    pub(crate) max_uploads: Option<usize>,
    /// The credit every stream the peer receives starts with.
    pub(crate) stream_window: u32,
    /// Whether the peer, a client, serves a service back over the connection
    /// (`crate::reverse`).
    pub(crate) serves_back: bool,
}

impl PeerInfo {
    /// How long to wait for the peer's bytes before presuming it dead, given this side's
    /// keep-alive settings: never less than twice the peer's ping interval, so that a live peer
    /// is never mistaken for a dead one; no limit when either side does not ping.
    pub(crate) fn silence_limit(&self, own: Option<KeepAlive>) -> Option<Duration> {
        let own = own?;
        let peer_interval = self.ping_interval?;
        Some(own.timeout.max(peer_interval.saturating_mul(2)))
    }

    /// Notes which of this side's methods the peer has with another fingerprint.
    pub(crate) fn compare(&mut self, own: &ServiceSchema) {
        self.mismatched = own
            .methods
            .iter()
            .filter(|method| {
                self.methods
                    .get(&method.name)
                    .is_some_and(|&theirs| theirs != method.fingerprint)
            })
            .map(|method| (method.name.clone(), None))
            .collect();
    }

    /// The names of every service the peer serves.
    pub(crate) fn served(&self) -> Vec<String> {
        if self.services.is_empty() {
            vec![self.service.clone()]
        } else {
            self.services.iter().map(|(name, _)| name.clone()).collect()
        }
    }

    /// The error for a client of `expected`, which the peer does not serve.
    fn not_served(&self, expected: &str) -> RpcError {
        RpcError::WrongService {
            expected: expected.to_owned(),
            served: self.served(),
        }
    }

    /// Checks that a server's hello names `expected`, the service this client was made for (or
    /// that either side is generic).
    pub(crate) fn check_serves(&self, expected: &str) -> Result<(), RpcError> {
        if self.service == expected || self.service.is_empty() || expected.is_empty() {
            return Ok(());
        }
        Err(self.not_served(expected))
    }

    /// Checks that the peer serves `service`, under the name its hello gave or among the
    /// others it announced.
    pub(crate) fn check_has(&self, service: &str) -> Result<(), RpcError> {
        self.table(service).map(drop)
    }

    /// The method table of `service`: the one the hellos named, or another the peer
    /// announced.
    fn table(&self, service: &str) -> Result<&Fingerprints, RpcError> {
        if service == self.service {
            return Ok(&self.methods);
        }
        self.services
            .iter()
            .find(|(served, _)| served == service)
            .map(|(_, methods)| methods)
            .ok_or_else(|| self.not_served(service))
    }

    /// The fingerprint of `name` in `methods`; `None` for the server's own `rpc.` methods
    /// (describe, health), which are in no table. Fails if the peer lacks the method.
    fn fingerprint_in(methods: &Fingerprints, name: &str) -> Result<Option<u64>, RpcError> {
        if name.starts_with("rpc.") {
            return Ok(None);
        }
        match methods.get(name) {
            Some(&fingerprint) => Ok(Some(fingerprint)),
            None => Err(RpcError::UnknownMethod {
                method: name.to_owned(),
            }),
        }
    }

    /// Checks a method of `service`, which is not the one the connection's hellos named,
    /// against the server's table of that service: that the server has the service and the
    /// method, with the same fingerprint.
    pub(crate) fn check_other(
        &self,
        service: &ServiceInfo,
        method: &MethodInfo,
    ) -> Result<(), RpcError> {
        let Some(theirs) = Self::fingerprint_in(self.table(service.name)?, method.name)? else {
            return Ok(());
        };
        let ours = service
            .describe()?
            .methods
            .iter()
            .find(|m| m.name == method.name);
        if ours.is_some_and(|ours| ours.fingerprint != theirs) {
            return Err(RpcError::SignatureMismatch {
                method: method.name.to_owned(),
                difference: None,
            });
        }
        Ok(())
    }

    /// Checks a method this side is about to call against the peer's table.
    pub(crate) fn check_method(&self, method: &MethodInfo) -> Result<(), RpcError> {
        // Mostly a method of the service the hellos named, found at once. (No method's name
        // has a dot: a name found here is not a qualified one.)
        if self.methods.contains_key(method.name) {
            return self.check_fingerprint(method);
        }
        // A generic client's qualified name (`Kv.get`): of the service it names.
        if let Some((service, name)) = method.name.split_once('.')
            && service != "rpc"
        {
            return Self::fingerprint_in(self.table(service)?, name).map(drop);
        }
        Self::fingerprint_in(&self.methods, method.name)?;
        self.check_fingerprint(method)
    }

    /// Checks that `method`, which the peer has, has the same fingerprint on both sides.
    fn check_fingerprint(&self, method: &MethodInfo) -> Result<(), RpcError> {
        if !self.mismatched.is_empty()
            && let Some(difference) = self.mismatched.get(method.name)
        {
            return Err(RpcError::SignatureMismatch {
                method: method.name.to_owned(),
                difference: difference.clone(),
            });
        }
        Ok(())
    }
}

impl<'a> Hello<'a> {
    pub(crate) fn new(
        service: &'a ServiceInfo,
        max_frame_len: usize,
        keepalive: Option<KeepAlive>,
        max_concurrent_calls: Option<usize>,
        stream_window: u32,
    ) -> Self {
        let ping_interval_ms = keepalive.map_or(0, |keepalive| {
            u64::try_from(keepalive.interval.as_millis())
                .unwrap_or(u64::MAX)
                .max(1)
        });
        Hello {
            magic: MAGIC,
            version: VERSION,
            max_frame_len: max_frame_len.min(MAX_FRAME_LEN_CAP) as u32,
            service: service.name,
            methods: MethodTable::Local(service),
            ping_interval_ms,
            max_concurrent_calls: max_concurrent_calls
                .map_or(0, |calls| u32::try_from(calls).unwrap_or(u32::MAX)),
            stream_window: stream_window.max(1),
            serves_back: false,
            max_uploads: 0,
        }
    }

    /// Announces that this side, a server, runs at most `uploads` calls with a streamed
    /// argument at once on the connection.
    pub(crate) fn taking_uploads(mut self, uploads: usize) -> Self {
        self.max_uploads = u32::try_from(uploads).unwrap_or(u32::MAX);
        self
    }

    /// Announces that this side, a client, serves a service back over the connection.
    pub(crate) fn serving_back(mut self, serves_back: bool) -> Self {
        self.serves_back = serves_back;
        self
    }

    /// Writes this hello as one frame.
    pub(crate) async fn send<W: AsyncWrite + Unpin>(
        self,
        writer: &mut FrameWriter<W>,
    ) -> Result<(), RpcError> {
        self.send_with_services(&[], writer).await
    }

    /// Writes this hello as one frame, followed by the table of `services` if there are more
    /// than one (a server of several, docs/wire.md section 5).
    pub(crate) async fn send_with_services<W: AsyncWrite + Unpin>(
        self,
        services: &[ServiceInfo],
        writer: &mut FrameWriter<W>,
    ) -> Result<(), RpcError> {
        let unencodable = |e| RpcError::Protocol(format!("the hello could not be encoded: {e}"));
        let (serves_back, max_uploads) = (self.serves_back, self.max_uploads);
        let mut frame = Head::Hello(Box::new(self))
            .begin_frame()
            .map_err(unencodable)?;
        // A server of one service announces an empty table, a client that does not serve back
        // none; `serves_back` follows, then a server's `max_uploads` (docs/wire.md section 5).
        let announced = if services.len() > 1 { services } else { &[] };
        if !announced.is_empty() || serves_back || max_uploads > 0 {
            let table: Vec<_> = announced
                .iter()
                .map(|service| (service.name, MethodTable::Local(service)))
                .collect();
            frame.append(&table).map_err(unencodable)?;
        }
        if serves_back || max_uploads > 0 {
            frame.append(&serves_back).map_err(unencodable)?;
        }
        if max_uploads > 0 {
            frame.append(&max_uploads).map_err(unencodable)?;
        }
        finish_frame(&mut frame, MAX_HELLO_LEN)?;
        writer.send(&frame).await?;
        Ok(())
    }

    /// Reads the peer's hello and checks that it speaks this protocol. Which service it names
    /// is for the caller to check.
    pub(crate) async fn receive<R: AsyncRead + Unpin>(
        reader: &mut FrameReader<R>,
        max_frame_len: usize,
    ) -> Result<PeerInfo, RpcError> {
        let not_a_peer =
            || RpcError::Handshake("the peer's first frame is not an rpc-core hello".into());
        // A hello carries the peer's method tables: it may be larger than the frames this side
        // takes after it, up to its own bound.
        reader.set_max_frame_len(MAX_HELLO_LEN);
        let payload = match reader.next_frame().await {
            Ok(Some(payload)) => payload,
            Ok(None) => return Err(RpcError::ConnectionClosed),
            Err(RpcError::FrameTooLarge { .. } | RpcError::Protocol(_)) => {
                return Err(if reader.starts_with_tls_record() {
                    RpcError::Handshake(
                        "the peer speaks TLS and this side does not: set `tls` on both the \
                         server and the client, or on neither"
                            .into(),
                    )
                } else {
                    not_a_peer()
                });
            }
            Err(other) => return Err(other),
        };
        reader.set_max_frame_len(max_frame_len);

        // Kind, magic and version first: they keep their place in every version, so a peer
        // speaking another version is told so, not that its hello is garbage.
        let Some((&HELLO_KIND, after_kind)) = payload.split_first() else {
            return Err(not_a_peer());
        };
        match postcard::take_from_bytes::<([u8; 4], u32)>(after_kind) {
            Ok(((MAGIC, VERSION), _)) => {}
            Ok(((MAGIC, theirs), _)) => {
                return Err(RpcError::VersionMismatch {
                    ours: VERSION,
                    theirs,
                });
            }
            _ => return Err(not_a_peer()),
        }
        let Ok((Head::Hello(hello), appended)) = Head::decode(&payload) else {
            return Err(not_a_peer());
        };
        // A server of several services appends their table, a client that serves back says so
        // after it, and a server then its limit on uploads; bytes after that are ignored, for
        // later versions to append more.
        let (services, serves_back, max_uploads) = if appended.is_empty() {
            (Vec::new(), false, 0)
        } else {
            let Ok((ServiceTables(tables), rest)) = postcard::take_from_bytes(appended) else {
                return Err(not_a_peer());
            };
            let (serves_back, rest) = match rest.split_first() {
                None => (false, rest),
                Some((0, rest)) => (false, rest),
                Some((1, rest)) => (true, rest),
                Some(_) => return Err(not_a_peer()),
            };
            let max_uploads = match rest {
                [] => 0,
                _ => match postcard::take_from_bytes::<u32>(rest) {
                    Ok((uploads, _)) => uploads,
                    Err(_) => return Err(not_a_peer()),
                },
            };
            (tables, serves_back, max_uploads)
        };
        if hello.stream_window == 0 {
            return Err(RpcError::Handshake(
                "the peer announced a stream window of 0 bytes, in which no stream could send \
                 an item"
                    .into(),
            ));
        }
        Ok(PeerInfo {
            max_frame_len: hello.max_frame_len as usize,
            service: hello.service.to_owned(),
            methods: match hello.methods {
                MethodTable::Remote(methods) => methods,
                MethodTable::Local(_) => Fingerprints::new(),
            },
            services,
            mismatched: HashMap::new(),
            ping_interval: (hello.ping_interval_ms > 0)
                .then(|| Duration::from_millis(hello.ping_interval_ms)),
            max_concurrent_calls: (hello.max_concurrent_calls > 0)
                .then_some(hello.max_concurrent_calls as usize),
            max_uploads: (max_uploads > 0).then_some(max_uploads as usize),
            stream_window: hello.stream_window,
            serves_back,
        })
    }
}

/// The first byte of a hello's payload: the index of [`Head::Hello`].
const HELLO_KIND: u8 = 0;

/// The method list of a hello: written from the local [`ServiceInfo`], read into a map. It is
/// read element by element, so the count the peer claims sizes no allocation.
#[derive(Debug)]
enum MethodTable<'a> {
    Local(&'a ServiceInfo),
    Remote(Fingerprints),
}

impl Serialize for MethodTable<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            MethodTable::Local(service) => {
                // Each side checks its schema before its hello: a schema that cannot be made
                // never gets here.
                let methods = service.describe().map_or(&[][..], |schema| &schema.methods);
                let mut seq = serializer.serialize_seq(Some(methods.len()))?;
                for method in methods {
                    seq.serialize_element(&(method.name.as_str(), method.fingerprint))?;
                }
                seq.end()
            }
            MethodTable::Remote(methods) => serializer.collect_seq(methods.iter()),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for MethodTable<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        RemoteMethods::deserialize(deserializer).map(|methods| MethodTable::Remote(methods.0))
    }
}

/// A method table as read from a peer.
struct RemoteMethods(Fingerprints);

impl<'de> Deserialize<'de> for RemoteMethods {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TableVisitor;
        impl<'de> Visitor<'de> for TableVisitor {
            type Value = RemoteMethods;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of (method name, fingerprint) pairs")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut methods = Fingerprints::new();
                while let Some((name, fingerprint)) = seq.next_element::<(&'de str, u64)>()? {
                    methods.insert(name.to_owned(), fingerprint);
                }
                Ok(RemoteMethods(methods))
            }
        }
        deserializer.deserialize_seq(TableVisitor)
    }
}

/// The table a server of several services appends to its hello: each service's name and
/// method table. Read element by element, like a method table.
struct ServiceTables(Vec<(String, Fingerprints)>);

impl<'de> Deserialize<'de> for ServiceTables {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TablesVisitor;
        impl<'de> Visitor<'de> for TablesVisitor {
            type Value = ServiceTables;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of (service name, method table) pairs")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut tables = Vec::new();
                while let Some((name, RemoteMethods(methods))) =
                    seq.next_element::<(&'de str, RemoteMethods)>()?
                {
                    tables.push((name.to_owned(), methods));
                }
                Ok(ServiceTables(tables))
            }
        }
        deserializer.deserialize_seq(TablesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FrameReader;

    #[tokio::test]
    async fn client_hello_bytes_match_wire_md() {
        // docs/wire.md, section 10: a client of `Calc` with no methods, 16 MiB limit.
        static CALC: ServiceInfo = ServiceInfo {
            name: "Calc",
            methods: &[],
            schema: crate::service::no_methods,
        };
        let mut written = Vec::new();
        let mut writer = FrameWriter::new(&mut written);
        let window = crate::stream::DEFAULT_WINDOW;
        Hello::new(
            &CALC,
            16 * 1024 * 1024,
            Some(KeepAlive::DEFAULT),
            None,
            window,
        )
        .send(&mut writer)
        .await
        .expect("writes");
        assert_eq!(
            written,
            [
                0x00, 0x00, 0x00, 0x16, 0x00, b'r', b'p', b'c', b'c', 0x02, 0x80, 0x80, 0x80, 0x08,
                0x04, b'C', b'a', b'l', b'c', 0x00, 0x98, 0x75, 0x00, 0x80, 0x80, 0x40
            ]
        );
    }

    #[tokio::test]
    async fn a_hello_reads_back_with_its_method_table() {
        fn schema() -> &'static Result<ServiceSchema, crate::schema::SchemaError> {
            static SCHEMA: std::sync::OnceLock<Result<ServiceSchema, crate::schema::SchemaError>> =
                std::sync::OnceLock::new();
            SCHEMA.get_or_init(|| {
                let mut tracer = crate::schema::ServiceTracer::new("Lab");
                tracer
                    .method("add", false)
                    .opaque(0xdead_beef)
                    .returns::<()>();
                tracer.finish()
            })
        }
        static LAB: ServiceInfo = ServiceInfo {
            name: "Lab",
            methods: &[MethodInfo {
                name: "add",
                idempotent: false,
            }],
            schema,
        };
        let mut written = Vec::new();
        Hello::new(&LAB, 1000, None, Some(64), 300)
            .send(&mut FrameWriter::new(&mut written))
            .await
            .expect("writes");
        let mut reader = FrameReader::new(&written[..], 1 << 20);
        let peer = Hello::receive(&mut reader, 1 << 20).await.expect("reads");
        assert_eq!(peer.max_frame_len, 1000);
        assert_eq!(peer.methods.get("add"), Some(&0xdead_beef));
        assert!(peer.check_method(&LAB.methods[0]).is_ok());
        assert_eq!(peer.ping_interval, None);
        assert_eq!(peer.max_concurrent_calls, Some(64));
        assert_eq!(peer.stream_window, 300);
        assert_eq!(peer.silence_limit(Some(KeepAlive::DEFAULT)), None);
    }

    /// A service of one method `name`, with an opaque fingerprint `fingerprint`.
    macro_rules! one_method_service {
        ($service:literal, $method:literal, $fingerprint:literal) => {{
            fn schema() -> &'static Result<ServiceSchema, crate::schema::SchemaError> {
                static SCHEMA: std::sync::OnceLock<
                    Result<ServiceSchema, crate::schema::SchemaError>,
                > = std::sync::OnceLock::new();
                SCHEMA.get_or_init(|| {
                    let mut tracer = crate::schema::ServiceTracer::new($service);
                    tracer
                        .method($method, false)
                        .opaque($fingerprint)
                        .returns::<()>();
                    tracer.finish()
                })
            }
            ServiceInfo {
                name: $service,
                methods: &[MethodInfo {
                    name: $method,
                    idempotent: false,
                }],
                schema,
            }
        }};
    }

    #[tokio::test]
    async fn a_server_of_several_services_appends_their_table_as_wire_md_says() {
        // docs/wire.md, section 5: `A` with method `x` (fingerprint 1), `B` with `y` (2).
        let services = [
            one_method_service!("A", "x", 1),
            one_method_service!("B", "y", 2),
        ];
        let mut written = Vec::new();
        Hello::new(&services[1], 1000, None, None, 1)
            .send_with_services(&services, &mut FrameWriter::new(&mut written))
            .await
            .expect("writes");
        let table = [
            0x02, 0x01, b'A', 0x01, 0x01, b'x', 0x01, 0x01, b'B', 0x01, 0x01, b'y', 0x02,
        ];
        assert!(written.ends_with(&table), "{written:02x?}");

        let mut reader = FrameReader::new(&written[..], 1 << 20);
        let peer = Hello::receive(&mut reader, 1 << 20).await.expect("reads");
        assert_eq!(peer.service, "B");
        assert_eq!(peer.served(), ["A", "B"]);
        assert!(peer.check_serves("B").is_ok());
        assert!(peer.check_serves("").is_ok());
        assert!(matches!(
            peer.check_serves("C"),
            Err(RpcError::WrongService { expected, served }) if expected == "C" && served.len() == 2
        ));
        assert!(
            peer.check_other(&services[0], &services[0].methods[0])
                .is_ok()
        );
        let wrong = one_method_service!("A", "x", 3);
        assert!(matches!(
            peer.check_other(&wrong, &wrong.methods[0]),
            Err(RpcError::SignatureMismatch { .. })
        ));

        // One service: nothing appended.
        let mut alone = Vec::new();
        Hello::new(&services[0], 1000, None, None, 1)
            .send_with_services(&services[..1], &mut FrameWriter::new(&mut alone))
            .await
            .expect("writes");
        let mut plain = Vec::new();
        Hello::new(&services[0], 1000, None, None, 1)
            .send(&mut FrameWriter::new(&mut plain))
            .await
            .expect("writes");
        assert_eq!(alone, plain);
    }

    /// A service of no methods, for hellos whose method table does not matter.
    static LAB: ServiceInfo = ServiceInfo {
        name: "Lab",
        methods: &[],
        schema: crate::service::no_methods,
    };

    /// A server's limit on uploads follows an empty services table and `serves_back` 0, and
    /// reads back; a hello without it announces none.
    #[tokio::test]
    async fn a_server_ends_its_hello_with_its_limit_on_uploads() {
        let mut plain = Vec::new();
        Hello::new(&LAB, 1000, None, Some(8), 1)
            .send(&mut FrameWriter::new(&mut plain))
            .await
            .expect("writes");
        let mut limited = Vec::new();
        Hello::new(&LAB, 1000, None, Some(8), 1)
            .taking_uploads(300)
            .send(&mut FrameWriter::new(&mut limited))
            .await
            .expect("writes");
        // docs/wire.md section 5: `services` empty, `serves_back` 0, then 300 as a varint.
        assert_eq!(limited[4..limited.len() - 4], plain[4..]);
        assert_eq!(limited[limited.len() - 4..], [0x00, 0x00, 0xac, 0x02]);
        let read = |bytes: Vec<u8>| async move {
            let mut reader = FrameReader::new(&bytes[..], 1 << 20);
            Hello::receive(&mut reader, 1 << 20).await.expect("a hello")
        };
        assert_eq!(read(limited).await.max_uploads, Some(300));
        assert_eq!(read(plain).await.max_uploads, None);
    }

    #[tokio::test]
    async fn a_client_serving_back_ends_its_hello_with_an_empty_table_then_one() {
        let mut plain = Vec::new();
        Hello::new(&LAB, 1000, None, None, 1)
            .send(&mut FrameWriter::new(&mut plain))
            .await
            .expect("writes");
        let mut serving = Vec::new();
        Hello::new(&LAB, 1000, None, None, 1)
            .serving_back(true)
            .send(&mut FrameWriter::new(&mut serving))
            .await
            .expect("writes");
        // docs/wire.md section 5: `services` empty, then `serves_back` 1.
        assert_eq!(serving[4..serving.len() - 2], plain[4..]);
        assert_eq!(serving[serving.len() - 2..], [0x00, 0x01]);
        let read = |bytes: Vec<u8>| async move {
            let mut reader = FrameReader::new(&bytes[..], 1 << 20);
            Hello::receive(&mut reader, 1 << 20).await.expect("a hello")
        };
        assert!(read(serving.clone()).await.serves_back);
        assert!(!read(plain).await.serves_back);
        // Any byte but 0 or 1 there is not a hello.
        *serving.last_mut().expect("a byte") = 0x02;
        let mut reader = FrameReader::new(&serving[..], 1 << 20);
        let refused = Hello::receive(&mut reader, 1 << 20).await;
        assert!(
            matches!(refused, Err(RpcError::Handshake(_))),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_hello_with_a_zero_stream_window_is_refused() {
        let mut written = Vec::new();
        Hello::new(&LAB, 1000, None, None, 1)
            .send(&mut FrameWriter::new(&mut written))
            .await
            .expect("writes");
        // The window is the hello's last byte: a varint 1, made 0.
        assert_eq!(written.last(), Some(&0x01));
        *written.last_mut().expect("a byte") = 0x00;
        let mut reader = FrameReader::new(&written[..], 1 << 20);
        let refused = Hello::receive(&mut reader, 1 << 20).await;
        assert!(
            matches!(&refused, Err(RpcError::Handshake(why)) if why.contains("window of 0")),
            "{refused:?}"
        );
    }

    #[test]
    fn the_silence_limit_respects_the_peers_ping_interval() {
        let peer = PeerInfo {
            serves_back: false,
            max_frame_len: 0,
            service: String::new(),
            methods: Fingerprints::new(),
            services: Vec::new(),
            mismatched: HashMap::new(),
            ping_interval: Some(Duration::from_secs(15)),
            max_concurrent_calls: None,
            max_uploads: None,
            stream_window: 1,
        };
        let impatient = KeepAlive {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(200),
        };
        assert_eq!(
            peer.silence_limit(Some(impatient)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            peer.silence_limit(Some(KeepAlive::DEFAULT)),
            Some(Duration::from_secs(45))
        );
        assert_eq!(peer.silence_limit(None), None);
    }
}
