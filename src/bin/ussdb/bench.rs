//! The main job: a simulated SDK workload against a fresh store, with throughput and latency percentiles.
//!
//! Shape of the load, per SDK request: 90% activate of a known user (one get), 5% first visit of a new user (a
//! get that misses, then a set of the assigned variation), 5% track of a goal (a get, then a set with the goal
//! appended with `_vwo_`, unless it was tracked already). So a request is one or two store operations, and the
//! report counts both.
//!
//! The store lives in a directory the bench creates for itself (`DIR/bench-PID`), and the bench removes only what
//! it created: that directory, and `DIR` (and its missing parents) if they did not exist and are empty again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ussdb::{CampaignUserMap, Durability, Options, Store};

use crate::Mode;
use crate::{interrupt, plural, progress};

/// Progress is counted in steps of this many operations, so the counting does not show in the figures.
const PROGRESS_STEP: u64 = 1024;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Segment size in MiB (default: the library's default).
    #[arg(long)]
    segment_mib: Option<u64>,
    /// Users loaded before the workload starts.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    users: u64,
    /// Campaigns each loaded user is part of.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    campaigns: u64,
    /// SDK requests in the measured workload, over all threads (each is one or two store operations).
    #[arg(long, default_value_t = 200_000)]
    ops: u64,
    /// Threads issuing requests (like a server's request threads).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: u64,
    /// Percent of requests that may write (half first visits, half goal tracks); each reads first.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=100))]
    set_percent: u64,
    /// Keep the bench store afterwards instead of removing it (its path is printed).
    #[arg(long)]
    keep: bool,
}

impl Args {
    fn options(&self) -> Options {
        match self.segment_mib {
            Some(mib) => Options::default().segment_size(mib << 20),
            None => Options::default(),
        }
    }
}

/// Log-linear latency histogram: exact below 64 ns, then 32 buckets per power of two (about 3% resolution).
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            counts: vec![0; 64 + 58 * 32],
            total: 0,
        }
    }

    fn bucket(ns: u64) -> usize {
        if ns < 64 {
            return ns as usize;
        }
        let exp = 63 - ns.leading_zeros() as usize;
        let mantissa = (ns >> (exp - 5)) as usize;
        64 + (exp - 6) * 32 + (mantissa - 32)
    }

    fn lower_bound(bucket: usize) -> u64 {
        if bucket < 64 {
            return bucket as u64;
        }
        let exp = (bucket - 64) / 32 + 6;
        let mantissa = ((bucket - 64) % 32 + 32) as u64;
        mantissa << (exp - 5)
    }

    fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        if let Some(c) = self.counts.get_mut(Self::bucket(ns)) {
            *c += 1;
            self.total += 1;
        }
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    fn percentile(&self, p: f64) -> Duration {
        let rank = ((self.total as f64) * p / 100.0).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_nanos(Self::lower_bound(bucket));
            }
        }
        Duration::ZERO
    }
}

fn user(n: u64) -> String {
    // Ids of realistic shape and length (UUID-like, 36 bytes).
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        n.wrapping_mul(0x9E37_79B9),
        n % 0xffff,
        n % 0xfff,
        (n >> 12) % 0xfff,
        n
    )
}

fn campaign(n: u64) -> String {
    format!("campaign-{n:03}")
}

/// A small, fast generator; the workload needs variety, not cryptographic randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Default)]
struct Requests {
    activate: u64,
    first_visit: u64,
    track: u64,
}

struct Tally {
    get: Histogram,
    set: Histogram,
    requests: Requests,
}

/// How a bench ended.
pub enum Outcome {
    /// Every phase ran.
    Done,
    /// Ctrl-C stopped it; its store is removed all the same.
    Interrupted,
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Immediate => "immediate",
        Mode::Periodic => "periodic",
        Mode::Never => "never",
    }
}

/// The bench's own directory, and the ones it had to create above it: removed on drop, deepest first, the
/// store directory with what is in it (the bench's store), the others only if empty.
struct Scratch {
    store_dir: PathBuf,
    created_parents: Vec<PathBuf>,
    keep: bool,
}

impl Scratch {
    fn create(parent: &Path, keep: bool) -> Result<Scratch, String> {
        let mut created_parents = Vec::new();
        let mut missing = parent;
        while !missing.as_os_str().is_empty() && !missing.exists() {
            created_parents.push(missing.to_path_buf());
            match missing.parent() {
                Some(up) => missing = up,
                None => break,
            }
        }
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        let mut scratch = Scratch {
            store_dir: PathBuf::new(),
            created_parents,
            keep,
        };
        let pid = std::process::id();
        for attempt in 0u32.. {
            let name = match attempt {
                0 => format!("bench-{pid}"),
                n => format!("bench-{pid}-{n}"),
            };
            let dir = parent.join(name);
            // `create_dir` fails on anything that exists, so the directory is new and only this bench uses it.
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    scratch.store_dir = dir;
                    return Ok(scratch);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 1000 => {}
                Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
            }
        }
        Err(format!(
            "cannot find a free bench directory name in {}",
            parent.display()
        ))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep && !self.store_dir.as_os_str().is_empty() {
            return;
        }
        if !self.store_dir.as_os_str().is_empty()
            && let Err(e) = std::fs::remove_dir_all(&self.store_dir)
        {
            eprintln!(
                "ussdb: cannot remove the bench store {}: {e}",
                self.store_dir.display()
            );
        }
        for dir in &self.created_parents {
            // Only if empty: something put there meanwhile is not the bench's to remove.
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
        }
    }
}

