#[rpc_core::service]
pub trait Store {
    async fn get<T>(&self, key: String) -> T;
}

fn main() {}
