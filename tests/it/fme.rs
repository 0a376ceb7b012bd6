//! FME records (the connector record of VWO's Feature Management SDKs): every member comes back byte for byte
//! through set/get, reopen, compaction and export/import; they live apart from campaign mappings with the same key;
//! forget_user, verify, listing and the importer's keyed forms handle them.

use std::collections::BTreeSet;

use ussdb::{
    Error, FeatureRecord, FeatureStorage, Field, FmeId, ImportOptions, OnError, Options, Store,
};

use crate::common::{map, open, small_segments, tempdir};

/// Records as the SDKs pass them to `set`, as JSON: each must come back exactly as written (typed members are
/// written in one fixed order, the SDKs' own).
const RECORDS: &[&str] = &[
    // Python 1.65: every member, `null` where it does not apply.
    r#"{"featureKey":"checkout","userId":"u1","rolloutId":31,"rolloutKey":"checkout_rollout1","rolloutVariationId":1,"experimentId":null,"experimentKey":null,"experimentVariationId":null,"isInHoldoutId":null,"notInHoldoutId":[]}"#,
    // Node: featureId, holdouts, and members this version does not know (kept in order, byte for byte).
    r#"{"featureKey":"search","userId":"u1","featureId":7,"experimentId":12,"experimentKey":"search_ab","experimentVariationId":2,"isInHoldoutId":[41],"notInHoldoutId":[43,44],"holdoutGroupId":41,"context":{"id":"u1","tags":[1.50, "x", {"deep":null}]}}"#,
    // A mutually exclusive group's winner.
    r#"{"featureKey":"_vwo_meta_meg_5","userId":"u1","experimentId":101,"experimentKey":"camp_b","experimentVariationId":-1}"#,
    // Ids in unusual forms: a string id, a number with a fraction, a huge integer.
    r#"{"featureKey":"odd","userId":"u2","featureId":"f-9","rolloutId":5.0,"rolloutKey":"odd_r","rolloutVariationId":18446744073709551616}"#,
    // Only the ids: a disabled flag's record from Java or Go.
    r#"{"featureKey":"checkout","userId":"u2"}"#,
];

