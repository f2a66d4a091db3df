//! The wire protocol: what each frame carries. `docs/wire.md` describes the same thing byte by
//! byte; keep the two in step.
//!
//! A frame is a 4-byte big-endian payload length followed by the payload. The payload starts
//! with a postcard-encoded [`Head`]; for a request the rest of the payload is the arguments, for
//! a successful response it is the return value, both postcard-encoded.

mod budget;
pub(crate) mod busy;
mod codec;
mod depth;
mod frame;
mod frame_memory;
mod head;
mod hello;
mod outbox;
mod outgoing;
#[cfg(test)]
mod properties;
mod send_gate;
mod spare;
mod stall;
mod tail;
mod violation;
mod writer;

pub(crate) use budget::{Budget, GaveWay};
pub(crate) use busy::CallSent;
pub use codec::CodecError;
pub(crate) use codec::{Decode, Encode, append, decode_exact};
#[cfg(test)]
pub(crate) use frame::tests::frame;
pub(crate) use frame::{FrameReader, is_large, length_prefix};
pub(crate) use frame_memory::FrameMemory;
pub(crate) use hello::{Hello, PeerInfo};
pub(crate) use outbox::{Claim, DEFAULT_QUEUE_LIMIT, Meter, Outbox, Queue, StreamFrames};
pub(crate) use outgoing::{Frame, FrameStart, OpenScope, offer};
pub(crate) use send_gate::{GatedWrite, SendGate};
pub(crate) use spare::{copied, shared};
pub(crate) use tail::{Tail, decode_with, take as take_tail};
pub(crate) use violation::{Sender, misplaced, undecodable};
pub(crate) use writer::{FrameWriter, write_frames_through};

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// The byte length of the frame header (the payload length).
pub(crate) const LENGTH_PREFIX: usize = 4;

/// The default limit on a frame's payload: 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Keep-alive settings of one side: ping after `interval` of sending nothing; presume the peer
/// dead after `timeout` of waiting for its bytes in vain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeepAlive {
    pub(crate) interval: std::time::Duration,
    pub(crate) timeout: std::time::Duration,
}

impl KeepAlive {
    /// The defaults of both sides: ping after 15 s of silence, give up after 45 s.
    pub(crate) const DEFAULT: KeepAlive = KeepAlive {
        interval: std::time::Duration::from_secs(15),
        timeout: std::time::Duration::from_secs(45),
    };

    /// The settings a builder was given, with an interval of at least
    /// [`MIN_PERIOD`](crate::alarm::MIN_PERIOD): zero would ping without pause.
    pub(crate) fn new(interval: std::time::Duration, timeout: std::time::Duration) -> Self {
        KeepAlive {
            interval: crate::alarm::period(interval),
            timeout,
        }
    }
}

/// The largest limit the 4-byte length prefix can express.
pub(crate) const MAX_FRAME_LEN_CAP: usize = u32::MAX as usize;

/// The smallest limit on frames a builder takes: below it a connection's own frames (pings,
/// cancellations, credit) and its error answers would not fit, and a connection could carry
/// nothing. A smaller setting is raised to it.
pub(crate) const MIN_FRAME_LEN: usize = 1024;

/// The limit on frames a builder was given `bytes` for: within [`MIN_FRAME_LEN`] and
/// [`MAX_FRAME_LEN_CAP`].
pub(crate) fn frame_limit(bytes: usize) -> usize {
    bytes.clamp(MIN_FRAME_LEN, MAX_FRAME_LEN_CAP)
}

