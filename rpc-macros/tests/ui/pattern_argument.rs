#[rpc_core::service]
pub trait Calc {
    async fn add(&self, (a, b): (i64, i64)) -> i64;
    async fn ignore(&self, _: i64);
}

fn main() {}
