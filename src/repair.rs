//! Salvage: rewrite a damaged store so that it opens, keeping every intact record and saying exactly what was
//! lost.
//!
//! Repair works on a closed store (it takes the exclusive lock). It reads every segment the manifest names, in
//! replay order, record by record. Bad bytes are skipped: when the damaged record's header can still be read, by
//! its stated length (so the walk never resynchronises inside a value, where a client's bytes could look like a
//! record); otherwise to the next intact record. A damaged record whose key is readable erases its key (its
//! newest version is gone, and bringing back an older one could undo a delete); one whose key is unreadable is
//! reported by file and offset. The surviving newest version of every key is written to new segments with fresh
//! ids; then, as one step, a new manifest names only them (the commit point), and the old files are removed. A
//! crash at any point leaves either the old store or the repaired one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::codec;
use crate::dir;
use crate::manifest::{self, Manifest, Sealed};
use crate::options::Options;
use crate::record::{self, Kind, SEGMENT_HEADER_LEN};
use crate::segment::Segment;
use crate::vfs::Vfs;
use crate::{Error, Result};

/// What [`crate::Store::repair`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepairReport {
    /// Intact user records read: puts and tombstones (of mappings and FME records), old versions included; not
    /// the sync points, which only vouch for the bytes before them.
    pub records: u64,
    /// Live mappings (and other keyed records) written to the repaired store.
    pub kept: u64,
    /// Every piece of damage, in file order, with what it cost.
    pub lost: Vec<Lost>,
    /// True when the store was rewritten; false when nothing was damaged and nothing changed.
    pub rewritten: bool,
}

/// One piece of damage and what it cost.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lost {
    /// The damaged file.
    pub path: PathBuf,
    /// Byte offset of the damage.
    pub offset: u64,
    /// Bytes skipped.
    pub bytes: u64,
    /// The key whose newest record was damaged and which the repaired store no longer holds, when readable:
    /// (user id, item) with the item as text where it is one (a campaign key).
    pub key: Option<(String, String)>,
    /// What was wrong.
    pub reason: String,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at offset {} ({} bytes): {}",
            self.path.display(),
            self.offset,
            self.bytes,
            self.reason
        )?;
        if let Some((user, item)) = &self.key {
            write!(f, "; key ({user:?}, {item:?}) dropped")?;
        }
        Ok(())
    }
}

impl RepairReport {
    /// True when nothing was lost.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
    }
}

/// Where the newest record of a key is, or that the key is erased.
enum Newest {
    Put { file_id: u32, offset: usize },
    Gone,
}

