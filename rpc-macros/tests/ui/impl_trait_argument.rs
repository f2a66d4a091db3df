#[rpc_core::service]
pub trait Calc {
    async fn sum(&self, numbers: impl IntoIterator<Item = i64>) -> i64;
}

fn main() {}
