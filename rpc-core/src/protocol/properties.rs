//! Properties of everything that decodes what a peer sends: any bytes give a value or an error,
//! never a panic, and what is allocated is bounded by what was received, not by what the bytes
//! claim.

use std::time::Duration;

use proptest::prelude::*;

use super::frame::{MIN_READ, READ_CHUNK};
use super::{FrameReader, Head, Hello, LENGTH_PREFIX};
use crate::Metadata;
use crate::metadata::MetadataLimits;

fn block_on<T>(work: impl std::future::Future<Output = T>) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), work).await })
        .expect("no read waits: the bytes are all there")
}

/// Bytes that look like frames: a length prefix, mostly honest, then a payload.
fn frames() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (
            prop_oneof![
                3 => Just(None),
                1 => any::<u32>().prop_map(Some),
            ],
            prop::collection::vec(any::<u8>(), 0..64),
        ),
        0..16,
    )
    .prop_map(|frames| {
        let mut bytes = Vec::new();
        for (claim, payload) in frames {
            let length = claim.unwrap_or(payload.len() as u32);
            bytes.extend_from_slice(&length.to_be_bytes());
            bytes.extend_from_slice(&payload);
        }
        bytes
    })
}

proptest! {
    #[test]
    fn the_frame_reader_takes_any_bytes(bytes in prop_oneof![
        frames(),
        prop::collection::vec(any::<u8>(), 0..2048),
    ]) {
        let limit = 16 * 1024 * 1024;
        let mut reader = FrameReader::new(&bytes[..], limit);
        let mut delivered = 0;
        block_on(async {
            while let Ok(Some(frame)) = reader.next_frame().await {
                delivered += LENGTH_PREFIX + frame.len();
            }
        });
        prop_assert!(delivered <= bytes.len());
        // Room made at once is bounded by a constant and the bytes seen, never by a claim (the
        // allocator's doubling on top of what is asked for).
        prop_assert!(reader.capacity() <= 2 * (READ_CHUNK + 2 * bytes.len() + MIN_READ));
    }

    #[test]
    fn the_head_decoder_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok((head, rest)) = Head::decode(&bytes) {
            prop_assert!(rest.len() < bytes.len() || bytes.is_empty(), "{head:?}");
        }
    }

    #[test]
    fn the_hello_reader_takes_any_payload(payload in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        let mut reader = FrameReader::new(&bytes[..], 1 << 20);
        let _ = block_on(Hello::receive(&mut reader, 1 << 20));
    }

    #[test]
    fn a_hello_that_starts_right_takes_any_rest(rest in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut payload = vec![0x00];
        payload.extend_from_slice(b"rpcc\x01");
        payload.extend_from_slice(&rest);
        let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        let mut reader = FrameReader::new(&bytes[..], 1 << 20);
        let _ = block_on(Hello::receive(&mut reader, 1 << 20));
    }

    #[test]
    fn the_metadata_decoder_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok((metadata, rest)) = Metadata::decode_prefix(&bytes, MetadataLimits::DEFAULT) {
            prop_assert!(metadata.len() <= MetadataLimits::DEFAULT.max_entries);
            prop_assert!(rest.len() < bytes.len());
        }
    }

    /// Metadata encoded by hand, as a request carries it, is postcard's encoding, and decodes
    /// back to itself. (Values up to 160 bytes, so that some lengths take two bytes.)
    #[test]
    fn metadata_round_trips(entries in prop::collection::vec(
        ("[a-c]{1,2}", prop::collection::vec(any::<u8>(), 0..160)),
        0..40,
    )) {
        let mut metadata = Metadata::new();
        for (key, value) in &entries {
            metadata.insert(key.clone(), value);
        }
        let bytes = postcard::to_stdvec(&metadata).expect("encodes");
        let mut by_hand = Vec::new();
        super::head::put_metadata(&mut by_hand, &metadata);
        prop_assert_eq!(&by_hand, &bytes);
        let limits = MetadataLimits { max_len: usize::MAX, max_entries: usize::MAX };
        let (decoded, rest) = Metadata::decode_prefix(&bytes, limits).expect("decodes");
        prop_assert!(rest.is_empty());
        prop_assert_eq!(decoded, metadata);
    }
}
