//! Segment files: naming, creation, and reading records back.
//!
//! A segment is either *active* (the one the log appends to; read with `pread`, because it grows) or *sealed*
//! (complete, fsynced, never written again; read through a read-only memory map). This module holds the crate's
//! only `unsafe` code: the memory map of a sealed segment.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use memmap2::Mmap;

use crate::record::{self, DecodeError, Kind, RECORD_HEADER_LEN, RecordRef, SEGMENT_HEADER_LEN};
use crate::vfs::{VFile, Vfs};
use crate::{Error, Result};

/// File name suffix of segments.
pub const SEGMENT_SUFFIX: &str = ".seg";
/// Suffix of files being written that are not yet part of the store; removed on open.
pub const TMP_SUFFIX: &str = ".tmp";
/// File name suffix of hint files.
pub const HINT_SUFFIX: &str = ".hint";

/// The file name of segment `id`: zero-padded so names sort by id.
pub fn file_name(id: u32) -> String {
    format!("{id:010}{SEGMENT_SUFFIX}")
}

/// The file name of the hint file of segment `id`.
pub fn hint_file_name(id: u32) -> String {
    format!("{id:010}{HINT_SUFFIX}")
}

/// The id in a segment file name, if `name` is one.
pub fn parse_file_name(name: &str) -> Option<u32> {
    parse_id(name, SEGMENT_SUFFIX)
}

/// The id in a hint file name, if `name` is one.
pub fn parse_hint_file_name(name: &str) -> Option<u32> {
    parse_id(name, HINT_SUFFIX)
}

fn parse_id(name: &str, suffix: &str) -> Option<u32> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One segment file, shared by the log (while active) and readers.
///
/// A segment has two numbers. `file_id` is the id in its file name and header: it fixes the segment's place in
/// the replay order. `id` names it in memory (in index locations). They are equal except for a compaction
/// output, which takes over the file id (and so the replay position) of the oldest segment it replaces but needs
/// a fresh in-memory id: readers may still hold locations into the segment it replaces, and those must never be
/// resolved against the new file.
#[derive(Debug)]
pub struct Segment {
    id: u32,
    file_id: u32,
    path: PathBuf,
    file: Arc<dyn VFile>,
    map: Option<Mmap>,
    /// Bytes of records that no longer hold the newest version of a live key (overwritten, deleted, tombstones).
    dead: AtomicU64,
    /// Bytes in the file (header and records).
    len: AtomicU64,
    /// A valid hint file exists for this (sealed) segment.
    hinted: AtomicBool,
    /// Writing a hint file failed on the segment's contents (damage); not retried.
    unhintable: AtomicBool,
    /// The dead byte count at which compacting this segment on its own was found to reclaim nothing (tombstones
    /// that must stay); `u64::MAX` when never tried. Saves rewriting the same bytes pass after pass.
    futile_at: AtomicU64,
}

/// Small records are read with one `pread` of this size; larger ones need a second.
const READ_AHEAD: usize = 512;

