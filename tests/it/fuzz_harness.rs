//! The bodies of the fuzz targets that drive a whole store, shared by `fuzz/` (where this file is the
//! `ussdb_fuzz` library) and by the stable test that replays the committed corpus (where it is a module of the
//! integration tests). Each function panics only when ussdb breaks a promise; an `Err` from ussdb on arbitrary
//! input is fine as long as it is the right kind of error.
//!
//! Inputs are plain bytes, decoded here by hand, so a crash found by the fuzzer replays byte for byte under
//! `cargo test` without any fuzzing crate.

use std::collections::BTreeMap;
use std::path::Path;

use ussdb::{CampaignUserMap, Durability, Error, Options, Store};

/// File names an `open_dir` input can create: segments (in and out of the id range), hint files, leftovers of
/// interrupted writes and compactions, a lock file with content, a stranger, and a saved index (last, so the
/// names of earlier inputs keep their numbers).
pub const OPEN_DIR_NAMES: [&str; 15] = [
    "0000000001.seg",
    "0000000002.seg",
    "0000000003.seg",
    "0000000009.seg",
    "0000000000.seg",
    "4294967295.seg",
    "0000000003.seg.tmp",
    "LOCK",
    "README",
    "0000000002.hint",
    "0000000001.hint",
    "0000000003.hint",
    "0000000001.compact.tmp",
    "0000000002.hint.tmp",
    "INDEX",
];

/// Serialises a directory as an `open_dir` input: per file, a name index, a u16 length and the bytes.
pub fn encode_dir(files: &[(usize, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(name, bytes) in files {
        let len = bytes.len().min(usize::from(u16::MAX));
        out.push(name as u8);
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.extend_from_slice(&bytes[..len]);
    }
    out
}

/// Removes everything in `dir`, so one scratch directory serves many runs.
pub fn clear_dir(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("list scratch directory") {
        std::fs::remove_file(entry.expect("directory entry").path())
            .expect("clear scratch directory");
    }
}

fn options() -> Options {
    // No background compaction: a fuzz input must replay the same way every time; the targets compact on
    // purpose instead.
    // Every close saves the index, so the reopens below load what the close before saved.
    Options::default()
        .segment_size(4096)
        .durability(Durability::Never)
        .auto_compaction(false)
        .save_index_from(0)
}

/// Lays out the files `data` describes in the empty directory `dir` and opens it as a store: `open` must return
/// a store or an error that says the bytes are damaged, never panic. A store that opens must answer reads,
/// take a write, and open again with that write in it.
pub fn open_dir(dir: &Path, data: &[u8]) {
    let mut rest = data;
    while let [name, lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (bytes, tail) = tail.split_at(len);
        let name = OPEN_DIR_NAMES[usize::from(*name) % OPEN_DIR_NAMES.len()];
        std::fs::write(dir.join(name), bytes).expect("write fuzz input file");
        rest = tail;
    }
    let store = match Store::open_with(dir, options()) {
        Ok(store) => store,
        Err(e) => {
            assert!(
                e.is_corruption(),
                "open of damaged files failed with a non-corruption error: {e:?}"
            );
            return;
        }
    };
    for user in ["u", "user-0", "user-1", "a", "fuzz"] {
        // A record whose checksum holds but whose value is not a value is reported, not trusted.
        match store.campaigns_of(user) {
            Ok(maps) => {
                assert!(
                    maps.iter().all(|m| m.user_id == user),
                    "campaigns_of({user}) returned {maps:?}"
                )
            }
            Err(e) => assert!(e.is_corruption(), "{e:?}"),
        }
        if let Err(e) = store.get(user, "c") {
            assert!(e.is_corruption(), "{e:?}");
        }
    }
    let probe = CampaignUserMap::new("fuzz", "probe", "written-after-open");
    if let Err(e) = store.set(&probe) {
        // The only write a store that opened may refuse: one past the last segment id.
        assert!(
            matches!(e, Error::InvalidOption { .. }),
            "write after open failed: {e:?}"
        );
        return;
    }
    // Every sealed segment of a store that opened was read whole, so compacting them must work, or at worst
    // report damage (a value whose record checksum holds but that does not decode).
    if let Err(e) = store.compact() {
        assert!(e.is_corruption(), "compaction after open failed: {e:?}");
    }
    drop(store);
    let store = Store::open_with(dir, options()).unwrap_or_else(|e| {
        panic!("a store that opened, took a write and closed must open again: {e}")
    });
    assert_eq!(
        store.get("fuzz", "probe").expect("read the probe back"),
        Some(probe)
    );
}

/// Reads operations from fuzz bytes; past the end every read is zero, so every input is a valid program.
struct Ops<'a>(&'a [u8]);

impl Ops<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
}

