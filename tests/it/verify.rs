//! Verify: a healthy store is reported clean in one line; damage is named by file and offset, whether the store
//! is open (bit rot after open) or refuses to open; a torn last write is told apart from damage.

use std::os::unix::fs::FileExt;
use std::path::Path;

use ussdb::{Error, Store};

use crate::common::{map, open, record_extents, segment_files, small_segments, tempdir};

fn fill(store: &Store, n: usize) {
    for i in 0..n {
        store
            .set(&map(
                &format!("user-{}", i % 40),
                &format!("c{}", i % 5),
                &format!("V{i}"),
                None,
            ))
            .expect("set");
    }
}

fn flip_byte(path: &Path, offset: u64) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open segment");
    let mut b = [0u8];
    file.read_exact_at(&mut b, offset).expect("read");
    file.write_all_at(&[b[0] ^ 0x5a], offset).expect("write");
}

#[test]
fn a_healthy_store_is_clean_and_summarised_in_one_line() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments().auto_compaction(false));
    fill(&store, 600);
    store.delete("user-1", "c1").expect("delete");
    let report = store.verify().expect("verify");
    assert!(report.is_clean(), "{:?}", report.damage);
    assert!(report.index_checked);
    assert_eq!(report.mappings, store.stats().mappings);
    assert_eq!(report.records, 601);
    assert_eq!(report.segments, store.stats().segments);
    assert_eq!(report.bytes, store.stats().disk_bytes);
    let line = report.to_string();
    assert!(line.starts_with("ok: ") && !line.contains('\n'), "{line}");
}

#[test]
fn bit_rot_in_a_sealed_segment_after_open_is_named_by_file_and_offset() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments().auto_compaction(false));
    fill(&store, 600);
    let first = segment_files(dir.path())[0].clone();
    // The first record starts right after the 20-byte header; byte 25 is inside its header's key length.
    flip_byte(&first, 25);
    let report = store.verify().expect("verify runs");
    assert!(!report.is_clean());
    let damage = &report.damage[0];
    assert_eq!(
        (damage.path.as_path(), damage.offset),
        (first.as_path(), 20)
    );
    assert!(report.to_string().starts_with("DAMAGED: "), "{report}");
    // Every later record of the segment is still read: the scan skips to the next intact record.
    assert!(report.records >= 599, "{}", report.records);
}

#[test]
fn a_store_that_refuses_to_open_is_verified_file_by_file() {
    let dir = tempdir();
    {
        let store = open(dir.path(), small_segments().auto_compaction(false));
        fill(&store, 600);
    }
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    flip_byte(&files[1], 100);
    let newest = files.last().expect("newest");
    let len = std::fs::metadata(newest).expect("len").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(newest)
        .expect("open")
        .set_len(len - 3)
        .expect("tear");

    // Before any open, which would cut the torn tail off.
    let report = ussdb::verify_dir(dir.path()).expect("verify_dir");
    let err = Store::open_with(dir.path(), small_segments()).expect_err("damage stops open");
    assert!(err.is_corruption(), "{err}");
    assert!(!report.index_checked);
    assert_eq!(report.damage.len(), 1, "{:?}", report.damage);
    assert_eq!(report.damage[0].path, files[1]);
    assert!(report.damage[0].offset <= 100, "{}", report.damage[0]);
    let torn = report
        .torn_tail
        .as_ref()
        .unwrap_or_else(|| panic!("no torn tail: {report:?}"));
    assert_eq!(&torn.path, newest);
    assert!(report.to_string().contains("torn"), "{report}");
}

#[test]
fn a_torn_tail_alone_is_not_damage() {
    let dir = tempdir();
    {
        let store = open(dir.path(), small_segments());
        fill(&store, 10);
    }
    let newest = segment_files(dir.path()).pop().expect("segment");
    // The last put, not the sync point that closing appended after it.
    let bytes = std::fs::read(&newest).expect("read");
    let (_, _, end) = *record_extents(&bytes)
        .iter()
        .rfind(|(kind, _, _)| *kind == 1)
        .expect("a put");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .expect("open")
        .set_len(end as u64 - 1)
        .expect("tear");
    let report = ussdb::verify_dir(dir.path()).expect("verify_dir");
    assert!(
        report.is_clean() && report.torn_tail.is_some(),
        "{report:?}"
    );
    assert_eq!(report.mappings, 9);
}

#[test]
fn verify_dir_refuses_an_open_store_and_a_missing_one() {
    let dir = tempdir();
    let _store = open(dir.path(), small_segments());
    assert!(matches!(
        ussdb::verify_dir(dir.path()),
        Err(Error::Locked { .. })
    ));
    assert!(matches!(
        ussdb::verify_dir(dir.path().join("nope")),
        Err(Error::NotADirectory { .. })
    ));
}

#[test]
fn hint_files_are_compared_with_their_segments() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments().auto_compaction(false));
    fill(&store, 600);
    store.compact().expect("compact writes hint files");
    let report = store.verify().expect("verify");
    assert!(
        report.is_clean() && report.hint_problems.is_empty(),
        "{report:?}"
    );
    assert!(report.hint_files > 0, "{report:?}");
    assert_eq!(report.hint_files, store.stats().hint_files);
    drop(store);

    let hint = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "hint"))
        .expect("a hint file");
    flip_byte(&hint, 45);
    let report = ussdb::verify_dir(dir.path()).expect("verify_dir");
    assert!(
        report.is_clean(),
        "a bad hint is not damage to the data: {report:?}"
    );
    assert_eq!(report.hint_problems.len(), 1, "{report:?}");
    assert_eq!(report.hint_problems[0].path, hint);
    assert_eq!(report.hint_problems[0].offset, 45);
}

#[test]
fn verify_stays_clean_while_writes_and_compaction_run() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    fill(&store, 300);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let stop = &stop;
    std::thread::scope(|s| {
        let writer = store.clone();
        s.spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                writer
                    .set(&map(
                        &format!("user-{}", i % 40),
                        "c0",
                        &format!("W{i}"),
                        None,
                    ))
                    .expect("set");
                i += 1;
            }
        });
        let compactor = store.clone();
        s.spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                compactor.compact().expect("compact");
            }
        });
        for _ in 0..30 {
            let report = store.verify().expect("verify");
            assert!(report.is_clean(), "{:?}", report.damage);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}
