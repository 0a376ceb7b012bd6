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
use crate::manifest::Sealed;
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
    /// crc32 of the whole output file, for the manifest.
    crc: u32,
}

impl Engine {
    /// Compacts one run (see the module docs for the order of steps); false if it turned out to gain nothing.
    pub(super) fn compact_run(&self, run: &[Arc<Segment>]) -> Result<bool> {
        let Some(first) = run.first() else {
            return Ok(false);
        };
        let oldest = self
            .sealed_in_order()
            .first()
            .is_some_and(|s| s.file_id() == first.file_id());
        // The output gets a fresh file id; until the manifest names it, open removes it.
        let file_id = self.take_slot()?;
        let tmp = self.dir.join(format!("{file_id:010}.compact{TMP_SUFFIX}"));
        let hint_tmp = self.dir.join(dir::tmp_name(&dir::hint_file_name(file_id)));
        let input_len: u64 = run.iter().map(|s| s.len()).sum();
        let seg_path = self.dir.join(dir::segment_file_name(file_id));
        let hint_path = self.dir.join(dir::hint_file_name(file_id));
        // The id stays among the manifest's retired ids: if a removal here does not reach the disk, the next open
        // still knows the file for a left-over.
        let abandon = |e: Error| {
            for path in [&tmp, &hint_tmp, &seg_path, &hint_path] {
                let _ = self.vfs.remove_file(path);
            }
            e
        };

        let output = match self.copy_live(run, &tmp, oldest, file_id) {
            Ok(output) => output,
            Err(e) => {
                if e.is_corruption() {
                    // Reads report the damage; do not retry the same run on every pass.
                    run.iter().for_each(|s| s.set_futile_at(s.dead()));
                }
                return Err(abandon(e));
            }
        };
        if run.len() == 1 && output.len == input_len {
            first.set_futile_at(first.dead());
            drop(abandon(Error::corrupted(&tmp, 0, "nothing to reclaim")));
            return Ok(false);
        }
        if let Some(file) = &output.file {
            file.sync_data()
                .map_err(|e| Error::io("fsync compacted segment", &tmp, e))
                .and_then(|()| hint::write_tmp(&*self.vfs, &hint_tmp, &output.hint))
                .map_err(abandon)?;
        }

        // A dropped record was made dead by a newer one that may still be unsynced in the active segment
        // (Periodic, Never, or an Immediate writer between its write and its fsync): make that durable before
        // the manifest retires the inputs, or a power cut would take both versions.
        self.sync().map_err(abandon)?;
        if output.file.is_some() {
            self.install(file_id, &tmp, &hint_tmp).map_err(abandon)?;
        }

        // The commit point: the manifest names the output in the run's place and retires the inputs. From here
        // on a failure leaves the directory sound but maybe not what memory says: poison.
        let poisoning = |e: Error| {
            self.set_poison(format!(
                "compaction into segment {file_id} failed half way: {e}"
            ));
            e
        };
        let inputs: Vec<u32> = run.iter().map(|s| s.file_id()).collect();
        let output_entry = output.file.as_ref().map(|_| Sealed {
            file_id,
            len: output.len,
            crc: output.crc,
            hint: hint::identity(&output.hint).unwrap_or_default(),
        });
        match self.commit_manifest(&inputs, file_id, output_entry) {
            Ok(()) => {}
            // The old manifest stays in force: the output was never part of the store.
            Err((e, false)) => return Err(abandon(e)),
            Err((e, true)) => return Err(poisoning(e)),
        }

        let Some(file) = output.file.clone() else {
            // Nothing survives: take the inputs out of memory (no index entry points into them), then unlink.
            self.take_out(run);
            self.unlink(run).map_err(poisoning)?;
            self.finish_run(input_len, 0);
            return Ok(true);
        };
        let new = Arc::new(Segment::compacted(
            file_id, file_id, seg_path, file, output.len,
        ));
        new.set_hinted(true);
        new.add_dead(output.kept_tombstones);
        // The kept tombstones are all a lone recompaction could drop; do not rewrite them for nothing.
        new.set_futile_at(output.kept_tombstones);
        self.segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(file_id, Arc::clone(&new));
        for batch in output.moved.chunks(SWAP_BATCH) {
            let _log = self.lock_log();
            for m in batch {
                if !self
                    .index
                    .replace(m.hash, m.from, Loc::new(file_id, m.offset))
                {
                    // A write overwrote or deleted the key while it was copied: the copy is dead on arrival.
                    new.add_dead(m.len);
                }
            }
        }
        self.take_out(run);
        self.unlink(run).map_err(poisoning)?;
        self.finish_run(input_len, output.len);
        Ok(true)
    }

