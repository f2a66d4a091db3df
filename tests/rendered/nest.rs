use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chain {
    pub next: Option<Box<Chain>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Tree {
    Leaf,
    Node(HashMap<u32, Tree>),
}

#[rpc_core::service]
pub trait Nest {
    async fn length(&self, chain: Chain) -> u64;
    async fn make(&self, links: u64) -> Chain;
    async fn count(&self, units: Vec<()>) -> u64;
    async fn units(&self, count: u64) -> Vec<()>;
    async fn size(&self, tree: Tree) -> u64;
}
