use rpc_core::Streaming;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Empty {
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Key {
    Plain,
    Numbered(u8),
    Named {
        at: i16,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Odd {
    pub empty: Empty,
    pub unit: Unit,
    pub maybe: Option<Option<u32>>,
    pub wide: (u128, i128),
    pub letter: char,
    pub text: String,
    pub flag: bool,
    pub real: (f32, f64),
    pub keyed: HashMap<Key, Vec<u8>>,
    pub names: Vec<String>,
    pub pairs: Vec<(u8, char)>,
    pub grid: ((u16, u16, u16), (u16, u16, u16)),
    pub nested: Vec<Vec<Option<Key>>>,
    pub units: Vec<()>,
    pub by_empty: HashMap<Empty, Unit>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unit;

#[rpc_core::service]
pub trait Odds {
    async fn items(&self, odd: Odd) -> u64;
    async fn echo(&self, odd: Odd) -> Odd;
    async fn present(&self, by_key: HashMap<Key, Option<Option<i128>>>) -> u64;
    async fn names(&self, sets: Vec<Vec<String>>, unit: Unit, empty: Empty) -> u64;
    async fn tally(&self, odds: Streaming<Odd>) -> u64;
    async fn samples(&self, count: u64) -> Streaming<Odd>;
    async fn numbered(&self, count: u16) -> Result<Streaming<Key>, Key>;
}
