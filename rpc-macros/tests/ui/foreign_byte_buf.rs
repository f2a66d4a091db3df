use serde::{Deserialize, Serialize};

/// Not `serde_bytes::ByteBuf`, though spelled like it.
#[derive(Serialize, Deserialize)]
pub struct ByteBuf(Vec<u8>);

#[rpc_core::service]
pub trait Store {
    async fn put(&self, value: ByteBuf);
}

fn main() {}
