//! Large byte strings read into memory of their own. A `Vec<u8>` or `serde_bytes::ByteBuf`
//! that ends a request's arguments or is a response's whole value is, on the wire, a varint
//! length and then the bytes, up to the frame's end. Read into the frame's buffer, it had to be
//! copied out again to become the vector the method takes or returns; read straight into a
//! vector of its own, it is that vector. The frame's reader splits such a frame where the
//! receiving side says the byte string may begin ([`find`]): the head keeps everything before
//! the byte string, with its length rewritten to `0`, and the [`Tail`] holds the bytes.
//! Decoding the head with the tail lent ([`decode_with`]) gives the tail to the byte string
//! that reads the rewritten length as the last thing in the head; anything else (the guess was
//! wrong) decodes the frame put back together, so a split never changes what is decoded.

use std::cell::RefCell;
use std::fmt;
use std::ops::Range;

use bytes::Bytes;

/// Frames whose byte string is shorter than this are read whole: a copy of it costs less than
/// the reads a split adds.
pub(crate) const MIN_TAIL: usize = 64 * 1024;

/// How far past the start the receiving side names a split looks for a byte string's length
/// that runs exactly to the frame's end: far enough for a few small arguments before it.
const SEARCH: usize = 256;

/// The most bytes a varint of a `usize` takes.
const MAX_VARINT: usize = 10;

thread_local! {
    /// The tail lent to the decoding on this thread, with the address just past the head it
    /// belongs to: the byte string whose (rewritten, empty) bytes end there takes it.
    static LENT: RefCell<Option<(Vec<u8>, usize)>> = const { RefCell::new(None) };
}

/// The byte string that ended a frame, read into memory of its own, and the length that went
/// before it on the wire (in the head, it reads `0`).
pub(crate) struct Tail {
    /// The bytes, read straight into this vector.
    pub(super) bytes: Vec<u8>,
    length: [u8; MAX_VARINT],
    length_len: u8,
}

impl fmt::Debug for Tail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tail({} bytes)", self.bytes.len())
    }
}

/// Where a frame of `size` bytes splits, if it ends in a byte string of at least [`MIN_TAIL`]
/// bytes whose length lies in `prefix` (the frame's first bytes) at `from` or up to [`SEARCH`]
/// bytes after: the length's position and size, and the byte string's.
pub(crate) fn find(prefix: &[u8], from: usize, size: usize) -> Option<Split> {
    let end = prefix.len().min(from.saturating_add(SEARCH));
    (from..end).find_map(|at| {
        let (length, length_len) = varint(prefix.get(at..)?)?;
        let starts = at + length_len;
        (length >= MIN_TAIL && starts.checked_add(length) == Some(size)).then_some(Split {
            at,
            length_len,
            length,
        })
    })
}

/// A frame's split: its byte string's length at `at`, `length_len` bytes long, then `length`
/// bytes of it to the frame's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Split {
    pub(crate) at: usize,
    pub(crate) length_len: usize,
    pub(crate) length: usize,
}

/// The varint at the start of `bytes` and how many bytes it takes, if it is whole and fits a
/// `usize`: a byte string's length, as postcard reads it.
fn varint(bytes: &[u8]) -> Option<(usize, usize)> {
    let (value, rest) = postcard::take_from_bytes::<usize>(bytes).ok()?;
    Some((value, bytes.len() - rest.len()))
}

impl Tail {
    /// How many bytes the byte string has.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// A tail whose length, `length` as it was on the wire, is rewritten in the head.
    pub(crate) fn new(bytes: Vec<u8>, length: &[u8]) -> Self {
        let mut kept = [0; MAX_VARINT];
        kept[..length.len()].copy_from_slice(length);
        Tail {
            bytes,
            length: kept,
            length_len: length.len() as u8,
        }
    }
}

/// Runs `decode` on the bytes of `frame` in `range` (which end the frame), lent as
/// [`crate::payload::decoding`] lends them, with `tail`, if the frame was split, lent to the
/// byte string that ends them. If that byte string does not take it, or `decode` fails before
/// it does, `decode` runs again on the bytes put back together as they came.
pub(crate) fn decode_with<T, E>(
    frame: &mut Bytes,
    range: Range<usize>,
    tail: Option<Tail>,
    mut decode: impl FnMut(&[u8]) -> Result<T, E>,
) -> Result<T, E> {
    let Some(tail) = tail else {
        return crate::payload::decoding(frame, range, decode);
    };
    // A split frame's head ends with the rewritten length: never empty.
    let Some(head) = frame.get(range.clone()).filter(|head| !head.is_empty()) else {
        return crate::payload::decoding(frame, range, decode);
    };
    let end = head.as_ptr_range().end as usize;
    let length = tail.length;
    let length = &length[..usize::from(tail.length_len)];
    let decoded = {
        let lent = Lend::new(tail.bytes, end);
        let decoded = crate::payload::decoding(frame, range.clone(), &mut decode);
        (decoded, lent.give_back())
    };
    let (decoded, Some(bytes)) = decoded else {
        return decoded.0;
    };
    // Not taken: the bytes as they came, with the length in place of the rewritten `0`.
    let head = &frame[range.start..range.end - 1];
    let mut whole = Vec::with_capacity(head.len() + length.len() + bytes.len());
    whole.extend_from_slice(head);
    whole.extend_from_slice(length);
    whole.extend_from_slice(&bytes);
    drop(decoded);
    let mut whole = Bytes::from(whole);
    let all = 0..whole.len();
    crate::payload::decoding(&mut whole, all, decode)
}

