//! The same number of mappings in two shapes, one user with 100k campaigns and 100k users with one campaign
//! each: every mapping reads back, `campaigns_of` lists exactly the live ones, reopening from hint files and
//! from a scan gives the same store, and `forget_user` erases everything. (The index keeps a user with many
//! campaigns in a table of its own; these check that the move there and back loses nothing.)
//! `USSDB_SCALE_MAPPINGS` changes the count.

use std::collections::BTreeMap;
use std::path::Path;

use ussdb::{CampaignUserMap, Durability, Options, Store};

use crate::common::{env_count, map, memory_tempdir, open};

fn options() -> Options {
    // Segments of 1 MiB: 100k mappings fill several, so reopening reads hint files and scans.
    Options::default()
        .segment_size(1 << 20)
        .durability(Durability::Never)
        .auto_compaction(false)
}

#[derive(Clone, Copy, Debug)]
enum Shape {
    OneUser,
    ManyUsers,
}

impl Shape {
    fn mapping(self, i: u64) -> CampaignUserMap {
        let variation = format!("Variation-{}", i % 3);
        match self {
            Shape::OneUser => map("the-one-user", &format!("campaign-{i}"), &variation, None),
            Shape::ManyUsers => map(&format!("user-{i}"), "campaign", &variation, None),
        }
    }

    /// The distinct users of the first `n` mappings.
    fn users(self, n: u64) -> Vec<String> {
        match self {
            Shape::OneUser => vec![self.mapping(0).user_id],
            Shape::ManyUsers => (0..n).map(|i| self.mapping(i).user_id).collect(),
        }
    }
}

/// The live mappings by user, each user's sorted by campaign key as `campaigns_of` returns them.
type Model = BTreeMap<String, BTreeMap<String, CampaignUserMap>>;

fn check(store: &Store, shape: Shape, n: u64, model: &Model, what: &str) {
    for i in 0..n {
        let m = shape.mapping(i);
        let want = model
            .get(&m.user_id)
            .and_then(|maps| maps.get(&m.campaign_key));
        let got = store.get(&m.user_id, &m.campaign_key).expect("get");
        assert_eq!(got.as_ref(), want, "{what}: {shape:?} mapping {i}");
    }
    // Every user the shape has, those with no mapping left included (they list nothing).
    let mut listed = 0;
    for user in shape.users(n) {
        let got = store.campaigns_of(&user).expect("campaigns_of");
        let want: Vec<&CampaignUserMap> = model
            .get(&user)
            .into_iter()
            .flat_map(|m| m.values())
            .collect();
        assert_eq!(
            got.iter().collect::<Vec<_>>(),
            want,
            "{what}: {shape:?} campaigns of {user}"
        );
        listed += got.len();
    }
    let live: usize = model.values().map(BTreeMap::len).sum();
    assert_eq!(listed, live, "{what}: {shape:?}");
    assert_eq!(store.stats().mappings, live as u64, "{what}: {shape:?}");
}

fn remove_hint_files(dir: &Path) -> usize {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "hint") {
            std::fs::remove_file(&path).expect("remove hint file");
            removed += 1;
        }
    }
    removed
}

fn store_check_reopen_forget(shape: Shape) {
    let n = env_count("USSDB_SCALE_MAPPINGS", 100_000);
    let dir = memory_tempdir();
    let mut model = Model::new();
    let store = open(dir.path(), options());
    for i in 0..n {
        let m = shape.mapping(i);
        store.set(&m).expect("set");
        model
            .entry(m.user_id.clone())
            .or_default()
            .insert(m.campaign_key.clone(), m);
    }
    // Every tenth mapping is deleted and every seventh overwritten, so replay meets tombstones and
    // replacements, and compaction moves entries.
    for i in (0..n).step_by(10) {
        let m = shape.mapping(i);
        assert!(store.delete(&m.user_id, &m.campaign_key).expect("delete"));
        let maps = model.get_mut(&m.user_id).expect("in the model");
        maps.remove(&m.campaign_key);
        if maps.is_empty() {
            model.remove(&m.user_id);
        }
    }
    for i in (3..n).step_by(7).filter(|i| i % 10 != 0) {
        let mut m = shape.mapping(i);
        m.variation_name = "Overwritten".into();
        store.set(&m).expect("overwrite");
        model
            .get_mut(&m.user_id)
            .expect("in the model")
            .insert(m.campaign_key.clone(), m);
    }
    check(&store, shape, n, &model, "written");
    store.compact().expect("compact");
    let hints = store.stats().hint_files;
    assert!(hints >= 2, "{shape:?}: {hints} hint files");
    check(&store, shape, n, &model, "compacted");
    drop(store);

    let store = open(dir.path(), options());
    check(&store, shape, n, &model, "reopened from hint files");
    drop(store);
    assert!(remove_hint_files(dir.path()) >= 2);
    let store = open(dir.path(), options());
    check(&store, shape, n, &model, "reopened by scanning");

    let live: usize = model.values().map(BTreeMap::len).sum();
    let mut forgotten = 0;
    for user in shape.users(n) {
        let want = model.remove(&user).map_or(0, |m| m.len());
        assert_eq!(
            store.forget_user(&user).expect("forget_user"),
            want,
            "{shape:?} {user}"
        );
        forgotten += want;
    }
    assert_eq!(forgotten, live);
    check(&store, shape, n, &model, "forgotten");
    drop(store);
    let store = open(dir.path(), options());
    check(&store, shape, n, &model, "forgotten, reopened");
}

#[test]
fn one_user_with_100k_campaigns() {
    store_check_reopen_forget(Shape::OneUser);
}

#[test]
fn many_users_with_one_campaign_each() {
    store_check_reopen_forget(Shape::ManyUsers);
}
