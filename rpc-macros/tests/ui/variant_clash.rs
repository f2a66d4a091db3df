#[rpc_core::service]
pub trait Users {
    async fn get_user(&self, id: u64) -> String;
    async fn get__user(&self, id: u64) -> String;
}

fn main() {}
