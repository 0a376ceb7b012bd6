//! The engine: bytes in, bytes out. A key is a user id and an item of that user (a campaign key's bytes for a
//! mapping); a value is bytes the fronts encode. The engine joins the index, the segments and the log.
//!
//! This file holds the engine's state and the read path; the other files of the folder each hold one path:
//! - `write.rs`: the write path (one appender under the log mutex, rotation, group commit waits);
//! - `open.rs`: opening a directory (replay from hint files or segments, torn tails);
//! - `compaction/`: rewriting sealed segments (`policy` picks runs, `run` rewrites one, `worker` is the thread).
//!
//! Read path: hash the key once, copy the candidate locations out of one index shard (no lock kept), read each
//! record from its segment and keep the one whose full key matches.

mod backup;
mod compaction;
mod open;
mod saved_index;
mod shared;
mod waiters;
mod write;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard};

use crate::codec;
use crate::dir::{self, DirLock};
use crate::durability::GroupCommit;
use crate::index::{Index, Loc};
use crate::manifest::Manifest;
use crate::options::Options;
use crate::record::RecordRef;
use crate::segment::Segment;
use crate::vfs::Vfs;
use crate::{Error, Result};

pub use backup::BackupReport;
pub(crate) use compaction::CompactionWorker;
pub(crate) use waiters::Committer;
pub use write::Batch;
use write::LogState;

/// The shared state of an open store.
pub(crate) struct Engine {
    pub(crate) dir: PathBuf,
    pub(crate) vfs: Arc<dyn Vfs>,
    pub(crate) options: Options,
    pub(crate) index: Index,
    pub(crate) segments: RwLock<BTreeMap<u32, Arc<Segment>>>,
    log: Mutex<LogState>,
    /// The manifest as last written (plus ids of compaction outputs in flight among `retired`). Taken after the
    /// log mutex when both are held.
    manifest: Mutex<Manifest>,
    commit: GroupCommit,
    /// Set by the first failed fsync or unrecoverable write; writes are refused from then on.
    poison: OnceLock<String>,
    pub(crate) counters: Counters,
    /// Compaction's own state: one pass at a time, its counters, the background thread's wake-up.
    pub(crate) compaction: compaction::Compaction,
    /// The process that opened the store (named in the error a forked child gets).
    pid: u32,
    /// `map::fork_generation()` at open: a forked child sees a higher count and must not use the store.
    forks: u64,
    /// The multi-process mode's state (`Options::shared`); `None` for a single process.
    shared: Option<shared::SharedMode>,
    /// Held (flock) for the engine's lifetime, so a second process cannot open the directory; taken out only by
    /// [`Engine::release_in_forked_child`].
    lock: Mutex<Option<DirLock>>,
    /// The open loaded the saved index (`saved_index.rs`).
    pub(crate) index_loaded: bool,
}

/// While it lives, no write and no compaction runs; readers go on.
pub(crate) struct Quiet<'a> {
    _pass: MutexGuard<'a, ()>,
    _log: LogGuard<'a>,
}

impl Quiet<'_> {
    /// The log's state, which stands still while this lives.
    pub(crate) fn log(&self) -> &LogState {
        &self._log
    }
}

/// The log mutex held; in the multi-process mode also the append lock, with the index caught up with the other
/// processes (`shared.rs`). Dropping it publishes what was appended, then unlocks.
pub(crate) struct LogGuard<'a> {
    engine: &'a Engine,
    log: MutexGuard<'a, LogState>,
    /// The multi-process append lock is still held (a plain set lets go of it before it indexes its record).
    appending: bool,
}

impl std::ops::Deref for LogGuard<'_> {
    type Target = LogState;
    fn deref(&self) -> &LogState {
        &self.log
    }
}

impl std::ops::DerefMut for LogGuard<'_> {
    fn deref_mut(&mut self) -> &mut LogState {
        &mut self.log
    }
}

impl Drop for LogGuard<'_> {
    fn drop(&mut self) {
        if self.appending {
            self.engine.end_append(&mut self.log);
        }
    }
}

/// Counters of the engine's work since open, for `Stats`.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) sets: AtomicU64,
    pub(crate) deletes: AtomicU64,
    pub(crate) fsyncs: AtomicU64,
}

/// How often a read looks a key up again after finding its segment compacted away.
const MAX_LOOKUPS: usize = 1000;

/// What reading a location found.
enum Found<T> {
    /// The record is there; `f` made this of it.
    Record(T),
    /// The segment is gone (compacted away after the index was read): look the key up again.
    Moved,
}

