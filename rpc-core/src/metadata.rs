//! Metadata: string keys with byte values that travel with a call, such as an auth token or a
//! trace id.

use std::collections::HashMap;
use std::fmt;

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// String keys to byte values, attached to a call by the client and read by the handler through
/// [`Context::metadata`](crate::Context::metadata).
///
/// ```
/// let mut metadata = rpc_core::Metadata::new();
/// metadata.insert("authorization", "Bearer s3cr3t");
/// metadata.insert("trace-id", [0x2a; 8]);
/// assert_eq!(metadata.get("authorization"), Some(&b"Bearer s3cr3t"[..]));
/// assert_eq!(metadata.get_str("authorization"), Some("Bearer s3cr3t"));
/// assert_eq!(metadata.remove("trace-id"), Some(vec![0x2a; 8]));
/// assert_eq!(metadata.len(), 1);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: Vec<Entry>,
}

/// One key and its value, in one allocation: a server decodes every call's metadata, and an
/// auth token as a `String` and a `Vec<u8>` of their own, with a list of keys to find repeats
/// in, made four allocations a call.
#[derive(Clone, PartialEq, Eq)]
struct Entry {
    /// The key's bytes, then the value's.
    bytes: Box<[u8]>,
    /// Where the key ends.
    key_len: usize,
}

impl Entry {
    fn new(key: &str, value: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(key.len() + value.len());
        bytes.extend_from_slice(key.as_bytes());
        bytes.extend_from_slice(value);
        Entry {
            bytes: bytes.into_boxed_slice(),
            key_len: key.len(),
        }
    }

    fn key(&self) -> &str {
        std::str::from_utf8(self.key_bytes()).expect("an entry is made from a `str` key")
    }

    fn key_bytes(&self) -> &[u8] {
        &self.bytes[..self.key_len]
    }

    fn value(&self) -> &[u8] {
        &self.bytes[self.key_len..]
    }

    fn position(entries: &[Entry], key: &str) -> Option<usize> {
        entries
            .iter()
            .position(|entry| entry.key_bytes() == key.as_bytes())
    }
}

impl Metadata {
    /// No entries.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`, replacing an earlier value of the same key.
    pub fn insert(&mut self, key: impl AsRef<str>, value: impl AsRef<[u8]>) {
        let key = key.as_ref();
        let entry = Entry::new(key, value.as_ref());
        match Entry::position(&self.entries, key) {
            Some(at) => self.entries[at] = entry,
            None => self.entries.push(entry),
        }
    }

    /// Removes `key`, returning its value if it had one.
    pub fn remove(&mut self, key: &str) -> Option<Vec<u8>> {
        let at = Entry::position(&self.entries, key)?;
        Some(self.entries.remove(at).value().to_vec())
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        let at = Entry::position(&self.entries, key)?;
        Some(self.entries[at].value())
    }

    /// The value of `key`, if it is UTF-8 text.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every entry, in the order first inserted.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries
            .iter()
            .map(|entry| (entry.key(), entry.value()))
    }

    /// Every entry's key and value as bytes, in the order first inserted.
    pub(crate) fn entry_bytes(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries
            .iter()
            .map(|entry| (entry.key_bytes(), entry.value()))
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in self.iter() {
            match std::str::from_utf8(value) {
                Ok(text) => map.entry(&key, &text),
                Err(_) => map.entry(&key, &value),
            };
        }
        map.finish()
    }
}

/// On the wire: a count, then (key as string, value as bytes) pairs.
impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Bytes<'a>(&'a [u8]);
        impl Serialize for Bytes<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_bytes(self.0)
            }
        }
        let mut seq = serializer.serialize_seq(Some(self.entries.len()))?;
        for (key, value) in self.iter() {
            seq.serialize_element(&(key, Bytes(value)))?;
        }
        seq.end()
    }
}

/// Read entry by entry: the count a peer claims sizes no allocation. A key that comes again
/// replaces the earlier value, found through an index, so decoding is linear in the entries.
impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Metadata;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of (key, value) pairs")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Metadata, A::Error> {
                let mut decoded = Decoded::default();
                while let Some((key, value)) = seq.next_element::<(&'de str, &'de [u8])>()? {
                    decoded.push(key, value);
                }
                Ok(decoded.metadata)
            }
        }
        deserializer.deserialize_seq(EntriesVisitor)
    }
}

