//! Crash and power cut during compaction, on the simulated file system (`simfs.rs`): for every N until
//! compaction completes, the file system halts at the Nth change to the disk. Left as it is, the directory is a
//! `kill -9` at that point (everything written stays, nothing after it happens); rewritten to its durable image,
//! it is a power cut there (only what was fsynced survives). Either way the reopened store must hold exactly the
//! model, and compact and reopen cleanly again.

use std::collections::HashMap;
use std::path::Path;

use ussdb::{CampaignUserMap, Durability, Options, Store};

use crate::common::{copy_dir_to_memory, map, memory_tempdir, open};
use crate::simfs::SimFs;

type Model = HashMap<(String, String), CampaignUserMap>;

fn manual() -> Options {
    Options::default()
        .segment_size(4096)
        .durability(Durability::Never)
        .auto_compaction(false)
}

fn check(dir: &Path, model: &Model, keys: &[(String, String)], what: &str) -> Store {
    let store =
        Store::open_with(dir, manual()).unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
    for (u, c) in keys {
        let want = model.get(&(u.clone(), c.clone()));
        assert_eq!(
            store.get(u, c).expect("get").as_ref(),
            want,
            "{what}: {u}/{c}"
        );
    }
    assert_eq!(store.stats().mappings, model.len() as u64, "{what}");
    store
}

/// Compacts again after reopening, reopens again, and checks that no temporary file is left: a crash or power
/// cut must leave nothing that a later compaction trips over.
fn check_and_compact_again(dir: &Path, model: &Model, keys: &[(String, String)], what: &str) {
    let store = check(dir, model, keys, what);
    store
        .compact()
        .unwrap_or_else(|e| panic!("{what}: compaction after reopen: {e}"));
    drop(store);
    drop(check(dir, model, keys, &format!("{what}, compacted again")));
    let left: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{what}: temporary files left: {left:?}");
}

/// How a run ends after the halt: as it is (a process crash) or cut back to the durable image (a power cut).
#[derive(Clone, Copy)]
enum Halt {
    Crash,
    PowerCut,
}

/// Runs `compact` on copies of `template`, halting the file system after 0, 1, 2, ... changes, until it
/// completes; returns the number of changes compaction made.
fn halt_at_every_step(
    halt: Halt,
    template: &Path,
    model: &Model,
    keys: &[(String, String)],
    compact: &dyn Fn(&Store),
) -> usize {
    for n in 0.. {
        let copy = copy_dir_to_memory(template);
        let fs = SimFs::default();
        let store = open(copy.path(), manual().vfs(fs.vfs()));
        // Counted from here: opening the store makes changes too, and those are not what is tested.
        fs.halt_after(n);
        compact(&store);
        let halted = fs.counts().halted;
        // Whatever compaction did in memory, reads still answer from the model until the store closes.
        for (u, c) in keys.iter().take(20) {
            let want = model.get(&(u.clone(), c.clone()));
            assert_eq!(
                store.get(u, c).expect("get").as_ref(),
                want,
                "step {n}, before reopen"
            );
        }
        drop(store);
        let what = match halt {
            Halt::Crash => format!("crash at step {n} ({halted:?})"),
            Halt::PowerCut => {
                // Also when compaction completed: the image then holds what its fsyncs made durable.
                fs.restore_durable_image();
                format!("power cut after {n} changes ({halted:?})")
            }
        };
        check_and_compact_again(copy.path(), model, keys, &what);
        if halted.is_none() {
            return n as usize;
        }
    }
    unreachable!()
}

fn crash_at_every_step(
    template: &Path,
    model: &Model,
    keys: &[(String, String)],
    compact: &dyn Fn(&Store),
) -> usize {
    halt_at_every_step(Halt::Crash, template, model, keys, compact)
}

fn power_cut_at_every_step(
    template: &Path,
    model: &Model,
    keys: &[(String, String)],
    compact: &dyn Fn(&Store),
) -> usize {
    halt_at_every_step(Halt::PowerCut, template, model, keys, compact)
}

fn build(dir: &Path, rounds: usize, delete_every: usize) -> (Model, Vec<(String, String)>) {
    build_keys(dir, 40, rounds, delete_every)
}

fn build_keys(
    dir: &Path,
    count: usize,
    rounds: usize,
    delete_every: usize,
) -> (Model, Vec<(String, String)>) {
    let store = open(dir, manual());
    let mut model = Model::new();
    let keys: Vec<(String, String)> = (0..count)
        .map(|k| (format!("user-{k}"), format!("camp-{}", k % 3)))
        .collect();
    for round in 0..rounds {
        for (k, (u, c)) in keys.iter().enumerate() {
            if (k + round).is_multiple_of(delete_every) {
                store.delete(u, c).expect("delete");
                model.remove(&(u.clone(), c.clone()));
            } else {
                let m = map(u, c, &format!("v{round}"), Some(&"g".repeat(k * 2)));
                store.set(&m).expect("set");
                model.insert((u.clone(), c.clone()), m);
            }
        }
    }
    (model, keys)
}

#[test]
fn a_crash_at_any_step_of_a_full_compaction_loses_nothing() {
    let template = memory_tempdir();
    let (model, keys) = build(template.path(), 8, 5);
    let steps = crash_at_every_step(template.path(), &model, &keys, &|store| {
        let _ = store.compact();
    });
    eprintln!("full compaction: {steps} steps");
    assert!(
        steps > 20,
        "compaction took only {steps} steps: the test covers too little"
    );
}

#[test]
fn a_crash_at_any_step_of_compacting_a_middle_run_keeps_tombstones() {
    // The run does not start at the oldest segment, so its tombstones must survive every step.
    let template = memory_tempdir();
    let (model, keys) = build(template.path(), 8, 3);
    let steps = crash_at_every_step(template.path(), &model, &keys, &|store| {
        let _ = store.compact_file_range_for_tests(3, 6);
    });
    assert!(steps > 8, "compaction took only {steps} steps");
}

#[test]
fn a_power_cut_at_any_step_of_a_full_compaction_loses_nothing() {
    let template = memory_tempdir();
    let (model, keys) = build(template.path(), 8, 5);
    let steps = power_cut_at_every_step(template.path(), &model, &keys, &|store| {
        let _ = store.compact();
    });
    assert!(steps > 20, "compaction took only {steps} steps");
}

#[test]
fn a_power_cut_at_any_step_of_compacting_a_middle_run_keeps_tombstones() {
    let template = memory_tempdir();
    let (model, keys) = build(template.path(), 8, 3);
    let steps = power_cut_at_every_step(template.path(), &model, &keys, &|store| {
        let _ = store.compact_file_range_for_tests(3, 6);
    });
    assert!(steps > 8, "compaction took only {steps} steps");
}

#[test]
fn a_crash_or_power_cut_while_hint_files_are_written_loses_nothing() {
    // No dead bytes anywhere: the pass only writes a hint file for each sealed segment.
    let template = memory_tempdir();
    let (model, keys) = build_keys(template.path(), 200, 1, usize::MAX);
    let write_hints = |store: &Store| {
        let _ = store.compact();
    };
    let steps = crash_at_every_step(template.path(), &model, &keys, &write_hints);
    assert!(steps > 3, "writing hints took only {steps} steps");
    let cuts = power_cut_at_every_step(template.path(), &model, &keys, &write_hints);
    assert_eq!(cuts, steps, "the power was cut at every step a crash hit");
}
