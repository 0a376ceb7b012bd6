//! The public handle: [`Store`], its [`Options`], [`Durability`] modes and [`Stats`].

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::engine::{Engine, Entries, Entry};
use crate::log::Batch;
use crate::record::SEGMENT_HEADER_LEN;
use crate::uss::CampaignUserMap;
use crate::verify::VerifyReport;
use crate::vfs::{StdVfs, Vfs};
use crate::{Error, Result};

/// When a write reaches the disk, and so what a crash can take away.
///
/// | mode | `set` returns after | process crash (kill -9, panic) loses | power loss or kernel crash loses |
/// | --- | --- | --- | --- |
/// | `Immediate` (default) | `fdatasync` | nothing acknowledged | nothing acknowledged |
/// | `Periodic(d)` | `write(2)` | nothing acknowledged | at most the last `d` of writes |
/// | `Never` | `write(2)` | nothing acknowledged | whatever the OS had not written back (typically up to ~30 s) |
///
/// With `Immediate`, writers that arrive while an fsync runs share the next one (group commit), so many
/// concurrent writers cost far fewer fsyncs than writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every acknowledged write is on stable storage.
    Immediate,
    /// Writes survive a process crash at once, and a power loss after at most this interval.
    Periodic(Duration),
    /// Writes survive a process crash; the OS decides when they reach the disk.
    Never,
}

/// How a [`Store`] is opened. Build with [`Options::default`] and the builder methods.
#[derive(Clone, Debug)]
pub struct Options {
    pub(crate) durability: Durability,
    pub(crate) segment_size: u64,
    pub(crate) weak_hash: bool,
    pub(crate) vfs: Arc<dyn Vfs>,
    pub(crate) compaction_threshold: f64,
    pub(crate) auto_compaction: bool,
}

/// The default [`Options::compaction_threshold`]: a sealed segment is compacted once half of it is dead.
pub const DEFAULT_COMPACTION_THRESHOLD: f64 = 0.5;
/// How often the background compaction thread looks for work when no segment was sealed meanwhile.
const COMPACTION_POLL: Duration = Duration::from_secs(1);
/// The longest pause of the background compaction thread after failed passes.
const COMPACTION_MAX_BACKOFF: Duration = Duration::from_secs(64);

/// The default segment size: 64 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// The smallest segment size accepted.
pub const MIN_SEGMENT_SIZE: u64 = 4096;
/// The largest segment size accepted (record offsets are 40-bit).
pub const MAX_SEGMENT_SIZE: u64 = 1 << 38;

impl Default for Options {
    fn default() -> Options {
        Options {
            durability: Durability::Immediate,
            segment_size: DEFAULT_SEGMENT_SIZE,
            weak_hash: false,
            vfs: Arc::new(StdVfs),
            compaction_threshold: DEFAULT_COMPACTION_THRESHOLD,
            auto_compaction: true,
        }
    }
}

impl Options {
    /// Sets the durability mode (default [`Durability::Immediate`]).
    pub fn durability(mut self, durability: Durability) -> Options {
        self.durability = durability;
        self
    }

    /// Sets the size at which the active segment is sealed and a new one started (default 64 MiB; 4 KiB to
    /// 256 GiB). A single record larger than this gets a segment of its own.
    pub fn segment_size(mut self, bytes: u64) -> Options {
        self.segment_size = bytes;
        self
    }

    /// Sets the fraction of a sealed segment's bytes that must be dead (overwritten, deleted, tombstones) before
    /// background compaction rewrites it (default 0.5, from 0.0 to 1.0). Lower keeps the directory smaller and
    /// costs more rewriting: with threshold `t`, sealed segments hold at most about `1 / (1 - t)` times their live
    /// data. [`Store::compact`] ignores it and reclaims every dead byte it can.
    pub fn compaction_threshold(mut self, ratio: f64) -> Options {
        self.compaction_threshold = ratio;
        self
    }

    /// Turns the background compaction thread on or off (default on). Woken whenever a segment is sealed and
    /// every second, it compacts segments over [`Options::compaction_threshold`] and writes hint files for sealed
    /// segments (for a fast open; all but the two newest). With it off, the directory only shrinks and hint
    /// files are only written when [`Store::compact`] is called.
    pub fn auto_compaction(mut self, on: bool) -> Options {
        self.auto_compaction = on;
        self
    }

