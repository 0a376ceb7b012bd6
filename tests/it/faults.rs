//! Fault injection: a random workload runs on the simulated file system (`simfs.rs`) with one fault planned at
//! a time, at every call number in turn: the Nth write fails (cleanly, after half the buffer, or with ENOSPC),
//! the Nth fsync fails, the disk fills up, or the power fails at the Nth mutating call. A model of the
//! workload says what must survive each.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use ussdb::{CampaignUserMap, Durability, Error, Options, Store};

use crate::common::{Rng, env_count, map, tempdir};
use crate::simfs::{SimFs, WriteFault};

// ---- The workload and its model ----

const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const CAMPAIGNS: [&str; 3] = ["home", "cart", "pay"];

#[derive(Clone, Debug)]
enum Op {
    Set(CampaignUserMap),
    Delete(&'static str, &'static str),
    Forget(&'static str),
    Sync,
    Compact,
}

type Key = (String, String);
type Model = BTreeMap<Key, CampaignUserMap>;

fn workload(rng: &mut Rng, len: usize) -> Vec<Op> {
    (0..len)
        .map(|i| {
            let (u, c) = (
                USERS[rng.below(4) as usize],
                CAMPAIGNS[rng.below(3) as usize],
            );
            match rng.below(22) {
                0..=12 => {
                    // Up to ~600 bytes per record: a 4 KiB segment rotates every few writes.
                    let goals = "purchase_vwo_".repeat(rng.below(48) as usize);
                    Op::Set(map(u, c, &format!("v{i}"), Some(&goals)))
                }
                13..=16 => Op::Delete(u, c),
                17 => Op::Forget(u),
                18 | 19 => Op::Sync,
                _ => Op::Compact,
            }
        })
        .collect()
}

fn key(u: &str, c: &str) -> Key {
    (u.to_owned(), c.to_owned())
}

fn apply(model: &mut Model, op: &Op) {
    match op {
        Op::Set(m) => {
            model.insert(key(&m.user_id, &m.campaign_key), m.clone());
        }
        Op::Delete(u, c) => {
            model.remove(&key(u, c));
        }
        Op::Forget(u) => model.retain(|(mu, _), _| mu != u),
        Op::Sync | Op::Compact => {}
    }
}

fn run(store: &Store, op: &Op) -> Result<(), Error> {
    match op {
        Op::Set(m) => store.set(m),
        Op::Delete(u, c) => store.delete(u, c).map(drop),
        Op::Forget(u) => store.forget_user(u).map(drop),
        Op::Sync => store.sync(),
        Op::Compact => store.compact(),
    }
}

/// What a store must hold: `sure` exactly, except that each key of `either` may hold its before or after value
/// (a failed operation may or may not have reached the disk).
#[derive(Default, Clone)]
struct Expect {
    sure: Model,
    either: Vec<(Key, Option<CampaignUserMap>, Option<CampaignUserMap>)>,
}

impl Expect {
    fn failed(&mut self, op: &Op) {
        let mut after = self.sure.clone();
        apply(&mut after, op);
        for u in USERS {
            for c in CAMPAIGNS {
                let k = key(u, c);
                if after.get(&k) != self.sure.get(&k) {
                    self.either.push((
                        k.clone(),
                        self.sure.get(&k).cloned(),
                        after.get(&k).cloned(),
                    ));
                }
            }
        }
    }

