//! Opening a store: take the directory lock, clean up leftovers, read every segment in id order and rebuild the
//! index, cutting off a torn tail of the newest segment.
//!
//! Whether bad bytes are a torn write or damage is decided by [`tail::classify`], which `verify` asks too. A torn
//! tail is cut off with a warning, after everything else opened (so a failed open leaves the directory as it
//! found it); damage is reported as [`Error::Corrupted`] with the file and offset.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use super::compaction::{Compaction, FRESH_WITHOUT_HINT};
use super::write::LogState;
use super::{Counters, Engine};
use crate::codec;
use crate::dir;
use crate::durability::GroupCommit;
use crate::hint;
use crate::index::{Index, Loc};
use crate::options::Options;
use crate::record::{Kind, Records};
use crate::seed::{self, KeyHasher};
use crate::segment::Segment;
use crate::tail::{self, Stop};
use crate::vfs::{VFile, Vfs};
use crate::{Error, Result};

impl Engine {
    pub(crate) fn open(dir: &Path, options: Options) -> Result<Engine> {
        options.validate()?;
        let vfs = Arc::clone(&options.vfs);
        if dir.exists() && !dir.is_dir() {
            return Err(Error::NotADirectory {
                path: dir.to_owned(),
            });
        }
        fs::create_dir_all(dir).map_err(|e| Error::io("create store directory", dir, e))?;
        let lock = dir::lock(dir)?;

        let listing = dir::list(&*vfs, dir)?;
        for name in &listing.leftovers {
            log::warn!(
                "removing {} in {}, left over from an interrupted write",
                name.display(),
                dir.display()
            );
            let path = dir.join(name);
            vfs.remove_file(&path)
                .map_err(|e| Error::io("remove temporary file", &path, e))?;
        }
        let mut ids = listing.segments;
        let hints = listing.hints;
        // After the *.tmp cleanup (which takes a left-over SEED.tmp) and before anything is hashed.
        let seed = seed::load_or_create(&*vfs, dir)?;
        // A hint without its segment is left by a crash between removing a compacted segment and its hint; one
        // for the newest segment cannot be right for long, because that segment is appended to from now on.
        for &id in hints
            .iter()
            .filter(|&&id| ids.binary_search(&id).is_err() || ids.last() == Some(&id))
        {
            let path = dir.join(dir::hint_file_name(id));
            vfs.remove_file(&path)
                .map_err(|e| Error::io("remove stale hint file", &path, e))?;
        }

        let (active, newest_bytes, torn) = match ids.pop() {
            Some(id) => {
                let (segment, bytes, torn) = open_newest(&*vfs, dir, id)?;
                (segment, Some(bytes), torn)
            }
            None => (Segment::create(&*vfs, dir, 1)?, None, None),
        };
        let active = Arc::new(active);
        let mut engine = Engine {
            dir: dir.to_owned(),
            vfs,
            index: Index::new(KeyHasher::new(seed, options.weak_hash)),
            options,
            segments: RwLock::new(BTreeMap::from([(active.id(), Arc::clone(&active))])),
            log: Mutex::new(LogState {
                next_id: active.id() + 1,
                active: Arc::clone(&active),
                written: 0,
            }),
            commit: GroupCommit::default(),
            poison: OnceLock::new(),
            counters: Counters::default(),
            compaction: Compaction::default(),
            _lock: lock,
        };
        // Size the index once for everything the hints list, instead of doubling every shard ~20 times and
        // rehashing what it holds at each step. Hints list live records (compaction output) or at most about
        // 1 / (1 - compaction threshold) times the live ones (sealed segments), so this stays within one
        // doubling of the need; segments that are scanned grow the index as they go.
        let hinted: u64 = ids
            .iter()
            .filter(|id| hints.binary_search(id).is_ok())
            .filter_map(|&id| hint::entry_count(&*engine.vfs, &dir.join(dir::hint_file_name(id))))
            .sum();
        engine
            .index
            .unshared()
            .reserve(usize::try_from(hinted).unwrap_or(usize::MAX));
        let fresh_from = ids.len().saturating_sub(FRESH_WITHOUT_HINT);
        for (i, id) in ids.into_iter().enumerate() {
            let hint = match hints.binary_search(&id).is_ok() {
                true => Hint::Present,
                // The background thread leaves the newest sealed segments without hints on purpose.
                false if i >= fresh_from => Hint::NotYet,
                false => Hint::Missing,
            };
            engine.recover_sealed(id, hint)?;
        }
        if let Some(bytes) = newest_bytes {
            engine.replay_all(active.id(), &bytes)?;
        }
        if let Some(torn) = torn {
            torn.cut()?;
        }
        Ok(engine)
    }

