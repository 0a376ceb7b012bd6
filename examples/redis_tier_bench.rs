//! Side-by-side figures for the fleet tiers on one machine, against a `redis-server` this program starts on a free
//! loopback port (or `--redis URL` for one already running):
//!
//! * `get`: a `Tiered` local hit, `RedisStore::get`, and a plain `GET` + JSON decode over the redis crate's
//!   synchronous connection (what VWO's Redis helpers do per `get`);
//! * `set` in `Periodic` mode: a plain local `Store` against a `Tiered` store (local append + outbox marker);
//! * how long a tier takes to ship a set to Redis, and how long another tier takes to see it;
//! * fleet throughput: four tiers on four directories as four servers under SDK traffic over shared users,
//!   against four servers that call Redis for everything (`RedisStore`).
//!
//! ```sh
//! cargo run --release --features redis --example redis_tier_bench            # defaults: 20000 keys, 5 rounds
//! cargo run --release --features redis --example redis_tier_bench -- --keys 50000 --rounds 7
//! cargo run --release --features redis --example redis_tier_bench -- --pace-us 100  # 10,000 sets/s
//! ```
//!
//! By default each round's sets run back to back, about a million a second: far more than the shipper (and a
//! Redis on the same two cores) can ship as they come, so the shipping competes with the loop for the cores.
//! `--pace-us N` starts one set every N µs at the most instead (sleeping in between, as a server thread waits
//! for its next request; a sleep lasts at least ~60 µs here, so small values give fewer sets a second).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ussdb::{
    CampaignUserMap, DEFAULT_PERIODIC_INTERVAL, Durability, Options, RedisConfig, RedisStore,
    Store, TierOptions, Tiered, UserStorageService,
};

struct Args {
    keys: usize,
    rounds: usize,
    redis: Option<String>,
    /// Microseconds from the start of one set to the next in the set rounds (0: back to back).
    pace_us: u64,
}

fn args() -> Args {
    let mut a = Args {
        keys: 20_000,
        rounds: 5,
        redis: None,
        pace_us: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| fail(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--keys" => a.keys = value().parse().unwrap_or_else(|_| fail("--keys N")),
            "--rounds" => a.rounds = value().parse().unwrap_or_else(|_| fail("--rounds N")),
            "--redis" => a.redis = Some(value()),
            "--pace-us" => a.pace_us = value().parse().unwrap_or_else(|_| fail("--pace-us N")),
            _ => fail(&format!("unknown argument {flag}; see the file's header")),
        }
    }
    a
}

fn fail(message: &str) -> ! {
    eprintln!("redis_tier_bench: {message}");
    std::process::exit(2)
}

