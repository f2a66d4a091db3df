//! The one error type every call returns.

use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Why a call, a connection or a handshake failed.
///
/// Every variant names a cause the caller can act on. The `Display` text reads as a sentence and
/// includes the underlying cause, so `println!("{err}")` says everything known.
///
/// `RpcError` is `Clone`: when a connection dies, every call pending on it receives the same
/// reason. It is small (64 bytes; a rare, large cause is boxed), because every call's result
/// carries room for one.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// Opening the connection (TCP connect, Unix socket connect) failed.
    #[error("could not connect to {endpoint}: {cause}")]
    Connect {
        /// The server, as it was given (`host:port`, an address, a socket's path).
        endpoint: String,
        /// Why.
        cause: Arc<io::Error>,
    },

    /// Every server of a balanced client failed: each one's address and last error.
    #[error(
        "all {} endpoints are unavailable: {}",
        causes.len(),
        causes.iter().map(|(endpoint, cause)| format!("{endpoint} ({cause})")).collect::<Vec<_>>().join("; ")
    )]
    Unavailable {
        /// Each endpoint, and the last error it failed with.
        causes: Vec<(String, String)>,
    },

    /// The TLS handshake failed: the peer's certificate was refused, or the peer refused this
    /// side's, or the peer does not speak TLS. The text says which.
    #[error("the TLS handshake failed: {0}")]
    Tls(String),

    /// Connecting and exchanging the handshake did not finish within the connect timeout.
    #[error("the server did not complete the handshake within {0:?}")]
    ConnectTimeout(Duration),

    /// The peer does not speak this protocol: its first frame was not a valid hello.
    #[error("the handshake failed: {0}")]
    Handshake(String),

    /// The peer speaks a protocol version this side does not understand.
    #[error("the peer speaks protocol version {theirs}, but this side speaks version {ours}")]
    VersionMismatch {
        /// The version this side speaks.
        ours: u32,
        /// The version the peer announced.
        theirs: u32,
    },

    /// The server does not serve the service this client was generated for.
    #[error(
        "the server does not serve `{expected}`: it serves {}",
        quoted_list(served)
    )]
    WrongService {
        /// The service this side expected.
        expected: String,
        /// Every service the server announced.
        served: Vec<String>,
    },

    /// The services given to a server cannot be served together: there are none, two share a
    /// name, or one is named `rpc`, which is reserved.
    #[error("the services cannot be served: {0}")]
    Services(String),

    /// A handler asked for a client of what its caller serves back
    /// ([`Context::caller`](crate::Context::caller)), but the caller serves nothing over its
    /// connection: it did not set [`ClientBuilder::serve`](crate::ClientBuilder::serve), or the
    /// call did not come over a connection.
    #[error(
        "the caller serves nothing back over its connection: a client serves a service to its \
         server with `ClientBuilder::serve`"
    )]
    CallerServesNothing,

    /// The connection closed: the peer hung up or the server shut down.
    #[error("the connection closed")]
    ConnectionClosed,

    /// The server closed the connection and said why: this side broke the protocol.
    #[error("the server closed the connection: {reason}")]
    ClosedByServer {
        /// What the server said.
        reason: String,
    },

    /// The connection was lost while the call was in flight: the server may or may not have
    /// run it. Methods marked `#[rpc(idempotent)]` are made again instead, where they can be.
    #[error(
        "the connection was lost while `{method}` was in flight ({cause}); it may or may not have run"
    )]
    Interrupted {
        /// The method called.
        method: String,
        /// How the connection was lost.
        cause: Box<RpcError>,
    },

    /// A balanced client has no server to call: its list is empty, or its name resolved to no
    /// address.
    #[error("there is no server to call: the list of endpoints is empty")]
    NoEndpoints,

    /// The peer sent nothing, not even a keep-alive ping, for this long while this side waited:
    /// it is presumed dead and the connection was dropped.
    #[error("the peer sent nothing for {0:?}, not even a keep-alive ping, and is presumed dead")]
    KeepaliveTimeout(Duration),

    /// The call's deadline passed before its answer came. The server dropped the handler.
    #[error("`{method}` did not complete within its deadline of {deadline:?}")]
    DeadlineExceeded {
        /// The method called.
        method: String,
        /// The deadline the call had, counted from when it was made.
        deadline: Duration,
    },

    /// The server is closing the connection (shutting down, or the connection was idle) and did
    /// not run the call. Running it again elsewhere is safe.
    #[error("the server is closing the connection and did not run `{method}`")]
    ServerClosing {
        /// The method called.
        method: String,
    },

    /// The sender of a stream ended it with an error; it is the stream's last item.
    #[error("the stream failed: {message}")]
    StreamFailed {
        /// What the sender reported.
        message: String,
    },

    /// Reading from or writing to the connection failed.
    #[error("the connection failed: {0}")]
    Io(Arc<io::Error>),

    /// The peer sent bytes that break the protocol; the connection was closed.
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),

    /// The server ran short of the memory its connections share for the large frames they
    /// are reading, and took back what this connection's unfinished frame held (its peer kept
    /// it waiting longest, or its frame lacked the most): the connection was closed. Seen by
    /// the server; its client is told so in a GoAway and sees [`RpcError::ClosedByServer`].
    #[error(
        "the server ran short of memory for large frames and took back what this connection's \
         unfinished frame held"
    )]
    FrameMemoryReclaimed,

    /// A frame is over the size limit. Sent frames are checked against the limit the peer
    /// announced (the call fails, the connection stays up); a received frame over this side's
    /// limit closes the connection without reading it.
    #[error("a frame of {size} bytes is over the limit of {limit} bytes")]
    FrameTooLarge {
        /// The size of the frame's payload in bytes.
        size: u64,
        /// The limit it broke.
        limit: u64,
    },

    /// The call's arguments could not be encoded; nothing was sent.
    #[error("the arguments to `{method}` could not be encoded: {reason}")]
    Encode {
        /// The method called.
        method: String,
        /// What went wrong.
        reason: String,
    },

    /// The server's answer could not be decoded into the method's return type.
    #[error("the response to `{method}` could not be decoded: {reason}")]
    Decode {
        /// The method called.
        method: String,
        /// What went wrong.
        reason: String,
    },

    /// The server could not decode the call's arguments into the method's parameter types.
    #[error("the server could not decode the arguments to `{method}`: {reason}")]
    InvalidArguments {
        /// The method called.
        method: String,
        /// What went wrong, as the server reported it.
        reason: String,
    },

    /// The server has no method of this name.
    #[error("the server has no method named `{method}`")]
    UnknownMethod {
        /// The method called.
        method: String,
    },

    /// The server has a method of this name, but its arguments or result are encoded
    /// differently: their schemas, and so their fingerprints, differ.
    #[error(
        "the server's `{method}` has a different signature than this client's{}; rebuild the \
         client from the server's service definition",
        difference.as_ref().map_or(String::new(), |difference| format!(" ({difference})"))
    )]
    SignatureMismatch {
        /// The method called.
        method: String,
        /// What differs, when the server described its schema.
        difference: Option<String>,
    },

    /// A type of the service cannot be described, so its fingerprints cannot be made: nothing
    /// is sent.
    #[error(transparent)]
    Schema(Box<crate::schema::SchemaError>),

    /// The call is over one of the server's per-call limits (such as the size of its
    /// metadata); it did not run, and the connection stays up.
    #[error("the server refused `{method}`: {message}")]
    LimitExceeded {
        /// The method called.
        method: String,
        /// Which limit, as the server reported it.
        message: String,
    },

    /// The server refused the call before running it: the caller did not say who it is, or
    /// could not prove it. The server's interceptor said so.
    #[error("the server refused `{method}`: the caller is not authenticated: {message}")]
    Unauthenticated {
        /// The method called.
        method: String,
        /// Why, as the server said it.
        message: String,
    },

    /// The server refused the call before running it: the caller may not make it. The
    /// server's interceptor said so.
    #[error("the server refused `{method}`: permission denied: {message}")]
    PermissionDenied {
        /// The method called.
        method: String,
        /// Why, as the server said it.
        message: String,
    },

    /// The server refused the call before running it, with another well-known status.
    #[error("the server refused `{method}` ({status}): {message}")]
    Refused {
        /// The method called.
        method: String,
        /// The status.
        status: crate::StatusCode,
        /// Why, as the server said it.
        message: String,
    },

    /// The server's handler panicked while running the call. The panic's message stays in the
    /// server's log, under the call's id, unless the server is set to send it
    /// ([`ServerBuilder::expose_panic_messages`](crate::ServerBuilder::expose_panic_messages)).
    #[error(
        "the server's handler for `{method}` panicked (call {request_id}){}",
        panic_text(.message)
    )]
    HandlerPanicked {
        /// The method called.
        method: String,
        /// The call's id, as the server logged it.
        request_id: u64,
        /// The panic's message, if the server sends panic messages.
        message: Option<String>,
    },

    /// The server ran the call but could not send its result (for example, the result was over
    /// the client's frame limit, or could not be encoded).
    #[error("the server could not answer `{method}`: {message}")]
    Server {
        /// The method called.
        method: String,
        /// What the server reported.
        message: String,
    },
}

