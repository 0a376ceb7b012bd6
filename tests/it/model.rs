//! Model-based test: random operations against a `HashMap`, with reopens, on small segments.

use std::collections::HashMap;

use proptest::prelude::*;
use ussdb::{CampaignUserMap, Options, Store};

use crate::common::{map, memory_tempdir, small_segments};

#[derive(Debug, Clone)]
enum Op {
    Set {
        user: u8,
        campaign: u8,
        variation: u8,
        goals: Option<String>,
    },
    Get {
        user: u8,
        campaign: u8,
    },
    Delete {
        user: u8,
        campaign: u8,
    },
    Forget {
        user: u8,
    },
    CampaignsOf {
        user: u8,
    },
    Reopen,
    /// A full compaction pass (`Store::compact`).
    Compact,
    /// Compaction of the sealed segments with file ids `first..=first + span`, whatever their dead bytes.
    CompactRange {
        first: u8,
        span: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..6u8, 0..5u8, 0..3u8, proptest::option::of("[a-z_]{0,300}"))
            .prop_map(|(user, campaign, variation, goals)| Op::Set { user, campaign, variation, goals }),
        6 => (0..6u8, 0..5u8).prop_map(|(user, campaign)| Op::Get { user, campaign }),
        2 => (0..6u8, 0..5u8).prop_map(|(user, campaign)| Op::Delete { user, campaign }),
        1 => (0..6u8).prop_map(|user| Op::Forget { user }),
        2 => (0..6u8).prop_map(|user| Op::CampaignsOf { user }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Compact),
        1 => (1..12u8, 0..3u8).prop_map(|(first, span)| Op::CompactRange { first, span }),
    ]
}

fn user(u: u8) -> String {
    // Prefix-sharing ids, so a key's user/campaign split matters.
    ["u", "u1", "user", "a", "ab", "b"][u as usize % 6].to_owned()
}

fn campaign(c: u8) -> String {
    format!("camp{c}")
}

fn run(ops: &[Op], options: Options) {
    let dir = memory_tempdir();
    let mut store = Store::open_with(dir.path(), options.clone()).expect("open");
    let mut model: HashMap<(String, String), CampaignUserMap> = HashMap::new();
    for op in ops {
        match op {
            Op::Set {
                user: u,
                campaign: c,
                variation,
                goals,
            } => {
                let m = map(
                    &user(*u),
                    &campaign(*c),
                    &format!("var{variation}"),
                    goals.as_deref(),
                );
                store.set(&m).expect("set");
                model.insert((user(*u), campaign(*c)), m);
            }
            Op::Get {
                user: u,
                campaign: c,
            } => {
                let got = store.get(&user(*u), &campaign(*c)).expect("get");
                assert_eq!(got.as_ref(), model.get(&(user(*u), campaign(*c))), "{op:?}");
            }
            Op::Delete {
                user: u,
                campaign: c,
            } => {
                let existed = store.delete(&user(*u), &campaign(*c)).expect("delete");
                assert_eq!(
                    existed,
                    model.remove(&(user(*u), campaign(*c))).is_some(),
                    "{op:?}"
                );
            }
            Op::Forget { user: u } => {
                let n = store.forget_user(&user(*u)).expect("forget_user");
                let before = model.len();
                model.retain(|(mu, _), _| *mu != user(*u));
                assert_eq!(n, before - model.len(), "{op:?}");
            }
            Op::CampaignsOf { user: u } => {
                let got = store.campaigns_of(&user(*u)).expect("campaigns_of");
                let mut want: Vec<CampaignUserMap> = model
                    .values()
                    .filter(|m| m.user_id == user(*u))
                    .cloned()
                    .collect();
                want.sort_by(|a, b| a.campaign_key.cmp(&b.campaign_key));
                assert_eq!(got, want, "{op:?}");
            }
            Op::Reopen => {
                drop(store);
                // A saved index is loaded whenever there is one: nothing changed the store since its close.
                let saved = dir.path().join("INDEX").exists();
                store = Store::open_with(dir.path(), options.clone()).expect("reopen");
                assert_eq!(store.stats().index_loaded, saved, "{op:?}");
            }
            Op::Compact => store.compact().expect("compact"),
            Op::CompactRange { first, span } => {
                let first = u32::from(*first);
                store
                    .compact_file_range_for_tests(first, first + u32::from(*span))
                    .expect("compact a range");
            }
        }
    }
    drop(store);
    let store = Store::open_with(dir.path(), options).expect("final reopen");
    assert_eq!(store.stats().mappings, model.len() as u64);
    for ((u, c), m) in &model {
        assert_eq!(store.get(u, c).expect("get").as_ref(), Some(m));
    }
}

fn cases() -> u32 {
    std::env::var("USSDB_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn store_matches_a_hashmap(ops in proptest::collection::vec(op(), 1..200)) {
        // Every hint replayed on three threads at each reopen (only large ones are, otherwise).
        run(&ops, small_segments().auto_compaction(false).parallel_hint_replay_for_tests(3));
    }

    #[test]
    fn store_matches_a_hashmap_when_every_hash_collides(ops in proptest::collection::vec(op(), 1..200)) {
        // Pins: keys with equal index hashes must still be told apart by their full keys.
        run(
            &ops,
            small_segments()
                .auto_compaction(false)
                .colliding_hashes_for_tests(true)
                .parallel_hint_replay_for_tests(2),
        );
    }

    #[test]
    fn store_matches_a_hashmap_with_the_index_saved_at_each_close(ops in proptest::collection::vec(op(), 1..200)) {
        // Each reopen loads the index the close before it saved; compaction outputs have ids of their own in
        // memory, which the saved index must give back as file ids.
        run(&ops, small_segments().auto_compaction(false).save_index_from(0));
        run(
            &ops,
            small_segments()
                .auto_compaction(false)
                .colliding_hashes_for_tests(true)
                .save_index_from(0),
        );
    }

    #[test]
    fn store_matches_a_hashmap_while_background_compaction_runs(ops in proptest::collection::vec(op(), 1..200)) {
        // Compaction on its own thread, at every sealed segment, racing the operations.
        run(&ops, small_segments().compaction_threshold(0.0));
    }
}
