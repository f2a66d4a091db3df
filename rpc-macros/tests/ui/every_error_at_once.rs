#[rpc_core::service]
pub trait Calc {
    fn add(&self, a: i64, b: i64) -> i64;
    async fn sub(&mut self, a: i64, b: i64) -> i64;
    async fn connect(&self);
}

fn main() {}
