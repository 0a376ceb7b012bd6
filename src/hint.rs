//! Hint files: the index hashes, kinds and record lengths of one sealed segment, so that `open` rebuilds the
//! index without reading keys or values. Encoding and decoding are pure; [`write_tmp`] and [`read`] are the only
//! I/O.
//!
//! A hint is only ever an accelerator: whatever is wrong with one (missing, cut short, a bad checksum, written for
//! other contents of its segment, or made with another hash seed) makes `open` scan the segment instead, with a
//! warning.
//!
//! ## Format, version 2 (all integers little-endian; see `docs/FORMAT.md`)
//!
//! Header, 48 bytes:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `USSDBHNT` |
//! | 8 | 4 | hint format version, [`HINT_VERSION`] |
//! | 12 | 4 | file id of the segment (equals the id in both file names) |
//! | 16 | 8 | length of the segment file in bytes |
//! | 24 | 4 | the stored crc32 of the segment's last record (0 if it has none) |
//! | 28 | 4 | number of entries |
//! | 32 | 8 | identity of the hash function (seed and mode) the hashes were made with |
//! | 40 | 4 | crc32 of the entries (bytes 48..end of file) |
//! | 44 | 4 | crc32 of bytes 0..44 |
//!
//! Then one 13-byte entry per record of the segment, in file order. A record's offset is not stored: the first
//! record starts right after the 20-byte segment header and each next one where the previous ends, and the
//! lengths must add up to the segment length (which checks them all at once).
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 1 | record kind: 1 = put, 2 = delete, 3 = sync point |
//! | 1 | 4 | length of the whole record on disk (39 for a sync point) |
//! | 5 | 8 | index hash of the record's key (0 for a sync point, which has no key) |

#![expect(
    clippy::indexing_slicing,
    reason = "the header fields sit at fixed offsets of a slice whose length is checked first, and entries come from chunks_exact"
)]

use std::path::Path;

use crate::codec;
use crate::record::{self, Kind, RECORD_HEADER_LEN, Records, SEGMENT_HEADER_LEN, SYNC_RECORD_LEN};
use crate::seed::KeyHasher;
use crate::vfs::Vfs;
use crate::{Error, Result};

/// Magic number at the start of every hint file.
pub(crate) const HINT_MAGIC: [u8; 8] = *b"USSDBHNT";
/// The hint format version this build writes and reads (version 1 held keys instead of hashes).
pub(crate) const HINT_VERSION: u32 = 2;
/// Size of the hint header in bytes.
pub(crate) const HINT_HEADER_LEN: usize = 48;
/// Size of one entry in bytes.
pub(crate) const HINT_ENTRY_LEN: usize = 13;
/// The shortest record: header and a key of a one-byte user id and a one-byte campaign key.
const MIN_RECORD_LEN: u64 = (RECORD_HEADER_LEN + 4) as u64;
/// The longest record: the longest key and the longest value.
const MAX_RECORD_LEN: u64 =
    (RECORD_HEADER_LEN + u16::MAX as usize + record::MAX_RECORD_VALUE_LEN) as u64;

/// One record of a segment, as its hint tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HintEntry {
    /// Put, delete or sync point.
    pub kind: Kind,
    /// The index hash of the record's key (0 for a sync point).
    pub hash: u64,
    /// Offset of the record in the segment.
    pub offset: u64,
    /// Length of the whole record on disk.
    pub len: u64,
}

/// What a hint's header says about its segment and hashes; checked before the hint is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HintHeader {
    /// File id of the segment.
    pub file_id: u32,
    /// Length of the segment file.
    pub segment_len: u64,
    /// Stored crc32 of the segment's last record.
    pub last_crc: u32,
    /// Number of entries.
    pub count: u32,
    /// [`KeyHasher::identity`] of the hasher that made the hashes.
    pub hasher: u64,
}

/// Builds a hint while records are written or scanned, in file order.
#[derive(Debug)]
pub(crate) struct HintBuilder {
    entries: Vec<u8>,
    count: u32,
    segment_len: u64,
    last_crc: u32,
    hasher: u64,
}

