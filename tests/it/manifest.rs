//! The manifest names every file of a store: a missing, shortened, extra or stale file is reported by name, by
//! `open` and by `verify_dir`, instead of silently changing what the store holds.

use std::path::{Path, PathBuf};

use ussdb::{Error, Store};

use crate::common::{copy_dir, crc32, map, open, segment_files, small_segments, tempdir};

/// A store of several sealed segments (with hint files) and an active one, every user's "c" mapping overwritten
/// and a few deleted, so that losing any one file changes what it holds.
fn store_with_sealed_segments() -> (tempfile::TempDir, Vec<(String, Option<String>)>) {
    let dir = tempdir();
    let store = open(dir.path(), small_segments().auto_compaction(false));
    let mut expected = Vec::new();
    for i in 0..120 {
        store
            .set(&map(
                &format!("user-{i}"),
                "c",
                &format!("v{i}-{:040}", 0),
                None,
            ))
            .expect("set");
    }
    store.compact().expect("compact writes hints");
    for i in 0..120 {
        if i % 10 == 0 {
            store.delete(&format!("user-{i}"), "c").expect("delete");
            expected.push((format!("user-{i}"), None));
        } else {
            let v = format!("w{i}-{:040}", 0);
            store
                .set(&map(&format!("user-{i}"), "c", &v, None))
                .expect("set");
            expected.push((format!("user-{i}"), Some(v)));
        }
    }
    store.compact().expect("compact");
    assert!(store.stats().segments >= 3, "{:?}", store.stats());
    drop(store);
    (dir, expected)
}

fn check_contents(store: &Store, expected: &[(String, Option<String>)]) {
    for (user, want) in expected {
        let got = store.get(user, "c").expect("get").map(|m| m.variation_name);
        assert_eq!(&got, want, "{user}");
    }
}

/// The active segment's file, as the manifest names it (bytes 24..28: see docs/FORMAT.md).
fn active_file(dir: &Path) -> PathBuf {
    let bytes = std::fs::read(dir.join("MANIFEST")).expect("manifest");
    let id = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    dir.join(format!("{id:010}.seg"))
}

/// The store's sealed segment files that hold records (every segment file but the active one).
fn sealed_files(dir: &Path) -> Vec<PathBuf> {
    let active = active_file(dir);
    segment_files(dir)
        .into_iter()
        .filter(|p| *p != active)
        .filter(|p| std::fs::metadata(p).expect("len").len() > 20)
        .collect()
}

fn corrupted_file(result: Result<Store, Error>) -> (PathBuf, String) {
    match result {
        Err(Error::Corrupted { path, reason, .. }) => (path, reason),
        other => panic!("expected Corrupted, got {other:?}"),
    }
}

#[test]
fn a_deleted_sealed_segment_is_named_by_open_and_verify() {
    let (dir, expected) = store_with_sealed_segments();
    check_contents(&open(dir.path(), small_segments()), &expected);
    for victim in sealed_files(dir.path()) {
        let copy = copy_dir(dir.path());
        let gone = copy.path().join(victim.file_name().expect("name"));
        std::fs::remove_file(&gone).expect("remove");
        let (path, reason) = corrupted_file(Store::open_with(copy.path(), small_segments()));
        assert_eq!(path, gone, "{reason}");
        assert!(reason.contains("missing"), "{reason}");
        let report = ussdb::verify_dir(copy.path()).expect("verify_dir");
        assert!(!report.is_clean(), "{report:?}");
        assert!(
            report
                .damage
                .iter()
                .any(|d| d.path == gone && d.reason.contains("missing")),
            "{report:?}"
        );
    }
}

#[test]
fn a_deleted_newest_segment_is_named_by_open_and_verify() {
    let (dir, _) = store_with_sealed_segments();
    let newest = active_file(dir.path());
    std::fs::remove_file(&newest).expect("remove");
    let (path, reason) = corrupted_file(Store::open_with(dir.path(), small_segments()));
    assert_eq!(path, newest, "{reason}");
    assert!(reason.contains("newest segment is missing"), "{reason}");
    let report = ussdb::verify_dir(dir.path()).expect("verify_dir");
    assert!(report.damage.iter().any(|d| d.path == newest), "{report:?}");
}

