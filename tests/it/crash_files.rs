//! Crash loop with missing and stale files: a child process (this test binary, running the ignored
//! `crash_files_child` test) writes with `Durability::Immediate` while it compacts, printing every acknowledged
//! write; the parent kills it with SIGKILL, checks the reopened store against the acknowledged writes, and then
//! takes a file away or puts an old one back: a sealed segment, the newest segment, a hint file, a hint of
//! another segment, an old copy of a segment. `open` and `verify_dir` must name exactly that file (or, for a
//! hint, open without it and lose nothing); then the file is put right and the loop goes on.
//! `USSDB_CRASH_ITERS=300` runs the long version.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use ussdb::{Durability, Error, Options, Store};

use crate::common::{Rng, env_count, map, tempdir};
use crate::crash::{Op, State, apply};

const USERS: u64 = 6;
const CAMPAIGNS: u64 = 3;
const CHILD_MAX_OPS: u64 = 100_000;
const CHILD_DIR_VAR: &str = "USSDB_CRASH_FILES_DIR";
const CHILD_START_VAR: &str = "USSDB_CRASH_FILES_START";

fn options() -> Options {
    Options::default()
        .durability(Durability::Immediate)
        .segment_size(4096)
}

fn op(seq: u64) -> Op {
    let slot = seq.wrapping_mul(2_654_435_761) % (USERS * CAMPAIGNS);
    let (u, c) = (
        format!("u{}", slot / CAMPAIGNS),
        format!("c{}", slot % CAMPAIGNS),
    );
    match seq % 19 {
        18 => Op::Forget(u),
        n if n % 4 == 3 => Op::Delete(u, c),
        _ => {
            let goals = "goal_vwo_".repeat((seq % 30) as usize);
            Op::Set(map(&u, &c, &format!("s{seq}"), Some(&goals)))
        }
    }
}

#[test]
#[ignore = "the child process of the missing-file crash loop; does nothing unless started by it"]
fn crash_files_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_VAR) else {
        return;
    };
    let start: u64 = std::env::var(CHILD_START_VAR)
        .expect("start")
        .parse()
        .expect("a number");
    let store = Store::open_with(&dir, options()).expect("child: open");
    let compactor = {
        let store = store.clone();
        std::thread::spawn(move || {
            for _ in 0..CHILD_MAX_OPS {
                if store.compact().is_err() {
                    return;
                }
            }
        })
    };
    let mut out = std::io::stdout();
    for seq in start..start + CHILD_MAX_OPS {
        op(seq).run(&store);
        if writeln!(out, "ack {seq}")
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
    drop(compactor);
}

/// Everything the store holds, from a normal open; panics naming `context` if it does not open.
fn read_state(dir: &Path, context: &str) -> State {
    let store = Store::open_with(dir, options().auto_compaction(false))
        .unwrap_or_else(|e| panic!("{context}: open failed: {e}"));
    let mut found = State::new();
    for u in 0..USERS {
        for m in store.campaigns_of(&format!("u{u}")).expect("campaigns_of") {
            found.insert((m.user_id.clone(), m.campaign_key.clone()), m);
        }
    }
    assert_eq!(
        store.stats().mappings,
        found.len() as u64,
        "{context}: mappings nobody wrote"
    );
    found
}

fn active_id(dir: &Path) -> u32 {
    let bytes = std::fs::read(dir.join("MANIFEST")).expect("manifest");
    u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]])
}

fn names(dir: &Path, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .collect();
    names.sort();
    names
}

/// `open` must refuse naming `path`, and `verify_dir` must list it among the damage.
fn refused_naming(dir: &Path, path: &Path, context: &str) {
    match Store::open_with(dir, options().auto_compaction(false)) {
        Err(Error::Corrupted { path: named, .. }) => {
            assert_eq!(named, path, "{context}: open names the wrong file");
        }
        Err(e) => panic!("{context}: open failed otherwise: {e}"),
        Ok(_) => panic!("{context}: open succeeded without {}", path.display()),
    }
    let report = ussdb::verify_dir(dir).expect("verify_dir");
    assert!(
        report.damage.iter().any(|d| d.path == path),
        "{context}: verify_dir does not name {}: {report:?}",
        path.display()
    );
    assert!(
        report.damage.iter().all(|d| d.path == path),
        "{context}: verify_dir names other files too: {report:?}"
    );
}

#[derive(Default)]
struct Figures {
    kills: u64,
    acks: u64,
    removed_sealed: u64,
    removed_newest: u64,
    removed_hints: u64,
    stale_hints: u64,
    old_segments: u64,
}

