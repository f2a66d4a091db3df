//! How much room the frame reader makes for each read.

use tokio::io::{AsyncWriteExt, DuplexStream};

use super::*;

/// Polls `reader` for a frame once, until it waits for bytes that have not arrived.
async fn read_what_arrived<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>) {
    tokio::select! {
        biased;
        frame = reader.next_frame() => panic!("no frame is complete yet: {frame:?}"),
        () = std::future::ready(()) => {}
    }
}

/// Sends through `tx` the length of a frame of `len` bytes and its first bytes, `arrived`, and
/// lets `reader` read what came.
async fn begin_frame<R: AsyncRead + Unpin>(
    tx: &mut DuplexStream,
    reader: &mut FrameReader<R>,
    len: usize,
    arrived: &[u8],
) {
    let len = u32::try_from(len).expect("a frame length");
    tx.write_all(&len.to_be_bytes()).await.expect("writes");
    tx.write_all(arrived).await.expect("writes");
    read_what_arrived(reader).await;
}

/// A claim of up to 256 KiB gets its room at the first read, before the peer has shown it
/// sends frames that large: growing the buffer in steps would copy the bytes received so
/// far at each step.
#[tokio::test]
async fn room_for_a_frame_up_to_a_chunk_is_made_at_once() {
    const CHUNK: usize = 256 << 10;
    let (mut tx, rx) = tokio::io::duplex(1 << 20);
    let mut reader = FrameReader::new(rx, 1 << 20);
    begin_frame(&mut tx, &mut reader, CHUNK, &[1; 10]).await;
    let capacity = reader.buf.capacity();
    assert!(capacity >= LENGTH_PREFIX + CHUNK, "{capacity}");
}

/// The room made for a frame is what it still lacks: its length less what has arrived
/// (here the first read's kibibyte), not more.
#[tokio::test]
async fn room_made_for_a_frame_is_what_it_lacks() {
    const FRAME: usize = 100 << 10;
    let (mut tx, rx) = tokio::io::duplex(1 << 20);
    let mut reader = FrameReader::new(rx, 1 << 20);
    begin_frame(&mut tx, &mut reader, FRAME, &[1; 50 << 10]).await;
    let capacity = reader.buf.capacity();
    assert!(
        capacity >= LENGTH_PREFIX + FRAME,
        "room for the frame: {capacity}"
    );
    assert!(
        capacity < LENGTH_PREFIX + FRAME + MIN_READ,
        "no more: {capacity}"
    );
}

#[tokio::test]
async fn room_for_a_frame_is_made_at_once_only_up_to_the_largest_delivered() {
    const LIMIT: usize = 4 << 20;
    const BIG: usize = 1 << 20;
    let (mut tx, rx) = tokio::io::duplex(4 << 20);
    let mut reader = FrameReader::new(rx, LIMIT);

    // A first large claim gets room for what arrives, not for the claim.
    begin_frame(&mut tx, &mut reader, BIG, &[1; 10]).await;
    assert!(reader.buf.capacity() < BIG, "{}", reader.buf.capacity());
    tx.write_all(&vec![1; BIG - 10]).await.expect("writes");
    let first = reader.next_frame().await.expect("reads").expect("a frame");
    assert_eq!(first.len(), BIG);

    // Once the peer has sent a frame that large, the next one gets its room in one step, in
    // a new allocation while the first frame is still alive...
    begin_frame(&mut tx, &mut reader, BIG, &[2; 10]).await;
    assert!(reader.buf.capacity() >= BIG, "{}", reader.buf.capacity());

    // ...but a larger claim, still under the limit, is not trusted beyond that.
    tx.write_all(&vec![2; BIG - 10]).await.expect("writes");
    drop(first);
    reader.next_frame().await.expect("reads").expect("a frame");
    begin_frame(&mut tx, &mut reader, 3 * BIG, &[3; 10]).await;
    assert!(reader.buf.capacity() < 3 * BIG, "{}", reader.buf.capacity());
}
