//! Hint files: open uses them, and falls back to scanning (with the same result) when one is missing, cut short,
//! damaged, or describes other contents of its segment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ussdb::{CampaignUserMap, Durability, Error, Options, Store};

use crate::common::{copy_dir_to_memory, map, memory_tempdir, open};

fn manual() -> Options {
    Options::default()
        .segment_size(4096)
        .durability(Durability::Never)
        .auto_compaction(false)
}

type Model = HashMap<(String, String), CampaignUserMap>;
const KEYS: usize = 200;

fn hint_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "hint"))
        .collect();
    files.sort();
    files
}

fn write_round(store: &Store, model: &mut Model, round: usize) {
    for k in 0..KEYS {
        if (k + round).is_multiple_of(7) {
            store.delete(&format!("user-{k}"), "camp").expect("delete");
            model.remove(&(format!("user-{k}"), "camp".to_owned()));
            continue;
        }
        let goals = (k % 3 == 0).then(|| "g".repeat(k * 3));
        let m = map(
            &format!("user-{k}"),
            "camp",
            &format!("v{round}"),
            goals.as_deref(),
        );
        store.set(&m).expect("set");
        model.insert((m.user_id.clone(), m.campaign_key.clone()), m);
    }
}

fn check(dir: &Path, model: &Model, what: &str) -> Store {
    let store =
        Store::open_with(dir, manual()).unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
    for k in 0..KEYS {
        let user = format!("user-{k}");
        let want = model.get(&(user.clone(), "camp".to_owned()));
        assert_eq!(
            store.get(&user, "camp").expect("get").as_ref(),
            want,
            "{what}: {user}"
        );
    }
    assert_eq!(store.stats().mappings, model.len() as u64, "{what}");
    store
}

#[test]
fn open_falls_back_to_scanning_when_a_hint_is_missing_cut_damaged_or_stale() {
    let dir = memory_tempdir();
    let mut model = Model::new();
    let store = open(dir.path(), manual());
    for round in 0..6 {
        write_round(&store, &mut model, round);
    }
    store.compact().expect("compact");
    // Compaction outputs take fresh file ids; the oldest hint is the first one's.
    let first_hint = hint_files(dir.path()).into_iter().next().expect("a hint");
    let stale_hint = std::fs::read(&first_hint).expect("hint of the oldest segment");
    let stale_len = std::fs::metadata(first_hint.with_extension("seg"))
        .expect("its segment")
        .len();
    for round in 6..12 {
        write_round(&store, &mut model, round);
    }
    store.compact().expect("compact");
    let sealed = store.stats().segments - 1;
    assert_eq!(store.stats().hint_files, sealed);
    drop(store);
    let hints = hint_files(dir.path());
    assert!(hints.len() >= 2, "{hints:?}");
    let oldest_hint = hints.first().expect("a hint").clone();
    assert!(
        !first_hint.exists()
            || stale_len
                != std::fs::metadata(first_hint.with_extension("seg")).map_or(0, |m| m.len()),
        "the oldest segment was rewritten, so its old hint is stale"
    );

    let store = check(dir.path(), &model, "intact hints");
    assert_eq!(store.stats().hint_files, sealed, "every hint was used");
    drop(store);

    type Damage = Box<dyn Fn(&Path)>;
    let damages: Vec<(&str, Damage)> = vec![
        (
            "deleted",
            Box::new(|p: &Path| std::fs::remove_file(p).expect("remove")),
        ),
        ("cut in half", Box::new(|p: &Path| cut(p, |len| len / 2))),
        ("cut inside the header", Box::new(|p: &Path| cut(p, |_| 10))),
        ("empty", Box::new(|p: &Path| cut(p, |_| 0))),
        (
            "last byte missing",
            Box::new(|p: &Path| cut(p, |len| len - 1)),
        ),
        (
            "flipped byte in an entry",
            Box::new(|p: &Path| flip(p, |len| len - 3)),
        ),
        (
            "flipped byte in the header",
            Box::new(|p: &Path| flip(p, |_| 17)),
        ),
        (
            "garbage appended",
            Box::new(|p: &Path| append(p, b"garbage")),
        ),
    ];
    for (i, hint) in hints.iter().enumerate() {
        let name = hint.file_name().expect("name");
        for (what, damage) in &damages {
            let copy = copy_dir_to_memory(dir.path());
            damage(&copy.path().join(name));
            let store = check(copy.path(), &model, &format!("hint {name:?} {what}"));
            assert_eq!(store.stats().hint_files, sealed - 1, "{what}");
            // The fallback leaves a store that compacts and reopens as usual, and writes the hint again.
            store.compact().expect("compact");
            assert_eq!(store.stats().hint_files, store.stats().segments - 1);
            drop(store);
            drop(check(
                copy.path(),
                &model,
                &format!("hint {name:?} {what}, rewritten"),
            ));
        }
        // Another segment's hint under this name.
        let other = &hints[(i + 1) % hints.len()];
        let copy = copy_dir_to_memory(dir.path());
        std::fs::copy(other, copy.path().join(name)).expect("copy");
        drop(check(
            copy.path(),
            &model,
            &format!("hint {name:?} replaced by {other:?}"),
        ));
    }
    // A hint written for earlier contents (the oldest segment's before the second compaction), put back.
    let copy = copy_dir_to_memory(dir.path());
    let name = oldest_hint.file_name().expect("name");
    std::fs::write(copy.path().join(name), &stale_hint).expect("write");
    let store = check(copy.path(), &model, "stale hint");
    assert_eq!(store.stats().hint_files, sealed - 1);
}