    /// Writes the manifest with the run `inputs` (adjacent in replay order) replaced by `output` (none when
    /// nothing survived), the inputs retired and the output's id no longer in flight.
    fn commit_manifest(
        &self,
        inputs: &[u32],
        output_id: u32,
        output: Option<Sealed>,
    ) -> std::result::Result<(), (Error, bool)> {
        let mut manifest = self.lock_manifest();
        let mut next = manifest.clone();
        let at = next
            .sealed
            .iter()
            .position(|s| inputs.first() == Some(&s.file_id))
            .ok_or_else(|| {
                let e = Error::corrupted(
                    self.dir.join(crate::manifest::MANIFEST_FILE),
                    0,
                    "a compaction input is not among the sealed segments",
                );
                (e, false)
            })?;
        next.sealed.retain(|s| !inputs.contains(&s.file_id));
        if let Some(entry) = output {
            next.sealed.insert(at, entry);
        }
        next.retired.retain(|&id| id != output_id);
        next.retired.extend_from_slice(inputs);
        next.next_file_id = next.next_file_id.max(output_id + 1);
        next.write(&*self.vfs, &self.dir)?;
        *manifest = next;
        Ok(())
    }

    fn finish_run(&self, input_len: u64, output_len: u64) {
        self.compaction.runs.fetch_add(1, Ordering::Relaxed);
        self.compaction
            .reclaimed
            .fetch_add(input_len.saturating_sub(output_len), Ordering::Relaxed);
    }

    /// A fresh file id for a compaction output, from the same counter as new log segments; in flight (among the
    /// manifest's retired ids, so that a manifest written meanwhile marks its file for removal) until committed.
    fn take_slot(&self) -> Result<u32> {
        let mut log = self.lock_log();
        if log.next_id > MAX_SEGMENT_ID {
            return Err(Error::InvalidOption {
                option: "segment_size",
                reason: format!(
                    "the store has used all {MAX_SEGMENT_ID} segment ids; use larger segments (see docs/GUIDE.md, Limits)"
                ),
            });
        }
        let slot = log.next_id;
        log.next_id += 1;
        self.lock_manifest().retired.push(slot);
        Ok(slot)
    }

    /// Copies the live records (and the tombstones that must stay) of `run` to the new file `tmp`; the file is
    /// not fsynced yet. With nothing to copy, no file is created.
    fn copy_live(
        &self,
        run: &[Arc<Segment>],
        tmp: &std::path::Path,
        oldest: bool,
        file_id: u32,
    ) -> Result<Output> {
        let mut out = Output {
            len: SEGMENT_HEADER_LEN,
            moved: Vec::new(),
            kept_tombstones: 0,
            hint: Vec::new(),
            file: None,
            crc: 0,
        };
        let mut crc = crc32fast::Hasher::new();
        crc.update(&record::segment_header(file_id));
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
                if rec.kind == Kind::Sync {
                    // A sync point vouches for the bytes of its own segment; the copy is sealed and needs none.
                    continue;
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
                    Kind::Sync => false,
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
                crc.update(encoded);
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
        out.crc = crc.finalize();
        Ok(out)
    }

    /// Puts the fsynced output and its hint under their names (still uncommitted: the manifest does not name
    /// them yet, so open would remove them).
    fn install(
        &self,
        file_id: u32,
        tmp: &std::path::Path,
        hint_tmp: &std::path::Path,
    ) -> Result<()> {
        let seg_path = self.dir.join(dir::segment_file_name(file_id));
        let hint_path = self.dir.join(dir::hint_file_name(file_id));
        self.vfs
            .rename(tmp, &seg_path)
            .map_err(|e| Error::io("rename compacted segment", tmp, e))?;
        self.vfs
            .rename(hint_tmp, &hint_path)
            .map_err(|e| Error::io("rename hint file", hint_tmp, e))?;
        dir::sync_dir(&*self.vfs, &self.dir)
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

    /// Unlinks the retired inputs and their hints (the manifest no longer names them; the caller took them out
    /// of the segment table, so no reader holds their maps any more), then forgets them as retired.
    fn unlink(&self, inputs: &[Arc<Segment>]) -> Result<()> {
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
        }
        dir::sync_dir(&*self.vfs, &self.dir)?;
        self.lock_manifest()
            .retired
            .retain(|id| !inputs.iter().any(|s| s.file_id() == *id));
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
            // Vouched for by the manifest from now on; until then open removes it as unknown.
            let mut manifest = self.lock_manifest();
            let mut next = manifest.clone();
            if let Some(entry) = next.sealed_entry(segment.file_id()) {
                entry.hint = hint::identity(&bytes).unwrap_or_default();
            }
            match next.write(&*self.vfs, &self.dir) {
                Ok(()) => *manifest = next,
                // The hint file stays unnamed; open removes it and this pass or the next writes it again.
                Err((e, false)) => return Err(e),
                Err((e, true)) => {
                    self.set_poison(format!("recording a hint file failed half way: {e}"));
                    return Err(e);
                }
            }
            drop(manifest);
            segment.set_hinted(true);
        }
        Ok(())
    }
}