pub fn run(parent: &Path, mode: Mode, args: &Args) -> Result<Outcome, String> {
    interrupt::catch();
    let scratch = Scratch::create(parent, args.keep)?;
    let dir = scratch.store_dir.clone();
    let err = |e: ussdb::Error| e.to_string();
    let mappings = args.users * args.campaigns;
    let threads = args.threads.max(1);
    println!(
        "ussdb bench in {}: load {} users x {} campaigns = {mappings} mappings with durability never (set-up, \
         not measured), then {} SDK requests on {} with durability {}",
        dir.display(),
        args.users,
        args.campaigns,
        args.ops,
        plural(threads, "thread", "threads"),
        mode_name(mode)
    );

    // Load with the OS deciding when to write back, then reopen in the mode under test: the load is set-up,
    // not what is measured.
    let started = Instant::now();
    let bar = progress::bar("load", Some(mappings), false);
    {
        let store =
            Store::open_with(&dir, args.options().durability(Durability::Never)).map_err(err)?;
        std::thread::scope(|s| -> ussdb::Result<()> {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let store = store.clone();
                    let bar = &bar;
                    s.spawn(move || -> ussdb::Result<()> {
                        for (i, u) in (t..args.users).step_by(threads as usize).enumerate() {
                            if interrupt::requested() {
                                return Ok(());
                            }
                            if i as u64 % PROGRESS_STEP == PROGRESS_STEP - 1 {
                                bar.inc(PROGRESS_STEP * args.campaigns);
                            }
                            for c in 0..args.campaigns {
                                let variation = if (u + c).is_multiple_of(2) {
                                    "Control"
                                } else {
                                    "Variation-1"
                                };
                                store.set(&CampaignUserMap::new(
                                    user(u),
                                    campaign(c),
                                    variation,
                                ))?;
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().unwrap_or_else(|_| Err(panicked())))
        })
        .map_err(err)?;
        store.sync().map_err(err)?;
    }
    bar.finish_and_clear();
    if interrupt::requested() {
        return Ok(interrupted(&scratch));
    }
    let load = started.elapsed();
    println!(
        "load   {mappings} sets in {:.2} s ({:.0} sets/s), durability never",
        load.as_secs_f64(),
        mappings as f64 / load.as_secs_f64()
    );

    let started = Instant::now();
    let store =
        Store::open_with(&dir, args.options().durability(mode.durability())).map_err(err)?;
    let open = started.elapsed();
    let stats = store.stats();
    println!(
        "open   {:.3} s for {} mappings in {}",
        open.as_secs_f64(),
        stats.mappings,
        plural(stats.segments, "segment", "segments")
    );

    let next_user = Arc::new(AtomicU64::new(args.users));
    let fsyncs_before = stats.fsyncs;
    let bar = progress::bar("run", Some(args.ops), false);
    let started = Instant::now();
    let tallies: Vec<ussdb::Result<Tally>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let store = store.clone();
                let next_user = Arc::clone(&next_user);
                // The remainder goes to the first threads, so the requests add up to --ops exactly.
                let ops = args.ops / threads + u64::from(t < args.ops % threads);
                let bar = &bar;
                s.spawn(move || worker(&store, args, t, ops, &next_user, bar))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(panicked())))
            .collect()
    });
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let mut get = Histogram::new();
    let mut set = Histogram::new();
    let mut requests = Requests::default();
    for tally in tallies {
        let tally = tally.map_err(err)?;
        get.merge(&tally.get);
        set.merge(&tally.set);
        requests.activate += tally.requests.activate;
        requests.first_visit += tally.requests.first_visit;
        requests.track += tally.requests.track;
    }
    if interrupt::requested() {
        drop(store);
        return Ok(interrupted(&scratch));
    }
    let stats = store.stats();
    let secs = elapsed.as_secs_f64();
    let total_requests = requests.activate + requests.first_visit + requests.track;
    println!(
        "run    {total_requests} SDK requests in {secs:.2} s with durability {}: {:.0} requests/s ({} activate, \
         {} first visits, {} goal tracks)",
        mode_name(mode),
        total_requests as f64 / secs,
        requests.activate,
        requests.first_visit,
        requests.track
    );
    println!(
        "store  {} ops = {} gets + {} sets: {:.0} ops/s (a first visit is a get and a set, a goal track a get \
         and a set unless the goal was tracked already)",
        get.total + set.total,
        get.total,
        set.total,
        (get.total + set.total) as f64 / secs
    );
    for (name, h) in [("get", &get), ("set", &set)] {
        println!(
            "  {name}  {:>9} ops  {:>10.0} ops/s  p50 {:>9.1?}  p99 {:>9.1?}  p99.9 {:>9.1?}",
            h.total,
            h.total as f64 / secs,
            h.percentile(50.0),
            h.percentile(99.0),
            h.percentile(99.9)
        );
    }
    let fsyncs = stats.fsyncs - fsyncs_before;
    println!(
        "fsyncs {fsyncs} for {} ({:.3} per set)",
        plural(set.total, "set", "sets"),
        fsyncs as f64 / set.total.max(1) as f64
    );
    println!(
        "memory index heap {} bytes = {:.1} bytes per mapping ({} mappings); disk {} bytes = {:.1} bytes per mapping",
        stats.index_heap_bytes,
        stats.index_heap_bytes as f64 / stats.mappings.max(1) as f64,
        stats.mappings,
        stats.disk_bytes,
        stats.disk_bytes as f64 / stats.mappings.max(1) as f64
    );
    drop(store);
    if args.keep {
        println!("kept   the bench store in {}", dir.display());
    }
    Ok(Outcome::Done)
}