/// "`A`, `B`": names as a sentence shows them.
fn quoted_list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
    quoted.join(", ")
}

/// A panic's message as the end of a sentence, when there is one.
fn panic_text(message: &Option<String>) -> String {
    message
        .as_ref()
        .map_or_else(String::new, |message| format!(": {message}"))
}

impl From<crate::schema::SchemaError> for RpcError {
    fn from(error: crate::schema::SchemaError) -> Self {
        RpcError::Schema(Box::new(error))
    }
}

impl From<io::Error> for RpcError {
    fn from(error: io::Error) -> Self {
        RpcError::Io(Arc::new(error))
    }
}

#[cfg(test)]
mod tests {
    use super::RpcError;

    /// Every call's result, and every answer the client's table holds, has room for an error:
    /// a variant that grows it past this makes each call move and keep more.
    #[test]
    fn an_error_takes_at_most_64_bytes() {
        assert!(
            size_of::<RpcError>() <= 64,
            "{} bytes",
            size_of::<RpcError>()
        );
    }

    #[test]
    fn a_wrong_service_error_names_every_service_served() {
        let error = RpcError::WrongService {
            expected: "Calc".to_owned(),
            served: vec!["Kv".to_owned(), "Health".to_owned()],
        };
        assert_eq!(
            error.to_string(),
            "the server does not serve `Calc`: it serves `Kv`, `Health`"
        );
    }

    #[test]
    fn a_panic_s_message_ends_the_sentence_only_when_the_server_sent_it() {
        let panicked = |message: Option<&str>| RpcError::HandlerPanicked {
            method: "add".to_owned(),
            request_id: 7,
            message: message.map(str::to_owned),
        };
        assert_eq!(
            panicked(None).to_string(),
            "the server's handler for `add` panicked (call 7)"
        );
        assert_eq!(
            panicked(Some("overflow")).to_string(),
            "the server's handler for `add` panicked (call 7): overflow"
        );
    }
}
