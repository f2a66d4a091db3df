//! The frame reader's tests: frames whole, in pieces and in runs, size limits, the silence
//! limit, and `frame`, which the other tests share.

use tokio::io::AsyncWriteExt;

use super::*;

/// `payload` as a frame: its length prefix, then itself.
pub(crate) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

proptest::proptest! {
    /// A head compared as a word says what a byte-by-byte comparison says, whatever the
    /// head's length (past a word's, it is not made one), the payload's size and the bytes
    /// after the payload, which the word reads and must not count.
    #[test]
    fn a_head_compared_as_a_word_agrees_with_its_bytes(
        head in proptest::collection::vec(0u8..4, 0..10),
        from in proptest::collection::vec(0u8..4, 0..20),
        size in 0usize..20,
    ) {
        let size = size.min(from.len());
        let run_head = RunHead::new(&head);
        proptest::prop_assert_eq!(run_head.word.is_some(), head.len() <= 8);
        proptest::prop_assert_eq!(
            run_head.starts(&from, size),
            same_start(&from[..size], &head)
        );
    }
}

/// What one read brought is handed out frame by frame without reading again: whole frames
/// in order, nothing for the start of one, and an oversized length as soon as it is seen.
#[tokio::test]
async fn buffered_frames_come_without_a_read() {
    let (mut tx, rx) = tokio::io::duplex(1024);
    let mut reader = FrameReader::new(rx, 8);
    let mut bytes = [frame(b"one"), frame(b"two")].concat();
    bytes.extend_from_slice(&frame(b"three")[..5]);
    tx.write_all(&bytes).await.expect("writes");
    let first = reader.next_frame().await.expect("reads");
    assert_eq!(first.as_deref(), Some(&b"one"[..]));
    assert!(reader.has_whole_frame());
    let second = reader.buffered_frame().expect("well formed");
    assert_eq!(second.as_deref(), Some(&b"two"[..]));
    assert!(!reader.has_whole_frame(), "only the start of the third");
    assert!(reader.has_buffered());
    assert_eq!(
        reader.buffered_frame().expect("well formed"),
        None,
        "a part"
    );
    tx.write_all(&frame(b"three")[5..]).await.expect("writes");
    tx.write_all(&frame(b"too large")).await.expect("writes");
    let third = reader.next_frame().await.expect("reads");
    assert_eq!(third.as_deref(), Some(&b"three"[..]));
    assert!(matches!(
        reader.buffered_frame(),
        Err(RpcError::FrameTooLarge { size: 9, limit: 8 })
    ));
}

#[tokio::test]
async fn reads_frames_split_across_reads() {
    let mut bytes = frame(b"hello");
    bytes.extend(frame(b""));
    bytes.extend(frame(&[7; 100_000]));
    let (mut tx, rx) = tokio::io::duplex(17);
    let writer = tokio::spawn(async move { tx.write_all(&bytes).await });
    let mut reader = FrameReader::new(rx, 1 << 20);
    assert_eq!(
        reader.next_frame().await.expect("frame"),
        Some(Bytes::from_static(b"hello"))
    );
    assert_eq!(
        reader.next_frame().await.expect("frame"),
        Some(Bytes::new())
    );
    let big = reader.next_frame().await.expect("frame").expect("some");
    assert_eq!(big.len(), 100_000);
    writer.await.expect("joins").expect("writes");
    assert_eq!(reader.next_frame().await.expect("clean end"), None);
}

#[tokio::test]
async fn the_reader_tells_whether_more_was_read_than_the_frame_it_returned() {
    let (mut tx, rx) = tokio::io::duplex(1024);
    let mut bytes = frame(b"one");
    bytes.extend(frame(b"two"));
    bytes.extend(&frame(b"three")[..2]);
    tx.write_all(&bytes).await.expect("writes");
    let mut reader = FrameReader::new(rx, 1024);
    assert_eq!(
        reader.next_frame().await.expect("frame").expect("some")[..],
        *b"one"
    );
    assert!(reader.has_buffered(), "a whole frame behind it");
    assert_eq!(
        reader.next_frame().await.expect("frame").expect("some")[..],
        *b"two"
    );
    assert!(reader.has_buffered(), "the start of one");
    tx.write_all(&frame(b"three")[2..]).await.expect("writes");
    assert_eq!(
        reader.next_frame().await.expect("frame").expect("some")[..],
        *b"three"
    );
    assert!(!reader.has_buffered(), "nothing more");
}

/// Small frames read one at a time, each still held (as a client's answers are, until their
/// callers take them), come one after another from one allocation, not one each.
#[tokio::test]
async fn small_frames_held_by_their_readers_share_one_buffer() {
    let (mut tx, rx) = tokio::io::duplex(1024);
    let mut reader = FrameReader::new(rx, 1024);
    let mut held = Vec::new();
    for n in 0..20u8 {
        tx.write_all(&frame(&[n; 10])).await.expect("writes");
        let payload = reader.next_frame().await.expect("reads").expect("a frame");
        assert_eq!(payload, [n; 10][..]);
        held.push(payload);
    }
    for pair in held.windows(2) {
        let gap = pair[1].as_ptr() as usize - pair[0].as_ptr() as usize;
        assert_eq!(
            gap, 14,
            "the next frame's payload follows in the same buffer"
        );
    }
}

