//! The engine: index, segments and log joined into get / put / delete over (user id, campaign key) keys.
//!
//! Read path: hash the key, take the candidate locations from the index (no lock kept), read each record from
//! its segment and keep the one whose full key matches. Write path (in `log`): one appender under a mutex,
//! which also serialises every index change, so the index always points at the newest record of each key.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard};

use crate::codec;
use crate::compaction::Compaction;
use crate::index::{Index, Loc};
use crate::log::{LogState, Syncer};
use crate::record::RecordRef;
use crate::segment::Segment;
use crate::store::{Durability, Options};
use crate::uss::CampaignUserMap;
use crate::vfs::Vfs;
use crate::{Error, Result};

/// A mapping as read back: the map and the SDK's extra `metaData` JSON text, if any.
pub type Entry = (CampaignUserMap, Option<String>);

pub(crate) struct Engine {
    pub(crate) dir: PathBuf,
    pub(crate) vfs: Arc<dyn Vfs>,
    pub(crate) options: Options,
    pub(crate) index: Index,
    pub(crate) segments: RwLock<BTreeMap<u32, Arc<Segment>>>,
    pub(crate) log: Mutex<LogState>,
    pub(crate) syncer: Syncer,
    /// Set by the first failed fsync or unrecoverable write; writes are refused from then on.
    pub(crate) poison: OnceLock<String>,
    pub(crate) counters: Counters,
    /// Compaction's own state: one pass at a time, its counters, the background thread's wake-up.
    pub(crate) compaction: Compaction,
    /// Held (flock) for the engine's lifetime, so a second process cannot open the directory.
    pub(crate) _lock: File,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) sets: AtomicU64,
    pub(crate) deletes: AtomicU64,
    pub(crate) fsyncs: AtomicU64,
}

/// How often a read looks a key up again after finding its segment compacted away.
const MAX_LOOKUPS: usize = 1000;

/// What reading a location found.
pub(crate) enum Found<T> {
    /// The record is there; `f` made this of it.
    Record(T),
    /// The segment is gone (compacted away after the index was read): look the key up again.
    Moved,
}

impl Engine {
    pub(crate) fn durability(&self) -> Durability {
        self.options.durability
    }

