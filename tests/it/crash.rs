//! Crash loop: a child process (this test binary, running the ignored `crash_child` test) writes with
//! `Durability::Immediate` while it compacts, and reports every acknowledged write on stdout; the parent kills it with SIGKILL at
//! a random moment, reopens the store and checks that every acknowledged write is there with its newest value
//! and that nothing else is. `USSDB_CRASH_KILLS=5000` runs the long version.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use ussdb::{CampaignUserMap, Durability, Options, Store};

use crate::common::{Rng, env_count, map, tempdir};

/// Writer threads in the child; each owns its keys, so its in-flight operation is the only unknown per key.
const WRITERS: u64 = 3;
/// Per writer: 7 users × 3 campaigns.
const USERS_PER_WRITER: u64 = 7;
const CAMPAIGNS: u64 = 3;
/// A child that outlives its parent (which stops reading) must still end.
const CHILD_MAX_OPS: u64 = 100_000;

const CHILD_DIR_VAR: &str = "USSDB_CRASH_CHILD_DIR";
const CHILD_START_VAR: &str = "USSDB_CRASH_CHILD_START";

fn options() -> Options {
    // Small segments, so kills also land during rotation (fsync, create, rename, directory fsync). Every open
    // replays its hints on two threads (the path of large hints; the missing-file loop keeps the one-thread one).
    // The parent's checking open closes cleanly and saves the index, which the next child loads; the parent's own
    // opens after a kill rebuild it (the child's open removed the file).
    Options::default()
        .durability(Durability::Immediate)
        .segment_size(4096)
        .parallel_hint_replay_for_tests(2)
        .save_index_from(0)
}

/// The operation writer `w` performs as its `seq`-th, a pure function so the parent can replay it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    Set(CampaignUserMap),
    Delete(String, String),
    Forget(String),
}

fn user(w: u64, n: u64) -> String {
    format!("w{w}-u{n}")
}

fn campaign(n: u64) -> String {
    format!("c{n}")
}

fn op(w: u64, seq: u64) -> Op {
    let slot = seq.wrapping_mul(2_654_435_761) % (USERS_PER_WRITER * CAMPAIGNS);
    let (u, c) = (user(w, slot / CAMPAIGNS), campaign(slot % CAMPAIGNS));
    match seq % 23 {
        22 => Op::Forget(u),
        n if n % 5 == 4 => Op::Delete(u, c),
        _ => {
            // Values of varying size, so records straddle pages and segment ends at different offsets.
            let goals = (!seq.is_multiple_of(4)).then(|| "goal_vwo_".repeat((seq % 40) as usize));
            Op::Set(map(&u, &c, &format!("w{w}-s{seq}"), goals.as_deref()))
        }
    }
}

/// The mappings a sequence of operations leaves.
pub(crate) type State = BTreeMap<(String, String), CampaignUserMap>;

impl Op {
    /// Performs the operation on `store` (in a child process: a failure ends it).
    pub(crate) fn run(self, store: &Store) {
        match self {
            Op::Set(m) => store.set(&m).expect("child: set"),
            Op::Delete(u, c) => drop(store.delete(&u, &c).expect("child: delete")),
            Op::Forget(u) => drop(store.forget_user(&u).expect("child: forget_user")),
        }
    }
}

/// What `op` leaves of `state`.
pub(crate) fn apply(state: &mut State, op: &Op) {
    match op {
        Op::Set(m) => {
            state.insert((m.user_id.clone(), m.campaign_key.clone()), m.clone());
        }
        Op::Delete(u, c) => {
            state.remove(&(u.clone(), c.clone()));
        }
        Op::Forget(u) => state.retain(|(mu, _), _| mu != u),
    }
}

/// The keys an operation may change.
fn touches(op: &Op) -> Vec<(String, String)> {
    match op {
        Op::Set(m) => vec![(m.user_id.clone(), m.campaign_key.clone())],
        Op::Delete(u, c) => vec![(u.clone(), c.clone())],
        Op::Forget(u) => (0..CAMPAIGNS).map(|c| (u.clone(), campaign(c))).collect(),
    }
}

#[test]
#[ignore = "the child process of the crash loop; does nothing unless started by it"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_VAR) else {
        return;
    };
    let starts: Vec<u64> = std::env::var(CHILD_START_VAR)
        .expect("start sequence numbers")
        .split(',')
        .map(|s| s.parse().expect("a sequence number"))
        .collect();
    let store = Store::open_with(&dir, options()).expect("child: open");
    let out = Arc::new(std::io::stdout());
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, out, start) = (store.clone(), Arc::clone(&out), starts[w as usize]);
            std::thread::spawn(move || {
                for seq in start..start + CHILD_MAX_OPS {
                    op(w, seq).run(&store);
                    // Only a returned call is acknowledged; the line is flushed before the next write starts.
                    let mut out = out.lock();
                    if writeln!(out, "ack {w} {seq}")
                        .and_then(|()| out.flush())
                        .is_err()
                    {
                        return; // The parent is gone.
                    }
                }
            })
        })
        .collect();
    // Compaction runs all the time too, so kills land in every step of it (and the background thread adds
    // hint files and threshold compactions of its own).
    let compactor = std::thread::spawn(move || {
        for _ in 0..CHILD_MAX_OPS {
            store.compact().expect("child: compact");
        }
    });
    for writer in writers {
        writer.join().expect("child writer");
    }
    compactor.join().expect("child compactor");
}

