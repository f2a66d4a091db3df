//! Metadata: string keys with byte values that travel with a call, such as an auth token or a
//! trace id.

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
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: Vec<(String, Vec<u8>)>,
}

impl Metadata {
    /// No entries.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`, replacing an earlier value of the same key.
    pub fn insert(&mut self, key: impl Into<String>, value: impl AsRef<[u8]>) {
        let key = key.into();
        let value = value.as_ref().to_vec();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// The value of `key`, if it is UTF-8 text.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every entry, in the order first inserted.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
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
        for (key, value) in &self.entries {
            seq.serialize_element(&(key, Bytes(value)))?;
        }
        seq.end()
    }
}

/// Read entry by entry: the count a peer claims sizes no allocation.
impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Metadata;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of (key, value) pairs")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Metadata, A::Error> {
                let mut metadata = Metadata::new();
                while let Some((key, value)) = seq.next_element::<(&'de str, &'de [u8])>()? {
                    metadata.insert(key, value);
                }
                Ok(metadata)
            }
        }
        deserializer.deserialize_seq(EntriesVisitor)
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
    fn wire_bytes_round_trip() {
        let mut metadata = Metadata::new();
        metadata.insert("k", [1, 2]);
        let bytes = postcard::to_stdvec(&metadata).expect("encodes");
        assert_eq!(bytes, [1, 1, b'k', 2, 1, 2]);
        assert_eq!(postcard::from_bytes::<Metadata>(&bytes), Ok(metadata));
    }
}
