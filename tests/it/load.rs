//! Load: 8 threads of mixed get / set / delete / forget_user / campaigns_of against one `Immediate` store, for a
//! bounded number of operations. Each thread owns its keys and checks every read against its own model as it
//! goes; all threads also write a few shared keys, whose final values must each be some thread's last write.
//! `USSDB_LOAD_OPS=200000` runs the long version (operations per thread).

use std::collections::{BTreeMap, BTreeSet};

use ussdb::{CampaignUserMap, Durability, Options, Store};

use crate::common::{Rng, env_count, map, tempdir};

const THREADS: u64 = 8;
const USERS_PER_THREAD: u64 = 10;
const CAMPAIGNS: u64 = 4;
const SHARED_KEYS: u64 = 4;

type Model = BTreeMap<(String, String), CampaignUserMap>;

struct Outcome {
    /// The thread's own keys, as it left them.
    own: Model,
    /// Per shared campaign: every value this thread wrote, in order.
    shared_written: BTreeMap<String, Vec<String>>,
    /// Shared values this thread read.
    shared_seen: Vec<(String, String)>,
}

fn own_user(t: u64, u: u64) -> String {
    format!("t{t}-u{u}")
}

fn worker(store: Store, t: u64, seed: u64, ops: u64) -> Outcome {
    let mut rng = Rng::from_seed(seed);
    let mut out = Outcome {
        own: Model::new(),
        shared_written: BTreeMap::new(),
        shared_seen: Vec::new(),
    };
    for i in 0..ops {
        let (u, c) = (
            own_user(t, rng.below(USERS_PER_THREAD)),
            format!("c{}", rng.below(CAMPAIGNS)),
        );
        let k = (u.clone(), c.clone());
        match rng.below(100) {
            0..40 => {
                let got = store.get(&u, &c).expect("get");
                assert_eq!(
                    got.as_ref(),
                    out.own.get(&k),
                    "thread {t} op {i}: get({u}, {c})"
                );
            }
            40..65 => {
                let goals = "g_vwo_".repeat(rng.below(30) as usize);
                let m = map(&u, &c, &format!("t{t}-n{i}"), Some(&goals));
                store.set(&m).expect("set");
                out.own.insert(k, m);
            }
            65..75 => {
                let existed = out.own.remove(&k).is_some();
                assert_eq!(
                    store.delete(&u, &c).expect("delete"),
                    existed,
                    "thread {t} op {i}: delete"
                );
            }
            75..77 => {
                let before = out.own.len();
                out.own.retain(|(mu, _), _| *mu != u);
                let erased = store.forget_user(&u).expect("forget_user");
                assert_eq!(
                    erased,
                    before - out.own.len(),
                    "thread {t} op {i}: forget_user({u})"
                );
            }
            77..87 => {
                let sc = format!("s{}", rng.below(SHARED_KEYS));
                let value = format!("t{t}-n{i}");
                store
                    .set(&map("shared", &sc, &value, None))
                    .expect("set shared");
                out.shared_written.entry(sc).or_default().push(value);
            }
            87..95 => {
                let sc = format!("s{}", rng.below(SHARED_KEYS));
                if let Some(m) = store.get("shared", &sc).expect("get shared") {
                    // Another thread may have written since, but never this thread's own older value.
                    let mine = out
                        .shared_written
                        .get(&sc)
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    let superseded = mine.split_last().map_or(&[][..], |(_, older)| older);
                    assert!(
                        !superseded.contains(&m.variation_name),
                        "thread {t} op {i}: read its own superseded {} from shared {sc}",
                        m.variation_name
                    );
                    out.shared_seen.push((sc, m.variation_name));
                }
            }
            _ => {
                let want: Vec<&CampaignUserMap> =
                    out.own.values().filter(|m| m.user_id == u).collect();
                let got = store.campaigns_of(&u).expect("campaigns_of");
                assert_eq!(
                    got.iter().collect::<Vec<_>>(),
                    want,
                    "thread {t} op {i}: campaigns_of({u})"
                );
            }
        }
    }
    out
}

/// Checks the store against the threads' outcomes; returns the shared values it holds.
fn check(store: &Store, outcomes: &[Outcome], context: &str) -> Vec<Option<String>> {
    let mut mappings = 0;
    for (t, out) in outcomes.iter().enumerate() {
        for u in 0..USERS_PER_THREAD {
            let u = own_user(t as u64, u);
            let want: Vec<&CampaignUserMap> = out.own.values().filter(|m| m.user_id == u).collect();
            let got = store.campaigns_of(&u).expect("campaigns_of");
            assert_eq!(
                got.iter().collect::<Vec<_>>(),
                want,
                "{context}: thread {t}'s user {u}"
            );
        }
        mappings += out.own.len();
    }
    let mut written: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut last: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for out in outcomes {
        for (sc, values) in &out.shared_written {
            written
                .entry(sc)
                .or_default()
                .extend(values.iter().map(String::as_str));
            last.entry(sc)
                .or_default()
                .insert(values.last().expect("at least one write"));
        }
    }
    let mut shared = Vec::new();
    for s in 0..SHARED_KEYS {
        let sc = format!("s{s}");
        let got = store
            .get("shared", &sc)
            .expect("get shared")
            .map(|m| m.variation_name);
        shared.push(got.clone());
        match last.get(sc.as_str()) {
            // Writes are serialised, and each thread's later write replaces its earlier ones, so the survivor
            // is the last write of some thread.
            Some(lasts) => {
                let got = got.unwrap_or_else(|| panic!("{context}: shared {sc} vanished"));
                assert!(
                    lasts.contains(got.as_str()),
                    "{context}: shared {sc} holds {got}, not a last write {lasts:?}"
                );
                mappings += 1;
            }
            None => assert_eq!(got, None, "{context}: shared {sc} was never written"),
        }
    }
    for out in outcomes {
        for (sc, value) in &out.shared_seen {
            assert!(
                written
                    .get(sc.as_str())
                    .is_some_and(|w| w.contains(value.as_str())),
                "{context}: a reader saw {value} in shared {sc}, which no thread wrote there"
            );
        }
    }
    assert_eq!(
        store.stats().mappings,
        mappings as u64,
        "{context}: mapping count"
    );
    shared
}

#[test]
fn eight_threads_of_mixed_operations_agree_with_their_models() {
    let ops = env_count("USSDB_LOAD_OPS", 5000);
    let mut rng = Rng::seeded("eight_threads_of_mixed_operations");
    let dir = tempdir();
    // 64 KiB segments: rotations (and the swap to a memory-mapped copy) happen while other threads read.
    let options = Options::default()
        .durability(Durability::Immediate)
        .segment_size(64 << 10);
    let store = Store::open_with(dir.path(), options.clone()).expect("open");
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, seed) = (store.clone(), rng.next());
            std::thread::spawn(move || worker(store, t, seed, ops))
        })
        .collect();
    let outcomes: Vec<Outcome> = workers
        .into_iter()
        .map(|w| w.join().expect("worker thread"))
        .collect();
    let live = check(&store, &outcomes, "live");
    let stats = store.stats();
    eprintln!(
        "load: {} threads x {ops} operations, {} sets, {} deletes, {} fsyncs, {} segments",
        THREADS, stats.sets, stats.deletes, stats.fsyncs, stats.segments
    );
    drop(store);
    let reopened = Store::open_with(dir.path(), options).expect("reopen");
    // The log order decides after a reopen; the index must have decided the same way while live.
    let after = check(&reopened, &outcomes, "after reopen");
    assert_eq!(after, live, "shared keys changed across a reopen");
}