/// Repairs the store in `dir`; see the module docs.
pub(crate) fn repair(dir: &Path, options: &Options) -> Result<RepairReport> {
    if !dir.is_dir() {
        return Err(Error::NotADirectory {
            path: dir.to_owned(),
        });
    }
    let vfs = &*options.vfs;
    let _lock = dir::lock(dir, false)?;
    // A saved index describes the store as a clean close left it, which a repair may change.
    let saved = dir.join(crate::index_file::INDEX_FILE);
    if let Err(e) = vfs.remove_file(&saved)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(Error::io("remove saved index", &saved, e));
    }
    let listing = dir::list(vfs, dir)?;
    let manifest = match manifest::read(vfs, dir) {
        Ok(Some(manifest)) => Some(manifest),
        Ok(None) => None,
        // A damaged manifest: fall back to the files, in id order.
        Err(Error::Corrupted { reason, .. }) => {
            log::warn!(
                "{}: {reason}; repairing from the segment files alone",
                dir.display()
            );
            None
        }
        Err(e) => return Err(e),
    };
    let mut report = RepairReport::default();
    let order: Vec<u32> = match &manifest {
        Some(m) => {
            let mut order: Vec<u32> = m.sealed.iter().map(|s| s.file_id).collect();
            order.push(m.active);
            order
        }
        None => listing.segments.clone(),
    };
    let mut segments = Vec::new();
    for &id in &order {
        if listing.segments.binary_search(&id).is_err() {
            report.lost.push(Lost {
                path: dir.join(dir::segment_file_name(id)),
                offset: 0,
                bytes: 0,
                key: None,
                reason: "the segment file is missing; every record it held is lost".into(),
            });
            continue;
        }
        match Segment::open(vfs, dir, id) {
            Ok(segment) => segments.push(segment),
            Err(e) => report.lost.push(Lost {
                path: dir.join(dir::segment_file_name(id)),
                offset: 0,
                bytes: 0,
                key: None,
                reason: format!("unreadable segment, skipped whole: {e}"),
            }),
        }
    }
    let contents: Vec<Vec<u8>> = segments
        .iter()
        .map(|s| s.contents().map(|c| c.into_owned()))
        .collect::<Result<_>>()?;

    let mut newest: HashMap<Vec<u8>, Newest> = HashMap::new();
    let mut damaged_keys: Vec<(usize, Vec<u8>)> = Vec::new();
    for (segment, bytes) in segments.iter().zip(&contents) {
        let mut offset = SEGMENT_HEADER_LEN as usize;
        while let Some(rest) = bytes.get(offset..).filter(|r| !r.is_empty()) {
            match record::decode(rest) {
                Ok(rec) => {
                    if rec.kind != Kind::Sync {
                        report.records += 1;
                    }
                    if codec::split_key(rec.key).is_some() {
                        let state = match rec.kind {
                            Kind::Put => Some(Newest::Put {
                                file_id: segment.file_id(),
                                offset,
                            }),
                            Kind::Delete => Some(Newest::Gone),
                            // A sync point has no key (and is not carried over: it vouched for its old file).
                            Kind::Sync => None,
                        };
                        if let Some(state) = state {
                            newest.insert(rec.key.to_vec(), state);
                        }
                    }
                    offset += rec.len();
                }
                Err(e) => {
                    let header = record::decode_header(rest).ok();
                    let key = header.and_then(|h| {
                        rest.get(record::RECORD_HEADER_LEN..record::RECORD_HEADER_LEN + h.key_len)
                            .filter(|k| codec::split_key(k).is_some())
                            .map(<[u8]>::to_vec)
                    });
                    // Skip by the stated length when the header is sound and the record fits the file;
                    // otherwise to the next intact record.
                    let skip = match header {
                        Some(h) if h.len() <= rest.len() => h.len(),
                        _ => record::next_intact_record(bytes, offset + 1)
                            .map_or(rest.len(), |next| next - offset),
                    };
                    if let Some(key) = &key {
                        newest.insert(key.clone(), Newest::Gone);
                        damaged_keys.push((report.lost.len(), key.clone()));
                    }
                    report.lost.push(Lost {
                        path: segment.path().to_owned(),
                        offset: offset as u64,
                        bytes: skip as u64,
                        key: key.as_deref().and_then(printable_key),
                        reason: e.to_string(),
                    });
                    offset += skip;
                }
            }
        }
    }
    // A damaged key whose later record is intact was not lost after all: the later one is kept.
    for (i, key) in damaged_keys {
        if matches!(newest.get(&key), Some(Newest::Put { .. }))
            && let Some(lost) = report.lost.get_mut(i)
        {
            lost.key = None;
            lost.reason
                .push_str("; a later record of the same key is intact and kept");
        }
    }
    if report.lost.is_empty() && manifest.is_some() {
        return Ok(report);
    }

    // Rewrite: every surviving newest put, in the order of the old log.
    let mut live: Vec<(u32, usize)> = newest
        .values()
        .filter_map(|n| match n {
            Newest::Put { file_id, offset } => Some((*file_id, *offset)),
            Newest::Gone => None,
        })
        .collect();
    let position: HashMap<u32, usize> = order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    live.sort_by_key(|&(id, offset)| (position.get(&id).copied().unwrap_or(usize::MAX), offset));
    let by_id: HashMap<u32, &Vec<u8>> = segments
        .iter()
        .zip(&contents)
        .map(|(s, c)| (s.file_id(), c))
        .collect();
    let first_new = order
        .iter()
        .chain(&listing.segments)
        .copied()
        .max()
        .unwrap_or(0)
        .max(
            manifest
                .as_ref()
                .map_or(0, |m| m.next_file_id.saturating_sub(1)),
        )
        + 1;
    let mut writer = Writer::new(vfs, dir, first_new, options.segment_size);
    for (id, offset) in live {
        let Some(rec) = by_id
            .get(&id)
            .and_then(|bytes| bytes.get(offset..))
            .and_then(|rest| record::decode(rest).ok())
        else {
            continue;
        };
        let mut encoded = Vec::with_capacity(rec.len());
        record::encode(&mut encoded, rec.kind, rec.key, rec.value);
        writer.push(&encoded)?;
        report.kept += 1;
    }
    let (sealed, active) = writer.finish()?;
    let next_file_id = active + 1;
    let old: Vec<u32> = listing.segments.clone();
    let mut new_manifest = Manifest {
        generation: manifest.as_ref().map_or(0, |m| m.generation),
        next_file_id,
        active,
        sealed,
        retired: old.clone(),
    };
    new_manifest.write(vfs, dir).map_err(|(e, _)| e)?;
    for id in old {
        let _ = vfs.remove_file(&dir.join(dir::segment_file_name(id)));
        let _ = vfs.remove_file(&dir.join(dir::hint_file_name(id)));
    }
    dir::sync_dir(vfs, dir)?;
    report.rewritten = true;
    Ok(report)
}