impl HintBuilder {
    /// An empty hint whose hashes are made by `hasher`.
    pub(crate) fn new(hasher: &KeyHasher) -> HintBuilder {
        HintBuilder {
            entries: Vec::new(),
            count: 0,
            segment_len: SEGMENT_HEADER_LEN,
            last_crc: 0,
            hasher: hasher.identity(),
        }
    }

    /// Adds the next record of the segment: its kind, the index hash of its key (from the hasher given to
    /// [`HintBuilder::new`]) and the whole record as stored.
    pub(crate) fn push(&mut self, kind: Kind, hash: u64, encoded: &[u8]) {
        self.entries.push(kind as u8);
        self.entries
            .extend_from_slice(&(encoded.len() as u32).to_le_bytes());
        self.entries.extend_from_slice(&hash.to_le_bytes());
        self.count += 1;
        self.segment_len += encoded.len() as u64;
        self.last_crc = encoded
            .get(..4)
            .map_or(0, |c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    }

    /// The hint file's bytes for segment `file_id`.
    pub(crate) fn finish(self, file_id: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(HINT_HEADER_LEN + self.entries.len());
        out.extend_from_slice(&HINT_MAGIC);
        out.extend_from_slice(&HINT_VERSION.to_le_bytes());
        out.extend_from_slice(&file_id.to_le_bytes());
        out.extend_from_slice(&self.segment_len.to_le_bytes());
        out.extend_from_slice(&self.last_crc.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.hasher.to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&self.entries).to_le_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&self.entries);
        out
    }
}

/// The hint of a whole segment, from its bytes; fails where a record or its key does not decode.
pub(crate) fn of_segment(
    bytes: &[u8],
    file_id: u32,
    hasher: &KeyHasher,
) -> std::result::Result<Vec<u8>, (u64, String)> {
    let mut builder = HintBuilder::new(hasher);
    let mut records = Records::new(bytes);
    for (offset, rec) in &mut records {
        let encoded = bytes.get(offset..offset + rec.len()).unwrap_or_default();
        if rec.kind == Kind::Sync {
            // Entries lie end to end, so a sync point gets one too, with no key to hash.
            builder.push(rec.kind, 0, encoded);
            continue;
        }
        let Some((user_id, item)) = codec::split_key(rec.key) else {
            return Err((offset as u64, "record key is malformed".into()));
        };
        builder.push(rec.kind, hasher.hash(user_id, item), encoded);
    }
    if let Some((offset, e)) = records.stopped() {
        return Err((*offset as u64, e.to_string()));
    }
    Ok(builder.finish(file_id))
}

/// The identity of a hint file: the checksum of its header, which covers the segment it was made for, that
/// segment's length and last record, the hash function and the checksum of the entries. The manifest records it.
pub(crate) fn identity(bytes: &[u8]) -> Option<u32> {
    bytes
        .get(44..48)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .filter(|&crc| crc != 0)
}

/// The one judgement of a sound hint against the segment it names: `Some(reason)` when `header` was written for
/// another segment, another length of it, or another hash function. (Open also compares the last record's
/// checksum; verify compares every entry with the records.)
pub(crate) fn mismatch(
    header: &HintHeader,
    file_id: u32,
    segment_len: u64,
    hasher: &KeyHasher,
) -> Option<String> {
    if header.file_id != file_id {
        return Some(format!("written for segment {}", header.file_id));
    }
    if header.segment_len != segment_len {
        return Some(format!(
            "written for a segment of {} bytes, the segment has {segment_len}",
            header.segment_len
        ));
    }
    if header.hasher != hasher.identity() {
        return Some("made with another hash seed".into());
    }
    None
}

