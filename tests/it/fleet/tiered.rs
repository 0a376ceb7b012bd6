//! `Tiered` stores as the servers of a fleet, against real Redis: random SDK traffic checked against the fleet
//! rule, Redis killed and restarted mid-run, a Cluster master killed and restarted, and a tier killed with a
//! non-empty outbox.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ussdb::{
    Durability, Options, RedisConfig, RedisStore, TierOptions, Tiered, UserStorageService,
};

use super::goal_set;
use super::servers::{RedisCluster, RedisServer, free_port};
use crate::common::{Rng, map, tempdir};

const FLUSH: Duration = Duration::from_secs(30);

fn options() -> TierOptions {
    TierOptions::default()
        .local(Options::default().durability(Durability::Never))
        .fresh_for(Duration::from_millis(30))
        .retry_max(Duration::from_millis(200))
}

fn open(dir: &std::path::Path, config: &RedisConfig) -> Tiered {
    Tiered::open_with(dir, config.clone(), options()).expect("open tier")
}

/// Polls `check` until it holds, for at most ten seconds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

type Key = (String, String);

/// What one server saw and did, in order.
#[derive(Default)]
struct Log {
    /// Variations this server assigned (its `get` had found nothing).
    assigned: Vec<(Key, String)>,
    /// Every variation its `get`s returned, in order, per mapping.
    observed: BTreeMap<Key, Vec<String>>,
    /// Goals it tracked whose `set` returned, in order, per mapping.
    tracked: BTreeMap<Key, Vec<String>>,
}

/// One server's SDK traffic: `activate` (get; assign a random variation when there is none) and `track` (get;
/// add a goal to an existing assignment). Goals are named per server, `s{server}-{n}`, so each server's order is
/// visible in the final goal lists.
fn sdk_traffic(
    tier: &Tiered,
    server: usize,
    seed: u64,
    ops: usize,
    progress: &Progress,
    users: u64,
) -> Log {
    let mut rng = Rng::from_seed(seed);
    let mut log = Log::default();
    let mut goal_no = 0;
    for op in 0..ops {
        for &(at, phase) in &progress.gates {
            if op == at {
                wait_until("the next phase", || {
                    progress.phase.load(Ordering::SeqCst) >= phase
                });
            }
        }
        let key = (
            format!("user-{}", rng.below(users)),
            format!("camp-{}", rng.below(2)),
        );
        let got = tier.get(&key.0, &key.1).expect("get");
        if let Some(m) = &got {
            log.observed
                .entry(key.clone())
                .or_default()
                .push(m.variation_name.clone());
        }
        match got {
            None => {
                let variation = ["Control", "Variation-1", "Variation-2"][rng.below(3) as usize];
                tier.set(&map(&key.0, &key.1, variation, None))
                    .expect("set");
                log.assigned.push((key, variation.to_owned()));
            }
            Some(mut m) if rng.below(2) == 0 => {
                let goal = format!("s{server}-{goal_no}");
                goal_no += 1;
                m.add_goal(&goal);
                tier.set(&m).expect("set");
                log.tracked.entry(key).or_default().push(goal);
            }
            Some(_) => {}
        }
        progress.done.fetch_add(1, Ordering::SeqCst);
    }
    log
}

/// How far the servers' traffic is, and the gates it waits at: at op `at`, each server waits until `phase` is
/// reached, so a test can make sure some traffic happens in each phase (before, during and after an outage).
struct Progress {
    done: AtomicUsize,
    phase: AtomicUsize,
    gates: Vec<(usize, usize)>,
}

/// Waits until `check` holds, failing after a minute.
fn wait_until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "waited a minute for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs four servers' traffic at once; `during` runs on the calling thread meanwhile, given the count of ops done.
fn run_fleet(
    tiers: &[Arc<Tiered>],
    rng: &mut Rng,
    ops: usize,
    users: u64,
    gates: Vec<(usize, usize)>,
    during: impl FnOnce(&Progress),
) -> Vec<Log> {
    let progress = Arc::new(Progress {
        done: AtomicUsize::new(0),
        phase: AtomicUsize::new(0),
        gates,
    });
    let handles: Vec<_> = tiers
        .iter()
        .enumerate()
        .map(|(s, tier)| {
            let (tier, progress, seed) = (Arc::clone(tier), Arc::clone(&progress), rng.next());
            std::thread::spawn(move || sdk_traffic(&tier, s, seed, ops, &progress, users))
        })
        .collect();
    during(&progress);
    handles
        .into_iter()
        .map(|h| h.join().expect("server thread"))
        .collect()
}