    /// Uses a different file layer (for fault-injection tests).
    #[doc(hidden)]
    pub fn vfs(mut self, vfs: Arc<dyn Vfs>) -> Options {
        self.vfs = vfs;
        self
    }

    /// Makes nearly every key share an index hash, to test that colliding hashes stay correct. Slow.
    #[doc(hidden)]
    pub fn colliding_hashes_for_tests(mut self, on: bool) -> Options {
        self.weak_hash = on;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&self.segment_size) {
            return Err(Error::InvalidOption {
                option: "segment_size",
                reason: format!(
                    "{} bytes is outside {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE}",
                    self.segment_size
                ),
            });
        }
        if !(0.0..=1.0).contains(&self.compaction_threshold) {
            return Err(Error::InvalidOption {
                option: "compaction_threshold",
                reason: format!("{} is outside 0.0..=1.0", self.compaction_threshold),
            });
        }
        if let Durability::Periodic(interval) = self.durability
            && interval.is_zero()
        {
            return Err(Error::InvalidOption {
                option: "durability",
                reason: "a Periodic interval must be longer than zero; use Immediate instead"
                    .into(),
            });
        }
        Ok(())
    }
}

/// A snapshot of a store's counters.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Live mappings.
    pub mappings: u64,
    /// Segment files.
    pub segments: u64,
    /// Bytes of all segment files (hint files are not counted: they can be deleted at no loss).
    pub disk_bytes: u64,
    /// Bytes of records that hold the newest version of a live mapping (plus segment headers).
    pub live_bytes: u64,
    /// Bytes of overwritten and deleted records and tombstones, reclaimable by compaction.
    pub dead_bytes: u64,
    /// `disk_bytes / live_bytes` (1.0 for an empty store).
    pub space_amplification: f64,
    /// Heap bytes held by the in-memory index.
    pub index_heap_bytes: u64,
    /// Mappings stored since open.
    pub sets: u64,
    /// Mappings erased since open.
    pub deletes: u64,
    /// fsyncs of segment files since open.
    pub fsyncs: u64,
    /// Compaction runs since open (each rewrote one run of adjacent segments into one).
    pub compactions: u64,
    /// How long the last compaction pass that rewrote anything took (`None` if none has yet).
    pub last_compaction: Option<Duration>,
    /// Bytes of segment files freed by compaction since open.
    pub reclaimed_bytes: u64,
    /// Sealed segments that have a hint file (the rest are scanned on open).
    pub hint_files: u64,
}

