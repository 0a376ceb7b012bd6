//! The multi-process mode (`Options::shared`): several processes open one store, one appends at a time, every
//! process follows the others' writes through the control file (`control.rs`). Why it is built this way is in
//! docs/DESIGN.md, "Several processes"; the control file's bytes are in docs/FORMAT.md.
//!
//! - **Appending.** `lock_log` (engine/mod.rs) takes the append lock (flock on `APPEND.lock`) after the log mutex,
//!   catches the index up to what the control file published, repairs a torn tail a dead holder left, and the
//!   guard publishes the new tail (and manifest generation) before it lets go. So within and across processes
//!   there is one appender, and log order, index order and publication order are one order.
//! - **Reading.** [`Engine::observe`] loads one word (`seq`); only if it moved since this process last looked does
//!   the reader take the log mutex and catch up: read the new records below the published tail (complete, never
//!   rewritten) and, when the manifest generation moved, follow rotations and compactions ([`Engine::follow`]).
//! - **Compaction.** One process at a time (flock on `COMPACT.lock`); its file ids are handed out through the
//!   manifest, its commit is published like a rotation, and the others re-point their index entries to its output.
//! - **Open.** Under the append lock. The first opener (it takes the control file's flock exclusively: no other
//!   process has the store open) cleans up like a single-process open; later ones remove nothing, since the files
//!   they would take for left-overs may belong to a live process (a running compaction's output, say).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::Engine;
use super::write::LogState;
use crate::codec;
use crate::control::{Control, Published, open_lock_file};
use crate::dir::{self, DirLock};
use crate::index::Loc;
use crate::manifest::{self, Manifest};
use crate::record::{Kind, RecordRef, Records, SEGMENT_HEADER_LEN};
use crate::segment::Segment;
use crate::tail::{self, Role, Stop};
use crate::{Error, Result};

/// What a process of the multi-process mode keeps besides the engine's usual state.
pub(crate) struct SharedMode {
    pub(crate) control: Control,
    /// `APPEND.lock`: flock held around each group of appends and each manifest change.
    append: fs::File,
    /// `COMPACT.lock`: flock held around each compaction pass.
    compact: fs::File,
    /// The control file's `seq` this process's index has caught up with.
    seen_seq: AtomicU64,
    /// The manifest generation (as published) this process has followed.
    seen_generation: AtomicU64,
    /// Odd while [`Engine::follow`] takes the index through states older than it held (only when this process
    /// fell behind a rotation and a compaction of the segment it was reading): reads that overlap look again.
    epoch: AtomicU64,
    /// Inputs of this process's compaction run between its commit and the end of its index swap: a follow must
    /// not drop their index entries, the swap moves them.
    swapping: Mutex<Vec<u32>>,
}

/// The append lock held through `open`: released once the index is published.
pub(crate) struct OpenHold {
    file: fs::File,
    /// No other process had the store open: this opener may clean up.
    pub(crate) alone: bool,
}

