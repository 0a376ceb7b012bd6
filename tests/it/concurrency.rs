//! Many threads at once: readers never see another key's value or a torn value; group commit loses nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ussdb::{CampaignUserMap, Durability, Options, Store};

use crate::common::{open, tempdir};

/// A value that says which key and which version it is, with a goal list long enough to tear.
fn versioned(user: &str, campaign: &str, version: u64) -> CampaignUserMap {
    CampaignUserMap {
        user_id: user.to_owned(),
        campaign_key: campaign.to_owned(),
        variation_name: format!("{user}|{campaign}|{version}"),
        goal_identifier: Some(format!("{version}_vwo_").repeat(1 + (version % 40) as usize)),
    }
}

fn check(map: &CampaignUserMap, user: &str, campaign: &str) -> u64 {
    let parts: Vec<&str> = map.variation_name.split('|').collect();
    assert_eq!(parts.len(), 3, "{map:?}");
    assert_eq!(
        (parts[0], parts[1]),
        (user, campaign),
        "a get returned another key's value"
    );
    assert_eq!(
        (map.user_id.as_str(), map.campaign_key.as_str()),
        (user, campaign)
    );
    let version: u64 = parts[2].parse().expect("version");
    assert_eq!(map, &versioned(user, campaign, version), "torn value");
    version
}

#[test]
fn eight_threads_of_readers_and_writers_see_whole_values_of_their_own_key() {
    let dir = tempdir();
    let store = open(
        dir.path(),
        Options::default()
            .segment_size(64 * 1024)
            .durability(Durability::Never),
    );
    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for version in 0..1500u64 {
                    let user = format!("user-{}", version % 50);
                    store
                        .set(&versioned(&user, &format!("camp-{t}"), version))
                        .expect("set");
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut seen = 0u64;
                while !done.load(Ordering::Relaxed) {
                    for u in 0..50 {
                        let user = format!("user-{u}");
                        for t in 0..4 {
                            let campaign = format!("camp-{t}");
                            if let Some(m) = store.get(&user, &campaign).expect("get") {
                                check(&m, &user, &campaign);
                                seen += 1;
                            }
                        }
                        for m in store.campaigns_of(&user).expect("campaigns_of") {
                            check(&m, &user, &m.campaign_key.clone());
                        }
                    }
                }
                seen
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    done.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader");
    }
    // Each writer's last write of each user is the newest: versions 1450..1500.
    for t in 0..4 {
        for u in 0..50u64 {
            let m = store
                .get(&format!("user-{u}"), &format!("camp-{t}"))
                .expect("get")
                .expect("present");
            assert_eq!(
                check(&m, &format!("user-{u}"), &format!("camp-{t}")),
                1450 + u
            );
        }
    }
    drop(store);
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(store.stats().mappings, 200);
}

#[test]
fn concurrent_immediate_writers_all_get_their_writes_kept() {
    let dir = tempdir();
    let store = open(
        dir.path(),
        Options::default().durability(Durability::Immediate),
    );
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..40u64 {
                    store
                        .set(&versioned(&format!("u{t}"), &format!("c{i}"), i))
                        .expect("set");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer");
    }
    let stats = store.stats();
    assert_eq!(stats.sets, 320);
    assert!(stats.fsyncs >= 1 && stats.fsyncs <= stats.sets, "{stats:?}");
    drop(store);
    let store = Store::open(dir.path()).expect("reopen");
    for t in 0..8 {
        assert_eq!(
            store
                .campaigns_of(&format!("u{t}"))
                .expect("campaigns_of")
                .len(),
            40
        );
    }
}
