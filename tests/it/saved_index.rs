//! The index a clean close saves (`Options::save_index_from`): loaded by the next open only when the store is
//! exactly as saved, refused (and rebuilt from hints and segments) when it is stale or damaged.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use ussdb::{CampaignUserMap, Options, Stats, Store};

use crate::common::{Rng, map, tempdir};

const INDEX: &str = "INDEX";

/// Small segments, the index saved at every close, no background thread (so the test decides when compaction runs).
fn saving() -> Options {
    Options::default()
        .segment_size(64 << 10)
        .auto_compaction(false)
        .save_index_from(0)
}

type Model = HashMap<(String, String), CampaignUserMap>;

/// Sets, overwrites and deletes over `users` users with a few campaigns each; some users get many campaigns (so
/// the index gives them tables of their own).
fn write(store: &Store, model: &mut Model, rng: &mut Rng, ops: usize, users: u64) {
    for _ in 0..ops {
        let user = format!("user-{}", rng.below(users));
        let campaigns = if user.ends_with('7') { 60 } else { 4 };
        let campaign = format!("campaign-{}", rng.below(campaigns));
        if rng.below(8) == 0 {
            let existed = store.delete(&user, &campaign).expect("delete");
            assert_eq!(existed, model.remove(&(user, campaign)).is_some());
        } else {
            let m = map(&user, &campaign, &format!("v{}", rng.below(5)), None);
            store.set(&m).expect("set");
            model.insert((user, campaign), m);
        }
    }
}

fn check(store: &Store, model: &Model) {
    assert_eq!(store.stats().mappings, model.len() as u64);
    for ((u, c), m) in model {
        assert_eq!(store.get(u, c).expect("get").as_ref(), Some(m), "{u}/{c}");
    }
    let mut users: Vec<&String> = model.keys().map(|(u, _)| u).collect();
    users.sort_unstable();
    users.dedup();
    for user in users {
        let mut want: Vec<&CampaignUserMap> =
            model.values().filter(|m| &m.user_id == user).collect();
        want.sort_by(|a, b| a.campaign_key.cmp(&b.campaign_key));
        let got = store.campaigns_of(user).expect("campaigns_of");
        assert_eq!(got.iter().collect::<Vec<_>>(), want, "{user}");
    }
    assert!(store.verify().expect("verify").is_clean());
}

/// What must come back the same from a saved index as from a rebuilt one.
fn accounting(stats: &Stats) -> (u64, u64, u64, u64, u64) {
    (
        stats.mappings,
        stats.segments,
        stats.disk_bytes,
        stats.live_bytes,
        stats.dead_bytes,
    )
}

/// A store of several segments, some compacted (their segments have ids of their own in memory), closed cleanly.
fn made(dir: &Path, model: &mut Model, rng: &mut Rng) -> Stats {
    let store = Store::open_with(dir, saving()).expect("open");
    write(&store, model, rng, 4000, 300);
    store.compact().expect("compact");
    write(&store, model, rng, 1500, 300);
    let stats = store.stats();
    assert!(stats.segments >= 3, "{stats:?}");
    drop(store);
    stats
}

#[test]
fn a_clean_close_saves_the_index_and_the_next_open_loads_it() {
    let dir = tempdir();
    let mut model = Model::new();
    let mut rng = Rng::seeded("a_clean_close_saves_the_index");
    let before = made(dir.path(), &mut model, &mut rng);
    assert!(
        dir.path().join(INDEX).exists(),
        "a clean close saved the index"
    );

    let store = Store::open_with(dir.path(), saving()).expect("reopen");
    let stats = store.stats();
    assert!(stats.index_loaded, "the open loaded it");
    assert!(
        !dir.path().join(INDEX).exists(),
        "a writable open removes it"
    );
    assert_eq!(accounting(&stats), accounting(&before));
    check(&store, &model);
    // It goes on as any store: writes, a compaction, a close that saves again, an open that loads again.
    write(&store, &mut model, &mut rng, 1500, 300);
    store.compact().expect("compact");
    let before = store.stats();
    drop(store);
    let store = Store::open_with(dir.path(), saving()).expect("reopen");
    assert!(store.stats().index_loaded);
    assert_eq!(accounting(&store.stats()), accounting(&before));
    check(&store, &model);

    // The same store rebuilt from hint files and segments (no saved index) holds the same.
    drop(store);
    fs::remove_file(dir.path().join(INDEX)).expect("remove the saved index");
    let store = Store::open_with(dir.path(), saving()).expect("reopen");
    assert!(!store.stats().index_loaded);
    assert_eq!(accounting(&store.stats()), accounting(&before));
    check(&store, &model);
}

