//! Every adapter must answer like a user storage before its speed means anything. ussdb goes
//! through the same checks, so a core bug that would skew the benchmarks shows up here first.

use ussdb_compare::workload::{CAMPAIGNS_PER_USER, Workload};
use ussdb_compare::{CampaignUserMap, Kind, Mode, kinds_from_env};

fn sorted(mut maps: Vec<CampaignUserMap>) -> Vec<CampaignUserMap> {
    maps.sort_by(|a, b| a.campaign_key.cmp(&b.campaign_key));
    maps
}

fn check(kind: Kind, mode: Mode) {
    let w = Workload::new(400, 50, 3);
    let dir = tempfile::tempdir().unwrap();
    let store = kind.open(dir.path(), mode).unwrap();
    w.prefill(&*store).unwrap();
    for m in &w.stored {
        assert_eq!(
            store.get(&m.user_id, &m.campaign_key).unwrap().as_ref(),
            Some(m),
            "{kind:?}"
        );
    }
    for (u, c) in &w.missing {
        assert_eq!(store.get(u, c).unwrap(), None, "{kind:?}");
    }
    let fresh = w.fresh(0, 20);
    for m in fresh.iter().chain(&w.overwrites) {
        store.set(m).unwrap();
    }
    let last = w.overwrites.last().unwrap();
    assert_eq!(
        store
            .get(&last.user_id, &last.campaign_key)
            .unwrap()
            .as_ref(),
        Some(last)
    );
    if let Some(maps) = store.campaigns_of(&last.user_id).unwrap() {
        assert_eq!(maps.len(), CAMPAIGNS_PER_USER, "{kind:?}");
        assert!(maps.iter().all(|m| m.user_id == last.user_id));
        assert!(sorted(maps).iter().any(|m| m == last));
        // A user id that is a prefix of a stored one owns nothing.
        let short = &last.user_id[..last.user_id.len() - 1];
        assert_eq!(store.campaigns_of(short).unwrap(), Some(vec![]), "{kind:?}");
    }
    store.sync().unwrap();
    drop(store);
    if kind.is_persistent() {
        let store = kind.open(dir.path(), mode).unwrap();
        for m in &fresh {
            assert_eq!(
                store.get(&m.user_id, &m.campaign_key).unwrap().as_ref(),
                Some(m),
                "{kind:?} after reopen"
            );
        }
        assert_eq!(
            store
                .get(&last.user_id, &last.campaign_key)
                .unwrap()
                .as_ref(),
            Some(last)
        );
    }
}

#[test]
fn every_store_answers_like_a_user_storage_buffered() {
    for kind in kinds_from_env("TEST_STORES") {
        check(kind, Mode::Buffered);
    }
}

#[test]
fn every_store_answers_like_a_user_storage_durable() {
    for kind in kinds_from_env("TEST_STORES") {
        check(kind, Mode::Durable);
    }
}
