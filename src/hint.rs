//! Hint files: the keys, kinds and record lengths of one sealed segment, so that `open` rebuilds the index without
//! reading values. Encoding and decoding are pure; [`write_tmp`] and [`read`] are the only I/O.
//!
//! A hint is only ever an accelerator: whatever is wrong with one (missing, cut short, a bad checksum, written for
//! other contents of its segment) makes `open` scan the segment instead, with a warning.
//!
//! ## Format (all integers little-endian; see `docs/FORMAT.md`)
//!
//! Header, 40 bytes:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `USSDBHNT` |
//! | 8 | 4 | hint format version, [`HINT_VERSION`] |
//! | 12 | 4 | file id of the segment (equals the id in both file names) |
//! | 16 | 8 | length of the segment file in bytes |
//! | 24 | 4 | the stored crc32 of the segment's last record (0 if it has none) |
//! | 28 | 4 | number of entries |
//! | 32 | 4 | crc32 of the entries (bytes 40..end of file) |
//! | 36 | 4 | crc32 of bytes 0..36 |
//!
//! Then one entry per record of the segment, in file order. A record's offset is not stored: the first record
//! starts right after the 20-byte segment header and each next one where the previous ends, and the lengths must
//! add up to the segment length.
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 1 | record kind: 1 = put, 2 = delete |
//! | 1 | 2 | key length K |
//! | 3 | 4 | value length of the record (its length on disk is 11 + K + this) |
//! | 7 | K | key |

use std::path::Path;

use crate::record::{self, Kind, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::vfs::Vfs;
use crate::{Error, Result};

/// Magic number at the start of every hint file.
pub const HINT_MAGIC: [u8; 8] = *b"USSDBHNT";
/// The hint format version this build writes and reads.
pub const HINT_VERSION: u32 = 1;
/// Size of the hint header in bytes.
pub const HINT_HEADER_LEN: usize = 40;
const ENTRY_HEADER_LEN: usize = 7;

/// One record of a segment, as its hint tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HintEntry<'a> {
    /// Put or delete.
    pub kind: Kind,
    /// The encoded key.
    pub key: &'a [u8],
    /// Offset of the record in the segment.
    pub offset: u64,
    /// Length of the whole record on disk.
    pub len: u64,
}

/// What a hint's header says about its segment; checked against the segment before the hint is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HintHeader {
    /// File id of the segment.
    pub file_id: u32,
    /// Length of the segment file.
    pub segment_len: u64,
    /// Stored crc32 of the segment's last record.
    pub last_crc: u32,
}

/// Builds a hint while records are written or scanned, in file order.
#[derive(Debug)]
pub struct HintBuilder {
    entries: Vec<u8>,
    count: u32,
    segment_len: u64,
    last_crc: u32,
}

impl Default for HintBuilder {
    fn default() -> HintBuilder {
        HintBuilder {
            entries: Vec::new(),
            count: 0,
            segment_len: SEGMENT_HEADER_LEN,
            last_crc: 0,
        }
    }
}

impl HintBuilder {
    /// Adds the next record of the segment; `encoded` is the whole record as stored.
    pub fn push(&mut self, kind: Kind, key: &[u8], encoded: &[u8]) {
        let value_len = encoded.len() - RECORD_HEADER_LEN - key.len();
        self.entries.push(kind as u8);
        self.entries
            .extend_from_slice(&(key.len() as u16).to_le_bytes());
        self.entries
            .extend_from_slice(&(value_len as u32).to_le_bytes());
        self.entries.extend_from_slice(key);
        self.count += 1;
        self.segment_len += encoded.len() as u64;
        self.last_crc = encoded
            .get(..4)
            .map_or(0, |c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    }

    /// The hint file's bytes for segment `file_id`.
    pub fn finish(self, file_id: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(HINT_HEADER_LEN + self.entries.len());
        out.extend_from_slice(&HINT_MAGIC);
        out.extend_from_slice(&HINT_VERSION.to_le_bytes());
        out.extend_from_slice(&file_id.to_le_bytes());
        out.extend_from_slice(&self.segment_len.to_le_bytes());
        out.extend_from_slice(&self.last_crc.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&self.entries).to_le_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&self.entries);
        out
    }
}

/// The hint of a whole segment, from its bytes; fails where a record does not decode.
pub fn of_segment(bytes: &[u8], file_id: u32) -> std::result::Result<Vec<u8>, (u64, String)> {
    let mut builder = HintBuilder::default();
    let mut offset = SEGMENT_HEADER_LEN as usize;
    while let Some(rest) = bytes.get(offset..).filter(|r| !r.is_empty()) {
        let rec = record::decode(rest).map_err(|e| (offset as u64, format!("{e:?}")))?;
        builder.push(rec.kind, rec.key, &rest[..rec.len()]);
        offset += rec.len();
    }
    Ok(builder.finish(file_id))
}

