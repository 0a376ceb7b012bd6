//! Checking a store end to end: every record of every segment is read back and its checksum, key and value
//! checked, and the in-memory index is compared with the log (every entry points at the newest record of its key,
//! and every key whose newest record is a put has an entry). Damage is reported by file and offset; nothing here
//! repairs or writes anything.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::codec;
use crate::dir;
use crate::engine::Engine;
use crate::hint;
use crate::index::Loc;
use crate::manifest::{self, Manifest};
use crate::record::{self, Kind, RecordRef, Records};
use crate::seed::{self, KeyHasher, Seed};
use crate::segment::{self, Segment};
use crate::tail::{self, Role, Stop};
use crate::vfs::StdVfs;
use crate::{Error, Result};

/// What [`crate::Store::verify`] or [`verify_dir`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Segment files read.
    pub segments: u64,
    /// Intact records read (puts and tombstones, live or not).
    pub records: u64,
    /// Intact sync points read: records the store appends after an fsync to say how far it reached, which
    /// recovery uses to tell damage from a torn write. Not counted in `records`.
    pub sync_points: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Live campaign mappings: campaign keys whose newest record is an intact put.
    pub mappings: u64,
    /// Live FME records: feature items whose newest record is an intact put (their values are decoded and checked
    /// like the mappings').
    pub feature_records: u64,
    /// True when the in-memory index was compared with the log (a store that could be opened); false for a
    /// scan of the files alone ([`verify_dir`]).
    pub index_checked: bool,
    /// Every problem found, in file order. Empty for a healthy store.
    pub damage: Vec<Damage>,
    /// A torn last write at the end of the newest segment: what a crash mid-write leaves. Not damage: the next
    /// open cuts it off (losing only that unacknowledged write).
    pub torn_tail: Option<Damage>,
    /// Hint files read and compared with their segments.
    pub hint_files: u64,
    /// Hint files that do not match their segment byte for byte (bit rot, or written to by something else). Not
    /// damage to the data: open checks every hint and scans the segment instead of using a bad one.
    pub hint_problems: Vec<Damage>,
}

/// One problem: where it is and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Damage {
    /// The file.
    pub path: PathBuf,
    /// Byte offset in the file of the damaged header or record.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at offset {}: {}",
            self.path.display(),
            self.offset,
            self.reason
        )
    }
}

impl VerifyReport {
    /// True when no damage was found (a torn tail is not damage).
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    /// A one-line summary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            write!(f, "ok: ")?;
        } else {
            write!(f, "DAMAGED: {} problem(s) in ", self.damage.len())?;
        }
        write!(
            f,
            "{} segment(s), {} records, {} bytes, {} mappings",
            self.segments, self.records, self.bytes, self.mappings
        )?;
        if self.feature_records > 0 {
            write!(f, ", {} FME records", self.feature_records)?;
        }
        if self.hint_files > 0 {
            write!(f, ", {} hint file(s)", self.hint_files)?;
        }
        if !self.hint_problems.is_empty() {
            write!(
                f,
                " ({} not matching, to be rewritten)",
                self.hint_problems.len()
            )?;
        }
        if self.index_checked {
            write!(f, "; index checked against the log")?;
        } else {
            write!(f, "; files only (index not checked)")?;
        }
        if self.torn_tail.is_some() {
            write!(f, "; a torn last write will be cut off on open")?;
        }
        Ok(())
    }
}

/// A key's identity for the walk, without keeping the key: two independent 64-bit hashes of its bytes.
type Fingerprint = (u64, u64);

fn fingerprint(key: &[u8]) -> Fingerprint {
    let mut a = std::hash::DefaultHasher::new();
    key.hash(&mut a);
    let mut b = std::hash::DefaultHasher::new();
    0x5553_5344_4256_4552_u64.hash(&mut b);
    key.hash(&mut b);
    (a.finish(), b.finish())
}

/// The newest record of one key seen so far.
struct Newest {
    loc: Loc,
    put: bool,
    /// The key is an FME record's (its item is in the FME namespace).
    feature: bool,
    indexed: bool,
}

/// State of one verification: the report so far and the newest record of every key.
struct Walk<'p> {
    dir: PathBuf,
    report: VerifyReport,
    newest: HashMap<Fingerprint, Newest>,
    done: u64,
    total: u64,
    progress: &'p mut dyn FnMut(u64, u64),
    /// The store's seed, which authenticates sync points in the newest segment; `None` if it cannot be read.
    seed: Option<Seed>,
}

