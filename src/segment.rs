//! Segment files: creation, opening (with the one check of a segment header), and reading records back.
//!
//! A segment is either *active* (the one the log appends to with `pwrite`) or *sealed* (complete, fsynced, never
//! written again). Both are read through a read-only shared memory map ([`Window`], the crate's one `unsafe`
//! module), so no read makes a system call: the active segment's map is made with room for the whole segment and
//! readers see only its published length, which grows after each completed append. A sealed, mapped segment
//! closes its file descriptor (the map outlives it), so open descriptors do not grow with the number of segments.
//! Files of another `Vfs` than `StdVfs`, and records that reach past a map, are read with `pread`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::dir;
use crate::index::MAX_SEGMENT_ID;
use crate::map::Window;
use crate::record::{
    self, DecodeError, HeaderError, Kind, RECORD_HEADER_LEN, RecordRef, SEGMENT_HEADER_LEN,
};
use crate::vfs::{StdFile, VFile, Vfs};
use crate::{Error, Result};

/// One segment file, shared by the log (while active) and readers.
///
/// A segment has two numbers. `file_id` is the id in its file name and header: it fixes the segment's place in
/// the replay order. `id` names it in memory (in index locations). They are equal except for a compaction
/// output, which takes over the file id (and so the replay position) of the oldest segment it replaces but needs
/// a fresh in-memory id: readers may still hold locations into the segment it replaces, and those must never be
/// resolved against the new file.
#[derive(Debug)]
pub(crate) struct Segment {
    id: u32,
    file_id: u32,
    path: PathBuf,
    /// The open file; `None` for a sealed segment read through its map (it needs no descriptor any more).
    file: Option<Arc<dyn VFile>>,
    map: Option<Arc<Window>>,
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
    /// The format version in its header.
    version: u32,
}

/// Small records are read with one `pread` of this size; larger ones need a second.
const READ_AHEAD: usize = 512;

impl Segment {
    /// Creates segment `id` in `dir` durably (see [`dir::write_durably`]): a crash leaves either no segment or a
    /// complete, empty one.
    pub(crate) fn create(vfs: &dyn Vfs, dir: &Path, id: u32) -> Result<Segment> {
        let name = dir::segment_file_name(id);
        let file = dir::write_durably(
            vfs,
            dir,
            &name,
            &record::segment_header(id),
            "create segment",
        )?;
        Ok(Segment::new(
            id,
            dir.join(name),
            Arc::from(file),
            SEGMENT_HEADER_LEN,
        ))
    }

    /// Opens segment `id` of `dir` and checks its header; the segment is not sealed (mapped) yet.
    pub(crate) fn open(vfs: &dyn Vfs, dir: &Path, id: u32) -> Result<Segment> {
        let path = dir.join(dir::segment_file_name(id));
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
        let header = header.get(..got).unwrap_or_default();
        if let Some(e) = header_error(&path, header, id) {
            return Err(e);
        }
        let mut segment = Segment::new(id, path, file, len);
        segment.version = record::segment_version(header);
        Ok(segment)
    }

    /// A segment of `len` bytes in `file`, not sealed and not mapped: read with `pread` (until
    /// [`Segment::mapped_for_appends`] or [`Segment::seal`]).
    pub(crate) fn new(id: u32, path: PathBuf, file: Arc<dyn VFile>, len: u64) -> Segment {
        Segment {
            id,
            file_id: id,
            path,
            file: Some(file),
            map: None,
            dead: AtomicU64::new(0),
            len: AtomicU64::new(len),
            hinted: AtomicBool::new(false),
            unhintable: AtomicBool::new(false),
            futile_at: AtomicU64::new(u64::MAX),
            version: record::FORMAT_VERSION,
        }
    }

    /// A complete, fsynced compaction output that holds file id `file_id` on disk and `id` in memory; sealed.
    pub(crate) fn compacted(
        id: u32,
        file_id: u32,
        path: PathBuf,
        file: Arc<dyn VFile>,
        len: u64,
    ) -> Segment {
        let mut segment = Segment::new(id, path, file, len);
        segment.file_id = file_id;
        segment.seal()
    }

    /// This segment (the active one, or the newest one being opened) read through a map with room for `room`
    /// bytes (at least its current length), into which it grows by appends. Left unmapped when the file is not
    /// one of [`crate::StdVfs`] or the OS refuses the map.
    pub(crate) fn mapped_for_appends(mut self, room: u64) -> Segment {
        let capacity = room.max(self.len());
        self.map = self
            .std_file()
            .and_then(|file| Window::new(file, capacity))
            .map(Arc::new);
        self
    }

    fn std_file(&self) -> Option<&StdFile> {
        let any: &dyn std::any::Any = &**self.file.as_ref()?;
        any.downcast_ref::<StdFile>()
    }

