//! `RedisStore` against a real `redis-server`: VWO's helpers' keys and values byte for byte, the fleet rule under
//! concurrent writers, and bad input.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ussdb::{
    BackendErrorKind, CampaignUserMap, Error, RedisConfig, RedisStore, Tiered, UserStorageService,
};

use super::goal_set;
use super::servers::{RedisServer, free_port};
use crate::common::{Rng, map, tempdir};

fn raw_get(con: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(con).expect("GET")
}

fn raw_set(con: &mut redis::Connection, key: &str, value: &str) {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query::<()>(con)
        .expect("SET");
}

fn kind(e: &Error) -> BackendErrorKind {
    e.backend_kind()
        .unwrap_or_else(|| panic!("not a backend error: {e}"))
}

#[test]
fn vwo_helpers_keys_and_values_byte_for_byte() {
    let server = RedisServer::start();
    let store = RedisStore::connect(RedisConfig::new(server.url())).expect("connect");
    let mut raw = server.raw();

    // Written as VWO's Node SDK hands a map to its Redis helper, which stores JSON.stringify of it under
    // `campaignKey:userId` with a plain SET.
    store
        .set(&map("user-1", "checkout", "Control", None))
        .expect("set");
    assert_eq!(
        raw_get(&mut raw, "checkout:user-1").as_deref(),
        Some(r#"{"userId":"user-1","variationName":"Control","campaignKey":"checkout"}"#)
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg("checkout:user-1")
        .query(&mut raw)
        .expect("PTTL");
    assert_eq!(ttl, -1, "no expiry by default");
    // A later set with another variation keeps the first; its goal is added.
    store
        .set(&map("user-1", "checkout", "Variation-2", Some("purchase")))
        .expect("set");
    assert_eq!(
        raw_get(&mut raw, "checkout:user-1").as_deref(),
        Some(
            r#"{"userId":"user-1","variationName":"Control","campaignKey":"checkout","goalIdentifier":"purchase"}"#
        )
    );

    // What the helpers wrote is read as it is: the Node helper's compact JSON with metaData, the Python helper's
    // json.dumps (spaces after separators, null goals).
    let node = r#"{"userId":"user-2","variationName":"Variation-1","campaignKey":"home","goalIdentifier":"_vwo_signup","metaData":{"plan":"pro","n":12345678901234567890}}"#;
    raw_set(&mut raw, "home:user-2", node);
    let python = r#"{"userId": "user-3", "campaignKey": "home", "variationName": "Control", "goalIdentifier": null}"#;
    raw_set(&mut raw, "home:user-3", python);
    assert_eq!(
        store.get("user-2", "home").expect("get"),
        Some(map("user-2", "home", "Variation-1", Some("_vwo_signup")))
    );
    assert_eq!(
        store.get("user-3", "home").expect("get"),
        Some(map("user-3", "home", "Control", None))
    );
    // A set that adds nothing writes nothing: the Python helper's bytes stay.
    store
        .set(&map("user-3", "home", "Variation-1", None))
        .expect("set");
    assert_eq!(raw_get(&mut raw, "home:user-3").as_deref(), Some(python));

    // Fields this store does not know (metaData, a newer writer's) survive a merge byte for byte.
    store
        .set(&map("user-2", "home", "Variation-1", Some("buy")))
        .expect("set");
    assert_eq!(
        raw_get(&mut raw, "home:user-2").as_deref(),
        Some(
            r#"{"userId":"user-2","variationName":"Variation-1","campaignKey":"home","goalIdentifier":"_vwo_signup_vwo_buy","metaData":{"plan":"pro","n":12345678901234567890}}"#
        )
    );
    let newer = r#"{"userId":"user-4","variationName":"Control","campaignKey":"home","assignedAt":"2024-05-01T10:00:00Z","schema":2}"#;
    raw_set(&mut raw, "home:user-4", newer);
    store
        .set(&map("user-4", "home", "Control", Some("g1")))
        .expect("set");
    assert_eq!(
        raw_get(&mut raw, "home:user-4").as_deref(),
        Some(
            r#"{"userId":"user-4","variationName":"Control","campaignKey":"home","assignedAt":"2024-05-01T10:00:00Z","schema":2,"goalIdentifier":"g1"}"#
        )
    );

    // A key prefix and a time to live, when asked for.
    let prefixed = RedisStore::connect(
        RedisConfig::new(server.url())
            .key_prefix("vwo:")
            .ttl(Some(Duration::from_secs(3600))),
    )
    .expect("connect");
    prefixed
        .set(&map("user-5", "pricing", "Control", None))
        .expect("set");
    assert!(raw_get(&mut raw, "pricing:user-5").is_none());
    assert!(raw_get(&mut raw, "vwo:pricing:user-5").is_some());
    let ttl: i64 = redis::cmd("PTTL")
        .arg("vwo:pricing:user-5")
        .query(&mut raw)
        .expect("PTTL");
    assert!((1..=3_600_000).contains(&ttl), "{ttl}");

    // Scanning: the prefixed store sees its own key only; the unprefixed one sees every mapping, and reports
    // the prefixed value, which belongs under another key, as an error naming it.
    let mine: Vec<_> = prefixed.scan("*").collect::<Result<_, _>>().expect("scan");
    assert_eq!(mine, vec![map("user-5", "pricing", "Control", None)]);
    let mut users = BTreeSet::new();
    let mut errors = Vec::new();
    for item in store.scan("*") {
        match item {
            Ok(m) => {
                users.insert(m.user_id);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    assert_eq!(
        users,
        ["user-1", "user-2", "user-3", "user-4"]
            .map(str::to_owned)
            .into()
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("vwo:pricing:user-5"), "{errors:?}");
    let home: Vec<_> = store
        .scan("home:*")
        .collect::<Result<_, _>>()
        .expect("scan");
    assert_eq!(home.len(), 3);
}

#[test]
fn concurrent_writers_agree_on_the_first_assignment_and_lose_no_goal() {
    let server = RedisServer::start();
    let mut rng = Rng::seeded("concurrent_writers_agree_on_the_first_assignment_and_lose_no_goal");
    const WRITERS: usize = 4;
    const USERS: usize = 24;
    let seeds: Vec<u64> = (0..WRITERS).map(|_| rng.next()).collect();
    let handles: Vec<_> = seeds
        .into_iter()
        .enumerate()
        .map(|(w, seed)| {
            let url = server.url();
            std::thread::spawn(move || {
                // One connection per writer, as on separate servers.
                let store = RedisStore::connect(RedisConfig::new(url)).expect("connect");
                let mut rng = Rng::from_seed(seed);
                let mut seen: Vec<(usize, CampaignUserMap, String)> = Vec::new();
                for round in 0..6 {
                    for _ in 0..USERS {
                        let u = rng.below(USERS as u64) as usize;
                        let goal = format!("w{w}-r{round}");
                        let answer = store
                            .set_merged(&map(&format!("u{u}"), "c", &format!("V{w}"), Some(&goal)))
                            .expect("merge");
                        seen.push((u, answer, goal));
                    }
                }
                seen
            })
        })
        .collect();
    let mut answers: BTreeMap<usize, Vec<CampaignUserMap>> = BTreeMap::new();
    let mut goals: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for h in handles {
        for (u, answer, goal) in h.join().expect("writer") {
            assert!(
                answer.has_goal(&goal),
                "a merge's answer lacks its own goal"
            );
            goals.entry(u).or_default().insert(goal);
            answers.entry(u).or_default().push(answer);
        }
    }
    let store = RedisStore::connect(RedisConfig::new(server.url())).expect("connect");
    for (u, answers) in answers {
        let stored = store
            .get(&format!("u{u}"), "c")
            .expect("get")
            .expect("stored");
        for a in &answers {
            assert_eq!(
                a.variation_name, stored.variation_name,
                "u{u}: every writer got the winner"
            );
        }
        assert_eq!(
            goal_set(&stored),
            goals[&u],
            "u{u}: the union of every goal"
        );
    }
}

#[test]
fn bad_input_gets_typed_errors_without_passwords() {
    // Nothing listens: unavailable, eagerly or on first use, naming the server but not the password.
    let port = free_port();
    let url = format!("redis://:hunter2@127.0.0.1:{port}");
    let e = RedisStore::connect(RedisConfig::new(&url)).expect_err("nothing listens");
    assert_eq!(kind(&e), BackendErrorKind::Unavailable, "{e}");
    let text = format!("{e} {e:?}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    let lazy = RedisStore::connect_lazy(RedisConfig::new(&url)).expect("lazy");
    assert_eq!(
        kind(&lazy.get("u", "c").expect_err("down")),
        BackendErrorKind::Unavailable
    );
    assert!(!format!("{lazy:?}").contains("hunter2"));

    // Not a redis URL.
    let e = RedisStore::connect(RedisConfig::new("http://:pw@example:1")).expect_err("bad URL");
    assert_eq!(kind(&e), BackendErrorKind::Config);
    assert!(!e.to_string().contains(":pw@"), "{e}");

    // A server with a password: a wrong one and none are refused, naming neither.
    let secured = RedisServer::with_password("s3cret-pw");
    let wrong = format!("redis://:wrong-pw@127.0.0.1:{}", secured.port);
    let e = RedisStore::connect(RedisConfig::new(&wrong)).expect_err("wrong password");
    assert_eq!(kind(&e), BackendErrorKind::Refused, "{e}");
    let text = format!("{e} {e:?}");
    assert!(
        !text.contains("wrong-pw") && !text.contains("s3cret-pw"),
        "{text}"
    );
    let none = format!("redis://127.0.0.1:{}", secured.port);
    let e = RedisStore::connect(RedisConfig::new(&none)).expect_err("no password");
    assert_eq!(kind(&e), BackendErrorKind::Refused, "{e}");
    let ok = RedisStore::connect(RedisConfig::new(secured.url())).expect("right password");
    ok.set(&map("u", "c", "v", None)).expect("set");
    assert_eq!(
        ok.get("u", "c").expect("get"),
        Some(map("u", "c", "v", None))
    );

    // Bad data under a key: not JSON, not a string, or another mapping's value.
    let server = RedisServer::start();
    let store = RedisStore::connect(RedisConfig::new(server.url())).expect("connect");
    let mut raw = server.raw();
    raw_set(&mut raw, "camp:u1", "not json at all");
    for e in [
        store.get("u1", "camp").expect_err("not JSON"),
        store
            .set(&map("u1", "camp", "v", None))
            .expect_err("not JSON"),
    ] {
        assert_eq!(kind(&e), BackendErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("camp:u1"), "{e}");
    }
    assert_eq!(
        raw_get(&mut raw, "camp:u1").as_deref(),
        Some("not json at all")
    );
    redis::cmd("HSET")
        .arg("camp:u2")
        .arg("f")
        .arg("v")
        .query::<()>(&mut raw)
        .expect("HSET");
    assert_eq!(
        kind(&store.get("u2", "camp").expect_err("a hash")),
        BackendErrorKind::InvalidData
    );
    store.set(&map("b:c", "a", "v", None)).expect("set");
    let e = store.get("c", "a:b").expect_err("shares the key a:b:c");
    assert_eq!(kind(&e), BackendErrorKind::InvalidData, "{e}");
    assert!(store.set(&map("c", "a:b", "w", None)).is_err());
    assert_eq!(
        store.get("b:c", "a").expect("get"),
        Some(map("b:c", "a", "v", None))
    );
    assert!(matches!(
        store.get("", "camp"),
        Err(Error::InvalidKey {
            field: "user_id",
            ..
        })
    ));

    // A tier with no local copy passes the bad value's error on rather than guessing.
    let dir = tempdir();
    let tier = Tiered::open(dir.path(), RedisConfig::new(server.url())).expect("open tier");
    let e = tier.get("u1", "camp").expect_err("not JSON");
    assert_eq!(kind(&e), BackendErrorKind::InvalidData, "{e}");
    assert!(matches!(
        tier.set(&map("\0u", "c", "v", None)),
        Err(Error::InvalidKey { .. })
    ));
    let dyn_tier: &dyn UserStorageService = &tier;
    assert_eq!(dyn_tier.get("nobody", "camp").expect("get"), None);
}
