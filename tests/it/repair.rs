//! Salvage: `Store::repair` keeps every intact record, drops damaged ones, and says exactly what was lost.

use std::path::{Path, PathBuf};

use ussdb::{Error, Options, Store};

use crate::common::{map, open, segment_files, small_segments, tempdir};

fn build(dir: &Path) {
    let store = open(dir, small_segments().auto_compaction(false));
    for i in 0..150 {
        store
            .set(&map(
                &format!("user-{i}"),
                "c",
                &format!("v{i}-{:030}", 0),
                None,
            ))
            .expect("set");
    }
    store.delete("user-3", "c").expect("delete");
}

fn active_file(dir: &Path) -> PathBuf {
    let bytes = std::fs::read(dir.join("MANIFEST")).expect("manifest");
    let id = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    dir.join(format!("{id:010}.seg"))
}

/// Offset of the `n`th record of a segment file.
fn record_offset(bytes: &[u8], n: usize) -> usize {
    let mut offset = 20;
    for _ in 0..n {
        let key_len = u16::from_le_bytes([bytes[offset + 5], bytes[offset + 6]]) as usize;
        let value_len = u32::from_le_bytes([
            bytes[offset + 7],
            bytes[offset + 8],
            bytes[offset + 9],
            bytes[offset + 10],
        ]) as usize;
        offset += 11 + key_len + value_len;
    }
    offset
}

#[test]
fn a_damaged_value_costs_its_key_and_nothing_else() {
    let dir = tempdir();
    build(dir.path());
    let victim = segment_files(dir.path())
        .into_iter()
        .find(|p| *p != active_file(dir.path()))
        .expect("a sealed segment");
    let mut bytes = std::fs::read(&victim).expect("read");
    let at = record_offset(&bytes, 2);
    let key_len = u16::from_le_bytes([bytes[at + 5], bytes[at + 6]]) as usize;
    bytes[at + 11 + key_len + 3] ^= 0x01; // inside the value: header and key stay readable
    std::fs::write(&victim, &bytes).expect("write");
    assert!(matches!(
        Store::open_with(dir.path(), small_segments()),
        Err(Error::Corrupted { .. })
    ));

    let report = Store::repair(dir.path(), small_segments()).expect("repair");
    assert!(report.rewritten);
    assert_eq!(report.lost.len(), 1, "{report:?}");
    let lost = &report.lost[0];
    assert_eq!(
        (lost.path.clone(), lost.offset),
        (victim.clone(), at as u64)
    );
    let (user, campaign) = lost.key.clone().expect("the key is named");
    assert_eq!(campaign, "c");

    let store = open(dir.path(), small_segments());
    assert!(store.verify().expect("verify").is_clean());
    assert_eq!(
        store.get(&user, "c").expect("get"),
        None,
        "the damaged key is erased"
    );
    assert_eq!(
        store.get("user-3", "c").expect("get"),
        None,
        "a delete stays a delete"
    );
    let mut present = 0;
    for i in 0..150 {
        let u = format!("user-{i}");
        if u == user || i == 3 {
            continue;
        }
        assert!(store.get(&u, "c").expect("get").is_some(), "{u}");
        present += 1;
    }
    assert_eq!(report.kept, present);
    assert_eq!(store.stats().mappings, present);
    // And the erase that was blocked is possible.
    assert_eq!(store.forget_user("user-7").expect("forget"), 1);
}

#[test]
fn a_missing_segment_is_reported_and_the_rest_opens() {
    let dir = tempdir();
    build(dir.path());
    let active = active_file(dir.path());
    let gone = segment_files(dir.path())
        .into_iter()
        .find(|p| *p != active)
        .expect("a sealed segment");
    std::fs::remove_file(&gone).expect("remove");
    assert!(Store::open_with(dir.path(), small_segments()).is_err());
    let report = Store::repair(dir.path(), small_segments()).expect("repair");
    assert!(
        report
            .lost
            .iter()
            .any(|l| l.path == gone && l.reason.contains("missing")),
        "{report:?}"
    );
    let store = open(dir.path(), small_segments());
    assert!(store.verify().expect("verify").is_clean());
    assert!(store.stats().mappings > 0);
}

#[test]
fn a_sound_store_is_left_as_it_is() {
    let dir = tempdir();
    build(dir.path());
    let before = segment_files(dir.path());
    let report = Store::repair(dir.path(), Options::default()).expect("repair");
    assert!(report.is_clean() && !report.rewritten, "{report:?}");
    assert_eq!(segment_files(dir.path()), before);
    let _open = open(dir.path(), small_segments());
    assert!(matches!(
        Store::repair(dir.path(), Options::default()),
        Err(Error::Locked { .. })
    ));
}

#[cfg(feature = "json")]
#[test]
fn export_skips_a_damaged_record_writes_the_rest_and_says_so() {
    let dir = tempdir();
    build(dir.path());
    let store = open(dir.path(), small_segments().auto_compaction(false));
    let victim = segment_files(dir.path())
        .into_iter()
        .find(|p| *p != active_file(dir.path()))
        .expect("a sealed segment");
    drop(store);
    let bytes = std::fs::read(&victim).expect("read");
    let at = record_offset(&bytes, 1);
    let key_len = u16::from_le_bytes([bytes[at + 5], bytes[at + 6]]) as usize;
    let flip_at = at + 11 + key_len + 2;
    // Bit rot after open (open would refuse the damaged segment): one byte changed in place, not truncated.
    let store = open(dir.path(), small_segments().auto_compaction(false));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&file, &[bytes[flip_at] ^ 0x01], flip_at as u64)
        .expect("flip");
    let mut out = Vec::new();
    match store.export_json(&mut out) {
        Err(Error::Export {
            written, skipped, ..
        }) => {
            assert_eq!(skipped, 1);
            assert_eq!(written, 148);
            assert_eq!(String::from_utf8_lossy(&out).lines().count(), 148);
        }
        other => panic!("expected Error::Export, got {other:?}"),
    }
}
