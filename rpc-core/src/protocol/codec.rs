//! postcard encoding into an existing buffer, and strict decoding.

use std::ops::Range;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::depth::{Limited, Limits};
use super::{outgoing, spare};

/// A value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// postcard rejected the bytes or the value.
    #[error("{}", postcard_sentence(.0))]
    Postcard(#[from] postcard::Error),
    /// The value decoded, but bytes were left after it.
    #[error("bytes were left over after the value: {0} of them")]
    TrailingBytes(usize),
    /// The value nests deeper than this many levels: decoding it could overflow the stack.
    #[error("the value nests deeper than {0} levels")]
    TooDeep(usize),
    /// The value's sequences and maps claim more items, all told, than one for each of its
    /// bytes and this many more: as many items of no bytes (`Vec<()>`) would keep the decoder
    /// counting them.
    #[error(
        "the value's sequences and maps hold more items than one a byte and {0} more: too \
         many items of no bytes"
    )]
    TooManyItems(usize),
}

/// What postcard's `error` means, as a sentence a reader of either side's log can act on:
/// postcard's own messages are phrases ("Serde Deserialization Error") that do not say which
/// rule the bytes broke.
fn postcard_sentence(error: &postcard::Error) -> String {
    use postcard::Error::*;
    match error {
        DeserializeUnexpectedEnd => "the bytes ended before the value did".into(),
        DeserializeBadVarint => "a variable-length integer ran on past its type's width".into(),
        DeserializeBadBool => "a bool was neither 0 nor 1".into(),
        DeserializeBadChar => "a char was not a Unicode scalar value".into(),
        DeserializeBadUtf8 => "a string was not valid UTF-8".into(),
        DeserializeBadOption => "an Option's tag was neither 0 nor 1".into(),
        DeserializeBadEnum => "an enum's variant index was over 2^32 - 1".into(),
        SerdeDeCustom => {
            "a value was out of its type's range (an enum's variant index past its last \
             variant, a collection of the wrong length, or a value the type's own rules refuse)"
                .into()
        }
        SerdeSerCustom => "the value refused to be encoded (its Serialize failed)".into(),
        SerializeSeqLengthUnknown => {
            "a sequence whose length is not known in advance cannot be encoded".into()
        }
        CollectStrError => "a value written with `collect_str` failed to format".into(),
        other => format!("postcard could not handle the value: {other}"),
    }
}

/// Appends `value`, postcard-encoded, to `out`. Within [`Frame::encode`](super::Frame::encode),
/// `out` being the frame's bytes, large payloads are spliced in rather than copied. On failure
/// `out` is left as it was.
pub(crate) fn append<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let (start, spliced) = (out.len(), outgoing::spliced_count());
    match postcard::serialize_with_flavor(value, AppendTo(out)) {
        Ok(()) => Ok(()),
        Err(error) => {
            out.truncate(start);
            outgoing::forget_splices_after(spliced);
            Err(error.into())
        }
    }
}

/// Decodes a `T` that must fill `bytes` exactly: trailing bytes mean the two sides disagree on
/// the type, and are an error rather than silently ignored. A value nested deeper than
/// [`MAX_DEPTH`](super::depth::MAX_DEPTH) is refused before it can exhaust the stack, and one
/// claiming more items than its bytes can hold before it keeps the thread counting them
/// ([`super::depth`]).
pub(crate) fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let mut deserializer = postcard::Deserializer::from_bytes(bytes);
    let limits = Limits::of(bytes.len());
    let value = match T::deserialize(Limited::new(&mut deserializer, &limits)) {
        Ok(value) => value,
        Err(error) => return Err(limits.broken().unwrap_or_else(|| error.into())),
    };
    let rest = deserializer.finalize()?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(CodecError::TrailingBytes(rest.len()))
    }
}

/// What goes into a frame as a value: anything serde serializes, or bytes encoded already
/// ([`Encoded`](crate::dynamic::Encoded)).
pub(crate) trait Encode {
    /// Appends the value's encoding to `out`, as [`append`] does; on failure `out` is left as
    /// it was.
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError>;
}

impl<T: Serialize + ?Sized> Encode for T {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        append(self, out)
    }
}

