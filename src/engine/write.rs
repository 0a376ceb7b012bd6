//! The write path: one appender for the active segment, rotation when it is full, and the durability wait.
//!
//! Every write takes the log mutex, finds the key's current record, appends its own record with one `pwrite`,
//! and updates the index before unlocking, so the order of records in the log, the order of index updates and
//! the order in which writers were served are the same. Durability waits happen after the unlock: with
//! [`Durability::Immediate`] a writer waits in [`GroupCommit`](crate::durability::GroupCommit) until an fsync
//! covers its record.
//!
//! fsync order: a record is durable once the active segment is `fdatasync`ed. Rotation fsyncs the full segment
//! before the next one is created (so only the newest segment can ever hold a torn record), and creation writes
//! the new header to a temporary file, fsyncs it, renames it into place and fsyncs the directory.
//!
//! After every other fsync of the active segment (group commit, `sync`, the periodic thread, close) a sync point
//! is appended that says how far that fsync reached (`tail.rs`); recovery tells damage from a torn write by them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::compaction::{explain_disk_full, is_disk_full};
use super::{Engine, Found};
use crate::codec;
use crate::durability::Durability;
use crate::index::{Loc, MAX_OFFSET, MAX_SEGMENT_ID};
use crate::manifest::Sealed;
use crate::model::{CampaignUserMap, FeatureRecord};
use crate::record::{self, Kind, SEGMENT_HEADER_LEN, SYNC_POINTS_VERSION, SYNC_RECORD_LEN};
use crate::seed::Seed;
use crate::segment::Segment;
use crate::tail;
use crate::{Error, Result};

/// A record a tombstone erases: its key's hash, the key, and the record's location and length.
type Doomed = (u64, Vec<u8>, (Loc, u64));

/// State of the appender, behind the log mutex.
pub(crate) struct LogState {
    /// The segment appended to.
    pub(crate) active: Arc<Segment>,
    /// The id the next segment gets.
    pub(crate) next_id: u32,
    /// Bytes appended since open, across segments: the position group commit counts in.
    pub(crate) written: u64,
    /// crc32 of the active segment's bytes so far, recorded in the manifest when it is sealed.
    pub(crate) crc: crc32fast::Hasher,
    /// The store's secret seed, which signs sync points.
    pub(crate) sync_key: Seed,
    /// Multi-process mode: the active segment's records from this offset to its length are published but not
    /// yet in this process's index (nor in `crc`). Only a plain set leaves them so, and only while it holds the
    /// log mutex (`shared.rs`); whoever takes the mutex after a failure applies them first.
    pub(crate) unindexed: Option<u64>,
}

/// Mappings to store together with one lock of the log, few `pwrite`s and at most one fsync: the fast way to
/// load many. Build it with [`Batch::push`], write it with `Store::write_batch`.
///
/// Each mapping is checked and encoded by `push`, so a mapping that cannot be stored is refused there, before
/// anything is written. Within a batch, a later mapping of the same user and campaign wins. A batch that fits in
/// one segment is written into one segment with one `pwrite` (the segment is rotated first if the batch does not
/// fit in what is left of it): no rotation's fsync can make one part of it durable without the rest. A larger
/// batch is split across segments. Either way a crash can keep a prefix of it, not a mix: a power cut that wrote
/// back only some of its pages, or a kill in the middle of a large `pwrite` (each record is checksummed on its
/// own); see docs/RELIABILITY.md.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Encoded records, back to back.
    records: Vec<u8>,
    /// (start, length, key length) of each record in `records`.
    items: Vec<(usize, usize, usize)>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds `map`, with the SDK's `metaData` JSON text if any (see `Store::set_with_meta`). Fails, adding
    /// nothing, if the mapping cannot be stored (an empty or too long id, an empty variation name, a value over
    /// [`crate::MAX_VALUE_LEN`]).
    pub fn push(&mut self, map: &CampaignUserMap, meta_data: Option<&str>) -> Result<()> {
        let key = codec::encode_key(&map.user_id, &map.campaign_key)?;
        codec::check_variation(&map.variation_name)?;
        let value = codec::encode_value(map, meta_data)?;
        let start = self.records.len();
        record::encode(&mut self.records, Kind::Put, &key, &value);
        self.items
            .push((start, self.records.len() - start, key.len()));
        Ok(())
    }

    /// Adds an FME record (see `Store::set_feature`). Fails, adding nothing, if it cannot be stored (an empty or
    /// too long feature key or user id, a value over [`crate::MAX_VALUE_LEN`]).
    pub fn push_feature(&mut self, rec: &FeatureRecord) -> Result<()> {
        rec.check()?;
        let key = codec::encode_item_key(&rec.user_id, &codec::feature_item(&rec.feature_key))?;
        let value = codec::encode_feature(rec)?;
        let start = self.records.len();
        record::encode(&mut self.records, Kind::Put, &key, &value);
        self.items
            .push((start, self.records.len() - start, key.len()));
        Ok(())
    }

    /// Number of records (mappings and FME records) in the batch.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when the batch holds no mapping.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Empties the batch, keeping its buffers for reuse.
    pub fn clear(&mut self) {
        self.records.clear();
        self.items.clear();
    }
}