fn cut(path: &Path, len: impl Fn(u64) -> u64) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    let old = file.metadata().expect("len").len();
    file.set_len(len(old)).expect("truncate");
}

fn flip(path: &Path, at: impl Fn(usize) -> usize) {
    let mut bytes = std::fs::read(path).expect("read");
    let i = at(bytes.len());
    bytes[i] ^= 0x10;
    std::fs::write(path, bytes).expect("write");
}

fn append(path: &Path, extra: &[u8]) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes.extend_from_slice(extra);
    std::fs::write(path, bytes).expect("write");
}

#[test]
fn damage_under_a_hint_is_reported_on_read() {
    // With a hint, open reads no values, so a flipped value byte is found by the read that needs it.
    let dir = memory_tempdir();
    {
        let store = open(dir.path(), manual());
        for i in 0..300 {
            store
                .set(&map(
                    &format!("user-{i}"),
                    "camp",
                    "variation",
                    Some("goal"),
                ))
                .expect("set");
        }
        store.compact().expect("write hints");
    }
    let seg = dir.path().join("0000000001.seg");
    let mut bytes = std::fs::read(&seg).expect("read");
    let at = bytes.len() - 3; // inside the last record's value
    bytes[at] ^= 0x01;
    std::fs::write(&seg, &bytes).expect("write");
    let store = open(dir.path(), manual());
    let mut errors = 0;
    for i in 0..300 {
        match store.get(&format!("user-{i}"), "camp") {
            Ok(Some(_)) => {}
            Err(Error::Corrupted { path, offset, .. }) => {
                assert_eq!(path, seg);
                assert!(
                    offset < at as u64 && at as u64 - offset < 64,
                    "offset {offset}, flipped byte {at}"
                );
                errors += 1;
            }
            other => panic!("user-{i}: {other:?}"),
        }
    }
    assert_eq!(errors, 1, "exactly the damaged record is refused");
    // Compaction refuses to copy it rather than spreading it: the damaged segment stays as it is.
    assert!(store.compact().is_err() || std::fs::read(&seg).ok().as_ref() == Some(&bytes));
}

#[test]
fn hints_without_a_segment_and_hints_of_the_newest_segment_are_removed_on_open() {
    let dir = memory_tempdir();
    {
        let store = open(dir.path(), manual());
        for i in 0..300 {
            store
                .set(&map(&format!("user-{i}"), "camp", "variation", None))
                .expect("set");
        }
        store.compact().expect("compact");
    }
    let orphan = dir.path().join("0000000777.hint");
    std::fs::copy(dir.path().join("0000000001.hint"), &orphan).expect("copy");
    let newest = crate::common::segment_files(dir.path())
        .pop()
        .expect("segments");
    let newest_hint = newest.with_extension("hint");
    std::fs::copy(dir.path().join("0000000001.hint"), &newest_hint).expect("copy");
    let store = open(dir.path(), manual());
    assert!(!orphan.exists());
    assert!(!newest_hint.exists());
    assert_eq!(store.stats().mappings, 300);
}

