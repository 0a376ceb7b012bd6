//! Compaction: keeps the newest value of every key, shrinks the directory, keeps deletes deleted whatever the order
//! in which segments are compacted, and never shows a reader an old value while writers race it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ussdb::{CampaignUserMap, Durability, Options, Store};

use crate::common::{copy_dir_to_memory, map, memory_tempdir, open, segment_files, tempdir};

fn manual() -> Options {
    Options::default()
        .segment_size(4096)
        .durability(Durability::Never)
        .auto_compaction(false)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum()
}

fn file_ids(dir: &Path) -> Vec<u32> {
    segment_files(dir)
        .iter()
        .map(|p| {
            let name = p.file_stem().and_then(|s| s.to_str()).expect("name");
            name.parse().expect("id")
        })
        .collect()
}

fn check_all(store: &Store, model: &HashMap<(String, String), CampaignUserMap>) {
    for ((u, c), m) in model {
        assert_eq!(store.get(u, c).expect("get").as_ref(), Some(m), "{u}/{c}");
    }
    assert_eq!(store.stats().mappings, model.len() as u64);
}

#[test]
fn compaction_keeps_the_newest_values_and_shrinks_the_directory() {
    let dir = tempdir();
    let store = open(dir.path(), manual());
    let mut model = HashMap::new();
    for round in 0..20 {
        for k in 0..40 {
            let m = map(
                &format!("user-{k}"),
                "camp",
                &format!("v{round}"),
                Some("goal_vwo_x"),
            );
            store.set(&m).expect("set");
            model.insert((m.user_id.clone(), m.campaign_key.clone()), m);
        }
    }
    for k in 0..10 {
        store.delete(&format!("user-{k}"), "camp").expect("delete");
        model.remove(&(format!("user-{k}"), "camp".to_owned()));
    }
    let before = store.stats();
    let bytes_before = dir_bytes(dir.path());
    store.compact().expect("compact");
    let after = store.stats();
    check_all(&store, &model);
    assert!(after.compactions > 0, "{after:?}");
    assert!(after.last_compaction.is_some());
    assert!(after.segments < before.segments, "{before:?} -> {after:?}");
    assert!(
        after.disk_bytes * 3 < before.disk_bytes,
        "{before:?} -> {after:?}"
    );
    assert!(after.space_amplification < 1.5, "{after:?}");
    assert!(dir_bytes(dir.path()) < bytes_before);
    assert_eq!(
        after.hint_files + 1,
        after.segments,
        "every sealed segment has a hint"
    );
    // A second pass finds nothing left to do.
    store.compact().expect("compact again");
    assert_eq!(store.stats().disk_bytes, after.disk_bytes);
    drop(store);
    let store = open(dir.path(), manual());
    check_all(&store, &model);
    for k in 0..10 {
        assert_eq!(store.get(&format!("user-{k}"), "camp").expect("get"), None);
    }
}

#[test]
fn background_compaction_bounds_the_directory_under_overwrites() {
    let dir = tempdir();
    let options = Options::default()
        .segment_size(16 * 1024)
        .durability(Durability::Never)
        .compaction_threshold(0.5);
    let store = open(dir.path(), options.clone());
    let mut model = HashMap::new();
    for round in 0..150 {
        for k in 0..50 {
            let m = map(&format!("user-{k}"), "camp", &format!("v{round}"), None);
            store.set(&m).expect("set");
            model.insert((m.user_id.clone(), m.campaign_key.clone()), m);
        }
    }
    // The background thread runs on its own schedule: wait (bounded) until it has caught up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.stats().compactions == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let stats = store.stats();
    assert!(stats.compactions > 0, "{stats:?}");
    check_all(&store, &model);
    drop(store);
    let store = open(dir.path(), options);
    check_all(&store, &model);
}