impl Drop for OpenHold {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// Takes the locks of a multi-process open: the directory shared, the append lock (held until the returned
/// [`OpenHold`] drops), the control file shared for the store's lifetime (exclusively first, to learn whether
/// this opener is alone).
pub(crate) fn open_locks(dir: &Path) -> Result<(DirLock, SharedMode, OpenHold)> {
    // The append lock first: while an opener holds it, no other opener of the mode holds the directory lock
    // without the control file's, so a directory lock found held beside a lone opener is a reader's.
    let append = open_lock_file(dir, dir::APPEND_LOCK_FILE)?;
    append
        .lock()
        .map_err(|e| Error::io("take the append lock", dir.join(dir::APPEND_LOCK_FILE), e))?;
    let lock = dir::lock_multi_process(dir)?;
    let mut hold = OpenHold {
        file: append
            .try_clone()
            .map_err(|e| Error::io("take the append lock", dir.join(dir::APPEND_LOCK_FILE), e))?,
        alone: false,
    };
    let compact = open_lock_file(dir, dir::COMPACT_LOCK_FILE)?;
    let (control, control_file) = Control::open(dir)?;
    let control_path = dir.join(dir::CONTROL_FILE);
    let alone = match control_file.try_lock() {
        Ok(()) => true,
        Err(fs::TryLockError::WouldBlock) => false,
        Err(fs::TryLockError::Error(e)) => {
            return Err(Error::io("lock control file", &control_path, e));
        }
    };
    if alone && dir::readers_present(&lock) {
        return Err(Error::Locked {
            path: dir.join(dir::LOCK_FILE),
        });
    }
    // Converting to shared is not atomic, but every opener holds the append lock while it looks: none can see
    // the gap.
    control_file
        .lock_shared()
        .map_err(|e| Error::io("lock control file", &control_path, e))?;
    let mut lock = lock;
    lock.keep(control_file);
    let shared = SharedMode {
        control,
        append,
        compact,
        seen_seq: AtomicU64::new(0),
        seen_generation: AtomicU64::new(0),
        epoch: AtomicU64::new(0),
        swapping: Mutex::new(Vec::new()),
    };
    hold.alone = alone;
    Ok((lock, shared, hold))
}

/// Why a follow must start over.
enum Follow {
    /// A file the manifest named was gone: a newer manifest replaced it meanwhile.
    Again,
    Failed(Error),
}

impl From<Error> for Follow {
    fn from(e: Error) -> Follow {
        Follow::Failed(e)
    }
}

/// With the append lock held and no rotation or compaction published since this process last followed,
/// takes the other processes' new records as part of the active segment without indexing them yet (they are
/// marked unindexed, `put_shared` indexes them after the lock is let go). False when a full catch-up is
/// needed.
fn skip_ahead(shared: &SharedMode, log: &mut LogState) -> bool {
    let published = shared.control.load();
    if published.generation != shared.seen_generation.load(Ordering::Acquire)
        || published.file_id != log.active.file_id()
    {
        return false;
    }
    let len = log.active.len();
    if published.tail > len {
        log.unindexed.get_or_insert(len);
        log.active.grew(published.tail - len);
    }
    true
}

/// The held compaction lock of the multi-process mode.
pub(crate) struct CompactHold<'a>(&'a fs::File);

impl Drop for CompactHold<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl Engine {
    /// The read path's check, before a lookup: refuses a store opened before this process was forked, and in the
    /// multi-process mode catches up with the other processes' writes if the control file moved. Returns the
    /// epoch [`Engine::settled`] compares after the lookup.
    #[inline]
    pub(crate) fn observe(&self) -> Result<u64> {
        if self.forked() {
            return Err(self.forked_error());
        }
        match &self.shared {
            None => Ok(0),
            Some(shared) => self.observe_shared(shared),
        }
    }

    /// [`Engine::observe`] in the multi-process mode; apart so that a single-process get inlines its two checks.
    fn observe_shared(&self, shared: &SharedMode) -> Result<u64> {
        let epoch = shared.epoch.load(Ordering::Acquire);
        if shared.control.seq() == shared.seen_seq.load(Ordering::Acquire) && epoch & 1 == 0 {
            return Ok(epoch);
        }
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        self.catch_up(&mut log)?;
        Ok(shared.epoch.load(Ordering::Acquire))
    }

    /// True when no follow took the index back in time since [`Engine::observe`] returned `epoch`.
    #[inline]
    pub(crate) fn settled(&self, epoch: u64) -> bool {
        self.shared
            .as_ref()
            .is_none_or(|s| s.epoch.load(Ordering::Acquire) == epoch)
    }

