//! What a server serves: one service, or several on one listener with [`Services`].
//!
//! A request names its method alone (`add`), for the service the client's hello named, or
//! qualified by a service (`Kv.get`), for any service the server has (docs/wire.md, "Several
//! services"). The set is a chain of types built by [`Services::add`], so routing a request is
//! a comparison of indices, with no boxing and no lookup by name.

use std::future::Future;
use std::sync::Arc;

use crate::RpcError;
use crate::protocol::CodecError;
use crate::service::{DecodeError, Service, ServiceInfo};
use crate::stream::{InboundSlot, Outbound};

/// One service or several, as [`Server::serve`](crate::Server::serve) takes them: any
/// generated `FooServer`, or a [`Services`] of them.
///
/// Sealed: implemented by every [`Service`] and by [`Services`] only.
pub trait ServiceSet: sealed::Sealed + Send + Sync + 'static {
    /// A decoded call of one of the services.
    #[doc(hidden)]
    type Request: Send + 'static;

    /// A result of one of the services.
    #[doc(hidden)]
    type Response: Send + 'static;

    /// How many services there are.
    #[doc(hidden)]
    const COUNT: usize;

    /// Appends the services' identities to `out`, in the order they were added.
    #[doc(hidden)]
    fn infos(out: &mut Vec<ServiceInfo>);

    /// Decodes a call of `method` of the service at `index` in [`ServiceSet::infos`].
    #[doc(hidden)]
    fn decode_request(
        index: usize,
        method: &str,
        args: &[u8],
        streams: &mut InboundSlot<'_>,
    ) -> Result<Self::Request, DecodeError>;

    /// Whether the arguments of `method` of the service at `index` end in a byte string read
    /// into memory of its own ([`Service::ends_in_byte_string`]).
    #[doc(hidden)]
    fn ends_in_byte_string(index: usize, method: &str) -> bool;

    /// The service and method a request calls.
    #[doc(hidden)]
    fn names(request: &Self::Request) -> (&'static str, &'static str);

    /// Runs a call.
    #[doc(hidden)]
    fn call(&self, request: Self::Request)
    -> impl Future<Output = Self::Response> + Send + 'static;

    /// Encodes a result, as [`Service::encode_response`] does.
    #[doc(hidden)]
    fn encode_response(
        response: Self::Response,
        out: &mut Vec<u8>,
    ) -> Result<Option<Outbound>, CodecError>;
}

mod sealed {
    pub trait Sealed {}
    impl<S: crate::Service> Sealed for S {}
    impl<L> Sealed for super::Services<L> {}
}

impl<S: Service> ServiceSet for S {
    type Request = S::Request;
    type Response = S::Response;
    const COUNT: usize = 1;

    fn infos(out: &mut Vec<ServiceInfo>) {
        out.push(S::INFO);
    }

    fn decode_request(
        _index: usize,
        method: &str,
        args: &[u8],
        streams: &mut InboundSlot<'_>,
    ) -> Result<Self::Request, DecodeError> {
        S::decode_request(method, args, streams)
    }

    fn ends_in_byte_string(_index: usize, method: &str) -> bool {
        S::ends_in_byte_string(method)
    }

    fn names(request: &Self::Request) -> (&'static str, &'static str) {
        (S::INFO.name, S::method_name(request))
    }

    fn call(
        &self,
        request: Self::Request,
    ) -> impl Future<Output = Self::Response> + Send + 'static {
        Service::call(self, request)
    }

    fn encode_response(
        response: Self::Response,
        out: &mut Vec<u8>,
    ) -> Result<Option<Outbound>, CodecError> {
        S::encode_response(response, out)
    }
}

