//! One mapping's encodings, without a store's reads and writes around them:
//!
//! - `json/*`: the SDKs' JSON form (`parse_json_record`, `to_json_record`), what import and export do per line;
//! - `log/*`: the record and value codecs of the log. They are private, so these go through the hidden
//!   `ussdb::fuzzing` checks, each a decode, an encode of what was decoded and a comparison with the input, fed
//!   with a record that a store wrote. They follow the codecs' cost, not a single decode or encode.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ussdb::{CampaignUserMap, Durability, Options, Store};

#[allow(dead_code, reason = "shared by the benchmark files; each uses a part")]
mod common;

/// Length of a segment file's header, before its first record (docs/FORMAT.md).
const SEGMENT_HEADER_LEN: usize = 20;
/// Length of a record's header: crc (4), kind (1), key length (2), value length (4).
const RECORD_HEADER_LEN: usize = 11;

/// A typical returning user's mapping: two goals tracked, and an SDK's `metaData`.
fn sample_map() -> (CampaignUserMap, &'static str) {
    let mut map = CampaignUserMap::new(
        "5f0c3a1e-9d2b-4c7e-8a61-3b9e2d4f7a10",
        "checkout-redesign",
        "Variation-1",
    );
    map.add_goal("add_to_cart");
    map.add_goal("purchase");
    (map, r#"{"plan":"pro","country":"DE"}"#)
}

/// The bytes of the one record a fresh store wrote for `map`, read back from its segment file.
fn record_written_by_a_store(map: &CampaignUserMap, meta: &str) -> Vec<u8> {
    let dir = common::temp_dir();
    let store = Store::open_with(dir.path(), Options::default().durability(Durability::Never))
        .expect("open");
    store.set_with_meta(map, Some(meta)).expect("set");
    drop(store);
    let segment = only_segment(dir.path());
    let bytes = std::fs::read(&segment).expect("read the segment");
    let record = &bytes[SEGMENT_HEADER_LEN..];
    let key_len = usize::from(u16::from_le_bytes([record[5], record[6]]));
    let value_len = u32::from_le_bytes([record[7], record[8], record[9], record[10]]) as usize;
    let len = RECORD_HEADER_LEN + key_len + value_len;
    assert_eq!(
        record.len(),
        len,
        "{} must hold exactly one record",
        segment.display()
    );
    record.to_vec()
}

fn only_segment(dir: &Path) -> std::path::PathBuf {
    let segments: Vec<_> = std::fs::read_dir(dir)
        .expect("list the store")
        .map(|e| e.expect("list the store").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert_eq!(segments.len(), 1, "a fresh store has one segment");
    segments.into_iter().next().expect("one segment")
}

fn record(c: &mut Criterion) {
    let (map, meta) = sample_map();
    let mut g = c.benchmark_group("record");

    let exported = ussdb::to_json_record(&map, Some(meta));
    g.bench_function("json/to_json_record", |b| {
        b.iter(|| ussdb::to_json_record(black_box(&map), black_box(Some(meta))))
    });
    g.bench_function("json/parse_json_record", |b| {
        b.iter(|| ussdb::parse_json_record(black_box(&exported)).expect("parse"))
    });
    // The older SDKs' style: snake_case keys and the goals as an array.
    let snake = r#"{"user_id":"5f0c3a1e-9d2b-4c7e-8a61-3b9e2d4f7a10","campaign_key":"checkout-redesign","variation_name":"Variation-1","goal_identifiers":["add_to_cart","purchase"]}"#;
    assert_eq!(
        ussdb::parse_json_record(snake).expect("parse").0,
        map,
        "both JSON styles hold the same map"
    );
    g.bench_function("json/parse_json_record_snake_case", |b| {
        b.iter(|| ussdb::parse_json_record(black_box(snake)).expect("parse"))
    });

    let record = record_written_by_a_store(&map, meta);
    g.bench_function("log/record_roundtrip", |b| {
        b.iter(|| ussdb::fuzzing::record(black_box(&record)))
    });
    // The value codec's check takes the key's length, the key, then the value.
    let key_len = usize::from(u16::from_le_bytes([record[5], record[6]]));
    let mut key_and_value = vec![u8::try_from(key_len).expect("the sample key is short")];
    key_and_value.extend_from_slice(&record[RECORD_HEADER_LEN..]);
    g.bench_function("log/key_and_value_roundtrip", |b| {
        b.iter(|| ussdb::fuzzing::value_codec(black_box(&key_and_value)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    // Nanosecond operations: 2 s of measurement gives a stable median; `-- --measurement-time N` overrides it.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = record
}
criterion_main!(benches);