impl Engine {
    pub(crate) fn segments(&self) -> RwLockReadGuard<'_, BTreeMap<u32, Arc<Segment>>> {
        self.segments.read().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_log(&self) -> LogGuard<'_> {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        self.begin_append(&mut log, false);
        LogGuard {
            engine: self,
            log,
            appending: true,
        }
    }

    fn lock_manifest(&self) -> MutexGuard<'_, Manifest> {
        self.manifest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the manifest as last written (for verify and backups).
    pub(crate) fn manifest(&self) -> Manifest {
        self.lock_manifest().clone()
    }

    /// Waits for writers and compaction to stand still and returns a guard that keeps them so (for verify).
    pub(crate) fn quiesce(&self) -> Quiet<'_> {
        // Compaction first, as it takes them: no pass is half done while the log and the index are compared.
        let pass = self.compaction.lock_pass();
        Quiet {
            _pass: pass,
            _log: self.lock_log(),
        }
    }

    /// True once a failure made the store refuse writes.
    pub(crate) fn poisoned(&self) -> bool {
        self.poison.get().is_some()
    }

    /// True in a process forked from the one that opened the store (one relaxed load: reads check it too).
    #[inline]
    pub(crate) fn forked(&self) -> bool {
        crate::map::fork_generation() != self.forks
    }

    /// Closes this process's copies of the store's lock files, in a forked child that lets go of its store. The
    /// child's descriptors share the parent's open lock descriptions (flock), so while the child keeps them the
    /// store stays locked after the parent closed it. The engine itself may never be dropped in the child: a
    /// thread of the parent that held a strong reference at the fork left that reference behind, and the thread
    /// does not exist here to give it back. Closing does not unlock (that would release the parent's locks too).
    pub(crate) fn release_in_forked_child(&self) {
        let lock = self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(lock);
    }

    /// The error for a use of the store in a forked child.
    fn forked_error(&self) -> Error {
        Error::Forked {
            path: self.dir.clone(),
            opened_by: self.pid,
        }
    }

    /// Whether writes may go ahead: not read-only, not in a forked child, not poisoned.
    fn check_poison(&self) -> Result<()> {
        if self.options.read_only {
            return Err(Error::ReadOnly {
                path: self.dir.clone(),
            });
        }
        if self.forked() {
            return Err(self.forked_error());
        }
        match self.poison.get() {
            Some(reason) => Err(Error::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn set_poison(&self, reason: String) {
        log::error!(
            "ussdb store in {} refuses writes from now on: {reason}",
            self.dir.display()
        );
        let _ = self.poison.set(reason);
    }

    /// Reads the record at `loc` and hands it to `f`.
    fn read_at<T>(&self, loc: Loc, f: impl FnOnce(RecordRef<'_>) -> T) -> Result<Found<T>> {
        let segments = self.segments();
        match segments.get(&loc.segment()) {
            Some(segment) => segment.with_record(loc.offset(), f).map(Found::Record),
            None => Ok(Found::Moved),
        }
    }

    /// The error for damage at `loc`, naming the segment's file.
    pub(crate) fn corrupted_at(&self, loc: Loc, reason: String) -> Error {
        let path = match self.segments().get(&loc.segment()) {
            Some(segment) => segment.path().to_owned(),
            None => self.dir.join(dir::segment_file_name(loc.segment())),
        };
        Error::corrupted(path, loc.offset(), reason)
    }

    /// The value of (`user_id`, `item`), handed to `decode` while it is read (no copy is made here).
    pub(crate) fn get_with<T>(
        &self,
        user_id: &str,
        item: &[u8],
        decode: impl Fn(&[u8]) -> std::result::Result<T, String>,
    ) -> Result<Option<T>> {
        let hasher = self.index.hasher();
        let user = hasher.user_hash(user_id.as_bytes());
        self.get_keyed(
            user.prefix,
            || hasher.key_hash(user, item),
            user_id,
            item,
            decode,
        )
    }

    /// The index hash of (`user_id`, `item`): for a caller that keeps tables of its own by key (the tiers) and
    /// hands the hash back to [`Engine::get_hashed`], so a key is hashed once per operation.
    #[cfg(feature = "redis")]
    pub(crate) fn key_hash(&self, user_id: &str, item: &[u8]) -> u64 {
        self.index.hasher().hash(user_id.as_bytes(), item)
    }

    /// [`Engine::get_with`] for a key whose [`Engine::key_hash`] is `hash`.
    #[cfg(feature = "redis")]
    pub(crate) fn get_hashed<T>(
        &self,
        hash: u64,
        user_id: &str,
        item: &[u8],
        decode: impl Fn(&[u8]) -> std::result::Result<T, String>,
    ) -> Result<Option<T>> {
        self.get_keyed(
            crate::seed::user_prefix(hash),
            || hash,
            user_id,
            item,
            decode,
        )
    }

    /// A get of the key whose user prefix is `prefix` and whose hash `hash()` gives, computed only if the index
    /// holds entries of the user ([`Index::first_candidate`]).
    fn get_keyed<T>(
        &self,
        prefix: u64,
        hash: impl Fn() -> u64,
        user_id: &str,
        item: &[u8],
        decode: impl Fn(&[u8]) -> std::result::Result<T, String>,
    ) -> Result<Option<T>> {
        loop {
            let epoch = self.observe()?;
            let found = self.get_once(prefix, &hash, user_id, item, &decode);
            if self.settled(epoch) {
                return found;
            }
        }
    }

    fn get_once<T>(
        &self,
        prefix: u64,
        hash: &impl Fn() -> u64,
        user_id: &str,
        item: &[u8],
        decode: &impl Fn(&[u8]) -> std::result::Result<T, String>,
    ) -> Result<Option<T>> {
        let mut moved = None;
        'lookup: for _ in 0..MAX_LOOKUPS {
            // The first entry of the hash is the key's unless another key has the same 64-bit hash: a get that
            // finds its key there is done without walking the rest of the run for the others.
            let Some(first) = self.index.first_candidate(prefix, hash) else {
                return Ok(None);
            };
            let mut rest = None;
            let mut next = Some(first);
            while let Some(loc) = next {
                let found = self.read_at(loc, |rec| {
                    codec::key_matches(rec.key, user_id, item).then(|| decode(rec.value))
                })?;
                match found {
                    Found::Record(Some(value)) => {
                        return value
                            .map(Some)
                            .map_err(|reason| self.corrupted_at(loc, reason));
                    }
                    Found::Record(None) => {}
                    Found::Moved => {
                        moved = Some(loc);
                        continue 'lookup;
                    }
                }
                next = rest
                    .get_or_insert_with(|| {
                        let others: Vec<Loc> = self
                            .index
                            .candidates(hash())
                            .iter()
                            .filter(|&l| l != first)
                            .collect();
                        others.into_iter()
                    })
                    .next();
            }
            return Ok(None);
        }
        Err(self.lost(moved))
    }

    /// Every item of `user_id` that `decode` keeps (it gets the item and the value; `Ok(None)` skips a record),
    /// in no particular order. Costs in proportion to that user's items.
    pub(crate) fn items_of<T>(
        &self,
        user_id: &str,
        decode: impl Fn(&[u8], &[u8]) -> std::result::Result<Option<T>, String>,
    ) -> Result<Vec<T>> {
        loop {
            let epoch = self.observe()?;
            let found = self.items_once(user_id, &decode);
            if self.settled(epoch) {
                return found;
            }
        }
    }

    fn items_once<T>(
        &self,
        user_id: &str,
        decode: &impl Fn(&[u8], &[u8]) -> std::result::Result<Option<T>, String>,
    ) -> Result<Vec<T>> {
        let user_part = self.index.hasher().user_part(user_id.as_bytes());
        let mut moved = None;
        'lookup: for _ in 0..MAX_LOOKUPS {
            let mut out = Vec::new();
            for (_, loc) in self.index.user_candidates(user_part) {
                let found = self.read_at(loc, |rec| {
                    codec::split_key(rec.key)
                        .filter(|(user, _)| *user == user_id.as_bytes())
                        .map(|(_, item)| decode(item, rec.value))
                })?;
                match found {
                    Found::Record(Some(Ok(Some(value)))) => out.push(value),
                    Found::Record(Some(Ok(None)) | None) => {}
                    Found::Record(Some(Err(reason))) => return Err(self.corrupted_at(loc, reason)),
                    Found::Moved => {
                        moved = Some(loc);
                        continue 'lookup;
                    }
                }
            }
            return Ok(out);
        }
        Err(self.lost(moved))
    }

    /// The index entry whose record has the encoded key `key`, with the record's length, reading only record
    /// headers and keys (no values, no checksums). The caller holds the log mutex or is compaction (the only
    /// remover of segments), so no segment vanishes behind its back.
    fn find_key(&self, hash: u64, key: &[u8]) -> Result<Option<(Loc, u64)>> {
        for loc in self.index.candidates(hash).iter() {
            let Some(segment) = self.segments().get(&loc.segment()).cloned() else {
                return Err(self.corrupted_at(loc, "index points into a missing segment".into()));
            };
            if let Some(len) =
                segment.with_key(loc.offset(), |_, k, len| (k == key).then_some(len))?
            {
                return Ok(Some((loc, len)));
            }
        }
        Ok(None)
    }

    /// The error for a lookup that kept finding its segment gone: compaction moves a record once per pass, so
    /// this many misses in a row means the index points into a segment that no longer exists.
    fn lost(&self, moved: Option<Loc>) -> Error {
        match moved {
            Some(loc) => self.corrupted_at(loc, "index points into a missing segment".into()),
            None => Error::corrupted(&self.dir, 0, "index lookup did not settle"),
        }
    }

    /// Adds `bytes` to the dead count of the segment holding `loc`.
    fn mark_dead(&self, loc: Loc, bytes: u64) {
        if let Some(segment) = self.segments().get(&loc.segment()) {
            segment.add_dead(bytes);
        }
    }

    /// A walk over every live record, decoded by `decode` (`Ok(None)` skips a record).
    pub(crate) fn scan<T>(&self, decode: Decoder<T>) -> Scan<'_, T> {
        let failed = self.observe().err();
        Scan {
            engine: self,
            decode,
            next_shard: 0,
            pending: Vec::new().into_iter(),
            segments: BTreeMap::new(),
            failed: false,
            refused: failed,
        }
    }
}