/// After every tier has flushed: Redis holds, for each mapping, one of the variations assigned to it and every
/// acknowledged goal, each server's goals in the order it tracked them; and every server now answers exactly what
/// Redis holds.
fn check_fleet(tiers: &[Arc<Tiered>], logs: &[Log], redis: &RedisStore) {
    for tier in tiers {
        tier.flush(FLUSH).expect("flush");
    }
    let mut assigned: BTreeMap<&Key, BTreeSet<&str>> = BTreeMap::new();
    let mut goals: BTreeMap<&Key, BTreeSet<&str>> = BTreeMap::new();
    for log in logs {
        for (key, v) in &log.assigned {
            assigned.entry(key).or_default().insert(v);
        }
        for (key, list) in &log.tracked {
            goals
                .entry(key)
                .or_default()
                .extend(list.iter().map(String::as_str));
        }
    }
    assert!(!assigned.is_empty());
    // Copies older than fresh_for are checked against Redis on the next get.
    std::thread::sleep(Duration::from_millis(60));
    for (key, variations) in &assigned {
        let stored = redis
            .get(&key.0, &key.1)
            .expect("redis get")
            .unwrap_or_else(|| panic!("{key:?} was assigned but is not in Redis"));
        assert!(
            variations.contains(stored.variation_name.as_str()),
            "{key:?}: Redis holds {:?}, assigned were {variations:?}",
            stored.variation_name
        );
        let want: BTreeSet<String> = goals
            .get(key)
            .map(|g| g.iter().map(|s| (*s).to_owned()).collect())
            .unwrap_or_default();
        assert_eq!(
            goal_set(&stored),
            want,
            "{key:?}: goals are the union of the tracked ones"
        );
        let in_redis: Vec<&str> = stored.goals().collect();
        for (s, log) in logs.iter().enumerate() {
            if let Some(mine) = log.tracked.get(*key) {
                let order: Vec<&str> = in_redis
                    .iter()
                    .copied()
                    .filter(|g| g.starts_with(&format!("s{s}-")))
                    .collect();
                assert_eq!(order, *mine, "{key:?}: server {s}'s goals keep their order");
            }
        }
        for (s, tier) in tiers.iter().enumerate() {
            let here = tier.get(&key.0, &key.1).expect("get").expect("known");
            assert_eq!(
                here.variation_name, stored.variation_name,
                "{key:?} on server {s}"
            );
            assert_eq!(goal_set(&here), goal_set(&stored), "{key:?} on server {s}");
        }
    }
    for key in goals.keys() {
        assert!(
            assigned.contains_key(key),
            "{key:?} tracked but never assigned"
        );
    }
}

#[test]
fn four_servers_under_random_sdk_traffic_keep_the_fleet_rule() {
    let server = RedisServer::start();
    let config = RedisConfig::new(server.url());
    let mut rng = Rng::seeded("four_servers_under_random_sdk_traffic_keep_the_fleet_rule");
    let dirs: Vec<_> = (0..4).map(|_| tempdir()).collect();
    let tiers: Vec<Arc<Tiered>> = dirs
        .iter()
        .map(|d| Arc::new(open(d.path(), &config)))
        .collect();
    let logs = run_fleet(&tiers, &mut rng, 400, 12, Vec::new(), |_| {});
    let redis = RedisStore::connect(config).expect("connect");
    check_fleet(&tiers, &logs, &redis);
    // Stickiness per server: what a server's gets return for a mapping changes at most once, from the variation
    // it assigned itself to the one that won in Redis.
    for (s, log) in logs.iter().enumerate() {
        for (key, seen) in &log.observed {
            let changes = seen.windows(2).filter(|w| w[0] != w[1]).count();
            let final_variation = redis
                .get(&key.0, &key.1)
                .expect("get")
                .expect("stored")
                .variation_name;
            if changes > 0 {
                assert_eq!(changes, 1, "server {s} {key:?} saw {seen:?}");
                assert!(
                    log.assigned.iter().any(|(k, v)| k == key && *v == seen[0]),
                    "server {s} {key:?}: a change without its own assignment: {seen:?}"
                );
                assert_eq!(seen.last(), Some(&final_variation), "server {s} {key:?}");
            }
        }
    }
    for tier in &tiers {
        let stats = tier.stats();
        assert_eq!(stats.outbox_depth, 0);
        assert!(stats.shipped > 0 && stats.local_hits > 0, "{stats:?}");
    }
}

