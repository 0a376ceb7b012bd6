//! The on-disk record and segment header: pure encoding and decoding, no I/O.
//!
//! ## Format (all integers little-endian; see `docs/FORMAT.md`)
//!
//! Segment header, 20 bytes:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `USSDBSEG` |
//! | 8 | 4 | format version, [`FORMAT_VERSION`] |
//! | 12 | 4 | segment id (equals the id in the file name) |
//! | 16 | 4 | crc32 of bytes 0..16 |
//!
//! Record, 11-byte header then key then value:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | crc32 of bytes 4..end of record |
//! | 4 | 1 | kind: 1 = put, 2 = delete |
//! | 5 | 2 | key length |
//! | 7 | 4 | value length (0 for a delete) |
//! | 11 | key length | key |
//! | … | value length | value |

#![expect(
    clippy::indexing_slicing,
    reason = "the header fields sit at fixed offsets of arrays and slices whose length is checked first"
)]

/// Magic number at the start of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"USSDBSEG";
/// The newest on-disk format version this build writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// The oldest format version this build reads. Version 1 stores have no `MANIFEST`; opening one writes it.
pub(crate) const OLDEST_FORMAT_VERSION: u32 = 1;
/// Size of the segment header in bytes.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 20;
/// Size of a record header in bytes.
pub(crate) const RECORD_HEADER_LEN: usize = 11;
/// Largest encoded key the format holds (two length bytes, user id, campaign key).
pub(crate) const MAX_KEY_LEN: usize = u16::MAX as usize;
/// Largest value a record may carry.
pub(crate) const MAX_RECORD_VALUE_LEN: usize = 1 << 20;

/// What a record does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The key now maps to the record's value.
    Put = 1,
    /// The key is erased (a tombstone).
    Delete = 2,
}

/// A record decoded in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordRef<'a> {
    /// Put or delete.
    pub kind: Kind,
    /// The encoded key.
    pub key: &'a [u8],
    /// The value (empty for a delete).
    pub value: &'a [u8],
}

impl RecordRef<'_> {
    /// Length of the whole record on disk.
    pub(crate) fn len(&self) -> usize {
        RECORD_HEADER_LEN + self.key.len() + self.value.len()
    }
}

impl Kind {
    /// The kind of a stored kind byte.
    pub(crate) fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Put),
            2 => Some(Kind::Delete),
            _ => None,
        }
    }
}

/// Why bytes do not decode as a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Fewer bytes than the header or the lengths it states: the end of a torn write, or the end of the data.
    Short {
        /// How many bytes the record needs, when the header could be read.
        needed: Option<usize>,
    },
    /// The bytes are all there but wrong.
    Invalid(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Short { .. } => f.write_str("record is cut short by the end of the file"),
            DecodeError::Invalid(reason) => f.write_str(reason),
        }
    }
}

/// The records of a segment's bytes, in order, from just after the segment header: the one walk over a segment
/// that open, compaction, hint writing and verify share.
///
/// Yields `(offset, record)` for each intact record. At the first bytes that are not an intact record it stops;
/// [`Records::stopped`] then tells where and why (`None` when the walk reached the end of the bytes exactly).
#[derive(Debug)]
pub(crate) struct Records<'a> {
    bytes: &'a [u8],
    offset: usize,
    stopped: Option<(usize, DecodeError)>,
}

