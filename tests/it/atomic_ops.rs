//! Operations of many records (`write_batch`, `forget_user`) across a segment rotation, after a power cut in
//! `Never` and `Periodic` durability; and two pins of what compaction and repair count.

use std::path::Path;
use std::time::Duration;

use ussdb::{Batch, Durability, Options, Store};

use crate::common::{map, segment_files, tempdir};
use crate::simfs::SimFs;

const CAMPAIGNS: usize = 30;

/// The newest segment's id, from the manifest (its `active` field).
fn active_id(dir: &Path) -> u32 {
    let bytes = std::fs::read(dir.join("MANIFEST")).expect("manifest");
    u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]])
}

fn active_len(dir: &Path) -> u64 {
    let path = dir.join(format!("{:010}.seg", active_id(dir)));
    std::fs::metadata(path).expect("active segment").len()
}

/// A store over `fs` whose user `victim` has `CAMPAIGNS` durable mappings and whose active segment has about
/// `room` bytes left: the next operation of more records than that straddles a rotation.
fn prepared(dir: &Path, fs: &SimFs, durability: Durability, room: u64) -> Store {
    let store = Store::open_with(dir, fs.options(durability)).expect("open");
    for c in 0..CAMPAIGNS {
        store
            .set(&map("victim", &format!("campaign-{c:02}"), "before", None))
            .expect("set");
    }
    for i in 0.. {
        store.sync().expect("sync");
        let left = 4096u64.saturating_sub(active_len(dir));
        if left <= room && left > room / 2 {
            break;
        }
        store
            .set(&map("filler", &format!("f{i}"), "v", None))
            .expect("filler");
    }
    store
}

/// The variations `victim` holds after a power cut now.
fn after_power_cut(dir: &Path, fs: &SimFs, store: Store) -> Vec<String> {
    fs.halt_now();
    drop(store);
    fs.restore_durable_image();
    let store = Store::open_with(dir, Options::default().auto_compaction(false)).expect("reopen");
    store
        .campaigns_of("victim")
        .expect("campaigns_of")
        .into_iter()
        .map(|m| m.variation_name)
        .collect()
}

fn modes() -> [Durability; 2] {
    // A period longer than the test: only the rotation's fsync could make part of the operation durable.
    [
        Durability::Never,
        Durability::Periodic(Duration::from_secs(3600)),
    ]
}

#[test]
fn a_forget_user_across_a_rotation_comes_back_whole_or_not_at_all_after_a_power_cut() {
    // Regression: its tombstones went out one by one, and the rotation between them fsynced the first part; the
    // power cut then kept those and lost the rest, so the user came back half forgotten.
    for durability in modes() {
        let dir = tempdir();
        let fs = SimFs::default();
        // 30 tombstones of ~40 bytes: about 600 bytes fit before the rotation.
        let store = prepared(dir.path(), &fs, durability, 600);
        let before = segment_files(dir.path()).len();
        assert_eq!(store.forget_user("victim").expect("forget_user"), CAMPAIGNS);
        assert!(
            segment_files(dir.path()).len() > before,
            "{durability:?}: the test needs a rotation"
        );
        let left = after_power_cut(dir.path(), &fs, store);
        assert!(
            left.is_empty() || left.len() == CAMPAIGNS,
            "{durability:?}: {} of {CAMPAIGNS} mappings survived a forget_user",
            left.len()
        );
    }
}

#[test]
fn a_batch_across_a_rotation_comes_back_whole_or_not_at_all_after_a_power_cut() {
    for durability in modes() {
        let dir = tempdir();
        let fs = SimFs::default();
        // 30 puts of ~60 bytes (under a segment in all): about half fit before the rotation.
        let store = prepared(dir.path(), &fs, durability, 900);
        let mut batch = Batch::new();
        for c in 0..CAMPAIGNS {
            batch
                .push(
                    &map("victim", &format!("campaign-{c:02}"), "after", None),
                    None,
                )
                .expect("push");
        }
        let before = segment_files(dir.path()).len();
        store.write_batch(&batch).expect("write_batch");
        assert!(
            segment_files(dir.path()).len() > before,
            "{durability:?}: the test needs a rotation"
        );
        let left = after_power_cut(dir.path(), &fs, store);
        assert_eq!(left.len(), CAMPAIGNS, "{durability:?}");
        let after = left.iter().filter(|v| *v == "after").count();
        assert!(
            after == 0 || after == CAMPAIGNS,
            "{durability:?}: {after} of {CAMPAIGNS} mappings of one batch survived"
        );
    }
}

#[test]
fn a_manual_compact_leaves_an_active_segment_of_sync_points_alone() {
    // Each `Immediate` set leaves a sync point, dead from birth; sealing the active segment for those alone made
    // one small segment per call.
    let dir = tempdir();
    let store = Store::open_with(
        dir.path(),
        Options::default()
            .segment_size(64 << 10)
            .auto_compaction(false),
    )
    .expect("open");
    store.set(&map("u", "c", "v0", None)).expect("set");
    store.compact().expect("compact");
    let active = active_id(dir.path());
    for i in 1..5 {
        store
            .set(&map("u", &format!("c{i}"), "v", None))
            .expect("set");
        store.compact().expect("compact");
        assert_eq!(
            active_id(dir.path()),
            active,
            "compact {i} sealed a segment holding only live records and sync points"
        );
    }
    // An overwrite is worth sealing for.
    store.set(&map("u", "c", "v1", None)).expect("overwrite");
    store.compact().expect("compact");
    assert_ne!(active_id(dir.path()), active);
}

#[test]
fn repair_counts_user_records_not_sync_points() {
    let dir = tempdir();
    {
        let store = Store::open_with(
            dir.path(),
            Options::default().segment_size(4096).auto_compaction(false),
        )
        .expect("open");
        for i in 0..50 {
            store
                .set(&map(&format!("user-{i}"), "c", "v", None))
                .expect("set");
        }
        for i in 0..5 {
            store.delete(&format!("user-{i}"), "c").expect("delete");
        }
        assert!(store.verify().expect("verify").sync_points >= 50);
    }
    let report = Store::repair(dir.path(), Options::default()).expect("repair");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.records, 55, "50 puts and 5 tombstones: {report:?}");
}