/// What a frame is. The variant index is the first byte of every payload (postcard encodes it
/// as a varint, and every index here is below 128).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Head<'a> {
    /// 0: the first frame each side sends. Boxed: the largest head by far, it would make
    /// every head as large, to be moved and dropped on every call.
    #[serde(borrow)]
    Hello(Box<Hello<'a>>),
    /// 1: a call; the rest of the payload is the call's metadata
    /// ([`Metadata`](crate::Metadata), decoded apart so that its limits are checked as it is
    /// read), then the arguments.
    Request {
        /// Chosen by the client, unique among its calls in flight on the connection.
        id: u64,
        /// The method's name as written in the trait (without `r#`).
        method: &'a str,
        /// How long the client waits, in milliseconds; 0 for no deadline.
        timeout_ms: u64,
    },
    /// 2: the answer to the request with the same id.
    Response {
        /// The id of the request answered.
        id: u64,
        /// Whether the call succeeded; on success the rest of the payload is the return value.
        outcome: Outcome<'a>,
    },
    /// 3: the client no longer waits for this call; the server drops its handler.
    Cancel {
        /// The id of the request cancelled.
        id: u64,
    },
    /// 4: a heartbeat, sent by either side after a while of sending nothing else.
    Ping,
    /// 5: the server takes no new calls on this connection and closes it once the calls it is
    /// running are answered; `reason` is one of the [`go_away`] constants.
    GoAway {
        /// Why the server closes the connection.
        reason: u32,
        /// A sentence for people, at most [`MAX_ERROR_MESSAGE`] bytes.
        #[serde(borrow)]
        message: Cow<'a, str>,
    },
    /// 6: one item of call `id`'s stream; the rest of the payload is the item.
    StreamItem {
        /// The call the stream belongs to.
        id: u64,
    },
    /// 7: the end of call `id`'s stream, cleanly or with an error.
    StreamEnd {
        /// The call the stream belongs to.
        id: u64,
        /// How the stream ended.
        outcome: Outcome<'a>,
    },
    /// 8: the receiver of call `id`'s stream gives its sender `bytes` more credit: its
    /// consumer has taken items of that cost.
    Credit {
        /// The call the stream belongs to.
        id: u64,
        /// How much credit is added, in bytes of item cost.
        bytes: u32,
    },
}

/// The names of the frame kinds, by their byte (docs/wire.md, section 4), for error messages:
/// the heads above, then the frames of a reverse connection.
pub(crate) const KIND_NAMES: [&str; 10] = [
    "hello",
    "request",
    "response",
    "cancel",
    "ping",
    "go-away",
    "stream item",
    "stream end",
    "credit",
    "reverse",
];

/// How a call ended.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Outcome<'a> {
    /// 0: the handler returned; its value follows the head.
    Ok,
    /// 1: the call failed before or while running; nothing follows the head.
    Err {
        /// One of the [`code`] constants.
        code: u32,
        /// A sentence for people, at most [`MAX_ERROR_MESSAGE`] bytes.
        #[serde(borrow)]
        message: Cow<'a, str>,
    },
}

/// The error codes of [`Outcome::Err`].
pub(crate) mod code {
    /// The server has no method of that name.
    pub(crate) const UNKNOWN_METHOD: u32 = 1;
    /// The arguments did not decode into the method's parameter types.
    pub(crate) const INVALID_ARGUMENTS: u32 = 2;
    /// The handler panicked.
    pub(crate) const HANDLER_PANICKED: u32 = 3;
    /// The encoded return value is over the client's frame limit.
    pub(crate) const RESPONSE_TOO_LARGE: u32 = 4;
    /// The return value could not be encoded.
    pub(crate) const RESPONSE_ENCODE_FAILED: u32 = 5;
    /// The deadline passed before the handler finished; the handler was dropped.
    pub(crate) const DEADLINE_EXCEEDED: u32 = 6;
    /// The server is closing the connection and did not run the call.
    pub(crate) const NOT_RUN: u32 = 7;
    /// A stream's sender ended it with an error.
    pub(crate) const STREAM_FAILED: u32 = 8;
    /// The call is over one of the server's per-call limits (its metadata); it did not run.
    pub(crate) const LIMIT_EXCEEDED: u32 = 9;
    // 10 to 17: the server's interceptor or a middleware layer refused the call with a
    // [`StatusCode`](crate::StatusCode); `StatusCode::wire_code` numbers them.
}

/// The method every server answers with its [`ServiceSchema`](crate::schema::ServiceSchema),
/// unless reflection is off. No trait method has this name: it is not an identifier.
pub(crate) const DESCRIBE_METHOD: &str = "rpc.describe";

/// The reasons of [`Head::GoAway`].
pub(crate) mod go_away {
    /// The server is shutting down.
    pub(crate) const SHUTTING_DOWN: u32 = 0;
    /// The connection had no call for the server's idle timeout.
    pub(crate) const IDLE: u32 = 1;
    /// The server is at its connection limit, and this idle connection gives way to a new one.
    pub(crate) const MAKING_ROOM: u32 = 2;
    /// The client broke the protocol; the message says how. The server closes the connection
    /// once the answers it had already queued are written.
    pub(crate) const PROTOCOL_ERROR: u32 = 3;
    /// The server ran short of memory for large frames and took it back from this connection,
    /// in the middle of a frame: the server closes it as it does on a protocol error.
    pub(crate) const MEMORY_RECLAIMED: u32 = 4;
}

/// Error messages sent to the peer are cut to this many bytes.
pub(crate) const MAX_ERROR_MESSAGE: usize = 1024;