/// Decodes and checks a hint file's header (the first [`HINT_HEADER_LEN`] bytes): magic, version, checksum.
pub(crate) fn decode_header(bytes: &[u8]) -> std::result::Result<HintHeader, String> {
    let Some(h) = bytes.get(..HINT_HEADER_LEN) else {
        return Err(format!(
            "{} bytes is shorter than the {HINT_HEADER_LEN}-byte header",
            bytes.len()
        ));
    };
    let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[at..at + 8]);
        u64::from_le_bytes(b)
    };
    if h[..8] != HINT_MAGIC {
        return Err("wrong magic number".into());
    }
    // Before the checksum: a hint of another version has its checksum elsewhere, and the version is the reason.
    let version = u32_at(8);
    if version != HINT_VERSION {
        return Err(format!(
            "hint format version {version}, this build reads {HINT_VERSION}"
        ));
    }
    let stored = u32_at(44);
    let computed = crc32fast::hash(&h[..44]);
    if stored != computed {
        return Err(format!(
            "header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    Ok(HintHeader {
        file_id: u32_at(12),
        segment_len: u64_at(16),
        last_crc: u32_at(24),
        count: u32_at(28),
        hasher: u64_at(32),
    })
}

/// A checked hint file's entries, decoded as they are walked (a 10M-entry store's hints would take 320 MB as a
/// vector of [`HintEntry`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entries<'a> {
    body: &'a [u8],
    /// Offset of the last entry's record.
    last_offset: u64,
}

impl<'a> Entries<'a> {
    /// How many entries.
    pub(crate) fn len(&self) -> usize {
        self.body.len() / HINT_ENTRY_LEN
    }

    /// The last entry (whose record's checksum the header repeats).
    pub(crate) fn last(&self) -> Option<HintEntry> {
        let start = self.body.len().checked_sub(HINT_ENTRY_LEN)?;
        let (kind, len, hash) = entry_fields(self.body.get(start..)?)?;
        Some(HintEntry {
            kind,
            hash,
            offset: self.last_offset,
            len,
        })
    }

    /// The entries in file order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = HintEntry> + 'a {
        let mut offset = SEGMENT_HEADER_LEN;
        self.body.chunks_exact(HINT_ENTRY_LEN).map_while(move |e| {
            let (kind, len, hash) = entry_fields(e)?;
            let entry = HintEntry {
                kind,
                hash,
                offset,
                len,
            };
            offset += len;
            Some(entry)
        })
    }
}

/// Kind, record length and hash of one encoded entry (`None` only for an unknown kind or a short slice).
fn entry_fields(e: &[u8]) -> Option<(Kind, u64, u64)> {
    let kind = Kind::from_byte(*e.first()?)?;
    let len = u64::from(u32::from_le_bytes(e.get(1..5)?.try_into().ok()?));
    let hash = u64::from_le_bytes(e.get(5..13)?.try_into().ok()?);
    Some((kind, len, hash))
}

