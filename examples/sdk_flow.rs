//! What an A/B-testing SDK does with its User Storage Service, step by step: activate a user (look up a stored
//! variation, else bucket the user and store the result), then track goals twice. The campaign's traffic split
//! changes in between, and the user keeps the variation first assigned: that is what the storage is for.
//!
//! Run: cargo run --example sdk_flow

use ussdb::{CampaignUserMap, Store, UserStorageService};

/// A campaign as the SDK sees it: variations with traffic weights (percent, summing to 100).
struct Campaign {
    key: &'static str,
    variations: Vec<(&'static str, u32)>,
}

/// Deterministic bucketing like the SDKs': a hash of the user id picks a point in 0..100, and the variation
/// whose cumulative weight range holds that point wins. The same user always lands on the same point.
fn bucket(user_id: &str, campaign: &Campaign) -> &'static str {
    // FNV-1a: stable across runs and platforms (the SDKs use MurmurHash; any fixed hash shows the idea).
    let hash = user_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    // A final mix spreads nearby ids over the whole range, as MurmurHash's finaliser does.
    let hash = (hash ^ (hash >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    let point = ((hash ^ (hash >> 33)) % 100) as u32;
    let mut upper = 0;
    for &(name, weight) in &campaign.variations {
        upper += weight;
        if point < upper {
            return name;
        }
    }
    campaign.variations.last().map_or("Control", |v| v.0)
}

/// The SDK's activate: the stored variation if there is one, else a fresh bucketing that is stored.
fn activate(
    storage: &dyn UserStorageService,
    user_id: &str,
    campaign: &Campaign,
) -> ussdb::Result<String> {
    if let Some(map) = storage.get(user_id, campaign.key)? {
        return Ok(map.variation_name);
    }
    let variation = bucket(user_id, campaign);
    storage.set(&CampaignUserMap::new(user_id, campaign.key, variation))?;
    Ok(variation.to_owned())
}

/// The SDK's track: record a goal once per user and campaign (appended with `_vwo_`); false if it was a repeat.
fn track(
    storage: &dyn UserStorageService,
    user_id: &str,
    campaign: &Campaign,
    goal: &str,
) -> ussdb::Result<bool> {
    let Some(mut map) = storage.get(user_id, campaign.key)? else {
        return Ok(false); // never activated: the SDKs do not track such a user
    };
    if !map.add_goal(goal) {
        return Ok(false);
    }
    storage.set(&map)?;
    Ok(true)
}

fn main() -> ussdb::Result<()> {
    let dir = std::env::temp_dir().join("ussdb-sdk-flow");
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir)?;
    let storage: &dyn UserStorageService = &store;

    let mut campaign = Campaign {
        key: "checkout-test",
        variations: vec![("Control", 50), ("Variation-1", 50)],
    };
    let users = ["alice", "bob", "carol", "dave"];

    println!("activate with a 50/50 split:");
    let first: Vec<String> = users
        .iter()
        .map(|u| activate(storage, u, &campaign))
        .collect::<ussdb::Result<_>>()?;
    for (u, v) in users.iter().zip(&first) {
        println!("  {u:6} -> {v}");
    }

    // The campaign's owner sends all new traffic to Control. Fresh bucketing would move Variation-1 users back;
    // the stored mappings keep them where they were.
    campaign.variations = vec![("Control", 100), ("Variation-1", 0)];
    println!("activate again after the split changed to 100/0:");
    for (u, before) in users.iter().zip(&first) {
        let now = activate(storage, u, &campaign)?;
        println!(
            "  {u:6} -> {now} (fresh bucketing would say {})",
            bucket(u, &campaign)
        );
        assert_eq!(&now, before, "the variation is sticky");
    }

    println!("track:");
    println!(
        "  alice purchase:     counted = {}",
        track(storage, "alice", &campaign, "purchase")?
    );
    println!(
        "  alice add-to-cart:  counted = {}",
        track(storage, "alice", &campaign, "add-to-cart")?
    );
    let repeat = track(storage, "alice", &campaign, "purchase")?;
    println!("  alice purchase:     counted = {repeat} (a repeat, detected from the stored goals)");
    assert!(!repeat);

    let map = store
        .get("alice", campaign.key)?
        .expect("alice was activated");
    println!("stored: {}", ussdb::to_json_record(&map, None));
    assert_eq!(
        map.goal_identifier.as_deref(),
        Some("purchase_vwo_add-to-cart")
    );
    Ok(())
}