/// A store of `write_round`s over several segments, compacted so that every sealed segment has a hint.
fn hinted_store(options: Options) -> (tempfile::TempDir, Model, u64) {
    let dir = memory_tempdir();
    let mut model = Model::new();
    let store = open(dir.path(), options);
    for round in 0..8 {
        write_round(&store, &mut model, round);
    }
    store.compact().expect("compact");
    let sealed = store.stats().segments - 1;
    assert!(sealed >= 2, "{sealed} sealed segments");
    assert_eq!(store.stats().hint_files, sealed);
    (dir, model, sealed)
}

#[test]
fn the_seed_file_is_made_once_with_mode_0600_and_kept() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, model, sealed) = hinted_store(manual());
    let seed = dir.path().join("SEED");
    let bytes = std::fs::read(&seed).expect("seed file");
    assert_eq!((bytes.len(), &bytes[..8]), (32, &b"USSDBKEY"[..]));
    let mode = std::fs::metadata(&seed).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let store = check(dir.path(), &model, "reopened");
    assert_eq!(store.stats().hint_files, sealed, "every hint was used");
    drop(store);
    assert_eq!(std::fs::read(&seed).expect("seed file"), bytes);
    assert!(!dir.path().join("SEED.tmp").exists());
}

#[test]
fn a_missing_or_damaged_seed_is_replaced_and_the_hints_of_the_old_one_are_not_used() {
    // The hints hold hashes of the old seed: applied under a new one, they would put every key where no lookup
    // looks. Each hint names its seed, so they are refused, the segments scanned, and the hints made again.
    let (dir, model, sealed) = hinted_store(manual());
    let seed = dir.path().join("SEED");
    let good = std::fs::read(&seed).expect("seed file");
    let other_store = memory_tempdir();
    drop(open(other_store.path(), manual()));
    let foreign = std::fs::read(other_store.path().join("SEED")).expect("other seed");
    assert_ne!(good, foreign);
    type Damage = Box<dyn Fn(&Path)>;
    let damages: Vec<(&str, Damage)> = vec![
        (
            "deleted",
            Box::new(|p: &Path| std::fs::remove_file(p).expect("remove")),
        ),
        ("empty", Box::new(|p: &Path| cut(p, |_| 0))),
        ("cut short", Box::new(|p: &Path| cut(p, |len| len - 1))),
        ("flipped key byte", Box::new(|p: &Path| flip(p, |_| 14))),
        ("flipped checksum", Box::new(|p: &Path| flip(p, |_| 30))),
        ("flipped version", Box::new(|p: &Path| flip(p, |_| 9))),
        ("garbage appended", Box::new(|p: &Path| append(p, b"x"))),
        (
            "a sound seed of another store",
            Box::new(move |p: &Path| std::fs::write(p, &foreign).expect("write")),
        ),
    ];
    for (what, damage) in &damages {
        let copy = copy_dir_to_memory(dir.path());
        let seed = copy.path().join("SEED");
        damage(&seed);
        let store = check(copy.path(), &model, what);
        assert_eq!(
            store.stats().hint_files,
            0,
            "{what}: no hint of the old seed is used"
        );
        assert_eq!(store.stats().segments - 1, sealed, "{what}");
        let new = std::fs::read(&seed).expect("a new seed file");
        assert_eq!(new.len(), 32, "{what}");
        assert_ne!(new, good, "{what}");
        // The next compaction writes hints under the new seed, and the next open uses all of them. (It may seal
        // the active segment first, for the sync point closing left there, so count the sealed ones again.)
        store.compact().expect("compact");
        let sealed = store.stats().segments - 1;
        assert_eq!(store.stats().hint_files, sealed, "{what}");
        drop(store);
        let store = check(copy.path(), &model, &format!("{what}, hints rewritten"));
        assert_eq!(store.stats().hint_files, sealed, "{what}");
        drop(store);
        assert_eq!(std::fs::read(&seed).expect("seed"), new, "{what}: kept");
    }
}

