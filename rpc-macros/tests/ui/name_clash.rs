#[rpc_core::service]
pub trait Session {
    async fn connect(&self, user: String);
    async fn builder(&self);
}

fn main() {}