/// How much metadata one call may carry: a server refuses a call over either limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MetadataLimits {
    /// The most bytes of keys and values together.
    pub(crate) max_len: usize,
    /// The most entries.
    pub(crate) max_entries: usize,
}

impl MetadataLimits {
    /// 16 KiB in at most 64 entries: room for auth tokens and trace context, not for a payload.
    pub(crate) const DEFAULT: MetadataLimits = MetadataLimits {
        max_len: 16 * 1024,
        max_entries: 64,
    };
}

/// Why a request's metadata was not taken.
#[derive(Debug)]
pub(crate) enum MetadataError {
    /// The bytes are not metadata: the peer broke the protocol.
    Malformed(postcard::Error),
    /// The metadata is well formed but over a limit; the sentence names it.
    OverLimit(String),
}

impl Metadata {
    /// Decodes the metadata at the start of `bytes` within `limits`, returning it and the bytes
    /// after it. Stops at the first entry over a limit, so the work is linear in the bytes
    /// read and bounded by the limits, whatever the peer claims.
    pub(crate) fn decode_prefix(
        bytes: &[u8],
        limits: MetadataLimits,
    ) -> Result<(Metadata, &[u8]), MetadataError> {
        // Most calls carry none: the count 0, one byte.
        if let [0, rest @ ..] = bytes {
            return Ok((Metadata::default(), rest));
        }
        let (count, mut rest) =
            postcard::take_from_bytes::<u64>(bytes).map_err(MetadataError::Malformed)?;
        if count > limits.max_entries as u64 {
            let entries = if count == 1 { "entry" } else { "entries" };
            return Err(MetadataError::OverLimit(format!(
                "the call's metadata has {count} {entries}, over the server's limit of {}",
                limits.max_entries
            )));
        }
        let mut decoded = Decoded::with_capacity(count as usize);
        let mut len = 0usize;
        for _ in 0..count {
            let ((key, value), after) = postcard::take_from_bytes::<(&str, &[u8])>(rest)
                .map_err(MetadataError::Malformed)?;
            rest = after;
            len += key.len() + value.len();
            if len > limits.max_len {
                return Err(MetadataError::OverLimit(format!(
                    "the call's metadata is over the server's limit of {} bytes",
                    limits.max_len
                )));
            }
            decoded.push(key, value);
        }
        Ok((decoded.metadata, rest))
    }
}

/// Metadata being decoded: entries in the order first seen, a later value of the same key
/// replacing the earlier one. Few entries are compared directly; more go through an index.
#[derive(Default)]
struct Decoded<'a> {
    metadata: Metadata,
    /// The keys of the first [`Self::SCAN_UP_TO`] entries, borrowed from the bytes being
    /// decoded, for the index once there are more.
    first_keys: [&'a str; Decoded::SCAN_UP_TO],
    index: Option<HashMap<&'a str, usize>>,
}

impl<'a> Decoded<'a> {
    /// Past this many entries, keys are found through a hash index.
    const SCAN_UP_TO: usize = 8;

    /// Room for `count` entries, which the caller has bounded.
    fn with_capacity(count: usize) -> Self {
        let mut decoded = Decoded::default();
        decoded.metadata.entries.reserve_exact(count);
        decoded
    }

