//! `RedisStore`: the VWO helpers' format, the first-wins merge, and bad input.

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::thread;

use ussdb::{
    BackendErrorKind, CampaignUserMap, Error, RedisConfig, RedisStore, UserStorageService,
};

use super::servers::{RedisServer as Server, free_port};

#[test]
fn keys_and_values_are_the_vwo_helpers_format_byte_for_byte() {
    let server = Server::start();
    let store = RedisStore::open(&server.url()).unwrap();
    let mut map = CampaignUserMap::new("user-1", "checkout", "Variation-1");
    map.add_goal("buy");
    store.set(&map).unwrap();
    assert_eq!(
        server.cli(&["GET", "checkout:user-1"]),
        // The Node SDK hands its helper {userId, variationName, campaignKey, goalIdentifier}, which it stores
        // as JSON.stringify of that object.
        r#"{"userId":"user-1","variationName":"Variation-1","campaignKey":"checkout","goalIdentifier":"buy"}"#
    );
    assert_eq!(
        server.cli(&["TTL", "checkout:user-1"]),
        "-1",
        "no TTL unless configured"
    );
    assert_eq!(store.get("user-1", "checkout").unwrap(), Some(map));
    assert_eq!(store.get("user-2", "checkout").unwrap(), None);

    // What a VWO helper wrote is read back.
    server.cli(&[
        "SET",
        "home:u9",
        r#"{"userId":"u9","campaignKey":"home","variationName":"Control"}"#,
    ]);
    assert_eq!(
        store.get("u9", "home").unwrap(),
        Some(CampaignUserMap::new("u9", "home", "Control"))
    );
}

#[test]
fn prefix_and_ttl_are_applied_when_configured() {
    let server = Server::start();
    let config = RedisConfig::new(server.url())
        .key_prefix("vwo:")
        .ttl(Some(std::time::Duration::from_secs(600)));
    let store = RedisStore::connect(config).unwrap();
    store.set(&CampaignUserMap::new("u", "c", "A")).unwrap();
    assert_eq!(server.cli(&["EXISTS", "vwo:c:u"]), "1");
    let ttl: u64 = server.cli(&["TTL", "vwo:c:u"]).parse().unwrap();
    assert!((1..=600).contains(&ttl), "ttl {ttl}");
}

#[test]
fn first_variation_wins_and_goals_union_under_a_race() {
    let server = Server::start();
    const USERS: usize = 200;
    let barrier = Arc::new(Barrier::new(2));
    let racers: Vec<_> = ["A", "B"]
        .into_iter()
        .map(|variation| {
            let (url, barrier) = (server.url(), Arc::clone(&barrier));
            thread::spawn(move || {
                let store = RedisStore::open(&url).unwrap();
                barrier.wait();
                (0..USERS)
                    .map(|i| {
                        let mut map = CampaignUserMap::new(format!("user-{i}"), "race", variation);
                        map.add_goal(&format!("goal-{variation}"));
                        map.add_goal("shared");
                        store.set_merged(&map).unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<Vec<CampaignUserMap>> =
        racers.into_iter().map(|r| r.join().unwrap()).collect();
    let store = RedisStore::open(&server.url()).unwrap();
    for (i, (told_a, told_b)) in results[0].iter().zip(&results[1]).enumerate() {
        let stored = store.get(&format!("user-{i}"), "race").unwrap().unwrap();
        // Both writers were told the same winner, and it is what is stored.
        assert_eq!(told_a.variation_name, stored.variation_name);
        assert_eq!(told_b.variation_name, stored.variation_name);
        let goals: BTreeSet<&str> = stored.goals().collect();
        assert_eq!(
            goals,
            BTreeSet::from(["goal-A", "goal-B", "shared"]),
            "user-{i}"
        );
        assert_eq!(stored.goals().count(), 3, "no goal twice");
    }
    // Later writes never move a user.
    let mut late = CampaignUserMap::new("user-0", "race", "C");
    late.add_goal("late");
    let winner = store.set_merged(&late).unwrap();
    assert_ne!(winner.variation_name, "C");
    assert!(winner.has_goal("late") && winner.has_goal("shared"));
}

#[test]
fn fields_unknown_to_ussdb_survive_a_rewrite() {
    let server = Server::start();
    server.cli(&[
        "SET",
        "c:u",
        r#"{"userId":"u","campaignKey":"c","variationName":"Control","goalIdentifier":"g1","metaData":{"plan":"pro"},"writtenBy":"v9"}"#,
    ]);
    let store = RedisStore::open(&server.url()).unwrap();
    let mut map = CampaignUserMap::new("u", "c", "Variation-2");
    map.add_goal("g2");
    let winner = store.set_merged(&map).unwrap();
    assert_eq!(winner.variation_name, "Control");
    assert_eq!(winner.goal_identifier.as_deref(), Some("g1_vwo_g2"));
    let raw: serde_json::Value = serde_json::from_str(&server.cli(&["GET", "c:u"])).unwrap();
    assert_eq!(raw["metaData"]["plan"], "pro");
    assert_eq!(raw["writtenBy"], "v9");
    assert_eq!(raw["variationName"], "Control");
}

#[test]
fn a_value_that_is_not_json_is_invalid_data_naming_the_key() {
    let server = Server::start();
    server.cli(&["SET", "c:u", "not json at all"]);
    let store = RedisStore::open(&server.url()).unwrap();
    for err in [
        store.get("u", "c").unwrap_err(),
        store.set(&CampaignUserMap::new("u", "c", "A")).unwrap_err(),
    ] {
        assert_eq!(
            err.backend_kind(),
            Some(BackendErrorKind::InvalidData),
            "{err}"
        );
        assert!(err.to_string().contains("at c:u:"), "{err}");
    }
    assert_eq!(server.cli(&["GET", "c:u"]), "not json at all", "left alone");
}

#[test]
fn an_unreachable_server_is_unavailable() {
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let store = RedisStore::open(&url).unwrap();
    let err = store.get("u", "c").unwrap_err();
    assert_eq!(
        err.backend_kind(),
        Some(BackendErrorKind::Unavailable),
        "{err}"
    );
    assert!(matches!(
        err,
        Error::Backend {
            backend: "redis",
            ..
        }
    ));
    assert!(err.to_string().contains(&url), "{err}");
}

#[test]
fn a_wrong_password_is_refused_and_not_repeated() {
    let server = Server::with_password("right-secret");
    let wrong = format!("redis://:wrong-secret@127.0.0.1:{}/0", server.port);
    let err = RedisStore::open(&wrong).unwrap().get("u", "c").unwrap_err();
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Refused), "{err}");
    let message = format!("{err} {err:?}");
    assert!(!message.contains("wrong-secret"), "{message}");

    let none = format!("redis://127.0.0.1:{}/0", server.port);
    let err = RedisStore::open(&none).unwrap().get("u", "c").unwrap_err();
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Refused), "{err}");

    let right = format!("redis://:right-secret@127.0.0.1:{}/0", server.port);
    let store = RedisStore::open(&right).unwrap();
    store.set(&CampaignUserMap::new("u", "c", "A")).unwrap();
    assert!(!format!("{store:?}").contains("right-secret"));
}

#[test]
fn a_bad_url_is_a_config_error() {
    let err = RedisStore::open("not a url").unwrap_err();
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Config), "{err}");
}