fn interrupted(scratch: &Scratch) -> Outcome {
    eprintln!(
        "ussdb: bench interrupted by Ctrl-C; {}",
        if scratch.keep {
            format!("its store is kept in {}", scratch.store_dir.display())
        } else {
            format!("removing its store {}", scratch.store_dir.display())
        }
    );
    Outcome::Interrupted
}

fn panicked() -> ussdb::Error {
    ussdb::Error::Io {
        op: "run a bench thread",
        path: "bench".into(),
        source: std::io::Error::other("a bench thread panicked"),
    }
}

fn worker(
    store: &Store,
    args: &Args,
    thread: u64,
    ops: u64,
    next_user: &AtomicU64,
    bar: &indicatif::ProgressBar,
) -> ussdb::Result<Tally> {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ (thread + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut tally = Tally {
        get: Histogram::new(),
        set: Histogram::new(),
        requests: Requests::default(),
    };
    let goals = ["add-to-cart", "checkout", "purchase", "signup"];
    for op in 0..ops {
        if op % PROGRESS_STEP == PROGRESS_STEP - 1 {
            bar.inc(PROGRESS_STEP);
            if interrupt::requested() {
                break;
            }
        }
        let roll = rng.next() % 100;
        let c = campaign(rng.next() % args.campaigns);
        if roll >= args.set_percent {
            tally.requests.activate += 1;
            let u = user(rng.next() % args.users);
            let t = Instant::now();
            let found = store.get(&u, &c)?;
            tally.get.record(t.elapsed());
            std::hint::black_box(found);
        } else if roll < args.set_percent / 2 {
            // First visit: the lookup misses, the SDK assigns a variation and stores it.
            tally.requests.first_visit += 1;
            let u = user(next_user.fetch_add(1, Ordering::Relaxed));
            let t = Instant::now();
            let found = store.get(&u, &c)?;
            tally.get.record(t.elapsed());
            if found.is_none() {
                let map = CampaignUserMap::new(
                    u,
                    c,
                    if rng.next().is_multiple_of(2) {
                        "Control"
                    } else {
                        "Variation-1"
                    },
                );
                let t = Instant::now();
                store.set(&map)?;
                tally.set.record(t.elapsed());
            }
        } else {
            // Track: read the mapping, append the goal unless it was tracked already.
            tally.requests.track += 1;
            let u = user(rng.next() % args.users);
            let t = Instant::now();
            let found = store.get(&u, &c)?;
            tally.get.record(t.elapsed());
            if let Some(mut map) = found
                && map.add_goal(goals[(rng.next() % 4) as usize])
            {
                let t = Instant::now();
                store.set(&map)?;
                tally.set.record(t.elapsed());
            }
        }
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::Histogram;
    use std::time::Duration;

    #[test]
    fn histogram_buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for ns in [
            0u64,
            1,
            63,
            64,
            65,
            100,
            1_000,
            123_456,
            10_000_000_000,
            u64::MAX / 2,
        ] {
            let b = Histogram::bucket(ns);
            assert!(b >= last);
            last = b;
            let low = Histogram::lower_bound(b);
            assert!(low <= ns && ns - low <= ns / 32 + 1, "{ns} -> {low}");
        }
        let mut h = Histogram::new();
        for us in 1..=100 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.percentile(50.0).as_micros();
        assert!((48..=50).contains(&p50), "{p50}");
    }
}