#[test]
fn a_small_index_is_not_saved_unless_asked() {
    let dir = tempdir();
    let store = Store::open(dir.path()).expect("open");
    store.set(&map("u", "c", "v", None)).expect("set");
    drop(store);
    assert!(!dir.path().join(INDEX).exists(), "below the default size");
    let store = Store::open_with(dir.path(), Options::default().save_index_from(1)).expect("open");
    drop(store);
    assert!(dir.path().join(INDEX).exists());
    let store = Store::open(dir.path()).expect("open");
    assert!(
        store.stats().index_loaded,
        "any open loads one that is there"
    );
    assert_eq!(
        store.get("u", "c").expect("get"),
        Some(map("u", "c", "v", None))
    );
}

#[test]
fn a_read_only_open_loads_the_saved_index_and_leaves_it() {
    let dir = tempdir();
    let mut model = Model::new();
    let mut rng = Rng::seeded("a_read_only_open_loads_the_saved_index");
    made(dir.path(), &mut model, &mut rng);
    let reader = Store::open_with(dir.path(), saving().read_only(true)).expect("read-only open");
    assert!(reader.stats().index_loaded);
    check_reads(&reader, &model);
    drop(reader);
    assert!(dir.path().join(INDEX).exists(), "a reader leaves it");
    let store = Store::open_with(dir.path(), saving()).expect("open");
    assert!(store.stats().index_loaded);
    check(&store, &model);
}

/// `check` without `verify` (which a read-only store also answers, but slowly for nothing).
fn check_reads(store: &Store, model: &Model) {
    assert_eq!(store.stats().mappings, model.len() as u64);
    for ((u, c), m) in model {
        assert_eq!(store.get(u, c).expect("get").as_ref(), Some(m), "{u}/{c}");
    }
}

#[test]
fn a_saved_index_of_an_earlier_state_is_not_used() {
    // Each way the store can move on from the saved state: appends to the same active segment (nothing else
    // changes), appends that seal segments, a compaction; the old file put back each time must be refused.
    type Move = (&'static str, fn(&Store, &mut Model, &mut Rng));
    let moves: [Move; 3] = [
        ("one more set", |store, model, _| {
            let m = map("user-1", "campaign-new", "v", None);
            store.set(&m).expect("set");
            model.insert(("user-1".into(), "campaign-new".into()), m);
        }),
        ("segments sealed", |store, model, rng| {
            write(store, model, rng, 2000, 300)
        }),
        ("a compaction", |store, _, _| {
            store.compact().expect("compact")
        }),
    ];
    for (what, step) in moves {
        let dir = tempdir();
        let mut model = Model::new();
        let mut rng = Rng::seeded(what);
        made(dir.path(), &mut model, &mut rng);
        let old = dir.path().join("old-index");
        fs::copy(dir.path().join(INDEX), &old).expect("keep the saved index");
        let store = Store::open_with(dir.path(), saving()).expect("open");
        assert!(store.stats().index_loaded);
        // Deletes too, so a stale index would bring mappings back.
        for (u, c) in model.keys().take(50).cloned().collect::<Vec<_>>() {
            assert!(store.delete(&u, &c).expect("delete"));
            model.remove(&(u, c));
        }
        step(&store, &mut model, &mut rng);
        drop(store);
        fs::rename(&old, dir.path().join(INDEX)).expect("put the old index back");
        let store = Store::open_with(dir.path(), saving()).expect("reopen");
        assert!(
            !store.stats().index_loaded,
            "{what}: the old index is refused"
        );
        check(&store, &model);
    }
}

#[test]
fn a_damaged_saved_index_is_refused_and_the_open_rebuilds() {
    let dir = tempdir();
    let mut model = Model::new();
    let mut rng = Rng::seeded("a_damaged_saved_index_is_refused");
    let before = made(dir.path(), &mut model, &mut rng);
    let good = fs::read(dir.path().join(INDEX)).expect("read the saved index");
    let len = good.len();
    // Header, segment table, shard directory, the first section, a later one, the last byte; a shorter file,
    // a longer one, an empty one.
    let mut damaged: Vec<(String, Vec<u8>)> = [
        0,
        9,
        17,
        25,
        41,
        50,
        60,
        48 + 32 * 3 + 1,
        len / 3,
        len / 2,
        len - 1,
    ]
    .into_iter()
    .map(|at| {
        let mut bytes = good.clone();
        bytes[at] ^= 0x40;
        (format!("byte {at} changed"), bytes)
    })
    .collect();
    damaged.push(("cut short".into(), good[..len - 16].to_vec()));
    damaged.push(("grown".into(), [&good[..], &[0u8; 16]].concat()));
    damaged.push(("empty".into(), Vec::new()));
    for (what, bytes) in damaged {
        let copy = crate::common::copy_dir(dir.path());
        fs::write(copy.path().join(INDEX), &bytes).expect("write the damaged index");
        let store = Store::open_with(copy.path(), saving()).expect("open despite the damage");
        assert!(!store.stats().index_loaded, "{what}: refused");
        assert_eq!(accounting(&store.stats()), accounting(&before), "{what}");
        check(&store, &model);
        drop(store);
    }
    // The untouched file still loads.
    let store = Store::open_with(dir.path(), saving()).expect("open");
    assert!(store.stats().index_loaded);
}