#[tokio::test]
async fn a_run_is_the_whole_frames_of_the_same_head_that_follow() {
    let mut bytes = Vec::new();
    for payload in [
        &[6, 1, 0][..],
        &[6, 1, 1],
        &[6, 1, 2],
        &[6, 2, 5],
        &[6, 1, 3],
    ] {
        bytes.extend(frame(payload));
    }
    bytes.extend(frame(&[[6, 1].as_slice(), &[9; 48]].concat())); // over the limit of 40
    bytes.extend(frame(&[6, 1, 4]));
    bytes.extend(&frame(&[6, 1, 5])[..5]); // incomplete
    let mut reader = FrameReader::new(&bytes[..], 40);
    let first = reader.next_frame().await.expect("a frame").expect("some");
    assert_eq!(first, [6, 1, 0][..]);
    let run = reader
        .take_run(&first[..2], |_| true)
        .expect("two more of stream 1");
    assert_eq!(run, [frame(&[6, 1, 1]), frame(&[6, 1, 2])].concat());
    assert_eq!(
        reader.take_run(&[6, 1], |_| true),
        None,
        "stream 2's frame is next"
    );
    let other = reader.next_frame().await.expect("a frame").expect("some");
    assert_eq!(other, [6, 2, 5][..]);
    let run = reader.take_run(&[6, 1], |_| true).expect("stream 1 again");
    assert_eq!(run, frame(&[6, 1, 3]), "up to the frame over the limit");
    let too_large = reader.next_frame().await.expect_err("over the limit");
    assert!(matches!(
        too_large,
        RpcError::FrameTooLarge { size: 50, .. }
    ));
    reader.buf.advance(LENGTH_PREFIX + 50);
    reader.next_frame().await.expect("a frame").expect("some");
    assert_eq!(
        reader.take_run(&[6, 1], |_| true),
        None,
        "the last frame is incomplete"
    );
}

/// A frame the caller does not accept ends the run, and is read on its own next.
#[tokio::test]
async fn a_run_ends_at_the_first_frame_not_accepted() {
    let bytes = [frame(&[6, 1, 0]), frame(&[6, 1, 1]), frame(&[6, 1, 2, 2])].concat();
    let mut reader = FrameReader::new(&bytes[..], 40);
    let first = reader.next_frame().await.expect("a frame").expect("some");
    let mut offered = Vec::new();
    let run = reader.take_run(&first[..2], |size| {
        offered.push(size);
        size < 4
    });
    assert_eq!(run, Some(Bytes::from(frame(&[6, 1, 1]))));
    assert_eq!(
        offered,
        [3, 4],
        "each frame's payload length, up to the refused one"
    );
    let refused = reader.next_frame().await.expect("a frame").expect("some");
    assert_eq!(refused, [6, 1, 2, 2][..]);
}

/// A frame of exactly the limit is as welcome in a run as on its own.
#[tokio::test]
async fn a_run_takes_a_frame_of_exactly_the_limit() {
    let largest = [[6, 1].as_slice(), &[9; 38]].concat();
    let bytes = [frame(&[6, 1, 0]), frame(&largest)].concat();
    let mut reader = FrameReader::new(&bytes[..], 40);
    let first = reader.next_frame().await.expect("a frame").expect("some");
    let run = reader.take_run(&first[..2], |_| true);
    assert_eq!(run, Some(Bytes::from(frame(&largest))));
}

#[tokio::test]
async fn refuses_an_oversized_length_without_reading_it() {
    let (mut tx, rx) = tokio::io::duplex(64);
    tx.write_all(&u32::MAX.to_be_bytes()).await.expect("writes");
    let mut reader = FrameReader::new(rx, 1024);
    let err = reader.next_frame().await.expect_err("too large");
    assert!(matches!(
        err,
        RpcError::FrameTooLarge {
            size: 4_294_967_295,
            limit: 1024
        }
    ));
    assert!(
        reader.buf.capacity() <= 2 * MIN_READ,
        "room for what arrived, not for the claim"
    );
}

#[tokio::test]
async fn a_frame_at_the_limit_is_read_and_one_byte_over_is_refused() {
    let mut bytes = frame(&[1; 1024]);
    bytes.extend(frame(&[2; 1025]));
    let mut reader = FrameReader::new(&bytes[..], 1024);
    let at_limit = reader.next_frame().await.expect("read").expect("a frame");
    assert_eq!(at_limit.len(), 1024);
    let over = reader.next_frame().await.expect_err("over the limit");
    assert!(
        matches!(
            over,
            RpcError::FrameTooLarge {
                size: 1025,
                limit: 1024
            }
        ),
        "{over}"
    );
}