/// Builds segments 1..=4 (plus the active one): K is set in 1, deleted in 2, set again in 3 when `reset`, deleted
/// again in 4 when `redelete`. Fillers keep every segment holding live data.
fn layered(dir: &Path, reset: bool, redelete: bool) -> Option<String> {
    let store = open(dir, manual());
    let mut filler = 0;
    let mut fill_to_next_segment = |store: &Store| {
        let start = segment_files(dir).len();
        while segment_files(dir).len() == start {
            store
                .set(&map(
                    &format!("filler-{filler}"),
                    "camp",
                    "v",
                    Some(&"g".repeat(200)),
                ))
                .expect("set");
            filler += 1;
        }
    };
    store.set(&map("k", "camp", "v1", None)).expect("set");
    fill_to_next_segment(&store);
    assert!(store.delete("k", "camp").expect("delete"));
    fill_to_next_segment(&store);
    if reset {
        store.set(&map("k", "camp", "v2", None)).expect("set");
    }
    fill_to_next_segment(&store);
    if reset && redelete {
        assert!(store.delete("k", "camp").expect("delete"));
    }
    fill_to_next_segment(&store);
    assert_eq!(file_ids(dir), [1, 2, 3, 4, 5]);
    (reset && !redelete).then(|| "v2".to_owned())
}

#[test]
fn tombstones_keep_deleting_whatever_the_order_of_compactions() {
    let ranges: Vec<(u32, u32)> = (1..=4).flat_map(|a| (a..=4).map(move |b| (a, b))).collect();
    for (reset, redelete) in [(false, false), (true, false), (true, true)] {
        let template = memory_tempdir();
        let want = layered(template.path(), reset, redelete);
        // Every run alone, every order of compacting the segments one by one, and each merge of two or three
        // followed by any run.
        let mut sequences: Vec<Vec<(u32, u32)>> = ranges.iter().map(|r| vec![*r]).collect();
        for a in 1..=4 {
            for b in (1..=4).filter(|&b| b != a) {
                for c in (1..=4).filter(|&c| c != a && c != b) {
                    let d = 10 - a - b - c;
                    sequences.push(vec![(a, a), (b, b), (c, c), (d, d)]);
                }
            }
        }
        for merge in ranges.iter().filter(|(a, b)| b > a) {
            for next in &ranges {
                sequences.push(vec![*merge, *next]);
            }
        }
        for sequence in sequences {
            let dir = copy_dir_to_memory(template.path());
            let store = open(dir.path(), manual());
            for &(a, b) in &sequence {
                store.compact_file_range_for_tests(a, b).expect("compact");
                let got = store
                    .get("k", "camp")
                    .expect("get")
                    .map(|m| m.variation_name);
                assert_eq!(
                    got, want,
                    "after {sequence:?} (reset {reset}, redelete {redelete}), before reopen"
                );
            }
            drop(store);
            let store = open(dir.path(), manual());
            let got = store
                .get("k", "camp")
                .expect("get")
                .map(|m| m.variation_name);
            assert_eq!(
                got, want,
                "after {sequence:?} (reset {reset}, redelete {redelete}) and a reopen"
            );
            assert!(store.get("filler-0", "camp").expect("get").is_some());
            store.compact().expect("full compaction");
            drop(store);
            let store = open(dir.path(), manual());
            let got = store
                .get("k", "camp")
                .expect("get")
                .map(|m| m.variation_name);
            assert_eq!(
                got, want,
                "after {sequence:?}, a full compaction and a reopen"
            );
        }
    }
}

#[test]
fn tombstones_are_dropped_once_nothing_older_can_resurrect() {
    let dir = tempdir();
    let store = open(dir.path(), manual());
    for i in 0..200 {
        store
            .set(&map(
                &format!("user-{i}"),
                "camp",
                "v",
                Some(&"g".repeat(50)),
            ))
            .expect("set");
    }
    for i in 0..200 {
        store.delete(&format!("user-{i}"), "camp").expect("delete");
    }
    store.compact().expect("compact");
    let stats = store.stats();
    assert_eq!(stats.mappings, 0);
    assert_eq!(
        stats.dead_bytes, 0,
        "every tombstone went with the versions it deleted: {stats:?}"
    );
    assert_eq!(stats.segments, 1, "{stats:?}");
    drop(store);
    let store = open(dir.path(), manual());
    for i in 0..200 {
        assert_eq!(store.get(&format!("user-{i}"), "camp").expect("get"), None);
    }
}

