#[rpc_core::service]
pub trait Calc {
    const LIMIT: u32;
    type Output;
    async fn add(&self, a: i64, b: i64) -> i64;
}

fn main() {}
