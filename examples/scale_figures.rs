//! Times the same number of mappings in two shapes: one user with many campaigns, and many users with one
//! campaign each. The index should cost the same per mapping in both. A benchmark, not a test: it asserts
//! nothing beyond the answers being right, and prints numbers. Build with `--release`:
//!
//! ```text
//! cargo run --release --example scale_figures -- [mappings] [rounds] [DIR]
//! ```
//!
//! Each figure is the best of `rounds` (default 3; the shapes take turns), so a busy machine disturbs it less.
//! Gets, `campaigns_of` and `forget_user` visit mappings and users in a scrambled order, not the order they were
//! written in: otherwise the many-users shape would read the log front to back while one user's records are
//! read in index order, and the figures would compare access patterns of the log rather than the index.
//!
//! DIR (default: a fresh directory under the system's temporary directory) must not exist or be empty; the
//! stores are made in `DIR/one-user` and `DIR/many-users` and removed at the end (`KEEP=1` keeps them).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ussdb::{CampaignUserMap, Durability, Options, Store};

/// One shape of store: who the `i`th mapping belongs to.
#[derive(Clone, Copy)]
enum Shape {
    OneUser,
    ManyUsers,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::OneUser => "one-user",
            Shape::ManyUsers => "many-users",
        }
    }

    fn user(self, i: u64) -> String {
        match self {
            Shape::OneUser => "4f1c2a9e-0b7d-4c3e-9a51-6d2f8e7b1c04".to_owned(),
            Shape::ManyUsers => format!("{:016x}-user-{i}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        }
    }

    fn campaign(self, i: u64) -> String {
        match self {
            Shape::OneUser => format!("campaign-{i}"),
            Shape::ManyUsers => "campaign-1".to_owned(),
        }
    }

    /// The users to list and forget: every distinct user of the shape, in scrambled order.
    fn users(self, n: u64) -> Vec<String> {
        match self {
            Shape::OneUser => vec![self.user(0)],
            Shape::ManyUsers => scrambled(n).map(|i| self.user(i)).collect(),
        }
    }
}

/// 0..n in a fixed scrambled order (multiplying by a number coprime to n permutes the residues).
fn scrambled(n: u64) -> impl Iterator<Item = u64> {
    let step = [48_271u64, 69_621, 1]
        .into_iter()
        .find(|&p| gcd(p, n) == 1)
        .unwrap_or(1);
    (0..n).map(move |i| i.wrapping_mul(step) % n)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn mapping(shape: Shape, i: u64) -> CampaignUserMap {
    CampaignUserMap {
        user_id: shape.user(i),
        campaign_key: shape.campaign(i),
        variation_name: format!("Variation-{}", i % 3),
        goal_identifier: None,
    }
}

#[derive(Default)]
struct Figures {
    sets: Duration,
    gets: Duration,
    campaigns_of: Duration,
    reopen: Duration,
    forget_user: Duration,
    heap_after_sets: u64,
    heap_after_reopen: u64,
}

impl Figures {
    fn keep_best(&mut self, other: &Figures) {
        self.sets = self.sets.min(other.sets);
        self.gets = self.gets.min(other.gets);
        self.campaigns_of = self.campaigns_of.min(other.campaigns_of);
        self.reopen = self.reopen.min(other.reopen);
        self.forget_user = self.forget_user.min(other.forget_user);
    }
}

fn run(shape: Shape, dir: &Path, n: u64) -> Figures {
    // Segments of 1 MiB, so reopening goes through hint files as well as a scan of the newest segments.
    let options = Options::default()
        .durability(Durability::Never)
        .segment_size(1 << 20);
    let mut f = Figures::default();
    let store = Store::open_with(dir, options.clone()).expect("open");
    let started = Instant::now();
    for i in 0..n {
        store.set(&mapping(shape, i)).expect("set");
    }
    f.sets = started.elapsed();
    f.heap_after_sets = store.stats().index_heap_bytes;

    let started = Instant::now();
    for i in scrambled(n) {
        let m = mapping(shape, i);
        let got = store.get(&m.user_id, &m.campaign_key).expect("get");
        assert_eq!(got.as_ref(), Some(&m), "get {i}");
    }
    f.gets = started.elapsed();

    let users = shape.users(n);
    let started = Instant::now();
    let listed: usize = users
        .iter()
        .map(|u| store.campaigns_of(u).expect("campaigns_of").len())
        .sum();
    f.campaigns_of = started.elapsed();
    assert_eq!(listed as u64, n);
    drop(store);

    let started = Instant::now();
    let store = Store::open_with(dir, options).expect("reopen");
    f.reopen = started.elapsed();
    f.heap_after_reopen = store.stats().index_heap_bytes;
    assert_eq!(store.stats().mappings, n);

    let started = Instant::now();
    let forgotten: usize = users
        .iter()
        .map(|u| store.forget_user(u).expect("forget_user"))
        .sum();
    f.forget_user = started.elapsed();
    assert_eq!(forgotten as u64, n);
    assert_eq!(store.stats().mappings, 0);
    f
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let rounds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3).max(1);
    let dir = match args.get(2) {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("ussdb-scale-figures-{}", std::process::id())),
    };
    let shapes = [Shape::OneUser, Shape::ManyUsers];
    let mut best: Vec<Figures> = Vec::new();
    for round in 0..rounds {
        for (s, &shape) in shapes.iter().enumerate() {
            let f = run(shape, &dir.join(format!("{}-{round}", shape.name())), n);
            match best.get_mut(s) {
                None => best.push(f),
                Some(b) => b.keep_best(&f),
            }
        }
    }
    let [one, many] = best.as_slice() else {
        unreachable!("two shapes")
    };
    println!(
        "{n} mappings; one user with {n} campaigns vs {n} users with one campaign each; best of {rounds}"
    );
    println!(
        "{:<28} {:>12} {:>12} {:>8}",
        "", "one-user", "many-users", "ratio"
    );
    let row = |name: &str, a: Duration, b: Duration| {
        println!(
            "{name:<28} {:>12.3?} {:>12.3?} {:>8.2}",
            a,
            b,
            a.as_secs_f64() / b.as_secs_f64()
        );
    };
    row("sets", one.sets, many.sets);
    row("gets", one.gets, many.gets);
    row(
        "campaigns_of (all users)",
        one.campaigns_of,
        many.campaigns_of,
    );
    row("reopen", one.reopen, many.reopen);
    row("forget_user (all users)", one.forget_user, many.forget_user);
    let per = |bytes: u64| bytes as f64 / n as f64;
    println!(
        "{:<28} {:>12.1} {:>12.1}",
        "index heap B/mapping (sets)",
        per(one.heap_after_sets),
        per(many.heap_after_sets)
    );
    println!(
        "{:<28} {:>12.1} {:>12.1}",
        "index heap B/mapping (open)",
        per(one.heap_after_reopen),
        per(many.heap_after_reopen)
    );
    if std::env::var_os("KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
