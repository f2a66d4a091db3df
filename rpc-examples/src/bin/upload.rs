//! Client streaming: upload a file in chunks.
//!
//! ```text
//! cargo run -p rpc-examples --bin upload                 # 5 MiB of generated data
//! cargo run -p rpc-examples --bin upload -- Cargo.lock   # a file of yours
//! ```
//!
//! The chunks go out as the server grants credit, so a slow server slows the upload down
//! instead of letting it pile up in memory.

use rpc_core::{Server, Streaming};
use rpc_examples::streams::{ChecksumStore, FileStoreClient, FileStoreServer, checksum};
use serde_bytes::ByteBuf;

const CHUNK: usize = 64 * 1024;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (name, data) = match std::env::args().nth(1) {
        Some(path) => (path.clone(), std::fs::read(&path)?),
        None => (
            "generated.bin".to_owned(),
            (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect(),
        ),
    };

    let server = Server::bind("127.0.0.1:0").await?;
    let addr = server.local_addr()?;
    let store = ChecksumStore {
        limit: 64 * 1024 * 1024,
    };
    tokio::spawn(server.serve(FileStoreServer::new(store)));

    let client = FileStoreClient::connect(addr).await?;
    let chunks: Vec<ByteBuf> = data
        .chunks(CHUNK)
        .map(|c| ByteBuf::from(c.to_vec()))
        .collect();
    println!(
        "upload: sending {name}, {} bytes in {} chunks",
        data.len(),
        chunks.len()
    );
    let receipt = client.upload(name, Streaming::iter(chunks)).await??;
    println!(
        "upload: the server received {} bytes in {} chunks, checksum {:016x}",
        receipt.bytes, receipt.chunks, receipt.checksum
    );
    if receipt.checksum != checksum(&data) {
        return Err("the checksums differ".into());
    }
    println!("upload: checksums match");
    Ok(())
}