    /// Reads sealed segment `id` into the index: through its hint file if there is a sound one, else by scanning.
    fn recover_sealed(&mut self, id: u32, hint: Hint) -> Result<()> {
        let segment = Arc::new(Segment::open(&*self.vfs, &self.dir, id)?.seal());
        let path = segment.path().to_owned();
        self.segments
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::clone(&segment));
        let hint_path = segment.hint_path();
        if hint == Hint::Present {
            match self.replay_hint(&segment)? {
                Ok(()) => {
                    segment.set_hinted(true);
                    return Ok(());
                }
                Err(HintRefused(reason)) => {
                    log::warn!(
                        "{}: {reason}; scanning {} instead",
                        hint_path.display(),
                        path.display()
                    );
                }
            }
        } else if hint == Hint::Missing {
            log::warn!("{} has no hint file; scanning it", path.display());
        } else {
            log::info!("{} has no hint file yet; scanning it", path.display());
        }
        let contents = segment.contents()?;
        let bytes: &[u8] = &contents;
        let mut records = Records::new(bytes);
        records.by_ref().for_each(drop);
        if let Some((at, e)) = records.stopped() {
            let (Stop::Damaged { reason, .. } | Stop::Torn { reason }) =
                tail::classify(bytes, *at, e, false);
            return Err(Error::corrupted(&path, *at as u64, reason));
        }
        self.replay_all(id, bytes)
    }

    /// Replays a segment from its hint file. Everything is checked before the first entry is applied, so a
    /// refused hint (the inner error) leaves the index as it was and the caller can scan the segment instead.
    fn replay_hint(&mut self, segment: &Segment) -> Result<std::result::Result<(), HintRefused>> {
        let refuse = |reason: String| Ok(Err(HintRefused(reason)));
        let bytes = match hint::read(&*self.vfs, &segment.hint_path()) {
            Ok(bytes) => bytes,
            Err(e) => return refuse(format!("unreadable: {e}")),
        };
        let (header, entries) = match hint::decode(&bytes) {
            Ok(decoded) => decoded,
            Err(reason) => return refuse(reason),
        };
        if let Some(reason) = hint::mismatch(
            &header,
            segment.file_id(),
            segment.len(),
            self.index.hasher(),
        ) {
            return refuse(reason);
        }
        if let Some(last) = entries.last() {
            let mut crc = [0u8; 4];
            let got = match segment.mapped() {
                Some(map) => usize::try_from(last.offset)
                    .ok()
                    .and_then(|o| map.get(o..o + 4))
                    .map_or(0, |b| {
                        crc.copy_from_slice(b);
                        4
                    }),
                None => segment.file().read_at(&mut crc, last.offset).unwrap_or(0),
            };
            if got != 4 || u32::from_le_bytes(crc) != header.last_crc {
                return refuse("its last record does not match the segment's".into());
            }
        }
        // Most entries are keys the index has not seen: no entry with their hash means no entry for their key,
        // so they go in without any key at all. Only where an entry with the same hash exists (the key was
        // written in an earlier segment too, or two keys collide) are the keys read from the records and
        // compared, exactly as a scan would.
        const BATCH: usize = 32;
        for batch in entries.chunks(BATCH) {
            // The index is memory-bound: touching a batch of home slots first lets their cache misses overlap.
            let hashes: [u64; BATCH] = std::array::from_fn(|i| batch.get(i).map_or(0, |e| e.hash));
            self.index
                .unshared()
                .prefetch(hashes.get(..batch.len()).unwrap_or_default());
            for entry in batch {
                let loc = Loc::new(segment.id(), entry.offset);
                match entry.kind {
                    Kind::Put if self.index.unshared().insert_new_hash(entry.hash, loc) => continue,
                    Kind::Delete if self.index.unshared().candidates(entry.hash).is_empty() => {
                        segment.add_dead(entry.len);
                        continue;
                    }
                    _ => {}
                }
                let key = segment.with_key(entry.offset, |kind, key, len| {
                    (kind == entry.kind && len == entry.len).then(|| key.to_vec())
                })?;
                // The hint passed every check, so a record that does not match it is damage in the segment.
                let matches = key
                    .as_deref()
                    .and_then(codec::split_key)
                    .is_some_and(|(u, c)| self.index.hasher().hash(u, c) == entry.hash);
                let (Some(key), true) = (key, matches) else {
                    return Err(self.corrupted_at(
                        loc,
                        "the record differs from its hint file's entry".into(),
                    ));
                };
                self.replay(loc, entry.hash, entry.kind, &key, entry.len)?;
            }
        }
        Ok(Ok(()))
    }

    /// Replays the records of segment `id` (already checked: every record is intact) into the index.
    fn replay_all(&mut self, id: u32, bytes: &[u8]) -> Result<()> {
        for (offset, rec) in Records::new(bytes) {
            let loc = Loc::new(id, offset as u64);
            let Some((user_id, item)) = codec::split_key(rec.key) else {
                return Err(self.corrupted_at(loc, "record key is malformed".into()));
            };
            let hash = self.index.hasher().hash(user_id, item);
            self.replay(loc, hash, rec.kind, rec.key, rec.len() as u64)?;
        }
        Ok(())
    }

    /// Applies one record found during recovery to the index and the dead byte counts. Keys of earlier records
    /// are compared without reading their values, so replay from hint files reads no values at all. Recovery
    /// owns the engine alone, so it works on the index and the segment table without their locks.
    fn replay(&mut self, loc: Loc, hash: u64, kind: Kind, key: &[u8], len: u64) -> Result<()> {
        let segments = self.segments.get_mut().unwrap_or_else(|e| e.into_inner());
        let mut index = self.index.unshared();
        let mut old = None;
        for candidate in index.candidates(hash).iter() {
            let Some(segment) = segments.get(&candidate.segment()) else {
                let path = self.dir.join(dir::segment_file_name(candidate.segment()));
                return Err(Error::corrupted(
                    path,
                    candidate.offset(),
                    "index points into a missing segment",
                ));
            };
            if let Some(old_len) =
                segment.with_key(candidate.offset(), |_, k, n| (k == key).then_some(n))?
            {
                old = Some((candidate, old_len));
                break;
            }
        }
        let mark_dead = |loc: Loc, bytes: u64| {
            if let Some(segment) = segments.get(&loc.segment()) {
                segment.add_dead(bytes);
            }
        };
        match (kind, old) {
            (Kind::Put, Some((old_loc, old_len))) => {
                index.replace(hash, old_loc, loc);
                mark_dead(old_loc, old_len);
            }
            (Kind::Put, None) => index.insert(hash, loc),
            (Kind::Delete, Some((old_loc, old_len))) => {
                index.remove(hash, old_loc);
                mark_dead(old_loc, old_len);
                mark_dead(loc, len);
            }
            (Kind::Delete, None) => mark_dead(loc, len),
        }
        Ok(())
    }
}

