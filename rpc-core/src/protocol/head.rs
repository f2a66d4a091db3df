//! The heads of the frames that every call sends, encoded and decoded by hand, byte for byte as
//! postcard does (docs/wire.md, section 3): through serde, a request's head and its answer's
//! cost about a fifth of what both ends spend on a small call. The hello, the go-away and any
//! bytes the hand decoder does not take go through serde, which also has the last word on what
//! is malformed.

use std::borrow::Cow;

use super::{CodecError, Head, Outcome, append};

/// The most bytes a varint of a `u64` takes.
const VARINT_MAX: usize = 10;

impl<'a> Head<'a> {
    /// Appends this head, postcard-encoded, to `out`.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        // The variant index first: a varint, one byte for each of these.
        match self {
            Head::Request {
                id,
                method,
                timeout_ms,
            } => put_request_head(out, *id, None, method, *timeout_ms),
            Head::Response { id, outcome } => {
                out.push(2);
                put_varint(out, *id);
                put_outcome(out, outcome);
            }
            Head::Cancel { id } => {
                out.push(3);
                put_varint(out, *id);
            }
            Head::Ping => out.push(4),
            Head::StreamItem { id } => {
                out.push(6);
                put_varint(out, *id);
            }
            Head::StreamEnd { id, outcome } => {
                out.push(7);
                put_varint(out, *id);
                put_outcome(out, outcome);
            }
            Head::Credit { id, bytes } => {
                out.push(8);
                put_varint(out, *id);
                put_varint(out, u64::from(*bytes));
            }
            Head::Hello(_) | Head::GoAway { .. } => return append(self, out),
        }
        Ok(())
    }

    /// Splits a frame's payload into its head and the bytes after it.
    pub(crate) fn decode(payload: &'a [u8]) -> Result<(Head<'a>, &'a [u8]), CodecError> {
        match decode_common(payload) {
            Some(decoded) => Ok(decoded),
            None => postcard::take_from_bytes(payload).map_err(CodecError::from),
        }
    }
}

/// Appends `value` as a postcard varint: seven bits a byte, least significant first, the high
/// bit set on every byte but the last.
#[inline]
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a string as postcard does: its length in bytes as a varint, then its bytes.
#[inline]
fn put_str(out: &mut Vec<u8>, text: &str) {
    put_bytes(out, text.as_bytes());
}

/// Appends bytes as postcard does a byte string: their length as a varint, then the bytes.
#[inline]
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends a request's head as postcard encodes [`Head::Request`]; with `service`, the name of
/// the method qualified by it (`service.method`, docs/wire.md, section 6), written in place:
/// made first as a string of its own, it was an allocation at every call of a service other
/// than the one the hellos named.
pub(crate) fn put_request_head(
    out: &mut Vec<u8>,
    id: u64,
    service: Option<&str>,
    method: &str,
    timeout_ms: u64,
) {
    let qualifier = service.map_or(0, |service| service.len() + 1);
    out.reserve(1 + 3 * VARINT_MAX + qualifier + method.len());
    out.push(1);
    put_varint(out, id);
    put_varint(out, (qualifier + method.len()) as u64);
    if let Some(service) = service {
        out.extend_from_slice(service.as_bytes());
        out.push(b'.');
    }
    out.extend_from_slice(method.as_bytes());
    put_varint(out, timeout_ms);
}

/// Appends a request's metadata as postcard does (docs/wire.md, section 4): the count of its
/// entries, then each key and each value with its length. Through serde, each key was checked
/// for UTF-8 again at every call, and a bearer token took a client 470 instructions a call.
pub(crate) fn put_metadata(out: &mut Vec<u8>, metadata: &crate::Metadata) {
    put_varint(out, metadata.len() as u64);
    for (key, value) in metadata.entry_bytes() {
        put_bytes(out, key);
        put_bytes(out, value);
    }
}