/// Cuts a message to at most [`MAX_ERROR_MESSAGE`] bytes, on a character boundary.
fn truncate_message(message: &str) -> &str {
    if message.len() <= MAX_ERROR_MESSAGE {
        return message;
    }
    let mut end = MAX_ERROR_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

impl<'a> Head<'a> {
    /// The frame kind's name, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        let kind = match self {
            Head::Hello(_) => 0,
            Head::Request { .. } => 1,
            Head::Response { .. } => 2,
            Head::Cancel { .. } => 3,
            Head::Ping => 4,
            Head::GoAway { .. } => 5,
            Head::StreamItem { .. } => 6,
            Head::StreamEnd { .. } => 7,
            Head::Credit { .. } => 8,
        };
        KIND_NAMES[kind]
    }

    /// A complete frame holding only this head, for the heads that carry no body.
    pub(crate) fn frame(&self) -> Vec<u8> {
        // Serializing a head into a Vec cannot fail: it has no maps, sequences of unknown length
        // or custom serializers that fail.
        let Ok(mut frame) = self.start(16) else {
            unreachable!("a frame head always encodes");
        };
        let size = (frame.len() - LENGTH_PREFIX) as u32;
        frame[..LENGTH_PREFIX].copy_from_slice(&size.to_be_bytes());
        frame
    }

    /// Starts a frame: room for the length prefix, then this head.
    pub(crate) fn begin_frame(&self) -> Result<Frame, CodecError> {
        self.start(64).map(Frame::from)
    }

    /// The bytes of a frame begun with this head, in a buffer of `capacity` bytes (at most
    /// [`spare::SMALL_MAX`]) to start with: room for the length prefix, then the head.
    fn start(&self, capacity: usize) -> Result<Vec<u8>, CodecError> {
        let mut bytes = frame_bytes(capacity);
        self.encode_into(&mut bytes)?;
        Ok(bytes)
    }
}

/// The bytes of a frame to be written, in a buffer of `capacity` bytes (at most
/// [`spare::SMALL_MAX`]) to start with: room for the length prefix, filled in once the payload
/// is whole.
fn frame_bytes(capacity: usize) -> Vec<u8> {
    let mut bytes = spare::small(capacity);
    bytes.extend_from_slice(&[0; LENGTH_PREFIX]);
    bytes
}

/// Starts a request frame: its head, then its metadata, ready for the arguments. With
/// `service`, the method is named qualified by it, `service.method`.
pub(crate) fn begin_request(
    id: u64,
    service: Option<&str>,
    method: &str,
    timeout_ms: u64,
    metadata: &crate::Metadata,
) -> Frame {
    let mut bytes = frame_bytes(64);
    head::put_request_head(&mut bytes, id, service, method, timeout_ms);
    head::put_metadata(&mut bytes, metadata);
    Frame::from(bytes)
}

/// Fills in the length prefix of a frame started with [`Head::begin_frame`], refusing a payload
/// over `limit` bytes.
pub(crate) fn finish_frame(frame: &mut Frame, limit: usize) -> Result<(), crate::RpcError> {
    finish_frame_at(frame, 0, limit).map(drop)
}

/// Fills in the length prefix of the frame that starts at `at` (see [`Frame::start_frame`]),
/// refusing a payload over `limit` bytes. Returns the payload's length.
#[inline]
pub(crate) fn finish_frame_at(
    frame: &mut Frame,
    at: usize,
    limit: usize,
) -> Result<usize, crate::RpcError> {
    let size = frame.payload_len_from(at);
    if size > limit.min(MAX_FRAME_LEN_CAP) {
        return Err(crate::RpcError::FrameTooLarge {
            size: size as u64,
            limit: limit as u64,
        });
    }
    // `size` fits in u32: it is at most MAX_FRAME_LEN_CAP.
    frame.set_length_prefix(at, size as u32);
    Ok(size)
}

impl<'a> Head<'a> {
    /// A go-away for `reason`, its message cut to [`MAX_ERROR_MESSAGE`] bytes.
    pub(crate) fn go_away(reason: u32, message: &'a str) -> Self {
        Head::GoAway {
            reason,
            message: Cow::Borrowed(truncate_message(message)),
        }
    }
}

impl<'a> Outcome<'a> {
    /// A failure with `code`, its message cut to [`MAX_ERROR_MESSAGE`] bytes.
    pub(crate) fn error(code: u32, message: &'a str) -> Self {
        Outcome::Err {
            code,
            message: Cow::Borrowed(truncate_message(message)),
        }
    }
}

