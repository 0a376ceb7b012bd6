//! Opening a store: take the directory lock, clean up leftovers, read every segment in id order and rebuild the
//! index, cutting off a torn tail of the newest segment.
//!
//! Whether bad bytes are a torn write or damage is decided by [`tail::classify`], which `verify` asks too. A torn
//! tail is cut off with a warning, after everything else opened (so a failed open leaves the directory as it
//! found it); damage is reported as [`Error::Corrupted`] with the file and offset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use super::compaction::{Compaction, FRESH_WITHOUT_HINT};
use super::write::LogState;
use super::{Counters, Engine};
use crate::codec;
use crate::dir::{self, Listing};
use crate::durability::GroupCommit;
use crate::hint;
use crate::index::{Index, Loc, Unshared};
use crate::manifest::{self, Manifest};
use crate::options::Options;
use crate::record::{self, Kind, RecordRef, Records};
use crate::seed::{self, KeyHasher};
use crate::segment::Segment;
use crate::tail::{self, Role, Stop};
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
        let read_only = options.read_only;
        if read_only && !dir.is_dir() {
            return Err(Error::NotADirectory {
                path: dir.to_owned(),
            });
        }
        if !read_only {
            dir::create(dir)?;
        }
        // The multi-process mode (engine/shared.rs): a joiner (other processes have the store open) removes and
        // rewrites nothing, since what looks left over may be a live process's.
        let (lock, shared, hold) = match options.shared {
            true => {
                let (lock, shared, hold) = super::shared::open_locks(dir)?;
                (lock, Some(shared), Some(hold))
            }
            false => (dir::lock(dir, read_only)?, None, None),
        };
        let join = hold.as_ref().is_some_and(|h| !h.alone);
        let preserve = read_only || join;

        let listing = dir::list(&*vfs, dir)?;
        for name in listing.leftovers.iter().filter(|_| !preserve) {
            log::warn!(
                "removing {} in {}, left over from an interrupted write",
                name.display(),
                dir.display()
            );
            let path = dir.join(name);
            vfs.remove_file(&path)
                .map_err(|e| Error::io("remove temporary file", &path, e))?;
        }
        // After the *.tmp cleanup (which takes a left-over SEED.tmp) and before anything is hashed.
        let seed = match read_only {
            false => seed::load_or_create(&*vfs, dir)?,
            // Without a seed no hint can be used; a reader scans instead of making one.
            true => seed::read(&*vfs, dir)?.unwrap_or_else(|_| seed::Seed::random()),
        };
        let (mut manifest, mut dirty) = match manifest::read(&*vfs, dir)? {
            Some(manifest) => (manifest, false),
            None => (legacy_manifest(&*vfs, dir, &listing)?, true),
        };
        let in_flight = manifest.retired.clone();
        dirty |= reconcile(&*vfs, dir, &mut manifest, &listing, preserve)?;
        if join {
            // Retired ids may be a running compaction's: they stay until the compaction lock's holder clears them.
            manifest.retired = in_flight;
        }

        let room = options.segment_size;
        let (active, replay_newest, torn) = match listing.segments.binary_search(&manifest.active) {
            Ok(_) => {
                let (segment, torn) = open_newest(&*vfs, dir, manifest.active, &seed, room)?;
                (segment, true, torn)
            }
            Err(_) if read_only && manifest.sealed.is_empty() && manifest.generation == 0 => {
                return Err(Error::InvalidOption {
                    option: "read_only",
                    reason: format!("there is no store in {} to open read-only", dir.display()),
                });
            }
            // A store that has never had a segment: its first one.
            Err(_) if manifest.sealed.is_empty() && manifest.generation == 0 => {
                let id = manifest.next_file_id.max(1);
                let segment = Segment::create(&*vfs, dir, id)?.mapped_for_appends(room);
                manifest.active = id;
                manifest.next_file_id = id + 1;
                dirty = true;
                (segment, false, None)
            }
            Err(_) => {
                return Err(Error::corrupted(
                    dir.join(dir::segment_file_name(manifest.active)),
                    0,
                    format!(
                        "the newest segment is missing (named in {}); its acknowledged writes are lost: \
                         restore it from a backup",
                        manifest::MANIFEST_FILE
                    ),
                ));
            }
        };
        let active = Arc::new(active);
        // The newest segment's records, read through its map (no copy of the segment is made).
        let newest_bytes = match replay_newest {
            true => Some(active.contents()?),
            false => None,
        };
        let crc = {
            let mut hasher = crc32fast::Hasher::new();
            match &newest_bytes {
                Some(bytes) => hasher.update(bytes),
                None => hasher.update(&record::segment_header(active.file_id())),
            }
            hasher
        };
        let sealed_order: Vec<manifest::Sealed> = manifest.sealed.clone();
        let mut engine = Engine {
            dir: dir.to_owned(),
            vfs,
            index: Index::new(KeyHasher::new(seed, options.weak_hash)),
            options,
            segments: RwLock::new(BTreeMap::from([(active.id(), Arc::clone(&active))])),
            log: Mutex::new(LogState {
                next_id: manifest.next_file_id.max(active.id() + 1),
                active: Arc::clone(&active),
                written: 0,
                crc,
                sync_key: seed,
                unindexed: None,
            }),
            manifest: Mutex::new(manifest),
            commit: GroupCommit::default(),
            poison: OnceLock::new(),
            counters: Counters::default(),
            compaction: Compaction::default(),
            pid: std::process::id(),
            forks: crate::map::fork_generation(),
            shared,
            lock: Mutex::new(Some(lock)),
            index_loaded: false,
        };
        // The index a clean close saved, if the store is still as that close left it (what `reconcile` may have
        // changed, left-over files and hint flags, is not what the index holds). If it is refused, the sealed
        // segments it opened are opened again below: the refusal is rare, the opens cheap.
        let saved = match (&newest_bytes, engine.options.shared) {
            (Some(_), false) => {
                let mut sealed = Vec::with_capacity(sealed_order.len());
                for entry in &sealed_order {
                    sealed.push((*entry, engine.open_sealed(*entry)?));
                }
                engine.load_saved_index(&sealed, &active)?
            }
            _ => false,
        };
        engine.index_loaded = saved;
        if !saved {
            dirty |= engine.rebuild_index(&sealed_order, &active, newest_bytes.as_deref())?;
        }
        engine.index.unshared().bulk(false);
        if !preserve {
            // Gone before the first append: a saved index is only ever there for the state it was made for.
            let path = dir.join(crate::index_file::INDEX_FILE);
            if let Err(e) = engine.vfs.remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                log::warn!("could not remove {}: {e}", path.display());
            }
        }
        // The torn tail is cut below only after the last read of the newest segment's bytes past its length.
        if let Some(torn) = torn {
            match read_only {
                false => torn.cut()?,
                true => log::warn!(
                    "{}: a torn write of {} bytes at offset {} is ignored (read-only)",
                    torn.path.display(),
                    torn.cut,
                    torn.at
                ),
            }
        }
        if dirty && !preserve {
            let engine_dir = engine.dir.clone();
            let vfs = Arc::clone(&engine.vfs);
            engine
                .manifest
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .write(&*vfs, &engine_dir)
                .map_err(|(e, _)| e)?;
        }
        // Everything this opener found is what the others see: published before any append.
        engine.publish_opened();
        if !preserve {
            // A newest segment of an older format has no sync points: seal it, so that every write from now on
            // lands in a segment that has them.
            engine.seal_older_format()?;
        }
        drop(hold);
        Ok(engine)
    }

    /// Builds the index from the sealed segments (`sealed`, in the manifest's order: from their hint files
    /// where sound ones exist, else by scanning) and the newest segment's intact records (`newest`). Returns
    /// true when the manifest changed (a hint dropped or adopted).
    fn rebuild_index(
        &mut self,
        sealed_order: &[manifest::Sealed],
        active: &Segment,
        newest: Option<&[u8]>,
    ) -> Result<bool> {
        let mut dirty = false;
        // Size the index once for everything the hints list, instead of growing every shard step by step and
        // rehashing what it holds at each step. Hints list live records (compaction output) or at most about
        // 1 / (1 - compaction threshold) times the live ones (sealed segments); segments that are scanned grow
        // the index as they go, by doubling while the build lasts (ended by the caller, which fits each table
        // to its entries).
        self.index.unshared().bulk(true);
        let hinted: u64 = sealed_order
            .iter()
            .filter(|s| s.hint != 0)
            .filter_map(|s| {
                hint::entry_count(&*self.vfs, &self.dir.join(dir::hint_file_name(s.file_id)))
            })
            .sum();
        self.index
            .unshared()
            .reserve(usize::try_from(hinted).unwrap_or(usize::MAX));
        let fresh_from = sealed_order.len().saturating_sub(FRESH_WITHOUT_HINT);
        for (i, entry) in sealed_order.iter().enumerate() {
            let hint = match entry.hint != 0 {
                true => Hint::Present(entry.hint),
                // The background thread leaves the newest sealed segments without hints on purpose.
                false if i >= fresh_from => Hint::NotYet,
                false => Hint::Missing,
            };
            dirty |= self.recover_sealed(*entry, hint)?;
        }
        if let Some(bytes) = newest {
            self.replay_all(active.id(), bytes)?;
        }
        Ok(dirty)
    }

    /// Opens sealed segment `entry`, whose length must be the manifest's, and adds it to the segment table.
    fn open_sealed(&mut self, entry: manifest::Sealed) -> Result<Arc<Segment>> {
        let id = entry.file_id;
        let segment = Segment::open(&*self.vfs, &self.dir, id)?;
        if segment.len() != entry.len {
            let how = if segment.len() < entry.len {
                "shortened"
            } else {
                "longer than when it was sealed"
            };
            return Err(Error::corrupted(
                segment.path(),
                segment.len().min(entry.len),
                format!(
                    "sealed segment is {} bytes, {} says {}: {how}; restore it from a backup or run repair",
                    segment.len(),
                    manifest::MANIFEST_FILE,
                    entry.len
                ),
            ));
        }
        let segment = Arc::new(segment.seal());
        self.segments
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::clone(&segment));
        Ok(segment)
    }

    /// Reads a sealed segment into the index: through its hint file if there is a sound one, else by scanning.
    /// Returns true when the manifest's entry changed (its hint was dropped or adopted).
    fn recover_sealed(&mut self, entry: manifest::Sealed, hint: Hint) -> Result<bool> {
        let id = entry.file_id;
        let segment = self.open_sealed(entry)?;
        let path = segment.path().to_owned();
        let hint_path = segment.hint_path();
        let mut changed = false;
        if let Hint::Present(identity) = hint {
            match self.replay_hint(&segment, identity)? {
                Ok(identity) => {
                    segment.set_hinted(true);
                    let adopted = entry.hint != identity;
                    if let Some(e) = self.manifest_mut().sealed_entry(id) {
                        e.hint = identity;
                    }
                    return Ok(adopted);
                }
                Err(HintRefused(reason)) => {
                    log::warn!(
                        "{}: {reason}; scanning {} instead",
                        hint_path.display(),
                        path.display()
                    );
                    // Gone, so that a sound one is written in its place.
                    if !self.options.read_only {
                        let _ = self.vfs.remove_file(&hint_path);
                    }
                    if let Some(e) = self.manifest_mut().sealed_entry(id) {
                        e.hint = 0;
                    }
                    changed = true;
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
                tail::classify(bytes, *at, e, Role::Sealed);
            return Err(Error::corrupted(&path, *at as u64, reason));
        }
        self.replay_all(id, bytes)?;
        Ok(changed)
    }

    fn manifest_mut(&mut self) -> &mut manifest::Manifest {
        self.manifest.get_mut().unwrap_or_else(|e| e.into_inner())
    }

    /// Replays a segment from its hint file. Everything is checked before the first entry is applied, so a
    /// refused hint (the inner error) leaves the index as it was and the caller can scan the segment instead.
    /// `identity`: the hint identity the manifest names (`u32::MAX` for a store made before manifests, whose
    /// hints are judged by their contents alone). Returns the identity of the hint used.
    fn replay_hint(
        &mut self,
        segment: &Segment,
        identity: u32,
    ) -> Result<std::result::Result<u32, HintRefused>> {
        let refuse = |reason: String| Ok(Err(HintRefused(reason)));
        let bytes = match hint::read(&*self.vfs, &segment.hint_path()) {
            Ok(bytes) => bytes,
            Err(e) => return refuse(format!("unreadable: {e}")),
        };
        let found = hint::identity(&bytes);
        if identity != LEGACY_HINT && found != Some(identity) {
            return refuse(format!(
                "stale: not the hint file {} names for this segment",
                manifest::MANIFEST_FILE
            ));
        }
        let (header, entries) = match hint::check(&bytes) {
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
        // so they go in without any key at all (the first pass, on several threads for a large hint: each owns
        // some of the index's shards). Only where an entry with the same hash exists (the key was written in an
        // earlier segment too, or two keys collide) are the keys read from the records and compared, exactly as
        // a scan would (the second pass, in the hint's order). Putting those off to the end of the segment
        // changes nothing: once a hash has an entry, every later entry with that hash goes to the second pass
        // too, and the first pass only adds entries for hashes that had none.
        let parts = match self.options.hint_replay_parts {
            Some(parts) => parts,
            None if entries.len() >= PARALLEL_HINT_ENTRIES => {
                std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_REPLAY_THREADS))
            }
            None => 1,
        };
        // Each part walks all entries and takes those whose hash it owns: decoding an entry costs less than
        // sorting the entries out between parts first.
        let mut keyed: Vec<(usize, hint::HintEntry)> = self
            .index
            .unshared()
            .in_parts(parts, |view| new_hashes(view, segment, entries))
            .into_iter()
            .flatten()
            .collect();
        keyed.sort_unstable_by_key(|&(i, _)| i);
        for (_, entry) in keyed {
            let loc = Loc::new(segment.id(), entry.offset);
            let key = segment.with_key(entry.offset, |kind, key, len| {
                (kind == entry.kind && len == entry.len).then(|| key.to_vec())
            })?;
            // The hint passed every check, so a record that does not match it is damage in the segment.
            let matches = key
                .as_deref()
                .and_then(codec::split_key)
                .is_some_and(|(u, c)| self.index.hasher().hash(u, c) == entry.hash);
            let (Some(key), true) = (key, matches) else {
                return Err(
                    self.corrupted_at(loc, "the record differs from its hint file's entry".into())
                );
            };
            self.replay(loc, entry.hash, entry.kind, &key, entry.len)?;
        }
        Ok(Ok(found.unwrap_or_default()))
    }

    /// Replays the records of segment `id` (already checked: every record is intact) into the index.
    fn replay_all(&mut self, id: u32, bytes: &[u8]) -> Result<()> {
        // As in `replay_hint`: the hashes of a batch of records are made first and their home slots touched
        // together, so the cache misses of the index overlap instead of coming one per record.
        const BATCH: usize = 32;
        let mut records = Records::new(bytes);
        let mut batch: Vec<(usize, RecordRef<'_>, u64)> = Vec::with_capacity(BATCH);
        loop {
            batch.clear();
            for (offset, rec) in records.by_ref().take(BATCH) {
                let hash = match rec.kind {
                    Kind::Sync => 0,
                    _ => match codec::split_key(rec.key) {
                        Some((user_id, item)) => self.index.hasher().hash(user_id, item),
                        None => {
                            let loc = Loc::new(id, offset as u64);
                            return Err(self.corrupted_at(loc, "record key is malformed".into()));
                        }
                    },
                };
                batch.push((offset, rec, hash));
            }
            if batch.is_empty() {
                return Ok(());
            }
            let hashes: [u64; BATCH] = std::array::from_fn(|i| batch.get(i).map_or(0, |b| b.2));
            self.index
                .unshared()
                .prefetch(hashes.get(..batch.len()).unwrap_or_default());
            for &(offset, rec, hash) in &batch {
                let loc = Loc::new(id, offset as u64);
                // A put whose hash no entry has yet is a key the index has not seen: no key to compare.
                if rec.kind == Kind::Put && self.index.unshared().insert_new_hash(hash, loc) {
                    continue;
                }
                // Sync points are dead bytes from birth to the index (only recovery reads them, tail.rs).
                self.replay(loc, hash, rec.kind, rec.key, rec.len() as u64)?;
            }
        }
    }

    /// Applies one record found during recovery to the index and the dead byte counts. Keys of earlier records
    /// are compared without reading their values, so replay from hint files reads no values at all. Recovery
    /// owns the engine alone, so it works on the index and the segment table without their locks.
    fn replay(&mut self, loc: Loc, hash: u64, kind: Kind, key: &[u8], len: u64) -> Result<()> {
        let segments = self.segments.get_mut().unwrap_or_else(|e| e.into_inner());
        if kind == Kind::Sync {
            if let Some(segment) = segments.get(&loc.segment()) {
                segment.add_dead(len);
            }
            return Ok(());
        }
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
            (Kind::Delete, None) | (Kind::Sync, _) => mark_dead(loc, len),
        }
        Ok(())
    }
}