#[test]
fn redis_sigkilled_mid_run_loses_no_acknowledged_set() {
    let mut server = RedisServer::start();
    let config = RedisConfig::new(server.url());
    let mut rng = Rng::seeded("redis_sigkilled_mid_run_loses_no_acknowledged_set");
    let dirs: Vec<_> = (0..4).map(|_| tempdir()).collect();
    let tiers: Vec<Arc<Tiered>> = dirs
        .iter()
        .map(|d| Arc::new(open(d.path(), &config)))
        .collect();
    const OPS: usize = 500;
    // Redis is killed while the servers run; each server then does a quarter of its traffic with Redis down
    // (between its gates at 1/2 and 3/4), and the rest after the restart.
    let gates = vec![(OPS / 2, 1), (OPS * 3 / 4, 2)];
    let logs = run_fleet(&tiers, &mut rng, OPS, 16, gates, |progress| {
        wait_until("a quarter of the traffic", || {
            progress.done.load(Ordering::SeqCst) >= OPS
        });
        server.kill();
        progress.phase.store(1, Ordering::SeqCst);
        wait_until("the traffic during the outage", || {
            progress.done.load(Ordering::SeqCst) >= tiers.len() * OPS * 3 / 4
        });
        assert!(
            tiers.iter().any(|t| t.stats().outbox_depth > 0),
            "sets went on while Redis was down"
        );
        server.restart();
        progress.phase.store(2, Ordering::SeqCst);
    });
    let redis = RedisStore::connect(config).expect("connect");
    check_fleet(&tiers, &logs, &redis);
    let errors: u64 = tiers.iter().map(|t| t.stats().redis_errors).sum();
    assert!(errors > 0, "the outage was noticed");
}

