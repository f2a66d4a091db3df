use rpc_core::Streaming;

#[rpc_core::service]
pub trait Files {
    async fn two_streams(&self, a: Streaming<u8>, b: Streaming<u8>);
    async fn nested_argument(&self, parts: Vec<Streaming<u8>>);
    async fn nested_result(&self) -> Option<Streaming<u8>>;
    async fn bare(&self, items: Streaming);
    async fn no_error_type(&self, path: String) -> std::io::Result<Streaming<String>>;
    async fn error_streams(&self) -> Result<Streaming<u8>, Streaming<u8>>;
    async fn error_nests_a_stream(&self) -> Result<Streaming<u8>, Vec<Streaming<u8>>>;
}

fn main() {}
