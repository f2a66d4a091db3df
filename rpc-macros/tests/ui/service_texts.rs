// `texts(...)` names texts, as string literals, and at least one.
#[rpc_core::service(texts(1))]
pub trait Numbers {
    async fn add(&self, a: i64, b: i64) -> i64;
}

#[rpc_core::service(texts())]
pub trait Nothing {
    async fn add(&self, a: i64, b: i64) -> i64;
}

fn main() {}
