//! Replays the fuzz corpus and every committed crash input (`fuzz/regressions/<target>/`, plus any fresh
//! `fuzz/artifacts/<target>/`) under a stable `cargo test`, through the same entry points the fuzz targets
//! call, so a crash the fuzzer once found stays fixed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use ussdb::{Durability, Options, Store};

use crate::common::{map, segment_files, tempdir};
use crate::fuzz_harness::{self, encode_dir};

/// The fuzz targets, by directory name under `fuzz/corpus`, `fuzz/regressions` and `fuzz/artifacts`.
const TARGETS: [&str; 6] = [
    "record",
    "segment_header",
    "value_codec",
    "hint",
    "open_dir",
    "model",
];

fn run_target(target: &str, data: &[u8], scratch: &Path) {
    match target {
        "record" => ussdb::fuzzing::record(data),
        "segment_header" => ussdb::fuzzing::segment_header(data),
        "value_codec" => ussdb::fuzzing::value_codec(data),
        "hint" => ussdb::fuzzing::hint(data),
        "open_dir" => {
            fuzz_harness::clear_dir(scratch);
            fuzz_harness::open_dir(scratch, data);
        }
        "model" => {
            fuzz_harness::clear_dir(scratch);
            fuzz_harness::model(scratch, data);
        }
        other => panic!("unknown fuzz target {other}"),
    }
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn the_fuzz_corpus_and_every_crash_found_replay_cleanly() {
    let scratch = tempdir();
    let mut failures = Vec::new();
    for target in TARGETS {
        // Only the committed seeds: what a local fuzzing run adds is neither committed nor bounded.
        let corpus: Vec<PathBuf> = inputs(&fuzz_dir().join("corpus").join(target))
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("seed-"))
            })
            .collect();
        assert!(!corpus.is_empty(), "fuzz/corpus/{target} has no seeds");
        let regressions = inputs(&fuzz_dir().join("regressions").join(target));
        let artifacts = inputs(&fuzz_dir().join("artifacts").join(target));
        for input in corpus.iter().chain(&regressions).chain(&artifacts) {
            // A fuzzer running meanwhile may drop an input it has minimised.
            let Ok(data) = std::fs::read(input) else {
                continue;
            };
            if catch_unwind(AssertUnwindSafe(|| {
                run_target(target, &data, scratch.path())
            }))
            .is_err()
            {
                failures.push(input.display().to_string());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "fuzz inputs that fail (see the panics above): {failures:#?}"
    );
}

/// Offsets of the records in a segment's bytes (test-side parse of the documented format).
fn record_offsets(segment: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 20;
    while let Some(h) = segment.get(at..at + 11) {
        offsets.push(at);
        at += 11
            + usize::from(u16::from_le_bytes([h[5], h[6]]))
            + u32::from_le_bytes([h[7], h[8], h[9], h[10]]) as usize;
    }
    offsets
}

