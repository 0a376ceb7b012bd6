//! `RedisStore` as an FME SDK's storage connector (`FeatureStorage`): the record's JSON byte for byte under
//! `fme:featureKey:userId`, replaced on every write as the local store does, and bad input.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use ussdb::{
    BackendErrorKind, CampaignUserMap, Error, FeatureRecord, FeatureStorage, FmeId, RedisConfig,
    RedisStore, UserStorageService,
};

use super::servers::{RedisServer as Server, free_port};

/// What the Python FME SDK passes to `set` (every member, `null` where it does not apply), with members no
/// current SDK writes: .NET's `context` object and a number too long for a double.
const PYTHON_STYLE: &str = r#"{"featureKey":"checkout","userId":"user-1","rolloutId":null,"rolloutKey":null,"rolloutVariationId":null,"experimentId":12,"experimentKey":"checkout_ab","experimentVariationId":2,"isInHoldoutId":null,"notInHoldoutId":[7, 8],"context":{"id":"user-1","customVariables":{"plan":"pro"}},"seq":123456789012345678901}"#;

#[test]
fn a_record_round_trips_byte_for_byte_with_every_member() {
    let server = Server::start();
    let store = RedisStore::open(&server.url()).unwrap();
    let record = FeatureRecord::from_json(PYTHON_STYLE).unwrap();
    assert!(
        record.other_fields().is_some(),
        "the test needs extra members"
    );
    store.set_feature(&record).unwrap();

    assert_eq!(
        store.feature_key("checkout", "user-1"),
        "fme:checkout:user-1"
    );
    let raw = server.cli(&["GET", "fme:checkout:user-1"]);
    assert_eq!(raw, record.to_json());
    // The extra members are there as they came, the long number included.
    assert!(
        raw.ends_with(r#","context":{"id":"user-1","customVariables":{"plan":"pro"}},"seq":123456789012345678901}"#),
        "{raw}"
    );
    assert!(
        raw.contains(r#""rolloutId":null"#),
        "nulls stay nulls: {raw}"
    );
    assert_eq!(
        server.cli(&["TTL", "fme:checkout:user-1"]),
        "-1",
        "no TTL unless configured"
    );

    let back = store.get_feature("checkout", "user-1").unwrap().unwrap();
    assert_eq!(back, record);
    assert_eq!(back.to_json(), raw);
    assert_eq!(store.get_feature("checkout", "user-2").unwrap(), None);
    assert_eq!(store.get_feature("other", "user-1").unwrap(), None);

    // A mutually exclusive group's record, through the trait object an application would hold.
    let connector: Box<dyn FeatureStorage> = Box::new(store.clone());
    let mut meg = FeatureRecord::new("_vwo_meta_meg_12", "user-1");
    meg.experiment_id = FmeId::from(31).into();
    meg.experiment_key = "checkout_ab".to_owned().into();
    meg.experiment_variation_id = FmeId::from(-1).into();
    connector.set_feature(&meg).unwrap();
    assert_eq!(
        server.cli(&["GET", "fme:_vwo_meta_meg_12:user-1"]),
        r#"{"featureKey":"_vwo_meta_meg_12","userId":"user-1","experimentId":31,"experimentKey":"checkout_ab","experimentVariationId":-1}"#
    );
    assert_eq!(
        connector.get_feature("_vwo_meta_meg_12", "user-1").unwrap(),
        Some(meg)
    );

    assert!(store.delete_feature("checkout", "user-1").unwrap());
    assert!(!store.delete_feature("checkout", "user-1").unwrap());
    assert_eq!(store.get_feature("checkout", "user-1").unwrap(), None);
}

#[test]
fn a_record_another_writer_stored_is_read_with_its_extra_members() {
    let server = Server::start();
    // As a Node connector stores JSON.stringify(data): compact, only the members set, plus a member of its own.
    let node = r#"{"featureKey":"search","userId":"u9","featureId":4,"rolloutId":3,"rolloutKey":"search_rollout1","rolloutVariationId":1,"isInHoldoutId":[],"writtenBy":{"sdk":"node","v":"1.60.0"}}"#;
    server.cli(&["SET", "fme:search:u9", node]);
    let store = RedisStore::open(&server.url()).unwrap();
    let record = store.get_feature("search", "u9").unwrap().unwrap();
    assert_eq!(
        record.rollout_key.value().map(String::as_str),
        Some("search_rollout1")
    );
    assert_eq!(
        record.other_fields(),
        Some(r#"{"writtenBy":{"sdk":"node","v":"1.60.0"}}"#)
    );
    assert_eq!(record.to_json(), node);
    // Written back unchanged, the bytes stay the same.
    store.set_feature(&record).unwrap();
    assert_eq!(server.cli(&["GET", "fme:search:u9"]), node);
}

#[test]
fn a_set_replaces_the_record_as_the_local_store_does() {
    let server = Server::start();
    let store = RedisStore::open(&server.url()).unwrap();
    let mut first = FeatureRecord::new("checkout", "u");
    first.experiment_id = FmeId::from(12).into();
    first.experiment_key = "checkout_ab".to_owned().into();
    first.experiment_variation_id = FmeId::from(1).into();
    store.set_feature(&first).unwrap();

    let mut second =
        FeatureRecord::from_json(r#"{"featureKey":"checkout","userId":"u","x":1}"#).unwrap();
    second.experiment_id = FmeId::from(12).into();
    second.experiment_key = "checkout_ab".to_owned().into();
    second.experiment_variation_id = FmeId::from(2).into();
    store.set_feature(&second).unwrap();
    assert_eq!(server.cli(&["GET", "fme:checkout:u"]), second.to_json());
    assert_eq!(
        store.get_feature("checkout", "u").unwrap(),
        Some(second.clone())
    );

    // The local store applies the same rule to the same writes.
    let dir = tempfile::tempdir().unwrap();
    let local = ussdb::Store::open(dir.path()).unwrap();
    local.set_feature(&first).unwrap();
    local.set_feature(&second).unwrap();
    assert_eq!(local.get_feature("checkout", "u").unwrap(), Some(second));
}

#[test]
fn concurrent_sets_of_one_key_leave_one_whole_record() {
    let server = Server::start();
    const WRITERS: usize = 4;
    const ROUNDS: usize = 200;
    let barrier = Arc::new(Barrier::new(WRITERS));
    let written: Vec<Vec<String>> = (0..WRITERS)
        .map(|w| {
            let (url, barrier) = (server.url(), Arc::clone(&barrier));
            thread::spawn(move || {
                let store = RedisStore::open(&url).unwrap();
                barrier.wait();
                (0..ROUNDS)
                    .map(|i| {
                        let json = format!(
                            r#"{{"featureKey":"f","userId":"u","experimentVariationId":{w},"round":{i},"pad":"{}"}}"#,
                            "x".repeat(w * 100)
                        );
                        let record = FeatureRecord::from_json(&json).unwrap();
                        store.set_feature(&record).unwrap();
                        record.to_json()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let raw = server.cli(&["GET", "fme:f:u"]);
    // Never a mix of two writes: the value is one writer's last record.
    assert!(
        written.iter().any(|w| w.last() == Some(&raw)),
        "{raw} is no writer's last record"
    );
}

#[test]
fn feature_keys_are_kept_apart_from_campaign_keys() {
    let server = Server::start();
    let config = RedisConfig::new(server.url())
        .key_prefix("vwo:")
        .ttl(Some(Duration::from_secs(600)));
    let store = RedisStore::connect(config).unwrap();
    // A feature flag and a campaign with the same key, for the same user.
    store
        .set(&CampaignUserMap::new("u", "checkout", "Control"))
        .unwrap();
    let mut record = FeatureRecord::new("checkout", "u");
    record.rollout_variation_id = FmeId::from(1).into();
    store.set_feature(&record).unwrap();

    assert_eq!(
        server.cli(&["GET", "vwo:checkout:u"]),
        r#"{"userId":"u","variationName":"Control","campaignKey":"checkout"}"#
    );
    assert_eq!(server.cli(&["GET", "vwo:fme:checkout:u"]), record.to_json());
    let ttl: u64 = server.cli(&["TTL", "vwo:fme:checkout:u"]).parse().unwrap();
    assert!((1..=600).contains(&ttl), "ttl {ttl}");
    assert_eq!(
        store
            .get("u", "checkout")
            .unwrap()
            .map(|m| m.variation_name),
        Some("Control".to_owned())
    );
    assert_eq!(
        store.get_feature("checkout", "u").unwrap(),
        Some(record.clone())
    );

    // With an empty feature segment the keys are the Go example connector's bare featureKey:userId.
    let bare = RedisStore::connect_lazy(RedisConfig::new(server.url()).feature_prefix("")).unwrap();
    bare.set_feature(&record).unwrap();
    assert_eq!(server.cli(&["GET", "checkout:u"]), record.to_json());
}

#[test]
fn a_value_that_is_not_an_fme_record_is_invalid_data_naming_the_key() {
    let server = Server::start();
    server.cli(&["SET", "fme:f:u", "not json at all"]);
    // A campaign mapping where a record should be.
    server.cli(&[
        "SET",
        "fme:g:u",
        r#"{"userId":"u","campaignKey":"g","variationName":"A"}"#,
    ]);
    // Feature `a:b` of user `c` and feature `a` of user `b:c` share the key `fme:a:b:c`.
    server.cli(&["SET", "fme:a:b:c", r#"{"featureKey":"a:b","userId":"c"}"#]);
    let store = RedisStore::open(&server.url()).unwrap();
    for (feature, user, key) in [
        ("f", "u", "fme:f:u"),
        ("g", "u", "fme:g:u"),
        ("a", "b:c", "fme:a:b:c"),
    ] {
        let err = store.get_feature(feature, user).unwrap_err();
        assert_eq!(
            err.backend_kind(),
            Some(BackendErrorKind::InvalidData),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("at {key}:")), "{err}");
    }
    assert!(
        store.get_feature("a:b", "c").unwrap().is_some(),
        "its own ids read it"
    );
    assert_eq!(
        server.cli(&["GET", "fme:f:u"]),
        "not json at all",
        "a read leaves it alone"
    );
}

#[test]
fn bad_ids_are_invalid_keys() {
    let store = RedisStore::open(&format!("redis://127.0.0.1:{}/0", free_port())).unwrap();
    assert!(matches!(
        store.get_feature("", "u").unwrap_err(),
        Error::InvalidKey {
            field: "feature_key",
            ..
        }
    ));
    assert!(matches!(
        store.set_feature(&FeatureRecord::new("f", "")).unwrap_err(),
        Error::InvalidKey {
            field: "user_id",
            ..
        }
    ));
}

#[test]
fn an_unreachable_server_is_unavailable() {
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let store = RedisStore::open(&url).unwrap();
    for err in [
        store.get_feature("f", "u").unwrap_err(),
        store
            .set_feature(&FeatureRecord::new("f", "u"))
            .unwrap_err(),
    ] {
        assert_eq!(
            err.backend_kind(),
            Some(BackendErrorKind::Unavailable),
            "{err}"
        );
        assert!(
            matches!(
                err,
                Error::Backend {
                    backend: "redis",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains(&url), "{err}");
    }
}

#[test]
fn a_scan_of_campaign_mappings_passes_over_fme_records() {
    let server = Server::start();
    let store = RedisStore::open(&server.url()).unwrap();
    store
        .set(&CampaignUserMap::new("u", "checkout", "Control"))
        .unwrap();
    // A campaign whose key starts like the FME segment is still a campaign mapping.
    store.set(&CampaignUserMap::new("u", "fme:x", "A")).unwrap();
    store
        .set_feature(&FeatureRecord::new("checkout", "u"))
        .unwrap();
    server.cli(&["SET", "fme:broken:u", "not json"]);
    let mut campaigns = Vec::new();
    let mut errors = Vec::new();
    for item in store.scan("*") {
        match item {
            Ok(map) => campaigns.push(map.campaign_key),
            Err(e) => errors.push(e.to_string()),
        }
    }
    campaigns.sort();
    assert_eq!(campaigns, ["checkout", "fme:x"]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("at fme:broken:u:"), "{errors:?}");
}
