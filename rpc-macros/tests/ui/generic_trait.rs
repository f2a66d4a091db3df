#[rpc_core::service]
pub trait Store<T> {
    async fn get(&self, key: String) -> T;
}

fn main() {}
