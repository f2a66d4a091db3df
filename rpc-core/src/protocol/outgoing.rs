//! Frames on their way out. A large byte payload is not copied into its frame: the frame keeps a
//! handle on the payload's own memory, and the writer sends it from there, in the same write as
//! the bytes around it.
//!
//! How a payload gets there: while a frame is being encoded ([`Frame::encode`]), a
//! [`Payload`](crate::Payload) offers its bytes ([`offer`]) just before serde hands the same
//! slice to the codec, which then records the handle and the position instead of copying the
//! slice. A slice matched by address and length is the offered memory itself, so whatever else
//! serializes in between, a frame can only ever splice in the very bytes it would have copied.

use std::cell::{Cell, RefCell};
use std::io::IoSlice;

use bytes::Bytes;
use serde::Serialize;

use super::{CodecError, LENGTH_PREFIX, codec};

/// Byte payloads at least this large go out from their own memory; smaller ones are copied into
/// the frame, which costs less than one more piece for the writer to gather.
pub(crate) const SPLICE_MIN: usize = 16 * 1024;

thread_local! {
    /// How many frames are being encoded on this thread (an encoding inside another counts too).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// How many payloads `SPLICES` holds, kept in a cell so that the common case, a frame with
    /// no payload to splice, touches nothing else.
    static SPLICED: Cell<usize> = const { Cell::new(0) };
    /// The payloads spliced into the frames being encoded on this thread, with their positions
    /// in their frames' bytes; each encoding owns those after the count it started at.
    static SPLICES: RefCell<Vec<(usize, Bytes)>> = const { RefCell::new(Vec::new()) };
    /// Whether `OFFERED` holds a payload.
    static HAS_OFFER: Cell<bool> = const { Cell::new(false) };
    /// The payload whose bytes the serializer is about to receive.
    static OFFERED: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Offers `bytes` for splicing into the frame being encoded, if one is and they are large
/// enough: called by a payload right before it serializes them.
pub(crate) fn offer(bytes: &Bytes) {
    if bytes.len() >= SPLICE_MIN && DEPTH.get() > 0 {
        OFFERED.set(Some(bytes.clone()));
        HAS_OFFER.set(true);
    }
}

/// Splices `data` in at position `at` of the frame being encoded, if `data` is the memory of the
/// payload just offered. `false` means the caller copies it.
pub(super) fn splice(at: usize, data: &[u8]) -> bool {
    if !HAS_OFFER.replace(false) {
        return false;
    }
    let Some(offered) = OFFERED.take() else {
        return false;
    };
    // Offered only inside a scope, and taken back when the scope ends.
    if offered.as_ptr() != data.as_ptr() || offered.len() != data.len() {
        return false;
    }
    SPLICES.with_borrow_mut(|splices| splices.push((at, offered)));
    SPLICED.set(SPLICED.get() + 1);
    true
}

/// How many payloads the frames being encoded have spliced in so far.
#[inline]
pub(super) fn spliced_count() -> usize {
    SPLICED.get()
}

/// Forgets the payloads spliced in after the first `count`: the encoding they belonged to
/// failed and was cut off.
#[inline]
pub(super) fn forget_splices_after(count: usize) {
    if SPLICED.get() > count {
        SPLICES.with_borrow_mut(|splices| splices.truncate(count));
        SPLICED.set(count);
    }
}

/// The splicing scope of one [`Frame::encode`]. Dropping it, even in a panic, restores the
/// thread's state as it was.
struct SpliceScope {
    /// How many payloads were spliced, by encodings around this one, when it started.
    start: usize,
}

impl SpliceScope {
    #[inline]
    fn open() -> Self {
        DEPTH.set(DEPTH.get() + 1);
        SpliceScope {
            start: SPLICED.get(),
        }
    }

    /// Ends the scope, returning what was spliced in it, if anything was.
    #[inline]
    fn close(self) -> Option<Vec<(usize, Bytes)>> {
        take_splices(self.start)
    }
}

/// Takes the payloads spliced in after the first `start`, if there are any.
#[inline]
fn take_splices(start: usize) -> Option<Vec<(usize, Bytes)>> {
    if SPLICED.get() <= start {
        return None;
    }
    SPLICED.set(start);
    Some(SPLICES.with_borrow_mut(|splices| splices.split_off(start)))
}

/// A splicing scope held open across many encodings into one frame
/// ([`Frame::encode_within`]): many small values then cost one scope, not one each. Nothing may
/// be awaited while it is open, since the scope is the thread's; dropping it closes it.
pub(crate) struct OpenScope {
    scope: SpliceScope,
}

impl OpenScope {
    /// Opens a scope.
    pub(crate) fn open() -> Self {
        OpenScope {
            scope: SpliceScope::open(),
        }
    }
}

impl Drop for SpliceScope {
    #[inline]
    fn drop(&mut self) {
        DEPTH.set(DEPTH.get() - 1);
        if HAS_OFFER.replace(false) {
            OFFERED.take();
        }
        forget_splices_after(self.start);
    }
}

/// How many bytes a [`FrameStart`] holds: a length prefix and a head of up to 12 bytes, which
/// a stream item's (its kind and a call id of up to 10 bytes) always fits.
const FRAME_START_ROOM: usize = 16;

/// The start of frames that all begin alike, such as a stream's items: room for the length
/// prefix, set as each frame is finished, then the head, already encoded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameStart {
    /// The start, then zeros up to the room's end.
    bytes: [u8; FRAME_START_ROOM],
    len: usize,
}