    /// A sealed copy of this complete, fsynced segment, read through a memory map: the active segment's own map
    /// when it covers the whole segment, else a new one. A mapped sealed segment drops its file descriptor. If
    /// mapping fails, or the file is not one of [`crate::StdVfs`], the segment is still served, through `pread`.
    pub(crate) fn seal(&self) -> Segment {
        let len = self.len();
        let map = match &self.map {
            Some(map) if map.capacity() >= len && len > 0 => Some(Arc::clone(map)),
            _ => self
                .std_file()
                .and_then(|file| Window::new(file, len))
                .map(Arc::new),
        };
        let file = match map {
            Some(_) => None,
            None => self.file.clone(),
        };
        Segment {
            id: self.id,
            file_id: self.file_id,
            path: self.path.clone(),
            file,
            map,
            dead: AtomicU64::new(self.dead()),
            len: AtomicU64::new(len),
            hinted: AtomicBool::new(self.hinted()),
            unhintable: AtomicBool::new(self.unhintable.load(Ordering::Relaxed)),
            futile_at: AtomicU64::new(self.futile_at.load(Ordering::Relaxed)),
            version: self.version,
        }
    }

    /// The format version in its header.
    pub(crate) fn version(&self) -> u32 {
        self.version
    }

    /// The segment id.
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// The id in the file name: the segment's place in the replay order.
    pub(crate) fn file_id(&self) -> u32 {
        self.file_id
    }

    /// The path of this segment's hint file.
    pub(crate) fn hint_path(&self) -> PathBuf {
        self.path.with_file_name(dir::hint_file_name(self.file_id))
    }

    /// True once a valid hint file exists for this segment.
    pub(crate) fn hinted(&self) -> bool {
        self.hinted.load(Ordering::Acquire)
    }

    /// Records that a valid hint file exists (or, with false, that it was removed).
    pub(crate) fn set_hinted(&self, hinted: bool) {
        self.hinted.store(hinted, Ordering::Release);
    }

    /// True once a hint could not be made of this segment's contents.
    pub(crate) fn unhintable(&self) -> bool {
        self.unhintable.load(Ordering::Relaxed)
    }

    /// Records that a hint cannot be made of this segment's contents, so none is tried again.
    pub(crate) fn set_unhintable(&self) {
        self.unhintable.store(true, Ordering::Relaxed);
    }

    /// True when compacting this segment alone was already found to reclaim nothing at its current dead count.
    pub(crate) fn known_futile(&self) -> bool {
        self.dead() <= self.futile_at.load(Ordering::Relaxed)
            && self.futile_at.load(Ordering::Relaxed) != u64::MAX
    }

    /// Records that compacting this segment alone reclaims nothing while its dead count stays at `dead`.
    pub(crate) fn set_futile_at(&self, dead: u64) {
        self.futile_at.store(dead, Ordering::Relaxed);
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The shared file handle; `None` for a sealed segment read through its map.
    pub(crate) fn file_arc(&self) -> Option<&Arc<dyn VFile>> {
        self.file.as_ref()
    }

    /// This segment with its length set to `len` (open cuts a torn tail off the newest one).
    pub(crate) fn with_len(self, len: u64) -> Segment {
        self.len.store(len, Ordering::Release);
        self
    }

    /// The file handle (for the log's appends and fsyncs, and `pread`s of an unmapped segment). A sealed, mapped
    /// segment has closed its file: then every call on the handle fails with an error naming the file.
    pub(crate) fn file(&self) -> &dyn VFile {
        match &self.file {
            Some(file) => &**file,
            None => &CLOSED,
        }
    }

    /// All bytes of the segment: its map, or a copy read with one `pread` (a segment that is not mapped, or whose
    /// records reach past its map).
    pub(crate) fn contents(&self) -> Result<std::borrow::Cow<'_, [u8]>> {
        if let Some(bytes) = self.mapped() {
            return Ok(std::borrow::Cow::Borrowed(bytes));
        }
        let mut owned = vec![0u8; usize::try_from(self.len()).unwrap_or(usize::MAX)];
        let got = self
            .file()
            .read_at(&mut owned, 0)
            .map_err(|e| Error::io("read segment", &self.path, e))?;
        owned.truncate(got);
        Ok(std::borrow::Cow::Owned(owned))
    }

    /// The segment's published bytes through its map, if it has one that covers them.
    pub(crate) fn mapped(&self) -> Option<&[u8]> {
        self.map.as_deref()?.prefix(self.len())
    }

    /// The first `published` bytes of the active segment through its map, where `published` is a tail another
    /// process of the multi-process mode published (in the control file, after its write returned) and this one
    /// has not applied yet; `None` when the map does not cover them (the caller reads them with `pread`).
    pub(crate) fn published_prefix(&self, published: u64) -> Option<&[u8]> {
        self.map.as_deref()?.prefix(published)
    }

