//! A full disk: sets fail with `StorageFull` and a message that says what to do; deletes, `forget_user` and
//! `compact` go on in the space of the disk reserve (`RESERVE`), reclaim space, and the reserve comes back.
//! Runs on the simulated file system's capacity (`simfs.rs`), checked against a model of the mappings.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use ussdb::{CampaignUserMap, Durability, Error, Options, Store};

use crate::common::{Rng, map, tempdir};
use crate::simfs::SimFs;

const RESERVE: u64 = 24 << 10;
const USERS: [&str; 5] = ["ann", "ben", "cat", "dan", "eve"];
const CAMPAIGNS: [&str; 4] = ["home", "cart", "pay", "faq"];

type Model = BTreeMap<(String, String), CampaignUserMap>;

fn options(fs: &SimFs, reserve: u64) -> Options {
    fs.options(Durability::Immediate).disk_reserve(reserve)
}

/// Bytes in the store directory (every file, the reserve included).
fn used(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum()
}

fn reserve_len(dir: &Path) -> Option<u64> {
    std::fs::metadata(dir.join("RESERVE")).ok().map(|m| m.len())
}

fn is_full(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull)
}

fn check(store: &Store, model: &Model, context: &str) {
    let mut found = 0;
    for u in USERS {
        let all = store.campaigns_of(u).expect("campaigns_of");
        found += all.len();
        for c in CAMPAIGNS {
            let want = model.get(&(u.to_owned(), c.to_owned()));
            let got = store.get(u, c).expect("get");
            assert_eq!(got.as_ref(), want, "{context}: ({u}, {c})");
            assert_eq!(all.iter().find(|m| m.campaign_key == c), want, "{context}");
        }
    }
    assert_eq!(store.stats().mappings, found as u64, "{context}: mappings");
    assert_eq!(found, model.len(), "{context}: mapping count");
}

/// Overwrites of 20 keys with values of ~300 bytes until sets fail: dead bytes pile up in sealed segments
/// (compaction is off), so compaction has something to reclaim. Returns how many sets failed.
fn fill(store: &Store, model: &mut Model, rng: &mut Rng) -> u64 {
    let mut failed = 0;
    for i in 0..10_000 {
        let (u, c) = (
            USERS[rng.below(5) as usize],
            CAMPAIGNS[rng.below(4) as usize],
        );
        let m = map(u, c, &format!("v{i}"), Some(&"goal_vwo_".repeat(30)));
        match store.set(&m) {
            Ok(()) => {
                model.insert((u.to_owned(), c.to_owned()), m);
            }
            Err(e) if is_full(&e) => {
                let text = e.to_string();
                for what in [
                    "disk is full",
                    "free space",
                    "delete",
                    "forget",
                    "compact",
                    "RESERVE",
                ] {
                    assert!(
                        text.contains(what),
                        "the error says what to do ({what}): {text}"
                    );
                }
                failed += 1;
                if failed == 3 {
                    break;
                }
            }
            Err(e) => panic!("set on a full disk: unexpected error {e:?}"),
        }
    }
    assert!(failed > 0, "the disk never filled up");
    failed
}

#[test]
fn on_a_full_disk_delete_forget_user_and_compact_run_in_the_reserve_and_reclaim_space() {
    let mut rng = Rng::seeded("full_disk_reserve");
    let dir = tempdir();
    let fs = SimFs::default();
    let store = Store::open_with(dir.path(), options(&fs, RESERVE)).expect("open");
    assert_eq!(
        reserve_len(dir.path()),
        Some(RESERVE),
        "open makes the reserve"
    );
    let capacity = used(dir.path()) + 30_000;
    fs.lock().plan.capacity = Some(capacity);
    let mut model = Model::new();
    let mut full = 0;
    let mut reclaimed = 0;
    for round in 0..3 {
        let context = format!("round {round}");
        full += fill(&store, &mut model, &mut rng);
        check(&store, &model, &format!("{context}: disk full"));
        let before = used(dir.path());
        // Each of them needs space for its tombstones, or for the compaction output: the reserve's.
        let (u, c) = model.keys().next().cloned().expect("a mapping to delete");
        assert!(store.delete(&u, &c).expect("delete on a full disk"));
        model.remove(&(u.clone(), c));
        let victim = USERS[round % USERS.len()];
        let had = model.keys().filter(|(mu, _)| mu == victim).count();
        assert_eq!(
            store
                .forget_user(victim)
                .expect("forget_user on a full disk"),
            had
        );
        model.retain(|(mu, _), _| mu != victim);
        check(&store, &model, &format!("{context}: after the deletes"));
        store.compact().expect("compact on a full disk");
        check(&store, &model, &format!("{context}: after compaction"));
        let after = used(dir.path());
        assert!(
            after < before,
            "{context}: compaction reclaimed nothing ({before} -> {after} bytes)"
        );
        reclaimed += before - after;
        assert_eq!(
            reserve_len(dir.path()),
            Some(RESERVE),
            "{context}: the reserve is back once compaction freed room for it"
        );
        // The reclaimed space takes sets again.
        let m = map("after", "compaction", &format!("r{round}"), None);
        store.set(&m).expect("a set after compaction freed space");
        model.insert(("after".into(), "compaction".into()), m);
        model.remove(&("after".into(), "compaction".into()));
        store.delete("after", "compaction").expect("delete");
    }
    assert!(store.verify().expect("verify").is_clean());
    drop(store);
    // Reopened on the same full disk: the same mappings, and the reserve is not called an extra file.
    let store = Store::open_with(dir.path(), options(&fs, RESERVE)).expect("reopen");
    check(&store, &model, "reopened");
    drop(store);
    let report = ussdb::verify_dir(dir.path()).expect("verify_dir");
    assert!(report.is_clean(), "{report:?}");
    eprintln!(
        "full_disk: {full} sets refused with StorageFull, {} ENOSPC injected, {reclaimed} bytes reclaimed by \
         compaction on a full disk, nothing lost",
        fs.counts().injected
    );
}