impl Segment {
    /// Creates segment `id` in `dir` durably: header written to a temporary file, fsynced, renamed into place,
    /// directory fsynced. A crash leaves either no segment or a complete, empty one.
    pub fn create(vfs: &dyn Vfs, dir: &Path, id: u32) -> Result<Segment> {
        let path = dir.join(file_name(id));
        let tmp = dir.join(format!("{}{TMP_SUFFIX}", file_name(id)));
        let _ = vfs.remove_file(&tmp);
        let file = vfs
            .create_new(&tmp)
            .map_err(|e| Error::io("create segment", &tmp, e))?;
        let written = file
            .write_all_at(&record::segment_header(id), 0)
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io("write segment header", &tmp, e))
            .and_then(|()| {
                vfs.rename(&tmp, &path)
                    .map_err(|e| Error::io("rename segment", &tmp, e))
            })
            .and_then(|()| {
                vfs.sync_dir(dir)
                    .map_err(|e| Error::io("sync directory", dir, e))
            });
        if let Err(e) = written {
            let _ = vfs.remove_file(&tmp);
            return Err(e);
        }
        Ok(Segment::active(
            id,
            path,
            Arc::from(file),
            SEGMENT_HEADER_LEN,
            0,
        ))
    }

    /// A segment that is (still) appended to.
    pub fn active(id: u32, path: PathBuf, file: Arc<dyn VFile>, len: u64, dead: u64) -> Segment {
        Segment {
            id,
            file_id: id,
            path,
            file,
            map: None,
            dead: AtomicU64::new(dead),
            len: AtomicU64::new(len),
            hinted: AtomicBool::new(false),
            unhintable: AtomicBool::new(false),
            futile_at: AtomicU64::new(u64::MAX),
        }
    }

    /// A complete, fsynced compaction output that holds file id `file_id` on disk and `id` in memory; sealed.
    pub fn compacted(
        id: u32,
        file_id: u32,
        path: PathBuf,
        file: Arc<dyn VFile>,
        len: u64,
    ) -> Segment {
        let mut segment = Segment::active(id, path, file, len, 0);
        segment.file_id = file_id;
        segment.seal()
    }

    /// A sealed copy of this complete, fsynced segment, read through a memory map. If mapping fails the segment
    /// is still served, through `pread`.
    pub fn seal(&self) -> Segment {
        let len = self.len();
        let map = if len > 0 {
            // SAFETY: a sealed segment is complete and fsynced, and ussdb never writes to it or truncates it
            // again (compaction replaces or unlinks whole files, which leaves existing maps of the old inode
            // valid). Other processes are kept out of the directory by the lock file and the files are created
            // 0600, so nothing else changes the mapped bytes while the map lives. Reads stay within `len`, the
            // length at sealing time.
            unsafe {
                memmap2::MmapOptions::new()
                    .len(len as usize)
                    .map(self.file.std_file())
            }
            .ok()
        } else {
            None
        };
        Segment {
            id: self.id,
            file_id: self.file_id,
            path: self.path.clone(),
            file: Arc::clone(&self.file),
            map,
            dead: AtomicU64::new(self.dead()),
            len: AtomicU64::new(len),
            hinted: AtomicBool::new(self.hinted()),
            unhintable: AtomicBool::new(self.unhintable.load(Ordering::Relaxed)),
            futile_at: AtomicU64::new(self.futile_at.load(Ordering::Relaxed)),
        }
    }

    /// The segment id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The id in the file name: the segment's place in the replay order.
    pub fn file_id(&self) -> u32 {
        self.file_id
    }

    /// The path of this segment's hint file.
    pub fn hint_path(&self) -> PathBuf {
        self.path.with_file_name(hint_file_name(self.file_id))
    }

    /// True once a valid hint file exists for this segment.
    pub fn hinted(&self) -> bool {
        self.hinted.load(Ordering::Acquire)
    }

    /// Records that a valid hint file exists (or, with false, that it was removed).
    pub fn set_hinted(&self, hinted: bool) {
        self.hinted.store(hinted, Ordering::Release);
    }

    /// True once a hint could not be made of this segment's contents.
    pub fn unhintable(&self) -> bool {
        self.unhintable.load(Ordering::Relaxed)
    }

    /// Records that a hint cannot be made of this segment's contents, so none is tried again.
    pub fn set_unhintable(&self) {
        self.unhintable.store(true, Ordering::Relaxed);
    }

    /// True when compacting this segment alone was already found to reclaim nothing at its current dead count.
    pub fn known_futile(&self) -> bool {
        self.dead() <= self.futile_at.load(Ordering::Relaxed)
            && self.futile_at.load(Ordering::Relaxed) != u64::MAX
    }

    /// Records that compacting this segment alone reclaims nothing while its dead count stays at `dead`.
    pub fn set_futile_at(&self, dead: u64) {
        self.futile_at.store(dead, Ordering::Relaxed);
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file handle (for the log's appends and fsyncs).
    pub fn file(&self) -> &dyn VFile {
        &*self.file
    }

    /// All bytes of the segment: the map of a sealed one, or a copy read with one `pread` (the active segment, or a
    /// sealed one whose mapping failed).
    pub fn contents(&self) -> Result<std::borrow::Cow<'_, [u8]>> {
        if let Some(map) = &self.map {
            return Ok(std::borrow::Cow::Borrowed(&map[..]));
        }
        let mut owned = vec![0u8; usize::try_from(self.len()).unwrap_or(usize::MAX)];
        let got = self
            .file
            .read_at(&mut owned, 0)
            .map_err(|e| Error::io("read segment", &self.path, e))?;
        owned.truncate(got);
        Ok(std::borrow::Cow::Owned(owned))
    }

    /// The mapped bytes of a sealed segment.
    pub fn mapped(&self) -> Option<&[u8]> {
        self.map.as_deref()
    }

    /// Bytes in the file.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Records that `bytes` were appended.
    pub fn grew(&self, bytes: u64) {
        self.len.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Dead bytes in this segment.
    pub fn dead(&self) -> u64 {
        self.dead.load(Ordering::Relaxed)
    }

    /// Records that a record of `bytes` in this segment no longer holds a live version.
    pub fn add_dead(&self, bytes: u64) {
        self.dead.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Reads and checks the record at `offset`, and hands it to `f`.
    pub fn with_record<T>(&self, offset: u64, f: impl FnOnce(RecordRef<'_>) -> T) -> Result<T> {
        if let Some(map) = &self.map {
            let bytes = usize::try_from(offset)
                .ok()
                .and_then(|o| map.get(o..))
                .unwrap_or_default();
            return record::decode(bytes)
                .map(f)
                .map_err(|e| self.decode_error(offset, e));
        }
        let mut small = [0u8; READ_AHEAD];
        let got = self
            .file
            .read_at(&mut small, offset)
            .map_err(|e| Error::io("read record", &self.path, e))?;
        match record::decode(&small[..got]) {
            Ok(rec) => Ok(f(rec)),
            Err(DecodeError::Short { needed: Some(n) }) if got == READ_AHEAD => {
                let mut big = vec![0u8; n];
                let got = self
                    .file
                    .read_at(&mut big, offset)
                    .map_err(|e| Error::io("read record", &self.path, e))?;
                record::decode(&big[..got])
                    .map(f)
                    .map_err(|e| self.decode_error(offset, e))
            }
            Err(e) => Err(self.decode_error(offset, e)),
        }
    }

    /// Reads the kind, key and total length of the record at `offset` without checking its checksum or reading
    /// its value: recovery from hint files compares keys this way. Bytes that fail to parse are `Corrupted`.
    pub fn with_key<T>(&self, offset: u64, f: impl FnOnce(Kind, &[u8], u64) -> T) -> Result<T> {
        let mut small = [0u8; READ_AHEAD];
        let bytes: &[u8] = match &self.map {
            Some(map) => usize::try_from(offset)
                .ok()
                .and_then(|o| map.get(o..))
                .unwrap_or_default(),
            None => {
                let got = self
                    .file
                    .read_at(&mut small, offset)
                    .map_err(|e| Error::io("read record", &self.path, e))?;
                &small[..got]
            }
        };
        match record::decode_header(bytes) {
            Ok(header) => {
                let key_end = RECORD_HEADER_LEN + header.key_len;
                if let Some(key) = bytes.get(RECORD_HEADER_LEN..key_end) {
                    return Ok(f(header.kind, key, header.len() as u64));
                }
                if self.map.is_some() {
                    return Err(self.decode_error(
                        offset,
                        DecodeError::Short {
                            needed: Some(key_end),
                        },
                    ));
                }
                let mut big = vec![0u8; key_end];
                let got = self
                    .file
                    .read_at(&mut big, offset)
                    .map_err(|e| Error::io("read record", &self.path, e))?;
                match big
                    .get(RECORD_HEADER_LEN..key_end)
                    .filter(|_| got == key_end)
                {
                    Some(key) => Ok(f(header.kind, key, header.len() as u64)),
                    None => Err(self.decode_error(
                        offset,
                        DecodeError::Short {
                            needed: Some(key_end),
                        },
                    )),
                }
            }
            Err(e) => Err(self.decode_error(offset, e)),
        }
    }

    fn decode_error(&self, offset: u64, e: DecodeError) -> Error {
        let reason = match e {
            DecodeError::Short { .. } => "record extends past the end of the file".to_owned(),
            DecodeError::Invalid(reason) => reason,
        };
        Error::corrupted(&self.path, offset, reason)
    }
}
