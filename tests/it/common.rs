//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

use ussdb::{CampaignUserMap, Durability, Options, Store};

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

/// Small segments, so a few hundred writes span several of them.
pub fn small_segments() -> Options {
    Options::default()
        .segment_size(4096)
        .durability(Durability::Never)
}

pub fn open(dir: &Path, options: Options) -> Store {
    Store::open_with(dir, options).expect("open store")
}

pub fn map(user: &str, campaign: &str, variation: &str, goals: Option<&str>) -> CampaignUserMap {
    CampaignUserMap {
        user_id: user.to_owned(),
        campaign_key: campaign.to_owned(),
        variation_name: variation.to_owned(),
        goal_identifier: goals.map(str::to_owned),
    }
}

/// The segment files of a store directory, oldest first.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list store directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// The records of segment bytes as (kind, start, end): 1 put, 2 delete, 3 sync point (test-side parse of the
/// format in docs/FORMAT.md). Stops at the first record that does not fit.
pub fn record_extents(bytes: &[u8]) -> Vec<(u8, usize, usize)> {
    let mut out = Vec::new();
    let mut at = 20usize;
    while let Some(h) = bytes.get(at..at + 11) {
        let len = 11
            + usize::from(u16::from_le_bytes([h[5], h[6]]))
            + u32::from_le_bytes([h[7], h[8], h[9], h[10]]) as usize;
        if at + len > bytes.len() {
            break;
        }
        out.push((h[4], at, at + len));
        at += len;
    }
    out
}

/// Copies every file of `from` into a fresh temporary directory.
pub fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempdir();
    for entry in std::fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.path().join(entry.file_name())).expect("copy");
    }
    to
}

/// A small deterministic generator (SplitMix64), so a randomised test prints a seed that replays it.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `USSDB_SEED` if set, else from the clock; prints the seed so a failure can be replayed.
    pub fn seeded(test: &str) -> Rng {
        let seed = match std::env::var("USSDB_SEED") {
            Ok(s) => s.parse().expect("USSDB_SEED is a u64"),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos() as u64,
        };
        eprintln!("{test}: seed {seed} (replay with USSDB_SEED={seed})");
        Rng(seed)
    }

    /// A generator for a seed drawn from another (one per thread).
    pub fn from_seed(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for test schedules.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A count from the environment variable `name`, or `default`: how the long versions of the tests are run.
pub fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |v| {
        v.parse().unwrap_or_else(|_| panic!("{name} is a number"))
    })
}

/// A temporary directory in memory (`/dev/shm`) when there is one: for tests that fsync a lot to check logic, not
/// the disk.
pub fn memory_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new()
            .prefix("ussdb-test")
            .tempdir_in(shm)
    {
        return dir;
    }
    tempdir()
}

/// Copies every file of `from` into a fresh [`memory_tempdir`].
pub fn copy_dir_to_memory(from: &Path) -> tempfile::TempDir {
    let to = memory_tempdir();
    for entry in std::fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.path().join(entry.file_name())).expect("copy");
    }
    to
}

/// A plain CRC-32 (IEEE), bit by bit, so tests that forge headers do not lean on the crate's own checksum code.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