#[test]
fn a_losing_server_takes_the_winner_and_an_outage_is_ridden_out() {
    let mut server = RedisServer::start();
    let config = RedisConfig::new(server.url());
    let (dir_a, dir_b) = (tempdir(), tempdir());
    let a = open(dir_a.path(), &config);
    let b = open(dir_b.path(), &config);

    a.set(&map("u1", "c", "Control", None)).expect("set");
    a.flush(FLUSH).expect("flush");
    // B never asked Redis; its own assignment answers until it is shipped, then the winner does.
    b.set(&map("u1", "c", "Variation-1", Some("b-goal")))
        .expect("set");
    b.flush(FLUSH).expect("flush");
    let on_b = b.get("u1", "c").expect("get").expect("known");
    assert_eq!(on_b.variation_name, "Control");
    assert!(on_b.has_goal("b-goal"));
    // A goal tracked on A reaches B once B's copy is older than fresh_for; B's goal is kept too.
    let mut on_a = a.get("u1", "c").expect("get").expect("known");
    on_a.add_goal("a-goal");
    a.set(&on_a).expect("set");
    a.flush(FLUSH).expect("flush");
    eventually("B sees A's goal", || {
        b.get("u1", "c")
            .expect("get")
            .is_some_and(|m| m.has_goal("a-goal") && m.has_goal("b-goal"))
    });
    let stats = b.stats();
    assert!(
        stats.local_hits > 0 && stats.remote_hits > 0 && stats.shipped > 0,
        "{stats:?}"
    );
    assert!(stats.hit_ratio() > 0.0 && stats.hit_ratio() <= 1.0);

    // Redis down: sets succeed, known mappings answer locally, unknown ones are None.
    server.kill();
    a.set(&map("u2", "c", "Control", Some("g")))
        .expect("set while Redis is down");
    assert_eq!(
        a.get("u2", "c").expect("get"),
        Some(map("u2", "c", "Control", Some("g")))
    );
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(
        a.get("u1", "c").expect("get").map(|m| m.variation_name),
        Some("Control".into())
    );
    assert_eq!(a.get("nobody", "c").expect("get"), None);
    eventually("A notices Redis is down", || !a.stats().redis_available);
    let stats = a.stats();
    assert_eq!(stats.outbox_depth, 1, "{stats:?}");
    assert!(
        stats.replay_lag.is_some() && stats.degraded > 0,
        "{stats:?}"
    );
    assert!(a.flush(Duration::from_millis(100)).is_err());
    // Dropped without flushing, Redis still down; reopened after Redis is back, it ships what was queued.
    drop(a);
    server.restart();
    let a = open(dir_a.path(), &config);
    assert_eq!(a.stats().outbox_depth, 1);
    a.flush(FLUSH).expect("flush");
    let redis = RedisStore::connect(config.clone()).expect("connect");
    assert_eq!(
        redis.get("u2", "c").expect("get"),
        Some(map("u2", "c", "Control", Some("g")))
    );
    // Once shipped, nothing waits after a reopen either: the watermark moved past every mark.
    drop(a);
    let a = open(dir_a.path(), &config);
    assert_eq!(a.stats().outbox_depth, 0);
    assert_eq!(
        a.get("u2", "c").expect("get"),
        Some(map("u2", "c", "Control", Some("g")))
    );
}

const CHILD_DIR: &str = "USSDB_FLEET_CHILD_DIR";
const CHILD_REDIS: &str = "USSDB_FLEET_CHILD_REDIS";
/// The child's mappings: goal `g{i}` of set `i` goes to user `u{i % KEYS}`.
const KEYS: usize = 40;

#[test]
#[ignore = "the child process of tier_killed_with_a_non_empty_outbox_ships_it_after_reopening"]
fn tier_crash_child() {
    let (Ok(dir), Ok(url)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_REDIS)) else {
        return;
    };
    let tier = Tiered::open_with(
        &dir,
        RedisConfig::new(url),
        options()
            .local(Options::default().durability(Durability::Periodic(Duration::from_millis(50)))),
    )
    .expect("child: open");
    let mut out = std::io::stdout();
    for i in 0..1_000_000usize {
        let user = format!("u{}", i % KEYS);
        let mut m = tier
            .get(&user, "camp")
            .expect("child: get")
            .unwrap_or_else(|| map(&user, "camp", "Control", None));
        m.add_goal(&format!("g{i}"));
        tier.set(&m).expect("child: set");
        writeln!(out, "ack {i}").expect("child: stdout");
        out.flush().expect("child: stdout");
    }
}

#[test]
fn tier_killed_with_a_non_empty_outbox_ships_it_after_reopening() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let dir = tempdir();
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "fleet::tiered::tier_crash_child",
            "--ignored",
            "--nocapture",
            "-q",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir.path())
        .env(CHILD_REDIS, &url)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the tier child");
    let mut acked = 0usize;
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    while acked < 300 {
        let line = lines
            .next()
            .expect("child ended early")
            .expect("child output");
        if let Some(i) = line.strip_prefix("ack ") {
            acked = i.parse::<usize>().expect("ack number") + 1;
        }
    }
    child.kill().expect("SIGKILL the child");
    let _ = child.wait();
    // Acknowledgements still in the pipe count too.
    for line in lines {
        if let Some(i) = line.ok().as_deref().and_then(|l| l.strip_prefix("ack ")) {
            acked = acked.max(i.parse::<usize>().expect("ack number") + 1);
        }
    }

    // Redis appears only now, where the child was told to find it.
    let _server = RedisServer::start_on(port, None, false);
    let config = RedisConfig::new(&url);
    let tier = open(dir.path(), &config);
    assert_eq!(
        tier.stats().outbox_depth,
        KEYS as u64,
        "every mapping waits"
    );
    tier.flush(FLUSH).expect("flush");
    let redis = RedisStore::connect(config).expect("connect");
    for k in 0..KEYS {
        let stored = redis
            .get(&format!("u{k}"), "camp")
            .expect("get")
            .expect("shipped");
        let goals: Vec<usize> = stored
            .goals()
            .map(|g| g.trim_start_matches('g').parse().expect("goal number"))
            .collect();
        let want: Vec<usize> = (k..acked).step_by(KEYS).collect();
        // Every acknowledged goal, in order; at most one more that was written but not yet acknowledged.
        assert_eq!(goals.get(..want.len()), Some(want.as_slice()), "u{k}");
        assert!(goals.len() <= want.len() + 1, "u{k}: {goals:?}");
    }
}