/// The hint identity given for hints of a store made before manifests: judged by their contents alone.
const LEGACY_HINT: u32 = u32::MAX;

/// What open knows about a sealed segment's hint file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hint {
    /// The manifest names a hint with this identity.
    Present(u32),
    /// One of the newest sealed segments, which get their hints late.
    NotYet,
    Missing,
}

/// Why a hint file was not used.
struct HintRefused(String);

/// A hint with at least this many entries is replayed on several threads (below, starting them costs more than
/// they save).
const PARALLEL_HINT_ENTRIES: usize = 1 << 16;
/// At most this many threads replay one hint: the work waits on memory, and a few threads overlap enough misses.
const MAX_REPLAY_THREADS: usize = 4;

/// The first pass of a hint's replay over the entries whose hash `index` owns: an entry whose hash has no entry
/// yet goes in (a put) or is dead (a delete, a sync point), with no key read. Returns the others, with their
/// positions in the hint, whose keys must be compared.
fn new_hashes(
    mut index: Unshared<'_>,
    segment: &Segment,
    entries: hint::Entries<'_>,
) -> Vec<(usize, hint::HintEntry)> {
    const BATCH: usize = 32;
    let mut keyed = Vec::new();
    let owner = index.owner();
    let mut owned = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| owner.owns(e.hash))
        .peekable();
    let blank = hint::HintEntry {
        kind: Kind::Sync,
        hash: 0,
        offset: 0,
        len: 0,
    };
    let mut batch = [(0usize, blank); BATCH];
    let mut hashes = [0u64; BATCH];
    while owned.peek().is_some() {
        let mut n = 0;
        for (slot, entry) in batch.iter_mut().zip(owned.by_ref()) {
            *slot = entry;
            n += 1;
        }
        let batch = batch.get(..n).unwrap_or_default();
        // The index is memory-bound: touching a batch of home slots first lets their cache misses overlap.
        for (hash, (_, entry)) in hashes.iter_mut().zip(batch) {
            *hash = entry.hash;
        }
        index.prefetch(hashes.get(..n).unwrap_or_default());
        for &(i, entry) in batch {
            let loc = Loc::new(segment.id(), entry.offset);
            match entry.kind {
                Kind::Sync => segment.add_dead(entry.len),
                Kind::Put if index.insert_new_hash(entry.hash, loc) => {}
                Kind::Delete if index.candidates(entry.hash).is_empty() => {
                    segment.add_dead(entry.len)
                }
                _ => keyed.push((i, entry)),
            }
        }
    }
    keyed
}

