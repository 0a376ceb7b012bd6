//! Recovery: torn tails are cut off, damage elsewhere is reported with file and offset, failed fsyncs poison.

use ussdb::{Durability, Error, Options, Store};

use crate::common::{copy_dir, map, open, segment_files, small_segments, tempdir};
use crate::simfs::SimFs;

#[test]
fn a_torn_last_record_is_cut_at_every_byte_offset() {
    let dir = tempdir();
    let options = Options::default().durability(Durability::Never);
    // End offsets of the c{i} record and of the i-th overwrite of "shared".
    let (mut ends_c, mut ends_shared) = (Vec::new(), Vec::new());
    {
        let store = open(dir.path(), options.clone());
        let len = || {
            std::fs::metadata(&segment_files(dir.path())[0])
                .expect("len")
                .len()
        };
        for i in 0..4 {
            let goals = (i % 2 == 1).then(|| "g".repeat(i * 7));
            store
                .set(&map(
                    "user",
                    &format!("c{i}"),
                    &format!("v{i}"),
                    goals.as_deref(),
                ))
                .expect("set");
            ends_c.push(len());
            store
                .set(&map("user", "shared", &format!("v{i}"), None))
                .expect("overwrite");
            ends_shared.push(len());
        }
    }
    let seg_name = segment_files(dir.path())[0]
        .file_name()
        .expect("name")
        .to_owned();
    let full = *ends_shared.last().expect("writes");
    for cut in 20..full {
        let copy = copy_dir(dir.path());
        let seg = copy.path().join(&seg_name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open");
        file.set_len(cut).expect("truncate");
        drop(file);
        let store = Store::open_with(copy.path(), options.clone())
            .unwrap_or_else(|e| panic!("open after a cut at {cut} failed: {e}"));
        for (i, &end) in ends_c.iter().enumerate() {
            let got = store.get("user", &format!("c{i}")).expect("get");
            assert_eq!(got.is_some(), end <= cut, "cut at {cut}: c{i}");
        }
        let shared = store
            .get("user", "shared")
            .expect("get")
            .map(|m| m.variation_name);
        let complete = ends_shared.iter().filter(|&&end| end <= cut).count();
        let want = complete.checked_sub(1).map(|i| format!("v{i}"));
        assert_eq!(
            shared, want,
            "cut at {cut}: the newest complete overwrite wins"
        );
        // The cut really happened: the store accepts writes and keeps them.
        store
            .set(&map("after", "cut", "v", None))
            .expect("write after recovery");
        drop(store);
        let store = Store::open_with(copy.path(), options.clone()).expect("reopen");
        assert!(
            store.get("after", "cut").expect("get").is_some(),
            "cut at {cut}"
        );
    }
}

#[test]
fn garbage_after_the_last_record_is_cut_off() {
    let dir = tempdir();
    drop({
        let store = open(dir.path(), small_segments());
        store.set(&map("u", "c", "v", None)).expect("set");
        store
    });
    let seg = segment_files(dir.path()).pop().expect("segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    let len = bytes.len();
    bytes.extend_from_slice(&[0u8; 100]);
    std::fs::write(&seg, &bytes).expect("write");
    let store = open(dir.path(), small_segments());
    assert!(store.get("u", "c").expect("get").is_some());
    drop(store);
    assert_eq!(
        std::fs::metadata(&seg).expect("len").len(),
        len as u64,
        "zeros cut off"
    );
}

#[test]
fn a_flipped_byte_in_an_old_segment_names_file_and_offset() {
    let dir = tempdir();
    {
        // Without hint files, so open scans every segment (with hints, the damage is found on read:
        // see hints::damage_under_a_hint_is_reported_on_read).
        let store = open(dir.path(), small_segments().auto_compaction(false));
        for i in 0..300 {
            store
                .set(&map(
                    &format!("user-{i}"),
                    "campaign",
                    "variation",
                    Some("goal"),
                ))
                .expect("set");
        }
    }
    let files = segment_files(dir.path());
    assert!(
        files.len() >= 3,
        "the test needs several segments, got {}",
        files.len()
    );
    let victim = &files[1];
    let mut bytes = std::fs::read(victim).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(victim, &bytes).expect("write");
    match Store::open_with(dir.path(), small_segments()) {
        Err(Error::Corrupted { path, offset, .. }) => {
            assert_eq!(&path, victim);
            assert!(
                offset <= at as u64 && at as u64 - offset < 100,
                "offset {offset} vs flipped byte {at}"
            );
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

#[test]
fn a_flipped_byte_in_the_middle_of_the_newest_segment_is_not_taken_for_a_torn_write() {
    let dir = tempdir();
    {
        let store = open(dir.path(), Options::default().durability(Durability::Never));
        for i in 0..50 {
            store
                .set(&map(&format!("user-{i}"), "campaign", "variation", None))
                .expect("set");
        }
    }
    let seg = segment_files(dir.path()).pop().expect("segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    let at = bytes.len() / 3;
    bytes[at] ^= 0x01;
    std::fs::write(&seg, &bytes).expect("write");
    let err = Store::open(dir.path()).expect_err("damage must not be cut off silently");
    assert!(
        matches!(&err, Error::Corrupted { path, .. } if *path == seg),
        "{err}"
    );
    assert!(err.is_corruption());
}

#[test]
fn leftover_temporary_files_are_removed_on_open() {
    let dir = tempdir();
    drop(open(dir.path(), small_segments()));
    let tmp = dir.path().join("0000000009.seg.tmp");
    std::fs::write(&tmp, b"half a header").expect("write");
    drop(open(dir.path(), small_segments()));
    assert!(!tmp.exists());
}

#[test]
fn after_a_failed_fsync_the_store_refuses_writes_until_reopened() {
    let dir = tempdir();
    let fs = SimFs::default();
    let options = Options::default()
        .durability(Durability::Immediate)
        .vfs(fs.vfs());
    let store = open(dir.path(), options.clone());
    store.set(&map("u", "before", "v", None)).expect("set");
    // Only this one fsync fails: the disk works again at once, and the store must not take that as healed.
    fs.fail_next_sync();
    let err = store
        .set(&map("u", "during", "v", None))
        .expect_err("fsync fails");
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_eq!(fs.counts().injected, 1, "the set's own fsync failed");
    let err = store
        .set(&map("u", "after", "v", None))
        .expect_err("poisoned");
    assert!(matches!(err, Error::Poisoned { .. }), "{err}");
    assert!(matches!(
        store.delete("u", "before"),
        Err(Error::Poisoned { .. })
    ));
    assert!(matches!(store.sync(), Err(Error::Poisoned { .. })));
    assert!(
        store
            .get("u", "before")
            .expect("reads still work")
            .is_some()
    );
    drop(store);
    let store = open(dir.path(), options);
    assert!(store.get("u", "before").expect("get").is_some());
    store
        .set(&map("u", "after", "v", None))
        .expect("a reopened store takes writes again");
}
