//! Byte payloads that cross the connection without being copied out of the frame they arrive
//! in.

use std::cell::RefCell;
use std::fmt;
use std::ops::{Deref, Range};

use bytes::Bytes;
use serde::de::{Error, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

thread_local! {
    /// The frame being decoded on this thread, if any: a `Payload` decoded from it shares its
    /// memory instead of copying.
    static DECODING: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` on the bytes of `frame` in `range` (none if it lies outside), with `frame` as
/// the frame payloads are sliced from.
///
/// The frame is lent to the thread for the call, and given back however `decode` ends: moved,
/// not cloned, so decoding costs no change to the reference count the frame shares with the
/// buffer it was read into, which the connection's reader, on another thread, keeps changing.
pub(crate) fn decoding<T>(
    frame: &mut Bytes,
    range: Range<usize>,
    decode: impl FnOnce(&[u8]) -> T,
) -> T {
    /// Gives the lent frame back to its owner.
    struct Lent<'a>(&'a mut Bytes);

    impl Drop for Lent<'_> {
        #[inline]
        fn drop(&mut self) {
            if let Some(frame) = DECODING.with(RefCell::take) {
                *self.0 = frame;
            }
        }
    }

    let lent = std::mem::take(frame);
    // Created before the frame is lent, so that it takes the frame back even if `decode` panics.
    let _lent = Lent(frame);
    DECODING.with(|current| {
        *current.borrow_mut() = Some(lent);
        let current = current.borrow();
        let frame = current.as_deref().unwrap_or_default();
        decode(frame.get(range).unwrap_or_default())
    })
}

/// Bytes for arguments and results that should not be copied: a received `Payload` shares the
/// memory of the frame it arrived in, and a sent one of 16 KiB or more is written to the socket
/// from its own memory rather than copied into its frame. (A call's whole result of 32 bytes or
/// fewer is copied out of its frame on the client, which costs less than sharing it.)
///
/// Use it for large binary arguments, results and stream items (file chunks, images, blobs). A
/// `Vec<u8>` or `serde_bytes::ByteBuf` argument or result is sent from its own memory too, and
/// a large one (64 KiB or more) that is the last argument or the whole result of a method that
/// streams no argument is received into memory of its own; elsewhere it is copied out of its
/// frame. Nested in
/// another type, or sent as a stream item, a `ByteBuf` is copied into its frame and a `Vec<u8>`
/// goes through serde a byte at a time. On the wire a `Payload` is the same as a `Vec<u8>` or
/// `serde_bytes::ByteBuf`: a length, then the bytes.
///
/// ```
/// use rpc_core::Payload;
///
/// let chunk = Payload::from(vec![1, 2, 3]);
/// assert_eq!(&chunk[..], [1, 2, 3]);
/// let bytes: bytes::Bytes = chunk.into_bytes();
/// assert_eq!(bytes.len(), 3);
/// ```
///
/// A received payload keeps the whole frame it arrived in alive: copy the bytes out
/// (`to_vec`) to keep a small part of a large frame for long.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Payload(Bytes);

impl Payload {
    /// The bytes, without copying.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Self {
        Payload(bytes)
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        Payload(Bytes::from(bytes))
    }
}

impl From<&'static [u8]> for Payload {
    fn from(bytes: &'static [u8]) -> Self {
        Payload(Bytes::from_static(bytes))
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::protocol::offer(&self.0);
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PayloadVisitor;

        impl<'de> Visitor<'de> for PayloadVisitor {
            type Value = Payload;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }

            fn visit_borrowed_bytes<E: Error>(self, bytes: &'de [u8]) -> Result<Payload, E> {
                Ok(Payload(slice_of_frame(bytes)))
            }

            fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Payload, E> {
                Ok(Payload(Bytes::copy_from_slice(bytes)))
            }

            fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Payload, E> {
                Ok(Payload(Bytes::from(bytes)))
            }
        }

        deserializer.deserialize_bytes(PayloadVisitor)
    }
}