/// Checks the reopened store against the acknowledged state; an in-flight operation's keys may hold either its
/// before or after state. Returns the state found, which the next round builds on.
fn verify(dir: &Path, acked: &State, in_flight: &[Op], round: u64) -> State {
    let store = Store::open_with(dir, options())
        .unwrap_or_else(|e| panic!("round {round}: reopen after SIGKILL failed: {e}"));
    let mut found = State::new();
    for w in 0..WRITERS {
        for u in 0..USERS_PER_WRITER {
            let u = user(w, u);
            for m in store.campaigns_of(&u).expect("campaigns_of") {
                found.insert((m.user_id.clone(), m.campaign_key.clone()), m);
            }
            for c in 0..CAMPAIGNS {
                let got = store.get(&u, &campaign(c)).expect("get");
                assert_eq!(
                    got.as_ref(),
                    found.get(&(u.clone(), campaign(c))),
                    "round {round}: get and campaigns_of disagree"
                );
            }
        }
    }
    // Nothing outside the writers' key space appeared either.
    assert_eq!(
        store.stats().mappings,
        found.len() as u64,
        "round {round}: mappings the writers never made"
    );
    let mut after = acked.clone();
    for op in in_flight {
        apply(&mut after, op);
    }
    let maybe: Vec<(String, String)> = in_flight.iter().flat_map(touches).collect();
    let keys: std::collections::BTreeSet<_> = acked
        .keys()
        .chain(found.keys())
        .chain(after.keys())
        .cloned()
        .collect();
    for key in keys {
        let (got, want) = (found.get(&key), acked.get(&key));
        if got == want {
            continue;
        }
        assert!(
            maybe.contains(&key) && got == after.get(&key),
            "round {round}: {key:?} holds {got:?}, but the last acknowledged write left {want:?} \
             (in flight: {in_flight:?})"
        );
    }
    found
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let kills = env_count("USSDB_CRASH_KILLS", 250);
    let mut rng = Rng::seeded("acknowledged_writes_survive_sigkill");
    let dir = tempdir();
    let exe = std::env::current_exe().expect("test binary path");
    let mut next: Vec<u64> = vec![0; WRITERS as usize];
    let mut state = State::new();
    let mut acks_total = 0u64;
    for round in 0..kills {
        let starts = next
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash::crash_child",
                "--ignored",
                "--nocapture",
                "-q",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_VAR, dir.path())
            .env(CHILD_START_VAR, &starts)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the crash child");
        let mut lines = BufReader::new(child.stdout.take().expect("child stdout")).lines();
        // One kill in eight lands before the first acknowledgement: during start-up and recovery.
        let kill_after = if rng.below(8) == 0 {
            0
        } else {
            1 + rng.below(40)
        };
        let mut acks = Vec::new();
        while (acks.len() as u64) < kill_after {
            match lines.next() {
                Some(line) => acks.extend(parse_ack(&line.expect("child output"))),
                None => break,
            }
        }
        if kill_after == 0 {
            std::thread::sleep(std::time::Duration::from_micros(rng.below(30_000)));
        }
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("reap the child");
        // Everything the child printed before it died was acknowledged.
        for line in lines {
            acks.extend(parse_ack(&line.expect("child output")));
        }
        assert!(
            status.code().is_none(),
            "round {round}: the child ended on its own ({status}) instead of being killed"
        );

        let mut acked = state.clone();
        let mut in_flight = Vec::new();
        for w in 0..WRITERS {
            let mine: Vec<u64> = acks.iter().filter(|a| a.0 == w).map(|a| a.1).collect();
            let expected: Vec<u64> =
                (next[w as usize]..next[w as usize] + mine.len() as u64).collect();
            assert_eq!(
                mine, expected,
                "round {round}: writer {w} acknowledged out of order"
            );
            for &seq in &mine {
                apply(&mut acked, &op(w, seq));
            }
            let pending = next[w as usize] + mine.len() as u64;
            in_flight.push(op(w, pending));
            // The in-flight operation's outcome is settled by `verify`; the next child starts after it.
            next[w as usize] = pending + 1;
        }
        acks_total += acks.len() as u64;
        state = verify(dir.path(), &acked, &in_flight, round);
    }
    eprintln!(
        "acknowledged_writes_survive_sigkill: {kills} kills, {acks_total} acknowledged writes, none lost"
    );
    assert!(
        acks_total > kills,
        "the children acknowledged too little to test anything: {acks_total}"
    );
}

fn parse_ack(line: &str) -> Option<(u64, u64)> {
    // libtest may print its own text in front of the first line.
    let mut parts = line[line.find("ack ")? + 4..].split(' ');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}
