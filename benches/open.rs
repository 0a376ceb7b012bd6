//! `Store::open` of a store of 200k mappings after a clean close, with and without hint files.
//!
//! Hints exist only for sealed segments, and 200k mappings (about 20 MB) fit in one default 64 MiB segment, so
//! both stores use 4 MiB segments: with hints, open reads the hints of the sealed segments and scans only the
//! active one; without, it scans every segment. Background compaction is off in both, so no hint appears
//! between measurements; the hinted store gets its hints from `Store::compact`.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use ussdb::{Durability, Options, Store};

#[allow(dead_code, reason = "shared by the benchmark files; each uses a part")]
mod common;

const MAPPINGS: usize = 200_000;
const SEGMENT_SIZE: u64 = 4 << 20;

fn options() -> Options {
    Options::default()
        .durability(Durability::Never)
        .segment_size(SEGMENT_SIZE)
        .auto_compaction(false)
}

/// Opens the store and checks it is the one built: all mappings, and hints or none as expected.
fn open_checked(dir: &Path, hinted: bool) -> Store {
    let store = Store::open_with(dir, options()).expect("open");
    let stats = store.stats();
    assert_eq!(
        stats.mappings, MAPPINGS as u64,
        "every mapping after reopen"
    );
    assert!(stats.segments > 2, "the store spans several segments");
    assert_eq!(
        stats.hint_files > 0,
        hinted,
        "hint files: {} of {} segments",
        stats.hint_files,
        stats.segments
    );
    store
}

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("open");
    // One open takes tens to hundreds of milliseconds: few samples, one open per iteration.
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for hinted in [false, true] {
        let dir = common::temp_dir();
        let store = common::build(dir.path(), MAPPINGS, options());
        if hinted {
            store.compact().expect("compact writes the hint files");
        }
        drop(store);
        drop(open_checked(dir.path(), hinted));

        let label = if hinted { "hints" } else { "no_hints" };
        g.bench_function(BenchmarkId::new(label, MAPPINGS), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let store = Store::open_with(dir.path(), options()).expect("open");
                    total += started.elapsed();
                    // Closing (a sync with nothing to write, thread joins) is not part of open.
                    drop(store);
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, open);
criterion_main!(benches);