/// What open knows about a sealed segment's hint file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hint {
    Present,
    /// One of the newest sealed segments, which get their hints late.
    NotYet,
    Missing,
}

/// Why a hint file was not used.
struct HintRefused(String);

/// Opens the newest segment as the active one, finding a torn tail (cut later); returns it with its bytes.
fn open_newest(vfs: &dyn Vfs, dir: &Path, id: u32) -> Result<(Segment, Vec<u8>, Option<TornTail>)> {
    let segment = Segment::open(vfs, dir, id)?;
    let path = segment.path().to_owned();
    let mut bytes = vec![0u8; usize::try_from(segment.len()).unwrap_or(usize::MAX)];
    let got = segment
        .file()
        .read_at(&mut bytes, 0)
        .map_err(|e| Error::io("read segment", &path, e))?;
    bytes.truncate(got);
    let mut records = Records::new(&bytes);
    records.by_ref().for_each(drop);
    let mut torn = None;
    if let Some((end, e)) = records.stopped() {
        let end = *end;
        match tail::classify(&bytes, end, e, true) {
            Stop::Damaged { reason, .. } => {
                return Err(Error::corrupted(&path, end as u64, reason));
            }
            Stop::Torn { reason } => {
                torn = Some(TornTail {
                    file: Arc::clone(segment.file_arc()),
                    path: path.clone(),
                    at: end as u64,
                    cut: bytes.len() - end,
                    reason,
                });
                bytes.truncate(end);
            }
        }
    }
    let len = bytes.len() as u64;
    Ok((segment.with_len(len), bytes, torn))
}

/// A torn write found at the end of the newest segment, cut off only once the rest of the store has opened, so
/// a failed open leaves the directory as it found it.
struct TornTail {
    file: Arc<dyn VFile>,
    path: PathBuf,
    at: u64,
    cut: usize,
    reason: String,
}

impl TornTail {
    fn cut(self) -> Result<()> {
        log::warn!(
            "{}: cutting off a torn write of {} bytes at offset {} ({})",
            self.path.display(),
            self.cut,
            self.at,
            self.reason
        );
        self.file
            .set_len(self.at)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::io("cut torn tail", &self.path, e))
    }
}
