//! The public handle: [`Store`] and its [`Stats`]. It speaks in [`CampaignUserMap`]s and turns them into the
//! engine's keys and values through `codec`; it owns the background threads (periodic fsync, compaction).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Result;
use crate::codec;
use crate::durability::{Durability, PeriodicSync};
use crate::engine::{BackupReport, Batch, Committer, CompactionWorker, Engine, Scan};
use crate::model::{CampaignUserMap, FeatureRecord, check_id};
use crate::notifier;
use crate::options::Options;
use crate::record::SEGMENT_HEADER_LEN;
use crate::repair::{self, RepairReport};
use crate::verify::{self, VerifyReport};

/// A mapping as read back: the map and the SDK's extra `metaData` JSON text, if any.
pub type Entry = (CampaignUserMap, Option<String>);

/// A live record of either kind, from [`Store::records`].
#[cfg(feature = "json")]
pub(crate) enum AnyRecord {
    /// A campaign mapping and its `metaData`.
    Mapping(CampaignUserMap, Option<String>),
    /// An FME record.
    Feature(FeatureRecord),
}

/// A snapshot of a store's counters.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Live records: campaign mappings and FME records ([`Store::count_features`] tells how many of them are FME
    /// records; the index does not keep kinds, so that count walks the store).
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
    /// The open loaded the index a clean close saved ([`Options::save_index_from`](crate::Options::save_index_from))
    /// instead of rebuilding it from hint files and segments.
    pub index_loaded: bool,
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
    periodic: Mutex<Option<PeriodicSync>>,
    compactor: Mutex<Option<CompactionWorker>>,
    /// Serves [`Store::set_async`]'s futures; started on first use.
    committer: Mutex<Option<Committer>>,
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
    /// Fails with [`crate::Error::Locked`] if another process has it open (after waiting up to half a second for it to
    /// close), and with [`crate::Error::Corrupted`] naming file and offset if a segment is damaged anywhere but in a torn
    /// last write (which is cut off with a warning).
    pub fn open_with(dir: impl AsRef<Path>, options: Options) -> Result<Store> {
        let engine = Arc::new(Engine::open(dir.as_ref(), options)?);
        // A store opened on a full disk still opens; the reserve is made by a later compaction pass.
        if let Err(e) = engine.keep_reserve() {
            log::warn!(
                "{}: no disk reserve yet (deletes and compaction may fail while the disk is full): {e}",
                engine.dir.display()
            );
        }
        let periodic = match engine.options.durability {
            _ if engine.options.read_only => None,
            Durability::Periodic(interval) => {
                let weak = Arc::downgrade(&engine);
                Some(PeriodicSync::spawn(interval, move || {
                    let Some(engine) = weak.upgrade() else {
                        return false;
                    };
                    if let Err(e) = engine.sync() {
                        log::error!("background fsync of {} failed: {e}", engine.dir.display());
                    }
                    true
                })?)
            }
            Durability::Immediate | Durability::Never => None,
        };
        let compactor = match engine.options.auto_compaction && !engine.options.read_only {
            true => Some(CompactionWorker::spawn(
                &engine,
                engine.options.compaction_threshold,
            )?),
            false => None,
        };
        Ok(Store {
            inner: Arc::new(Shared {
                engine,
                periodic: Mutex::new(periodic),
                compactor: Mutex::new(compactor),
                committer: Mutex::new(None),
            }),
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The mapping of `user_id` in `campaign_key`, if any.
    pub fn get(&self, user_id: &str, campaign_key: &str) -> Result<Option<CampaignUserMap>> {
        Ok(self
            .get_with_meta(user_id, campaign_key)?
            .map(|(map, _)| map))
    }

    /// Stores `map`, replacing any earlier mapping of its user and campaign.
    pub fn set(&self, map: &CampaignUserMap) -> Result<()> {
        self.set_with_meta(map, None)
    }

    /// Stores `map` at once (readers see it when this returns) and returns a future that resolves when the write
    /// is as durable as the durability mode promises: with [`Durability::Immediate`], once a group commit's fsync
    /// covers it. No thread is parked per waiting future: one background thread (`ussdb-commit`) serves them all,
    /// so many concurrent requests share a few fsyncs. Works with any executor (no runtime dependency).
    ///
    /// ```
    /// # fn main() -> ussdb::Result<()> {
    /// # let dir = tempfile::tempdir().expect("temp dir");
    /// let store = ussdb::Store::open(dir.path())?;
    /// let durable = store.set_async(&ussdb::CampaignUserMap::new("u", "c", "v"));
    /// // ... `durable.await` in an async fn; here, a minimal executor:
    /// # let waker = std::task::Waker::noop();
    /// # let mut cx = std::task::Context::from_waker(&waker);
    /// # let mut durable = std::pin::pin!(durable);
    /// # while std::future::Future::poll(durable.as_mut(), &mut cx).is_pending() { std::thread::yield_now(); }
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_async(&self, map: &CampaignUserMap) -> Durable {
        let written = codec::check_id("user_id", &map.user_id)
            .and_then(|()| codec::check_id("campaign_key", &map.campaign_key))
            .and_then(|()| codec::encode_value(map, None))
            .and_then(|value| {
                self.engine()
                    .put_unwaited(&map.user_id, map.campaign_key.as_bytes(), &value)
            });
        Durable {
            store: self.clone(),
            written: Some(written),
            position: 0,
        }
    }

    /// Wakes `waker` once `position` is durable, starting the commit thread on first use.
    fn register_waiter(&self, position: u64, waker: std::task::Waker) -> Result<()> {
        let mut committer = self
            .inner
            .committer
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if committer.is_none() {
            *committer = Some(Committer::spawn(&self.inner.engine)?);
        }
        if let Some(committer) = committer.as_ref() {
            committer.register(position, waker);
        }
        Ok(())
    }

    /// The mapping with the extra `metaData` JSON text some SDKs attach (see [`Store::set_with_meta`]).
    pub fn get_with_meta(&self, user_id: &str, campaign_key: &str) -> Result<Option<Entry>> {
        codec::check_id("user_id", user_id)?;
        codec::check_id("campaign_key", campaign_key)?;
        self.engine()
            .get_with(user_id, campaign_key.as_bytes(), |value| {
                codec::decode_map_of(user_id, campaign_key, value)
            })
    }

    /// Stores `map` with `meta_data`, a JSON text kept byte for byte and returned by [`Store::get_with_meta`].
    pub fn set_with_meta(&self, map: &CampaignUserMap, meta_data: Option<&str>) -> Result<()> {
        codec::check_id("user_id", &map.user_id)?;
        codec::check_id("campaign_key", &map.campaign_key)?;
        codec::check_variation(&map.variation_name)?;
        let value = codec::encode_value(map, meta_data)?;
        self.engine()
            .put(&map.user_id, map.campaign_key.as_bytes(), &value)
    }

    /// Erases the mapping of `user_id` in `campaign_key`; true if there was one. Works on a full disk too, in the
    /// space of the disk reserve ([`Options::disk_reserve`]).
    pub fn delete(&self, user_id: &str, campaign_key: &str) -> Result<bool> {
        codec::check_id("user_id", user_id)?;
        codec::check_id("campaign_key", campaign_key)?;
        self.engine().delete(user_id, campaign_key.as_bytes())
    }

    /// Erases every mapping and every FME record of `user_id` (e.g. for a privacy request); returns how many there
    /// were. Costs in proportion to that user's records, not to the store. Its tombstones are written together, with one
    /// `pwrite` into one segment, so no rotation makes part of it durable without the rest; it works on a full disk too,
    /// in the space of the disk reserve ([`Options::disk_reserve`]).
    pub fn forget_user(&self, user_id: &str) -> Result<usize> {
        self.engine().forget_user(user_id)
    }

    /// Every mapping of `user_id`, sorted by campaign key. Costs in proportion to that user's mappings.
    pub fn campaigns_of(&self, user_id: &str) -> Result<Vec<CampaignUserMap>> {
        codec::check_id("user_id", user_id)?;
        let mut maps = self.engine().items_of(user_id, |item, value| {
            // Items that are not a campaign key (not UTF-8) belong to other kinds of record.
            let Ok(campaign_key) = std::str::from_utf8(item) else {
                return Ok(None);
            };
            codec::decode_map_of(user_id, campaign_key, value).map(|(map, _)| Some(map))
        })?;
        maps.sort_by(|a, b| a.campaign_key.cmp(&b.campaign_key));
        Ok(maps)
    }

    /// The FME record of `user_id` for `feature_key` (a feature flag's key, or `_vwo_meta_meg_<groupId>` for a
    /// mutually exclusive group), if any: what an FME SDK's connector `get(featureKey, userId)` returns.
    pub fn get_feature(&self, feature_key: &str, user_id: &str) -> Result<Option<FeatureRecord>> {
        check_id("feature_key", feature_key)?;
        check_id("user_id", user_id)?;
        self.engine()
            .get_with(user_id, &codec::feature_item(feature_key), |value| {
                codec::decode_feature(user_id, feature_key, value)
            })
    }

    /// Stores `record`, replacing any earlier record of its user and feature key: what an FME SDK's connector
    /// `set(data)` does. Every member, including the ones this version does not know, comes back from
    /// [`Store::get_feature`] as it went in. FME records live apart from campaign mappings: a feature key equal to
    /// a campaign key does not touch that mapping.
    pub fn set_feature(&self, record: &FeatureRecord) -> Result<()> {
        record.check()?;
        let value = codec::encode_feature(record)?;
        self.engine().put(
            &record.user_id,
            &codec::feature_item(&record.feature_key),
            &value,
        )
    }

    /// Erases the FME record of `user_id` for `feature_key`; true if there was one.
    pub fn delete_feature(&self, feature_key: &str, user_id: &str) -> Result<bool> {
        check_id("feature_key", feature_key)?;
        check_id("user_id", user_id)?;
        self.engine()
            .delete(user_id, &codec::feature_item(feature_key))
    }

    /// Every FME record of `user_id` (group records included), sorted by feature key. Costs in proportion to that
    /// user's records. [`Store::campaigns_of`] lists the same user's campaign mappings.
    pub fn features_of(&self, user_id: &str) -> Result<Vec<FeatureRecord>> {
        check_id("user_id", user_id)?;
        let mut records =
            self.engine()
                .items_of(user_id, |item, value| match codec::classify_item(item) {
                    codec::Item::Feature(feature_key) => {
                        codec::decode_feature(user_id, feature_key, value).map(Some)
                    }
                    codec::Item::Campaign(_) | codec::Item::Unknown => Ok(None),
                })?;
        records.sort_by(|a, b| a.feature_key.cmp(&b.feature_key));
        Ok(records)
    }

    /// Every live FME record, in no particular order, under the same rules as [`Store::entries`] (which yields
    /// the campaign mappings).
    pub fn feature_entries(&self) -> FeatureEntries<'_> {
        FeatureEntries(self.engine().scan(|key, value| {
            let (_, item) = codec::split_key(key).ok_or("record key is malformed")?;
            match codec::classify_item(item) {
                codec::Item::Feature(_) => codec::decode_feature_record(key, value).map(Some),
                codec::Item::Campaign(_) | codec::Item::Unknown => Ok(None),
            }
        }))
    }

    /// How many live FME records the store holds. Walks every live record's key (the index does not keep kinds),
    /// so it costs like an export without the writing.
    pub fn count_features(&self) -> Result<u64> {
        let scan = self.engine().scan(|key, _| {
            let (_, item) = codec::split_key(key).ok_or("record key is malformed")?;
            Ok(matches!(codec::classify_item(item), codec::Item::Feature(_)).then_some(()))
        });
        scan.map(|r| r.map(|()| 1)).sum()
    }

    /// Stores every mapping of `batch`, in order, with one lock of the log and at most one fsync: much faster than
    /// one [`Store::set`] each when loading many mappings. A batch that fits in one segment is written into one
    /// segment with one `pwrite` (see [`Batch`]), so no rotation makes part of it durable without the rest; still
    /// not atomic: if the process crashes in the middle of that write, or a power cut finds only some of its pages
    /// written back, a prefix of the batch may be stored.
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

    /// Every live campaign mapping with its `metaData`, in no particular order (FME records are not included: see
    /// [`Store::feature_entries`]). Holds no lock while it reads a record and
    /// keeps memory bounded; see [`Entries`] for what concurrent writes do to it.
    pub fn entries(&self) -> Entries<'_> {
        Entries(self.engine().scan(|key, value| {
            // Keys whose item is not a campaign key (not UTF-8) belong to other kinds of record.
            match codec::decode_key(key) {
                Some(_) => codec::decode_map(key, value).map(Some),
                None if codec::split_key(key).is_some() => Ok(None),
                None => Err("record key is malformed".into()),
            }
        }))
    }

    /// Every live record of either kind in one walk (for export: a damaged record is met once, not once per kind).
    #[cfg(feature = "json")]
    pub(crate) fn records(&self) -> Scan<'_, AnyRecord> {
        self.engine().scan(|key, value| {
            let (_, item) = codec::split_key(key).ok_or("record key is malformed")?;
            match codec::classify_item(item) {
                codec::Item::Campaign(_) => codec::decode_map(key, value)
                    .map(|(map, meta)| Some(AnyRecord::Mapping(map, meta))),
                codec::Item::Feature(_) => codec::decode_feature_record(key, value)
                    .map(|rec| Some(AnyRecord::Feature(rec))),
                codec::Item::Unknown => Ok(None),
            }
        })
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
        verify::check_engine(self.engine(), &mut progress)
    }

    /// Salvages the store in `dir`, which must not be open: keeps every intact record, drops damaged ones, and
    /// rewrites the store so that it opens. The report lists exactly what was lost: the keys whose newest record
    /// was damaged where they are readable (those keys are erased, so no older value or deleted mapping comes
    /// back), the file and offset otherwise, and segment files that are missing. A store with nothing damaged is
    /// left as it is. A crash during a repair leaves either the old store or the repaired one.
    pub fn repair(dir: impl AsRef<Path>, options: Options) -> Result<RepairReport> {
        options.validate()?;
        repair::repair(dir.as_ref(), &options)
    }

    /// Copies the store into `dest` (a new or empty directory) while it stays in use: a consistent copy holding
    /// every write acknowledged before the call (and perhaps some made during it), which [`crate::verify_dir`]
    /// checks and [`Store::open`] opens. Sealed files are hard-linked where the file system allows, the active
    /// segment's durable prefix is copied; writes go on meanwhile, compaction waits.
    pub fn backup(&self, dest: impl AsRef<Path>) -> Result<BackupReport> {
        self.engine().backup(dest.as_ref())
    }

    /// Returns once everything written so far is on stable storage, whatever the durability mode.
    pub fn sync(&self) -> Result<()> {
        if self.engine().options.read_only {
            return Ok(());
        }
        self.engine().sync()
    }

    /// Compacts now, and returns when done: seals the active segment if it holds dead bytes, writes missing hint
    /// files, and rewrites every run of sealed segments that holds reclaimable bytes, whatever
    /// [`Options::compaction_threshold`] says. Reads go on meanwhile; writes wait at most for one batch of index
    /// updates. Runs one pass at a time with the background thread.
    ///
    /// A failure while files are being swapped poisons the store like a failed fsync ([`crate::Error::Poisoned`] for
    /// writes until reopened); the directory is consistent at every step, so the reopened store has every write.
    ///
    /// On a full disk it runs in the space of the disk reserve ([`Options::disk_reserve`]), which it makes again
    /// afterwards if the space it reclaimed allows.
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
            index_loaded: engine.index_loaded,
        }
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.engine().dir
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.engine.forked() {
            // The threads are the parent's: they do not exist here, and joining them would wait forever. The
            // parent syncs and closes; the child only lets go of its copies of the files.
            let threads = (
                self.compactor
                    .get_mut()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(),
                self.periodic
                    .get_mut()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(),
                self.committer
                    .get_mut()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(),
            );
            std::mem::forget(threads);
            self.engine.release_in_forked_child();
            return;
        }
        // Before the compactor stops (its stop ends hint writing early): a clean close leaves hints for every
        // sealed segment, and seals a large active one, so the next open reads hint files alone.
        if !self.engine.poisoned()
            && !self.engine.options.read_only
            && let Err(e) = self.engine.prepare_close()
        {
            log::warn!(
                "{}: the next open may scan instead of reading hints: {e}",
                self.engine.dir.display()
            );
        }
        if let Some(mut compactor) = self
            .compactor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            compactor.stop();
        }
        if let Some(mut committer) = self
            .committer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            committer.stop();
        }
        if let Some(mut periodic) = self
            .periodic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            periodic.stop();
        }
        if !self.engine.poisoned()
            && !self.engine.options.read_only
            && let Err(e) = self.engine.sync()
        {
            log::error!("final fsync of {} failed: {e}", self.engine.dir.display());
        }
        // Last: the index no longer changes.
        if !self.engine.poisoned()
            && !self.engine.options.read_only
            && let Err(e) = self.engine.save_index()
        {
            log::warn!(
                "{}: the index was not saved, the next open rebuilds it from hint files: {e}",
                self.engine.dir.display()
            );
        }
    }
}