    /// Brings this process's index, segment table and manifest up to what the control file published. Called
    /// with the log mutex held (by readers without the append lock: everything they read below the published
    /// tail is complete and never changes).
    pub(super) fn catch_up(&self, log: &mut LogState) -> Result<()> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        self.index_unindexed(log)?;
        let mut again = 0;
        loop {
            let published = shared.control.load();
            if published.seq == shared.seen_seq.load(Ordering::Acquire) {
                return Ok(());
            }
            if published.generation != shared.seen_generation.load(Ordering::Acquire) {
                match self.follow(log, &published) {
                    Ok(()) => {}
                    Err(Follow::Again) if again < 1000 => {
                        again += 1;
                        std::thread::yield_now();
                        continue;
                    }
                    Err(Follow::Again) => {
                        return Err(Error::corrupted(
                            self.dir.join(manifest::MANIFEST_FILE),
                            0,
                            "a segment the manifest names kept vanishing",
                        ));
                    }
                    Err(Follow::Failed(e)) => return Err(e),
                }
                shared
                    .seen_generation
                    .store(published.generation, Ordering::Release);
            }
            let active = Arc::clone(&log.active);
            if published.file_id == active.file_id() && published.tail > active.len() {
                self.apply_log(log, &active, active.len(), published.tail, true)?;
            }
            shared.seen_seq.store(published.seq, Ordering::Release);
            return Ok(());
        }
    }

    /// Reads the records of `segment` in `from..to` (complete: below a published tail, or in a sealed segment)
    /// and applies them to the index as the writer that appended them did. `active`: the segment is this
    /// process's active one, whose length and checksum grow with them.
    fn apply_log(
        &self,
        log: &mut LogState,
        segment: &Arc<Segment>,
        from: u64,
        to: u64,
        active: bool,
    ) -> Result<()> {
        if to <= from {
            return Ok(());
        }
        // A sealed segment may have closed its descriptor (it is read through its map): its bytes come from there.
        let sealed;
        let mut read = Vec::new();
        let (bytes, got): (&[u8], usize) = if active {
            // Through the active segment's map when it has room (no system call, no copy): `to` is a tail the
            // appender published after its write returned.
            match segment
                .published_prefix(to)
                .and_then(|all| all.get(usize::try_from(from).ok()?..))
            {
                Some(part) => (part, part.len()),
                None => {
                    read.resize(usize::try_from(to - from).unwrap_or(usize::MAX), 0);
                    let got = segment.file().read_at(&mut read, from).map_err(|e| {
                        Error::io("read another process's records", segment.path(), e)
                    })?;
                    (&read, got)
                }
            }
        } else {
            sealed = segment.contents()?;
            let start = usize::try_from(from)
                .unwrap_or(usize::MAX)
                .min(sealed.len());
            let end = usize::try_from(to).unwrap_or(usize::MAX).min(sealed.len());
            let part = sealed.get(start..end).unwrap_or_default();
            (part, part.len())
        };
        if (got as u64) < to - from {
            return Err(Error::corrupted(
                segment.path(),
                from + got as u64,
                format!("the segment ends before the published tail {to}"),
            ));
        }
        if active {
            // Grown first: an index entry never points past what the segment says it holds. A plain set grew it
            // already (`put_shared`).
            segment.grew(to.saturating_sub(segment.len()));
            log.crc.update(bytes);
        }
        let mut records = Records::from_offset(bytes, 0);
        for (offset, rec) in &mut records {
            self.apply_record(Loc::new(segment.id(), from + offset as u64), &rec)?;
        }
        if let Some((offset, e)) = records.stopped() {
            return Err(Error::corrupted(
                segment.path(),
                from + *offset as u64,
                format!("a record another process published is damaged: {e}"),
            ));
        }
        Ok(())
    }

    /// Applies one record read from the log to the index and the dead byte counts, as its writer did.
    fn apply_record(&self, loc: Loc, rec: &RecordRef<'_>) -> Result<()> {
        let len = rec.len() as u64;
        if rec.kind == Kind::Sync {
            self.mark_dead(loc, len);
            return Ok(());
        }
        let Some((user_id, item)) = codec::split_key(rec.key) else {
            return Err(self.corrupted_at(loc, "record key is malformed".into()));
        };
        let hash = self.index.hasher().hash(user_id, item);
        let old = self.find_key(hash, rec.key)?;
        match (rec.kind, old) {
            (Kind::Put, Some((old_loc, old_len))) => {
                self.index.replace(hash, old_loc, loc);
                self.mark_dead(old_loc, old_len);
            }
            (Kind::Put, None) => self.index.insert(hash, loc),
            (_, Some((old_loc, old_len))) => {
                self.index.remove(hash, old_loc);
                self.mark_dead(old_loc, old_len);
                self.mark_dead(loc, len);
            }
            (_, None) => self.mark_dead(loc, len),
        }
        Ok(())
    }

    /// Follows a change of the manifest made by another process: a rotation (the active segment sealed, new
    /// ones after it), a compaction (outputs in place of runs), new hint files.
    ///
    /// Let K be the last segment in the new manifest's order that this process already knows. Segments after K
    /// hold records it has not seen: they are applied like log (in order, so newer wins). Segments before K are
    /// compaction outputs, copies of records it has seen: an index entry that points into a retired segment moves
    /// to the copy of its record, newest output first (an older output may hold an older copy of the same key).
    /// Index entries left in retired segments are dead (the compactor saw newer records, which were applied)
    /// and are dropped. Only when the segment this process was appending to was itself compacted away does
    /// applying go through older states (outputs holding copies, then newer ones); the epoch makes reads that
    /// overlap that look again.
    fn follow(&self, log: &mut LogState, published: &Published) -> std::result::Result<(), Follow> {
        let manifest = manifest::read(&*self.vfs, &self.dir)?.ok_or_else(|| {
            Error::corrupted(
                self.dir.join(manifest::MANIFEST_FILE),
                0,
                "the manifest vanished while the store is open",
            )
        })?;
        if manifest.generation == self.lock_manifest().generation {
            return Ok(());
        }
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let order: Vec<u32> = manifest
            .sealed
            .iter()
            .map(|s| s.file_id)
            .chain(std::iter::once(manifest.active))
            .collect();
        let alive: BTreeSet<u32> = order.iter().copied().collect();
        let known: BTreeMap<u32, Arc<Segment>> = self.segments().clone();
        let active = Arc::clone(&log.active);
        let was_active = active.file_id();
        let behind = !alive.contains(&was_active);
        if behind {
            shared.epoch.fetch_add(1, Ordering::AcqRel);
        }
        let outcome = self.follow_order(log, &manifest, &order, &alive, &known, published);
        if behind {
            shared.epoch.fetch_add(1, Ordering::AcqRel);
        }
        outcome?;
        log.next_id = log.next_id.max(manifest.next_file_id);
        *self.lock_manifest() = manifest;
        Ok(())
    }

    fn follow_order(
        &self,
        log: &mut LogState,
        manifest: &Manifest,
        order: &[u32],
        alive: &BTreeSet<u32>,
        known: &BTreeMap<u32, Arc<Segment>>,
        published: &Published,
    ) -> std::result::Result<(), Follow> {
        // Every new file is opened before anything changes: one that vanished means a newer manifest, and the
        // follow starts over from an untouched state.
        let mut opened = Vec::new();
        for (pos, &id) in order.iter().enumerate() {
            if known.contains_key(&id) {
                continue;
            }
            match Segment::open(&*self.vfs, &self.dir, id) {
                Ok(segment) => opened.push((pos, id, segment)),
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Follow::Again);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let active = Arc::clone(&log.active);
        let was_active = active.file_id();
        if manifest.active != was_active {
            // Sealed by another process: its last records first, then it is read through a map like any sealed one.
            let end = match manifest.sealed.iter().find(|s| s.file_id == was_active) {
                Some(entry) => entry.len,
                None => active
                    .file()
                    .len()
                    .map_err(|e| Error::io("read segment length", active.path(), e))?,
            };
            self.apply_log(log, &active, active.len(), end, true)?;
            if alive.contains(&was_active) {
                let sealed = Arc::new(active.seal());
                self.segments
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(sealed.id(), sealed);
            }
        }
        let last_known = order
            .iter()
            .rposition(|id| known.contains_key(id) && alive.contains(id));
        let mut copies = Vec::new();
        for (pos, id, segment) in opened {
            if id == manifest.active {
                let segment = Arc::new(
                    segment
                        .with_len(SEGMENT_HEADER_LEN)
                        .mapped_for_appends(self.options.segment_size),
                );
                self.segments
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, Arc::clone(&segment));
                log.active = Arc::clone(&segment);
                log.crc = crc32fast::Hasher::new();
                log.crc.update(&crate::record::segment_header(id));
                continue;
            }
            let entry = manifest.sealed.get(pos).copied();
            if let Some(entry) = entry
                && segment.len() != entry.len
            {
                return Err(Error::corrupted(
                    segment.path(),
                    segment.len().min(entry.len),
                    format!(
                        "sealed segment is {} bytes, the manifest says {}",
                        segment.len(),
                        entry.len
                    ),
                )
                .into());
            }
            let segment = Arc::new(segment.seal());
            segment.set_hinted(entry.is_some_and(|e| e.hint != 0));
            self.segments
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, Arc::clone(&segment));
            if last_known.is_none_or(|k| pos > k) {
                let len = segment.len();
                self.apply_log(log, &segment, SEGMENT_HEADER_LEN, len, false)?;
            } else {
                copies.push(segment);
            }
        }
        // The newest records before the copies: an entry they move is no longer in a retired segment, and none is
        // dropped below that a newer record would have replaced.
        let active = Arc::clone(&log.active);
        if published.file_id == active.file_id() && published.tail > active.len() {
            self.apply_log(log, &active, active.len(), published.tail, true)?;
        }
        for segment in copies.iter().rev() {
            self.repoint(segment, alive)?;
        }
        let swapping = self
            .shared
            .as_ref()
            .map(|s| s.swapping.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default();
        for (id, segment) in known {
            if alive.contains(id) || swapping.contains(id) {
                continue;
            }
            self.drop_entries(segment)?;
            self.segments
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
        }
        for entry in &manifest.sealed {
            if entry.hint != 0
                && let Some(segment) = self.segments().get(&entry.file_id)
            {
                segment.set_hinted(true);
            }
        }
        Ok(())
    }

    /// Moves the index entries that point into retired segments to their copies in the compaction output
    /// `segment`; the records no entry moved to are dead.
    fn repoint(&self, segment: &Arc<Segment>, alive: &BTreeSet<u32>) -> Result<()> {
        let contents = segment.contents()?;
        let bytes: &[u8] = &contents;
        let mut records = Records::new(bytes);
        for (offset, rec) in &mut records {
            let len = rec.len() as u64;
            let here = Loc::new(segment.id(), offset as u64);
            if rec.kind != Kind::Put {
                segment.add_dead(len);
                continue;
            }
            let Some((user_id, item)) = codec::split_key(rec.key) else {
                return Err(self.corrupted_at(here, "record key is malformed".into()));
            };
            let hash = self.index.hasher().hash(user_id, item);
            let mut moved = false;
            for candidate in self.index.candidates(hash).iter() {
                if alive.contains(&candidate.segment()) {
                    continue;
                }
                let Some(old) = self.segments().get(&candidate.segment()).cloned() else {
                    continue;
                };
                if old.with_key(candidate.offset(), |_, key, _| key == rec.key)? {
                    moved = self.index.replace(hash, candidate, here);
                    break;
                }
            }
            if !moved {
                segment.add_dead(len);
            }
        }
        if let Some((offset, e)) = records.stopped() {
            return Err(Error::corrupted(
                segment.path(),
                *offset as u64,
                e.to_string(),
            ));
        }
        Ok(())
    }

    /// Drops every index entry that still points into the retired `segment`.
    fn drop_entries(&self, segment: &Arc<Segment>) -> Result<()> {
        let contents = segment.contents()?;
        let bytes: &[u8] = &contents;
        for (offset, rec) in Records::new(bytes) {
            if rec.kind != Kind::Put {
                continue;
            }
            let Some((user_id, item)) = codec::split_key(rec.key) else {
                continue;
            };
            let hash = self.index.hasher().hash(user_id, item);
            self.index
                .remove(hash, Loc::new(segment.id(), offset as u64));
        }
        Ok(())
    }

    /// Takes the append lock for `lock_log` (the log mutex is held): catches up, and repairs what a holder that
    /// died left: an unpublished manifest generation, a torn tail. A failure poisons the store.
    pub(super) fn begin_append(&self, log: &mut LogState, defer: bool) {
        let Some(shared) = &self.shared else {
            return;
        };
        // Most of what the other processes appended is applied before the append lock is taken, as a reader
        // would: what is left to catch up under it (and so the time every other appender waits) is what they
        // published meanwhile, usually nothing. A failure here is met again, and reported, under the lock.
        let _ = self.catch_up(log);
        let begun = shared
            .append
            .lock()
            .map_err(|e| {
                Error::io(
                    "take the append lock",
                    self.dir.join(dir::APPEND_LOCK_FILE),
                    e,
                )
            })
            .and_then(|()| {
                let died = shared.control.set_busy(true);
                if died {
                    self.adopt_manifest()?;
                }
                if defer && !died && skip_ahead(shared, log) {
                    return Ok(());
                }
                self.catch_up(log)?;
                if died {
                    self.repair_tail(log)?;
                }
                Ok(())
            });
        if let Err(e) = begun {
            self.set_poison(format!(
                "following the other processes of the store failed: {e}"
            ));
        }
    }

    /// Publishes what this process appended (the new tail, a new manifest generation) and lets go of the append
    /// lock.
    pub(super) fn end_append(&self, log: &mut LogState) {
        let Some(shared) = &self.shared else {
            return;
        };
        // Only a plain set that failed half way gets here with records unindexed: they go in before this process
        // says it has seen them.
        if let Err(e) = self.index_unindexed(log) {
            self.set_poison(format!(
                "following the other processes of the store failed: {e}"
            ));
        }
        if let Some((seq, generation)) = self.publish_tail(shared, log) {
            shared.seen_generation.store(generation, Ordering::Release);
            shared.seen_seq.store(seq, Ordering::Release);
        }
        shared.control.set_busy(false);
        let _ = shared.append.unlock();
    }

    /// Publishes the active segment's tail and the manifest generation if they moved; returns the new `seq` and
    /// the generation published.
    fn publish_tail(&self, shared: &SharedMode, log: &LogState) -> Option<(u64, u64)> {
        let generation = self.lock_manifest().generation;
        let (file_id, len) = (log.active.file_id(), log.active.len());
        let published = shared.control.load();
        ((published.generation, published.file_id, published.tail) != (generation, file_id, len))
            .then(|| (shared.control.publish(generation, file_id, len), generation))
    }

    /// The plain set of the multi-process mode (the caller checked the mode): under the append lock only the
    /// append itself and its publication; the index takes the records (the other processes' it skipped, then
    /// this one) after the lock is let go, while the log mutex still orders this process's index updates. So the
    /// other processes wait for a `pwrite` and two stores into the control file, not for this one's index.
    ///
    /// Until its own record is indexed, this process does not count the new `seq` as seen: a read in another of
    /// its threads meanwhile takes the log mutex and so waits for it. Returns the log position a durability wait
    /// must reach.
    pub(super) fn put_shared(
        &self,
        shared: &SharedMode,
        hash: u64,
        key: &[u8],
        rec: &[u8],
    ) -> Result<u64> {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        self.begin_append(&mut log, true);
        let mut guard = super::LogGuard {
            engine: self,
            log,
            appending: true,
        };
        self.check_poison()?;
        let used = guard.active.len();
        if used > SEGMENT_HEADER_LEN && used + rec.len() as u64 > self.options.segment_size {
            // A rotation seals the segment with its checksum: everything before it is indexed first, and the
            // set goes the usual way.
            self.index_unindexed(&mut guard)?;
            return self.append_indexed(&mut guard, hash, key, rec);
        }
        let loc = self
            .write_record(&mut guard, rec)
            .map_err(super::compaction::explain_disk_full)?;
        if guard.unindexed.is_none() {
            guard.unindexed = Some(loc.offset());
        }
        let position = guard.written;
        let seq = self.publish_tail(shared, &guard);
        shared.control.set_busy(false);
        let _ = shared.append.unlock();
        guard.appending = false;
        if let Err(e) = self.index_own(&mut guard, hash, key, rec, loc) {
            // The record is in the log, published, but not in this process's index.
            self.set_poison(format!("indexing a published record failed: {e}"));
            return Err(e);
        }
        if let Some((seq, _)) = seq {
            shared.seen_seq.store(seq, Ordering::Release);
        }
        Ok(position)
    }

    /// Indexes the other processes' records a plain set skipped, then its own record `rec` at `loc`, which it
    /// knows already (no need to read it back, check it and hash its key again).
    fn index_own(
        &self,
        log: &mut LogState,
        hash: u64,
        key: &[u8],
        rec: &[u8],
        loc: Loc,
    ) -> Result<()> {
        self.index_unindexed_until(log, loc.offset())?;
        let old = self.find_key(hash, key)?;
        log.crc.update(rec);
        self.point(hash, old, loc);
        log.unindexed = None;
        Ok(())
    }

    /// Indexes the records a plain set left unindexed (`LogState::unindexed`), in log order.
    fn index_unindexed(&self, log: &mut LogState) -> Result<()> {
        self.index_unindexed_until(log, log.active.len())
    }

    /// Indexes the unindexed records before offset `to` of the active segment; those from `to` on stay marked.
    fn index_unindexed_until(&self, log: &mut LogState, to: u64) -> Result<()> {
        let Some(from) = log.unindexed else {
            return Ok(());
        };
        let active = Arc::clone(&log.active);
        self.apply_log(log, &active, from, to, true)?;
        log.unindexed = (to < active.len()).then_some(to);
        Ok(())
    }

    /// After a holder of the append lock died: the manifest on disk is the truth (it may have written one and
    /// died before publishing its generation).
    fn adopt_manifest(&self) -> Result<()> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let Some(manifest) = manifest::read(&*self.vfs, &self.dir)? else {
            return Ok(());
        };
        let published = shared.control.load();
        if manifest.generation != published.generation {
            shared
                .control
                .publish(manifest.generation, published.file_id, published.tail);
        }
        Ok(())
    }

    /// After a holder of the append lock died: bytes past the published tail of the active segment are its
    /// unfinished append. Judged by the rules of open: intact records are kept (and published with the next
    /// append), a torn write is cut off, damage proven by a sync point is an error.
    fn repair_tail(&self, log: &mut LogState) -> Result<()> {
        let active = Arc::clone(&log.active);
        let on_disk = active
            .file()
            .len()
            .map_err(|e| Error::io("read segment length", active.path(), e))?;
        let published = active.len();
        if on_disk <= published {
            return Ok(());
        }
        let mut bytes = vec![0u8; usize::try_from(on_disk).unwrap_or(usize::MAX)];
        let got = active
            .file()
            .read_at(&mut bytes, 0)
            .map_err(|e| Error::io("read segment", active.path(), e))?;
        bytes.truncate(got);
        let start = usize::try_from(published).unwrap_or(usize::MAX);
        let mut records = Records::from_offset(&bytes, start);
        let mut end = start;
        for (offset, rec) in &mut records {
            end = offset + rec.len();
        }
        if end > start {
            self.apply_log(log, &active, published, end as u64, true)?;
        }
        if let Some((at, e)) = records.stopped() {
            let role = Role::Newest {
                version: active.version(),
                file_id: active.file_id(),
                seed: Some(&log.sync_key),
            };
            match tail::classify(&bytes, *at, e, role) {
                Stop::Damaged { reason, .. } => {
                    return Err(Error::corrupted(active.path(), *at as u64, reason));
                }
                Stop::Torn { reason } => {
                    log::warn!(
                        "{}: cutting off a torn write of {} bytes at offset {at} left by a process that died \
                         appending ({reason})",
                        active.path().display(),
                        bytes.len() - at
                    );
                    active
                        .file()
                        .set_len(*at as u64)
                        .and_then(|()| active.file().sync_data())
                        .map_err(|e| Error::io("cut torn tail", active.path(), e))?;
                }
            }
        }
        Ok(())
    }

    /// At the end of a multi-process open (append lock held): publishes what this opener found, which every other
    /// process has seen already, and takes it as seen.
    pub(super) fn publish_opened(&self) {
        let Some(shared) = &self.shared else {
            return;
        };
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.lock_manifest().generation;
        let seq = shared
            .control
            .publish(generation, log.active.file_id(), log.active.len());
        shared.seen_generation.store(generation, Ordering::Release);
        shared.seen_seq.store(seq, Ordering::Release);
        shared.control.set_busy(false);
    }

    /// Takes the compaction lock of the multi-process mode: waiting for it (`wait`), or `None` if another process
    /// compacts now. Outside that mode, a hold of nothing.
    pub(super) fn lock_compaction(&self, wait: bool) -> Result<Option<Option<CompactHold<'_>>>> {
        let Some(shared) = &self.shared else {
            return Ok(Some(None));
        };
        let path = self.dir.join(dir::COMPACT_LOCK_FILE);
        if wait {
            shared
                .compact
                .lock()
                .map_err(|e| Error::io("take the compaction lock", &path, e))?;
        } else {
            match shared.compact.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => return Ok(None),
                Err(fs::TryLockError::Error(e)) => {
                    return Err(Error::io("take the compaction lock", &path, e));
                }
            }
        }
        let hold = CompactHold(&shared.compact);
        self.clean_retired()?;
        Ok(Some(Some(hold)))
    }

    /// With the compaction lock held, no compaction is in flight in any process: files of retired ids (inputs a
    /// compaction could not unlink, outputs of one that died) are left-overs. Removes them and writes a manifest
    /// without them.
    fn clean_retired(&self) -> Result<()> {
        let log = self.lock_log();
        let retired = self.lock_manifest().retired.clone();
        if retired.is_empty() {
            return Ok(());
        }
        for id in &retired {
            for name in [
                dir::segment_file_name(*id),
                dir::hint_file_name(*id),
                format!("{id:010}.compact{}", dir::TMP_SUFFIX),
                dir::tmp_name(&dir::hint_file_name(*id)),
            ] {
                let _ = self.vfs.remove_file(&self.dir.join(name));
            }
        }
        dir::sync_dir(&*self.vfs, &self.dir)?;
        let mut manifest = self.lock_manifest();
        let mut next = manifest.clone();
        next.retired.clear();
        self.write_shared_manifest(&mut manifest, next)?;
        drop(manifest);
        drop(log);
        Ok(())
    }

    /// Writes `next` as the manifest (the append lock is held), poisoning on a half-done write.
    fn write_shared_manifest(&self, manifest: &mut Manifest, mut next: Manifest) -> Result<()> {
        match next.write(&*self.vfs, &self.dir) {
            Ok(()) => {
                *manifest = next;
                Ok(())
            }
            Err((e, false)) => Err(e),
            Err((e, true)) => {
                self.set_poison(format!("writing the manifest failed half way: {e}"));
                Err(e)
            }
        }
    }

    /// In the multi-process mode, a compaction's file id must be known to every process before its files exist:
    /// the manifest is written with it among the retired ids and past it as the next file id (the append lock is
    /// held by the caller's `lock_log`).
    pub(super) fn record_slot(&self, slot: u32) -> Result<()> {
        if self.shared.is_none() {
            return Ok(());
        }
        let mut manifest = self.lock_manifest();
        let mut next = manifest.clone();
        next.next_file_id = next.next_file_id.max(slot + 1);
        self.write_shared_manifest(&mut manifest, next)
    }

    /// The log guard that a manifest change needs in the multi-process mode (the append lock, caught up), none
    /// otherwise.
    pub(super) fn hold_for_manifest(&self) -> Option<super::LogGuard<'_>> {
        self.shared.as_ref().map(|_| self.lock_log())
    }

    /// Marks `inputs` as being swapped out by this process's compaction (or none, with an empty slice).
    pub(super) fn set_swapping(&self, inputs: &[u32]) {
        if let Some(shared) = &self.shared {
            *shared.swapping.lock().unwrap_or_else(|e| e.into_inner()) = inputs.to_vec();
        }
    }

    /// Before a compaction retires its inputs, newer versions of the records it dropped must be durable. In the
    /// multi-process mode they may have been written by another process, which this one's group commit does not
    /// count: the active segment itself is fsynced.
    pub(super) fn sync_before_retiring(&self) -> Result<()> {
        if self.shared.is_none() {
            return self.sync();
        }
        let active = Arc::clone(&self.lock_log().active);
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        active.file().sync_data().map_err(|e| {
            self.set_poison(format!("fsync of {} failed: {e}", active.path().display()));
            Error::io("fsync segment", active.path(), e)
        })
    }
}
