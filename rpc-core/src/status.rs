//! Refusals with a well-known status: what an interceptor answers for a call it does not let
//! through.

use std::fmt;

/// Why a call was refused, in words every client understands: a well-known code and a
/// sentence for people. A server's [interceptor](crate::ServerBuilder::intercept) returns one
/// to refuse a call before its handler runs; the client gets the matching [`RpcError`]
/// ([`RpcError::Unauthenticated`], [`RpcError::PermissionDenied`], or [`RpcError::Refused`]).
///
/// Handlers say how a call failed in their own return types (`Result<T, MyError>`); a status
/// is for refusing a call as a whole.
///
/// [`RpcError`]: crate::RpcError
/// [`RpcError::Unauthenticated`]: crate::RpcError::Unauthenticated
/// [`RpcError::PermissionDenied`]: crate::RpcError::PermissionDenied
/// [`RpcError::Refused`]: crate::RpcError::Refused
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    code: StatusCode,
    message: String,
}

impl Status {
    /// A refusal with `code`, and `message` for people (cut to 1 KiB on the wire).
    pub fn new(code: StatusCode, message: impl Into<String>) -> Self {
        Status {
            code,
            message: message.into(),
        }
    }

    /// The caller did not say who it is, or could not prove it.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::Unauthenticated, message)
    }

    /// The caller is known, and may not make this call.
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PermissionDenied, message)
    }

    /// The status's code.
    pub fn code(&self) -> StatusCode {
        self.code
    }

    /// The status's sentence.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}

/// The well-known reasons to refuse a call, each with its own code on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StatusCode {
    /// The caller did not say who it is, or could not prove it.
    Unauthenticated,
    /// The caller is known, and may not make this call.
    PermissionDenied,
    /// The call's arguments or metadata are not acceptable, whatever the server's state.
    InvalidArgument,
    /// What the call names does not exist.
    NotFound,
    /// The server is not in a state to run the call (a precondition does not hold).
    FailedPrecondition,
    /// A quota or rate limit is used up.
    ResourceExhausted,
    /// The server cannot take the call now; another server, or the same one later, may. A
    /// client balancing over many servers makes the call again on another.
    Unavailable,
    /// The server failed in a way it does not disclose; its log has the details.
    Internal,
}

impl StatusCode {
    /// Every status code.
    pub const ALL: [StatusCode; 8] = [
        StatusCode::Unauthenticated,
        StatusCode::PermissionDenied,
        StatusCode::InvalidArgument,
        StatusCode::NotFound,
        StatusCode::FailedPrecondition,
        StatusCode::ResourceExhausted,
        StatusCode::Unavailable,
        StatusCode::Internal,
    ];

    /// The code's number on the wire (`docs/wire.md`, section 4).
    pub fn wire_code(self) -> u32 {
        match self {
            StatusCode::Unauthenticated => 10,
            StatusCode::PermissionDenied => 11,
            StatusCode::InvalidArgument => 12,
            StatusCode::NotFound => 13,
            StatusCode::FailedPrecondition => 14,
            StatusCode::ResourceExhausted => 15,
            StatusCode::Unavailable => 16,
            StatusCode::Internal => 17,
        }
    }

    /// The status code with the wire number `code`, if it is one.
    pub fn from_wire_code(code: u32) -> Option<StatusCode> {
        Self::ALL
            .into_iter()
            .find(|status| status.wire_code() == code)
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StatusCode::Unauthenticated => "unauthenticated",
            StatusCode::PermissionDenied => "permission denied",
            StatusCode::InvalidArgument => "invalid argument",
            StatusCode::NotFound => "not found",
            StatusCode::FailedPrecondition => "failed precondition",
            StatusCode::ResourceExhausted => "resource exhausted",
            StatusCode::Unavailable => "unavailable",
            StatusCode::Internal => "internal error",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_from_its_wire_number() {
        for code in StatusCode::ALL {
            assert_eq!(StatusCode::from_wire_code(code.wire_code()), Some(code));
        }
        let numbers: Vec<u32> = StatusCode::ALL
            .iter()
            .map(|code| code.wire_code())
            .collect();
        assert_eq!(
            numbers,
            (10..=17).collect::<Vec<_>>(),
            "as docs/wire.md lists them"
        );
        assert_eq!(StatusCode::from_wire_code(9), None);
        assert_eq!(StatusCode::from_wire_code(18), None);
    }

    /// A status reads as its code's words, then its sentence: what a refused caller's error
    /// says.
    #[test]
    fn a_status_reads_as_its_code_then_its_message() {
        let words = StatusCode::ALL.map(|code| code.to_string());
        assert_eq!(
            words,
            [
                "unauthenticated",
                "permission denied",
                "invalid argument",
                "not found",
                "failed precondition",
                "resource exhausted",
                "unavailable",
                "internal error",
            ]
        );
        let status = Status::permission_denied("the token may only read");
        assert_eq!(
            status.to_string(),
            "permission denied: the token may only read"
        );
    }
}