const USERS: [&str; 6] = ["u", "u1", "user", "a", "ab", "b"];

fn user(b: u8) -> &'static str {
    USERS[usize::from(b) % USERS.len()]
}

fn campaign(b: u8) -> String {
    format!("c{}", b % 5)
}

type Model = BTreeMap<(String, String), CampaignUserMap>;

fn check_all(store: &Store, model: &Model, step: usize) {
    for u in USERS {
        let want: Vec<&CampaignUserMap> = model.values().filter(|m| m.user_id == u).collect();
        let got = store.campaigns_of(u).expect("campaigns_of");
        assert_eq!(
            got.iter().collect::<Vec<_>>(),
            want,
            "step {step}: campaigns_of({u})"
        );
        for c in 0..5u8 {
            let c = campaign(c);
            let want = model.get(&(u.to_owned(), c.clone()));
            assert_eq!(
                store.get(u, &c).expect("get").as_ref(),
                want,
                "step {step}: get({u}, {c})"
            );
        }
    }
}

/// Runs a program of set / delete / forget_user / get / campaigns_of / sync / compact / reopen read from `data` against
/// a store in the empty directory `dir` and against a map, and checks they agree at every read and at the end.
pub fn model(dir: &Path, data: &[u8]) {
    let mut ops = Ops(data);
    let mut store = Some(Store::open_with(dir, options()).expect("open a fresh store"));
    let mut model = Model::new();
    for step in 0..256 {
        if ops.0.is_empty() {
            break;
        }
        let s = store.as_ref().expect("store is open between steps");
        match ops.byte() % 11 {
            0..=2 => {
                let (u, c, v, g) = (
                    user(ops.byte()),
                    campaign(ops.byte()),
                    ops.byte(),
                    ops.byte(),
                );
                // Goal lists up to ~1 KiB make records big enough for segments to rotate often.
                let goals = (g > 0).then(|| "g_vwo_".repeat(usize::from(g) % 180));
                let m = CampaignUserMap {
                    user_id: u.to_owned(),
                    campaign_key: c.clone(),
                    variation_name: format!("v{v}"),
                    goal_identifier: goals,
                };
                s.set(&m).expect("set");
                model.insert((u.to_owned(), c), m);
            }
            3 => {
                let (u, c) = (user(ops.byte()), campaign(ops.byte()));
                let existed = model.remove(&(u.to_owned(), c.clone())).is_some();
                assert_eq!(
                    s.delete(u, &c).expect("delete"),
                    existed,
                    "step {step}: delete({u}, {c})"
                );
            }
            4 => {
                let u = user(ops.byte());
                let before = model.len();
                model.retain(|(mu, _), _| mu != u);
                assert_eq!(
                    s.forget_user(u).expect("forget_user"),
                    before - model.len(),
                    "step {step}: forget_user({u})"
                );
            }
            5 | 6 => {
                let (u, c) = (user(ops.byte()), campaign(ops.byte()));
                let want = model.get(&(u.to_owned(), c.clone()));
                assert_eq!(
                    s.get(u, &c).expect("get").as_ref(),
                    want,
                    "step {step}: get({u}, {c})"
                );
            }
            7 => {
                let u = user(ops.byte());
                let want: Vec<&CampaignUserMap> =
                    model.values().filter(|m| m.user_id == u).collect();
                let got = s.campaigns_of(u).expect("campaigns_of");
                assert_eq!(
                    got.iter().collect::<Vec<_>>(),
                    want,
                    "step {step}: campaigns_of({u})"
                );
            }
            8 => s.sync().expect("sync"),
            9 => s.compact().expect("compact"),
            _ => {
                drop(store.take());
                store = Some(Store::open_with(dir, options()).expect("reopen"));
            }
        }
    }
    let s = store.take().expect("store is open");
    check_all(&s, &model, usize::MAX);
    drop(s);
    check_all(
        &Store::open_with(dir, options()).expect("final reopen"),
        &model,
        usize::MAX,
    );
}
