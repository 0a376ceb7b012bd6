//! Segment files: naming, creation, and reading records back.
//!
//! A segment is either *active* (the one the log appends to; read with `pread`, because it grows) or *sealed*
//! (complete, fsynced, never written again; read through a read-only memory map). This module holds the crate's
//! only `unsafe` code: the memory map of a sealed segment.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::Mmap;

use crate::record::{self, DecodeError, RecordRef, SEGMENT_HEADER_LEN};
use crate::vfs::{VFile, Vfs};
use crate::{Error, Result};

/// File name suffix of segments.
pub const SEGMENT_SUFFIX: &str = ".seg";
/// Suffix of files being written that are not yet part of the store; removed on open.
pub const TMP_SUFFIX: &str = ".tmp";

/// The file name of segment `id`: zero-padded so names sort by id.
pub fn file_name(id: u32) -> String {
    format!("{id:010}{SEGMENT_SUFFIX}")
}

/// The id in a segment file name, if `name` is one.
pub fn parse_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One segment file, shared by the log (while active) and readers.
#[derive(Debug)]
pub struct Segment {
    id: u32,
    path: PathBuf,
    file: Arc<dyn VFile>,
    map: Option<Mmap>,
    /// Bytes of records that no longer hold the newest version of a live key (overwritten, deleted, tombstones).
    dead: AtomicU64,
    /// Bytes in the file (header and records).
    len: AtomicU64,
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
            path,
            file,
            map: None,
            dead: AtomicU64::new(dead),
            len: AtomicU64::new(len),
        }
    }

    /// A sealed copy of this complete, fsynced segment, read through a memory map. If mapping fails the segment
    /// is still served, through `pread`.
    pub fn seal(&self) -> Segment {
        let len = self.len();
        let map = if len > 0 {
            // SAFETY: a sealed segment is complete and fsynced, and ussdb never writes to it or truncates it
            // again (compaction deletes whole files, which leaves existing maps valid). Other processes are kept
            // out of the directory by the lock file and the files are created 0600, so nothing else changes the
            // mapped bytes while the map lives. Reads stay within `len`, the length at sealing time.
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
            path: self.path.clone(),
            file: Arc::clone(&self.file),
            map,
            dead: AtomicU64::new(self.dead()),
            len: AtomicU64::new(len),
        }
    }

    /// The segment id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file handle (for the log's appends and fsyncs).
    pub fn file(&self) -> &dyn VFile {
        &*self.file
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

    fn decode_error(&self, offset: u64, e: DecodeError) -> Error {
        let reason = match e {
            DecodeError::Short { .. } => "record extends past the end of the file".to_owned(),
            DecodeError::Invalid(reason) => reason,
        };
        Error::corrupted(&self.path, offset, reason)
    }
}
