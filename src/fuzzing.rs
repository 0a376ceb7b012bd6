//! Entry points for the fuzz targets in `fuzz/` and the test that replays their corpus. **Not part of the
//! API**: hidden from the docs, and free to change in any release.
//!
//! The decoders are private, so each check lives here, next to them: it feeds arbitrary bytes to one decoder and
//! panics only if an invariant breaks. "Returns an error" is always fine; a panic inside a decoder, or a decoded
//! value that does not encode back to what was read, is a bug.

#![expect(
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a fuzz check panics on purpose: the panic is the finding"
)]

use crate::{codec, record};

/// Record decoder: never panics; an accepted record re-encodes to exactly the bytes it was read from, and lies
/// within the input.
pub fn record(data: &[u8]) {
    // Whatever the bytes, judging a stop in them as the newest segment's never panics, and a sync point found
    // past the stop lies past it and claims no more than its own offset.
    let seed = fixed_seed();
    let role = crate::tail::Role::Newest {
        version: record::FORMAT_VERSION,
        file_id: 1,
        seed: Some(&seed),
    };
    let _ = crate::tail::classify(data, 0, &record::DecodeError::Short { needed: None }, role);
    if let Some(proof) = crate::tail::proven_durable(data, 0, 1, Some(&seed)) {
        assert!(proof.at > 0 && proof.durable <= proof.at as u64);
    }
    let Ok(rec) = record::decode(data) else {
        return;
    };
    if rec.kind == record::Kind::Sync {
        let payload =
            record::SyncPayload::decode(rec.value).expect("a decoded sync point has a payload");
        assert_eq!(
            payload.encode(),
            rec.value,
            "a sync point's payload re-encodes to its bytes"
        );
    }
    assert!(
        rec.len() <= data.len(),
        "record of {} bytes decoded from {} bytes",
        rec.len(),
        data.len()
    );
    let mut again = Vec::with_capacity(rec.len());
    record::encode(&mut again, rec.kind, rec.key, rec.value);
    assert_eq!(
        again,
        data[..rec.len()],
        "a decoded record must re-encode to the bytes it came from"
    );
}

/// A seed with fixed keys, so a fuzz input always meets the same one.
fn fixed_seed() -> crate::seed::Seed {
    use crate::seed::{SEED_LEN, SEED_MAGIC, SEED_VERSION, Seed};
    let mut file = [0u8; SEED_LEN];
    file[..8].copy_from_slice(&SEED_MAGIC);
    file[8..12].copy_from_slice(&SEED_VERSION.to_le_bytes());
    file[12..20].copy_from_slice(&1u64.to_le_bytes());
    file[20..28].copy_from_slice(&2u64.to_le_bytes());
    let crc = crc32fast::hash(&file[..28]);
    file[28..].copy_from_slice(&crc.to_le_bytes());
    Seed::decode(&file).expect("a sound seed file")
}

/// Segment header decoder: never panics; an accepted header is exactly the header of the id it names.
pub fn segment_header(data: &[u8]) {
    if let Ok(id) = record::decode_segment_header(data) {
        // Older versions are still read: compare with this build's header of that id, version aside.
        let version = record::segment_version(data);
        assert!((record::OLDEST_FORMAT_VERSION..=record::FORMAT_VERSION).contains(&version));
        let mut expected = record::segment_header(id);
        expected[8..12].copy_from_slice(&version.to_le_bytes());
        let crc = crc32fast::hash(&expected[..16]);
        expected[16..20].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(expected, data[..record::SEGMENT_HEADER_LEN as usize]);
    }
}