fn record(json: &str) -> FeatureRecord {
    FeatureRecord::from_json(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

/// Every FME record of the store as JSON, sorted.
fn fme_contents(store: &Store) -> BTreeSet<String> {
    store
        .feature_entries()
        .map(|r| r.expect("record").to_json())
        .collect()
}

fn assert_all_back(store: &Store) {
    for json in RECORDS {
        let rec = record(json);
        let back = store
            .get_feature(&rec.feature_key, &rec.user_id)
            .expect("get")
            .unwrap_or_else(|| panic!("missing {json}"));
        assert_eq!(back.to_json(), *json);
        assert_eq!(back, rec);
    }
    let want: BTreeSet<String> = RECORDS.iter().map(|j| (*j).to_owned()).collect();
    let mut found = fme_contents(store);
    found.retain(|j| !j.contains(r#""userId":"u3""#));
    assert_eq!(found, want);
}

#[test]
fn records_come_back_byte_for_byte_through_reopen_compaction_and_export() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    // Overwrites and deletes spread over several segments give compaction something to do.
    for round in 0..40 {
        let mut rec = FeatureRecord::new(format!("churn{round}"), "u3");
        rec.rollout_id = FmeId::from(round).into();
        store.set_feature(&rec).expect("set");
        store
            .set(&map("u3", &format!("c{round}"), "v", None))
            .expect("set");
        if round % 2 == 0 {
            assert!(
                store
                    .delete_feature(&rec.feature_key, "u3")
                    .expect("delete")
            );
        }
    }
    for json in RECORDS {
        store.set_feature(&record(json)).expect("set");
    }
    assert_all_back(&store);
    drop(store);

    let store = open(dir.path(), small_segments());
    assert_all_back(&store);
    store.compact().expect("compact");
    assert!(store.stats().compactions > 0, "{:?}", store.stats());
    assert_all_back(&store);
    drop(store);
    let store = open(dir.path(), small_segments());
    assert_all_back(&store);
    let report = store.verify().expect("verify");
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.feature_records, RECORDS.len() as u64 + 20);
    assert_eq!(report.mappings, 40);
    assert_eq!(
        store.count_features().expect("count"),
        RECORDS.len() as u64 + 20
    );
    assert_eq!(store.stats().mappings, RECORDS.len() as u64 + 20 + 40);

    let mut exported = Vec::new();
    let lines = store.export_json(&mut exported).expect("export");
    assert_eq!(lines, RECORDS.len() as u64 + 20 + 40);
    let text = String::from_utf8(exported).expect("utf-8");
    for json in RECORDS {
        assert!(
            text.lines().any(|l| l == *json),
            "{json} not exported as is"
        );
    }
    let other = tempdir();
    let copy = Store::open(other.path()).expect("open");
    let report = copy
        .import_json(text.as_bytes(), &ImportOptions::default())
        .expect("import");
    assert_eq!(
        (report.imported, report.features),
        (lines, RECORDS.len() as u64 + 20)
    );
    assert_eq!(fme_contents(&copy), fme_contents(&store));
    assert_eq!(
        copy.campaigns_of("u3").expect("list"),
        store.campaigns_of("u3").expect("list")
    );
}

#[test]
fn feature_records_and_campaign_mappings_with_the_same_key_stay_apart() {
    let dir = tempdir();
    let store = Store::open(dir.path()).expect("open");
    store
        .set(&map("u1", "checkout", "Control", None))
        .expect("set");
    let rec = record(RECORDS[0]);
    store.set_feature(&rec).expect("set");
    store.set_feature(&record(RECORDS[2])).expect("set");

    assert_eq!(
        store.get("u1", "checkout").expect("get"),
        Some(map("u1", "checkout", "Control", None))
    );
    assert_eq!(
        store.get_feature("checkout", "u1").expect("get"),
        Some(rec.clone())
    );
    assert_eq!(store.get_feature("checkout", "u9").expect("get"), None);
    assert_eq!(store.get_feature("search", "u1").expect("get"), None);
    assert_eq!(
        store.campaigns_of("u1").expect("list"),
        vec![map("u1", "checkout", "Control", None)]
    );
    let features: Vec<String> = store
        .features_of("u1")
        .expect("list")
        .into_iter()
        .map(|r| r.feature_key)
        .collect();
    assert_eq!(features, ["_vwo_meta_meg_5", "checkout"]);
    assert_eq!(store.entries().count(), 1, "entries() yields mappings only");

    assert!(store.delete_feature("checkout", "u1").expect("delete"));
    assert!(
        !store
            .delete_feature("checkout", "u1")
            .expect("delete again")
    );
    assert!(store.get("u1", "checkout").expect("get").is_some());
    assert!(store.delete("u1", "checkout").expect("delete"));
    assert_eq!(store.features_of("u1").expect("list").len(), 1);
}

#[test]
fn forget_user_erases_feature_records_too() {
    let dir = tempdir();
    let store = open(dir.path(), Options::default());
    for json in RECORDS {
        store.set_feature(&record(json)).expect("set");
    }
    store.set(&map("u1", "home", "v", None)).expect("set");
    store.set(&map("u2", "home", "v", None)).expect("set");
    // u1: three FME records and one mapping.
    assert_eq!(store.forget_user("u1").expect("forget"), 4);
    assert!(store.features_of("u1").expect("list").is_empty());
    assert!(
        store
            .get_feature("_vwo_meta_meg_5", "u1")
            .expect("get")
            .is_none()
    );
    assert_eq!(store.features_of("u2").expect("list").len(), 2);
    drop(store);
    let store = open(dir.path(), Options::default());
    assert!(store.features_of("u1").expect("list").is_empty());
    assert_eq!(store.count_features().expect("count"), 2);
}

#[test]
fn bad_ids_are_typed_errors() {
    let dir = tempdir();
    let store = Store::open(dir.path()).expect("open");
    let long = "x".repeat(ussdb::MAX_ID_LEN + 1);
    for (feature, user, field) in [
        ("", "u", "feature_key"),
        ("f", "", "user_id"),
        (long.as_str(), "u", "feature_key"),
        ("f", long.as_str(), "user_id"),
    ] {
        match store.get_feature(feature, user) {
            Err(Error::InvalidKey { field: f, .. }) => assert_eq!(f, field),
            other => panic!("get {feature:?} {user:?}: {other:?}"),
        }
        match store.set_feature(&FeatureRecord::new(feature, user)) {
            Err(Error::InvalidKey { field: f, .. }) => assert_eq!(f, field),
            other => panic!("set {feature:?} {user:?}: {other:?}"),
        }
    }
    let mut huge = FeatureRecord::new("f", "u");
    huge.rollout_key = Field::Value("k".repeat(ussdb::MAX_VALUE_LEN));
    assert!(matches!(
        store.set_feature(&huge),
        Err(Error::ValueTooLarge { .. })
    ));
    assert_eq!(store.stats().mappings, 0);
}

#[test]
fn the_trait_object_serves_a_connector() {
    let dir = tempdir();
    let store = Store::open(dir.path()).expect("open");
    let connector: Box<dyn FeatureStorage> = Box::new(store.clone());
    let rec = record(RECORDS[1]);
    connector.set_feature(&rec).expect("set");
    assert_eq!(
        connector.get_feature("search", "u1").expect("get"),
        Some(rec)
    );
    assert_eq!(connector.get_feature("search", "u2").expect("get"), None);
}

#[test]
fn import_reads_the_example_connectors_keyed_dumps_and_names_bad_lines() {
    let dir = tempdir();
    let store = Store::open(dir.path()).expect("open");
    let input = [
        // Python's README connector: records without featureKey/userId under `featureKey_userId`.
        r#"{"checkout_u1": {"rolloutKey":"checkout_r1","rolloutVariationId":1,"rolloutId":3,"experimentKey":null,"experimentVariationId":null,"experimentId":null}, "_vwo_meta_meg_7_u1": {"experimentId":9,"experimentKey":"c","experimentVariationId":-1}}"#,
        // Go's test connector: `featureKey:userId`, whole records.
        r#"{"search:user_1": {"featureKey":"search","userId":"user_1","featureId":2,"rolloutId":4,"rolloutKey":"search_r","rolloutVariationId":1}}"#,
        // A campaign mapping between them.
        r#"{"userId":"u1","campaignKey":"home","variationName":"Control"}"#,
        // Bad: an FME record whose id is a boolean, and a keyed dump whose key cannot be split.
        r#"{"featureKey":"f","userId":"u","rolloutId":true}"#,
        r#"{"new_checkout_user_1": {"rolloutId":1}}"#,
        // snake_case FME record.
        r#"{"feature_key":"snake","user_id":"u1","experiment_id":5,"experiment_key":"snake_ab","experiment_variation_id":2}"#,
    ]
    .join("\n");
    let report = store
        .import_json(
            input.as_bytes(),
            &ImportOptions::default().on_error(OnError::Skip),
        )
        .expect("import");
    assert_eq!(
        (
            report.records,
            report.imported,
            report.features,
            report.skipped
        ),
        (6, 5, 4, 2),
        "{report:?}"
    );
    let lines: Vec<String> = report
        .skips
        .iter()
        .map(|s| s.position.to_string())
        .collect();
    assert_eq!(lines, ["line 4", "line 5"]);
    assert!(
        report.skips[0].reason.contains("rolloutId"),
        "{:?}",
        report.skips
    );
    assert!(
        report.skips[1].reason.contains("featureKey"),
        "{:?}",
        report.skips
    );

    let checkout = store
        .get_feature("checkout", "u1")
        .expect("get")
        .expect("stored");
    assert_eq!(checkout.rollout_id.value().and_then(FmeId::as_i64), Some(3));
    assert_eq!(checkout.experiment_key, Field::Null);
    let meg = store
        .get_feature("_vwo_meta_meg_7", "u1")
        .expect("get")
        .expect("stored");
    assert_eq!(meg.meg_group(), Some("7"));
    assert!(
        store
            .get_feature("search", "user_1")
            .expect("get")
            .is_some()
    );
    assert_eq!(
        store
            .get_feature("snake", "u1")
            .expect("get")
            .expect("stored")
            .to_json(),
        r#"{"featureKey":"snake","userId":"u1","experimentId":5,"experimentKey":"snake_ab","experimentVariationId":2}"#
    );
    assert!(store.get("u1", "home").expect("get").is_some());

    // Abort names the record and keeps everything before it.
    let other = tempdir();
    let store = Store::open(other.path()).expect("open");
    match store.import_json(input.as_bytes(), &ImportOptions::default()) {
        Err(Error::Import { at, imported, .. }) => {
            assert_eq!((at.as_str(), imported), ("line 4", 4))
        }
        other => panic!("{other:?}"),
    }
}

#[cfg(feature = "cli")]
mod cli {
    use std::io::Write;
    use std::process::{Command, Output, Stdio};

    use crate::common::tempdir;

    fn ussdb(dir: &std::path::Path, args: &[&str], input: Option<&str>) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ussdb"))
            .arg("--dir")
            .arg(dir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ussdb");
        let mut stdin = child.stdin.take().expect("stdin");
        if let Some(input) = input {
            stdin.write_all(input.as_bytes()).expect("write stdin");
        }
        drop(stdin);
        child.wait_with_output().expect("wait for ussdb")
    }

    fn stdout(out: &Output) -> String {
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn feature_commands_store_print_list_erase_and_carry_through_export() {
        let dir = tempdir();
        let d = dir.path();
        for sub in ["get-feature", "set-feature", "delete-feature", "features"] {
            let out = ussdb(d, &[sub, "--help"], None);
            assert!(
                stdout(&out).contains("Example: ussdb"),
                "{sub} --help has no example"
            );
        }
        let rec = super::RECORDS[1];
        assert!(ussdb(d, &["set-feature", rec], None).status.success());
        let meg = super::RECORDS[2];
        let out = ussdb(d, &["set-feature"], Some(meg));
        assert!(out.status.success(), "{out:?}");
        let out = ussdb(d, &["get-feature", "search", "u1"], None);
        assert_eq!(stdout(&out), format!("{rec}\n"));
        let out = ussdb(d, &["features", "u1"], None);
        assert_eq!(stdout(&out), format!("{meg}\n{rec}\n"));
        assert_eq!(
            ussdb(d, &["get-feature", "search", "u9"], None)
                .status
                .code(),
            Some(1)
        );
        let out = ussdb(
            d,
            &["set-feature", r#"{"featureKey":"f","userId":1}"#],
            None,
        );
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("userId"));
        assert!(stdout(&ussdb(d, &["stats"], None)).contains("fme records          2"));

        let exported = stdout(&ussdb(d, &["export"], None));
        let other = tempdir();
        let out = ussdb(other.path(), &["import", "-"], Some(&exported));
        assert!(stdout(&out).contains("2 of them FME records"), "{out:?}");
        let out = ussdb(other.path(), &["get-feature", "search", "u1"], None);
        assert_eq!(stdout(&out), format!("{rec}\n"));

        assert!(
            ussdb(d, &["delete-feature", "search", "u1"], None)
                .status
                .success()
        );
        assert_eq!(
            ussdb(d, &["delete-feature", "search", "u1"], None)
                .status
                .code(),
            Some(1)
        );
        assert_eq!(stdout(&ussdb(d, &["forget-user", "u1"], None)), "1\n");
    }
}

#[test]
fn the_value_fuzz_check_accepts_fme_values() {
    // The golden FME values of docs/FORMAT.md, behind a split byte of 0 (no key): the fuzz check decodes them,
    // re-encodes them, and holds them to the JSON round trip.
    for value in [
        &b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"[..],
        b"\x01\x00\x02\x00\x3e\x02\x04f_r1\x02\x00\x02\x01\x00\x02\x00\x01\x00\x02\x02\x01\x035.0\x02\x01h\x00",
        b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x07{\"x\":1}",
    ] {
        let mut data = vec![0u8];
        data.extend_from_slice(value);
        ussdb::fuzzing::value_codec(&data);
    }
}
