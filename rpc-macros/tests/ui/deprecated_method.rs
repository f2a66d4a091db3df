// A deprecated method is served and dispatched without a warning; the client's callers get one.
#![deny(deprecated)]

#[rpc_core::service]
pub trait Jobs {
    #[deprecated(note = "use `submit`")]
    async fn run(&self, command: String) -> u64;
    async fn submit(&self, command: String) -> u64;
}

struct Runner;

impl Jobs for Runner {
    async fn run(&self, command: String) -> u64 {
        command.len() as u64
    }
    async fn submit(&self, command: String) -> u64 {
        command.len() as u64
    }
}

async fn caller(client: JobsClient) -> u64 {
    client.submit("x".into()).await.unwrap_or(0) + client.run("x".into()).await.unwrap_or(0)
}

fn main() {
    let _ = JobsServer::new(Runner);
    let _ = caller;
}