impl<'a> Records<'a> {
    /// A walk over `bytes` (a whole segment, header included) from the first record.
    pub(crate) fn new(bytes: &'a [u8]) -> Records<'a> {
        Records::from_offset(bytes, SEGMENT_HEADER_LEN as usize)
    }

    /// A walk over `bytes` from `offset` (which must be where a record starts).
    pub(crate) fn from_offset(bytes: &'a [u8], offset: usize) -> Records<'a> {
        Records {
            bytes,
            offset,
            stopped: None,
        }
    }

    /// Where the walk stopped short of the end, and why; `None` while it runs or if it ended cleanly.
    pub(crate) fn stopped(&self) -> Option<&(usize, DecodeError)> {
        self.stopped.as_ref()
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = (usize, RecordRef<'a>);

    fn next(&mut self) -> Option<(usize, RecordRef<'a>)> {
        if self.stopped.is_some() {
            return None;
        }
        let rest = self.bytes.get(self.offset..).filter(|r| !r.is_empty())?;
        match decode(rest) {
            Ok(rec) => {
                let at = self.offset;
                self.offset += rec.len();
                Some((at, rec))
            }
            Err(e) => {
                self.stopped = Some((self.offset, e));
                None
            }
        }
    }
}

/// The first offset at or after `from` where an intact record starts, if any.
pub(crate) fn next_intact_record(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len()).find(|&at| bytes.get(at..).is_some_and(|rest| decode(rest).is_ok()))
}

/// Appends the encoding of one record to `out`.
///
/// The caller has checked the lengths against [`MAX_KEY_LEN`] and [`MAX_RECORD_VALUE_LEN`].
pub(crate) fn encode(out: &mut Vec<u8>, kind: Kind, key: &[u8], value: &[u8]) {
    debug_assert!(key.len() <= MAX_KEY_LEN && value.len() <= MAX_RECORD_VALUE_LEN);
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(kind as u8);
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// A record header, decoded and checked for plausibility (the checksum needs the whole record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// The stored checksum.
    pub crc: u32,
    /// Put or delete.
    pub kind: Kind,
    /// Key length.
    pub key_len: usize,
    /// Value length.
    pub value_len: usize,
}

impl Header {
    /// Length of the whole record on disk.
    pub(crate) fn len(&self) -> usize {
        RECORD_HEADER_LEN + self.key_len + self.value_len
    }
}

/// Decodes the record at the start of `bytes`, checking lengths, kind and checksum.
pub(crate) fn decode(bytes: &[u8]) -> Result<RecordRef<'_>, DecodeError> {
    let Header {
        crc: stored_crc,
        kind,
        key_len,
        value_len,
    } = decode_header(bytes)?;
    let total = RECORD_HEADER_LEN + key_len + value_len;
    let Some(record) = bytes.get(..total) else {
        return Err(DecodeError::Short {
            needed: Some(total),
        });
    };
    let crc = crc32fast::hash(&record[4..]);
    if crc != stored_crc {
        return Err(DecodeError::Invalid(format!(
            "checksum mismatch: stored {stored_crc:#010x}, computed {crc:#010x}"
        )));
    }
    let key = &record[RECORD_HEADER_LEN..RECORD_HEADER_LEN + key_len];
    let value = &record[RECORD_HEADER_LEN + key_len..];
    Ok(RecordRef { kind, key, value })
}

/// Decodes and checks the 11-byte header at the start of `bytes` (kind, plausible lengths); not the checksum.
pub(crate) fn decode_header(bytes: &[u8]) -> Result<Header, DecodeError> {
    let Some(header) = bytes.get(..RECORD_HEADER_LEN) else {
        return Err(DecodeError::Short { needed: None });
    };
    let stored_crc = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let kind = match header[4] {
        1 => Kind::Put,
        2 => Kind::Delete,
        other => return Err(DecodeError::Invalid(format!("unknown record kind {other}"))),
    };
    let key_len = u16::from_le_bytes([header[5], header[6]]) as usize;
    let value_len = u32::from_le_bytes([header[7], header[8], header[9], header[10]]) as usize;
    if key_len < 3 {
        return Err(DecodeError::Invalid(format!(
            "key length {key_len} is below the minimum of 3"
        )));
    }
    if value_len > MAX_RECORD_VALUE_LEN {
        return Err(DecodeError::Invalid(format!(
            "value length {value_len} exceeds the limit of {MAX_RECORD_VALUE_LEN}"
        )));
    }
    if kind == Kind::Delete && value_len != 0 {
        return Err(DecodeError::Invalid(format!(
            "delete record with a {value_len}-byte value"
        )));
    }
    Ok(Header {
        crc: stored_crc,
        kind,
        key_len,
        value_len,
    })
}

/// The 20-byte header of segment `id`.
pub(crate) fn segment_header(id: u32) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&id.to_le_bytes());
    let crc = crc32fast::hash(&h[..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a segment header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Fewer than 20 bytes.
    Short,
    /// Not a segment file.
    BadMagic,
    /// Written by a newer format.
    Version(u32),
    /// The header's checksum or id is wrong.
    Invalid(String),
}

/// The format version a sound segment header states (call after [`decode_segment_header`] accepted it).
pub(crate) fn segment_version(header: &[u8]) -> u32 {
    header
        .get(8..12)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// Checks a segment header and returns the segment id it names.
pub(crate) fn decode_segment_header(bytes: &[u8]) -> Result<u32, HeaderError> {
    let Some(h) = bytes.get(..SEGMENT_HEADER_LEN as usize) else {
        return Err(HeaderError::Short);
    };
    if h[..8] != SEGMENT_MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let stored_crc = u32::from_le_bytes([h[16], h[17], h[18], h[19]]);
    let crc = crc32fast::hash(&h[..16]);
    if crc != stored_crc {
        return Err(HeaderError::Invalid(format!(
            "header checksum mismatch: stored {stored_crc:#010x}, computed {crc:#010x}"
        )));
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(HeaderError::Version(version));
    }
    Ok(u32::from_le_bytes([h[12], h[13], h[14], h[15]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_record_bytes() {
        let mut out = Vec::new();
        encode(&mut out, Kind::Put, b"\x01\x00uc", b"v");
        assert_eq!(
            out,
            [
                0xa7, 0x82, 0x3e, 0xdf, 1, 4, 0, 1, 0, 0, 0, 1, 0, b'u', b'c', b'v'
            ],
            "the record encoding is frozen: a change here breaks every existing store"
        );
        let rec = decode(&out).expect("round trip");
        assert_eq!(
            rec,
            RecordRef {
                kind: Kind::Put,
                key: b"\x01\x00uc",
                value: b"v"
            }
        );
        assert_eq!(rec.len(), out.len());
    }

    #[test]
    fn golden_segment_header() {
        let h = segment_header(7);
        assert_eq!(&h[..16], b"USSDBSEG\x02\x00\x00\x00\x07\x00\x00\x00");
        assert_eq!(decode_segment_header(&h), Ok(7));
        let with_version = |v: u8| {
            let mut other = h;
            other[8] = v;
            let crc = crc32fast::hash(&other[..16]);
            other[16..].copy_from_slice(&crc.to_le_bytes());
            other
        };
        // Version 1 (before the manifest) is still read; a newer one is refused.
        assert_eq!(decode_segment_header(&with_version(1)), Ok(7));
        assert_eq!(segment_version(&with_version(1)), 1);
        assert_eq!(
            decode_segment_header(&with_version(3)),
            Err(HeaderError::Version(3))
        );
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let mut rec = Vec::new();
        encode(&mut rec, Kind::Put, b"\x02\x00abcamp", b"value bytes");
        for byte in 0..rec.len() {
            for bit in 0..8 {
                let mut bad = rec.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    decode(&bad).is_err(),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_short() {
        let mut rec = Vec::new();
        encode(&mut rec, Kind::Delete, b"\x01\x00ab", b"");
        for cut in 0..rec.len() {
            assert!(
                matches!(decode(&rec[..cut]), Err(DecodeError::Short { .. })),
                "cut at {cut}"
            );
        }
    }
}