fn printable_key(key: &[u8]) -> Option<(String, String)> {
    let (user, item) = codec::split_key(key)?;
    Some((
        String::from_utf8_lossy(user).into_owned(),
        String::from_utf8_lossy(item).into_owned(),
    ))
}

/// Writes records into new segments of about `segment_size` bytes, each made whole and fsynced before the next.
struct Writer<'a> {
    vfs: &'a dyn Vfs,
    dir: &'a Path,
    next_id: u32,
    segment_size: u64,
    buf: Vec<u8>,
    sealed: Vec<Sealed>,
}

impl<'a> Writer<'a> {
    fn new(vfs: &'a dyn Vfs, dir: &'a Path, first_id: u32, segment_size: u64) -> Writer<'a> {
        let mut writer = Writer {
            vfs,
            dir,
            next_id: first_id,
            segment_size,
            buf: Vec::new(),
            sealed: Vec::new(),
        };
        writer
            .buf
            .extend_from_slice(&record::segment_header(first_id));
        writer
    }

    fn push(&mut self, encoded: &[u8]) -> Result<()> {
        if self.buf.len() as u64 > SEGMENT_HEADER_LEN
            && (self.buf.len() + encoded.len()) as u64 > self.segment_size
        {
            self.seal()?;
        }
        self.buf.extend_from_slice(encoded);
        Ok(())
    }

    /// Writes the segment being built, durably, under its id.
    fn write(&self) -> Result<()> {
        dir::write_durably(
            self.vfs,
            self.dir,
            &dir::segment_file_name(self.next_id),
            &self.buf,
            "write repaired segment",
        )
        .map(drop)
    }

    /// Writes the segment being built and starts the next one.
    fn seal(&mut self) -> Result<()> {
        let id = self.next_id;
        self.write()?;
        self.sealed.push(Sealed {
            file_id: id,
            len: self.buf.len() as u64,
            crc: crc32fast::hash(&self.buf),
            hint: 0,
        });
        self.next_id += 1;
        self.buf.clear();
        self.buf
            .extend_from_slice(&record::segment_header(self.next_id));
        Ok(())
    }

    /// Writes the last segment, which becomes the active one; returns the sealed ones and its id.
    fn finish(mut self) -> Result<(Vec<Sealed>, u32)> {
        self.write()?;
        Ok((std::mem::take(&mut self.sealed), self.next_id))
    }
}
