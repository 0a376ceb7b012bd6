//! One compaction run: copy the live records of adjacent sealed segments into one new file, swap it in, unlink
//! the inputs (the order of steps and why it is crash safe are in the folder's module docs); and hint files for
//! sealed segments that lack one.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{SWAP_BATCH, WRITE_CHUNK};
use crate::codec;
use crate::dir::{self, TMP_SUFFIX};
use crate::engine::Engine;
use crate::hint::{self, HintBuilder};
use crate::index::{Loc, MAX_SEGMENT_ID};
use crate::record::{self, Kind, Records, SEGMENT_HEADER_LEN};
use crate::segment::Segment;
use crate::vfs::VFile;
use crate::{Error, Result};

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
    file: Option<Arc<dyn VFile>>,
}

impl Engine {
    /// Compacts one run (see the module docs for the order of steps); false if it turned out to gain nothing.
    pub(super) fn compact_run(&self, run: &[Arc<Segment>]) -> Result<bool> {
        let Some(first) = run.first() else {
            return Ok(false);
        };
        let file_id = first.file_id();
        let oldest = self
            .sealed_in_order()
            .first()
            .is_some_and(|s| s.file_id() == file_id);
        let tmp = self.dir.join(format!("{file_id:010}.compact{TMP_SUFFIX}"));
        let hint_tmp = self.dir.join(dir::tmp_name(&dir::hint_file_name(file_id)));
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
        let path = self.dir.join(dir::segment_file_name(file_id));
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
        self.unlink_in_order(run.get(1..).unwrap_or_default())
            .map_err(poisoning)?;
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
        let mut file: Option<Arc<dyn VFile>> = None;
        let flush = |buf: &mut Vec<u8>,
                     flushed: &mut u64,
                     file: &mut Option<Arc<dyn VFile>>|
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
            let mut records = Records::new(bytes);
            for (offset, rec) in &mut records {
                if self.compaction.closing.load(Ordering::Acquire) {
                    return Err(Error::io(
                        "compact",
                        tmp,
                        std::io::Error::other("the store is closing"),
                    ));
                }
                let encoded = bytes.get(offset..offset + rec.len()).unwrap_or_default();
                let here = Loc::new(segment.id(), offset as u64);
                let Some((user_id, item)) = codec::split_key(rec.key) else {
                    return Err(Error::corrupted(
                        segment.path(),
                        here.offset(),
                        "record key is malformed",
                    ));
                };
                let hash = self.index.hasher().hash(user_id, item);
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
            if let Some((offset, e)) = records.stopped() {
                return Err(Error::corrupted(
                    segment.path(),
                    *offset as u64,
                    e.to_string(),
                ));
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
        let seg_path = dir.join(dir::segment_file_name(file_id));
        let hint_path = dir.join(dir::hint_file_name(file_id));
        let sync_dir = || dir::sync_dir(&*self.vfs, dir);
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
            dir::sync_dir(&*self.vfs, &self.dir)?;
        }
        Ok(())
    }

    /// Writes a hint file for every sealed segment without a sound one, but the `skip_newest` newest. A segment
    /// that does not scan cleanly gets none (reads of it report the damage).
    pub(super) fn write_missing_hints(&self, skip_newest: usize) -> Result<()> {
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
            dir::write_durably(
                &*self.vfs,
                &self.dir,
                &dir::hint_file_name(segment.file_id()),
                &bytes,
                "write hint file",
            )?;
            segment.set_hinted(true);
        }
        Ok(())
    }
}