/// A tail lent to the decoding on this thread, taken back however the decoding ends, so that
/// no later decoding finds it.
struct Lend {
    /// What was lent before, to be put back; taken when it is.
    previous: Option<Option<(Vec<u8>, usize)>>,
}

impl Lend {
    fn new(bytes: Vec<u8>, end: usize) -> Self {
        Lend {
            previous: Some(LENT.replace(Some((bytes, end)))),
        }
    }

    /// The tail, unless a byte string took it.
    fn give_back(mut self) -> Option<Vec<u8>> {
        let previous = self.previous.take().flatten();
        LENT.replace(previous).map(|(bytes, _)| bytes)
    }
}

impl Drop for Lend {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            LENT.set(previous);
        }
    }
}

/// The tail lent to this decoding, for the byte string whose bytes, empty, lie at `at`: the
/// one whose rewritten length ends the head.
pub(crate) fn take(at: *const u8) -> Option<Vec<u8>> {
    LENT.with(|lent| {
        let mut lent = lent.borrow_mut();
        match &*lent {
            Some((_, end)) if *end == at as usize => lent.take().map(|(bytes, _)| bytes),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::__private::ByteVec;

    /// `args` encoded, then split as the reader splits a frame of them at `split`: the head with
    /// the length rewritten to `0`, and the tail.
    fn split_frame(args: &[u8], split: Split) -> (Bytes, Tail) {
        let bytes_at = split.at + split.length_len;
        let tail = Tail::new(args[bytes_at..].to_vec(), &args[split.at..bytes_at]);
        let mut head = args[..split.at].to_vec();
        head.push(0);
        (Bytes::from(head), tail)
    }

    fn encoded<T: serde::Serialize>(value: &T) -> Vec<u8> {
        postcard::to_stdvec(value).expect("encodes")
    }

    #[test]
    fn a_byte_string_that_runs_to_the_end_is_found_past_the_arguments_before_it() {
        let bytes = vec![5u8; MIN_TAIL];
        let args = encoded(&("key", 7u32, serde_bytes::ByteBuf::from(bytes)));
        // "key": a length and 3 bytes; 7: one byte; then the byte string's 3-byte length.
        let split = find(&args[..64], 0, args.len()).expect("found");
        assert_eq!(
            split,
            Split {
                at: 5,
                length_len: 3,
                length: MIN_TAIL
            }
        );
        assert_eq!(find(&args[..64], 6, args.len()), None, "not before `from`");
        assert_eq!(find(&args[..64], 0, args.len() + 1), None, "one byte short");
        assert_eq!(
            find(&args[..7], 0, args.len()),
            None,
            "the length not all there"
        );
    }

    #[test]
    fn a_short_byte_string_or_one_far_in_is_not_split() {
        let short = encoded(&serde_bytes::ByteBuf::from(vec![1u8; MIN_TAIL - 1]));
        assert_eq!(find(&short, 0, short.len()), None);
        let far = encoded(&(
            "k".repeat(SEARCH),
            serde_bytes::ByteBuf::from(vec![1u8; MIN_TAIL]),
        ));
        assert_eq!(find(&far[..1024], 0, far.len()), None);
    }

    #[test]
    fn varints_read_as_postcard_writes_them() {
        for value in [0usize, 1, 127, 128, 300, MIN_TAIL, 1 << 40, usize::MAX] {
            let bytes = encoded(&value);
            assert_eq!(varint(&bytes), Some((value, bytes.len())), "{value}");
        }
        assert_eq!(varint(&[0x80, 0x80]), None, "unfinished");
        assert_eq!(varint(&[0xff; 11]), None, "too long");
        assert_eq!(
            varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            None
        );
    }

    /// The byte string that ends the head takes the tail as it is: the vector decoded is the
    /// one the bytes were read into.
    #[test]
    fn the_last_byte_string_takes_the_tail_without_a_copy() {
        let args = encoded(&(
            serde_bytes::ByteBuf::from(vec![1u8; 3]),
            serde_bytes::ByteBuf::from(vec![9u8; MIN_TAIL]),
        ));
        let split = find(&args, 0, args.len()).expect("found");
        let (mut head, tail) = split_frame(&args, split);
        let read_into = tail.bytes.as_ptr();
        let whole = 0..head.len();
        let (first, last): (ByteVec, ByteVec) =
            decode_with(&mut head, whole, Some(tail), crate::protocol::decode_exact)
                .expect("decodes");
        assert_eq!(
            first.0, [1; 3],
            "an empty-looking string elsewhere does not take it"
        );
        assert_eq!(last.0, vec![9; MIN_TAIL]);
        assert_eq!(last.0.as_ptr(), read_into, "no copy");
        assert!(
            LENT.with(|lent| lent.borrow().is_none()),
            "nothing left lent"
        );
    }

    /// A value that does not take the tail (here a string, of the same bytes on the wire) is
    /// decoded from the frame as it came, the same as if it had not been split.
    #[test]
    fn a_tail_not_taken_is_put_back_where_it_came_from() {
        #[derive(Deserialize, Debug, PartialEq)]
        struct Named(u8, String);
        let text = "x".repeat(MIN_TAIL);
        let args = encoded(&(4u8, text.clone()));
        let split = find(&args, 0, args.len()).expect("found");
        let (mut head, tail) = split_frame(&args, split);
        let whole = 0..head.len();
        let named: Named = decode_with(&mut head, whole, Some(tail), crate::protocol::decode_exact)
            .expect("decodes");
        assert_eq!(named, Named(4, text));
        assert!(
            LENT.with(|lent| lent.borrow().is_none()),
            "nothing left lent"
        );
    }

    /// A decoding that fails without the tail taken runs again on the frame put back
    /// together, and fails or succeeds as it would have on it.
    #[test]
    fn a_failed_decoding_with_the_tail_untaken_sees_the_whole_frame() {
        let args = encoded(&serde_bytes::ByteBuf::from(vec![3u8; MIN_TAIL]));
        let split = find(&args, 0, args.len()).expect("found");
        let (mut head, tail) = split_frame(&args, split);
        let whole = 0..head.len();
        let mut seen = Vec::new();
        let decoded: Result<(), ()> = decode_with(&mut head, whole, Some(tail), |bytes| {
            seen.push(bytes.len());
            Err(())
        });
        assert_eq!(decoded, Err(()));
        assert_eq!(seen, [1, args.len()], "the head, then the whole");
    }

    type Value<T> = Option<(String, u32, T)>;

    /// The arguments decoded as a byte string's (which takes a tail).
    fn taking(bytes: &[u8]) -> Result<Value<Vec<u8>>, ()> {
        let decoded = crate::protocol::decode_exact::<(String, u32, ByteVec)>(bytes);
        Ok(decoded.ok().map(|(key, n, bytes)| (key, n, bytes.0)))
    }

    /// The same bytes decoded through serde's byte buffer, which never takes one.
    fn through_serde(bytes: &[u8]) -> Result<Value<Vec<u8>>, ()> {
        let decoded = crate::protocol::decode_exact::<(String, u32, serde_bytes::ByteBuf)>(bytes);
        Ok(decoded
            .ok()
            .map(|(key, n, bytes)| (key, n, bytes.into_vec())))
    }

    /// The same bytes decoded as a string, which never takes one.
    fn as_text(bytes: &[u8]) -> Result<Value<String>, ()> {
        Ok(crate::protocol::decode_exact::<(String, u32, String)>(bytes).ok())
    }

    /// `decode` run on `args` split at `split`, as the reader splits a frame.
    fn split_decoded<T>(
        args: &[u8],
        split: Split,
        decode: impl FnMut(&[u8]) -> Result<T, ()>,
    ) -> Result<T, ()> {
        let (mut head, tail) = split_frame(args, split);
        let whole = 0..head.len();
        decode_with(&mut head, whole, Some(tail), decode)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Whatever the arguments before it, and whatever bytes of the head are garbled, a frame
        /// split where `find` says decodes to what the whole frame decodes to, for a type that
        /// takes the tail and for types that do not.
        #[test]
        fn a_split_frame_decodes_as_the_whole_one(
            key in ".{0,40}",
            n in proptest::prelude::any::<u32>(),
            extra in 0usize..3000,
            garbled in proptest::collection::vec((0usize..60, proptest::prelude::any::<u8>()), 0..3),
        ) {
            let mut args = encoded(&(key, n, "y".repeat(MIN_TAIL + extra)));
            for (at, byte) in garbled {
                if at < args.len() {
                    args[at] = byte;
                }
            }
            if let Some(split) = find(&args[..512], 0, args.len()) {
                proptest::prop_assert_eq!(split_decoded(&args, split, taking), taking(&args));
                proptest::prop_assert_eq!(
                    split_decoded(&args, split, through_serde),
                    through_serde(&args)
                );
                proptest::prop_assert_eq!(split_decoded(&args, split, as_text), as_text(&args));
            }
        }
    }

    /// A tail is only ever taken within the decoding it was lent to, even one that panics.
    #[test]
    fn a_panicking_decoding_leaves_no_tail_lent() {
        let args = encoded(&serde_bytes::ByteBuf::from(vec![3u8; MIN_TAIL]));
        let split = find(&args, 0, args.len()).expect("found");
        let (mut head, tail) = split_frame(&args, split);
        let whole = 0..head.len();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decode_with::<(), ()>(&mut head, whole, Some(tail), |_| panic!("a bad value"))
        }));
        assert!(panicked.is_err());
        assert!(LENT.with(|lent| lent.borrow().is_none()));
    }
}
