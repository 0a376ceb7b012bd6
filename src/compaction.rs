//! Compaction: rewrite the live records of sealed segments into fewer bytes, and write hint files.
//!
//! ## Where the output goes in the replay order
//!
//! Recovery replays segments in file-id order and the last record of a key wins. A *run* is a set of sealed
//! segments that are adjacent in that order (no other segment file lies between them). Its output takes the file
//! id of the run's first (oldest) segment and replaces that file with one `rename`, then the other inputs are
//! unlinked in ascending id order, each unlink made durable before the next.
//!
//! Why that is sound at every instant, including after a crash at any step (the *survivors* of a crash are the
//! inputs not yet unlinked; unlinking oldest first makes them a suffix of the run):
//! - A *live* record R (the one the index points at) is the newest record of its key K: no record of K follows
//!   it. It is copied to the output, at the run's first position. If the input holding R survives, R is
//!   replayed again after the output and after every older record of K, and wins. If it is gone, every
//!   survivor is newer than it and so holds no record of K: the output's copy decides. Either way K ends as R.
//! - A *dead* put is dropped. Whatever made it dead (a newer put or a tombstone) is either after the run, or
//!   in the run and copied (a live put, a kept tombstone), or a dropped tombstone (next point).
//! - A *tombstone* is dropped only when no earlier version of its key can be replayed before it any more:
//!   either the index holds a newer put of the key (which follows the tombstone and every older version,
//!   wherever they end up), or the run starts at the oldest segment file of the store (so every earlier version
//!   is in the run and dropped with it; a crash leaves a suffix of the run, which holds only records newer than
//!   those). Otherwise it is copied, and keeps deleting older versions in earlier segments.
//! - Writes that race compaction go to the active segment, which is newer than every run.
//!
//! In memory the output gets a fresh segment id (see [`Segment`]): readers may still hold locations into the
//! file it replaced. Index entries move with [`crate::index::Index::replace`], which only moves an entry that
//! still points at the old record, so a write that raced the copy wins. Swaps happen in batches, each under
//! the log mutex (every index change happens under it), so a writer waits at most for one batch.
//!
//! ## fsync order of one run
//! 1. write the output to `NNNNNNNNNN.compact.tmp` and its hint to `NNNNNNNNNN.hint.tmp`; fsync both;
//! 2. remove the old `NNNNNNNNNN.hint`, fsync the directory (a hint never describes the wrong contents);
//! 3. rename the output onto `NNNNNNNNNN.seg` (N = the run's first id), fsync the directory; rename the hint onto
//!    `NNNNNNNNNN.hint`, fsync the directory;
//! 4. swap index entries, put the output in the segment table and take the inputs out (nothing reads them
//!    after that: readers only touch a segment under the table's read lock);
//! 5. for each other input, oldest first: unlink its segment and hint, fsync the directory.
//!
//! If the output would be empty, steps 1-3 are skipped and step 5 covers the first input too.
//! A failure in step 1 leaves only temporary files (removed now, or on the next open). A failure from step 2 on
//! leaves the directory in a state the argument above covers, but the in-memory view may no longer match it, so
//! the store is poisoned (writes refused until reopened), exactly as after a failed fsync.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::codec;
use crate::engine::Engine;
use crate::hint::{self, HintBuilder};
use crate::index::{Loc, MAX_SEGMENT_ID};
use crate::record::{self, Kind, SEGMENT_HEADER_LEN};
use crate::segment::{self, Segment, TMP_SUFFIX};
use crate::{Error, Result};

/// Index entries moved per hold of the log mutex.
const SWAP_BATCH: usize = 1024;
/// The background thread leaves the newest sealed segments without hint files: under overwrites they are the ones
/// about to die and be compacted, so their hints would be written only to be deleted (a hint is ~1/5 of an SDK
/// segment). Open scans at most this many extra segments.
pub(crate) const FRESH_WITHOUT_HINT: usize = 2;
/// Output bytes buffered before a write.
const WRITE_CHUNK: usize = 1 << 20;
/// A sealed segment whose live bytes are under this fraction of the segment size is merged with its neighbours
/// even when it has few dead bytes, so compaction outputs do not pile up as many small files.
const SMALL_FRACTION: u64 = 4;

/// Compaction state owned by the engine.
#[derive(Default)]
pub(crate) struct Compaction {
    /// Held for a whole pass: one pass at a time, so a run's view of which segments exist stays true.
    pass: Mutex<()>,
    /// Set to stop a pass early (the store is closing).
    pub(crate) closing: AtomicBool,
    pub(crate) runs: AtomicU64,
    /// Duration of the last pass that compacted something, in microseconds, plus one (0 = none yet).
    pub(crate) last_micros: AtomicU64,
    pub(crate) reclaimed: AtomicU64,
    wake: Mutex<Wake>,
    cond: Condvar,
}