#[test]
fn a_missing_or_stale_file_between_kills_is_named_and_nothing_acknowledged_is_lost() {
    let iters = env_count("USSDB_CRASH_ITERS", 30);
    let mut rng = Rng::seeded("crash_files");
    let dir = tempdir();
    let d = dir.path();
    let exe = std::env::current_exe().expect("test binary path");
    let mut state = State::new();
    let mut next = 0u64;
    // The first copy seen of every segment and hint file, by name: the old copies put back later.
    let mut saved: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut fig = Figures::default();
    for round in 0..iters {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_files::crash_files_child",
                "--ignored",
                "--nocapture",
                "-q",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_VAR, d)
            .env(CHILD_START_VAR, next.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the child");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let kill_after = 5 + rng.below(60);
        let mut acks = Vec::new();
        while (acks.len() as u64) < kill_after {
            match lines.next() {
                Some(line) => acks.extend(parse_ack(&line.expect("child output"))),
                None => break,
            }
        }
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("reap");
        for line in lines {
            acks.extend(parse_ack(&line.expect("child output")));
        }
        assert!(
            status.code().is_none(),
            "round {round}: the child ended on its own ({status})"
        );
        fig.kills += 1;
        fig.acks += acks.len() as u64;
        let expected: Vec<u64> = (next..next + acks.len() as u64).collect();
        assert_eq!(acks, expected, "round {round}: acknowledged out of order");
        let mut acked = state.clone();
        for &seq in &acks {
            apply(&mut acked, &op(seq));
        }
        let in_flight = op(next + acks.len() as u64);
        next += acks.len() as u64 + 1;
        let mut after = acked.clone();
        apply(&mut after, &in_flight);
        let context = format!("round {round}");
        let found = read_state(d, &context);
        assert!(
            found == acked || found == after,
            "{context}: the store lost or changed acknowledged writes (in flight: {in_flight:?})"
        );
        state = found;

        // Take a file away or put an old one back, check it is named, put it right.
        let active = format!("{:010}.seg", active_id(d));
        let segments = names(d, ".seg");
        let sealed: Vec<&String> = segments.iter().filter(|n| **n != active).collect();
        let hints = names(d, ".hint");
        let context = format!("round {round}");
        match round % 5 {
            0 if !sealed.is_empty() => {
                let name = sealed[rng.below(sealed.len() as u64) as usize].clone();
                take_away_and_back(d, &name, &format!("{context}, sealed {name} removed"));
                fig.removed_sealed += 1;
            }
            1 | 0 => {
                take_away_and_back(d, &active, &format!("{context}, newest {active} removed"));
                fig.removed_newest += 1;
            }
            2 if !hints.is_empty() => {
                let name = hints[rng.below(hints.len() as u64) as usize].clone();
                let path = d.join(&name);
                let bytes = std::fs::read(&path).expect("hint");
                std::fs::remove_file(&path).expect("remove hint");
                let report = ussdb::verify_dir(d).expect("verify_dir");
                assert!(report.damage.is_empty(), "{context}: {report:?}");
                assert!(
                    report.hint_problems.iter().any(|p| p.path == path),
                    "{context}: verify_dir does not name the missing {name}: {report:?}"
                );
                assert_eq!(read_state(d, &context), state, "{context}: without {name}");
                if !path.exists() {
                    std::fs::write(&path, bytes).expect("put the hint back");
                }
                fig.removed_hints += 1;
            }
            3 if !hints.is_empty()
                && saved.keys().any(|n| n.ends_with(".hint") && *n != hints[0]) =>
            {
                // The hint of another segment (one of now, or of one compacted away) under this one's name.
                let b = &hints[0];
                let (a, stale) = saved
                    .iter()
                    .find(|(n, _)| n.ends_with(".hint") && *n != b)
                    .expect("another hint");
                let path = d.join(b);
                let original = std::fs::read(&path).expect("hint");
                std::fs::write(&path, stale).expect("stale hint");
                let report = ussdb::verify_dir(d).expect("verify_dir");
                assert!(report.damage.is_empty(), "{context}: {report:?}");
                assert!(
                    report.hint_problems.iter().any(|p| p.path == path),
                    "{context}: verify_dir does not name the stale {b}: {report:?}"
                );
                assert_eq!(read_state(d, &context), state, "{context}: with {a} as {b}");
                if std::fs::read(&path).ok().as_deref() != Some(&original[..]) {
                    std::fs::write(&path, original).expect("put the hint right");
                }
                fig.stale_hints += 1;
            }
            _ => {
                // An old copy: of a segment compaction retired (an extra file), or an earlier, shorter copy of
                // one that has been sealed since (not the length the manifest recorded).
                let old = saved.iter().find(|(name, bytes)| {
                    name.ends_with(".seg")
                        && **name != active
                        && std::fs::read(d.join(name)).ok().as_ref() != Some(*bytes)
                });
                if let Some((name, bytes)) = old {
                    let path = d.join(name);
                    let current = std::fs::read(&path).ok();
                    std::fs::write(&path, bytes).expect("put an old copy back");
                    refused_naming(d, &path, &format!("{context}, old copy of {name}"));
                    match current {
                        Some(current) => std::fs::write(&path, current).expect("restore"),
                        None => std::fs::remove_file(&path).expect("take the old copy out"),
                    }
                    fig.old_segments += 1;
                }
            }
        }
        assert_eq!(
            read_state(d, &format!("{context}, put right")),
            state,
            "{context}: the store changed while a file was away"
        );
        let report = ussdb::verify_dir(d).expect("verify_dir");
        assert!(report.is_clean(), "{context}, put right: {report:?}");
        for name in names(d, ".seg").into_iter().chain(names(d, ".hint")) {
            if !saved.contains_key(&name) {
                saved.insert(name.clone(), std::fs::read(d.join(&name)).expect("copy"));
            }
        }
    }
    let files = fig.removed_sealed + fig.removed_newest + fig.removed_hints;
    eprintln!(
        "crash_files: {} kills, {} acknowledged writes, none lost; {files} files removed and put back \
         ({} sealed segments, {} newest segments, {} hints), {} stale hints, {} old segment copies put back; \
         each named by open or verify_dir",
        fig.kills,
        fig.acks,
        fig.removed_sealed,
        fig.removed_newest,
        fig.removed_hints,
        fig.stale_hints,
        fig.old_segments
    );
    assert!(fig.removed_newest > 0 && fig.kills == iters);
}

/// Removes `name`, checks that open and verify_dir name it, and puts it back.
fn take_away_and_back(dir: &Path, name: &str, context: &str) {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).expect("read the file");
    std::fs::remove_file(&path).expect("remove");
    refused_naming(dir, &path, context);
    std::fs::write(&path, bytes).expect("put it back");
}

fn parse_ack(line: &str) -> Option<u64> {
    line[line.find("ack ")? + 4..].trim().parse().ok()
}
