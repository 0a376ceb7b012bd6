//! A fixed number of ops of one workload on one store, for profilers. Only `hot_loop` is meant
//! to be measured:
//!
//! `valgrind --tool=callgrind --toggle-collect='*hot_loop*' target/release/profile ussdb get_hit 100000 200000`
//!
//! Workloads: get_hit, get_miss, campaigns_of, overwrite, set_new, durable_set, open.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::time::Instant;
use ussdb_compare::workload::Workload;
use ussdb_compare::{Kind, Kv, Mode};

#[inline(never)]
fn hot_loop(store: &dyn Kv, w: &Workload, workload: &str, ops: usize) {
    let mut rng = SmallRng::seed_from_u64(9);
    match workload {
        "get_hit" => {
            for _ in 0..ops {
                let m = &w.stored[rng.random_range(0..w.stored.len())];
                black_box(store.get(&m.user_id, &m.campaign_key).expect("get"));
            }
        }
        "get_miss" => {
            for _ in 0..ops {
                let (u, c) = &w.missing[rng.random_range(0..w.missing.len())];
                black_box(store.get(u, c).expect("get"));
            }
        }
        "campaigns_of" => {
            for _ in 0..ops {
                let u = &w.users[rng.random_range(0..w.users.len())];
                black_box(store.campaigns_of(u).expect("campaigns_of"));
            }
        }
        "overwrite" => {
            for _ in 0..ops {
                let m = &w.overwrites[rng.random_range(0..w.overwrites.len())];
                store.set(m).expect("set");
            }
        }
        other => panic!("unknown workload {other}"),
    }
}

#[inline(never)]
fn hot_loop_open(kind: Kind, dir: &std::path::Path) -> Box<dyn Kv> {
    kind.open(dir, Mode::Buffered).expect("reopen")
}

#[inline(never)]
fn hot_loop_sets(store: &dyn Kv, fresh: &[ussdb_compare::CampaignUserMap]) {
    for m in fresh {
        store.set(m).expect("set");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, kind, workload, n, ops] = &args[..] else {
        eprintln!("usage: profile STORE WORKLOAD MAPPINGS OPS");
        std::process::exit(2);
    };
    let kind = Kind::from_name(kind).expect("store name");
    let n: usize = n.parse().expect("MAPPINGS");
    let ops: usize = ops.parse().expect("OPS");
    let w = Workload::new(n, 100_000, 42);
    let dir = tempfile::tempdir().expect("temp dir");
    let mode = if workload == "durable_set" {
        Mode::Durable
    } else {
        Mode::Buffered
    };
    let store = kind.open(dir.path(), Mode::Buffered).expect("open");
    w.prefill(&*store).expect("prefill");
    store.sync().expect("sync");
    // Reopen only for the durable mode, and never the in-memory map (it would come back empty).
    let store = if mode == Mode::Durable && kind.is_persistent() {
        drop(store);
        kind.open(dir.path(), mode).expect("reopen")
    } else {
        store
    };
    let started = Instant::now();
    if workload == "open" {
        let closing = Instant::now();
        drop(store);
        eprintln!("close in {:?}", closing.elapsed());
        let started = Instant::now();
        let store = hot_loop_open(kind, dir.path());
        eprintln!("open in {:?}", started.elapsed());
        drop(store);
    } else if workload == "set_new" || workload == "durable_set" {
        let fresh = w.fresh(0, ops);
        let started = Instant::now();
        hot_loop_sets(&*store, &fresh);
        eprintln!("{:.0} ops/s", ops as f64 / started.elapsed().as_secs_f64());
    } else {
        // PROFILE_THREADS=2 runs the loop on two threads at once, to look at contention.
        let threads: usize = std::env::var("PROFILE_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let store = &*store;
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| hot_loop(store, &w, workload, ops));
            }
        });
        let total = (ops * threads) as f64;
        eprintln!("{:.0} ops/s", total / started.elapsed().as_secs_f64());
    }
}
