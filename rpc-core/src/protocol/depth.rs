//! Bounds on what a value a peer sends may make its decoder do.
//!
//! How deeply it nests: serde decodes a nested value by recursion, a few stack frames per
//! level, and postcard spends a byte or two on a level: a frame of a few kilobytes that nests
//! `Option<Box<Self>>` (or any recursive type of the user's) deep enough would overflow the
//! decoding thread's stack and abort the whole process. A value nested deeper than
//! [`MAX_DEPTH`] is refused before the stack runs out.
//!
//! How many items its sequences and maps hold, each as many as the peer claims (a tuple's,
//! struct's or variant's are as many as the type says): an item of no bytes (`()`, a unit
//! struct) costs its claim nothing, so a few bytes could claim `Vec<()>` of 2^64 items and keep
//! the decoding thread counting them for ever. Every other item takes at least a byte of its
//! own, so a value holds, all told, at most one item a byte of it plus [`ZERO_SIZED_ITEMS`].
//!
//! How much room its collections make for what they claim: serde gives a vector or a hash map
//! room for its count before its items come (up to 1 MiB each), so a map nested in a map a
//! hundred times, each claiming a million entries in a few bytes, had some 180 MiB made for a
//! frame of 400 bytes. The counts decoders see are cut to what the value's bytes can hold, all
//! told: one item a byte.
//!
//! Every value is decoded through [`Limited`] (docs/wire.md, section 3).

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, Visitor};

use super::CodecError;

/// The most levels a decoded value may nest: each sequence, map, tuple, struct, enum variant,
/// `Some` and newtype counts one. Far past what data types nest in practice, and far within
/// what a thread's stack holds (tokio's workers have 2 MiB).
pub(crate) const MAX_DEPTH: usize = 256;

/// How many items a value's sequences and maps may hold, all told, beyond one for each of its
/// bytes: room for a few thousand items of no bytes (a `Vec<()>`), and no more work than that
/// for a lie about their number.
pub(crate) const ZERO_SIZED_ITEMS: usize = 4096;

/// What one value may still make its decoder do, and which bound it broke, if one did.
pub(crate) struct Limits {
    /// Items its sequences and maps may still hold.
    items_left: Cell<usize>,
    /// Items its sequences and maps may still be given room for before they come: what their
    /// counts say, up to one item a byte of the value, all told.
    room_left: Cell<usize>,
    /// The error for the bound broken.
    broken: Cell<Option<CodecError>>,
}

impl Limits {
    /// The bounds of a value of `len` bytes.
    pub(crate) fn of(len: usize) -> Self {
        Limits {
            items_left: Cell::new(len.saturating_add(ZERO_SIZED_ITEMS)),
            room_left: Cell::new(len),
            broken: Cell::new(None),
        }
    }

    /// The error for the bound the value broke, if the decoding failed for that.
    pub(crate) fn broken(&self) -> Option<CodecError> {
        self.broken.take()
    }

    /// `count` more items of sequences and maps, or the error that the value holds too many.
    ///
    /// A sequence or map whose claim postcard tells is counted all at once as it starts:
    /// postcard then gives exactly as many items as the peer claimed, or fails, so a value is
    /// refused exactly when counting each item as it came would refuse it, only sooner, before
    /// any is decoded. (Counting each item as it came, a check at every element, made a vector
    /// of numbers decode at 70% of postcard's own rate.) Only the items of a sequence whose
    /// claim it does not tell are counted one at a time ([`EachCounted`]).
    #[inline]
    fn items<E: de::Error>(&self, count: usize) -> Result<(), E> {
        match self.items_left.get().checked_sub(count) {
            Some(left) => {
                self.items_left.set(left);
                Ok(())
            }
            None => Err(self.break_with(CodecError::TooManyItems(ZERO_SIZED_ITEMS))),
        }
    }

    /// How many items a sequence or map that claims `count` may be given room for now: its
    /// claim, within what is left of one item a byte of the value, which the room given takes.
    fn room_for(&self, count: usize) -> usize {
        let room = count.min(self.room_left.get());
        self.room_left.set(self.room_left.get() - room);
        room
    }

    #[cold]
    fn break_with<E: de::Error>(&self, error: CodecError) -> E {
        let message = E::custom(&error);
        self.broken.set(Some(error));
        message
    }
}

/// A deserializer that fails once the value breaks one of its [`Limits`], noting in them which.
pub(crate) struct Limited<'a, D> {
    inner: D,
    depth: usize,
    limits: &'a Limits,
}

impl<'a, D> Limited<'a, D> {
    /// `inner`, allowed [`MAX_DEPTH`] levels and the items `limits` allows.
    pub(crate) fn new(inner: D, limits: &'a Limits) -> Self {
        Limited {
            inner,
            depth: MAX_DEPTH,
            limits,
        }
    }
}