    fn push(&mut self, key: &'a str, value: &[u8]) {
        let entries = &mut self.metadata.entries;
        let found = match &self.index {
            Some(index) => index.get(key).copied(),
            None => Entry::position(entries, key),
        };
        let entry = Entry::new(key, value);
        if let Some(at) = found {
            entries[at] = entry;
            return;
        }
        entries.push(entry);
        let at = entries.len() - 1;
        match &mut self.index {
            Some(index) => {
                index.insert(key, at);
            }
            None if at < Self::SCAN_UP_TO => self.first_keys[at] = key,
            None => {
                let mut index: HashMap<&'a str, usize> = self
                    .first_keys
                    .iter()
                    .enumerate()
                    .map(|(at, k)| (*k, at))
                    .collect();
                index.insert(key, at);
                self.index = Some(index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replaces_and_keeps_order() {
        let mut metadata = Metadata::new();
        metadata.insert("a", "1");
        metadata.insert("b", [0xff]);
        metadata.insert("a", "2");
        let entries: Vec<_> = metadata.iter().collect();
        assert_eq!(entries, [("a", &b"2"[..]), ("b", &[0xff][..])]);
        assert_eq!(metadata.get_str("b"), None, "not UTF-8");
    }

    #[test]
    fn remove_takes_out_its_key_alone() {
        let mut metadata = Metadata::new();
        metadata.insert("a", "1");
        metadata.insert("b", "2");
        metadata.insert("c", "3");
        assert_eq!(metadata.remove("b"), Some(b"2".to_vec()));
        assert_eq!(metadata.remove("b"), None, "already removed");
        let entries: Vec<_> = metadata.iter().collect();
        assert_eq!(entries, [("a", &b"1"[..]), ("c", &b"3"[..])]);
    }

    #[test]
    fn debug_shows_text_as_text_and_other_bytes_as_numbers() {
        let mut metadata = Metadata::new();
        metadata.insert("tenant", "a");
        metadata.insert("id", [0xff, 1]);
        assert_eq!(
            format!("{metadata:?}"),
            r#"{"tenant": "a", "id": [255, 1]}"#
        );
    }

    #[test]
    fn the_default_limits_take_16_kib_in_64_entries() {
        // 64 keys of 3 bytes and values of 253: 16,384 bytes together.
        let mut metadata = Metadata::new();
        for i in 0..64 {
            metadata.insert(format!("k{i:02}"), [0; 253]);
        }
        let at_limit = postcard::to_stdvec(&metadata).expect("encodes");
        let (decoded, _) =
            Metadata::decode_prefix(&at_limit, MetadataLimits::DEFAULT).expect("at the limits");
        assert_eq!(decoded, metadata);

        metadata.insert("k63", [0; 254]);
        let a_byte_over = postcard::to_stdvec(&metadata).expect("encodes");
        match Metadata::decode_prefix(&a_byte_over, MetadataLimits::DEFAULT) {
            Err(MetadataError::OverLimit(why)) => assert!(why.contains("16384 bytes"), "{why}"),
            other => panic!("expected OverLimit, got {other:?}"),
        }

        metadata.insert("k63", [0; 253]);
        metadata.remove("k62");
        metadata.insert("k64", []);
        metadata.insert("k65", []);
        let an_entry_over = postcard::to_stdvec(&metadata).expect("encodes");
        match Metadata::decode_prefix(&an_entry_over, MetadataLimits::DEFAULT) {
            Err(MetadataError::OverLimit(why)) => assert!(why.contains("limit of 64"), "{why}"),
            other => panic!("expected OverLimit, got {other:?}"),
        }
    }

    #[test]
    fn keys_are_indexed_past_eight_entries() {
        let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        let mut decoded = Decoded::default();
        for key in &keys[..8] {
            decoded.push(key, b"v");
        }
        assert!(decoded.index.is_none(), "eight are scanned");
        decoded.push(&keys[8], b"v");
        let index = decoded.index.as_ref().expect("the ninth builds the index");
        assert_eq!(index.len(), 9);
        decoded.push(&keys[9], b"v");
        decoded.push(&keys[0], b"w");
        let index = decoded.index.as_ref().expect("kept");
        assert_eq!(index.get("k9"), Some(&9));
        assert_eq!(decoded.metadata.len(), 10);
        assert_eq!(decoded.metadata.get("k0"), Some(&b"w"[..]));
    }

    fn limits(max_len: usize, max_entries: usize) -> MetadataLimits {
        MetadataLimits {
            max_len,
            max_entries,
        }
    }

    #[test]
    fn decode_prefix_returns_what_follows() {
        let bytes = [1, 1, b'k', 2, 1, 2, 0xaa, 0xbb];
        let (metadata, rest) =
            Metadata::decode_prefix(&bytes, MetadataLimits::DEFAULT).expect("decodes");
        assert_eq!(metadata.get("k"), Some(&[1, 2][..]));
        assert_eq!(rest, [0xaa, 0xbb]);
    }

    #[test]
    fn no_metadata_is_one_byte_whether_or_not_anything_follows() {
        for (bytes, after) in [(&[0, 0xaa][..], &[0xaa][..]), (&[0], &[])] {
            let (metadata, rest) =
                Metadata::decode_prefix(bytes, MetadataLimits::DEFAULT).expect("decodes");
            assert!(metadata.is_empty());
            assert_eq!(rest, after);
        }
        // The count's varint written the long way is no metadata too, as postcard reads it.
        let (metadata, rest) =
            Metadata::decode_prefix(&[0x80, 0x00, 7], MetadataLimits::DEFAULT).expect("decodes");
        assert!(metadata.is_empty());
        assert_eq!(rest, [7]);
    }

    #[test]
    fn a_repeated_key_keeps_its_place_and_takes_the_last_value() {
        let mut metadata = Metadata::new();
        for i in 0..20u8 {
            metadata.insert(format!("k{i}"), [i]);
        }
        let mut bytes = postcard::to_stdvec(&metadata).expect("encodes");
        // Twenty more entries repeating the first twenty keys with new values.
        bytes[0] = 40;
        for i in 0..20u8 {
            let entry = (format!("k{i}"), vec![i + 100]);
            bytes.extend(postcard::to_stdvec(&entry).expect("encodes"));
        }
        for decoded in [
            Metadata::decode_prefix(&bytes, limits(1024, 64))
                .expect("decodes")
                .0,
            postcard::from_bytes::<Metadata>(&bytes).expect("decodes"),
        ] {
            assert_eq!(decoded.len(), 20);
            for (i, (key, value)) in decoded.iter().enumerate() {
                assert_eq!(key, format!("k{i}"));
                assert_eq!(value, [i as u8 + 100]);
            }
        }
    }

    #[test]
    fn metadata_over_a_limit_is_refused_naming_it() {
        let mut metadata = Metadata::new();
        metadata.insert("a", [0; 10]);
        metadata.insert("b", [0; 10]);
        let bytes = postcard::to_stdvec(&metadata).expect("encodes");
        match Metadata::decode_prefix(&bytes, limits(1024, 1)) {
            Err(MetadataError::OverLimit(why)) => assert!(why.contains("limit of 1"), "{why}"),
            other => panic!("expected OverLimit, got {other:?}"),
        }
        match Metadata::decode_prefix(&bytes, limits(15, 64)) {
            Err(MetadataError::OverLimit(why)) => assert!(why.contains("15 bytes"), "{why}"),
            other => panic!("expected OverLimit, got {other:?}"),
        }
        // Exactly at both limits: taken; a byte under: refused.
        assert!(Metadata::decode_prefix(&bytes, limits(22, 2)).is_ok());
        assert!(matches!(
            Metadata::decode_prefix(&bytes, limits(21, 2)),
            Err(MetadataError::OverLimit(_))
        ));
    }

    #[test]
    fn a_claimed_count_is_checked_before_any_entry_is_read() {
        // A count of a billion with no entries behind it.
        let bytes = [0x80, 0x94, 0xeb, 0xdc, 0x03];
        assert!(matches!(
            Metadata::decode_prefix(&bytes, MetadataLimits::DEFAULT),
            Err(MetadataError::OverLimit(_))
        ));
        assert!(matches!(
            Metadata::decode_prefix(&bytes, limits(usize::MAX, usize::MAX)),
            Err(MetadataError::Malformed(_))
        ));
    }

    #[test]
    fn wire_bytes_round_trip() {
        let mut metadata = Metadata::new();
        metadata.insert("k", [1, 2]);
        let bytes = postcard::to_stdvec(&metadata).expect("encodes");
        assert_eq!(bytes, [1, 1, b'k', 2, 1, 2]);
        assert_eq!(postcard::from_bytes::<Metadata>(&bytes), Ok(metadata));
    }
}