/// How often (in records) progress is reported.
const PROGRESS_EVERY: u64 = 8192;

impl Walk<'_> {
    fn damage(&mut self, path: &Path, offset: u64, reason: impl Into<String>) {
        self.report.damage.push(Damage {
            path: path.to_owned(),
            offset,
            reason: reason.into(),
        });
    }

    /// The file of the segment `loc` points into (its name need not follow from the in-memory id).
    fn path_of(&self, loc: Loc, segments: &BTreeMap<u32, Arc<Segment>>) -> PathBuf {
        segments.get(&loc.segment()).map_or_else(
            || self.dir.join(dir::segment_file_name(loc.segment())),
            |s| s.path().to_owned(),
        )
    }

    /// Reads every record of one segment's bytes; `id` is its in-memory id, `file_id` the one in its name and
    /// header. `newest`: it is the last segment, where a torn tail is legal.
    fn scan_segment(&mut self, id: u32, file_id: u32, path: &Path, bytes: &[u8], newest: bool) {
        self.report.segments += 1;
        self.report.bytes += bytes.len() as u64;
        if let Some(e) = segment::header_error(path, bytes, file_id) {
            let (offset, reason) = match e {
                Error::Corrupted { offset, reason, .. } => (offset, reason),
                Error::BadMagic { .. } => {
                    (0, "not a ussdb segment (wrong magic number)".to_owned())
                }
                Error::UnsupportedVersion {
                    found, supported, ..
                } => (
                    8,
                    format!("format version {found}; this build reads version {supported}"),
                ),
                other => (0, other.to_string()),
            };
            // Without a readable header nothing after it can be trusted; a wrong id or checksum still lets
            // the records be read.
            let fatal = bytes.len() < crate::record::SEGMENT_HEADER_LEN as usize
                || reason.contains("magic")
                || reason.contains("format version");
            self.damage(path, offset, reason);
            if fatal {
                return;
            }
        }
        let mut offset = crate::record::SEGMENT_HEADER_LEN as usize;
        loop {
            let mut records = Records::from_offset(bytes, offset);
            for (at, rec) in &mut records {
                self.record(Loc::new(id, at as u64), rec, path);
            }
            let Some((at, e)) = records.stopped() else {
                break;
            };
            let role = match newest {
                true => Role::Newest {
                    version: record::segment_version(bytes),
                    file_id,
                    seed: self.seed.as_ref(),
                },
                false => Role::Sealed,
            };
            match tail::classify(bytes, *at, e, role) {
                Stop::Torn { reason } => {
                    self.report.torn_tail = Some(Damage {
                        path: path.to_owned(),
                        offset: *at as u64,
                        reason,
                    });
                    break;
                }
                Stop::Damaged { reason, next } => {
                    let reason = match next {
                        Some(next) => {
                            format!("{reason} (skipped to the next intact record at {next})")
                        }
                        None => format!("{reason}; nothing intact follows"),
                    };
                    self.damage(path, *at as u64, reason);
                    match next {
                        Some(next) => offset = next,
                        None => break,
                    }
                }
            }
        }
        self.done += bytes.len() as u64;
        (self.progress)(self.done, self.total);
    }

    /// Compares a sealed segment's hint file, if it has one, with the hint its records make under `hasher`
    /// (the store's; `Err` says why there is none: then no hint can be used, since open makes a new seed).
    fn check_hint(
        &mut self,
        file_id: u32,
        segment: &[u8],
        hint_path: &Path,
        hasher: &std::result::Result<KeyHasher, String>,
        named: Option<u32>,
    ) -> Result<()> {
        let found = match hint::read(&StdVfs, hint_path) {
            Ok(found) => found,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if named.is_some_and(|id| id != 0) {
                    self.report.hint_problems.push(Damage {
                        path: hint_path.to_owned(),
                        offset: 0,
                        reason: format!(
                            "missing, though {} names it; open scans the segment instead",
                            manifest::MANIFEST_FILE
                        ),
                    });
                }
                return Ok(());
            }
            Err(e) => return Err(Error::io("read hint file", hint_path, e)),
        };
        self.report.hint_files += 1;
        if named == Some(0) {
            self.report.hint_problems.push(Damage {
                path: hint_path.to_owned(),
                offset: 0,
                reason: format!(
                    "not named in {}: open removes it and writes a new one",
                    manifest::MANIFEST_FILE
                ),
            });
            return Ok(());
        }
        let hasher = match hasher {
            Ok(hasher) => hasher,
            Err(reason) => {
                self.report.hint_problems.push(Damage {
                    path: hint_path.to_owned(),
                    offset: 0,
                    reason: format!(
                        "{reason}: open makes a new hash seed and scans the segment instead"
                    ),
                });
                return Ok(());
            }
        };
        // A damaged segment is reported as such; its hint cannot be judged against it.
        let Ok(expected) = hint::of_segment(segment, file_id, hasher) else {
            return Ok(());
        };
        if found == expected {
            if let Some(identity) = named
                && hint::identity(&found) != Some(identity)
            {
                self.report.hint_problems.push(Damage {
                    path: hint_path.to_owned(),
                    offset: 44,
                    reason: format!(
                        "not the hint file {} names (put back from a backup?); open ignores it and scans",
                        manifest::MANIFEST_FILE
                    ),
                });
            }
            return Ok(());
        }
        let offset = found
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(found.len().min(expected.len()));
        let reason = match hint::decode(&found) {
            Err(reason) => reason,
            Ok((header, _)) => hint::mismatch(&header, file_id, segment.len() as u64, hasher)
                .unwrap_or_else(|| "its entries differ from the segment's records".to_owned()),
        };
        self.report.hint_problems.push(Damage {
            path: hint_path.to_owned(),
            offset: offset as u64,
            reason: format!("{reason}; open scans the segment instead"),
        });
        Ok(())
    }

    fn record(&mut self, loc: Loc, rec: RecordRef<'_>, path: &Path) {
        if rec.kind == Kind::Sync {
            self.report.sync_points += 1;
            return;
        }
        self.report.records += 1;
        if self.report.records.is_multiple_of(PROGRESS_EVERY) {
            (self.progress)(self.done + loc.offset(), self.total);
        }
        if codec::split_key(rec.key).is_none() {
            return self.damage(path, loc.offset(), "record key is malformed");
        }
        let item = codec::split_key(rec.key).map(|(_, item)| codec::classify_item(item));
        let decoded = match (rec.kind, item) {
            (Kind::Put, Some(codec::Item::Campaign(_))) if codec::decode_key(rec.key).is_some() => {
                codec::decode_value(rec.value).map(drop)
            }
            (Kind::Put, Some(codec::Item::Feature(_))) => {
                codec::decode_feature_record(rec.key, rec.value).map(drop)
            }
            _ => Ok(()),
        };
        if let Err(reason) = decoded {
            self.damage(
                path,
                loc.offset(),
                format!("value does not decode: {reason}"),
            );
        }
        self.newest.insert(
            fingerprint(rec.key),
            Newest {
                loc,
                put: rec.kind == Kind::Put,
                feature: matches!(item, Some(codec::Item::Feature(_))),
                indexed: false,
            },
        );
    }

    /// Compares the engine's index with the newest records found by the scan.
    fn check_index(&mut self, engine: &Engine, segments: &BTreeMap<u32, Arc<Segment>>) {
        let hasher = engine.index.hasher();
        for shard in 0..engine.index.shard_count() {
            for (hash, loc) in engine.index.shard_entries(shard) {
                let path = self.path_of(loc, segments);
                let Some(segment) = segments.get(&loc.segment()) else {
                    self.damage(
                        &path,
                        loc.offset(),
                        "the index points into a missing segment",
                    );
                    continue;
                };
                let read = segment.with_record(loc.offset(), |rec| {
                    let ids = codec::split_key(rec.key).map(|(u, c)| (u.to_vec(), c.to_vec()));
                    (rec.kind, ids, fingerprint(rec.key))
                });
                let (kind, ids, print) = match read {
                    Ok(found) => found,
                    Err(Error::Corrupted { reason, .. }) => {
                        self.damage(
                            &path,
                            loc.offset(),
                            format!("the index points at a damaged record: {reason}"),
                        );
                        continue;
                    }
                    Err(e) => {
                        self.damage(
                            &path,
                            loc.offset(),
                            format!("the indexed record cannot be read: {e}"),
                        );
                        continue;
                    }
                };
                let Some((user_bytes, item)) = ids else {
                    self.damage(
                        &path,
                        loc.offset(),
                        "the index points at a record with a malformed key",
                    );
                    continue;
                };
                let user = String::from_utf8_lossy(&user_bytes);
                let campaign = String::from_utf8_lossy(&item);
                if kind != Kind::Put {
                    self.damage(
                        &path,
                        loc.offset(),
                        format!("the index points at a tombstone of ({user:?}, {campaign:?})"),
                    );
                    continue;
                }
                if hasher.hash(&user_bytes, &item) != hash {
                    self.damage(
                        &path,
                        loc.offset(),
                        format!("the index entry's hash does not match the record's key ({user:?}, {campaign:?})"),
                    );
                    continue;
                }
                match self.newest.get_mut(&print) {
                    Some(newest) if newest.loc == loc => {
                        newest.indexed = true;
                        match newest.feature {
                            true => self.report.feature_records += 1,
                            false => self.report.mappings += 1,
                        }
                    }
                    Some(newest) => {
                        let (seg, off) = (newest.loc.segment(), newest.loc.offset());
                        self.damage(
                            &path,
                            loc.offset(),
                            format!(
                                "the index points at an old record of ({user:?}, {campaign:?}); the newest is in segment {seg} at offset {off}"
                            ),
                        );
                    }
                    None => self.damage(
                        &path,
                        loc.offset(),
                        "the index points at an offset where the scan found no record",
                    ),
                }
            }
        }
        let missing: Vec<Loc> = self
            .newest
            .values()
            .filter(|n| n.put && !n.indexed)
            .map(|n| n.loc)
            .collect();
        let mut missing = missing;
        missing.sort_unstable();
        for loc in missing {
            let ids = segments
                .get(&loc.segment())
                .and_then(|s| {
                    s.with_record(loc.offset(), |rec| {
                        codec::decode_key(rec.key).map(|(u, c)| format!("({u:?}, {c:?})"))
                    })
                    .ok()
                })
                .flatten()
                .unwrap_or_else(|| "a key".to_owned());
            let path = self.path_of(loc, segments);
            self.damage(
                &path,
                loc.offset(),
                format!("the newest record of {ids} is not in the index"),
            );
        }
    }

    fn count_live_without_index(&mut self) {
        let live = self.newest.values().filter(|n| n.put);
        let features = live.clone().filter(|n| n.feature).count() as u64;
        self.report.feature_records = features;
        self.report.mappings = live.count() as u64 - features;
    }
}