/// Turns a live record's key and value into what a [`Scan`] yields; `Ok(None)` skips the record.
pub(crate) type Decoder<T> = fn(&[u8], &[u8]) -> std::result::Result<Option<T>, String>;

/// Every live record of a store, one index shard at a time.
///
/// Memory stays bounded by one shard's locations (1/64 of the index, 16 bytes each) and no lock is held while a
/// record is read: each shard's locations are copied, then read in file order from a snapshot of the segment
/// list, whose `Arc`s keep a compacted-away segment readable until the shard is done. Records written while
/// the walk runs may or may not be seen; each record present throughout is yielded exactly once.
pub(crate) struct Scan<'a, T> {
    engine: &'a Engine,
    decode: Decoder<T>,
    next_shard: usize,
    pending: std::vec::IntoIter<Loc>,
    segments: BTreeMap<u32, Arc<Segment>>,
    failed: bool,
    /// Why the walk cannot start (a forked child, a failed catch-up), yielded first.
    refused: Option<Error>,
}

impl<T> std::fmt::Debug for Scan<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scan")
            .field("next_shard", &self.next_shard)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<T> Scan<'_, T> {
    /// Loads the next non-empty shard; false when there is none.
    fn load_shard(&mut self) -> bool {
        while self.next_shard < self.engine.index.shard_count() {
            let shard = self.next_shard;
            self.next_shard += 1;
            loop {
                let mut locs: Vec<Loc> = self
                    .engine
                    .index
                    .shard_entries(shard)
                    .into_iter()
                    .map(|(_, loc)| loc)
                    .collect();
                // Taken after the locations, so every segment they point into is in it unless compaction removed
                // it in between; then the shard's entries have moved and are copied again.
                let segments = self.engine.segments().clone();
                if locs.iter().all(|l| segments.contains_key(&l.segment())) {
                    locs.sort_unstable();
                    self.pending = locs.into_iter();
                    self.segments = segments;
                    break;
                }
            }
            if self.pending.len() > 0 {
                return true;
            }
        }
        self.segments.clear();
        false
    }

    fn read(&self, loc: Loc) -> Result<Option<T>> {
        let segment = self
            .segments
            .get(&loc.segment())
            .ok_or_else(|| self.engine.corrupted_at(loc, "segment vanished".into()))?;
        segment
            .with_record(loc.offset(), |rec| {
                (self.decode)(rec.key, rec.value)
                    .map_err(|reason| self.engine.corrupted_at(loc, reason))
            })
            .and_then(|value| value)
    }
}

impl<T> Iterator for Scan<'_, T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        if let Some(e) = self.refused.take() {
            self.failed = true;
            return Some(Err(e));
        }
        while !self.failed {
            let loc = match self.pending.next() {
                Some(loc) => loc,
                None if self.load_shard() => self.pending.next()?,
                None => return None,
            };
            match self.read(loc) {
                Ok(Some(value)) => return Some(Ok(value)),
                Ok(None) => {}
                // A damaged record is reported and the walk goes on: one bad record must not hide the rest.
                Err(e) if e.is_corruption() => return Some(Err(e)),
                Err(e) => {
                    // The OS refused (an I/O error): later reads would likely fail the same way.
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}
