// serde implements its traits for arrays of up to 32 items: a larger one is one error per
// missing trait, at the type.
#[rpc_core::service]
pub trait Blocks {
    async fn store(&self, block: [u8; 1024]) -> u64;
}

fn main() {}