/// Verifies an open store's engine. Writers and compaction stand still throughout, so that log and index are
/// compared at one instant; readers do not wait.
pub(crate) fn check_engine(
    engine: &Engine,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport> {
    let _quiet = engine.quiesce();
    let segments = engine.segments().clone();
    let manifest = engine.manifest();
    let total = segments.values().map(|s| s.len()).sum();
    let mut walk = Walk {
        dir: engine.dir.clone(),
        report: VerifyReport {
            index_checked: true,
            ..VerifyReport::default()
        },
        newest: HashMap::new(),
        done: 0,
        total,
        progress,
        // The file the engine loaded its seed from (it never rewrites it while open).
        seed: seed::read(&*engine.vfs, &engine.dir)?.ok(),
    };
    let hasher = Ok(engine.index.hasher().clone());
    let listing = dir::list(&*engine.vfs, &engine.dir)?;
    walk.check_files(&manifest, &listing, |id| segments.get(&id).map(|s| s.len()));
    for entry in &manifest.sealed {
        let Some(segment) = segments.get(&entry.file_id) else {
            continue;
        };
        let contents = segment.contents()?;
        walk.scan_sealed(entry, segment.path(), &contents);
        walk.check_hint(
            entry.file_id,
            &contents,
            &segment.hint_path(),
            &hasher,
            Some(entry.hint),
        )?;
    }
    if let Some(active) = segments.get(&manifest.active) {
        let contents = active.contents()?;
        walk.scan_segment(
            active.id(),
            active.file_id(),
            active.path(),
            &contents,
            true,
        );
    }
    walk.check_index(engine, &segments);
    Ok(walk.report)
}

impl Walk<'_> {
    /// Scans a sealed segment and compares its bytes with what the manifest recorded at sealing.
    fn scan_sealed(&mut self, entry: &manifest::Sealed, path: &Path, bytes: &[u8]) {
        let before = self.report.damage.len();
        self.scan_segment(entry.file_id, entry.file_id, path, bytes, false);
        // Damage already named in this file explains a checksum difference; a length difference is reported by
        // the file check.
        if self.report.damage.len() > before || bytes.len() as u64 != entry.len {
            return;
        }
        if entry.crc != 0 && crc32fast::hash(bytes) != entry.crc {
            self.damage(
                path,
                0,
                format!(
                    "the file's checksum differs from the one {} recorded when it was sealed",
                    manifest::MANIFEST_FILE
                ),
            );
        }
    }

    /// Compares the store's files with the manifest: every file it names must exist with its sealed length, and
    /// no segment file may be there that it does not know. `len_of` gives a named segment's length, if present.
    fn check_files(
        &mut self,
        manifest: &Manifest,
        listing: &dir::Listing,
        len_of: impl Fn(u32) -> Option<u64>,
    ) {
        let dir = self.dir.clone();
        let named =
            |id: u32| id == manifest.active || manifest.sealed.iter().any(|s| s.file_id == id);
        for entry in &manifest.sealed {
            let path = dir.join(dir::segment_file_name(entry.file_id));
            match (
                listing.segments.binary_search(&entry.file_id),
                len_of(entry.file_id),
            ) {
                (Err(_), _) | (_, None) => self.damage(
                    &path,
                    0,
                    format!(
                        "missing: a sealed segment named in {}; the mappings it held are lost",
                        manifest::MANIFEST_FILE
                    ),
                ),
                (Ok(_), Some(len)) if len != entry.len => self.damage(
                    &path,
                    len.min(entry.len),
                    format!(
                        "{len} bytes, {} recorded {} at sealing ({})",
                        manifest::MANIFEST_FILE,
                        entry.len,
                        if len < entry.len {
                            "shortened"
                        } else {
                            "grown"
                        }
                    ),
                ),
                _ => {}
            }
        }
        if listing.segments.binary_search(&manifest.active).is_err() && manifest.active != 0 {
            self.damage(
                &dir.join(dir::segment_file_name(manifest.active)),
                0,
                format!(
                    "missing: the newest segment named in {}; its acknowledged writes are lost",
                    manifest::MANIFEST_FILE
                ),
            );
        }
        for &id in &listing.segments {
            if named(id) || id >= manifest.next_file_id || manifest.retired.contains(&id) {
                continue;
            }
            self.damage(
                &dir.join(dir::segment_file_name(id)),
                0,
                format!(
                    "extra: a segment file {} does not name (from elsewhere or an old backup)",
                    manifest::MANIFEST_FILE
                ),
            );
        }
    }
}

