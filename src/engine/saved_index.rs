//! The saved index (`index_file.rs`) on the engine's side: saved at a clean close, loaded by the next open in
//! place of the hint replay when the store is still exactly as the close left it.

use std::sync::Arc;

use super::Engine;
use crate::index_file::{self, SavedSegment, State};
use crate::manifest;
use crate::segment::Segment;
use crate::{Error, Result};

impl Engine {
    /// Saves the index for the next open, at a clean close, if it holds at least `Options::save_index_from`
    /// entries. Returns the file's length, or `None` when nothing was saved (a small index, the multi-process
    /// mode, where other processes may append after this one closed, a read-only store).
    pub(crate) fn save_index(&self) -> Result<Option<u64>> {
        if self.shared.is_some()
            || self.options.read_only
            || self.index.len() < self.options.save_index_from
        {
            return Ok(None);
        }
        self.check_poison()?;
        // No write, no compaction while the tables are copied out.
        let quiet = self.quiesce();
        let active = Arc::clone(&quiet.log().active);
        let manifest = self.lock_manifest();
        let segments = self.segments();
        let mut sealed = Vec::with_capacity(manifest.sealed.len());
        for entry in &manifest.sealed {
            // Keyed by file id, as `Engine::sealed_in_order` reads it (which takes the log mutex this holds).
            let Some(segment) = segments.get(&entry.file_id) else {
                return Err(Error::corrupted(
                    self.dir.join(crate::dir::segment_file_name(entry.file_id)),
                    0,
                    format!("named in {} but not open", manifest::MANIFEST_FILE),
                ));
            };
            sealed.push(Arc::clone(segment));
        }
        let order: Vec<(&Arc<Segment>, bool)> = sealed
            .iter()
            .map(|s| (s, false))
            .chain([(&active, true)])
            .collect();
        let mut state = State {
            hasher: self.index.hasher().identity(),
            generation: manifest.generation,
            segments: Vec::with_capacity(order.len()),
        };
        let mut dead = Vec::with_capacity(order.len());
        let mut ids = Vec::with_capacity(order.len());
        for (segment, is_active) in order {
            state.segments.push(saved(segment, is_active)?);
            dead.push(segment.dead());
            ids.push((segment.id(), segment.file_id()));
        }
        let saved = index_file::write(&*self.vfs, &self.dir, &self.index, &state, &dead, &ids)?;
        drop(quiet);
        Ok(Some(saved))
    }

    /// Loads the saved index if it was made for the store as it is now: `sealed` in the manifest's order and
    /// `active` (its length that of its intact records), opened and checked, with the manifest as read. Returns
    /// true when the index holds it; false when there is none or it does not fit (said in a warning), and the
    /// index is empty.
    pub(crate) fn load_saved_index(
        &mut self,
        sealed: &[(manifest::Sealed, Arc<Segment>)],
        active: &Segment,
    ) -> Result<bool> {
        let generation = self
            .manifest
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .generation;
        let mut state = State {
            hasher: self.index.hasher().identity(),
            generation,
            segments: Vec::with_capacity(sealed.len() + 1),
        };
        for (_, segment) in sealed {
            state.segments.push(saved(segment, false)?);
        }
        state.segments.push(saved(active, true)?);
        let parts = match self.options.hint_replay_parts {
            Some(parts) => parts,
            None => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        };
        match index_file::load(&*self.vfs, &self.dir, &mut self.index, &state, parts) {
            None => Ok(false),
            Some(Ok(dead)) => {
                for ((entry, segment), dead) in sealed.iter().zip(&dead) {
                    segment.add_dead(*dead);
                    // As a replay from it would: the hint is checked when an open without the index reads it.
                    segment.set_hinted(entry.hint != 0);
                }
                if let Some(dead) = dead.last() {
                    active.add_dead(*dead);
                }
                Ok(true)
            }
            Some(Err(reason)) => {
                log::warn!(
                    "{}: {reason}; rebuilding the index from hint files and segments",
                    self.dir.join(index_file::INDEX_FILE).display()
                );
                Ok(false)
            }
        }
    }
}

/// What the index file records of `segment`.
fn saved(segment: &Segment, active: bool) -> Result<SavedSegment> {
    Ok(SavedSegment {
        id: segment.file_id(),
        active,
        len: segment.len(),
        tail_crc: tail_crc(segment)?,
    })
}

/// [`index_file::tail_crc`] of a segment's bytes, read through its map or with one `pread` of the last ones.
fn tail_crc(segment: &Segment) -> Result<u32> {
    if let Some(bytes) = segment.mapped() {
        return Ok(index_file::tail_crc(bytes));
    }
    let len = segment.len();
    let take = len.min(index_file::TAIL_LEN as u64);
    let mut tail = vec![0u8; take as usize];
    let got = segment
        .file()
        .read_at(&mut tail, len - take)
        .map_err(|e| Error::io("read segment", segment.path(), e))?;
    tail.truncate(got);
    Ok(index_file::tail_crc(&tail))
}
