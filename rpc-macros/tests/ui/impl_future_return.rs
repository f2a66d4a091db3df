use std::future::Future;

#[rpc_core::service]
pub trait Calc {
    fn add(&self, a: i64, b: i64) -> impl Future<Output = i64> + Send;
}

fn main() {}
