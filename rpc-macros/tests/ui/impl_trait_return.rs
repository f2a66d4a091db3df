#[rpc_core::service]
pub trait Calc {
    async fn numbers(&self) -> impl Iterator<Item = i64>;
}

fn main() {}
