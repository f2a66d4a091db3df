//! How the frame reader's buffer keeps, reuses and gives up its memory.

use tokio::io::{AsyncWriteExt, DuplexStream};

use super::*;

/// `reader` once it has waited for a frame through a quiet spell long enough to give up a
/// large buffer, and its peer has then gone.
async fn after_a_quiet_spell(
    mut reader: FrameReader<DuplexStream>,
    peer: DuplexStream,
) -> FrameReader<DuplexStream> {
    let quiet = tokio::spawn(async move {
        let _ = reader.next_frame().await;
        reader
    });
    tokio::time::sleep(LARGE_BUFFER_IDLE * 2).await;
    drop(peer);
    quiet.await.expect("joins")
}

#[tokio::test(start_paused = true)]
async fn a_large_buffer_is_kept_while_busy_and_given_up_when_quiet() {
    let (mut tx, rx) = tokio::io::duplex(1 << 20);
    let mut reader = FrameReader::new(rx, 1 << 20);
    let mut big = (100_000u32).to_be_bytes().to_vec();
    big.extend(vec![1; 100_000]);
    tx.write_all(&big).await.expect("writes");
    let held = reader.next_frame().await.expect("reads").expect("a frame");
    tx.write_all(&big).await.expect("writes");
    reader.next_frame().await.expect("reads").expect("a frame");
    assert!(
        reader.holds_large,
        "the allocation is kept for the next frame"
    );
    assert_eq!(reader.spares.len(), 1, "the held frame's allocation");
    drop(held);

    let reader = after_a_quiet_spell(reader, tx).await;
    assert!(!reader.holds_large, "given up once quiet");
    assert!(reader.buf.capacity() <= IDLE_BUFFER_KEEP);
    assert!(reader.spares.is_empty(), "and the spares with it");
}

/// Small frames that keep coming are read in ever larger steps, up to [`MAX_READ_ROOM`];
/// a trickle, a frame at a time, in the least; and the large buffer is given up, and the
/// steps start small again, once the connection is quiet.
#[tokio::test(start_paused = true)]
async fn reads_grow_while_frames_keep_coming_and_shrink_when_they_trickle() {
    let (mut tx, rx) = tokio::io::duplex(1 << 20);
    let mut reader = FrameReader::new(rx, 1024);
    // Frames of 7 bytes, so that reads end inside a frame and leave part of it buffered.
    let burst: Vec<u8> = (0..20_000u32)
        .flat_map(|n| tests::frame(&n.to_be_bytes()[1..]))
        .collect();
    tx.write_all(&burst).await.expect("writes");
    let (mut largest_step, mut largest_buffer) = (0, 0);
    for n in 0..20_000u32 {
        let frame = reader.next_frame().await.expect("reads").expect("a frame");
        assert_eq!(frame[..], n.to_be_bytes()[1..], "frame {n}");
        largest_step = largest_step.max(reader.read_room);
        largest_buffer = largest_buffer.max(reader.buf.capacity());
    }
    assert_eq!(
        largest_step,
        16 * 1024,
        "a burst is read in steps of up to 16 KiB"
    );
    assert!(largest_buffer <= 2 * MAX_READ_ROOM, "{largest_buffer}");

    for n in 0..8u32 {
        tx.write_all(&tests::frame(&n.to_be_bytes()))
            .await
            .expect("writes");
        reader.next_frame().await.expect("reads").expect("a frame");
    }
    assert_eq!(
        reader.read_room, MIN_READ,
        "a trickle is read in small steps"
    );

    let reader = after_a_quiet_spell(reader, tx).await;
    assert!(
        reader.buf.capacity() <= IDLE_BUFFER_KEEP,
        "given up once quiet"
    );
    assert_eq!(reader.read_room, MIN_READ);
}

