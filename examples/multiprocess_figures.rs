//! Engine-level figures of the multi-process mode (docs/BENCHMARKS.md, "Multi-process"): `get` and `set` per
//! second in the single-process mode and in the multi-process mode, from 1 and from 4 processes on one store.
//! Each process is this program re-run with `MP_CHILD` set; it opens the store itself and times its own loop.
//!
//! ```text
//! cargo run --release --example multiprocess_figures [keys] [ops per process]
//! ```
//!
//! Durability `Never` (no fsync per write), no background compaction, 100k keys and 1M operations per process
//! by default. Aggregate = all processes' operations / the slowest process's time.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use ussdb::{CampaignUserMap, Durability, Options, Store};

fn options(shared: bool) -> Options {
    Options::default()
        .durability(Durability::Never)
        .auto_compaction(false)
        .shared(shared)
}

fn user(i: u64) -> String {
    format!("user-{i:08}")
}

/// xorshift: the same key sequence for every mode.
fn keys(seed: u64, keys: u64, n: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % keys
        })
        .collect()
}

fn child(dir: &Path, shared: bool, op: &str, n_keys: u64, ops: u64, seed: u64) -> f64 {
    let store = Store::open_with(dir, options(shared)).expect("open");
    let ids = keys(seed, n_keys, ops);
    let users: Vec<String> = ids.iter().map(|&i| user(i)).collect();
    // Every process starts its loop at once: each says it is ready, the parent says go.
    std::fs::write(dir.join(format!("ready-{seed}")), b"").expect("ready file");
    while !dir.join("go").exists() {
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let start = Instant::now();
    if op == "get" {
        for u in &users {
            let got = store.get(u, "sticky_ab").expect("get");
            assert!(got.is_some(), "preloaded key missing");
        }
    } else {
        for (n, u) in users.iter().enumerate() {
            let map = CampaignUserMap::new(u.as_str(), "sticky_ab", format!("v{n}"));
            store.set(&map).expect("set");
        }
    }
    start.elapsed().as_secs_f64()
}

fn run(dir: &Path, shared: bool, op: &str, procs: u64, n_keys: u64, ops: u64) -> f64 {
    let exe = std::env::current_exe().expect("own path");
    let children: Vec<_> = (0..procs)
        .map(|p| {
            Command::new(&exe)
                .env(
                    "MP_CHILD",
                    format!("{shared} {op} {n_keys} {ops} {}", 1000 + p),
                )
                .env("MP_DIR", dir)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("start child")
        })
        .collect();
    while (0..procs).any(|p| !dir.join(format!("ready-{}", 1000 + p)).exists()) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    std::fs::write(dir.join("go"), b"").expect("go file");
    let mut slowest: f64 = 0.0;
    for child in children {
        let out = child.wait_with_output().expect("run child");
        assert!(out.status.success(), "a child failed");
        let secs: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("child time");
        slowest = slowest.max(secs);
    }
    (procs * ops) as f64 / slowest
}

fn main() {
    if let Ok(args) = std::env::var("MP_CHILD") {
        let f: Vec<&str> = args.split(' ').collect();
        let dir = std::env::var("MP_DIR").expect("MP_DIR");
        let secs = child(
            Path::new(&dir),
            f[0] == "true",
            f[1],
            f[2].parse().expect("keys"),
            f[3].parse().expect("ops"),
            f[4].parse().expect("seed"),
        );
        println!("{secs}");
        return;
    }
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let n_keys = args.first().copied().unwrap_or(100_000);
    let ops = args.get(1).copied().unwrap_or(1_000_000);
    // `MP_ONLY=set` (or `get`) runs one operation's figures, and `MP_ONLY_X4=1` only its 4-process one, e.g.
    // under a profiler.
    let only = std::env::var("MP_ONLY").ok();
    let only_x4 = std::env::var("MP_ONLY_X4").is_ok();
    for op in ["get", "set"] {
        if only.as_deref().is_some_and(|o| o != op) {
            continue;
        }
        let mut figures = Vec::new();
        for (shared, procs) in [(false, 1), (true, 1), (true, 4)] {
            if only_x4 && procs != 4 {
                continue;
            }
            let dir = tempfile::tempdir().expect("temp dir");
            {
                let store = Store::open_with(dir.path(), options(shared)).expect("open");
                for i in 0..n_keys {
                    store
                        .set(&CampaignUserMap::new(user(i), "sticky_ab", "Control"))
                        .expect("preload");
                }
            }
            let rate = run(dir.path(), shared, op, procs, n_keys, ops);
            let mode = if shared {
                "multi-process"
            } else {
                "single-process"
            };
            println!("{op} {mode} x{procs}: {rate:.0} ops/s");
            figures.push(rate);
        }
        if let [single, multi, multi4] = figures[..] {
            println!(
                "{op}: multi/single x1 = {:.2}, multi x4 / single x1 = {:.2}",
                multi / single,
                multi4 / single
            );
        }
    }
}