/// Every live mapping of a store with its `metaData`; made by [`Store::entries`].
///
/// Memory stays bounded by one index shard's locations (1/64 of the index) and no lock is held while a record is
/// read. Mappings written while the iteration runs may or may not be seen; each mapping present throughout is
/// yielded exactly once. A damaged record is yielded as its error and the walk goes on; an I/O error ends it.
#[derive(Debug)]
pub struct Entries<'a>(Scan<'a, Entry>);

impl Iterator for Entries<'_> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        self.0.next()
    }
}

/// The future of [`Store::set_async`]: resolves when the write is durable, or with the error that stopped it.
#[must_use = "a write is only known to be durable once this future resolves"]
#[derive(Debug)]
pub struct Durable {
    store: Store,
    /// The append's outcome, until the first poll takes it.
    written: Option<Result<u64>>,
    position: u64,
}

impl Durable {
    /// The write's outcome if it is settled now (durable, or failed), without waiting and without registering
    /// anything: always under [`Durability::Periodic`] and [`Durability::Never`]. As with a future that returned
    /// `Ready`, the outcome is handed over once: once this returned `Some`, use the `Durable` no more.
    pub fn now(&mut self) -> Option<Result<()>> {
        if let Some(written) = self.written.take() {
            match written {
                Ok(position) => self.position = position,
                Err(e) => return Some(Err(e)),
            }
        }
        match self.store.engine().is_durable(self.position) {
            Ok(true) => Some(Ok(())),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Calls `done` with the write's outcome once it is durable (or has failed): at once on the calling thread if
    /// it already is, else on a thread of the library's (`ussdb-callbacks`, one per process). For callers without an
    /// async runtime, such as the Python and Node bindings: no thread waits per write, and the commit thread never
    /// runs `done`. `done` should be quick: the callbacks of other writes wait for it.
    pub fn then(self, done: impl FnOnce(Result<()>) + Send + 'static) {
        notifier::when_ready(Box::pin(self), Box::new(done));
    }
}

impl std::future::Future for Durable {
    type Output = Result<()>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<()>> {
        use std::task::Poll;
        if let Some(settled) = self.now() {
            return Poll::Ready(settled);
        }
        if let Err(e) = self
            .store
            .register_waiter(self.position, cx.waker().clone())
        {
            return Poll::Ready(Err(e));
        }
        // The commit may have covered the position between the check and the registration.
        match self.now() {
            Some(settled) => Poll::Ready(settled),
            None => Poll::Pending,
        }
    }
}

/// Every live FME record of a store; made by [`Store::feature_entries`]. Memory and concurrency as [`Entries`].
#[derive(Debug)]
pub struct FeatureEntries<'a>(Scan<'a, FeatureRecord>);

impl Iterator for FeatureEntries<'_> {
    type Item = Result<FeatureRecord>;

    fn next(&mut self) -> Option<Result<FeatureRecord>> {
        self.0.next()
    }
}