#[test]
fn cluster_master_killed_and_restarted() {
    let mut cluster = RedisCluster::start();
    let config = RedisConfig::cluster(cluster.urls());
    let redis = RedisStore::connect(config.clone()).expect("connect to the cluster");
    for i in 0..100 {
        redis
            .set(&map(
                &format!("direct-{i}"),
                "camp",
                "Control",
                Some(&format!("g{i}")),
            ))
            .expect("set");
    }
    for i in 0..100 {
        assert_eq!(
            redis.get(&format!("direct-{i}"), "camp").expect("get"),
            Some(map(
                &format!("direct-{i}"),
                "camp",
                "Control",
                Some(&format!("g{i}"))
            ))
        );
    }
    // The keys are spread over every master, and a scan walks them all.
    let scanned: BTreeSet<String> = redis.scan("*").map(|m| m.expect("scan").user_id).collect();
    assert_eq!(scanned.len(), 100);

    let (dir_a, dir_b) = (tempdir(), tempdir());
    let tiers = [open(dir_a.path(), &config), open(dir_b.path(), &config)];
    let write = |from: usize, to: usize| {
        for i in from..to {
            let tier = &tiers[i % 2];
            tier.set(&map(
                &format!("tier-{i}"),
                "camp",
                &format!("V{}", i % 2),
                None,
            ))
            .expect("a set succeeds whatever Redis does");
        }
    };
    write(0, 100);
    for t in &tiers {
        t.flush(FLUSH).expect("flush");
    }
    cluster.nodes[1].kill();
    write(100, 200);
    std::thread::sleep(Duration::from_millis(300));
    write(200, 300);
    cluster.nodes[1].restart();
    cluster.wait_ok();
    for t in &tiers {
        t.flush(FLUSH).expect("flush after the master is back");
    }
    let fresh = RedisStore::connect(config).expect("connect");
    for i in 0..300 {
        assert_eq!(
            fresh.get(&format!("tier-{i}"), "camp").expect("get"),
            Some(map(
                &format!("tier-{i}"),
                "camp",
                &format!("V{}", i % 2),
                None
            )),
            "tier-{i}"
        );
    }
    for i in 0..100 {
        assert!(
            fresh
                .get(&format!("direct-{i}"), "camp")
                .expect("get")
                .is_some()
        );
    }
    let dyn_tier: &dyn UserStorageService = &tiers[0];
    assert!(dyn_tier.get("tier-1", "camp").expect("get").is_some());
}

#[test]
fn the_replay_lag_survives_a_restart() {
    // A port nothing listens on: every shipment fails, and the mappings wait.
    let config = RedisConfig::new(format!("redis://127.0.0.1:{}", free_port()));
    let dir = tempdir();
    let tier = open(dir.path(), &config);
    assert_eq!(tier.stats().replay_lag, None);
    let first_set = Instant::now();
    for i in 0..3 {
        tier.set(&map(&format!("u{i}"), "c", "V", None))
            .expect("a set succeeds while Redis is away");
    }
    // The shipper records, in the watermark record, since when the oldest mapping waits.
    eventually("the watermark records the oldest mapping's time", || {
        tier.local()
            .get("\0ussdb", "outbox-watermark")
            .ok()
            .flatten()
            .is_some_and(|w| w.goal_identifier.is_some())
    });
    drop(tier);
    std::thread::sleep(Duration::from_millis(300));
    let reopened = open(dir.path(), &config);
    let stats = reopened.stats();
    assert_eq!(stats.outbox_depth, 3);
    let lag = stats.replay_lag.expect("mappings wait");
    // Counted from the first set before the restart, not from the reopen (wall-clock milliseconds: 10 ms slack).
    assert!(
        lag + Duration::from_millis(10)
            >= first_set
                .elapsed()
                .saturating_sub(Duration::from_millis(50))
            && lag >= Duration::from_millis(300),
        "replay lag {lag:?}, first set {:?} ago",
        first_set.elapsed()
    );
}