/// A visitor, stack or seed one level down, or the error that there is no level left.
#[derive(Clone, Copy)]
struct Level<'a> {
    depth: usize,
    limits: &'a Limits,
}

impl<'a> Level<'a> {
    #[inline]
    fn down<E: de::Error>(self) -> Result<Self, E> {
        match self.depth.checked_sub(1) {
            Some(depth) => Ok(Level { depth, ..self }),
            None => Err(self.limits.break_with(CodecError::TooDeep(MAX_DEPTH))),
        }
    }

    #[inline]
    fn limit<D>(self, inner: D) -> Limited<'a, D> {
        Limited {
            inner,
            depth: self.depth,
            limits: self.limits,
        }
    }
}

impl<'a, D> Limited<'a, D> {
    #[inline]
    fn level(&self) -> Level<'a> {
        Level {
            depth: self.depth,
            limits: self.limits,
        }
    }
}

/// Wraps `visitor` to count the levels of what it visits, and the items of a sequence or map.
struct Visiting<'a, V> {
    visitor: V,
    level: Level<'a>,
    /// Whether what is visited has as many items as the peer claims (a sequence or a map),
    /// counted as it starts, rather than as many as its type says (a tuple, struct or variant).
    claimed: bool,
}

/// Each `deserialize_*` method, with the arguments it passes on before the visitor, and
/// whether what it reads has as many items as the peer claims.
macro_rules! forward_deserialize {
    ($claimed:literal: $($method:ident($($arg:ident: $ty:ty),*)),* $(,)?) => {
        $(
            #[inline]
            fn $method<V: Visitor<'de>>(
                self,
                $($arg: $ty,)*
                visitor: V,
            ) -> Result<V::Value, D::Error> {
                let level = self.level();
                let claimed = $claimed;
                self.inner.$method($($arg,)* Visiting { visitor, level, claimed })
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Limited<'_, D> {
    type Error = D::Error;

    forward_deserialize!(true: deserialize_seq(), deserialize_map());
    forward_deserialize!(false:
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
        let claimed = self.claimed;
        let access = Access {
            inner: seq,
            level,
            claimed,
        };
        if !claimed {
            return self.visitor.visit_seq(access);
        }
        match access.inner.size_hint() {
            Some(count) => {
                level.limits.items(count)?;
                self.visitor.visit_seq(access)
            }
            // More items claimed than bytes left, which only items of no bytes can fill.
            None => self.visitor.visit_seq(EachCounted(access)),
        }
    }

    #[inline]
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        let level = self.level.down()?;
        let claimed = self.claimed;
        if claimed {
            // postcard says how many entries every map claims.
            level.limits.items(map.size_hint().unwrap_or(usize::MAX))?;
        }
        self.visitor.visit_map(Access {
            inner: map,
            level,
            claimed,
        })
    }

    #[inline]
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        let level = self.level.down()?;
        self.visitor.visit_enum(Access {
            inner: data,
            level,
            claimed: false,
        })
    }
}

/// The elements, entries or variant of a value one level down: each is decoded with what
/// depth is left. (The items of a sequence or map the peer claims were counted as it started:
/// [`Limits::items`].)
struct Access<'a, A> {
    inner: A,
    level: Level<'a>,
    /// Whether the items are as many as the peer claims (a sequence or a map).
    claimed: bool,
}

impl<A> Access<'_, A> {
    /// The peer's count, for the room a collection makes before its items come: within what
    /// the value's bytes can hold, all told, for a claimed one ([`Limits::room_for`]).
    #[inline]
    fn room(&self, count: Option<usize>) -> Option<usize> {
        let count = count?;
        Some(if self.claimed {
            self.level.limits.room_for(count)
        } else {
            count
        })
    }
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
        self.room(self.inner.size_hint())
    }
}

/// The elements of a sequence whose claim postcard does not tell, as it does not for one that
/// claims more items than there are bytes left: each is counted as it comes
/// ([`Limits::items`]). Only items of no bytes can fill such a claim.
struct EachCounted<'a, A>(Access<'a, A>);

impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for EachCounted<'_, A> {
    type Error = A::Error;

    #[inline]
    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        let element = self.0.next_element_seed(seed)?;
        if element.is_some() {
            self.0.level.limits.items(1)?;
        }
        Ok(element)
    }

    // No `size_hint`: postcard tells none for such a sequence, and none is given for it.
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
        self.room(self.inner.size_hint())
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
                claimed: false,
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
        let claimed = false;
        self.inner.tuple_variant(
            len,
            Visiting {
                visitor,
                level,
                claimed,
            },
        )
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let level = self.level;
        self.inner.struct_variant(
            fields,
            Visiting {
                visitor,
                level,
                claimed: false,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::{MAX_DEPTH, ZERO_SIZED_ITEMS};
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

    /// Honest collections are given room for all their items at once, one after another; a
    /// claim past what the value's bytes can hold is given room for no more than that.
    #[test]
    fn collections_get_room_for_what_their_bytes_can_hold() {
        let honest = (vec![7u64; 500], vec![8u64; 500]);
        let bytes = postcard::to_stdvec(&honest).expect("encodes");
        let (first, second) = decode_exact::<(Vec<u64>, Vec<u64>)>(&bytes).expect("decodes");
        assert_eq!((first.capacity(), second.capacity()), (500, 500));

        // A map of 4,000 entries claimed in a value of six bytes, which may hold that many
        // entries of no bytes: room for six, one entry a byte of the value.
        let claim = [0xa0, 0x1f, 1, 2, 3, 4];
        let mut deserializer = postcard::Deserializer::from_bytes(&claim);
        let limits = super::Limits::of(claim.len());
        let limited = super::Limited::new(&mut deserializer, &limits);
        let room = serde::Deserializer::deserialize_map(limited, Room).expect("a hint");
        assert_eq!(room, Some(claim.len()));
    }

    /// The room a map is offered.
    struct Room;

    impl<'de> serde::de::Visitor<'de> for Room {
        type Value = Option<usize>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            Ok(map.size_hint())
        }
    }

    /// Ten thousand units read as a tuple: as many as the type says, not as a peer claims.
    struct FixedUnits;

    impl<'de> Deserialize<'de> for FixedUnits {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Units;
            impl<'de> serde::de::Visitor<'de> for Units {
                type Value = FixedUnits;

                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("ten thousand units")
                }

                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<FixedUnits, A::Error> {
                    for _ in 0..10_000 {
                        let unit = seq.next_element::<()>()?;
                        unit.ok_or_else(|| serde::de::Error::custom("the units ended early"))?;
                    }
                    Ok(FixedUnits)
                }
            }
            deserializer.deserialize_tuple(10_000, Units)
        }
    }

    thread_local! {
        /// How many [`Counted`] this thread has decoded.
        static DECODED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// A unit that counts its decodings in [`DECODED`].
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    struct Counted;

    impl<'de> Deserialize<'de> for Counted {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            <()>::deserialize(deserializer)?;
            DECODED.set(DECODED.get() + 1);
            Ok(Counted)
        }
    }

    /// A value holds, all told, at most one item a byte of it and [`ZERO_SIZED_ITEMS`] more.
    #[test]
    fn items_of_no_bytes_are_bounded_by_the_bytes() {
        // `Vec<()>` is a count and nothing else: a count of two bytes allows 4098 units.
        let most = 2 + ZERO_SIZED_ITEMS;
        let within = postcard::to_stdvec(&vec![(); most]).expect("encodes");
        assert_eq!(within.len(), 2);
        assert_eq!(
            decode_exact::<Vec<()>>(&within).map(|units| units.len()),
            Ok(most)
        );
        // As many entries of a map of units: each the same entry, but each read and counted.
        let map = decode_exact::<BTreeMap<(), ()>>(&within).map(|map| map.len());
        assert_eq!(map, Ok(1));
        let past = postcard::to_stdvec(&vec![(); most + 1]).expect("encodes");
        let refused = CodecError::TooManyItems(ZERO_SIZED_ITEMS);
        assert_eq!(decode_exact::<Vec<()>>(&past), Err(refused.clone()));

        // Claims of 2^64 - 1, which would take centuries to count: refused at once, in a
        // sequence, in a map, and spread over the sequences of a sequence.
        let lie = postcard::to_stdvec(&u64::MAX).expect("encodes");
        assert_eq!(decode_exact::<Vec<()>>(&lie), Err(refused.clone()));
        assert_eq!(decode_exact::<BTreeMap<(), ()>>(&lie), Err(refused.clone()));
        let mut spread = vec![0xff, 0x01]; // 255 vectors, of 255 units each
        spread.extend([0xff, 0x01].repeat(255));
        assert_eq!(decode_exact::<Vec<Vec<()>>>(&spread), Err(refused.clone()));

        // Items as many as the type says are not claims: ten thousand units in a tuple pass.
        assert!(decode_exact::<FixedUnits>(&[]).is_ok());

        // A map's claim past the bound is refused before any of its entries is decoded.
        DECODED.set(0);
        let decoded = decode_exact::<BTreeMap<Counted, ()>>(&lie).map(|map| map.len());
        assert_eq!(decoded, Err(refused));
        assert_eq!(
            DECODED.get(),
            0,
            "entries decoded before the claim was refused"
        );

        // Items of a byte or more never reach the bound: a long `Vec<u8>` decodes as ever.
        let bytes = postcard::to_stdvec(&vec![7u8; 100_000]).expect("encodes");
        let decoded = decode_exact::<Vec<u8>>(&bytes).expect("decodes");
        assert_eq!(decoded, vec![7u8; 100_000]);
    }
}
