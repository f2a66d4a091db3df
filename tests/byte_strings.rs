//! Large byte strings over real TCP. A `Vec<u8>` or `ByteBuf` that ends a request's arguments,
//! or is a call's whole result, is read into memory of its own rather than copied out of its
//! frame: whatever comes before it, whatever its size, and whatever else shares the connection,
//! the values must arrive as they were sent, and the bytes on the wire must not change.

use futures_util::future::join_all;
use rpc_tests::{LabClient, RawClient, echoed_as_sent, request, start_tcp, varint, within};
use serde_bytes::ByteBuf;

#[rpc_core::service]
pub trait Blobs {
    /// Stores nothing; reports what it was given.
    async fn put(&self, key: String, version: u32, data: Vec<u8>) -> (String, u32, u64);
    /// `len` bytes, counting up.
    async fn get(&self, len: u64) -> ByteBuf;
    /// Two byte strings; the first may be empty.
    async fn pair(&self, first: ByteBuf, second: ByteBuf) -> (u64, u64);
    /// A string, which is never read apart, of the same bytes on the wire as a byte string.
    async fn shout(&self, text: String) -> String;
    /// A byte string that does not end the arguments.
    async fn before(&self, data: Vec<u8>, tag: u8) -> (u64, u8);
}

struct Store;

/// A checksum that notices a byte out of place.
fn sum(bytes: &[u8]) -> u64 {
    bytes.iter().enumerate().fold(0u64, |sum, (i, &b)| {
        sum.wrapping_mul(31).wrapping_add(b as u64 ^ i as u64)
    })
}

fn counting(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

impl Blobs for Store {
    async fn put(&self, key: String, version: u32, data: Vec<u8>) -> (String, u32, u64) {
        (key, version, sum(&data))
    }

    async fn get(&self, len: u64) -> ByteBuf {
        ByteBuf::from(counting(len as usize))
    }

    async fn pair(&self, first: ByteBuf, second: ByteBuf) -> (u64, u64) {
        (sum(&first), sum(&second))
    }

    async fn shout(&self, text: String) -> String {
        text.to_uppercase()
    }

    async fn before(&self, data: Vec<u8>, tag: u8) -> (u64, u8) {
        (sum(&data), tag)
    }
}

async fn blobs() -> BlobsClient {
    let server = rpc_core::Server::bind("127.0.0.1:0").await.expect("binds");
    let addr = server.local_addr().expect("has an address");
    tokio::spawn(server.serve(BlobsServer::new(Store)));
    BlobsClient::connect(addr).await.expect("connects")
}

/// Sizes around the smallest byte string read apart (64 KiB), and well past it.
const SIZES: [usize; 6] = [0, 1000, 65_535, 65_536, 65_537, 1 << 20];

#[test]
fn the_server_reads_apart_only_arguments_that_end_in_a_byte_string() {
    use rpc_core::Service;
    type Server = BlobsServer<Store>;
    assert!(Server::ends_in_byte_string("put"));
    assert!(Server::ends_in_byte_string("pair"));
    assert!(!Server::ends_in_byte_string("get"));
    assert!(!Server::ends_in_byte_string("shout"));
    assert!(!Server::ends_in_byte_string("before"));
    assert!(!Server::ends_in_byte_string("nothing"));
}

#[tokio::test]
async fn byte_strings_behind_other_arguments_arrive_intact() {
    let client = blobs().await;
    for size in SIZES {
        let data = counting(size);
        let key = "k".repeat(size % 300);
        let put = within("a put", client.put(key.clone(), 7, data.clone()))
            .await
            .expect("put");
        assert_eq!(put, (key, 7, sum(&data)), "{size} bytes");
        let pair = within(
            "a pair",
            client.pair(ByteBuf::new(), ByteBuf::from(data.clone())),
        )
        .await
        .expect("pair");
        assert_eq!(
            pair,
            (sum(&[]), sum(&data)),
            "{size} bytes, the first empty"
        );
        let before = within("a byte string first", client.before(data.clone(), 9))
            .await
            .expect("before");
        assert_eq!(before, (sum(&data), 9), "{size} bytes");
    }
}

#[tokio::test]
async fn byte_string_results_arrive_intact() {
    let client = blobs().await;
    for size in SIZES {
        let got = within("a get", client.get(size as u64)).await.expect("get");
        assert_eq!(got.into_vec(), counting(size), "{size} bytes");
    }
}

/// A string is the same bytes on the wire as a byte string, but never taken as one.
#[tokio::test]
async fn a_large_string_is_not_mistaken_for_a_byte_string() {
    let client = blobs().await;
    let text = "abc".repeat(100_000);
    let back = within("a shout", client.shout(text.clone()))
        .await
        .expect("shout");
    assert_eq!(back, text.to_uppercase());
}

/// Large and small calls in flight together on one connection, both ways: every frame after a
/// split one is read from where it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_small_calls_share_a_connection() {
    let client = blobs().await;
    let calls = (0..24).map(|i| {
        let client = client.clone();
        async move {
            let size = [10, 200_000, 70_000, 1 << 20][i % 4];
            let data = counting(size);
            let (_, version, got) = client.put(String::new(), i as u32, data.clone()).await?;
            assert_eq!((version, got), (i as u32, sum(&data)));
            let back = client.get(size as u64).await?;
            assert_eq!(back.into_vec(), data);
            Ok::<_, rpc_core::RpcError>(())
        }
    });
    for done in within("24 calls", join_all(calls)).await {
        done.expect("a call");
    }
}

/// A byte string written by hand, as another language would, is read apart and echoed back
/// byte for byte: the wire is postcard's, split or not.
#[tokio::test]
async fn a_large_byte_string_sent_by_hand_comes_back_byte_for_byte() {
    let bytes = counting(200_000);
    let mut args = varint(bytes.len() as u64);
    args.extend_from_slice(&bytes);
    echoed_as_sent("echo_buf", &args).await;
}

/// A peer that claims a large byte string and sends a little of it before closing is dropped,
/// and the server serves others (`memory.rs` checks what such a claim costs).
#[tokio::test]
async fn a_byte_string_cut_short_closes_only_its_connection() {
    let addr = start_tcp().await;
    let mut raw = RawClient::handshake(addr).await;
    let mut args = varint(15 << 20);
    args.extend_from_slice(&[1; 1000]);
    let mut frame = request(4, "echo_buf", &args);
    // The length prefix says the whole byte string follows.
    let claimed = (frame.len() - 4 - 1000 + (15 << 20)) as u32;
    frame[..4].copy_from_slice(&claimed.to_be_bytes());
    raw.send(&frame).await;
    drop(raw);
    let client = LabClient::connect(addr).await.expect("connects");
    let back = within("an echo", client.echo_buf(ByteBuf::from(counting(100_000))))
        .await
        .expect("echo_buf");
    assert_eq!(back.into_vec(), counting(100_000));
}