/// The read room doubles after a full read, halves after one that took less than half of
/// its room, and otherwise stays, within its bounds.
#[test]
fn the_read_room_follows_how_much_each_read_took() {
    assert_eq!(next_read_room(4096, 4096, 4096), 8192, "full: doubled");
    assert_eq!(
        next_read_room(16 * 1024, 5000, 5000),
        16 * 1024,
        "at most 16 KiB"
    );
    assert_eq!(next_read_room(8192, 3000, 8192), 4096, "under half: halved");
    assert_eq!(next_read_room(1024, 10, 1024), MIN_READ, "at least 1 KiB");
    assert_eq!(next_read_room(8192, 5000, 8192), 8192, "over half: kept");
    assert_eq!(next_read_room(8192, 4096, 8192), 8192, "exactly half: kept");
}

/// A large frame dropped before the next is read leaves its allocation to the next in place.
/// One still held when the next is read leaves its allocation aside, and the frame after
/// reuses it once it is dropped; while it is held, the reader leaves it alone.
#[tokio::test]
async fn a_large_allocation_is_reused_once_its_frame_is_dropped() {
    const SIZE: usize = 100_000;
    let (mut tx, rx) = tokio::io::duplex(1 << 20);
    let mut reader = FrameReader::new(rx, 1 << 20);
    let mut next = async |reader: &mut FrameReader<_>| {
        tx.write_all(&tests::frame(&[1; SIZE]))
            .await
            .expect("writes");
        reader.next_frame().await.expect("reads").expect("a frame")
    };
    let dropped_at = next(&mut reader).await.as_ptr();
    let first = next(&mut reader).await;
    assert_eq!(
        first.as_ptr(),
        dropped_at,
        "a frame dropped at once leaves room in place"
    );
    assert!(reader.spares.is_empty());
    let second = next(&mut reader).await;
    let third = next(&mut reader).await;
    assert_ne!(third.as_ptr(), first.as_ptr(), "the first frame is held");
    assert_ne!(third.as_ptr(), second.as_ptr(), "the second frame is held");
    let first_at = first.as_ptr();
    drop((first, second));
    let fourth = next(&mut reader).await;
    assert_eq!(fourth.as_ptr(), first_at, "in the first frame's allocation");
    assert_eq!(reader.spares.len(), 2, "the other two are kept");
    let mut held = vec![fourth];
    for _ in 0..SPARES {
        held.push(next(&mut reader).await);
    }
    assert_eq!(
        reader.spares.len(),
        SPARES,
        "no more than {SPARES} are kept"
    );
}

/// A frame of 2 KiB leaves a buffer small enough to keep: reading the next frame does not
/// start a timer to give it up. One byte more does.
#[tokio::test]
async fn a_frame_up_to_two_kib_does_not_count_as_large() {
    const KEPT: usize = 2 << 10;
    let (mut tx, rx) = tokio::io::duplex(1 << 20);
    let mut reader = FrameReader::new(rx, 1 << 20);
    tx.write_all(&tests::frame(&[1; KEPT]))
        .await
        .expect("writes");
    reader.next_frame().await.expect("reads").expect("a frame");
    assert!(!reader.holds_large, "{KEPT} bytes are kept");
    assert!(!reader.large_here, "nor kept as a spare");
    tx.write_all(&tests::frame(&[1; KEPT + 1]))
        .await
        .expect("writes");
    reader.next_frame().await.expect("reads").expect("a frame");
    assert!(reader.holds_large, "one byte more is large");
    assert!(reader.large_here, "and kept as a spare when left");
}

/// Discarding after a protocol error reads exactly its limit of what the peer goes on
/// sending, then stops: a peer that never stops cannot keep the connection open.
#[tokio::test]
async fn discarding_reads_the_limit_and_no_more() {
    let sent = vec![0x55; 1 << 20];
    let mut reader = FrameReader::new(&sent[..], 1 << 20);
    reader.discard_until_end(100_000).await;
    assert_eq!(reader.io.len(), sent.len() - 100_000, "left unread");
}

/// Discarding stops at the end of what the peer sends, short of its limit.
#[tokio::test]
async fn discarding_stops_at_the_end() {
    let sent = vec![0x55; 1000];
    let mut reader = FrameReader::new(&sent[..], 1 << 20);
    reader.discard_until_end(100_000).await;
    assert!(reader.io.is_empty());
}
