//! Frames read in two parts: the head into the buffer, a large byte string into a vector.

use tokio::io::AsyncWriteExt;

use super::tests::frame;
use super::*;

/// A payload of `head`, then a byte string of `length` bytes of `fill` to its end.
pub(super) fn ending_in_bytes(head: &[u8], length: usize, fill: u8) -> Vec<u8> {
    let mut payload = head.to_vec();
    payload.extend(postcard::to_stdvec(&length).expect("encodes"));
    payload.resize(payload.len() + length, fill);
    payload
}

/// A frame that ends in a large byte string, arriving in pieces, is read in two parts
/// where the splitter says its byte string may begin: the head, with the length rewritten
/// to `0`, and the bytes in a vector of their own. The frames around it are untouched.
#[tokio::test]
async fn a_large_frame_ending_in_a_byte_string_is_read_in_two_parts() {
    let length = tail::MIN_TAIL + 1000;
    let mut bytes = frame(b"one");
    bytes.extend(frame(&ending_in_bytes(b"h", length, 7)));
    bytes.extend(frame(b"two"));
    let (mut tx, rx) = tokio::io::duplex(4096);
    let writer = tokio::spawn(async move { tx.write_all(&bytes).await });
    let mut reader = FrameReader::new(rx, 1 << 20);
    let mut asked = 0;
    let mut split = |prefix: &[u8]| {
        asked += 1;
        prefix.starts_with(b"h").then_some(1)
    };
    let (one, tail) = reader
        .next_frame_split(&mut split)
        .await
        .expect("reads")
        .expect("a frame");
    assert_eq!((&one[..], tail.is_none()), (&b"one"[..], true));
    let (head, tail) = reader
        .next_frame_split(&mut split)
        .await
        .expect("reads")
        .expect("a frame");
    assert_eq!(head[..], *b"h\0", "the length rewritten");
    let tail = tail.expect("split");
    assert_eq!(tail.bytes, vec![7; length]);
    let (two, tail) = reader
        .next_frame_split(&mut split)
        .await
        .expect("reads")
        .expect("a frame");
    assert_eq!((&two[..], tail.is_none()), (&b"two"[..], true));
    assert_eq!(asked, 1, "asked once, about the large frame only");
    assert_eq!(reader.largest_delivered, length + 4);
    writer.await.expect("joins").expect("writes");
}

/// A large frame the splitter does not split, or in which no byte string runs to the end
/// from where it says, is read whole; it is asked once about it.
#[tokio::test]
async fn a_frame_not_split_is_read_whole() {
    let length = tail::MIN_TAIL + 1;
    let mut bytes = frame(&ending_in_bytes(b"h", length, 1));
    let mut no_bytes_at_the_end = ending_in_bytes(b"h", length, 2);
    no_bytes_at_the_end.push(0);
    bytes.extend(frame(&no_bytes_at_the_end));
    let (mut tx, rx) = tokio::io::duplex(4096);
    let writer = tokio::spawn(async move { tx.write_all(&bytes).await });
    let mut reader = FrameReader::new(rx, 1 << 20);
    let mut asked = 0;
    let (first, tail) = reader
        .next_frame_split(|_| {
            asked += 1;
            None
        })
        .await
        .expect("reads")
        .expect("a frame");
    assert_eq!((first.len(), tail.is_none()), (length + 4, true));
    assert_eq!(asked, 1);
    let (second, tail) = reader
        .next_frame_split(|_| Some(1))
        .await
        .expect("reads")
        .expect("a frame");
    assert_eq!(
        (&second[..], tail.is_none()),
        (&no_bytes_at_the_end[..], true)
    );
    writer.await.expect("joins").expect("writes");
}

/// The byte string's vector grows with the bytes that come, as the buffer does: a length
/// claimed up to the limit, with a few bytes behind it, gets no room for all of it.
#[tokio::test]
async fn a_split_makes_room_only_for_bytes_that_came() {
    let claimed = 8 << 20;
    let (mut tx, rx) = tokio::io::duplex(1 << 20);
    let mut reader = FrameReader::new(rx, 16 << 20);
    let payload = ending_in_bytes(b"h", claimed, 0);
    tx.write_all(&frame(&payload)[..100]).await.expect("writes");
    tokio::select! {
        biased;
        frame = reader.next_frame_split(|_| Some(1)) => panic!("not complete: {frame:?}"),
        () = std::future::ready(()) => {}
    }
    let splitting = reader.splitting.as_ref().expect("split");
    let room = splitting.tail.bytes.capacity();
    assert!(room < 2 * READ_CHUNK, "{room}");
    assert_eq!(
        reader.buf.len(),
        LENGTH_PREFIX + 2,
        "the head alone stays buffered"
    );
    drop(tx);
    let cut = reader.next_frame_split(|_| Some(1)).await;
    assert!(matches!(cut, Err(RpcError::Protocol(_))), "{cut:?}");
}

