//! A bound on how deeply a value a peer sends may nest. serde decodes a nested value by
//! recursion, a few stack frames per level, and postcard spends a byte or two on a level: a
//! frame of a few kilobytes that nests `Option<Box<Self>>` (or any recursive type of the
//! user's) deep enough would overflow the decoding thread's stack and abort the whole process.
//! Every value is decoded through [`Limited`], which refuses one nested deeper than
//! [`MAX_DEPTH`] before the stack runs out (docs/wire.md, section 3).

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, Visitor};

/// The most levels a decoded value may nest: each sequence, map, tuple, struct, enum variant,
/// `Some` and newtype counts one. Far past what data types nest in practice, and far within
/// what a thread's stack holds (tokio's workers have 2 MiB).
pub(crate) const MAX_DEPTH: usize = 256;

/// A deserializer that fails once the value nests deeper than its depth allows, noting in
/// `exceeded` that this is why.
pub(crate) struct Limited<'a, D> {
    inner: D,
    depth: usize,
    exceeded: &'a Cell<bool>,
}

impl<'a, D> Limited<'a, D> {
    /// `inner`, allowed [`MAX_DEPTH`] levels.
    pub(crate) fn new(inner: D, exceeded: &'a Cell<bool>) -> Self {
        Limited {
            inner,
            depth: MAX_DEPTH,
            exceeded,
        }
    }
}

/// A visitor, stack or seed one level down, or the error that there is no level left.
#[derive(Clone, Copy)]
struct Level<'a> {
    depth: usize,
    exceeded: &'a Cell<bool>,
}

impl<'a> Level<'a> {
    #[inline]
    fn down<E: de::Error>(self) -> Result<Self, E> {
        match self.depth.checked_sub(1) {
            Some(depth) => Ok(Level { depth, ..self }),
            None => Err(self.too_deep()),
        }
    }

    #[cold]
    fn too_deep<E: de::Error>(self) -> E {
        self.exceeded.set(true);
        E::custom(format_args!(
            "the value nests deeper than {MAX_DEPTH} levels"
        ))
    }

    #[inline]
    fn limit<D>(self, inner: D) -> Limited<'a, D> {
        Limited {
            inner,
            depth: self.depth,
            exceeded: self.exceeded,
        }
    }
}

impl<'a, D> Limited<'a, D> {
    #[inline]
    fn level(&self) -> Level<'a> {
        Level {
            depth: self.depth,
            exceeded: self.exceeded,
        }
    }
}

/// Wraps `visitor` to count the levels of what it visits.
struct Visiting<'a, V> {
    visitor: V,
    level: Level<'a>,
}

/// Each `deserialize_*` method, with the arguments it passes on before the visitor.
macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*)),* $(,)?) => {
        $(
            #[inline]
            fn $method<V: Visitor<'de>>(
                self,
                $($arg: $ty,)*
                visitor: V,
            ) -> Result<V::Value, D::Error> {
                let level = self.level();
                self.inner.$method($($arg,)* Visiting { visitor, level })
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Limited<'_, D> {
    type Error = D::Error;

    forward_deserialize!(
        deserialize_any(),
        deserialize_bool(),
        deserialize_i8(),
        deserialize_i16(),
        deserialize_i32(),
        deserialize_i64(),
        deserialize_i128(),
        deserialize_u8(),
        deserialize_u16(),
        deserialize_u32(),
        deserialize_u64(),
        deserialize_u128(),
        deserialize_f32(),
        deserialize_f64(),
        deserialize_char(),
        deserialize_str(),
        deserialize_string(),
        deserialize_bytes(),
        deserialize_byte_buf(),
        deserialize_option(),
        deserialize_unit(),
        deserialize_seq(),
        deserialize_map(),
        deserialize_identifier(),
        deserialize_ignored_any(),
        deserialize_unit_struct(name: &'static str),
        deserialize_newtype_struct(name: &'static str),
        deserialize_tuple(len: usize),
        deserialize_tuple_struct(name: &'static str, len: usize),
        deserialize_struct(name: &'static str, fields: &'static [&'static str]),
        deserialize_enum(name: &'static str, variants: &'static [&'static str]),
    );

    #[inline]
    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(
            #[inline]
            fn $method<E: de::Error>(self, value: $ty) -> Result<V::Value, E> {
                self.visitor.$method(value)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Visiting<'_, V> {
    type Value = V::Value;

    #[inline]
    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(formatter)
    }

    forward_visit!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>),
    );

    #[inline]
    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_none()
    }

    #[inline]
    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_unit()
    }

    #[inline]
    fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<V::Value, D::Error> {
        let level = self.level.down()?;
        self.visitor.visit_some(level.limit(inner))
    }

    #[inline]
    fn visit_newtype_struct<D: Deserializer<'de>>(self, inner: D) -> Result<V::Value, D::Error> {
        let level = self.level.down()?;
        self.visitor.visit_newtype_struct(level.limit(inner))
    }

    #[inline]
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        let level = self.level.down()?;
        self.visitor.visit_seq(Access { inner: seq, level })
    }

    #[inline]
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        let level = self.level.down()?;
        self.visitor.visit_map(Access { inner: map, level })
    }

    #[inline]
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        let level = self.level.down()?;
        self.visitor.visit_enum(Access { inner: data, level })
    }
}

/// The elements, entries or variant of a value one level down: each is decoded with what
/// depth is left.
struct Access<'a, A> {
    inner: A,
    level: Level<'a>,
}

