//! One kind of `set` in a loop, for instruction counts: `local` (a plain `Store`) or `tier` (a `Tiered` store
//! whose Redis is unreachable, so the shipper sleeps in back-off and the outbox grows), `Periodic` durability,
//! first assignments of new mappings.
//!
//! ```sh
//! cargo build --release --features redis --example tier_set_profile
//! valgrind --tool=callgrind --toggle-collect='*hot_loop*' target/release/examples/tier_set_profile tier 40000
//! ```

use std::time::Duration;

use ussdb::{
    CampaignUserMap, DEFAULT_PERIODIC_INTERVAL, Durability, Options, RedisConfig, Store,
    TierOptions, Tiered,
};

fn fail(message: &str) -> ! {
    eprintln!("tier_set_profile: {message}");
    std::process::exit(1)
}

#[inline(never)]
fn hot_loop(maps: &[CampaignUserMap], set: &dyn Fn(&CampaignUserMap) -> ussdb::Result<()>) {
    for m in maps {
        set(m).unwrap_or_else(|e| fail(&e.to_string()));
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "tier".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(40_000);
    let maps: Vec<CampaignUserMap> = (0..n)
        .map(|i| CampaignUserMap::new(format!("user-{i:08}"), "bench", "Variation-1"))
        .collect();
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail(&format!("temp dir: {e}")));
    let periodic = Options::default().durability(Durability::Periodic(DEFAULT_PERIODIC_INTERVAL));
    match kind.as_str() {
        "local" => {
            let store = Store::open_with(dir.path(), periodic)
                .unwrap_or_else(|e| fail(&format!("open: {e}")));
            hot_loop(&maps, &|m| store.set(m));
        }
        "tier" => {
            let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| format!("redis://127.0.0.1:{}", a.port()))
                .unwrap_or_else(|e| fail(&format!("no free port: {e}")));
            let tier = Tiered::open_with(
                dir.path(),
                RedisConfig::new(nowhere),
                TierOptions::default()
                    .local(periodic)
                    .retry_max(Duration::from_secs(60)),
            )
            .unwrap_or_else(|e| fail(&format!("open: {e}")));
            hot_loop(&maps, &|m| tier.set(m));
            println!("outbox depth {}", tier.stats().outbox_depth);
        }
        other => fail(&format!("unknown kind {other:?}: local or tier")),
    }
}
