//! criterion suite: every store on the same SDK-shaped workloads.
//!
//! Defaults keep a full `cargo bench -p ussdb-compare` to a few minutes on 2 cores. Bigger runs:
//! `BENCH_SIZES=100000,1000000` (mappings per store), `BENCH_STORES=ussdb,lmdb` (subset),
//! `BENCH_SECS=3` (measurement time per benchmark), `BENCH_DIR` (where the stores live).

use criterion::{BatchSize, BenchmarkId, Criterion, SamplingMode};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use ussdb_compare::workload::Workload;
use ussdb_compare::{Kv, Mode, kinds_from_env};

fn sizes() -> Vec<usize> {
    std::env::var("BENCH_SIZES")
        .ok()
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().replace('_', "").parse().expect("BENCH_SIZES"))
                .collect()
        })
        .unwrap_or_else(|| vec![100_000])
}

fn bench_dir() -> PathBuf {
    std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("ussdb-criterion-{}", std::process::id()))
}

/// `iters` ops split over `threads` threads, timed as a whole: criterion's per-iteration time
/// is then the inverse of the combined throughput.
fn parallel(threads: usize, iters: u64, op: &(dyn Fn(&mut SmallRng) + Sync)) -> Duration {
    let per = iters.div_ceil(threads as u64);
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(t as u64);
                for _ in 0..per {
                    op(&mut rng);
                }
            });
        }
    });
    started.elapsed()
}

fn suite(c: &mut Criterion) {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let kinds = kinds_from_env("BENCH_STORES");
    let root = bench_dir();
    for n in sizes() {
        let w = Workload::new(n, 100_000, 42);
        let n = w.stored.len();
        for &kind in &kinds {
            let name = kind.name();
            let dir = root.join(format!("{name}-{n}"));
            let _ = std::fs::remove_dir_all(&dir);
            let store = kind.open(&dir, Mode::Buffered).expect("open");
            w.prefill(&*store).expect("prefill");
            store.sync().expect("sync");
            let id = |label: &str| BenchmarkId::new(label, format!("{name}/{n}"));
            // Open first, while the store holds exactly n mappings: the write benchmarks below
            // grow each store by an amount that depends on its speed.
            let store = if kind.is_persistent() {
                drop(store);
                let mut g = c.benchmark_group("user-storage");
                g.sample_size(10)
                    .sampling_mode(SamplingMode::Flat)
                    .warm_up_time(Duration::from_millis(100))
                    .measurement_time(Duration::from_secs_f64(secs));
                g.bench_function(id("open"), |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let started = Instant::now();
                            let store = kind.open(&dir, Mode::Buffered).expect("reopen");
                            total += started.elapsed();
                            drop(store);
                        }
                        total
                    })
                });
                g.finish();
                kind.open(&dir, Mode::Buffered).expect("reopen")
            } else {
                store
            };
            let s: &dyn Kv = &*store;

            let mut g = c.benchmark_group("user-storage");
            g.sample_size(10)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_secs_f64(secs));
            let get_hit = |rng: &mut SmallRng| {
                let m = &w.stored[rng.random_range(0..n)];
                black_box(s.get(&m.user_id, &m.campaign_key).expect("get"));
            };
            let mut rng = SmallRng::seed_from_u64(1);
            g.bench_function(id("get_hit"), |b| b.iter(|| get_hit(&mut rng)));
            g.bench_function(id("get_hit_2_threads"), |b| {
                b.iter_custom(|iters| parallel(2, iters, &get_hit))
            });
            g.bench_function(id("get_miss"), |b| {
                b.iter(|| {
                    let (u, c) = &w.missing[rng.random_range(0..w.missing.len())];
                    black_box(s.get(u, c).expect("get"))
                })
            });
            if s.campaigns_of("no-such-user").is_ok_and(|c| c.is_some()) {
                g.bench_function(id("campaigns_of"), |b| {
                    b.iter(|| {
                        let u = &w.users[rng.random_range(0..w.users.len())];
                        black_box(s.campaigns_of(u).expect("campaigns_of"))
                    })
                });
            }
            let mixed = |rng: &mut SmallRng| {
                if rng.random_range(0..10) == 0 {
                    let m = &w.overwrites[rng.random_range(0..w.overwrites.len())];
                    s.set(m).expect("set");
                } else {
                    get_hit(rng);
                }
            };
            g.bench_function(id("mixed_90_10"), |b| b.iter(|| mixed(&mut rng)));
            g.bench_function(id("mixed_90_10_2_threads"), |b| {
                b.iter_custom(|iters| parallel(2, iters, &mixed))
            });
            g.bench_function(id("overwrite_goal_append"), |b| {
                b.iter(|| {
                    let m = &w.overwrites[rng.random_range(0..w.overwrites.len())];
                    s.set(m).expect("set")
                })
            });
            let mut stream = 0;
            g.bench_function(id("set_new"), |b| {
                // Each criterion round gets maps no earlier round stored.
                b.iter_batched(
                    || {
                        stream += 1;
                        w.fresh(stream, 1).pop().expect("one fresh map")
                    },
                    |m| {
                        s.set(&m).expect("set");
                        m
                    },
                    BatchSize::SmallInput,
                )
            });
            g.finish();
            drop(store);

            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    suite(&mut c);
    c.final_summary();
}