#[tokio::test]
async fn a_stream_cut_inside_a_frame_is_a_protocol_error() {
    let (mut tx, rx) = tokio::io::duplex(64);
    tx.write_all(&frame(b"hello")[..6]).await.expect("writes");
    drop(tx);
    let mut reader = FrameReader::new(rx, 1024);
    let err = reader.next_frame().await.expect_err("truncated");
    assert!(matches!(err, RpcError::Protocol(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_silent_reader_gives_up_after_its_limit() {
    let (_tx, rx) = tokio::io::duplex(1024);
    let mut reader = FrameReader::new(rx, 1024);
    reader.set_silence_limit(Some(Duration::from_secs(30)));
    // A guard against waiting for ever; under paused time only virtual time passes.
    let error = tokio::time::timeout(Duration::from_secs(600), reader.next_frame())
        .await
        .expect("did not hang")
        .expect_err("silence");
    assert!(matches!(error, RpcError::KeepaliveTimeout(limit) if limit.as_secs() == 30));
}

/// The limit counts from the last bytes read, not from the first wait: frames at 10 s and
/// 20 s put the end of patience at 50 s.
#[tokio::test(start_paused = true)]
async fn the_silence_limit_counts_from_the_last_bytes() {
    let (mut tx, rx) = tokio::io::duplex(1024);
    let mut reader = FrameReader::new(rx, 1024);
    reader.set_silence_limit(Some(Duration::from_secs(30)));
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            tx.write_all(&[0, 0, 0, 1, 7]).await.expect("writes");
        }
        tx
    });
    for _ in 0..2 {
        let frame = tokio::time::timeout(Duration::from_secs(600), reader.next_frame())
            .await
            .expect("did not hang")
            .expect("a frame");
        assert_eq!(frame.as_deref(), Some(&[7][..]));
    }
    let _tx = writer.await.expect("joins");
    let error = tokio::time::timeout(Duration::from_secs(600), reader.next_frame())
        .await
        .expect("did not hang")
        .expect_err("silence");
    assert!(matches!(error, RpcError::KeepaliveTimeout(_)));
    let waited = start.elapsed();
    assert!(
        (Duration::from_secs(50)..Duration::from_millis(50_010)).contains(&waited),
        "gave up after {waited:?}"
    );
}

/// A limit beyond the clock's range, from a peer that announced an absurd ping interval,
/// is no limit: frames are read as usual.
#[tokio::test]
async fn a_limit_beyond_the_clock_is_no_limit() {
    let (mut tx, rx) = tokio::io::duplex(1024);
    let mut reader = FrameReader::new(rx, 1024);
    reader.set_silence_limit(Some(Duration::MAX));
    tx.write_all(&[0, 0, 0, 1, 7]).await.expect("writes");
    let frame = reader.next_frame().await.expect("a frame");
    assert_eq!(frame.as_deref(), Some(&[7][..]));
}

/// A shorter limit set after a read waited under a longer one holds: the timer made for
/// the longer one is not left running to its end.
#[tokio::test(start_paused = true)]
async fn a_shorter_limit_replaces_the_timer_of_a_longer_one() {
    let (_tx, rx) = tokio::io::duplex(1024);
    let mut reader = FrameReader::new(rx, 1024);
    reader.set_silence_limit(Some(Duration::from_secs(600)));
    let start = Instant::now();
    let waited = tokio::time::timeout(Duration::from_secs(1), reader.next_frame()).await;
    assert!(waited.is_err(), "nothing was sent");
    reader.set_silence_limit(Some(Duration::from_secs(30)));
    let error = reader.next_frame().await.expect_err("silence");
    assert!(matches!(error, RpcError::KeepaliveTimeout(limit) if limit.as_secs() == 30));
    let gave_up = start.elapsed();
    assert!(
        gave_up < Duration::from_secs(31),
        "gave up after {gave_up:?}"
    );
}

/// A frame read is large, and its reader takes a turn after handing it on, from
/// [`UNPOLLED_FRAME`] bytes, its byte string read apart counted in: below that a stream of
/// chunks of 64 KiB ran at half the rate of one of 60 KiB, each chunk a turn.
#[test]
fn a_frame_is_large_to_read_from_the_unpolled_size() {
    let under = vec![7; UNPOLLED_FRAME - 1];
    assert!(!is_large(&under, None));
    assert!(!is_large(&vec![7; LARGE_FRAME + 100], None));
    assert!(is_large(&vec![7; UNPOLLED_FRAME], None));
    let tail = Tail::new(vec![7; UNPOLLED_FRAME - 10], &[0x80, 0x80, 0x08]);
    assert!(is_large(&[0; 10], Some(&tail)));
    assert!(!is_large(&[0; 9], Some(&tail)));
}
