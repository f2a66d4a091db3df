//! A service whose values nest as deeply, and hold as many items of no bytes, as a peer makes
//! them: for the tests of the bounds on how deeply a decoded value may nest and how many items
//! it may hold (docs/wire.md, section 3).

use serde::{Deserialize, Serialize};

/// A chain of links, each a level deeper than the one before: postcard writes `01` for each
/// link and `00` for the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// The rest of the chain.
    pub next: Option<Box<Chain>>,
}

impl Chain {
    /// A chain of `links` links.
    pub fn of(links: u64) -> Chain {
        (0..links).fold(Chain { next: None }, |chain, _| Chain {
            next: Some(Box::new(chain)),
        })
    }

    /// How many links the chain has.
    pub fn links(&self) -> u64 {
        std::iter::successors(self.next.as_deref(), |chain| chain.next.as_deref()).count() as u64
    }
}

/// A tree: each node holds its children in a map by number, whose count the peer writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tree {
    /// No children.
    Leaf,
    /// Children, by number.
    Node(std::collections::HashMap<u32, Tree>),
}

impl Tree {
    /// How many nodes and leaves the tree has.
    pub fn size(&self) -> u64 {
        match self {
            Tree::Leaf => 1,
            Tree::Node(children) => 1 + children.values().map(Tree::size).sum::<u64>(),
        }
    }
}

/// Measures and makes chains.
#[rpc_core::service]
pub trait Nest {
    /// How many links `chain` has.
    async fn length(&self, chain: Chain) -> u64;
    /// A chain of `links` links.
    async fn make(&self, links: u64) -> Chain;
    /// How many units `units` holds: on the wire, a count and nothing else.
    async fn count(&self, units: Vec<()>) -> u64;
    /// `count` units.
    async fn units(&self, count: u64) -> Vec<()>;
    /// How many nodes and leaves `tree` has.
    async fn size(&self, tree: Tree) -> u64;
}

/// The implementation.
#[derive(Debug)]
pub struct Nesting;

impl Nest for Nesting {
    async fn length(&self, chain: Chain) -> u64 {
        chain.links()
    }

    async fn make(&self, links: u64) -> Chain {
        Chain::of(links)
    }

    async fn count(&self, units: Vec<()>) -> u64 {
        units.len() as u64
    }

    async fn units(&self, count: u64) -> Vec<()> {
        vec![(); count as usize]
    }

    async fn size(&self, tree: Tree) -> u64 {
        tree.size()
    }
}

/// Serves [`Nesting`] on a free loopback port in a task of its own; returns the address.
pub async fn serve() -> std::net::SocketAddr {
    crate::serve_on_loopback(rpc_core::Server::builder(), NestServer::new(Nesting)).await
}

/// A raw client of the `Nest` server at `addr`, past the hellos.
pub async fn raw_client(addr: std::net::SocketAddr) -> crate::RawClient {
    crate::RawClient::greet(addr, &crate::hello("Nest", crate::VERSION)).await
}

/// The bytes of a chain of `links` links, written by hand: `01` for each link, `00` for the end.
pub fn chain_bytes(links: usize) -> Vec<u8> {
    let mut bytes = vec![0x01; links];
    bytes.push(0x00);
    bytes
}