/// Several services served on one listener, and on one connection: a client of any of them
/// connects, and clients of different ones can share a connection (`KvClient::sharing(&calc)`,
/// or [`Channel::client`](crate::Channel::client)).
///
/// ```no_run
/// # #[rpc_core::service] pub trait Calc { async fn add(&self, a: i64, b: i64) -> i64; }
/// # #[rpc_core::service] pub trait Kv { async fn get(&self, key: String) -> Option<String>; }
/// # struct MyCalc;
/// # impl Calc for MyCalc { async fn add(&self, a: i64, b: i64) -> i64 { a + b } }
/// # struct MyKv;
/// # impl Kv for MyKv { async fn get(&self, key: String) -> Option<String> { None } }
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use rpc_core::{Server, Services};
///
/// let server = Server::bind("127.0.0.1:7000").await?;
/// let services = Services::new()
///     .add(CalcServer::new(MyCalc))
///     .add(KvServer::new(MyKv));
/// tokio::spawn(server.serve(services));
///
/// let calc = CalcClient::connect("127.0.0.1:7000").await?;
/// let kv = KvClient::sharing(&calc); // over the same connection
/// assert_eq!(calc.add(1, 2).await?, 3);
/// assert_eq!(kv.get("a".into()).await?, None);
/// # Ok(()) }
/// ```
///
/// Each service keeps its name, methods and fingerprints; two services of one name are refused
/// when the server starts.
#[derive(Debug, Clone)]
pub struct Services<L = ()> {
    list: L,
}

impl Services {
    /// No services yet; [`add`](Services::add) them.
    pub fn new() -> Self {
        Services { list: () }
    }
}

impl Default for Services {
    fn default() -> Self {
        Self::new()
    }
}

impl<L> Services<L> {
    /// These services and `service`.
    #[allow(clippy::should_implement_trait)] // builds a new type: no `Add` would
    pub fn add<S: Service>(self, service: S) -> Services<(Services<L>, S)> {
        Services {
            list: (self, service),
        }
    }
}

/// No service: never decodes a request.
#[doc(hidden)]
#[derive(Debug)]
pub enum NoCall {}

impl ServiceSet for Services<()> {
    type Request = NoCall;
    type Response = NoCall;
    const COUNT: usize = 0;

    fn infos(_: &mut Vec<ServiceInfo>) {}

    fn decode_request(
        _: usize,
        _: &str,
        _: &[u8],
        _: &mut InboundSlot<'_>,
    ) -> Result<Self::Request, DecodeError> {
        Err(DecodeError::UnknownMethod)
    }

    fn ends_in_byte_string(_: usize, _: &str) -> bool {
        false
    }

    fn names(request: &Self::Request) -> (&'static str, &'static str) {
        match *request {}
    }

    fn call(
        &self,
        request: Self::Request,
    ) -> impl Future<Output = Self::Response> + Send + 'static {
        std::future::ready(request)
    }

    fn encode_response(
        response: Self::Response,
        _: &mut Vec<u8>,
    ) -> Result<Option<Outbound>, CodecError> {
        match response {}
    }
}

/// A request or result of a chain of services: of one added earlier, or of the last one.
#[doc(hidden)]
#[derive(Debug)]
pub enum Routed<E, L> {
    Earlier(E),
    Last(L),
}

impl<L, S> ServiceSet for Services<(Services<L>, S)>
where
    Services<L>: ServiceSet,
    L: Send + Sync + 'static,
    S: Service,
{
    type Request = Routed<<Services<L> as ServiceSet>::Request, S::Request>;
    type Response = Routed<<Services<L> as ServiceSet>::Response, S::Response>;
    const COUNT: usize = <Services<L> as ServiceSet>::COUNT + 1;

    fn infos(out: &mut Vec<ServiceInfo>) {
        <Services<L> as ServiceSet>::infos(out);
        out.push(S::INFO);
    }

    fn decode_request(
        index: usize,
        method: &str,
        args: &[u8],
        streams: &mut InboundSlot<'_>,
    ) -> Result<Self::Request, DecodeError> {
        if index == <Services<L> as ServiceSet>::COUNT {
            S::decode_request(method, args, streams).map(Routed::Last)
        } else {
            <Services<L> as ServiceSet>::decode_request(index, method, args, streams)
                .map(Routed::Earlier)
        }
    }

    fn ends_in_byte_string(index: usize, method: &str) -> bool {
        if index == <Services<L> as ServiceSet>::COUNT {
            S::ends_in_byte_string(method)
        } else {
            <Services<L> as ServiceSet>::ends_in_byte_string(index, method)
        }
    }

    fn names(request: &Self::Request) -> (&'static str, &'static str) {
        match request {
            Routed::Earlier(request) => <Services<L> as ServiceSet>::names(request),
            Routed::Last(request) => <S as ServiceSet>::names(request),
        }
    }

    fn call(
        &self,
        request: Self::Request,
    ) -> impl Future<Output = Self::Response> + Send + 'static {
        let (earlier, last) = &self.list;
        let running = match request {
            Routed::Earlier(request) => Routed::Earlier(earlier.call(request)),
            Routed::Last(request) => Routed::Last(Service::call(last, request)),
        };
        async move {
            match running {
                Routed::Earlier(running) => Routed::Earlier(running.await),
                Routed::Last(running) => Routed::Last(running.await),
            }
        }
    }

    fn encode_response(
        response: Self::Response,
        out: &mut Vec<u8>,
    ) -> Result<Option<Outbound>, CodecError> {
        match response {
            Routed::Earlier(response) => {
                <Services<L> as ServiceSet>::encode_response(response, out)
            }
            Routed::Last(response) => S::encode_response(response, out),
        }
    }
}

