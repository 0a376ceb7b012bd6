//! Side-by-side benchmarks of ussdb against peer embedded stores.
//!
//! Every store is driven through [`Kv`], which mirrors what an A/B-testing SDK asks of a user
//! storage: a get that hands back an owned [`CampaignUserMap`], a set, and (where the store is
//! ordered) the campaigns of one user. The peers share one key and value encoding ([`codec`]) so
//! that they differ only in the engine underneath.

pub mod codec;
pub mod stores;
pub mod workload;

use std::error::Error;
use std::path::Path;
use std::time::Duration;

pub use ussdb::CampaignUserMap;

pub type BoxError = Box<dyn Error + Send + Sync>;
pub type Res<T> = std::result::Result<T, BoxError>;

/// How often the stores run in [`Mode::Buffered`] push their data to disk in the background,
/// matching `ussdb::Durability::Periodic(SYNC_PERIOD)`.
pub const SYNC_PERIOD: Duration = Duration::from_secs(1);

/// A user storage as the SDK sees it.
pub trait Kv: Send + Sync {
    fn get(&self, user_id: &str, campaign_key: &str) -> Res<Option<CampaignUserMap>>;
    fn set(&self, map: &CampaignUserMap) -> Res<()>;
    /// `Ok(None)` when the store has no ordered scan to answer it with.
    fn campaigns_of(&self, user_id: &str) -> Res<Option<Vec<CampaignUserMap>>>;
    /// Prefill only: peers with transactions batch here so that building a 1M-mapping store
    /// does not dominate the run. Never timed.
    fn set_many(&self, maps: &[CampaignUserMap]) -> Res<()> {
        maps.iter().try_for_each(|m| self.set(m))
    }
    /// Everything written so far is on disk (so that disk usage can be read off).
    fn sync(&self) -> Res<()>;
}

/// The durability a store is opened with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No fsync per write; a background sync every [`SYNC_PERIOD`].
    Buffered,
    /// A set returns only after its data is on disk.
    Durable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Ussdb,
    HashMap,
    Lmdb,
    Redb,
    Fjall,
    Sled,
    #[cfg(feature = "rocksdb")]
    RocksDb,
}

impl Kind {
    pub fn all() -> Vec<Kind> {
        vec![
            Kind::Ussdb,
            Kind::HashMap,
            Kind::Lmdb,
            Kind::Redb,
            Kind::Fjall,
            Kind::Sled,
            #[cfg(feature = "rocksdb")]
            Kind::RocksDb,
        ]
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Ussdb => "ussdb",
            Kind::HashMap => "hashmap",
            Kind::Lmdb => "lmdb",
            Kind::Redb => "redb",
            Kind::Fjall => "fjall",
            Kind::Sled => "sled",
            #[cfg(feature = "rocksdb")]
            Kind::RocksDb => "rocksdb",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::all().into_iter().find(|k| k.name() == name)
    }

    /// False for stores whose "durable" flush is not an fsync (sled uses sync_file_range), and
    /// for the in-memory map, which has nothing to flush.
    pub fn really_fsyncs(self) -> bool {
        !matches!(self, Kind::Sled | Kind::HashMap)
    }

    /// False for stores written in C or C++ whose allocations bypass Rust's global allocator, so
    /// that a counting allocator cannot see their heap.
    pub fn heap_visible(self) -> bool {
        match self {
            Kind::Lmdb => false,
            #[cfg(feature = "rocksdb")]
            Kind::RocksDb => false,
            _ => true,
        }
    }

    pub fn is_persistent(self) -> bool {
        self != Kind::HashMap
    }

    pub fn open(self, dir: &Path, mode: Mode) -> Res<Box<dyn Kv>> {
        Ok(match self {
            Kind::Ussdb => Box::new(stores::ussdb_store::UssdbStore::open(dir, mode)?),
            Kind::HashMap => Box::new(stores::hashmap_store::HashMapStore::default()),
            Kind::Lmdb => Box::new(stores::lmdb_store::LmdbStore::open(dir, mode)?),
            Kind::Redb => Box::new(stores::redb_store::RedbStore::open(dir, mode)?),
            Kind::Fjall => Box::new(stores::fjall_store::FjallStore::open(dir, mode)?),
            Kind::Sled => Box::new(stores::sled_store::SledStore::open(dir, mode)?),
            #[cfg(feature = "rocksdb")]
            Kind::RocksDb => Box::new(stores::rocks_store::RocksStore::open(dir, mode)?),
        })
    }
}

/// Stores named in the comma-separated environment variable `var`, or all of them.
pub fn kinds_from_env(var: &str) -> Vec<Kind> {
    match std::env::var(var) {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|s| {
                Kind::from_name(s.trim()).unwrap_or_else(|| panic!("{var}: unknown store {s:?}"))
            })
            .collect(),
        _ => Kind::all(),
    }
}

/// Bytes the directory takes on disk (allocated blocks, so that sparse or preallocated files
/// count for what they really hold).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            total += disk_usage(&entry.path());
        } else {
            total += meta.blocks() * 512;
        }
    }
    total
}