#[test]
fn immediate_durability_sets_from_many_threads_all_reach_redis() {
    // In `Immediate` mode the shipper waits for the fsync of what it ships; writers on several threads race it.
    let server = RedisServer::start();
    let config = RedisConfig::new(server.url());
    let dir = tempdir();
    let tier = Arc::new(
        Tiered::open_with(
            dir.path(),
            config.clone(),
            options().local(Options::default().durability(Durability::Immediate)),
        )
        .expect("open tier"),
    );
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let tier = Arc::clone(&tier);
            std::thread::spawn(move || {
                for i in 0..50 {
                    let user = format!("u{}", i % 10);
                    tier.set(&map(
                        &user,
                        "c",
                        &format!("V{t}"),
                        Some(&format!("g{t}-{i}")),
                    ))
                    .expect("set");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    tier.flush(FLUSH).expect("flush");
    assert_eq!(tier.stats().outbox_depth, 0);
    let redis = RedisStore::connect(config).expect("connect");
    for u in 0..10 {
        let user = format!("u{u}");
        let local = tier.local().get(&user, "c").expect("get").expect("local");
        let remote = redis.get(&user, "c").expect("get").expect("shipped");
        // One variation won everywhere, and every goal tracked on this user is in Redis and locally.
        assert_eq!(local.variation_name, remote.variation_name, "{user}");
        for t in 0..4 {
            for i in (u..50).step_by(10) {
                let goal = format!("g{t}-{i}");
                assert!(
                    remote.has_goal(&goal) && local.has_goal(&goal),
                    "{user}: {goal}"
                );
            }
        }
    }
}

#[test]
fn worker_directories_are_claimed_once_and_a_stopped_workers_outbox_ships_from_the_next() {
    // Redis comes up only later: what the first workers set waits in their outboxes.
    let port = free_port();
    let config = RedisConfig::new(format!("redis://127.0.0.1:{port}"));
    let base = tempdir();
    let worker = || Tiered::open_worker(base.path(), config.clone(), options(), 3);
    let dir_of = |tier: &Tiered| {
        tier.local()
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .expect("a worker directory")
    };
    let first = worker().expect("first worker");
    let second = worker().expect("second worker");
    let third = worker().expect("third worker");
    assert_eq!(
        [dir_of(&first), dir_of(&second), dir_of(&third)],
        ["worker-0", "worker-1", "worker-2"]
    );
    let refused = worker().expect_err("every directory is taken");
    assert!(matches!(refused, ussdb::Error::Locked { .. }), "{refused}");

    second
        .set(&map("u1", "camp", "Variation-2", Some("g1")))
        .expect("set while Redis is down");
    drop(second);
    // The stopped worker's directory is the free one, and whoever takes it ships what it left.
    let _server = RedisServer::start_on(port, None, false);
    let next = worker().expect("a worker in the freed directory");
    assert_eq!(dir_of(&next), "worker-1");
    assert_eq!(next.stats().outbox_depth, 1, "the left change waits");
    next.flush(FLUSH).expect("flush");
    let redis = RedisStore::connect(config).expect("connect");
    let stored = redis.get("u1", "camp").expect("get").expect("shipped");
    assert_eq!(stored.variation_name, "Variation-2");
    assert!(stored.has_goal("g1"));
    // The other workers see it through Redis, as other servers would.
    eventually("the first worker sees it", || {
        first
            .get("u1", "camp")
            .ok()
            .flatten()
            .is_some_and(|m| m.variation_name == "Variation-2")
    });
}
