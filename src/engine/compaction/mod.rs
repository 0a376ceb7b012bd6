//! Compaction: rewrite the live records of sealed segments into fewer bytes, and write hint files.
//!
//! `policy.rs` picks the runs to rewrite (a pure function of the segments' sizes), `run.rs` rewrites one run and
//! writes missing hint files, `worker.rs` is the background thread. This file holds the state they share and
//! the entry points.
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

mod policy;
mod reserve;
mod run;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::Engine;
use crate::Result;
use crate::record::{Kind, Records};
use crate::segment::Segment;

pub(crate) use reserve::{explain_disk_full, is_disk_full};
pub(crate) use worker::CompactionWorker;

/// Index entries moved per hold of the log mutex.
const SWAP_BATCH: usize = 1024;
/// The background thread leaves the newest sealed segments without hint files: under overwrites they are the ones
/// about to die and be compacted, so their hints would be written only to be deleted (a hint is ~1/5 of an SDK
/// segment). Open scans at most this many extra segments.
pub(crate) const FRESH_WITHOUT_HINT: usize = 2;

/// The size from which a clean close seals the active segment (a quarter of a segment, at least 1 MiB): below
/// it, scanning the segment at the next open costs about what reading its hint would; above it, every clean
/// close can leave one segment shorter than `segment_size`, at most four per segment's worth of writes.
pub(crate) fn close_seal_min(segment_size: u64) -> u64 {
    (segment_size / 4).max(1 << 20)
}
/// Output bytes buffered before a write.
const WRITE_CHUNK: usize = 1 << 20;

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
    /// Held while the disk reserve is made or released (`reserve.rs`).
    reserve: Mutex<reserve::ReserveState>,
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

    fn lock_reserve(&self) -> MutexGuard<'_, reserve::ReserveState> {
        self.reserve.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Engine {
    /// One compaction pass: every run of sealed segments whose dead bytes reach `threshold` of their size (any
    /// dead byte at 0.0), then hint files for the sealed segments that still lack one.
    /// On a full disk it releases the disk reserve and goes on in its space; after the pass it makes the reserve
    /// again if there is room.
    pub(crate) fn compact(&self, threshold: f64, seal_active: bool) -> Result<()> {
        let _pass = self.compaction.lock_pass();
        self.check_poison()?;
        // One process at a time in the multi-process mode; the background pass skips while another compacts.
        let Some(_cross) = self.lock_compaction(seal_active)? else {
            return Ok(());
        };
        self.with_reserve(|| self.compact_pass(threshold, seal_active))?;
        if let Err(e) = self.keep_reserve() {
            log::info!(
                "{}: the disk reserve waits for room: {e}",
                self.dir.display()
            );
        }
        Ok(())
    }

    /// Readies the store for a fast next open, at a clean close: seals the active segment when scanning it at
    /// the next open would cost more than reading a hint ([`close_seal_min`] bytes or more), then writes the hint
    /// files the background thread leaves for later (the newest sealed segments), so the next open replays hint
    /// files alone and maps the new, empty active segment.
    /// Nothing is done when what the next open would scan is under that size: it opens fast anyway.
    pub(crate) fn prepare_close(&self) -> Result<()> {
        let _pass = self.compaction.lock_pass();
        self.check_poison()?;
        // Hint writing is compaction's work: in the multi-process mode, not while another process compacts.
        let Some(_cross) = self.lock_compaction(false)? else {
            return Ok(());
        };
        let min = close_seal_min(self.options.segment_size);
        let unhinted: u64 = self
            .sealed_in_order()
            .iter()
            .filter(|s| !s.hinted() && !s.unhintable())
            .map(|s| s.len())
            .sum();
        {
            let mut log = self.lock_log();
            if unhinted.saturating_add(log.active.len()) < min {
                return Ok(());
            }
            if log.active.len() >= min {
                self.rotate(&mut log)?;
            }
        }
        self.write_missing_hints(0)
    }

    /// One pass of [`Engine::compact`], with the pass lock held.
    fn compact_pass(&self, threshold: f64, seal_active: bool) -> Result<()> {
        self.check_poison()?;
        let started = Instant::now();
        if seal_active {
            // A manual pass also reclaims what the active segment has lost, by sealing it first; not when all it
            // lost are sync points (they go when the segment is sealed anyway, and sealing a segment for them
            // alone would leave one small segment per call).
            let mut log = self.lock_log();
            if log.active.dead() > sync_point_bytes(&log.active)? {
                self.rotate(&mut log)?;
            }
        }
        let mut compacted = false;
        let sealed = self.sealed_in_order();
        let sizes: Vec<policy::SegmentSize> = sealed
            .iter()
            .map(|s| policy::SegmentSize {
                len: s.len(),
                dead: s.dead(),
                futile: s.known_futile(),
            })
            .collect();
        for picked in policy::pick_runs(&sizes, threshold, self.options.segment_size) {
            let run: Vec<Arc<Segment>> = sealed.get(picked).unwrap_or_default().to_vec();
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
        let Some(_cross) = self.lock_compaction(true)? else {
            return Ok(());
        };
        let run: Vec<Arc<Segment>> = self
            .sealed_in_order()
            .into_iter()
            .filter(|s| (first..=last).contains(&s.file_id()))
            .collect();
        self.compact_run(&run).map(drop)
    }

    /// Sealed segments in replay order (the manifest's order; the active one excluded).
    fn sealed_in_order(&self) -> Vec<Arc<Segment>> {
        // Under the log mutex, so no rotation turns the active segment into a sealed one half way.
        let _log = self.lock_log();
        let manifest = self.lock_manifest();
        let segments = self.segments();
        manifest
            .sealed
            .iter()
            .filter_map(|s| segments.get(&s.file_id).cloned())
            .collect()
    }
}

/// Bytes of sync points in `segment` (dead from birth, like tombstones, but not worth sealing a segment for).
fn sync_point_bytes(segment: &Segment) -> Result<u64> {
    if segment.dead() == 0 {
        return Ok(0);
    }
    let contents = segment.contents()?;
    Ok(Records::new(&contents)
        .filter(|(_, rec)| rec.kind == Kind::Sync)
        .map(|(_, rec)| rec.len() as u64)
        .sum())
}
