//! Online backup: a consistent copy while writes and compaction go on, checked by `verify_dir` and opened.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ussdb::{Error, Store};

use crate::common::{map, open, small_segments, tempdir};

const USERS: u64 = 64;

#[test]
fn a_backup_taken_under_writes_and_compaction_is_a_consistent_prefix() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments().compaction_threshold(0.2));
    // Every user's value counts up; a backup must hold, for every user, a value no older than the last one
    // acknowledged before the backup started, and never one that was not written.
    let acked: Vec<AtomicU64> = (0..USERS).map(|_| AtomicU64::new(0)).collect();
    let stop = AtomicBool::new(false);
    let backups = tempdir();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (store, acked, stop) = (&store, &acked, &stop);
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    for u in (t..USERS).step_by(2) {
                        store
                            .set(&map(&format!("user-{u}"), "c", &format!("{n:08}"), None))
                            .expect("set");
                        acked[u as usize].store(n, Ordering::Release);
                    }
                }
            });
        }
        for round in 0..6 {
            std::thread::sleep(std::time::Duration::from_millis(30));
            let floor: Vec<u64> = acked.iter().map(|a| a.load(Ordering::Acquire)).collect();
            let dest = backups.path().join(format!("b{round}"));
            let report = store.backup(&dest).expect("backup");
            assert!(report.segments >= 1, "{report:?}");
            let verified = ussdb::verify_dir(&dest).expect("verify_dir");
            assert!(verified.is_clean(), "round {round}: {verified:?}");
            assert!(verified.torn_tail.is_none(), "{verified:?}");
            let copy = open(&dest, small_segments().auto_compaction(false));
            for (u, floor) in floor.iter().enumerate() {
                let got = copy.get(&format!("user-{u}"), "c").expect("get");
                let n: u64 = got.map_or(0, |m| m.variation_name.parse().expect("a number"));
                assert!(
                    n >= *floor,
                    "round {round}: user-{u} has {n}, {floor} was acknowledged"
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(
        store.stats().compactions > 0,
        "compaction ran during the backups"
    );
}

#[test]
fn a_backup_refuses_a_directory_that_holds_files() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    store.set(&map("u", "c", "v", None)).expect("set");
    let dest = tempdir();
    std::fs::write(dest.path().join("notes.txt"), "mine").expect("write");
    assert!(matches!(
        store.backup(dest.path()),
        Err(Error::InvalidOption { .. })
    ));
    assert_eq!(
        std::fs::read(dest.path().join("notes.txt")).expect("kept"),
        b"mine"
    );
    let empty = dest.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    store.backup(&empty).expect("an empty directory is fine");
    drop(store);
    let copy = Store::open(&empty).expect("open the copy");
    assert!(copy.get("u", "c").expect("get").is_some());
}