/// Opens the newest segment as the active one, mapped with room for `room` bytes, finding a torn tail (cut
/// later); the segment's length is that of its intact records. `seed` authenticates its sync points.
fn open_newest(
    vfs: &dyn Vfs,
    dir: &Path,
    id: u32,
    seed: &seed::Seed,
    room: u64,
) -> Result<(Segment, Option<TornTail>)> {
    let segment = Segment::open(vfs, dir, id)?.mapped_for_appends(room);
    let path = segment.path().to_owned();
    let (end, torn) = {
        let bytes = segment.contents()?;
        let mut records = Records::new(&bytes);
        records.by_ref().for_each(drop);
        match records.stopped() {
            None => (bytes.len(), None),
            Some((end, e)) => {
                let end = *end;
                let role = Role::Newest {
                    version: segment.version(),
                    file_id: id,
                    seed: Some(seed),
                };
                match tail::classify(&bytes, end, e, role) {
                    Stop::Damaged { reason, .. } => {
                        return Err(Error::corrupted(&path, end as u64, reason));
                    }
                    Stop::Torn { reason } => {
                        let Some(file) = segment.file_arc() else {
                            return Err(Error::corrupted(
                                &path,
                                0,
                                "the newest segment has no open file",
                            ));
                        };
                        let torn = TornTail {
                            file: Arc::clone(file),
                            path: path.clone(),
                            at: end as u64,
                            cut: bytes.len() - end,
                            reason,
                        };
                        (end, Some(torn))
                    }
                }
            }
        }
    };
    Ok((segment.with_len(end as u64), torn))
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

/// The manifest of a store made before manifests existed: its segments in file-id order (the replay order
/// then), the newest one active, hints to be judged by their contents.
fn legacy_manifest(vfs: &dyn Vfs, dir: &Path, listing: &Listing) -> Result<Manifest> {
    let mut ids = listing.segments.clone();
    let active = ids.pop().unwrap_or(0);
    let mut sealed = Vec::with_capacity(ids.len());
    for &id in ids
        .iter()
        .chain(std::iter::once(&active).filter(|&&a| a != 0))
    {
        let segment = Segment::open(vfs, dir, id)?;
        if segment.version() > 1 && listing.segments.len() > 1 {
            // Such a store orders its segments by its manifest, not by file id: without it the replay order
            // of several segments is unknown, and guessing could bring back overwritten values. (A single
            // one is a new store whose first manifest was not written yet.)
            return Err(Error::corrupted(
                dir.join(manifest::MANIFEST_FILE),
                0,
                format!(
                    "the manifest is missing but {} was written by a store that has one; restore {} from a \
                     backup",
                    segment.path().display(),
                    manifest::MANIFEST_FILE
                ),
            ));
        }
        if id == active {
            continue;
        }
        sealed.push(manifest::Sealed {
            file_id: id,
            len: segment.len(),
            crc: 0,
            hint: if listing.hints.binary_search(&id).is_ok() {
                LEGACY_HINT
            } else {
                0
            },
        });
    }
    if active != 0 {
        log::info!(
            "{}: no {} yet (a store of an earlier version); writing one",
            dir.display(),
            manifest::MANIFEST_FILE
        );
    }
    Ok(Manifest {
        generation: 0,
        next_file_id: active + 1,
        active,
        sealed,
        retired: Vec::new(),
    })
}

/// Brings the directory in line with the manifest before anything is read: files the manifest retired or never
/// committed are removed, hint files it does not name are removed; a file it names that is missing, or a segment
/// file it does not know, is an error naming the file. Returns true when the manifest changed.
/// A reader (`read_only`) removes nothing: it leaves left-overs where they are and ignores them.
fn reconcile(
    vfs: &dyn Vfs,
    dir: &Path,
    manifest: &mut Manifest,
    listing: &Listing,
    read_only: bool,
) -> Result<bool> {
    let mut changed = false;
    let named = |id: u32| id == manifest.active || manifest.sealed.iter().any(|s| s.file_id == id);
    let remove = |path: &Path, why: &str| -> Result<()> {
        if read_only {
            log::warn!("ignoring {}: {why}", path.display());
            return Ok(());
        }
        log::warn!("removing {}: {why}", path.display());
        vfs.remove_file(path)
            .map_err(|e| Error::io("remove file", path, e))
    };
    let mut removed = false;
    for &id in &listing.segments {
        if named(id) {
            continue;
        }
        let path = dir.join(dir::segment_file_name(id));
        if id >= manifest.next_file_id || manifest.retired.contains(&id) {
            remove(
                &path,
                "left over from an interrupted rotation or compaction",
            )?;
            removed = true;
        } else {
            return Err(Error::corrupted(
                &path,
                0,
                format!(
                    "this segment file is not part of the store ({} does not name it): a file from \
                     elsewhere or an old backup; move it out of the directory",
                    manifest::MANIFEST_FILE
                ),
            ));
        }
    }
    for &id in &listing.hints {
        let path = dir.join(dir::hint_file_name(id));
        match manifest.sealed.iter_mut().find(|s| s.file_id == id) {
            Some(entry) if entry.hint != 0 => {}
            // Written but not yet recorded, or put back from elsewhere: a hint the manifest does not vouch for.
            _ => {
                remove(&path, "a hint file the manifest does not name")?;
                removed = true;
            }
        }
    }
    for entry in &mut manifest.sealed {
        if listing.segments.binary_search(&entry.file_id).is_err() {
            return Err(Error::corrupted(
                dir.join(dir::segment_file_name(entry.file_id)),
                0,
                format!(
                    "a sealed segment named in {} is missing; the mappings it held are lost: restore it \
                     from a backup, or run repair to open the store without it",
                    manifest::MANIFEST_FILE
                ),
            ));
        }
        if entry.hint != 0 && listing.hints.binary_search(&entry.file_id).is_err() {
            log::warn!(
                "{}: hint file missing; scanning the segment",
                dir.join(dir::hint_file_name(entry.file_id)).display()
            );
            entry.hint = 0;
            changed = true;
        }
    }
    if !manifest.retired.is_empty() {
        manifest.retired.clear();
        changed = true;
    }
    if removed && !read_only {
        dir::sync_dir(vfs, dir)?;
    }
    Ok(changed)
}