#[derive(Default)]
struct Wake {
    poked: bool,
    stop: bool,
}

impl Compaction {
    /// Asks the background thread for a pass soon (after a rotation sealed a segment).
    pub(crate) fn poke(&self) {
        let mut wake = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        wake.poked = true;
        self.cond.notify_all();
    }

    /// Tells the background thread to finish.
    pub(crate) fn stop(&self) {
        self.closing.store(true, Ordering::Release);
        let mut wake = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        wake.stop = true;
        self.cond.notify_all();
    }

    /// Waits for a poke, a stop or `timeout`; true unless stopped.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let mut wake = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        if !wake.poked && !wake.stop {
            wake = match self.cond.wait_timeout(wake, timeout) {
                Ok((guard, _)) => guard,
                Err(e) => e.into_inner().0,
            };
        }
        wake.poked = false;
        !wake.stop
    }

    /// Waits for `timeout` or a stop, ignoring pokes; true unless stopped.
    pub(crate) fn sleep(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut wake = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        while !wake.stop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            wake = match self.cond.wait_timeout(wake, left) {
                Ok((guard, _)) => guard,
                Err(e) => e.into_inner().0,
            };
        }
        !wake.stop
    }

    /// The duration of the last pass that compacted something.
    pub(crate) fn last_duration(&self) -> Option<Duration> {
        match self.last_micros.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_micros(n - 1)),
        }
    }

    pub(crate) fn lock_pass(&self) -> MutexGuard<'_, ()> {
        self.pass.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A live record copied to the output, whose index entry must follow it.
struct Moved {
    hash: u64,
    from: Loc,
    offset: u64,
    len: u64,
}

/// What copying a run produced, before anything replaced the inputs.
struct Output {
    /// Bytes of the output segment (header and records).
    len: u64,
    moved: Vec<Moved>,
    /// Bytes of tombstones that had to stay.
    kept_tombstones: u64,
    hint: Vec<u8>,
    file: Option<Arc<dyn crate::vfs::VFile>>,
}