/// Verifies the store in `dir` from its files alone, without opening it (so without cutting a torn tail or
/// building an index): every record of every segment is read and checked, and the files are compared with the
/// manifest. Use it on a store that [`crate::Store::open`] refuses, to list all of its damage rather than the
/// first. Takes the directory's lock, so it fails with [`Error::Locked`] while the store is open.
pub fn verify_dir(dir: impl AsRef<Path>) -> Result<VerifyReport> {
    verify_dir_with_progress(dir, |_, _| {})
}

/// [`verify_dir`], calling `progress(bytes_done, bytes_total)` as it goes.
pub fn verify_dir_with_progress(
    dir: impl AsRef<Path>,
    mut progress: impl FnMut(u64, u64),
) -> Result<VerifyReport> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(Error::NotADirectory {
            path: dir.to_owned(),
        });
    }
    // Shared: other readers may look too, a writer may not open meanwhile; nothing is created.
    let _lock = dir::lock(dir, true)?;
    let vfs = StdVfs;
    let listing = dir::list(&vfs, dir)?;
    let mut total = 0;
    let mut lens = HashMap::new();
    for &id in &listing.segments {
        let path = dir.join(dir::segment_file_name(id));
        let len = std::fs::metadata(&path)
            .map_err(|e| Error::io("read segment length", &path, e))?
            .len();
        lens.insert(id, len);
        total += len;
    }
    let mut walk = Walk {
        dir: dir.to_owned(),
        report: VerifyReport::default(),
        newest: HashMap::new(),
        done: 0,
        total,
        progress: &mut progress,
        seed: None,
    };
    // Read, never made: checking a store writes nothing. The colliding test mode is not known here; a store
    // written in it would have its hints reported as made with another seed.
    let seed_file = seed::read(&vfs, dir)?;
    walk.seed = seed_file.as_ref().ok().copied();
    let hasher = match seed_file {
        Ok(seed) => Ok(KeyHasher::new(seed, false)),
        Err(None) => Err(format!("{} is missing", seed::SEED_FILE)),
        Err(Some(reason)) => Err(format!("{}: {reason}", seed::SEED_FILE)),
    };
    let manifest = match manifest::read(&vfs, dir) {
        Ok(Some(manifest)) => Some(manifest),
        // A store of an earlier version: its segments replay in file-id order.
        Ok(None) => None,
        Err(Error::Corrupted { path, reason, .. }) => {
            walk.damage(&path, 0, reason);
            None
        }
        Err(e) => return Err(e),
    };
    let read = |id: u32| -> Result<(std::path::PathBuf, Vec<u8>)> {
        let path = dir.join(dir::segment_file_name(id));
        let bytes = std::fs::read(&path).map_err(|e| Error::io("read segment", &path, e))?;
        Ok((path, bytes))
    };
    match &manifest {
        Some(manifest) => {
            walk.check_files(manifest, &listing, |id| lens.get(&id).copied());
            for entry in &manifest.sealed {
                if !lens.contains_key(&entry.file_id) {
                    continue;
                }
                let (path, bytes) = read(entry.file_id)?;
                walk.scan_sealed(entry, &path, &bytes);
                let hint_path = dir.join(dir::hint_file_name(entry.file_id));
                walk.check_hint(entry.file_id, &bytes, &hint_path, &hasher, Some(entry.hint))?;
            }
            if lens.contains_key(&manifest.active) {
                let (path, bytes) = read(manifest.active)?;
                walk.scan_segment(manifest.active, manifest.active, &path, &bytes, true);
            }
        }
        None => {
            let last = listing.segments.last().copied();
            for &id in &listing.segments {
                let (path, bytes) = read(id)?;
                walk.scan_segment(id, id, &path, &bytes, Some(id) == last);
                if Some(id) != last {
                    walk.check_hint(
                        id,
                        &bytes,
                        &dir.join(dir::hint_file_name(id)),
                        &hasher,
                        None,
                    )?;
                }
            }
        }
    }
    walk.count_live_without_index();
    Ok(walk.report)
}

