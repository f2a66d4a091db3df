//! Calls to any service without its generated client: arguments and results as the bytes
//! postcard writes, with the schema the server describes. What the `rpc` command-line client is
//! built on; useful for gateways and test tools too.
//!
//! ```no_run
//! use rpc_core::dynamic::{DynamicClient, DynamicReply, Encoded};
//!
//! # async fn run() -> Result<(), rpc_core::RpcError> {
//! let client = DynamicClient::connect("127.0.0.1:7000").await?;
//! let schema = client.describe().await?;
//! let add = schema.method("add").expect("the server has `add`");
//! // add(2, 3): two i64, as postcard writes them (zigzag varints).
//! let reply = client.call(add, Encoded::new(vec![4, 6]), None).await?;
//! if let DynamicReply::Value(sum) = reply {
//!     assert_eq!(sum.as_bytes(), [10]);
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;

use crate::client::{ClientBuilder, ServerAddr};
use crate::protocol::{CodecError, DESCRIBE_METHOD, Decode, Encode};
use crate::schema::{Download, MethodSchema, SchemaError, ServiceSchema, ServiceTracer};
use crate::stream::Outbound;
use crate::{Channel, MethodInfo, RpcError, ServiceClient, ServiceInfo, Streaming};

/// The postcard encoding of one value, as it goes on the wire: a call's arguments (the tuple of
/// them, in order), its result, or one stream item.
#[derive(Clone, PartialEq, Eq)]
pub struct Encoded(Bytes);

impl Encoded {
    /// Bytes that are the postcard encoding of a value.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Encoded(bytes.into())
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes, to keep.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl fmt::Debug for Encoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Encoded({} bytes)", self.0.len())
    }
}

impl Encode for Encoded {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(&self.0);
        Ok(())
    }
}

impl Decode for Encoded {
    fn decode_lent(bytes: &[u8]) -> Result<Self, CodecError> {
        Ok(Encoded(crate::payload::slice_of_frame(bytes)))
    }

    /// The bytes as they are, sliced from the frame without lending it.
    fn decode(frame: &mut Bytes, range: Range<usize>) -> Result<Self, CodecError> {
        Ok(Encoded(frame.slice(range)))
    }
}

/// A client of whatever service the server has: it names no service in its hello, learns the
/// methods from [`DynamicClient::describe`], and sends and receives encoded values.
#[derive(Debug, Clone)]
pub struct DynamicClient {
    channel: Channel,
}

/// One call, as a value: the method (as the server described it), its encoded arguments, and
/// its streamed argument if it takes one.
#[derive(Debug)]
pub struct DynamicCall {
    /// The method, as the server described it.
    pub method: MethodSchema,
    /// The postcard encoding of the tuple of its arguments.
    pub args: Encoded,
    /// Its streamed argument's items, encoded.
    pub upload: Option<Streaming<Encoded>>,
}

/// What a call returned.
#[derive(Debug)]
pub enum DynamicReply {
    /// The encoded result.
    Value(Encoded),
    /// The encoded items of a streamed result.
    Stream(Streaming<Encoded>),
    /// The encoded error a method that returns `Result<Streaming<T>, E>` returned instead of
    /// its stream ([`Download::ItemsOrError`]).
    StreamError(Encoded),
}

/// A generic client's schema: no methods of its own.
fn no_schema() -> &'static Result<ServiceSchema, SchemaError> {
    static SCHEMA: OnceLock<Result<ServiceSchema, SchemaError>> = OnceLock::new();
    SCHEMA.get_or_init(|| ServiceTracer::new("").finish())
}

impl ServiceClient for DynamicClient {
    const INFO: ServiceInfo = ServiceInfo {
        name: "",
        methods: &[],
        schema: no_schema,
    };
    type Request = DynamicCall;
    type Response = DynamicReply;

    fn from_channel(channel: Channel) -> Self {
        DynamicClient { channel }
    }

    fn channel(&self) -> &Channel {
        &self.channel
    }

    fn dispatch(
        &self,
        request: DynamicCall,
    ) -> Pin<Box<dyn Future<Output = Result<DynamicReply, RpcError>> + Send>> {
        let client = self.clone();
        Box::pin(async move {
            client
                .call(&request.method, request.args, request.upload)
                .await
        })
    }
}

