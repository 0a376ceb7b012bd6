//! The call patterns of the SDKs through the `UserStorageService` trait.

use std::sync::Arc;

use ussdb::{CampaignUserMap, Store, UserStorageService};

use crate::common::{map, open, small_segments, tempdir};

#[test]
fn a_second_set_for_the_same_key_wins() {
    // Pins: a track that re-sets the map with a goal appended must be what the next get returns.
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    let uss: Box<dyn UserStorageService> = Box::new(store.clone());
    assert_eq!(uss.get("u1", "camp").expect("get"), None);
    uss.set(&map("u1", "camp", "Control", None)).expect("set");
    uss.set(&map("u1", "camp", "Control", Some("buy-now-clicked")))
        .expect("set");
    uss.set(&map(
        "u1",
        "camp",
        "Control",
        Some("buy-now-clicked_vwo_product-bought"),
    ))
    .expect("set");
    assert_eq!(
        uss.get("u1", "camp").expect("get"),
        Some(map(
            "u1",
            "camp",
            "Control",
            Some("buy-now-clicked_vwo_product-bought")
        ))
    );
    drop(uss);
    drop(store);
    let store = open(dir.path(), small_segments());
    assert_eq!(
        store.get("u1", "camp").expect("get"),
        Some(map(
            "u1",
            "camp",
            "Control",
            Some("buy-now-clicked_vwo_product-bought")
        )),
        "the newest set must also win after a reopen"
    );
}

#[test]
fn the_variation_stays_sticky_across_restarts_and_many_users() {
    let dir = tempdir();
    {
        let store: Arc<dyn UserStorageService> = Arc::new(open(dir.path(), small_segments()));
        for u in 0..500 {
            let variation = if u % 3 == 0 { "Control" } else { "Variation-1" };
            store
                .set(&map(&format!("user-{u}"), "homepage", variation, None))
                .expect("set");
        }
    }
    let store = open(dir.path(), small_segments());
    for u in 0..500 {
        let want = if u % 3 == 0 { "Control" } else { "Variation-1" };
        let got = store
            .get(&format!("user-{u}"), "homepage")
            .expect("get")
            .expect("present");
        assert_eq!(got.variation_name, want);
    }
    assert_eq!(store.stats().mappings, 500);
}

#[test]
fn goal_strings_are_kept_byte_for_byte() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    // PHP writes a leading delimiter, Java a trailing one; unicode and empty strings must survive too.
    let goals = [
        "_vwo_a_vwo_b",
        "a_vwo_b_vwo_",
        "",
        "ünïcödé_vwo_🎯",
        "x".repeat(10_000).as_str(),
    ]
    .map(str::to_owned);
    for (i, g) in goals.iter().enumerate() {
        store
            .set(&map("u", &format!("c{i}"), "V", Some(g)))
            .expect("set");
    }
    for (i, g) in goals.iter().enumerate() {
        let got = store
            .get("u", &format!("c{i}"))
            .expect("get")
            .expect("present");
        assert_eq!(got.goal_identifier.as_deref(), Some(g.as_str()));
        assert_eq!(got.variation_name, "V");
    }
}

#[test]
fn meta_data_is_kept_and_get_ignores_it() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    let m = map("u", "c", "v", None);
    store
        .set_with_meta(&m, Some(r#"{"browser":"firefox"}"#))
        .expect("set");
    assert_eq!(store.get("u", "c").expect("get"), Some(m.clone()));
    let (back, meta) = store
        .get_with_meta("u", "c")
        .expect("get")
        .expect("present");
    assert_eq!(
        (back, meta.as_deref()),
        (m, Some(r#"{"browser":"firefox"}"#))
    );
}

#[test]
fn campaigns_of_and_forget_user_see_only_that_user() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    for c in 0..20 {
        store
            .set(&map("alice", &format!("camp-{c:02}"), "A", None))
            .expect("set");
        store
            .set(&map("alice2", &format!("camp-{c:02}"), "B", None))
            .expect("set");
    }
    // Ids that share a prefix must not leak into each other ("a" + "lice..." vs "alice" + "...").
    store.set(&map("a", "licecamp-00", "C", None)).expect("set");
    let of_alice = store.campaigns_of("alice").expect("campaigns_of");
    assert_eq!(of_alice.len(), 20);
    assert!(
        of_alice
            .iter()
            .all(|m| m.user_id == "alice" && m.variation_name == "A")
    );
    assert!(
        of_alice
            .windows(2)
            .all(|w| w[0].campaign_key < w[1].campaign_key),
        "sorted by campaign"
    );
    assert_eq!(store.forget_user("alice").expect("forget"), 20);
    assert_eq!(store.forget_user("alice").expect("forget again"), 0);
    assert!(
        store
            .campaigns_of("alice")
            .expect("campaigns_of")
            .is_empty()
    );
    assert_eq!(
        store.campaigns_of("alice2").expect("campaigns_of").len(),
        20
    );
    assert_eq!(
        store
            .get("a", "licecamp-00")
            .expect("get")
            .map(|m| m.variation_name),
        Some("C".into())
    );
    drop(store);
    let store = open(dir.path(), small_segments());
    assert!(
        store
            .campaigns_of("alice")
            .expect("campaigns_of")
            .is_empty(),
        "forgotten after reopen too"
    );
    assert_eq!(store.stats().mappings, 21);
}

#[test]
fn delete_reports_whether_the_mapping_existed() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    assert!(!store.delete("u", "c").expect("delete"));
    store.set(&map("u", "c", "v", None)).expect("set");
    assert!(store.delete("u", "c").expect("delete"));
    assert!(!store.delete("u", "c").expect("delete"));
    assert_eq!(store.get("u", "c").expect("get"), None);
}

#[test]
fn store_handles_are_cheap_clones_of_one_store() {
    fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
    assert_send_sync_clone::<Store>();
    let dir = tempdir();
    let a = open(dir.path(), small_segments());
    let b = a.clone();
    a.set(&CampaignUserMap::new("u", "c", "v")).expect("set");
    assert!(b.get("u", "c").expect("get").is_some());
}
