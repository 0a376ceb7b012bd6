//! Measures the compaction and hint-file figures of issue 3. A benchmark, not a test: it asserts nothing and
//! prints numbers. Build with `--release`:
//!
//! ```text
//! cargo run --release --example compaction_figures -- disk    DIR [mappings] [rounds] [segment MiB]
//! cargo run --release --example compaction_figures -- steady  DIR [mappings] [seconds] [segment MiB]
//! cargo run --release --example compaction_figures -- open    DIR [mappings] [segment MiB] [extra value bytes] [seal]
//! cargo run --release --example compaction_figures -- latency DIR [mappings] [seconds]
//!
//! cargo run --release --example compaction_figures -- reopen  DIR [times]
//! ```
//!
//! DIR must not exist or be empty; it is removed at the end (except by `reopen`, which times opens of an existing
//! store, for profiling; `KEEP=1` keeps the directory of the other modes).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ussdb::{CampaignUserMap, Durability, Options, Store};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (Some(mode), Some(dir)) = (args.first(), args.get(1)) else {
        eprintln!("usage: compaction_figures disk|steady|open|latency DIR [..]");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir);
    match mode.as_str() {
        "disk" => disk(&dir, arg(2, 1_000_000), arg(3, 10), arg(4, 64)),
        "steady" => steady(&dir, arg(2, 1_000_000), arg(3, 60), arg(4, 64)),
        "open" => open_times(
            &dir,
            arg(2, 10_000_000),
            arg(3, 64),
            arg(4, 0) as usize,
            arg(5, 0) == 1,
        ),
        "latency" => latency(&dir, arg(2, 1_000_000), arg(3, 10)),
        "reopen" => {
            // Times opens of an existing store and keeps it (for profiling).
            let options = Options::default()
                .durability(Durability::Never)
                .auto_compaction(false);
            for _ in 0..arg(2, 1) {
                let (started, cpu) = (Instant::now(), thread_cpu());
                let store = Store::open_with(&dir, options.clone()).expect("open");
                println!(
                    "open: {:.2?} wall, {:.2?} CPU, {} mappings",
                    started.elapsed(),
                    thread_cpu().saturating_sub(cpu),
                    store.stats().mappings
                );
            }
            return;
        }
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    }
    if std::env::var_os("KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// An SDK-shaped mapping: a user id like the SDKs' UUIDs, a campaign key, a variation.
fn mapping(i: u64, version: u64) -> CampaignUserMap {
    CampaignUserMap {
        user_id: format!("{:016x}-user-{i}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        campaign_key: format!("campaign-{}", i % 7),
        variation_name: format!("Variation-{}", version % 3),
        goal_identifier: (version % 2 == 1).then(|| "purchase_vwo_signup".to_owned()),
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn load(store: &Store, mappings: u64, version: u64) {
    for i in 0..mappings {
        store.set(&mapping(i, version)).expect("set");
    }
}

/// (a) N mappings each written `rounds` times, then one `compact()`: directory bytes against live bytes.
fn disk(dir: &Path, mappings: u64, rounds: u64, segment_mib: u64) {
    let options = Options::default()
        .durability(Durability::Never)
        .segment_size(segment_mib << 20)
        .auto_compaction(false);
    let store = Store::open_with(dir, options).expect("open");
    let started = Instant::now();
    for round in 0..rounds {
        load(&store, mappings, round);
    }
    let written = started.elapsed();
    let before = store.stats();
    let bytes_before = dir_bytes(dir);
    let started = Instant::now();
    store.compact().expect("compact");
    let took = started.elapsed();
    let after = store.stats();
    let bytes_after = dir_bytes(dir);
    println!(
        "disk: {mappings} mappings x {rounds} writes, {segment_mib} MiB segments (loaded in {written:.1?})"
    );
    println!(
        "  before compact: directory {:.1} MiB, live {:.1} MiB, {} segments -> {:.2}x live",
        mib(bytes_before),
        mib(before.live_bytes),
        before.segments,
        bytes_before as f64 / before.live_bytes as f64
    );
    println!(
        "  after compact:  directory {:.1} MiB (segments {:.1} MiB + hints), live {:.1} MiB, {} segments -> {:.2}x live; \
         compact took {took:.1?}, {} runs",
        mib(bytes_after),
        mib(after.disk_bytes),
        mib(after.live_bytes),
        after.segments,
        bytes_after as f64 / after.live_bytes as f64,
        after.compactions
    );
}

/// (a, continued) Overwrites without end, background compaction only: the largest directory seen against live.
fn steady(dir: &Path, mappings: u64, seconds: u64, segment_mib: u64) {
    let options = Options::default()
        .durability(Durability::Never)
        .segment_size(segment_mib << 20);
    let store = Store::open_with(dir, options).expect("open");
    load(&store, mappings, 0);
    let live = store.stats().live_bytes;
    let done = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(AtomicU64::new(0));
    let worst_segments = Arc::new(AtomicU64::new(0));
    let monitor = {
        let (dir, done, worst) = (dir.to_owned(), Arc::clone(&done), Arc::clone(&worst));
        let (store, worst_segments) = (store.clone(), Arc::clone(&worst_segments));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                worst.fetch_max(dir_bytes(&dir), Ordering::Relaxed);
                worst_segments.fetch_max(store.stats().disk_bytes, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let started = Instant::now();
    let mut writes = 0u64;
    let mut version = 1;
    while started.elapsed() < Duration::from_secs(seconds) {
        for i in 0..mappings {
            store.set(&mapping(i, version)).expect("set");
            writes += 1;
            if writes.is_multiple_of(100_000) && started.elapsed() >= Duration::from_secs(seconds) {
                break;
            }
        }
        version += 1;
    }
    done.store(true, Ordering::Relaxed);
    monitor.join().expect("monitor");
    let stats = store.stats();
    let worst = worst.load(Ordering::Relaxed);
    println!(
        "steady: {mappings} mappings, {writes} overwrites in {seconds} s, {segment_mib} MiB segments, background \
         compaction at the default threshold"
    );
    let worst_segments = worst_segments.load(Ordering::Relaxed);
    println!(
        "  live {:.1} MiB; largest directory seen {:.1} MiB = {:.2}x live (segment files alone: {:.1} MiB = {:.2}x); \
         at the end {:.1} MiB = {:.2}x; {} runs",
        mib(live),
        mib(worst),
        worst as f64 / live as f64,
        mib(worst_segments),
        worst_segments as f64 / live as f64,
        mib(dir_bytes(dir)),
        dir_bytes(dir) as f64 / live as f64,
        stats.compactions
    );
}

/// (b) Open a store of N mappings with hint files, and by scanning (hint files moved away).
/// With `seal`, the newest mapping is written once more before the `compact()`, which gives the active segment a
/// dead record, so the pass seals it and writes its hint too: every mapping is then in a hinted segment, and the
/// open scans only an empty active segment. Without it, the last partly filled segment stays active and is
/// scanned by every open, hints or not.
fn open_times(dir: &Path, mappings: u64, segment_mib: u64, pad: usize, seal: bool) {
    let options = Options::default()
        .durability(Durability::Never)
        .segment_size(segment_mib << 20)
        .auto_compaction(false);
    {
        let store = Store::open_with(dir, options.clone()).expect("open");
        let started = Instant::now();
        for i in 0..mappings {
            let mut m = mapping(i, 0);
            // Extra value bytes, e.g. an SDK's metaData or a long goal list.
            m.goal_identifier = (pad > 0).then(|| "g".repeat(pad));
            store.set(&m).expect("set");
        }
        println!(
            "open: loaded {mappings} mappings in {:.1?}",
            started.elapsed()
        );
        if seal && mappings > 0 {
            let mut m = mapping(mappings - 1, 0);
            m.goal_identifier = (pad > 0).then(|| "g".repeat(pad));
            store.set(&m).expect("set");
        }
        store.compact().expect("write hints");
        let stats = store.stats();
        println!(
            "  {} segments ({} with hints), {:.1} MiB",
            stats.segments,
            stats.hint_files,
            mib(stats.disk_bytes)
        );
    }
    let hints: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "hint"))
        .collect();
    let hint_bytes: u64 = hints
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    // Each open is timed, and so is its close (which saves the index, in the first phase).
    let timed_open = |options: &Options| {
        let (started, cpu) = (Instant::now(), thread_cpu());
        let store = Store::open_with(dir, options.clone()).expect("open");
        let took = started.elapsed();
        let cpu = thread_cpu().saturating_sub(cpu);
        assert_eq!(store.stats().mappings, mappings);
        let loaded = store.stats().index_loaded;
        let closing = Instant::now();
        drop(store);
        println!(
            "  open: {took:.2?} wall, {cpu:.2?} CPU{}; close {:.2?}",
            if loaded { " (saved index)" } else { "" },
            closing.elapsed()
        );
        took
    };
    let index_file = dir.join("INDEX");
    // Three times each, the page cache warm for all (the store was just written), so the comparison is of the
    // work done; the machine is shared, so the least of the three is the figure. First with the index a clean
    // close saves (the first close below saves it, each open after it loads it); then from hint files alone
    // (no index saved); then by scanning.
    let saving = options.clone().save_index_from(0);
    drop(Store::open_with(dir, saving.clone()).expect("open"));
    let index_bytes = std::fs::metadata(&index_file).map_or(0, |m| m.len());
    let with_index: Vec<Duration> = (0..3).map(|_| timed_open(&saving)).collect();
    let _ = std::fs::remove_file(&index_file);
    let plain = options.clone().save_index_from(u64::MAX);
    let with_hints: Vec<Duration> = (0..3).map(|_| timed_open(&plain)).collect();
    let aside = dir.join("hints-aside");
    std::fs::create_dir_all(&aside).expect("mkdir");
    for h in &hints {
        std::fs::rename(h, aside.join(h.file_name().expect("name"))).expect("move hint");
    }
    // A clean close writes the hints it finds missing, so each scanning open starts without them again.
    let remove_hints = || {
        for entry in std::fs::read_dir(dir).expect("list").filter_map(|e| e.ok()) {
            if entry.path().extension().is_some_and(|e| e == "hint") {
                std::fs::remove_file(entry.path()).expect("remove hint");
            }
        }
    };
    let scanning: Vec<Duration> = (0..3)
        .map(|_| {
            remove_hints();
            timed_open(&plain)
        })
        .collect();
    let best = |t: &[Duration]| t.iter().min().copied().unwrap_or_default();
    println!(
        "  hint files: {:.1} MiB; saved index: {:.1} MiB",
        mib(hint_bytes),
        mib(index_bytes)
    );
    println!(
        "  open with the saved index: best {:.2?} of {with_index:.2?}",
        best(&with_index)
    );
    println!(
        "  open with hint files:      best {:.2?} of {with_hints:.2?}",
        best(&with_hints)
    );
    println!(
        "  open by scanning:          best {:.2?} of {scanning:.2?}",
        best(&scanning)
    );
    println!(
        "  speed-up against the scan (best against best): saved index {:.1}x, hint files {:.1}x",
        best(&scanning).as_secs_f64() / best(&with_index).as_secs_f64(),
        best(&scanning).as_secs_f64() / best(&with_hints).as_secs_f64()
    );
}

/// CPU time of the calling thread (Linux `/proc/thread-self/schedstat`, in ns): on a shared machine, wall time
/// depends on the other load and CPU time much less. Zero where it cannot be read.
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// (c) One thread overwrites, one reads; first while one `compact()` pass works through a backlog of dead
/// segments (the window is that pass), then for as long again with no compaction. Per-operation latencies.
fn latency(dir: &Path, mappings: u64, min_seconds: u64) {
    let mut window = Duration::from_secs(min_seconds);
    for compacting in [true, false] {
        let _ = std::fs::remove_dir_all(dir);
        let options = Options::default()
            .durability(Durability::Never)
            .segment_size(16 << 20)
            .auto_compaction(false);
        let store = Store::open_with(dir, options).expect("open");
        // A backlog: every mapping written three times, so sealed segments are two-thirds dead.
        for round in 0..3 {
            load(&store, mappings, round);
        }
        let done = Arc::new(AtomicBool::new(false));
        let compactor = compacting.then(|| {
            let store = store.clone();
            std::thread::spawn(move || {
                // Let the load settle first, so the window holds the whole pass.
                std::thread::sleep(Duration::from_millis(200));
                let started = Instant::now();
                store.compact().expect("compact");
                started.elapsed()
            })
        });
        let writer = {
            let (store, done) = (store.clone(), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut times = Vec::new();
                let mut i = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let m = mapping(i.wrapping_mul(7919) % mappings, 3 + i / mappings);
                    let t = Instant::now();
                    store.set(&m).expect("set");
                    times.push(t.elapsed());
                    i += 1;
                }
                times
            })
        };
        let reader = {
            let (store, done) = (store.clone(), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut times = Vec::new();
                let mut i = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let m = mapping(i.wrapping_mul(104_729) % mappings, 0);
                    let t = Instant::now();
                    let got = store.get(&m.user_id, &m.campaign_key).expect("get");
                    times.push(t.elapsed());
                    assert!(got.is_some());
                    i += 1;
                }
                times
            })
        };
        let pass = compactor.map(|c| c.join().expect("compactor"));
        if let Some(pass) = pass {
            window = pass + Duration::from_millis(200);
        } else {
            std::thread::sleep(window);
        }
        done.store(true, Ordering::Relaxed);
        let mut sets = writer.join().expect("writer");
        let mut gets = reader.join().expect("reader");
        sets.sort_unstable();
        gets.sort_unstable();
        let stats = store.stats();
        println!(
            "latency, {mappings} mappings, {window:.1?} window, {}:",
            if compacting {
                "one compaction pass running"
            } else {
                "no compaction"
            }
        );
        if let Some(pass) = pass {
            println!(
                "  pass took {pass:.1?}: {} runs, {:.1} MiB reclaimed",
                stats.compactions,
                mib(stats.reclaimed_bytes)
            );
        }
        for (name, t) in [("set", &sets), ("get", &gets)] {
            println!(
                "  {name}: {:>9} ops  p50 {:>8.1?}  p99 {:>8.1?}  p99.9 {:>8.1?}  max {:>8.1?}",
                t.len(),
                percentile(t, 0.5),
                percentile(t, 0.99),
                percentile(t, 0.999),
                t.last().copied().unwrap_or_default()
            );
        }
    }
}