impl FrameStart {
    /// The start of frames with `head`; `None` for a head longer than 12 bytes.
    pub(crate) fn new(head: &[u8]) -> Option<FrameStart> {
        let len = LENGTH_PREFIX + head.len();
        let mut bytes = [0; FRAME_START_ROOM];
        bytes.get_mut(LENGTH_PREFIX..len)?.copy_from_slice(head);
        Some(FrameStart { bytes, len })
    }
}

/// An encoded frame, length prefix included, ready for the writer: its bytes, and the large
/// payloads spliced in between them.
#[derive(Debug, Default)]
pub(crate) struct Frame {
    bytes: Vec<u8>,
    /// Payloads in order, each with the position in `bytes` it goes before.
    spliced: Vec<(usize, Bytes)>,
}

impl Drop for Frame {
    fn drop(&mut self) {
        super::spare::keep(&mut self.bytes);
    }
}

impl From<Vec<u8>> for Frame {
    fn from(bytes: Vec<u8>) -> Self {
        Frame {
            bytes,
            spliced: Vec::new(),
        }
    }
}

impl Frame {
    /// The frame's whole length, length prefix included.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
            + self
                .spliced
                .iter()
                .map(|(_, bytes)| bytes.len())
                .sum::<usize>()
    }

    /// How much memory the frame's bytes hold.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// The frame's bytes, when nothing is spliced in.
    pub(crate) fn contiguous(&self) -> Option<&[u8]> {
        self.spliced.is_empty().then_some(&self.bytes[..])
    }

    /// Appends `value`, postcard-encoded, splicing in large payloads.
    pub(crate) fn append<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CodecError> {
        self.encode(|bytes| codec::append(value, bytes))
    }

    /// Runs `encode`, which appends to the frame's bytes through [`codec::append`]; large
    /// payloads it serializes are spliced in rather than copied.
    #[inline]
    pub(crate) fn encode<R>(&mut self, encode: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        let scope = SpliceScope::open();
        let result = encode(&mut self.bytes);
        if let Some(spliced) = scope.close() {
            self.spliced.extend(spliced);
        }
        result
    }

    /// [`Frame::encode`] within `scope`, which stays open for the encodings after it: only
    /// what this encoding spliced is taken.
    ///
    /// Always inlined: it is each streamed item's encoding, and left to the compiler it was
    /// inlined or not from one build to the next, as other code changed around it; out of line,
    /// an item of a stream of small numbers cost 25 more instructions, 407 against 384 (callgrind,
    /// `scripts/instructions.sh stream`, both processes).
    #[inline(always)]
    pub(crate) fn encode_within<R>(
        &mut self,
        scope: &OpenScope,
        encode: impl FnOnce(&mut Vec<u8>) -> R,
    ) -> R {
        let result = encode(&mut self.bytes);
        if let Some(spliced) = take_splices(scope.scope.start) {
            self.spliced.extend(spliced);
        }
        result
    }

    /// Makes room for at least `bytes` in all, so that appending up to that many does not
    /// reallocate.
    pub(crate) fn reserve(&mut self, bytes: usize) {
        self.bytes.reserve(bytes.saturating_sub(self.bytes.len()));
    }

    /// Starts another frame after the whole frames this one already holds, so that several
    /// small frames go to the writer as one: `start`, room for its length prefix and its head.
    /// Returns where it starts.
    #[inline]
    pub(crate) fn start_frame(&mut self, start: &FrameStart) -> usize {
        let at = self.bytes.len();
        // All the room in one store of a known size, then cut to the start's length: less than
        // a byte at a time or a call to memcpy.
        self.bytes.extend_from_slice(&start.bytes);
        self.bytes.truncate(at + start.len);
        at
    }

    /// The payload length of the frame that starts at `at`: everything after its length
    /// prefix, spliced payloads included.
    #[inline]
    pub(crate) fn payload_len_from(&self, at: usize) -> usize {
        let spliced: usize = self
            .spliced
            .iter()
            .filter(|(position, _)| *position > at)
            .map(|(_, bytes)| bytes.len())
            .sum();
        self.bytes.len() - at - LENGTH_PREFIX + spliced
    }

    /// Cuts off the frame that starts at `at`, and everything after it.
    pub(crate) fn truncate(&mut self, at: usize) {
        self.bytes.truncate(at);
        self.spliced.retain(|(position, _)| *position <= at);
    }

    /// Writes the length prefix of the frame that starts at `at`: the length of its payload.
    #[inline]
    pub(crate) fn set_length_prefix(&mut self, at: usize, size: u32) {
        self.bytes[at..at + LENGTH_PREFIX].copy_from_slice(&size.to_be_bytes());
    }

    /// What is left of the frame once its first `written` bytes are written (empty if they are
    /// all): its own bytes copied, the spliced payloads shared.
    pub(crate) fn rest_after(&self, written: usize) -> Frame {
        /// Takes what is left of `piece` once `skip` more bytes are written, from the `skip`.
        fn left(piece: &[u8], skip: &mut usize) -> std::ops::RangeFrom<usize> {
            let written = (*skip).min(piece.len());
            *skip -= written;
            written..
        }
        let mut rest = Frame::default();
        let mut skip = written;
        let mut from = 0;
        for (at, payload) in &self.spliced {
            let own = &self.bytes[from..*at];
            rest.bytes.extend_from_slice(&own[left(own, &mut skip)]);
            let unwritten = left(payload, &mut skip);
            if unwritten.start < payload.len() {
                rest.spliced
                    .push((rest.bytes.len(), payload.slice(unwritten)));
            }
            from = *at;
        }
        let own = &self.bytes[from..];
        rest.bytes.extend_from_slice(&own[left(own, &mut skip)]);
        rest
    }

    /// Appends the frame to `slices` as the pieces a vectored write sends in order.
    pub(crate) fn push_slices<'a>(&'a self, slices: &mut Vec<IoSlice<'a>>) {
        let mut from = 0;
        for (at, payload) in &self.spliced {
            slices.push(IoSlice::new(&self.bytes[from..*at]));
            slices.push(IoSlice::new(payload));
            from = *at;
        }
        slices.push(IoSlice::new(&self.bytes[from..]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Payload;

    /// The start of frames with `head`, a short one.
    fn start(head: &[u8]) -> FrameStart {
        FrameStart::new(head).expect("a short head")
    }

    /// A frame started from a `FrameStart` holds its room for the length prefix and its head,
    /// and nothing of the room past them; a head too long for one has none.
    #[test]
    fn a_frame_start_adds_its_prefix_and_head_alone() {
        let mut frame = Frame::default();
        let at = frame.start_frame(&start(b"head"));
        assert_eq!((at, &frame.bytes[..]), (0, &b"\0\0\0\0head"[..]));
        let longest = [9; 12];
        let at = frame.start_frame(&start(&longest));
        assert_eq!(at, 8);
        assert_eq!(
            &frame.bytes[8..],
            &[0, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]
        );
        assert!(FrameStart::new(&[9; 13]).is_none());
    }

    /// The bytes a vectored write of `frame` sends.
    fn sent(frame: &Frame) -> Vec<u8> {
        let mut slices = Vec::new();
        frame.push_slices(&mut slices);
        slices
            .iter()
            .flat_map(|slice| slice.iter().copied())
            .collect()
    }

    /// The rest of a frame after any number of its bytes is the frame's bytes from there, its
    /// spliced payload still shared for as long as any of it is left.
    #[test]
    fn the_rest_of_a_frame_is_its_bytes_from_where_a_write_ended() {
        let payload = Payload::from((0..SPLICE_MIN).map(|i| i as u8).collect::<Vec<u8>>());
        let mut frame = Frame::from(vec![1, 2, 3]);
        frame.append(&(&payload, 9u8)).expect("encodes");
        assert_eq!(frame.spliced.len(), 1, "the payload is spliced in");
        let whole = sent(&frame);
        let before = whole.len() - SPLICE_MIN - 1;
        for written in [
            0,
            1,
            before,
            before + 1,
            before + SPLICE_MIN,
            whole.len() - 1,
        ] {
            let rest = frame.rest_after(written);
            assert_eq!(sent(&rest), &whole[written..], "after {written} bytes");
            assert_eq!(rest.len(), whole.len() - written);
            let payload_left = written < before + SPLICE_MIN;
            assert_eq!(
                rest.spliced.len(),
                usize::from(payload_left),
                "after {written}"
            );
        }
        assert_eq!(frame.rest_after(whole.len()).len(), 0, "nothing left");
    }

    /// A value whose encoding always fails.
    struct Fails;

    impl Serialize for Fails {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("no"))
        }
    }

    /// The bytes of `frame` as they go on the wire.
    fn flatten(frame: &Frame) -> Vec<u8> {
        let mut slices = Vec::new();
        frame.push_slices(&mut slices);
        slices.iter().flat_map(|slice| slice.to_vec()).collect()
    }

    #[test]
    fn a_large_payload_is_spliced_in_and_the_bytes_are_those_of_a_copy() {
        let big = Payload::from(vec![7u8; SPLICE_MIN]);
        let value = (1u8, big.clone(), "tail", big.clone());
        let mut frame = Frame::from(vec![0; LENGTH_PREFIX]);
        frame.append(&value).expect("encodes");

        assert_eq!(frame.spliced.len(), 2, "both payloads are spliced");
        assert!(
            frame.bytes.len() < 64,
            "and not copied: {}",
            frame.bytes.len()
        );
        let mut copied = vec![0; LENGTH_PREFIX];
        copied.extend(postcard::to_stdvec(&value).expect("encodes"));
        assert_eq!(flatten(&frame), copied);
        assert_eq!(frame.len(), copied.len());
        assert_eq!(frame.contiguous(), None);
    }

    /// Frames gathered into one, the first ending with a spliced payload, which goes before
    /// the very position the second frame starts at: each frame's length, taken as it is
    /// finished, counts its own bytes only.
    #[test]
    fn gathered_frames_each_count_only_their_own_spliced_bytes() {
        let big = Payload::from(vec![7u8; SPLICE_MIN]);
        let mut frame = Frame::default();
        let first = frame.start_frame(&start(b"A"));
        frame.append(&big).expect("encodes");
        let mut first_payload = b"A".to_vec();
        first_payload.extend(postcard::to_stdvec(&big).expect("encodes"));
        assert_eq!(frame.payload_len_from(first), first_payload.len());

        let second = frame.start_frame(&start(b"B"));
        frame.append(&5u8).expect("encodes");
        assert_eq!(frame.payload_len_from(second), 2, "its head and one byte");
    }

    /// Frames encoded one after another in one open scope splice their payloads as they would
    /// in scopes of their own: each frame's length counts its own payload, and a frame cut off
    /// takes its payload with it.
    #[test]
    fn frames_encoded_in_one_open_scope_each_keep_their_own_payloads() {
        let big = Payload::from(vec![7u8; SPLICE_MIN]);
        let mut frame = Frame::default();
        let scope = OpenScope::open();
        let within = |frame: &mut Frame, value: &(Payload, Option<u8>)| {
            frame
                .encode_within(&scope, |bytes| codec::append(value, bytes))
                .expect("encodes");
        };
        let first = frame.start_frame(&start(b"A"));
        within(&mut frame, &(big.clone(), None));
        let first_len = frame.payload_len_from(first);
        let second = frame.start_frame(&start(b"B"));
        within(&mut frame, &(big.clone(), Some(1)));
        let second_len = frame.payload_len_from(second);
        let cut = frame.start_frame(&start(b"C"));
        within(&mut frame, &(big.clone(), None));
        frame.truncate(cut);
        drop(scope);

        let first_value = postcard::to_stdvec(&(big.clone(), None::<u8>)).expect("encodes");
        let second_value = postcard::to_stdvec(&(big, Some(1u8))).expect("encodes");
        assert_eq!(
            (first_len, second_len),
            (1 + first_value.len(), 1 + second_value.len())
        );
        assert_eq!(frame.spliced.len(), 2, "the cut frame's payload is gone");
        let mut copied = vec![0; LENGTH_PREFIX];
        copied.push(b'A');
        copied.extend(first_value);
        copied.extend([0; LENGTH_PREFIX]);
        copied.push(b'B');
        copied.extend(second_value);
        assert_eq!(flatten(&frame), copied);
        assert_eq!(
            spliced_count(),
            0,
            "the thread holds nothing after the scope"
        );
    }

    /// Reserving makes room for that many bytes in all, counting those already there.
    #[test]
    fn reserving_makes_room_for_the_whole() {
        let mut frame = Frame::from(vec![1; 100]);
        frame.reserve(4096);
        let room = frame.bytes.capacity();
        assert!(room >= 4096, "{room}");
        frame.bytes.extend_from_slice(&[2; 3996]);
        assert_eq!(
            frame.bytes.capacity(),
            room,
            "no reallocation up to the whole"
        );
    }

    /// Cutting off a frame keeps the payload spliced at the very end of the frame before it.
    #[test]
    fn truncating_keeps_the_payload_that_ends_the_frame_before() {
        let big = Payload::from(vec![7u8; SPLICE_MIN]);
        let mut frame = Frame::default();
        frame.start_frame(&start(b"A"));
        frame.append(&big).expect("encodes");
        let whole = flatten(&frame);
        let second = frame.start_frame(&start(b"B"));
        frame.append(&big).expect("encodes");
        frame.truncate(second);
        assert_eq!(flatten(&frame), whole);
    }

    #[test]
    fn a_small_payload_is_copied() {
        let small = Payload::from(vec![7u8; SPLICE_MIN - 1]);
        let mut frame = Frame::default();
        frame.append(&small).expect("encodes");
        assert!(frame.spliced.is_empty());
        assert_eq!(
            frame.contiguous(),
            Some(&postcard::to_stdvec(&small).expect("encodes")[..])
        );
    }

    #[test]
    fn outside_a_frame_a_payload_offers_nothing() {
        let big = Payload::from(vec![7u8; SPLICE_MIN]);
        let encoded = postcard::to_stdvec(&big).expect("encodes");
        assert_eq!(encoded.len(), SPLICE_MIN + 3);
        assert!(OFFERED.with_borrow(Option::is_none));
        assert!(!HAS_OFFER.get());
    }

    #[test]
    fn a_failed_encoding_leaves_no_splice_behind() {
        let big = Payload::from(vec![7u8; SPLICE_MIN]);
        let mut frame = Frame::from(vec![1, 2]);
        frame.append(&(big.clone(), Fails)).expect_err("fails");
        assert_eq!(frame.contiguous(), Some(&[1, 2][..]));
        frame.append(&big).expect("encodes");
        assert_eq!(frame.spliced.len(), 1);
        assert_eq!(
            frame.spliced[0].0,
            2 + 3,
            "after the two bytes and the length varint"
        );
    }

    /// Within one encoding, a failed append takes back its own splices only: what an earlier
    /// append spliced in stays.
    #[test]
    fn a_failed_append_keeps_the_splices_of_those_before_it() {
        let big = Payload::from(vec![7u8; SPLICE_MIN]);
        let mut frame = Frame::default();
        frame.encode(|bytes| {
            codec::append(&big, bytes).expect("encodes");
            codec::append(&(big.clone(), Fails), bytes).expect_err("fails");
        });
        assert_eq!(frame.spliced.len(), 1, "the first append's payload");
        assert_eq!(flatten(&frame), postcard::to_stdvec(&big).expect("encodes"));
    }

    /// Only the offered payload's own memory is spliced: bytes of the same length elsewhere,
    /// or part of the payload, are copied.
    #[test]
    fn only_the_offered_payloads_memory_is_spliced() {
        let big = Bytes::from(vec![7u8; SPLICE_MIN]);
        let elsewhere = big.to_vec();
        let _scope = SpliceScope::open();
        offer(&big);
        assert!(!splice(0, &elsewhere), "same length, other memory");
        offer(&big);
        assert!(
            !splice(0, &big[..SPLICE_MIN - 1]),
            "the same memory, shorter"
        );
        offer(&big);
        assert!(splice(0, &big), "the payload itself");
    }

    #[test]
    fn a_panic_while_encoding_leaves_the_thread_as_it_was() {
        struct Panics;
        impl Serialize for Panics {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                panic!("a Serialize that panics")
            }
        }
        let big = Payload::from(vec![7u8; SPLICE_MIN]);
        let mut frame = Frame::default();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            frame.append(&(big.clone(), Panics))
        }));
        assert!(panicked.is_err());
        assert_eq!(DEPTH.get(), 0);
        assert_eq!(SPLICED.get(), 0);
        assert!(SPLICES.with_borrow(Vec::is_empty));
        assert!(OFFERED.with_borrow(Option::is_none));
        assert!(!HAS_OFFER.get());
    }
}