    pub(crate) fn segments(&self) -> RwLockReadGuard<'_, BTreeMap<u32, Arc<Segment>>> {
        self.segments.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lock_log(&self) -> MutexGuard<'_, LogState> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn check_poison(&self) -> Result<()> {
        match self.poison.get() {
            Some(reason) => Err(Error::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn set_poison(&self, reason: String) {
        log::error!(
            "ussdb store in {} refuses writes from now on: {reason}",
            self.dir.display()
        );
        let _ = self.poison.set(reason);
    }

    /// Reads the record at `loc` and hands it to `f`.
    pub(crate) fn read_at<T>(
        &self,
        loc: Loc,
        f: impl FnOnce(RecordRef<'_>) -> T,
    ) -> Result<Found<T>> {
        let segments = self.segments();
        match segments.get(&loc.segment()) {
            Some(segment) => segment.with_record(loc.offset(), f).map(Found::Record),
            None => Ok(Found::Moved),
        }
    }

    fn decode_entry(&self, loc: Loc, key: &[u8], value: &[u8]) -> Result<Entry> {
        codec::decode_map(key, value).map_err(|reason| self.corrupted_at(loc, reason))
    }

    pub(crate) fn corrupted_at(&self, loc: Loc, reason: String) -> Error {
        let path = match self.segments().get(&loc.segment()) {
            Some(segment) => segment.path().to_owned(),
            None => self.dir.join(crate::segment::file_name(loc.segment())),
        };
        Error::corrupted(path, loc.offset(), reason)
    }

    /// The newest mapping of (`user_id`, `campaign_key`).
    pub(crate) fn get(&self, user_id: &str, campaign_key: &str) -> Result<Option<Entry>> {
        codec::check_id("user_id", user_id)?;
        codec::check_id("campaign_key", campaign_key)?;
        let hash = self.index.hasher().hash(user_id, campaign_key);
        let mut moved = None;
        'lookup: for _ in 0..MAX_LOOKUPS {
            for loc in self.index.candidates(hash).iter() {
                let found = self.read_at(loc, |rec| {
                    codec::key_matches(rec.key, user_id, campaign_key).then(|| {
                        codec::decode_map_of(user_id, campaign_key, rec.value)
                            .map_err(|reason| self.corrupted_at(loc, reason))
                    })
                })?;
                match found {
                    Found::Record(Some(entry)) => return entry.map(Some),
                    Found::Record(None) => {}
                    Found::Moved => {
                        moved = Some(loc);
                        continue 'lookup;
                    }
                }
            }
            return Ok(None);
        }
        Err(self.lost(moved))
    }

    /// The index entry of (`user_id`, `campaign_key`), with the length of its record. Called with the log locked,
    /// so the answer stays true until the caller unlocks it.
    pub(crate) fn find_locked(
        &self,
        hash: u64,
        user_id: &str,
        campaign_key: &str,
    ) -> Result<Option<(Loc, u64)>> {
        for loc in self.index.candidates(hash).iter() {
            let found = self.read_at(loc, |rec| {
                codec::key_matches(rec.key, user_id, campaign_key).then(|| rec.len())
            })?;
            match found {
                Found::Record(Some(len)) => return Ok(Some((loc, len as u64))),
                Found::Record(None) => {}
                // Segments are only removed with the log locked, and the index never points into a removed one.
                Found::Moved => {
                    return Err(
                        self.corrupted_at(loc, "index points into a missing segment".into())
                    );
                }
            }
        }
        Ok(None)
    }

    /// The index entry whose record has the encoded key `key`, with the record's length, reading only record
    /// headers and keys (no values, no checksums). For compaction, the only remover of segments, so none
    /// vanishes behind its back.
    pub(crate) fn find_key(&self, hash: u64, key: &[u8]) -> Result<Option<(Loc, u64)>> {
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

    /// Every mapping of `user_id`, sorted by campaign key.
    pub(crate) fn campaigns_of(&self, user_id: &str) -> Result<Vec<Entry>> {
        codec::check_id("user_id", user_id)?;
        let user_part = self.index.hasher().user_part(user_id);
        let mut moved = None;
        'lookup: for _ in 0..MAX_LOOKUPS {
            let mut out = Vec::new();
            for (_, loc) in self.index.user_candidates(user_part) {
                let found = self.read_at(loc, |rec| {
                    codec::key_of_user(rec.key, user_id)
                        .then(|| self.decode_entry(loc, rec.key, rec.value))
                })?;
                match found {
                    Found::Record(Some(entry)) => out.push(entry?),
                    Found::Record(None) => {}
                    Found::Moved => {
                        moved = Some(loc);
                        continue 'lookup;
                    }
                }
            }
            out.sort_by(|a, b| a.0.campaign_key.cmp(&b.0.campaign_key));
            return Ok(out);
        }
        Err(self.lost(moved))
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
    pub(crate) fn mark_dead(&self, loc: Loc, bytes: u64) {
        if let Some(segment) = self.segments().get(&loc.segment()) {
            segment.add_dead(bytes);
        }
    }
}

/// Every live mapping of a store, one index shard at a time; made by [`crate::Store::entries`].
///
/// Memory stays bounded by one shard's locations (1/64 of the index, 16 bytes each) and no lock is held while a
/// record is read: each shard's locations are copied, then read in file order from a snapshot of the segment
/// list, whose `Arc`s keep a compacted-away segment readable until the shard is done. Mappings written while
/// the iteration runs may or may not be seen; each mapping present throughout is yielded exactly once.
pub struct Entries<'a> {
    engine: &'a Engine,
    next_shard: usize,
    pending: std::vec::IntoIter<Loc>,
    segments: BTreeMap<u32, Arc<Segment>>,
    failed: bool,
}

impl std::fmt::Debug for Entries<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entries")
            .field("next_shard", &self.next_shard)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Entries<'a> {
    pub(crate) fn new(engine: &'a Engine) -> Entries<'a> {
        Entries {
            engine,
            next_shard: 0,
            pending: Vec::new().into_iter(),
            segments: BTreeMap::new(),
            failed: false,
        }
    }

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

    fn read(&self, loc: Loc) -> Result<Entry> {
        let segment = self
            .segments
            .get(&loc.segment())
            .ok_or_else(|| self.engine.corrupted_at(loc, "segment vanished".into()))?;
        segment
            .with_record(loc.offset(), |rec| {
                codec::decode_map(rec.key, rec.value)
                    .map_err(|reason| self.engine.corrupted_at(loc, reason))
            })
            .and_then(|entry| entry)
    }
}

impl Iterator for Entries<'_> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        if self.failed {
            return None;
        }
        let loc = match self.pending.next() {
            Some(loc) => loc,
            None if self.load_shard() => self.pending.next()?,
            None => return None,
        };
        let entry = self.read(loc);
        // A damaged record ends the walk: the caller sees the error once, not a stream of them.
        self.failed = entry.is_err();
        Some(entry)
    }
}