/// `bytes` as a slice of the frame being decoded when it lies within it; a copy otherwise.
pub(crate) fn slice_of_frame(bytes: &[u8]) -> Bytes {
    DECODING.with(|current| {
        let current = current.borrow();
        match current.as_ref() {
            Some(frame) if within(frame, bytes) => frame.slice_ref(bytes),
            _ => Bytes::copy_from_slice(bytes),
        }
    })
}

fn within(frame: &[u8], part: &[u8]) -> bool {
    let frame = frame.as_ptr_range();
    let part = part.as_ptr_range();
    frame.start <= part.start && part.end <= frame.end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_conversion_keeps_the_bytes() {
        let bytes = [1u8, 2, 3];
        for payload in [
            Payload::from(&b"\x01\x02\x03"[..]),
            Payload::from(bytes.to_vec()),
            Payload::from(Bytes::copy_from_slice(&bytes)),
        ] {
            assert_eq!(payload.as_ref(), bytes);
            assert_eq!(&payload[..], bytes);
            assert_eq!(format!("{payload:?}"), "Payload(3 bytes)");
            assert_eq!(payload.into_bytes(), bytes[..]);
        }
    }

    #[test]
    fn a_payload_decoded_from_a_frame_shares_its_memory() {
        let mut frame =
            Bytes::from(postcard::to_stdvec(&Payload::from(vec![7u8; 100])).expect("encodes"));
        let whole = 0..frame.len();
        let payload: Payload =
            decoding(&mut frame, whole, |bytes| postcard::from_bytes(bytes)).expect("decodes");
        assert_eq!(&payload[..], [7; 100]);
        assert_eq!(frame.len(), 101, "the frame is given back");
        assert!(within(&frame, &payload), "no copy");

        let elsewhere: Payload = postcard::from_bytes(&frame).expect("decodes");
        assert!(!within(&frame, &elsewhere), "outside a frame it is copied");
        assert_eq!(payload, elsewhere);

        // Bytes decoded from other memory while a frame is lent are copied too.
        let other = postcard::to_stdvec(&Payload::from(vec![9u8; 10])).expect("encodes");
        let copied: Payload =
            decoding(&mut frame, 0..0, |_| postcard::from_bytes(&other)).expect("decodes");
        assert_eq!(&copied[..], [9; 10]);
        assert!(!within(&other, &copied), "a copy, not a slice of the frame");
    }

    /// A deserializer that hands its bytes over: owned, or borrowed for the call only.
    enum Handed {
        Owned(Vec<u8>),
        Lent(Vec<u8>),
    }

    impl<'de> Deserializer<'de> for Handed {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            match self {
                Handed::Owned(bytes) => visitor.visit_byte_buf(bytes),
                Handed::Lent(bytes) => visitor.visit_bytes(&bytes),
            }
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map struct
            enum identifier ignored_any
        }
    }

    #[test]
    fn bytes_not_borrowed_from_the_input_are_taken_whole() {
        for handed in [Handed::Owned(vec![1, 2, 3]), Handed::Lent(vec![1, 2, 3])] {
            let payload = Payload::deserialize(handed).expect("decodes");
            assert_eq!(&payload[..], [1, 2, 3]);
        }
    }

    #[test]
    fn decoding_sees_the_range_asked_for_and_nothing_outside_the_frame() {
        let mut frame = Bytes::from_static(&[1, 2, 3, 4]);
        assert_eq!(decoding(&mut frame, 1..3, <[u8]>::to_vec), [2, 3]);
        assert_eq!(decoding(&mut frame, 3..9, <[u8]>::to_vec), []);
        assert_eq!(frame[..], [1, 2, 3, 4]);
    }

    #[test]
    fn a_decoder_that_panics_still_gives_the_frame_back() {
        let mut frame = Bytes::from_static(&[1, 2, 3]);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decoding(&mut frame, 0..3, |_| panic!("a decoder panicked"))
        }));
        assert!(panicked.is_err());
        assert_eq!(frame[..], [1, 2, 3]);
        assert!(
            DECODING.with(|current| current.borrow().is_none()),
            "the thread holds no frame any more"
        );
    }
}