fn put_outcome(out: &mut Vec<u8>, outcome: &Outcome<'_>) {
    match outcome {
        Outcome::Ok => out.push(0),
        Outcome::Err { code, message } => {
            out.push(1);
            put_varint(out, u64::from(*code));
            put_str(out, message);
        }
    }
}

/// The heads of a call and of its stream, decoded as postcard decodes them; `None` for any
/// other head, and for bytes postcard may reject, which then go to postcard to say why.
#[inline]
fn decode_common(payload: &[u8]) -> Option<(Head<'_>, &[u8])> {
    let mut bytes = Bytes(payload);
    let head = match bytes.byte()? {
        1 => {
            let id = bytes.varint_u64()?;
            let method = bytes.str()?;
            let timeout_ms = bytes.varint_u64()?;
            Head::Request {
                id,
                method,
                timeout_ms,
            }
        }
        2 => {
            let id = bytes.varint_u64()?;
            let outcome = bytes.outcome()?;
            Head::Response { id, outcome }
        }
        3 => Head::Cancel {
            id: bytes.varint_u64()?,
        },
        4 => Head::Ping,
        6 => Head::StreamItem {
            id: bytes.varint_u64()?,
        },
        7 => {
            let id = bytes.varint_u64()?;
            let outcome = bytes.outcome()?;
            Head::StreamEnd { id, outcome }
        }
        8 => {
            let id = bytes.varint_u64()?;
            let credit = bytes.varint_u32()?;
            Head::Credit { id, bytes: credit }
        }
        _ => return None,
    };
    Some((head, bytes.0))
}