#[test]
fn a_sealed_segment_cut_at_a_record_boundary_is_named() {
    let (dir, _) = store_with_sealed_segments();
    let victim = sealed_files(dir.path()).pop().expect("a sealed segment");
    // Cut after the first record: the rest are whole records, so only the manifest knows something is missing.
    let bytes = std::fs::read(&victim).expect("read");
    let first_len = 11
        + u16::from_le_bytes([bytes[25], bytes[26]]) as usize
        + u32::from_le_bytes([bytes[27], bytes[28], bytes[29], bytes[30]]) as usize;
    std::fs::write(&victim, &bytes[..20 + first_len]).expect("cut");
    let (path, reason) = corrupted_file(Store::open_with(dir.path(), small_segments()));
    assert_eq!(path, victim, "{reason}");
    assert!(reason.contains("shortened"), "{reason}");
    let report = ussdb::verify_dir(dir.path()).expect("verify_dir");
    assert!(
        report
            .damage
            .iter()
            .any(|d| d.path == victim && d.reason.contains("shortened")),
        "{report:?}"
    );
}

#[test]
fn a_segment_file_from_elsewhere_is_refused_by_name() {
    let (dir, _) = store_with_sealed_segments();
    let (other, _) = store_with_sealed_segments();
    // An old segment of another store, under a name this store once used (a segment compaction retired).
    let foreign = sealed_files(other.path())
        .into_iter()
        .next()
        .expect("a segment");
    let present = segment_files(dir.path());
    let retired = (1..1000)
        .map(|id| dir.path().join(format!("{id:010}.seg")))
        .find(|p| !present.contains(p))
        .expect("compaction retired a segment");
    let intruder = retired;
    std::fs::copy(&foreign, &intruder).expect("copy");
    let (path, reason) = corrupted_file(Store::open_with(dir.path(), small_segments()));
    assert_eq!(path, intruder, "{reason}");
    assert!(reason.contains("not part of the store"), "{reason}");
    let report = ussdb::verify_dir(dir.path()).expect("verify_dir");
    assert!(
        report
            .damage
            .iter()
            .any(|d| d.path == intruder && d.reason.contains("extra")),
        "{report:?}"
    );
}

#[test]
fn an_old_hint_put_back_is_not_applied() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments().auto_compaction(false));
    for i in 0..200 {
        store
            .set(&map(&format!("user-{i}"), "c", "old", None))
            .expect("set");
    }
    store.compact().expect("compact");
    let backup = copy_dir(dir.path());
    for i in 0..200 {
        store
            .set(&map(&format!("user-{i}"), "c", "new", None))
            .expect("set");
    }
    store.compact().expect("compact");
    drop(store);
    // Put every hint of the earlier copy back under every hint name of the store.
    let old_hints: Vec<PathBuf> = std::fs::read_dir(backup.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "hint"))
        .collect();
    let hints: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "hint"))
        .collect();
    assert!(!old_hints.is_empty() && !hints.is_empty());
    for (i, hint) in hints.iter().enumerate() {
        std::fs::copy(&old_hints[i % old_hints.len()], hint).expect("put back");
    }
    let report = ussdb::verify_dir(dir.path()).expect("verify_dir");
    assert!(
        report.is_clean(),
        "a stale hint is not data damage: {report:?}"
    );
    assert_eq!(report.hint_problems.len(), hints.len(), "{report:?}");
    let store = open(dir.path(), small_segments());
    for i in 0..200 {
        let got = store.get(&format!("user-{i}"), "c").expect("get");
        assert_eq!(got.map(|m| m.variation_name).as_deref(), Some("new"));
    }
    assert_eq!(store.stats().hint_files, 0, "no stale hint was used");
}

#[test]
fn files_an_interrupted_rotation_left_behind_are_removed() {
    let (dir, expected) = store_with_sealed_segments();
    // A segment created by a rotation whose manifest write never happened: a number past every id handed out.
    let newest = active_file(dir.path());
    let stray = dir.path().join("0000009999.seg");
    let mut header = std::fs::read(&newest).expect("read")[..20].to_vec();
    header[12..16].copy_from_slice(&9999u32.to_le_bytes());
    let crc = crc32(&header[..16]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&stray, &header).expect("write");
    let store = open(dir.path(), small_segments());
    check_contents(&store, &expected);
    assert!(!stray.exists());
    assert!(store.verify().expect("verify").is_clean());
}