/// Decodes one part of a value with what depth is left.
struct Seed<'a, S> {
    seed: S,
    level: Level<'a>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
    type Value = S::Value;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, inner: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(self.level.limit(inner))
    }
}

impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    #[inline]
    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        let level = self.level;
        self.inner.next_element_seed(Seed { seed, level })
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: de::MapAccess<'de>> de::MapAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    #[inline]
    fn next_key_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        let level = self.level;
        self.inner.next_key_seed(Seed { seed, level })
    }

    #[inline]
    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        let level = self.level;
        self.inner.next_value_seed(Seed { seed, level })
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'a, 'de, A: de::EnumAccess<'de>> de::EnumAccess<'de> for Access<'a, A> {
    type Error = A::Error;
    type Variant = Access<'a, A::Variant>;

    #[inline]
    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), A::Error> {
        let level = self.level;
        let (value, variant) = self.inner.variant_seed(Seed { seed, level })?;
        Ok((
            value,
            Access {
                inner: variant,
                level,
            },
        ))
    }
}

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    #[inline]
    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    #[inline]
    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, A::Error> {
        let level = self.level;
        self.inner.newtype_variant_seed(Seed { seed, level })
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let level = self.level;
        self.inner.tuple_variant(len, Visiting { visitor, level })
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let level = self.level;
        self.inner
            .struct_variant(fields, Visiting { visitor, level })
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::MAX_DEPTH;
    use crate::protocol::{CodecError, decode_exact};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Chain {
        next: Option<Box<Chain>>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Tree {
        Leaf(u8),
        Node(Vec<Tree>),
    }

    /// A chain of `links` links, as postcard writes it: `01` for each `Some`, then `00`.
    fn chain(links: usize) -> Vec<u8> {
        let mut bytes = vec![0x01; links];
        bytes.push(0x00);
        bytes
    }

    #[test]
    fn a_value_within_the_depth_decodes_as_it_would_without_the_bound() {
        // Each link is a `Some`, then a struct: two levels.
        let within = MAX_DEPTH / 2 - 1;
        let decoded: Chain = decode_exact(&chain(within)).expect("decodes");
        assert_eq!(
            postcard::to_stdvec(&decoded).expect("encodes"),
            chain(within)
        );
        let tree = Tree::Node(vec![Tree::Leaf(1), Tree::Node(vec![Tree::Leaf(2)])]);
        let bytes = postcard::to_stdvec(&tree).expect("encodes");
        assert_eq!(decode_exact::<Tree>(&bytes), Ok(tree));
    }

    /// Deep enough to overflow a worker's stack unbounded: refused, saying why, in no time.
    #[test]
    fn a_value_nested_past_the_depth_is_refused() {
        for bytes in [chain(MAX_DEPTH), chain(1_000_000)] {
            assert_eq!(
                decode_exact::<Chain>(&bytes),
                Err(CodecError::TooDeep(MAX_DEPTH))
            );
        }
        // A tree: `Node`, a vector of one, and so on.
        let mut bytes = [0x01, 0x01].repeat(1_000_000);
        bytes.extend([0x00, 0x07]);
        assert_eq!(
            decode_exact::<Tree>(&bytes),
            Err(CodecError::TooDeep(MAX_DEPTH))
        );
    }
}
