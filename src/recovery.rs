//! Opening a store: take the directory lock, clean up leftovers, read every segment in id order and rebuild the
//! index, cutting off a torn tail of the newest segment.
//!
//! Only the newest segment can legitimately end in a torn record (rotation fsyncs a segment before the next one
//! exists). A bad record there is a torn write when no intact record follows it: it is cut off with a warning.
//! An intact record after a bad one means the damage is not a torn write, and anything wrong in an older segment
//! is damage too: both are reported as [`Error::Corrupted`] with the file and offset.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use crate::codec;
use crate::engine::{Counters, Engine};
use crate::index::{Index, KeyHasher, Loc, MAX_SEGMENT_ID};
use crate::log::{LogState, Syncer};
use crate::record::{self, DecodeError, HeaderError, Kind, RecordRef, SEGMENT_HEADER_LEN};
use crate::segment::{self, Segment, TMP_SUFFIX};
use crate::store::Options;
use crate::vfs::{VFile, Vfs};
use crate::{Error, Result};

/// Name of the lock file in a store directory.
pub const LOCK_FILE: &str = "LOCK";

impl Engine {
    pub(crate) fn open(dir: &Path, options: Options) -> Result<Engine> {
        options.validate()?;
        let vfs = Arc::clone(&options.vfs);
        if dir.exists() && !dir.is_dir() {
            return Err(Error::NotADirectory {
                path: dir.to_owned(),
            });
        }
        fs::create_dir_all(dir).map_err(|e| Error::io("create store directory", dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| Error::io("open lock file", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(Error::Locked { path: lock_path }),
            Err(fs::TryLockError::Error(e)) => {
                return Err(Error::io("lock store directory", &lock_path, e));
            }
        }

        let mut ids = Vec::new();
        for name in vfs
            .list_dir(dir)
            .map_err(|e| Error::io("list store directory", dir, e))?
        {
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(TMP_SUFFIX) {
                log::warn!(
                    "removing {name} in {}, left over from an interrupted write",
                    dir.display()
                );
                let path = dir.join(name);
                vfs.remove_file(&path)
                    .map_err(|e| Error::io("remove temporary file", &path, e))?;
            } else if let Some(id) = segment::parse_file_name(name) {
                ids.push(id);
            }
        }
        ids.sort_unstable();

        let (active, newest_bytes) = match ids.pop() {
            Some(id) => {
                let (segment, bytes) = open_newest(&*vfs, dir, id)?;
                (segment, Some(bytes))
            }
            None => (Segment::create(&*vfs, dir, 1)?, None),
        };
        let active = Arc::new(active);
        let engine = Engine {
            dir: dir.to_owned(),
            vfs,
            index: Index::new(KeyHasher::new(options.weak_hash)),
            options,
            segments: RwLock::new(BTreeMap::from([(active.id(), Arc::clone(&active))])),
            log: Mutex::new(LogState {
                next_id: active.id() + 1,
                active: Arc::clone(&active),
                written: 0,
            }),
            syncer: Syncer::default(),
            poison: OnceLock::new(),
            counters: Counters::default(),
            _lock: lock,
        };
        for id in ids {
            engine.recover_sealed(id)?;
        }
        if let Some(bytes) = newest_bytes {
            engine.replay_all(active.id(), active.path(), &bytes)?;
        }
        Ok(engine)
    }

    fn recover_sealed(&self, id: u32) -> Result<()> {
        let (path, file, len) = open_segment(&*self.vfs, &self.dir, id)?;
        let segment = Arc::new(Segment::active(id, path.clone(), file, len, 0).seal());
        self.segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::clone(&segment));
        let mut buf = Vec::new();
        let bytes: &[u8] = match segment.mapped() {
            Some(map) => map,
            None => {
                buf.resize(len as usize, 0);
                let got = segment
                    .file()
                    .read_at(&mut buf, 0)
                    .map_err(|e| Error::io("read segment", &path, e))?;
                buf.truncate(got);
                &buf
            }
        };
        let end = valid_prefix(bytes);
        if end < bytes.len() {
            let reason = record::decode(&bytes[end..])
                .err()
                .map(describe)
                .unwrap_or_default();
            return Err(Error::corrupted(&path, end as u64, reason));
        }
        self.replay_all(id, &path, bytes)
    }

    /// Replays the records of segment `id` (already checked by [`valid_prefix`]) into the index.
    fn replay_all(&self, id: u32, path: &Path, bytes: &[u8]) -> Result<()> {
        let mut offset = SEGMENT_HEADER_LEN as usize;
        while offset < bytes.len() {
            let rec = record::decode(&bytes[offset..])
                .map_err(|e| Error::corrupted(path, offset as u64, describe(e)))?;
            self.replay(Loc::new(id, offset as u64), rec)?;
            offset += rec.len();
        }
        Ok(())
    }

    /// Applies one record found during recovery to the index and the dead byte counts.
    fn replay(&self, loc: Loc, rec: RecordRef<'_>) -> Result<()> {
        let Some((user_id, campaign_key)) = codec::decode_key(rec.key) else {
            return Err(self.corrupted_at(loc, "record key is malformed".into()));
        };
        let hash = self.index.hasher().hash(user_id, campaign_key);
        let old = self.find_locked(hash, user_id, campaign_key)?;
        match (rec.kind, old) {
            (Kind::Put, Some((old_loc, old_len))) => {
                self.index.replace(hash, old_loc, loc);
                self.mark_dead(old_loc, old_len);
            }
            (Kind::Put, None) => self.index.insert(hash, loc),
            (Kind::Delete, Some((old_loc, old_len))) => {
                self.index.remove(hash, old_loc);
                self.mark_dead(old_loc, old_len);
                self.mark_dead(loc, rec.len() as u64);
            }
            (Kind::Delete, None) => self.mark_dead(loc, rec.len() as u64),
        }
        Ok(())
    }
}

/// Opens segment `id` and checks its header; returns its path, file and length.
fn open_segment(vfs: &dyn Vfs, dir: &Path, id: u32) -> Result<(PathBuf, Arc<dyn VFile>, u64)> {
    let path = dir.join(segment::file_name(id));
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
    match record::decode_segment_header(&header[..got]) {
        Ok(found) if found == id => Ok((path, file, len)),
        Ok(found) => Err(Error::corrupted(
            &path,
            12,
            format!("header names segment {found}, the file name {id}"),
        )),
        Err(HeaderError::Short) => Err(Error::corrupted(&path, 0, "segment header is incomplete")),
        Err(HeaderError::BadMagic) => Err(Error::BadMagic { path }),
        Err(HeaderError::Version(found)) => Err(Error::UnsupportedVersion {
            path,
            found,
            supported: record::FORMAT_VERSION,
        }),
        Err(HeaderError::Invalid(reason)) => Err(Error::corrupted(&path, 0, reason)),
    }
}

/// Opens the newest segment as the active one, cutting off a torn tail; returns it with its bytes.
fn open_newest(vfs: &dyn Vfs, dir: &Path, id: u32) -> Result<(Segment, Vec<u8>)> {
    let (path, file, len) = open_segment(vfs, dir, id)?;
    let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
    let got = file
        .read_at(&mut bytes, 0)
        .map_err(|e| Error::io("read segment", &path, e))?;
    bytes.truncate(got);
    let end = valid_prefix(&bytes);
    if end < bytes.len() {
        let reason = record::decode(&bytes[end..])
            .err()
            .map(describe)
            .unwrap_or_default();
        if let Some(next) = next_intact_record(&bytes, end + 1) {
            return Err(Error::corrupted(
                &path,
                end as u64,
                format!(
                    "{reason}; an intact record follows at offset {next}, so this is damage, not a torn write"
                ),
            ));
        }
        log::warn!(
            "{}: cutting off a torn write of {} bytes at offset {end} ({reason})",
            path.display(),
            bytes.len() - end
        );
        file.set_len(end as u64)
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io("cut torn tail", &path, e))?;
        bytes.truncate(end);
    }
    Ok((Segment::active(id, path, file, end as u64, 0), bytes))
}

/// The length of the longest prefix of a segment's bytes that is the header and whole, intact records.
fn valid_prefix(bytes: &[u8]) -> usize {
    let mut offset = SEGMENT_HEADER_LEN as usize;
    while let Some(rest) = bytes.get(offset..).filter(|r| !r.is_empty()) {
        match record::decode(rest) {
            Ok(rec) => offset += rec.len(),
            Err(_) => break,
        }
    }
    offset.min(bytes.len())
}

fn describe(e: DecodeError) -> String {
    match e {
        DecodeError::Short { .. } => "record is cut short by the end of the file".to_owned(),
        DecodeError::Invalid(reason) => reason,
    }
}

/// The first offset at or after `from` where an intact record starts, if any.
fn next_intact_record(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len()).find(|&at| record::decode(&bytes[at..]).is_ok())
}