/// A set of services ready to serve: the set, and each service's identity, checked.
pub(crate) struct Served<S> {
    pub(crate) set: S,
    pub(crate) infos: Vec<ServiceInfo>,
    /// The services' names, for health calls.
    pub(crate) names: Arc<[&'static str]>,
    /// For each service, the methods that take a streamed argument, which the server counts
    /// against its limit on uploads.
    uploads: Vec<Vec<&'static str>>,
}

impl<S: ServiceSet> Served<S> {
    /// Checks that there is at least one service, that no two share a name, that none takes
    /// the reserved name `rpc`, and that every one can be described.
    pub(crate) fn new(set: S) -> Result<Self, RpcError> {
        let mut infos = Vec::new();
        S::infos(&mut infos);
        if infos.is_empty() {
            return Err(RpcError::Services(
                "there are none: add at least one to `Services::new()`".to_owned(),
            ));
        }
        let mut uploads = Vec::with_capacity(infos.len());
        for (at, info) in infos.iter().enumerate() {
            if info.name == "rpc" || infos[..at].iter().any(|other| other.name == info.name) {
                let why = if info.name == "rpc" {
                    "`rpc` is the name of every server's own methods".to_owned()
                } else {
                    format!(
                        "two are named `{}`, and a client names the service it calls by its \
                         trait's name: rename one of the traits",
                        info.name
                    )
                };
                return Err(RpcError::Services(why));
            }
            let schema = info.describe()?;
            let streamed = schema
                .methods
                .iter()
                .filter(|method| method.upload.is_some());
            uploads.push(streamed.map(|method| method.name.as_str()).collect());
        }
        let names = infos.iter().map(|info| info.name).collect();
        Ok(Served {
            set,
            infos,
            names,
            uploads,
        })
    }

    /// Whether `method` of the service at `index` takes a streamed argument.
    pub(crate) fn takes_upload(&self, index: usize, method: &str) -> bool {
        self.uploads
            .get(index)
            .is_some_and(|uploads| uploads.contains(&method))
    }

    /// The service a hello's name refers to: the first for an empty name.
    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        if name.is_empty() {
            return Some(0);
        }
        self.position(name)
    }

    /// The service named `name`.
    fn position(&self, name: &str) -> Option<usize> {
        self.infos.iter().position(|info| info.name == name)
    }

    /// The name of the first service, which names the server in logs before a client says which
    /// service it wants.
    pub(crate) fn first_name(&self) -> &'static str {
        self.infos[0].name
    }

    /// Which service a request's method name calls, and the method's own name: `Kv.get` is
    /// `get` of `Kv`; an unqualified name, or one of the server's own (`rpc.`), is of
    /// `default`, the service the connection's hello named. Fails with the refusal to send.
    pub(crate) fn route<'m>(
        &self,
        method: &'m str,
        default: usize,
    ) -> Result<(usize, &'m str), String> {
        // A byte at a time: names are short, and a dot is ASCII, so both sides of it are
        // whole characters.
        match method.bytes().position(|byte| byte == b'.') {
            Some(dot) if &method[..dot] != "rpc" => {
                let (service, name) = (&method[..dot], &method[dot + 1..]);
                self.position(service)
                    .map(|index| (index, name))
                    .ok_or_else(|| format!("the server has no service `{service}`"))
            }
            _ => Ok((default, method)),
        }
    }
}