impl Engine {
    /// One compaction pass: every run of sealed segments whose dead bytes reach `threshold` of their size (any
    /// dead byte at 0.0), then hint files for the sealed segments that still lack one.
    pub(crate) fn compact(&self, threshold: f64, seal_active: bool) -> Result<()> {
        let _pass = self.compaction.lock_pass();
        self.check_poison()?;
        let started = Instant::now();
        if seal_active {
            // A manual pass also reclaims what the active segment has lost, by sealing it first.
            let mut log = self.lock_log();
            if log.active.dead() > 0 {
                self.rotate(&mut log)?;
            }
        }
        let mut compacted = false;
        for run in self.pick_runs(threshold) {
            if self.compaction.closing.load(Ordering::Acquire) {
                break;
            }
            compacted |= self.compact_run(&run)?;
        }
        // After the runs, so no hint is written for a segment about to be rewritten (outputs come with theirs).
        self.write_missing_hints(if seal_active { 0 } else { FRESH_WITHOUT_HINT })?;
        if compacted {
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
            self.compaction
                .last_micros
                .store(micros + 1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Compacts the sealed segments with file ids in `first..=last` as one run (tests choose runs with this).
    pub(crate) fn compact_range(&self, first: u32, last: u32) -> Result<()> {
        let _pass = self.compaction.lock_pass();
        self.check_poison()?;
        let run: Vec<Arc<Segment>> = self
            .sealed_in_order()
            .into_iter()
            .filter(|s| (first..=last).contains(&s.file_id()))
            .collect();
        self.compact_run(&run).map(drop)
    }

    /// Sealed segments in replay order (the active one excluded).
    fn sealed_in_order(&self) -> Vec<Arc<Segment>> {
        // Under the log mutex, so no rotation turns the active segment into a sealed one half way.
        let log = self.lock_log();
        let active = log.active.id();
        let mut sealed: Vec<Arc<Segment>> = self
            .segments()
            .values()
            .filter(|s| s.id() != active)
            .cloned()
            .collect();
        drop(log);
        sealed.sort_by_key(|s| s.file_id());
        sealed
    }

    /// Runs worth compacting: adjacent sealed segments that pass the threshold (or are small), each run's live
    /// bytes within one segment size.
    fn pick_runs(&self, threshold: f64) -> Vec<Vec<Arc<Segment>>> {
        let segment_size = self.options.segment_size;
        let mut runs = Vec::new();
        let mut run: Vec<Arc<Segment>> = Vec::new();
        let mut run_over = false;
        let mut run_live = 0u64;
        // A run is worth rewriting if one of its segments passed the threshold, or if it merges several files.
        let mut flush = |run: &mut Vec<Arc<Segment>>, run_over: &mut bool, run_live: &mut u64| {
            let taken = std::mem::take(run);
            if *run_over || taken.len() >= 2 {
                runs.push(taken);
            }
            *run_over = false;
            *run_live = 0;
        };
        for (i, segment) in self.sealed_in_order().into_iter().enumerate() {
            let (len, dead) = (segment.len(), segment.dead());
            let live = len.saturating_sub(dead);
            // Tombstones that had to stay may go once their segment is the oldest: try it again then.
            let futile = segment.known_futile() && i > 0;
            let over = dead > 0 && dead as f64 >= threshold * len as f64 && !futile;
            let small = live < segment_size / SMALL_FRACTION;
            if !(over || small) {
                flush(&mut run, &mut run_over, &mut run_live);
                continue;
            }
            if !run.is_empty() && run_live + live > segment_size {
                flush(&mut run, &mut run_over, &mut run_live);
            }
            run_live += live;
            run_over |= over;
            run.push(segment);
        }
        flush(&mut run, &mut run_over, &mut run_live);
        runs
    }

    /// Compacts one run (see the module docs for the order of steps); false if it turned out to gain nothing.
    fn compact_run(&self, run: &[Arc<Segment>]) -> Result<bool> {
        let Some(first) = run.first() else {
            return Ok(false);
        };
        let file_id = first.file_id();
        let oldest = self
            .sealed_in_order()
            .first()
            .is_some_and(|s| s.file_id() == file_id);
        let tmp = self.dir.join(format!("{file_id:010}.compact{TMP_SUFFIX}"));
        let hint_tmp = self
            .dir
            .join(format!("{}{TMP_SUFFIX}", segment::hint_file_name(file_id)));
        let input_len: u64 = run.iter().map(|s| s.len()).sum();

        let output = match self.copy_live(run, &tmp, oldest) {
            Ok(output) => output,
            Err(e) => {
                let _ = self.vfs.remove_file(&tmp);
                if e.is_corruption() {
                    // Reads report the damage; do not retry the same run on every pass.
                    run.iter().for_each(|s| s.set_futile_at(s.dead()));
                }
                return Err(e);
            }
        };
        if run.len() == 1 && output.len == input_len {
            let _ = self.vfs.remove_file(&tmp);
            first.set_futile_at(first.dead());
            return Ok(false);
        }
        let slot = if output.file.is_some() {
            match self.take_slot() {
                Ok(slot) => Some(slot),
                Err(e) => {
                    let _ = self.vfs.remove_file(&tmp);
                    return Err(e);
                }
            }
        } else {
            None
        };
        if let Some(file) = &output.file {
            let written = file
                .sync_data()
                .map_err(|e| Error::io("fsync compacted segment", &tmp, e))
                .and_then(|()| hint::write_tmp(&*self.vfs, &hint_tmp, &output.hint));
            if let Err(e) = written {
                let _ = self.vfs.remove_file(&tmp);
                let _ = self.vfs.remove_file(&hint_tmp);
                return Err(e);
            }
        }

        // A dropped record was made dead by a newer one that may still be unsynced in the active segment
        // (Periodic, Never, or an Immediate writer between its write and its fsync): make that durable before
        // the first input goes, or a power cut would take both versions.
        if let Err(e) = self.sync() {
            let _ = self.vfs.remove_file(&tmp);
            let _ = self.vfs.remove_file(&hint_tmp);
            return Err(e);
        }

        // From here on a failure leaves the directory sound but maybe not what memory says: poison.
        let poisoning = |e: Error| {
            self.set_poison(format!(
                "compaction of segment {file_id} failed half way: {e}"
            ));
            e
        };
        let (Some(file), Some(slot)) = (output.file.clone(), slot) else {
            // Nothing survives: take the inputs out of memory (no index entry points into them), then unlink.
            self.take_out(run);
            self.unlink_in_order(run).map_err(poisoning)?;
            self.finish_run(input_len, 0);
            return Ok(true);
        };
        self.install(file_id, &tmp, &hint_tmp).map_err(poisoning)?;
        let path = self.dir.join(segment::file_name(file_id));
        let new = Arc::new(Segment::compacted(slot, file_id, path, file, output.len));
        new.set_hinted(true);
        new.add_dead(output.kept_tombstones);
        // The kept tombstones are all a lone recompaction could drop; do not rewrite them for nothing.
        new.set_futile_at(output.kept_tombstones);
        self.segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(slot, Arc::clone(&new));
        for batch in output.moved.chunks(SWAP_BATCH) {
            let _log = self.lock_log();
            for m in batch {
                if !self.index.replace(m.hash, m.from, Loc::new(slot, m.offset)) {
                    // A write overwrote or deleted the key while it was copied: the copy is dead on arrival.
                    new.add_dead(m.len);
                }
            }
        }
        self.take_out(run);
        self.unlink_in_order(&run[1..]).map_err(poisoning)?;
        self.finish_run(input_len, output.len);
        Ok(true)
    }

    fn finish_run(&self, input_len: u64, output_len: u64) {
        self.compaction.runs.fetch_add(1, Ordering::Relaxed);
        self.compaction
            .reclaimed
            .fetch_add(input_len.saturating_sub(output_len), Ordering::Relaxed);
    }

    /// A fresh in-memory segment id for a compaction output, from the same counter as new log segments.
    fn take_slot(&self) -> Result<u32> {
        let mut log = self.lock_log();
        if log.next_id > MAX_SEGMENT_ID {
            return Err(Error::InvalidOption {
                option: "segment_size",
                reason: format!(
                    "the store has used all {MAX_SEGMENT_ID} segment ids; reopen it or use larger segments"
                ),
            });
        }
        let slot = log.next_id;
        log.next_id += 1;
        Ok(slot)
    }

    /// Copies the live records (and the tombstones that must stay) of `run` to the new file `tmp`; the file is
    /// not fsynced yet. With nothing to copy, no file is created.
    fn copy_live(
        &self,
        run: &[Arc<Segment>],
        tmp: &std::path::Path,
        oldest: bool,
    ) -> Result<Output> {
        let file_id = run.first().map_or(0, |s| s.file_id());
        let mut out = Output {
            len: SEGMENT_HEADER_LEN,
            moved: Vec::new(),
            kept_tombstones: 0,
            hint: Vec::new(),
            file: None,
        };
        let mut hint = HintBuilder::new(self.index.hasher());
        let mut buf = Vec::with_capacity(WRITE_CHUNK);
        let mut flushed = 0u64;
        let mut file: Option<Arc<dyn crate::vfs::VFile>> = None;
        let flush = |buf: &mut Vec<u8>,
                     flushed: &mut u64,
                     file: &mut Option<Arc<dyn crate::vfs::VFile>>|
         -> Result<()> {
            if file.is_none() {
                let _ = self.vfs.remove_file(tmp);
                let created = self
                    .vfs
                    .create_new(tmp)
                    .map_err(|e| Error::io("create compacted segment", tmp, e))?;
                created
                    .write_all_at(&record::segment_header(file_id), 0)
                    .map_err(|e| Error::io("write compacted segment", tmp, e))?;
                *file = Some(Arc::from(created));
                *flushed = SEGMENT_HEADER_LEN;
            }
            if let Some(f) = file {
                f.write_all_at(buf, *flushed)
                    .map_err(|e| Error::io("write compacted segment", tmp, e))?;
            }
            *flushed += buf.len() as u64;
            buf.clear();
            Ok(())
        };
        for segment in run {
            let contents = segment.contents()?;
            let bytes: &[u8] = &contents;
            let mut offset = SEGMENT_HEADER_LEN as usize;
            while let Some(rest) = bytes.get(offset..).filter(|r| !r.is_empty()) {
                if self.compaction.closing.load(Ordering::Acquire) {
                    return Err(Error::io(
                        "compact",
                        tmp,
                        std::io::Error::other("the store is closing"),
                    ));
                }
                let rec = record::decode(rest).map_err(|e| {
                    Error::corrupted(segment.path(), offset as u64, format!("{e:?}"))
                })?;
                let encoded = &rest[..rec.len()];
                let here = Loc::new(segment.id(), offset as u64);
                offset += rec.len();
                let Some((user_id, campaign_key)) = codec::decode_key(rec.key) else {
                    return Err(Error::corrupted(
                        segment.path(),
                        here.offset(),
                        "record key is malformed",
                    ));
                };
                let hash = self.index.hasher().hash(user_id, campaign_key);
                let keep = match rec.kind {
                    Kind::Put => self.index.candidates(hash).iter().any(|loc| loc == here),
                    Kind::Delete => !oldest && self.find_key(hash, rec.key)?.is_none(),
                };
                if !keep {
                    continue;
                }
                if rec.kind == Kind::Put {
                    out.moved.push(Moved {
                        hash,
                        from: here,
                        offset: out.len,
                        len: rec.len() as u64,
                    });
                } else {
                    out.kept_tombstones += rec.len() as u64;
                }
                hint.push(rec.kind, hash, encoded);
                buf.extend_from_slice(encoded);
                out.len += rec.len() as u64;
                if buf.len() >= WRITE_CHUNK {
                    flush(&mut buf, &mut flushed, &mut file)?;
                }
            }
        }
        if out.len > SEGMENT_HEADER_LEN {
            flush(&mut buf, &mut flushed, &mut file)?;
        }
        out.hint = hint.finish(file_id);
        out.file = file;
        Ok(out)
    }

    /// Steps 2 and 3: the output and its hint replace segment `file_id` on disk.
    fn install(
        &self,
        file_id: u32,
        tmp: &std::path::Path,
        hint_tmp: &std::path::Path,
    ) -> Result<()> {
        let dir = &self.dir;
        let seg_path = dir.join(segment::file_name(file_id));
        let hint_path = dir.join(segment::hint_file_name(file_id));
        let sync_dir = || {
            self.vfs
                .sync_dir(dir)
                .map_err(|e| Error::io("sync directory", dir, e))
        };
        match self.vfs.remove_file(&hint_path) {
            Ok(()) => sync_dir()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove old hint file", &hint_path, e)),
        }
        self.vfs
            .rename(tmp, &seg_path)
            .map_err(|e| Error::io("rename compacted segment", tmp, e))?;
        // Durable before the hint appears: after a power loss, the new hint must not sit beside the old segment.
        sync_dir()?;
        self.vfs
            .rename(hint_tmp, &hint_path)
            .map_err(|e| Error::io("rename hint file", hint_tmp, e))?;
        sync_dir()
    }

    /// Step 4's end: the inputs leave the segment table, under the log mutex (writers rely on the index never
    /// pointing into a segment missing from the table while they hold it).
    fn take_out(&self, run: &[Arc<Segment>]) {
        let _log = self.lock_log();
        let mut segments = self.segments.write().unwrap_or_else(|e| e.into_inner());
        for segment in run {
            segments.remove(&segment.id());
        }
    }

    /// Step 5: unlinks `inputs` oldest first, each made durable before the next, so that a crash leaves a suffix.
    /// The caller has taken them out of the table, so no reader holds their maps any more.
    fn unlink_in_order(&self, inputs: &[Arc<Segment>]) -> Result<()> {
        for segment in inputs {
            let path = segment.path();
            self.vfs
                .remove_file(path)
                .map_err(|e| Error::io("remove compacted segment", path, e))?;
            let hint_path = segment.hint_path();
            match self.vfs.remove_file(&hint_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove hint file", &hint_path, e)),
            }
            self.vfs
                .sync_dir(&self.dir)
                .map_err(|e| Error::io("sync directory", &self.dir, e))?;
        }
        Ok(())
    }

    /// Writes a hint file for every sealed segment without a sound one, but the `skip_newest` newest. A segment
    /// that does not scan cleanly gets none (reads of it report the damage).
    fn write_missing_hints(&self, skip_newest: usize) -> Result<()> {
        let sealed = self.sealed_in_order();
        let keep = sealed.len().saturating_sub(skip_newest);
        for segment in sealed.into_iter().take(keep) {
            if segment.hinted()
                || segment.unhintable()
                || self.compaction.closing.load(Ordering::Acquire)
            {
                continue;
            }
            let contents = segment.contents()?;
            let bytes: &[u8] = &contents;
            let bytes = match hint::of_segment(bytes, segment.file_id(), self.index.hasher()) {
                Ok(bytes) => bytes,
                Err((offset, reason)) => {
                    log::warn!(
                        "{}: no hint file written, record at {offset}: {reason}",
                        segment.path().display()
                    );
                    segment.set_unhintable();
                    continue;
                }
            };
            let path = segment.hint_path();
            let tmp = self.dir.join(format!(
                "{}{TMP_SUFFIX}",
                segment::hint_file_name(segment.file_id())
            ));
            hint::write_tmp(&*self.vfs, &tmp, &bytes)?;
            let installed = self
                .vfs
                .rename(&tmp, &path)
                .map_err(|e| Error::io("rename hint file", &tmp, e))
                .and_then(|()| {
                    self.vfs
                        .sync_dir(&self.dir)
                        .map_err(|e| Error::io("sync directory", &self.dir, e))
                });
            if let Err(e) = installed {
                let _ = self.vfs.remove_file(&tmp);
                return Err(e);
            }
            segment.set_hinted(true);
        }
        Ok(())
    }
}