/// Decodes and checks a whole hint file: header, both checksums, every entry, and that the entries cover
/// exactly the segment length the header states. Nothing is returned unless all of it is sound, so a caller
/// never applies half a hint.
pub fn decode(bytes: &[u8]) -> std::result::Result<(HintHeader, Vec<HintEntry<'_>>), String> {
    let Some(h) = bytes.get(..HINT_HEADER_LEN) else {
        return Err(format!(
            "{} bytes is shorter than the {HINT_HEADER_LEN}-byte header",
            bytes.len()
        ));
    };
    let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    if h[..8] != HINT_MAGIC {
        return Err("wrong magic number".into());
    }
    let stored = u32_at(36);
    let computed = crc32fast::hash(&h[..36]);
    if stored != computed {
        return Err(format!(
            "header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    let version = u32_at(8);
    if version != HINT_VERSION {
        return Err(format!(
            "hint format version {version}, this build reads {HINT_VERSION}"
        ));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&h[16..24]);
    let header = HintHeader {
        file_id: u32_at(12),
        segment_len: u64::from_le_bytes(len_bytes),
        last_crc: u32_at(24),
    };
    let count = u32_at(28) as usize;
    let body = &bytes[HINT_HEADER_LEN..];
    let stored = u32_at(32);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(format!(
            "entries checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    let mut entries = Vec::with_capacity(count.min(body.len() / (ENTRY_HEADER_LEN + 3) + 1));
    let mut at = 0usize;
    let mut offset = SEGMENT_HEADER_LEN;
    while at < body.len() {
        let Some(e) = body.get(at..at + ENTRY_HEADER_LEN) else {
            return Err(format!("entry at byte {at} is cut short"));
        };
        let Some(kind) = Kind::from_byte(e[0]) else {
            return Err(format!("entry at byte {at} has unknown kind {}", e[0]));
        };
        let key_len = u16::from_le_bytes([e[1], e[2]]) as usize;
        let value_len = u32::from_le_bytes([e[3], e[4], e[5], e[6]]) as usize;
        if value_len > record::MAX_RECORD_VALUE_LEN || (kind == Kind::Delete && value_len != 0) {
            return Err(format!(
                "entry at byte {at} has an impossible value length {value_len}"
            ));
        }
        let key_start = at + ENTRY_HEADER_LEN;
        let Some(key) = body.get(key_start..key_start + key_len) else {
            return Err(format!("entry at byte {at} is cut short"));
        };
        let len = (RECORD_HEADER_LEN + key_len + value_len) as u64;
        entries.push(HintEntry {
            kind,
            key,
            offset,
            len,
        });
        offset += len;
        at = key_start + key_len;
    }
    if entries.len() != count {
        return Err(format!(
            "{} entries, the header says {count}",
            entries.len()
        ));
    }
    if offset != header.segment_len {
        return Err(format!(
            "entries cover {offset} bytes, the header says the segment has {}",
            header.segment_len
        ));
    }
    Ok((header, entries))
}

/// Writes `bytes` to the new file `tmp` and fsyncs it. The caller renames it into place and fsyncs the directory.
pub fn write_tmp(vfs: &dyn Vfs, tmp: &Path, bytes: &[u8]) -> Result<()> {
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

/// Reads a whole hint file.
pub fn read(vfs: &dyn Vfs, path: &Path) -> std::io::Result<Vec<u8>> {
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

    fn segment() -> Vec<u8> {
        let mut seg = record::segment_header(3).to_vec();
        record::encode(&mut seg, Kind::Put, b"\x01\x00uc", b"value");
        record::encode(&mut seg, Kind::Delete, b"\x01\x00ud", b"");
        record::encode(&mut seg, Kind::Put, b"\x02\x00u1camp", b"v");
        seg
    }

    #[test]
    fn a_hint_round_trips_and_covers_the_segment() {
        let seg = segment();
        let hint = of_segment(&seg, 3).expect("hint");
        assert_eq!(&hint[..8], b"USSDBHNT");
        let (header, entries) = decode(&hint).expect("decodes");
        assert_eq!(header.file_id, 3);
        assert_eq!(header.segment_len, seg.len() as u64);
        let last = entries.last().expect("entries");
        assert_eq!(
            &seg[last.offset as usize..last.offset as usize + 4],
            &header.last_crc.to_le_bytes()
        );
        let kinds: Vec<_> = entries.iter().map(|e| (e.kind, e.key, e.offset)).collect();
        assert_eq!(
            kinds,
            [
                (Kind::Put, &b"\x01\x00uc"[..], 20),
                (Kind::Delete, &b"\x01\x00ud"[..], 40),
                (Kind::Put, b"\x02\x00u1camp", 55)
            ]
        );
        for e in &entries {
            let rec = record::decode(&seg[e.offset as usize..]).expect("record");
            assert_eq!(
                (rec.kind, rec.key, rec.len() as u64),
                (e.kind, e.key, e.len)
            );
        }
    }

    #[test]
    fn every_flipped_bit_and_every_cut_is_refused() {
        let hint = of_segment(&segment(), 3).expect("hint");
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
    fn an_empty_segment_has_an_empty_hint() {
        let seg = record::segment_header(9).to_vec();
        let hint = of_segment(&seg, 9).expect("hint");
        let (header, entries) = decode(&hint).expect("decodes");
        assert_eq!(
            (header.segment_len, header.last_crc, entries.len()),
            (20, 0, 0)
        );
    }
}
