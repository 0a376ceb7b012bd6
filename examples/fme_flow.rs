//! What a VWO FME SDK (Feature Management and Experimentation) does with its storage connector, step by step:
//! before deciding a flag it calls `get(featureKey, userId)`; when nothing is stored it evaluates the rules
//! (a rollout, then an A/B experiment) and calls `set(data)` with the decision. The experiment's weights change
//! in between, and the user keeps the variation first decided; a mutually exclusive group's winner is stored the
//! same way, under `_vwo_meta_meg_<groupId>`. The records are the SDKs' own JSON (docs/FME.md).
//!
//! Run: cargo run --example fme_flow

use ussdb::{FeatureRecord, FeatureStorage, Field, FmeId, Store};

/// An A/B rule as the SDK sees it in its settings: a campaign id and key, variations (id, weight in percent).
struct Experiment {
    id: i64,
    key: &'static str,
    variations: Vec<(i64, u32)>,
}

/// Deterministic bucketing like the SDKs' (they use MurmurHash; any fixed hash shows the idea): the same user
/// always lands on the same point in 0..100, and the variation whose cumulative weight holds it wins.
fn bucket(user_id: &str, experiment: &Experiment) -> i64 {
    let hash = user_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let hash = (hash ^ (hash >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    let point = ((hash ^ (hash >> 33)) % 100) as u32;
    let mut upper = 0;
    for &(id, weight) in &experiment.variations {
        upper += weight;
        if point < upper {
            return id;
        }
    }
    experiment.variations.last().map_or(1, |v| v.0)
}

/// The SDK's getFlag for one feature: the stored decision if there is one, else a fresh one that is stored.
/// Returns the experiment's variation id.
fn get_flag(
    connector: &dyn FeatureStorage,
    feature_key: &str,
    user_id: &str,
    experiment: &Experiment,
) -> ussdb::Result<i64> {
    if let Some(stored) = connector.get_feature(feature_key, user_id)?
        && stored.experiment_key.value().map(String::as_str) == Some(experiment.key)
        && let Some(variation) = stored
            .experiment_variation_id
            .value()
            .and_then(FmeId::as_i64)
    {
        return Ok(variation);
    }
    let variation = bucket(user_id, experiment);
    // What the SDKs pass to set(): the rollout the user passed and the experiment's decision.
    let mut record = FeatureRecord::new(feature_key, user_id);
    record.feature_id = FmeId::from(11).into();
    record.rollout_id = FmeId::from(20).into();
    record.rollout_key = format!("{feature_key}_rollout1").into();
    record.rollout_variation_id = FmeId::from(1).into();
    record.experiment_id = FmeId::from(experiment.id).into();
    record.experiment_key = experiment.key.to_owned().into();
    record.experiment_variation_id = FmeId::from(variation).into();
    record.not_in_holdout_id = Field::Value(vec![]);
    connector.set_feature(&record)?;
    Ok(variation)
}

fn main() -> ussdb::Result<()> {
    let dir = std::env::temp_dir().join(format!("ussdb-fme-flow-{}", std::process::id()));
    let store = Store::open(&dir)?;
    let connector: &dyn FeatureStorage = &store;

    let mut experiment = Experiment {
        id: 21,
        key: "checkout_ab1",
        variations: vec![(1, 50), (2, 50)],
    };
    let users: Vec<String> = (0..8).map(|i| format!("user-{i}")).collect();
    let first: Vec<i64> = users
        .iter()
        .map(|u| get_flag(connector, "checkout", u, &experiment))
        .collect::<ussdb::Result<_>>()?;
    println!("first visit, 50/50:        {first:?}");

    // The experiment now sends every new user to variation 2; stored users keep theirs.
    experiment.variations = vec![(1, 0), (2, 100)];
    let again: Vec<i64> = users
        .iter()
        .map(|u| get_flag(connector, "checkout", u, &experiment))
        .collect::<ussdb::Result<_>>()?;
    println!("after the weights changed: {again:?}");
    assert_eq!(first, again, "every user keeps the variation first decided");

    // A mutually exclusive group's winner: same connector, its own feature key, -1 for "no variation".
    let mut meg = FeatureRecord::new("_vwo_meta_meg_7", "user-0");
    meg.experiment_id = FmeId::from(31).into();
    meg.experiment_key = "meg_a_ab1".to_owned().into();
    meg.experiment_variation_id = FmeId::from(-1).into();
    connector.set_feature(&meg)?;

    // What the SDK reads back is the JSON it wrote; a newer SDK's extra members would come back too.
    for record in store.features_of("user-0")? {
        println!("{}", record.to_json());
    }
    // A privacy request erases both kinds of record of the user.
    println!(
        "forget_user(user-0) erased {} records",
        store.forget_user("user-0")?
    );
    drop(store);
    std::fs::remove_dir_all(&dir).map_err(|e| ussdb::Error::Io {
        op: "remove the example's store",
        path: dir.clone(),
        source: e,
    })?;
    Ok(())
}