/// Checks a whole hint file: header, both checksums, every entry, and that the entries cover exactly the segment
/// length the header states. Nothing is returned unless all of it is sound, so a caller never applies half a
/// hint.
pub(crate) fn check(bytes: &[u8]) -> std::result::Result<(HintHeader, Entries<'_>), String> {
    let header = decode_header(bytes)?;
    let body = &bytes[HINT_HEADER_LEN..];
    let stored = u32::from_le_bytes([bytes[40], bytes[41], bytes[42], bytes[43]]);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(format!(
            "entries checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    let count = header.count as usize;
    if body.len() != count * HINT_ENTRY_LEN {
        return Err(format!(
            "{} bytes of entries, the header says {count} entries of {HINT_ENTRY_LEN}",
            body.len()
        ));
    }
    let mut offset = SEGMENT_HEADER_LEN;
    let mut last_offset = offset;
    for (i, e) in body.chunks_exact(HINT_ENTRY_LEN).enumerate() {
        let Some((kind, len, hash)) = entry_fields(e) else {
            return Err(format!("entry {i} has unknown kind {}", e[0]));
        };
        if !(MIN_RECORD_LEN..=MAX_RECORD_LEN).contains(&len) {
            return Err(format!("entry {i} has an impossible record length {len}"));
        }
        if kind == Kind::Sync && (len != SYNC_RECORD_LEN as u64 || hash != 0) {
            return Err(format!(
                "entry {i} is a sync point of {len} bytes with hash {hash:#x} (they have {SYNC_RECORD_LEN} and 0)"
            ));
        }
        last_offset = offset;
        offset += len;
    }
    if offset != header.segment_len {
        return Err(format!(
            "entries cover {offset} bytes, the header says the segment has {}",
            header.segment_len
        ));
    }
    Ok((header, Entries { body, last_offset }))
}

/// [`check`], with the entries in a vector (for `verify` and the fuzz target, which look at them as a whole).
pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<(HintHeader, Vec<HintEntry>), String> {
    let (header, entries) = check(bytes)?;
    Ok((header, entries.iter().collect()))
}

/// Writes `bytes` to the new file `tmp` and fsyncs it. The caller renames it into place and fsyncs the directory.
pub(crate) fn write_tmp(vfs: &dyn Vfs, tmp: &Path, bytes: &[u8]) -> Result<()> {
    let _ = vfs.remove_file(tmp);
    let file = vfs
        .create_new(tmp)
        .map_err(|e| Error::io("create hint file", tmp, e))?;
    let written = file
        .write_all_at(bytes, 0)
        .and_then(|()| file.sync_data())
        .map_err(|e| Error::io("write hint file", tmp, e));
    if written.is_err() {
        let _ = vfs.remove_file(tmp);
    }
    written
}

/// The number of entries a hint file says it has, from its header alone, or `None` if the header is unsound.
/// Never more than the file's length allows, so a damaged count cannot make a caller reserve without bound.
pub(crate) fn entry_count(vfs: &dyn Vfs, path: &Path) -> Option<u64> {
    let file = vfs.open(path).ok()?;
    let mut bytes = [0u8; HINT_HEADER_LEN];
    let got = file.read_at(&mut bytes, 0).ok()?;
    let header = decode_header(&bytes[..got]).ok()?;
    let room = file.len().ok()?.saturating_sub(HINT_HEADER_LEN as u64) / HINT_ENTRY_LEN as u64;
    Some(u64::from(header.count).min(room))
}

/// Reads a whole hint file.
pub(crate) fn read(vfs: &dyn Vfs, path: &Path) -> std::io::Result<Vec<u8>> {
    let file = vfs.open(path)?;
    let len = usize::try_from(file.len()?).map_err(std::io::Error::other)?;
    let mut bytes = vec![0u8; len];
    let got = file.read_at(&mut bytes, 0)?;
    bytes.truncate(got);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::Seed;

    fn segment() -> Vec<u8> {
        let mut seg = record::segment_header(3).to_vec();
        record::encode(&mut seg, Kind::Put, b"\x01\x00uc", b"value");
        record::encode(&mut seg, Kind::Delete, b"\x01\x00ud", b"");
        record::encode(&mut seg, Kind::Put, b"\x02\x00u1camp", b"v");
        seg
    }

    fn hasher() -> KeyHasher {
        KeyHasher::new(Seed::from_keys(1, 2), false)
    }

    #[test]
    fn a_hint_round_trips_and_covers_the_segment() {
        let seg = segment();
        let hint = of_segment(&seg, 3, &hasher()).expect("hint");
        assert_eq!(&hint[..8], b"USSDBHNT");
        assert_eq!(hint.len(), HINT_HEADER_LEN + 3 * HINT_ENTRY_LEN);
        let (header, entries) = decode(&hint).expect("decodes");
        assert_eq!(header.file_id, 3);
        assert_eq!(header.segment_len, seg.len() as u64);
        assert_eq!(header.hasher, hasher().identity());
        assert_ne!(
            header.hasher,
            KeyHasher::new(Seed::from_keys(1, 3), false).identity()
        );
        assert_ne!(
            header.hasher,
            KeyHasher::new(Seed::from_keys(1, 2), true).identity()
        );
        let last = entries.last().expect("entries");
        assert_eq!(
            &seg[last.offset as usize..last.offset as usize + 4],
            &header.last_crc.to_le_bytes()
        );
        let h = hasher();
        let kinds: Vec<_> = entries.iter().map(|e| (e.kind, e.hash, e.offset)).collect();
        assert_eq!(
            kinds,
            [
                (Kind::Put, h.hash(b"u", b"c"), 20),
                (Kind::Delete, h.hash(b"u", b"d"), 40),
                (Kind::Put, h.hash(b"u1", b"camp"), 55)
            ]
        );
        for e in &entries {
            let rec = record::decode(&seg[e.offset as usize..]).expect("record");
            assert_eq!((rec.kind, rec.len() as u64), (e.kind, e.len));
        }
    }

    #[test]
    fn golden_hint_bytes() {
        let mut seg = record::segment_header(1).to_vec();
        record::encode(&mut seg, Kind::Put, b"\x01\x00uc", b"v");
        let hint = of_segment(&seg, 1, &hasher()).expect("hint");
        let identity = hasher().identity().to_le_bytes();
        let hash = hasher().hash(b"u", b"c").to_le_bytes();
        let mut want = Vec::new();
        want.extend_from_slice(b"USSDBHNT");
        want.extend_from_slice(&[2, 0, 0, 0, 1, 0, 0, 0]);
        want.extend_from_slice(&(20u64 + 16).to_le_bytes());
        want.extend_from_slice(&seg[20..24]);
        want.extend_from_slice(&[1, 0, 0, 0]);
        want.extend_from_slice(&identity);
        let mut entry = vec![1u8, 16, 0, 0, 0];
        entry.extend_from_slice(&hash);
        want.extend_from_slice(&crc32fast::hash(&entry).to_le_bytes());
        want.extend_from_slice(&crc32fast::hash(&want).to_le_bytes());
        want.extend_from_slice(&entry);
        assert_eq!(hint, want);
    }

    #[test]
    fn every_flipped_bit_and_every_cut_is_refused() {
        let hint = of_segment(&segment(), 3, &hasher()).expect("hint");
        for cut in 0..hint.len() {
            assert!(decode(&hint[..cut]).is_err(), "cut at {cut}");
        }
        for byte in 0..hint.len() {
            for bit in 0..8 {
                let mut bad = hint.clone();
                bad[byte] ^= 1 << bit;
                assert!(decode(&bad).is_err(), "flip of bit {bit} in byte {byte}");
            }
        }
    }

    #[test]
    fn a_version_1_hint_is_refused_for_its_version() {
        let mut old = of_segment(&segment(), 3, &hasher()).expect("hint");
        old[8] = 1;
        let reason = decode(&old).expect_err("refused");
        assert!(reason.contains("version 1"), "{reason}");
    }

    #[test]
    fn a_sync_point_gets_an_entry_of_its_own_with_hash_0() {
        let mut seg = segment();
        let at = seg.len() as u64;
        seg.extend_from_slice(&crate::tail::sync_point(&Seed::from_keys(1, 2), 3, at, at));
        record::encode(&mut seg, Kind::Put, b"\x01\x00ue", b"after");
        let hint = of_segment(&seg, 3, &hasher()).expect("hint");
        let (header, entries) = decode(&hint).expect("decodes");
        assert_eq!(header.segment_len, seg.len() as u64);
        let sync = entries[3];
        assert_eq!(
            (sync.kind, sync.hash, sync.offset, sync.len),
            (Kind::Sync, 0, at, SYNC_RECORD_LEN as u64)
        );
        assert_eq!(entries[4].offset, at + SYNC_RECORD_LEN as u64);
        // A sync point entry of another length or with a hash is refused, whatever its checksums say.
        let entry = HINT_HEADER_LEN + 3 * HINT_ENTRY_LEN;
        for (at, byte) in [(entry + 1, 40u8), (entry + 5, 1)] {
            let mut bad = hint.clone();
            bad[at] = byte;
            let crc = crc32fast::hash(&bad[HINT_HEADER_LEN..]);
            bad[40..44].copy_from_slice(&crc.to_le_bytes());
            let crc = crc32fast::hash(&bad[..44]);
            bad[44..48].copy_from_slice(&crc.to_le_bytes());
            let reason = decode(&bad).expect_err("refused");
            assert!(reason.contains("sync point"), "{reason}");
        }
    }

    #[test]
    fn an_empty_segment_has_an_empty_hint() {
        let seg = record::segment_header(9).to_vec();
        let hint = of_segment(&seg, 9, &hasher()).expect("hint");
        let (header, entries) = decode(&hint).expect("decodes");
        assert_eq!(
            (header.segment_len, header.last_crc, entries.len()),
            (20, 0, 0)
        );
    }
}