#[cfg(test)]
mod tests {
    use crate::Store;
    use crate::durability::Durability;
    use crate::index::Loc;
    use crate::model::CampaignUserMap;
    use crate::options::Options;

    fn store(dir: &std::path::Path) -> Store {
        Store::open_with(dir, Options::default().durability(Durability::Never)).expect("open")
    }

    #[test]
    fn an_index_that_disagrees_with_the_log_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        for v in ["old", "new"] {
            store
                .set(&CampaignUserMap::new("u", "stale", v))
                .expect("set");
        }
        store
            .set(&CampaignUserMap::new("u", "lost", "v"))
            .expect("set");
        let engine = store.engine();
        let hasher = engine.index.hasher().clone();
        let find = |c: &str| {
            let hash = hasher.hash(b"u", c.as_bytes());
            let loc = engine
                .index
                .candidates(hash)
                .iter()
                .next()
                .expect("indexed");
            (hash, loc)
        };
        // Point "stale" back at its first record, and drop "lost" from the index.
        let (hash, newest) = find("stale");
        assert!(
            engine
                .index
                .replace(hash, newest, Loc::new(newest.segment(), 20))
        );
        let (hash, loc) = find("lost");
        assert!(engine.index.remove(hash, loc));
        let report = store.verify().expect("verify");
        let reasons: Vec<&str> = report.damage.iter().map(|d| d.reason.as_str()).collect();
        assert_eq!(report.damage.len(), 3, "{reasons:?}");
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("an old record of (\"u\", \"stale\")")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("newest record of (\"u\", \"stale\") is not in the index"))
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("newest record of (\"u\", \"lost\") is not in the index"))
        );
        assert_eq!(report.damage[0].offset, 20);
    }

    #[test]
    fn an_index_entry_off_a_record_boundary_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        store
            .set(&CampaignUserMap::new("u", "c", "v"))
            .expect("set");
        let engine = store.engine();
        let hash = engine.index.hasher().hash(b"u", b"c");
        let loc = engine
            .index
            .candidates(hash)
            .iter()
            .next()
            .expect("indexed");
        engine
            .index
            .replace(hash, loc, Loc::new(loc.segment(), loc.offset() + 1));
        let report = store.verify().expect("verify");
        assert!(!report.is_clean());
        assert_eq!(report.damage[0].offset, loc.offset() + 1);
    }
}