/// A value that names its key and version.
fn versioned(user: &str, version: u64) -> CampaignUserMap {
    map(
        user,
        "camp",
        &format!("{user}|{version}"),
        Some(&"x".repeat((version % 50) as usize)),
    )
}

fn version_of(m: &CampaignUserMap, user: &str) -> u64 {
    let (u, v) = m.variation_name.split_once('|').expect("versioned value");
    assert_eq!(u, user, "a get returned another key's value");
    assert_eq!(
        m,
        &versioned(user, v.parse().expect("version")),
        "torn value"
    );
    v.parse().expect("version")
}

#[test]
fn reads_and_writes_racing_compaction_always_see_the_newest_value() {
    let dir = tempdir();
    let options = Options::default()
        .segment_size(8 * 1024)
        .durability(Durability::Never)
        .auto_compaction(false);
    let store = open(dir.path(), options.clone());
    let done = Arc::new(AtomicBool::new(false));
    // Each writer owns its keys, so after its set returns, its own get must see exactly that version.
    let writers: Vec<_> = (0..2)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for version in 0..3000u64 {
                    let user = format!("w{t}-{}", version % 40);
                    store.set(&versioned(&user, version)).expect("set");
                    let got = store
                        .get(&user, "camp")
                        .expect("get")
                        .expect("just written");
                    assert_eq!(version_of(&got, &user), version, "read after write");
                    if version % 97 == 0 {
                        store.delete(&user, "camp").expect("delete");
                        assert_eq!(
                            store.get(&user, "camp").expect("get"),
                            None,
                            "read after delete"
                        );
                    }
                }
            })
        })
        .collect();
    // Readers of other threads' keys: versions of a key never go backwards.
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut last: HashMap<String, u64> = HashMap::new();
                while !done.load(Ordering::Relaxed) {
                    for t in 0..2 {
                        for k in 0..40 {
                            let user = format!("w{t}-{k}");
                            if let Some(m) = store.get(&user, "camp").expect("get") {
                                let v = version_of(&m, &user);
                                let seen = last.entry(user).or_insert(0);
                                assert!(v >= *seen, "went back from {seen} to {v}");
                                *seen = v;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    let compactor = {
        let store = store.clone();
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut passes = 0;
            while !done.load(Ordering::Relaxed) {
                store.compact().expect("compact");
                passes += 1;
            }
            passes
        })
    };
    for w in writers {
        w.join().expect("writer");
    }
    done.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader");
    }
    let passes = compactor.join().expect("compactor");
    assert!(passes > 0);
    assert!(store.stats().compactions > 0);
    let expect: HashMap<String, Option<CampaignUserMap>> = (0..2)
        .flat_map(|t| (0..40).map(move |k| format!("w{t}-{k}")))
        .map(|u| {
            let v = store.get(&u, "camp").expect("get");
            (u, v)
        })
        .collect();
    drop(store);
    let store = open(dir.path(), options);
    for (u, v) in expect {
        assert_eq!(store.get(&u, "camp").expect("get"), v, "{u} after reopen");
    }
}

#[test]
fn compaction_thresholds_outside_zero_to_one_are_refused() {
    for bad in [-0.1, 1.5, f64::NAN] {
        let dir = tempdir();
        let err = Store::open_with(dir.path(), Options::default().compaction_threshold(bad))
            .expect_err("bad threshold");
        assert!(
            matches!(
                err,
                ussdb::Error::InvalidOption {
                    option: "compaction_threshold",
                    ..
                }
            ),
            "{err}"
        );
    }
}
