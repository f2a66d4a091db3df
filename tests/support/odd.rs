//! A service of the odd types serde and postcard know: structs of no fields, unit structs,
//! options of options, 128-bit integers, characters, floats, maps keyed by enums, sets of
//! strings, of tuples and of units, arrays of arrays. Each has rules of its own that a changed
//! byte breaks (a `bool` of `2`, a `char` past `0x10FFFF`, a string that is not UTF-8, a
//! variant that does not exist, a set that repeats a key): for the fuzz test that throws
//! mutated calls of it at a server (`tests/fuzz.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rpc_core::Streaming;
use serde::{Deserialize, Serialize};

/// A map's key of three kinds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Key {
    /// No data.
    Plain,
    /// A number.
    Numbered(u8),
    /// A named field.
    Named {
        /// A signed number.
        at: i16,
    },
}

/// A struct of no fields: nothing on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Empty {}

/// A unit struct: nothing on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Unit;

/// One of each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Odd {
    /// A struct of no fields.
    pub empty: Empty,
    /// A unit struct.
    pub unit: Unit,
    /// `None`, `Some(None)` or `Some(Some(n))`.
    pub maybe: Option<Option<u32>>,
    /// The widest integers.
    pub wide: (u128, i128),
    /// A character.
    pub letter: char,
    /// Text.
    pub text: String,
    /// A flag.
    pub flag: bool,
    /// Floats.
    pub real: (f32, f64),
    /// Byte strings by key.
    pub keyed: BTreeMap<Key, Vec<u8>>,
    /// A set of strings.
    pub names: HashSet<String>,
    /// A set of pairs.
    pub pairs: BTreeSet<(u8, char)>,
    /// Arrays of arrays.
    pub grid: [[u16; 3]; 2],
    /// Lists of lists.
    pub nested: Vec<Vec<Option<Key>>>,
    /// A set of units: one at most.
    pub units: BTreeSet<()>,
    /// A map keyed by a struct of no fields: one entry at most.
    pub by_empty: HashMap<Empty, Unit>,
}

impl Odd {
    /// A value with something in every field.
    pub fn sample() -> Odd {
        Odd {
            empty: Empty {},
            unit: Unit,
            maybe: Some(Some(300)),
            wide: (u128::MAX - 7, i128::MIN + 9),
            letter: 'ж',
            text: "fuzz ✓".to_owned(),
            flag: true,
            real: (1.5, -2.25),
            keyed: BTreeMap::from([
                (Key::Plain, vec![1, 2]),
                (Key::Numbered(7), vec![]),
                (Key::Named { at: -300 }, vec![9]),
            ]),
            names: HashSet::from(["a".to_owned(), "bc".to_owned()]),
            pairs: BTreeSet::from([(1, 'x'), (2, '€')]),
            grid: [[1, 200, 3], [40_000, 5, 6]],
            nested: vec![
                vec![None, Some(Key::Plain)],
                vec![],
                vec![Some(Key::Numbered(1))],
            ],
            units: BTreeSet::from([()]),
            by_empty: HashMap::from([(Empty {}, Unit)]),
        }
    }

    /// How many items the value holds, all told: each collection's items, each string's
    /// characters and each byte string's bytes, and one for every other field.
    pub fn items(&self) -> u64 {
        let count = |n: usize| n as u64;
        let keyed: usize = self.keyed.values().map(Vec::len).sum();
        let names: usize = self.names.iter().map(|name| name.chars().count()).sum();
        let nested: usize = self.nested.iter().map(Vec::len).sum();
        9 + count(self.text.chars().count())
            + count(self.keyed.len() + keyed)
            + count(self.names.len() + names)
            + count(self.pairs.len())
            + count(self.nested.len() + nested)
            + count(self.units.len() + self.by_empty.len())
    }
}

/// Measures and returns odd values.
#[rpc_core::service]
pub trait Odds {
    /// How many items `odd` holds ([`Odd::items`]).
    async fn items(&self, odd: Odd) -> u64;
    /// `odd`, as it came.
    async fn echo(&self, odd: Odd) -> Odd;
    /// How many entries `by_key` has whose value is `Some(Some(_))`.
    async fn present(&self, by_key: HashMap<Key, Option<Option<i128>>>) -> u64;
    /// How many strings the sets hold, all told.
    async fn names(&self, sets: Vec<HashSet<String>>, unit: Unit, empty: Empty) -> u64;
    /// How many items `odds` hold, all told, up to the first that fails.
    async fn tally(&self, odds: Streaming<Odd>) -> u64;
    /// `count` copies of [`Odd::sample`].
    async fn samples(&self, count: u64) -> Streaming<Odd>;
    /// The keys from `Numbered(0)` to `Numbered(count - 1)`, or, for more than `u8` numbers,
    /// the last key there could be instead.
    async fn numbered(&self, count: u16) -> Result<Streaming<Key>, Key>;
}

/// The implementation.
#[derive(Debug)]
pub struct OddsImpl;

impl Odds for OddsImpl {
    async fn items(&self, odd: Odd) -> u64 {
        odd.items()
    }

    async fn echo(&self, odd: Odd) -> Odd {
        odd
    }

    async fn present(&self, by_key: HashMap<Key, Option<Option<i128>>>) -> u64 {
        by_key
            .values()
            .filter(|value| matches!(value, Some(Some(_))))
            .count() as u64
    }

    async fn names(&self, sets: Vec<HashSet<String>>, _: Unit, _: Empty) -> u64 {
        sets.iter().map(HashSet::len).sum::<usize>() as u64
    }

    async fn tally(&self, mut odds: Streaming<Odd>) -> u64 {
        let mut items = 0;
        while let Some(Ok(odd)) = odds.next().await {
            items += odd.items();
        }
        items
    }

    async fn samples(&self, count: u64) -> Streaming<Odd> {
        Streaming::iter((0..count).map(|_| Odd::sample()))
    }

    async fn numbered(&self, count: u16) -> Result<Streaming<Key>, Key> {
        if count > 256 {
            return Err(Key::Numbered(u8::MAX));
        }
        let numbers = (0..count).map(|n| Key::Numbered(u8::try_from(n).unwrap_or(u8::MAX)));
        Ok(Streaming::iter(numbers))
    }
}

/// Serves [`OddsImpl`] on a free loopback port in a task of its own; returns the address.
pub async fn serve() -> std::net::SocketAddr {
    crate::serve_on_loopback(rpc_core::Server::builder(), OddsServer::new(OddsImpl)).await
}
