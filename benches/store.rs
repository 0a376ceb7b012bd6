//! `Store` operations at 10k and 200k mappings (and 1M with `USSDB_BENCH_LARGE=1`), on the default options but
//! the durability mode: get hit, get miss, `campaigns_of`, an overwrite (`set`) with `Durability::Never` and with
//! `Durability::Periodic`, and a `write_batch` of 100 overwrites.
//!
//! Each store is built once per size and reused by every benchmark of that size: the reads come first, on the
//! store as loaded; the writes then grow its log, as an SDK's tracking would.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ussdb::{Batch, DEFAULT_PERIODIC_INTERVAL, Durability, Options, Store};

#[allow(dead_code, reason = "shared by the benchmark files; each uses a part")]
mod common;
use common::{Cycle, PER_USER};

/// Keys prepared per benchmark: enough that the reads spread over the store, few enough to prepare quickly.
const KEYS: usize = 65_536;
/// Mappings per `write_batch`.
const BATCH: usize = 100;

fn options(durability: Durability) -> Options {
    Options::default().durability(durability)
}

fn store(c: &mut Criterion) {
    for n in common::sizes() {
        let dir = common::temp_dir();
        let store = common::build(dir.path(), n, options(Durability::Never));
        let users = n / PER_USER;
        let mut g = c.benchmark_group("store");
        // Every benchmark reports mappings per second beside the time of one call.
        g.throughput(Throughput::Elements(1));

        let mut hits = Cycle::new(
            common::sample(n, KEYS, 1)
                .into_iter()
                .map(|i| {
                    let m = common::mapping(i);
                    (m.user_id, m.campaign_key)
                })
                .collect(),
        );
        g.bench_function(BenchmarkId::new("get_hit", n), |b| {
            b.iter(|| {
                let (u, c) = hits.next();
                let map = store.get(u, c).expect("get");
                assert!(map.is_some(), "a stored mapping must be found");
                black_box(map)
            })
        });

        // Users that were never stored, in campaigns that exist: a first visit.
        let mut misses = Cycle::new(
            common::sample(n, KEYS, 2)
                .into_iter()
                .zip(0..)
                .map(|(i, k)| (common::user_id(users + k), common::mapping(i).campaign_key))
                .collect(),
        );
        g.bench_function(BenchmarkId::new("get_miss", n), |b| {
            b.iter(|| {
                let (u, c) = misses.next();
                black_box(store.get(u, c).expect("get"))
            })
        });

        let mut stored_users = Cycle::new(
            common::sample(users, KEYS, 3)
                .into_iter()
                .map(common::user_id)
                .collect(),
        );
        g.bench_function(BenchmarkId::new("campaigns_of", n), |b| {
            b.iter(|| {
                let maps = store
                    .campaigns_of(stored_users.next())
                    .expect("campaigns_of");
                assert_eq!(maps.len(), PER_USER, "every user has 4 mappings");
                black_box(maps)
            })
        });

        let mut overwrites = Cycle::new(
            common::sample(n, KEYS, 4)
                .into_iter()
                .map(common::overwrite)
                .collect(),
        );
        g.bench_function(BenchmarkId::new("set_overwrite_never", n), |b| {
            b.iter(|| store.set(overwrites.next()).expect("set"))
        });

        let mut batches = Cycle::new(
            common::sample(n, 64 * BATCH, 5)
                .chunks(BATCH)
                .map(|chunk| {
                    let mut batch = Batch::new();
                    for &i in chunk {
                        batch
                            .push(&common::overwrite(i), None)
                            .expect("a workload mapping is valid");
                    }
                    batch
                })
                .collect(),
        );
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(BenchmarkId::new("write_batch_100_never", n), |b| {
            b.iter(|| store.write_batch(batches.next()).expect("write_batch"))
        });
        g.throughput(Throughput::Elements(1));

        // The same store, reopened: the mode is fixed at open.
        drop(store);
        let store = Store::open_with(
            dir.path(),
            options(Durability::Periodic(DEFAULT_PERIODIC_INTERVAL)),
        )
        .expect("reopen");
        g.bench_function(BenchmarkId::new("set_overwrite_periodic", n), |b| {
            b.iter(|| store.set(overwrites.next()).expect("set"))
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    // Shorter than criterion's 3 s + 5 s, so a default `cargo bench` (every file) stays within a few minutes;
    // `-- --measurement-time 10` and the like override it.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = store
}
criterion_main!(benches);