/// On a server, what a reader holds past 64 KiB comes from the memory its connections
/// share: a reader whose frame needs more than is left reads no further until another
/// gives some back, and what it holds goes back when it is dropped.
#[tokio::test]
async fn a_reader_draws_what_a_large_frame_needs_from_the_shared_memory() {
    use futures_util::FutureExt;

    const TOTAL: usize = 1 << 20;
    let memory = FrameMemory::new(TOTAL, 0);
    let mut other = Share::new(Arc::clone(&memory));
    assert!(other.try_cover(frame_memory::FREE + 900 * 1024));
    let (mut tx, rx) = tokio::io::duplex(4 << 20);
    let mut reader = FrameReader::new(rx, 4 << 20);
    reader.share_memory(Arc::clone(&memory));
    let payload = vec![7; 512 * 1024];
    tx.write_all(&frame(&payload)).await.expect("writes");

    let read = {
        let mut next = std::pin::pin!(reader.next_frame());
        assert!(next.as_mut().now_or_never().is_none(), "waits for memory");
        drop(other);
        next.await.expect("reads").expect("a frame")
    };
    assert_eq!(read, payload);
    assert!(memory.left() < TOTAL, "the reader still holds its buffer");
    drop(read);
    drop(reader);
    assert_eq!(memory.left(), TOTAL);
}

/// A reader that takes its first share of the server's memory in the poll that goes on to
/// wait for its peer is woken when a reader out of patience takes that share back, and gives
/// it back at its next poll: its peer, which sends nothing more, would never wake it. (Such a
/// reader had registered no waker for it, and kept its share: `tests/memory.rs` saw a large
/// call wait out its guard behind sixteen peers that had each sent part of a frame.)
#[tokio::test(start_paused = true)]
async fn a_share_taken_in_the_poll_that_waits_can_be_taken_back() {
    use std::sync::atomic::Ordering;
    use std::task::Waker;

    use futures_util::FutureExt;

    use crate::task::Wakes;

    const TOTAL: usize = 1 << 20;
    let memory = FrameMemory::new(TOTAL, 0);
    let (mut tx, rx) = tokio::io::duplex(4 << 20);
    let mut reader = FrameReader::new(rx, 4 << 20);
    reader.share_memory(Arc::clone(&memory));
    let whole = frame(&vec![7; 900 * 1024]);
    tx.write_all(&whole[..512 * 1024]).await.expect("writes");
    let wakes = Arc::new(Wakes::default());
    let waker = Waker::from(Arc::clone(&wakes));
    let mut cx = Context::from_waker(&waker);
    let polled = std::pin::pin!(reader.next_frame()).poll(&mut cx);
    assert!(polled.is_pending(), "the rest of the frame is missing");
    assert!(memory.left() < TOTAL / 2, "the reader took a share");

    let mut other = Share::new(Arc::clone(&memory));
    let wanted = frame_memory::FREE + 900 * 1024;
    let waiting = tokio::spawn(async move {
        std::future::poll_fn(|cx| other.poll_cover(cx, wanted)).await;
    });
    tokio::time::sleep(frame_memory::PATIENCE * 2).await;
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "told of the take-back");
    let given = reader.next_frame().now_or_never().expect("at once");
    assert!(
        matches!(given, Err(RpcError::FrameMemoryReclaimed)),
        "{given:?}"
    );
    waiting.await.expect("the other reader's memory");
}

/// A reader short of memory spends none on speed, and reads a frame as large as the
/// server's memory allows after a large one, instead of waiting for ever for more than
/// there is. With most of the frame already in the last frame's allocation, it reads it
/// whole rather than apart (which would take a second allocation); with less, it reads it
/// apart, and gives up the unused room of that allocation when its byte string grows.
#[tokio::test]
async fn a_reader_short_of_memory_reads_the_largest_frame_after_another() {
    const LARGEST: usize = 1 << 20;
    let length = LARGEST - 16;
    for (before, apart) in [(900 * 1024, false), (300 * 1024, true)] {
        let memory = FrameMemory::new(0, LARGEST);
        let (mut tx, rx) = tokio::io::duplex(4 << 20);
        let mut reader = FrameReader::new(rx, LARGEST);
        reader.share_memory(Arc::clone(&memory));
        let mut bytes = frame(&vec![1; before]);
        bytes.extend(frame(&ending_in_bytes(b"h", length, 7)));
        let writer = tokio::spawn(async move { tx.write_all(&bytes).await });
        let split = |prefix: &[u8]| prefix.starts_with(b"h").then_some(1);
        let (first, _) = reader
            .next_frame_split(split)
            .await
            .expect("reads")
            .expect("a frame");
        assert_eq!(first.len(), before);
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(20), reader.next_frame_split(split));
        let (head, tail) = second
            .await
            .expect("not stuck waiting for memory")
            .expect("reads")
            .expect("a frame");
        if apart {
            assert_eq!(head[..], *b"h\0");
            assert_eq!(tail.expect("read apart").bytes, vec![7; length]);
        } else {
            assert!(tail.is_none(), "read whole");
            assert_eq!(head, ending_in_bytes(b"h", length, 7));
        }
        writer.await.expect("joins").expect("writes");
    }
}
