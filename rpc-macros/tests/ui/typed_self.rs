#[rpc_core::service]
pub trait Counter {
    async fn incr(self: std::sync::Arc<Self>) -> u64;
}

fn main() {}