impl Engine {
    /// Stores `value` under (`user_id`, `item`), replacing any earlier value. The caller has checked the item.
    pub(crate) fn put(&self, user_id: &str, item: &[u8], value: &[u8]) -> Result<()> {
        let position = self.put_unwaited(user_id, item, value)?;
        self.wait_durable(position)
    }

    /// [`Engine::put`] without the durability wait: appends and indexes the record (visible to readers at once)
    /// and returns the log position a wait must reach.
    pub(crate) fn put_unwaited(&self, user_id: &str, item: &[u8], value: &[u8]) -> Result<u64> {
        let key = codec::encode_item_key(user_id, item)?;
        let mut rec = Vec::with_capacity(record::RECORD_HEADER_LEN + key.len() + value.len());
        record::encode(&mut rec, Kind::Put, &key, value);
        let hash = self.index.hasher().hash(user_id.as_bytes(), item);
        let position = match &self.shared {
            Some(shared) => self.put_shared(shared, hash, &key, &rec)?,
            None => {
                let mut log = self.lock_log();
                self.check_poison()?;
                self.append_indexed(&mut log, hash, &key, &rec)?
            }
        };
        self.counters.sets.fetch_add(1, Ordering::Relaxed);
        Ok(position)
    }

    /// Appends the put record `rec` of `key` and points the index at it (the log is locked and the index
    /// caught up); returns the log position a durability wait must reach.
    pub(super) fn append_indexed(
        &self,
        log: &mut LogState,
        hash: u64,
        key: &[u8],
        rec: &[u8],
    ) -> Result<u64> {
        let old = self.find_key(hash, key)?;
        let loc = self.append(log, rec).map_err(explain_disk_full)?;
        self.point(hash, old, loc);
        Ok(log.written)
    }