/// A `redis-server` of our own, stopped on drop.
struct Server {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis() -> (Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| fail(&format!("no free port: {e}")));
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail(&format!("temp dir: {e}")));
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            fail(&format!(
                "redis-server not found ({e}): install it with `apt-get install -y redis-server`"
            ))
        });
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while RedisStore::connect(RedisConfig::new(&url)).is_err() {
        if Instant::now() > deadline {
            fail("redis-server did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (Server { child, _dir: dir }, url)
}

fn map(i: usize, campaign: &str) -> CampaignUserMap {
    CampaignUserMap::new(format!("user-{i:08}"), campaign, "Variation-1")
}

/// Nanoseconds per call, sorted.
struct Samples(Vec<u64>);

impl Samples {
    fn new() -> Samples {
        Samples(Vec::new())
    }
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.0.push(t.elapsed().as_nanos() as u64);
        out
    }
    fn pct(&mut self, p: f64) -> Duration {
        self.0.sort_unstable();
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        Duration::from_nanos(self.0.get(i).copied().unwrap_or(0))
    }
    fn mean(&self) -> Duration {
        Duration::from_nanos(self.0.iter().sum::<u64>() / self.0.len().max(1) as u64)
    }
}

/// SDK traffic from four servers at once for `secs` seconds, each server on its own thread, over one key space of
/// `keys` users: a `get`, then a first assignment on a miss, and on every tenth call a goal on a hit. Returns the
/// calls per second of all four together.
fn fleet_throughput(servers: &[&dyn UserStorageService], keys: usize, secs: f64) -> f64 {
    let deadline = Duration::from_secs_f64(secs);
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = servers
            .iter()
            .enumerate()
            .map(|(server, store)| {
                s.spawn(move || {
                    let started = Instant::now();
                    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ server as u64;
                    let mut calls = 0u64;
                    while started.elapsed() < deadline {
                        // xorshift: each server its own sequence over the shared users.
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        let user = format!("fleet-{:06}", state as usize % keys.max(1));
                        let found = store
                            .get(&user, "fleet")
                            .unwrap_or_else(|e| fail(&e.to_string()));
                        match found {
                            None => store.set(&CampaignUserMap::new(&user, "fleet", "Variation-1")),
                            Some(mut m) if calls.is_multiple_of(10) => {
                                m.add_goal(&format!("s{server}"));
                                store.set(&m)
                            }
                            Some(_) => Ok(()),
                        }
                        .unwrap_or_else(|e| fail(&e.to_string()));
                        calls += 1;
                    }
                    calls
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| fail("a fleet server panicked")))
            .sum()
    });
    total as f64 / secs
}

/// Times a set of each key of `range`, one every `pace_us` µs at the most (0: back to back).
fn set_loop(
    samples: &mut Samples,
    range: std::ops::Range<usize>,
    pace_us: u64,
    set: impl Fn(&CampaignUserMap) -> ussdb::Result<()>,
) {
    let start = Instant::now();
    for (n, i) in range.enumerate() {
        let due = start + Duration::from_micros(pace_us * n as u64);
        // Asleep between sets, as a server thread waits for its next request (a spinning loop would hold a core
        // the shipper and Redis need).
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let m = map(i, "bench");
        samples
            .time(|| set(&m))
            .unwrap_or_else(|e| fail(&e.to_string()));
    }
}

/// CPU time (user + system, every thread) a process has used so far, from `/proc` (zero where there is none).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, in clock ticks (100 per second on Linux).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

fn us(d: Duration) -> String {
    format!("{:.2} µs", d.as_nanos() as f64 / 1000.0)
}

fn main() {
    let a = args();
    let (server, url) = match &a.redis {
        Some(url) => (None, url.clone()),
        None => {
            let (s, u) = start_redis();
            (Some(s), u)
        }
    };
    let config = RedisConfig::new(&url);
    let periodic = Options::default().durability(Durability::Periodic(DEFAULT_PERIODIC_INTERVAL));
    let dirs = tempfile::tempdir().unwrap_or_else(|e| fail(&format!("temp dir: {e}")));
    let tier_options = TierOptions::default()
        .local(periodic.clone())
        .fresh_for(Duration::from_secs(3600));
    let tier = Tiered::open_with(dirs.path().join("tier"), config.clone(), tier_options)
        .unwrap_or_else(|e| fail(&format!("open tier: {e}")));
    let local = Store::open_with(dirs.path().join("local"), periodic.clone())
        .unwrap_or_else(|e| fail(&format!("open store: {e}")));
    let remote = RedisStore::connect(config.clone()).unwrap_or_else(|e| fail(&e.to_string()));
    // A tier whose Redis never answers: its shipper sleeps, so its sets show the tier's own cost without the
    // shipper competing for the two cores.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| format!("redis://127.0.0.1:{}", a.port()))
        .unwrap_or_else(|e| fail(&format!("no free port: {e}")));
    let offline = Tiered::open_with(
        dirs.path().join("offline"),
        RedisConfig::new(nowhere),
        TierOptions::default().local(periodic.clone()),
    )
    .unwrap_or_else(|e| fail(&format!("open tier: {e}")));
    let mut plain = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| fail(&format!("plain connection: {e}")));

    // Sets: first assignments (new keys), alternating rounds so both sides see the same machine load.
    let (mut set_local, mut set_tier, mut set_offline) =
        (Samples::new(), Samples::new(), Samples::new());
    // Each round also gives its own ratio of p50s: the machine's speed drifts between rounds by more than the
    // 10% being measured, and a ratio within a round compares loops run a few milliseconds apart. The tier is
    // flushed after its loop, so its shipper does not go on working into the next round's local loop.
    let mut round_ratios = Vec::new();
    let redis_pid = server.as_ref().map(|s| s.child.id());
    let cpu_before = (redis_pid.map(cpu_time), cpu_time(std::process::id()));
    let per_round = a.keys / a.rounds.max(1);
    for round in 0..a.rounds {
        let range = round * per_round..(round + 1) * per_round;
        let (mut round_local, mut round_tier) = (Samples::new(), Samples::new());
        set_loop(&mut round_local, range.clone(), a.pace_us, |m| local.set(m));
        set_loop(&mut round_tier, range.clone(), a.pace_us, |m| tier.set(m));
        tier.flush(Duration::from_secs(60))
            .unwrap_or_else(|e| fail(&e.to_string()));
        set_loop(&mut set_offline, range, a.pace_us, |m| offline.set(m));
        round_ratios.push(
            round_tier.pct(0.5).as_nanos() as f64 / round_local.pct(0.5).as_nanos().max(1) as f64,
        );
        set_local.0.append(&mut round_local.0);
        set_tier.0.append(&mut round_tier.0);
    }
    let sets = (per_round * a.rounds) as f64;
    let redis_per_set = match (redis_pid.map(cpu_time), cpu_before.0) {
        (Some(after), Some(before)) => format!(
            "{:.2} µs",
            after.saturating_sub(before).as_nanos() as f64 / sets / 1000.0
        ),
        _ => "not measured (a Redis this program did not start)".to_owned(),
    };
    let own_per_set = cpu_time(std::process::id())
        .saturating_sub(cpu_before.1)
        .as_nanos() as f64
        / sets
        / 1000.0;
    round_ratios.sort_by(f64::total_cmp);
    let median_ratio = round_ratios
        .get(round_ratios.len() / 2)
        .copied()
        .unwrap_or(1.0);

    // Gets of keys every side holds, each kind in a loop of its own per round, rounds alternating.
    let n = per_round * a.rounds;
    let (mut g_store, mut g_tier) = (Samples::new(), Samples::new());
    let (mut g_remote, mut g_plain) = (Samples::new(), Samples::new());
    for round in 0..a.rounds {
        let keys: Vec<CampaignUserMap> = (round..n)
            .step_by(a.rounds.max(1))
            .map(|i| map(i, "bench"))
            .collect();
        for m in &keys {
            let hit = g_store.time(|| local.get(&m.user_id, &m.campaign_key));
            assert!(matches!(hit, Ok(Some(_))), "store get");
        }
        for m in &keys {
            let hit = g_tier.time(|| tier.get(&m.user_id, &m.campaign_key));
            assert!(matches!(hit, Ok(Some(_))), "tier get");
        }
        for m in &keys {
            let got = g_remote.time(|| remote.get(&m.user_id, &m.campaign_key));
            assert!(matches!(got, Ok(Some(_))), "remote get");
        }
        for m in &keys {
            let key = format!("{}:{}", m.campaign_key, m.user_id);
            let decoded = g_plain.time(|| {
                let raw: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query(&mut plain).ok()?;
                serde_json::from_slice::<CampaignUserMap>(&raw?).ok()
            });
            assert!(decoded.is_some(), "plain get");
        }
    }
    assert_eq!(
        tier.stats().remote_hits,
        0,
        "every tier get was a local hit"
    );

    // Shipping and visibility: a set on one tier, until Redis has it and until a second tier (copies trusted for
    // 100 ms) sees it.
    let fresh_for = Duration::from_millis(100);
    let other = Tiered::open_with(
        dirs.path().join("other"),
        config.clone(),
        TierOptions::default().fresh_for(fresh_for),
    )
    .unwrap_or_else(|e| fail(&format!("open tier: {e}")));
    let (mut ship, mut visible) = (Samples::new(), Samples::new());
    for i in 0..20 {
        let mut m = map(i, "bench");
        let _ = other.get(&m.user_id, &m.campaign_key);
        m.add_goal(&format!("goal-{i}"));
        let t = Instant::now();
        tier.set(&m).unwrap_or_else(|e| fail(&e.to_string()));
        let (mut shipped, mut seen) = (None, None);
        while shipped.is_none() || seen.is_none() {
            if shipped.is_none()
                && remote
                    .get(&m.user_id, &m.campaign_key)
                    .ok()
                    .flatten()
                    .is_some_and(|r| r.has_goal(&format!("goal-{i}")))
            {
                shipped = Some(t.elapsed());
            }
            if seen.is_none()
                && other
                    .get(&m.user_id, &m.campaign_key)
                    .ok()
                    .flatten()
                    .is_some_and(|r| r.has_goal(&format!("goal-{i}")))
            {
                seen = Some(t.elapsed());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        ship.0.push(shipped.map_or(0, |d| d.as_nanos() as u64));
        visible.0.push(seen.map_or(0, |d| d.as_nanos() as u64));
    }

    let (lt, lr, lp) = (g_tier.pct(0.5), g_remote.pct(0.5), g_plain.pct(0.5));
    let (sl, st) = (set_local.pct(0.5), set_tier.pct(0.5));
    println!(
        "keys: {n}, rounds: {}, redis: {}, sets {}",
        a.rounds,
        remote.target(),
        if a.pace_us == 0 {
            "back to back".to_owned()
        } else {
            format!("one every {} µs", a.pace_us)
        }
    );
    println!();
    println!("| operation | p50 | p99 | mean |");
    println!("| --- | --- | --- | --- |");
    for (name, s) in [
        ("get: local Store (for reference)", &mut g_store),
        ("get: Tiered, local hit", &mut g_tier),
        ("get: RedisStore (loopback)", &mut g_remote),
        ("get: plain GET + JSON decode (loopback)", &mut g_plain),
        ("set: local Store, Periodic", &mut set_local),
        ("set: Tiered, Periodic local", &mut set_tier),
        (
            "set: Tiered, Redis unreachable (shipper asleep)",
            &mut set_offline,
        ),
    ] {
        let (p50, p99) = (s.pct(0.5), s.pct(0.99));
        println!("| {name} | {} | {} | {} |", us(p50), us(p99), us(s.mean()));
    }
    println!();
    println!(
        "| ratio | value |\n| --- | --- |\n| RedisStore get p50 / local hit p50 | {:.0}x |\n| plain GET p50 / local hit p50 | {:.0}x |\n| Tiered set p50 / local set p50 | {:+.1}% |\n| median of the rounds' Tiered set p50 / local set p50 ({} rounds) | {:+.1}% |",
        lr.as_nanos() as f64 / lt.as_nanos().max(1) as f64,
        lp.as_nanos() as f64 / lt.as_nanos().max(1) as f64,
        (st.as_nanos() as f64 / sl.as_nanos().max(1) as f64 - 1.0) * 100.0,
        round_ratios.len(),
        (median_ratio - 1.0) * 100.0
    );
    println!();
    println!(
        "CPU per set over the set rounds (three loops and the shipping): Redis {redis_per_set}, this process \
         {own_per_set:.2} µs"
    );
    println!();
    println!(
        "| after a set on one tier (20 sets) | p50 | max |\n| --- | --- | --- |\n| in Redis (shipped) | {:.2} ms | {:.2} ms |\n| seen by another tier (fresh_for {} ms) | {:.2} ms | {:.2} ms |",
        ship.pct(0.5).as_secs_f64() * 1e3,
        ship.pct(1.0).as_secs_f64() * 1e3,
        fresh_for.as_millis(),
        visible.pct(0.5).as_secs_f64() * 1e3,
        visible.pct(1.0).as_secs_f64() * 1e3,
    );
    // Fleet throughput: four tiers on four directories (four servers sharing this Redis) against four servers
    // that call Redis for everything (`RedisStore`), the same traffic, one after the other.
    let fleet_keys = 2_000;
    let tiers: Vec<Tiered> = (0..4)
        .map(|i| {
            Tiered::open_with(
                dirs.path().join(format!("fleet-{i}")),
                config.clone(),
                TierOptions::default()
                    .local(periodic.clone())
                    .fresh_for(Duration::from_secs(5)),
            )
            .unwrap_or_else(|e| fail(&format!("open tier: {e}")))
        })
        .collect();
    let direct: Vec<RedisStore> = (0..4)
        .map(|_| RedisStore::connect(config.clone()).unwrap_or_else(|e| fail(&e.to_string())))
        .collect();
    let as_servers = |v: &[&dyn UserStorageService]| fleet_throughput(v, fleet_keys, 3.0);
    let tier_refs: Vec<&dyn UserStorageService> =
        tiers.iter().map(|t| t as &dyn UserStorageService).collect();
    let direct_refs: Vec<&dyn UserStorageService> = direct
        .iter()
        .map(|r| r as &dyn UserStorageService)
        .collect();
    let tiered_rate = as_servers(&tier_refs);
    for t in &tiers {
        t.flush(Duration::from_secs(60))
            .unwrap_or_else(|e| fail(&e.to_string()));
    }
    let direct_rate = as_servers(&direct_refs);
    println!();
    println!(
        "| fleet: 4 servers, SDK traffic over {fleet_keys} users, 3 s each | calls/s |\n| --- | --- |\n| 4 Tiered (local + Redis) | {tiered_rate:.0} |\n| 4 RedisStore (Redis only) | {direct_rate:.0} |\n| Tiered / RedisStore | {:.1}x |",
        tiered_rate / direct_rate.max(1.0)
    );

    let stats = tier.stats();
    println!();
    println!(
        "tier stats: shipped {}, outbox {}, redis errors {}, hit ratio {:.3}",
        stats.shipped,
        stats.outbox_depth,
        stats.redis_errors,
        stats.hit_ratio()
    );
}
