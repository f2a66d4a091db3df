//! What a peer did wrong, when the head of a frame it sent breaks the protocol: the sentence
//! each side's reader closes the connection with (docs/wire.md, sections 2 and 4).

use super::{CodecError, Head, KIND_NAMES};
use crate::RpcError;

/// The side a frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sender {
    Client,
    Server,
}

impl Sender {
    fn name(self) -> &'static str {
        match self {
            Sender::Client => "client",
            Sender::Server => "server",
        }
    }

    fn other(self) -> Sender {
        match self {
            Sender::Client => Sender::Server,
            Sender::Server => Sender::Client,
        }
    }
}

/// A frame from `from` whose head did not decode (`error`): empty, of a kind the protocol does
/// not have, or of a known kind whose fields do not decode.
pub(crate) fn undecodable(from: Sender, payload: &[u8], error: &CodecError) -> RpcError {
    let from = from.name();
    RpcError::Protocol(match payload.first() {
        None => format!("the {from} sent an empty frame, which has no head"),
        Some(&kind) => match KIND_NAMES.get(usize::from(kind)) {
            Some(name) => {
                format!("the {from} sent a {name} frame whose head does not decode: {error}")
            }
            None => format!(
                "the {from} sent a frame of kind {kind:#04x}, which the protocol does not have"
            ),
        },
    })
}

/// A frame from `from` that decoded but is not one this side takes from it: a hello after the
/// handshake, or a kind only this side sends.
pub(crate) fn misplaced(from: Sender, head: &Head<'_>) -> RpcError {
    let kind = head.kind();
    let from_name = from.name();
    RpcError::Protocol(match head {
        Head::Hello(_) => format!("the {from_name} sent a second hello frame"),
        _ => format!(
            "the {from_name} sent a {kind} frame, which only {}s send",
            from.other().name()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(error: RpcError) -> String {
        match error {
            RpcError::Protocol(why) => why,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn an_undecodable_head_is_named_by_its_kind() {
        let error = CodecError::TrailingBytes(1);
        assert_eq!(
            said(undecodable(Sender::Server, &[], &error)),
            "the server sent an empty frame, which has no head"
        );
        assert_eq!(
            said(undecodable(Sender::Client, &[0x7f, 0], &error)),
            "the client sent a frame of kind 0x7f, which the protocol does not have"
        );
        assert!(
            said(undecodable(Sender::Server, &[0x02], &error))
                .starts_with("the server sent a response frame whose head does not decode: ")
        );
    }

    #[test]
    fn a_misplaced_head_says_who_may_send_it() {
        assert_eq!(
            said(misplaced(Sender::Server, &Head::Cancel { id: 0 })),
            "the server sent a cancel frame, which only clients send"
        );
        let go_away = Head::GoAway {
            reason: 0,
            message: "".into(),
        };
        assert_eq!(
            said(misplaced(Sender::Client, &go_away)),
            "the client sent a go-away frame, which only servers send"
        );
    }
}