    /// Stores under (`user_id`, `item`) the value `f` computes from the current one (`None` when there is none),
    /// in one hold of the log mutex, so no other write comes between the read and the write. `f` appends the new
    /// value to the buffer it is given (the record being built, so the value needs no buffer of its own) and
    /// says whether to write it; its other output is handed back once the write is as durable as the mode
    /// promises. The key is looked up once, as [`Engine::put`] does. `f` fails with the reason the current value
    /// cannot be read (reported as damage at its record); it runs with the log locked and must not call the
    /// engine. The caller has checked the item; `f` checks the value's length.
    #[cfg_attr(
        not(feature = "redis"),
        allow(dead_code, reason = "only the tiers (feature `redis`) use it")
    )]
    pub(crate) fn put_with<T>(
        &self,
        user_id: &str,
        item: &[u8],
        f: impl FnOnce(Option<&[u8]>, &mut Vec<u8>) -> std::result::Result<(bool, T), String>,
    ) -> Result<T> {
        let key = codec::encode_item_key(user_id, item)?;
        let hash = self.index.hasher().hash(user_id.as_bytes(), item);
        // Room for the header, the key and a typical value; `f` appends the value after the key.
        let mut rec = Vec::with_capacity(record::RECORD_HEADER_LEN + key.len() + 96);
        rec.resize(record::RECORD_HEADER_LEN, 0);
        rec.extend_from_slice(&key);
        let (position, out) = {
            let mut log = self.lock_log();
            self.check_poison()?;
            let old = self.find_key(hash, &key)?;
            let (write, out) =
                match old {
                    None => f(None, &mut rec)
                        .map_err(|reason| Error::corrupted(&self.dir, 0, reason))?,
                    // The log mutex keeps the segment in place (only compaction removes one, under the mutex).
                    Some((loc, _)) => match self.read_at(loc, |r| f(Some(r.value), &mut rec))? {
                        Found::Record(computed) => {
                            computed.map_err(|reason| self.corrupted_at(loc, reason))?
                        }
                        Found::Moved => {
                            return Err(self
                                .corrupted_at(loc, "index points into a missing segment".into()));
                        }
                    },
                };
            if !write {
                return Ok(out);
            }
            record::finish_in_place(&mut rec, Kind::Put, key.len());
            let loc = self.append(&mut log, &rec).map_err(explain_disk_full)?;
            self.point(hash, old, loc);
            (log.written, out)
        };
        self.counters.sets.fetch_add(1, Ordering::Relaxed);
        self.wait_durable(position)?;
        Ok(out)
    }

    /// Returns once every write under way when it was called is appended, indexed and as durable as the mode
    /// promises.
    #[cfg_attr(
        not(feature = "redis"),
        allow(dead_code, reason = "only the tiers (feature `redis`) use it")
    )]
    pub(crate) fn wait_appended(&self) -> Result<()> {
        let position = self.lock_log().written;
        self.wait_durable(position)
    }

    /// True once the log position `position` is as durable as the durability mode promises (poisoning is an
    /// error: the write may never become durable).
    pub(crate) fn is_durable(&self, position: u64) -> Result<bool> {
        match self.options.durability {
            Durability::Immediate => {
                if self.commit.synced() >= position {
                    return Ok(true);
                }
                self.check_poison().map(|()| false)
            }
            Durability::Periodic(_) | Durability::Never => Ok(true),
        }
    }

    /// Blocks until `position` is durable (for the thread that serves asynchronous waiters).
    pub(crate) fn wait_position(&self, position: u64) -> Result<()> {
        self.wait_durable(position)
    }

    /// Stores every mapping of `batch` in order: records that fit in the active segment go out in one `pwrite`,
    /// then the index takes them one by one, all under one lock of the log; one durability wait at the end.
    pub(crate) fn write_batch(&self, batch: &Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let position = {
            let mut log = self.lock_log();
            self.check_poison()?;
            self.make_room(&mut log, batch.records.len() as u64)
                .map_err(explain_disk_full)?;
            let mut i = 0;
            while let Some(&(start, len, _)) = batch.items.get(i) {
                let used = log.active.len();
                if used > SEGMENT_HEADER_LEN && used + len as u64 > self.options.segment_size {
                    self.rotate(&mut log).map_err(explain_disk_full)?;
                    continue;
                }
                // The records that fit: at least one (a record larger than a segment gets one of its own).
                let room = self.options.segment_size.saturating_sub(log.active.len());
                let mut end = start + len;
                let mut j = i + 1;
                while let Some(&(s, l, _)) = batch.items.get(j) {
                    if (s + l - start) as u64 > room {
                        break;
                    }
                    end = s + l;
                    j += 1;
                }
                let chunk = batch.records.get(start..end).unwrap_or_default();
                let first = self.append(&mut log, chunk).map_err(explain_disk_full)?;
                for &(s, _, key_len) in batch.items.get(i..j).unwrap_or_default() {
                    let loc = Loc::new(first.segment(), first.offset() + (s - start) as u64);
                    let key = batch
                        .records
                        .get(s + record::RECORD_HEADER_LEN..s + record::RECORD_HEADER_LEN + key_len)
                        .unwrap_or_default();
                    let indexed = codec::split_key(key)
                        .ok_or_else(|| {
                            self.corrupted_at(loc, "batch record key is malformed".into())
                        })
                        .and_then(|(user, item)| {
                            self.index_put(self.index.hasher().hash(user, item), key, loc)
                        });
                    if let Err(e) = indexed {
                        // The records are in the log but not all in the index: reads could miss them until a
                        // reopen replays the log, so stop writing now.
                        self.set_poison(format!("indexing a written batch failed: {e}"));
                        return Err(e);
                    }
                }
                i = j;
            }
            log.written
        };
        self.counters
            .sets
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.wait_durable(position)
    }

    /// Points the index at the put record of `key` just written at `loc`, marking the record it replaces dead.
    /// Called with the log locked.
    fn index_put(&self, hash: u64, key: &[u8], loc: Loc) -> Result<()> {
        let old = self.find_key(hash, key)?;
        self.point(hash, old, loc);
        Ok(())
    }

    /// Points the index at `loc` for `hash`, replacing `old` (its location and length), which becomes dead.
    pub(super) fn point(&self, hash: u64, old: Option<(Loc, u64)>, loc: Loc) {
        match old {
            Some((old_loc, old_len)) => {
                self.index.replace(hash, old_loc, loc);
                self.mark_dead(old_loc, old_len);
            }
            None => self.index.insert(hash, loc),
        }
    }

    /// Appends a tombstone for each (hash, key, old location and length) of `doomed`, all with one `pwrite` into
    /// one segment (`append` rotates first if they do not fit, so no rotation's fsync makes some of them durable
    /// without the rest), drops their index entries and counts both kinds of record dead. Called with the log
    /// locked.
    fn tombstones(&self, log: &mut LogState, doomed: &[Doomed]) -> Result<()> {
        let mut recs = Vec::new();
        for (_, key, _) in doomed {
            record::encode(&mut recs, Kind::Delete, key, &[]);
        }
        if recs.is_empty() {
            return Ok(());
        }
        let loc = self.append(log, &recs)?;
        for (hash, _, old) in doomed {
            self.index.remove(*hash, old.0);
            self.mark_dead(old.0, old.1);
        }
        // A tombstone is dead weight from birth: it only shadows the records it deletes.
        self.mark_dead(loc, recs.len() as u64);
        Ok(())
    }

    /// Rotates first when `len` bytes do not fit in what is left of the active segment but fit in an empty one,
    /// so that the records of one operation (a batch) land in one segment. A rotation fsyncs the full segment:
    /// without this, a power cut in `Never` or `Periodic` mode could keep the part of a batch before the rotation
    /// and lose the part after it.
    fn make_room(&self, log: &mut LogState, len: u64) -> Result<()> {
        let used = log.active.len();
        let size = self.options.segment_size;
        if used > SEGMENT_HEADER_LEN && used + len > size && SEGMENT_HEADER_LEN + len <= size {
            self.rotate(log)?;
        }
        Ok(())
    }

    /// Erases the value of (`user_id`, `item`); false if there was none. Needs no readable old record: the
    /// index says where it is and how long, which is all a tombstone needs.
    /// On a full disk it releases the disk reserve and goes on (see `compaction/reserve.rs`).
    pub(crate) fn delete(&self, user_id: &str, item: &[u8]) -> Result<bool> {
        self.with_reserve(|| self.delete_once(user_id, item))
    }

    fn delete_once(&self, user_id: &str, item: &[u8]) -> Result<bool> {
        let key = codec::encode_item_key(user_id, item)?;
        let hash = self.index.hasher().hash(user_id.as_bytes(), item);
        let position = {
            let mut log = self.lock_log();
            self.check_poison()?;
            let Some(old) = self.find_key(hash, &key)? else {
                return Ok(false);
            };
            self.tombstones(&mut log, &[(hash, key, old)])?;
            log.written
        };
        self.counters.deletes.fetch_add(1, Ordering::Relaxed);
        self.wait_durable(position)?;
        Ok(true)
    }

    /// Erases every item of `user_id`; returns how many there were. The tombstones go out together, into one
    /// segment; on a full disk it releases the disk reserve and goes on.
    pub(crate) fn forget_user(&self, user_id: &str) -> Result<usize> {
        self.with_reserve(|| self.forget_user_once(user_id))
    }

    fn forget_user_once(&self, user_id: &str) -> Result<usize> {
        codec::check_id("user_id", user_id)?;
        let user_part = self.index.hasher().user_part(user_id.as_bytes());
        let (count, position) = {
            let mut log = self.lock_log();
            self.check_poison()?;
            let mut doomed = Vec::new();
            for (hash, loc) in self.index.user_candidates(user_part) {
                let Some(segment) = self.segments().get(&loc.segment()).cloned() else {
                    return Err(
                        self.corrupted_at(loc, "index points into a missing segment".into())
                    );
                };
                let found = segment.with_key(loc.offset(), |_, key, len| {
                    codec::split_key(key)
                        .is_some_and(|(user, _)| user == user_id.as_bytes())
                        .then(|| (key.to_vec(), len))
                })?;
                if let Some((key, len)) = found {
                    doomed.push((hash, key, (loc, len)));
                }
            }
            self.tombstones(&mut log, &doomed)?;
            (doomed.len(), log.written)
        };
        self.counters
            .deletes
            .fetch_add(count as u64, Ordering::Relaxed);
        if count > 0 {
            self.wait_durable(position)?;
        }
        Ok(count)
    }

    /// Appends one encoded record to the active segment, rotating first if it would overflow.
    fn append(&self, log: &mut LogState, rec: &[u8]) -> Result<Loc> {
        let len = rec.len() as u64;
        let used = log.active.len();
        if used > SEGMENT_HEADER_LEN && used + len > self.options.segment_size {
            self.rotate(log)?;
        }
        self.append_here(log, rec)
    }

    /// Appends one encoded record at the end of the active segment, whatever its size.
    fn append_here(&self, log: &mut LogState, rec: &[u8]) -> Result<Loc> {
        let loc = self.write_record(log, rec)?;
        log.crc.update(rec);
        Ok(loc)
    }

    /// [`Engine::append_here`] without adding the record to the segment's checksum, for a caller that adds it in
    /// log order later.
    pub(super) fn write_record(&self, log: &mut LogState, rec: &[u8]) -> Result<Loc> {
        let len = rec.len() as u64;
        let segment = &log.active;
        let offset = segment.len();
        if offset + len > MAX_OFFSET {
            return Err(Error::InvalidOption {
                option: "segment_size",
                reason: format!(
                    "segment {} would pass the largest offset the index holds",
                    segment.id()
                ),
            });
        }
        if let Err(e) = segment.file().write_all_at(rec, offset) {
            // A torn record in the middle of the log would hide every later one: cut it off, or stop writing.
            if let Err(cut) = segment.file().set_len(offset) {
                self.set_poison(format!(
                    "a failed append to {} could not be undone: {cut}",
                    segment.path().display()
                ));
            }
            return Err(Error::io("append to segment", segment.path(), e));
        }
        segment.grew(len);
        log.written += len;
        Ok(Loc::new(segment.id(), offset))
    }

    /// Seals the active segment and starts the next one.
    pub(crate) fn rotate(&self, log: &mut LogState) -> Result<()> {
        let old = Arc::clone(&log.active);
        self.fsync(&old)?;
        self.commit.advance(log.written);
        if log.next_id > MAX_SEGMENT_ID {
            return Err(Error::InvalidOption {
                option: "segment_size",
                reason: format!(
                    "the store has used all {MAX_SEGMENT_ID} segment ids; use larger segments"
                ),
            });
        }
        let id = log.next_id;
        let new = Arc::new(
            Segment::create(&*self.vfs, &self.dir, id)?
                .mapped_for_appends(self.options.segment_size),
        );
        // The commit point of a rotation: the manifest names the full segment sealed and the new one active.
        // Until it is written the new file is uncommitted (open removes it), so on failure nothing changes.
        {
            let mut manifest = self.lock_manifest();
            let mut next = manifest.clone();
            next.sealed.push(Sealed {
                file_id: old.file_id(),
                len: old.len(),
                crc: log.crc.clone().finalize(),
                hint: 0,
            });
            next.active = id;
            next.next_file_id = next.next_file_id.max(id + 1);
            if let Err((e, unknown)) = next.write(&*self.vfs, &self.dir) {
                if unknown {
                    self.set_poison(format!("rotating to segment {id} failed half way: {e}"));
                } else {
                    let _ = self.vfs.remove_file(new.path());
                }
                return Err(e);
            }
            *manifest = next;
        }
        log.next_id += 1;
        log.crc = crc32fast::Hasher::new();
        log.crc.update(&record::segment_header(id));
        let sealed = Arc::new(old.seal());
        {
            let mut segments = self.segments.write().unwrap_or_else(|e| e.into_inner());
            segments.insert(sealed.id(), sealed);
            segments.insert(new.id(), Arc::clone(&new));
        }
        log.active = new;
        // The sealed segment wants a hint file, and may be worth compacting.
        self.compaction.poke();
        Ok(())
    }

    /// fsyncs one segment; a failure poisons the store.
    fn fsync(&self, segment: &Segment) -> Result<()> {
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        segment.file().sync_data().map_err(|e| {
            self.set_poison(format!("fsync of {} failed: {e}", segment.path().display()));
            Error::io("fsync segment", segment.path(), e)
        })
    }

    /// Returns once the write that ended at `position` is as durable as the durability mode promises.
    fn wait_durable(&self, position: u64) -> Result<()> {
        match self.options.durability {
            Durability::Immediate => self.sync_to(position),
            Durability::Periodic(_) | Durability::Never => Ok(()),
        }
    }

    /// Makes everything written so far durable.
    pub(crate) fn sync(&self) -> Result<()> {
        let position = self.lock_log().written;
        self.sync_to(position)
    }

    /// Returns once an fsync covered `position` (group commit: one leader fsyncs for every waiter).
    fn sync_to(&self, position: u64) -> Result<()> {
        self.commit.wait_for(
            position,
            || self.check_poison(),
            || {
                // The target and the segment length are read before the fsync starts, so the fsync covers them.
                let (segment, target, covered) = {
                    let log = self.lock_log();
                    (Arc::clone(&log.active), log.written, log.active.len())
                };
                self.fsync(&segment)?;
                self.append_sync_point(&segment, target, covered)
            },
        )
    }

    /// After an fsync of `segment` that covered its first `covered` bytes (the log up to position `target`),
    /// appends a sync point saying so, unless the segment was sealed meanwhile (rotation fsynced all of it) or is of
    /// a format without sync points. Returns the log position group commit may count as durable.
    ///
    /// The sync point is written after the fsync because only then is its claim true; it needs no fsync of its
    /// own (the next one covers it, and until then it only vouches for bytes that are durable anyway). So when
    /// nothing else was appended since `target`, the position past it is returned: otherwise an idle store would
    /// fsync its own sync points forever. It never makes a segment pass `segment_size` (the rotation that follows
    /// fsyncs the whole segment).
    fn append_sync_point(&self, segment: &Arc<Segment>, target: u64, covered: u64) -> Result<u64> {
        let mut log = self.lock_log();
        let offset = segment.len();
        // A poisoned store appends nothing (a failed append may have left a torn record where this would go).
        if self.check_poison().is_err()
            || !Arc::ptr_eq(&log.active, segment)
            || segment.version() < SYNC_POINTS_VERSION
            || offset + SYNC_RECORD_LEN as u64 > self.options.segment_size
        {
            return Ok(target);
        }
        let rec = tail::sync_point(&log.sync_key, segment.file_id(), offset, covered);
        let idle = log.written == target;
        match self.append_here(&mut log, &rec) {
            Ok(_) => {}
            // The fsync succeeded and the writes it covered are durable; only the note saying so did not fit. Its
            // bytes were cut back off (or the store is poisoned), and recovery goes by the earlier sync points.
            Err(e) if is_disk_full(&e) && self.check_poison().is_ok() => return Ok(target),
            Err(e) => return Err(e),
        }
        // It only vouches for the bytes before it: dead from birth, for compaction to reclaim.
        segment.add_dead(rec.len() as u64);
        Ok(if idle { log.written } else { target })
    }

    /// Seals the active segment if it was written by a format without sync points, so that every segment written
    /// from now on has them (open calls this on a store of an older version).
    pub(crate) fn seal_older_format(&self) -> Result<()> {
        let mut log = self.lock_log();
        if log.active.version() >= SYNC_POINTS_VERSION {
            return Ok(());
        }
        log::info!(
            "{}: sealing {} (format version {}) so that new writes go to a segment with sync points",
            self.dir.display(),
            log.active.path().display(),
            log.active.version()
        );
        self.rotate(&mut log)
    }
}
