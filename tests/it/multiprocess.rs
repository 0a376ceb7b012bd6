//! The multi-process mode (`Options::shared`): several processes on one store. The children are this test
//! binary itself, re-run with `USSDB_MP_ROLE` set: the test `multiprocess::child` does nothing without it.
//!
//! - `four_processes_agree_with_a_linearizable_history`: 4 processes of 2 threads each do random
//!   get/set/delete/forget_user/compact on a few keys; every read is checked against every thread's acknowledged
//!   writes.
//! - `killed_writers_lose_nothing_acknowledged`: processes are SIGKILLed at random while they write; the others
//!   go on without an error, and every acknowledged write is there at the end (`USSDB_MP_KILLS` kills; a few
//!   dozen by default).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ussdb::{Durability, Error, Options, Store};

use crate::common::{map, tempdir};

const ROLE: &str = "USSDB_MP_ROLE";
const USERS: usize = 4;
const CAMPAIGNS: usize = 3;
/// Mappings written before the model's children start and never changed.
const COLD: usize = 60;

fn shared_options() -> Options {
    Options::default()
        .shared(true)
        .segment_size(4096)
        .compaction_threshold(0.3)
        .durability(Durability::Never)
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

/// A tiny deterministic generator (xorshift), seeded per child.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn spawn(role: &str, dir: &Path, log: &Path, seed: u64, extra: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
    cmd.args([
        "--exact",
        "multiprocess::child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE, role)
    .env("USSDB_MP_DIR", dir)
    .env("USSDB_MP_LOG", log)
    .env("USSDB_MP_SEED", seed.to_string())
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start a child process")
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

/// The child side: runs when the parent set `USSDB_MP_ROLE`.
#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let dir = PathBuf::from(env("USSDB_MP_DIR"));
    let log = PathBuf::from(env("USSDB_MP_LOG"));
    let seed: u64 = env("USSDB_MP_SEED").parse().expect("seed");
    match role.as_str() {
        "model" => model_child(&dir, &log, seed),
        "writer" => writer_child(&dir, &log, seed),
        other => panic!("unknown role {other}"),
    }
}

/// Threads of each model process: a process's own threads race each other as well as the other processes.
const MODEL_THREADS: u64 = 2;

/// The log of thread `t` of the model process whose log path is `log`.
fn thread_log(log: &Path, t: u64) -> PathBuf {
    log.with_extension(format!("{t}.log"))
}

/// Runs [`MODEL_THREADS`] threads of operations on one store.
fn model_child(dir: &Path, log: &Path, seed: u64) {
    let store = Store::open_with(dir, shared_options()).expect("child opens the store");
    // All four start together, so their operations overlap.
    let go = PathBuf::from(env("USSDB_MP_GO"));
    while !go.exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::scope(|scope| {
        for t in 0..MODEL_THREADS {
            let store = &store;
            scope.spawn(move || model_thread(store, &thread_log(log, t), seed * 8 + t));
        }
    });
}

/// One line per operation: `kind user campaign value start end` (value `-` for none).
fn model_thread(store: &Store, log: &Path, seed: u64) {
    let ops: usize = env("USSDB_MP_OPS").parse().expect("ops");
    let mut out = std::io::BufWriter::new(File::create(log).expect("create child log"));
    let mut rng = Rng(seed | 1);
    for n in 0..ops {
        let user = format!("u{}", rng.below(USERS));
        let campaign = format!("c{}", rng.below(CAMPAIGNS));
        let start = now_ns();
        let (kind, value) = match rng.below(100) {
            // Written once before the children started: compactions in other processes move them, and every
            // process must follow the move.
            0..8 => {
                let i = rng.below(COLD);
                let got = store.get(&format!("cold{i}"), "c").expect("get cold");
                assert_eq!(
                    got.map(|m| m.variation_name),
                    Some(format!("cold-{i}")),
                    "a mapping written before the start was lost after a compaction"
                );
                continue;
            }
            8..45 => {
                let got = store.get(&user, &campaign).expect("get");
                ("get", got.map(|m| m.variation_name))
            }
            45..80 => {
                let value = format!("p{seed}-{n}");
                store
                    .set(&map(&user, &campaign, &value, None))
                    .expect("set");
                ("set", Some(value))
            }
            80..92 => {
                store.delete(&user, &campaign).expect("delete");
                ("delete", None)
            }
            92..98 => {
                store.forget_user(&user).expect("forget_user");
                ("forget", None)
            }
            _ => {
                store.compact().expect("compact");
                ("compact", None)
            }
        };
        let end = now_ns();
        writeln!(
            out,
            "{kind} {user} {campaign} {} {start} {end}",
            value.as_deref().unwrap_or("-")
        )
        .expect("write child log");
    }
    out.flush().expect("flush child log");
}

#[derive(Debug, Clone)]
struct Op {
    kind: String,
    user: String,
    campaign: String,
    value: Option<String>,
    start: u128,
    end: u128,
}

fn read_ops(path: &Path) -> Vec<Op> {
    let file = File::open(path).expect("open child log");
    BufReader::new(file)
        .lines()
        .map(|line| {
            let line = line.expect("read child log");
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 6, "bad log line {line:?}");
            Op {
                kind: f[0].to_owned(),
                user: f[1].to_owned(),
                campaign: f[2].to_owned(),
                value: (f[3] != "-").then(|| f[3].to_owned()),
                start: f[4].parse().expect("start"),
                end: f[5].parse().expect("end"),
            }
        })
        .collect()
}

/// Whether `get` may return `value` for its key given every write of that key: the value of a write that began
/// before the read ended and that no other write wholly between it and the read's start replaced (`None`: the
/// initial absence, a delete or a forget_user).
fn allowed(get: &Op, writes: &[&Op]) -> bool {
    let candidates = writes.iter().filter(|w| w.start < get.end);
    let initial_ok = !writes.iter().any(|w| w.end < get.start);
    if get.value.is_none() && initial_ok {
        return true;
    }
    candidates.filter(|w| w.value == get.value).any(|w| {
        !writes
            .iter()
            .any(|w2| w2.start > w.end && w2.end < get.start)
    })
}

#[test]
fn four_processes_agree_with_a_linearizable_history() {
    let dir = tempdir();
    let store_dir = dir.path().join("store");
    {
        // Cold mappings interleaved with overwritten ones, so their segments hold dead bytes and get compacted.
        let store = Store::open_with(&store_dir, shared_options()).expect("preload");
        for i in 0..COLD {
            store
                .set(&map(&format!("cold{i}"), "c", &format!("cold-{i}"), None))
                .expect("set cold");
            for v in ["a", "b"] {
                store
                    .set(&map(&format!("junk{i}"), "c", v, None))
                    .expect("set junk");
            }
        }
    }
    let ops = std::env::var("USSDB_MP_OPS").unwrap_or_else(|_| "3000".into());
    let go = dir.path().join("go");
    let children: Vec<(Child, PathBuf)> = (0..4u64)
        .map(|i| {
            let log = dir.path().join(format!("model-{i}.log"));
            let child = spawn(
                "model",
                &store_dir,
                &log,
                0x9e37_79b9 + i,
                &[
                    ("USSDB_MP_OPS", ops.clone()),
                    ("USSDB_MP_GO", go.display().to_string()),
                ],
            );
            (child, log)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    fs::write(&go, b"").expect("create the go file");
    let mut all = Vec::new();
    for (mut child, log) in children {
        let status = child.wait().expect("wait for child");
        assert!(status.success(), "a child failed: {status}");
        for t in 0..MODEL_THREADS {
            all.extend(read_ops(&thread_log(&log, t)));
        }
    }
    let mut by_key: BTreeMap<(String, String), Vec<&Op>> = BTreeMap::new();
    let forgets: Vec<&Op> = all.iter().filter(|o| o.kind == "forget").collect();
    for op in &all {
        if op.kind == "set" || op.kind == "delete" {
            by_key
                .entry((op.user.clone(), op.campaign.clone()))
                .or_default()
                .push(op);
        }
    }
    let mut checked = 0;
    let mut sets_seen_elsewhere = 0;
    for get in all.iter().filter(|o| o.kind == "get") {
        let mut writes = by_key
            .get(&(get.user.clone(), get.campaign.clone()))
            .cloned()
            .unwrap_or_default();
        writes.extend(forgets.iter().filter(|f| f.user == get.user));
        assert!(
            allowed(get, &writes),
            "get of ({}, {}) in [{}, {}] returned {:?}, which no linearization allows; writes: {:#?}",
            get.user,
            get.campaign,
            get.start,
            get.end,
            get.value,
            writes
        );
        checked += 1;
        if get.value.is_some() {
            sets_seen_elsewhere += 1;
        }
    }
    assert!(checked > 100, "only {checked} reads were checked");
    eprintln!(
        "multi-process model: {} operations of 4 processes of {MODEL_THREADS} threads, {checked} reads checked ({sets_seen_elsewhere} saw \
         a value)",
        all.len()
    );
    assert!(sets_seen_elsewhere > 10, "reads saw almost no values");
    // The store the four left behind opens alone and verifies clean.
    let store = Store::open_with(&store_dir, shared_options()).expect("reopen");
    let report = store.verify().expect("verify");
    assert!(report.is_clean(), "{report:?}");
}

/// Writes its own keys (user `w<slot>`) in a loop until killed or told to stop, logging `begin key value` before
/// and `ack key value` after each write (unbuffered: the lines survive SIGKILL), and checks that it reads its own
/// writes and that reads of the other writers' keys do not fail.
fn writer_child(dir: &Path, log: &Path, seed: u64) {
    let slot = env("USSDB_MP_SLOT");
    let stop = PathBuf::from(env("USSDB_MP_STOP"));
    let options = shared_options().durability(Durability::Immediate);
    let store = Store::open_with(dir, options).expect("writer opens the store");
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open writer log");
    let mut rng = Rng(seed | 1);
    let user = format!("w{slot}");
    let mut n = 0u64;
    while !stop.exists() {
        n += 1;
        let campaign = format!("c{}", rng.below(CAMPAIGNS));
        let delete = rng.below(10) == 0;
        let value = if delete {
            "-".to_owned()
        } else {
            format!("s{seed}-{n}")
        };
        writeln!(out, "begin {user} {campaign} {value}").expect("log");
        if delete {
            store.delete(&user, &campaign).expect("delete");
        } else {
            store
                .set(&map(&user, &campaign, &value, None))
                .expect("set");
        }
        writeln!(out, "ack {user} {campaign} {value}").expect("log");
        let got = store.get(&user, &campaign).expect("get own key");
        let got = got.map_or_else(|| "-".to_owned(), |m| m.variation_name);
        assert_eq!(got, value, "a writer did not read its own write");
        let other = format!("w{}", rng.below(4));
        store.get(&other, "c0").expect("get another writer's key");
        if rng.below(200) == 0 {
            store.compact().expect("compact");
        }
    }
}

#[test]
fn killed_writers_lose_nothing_acknowledged() {
    let kills: usize = std::env::var("USSDB_MP_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let dir = tempdir();
    let store_dir = dir.path().join("store");
    let stop = dir.path().join("stop");
    let logs: Vec<PathBuf> = (0..4)
        .map(|i| dir.path().join(format!("writer-{i}.log")))
        .collect();
    let start = |slot: usize, generation: u64| {
        spawn(
            "writer",
            &store_dir,
            &logs[slot],
            (slot as u64) << 32 | generation,
            &[
                ("USSDB_MP_SLOT", slot.to_string()),
                ("USSDB_MP_STOP", stop.display().to_string()),
            ],
        )
    };
    let mut children: Vec<Child> = (0..4).map(|slot| start(slot, 0)).collect();
    let mut rng = Rng(0x5eed);
    for kill in 0..kills {
        std::thread::sleep(Duration::from_millis(5 + rng.below(40) as u64));
        let slot = rng.below(4);
        let child = &mut children[slot];
        if let Some(status) = child.try_wait().expect("poll child") {
            panic!("writer {slot} stopped by itself: {status}");
        }
        child.kill().expect("SIGKILL a writer");
        child.wait().expect("reap a writer");
        children[slot] = start(slot, kill as u64 + 1);
    }
    fs::write(&stop, b"").expect("create the stop file");
    for (slot, child) in children.iter_mut().enumerate() {
        let status = child.wait().expect("wait for writer");
        assert!(
            status.success(),
            "writer {slot} failed while others were killed: {status}"
        );
    }
    let store = match Store::open_with(&store_dir, Options::default()) {
        Ok(store) => store,
        Err(e @ Error::Corrupted { .. }) => panic!("the store is damaged: {e}"),
        Err(e) => panic!("reopen: {e}"),
    };
    let mut acked = 0;
    for log in &logs {
        // Per key: the value acknowledged last, and the values begun after it (in flight at a kill).
        let mut state: BTreeMap<(String, String), (Option<String>, Vec<String>)> = BTreeMap::new();
        let text = fs::read_to_string(log).expect("read writer log");
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() != 4 {
                continue; // a line cut by the kill
            }
            let entry = state.entry((f[1].to_owned(), f[2].to_owned())).or_default();
            match f[0] {
                "begin" => entry.1.push(f[3].to_owned()),
                "ack" => {
                    *entry = (Some(f[3].to_owned()), Vec::new());
                    acked += 1;
                }
                _ => {}
            }
        }
        for ((user, campaign), (last, in_flight)) in state {
            let got = store
                .get(&user, &campaign)
                .expect("read after the kills")
                .map_or_else(|| "-".to_owned(), |m| m.variation_name);
            let ok = last.as_deref().is_none_or(|l| l == got)
                || in_flight.contains(&got)
                || (last.is_none() && got == "-");
            assert!(
                ok,
                "({user}, {campaign}) reads {got:?}; acknowledged last {last:?}, in flight {in_flight:?}"
            );
        }
    }
    assert!(acked > kills, "only {acked} writes were acknowledged");
    eprintln!(
        "multi-process crash loop: {kills} SIGKILLs of 4 writer processes, {acked} acknowledged writes checked, \
         none lost"
    );
    let report = store.verify().expect("verify");
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn single_and_multi_process_openers_refuse_each_other() {
    let dir = tempdir();
    let shared =
        Store::open_with(dir.path(), Options::default().shared(true)).expect("open shared");
    let second = Store::open_with(dir.path(), Options::default().shared(true))
        .expect("a second multi-process open in one process");
    second.set(&map("u", "c", "v", None)).expect("set");
    assert_eq!(
        shared.get("u", "c").expect("get").map(|m| m.variation_name),
        Some("v".to_owned())
    );
    match Store::open(dir.path()) {
        Err(e @ Error::LockMode { .. }) => assert!(e.to_string().contains("shared(true)"), "{e}"),
        other => panic!("a single-process open beside a shared one: {other:?}"),
    }
    match Store::open_with(dir.path(), Options::default().read_only(true)) {
        Err(Error::Locked { .. }) => {}
        other => panic!("a reader beside multi-process writers: {other:?}"),
    }
    drop((shared, second));
    let reader =
        Store::open_with(dir.path(), Options::default().read_only(true)).expect("open a reader");
    match Store::open_with(dir.path(), Options::default().shared(true)) {
        Err(Error::Locked { .. }) => {}
        other => panic!("a multi-process writer beside a reader: {other:?}"),
    }
    drop(reader);
    let single = Store::open(dir.path()).expect("open single");
    match Store::open_with(dir.path(), Options::default().shared(true)) {
        Err(e @ Error::LockMode { .. }) => assert!(e.to_string().contains("single-process"), "{e}"),
        other => panic!("a shared open beside a single-process one: {other:?}"),
    }
    drop(single);
}

#[test]
fn a_torn_append_of_a_dead_holder_is_cut_by_the_next_appender() {
    let dir = tempdir();
    let store = Store::open_with(dir.path(), Options::default().shared(true)).expect("open shared");
    // Another handle, as another process would be.
    let next = Store::open_with(dir.path(), Options::default().shared(true)).expect("open beside");
    for i in 0..20 {
        store
            .set(&map("u", &format!("c{i}"), "before", None))
            .expect("set");
    }
    let active = crate::common::segment_files(dir.path())
        .pop()
        .expect("a segment");
    let clean_len = fs::metadata(&active).expect("segment length").len();
    // What a writer killed in the middle of its pwrite leaves: part of a record past the published tail, and the
    // control file's busy word (bytes 40..48, docs/FORMAT.md) still set.
    let mut seg = OpenOptions::new()
        .append(true)
        .open(&active)
        .expect("open the active segment");
    // A put whose header promises 3000 bytes of value, cut off after 2000: longer than the next record, so an
    // append over it would leave the rest behind.
    let mut torn = vec![0x11, 0x22, 0x33, 0x44, 1, 5, 0, 0xb8, 0x0b, 0, 0];
    torn.resize(2000, 0x5a);
    seg.write_all(&torn).expect("append a torn record");
    let control = OpenOptions::new()
        .write(true)
        .open(dir.path().join("SHARED"))
        .expect("open the control file");
    std::os::unix::fs::FileExt::write_all_at(&control, &1u64.to_le_bytes(), 40)
        .expect("set the busy word");
    // The other handle appends next: it cuts the torn bytes first.
    next.set(&map("u", "after", "v", None))
        .expect("set after the torn write");
    let now = fs::metadata(&active).expect("segment length").len();
    assert!(
        now > clean_len && now < clean_len + 1000,
        "the new record replaces the torn bytes ({clean_len} bytes before, {now} after)"
    );
    for i in 0..20 {
        assert_eq!(
            store
                .get("u", &format!("c{i}"))
                .expect("get")
                .map(|m| m.variation_name),
            Some("before".to_owned())
        );
    }
    assert_eq!(
        store
            .get("u", "after")
            .expect("get")
            .map(|m| m.variation_name),
        Some("v".to_owned())
    );
    drop((store, next));
    let reopened = Store::open(dir.path()).expect("reopen alone");
    let report = reopened.verify().expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(reopened.stats().mappings, 21);
}