/// The bytes of a head not decoded yet.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    /// A varint of at most `max_len` bytes whose last byte, if it takes them all, is at most
    /// `max_last`: postcard's rule for a type of that width. A one-byte varint, the most common,
    /// is taken before the loop.
    #[inline]
    fn varint(&mut self, max_len: usize, max_last: u8) -> Option<u64> {
        let bytes = self.0;
        let &first = bytes.first()?;
        if first & 0x80 == 0 {
            self.0 = &bytes[1..];
            return Some(u64::from(first));
        }
        let mut value = u64::from(first & 0x7f);
        for i in 1..max_len {
            let byte = *bytes.get(i)?;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if i + 1 == max_len && byte > max_last {
                    return None;
                }
                self.0 = &bytes[i + 1..];
                return Some(value);
            }
        }
        None
    }

    fn varint_u64(&mut self) -> Option<u64> {
        // 64 bits in 7-bit groups: nine full bytes, and one bit in the tenth.
        self.varint(VARINT_MAX, 0x01)
    }

    fn varint_u32(&mut self) -> Option<u32> {
        // 32 bits: four full bytes, and four bits in the fifth.
        self.varint(5, 0x0f)
            .and_then(|value| u32::try_from(value).ok())
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.varint_u64()?).ok()?;
        if len > self.0.len() {
            return None;
        }
        let (text, rest) = self.0.split_at(len);
        self.0 = rest;
        std::str::from_utf8(text).ok()
    }

    fn outcome(&mut self) -> Option<Outcome<'a>> {
        match self.byte()? {
            0 => Some(Outcome::Ok),
            1 => {
                let code = self.varint_u32()?;
                let message = Cow::Borrowed(self.str()?);
                Some(Outcome::Err { code, message })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What a head is made of: its kind, numbers, a text, and whether its outcome failed.
    type Parts = (u8, u64, String, u64, u32, bool);

    fn parts() -> impl Strategy<Value = Parts> {
        (
            0u8..8,
            any::<u64>(),
            "[a-z_.é]{0,12}",
            any::<u64>(),
            any::<u32>(),
            any::<bool>(),
        )
    }

    /// Every head but the hello, from `parts`.
    fn head(parts: &Parts) -> Head<'_> {
        let (kind, id, text, number, code, failed) = parts;
        let outcome = || match failed {
            false => Outcome::Ok,
            true => Outcome::Err {
                code: *code,
                message: Cow::Borrowed(text),
            },
        };
        match kind {
            0 => Head::Request {
                id: *id,
                method: text,
                timeout_ms: *number,
            },
            1 => Head::Response {
                id: *id,
                outcome: outcome(),
            },
            2 => Head::Cancel { id: *id },
            3 => Head::Ping,
            4 => Head::GoAway {
                reason: *code,
                message: Cow::Borrowed(text),
            },
            5 => Head::StreamItem { id: *id },
            6 => Head::StreamEnd {
                id: *id,
                outcome: outcome(),
            },
            _ => Head::Credit {
                id: *id,
                bytes: *code,
            },
        }
    }

    proptest! {
        /// By hand, every head encodes to the bytes postcard makes of it.
        #[test]
        fn encodes_as_postcard_does(parts in parts()) {
            let head = head(&parts);
            let mut ours = vec![0xee];
            head.encode_into(&mut ours).expect("encodes");
            let mut theirs = vec![0xee];
            theirs.extend(postcard::to_stdvec(&head).expect("encodes"));
            prop_assert_eq!(ours, theirs);
        }

        /// A request naming its method qualified by a service, written in place, is the head
        /// of a request naming it by the qualified name, as postcard encodes it.
        #[test]
        fn a_qualified_request_head_is_the_head_of_its_qualified_name(
            id in any::<u64>(),
            service in "[A-Za-z]{1,140}",
            method in "[a-z_]{1,12}",
            timeout_ms in any::<u64>(),
        ) {
            let mut ours = Vec::new();
            put_request_head(&mut ours, id, Some(&service), &method, timeout_ms);
            let qualified = format!("{service}.{method}");
            let head = Head::Request { id, method: &qualified, timeout_ms };
            prop_assert_eq!(ours, postcard::to_stdvec(&head).expect("encodes"));
        }

        /// Any bytes decode by hand to what postcard makes of them, or are left to postcard:
        /// the same head and the same rest, or the same error.
        #[test]
        fn decodes_as_postcard_does(bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40),
            (parts(), prop::collection::vec(any::<u8>(), 0..4), any::<usize>(), any::<u8>())
                .prop_map(|(parts, rest, at, byte)| {
                    // A head as sent, sometimes with one byte changed.
                    let mut bytes = postcard::to_stdvec(&head(&parts)).expect("encodes");
                    bytes.extend(rest);
                    if byte % 2 == 0 {
                        let at = at % bytes.len();
                        bytes[at] = byte;
                    }
                    bytes
                }),
        ]) {
            let theirs = postcard::take_from_bytes::<Head<'_>>(&bytes)
                .map(|(head, rest)| (format!("{head:?}"), rest))
                .map_err(CodecError::from);
            if let Some((head, rest)) = decode_common(&bytes) {
                prop_assert_eq!(Ok((format!("{head:?}"), rest)), theirs.clone());
            }
            let decoded = Head::decode(&bytes).map(|(head, rest)| (format!("{head:?}"), rest));
            prop_assert_eq!(decoded, theirs);
        }
    }

    #[test]
    fn the_longest_varints_keep_postcards_limits() {
        // u64::MAX takes ten bytes, the last 0x01; a last byte of 0x02 overflows.
        let mut max = vec![6];
        max.extend([0xff; 9]);
        max.push(0x01);
        assert!(matches!(
            decode_common(&max),
            Some((Head::StreamItem { id: u64::MAX }, []))
        ));
        *max.last_mut().expect("ten bytes") = 0x02;
        assert!(decode_common(&max).is_none());
        assert!(Head::decode(&max).is_err());
        // u32::MAX takes five bytes, the last 0x0f.
        let credit = [8, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(
            decode_common(&credit),
            Some((
                Head::Credit {
                    id: 0,
                    bytes: u32::MAX
                },
                []
            ))
        ));
        let over = [8, 0, 0xff, 0xff, 0xff, 0xff, 0x10];
        assert!(decode_common(&over).is_none());
        assert!(Head::decode(&over).is_err());
    }
}