/// What comes out of a frame as a value: anything serde deserializes, or the bytes as they
/// are ([`Encoded`](crate::dynamic::Encoded)).
pub(crate) trait Decode: Sized {
    /// Decodes `bytes`, which it must fill exactly, while the frame they lie in is lent for
    /// decoding ([`crate::payload::decoding`]): a [`Payload`](crate::Payload) in them shares the
    /// frame's memory. Many values decoded within one lending cost one lending.
    fn decode_lent(bytes: &[u8]) -> Result<Self, CodecError>;

    /// Decodes the bytes of `frame` in `range`, which it must fill exactly; a
    /// [`Payload`](crate::Payload) in them shares the frame's memory.
    #[inline]
    fn decode(frame: &mut bytes::Bytes, range: Range<usize>) -> Result<Self, CodecError> {
        crate::payload::decoding(frame, range, Self::decode_lent)
    }
}

impl<T: DeserializeOwned> Decode for T {
    #[inline]
    fn decode_lent(bytes: &[u8]) -> Result<Self, CodecError> {
        decode_exact(bytes)
    }
}

/// Slices up to this long are appended byte by byte.
const SMALL: usize = 16;

/// Appends `data` to `out`; a short slice (varints, short strings) byte by byte, which costs
/// less than a call to memcpy. A function of its own, not a branch of `try_extend`: written
/// inline there, the same loop cost a stream of small numbers 29 more instructions an item
/// (callgrind), the compiler laying out the encoding of each item differently.
///
/// Read a byte at a time, too: postcard writes a varint into a buffer of its own a byte at a
/// time just before, and a slice of four appended as an array was read back in one load that
/// had to wait for those four stores (`perf annotate`: three fifths of this function's time,
/// itself a fifth of both ends'), for 14 fewer instructions an item and no more items a second.
#[inline]
fn append_bytes(out: &mut Vec<u8>, data: &[u8]) {
    if data.len() <= SMALL {
        out.reserve(data.len());
        for &byte in data {
            out.push(byte);
        }
    } else {
        out.extend_from_slice(data);
    }
}

/// A postcard flavor that appends to a `Vec` a slice at a time, except for the large payloads
/// it splices in.
struct AppendTo<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    // Always inlined: left to the compiler, it was inlined or not from one build to the next,
    // and out of line a stream's small numbers cost 31 more instructions each, a sequential
    // call 85 more and a call among 32 callers 89 more (callgrind, shared runtime for calls).
    #[inline(always)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() < outgoing::SPLICE_MIN {
            append_bytes(self.0, data);
        } else if !outgoing::splice(self.0.len(), data) {
            spare::reserve(self.0, data.len());
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_keeps_what_was_there() {
        let mut out = vec![9];
        append(&(1u8, "hi"), &mut out).expect("encodes");
        assert_eq!(out, [9, 1, 2, b'h', b'i']);
    }

    /// Every length, whichever way it is appended, appends the slice as it is.
    #[test]
    fn append_bytes_appends_slices_of_every_length_whole() {
        let data: Vec<u8> = (1..=40).collect();
        for len in 0..=data.len() {
            let mut out = vec![0xee];
            append_bytes(&mut out, &data[..len]);
            assert_eq!(out[0], 0xee);
            assert_eq!(out[1..], data[..len], "{len} bytes");
        }
    }

    #[test]
    fn decode_exact_rejects_trailing_bytes() {
        assert_eq!(decode_exact::<u8>(&[5]), Ok(5));
        assert_eq!(
            decode_exact::<u8>(&[5, 6, 7]),
            Err(CodecError::TrailingBytes(2))
        );
        assert!(matches!(
            decode_exact::<u64>(&[]),
            Err(CodecError::Postcard(_))
        ));
    }

    /// A value that does not decode is described in a sentence that names the rule its bytes
    /// broke, not postcard's phrase ("Serde Deserialization Error" for a bad enum variant).
    #[test]
    fn decode_errors_read_as_sentences() {
        let said = |error: CodecError| error.to_string();
        let short = decode_exact::<(u8, u8)>(&[1]).expect_err("one byte short");
        assert_eq!(said(short), "the bytes ended before the value did");
        let extra = decode_exact::<u8>(&[1, 2]).expect_err("a byte over");
        assert_eq!(
            said(extra),
            "bytes were left over after the value: 1 of them"
        );
        let utf8 = decode_exact::<String>(&[1, 0xff]).expect_err("not UTF-8");
        assert_eq!(said(utf8), "a string was not valid UTF-8");
        let variant = decode_exact::<Result<u8, u8>>(&[2, 0]).expect_err("no third variant");
        assert!(said(variant).starts_with("a value was out of its type's range"));
    }
}