/// Key and value codecs: never panic; a decoded key encodes back to the same bytes, and a decoded value (of a
/// campaign mapping or of an FME record) survives an encode/decode round trip unchanged, and an FME record its
/// JSON form too. The hand decoder of a mapping's value reads what bincode's reads, and refuses what it refuses.
/// The first byte of `data` splits it into a key and a value.
pub fn value_codec(data: &[u8]) {
    let _ = same_value_decoding(data);
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (key, value) = rest.split_at(usize::from(split).min(rest.len()));
    let _ = same_value_decoding(value);
    if let Ok(rec) = codec::decode_feature("u", "f", value) {
        let again = codec::encode_feature(&rec).expect("a decoded FME value fits the format");
        let back = codec::decode_feature("u", "f", &again).expect("an encoded FME value decodes");
        assert_eq!(back, rec, "encode/decode round trip changed the FME record");
        // Other members are stored as the JSON text they were read from (disk is trusted once its checksum
        // matches), so only records without them are held to the JSON round trip here.
        #[cfg(feature = "json")]
        if rec.other_fields().is_none() {
            let json = rec.to_json();
            let parsed = crate::FeatureRecord::from_json(&json)
                .unwrap_or_else(|e| panic!("to_json wrote {json} that from_json refuses: {e}"));
            assert_eq!(parsed, rec, "JSON round trip changed the FME record");
        }
    }
    if let Some((user_id, campaign_key)) = codec::decode_key(key) {
        // Ids too long for the API can only come from a damaged or foreign file; encode_key refuses them.
        if let Ok(again) = codec::encode_key(user_id, campaign_key) {
            assert_eq!(
                again, key,
                "a decoded key must encode back to the bytes it came from"
            );
        }
    }
    let Ok(stored) = codec::decode_value(value) else {
        return;
    };
    let Ok((map, meta)) = codec::decode_map(b"\x01\x00uc", value) else {
        panic!("decode_value accepted a value that decode_map refused");
    };
    assert_eq!(map.variation_name, stored.variation_name);
    assert_eq!(
        map.goal_identifier.as_deref(),
        stored.goal_identifier.as_deref()
    );
    // bincode accepts some non-minimal integer encodings, so compare decoded values, not bytes.
    let again =
        codec::encode_value(&map, meta.as_deref()).expect("a decoded value fits the format");
    let back = codec::decode_value(&again).expect("an encoded value decodes");
    assert_eq!(back, stored, "encode/decode round trip changed the value");
}

/// The value decoder of the read path and bincode's agree: the same value, or both an error. Returns whether
/// the value was accepted (the codec's tests count both outcomes).
pub(crate) fn same_value_decoding(bytes: &[u8]) -> bool {
    match (
        codec::decode_value(bytes),
        codec::decode_value_bincode(bytes),
    ) {
        (Ok(hand), Ok(bincode)) => {
            assert_eq!(
                hand, bincode,
                "the two decoders read different values from {bytes:02x?}"
            );
            true
        }
        (Err(_), Err(_)) => false,
        (hand, bincode) => {
            panic!("the decoders disagree on {bytes:02x?}: by hand {hand:?}, bincode {bincode:?}")
        }
    }
}

/// Hint file decoder: never panics; an accepted hint lays its entries end to end from the segment header to the
/// segment length it states, and its entries encode back to exactly the bytes they were read from.
pub fn hint(data: &[u8]) {
    let Ok((header, entries)) = crate::hint::decode(data) else {
        return;
    };
    let mut offset = record::SEGMENT_HEADER_LEN;
    let mut body = Vec::new();
    for e in &entries {
        assert_eq!(e.offset, offset, "entries must lie end to end");
        body.push(e.kind as u8);
        let len =
            u32::try_from(e.len).expect("an accepted record length fits the entry's four bytes");
        body.extend_from_slice(&len.to_le_bytes());
        body.extend_from_slice(&e.hash.to_le_bytes());
        offset += e.len;
    }
    assert_eq!(
        offset, header.segment_len,
        "entries must cover the stated segment length"
    );
    assert_eq!(
        body,
        data[crate::hint::HINT_HEADER_LEN..],
        "entries must re-encode to their bytes"
    );
}
