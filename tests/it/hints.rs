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
    let stale_hint = std::fs::read(dir.path().join("0000000001.hint")).expect("hint of segment 1");
    let stale_len = std::fs::metadata(dir.path().join("0000000001.seg"))
        .expect("segment 1")
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
    let new_len = std::fs::metadata(dir.path().join("0000000001.seg"))
        .expect("segment 1")
        .len();
    assert_ne!(
        stale_len, new_len,
        "segment 1 was rewritten, so its old hint is stale"
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
    // A hint written for the segment's earlier contents.
    let copy = copy_dir_to_memory(dir.path());
    std::fs::write(copy.path().join("0000000001.hint"), &stale_hint).expect("write");
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
    // Compaction refuses to copy it rather than spreading it.
    assert!(store.compact().is_err() || store.stats().compactions == 0);
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