/// Builds a complete error response frame. Error frames are small, so they always fit.
pub(crate) fn error_response(id: u64, code: u32, message: &str) -> Frame {
    Head::Response {
        id,
        outcome: Outcome::error(code, message),
    }
    .frame()
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_head_bytes_match_wire_md() {
        // docs/wire.md, "Example": call `add` with id 1.
        let mut frame = begin_request(1, None, "add", 100, &crate::Metadata::new());
        frame.append(&(2i64, 3i64)).expect("encodes");
        finish_frame(&mut frame, DEFAULT_MAX_FRAME_LEN).expect("fits");
        assert_eq!(
            frame.contiguous().expect("no payload to splice"),
            [
                0, 0, 0, 10, 0x01, 0x01, 0x03, b'a', b'd', b'd', 0x64, 0x00, 0x04, 0x06
            ]
        );
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        // Two-byte characters after one byte: the limit falls inside a character.
        let long = format!("a{}", "é".repeat(1000));
        let cut = truncate_message(&long);
        assert_eq!(
            cut.len(),
            MAX_ERROR_MESSAGE - 1,
            "cut before the split character"
        );
        assert!(cut[1..].chars().all(|c| c == 'é'));
        assert_eq!(truncate_message("short"), "short");
    }

    #[test]
    fn stream_frame_bytes_match_wire_md() {
        assert_eq!(Head::StreamItem { id: 3 }.frame(), [0, 0, 0, 2, 0x06, 0x03]);
        let end = Head::StreamEnd {
            id: 3,
            outcome: Outcome::Ok,
        };
        assert_eq!(end.frame(), [0, 0, 0, 3, 0x07, 0x03, 0x00]);
        let credit = Head::Credit {
            id: 3,
            bytes: 65_536,
        };
        assert_eq!(credit.frame(), [0, 0, 0, 5, 0x08, 0x03, 0x80, 0x80, 0x04]);
    }

    #[test]
    fn control_frame_bytes_match_wire_md() {
        assert_eq!(Head::Cancel { id: 5 }.frame(), [0, 0, 0, 2, 0x03, 0x05]);
        assert_eq!(Head::Ping.frame(), [0, 0, 0, 1, 0x04]);
        assert_eq!(
            Head::go_away(go_away::SHUTTING_DOWN, "").frame(),
            [0, 0, 0, 3, 0x05, 0x00, 0x00]
        );
        let idle = Head::go_away(go_away::IDLE, "idle").frame();
        assert_eq!(idle, [0, 0, 0, 7, 0x05, 0x01, 0x04, b'i', b'd', b'l', b'e']);
    }

    #[test]
    fn request_metadata_bytes_match_wire_md() {
        let mut metadata = crate::Metadata::new();
        metadata.insert("k", "v");
        let mut frame = begin_request(2, None, "f", 0, &metadata);
        finish_frame(&mut frame, DEFAULT_MAX_FRAME_LEN).expect("fits");
        assert_eq!(
            frame.contiguous().expect("nothing spliced"),
            [
                0, 0, 0, 10, 0x01, 0x02, 0x01, b'f', 0x00, 0x01, 0x01, b'k', 0x01, b'v'
            ]
        );
    }

    #[test]
    fn response_head_bytes_match_wire_md() {
        let mut frame = Head::Response {
            id: 1,
            outcome: Outcome::Ok,
        }
        .begin_frame()
        .expect("encodes");
        frame.append(&5i64).expect("encodes");
        finish_frame(&mut frame, DEFAULT_MAX_FRAME_LEN).expect("fits");
        assert_eq!(
            frame.contiguous().expect("nothing spliced"),
            [0, 0, 0, 4, 0x02, 0x01, 0x00, 0x0a]
        );

        // docs/wire.md, section 8: an unknown-method answer to id 7.
        let frame = error_response(7, code::UNKNOWN_METHOD, "no such");
        let mut expected = vec![0, 0, 0, 0x0c, 0x02, 0x07, 0x01, 0x01, 0x07];
        expected.extend_from_slice(b"no such");
        assert_eq!(frame.contiguous().expect("nothing spliced"), expected);
    }

    #[test]
    fn finish_frame_takes_a_payload_of_exactly_the_limit() {
        let mut frame = Frame::from(vec![0u8; LENGTH_PREFIX + 10]);
        finish_frame(&mut frame, 10).expect("exactly the limit fits");
        assert_eq!(
            frame.contiguous().expect("contiguous")[..LENGTH_PREFIX],
            [0, 0, 0, 10]
        );
    }

    #[test]
    fn finish_frame_refuses_payloads_over_the_limit() {
        let mut frame = Frame::from(vec![0u8; LENGTH_PREFIX + 11]);
        let err = finish_frame(&mut frame, 10).expect_err("over the limit");
        assert!(matches!(
            err,
            crate::RpcError::FrameTooLarge {
                size: 11,
                limit: 10
            }
        ));
    }
}