impl DynamicClient {
    /// Connects over TCP to `addr`, with the default settings.
    pub async fn connect(addr: impl ServerAddr) -> Result<Self, RpcError> {
        Self::builder().connect(addr).await
    }

    /// Settings for a new connection: TLS, deadline, metadata, timeouts.
    pub fn builder() -> ClientBuilder<Self> {
        ClientBuilder::new()
    }

    /// The same connection, with calls that wait at most `deadline`.
    #[must_use]
    pub fn with_deadline(&self, deadline: Duration) -> Self {
        DynamicClient {
            channel: self.channel.with_deadline(deadline),
        }
    }

    /// The same connection, with `key` set to `value` in the metadata of every call.
    #[must_use]
    pub fn with_metadata(&self, key: impl AsRef<str>, value: impl AsRef<[u8]>) -> Self {
        DynamicClient {
            channel: self.channel.with_metadata(key, value),
        }
    }

    /// The server's service: its name, methods and types. Fails with
    /// [`RpcError::UnknownMethod`] if its reflection is off.
    pub async fn describe(&self) -> Result<ServiceSchema, RpcError> {
        self.channel.describe().await
    }

    /// The services the server serves: one, unless it serves several
    /// ([`Services`](crate::Services)).
    pub async fn services(&self) -> Result<Vec<String>, RpcError> {
        self.channel.services().await
    }

    /// One of the server's services, by name, whichever the connection's hello named. Its
    /// methods are called by their qualified names, `service.method`: [`DynamicClient::call`]
    /// takes the method with its name so qualified.
    pub async fn describe_service(&self, service: &str) -> Result<ServiceSchema, RpcError> {
        let describe = interned(&format!("{service}.{DESCRIBE_METHOD}"), true);
        self.channel.call(describe, &()).await
    }

    /// Calls `method` with `args`, the postcard encoding of its argument tuple, and `upload`,
    /// its streamed argument's encoded items if it takes one. An `#[rpc(idempotent)]` method
    /// is retried as a generated client retries it.
    pub async fn call(
        &self,
        method: &MethodSchema,
        args: Encoded,
        upload: Option<Streaming<Encoded>>,
    ) -> Result<DynamicReply, RpcError> {
        let info = interned(&method.name, method.idempotent);
        let upload = match (method.upload.is_some(), upload) {
            (true, Some(upload)) => Some(Outbound::encoded(upload)),
            (true, None) => Some(Outbound::encoded(Streaming::iter([]))),
            (false, None) => None,
            (false, Some(_)) => {
                return Err(RpcError::Encode {
                    method: method.name.clone(),
                    reason: "the method takes no streamed argument".to_owned(),
                });
            }
        };
        match &method.download {
            Download::None => {}
            Download::Items => {
                let stream = self.channel.download(info, &args, upload).await?;
                return Ok(DynamicReply::Stream(stream));
            }
            Download::ItemsOrError(_) => {
                return Ok(
                    match self.channel.download_or_error(info, &args, upload).await? {
                        Ok(stream) => DynamicReply::Stream(stream),
                        Err(error) => DynamicReply::StreamError(error),
                    },
                );
            }
        }
        let value = match upload {
            Some(upload) => self.channel.upload(info, &args, upload).await?,
            None => self.channel.call_as(info, &args).await?,
        };
        Ok(DynamicReply::Value(value))
    }
}

/// The [`MethodInfo`] of a method called by name: made once per name and kept, as calls need
/// it for as long as they run. Only the names of methods a server described get here.
fn interned(name: &str, idempotent: bool) -> &'static MethodInfo {
    static METHODS: OnceLock<Mutex<HashMap<(String, bool), &'static MethodInfo>>> = OnceLock::new();
    let mut methods = METHODS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    methods
        .entry((name.to_owned(), idempotent))
        .or_insert_with(|| {
            let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
            Box::leak(Box::new(MethodInfo { name, idempotent }))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_bytes_are_kept_as_given() {
        let encoded = Encoded::new(vec![2, 3, 4]);
        assert_eq!(encoded.as_bytes(), [2, 3, 4]);
        assert_eq!(format!("{encoded:?}"), "Encoded(3 bytes)");
        let mut out = vec![1];
        encoded.encode(&mut out).expect("encodes");
        assert_eq!(
            out,
            [1, 2, 3, 4],
            "written as they are, after what was there"
        );
        assert_eq!(encoded.into_bytes(), [2, 3, 4][..]);
    }
}
