#[rpc_core::service]
pub trait Text {
    async fn len(&self, text: &str) -> usize;
    async fn first(&self, items: Vec<&'static str>) -> String;
}

fn main() {}
