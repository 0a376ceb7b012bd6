//! Opening a store: take the directory lock, clean up leftovers, read every segment in id order and rebuild the
//! index, cutting off a torn tail of the newest segment.
//!
//! Only the newest segment can legitimately end in a torn record (rotation fsyncs a segment before the next one
//! exists). A bad record there is a torn write when no intact record follows it, or when the gap before the
//! next intact record has the shape of pages the kernel never wrote back (see [`lost_writeback`]): it is cut off
//! with a warning, after everything else opened. Any other bad record followed by intact ones, and anything wrong
//! in an older segment, is damage: reported as [`Error::Corrupted`] with the file and offset.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use crate::codec;
use crate::compaction::Compaction;
use crate::engine::{Counters, Engine};
use crate::hint;
use crate::index::{Index, KeyHasher, Loc, MAX_SEGMENT_ID};
use crate::log::{LogState, Syncer};
use crate::record::{self, DecodeError, HeaderError, Kind, SEGMENT_HEADER_LEN};
use crate::seed;
use crate::segment::{self, Segment, TMP_SUFFIX};
use crate::store::Options;
use crate::vfs::{VFile, Vfs};
use crate::{Error, Result};

/// Name of the lock file in a store directory.
pub const LOCK_FILE: &str = "LOCK";

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
        let lock = lock_dir(dir)?;

        let mut ids = Vec::new();
        let mut hints = BTreeSet::new();
        for name in vfs
            .list_dir(dir)
            .map_err(|e| Error::io("list store directory", dir, e))?
        {
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(TMP_SUFFIX) {
                log::warn!(
                    "removing {name} in {}, left over from an interrupted write",
                    dir.display()
                );
                let path = dir.join(name);
                vfs.remove_file(&path)
                    .map_err(|e| Error::io("remove temporary file", &path, e))?;
            } else if let Some(id) = segment::parse_file_name(name) {
                ids.push(id);
            } else if let Some(id) = segment::parse_hint_file_name(name) {
                hints.insert(id);
            }
        }
        ids.sort_unstable();
        // After the *.tmp cleanup (which takes a left-over SEED.tmp) and before anything is hashed.
        let seed = seed::load_or_create(&*vfs, dir)?;
        // A hint without its segment is left by a crash between removing a compacted segment and its hint; one
        // for the newest segment cannot be right for long, because that segment is appended to from now on.
        for &id in hints
            .iter()
            .filter(|&&id| ids.binary_search(&id).is_err() || ids.last() == Some(&id))
        {
            let path = dir.join(segment::hint_file_name(id));
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
            syncer: Syncer::default(),
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
            .filter(|id| hints.contains(id))
            .filter_map(|&id| {
                hint::entry_count(&*engine.vfs, &dir.join(segment::hint_file_name(id)))
            })
            .sum();
        engine
            .index
            .unshared()
            .reserve(usize::try_from(hinted).unwrap_or(usize::MAX));
        let fresh_from = ids
            .len()
            .saturating_sub(crate::compaction::FRESH_WITHOUT_HINT);
        for (i, id) in ids.into_iter().enumerate() {
            let hint = match hints.contains(&id) {
                true => Hint::Present,
                // The background thread leaves the newest sealed segments without hints on purpose.
                false if i >= fresh_from => Hint::NotYet,
                false => Hint::Missing,
            };
            engine.recover_sealed(id, hint)?;
        }
        if let Some(bytes) = newest_bytes {
            engine.replay_all(active.id(), active.path(), &bytes)?;
        }
        if let Some(torn) = torn {
            torn.cut()?;
        }
        Ok(engine)
    }

    /// Reads sealed segment `id` into the index: through its hint file if there is a sound one, else by scanning.
    fn recover_sealed(&mut self, id: u32, hint: Hint) -> Result<()> {
        let (path, file, len) = open_segment(&*self.vfs, &self.dir, id)?;
        let segment = Arc::new(Segment::active(id, path.clone(), file, len, 0).seal());
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
        let end = valid_prefix(bytes);
        if end < bytes.len() {
            let reason = record::decode(&bytes[end..])
                .err()
                .map(describe)
                .unwrap_or_default();
            return Err(Error::corrupted(&path, end as u64, reason));
        }
        self.replay_all(id, &path, bytes)
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
        if header.file_id != segment.file_id() {
            return refuse(format!("written for segment {}", header.file_id));
        }
        if header.segment_len != segment.len() {
            return refuse(format!(
                "written for a segment of {} bytes, the segment has {}",
                header.segment_len,
                segment.len()
            ));
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
        if header.hasher != self.index.hasher().identity() {
            return refuse("made with another hash seed".into());
        }
        // Most entries are keys the index has not seen: no entry with their hash means no entry for their key,
        // so they go in without any key at all. Only where an entry with the same hash exists (the key was
        // written in an earlier segment too, or two keys collide) are the keys read from the records and
        // compared, exactly as a scan would.
        const BATCH: usize = 32;
        for batch in entries.chunks(BATCH) {
            // The index is memory-bound: touching a batch of home slots first lets their cache misses overlap.
            let hashes: [u64; BATCH] = std::array::from_fn(|i| batch.get(i).map_or(0, |e| e.hash));
            self.index.unshared().prefetch(&hashes[..batch.len()]);
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
                    .and_then(codec::decode_key)
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

    /// Replays the records of segment `id` (already checked by [`valid_prefix`]) into the index.
    fn replay_all(&mut self, id: u32, path: &Path, bytes: &[u8]) -> Result<()> {
        let mut offset = SEGMENT_HEADER_LEN as usize;
        while offset < bytes.len() {
            let rec = record::decode(&bytes[offset..])
                .map_err(|e| Error::corrupted(path, offset as u64, describe(e)))?;
            let loc = Loc::new(id, offset as u64);
            let Some((user_id, campaign_key)) = codec::decode_key(rec.key) else {
                return Err(self.corrupted_at(loc, "record key is malformed".into()));
            };
            let hash = self.index.hasher().hash(user_id, campaign_key);
            self.replay(loc, hash, rec.kind, rec.key, rec.len() as u64)?;
            offset += rec.len();
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
                let path = self.dir.join(segment::file_name(candidate.segment()));
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

/// How long `open` waits for a held lock before it reports [`Error::Locked`]. A lock can be held for a moment by
/// no store at all: a child process that any thread of this process is starting shares the lock file's open
/// description from fork until exec (close-on-exec closes it only then), so without patience a store closed and
/// reopened while another thread spawns a process fails at random.
const LOCK_PATIENCE: Duration = Duration::from_millis(500);

/// Takes the directory's lock file (creating it), so no other process or handle opens the store meanwhile.
pub(crate) fn lock_dir(dir: &Path) -> Result<fs::File> {
    let lock_path = dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| Error::io("open lock file", &lock_path, e))?;
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(lock),
            Err(fs::TryLockError::WouldBlock) if start.elapsed() < LOCK_PATIENCE => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(fs::TryLockError::WouldBlock) => return Err(Error::Locked { path: lock_path }),
            Err(fs::TryLockError::Error(e)) => {
                return Err(Error::io("lock store directory", &lock_path, e));
            }
        }
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

/// Opens segment `id` and checks its header; returns its path, file and length.
fn open_segment(vfs: &dyn Vfs, dir: &Path, id: u32) -> Result<(PathBuf, Arc<dyn VFile>, u64)> {
    let path = dir.join(segment::file_name(id));
    if id == 0 || id > MAX_SEGMENT_ID {
        return Err(Error::corrupted(
            &path,
            0,
            format!("segment id {id} is out of range"),
        ));
    }
    let file: Arc<dyn VFile> = Arc::from(
        vfs.open(&path)
            .map_err(|e| Error::io("open segment", &path, e))?,
    );
    let len = file
        .len()
        .map_err(|e| Error::io("read segment length", &path, e))?;
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    let got = file
        .read_at(&mut header, 0)
        .map_err(|e| Error::io("read segment header", &path, e))?;
    match record::decode_segment_header(&header[..got]) {
        Ok(found) if found == id => Ok((path, file, len)),
        Ok(found) => Err(Error::corrupted(
            &path,
            12,
            format!("header names segment {found}, the file name {id}"),
        )),
        Err(HeaderError::Short) => Err(Error::corrupted(&path, 0, "segment header is incomplete")),
        Err(HeaderError::BadMagic) => Err(Error::BadMagic { path }),
        Err(HeaderError::Version(found)) => Err(Error::UnsupportedVersion {
            path,
            found,
            supported: record::FORMAT_VERSION,
        }),
        Err(HeaderError::Invalid(reason)) => Err(Error::corrupted(&path, 0, reason)),
    }
}

/// Opens the newest segment as the active one, cutting off a torn tail; returns it with its bytes.
fn open_newest(vfs: &dyn Vfs, dir: &Path, id: u32) -> Result<(Segment, Vec<u8>, Option<TornTail>)> {
    let (path, file, len) = open_segment(vfs, dir, id)?;
    let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
    let got = file
        .read_at(&mut bytes, 0)
        .map_err(|e| Error::io("read segment", &path, e))?;
    bytes.truncate(got);
    let end = valid_prefix(&bytes);
    let mut torn = None;
    if end < bytes.len() {
        let mut reason = record::decode(&bytes[end..])
            .err()
            .map(describe)
            .unwrap_or_default();
        if let Some(next) = next_intact_record(&bytes, end + 1) {
            if !lost_writeback(&bytes, end, next) {
                return Err(Error::corrupted(
                    &path,
                    end as u64,
                    format!(
                        "{reason}; an intact record follows at offset {next}, so this is damage, not a torn write"
                    ),
                ));
            }
            reason = format!(
                "{reason}; the page cache wrote back later pages but not this one before a power loss"
            );
        }
        torn = Some(TornTail {
            file: Arc::clone(&file),
            path: path.clone(),
            at: end as u64,
            cut: bytes.len() - end,
            reason,
        });
        bytes.truncate(end);
    }
    Ok((Segment::active(id, path, file, end as u64, 0), bytes, torn))
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

/// True when the damage at `from`, followed by an intact record at `next`, has the shape of writes that never
/// reached the disk: some 4 KiB page between them ends in zeros, as a page does that the kernel had not written
/// back when the power went (it wrote a later page first). Bit rot flips bits; it does not zero a page's tail.
/// Without fsyncs (`Periodic`, `Never`) such a hole can precede intact records; with `Immediate`, anything after
/// it was never acknowledged, since the fsync that acknowledges a write covers every page before it.
fn lost_writeback(bytes: &[u8], from: usize, next: usize) -> bool {
    const PAGE: usize = 4096;
    const ZERO_TAIL: usize = 64;
    (from / PAGE + 1..=next / PAGE)
        .map(|page| page * PAGE)
        .filter_map(|boundary| bytes.get(boundary - ZERO_TAIL..boundary))
        .any(|tail| tail.iter().all(|&b| b == 0))
}

/// The length of the longest prefix of a segment's bytes that is the header and whole, intact records.
fn valid_prefix(bytes: &[u8]) -> usize {
    let mut offset = SEGMENT_HEADER_LEN as usize;
    while let Some(rest) = bytes.get(offset..).filter(|r| !r.is_empty()) {
        match record::decode(rest) {
            Ok(rec) => offset += rec.len(),
            Err(_) => break,
        }
    }
    offset.min(bytes.len())
}

pub(crate) fn describe(e: DecodeError) -> String {
    match e {
        DecodeError::Short { .. } => "record is cut short by the end of the file".to_owned(),
        DecodeError::Invalid(reason) => reason,
    }
}

/// The first offset at or after `from` where an intact record starts, if any.
pub(crate) fn next_intact_record(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len()).find(|&at| record::decode(&bytes[at..]).is_ok())
}