#[test]
fn a_seed_file_that_cannot_be_read_fails_open() {
    use std::os::unix::fs::PermissionsExt;
    // Running as root reads any file, so only check that an unreadable seed is never silently replaced.
    let (dir, _model, _) = hinted_store(manual());
    let seed = dir.path().join("SEED");
    let good = std::fs::read(&seed).expect("seed file");
    std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let opened = Store::open_with(dir.path(), manual());
    std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    match opened {
        Ok(store) => assert_eq!(store.stats().hint_files, store.stats().segments - 1),
        Err(e) => assert!(matches!(e, Error::Io { .. }), "{e:?}"),
    }
    assert_eq!(std::fs::read(&seed).expect("seed file"), good);
}

#[test]
fn hints_made_with_colliding_hashes_are_not_used_with_real_ones_and_back() {
    // The test-only colliding mode hashes differently from the seed, so its hints name another hash function.
    let weak = || manual().colliding_hashes_for_tests(true);
    let (dir, model, sealed) = hinted_store(weak());
    let open_check = |options: Options, what: &str| {
        let store = Store::open_with(dir.path(), options).unwrap_or_else(|e| panic!("{what}: {e}"));
        for k in 0..KEYS {
            let user = format!("user-{k}");
            let want = model.get(&(user.clone(), "camp".to_owned()));
            assert_eq!(
                store.get(&user, "camp").expect("get").as_ref(),
                want,
                "{what}: {user}"
            );
        }
        assert_eq!(store.stats().mappings, model.len() as u64, "{what}");
        store
    };
    // Colliding hashes through hints: every entry shares a hash with others, so keys are compared from records.
    let store = open_check(weak(), "colliding, from hints");
    assert_eq!(store.stats().hint_files, sealed);
    drop(store);
    let store = open_check(manual(), "real hashes, colliding hints");
    assert_eq!(store.stats().hint_files, 0);
    store.compact().expect("compact");
    // The pass may seal the active segment (for the sync point closing left there): count the sealed ones again.
    let sealed = store.stats().segments - 1;
    drop(store);
    let store = open_check(manual(), "real hashes, from hints");
    assert_eq!(store.stats().hint_files, sealed);
    drop(store);
    let store = open_check(weak(), "colliding, real-hash hints");
    assert_eq!(store.stats().hint_files, 0);
}

#[test]
fn a_version_1_hint_is_ignored_and_rewritten() {
    let (dir, model, sealed) = hinted_store(manual());
    let hint = hint_files(dir.path()).into_iter().next().expect("a hint");
    let mut bytes = std::fs::read(&hint).expect("hint");
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(&hint, &bytes).expect("write");
    let store = check(dir.path(), &model, "version 1 hint");
    assert_eq!(store.stats().hint_files, sealed - 1);
    store.compact().expect("compact");
    // The pass may seal the active segment (for the sync point closing left there): count the sealed ones again.
    let sealed = store.stats().segments - 1;
    drop(store);
    let store = check(dir.path(), &model, "rewritten");
    assert_eq!(store.stats().hint_files, sealed);
}

#[test]
fn verify_judges_hints_by_the_stores_seed_and_writes_none() {
    let (dir, _model, sealed) = hinted_store(manual());
    let report = ussdb::verify_dir(dir.path()).expect("verify_dir");
    assert!(
        report.is_clean() && report.hint_problems.is_empty(),
        "{report:?}"
    );
    assert_eq!(report.hint_files, sealed);
    // Without the seed no hint can be used (open makes a new seed): each is reported, the data is not damaged,
    // and checking makes no seed file.
    std::fs::remove_file(dir.path().join("SEED")).expect("remove seed");
    let report = ussdb::verify_dir(dir.path()).expect("verify_dir");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.hint_problems.len() as u64, sealed, "{report:?}");
    assert!(!dir.path().join("SEED").exists());
}

