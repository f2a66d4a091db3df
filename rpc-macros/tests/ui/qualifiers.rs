#[rpc_core::service]
pub trait Calc {
    async unsafe fn add(&self, a: i64, b: i64) -> i64;
    async extern "C" fn sub(&self, a: i64, b: i64) -> i64;
}

fn main() {}
