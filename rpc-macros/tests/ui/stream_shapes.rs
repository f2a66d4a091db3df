use rpc_core::Streaming;

#[rpc_core::service]
pub trait Files {
    async fn two_streams(&self, a: Streaming<u8>, b: Streaming<u8>);
    async fn nested_argument(&self, parts: Vec<Streaming<u8>>);
    async fn nested_result(&self) -> Option<Streaming<u8>>;
    async fn bare(&self, items: Streaming);
    async fn fallible(&self, path: String) -> Result<Streaming<String>, String>;
}

fn main() {}
