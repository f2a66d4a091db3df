#[rpc_core::service]
pub trait Jobs {
    #[rpc(idempotent)]
    async fn status(&self, id: u64) -> String;
    #[rpc(retries = 3)]
    async fn submit(&self, job: String) -> u64;
}

fn main() {}
