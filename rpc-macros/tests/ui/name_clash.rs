#[rpc_core::service]
pub trait Session {
    async fn connect(&self, user: String);
    async fn builder(&self);
    async fn with_deadline(&self, seconds: u64);
}

fn main() {}
