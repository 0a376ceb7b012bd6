//! Durable writes from many concurrent requests: blocking `set` on N threads against `set_async` from 1,000
//! tasks on a 2-thread tokio runtime, both with `Durability::Immediate`. Prints ops/s, fsyncs per write and
//! latency percentiles. A measurement, not a test.
//!
//! Run: cargo run --release --example async_durable            (BENCH_DIR=path picks the disk; default: temp)
//!      ASYNC_TASKS=1000 THREADS=8 SECS=3 to change the shape.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ussdb::{CampaignUserMap, Durability, Options, Store};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

fn report(
    what: &str,
    store: &Store,
    fsyncs_before: u64,
    ops: u64,
    elapsed: Duration,
    mut lat: Vec<Duration>,
) {
    lat.sort_unstable();
    let fsyncs = store.stats().fsyncs - fsyncs_before;
    println!(
        "| {what} | {:.0} | {:.3} | {:.0} / {:.0} |",
        ops as f64 / elapsed.as_secs_f64(),
        fsyncs as f64 / ops.max(1) as f64,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
}

fn main() -> ussdb::Result<()> {
    let secs = env("SECS", 3);
    let threads = env("THREADS", 8);
    let tasks = env("ASYNC_TASKS", 1000);
    let base = std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).map_err(|e| ussdb::Error::Io {
        op: "create bench dir",
        path: std::env::temp_dir(),
        source: e,
    })?;
    let store = Store::open_with(
        dir.path(),
        Options::default().durability(Durability::Immediate),
    )?;
    println!("| writers | sets/s | fsyncs per set | latency p50 / p99, µs |");
    println!("| --- | ---: | ---: | ---: |");

    // Blocking sets on threads.
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let before = store.stats().fsyncs;
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (store, stop, counter) = (store.clone(), Arc::clone(&stop), Arc::clone(&counter));
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let map = CampaignUserMap::new(format!("t{t}-u{i}"), "c", "v");
                    let t0 = Instant::now();
                    if store.set(&map).is_err() {
                        break;
                    }
                    lat.push(t0.elapsed());
                    counter.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let lat: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect();
    report(
        &format!("{threads} threads, blocking `set`"),
        &store,
        before,
        counter.load(Ordering::Relaxed),
        started.elapsed(),
        lat,
    );

    // Async sets from many tasks.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .map_err(|e| ussdb::Error::Io {
            op: "start runtime",
            path: "tokio".into(),
            source: e,
        })?;
    let before = store.stats().fsyncs;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let (ops, lat) = runtime.block_on(async {
        let mut joins = Vec::new();
        for t in 0..tasks {
            let store = store.clone();
            joins.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let map = CampaignUserMap::new(format!("a{t}-u{i}"), "c", "v");
                    let t0 = Instant::now();
                    if store.set_async(&map).await.is_err() {
                        break;
                    }
                    lat.push(t0.elapsed());
                    i += 1;
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for j in joins {
            all.extend(j.await.unwrap_or_default());
        }
        (all.len() as u64, all)
    });
    report(
        &format!("{tasks} async tasks, `set_async`"),
        &store,
        before,
        ops,
        started.elapsed(),
        lat,
    );
    Ok(())
}