/// A clean close of a store with a large active segment seals it and writes every missing hint, so the next open
/// replays hint files alone; a small store is left as it is (it opens fast anyway).
#[test]
fn a_clean_close_leaves_hints_for_everything_but_a_small_active_segment() {
    let dir = memory_tempdir();
    let options = Options::default()
        .segment_size(4 << 20)
        .durability(Durability::Never)
        .auto_compaction(false);
    let mut model = Model::new();
    {
        let store = open(dir.path(), options.clone());
        // About 1.5 MiB: more than the 1 MiB from which a close seals, less than a segment.
        for k in 0..3000 {
            let m = map(&format!("user-{k}"), "camp", "v", Some(&"g".repeat(500)));
            store.set(&m).expect("set");
            model.insert((format!("user-{k}"), "camp".to_owned()), m);
        }
        let stats = store.stats();
        assert_eq!(
            (stats.segments, stats.hint_files),
            (1, 0),
            "one active segment"
        );
    }
    let store = open(dir.path(), options.clone());
    let stats = store.stats();
    assert_eq!(stats.segments, 2, "the close sealed the active segment");
    assert_eq!(stats.hint_files, 1, "and wrote its hint");
    for ((user, campaign), want) in &model {
        assert_eq!(store.get(user, campaign).expect("get").as_ref(), Some(want));
    }
    // A few small writes: the next close leaves the new active segment alone.
    store.set(&map("small", "camp", "v", None)).expect("set");
    drop(store);
    let store = open(dir.path(), options);
    let stats = store.stats();
    assert_eq!((stats.segments, stats.hint_files), (2, 1));
    assert!(store.get("small", "camp").expect("get").is_some());
}

#[test]
fn large_hints_replayed_on_several_threads_give_what_a_scan_gives() {
    // Segments of ~80k records: their hints are replayed on several threads, each owning some index shards,
    // with the entries whose hash is already taken (overwrites in the same segment or an earlier one, deletes,
    // erased users) compared by key afterwards. A scan of the same segments must give the same mappings and the
    // same dead byte counts.
    let dir = memory_tempdir();
    let options = Options::default()
        .segment_size(4 << 20)
        .durability(Durability::Never)
        .auto_compaction(false);
    let mut model = Model::new();
    {
        let store = open(dir.path(), options.clone());
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for n in 0..300_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let user = format!("user-{}", x % 30_000);
            let campaign = format!("camp-{}", (x >> 20) % 3);
            match (x >> 40) % 20 {
                0 => {
                    store.delete(&user, &campaign).expect("delete");
                    model.remove(&(user, campaign));
                }
                1 if n % 7 == 0 => {
                    store.forget_user(&user).expect("forget_user");
                    model.retain(|(u, _), _| *u != user);
                }
                _ => {
                    let m = map(&user, &campaign, &format!("v{n}"), None);
                    store.set(&m).expect("set");
                    model.insert((user, campaign), m);
                }
            }
        }
        store.sync().expect("sync");
    }
    let check = |store: &Store, what: &str| {
        assert_eq!(store.stats().mappings, model.len() as u64, "{what}");
        for ((user, campaign), want) in &model {
            assert_eq!(
                store.get(user, campaign).expect("get").as_ref(),
                Some(want),
                "{what}: {user} {campaign}"
            );
        }
        for k in (0..30_000).step_by(97) {
            let user = format!("user-{k}");
            for c in 0..3 {
                let campaign = format!("camp-{c}");
                if !model.contains_key(&(user.clone(), campaign.clone())) {
                    assert_eq!(store.get(&user, &campaign).expect("get"), None, "{what}");
                }
            }
        }
    };
    let store = open(dir.path(), options.clone());
    let hinted = store.stats();
    assert!(hinted.hint_files >= 3, "{} hint files", hinted.hint_files);
    check(&store, "from hints");
    drop(store);
    let scanned_dir = copy_dir_to_memory(dir.path());
    for hint in hint_files(scanned_dir.path()) {
        std::fs::remove_file(hint).expect("remove hint");
    }
    let store = open(scanned_dir.path(), options.clone().read_only(true));
    let scanned = store.stats();
    assert_eq!(scanned.hint_files, 0);
    check(&store, "scanned");
    assert_eq!(
        (scanned.mappings, scanned.live_bytes, scanned.dead_bytes),
        (hinted.mappings, hinted.live_bytes, hinted.dead_bytes),
        "a scan and the hints agree on what is live and dead"
    );
}