/// Writes the seed corpus from real stores. Run by hand after a format change:
/// `cargo test --test it regenerate_fuzz_seed_corpus -- --ignored`.
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn regenerate_fuzz_seed_corpus() {
    let dir = tempdir();
    {
        let store = Store::open_with(
            dir.path(),
            Options::default()
                .segment_size(4096)
                .durability(Durability::Never),
        )
        .expect("open");
        for i in 0..90 {
            let goals = (i % 3 == 0).then(|| "purchase_vwo_signup".to_owned());
            store
                .set(&map(
                    &format!("user-{}", i % 7),
                    &format!("c{}", i % 5),
                    &format!("Variation-{i}"),
                    goals.as_deref(),
                ))
                .expect("set");
            if i % 11 == 0 {
                store
                    .delete(&format!("user-{}", i % 7), "c0")
                    .expect("delete");
            }
        }
        store.forget_user("user-3").expect("forget");
        store
            .set_with_meta(&map("u", "c", "Control", None), Some("{\"k\":[1,2]}"))
            .expect("set with meta");
    }
    let segments: Vec<Vec<u8>> = segment_files(dir.path())
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    assert!(segments.len() >= 2, "seeds should span a rotation");
    let (first, newest) = (&segments[0], segments.last().expect("segments"));
    let corpus = fuzz_dir().join("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let d = corpus.join(target);
        std::fs::create_dir_all(&d).expect("create corpus dir");
        std::fs::write(d.join(name), bytes).expect("write seed");
    };

    let offsets = record_offsets(first);
    for (n, &at) in offsets
        .iter()
        .enumerate()
        .filter(|(n, _)| n % 12 == 0 || *n + 1 == offsets.len())
    {
        write(
            "record",
            &format!("seed-{n:03}"),
            &first[at..first.len().min(at + 120)],
        );
    }
    write("record", "seed-torn", &first[offsets[0]..offsets[0] + 9]);

    for (n, seg) in segments.iter().enumerate() {
        write("segment_header", &format!("seed-{n}"), &seg[..20]);
    }
    write("segment_header", "seed-short", &segments[0][..13]);

    for (n, &at) in offsets.iter().enumerate().filter(|(n, _)| n % 12 == 0) {
        let h = &first[at..at + 11];
        let key_len = usize::from(u16::from_le_bytes([h[5], h[6]]));
        let value_len = u32::from_le_bytes([h[7], h[8], h[9], h[10]]) as usize;
        let mut seed = vec![key_len as u8];
        seed.extend_from_slice(&first[at + 11..at + 11 + key_len + value_len]);
        write("value_codec", &format!("seed-{n:03}"), &seed);
    }

    write(
        "open_dir",
        "seed-one-segment",
        &encode_dir(&[(0, newest.as_slice())]),
    );
    // Under another file name than the id its header names: a mismatch open must report.
    write(
        "open_dir",
        "seed-id-mismatch",
        &encode_dir(&[(1, &first[..offsets[offsets.len() / 2]])]),
    );
    let mut torn = newest.clone();
    torn.truncate(torn.len() - 3);
    write(
        "open_dir",
        "seed-torn-tail",
        &encode_dir(&[(0, &first[..first.len().min(3000)]), (1, torn.as_slice())]),
    );
    write(
        "open_dir",
        "seed-leftovers",
        &encode_dir(&[
            (0, newest.as_slice()),
            (6, b"half"),
            (7, b"pid"),
            (8, b"notes"),
        ]),
    );
    write("open_dir", "seed-empty", b"");

    // After a compaction: hint files, and a directory that holds them.
    let hinted = crate::common::copy_dir(dir.path());
    Store::open_with(hinted.path(), Options::default().segment_size(4096))
        .and_then(|store| store.compact())
        .expect("compact");
    let mut dir_files = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(hinted.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    for path in names {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_owned();
        let bytes = std::fs::read(&path).expect("read");
        if name.ends_with(".hint") {
            write("hint", &format!("seed-{name}"), &bytes);
        }
        if let Some(i) = fuzz_harness::OPEN_DIR_NAMES.iter().position(|n| *n == name) {
            dir_files.push((i, bytes));
        }
    }
    let dir_files: Vec<(usize, &[u8])> =
        dir_files.iter().map(|(i, b)| (*i, b.as_slice())).collect();
    write("open_dir", "seed-with-hints", &encode_dir(&dir_files));

    let programs: [&[u8]; 4] = [
        &[0, 0, 0, 1, 0, 5, 0, 0, 9, 5, 0, 0, 3, 0, 0, 5, 0, 0],
        &[
            0, 1, 1, 2, 170, 0, 1, 2, 3, 170, 0, 1, 3, 4, 170, 4, 1, 7, 1, 9, 7, 1,
        ],
        &[
            1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
            25, 26, 27,
        ],
        &[
            2, 0, 0, 7, 255, 2, 0, 1, 7, 255, 2, 0, 2, 7, 255, 2, 0, 3, 7, 255, 2, 0, 4, 7, 255, 8,
            9, 4, 0, 7, 0,
        ],
    ];
    for (n, p) in programs.iter().enumerate() {
        write("model", &format!("seed-{n}"), p);
    }
}
