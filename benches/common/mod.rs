//! What the benchmark files share: SDK-shaped mappings computed from their index alone (so a store of a million
//! mappings is built without holding them in memory, and every run builds the same stores), and stores built
//! once per size in a temporary directory.
//!
//! Shape, as in the peer suite (`benches/compare`): user ids of 8–64 bytes, each user in 4 of 64 campaigns whose
//! keys are 8–64 bytes too, variations `Control` / `Variation-N`, 30% of the mappings with a goal.

use std::path::PathBuf;

use tempfile::TempDir;
use ussdb::{Batch, CampaignUserMap, Options, Store};

/// Mappings per user.
pub const PER_USER: usize = 4;
const CAMPAIGNS: usize = 64;
const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Store sizes, in mappings: 10k and 200k; 1M as well with `USSDB_BENCH_LARGE=1` (it takes a few more minutes).
pub fn sizes() -> Vec<usize> {
    let mut sizes = vec![10_000, 200_000];
    if std::env::var("USSDB_BENCH_LARGE").is_ok_and(|v| v == "1") {
        sizes.push(1_000_000);
    }
    sizes
}

/// splitmix64: a well-mixed value from a counter, so the workload needs no random number crate and no state.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An id of 8–64 bytes: alphanumerics drawn from `seed`, then `-` and `index` in hex, which keeps ids unique.
fn id(seed: u64, index: usize) -> String {
    let suffix = format!("-{index:x}");
    let len = 8 + (mix(seed) % 57) as usize;
    let mut id = String::with_capacity(len.max(suffix.len()));
    let mut r = seed;
    while id.len() + suffix.len() < len {
        r = mix(r);
        id.push(char::from(ALPHANUMERIC[(r % 62) as usize]));
    }
    id.push_str(&suffix);
    id
}

/// The user id of user `u`. Users at or past `mappings / PER_USER` were never stored: a get miss.
pub fn user_id(u: usize) -> String {
    id(u as u64, u)
}

fn campaign_key(c: usize) -> String {
    id(0x00c0_ffee ^ c as u64, c)
}

/// Mapping `i`: slot `i % 4` of user `i / 4`.
pub fn mapping(i: usize) -> CampaignUserMap {
    let (u, slot) = (i / PER_USER, i % PER_USER);
    // Slots 16 campaigns apart are 4 distinct campaigns of the 64.
    let campaign = (mix(!(u as u64)) as usize + slot * (CAMPAIGNS / PER_USER)) % CAMPAIGNS;
    let h = mix(i as u64 ^ 0x5eed);
    let variation = match h % 4 {
        0 => "Control".to_owned(),
        v => format!("Variation-{v}"),
    };
    let mut map = CampaignUserMap::new(user_id(u), campaign_key(campaign), variation);
    if (h >> 8) % 10 < 3 {
        map.add_goal("goal1");
    }
    map
}

/// Mapping `i` after the user tracked one more goal: what an SDK's track writes over it.
pub fn overwrite(i: usize) -> CampaignUserMap {
    let mut map = mapping(i);
    map.add_goal("goal2");
    map
}

/// `count` indices in `0..n`, spread over the whole range in no particular order.
pub fn sample(n: usize, count: usize, salt: u64) -> Vec<usize> {
    (0..count as u64)
        .map(|k| (mix(salt ^ k.wrapping_mul(0x1000_0001)) % n as u64) as usize)
        .collect()
}

/// Hands out `items` round and round, so a measured loop only reads a prepared key.
pub struct Cycle<T> {
    items: Vec<T>,
    next: usize,
}

impl<T> Cycle<T> {
    pub fn new(items: Vec<T>) -> Cycle<T> {
        assert!(!items.is_empty(), "a cycle needs items");
        Cycle { items, next: 0 }
    }

    pub fn next(&mut self) -> &T {
        let item = &self.items[self.next];
        self.next = (self.next + 1) % self.items.len();
        item
    }
}

/// A fresh temporary directory under `USSDB_BENCH_DIR` (default: the system's temporary directory, which must be
/// a real disk for the figures to mean anything: tmpfs has no fsync to pay).
pub fn temp_dir() -> TempDir {
    let parent = std::env::var_os("USSDB_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("ussdb-bench-")
        .tempdir_in(&parent)
        .unwrap_or_else(|e| panic!("cannot make a directory in {}: {e}", parent.display()))
}

/// Opens a store in `dir` with `options` and loads mappings `0..n` into it (batches of 10,000), then syncs.
pub fn build(dir: &std::path::Path, n: usize, options: Options) -> Store {
    let store =
        Store::open_with(dir, options).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    let mut batch = Batch::new();
    for start in (0..n).step_by(10_000) {
        batch.clear();
        for i in start..(start + 10_000).min(n) {
            batch
                .push(&mapping(i), None)
                .expect("a workload mapping is valid");
        }
        store.write_batch(&batch).expect("load the store");
    }
    store.sync().expect("sync the loaded store");
    assert_eq!(
        store.stats().mappings,
        n as u64,
        "the workload's mappings must be distinct"
    );
    store
}
