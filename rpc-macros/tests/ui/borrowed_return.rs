#[rpc_core::service]
pub trait Text {
    async fn name(&self) -> &'static str;
}

fn main() {}