    fn check(&self, store: &Store, context: &str) {
        let mut found = 0;
        for u in USERS {
            let all = store.campaigns_of(u).expect("campaigns_of");
            found += all.len();
            for c in CAMPAIGNS {
                let k = key(u, c);
                let got = store.get(u, c).expect("get");
                assert_eq!(
                    got.as_ref(),
                    all.iter().find(|m| m.campaign_key == c),
                    "{context}: get vs campaigns_of"
                );
                let want = self.sure.get(&k);
                if got.as_ref() == want {
                    continue;
                }
                let allowed = self
                    .either
                    .iter()
                    .any(|(ek, before, after)| *ek == k && (got == *before || got == *after));
                assert!(allowed, "{context}: {k:?} holds {got:?}, expected {want:?}");
            }
        }
        assert_eq!(
            store.stats().mappings,
            found as u64,
            "{context}: mappings nobody wrote"
        );
    }
}

fn reopen_and_check(dir: &Path, expect: &Expect, context: &str) {
    let store = Store::open_with(
        dir,
        Options::default().segment_size(4096).auto_compaction(false),
    )
    .unwrap_or_else(|e| panic!("{context}: reopen failed: {e}"));
    expect.check(&store, &format!("{context}, after reopen"));
}

/// Counts the writes and fsyncs of a fault-free run of `ops`, to know which numbers to fail.
fn count_calls(ops: &[Op]) -> (u64, u64, u64) {
    let dir = tempdir();
    let vfs = SimFs::default();
    let store = Store::open_with(dir.path(), vfs.options(Durability::Immediate)).expect("open");
    for op in ops {
        run(&store, op).expect("fault-free run");
    }
    drop(store);
    let counts = vfs.counts();
    (counts.writes, counts.syncs, counts.mutations)
}

/// Runs `ops` against a fresh store over `vfs`, until the end or the first error; returns what must hold,
/// whether an operation failed, and the store (None if open itself failed).
fn run_until_error(
    dir: &Path,
    vfs: &SimFs,
    durability: Durability,
    ops: &[Op],
) -> (Expect, Option<Error>, Option<Store>) {
    let mut expect = Expect::default();
    let store = match Store::open_with(dir, vfs.options(durability)) {
        Ok(store) => store,
        Err(e) => return (expect, Some(e), None),
    };
    for op in ops {
        match run(&store, op) {
            Ok(()) => apply(&mut expect.sure, op),
            Err(e) => {
                expect.failed(op);
                return (expect, Some(e), Some(store));
            }
        }
    }
    (expect, None, Some(store))
}

fn seeded_workload(test: &str) -> Vec<Op> {
    let mut rng = Rng::seeded(test);
    workload(&mut rng, env_count("USSDB_FAULT_OPS", 60) as usize)
}

#[test]
fn every_failed_write_returns_an_error_and_the_store_goes_on_without_losing_anything() {
    let ops = seeded_workload("every_failed_write");
    let (writes, _, _) = count_calls(&ops);
    let mut injected = 0;
    for fault in [WriteFault::Error, WriteFault::Half, WriteFault::NoSpace] {
        for n in 1..=writes {
            let context = format!("{fault:?} at write {n}");
            let dir = tempdir();
            let vfs = SimFs::default();
            vfs.lock().plan.fail_write = Some((n, fault));
            let (mut expect, err, store) =
                run_until_error(dir.path(), &vfs, Durability::Immediate, &ops);
            injected += vfs.counts().injected;
            let Some(err) = err else {
                // ENOSPC on a sync point: it is left out, since the fsync it follows succeeded and the writes it
                // covered are durable; nothing fails and nothing is lost.
                assert_eq!(fault, WriteFault::NoSpace, "{context}: no operation failed");
                let store = store.unwrap_or_else(|| panic!("{context}: open failed"));
                expect.check(&store, &context);
                drop(store);
                reopen_and_check(dir.path(), &expect, &context);
                continue;
            };
            assert!(matches!(err, Error::Io { .. }), "{context}: {err:?}");
            if fault == WriteFault::NoSpace {
                let Error::Io { source, .. } = &err else {
                    unreachable!()
                };
                assert_eq!(
                    source.kind(),
                    io::ErrorKind::StorageFull,
                    "{context}: ENOSPC is passed on"
                );
            }
            let Some(store) = store else { continue };
            // A failed append was cut back off, so the store keeps serving, reads and writes alike, and the
            // failed operation left no trace (a failed forget_user may have erased some of the user's keys).
            expect.check(&store, &context);
            for op in &ops {
                run(&store, op)
                    .unwrap_or_else(|e| panic!("{context}: write after a clean failure: {e}"));
                apply(&mut expect.sure, op);
            }
            expect.check(&store, &context);
            drop(store);
            reopen_and_check(dir.path(), &expect, &context);
        }
    }
    eprintln!("every_failed_write: {injected} write faults injected, nothing lost");
}

#[test]
fn a_failed_append_that_cannot_be_cut_back_poisons_the_store_and_reopen_cuts_it() {
    let dir = tempdir();
    let vfs = SimFs::default();
    let store = Store::open_with(dir.path(), vfs.options(Durability::Immediate)).expect("open");
    let kept = map("alice", "home", "kept", None);
    store.set(&kept).expect("set");
    vfs.fail_next_write(WriteFault::Half);
    vfs.lock().plan.fail_set_len = true;
    let err = store
        .set(&map("alice", "cart", "torn", None))
        .expect_err("the write fails");
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    vfs.lock().plan.fail_set_len = false;
    let err = store
        .set(&map("bob", "home", "refused", None))
        .expect_err("poisoned");
    assert!(matches!(err, Error::Poisoned { .. }), "{err:?}");
    drop(store);
    let mut expect = Expect::default();
    expect.sure.insert(key("alice", "home"), kept);
    reopen_and_check(dir.path(), &expect, "half a record on disk");
}

#[test]
fn every_failed_fsync_poisons_the_store_until_reopened_and_loses_nothing_acknowledged() {
    let ops = seeded_workload("every_failed_fsync");
    let (_, syncs, _) = count_calls(&ops);
    let mut injected = 0;
    for n in 1..=syncs {
        for power_cut in [false, true] {
            let context = format!("fsync {n} fails, power cut: {power_cut}");
            let dir = tempdir();
            let vfs = SimFs::default();
            vfs.lock().plan.fail_sync = Some(n);
            let (mut expect, err, store) =
                run_until_error(dir.path(), &vfs, Durability::Immediate, &ops);
            injected += vfs.counts().injected;
            let err = err.unwrap_or_else(|| panic!("{context}: no operation failed"));
            assert!(matches!(err, Error::Io { .. }), "{context}: {err:?}");
            if let Some(store) = store {
                let poisoned = matches!(store.sync(), Err(Error::Poisoned { .. }));
                if poisoned {
                    // Not a retry: the failed fsync may have dropped dirty pages, so every write is refused.
                    for op in &ops[..4] {
                        let refused = run(&store, op)
                            .expect_err(&format!("{context}: a poisoned store refuses {op:?}"));
                        assert!(
                            matches!(refused, Error::Poisoned { .. }),
                            "{context}: {refused:?}"
                        );
                    }
                } else {
                    // Only a failed fsync while a new file is created (its contents, or the directory) may
                    // leave the store writing: no acknowledged record is in that file yet, and the next
                    // write redoes the whole creation.
                    assert!(
                        vfs.counts().failed_sync_was_creation,
                        "{context}: a failed fsync of data must poison the store"
                    );
                    expect.check(&store, &context);
                    for op in &ops {
                        run(&store, op)
                            .unwrap_or_else(|e| panic!("{context}: write after the retry: {e}"));
                        apply(&mut expect.sure, op);
                    }
                }
                expect.check(&store, &context);
                if power_cut {
                    vfs.halt_now();
                }
                drop(store);
            }
            if power_cut {
                vfs.restore_durable_image();
            }
            reopen_and_check(dir.path(), &expect, &context);
        }
    }
    eprintln!("every_failed_fsync: {injected} fsync faults injected, nothing acknowledged lost");
}

#[test]
fn power_loss_at_every_write_fsync_and_rename_keeps_every_acknowledged_write() {
    let ops = seeded_workload("power_loss_at_every_call");
    let (_, _, mutations) = count_calls(&ops);
    let mut injected = 0;
    for n in 1..=mutations {
        let context = format!("power cut at call {n} of {mutations}");
        let dir = tempdir();
        let vfs = SimFs::default();
        vfs.lock().plan.halt_at = Some(n);
        let (expect, err, store) = run_until_error(dir.path(), &vfs, Durability::Immediate, &ops);
        assert!(err.is_some(), "{context}: no operation failed");
        injected += vfs.counts().injected;
        drop(store);
        vfs.restore_durable_image();
        reopen_and_check(dir.path(), &expect, &context);
    }
    eprintln!("power_loss_at_every_call: {injected} power cuts, nothing acknowledged lost");
}

/// The states `op` leaves if any subset of the keys it changes took the change.
fn partial_states(before: &Model, op: &Op) -> Vec<Model> {
    let mut after = before.clone();
    apply(&mut after, op);
    let changed: Vec<Key> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    (0..1u32 << changed.len())
        .map(|subset| {
            let mut state = before.clone();
            for (bit, k) in changed.iter().enumerate() {
                if subset & (1 << bit) != 0 {
                    match after.get(k) {
                        Some(m) => state.insert(k.clone(), m.clone()),
                        None => state.remove(k),
                    };
                }
            }
            state
        })
        .collect()
}

fn open_state(dir: &Path) -> Result<Model, Error> {
    let store = Store::open_with(
        dir,
        Options::default().segment_size(4096).auto_compaction(false),
    )?;
    let mut found = Model::new();
    for u in USERS {
        for m in store.campaigns_of(u).expect("campaigns_of") {
            found.insert(key(&m.user_id, &m.campaign_key), m);
        }
    }
    Ok(found)
}

/// Runs the workload with `Durability::Never` and a power cut at every call; after the cut, `restore` rebuilds
/// the directory. Every reopened store must hold a state the store passed through since its last explicit sync.
/// Returns how many power cuts were checked.
fn every_power_cut_opens_into_a_prefix(
    ops: &[Op],
    segment_size: u64,
    mut restore: impl FnMut(&SimFs),
) -> u64 {
    let (_, _, mutations) = count_calls(ops);
    for n in 1..=mutations {
        let dir = tempdir();
        let vfs = SimFs::default();
        vfs.lock().plan.halt_at = Some(n);
        let mut states = vec![Model::new()];
        let mut model = Model::new();
        let options = vfs.options(Durability::Never).segment_size(segment_size);
        if let Ok(store) = Store::open_with(dir.path(), options) {
            for op in ops {
                if run(&store, op).is_err() {
                    // Some of the failed operation's records may have reached the file before the cut (a
                    // forget_user writes one per key): any part of it may survive.
                    states.extend(partial_states(&model, op));
                    break;
                }
                apply(&mut model, op);
                if matches!(op, Op::Sync) {
                    states.clear();
                }
                states.push(model.clone());
            }
            vfs.halt_now();
            drop(store);
        }
        restore(&vfs);
        let context = format!("Never, power cut at call {n} of {mutations}");
        let found =
            open_state(dir.path()).unwrap_or_else(|e| panic!("{context}: reopen failed: {e}"));
        assert!(
            states.contains(&found),
            "{context}: {found:?} is no state the store passed through since the last sync"
        );
    }
    mutations
}

#[test]
fn power_loss_without_fsyncs_keeps_a_prefix_of_the_writes_since_the_last_sync() {
    // Durability::Never: a power cut may take the writes since the last fsync, but what survives is the state
    // after some prefix of them, never a mix, and nothing from before the last sync is lost.
    let ops = seeded_workload("power_loss_without_fsyncs");
    let cuts = every_power_cut_opens_into_a_prefix(&ops, 4096, SimFs::restore_durable_image);
    eprintln!("power_loss_without_fsyncs: {cuts} power cuts, every survivor a prefix");
}

#[test]
fn power_loss_with_pages_written_back_out_of_order_opens_into_a_prefix() {
    // Pins: without fsyncs, the page cache may write back a later page of the newest segment and not an earlier
    // one. That hole (a page ending in zeros before intact records) used to fail `open` with `Corrupted`; it is
    // lost write-back, not damage, so recovery cuts it off and opens into a state from since the last sync.
    let mut rng = Rng::seeded("power_loss_out_of_order");
    let ops = workload(&mut rng, env_count("USSDB_FAULT_OPS", 60) as usize);
    // Segments of 64 KiB, so the unsynced tail spans several pages.
    let cuts = every_power_cut_opens_into_a_prefix(&ops, 64 << 10, |vfs| {
        vfs.restore_scrambled_image(&mut rng)
    });
    eprintln!("power_loss_out_of_order: {cuts} power cuts, every one opened into a prefix");
}

#[test]
fn a_full_disk_fails_writes_cleanly_and_they_succeed_again_once_space_is_freed() {
    let ops = seeded_workload("a_full_disk");
    let dir = tempdir();
    let vfs = SimFs::default();
    let store = Store::open_with(dir.path(), vfs.options(Durability::Immediate)).expect("open");
    let mut expect = Expect::default();
    vfs.lock().plan.capacity = Some(6000);
    let mut full = 0;
    for op in ops.iter().chain(&ops) {
        match run(&store, op) {
            Ok(()) => apply(&mut expect.sure, op),
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::StorageFull => {
                full += 1;
                expect.failed(op);
                expect.check(&store, "disk full");
                // Settle what the failed operation left (a failed forget_user may be partial).
                expect.sure = BTreeMap::new();
                for u in USERS {
                    for m in store.campaigns_of(u).expect("campaigns_of") {
                        expect.sure.insert(key(&m.user_id, &m.campaign_key), m);
                    }
                }
                expect.either.clear();
            }
            Err(e) => panic!("disk full: unexpected error {e:?}"),
        }
    }
    assert!(full > 0, "the disk never filled up");
    eprintln!(
        "a_full_disk: {} ENOSPC faults injected, nothing lost",
        vfs.counts().injected
    );
    vfs.lock().plan.capacity = None;
    for op in &ops {
        run(&store, op).expect("writes succeed again once there is space");
        apply(&mut expect.sure, op);
    }
    expect.check(&store, "space freed");
    drop(store);
    reopen_and_check(dir.path(), &expect, "space freed");
}

#[test]
fn compaction_keeps_an_old_value_until_its_replacement_is_durable() {
    // Regression: compaction dropped a durable record superseded by one not yet fsynced; a power cut then lost
    // both, so the key vanished.
    let dir = tempdir();
    let vfs = SimFs::default();
    let store = Store::open_with(dir.path(), vfs.options(Durability::Never)).expect("open");
    let old = map("alice", "home", "old", None);
    store.set(&old).expect("set");
    for i in 0..12 {
        let goals = "purchase_vwo_".repeat(30);
        store
            .set(&map("bob", &format!("c{i}"), "v", Some(&goals)))
            .expect("fill");
    }
    store.sync().expect("sync: the old value is durable");
    let new = map("alice", "home", "new", None);
    store.set(&new).expect("set, not yet durable");
    store.compact().expect("compact");
    vfs.halt_now();
    drop(store);
    vfs.restore_durable_image();
    let store =
        Store::open_with(dir.path(), Options::default().auto_compaction(false)).expect("reopen");
    let got = store.get("alice", "home").expect("get");
    assert!(
        got == Some(old.clone()) || got == Some(new.clone()),
        "alice/home holds {got:?} after the power cut"
    );
}
