#[rpc_core::service]
pub trait Odd {
    async fn self_(&self);
}

fn main() {}