/// An open store: the user storage of an A/B-testing SDK, embedded in the process.
///
/// Cloning is cheap (a shared handle); all clones see the same data and may be used from any thread. Dropping
/// the last clone syncs and closes the store.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) engine: Arc<Engine>,
    background: Mutex<Option<(Arc<Stop>, JoinHandle<()>)>>,
    compactor: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.engine.dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` with default [`Options`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(dir, Options::default())
    }

    /// Opens (or creates) the store in `dir`.
    ///
    /// Fails with [`Error::Locked`] if another process has it open (after waiting up to half a second for it to
    /// close), and with [`Error::Corrupted`] naming file and offset if a segment is damaged anywhere but in a torn
    /// last write (which is cut off with a warning).
    pub fn open_with(dir: impl AsRef<Path>, options: Options) -> Result<Store> {
        let engine = Arc::new(Engine::open(dir.as_ref(), options)?);
        let background = match engine.durability() {
            Durability::Periodic(interval) => {
                Some(spawn_syncer(Arc::downgrade(&engine), interval)?)
            }
            Durability::Immediate | Durability::Never => None,
        };
        let compactor = match engine.options.auto_compaction {
            true => Some(spawn_compactor(
                Arc::downgrade(&engine),
                engine.options.compaction_threshold,
            )?),
            false => None,
        };
        Ok(Store {
            inner: Arc::new(Shared {
                engine,
                background: Mutex::new(background),
                compactor: Mutex::new(compactor),
            }),
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The mapping of `user_id` in `campaign_key`, if any.
    pub fn get(&self, user_id: &str, campaign_key: &str) -> Result<Option<CampaignUserMap>> {
        Ok(self
            .engine()
            .get(user_id, campaign_key)?
            .map(|(map, _)| map))
    }

    /// Stores `map`, replacing any earlier mapping of its user and campaign.
    pub fn set(&self, map: &CampaignUserMap) -> Result<()> {
        self.engine().put(map, None)
    }

    /// The mapping with the extra `metaData` JSON text some SDKs attach (see [`Store::set_with_meta`]).
    pub fn get_with_meta(&self, user_id: &str, campaign_key: &str) -> Result<Option<Entry>> {
        self.engine().get(user_id, campaign_key)
    }

    /// Stores `map` with `meta_data`, a JSON text kept byte for byte and returned by [`Store::get_with_meta`].
    pub fn set_with_meta(&self, map: &CampaignUserMap, meta_data: Option<&str>) -> Result<()> {
        self.engine().put(map, meta_data)
    }

    /// Erases the mapping of `user_id` in `campaign_key`; true if there was one.
    pub fn delete(&self, user_id: &str, campaign_key: &str) -> Result<bool> {
        self.engine().delete(user_id, campaign_key)
    }

    /// Erases every mapping of `user_id` (e.g. for a privacy request); returns how many there were. Costs in
    /// proportion to that user's mappings, not to the store.
    pub fn forget_user(&self, user_id: &str) -> Result<usize> {
        self.engine().forget_user(user_id)
    }

    /// Every mapping of `user_id`, sorted by campaign key. Costs in proportion to that user's mappings.
    pub fn campaigns_of(&self, user_id: &str) -> Result<Vec<CampaignUserMap>> {
        Ok(self
            .engine()
            .campaigns_of(user_id)?
            .into_iter()
            .map(|(map, _)| map)
            .collect())
    }

    /// Stores every mapping of `batch`, in order, with one lock of the log and at most one fsync: much faster than
    /// one [`Store::set`] each when loading many mappings. Not atomic: if it fails or the process crashes midway,
    /// a prefix of the batch may be stored.
    pub fn write_batch(&self, batch: &Batch) -> Result<()> {
        self.engine().write_batch(batch)
    }

    /// Stores every map of `maps` as one [`Batch`]. Fails, storing nothing, if any map cannot be stored.
    pub fn set_many<'m>(&self, maps: impl IntoIterator<Item = &'m CampaignUserMap>) -> Result<()> {
        let mut batch = Batch::new();
        for map in maps {
            batch.push(map, None)?;
        }
        self.write_batch(&batch)
    }

    /// Every live mapping with its `metaData`, in no particular order. Holds no lock while it reads a record and
    /// keeps memory bounded; see [`Entries`] for what concurrent writes do to it.
    pub fn entries(&self) -> Entries<'_> {
        Entries::new(self.engine())
    }

    /// Reads every record of every segment, checks its checksum, key and value, and checks that the index agrees
    /// with the log: every index entry points at the newest intact record of its key, and every key whose newest
    /// record is a put is indexed. Problems are listed by file and offset in the report; an `Err` means the check
    /// itself could not run (e.g. a read failed). Writers wait while it runs; readers do not.
    ///
    /// Memory: 35 to 70 bytes per distinct key in the log, for the walk's table of newest records.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.verify_with_progress(|_, _| {})
    }

    /// [`Store::verify`], calling `progress(bytes_done, bytes_total)` as it goes.
    pub fn verify_with_progress(&self, mut progress: impl FnMut(u64, u64)) -> Result<VerifyReport> {
        self.engine().verify(&mut progress)
    }

    /// Returns once everything written so far is on stable storage, whatever the durability mode.
    pub fn sync(&self) -> Result<()> {
        self.engine().sync()
    }

    /// Compacts now, and returns when done: seals the active segment if it holds dead bytes, writes missing hint
    /// files, and rewrites every run of sealed segments that holds reclaimable bytes, whatever
    /// [`Options::compaction_threshold`] says. Reads go on meanwhile; writes wait at most for one batch of index
    /// updates. Runs one pass at a time with the background thread.
    ///
    /// A failure while files are being swapped poisons the store like a failed fsync ([`Error::Poisoned`] for
    /// writes until reopened); the directory is consistent at every step, so the reopened store has every write.
    pub fn compact(&self) -> Result<()> {
        self.engine().compact(0.0, true)
    }

    /// Compacts the sealed segments whose file ids lie in `first..=last` as one run, whatever their dead bytes;
    /// for tests that need to choose which segments are compacted together.
    #[doc(hidden)]
    pub fn compact_file_range_for_tests(&self, first: u32, last: u32) -> Result<()> {
        self.engine().compact_range(first, last)
    }

    /// A snapshot of the store's counters.
    pub fn stats(&self) -> Stats {
        let engine = self.engine();
        let (segments, disk_bytes, dead_bytes, hint_files) =
            engine
                .segments()
                .values()
                .fold((0, 0, 0, 0), |(n, disk, dead, hints), s| {
                    (
                        n + 1,
                        disk + s.len(),
                        dead + s.dead(),
                        hints + u64::from(s.hinted()),
                    )
                });
        let live_bytes = disk_bytes.saturating_sub(dead_bytes);
        Stats {
            mappings: engine.index.len(),
            segments,
            disk_bytes,
            live_bytes,
            dead_bytes,
            space_amplification: if live_bytes > segments * SEGMENT_HEADER_LEN {
                disk_bytes as f64 / live_bytes as f64
            } else {
                1.0
            },
            index_heap_bytes: engine.index.heap_bytes(),
            sets: engine.counters.sets.load(Ordering::Relaxed),
            deletes: engine.counters.deletes.load(Ordering::Relaxed),
            fsyncs: engine.counters.fsyncs.load(Ordering::Relaxed),
            compactions: engine.compaction.runs.load(Ordering::Relaxed),
            last_compaction: engine.compaction.last_duration(),
            reclaimed_bytes: engine.compaction.reclaimed.load(Ordering::Relaxed),
            hint_files,
        }
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.engine().dir
    }
}

fn spawn_syncer(engine: Weak<Engine>, interval: Duration) -> Result<(Arc<Stop>, JoinHandle<()>)> {
    let stop = Arc::new(Stop::default());
    let stop_in_thread = Arc::clone(&stop);
    let handle = std::thread::Builder::new()
        .name("ussdb-sync".into())
        .spawn(move || {
            let mut stopped = stop_in_thread
                .stopped
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            while !*stopped {
                stopped = match stop_in_thread.wake.wait_timeout(stopped, interval) {
                    Ok((guard, _)) => guard,
                    Err(e) => e.into_inner().0,
                };
                if *stopped {
                    break;
                }
                let Some(engine) = engine.upgrade() else {
                    break;
                };
                drop(stopped);
                if let Err(e) = engine.sync() {
                    log::error!("background fsync of {} failed: {e}", engine.dir.display());
                }
                drop(engine);
                stopped = stop_in_thread
                    .stopped
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
            }
        })
        .map_err(|e| Error::io("start the background fsync thread", "ussdb-sync", e))?;
    Ok((stop, handle))
}

/// Starts the background compaction thread. It holds the engine only while it runs; `Shared::drop` stops and
/// joins it before the engine goes.
fn spawn_compactor(engine: Weak<Engine>, threshold: f64) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ussdb-compact".into())
        .spawn(move || {
            let mut backoff = COMPACTION_POLL;
            loop {
                let Some(strong) = engine.upgrade() else {
                    break;
                };
                if !strong.compaction.wait(COMPACTION_POLL) {
                    break;
                }
                match strong.compact(threshold, false) {
                    Ok(()) => backoff = COMPACTION_POLL,
                    Err(_) if strong.compaction.closing.load(Ordering::Acquire) => break,
                    // The store refuses writes until reopened; so does compaction.
                    Err(_) if strong.poison.get().is_some() => break,
                    Err(e) => {
                        log::error!(
                            "background compaction in {} failed (next try in {backoff:?}): {e}",
                            strong.dir.display()
                        );
                        // A full disk or a damaged segment fails the same way each pass: do not hammer it.
                        if !strong.compaction.sleep(backoff) {
                            break;
                        }
                        backoff = (backoff * 2).min(COMPACTION_MAX_BACKOFF);
                    }
                }
            }
        })
        .map_err(|e| Error::io("start the compaction thread", "ussdb-compact", e))
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.engine.compaction.stop();
        if let Some(handle) = self
            .compactor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = handle.join();
        }
        if let Some((stop, handle)) = self
            .background
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            *stop.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
            stop.wake.notify_all();
            let _ = handle.join();
        }
        if self.engine.poison.get().is_none()
            && let Err(e) = self.engine.sync()
        {
            log::error!("final fsync of {} failed: {e}", self.engine.dir.display());
        }
    }
}