#[test]
fn without_a_reserve_a_delete_on_a_full_disk_fails_and_says_what_to_do() {
    // The reserve is what lets deletes through: with none, the same sequence fails.
    let mut rng = Rng::seeded("full_disk_no_reserve");
    let dir = tempdir();
    let fs = SimFs::default();
    let store = Store::open_with(dir.path(), options(&fs, 0)).expect("open");
    assert_eq!(reserve_len(dir.path()), None);
    fs.lock().plan.capacity = Some(used(dir.path()) + 30_000);
    let mut model = Model::new();
    fill(&store, &mut model, &mut rng);
    // Fill the last bytes with the smallest records, so that not even a tombstone fits.
    for i in 0.. {
        if store.set(&map("z", &format!("{i}"), "v", None)).is_err() {
            break;
        }
        model.insert(
            ("z".into(), format!("{i}")),
            map("z", &format!("{i}"), "v", None),
        );
    }
    let (u, c) = model.keys().next().cloned().expect("a mapping");
    let err = store.delete(&u, &c).expect_err("no room for a tombstone");
    assert!(is_full(&err), "{err:?}");
    assert!(err.to_string().contains("compact"), "{err}");
    // Nothing changed: the mapping is still there.
    assert!(store.get(&u, &c).expect("get").is_some());
}

#[test]
fn the_reserve_is_made_again_on_open_and_a_short_one_is_replaced() {
    let dir = tempdir();
    let opts = || Options::default().segment_size(4096).disk_reserve(RESERVE);
    drop(Store::open_with(dir.path(), opts()).expect("open"));
    assert_eq!(reserve_len(dir.path()), Some(RESERVE));
    std::fs::remove_file(dir.path().join("RESERVE")).expect("remove");
    drop(Store::open_with(dir.path(), opts()).expect("open without a reserve"));
    assert_eq!(reserve_len(dir.path()), Some(RESERVE), "made again");
    std::fs::write(dir.path().join("RESERVE"), b"short").expect("cut");
    drop(Store::open_with(dir.path(), opts()).expect("open with a short reserve"));
    assert_eq!(reserve_len(dir.path()), Some(RESERVE), "made whole");
    // A reader creates nothing; verify does not call it an extra file; the default is sized from the segment.
    let reader = Store::open_with(dir.path(), opts().read_only(true)).expect("read-only");
    drop(reader);
    assert!(
        ussdb::verify_dir(dir.path())
            .expect("verify_dir")
            .is_clean()
    );
    let other = tempdir();
    drop(Store::open_with(other.path(), Options::default().segment_size(4096)).expect("open"));
    assert_eq!(reserve_len(other.path()), Some(4096 + 1024 + (16 << 10)));
}

/// The directory of a small real file system, mounted by `.ci/reliab.sh`.
const SMALL_FS_VAR: &str = "USSDB_SMALL_FS";

#[test]
#[ignore = "needs a small real file system: run `sudo bash .ci/reliab.sh` (mounts a 1 MiB tmpfs)"]
fn on_a_real_full_file_system_the_reserve_lets_deletes_and_compaction_through() {
    let root = std::env::var(SMALL_FS_VAR).unwrap_or_else(|_| {
        panic!(
            "{SMALL_FS_VAR} is not set: run `sudo bash .ci/reliab.sh`, which mounts a small tmpfs"
        )
    });
    let dir = Path::new(&root).join(format!("store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut rng = Rng::seeded("full_disk_real");
    // Without the reserve (`.disk_reserve(0)`) this fails at the first compaction: no room for its output.
    let opts = || {
        Options::default()
            .segment_size(64 << 10)
            .auto_compaction(false)
    };
    let store = Store::open_with(&dir, opts()).expect("open on the small file system");
    let reserve = reserve_len(&dir).expect("open makes the reserve");
    let mut model = Model::new();
    let mut full = 0;
    let mut reclaimed = 0;
    for round in 0..3 {
        let context = format!("real file system, round {round}");
        full += fill(&store, &mut model, &mut rng);
        check(&store, &model, &context);
        let before = used(&dir);
        let (u, c) = model.keys().next().cloned().expect("a mapping");
        assert!(store.delete(&u, &c).expect("delete on a full file system"));
        model.remove(&(u, c));
        let victim = USERS[round % USERS.len()];
        store
            .forget_user(victim)
            .expect("forget_user on a full file system");
        model.retain(|(mu, _), _| mu != victim);
        store.compact().expect("compact on a full file system");
        check(&store, &model, &format!("{context}: after compaction"));
        let after = used(&dir);
        assert!(after < before, "{context}: {before} -> {after} bytes");
        reclaimed += before - after;
        assert_eq!(
            reserve_len(&dir),
            Some(reserve),
            "{context}: the reserve is back"
        );
    }
    drop(store);
    let store = Store::open_with(&dir, opts()).expect("reopen");
    check(&store, &model, "real file system, reopened");
    drop(store);
    assert!(ussdb::verify_dir(&dir).expect("verify_dir").is_clean());
    std::fs::remove_dir_all(&dir).expect("clean up");
    eprintln!(
        "full_disk_real: {full} sets refused with ENOSPC by a real file system, {reclaimed} bytes reclaimed by \
         compaction on it, nothing lost"
    );
}