    /// Bytes in the file.
    pub(crate) fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Records that `bytes` were appended.
    pub(crate) fn grew(&self, bytes: u64) {
        self.len.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Dead bytes in this segment.
    pub(crate) fn dead(&self) -> u64 {
        self.dead.load(Ordering::Relaxed)
    }

    /// Records that a record of `bytes` in this segment no longer holds a live version.
    pub(crate) fn add_dead(&self, bytes: u64) {
        self.dead.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Reads and checks the record at `offset`, and hands it to `f`.
    pub(crate) fn with_record<T>(
        &self,
        offset: u64,
        f: impl FnOnce(RecordRef<'_>) -> T,
    ) -> Result<T> {
        if let Some(map) = self.mapped() {
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
            .file()
            .read_at(&mut small, offset)
            .map_err(|e| Error::io("read record", &self.path, e))?;
        match record::decode(small.get(..got).unwrap_or_default()) {
            Ok(rec) => Ok(f(rec)),
            Err(DecodeError::Short { needed: Some(n) }) if got == READ_AHEAD => {
                let mut big = vec![0u8; n];
                let got = self
                    .file()
                    .read_at(&mut big, offset)
                    .map_err(|e| Error::io("read record", &self.path, e))?;
                record::decode(big.get(..got).unwrap_or_default())
                    .map(f)
                    .map_err(|e| self.decode_error(offset, e))
            }
            Err(e) => Err(self.decode_error(offset, e)),
        }
    }

    /// Reads the kind, key and total length of the record at `offset` without checking its checksum or reading
    /// its value: recovery from hint files compares keys this way. Bytes that fail to parse are `Corrupted`.
    pub(crate) fn with_key<T>(
        &self,
        offset: u64,
        f: impl FnOnce(Kind, &[u8], u64) -> T,
    ) -> Result<T> {
        let mut small = [0u8; READ_AHEAD];
        let mapped = self.mapped();
        let bytes: &[u8] = match mapped {
            Some(map) => usize::try_from(offset)
                .ok()
                .and_then(|o| map.get(o..))
                .unwrap_or_default(),
            None => {
                let got = self
                    .file()
                    .read_at(&mut small, offset)
                    .map_err(|e| Error::io("read record", &self.path, e))?;
                small.get(..got).unwrap_or_default()
            }
        };
        match record::decode_header(bytes) {
            Ok(header) => {
                let key_end = RECORD_HEADER_LEN + header.key_len;
                if let Some(key) = bytes.get(RECORD_HEADER_LEN..key_end) {
                    return Ok(f(header.kind, key, header.len() as u64));
                }
                if mapped.is_some() {
                    return Err(self.decode_error(
                        offset,
                        DecodeError::Short {
                            needed: Some(key_end),
                        },
                    ));
                }
                let mut big = vec![0u8; key_end];
                let got = self
                    .file()
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
        Error::corrupted(&self.path, offset, e.to_string())
    }
}

/// The file of a sealed segment that closed its descriptor: it is read through its map only, so any other use is
/// a bug, reported as an I/O error rather than a panic.
#[derive(Debug)]
struct Closed;

static CLOSED: Closed = Closed;

fn closed() -> std::io::Error {
    std::io::Error::other(
        "the segment's file was closed after sealing (it is read through its map)",
    )
}

impl VFile for Closed {
    fn read_at(&self, _: &mut [u8], _: u64) -> std::io::Result<usize> {
        Err(closed())
    }
    fn write_all_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
        Err(closed())
    }
    fn sync_data(&self) -> std::io::Result<()> {
        Err(closed())
    }
    fn set_len(&self, _: u64) -> std::io::Result<()> {
        Err(closed())
    }
    fn len(&self) -> std::io::Result<u64> {
        Err(closed())
    }
}

/// The one check of a segment header: `None` if `bytes` start with the header of segment `id`, else the error
/// that names what is wrong (open refuses the segment with it; verify lists it).
pub(crate) fn header_error(path: &Path, bytes: &[u8], id: u32) -> Option<Error> {
    match record::decode_segment_header(bytes) {
        Ok(found) if found == id => None,
        Ok(found) => Some(Error::corrupted(
            path,
            12,
            format!("header names segment {found}, the file name {id}"),
        )),
        Err(HeaderError::Short) => Some(Error::corrupted(path, 0, "segment header is incomplete")),
        Err(HeaderError::BadMagic) => Some(Error::BadMagic {
            path: path.to_owned(),
        }),
        Err(HeaderError::Version(found)) => Some(Error::UnsupportedVersion {
            path: path.to_owned(),
            found,
            supported: record::FORMAT_VERSION,
        }),
        Err(HeaderError::Invalid(reason)) => Some(Error::corrupted(path, 0, reason)),
    }
}
