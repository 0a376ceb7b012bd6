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
//! | 4 | 1 | kind: 1 = put, 2 = delete, 3 = sync point |
//! | 5 | 2 | key length (at least 3; 0 for a sync point) |
//! | 7 | 4 | value length (0 for a delete, [`SYNC_PAYLOAD_LEN`] for a sync point) |
//! | 11 | key length | key |
//! | … | value length | value |
//!
//! A sync point (format version 3 on) has no key; its value is a [`SyncPayload`]:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | file id of the segment it sits in |
//! | 4 | 8 | its own offset in that segment |
//! | 12 | 8 | `durable`: a completed fsync of the segment covered its bytes `0..durable` |
//! | 20 | 8 | MAC: SipHash-1-3 under the store's secret seed of `USSDBSYN` and bytes 0..20 (see `tail.rs`) |

#![expect(
    clippy::indexing_slicing,
    reason = "the header fields sit at fixed offsets of arrays and slices whose length is checked first"
)]

/// Magic number at the start of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"USSDBSEG";
/// The newest on-disk format version this build writes and reads. Version 2 added the manifest, version 3 sync
/// points.
pub(crate) const FORMAT_VERSION: u32 = 3;
/// The oldest format version this build reads. Version 1 stores have no `MANIFEST`; opening one writes it.
pub(crate) const OLDEST_FORMAT_VERSION: u32 = 1;
/// The first format version whose segments hold sync points; the newest segment of an older version is judged by
/// the shape of its bytes instead (`tail.rs`).
pub(crate) const SYNC_POINTS_VERSION: u32 = 3;
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
    /// A sync point: no key, a [`SyncPayload`] as value. It says how far an fsync of its segment reached, so that
    /// recovery can tell damage from a torn write by what the store wrote rather than by the shape of bytes.
    Sync = 3,
}

/// A record decoded in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordRef<'a> {
    /// Put, delete or sync point.
    pub kind: Kind,
    /// The encoded key (empty for a sync point).
    pub key: &'a [u8],
    /// The value (empty for a delete, the payload of a sync point).
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
            3 => Some(Kind::Sync),
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

/// Finishes a record built in place: `rec` holds [`RECORD_HEADER_LEN`] bytes of room, then a key of `key_len`
/// bytes, then the value up to its end. Writes the header and the checksum, as [`encode`] would have, so a value
/// can be encoded straight into its record. The caller has checked the lengths as for [`encode`].
#[cfg_attr(
    not(feature = "redis"),
    allow(dead_code, reason = "only the tiers (feature `redis`) use it")
)]
pub(crate) fn finish_in_place(rec: &mut [u8], kind: Kind, key_len: usize) {
    let value_len = rec.len() - RECORD_HEADER_LEN - key_len;
    rec[4] = kind as u8;
    rec[5..7].copy_from_slice(&(key_len as u16).to_le_bytes());
    rec[7..RECORD_HEADER_LEN].copy_from_slice(&(value_len as u32).to_le_bytes());
    let crc = crc32fast::hash(&rec[4..]);
    rec[..4].copy_from_slice(&crc.to_le_bytes());
}

/// A record header, decoded and checked for plausibility (the checksum needs the whole record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// The stored checksum.
    pub crc: u32,
    /// Put, delete or sync point.
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
    let Some(kind) = Kind::from_byte(header[4]) else {
        return Err(DecodeError::Invalid(format!(
            "unknown record kind {}",
            header[4]
        )));
    };
    let key_len = u16::from_le_bytes([header[5], header[6]]) as usize;
    let value_len = u32::from_le_bytes([header[7], header[8], header[9], header[10]]) as usize;
    if kind == Kind::Sync {
        // One fixed shape, so a sync point is found by its header bytes alone and nothing else passes for one.
        if key_len != 0 || value_len != SYNC_PAYLOAD_LEN {
            return Err(DecodeError::Invalid(format!(
                "sync point with a {key_len}-byte key and a {value_len}-byte value (it has none and \
                 {SYNC_PAYLOAD_LEN})"
            )));
        }
        return Ok(Header {
            crc: stored_crc,
            kind,
            key_len,
            value_len,
        });
    }
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

/// Length of a sync point's value.
pub(crate) const SYNC_PAYLOAD_LEN: usize = 28;
/// Length of a whole sync point record.
pub(crate) const SYNC_RECORD_LEN: usize = RECORD_HEADER_LEN + SYNC_PAYLOAD_LEN;
/// The 11 header bytes after the checksum that every sync point has: kind 3, no key, a 28-byte value.
pub(crate) const SYNC_HEADER_TAIL: [u8; 7] = [3, 0, 0, SYNC_PAYLOAD_LEN as u8, 0, 0, 0];

/// The value of a sync point. Its fields are only worth anything once `tail.rs` has checked its MAC: anyone who
/// can choose a stored value can write these bytes, but not the MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SyncPayload {
    /// File id of the segment the sync point was written to.
    pub file_id: u32,
    /// Offset at which it was written.
    pub offset: u64,
    /// A completed fsync of the segment covered its bytes `0..durable`.
    pub durable: u64,
    /// SipHash-1-3 under the store's seed of [`SyncPayload::signed`].
    pub mac: u64,
}

impl SyncPayload {
    /// The bytes the MAC is computed over: a domain tag (so no other hash the store makes with its seed can equal
    /// a MAC), then file id, offset and `durable` as stored.
    pub(crate) fn signed(&self) -> [u8; 28] {
        let mut out = [0u8; 28];
        out[..8].copy_from_slice(b"USSDBSYN");
        out[8..12].copy_from_slice(&self.file_id.to_le_bytes());
        out[12..20].copy_from_slice(&self.offset.to_le_bytes());
        out[20..28].copy_from_slice(&self.durable.to_le_bytes());
        out
    }

    /// The record's value.
    pub(crate) fn encode(&self) -> [u8; SYNC_PAYLOAD_LEN] {
        let mut out = [0u8; SYNC_PAYLOAD_LEN];
        out[..4].copy_from_slice(&self.file_id.to_le_bytes());
        out[4..12].copy_from_slice(&self.offset.to_le_bytes());
        out[12..20].copy_from_slice(&self.durable.to_le_bytes());
        out[20..28].copy_from_slice(&self.mac.to_le_bytes());
        out
    }

    /// The payload of a sync point's value; `None` if it is not [`SYNC_PAYLOAD_LEN`] bytes.
    pub(crate) fn decode(value: &[u8]) -> Option<SyncPayload> {
        let v: &[u8; SYNC_PAYLOAD_LEN] = value.try_into().ok()?;
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v[at..at + 8]);
            u64::from_le_bytes(b)
        };
        Some(SyncPayload {
            file_id: u32::from_le_bytes([v[0], v[1], v[2], v[3]]),
            offset: u64_at(4),
            durable: u64_at(12),
            mac: u64_at(20),
        })
    }
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
    fn a_record_finished_in_place_is_the_encoded_one() {
        let mut encoded = Vec::new();
        encode(&mut encoded, Kind::Put, b"\x01\x00uc", b"value");
        let mut built = vec![0; RECORD_HEADER_LEN];
        built.extend_from_slice(b"\x01\x00uc");
        built.extend_from_slice(b"value");
        finish_in_place(&mut built, Kind::Put, 4);
        assert_eq!(built, encoded);
    }

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
        assert_eq!(&h[..16], b"USSDBSEG\x03\x00\x00\x00\x07\x00\x00\x00");
        assert_eq!(decode_segment_header(&h), Ok(7));
        let with_version = |v: u8| {
            let mut other = h;
            other[8] = v;
            let crc = crc32fast::hash(&other[..16]);
            other[16..].copy_from_slice(&crc.to_le_bytes());
            other
        };
        // Versions 1 (before the manifest) and 2 (before sync points) are still read; a newer one is refused.
        for old in [1, 2] {
            assert_eq!(decode_segment_header(&with_version(old)), Ok(7));
            assert_eq!(segment_version(&with_version(old)), u32::from(old));
        }
        assert_eq!(
            decode_segment_header(&with_version(4)),
            Err(HeaderError::Version(4))
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
    fn golden_sync_point_bytes() {
        let payload = SyncPayload {
            file_id: 7,
            offset: 0x1234,
            durable: 0x1000,
            mac: 0x0102_0304_0506_0708,
        };
        let mut out = Vec::new();
        encode(&mut out, Kind::Sync, &[], &payload.encode());
        assert_eq!(out.len(), SYNC_RECORD_LEN);
        assert_eq!(
            out,
            [
                GOLDEN_SYNC_CRC[0],
                GOLDEN_SYNC_CRC[1],
                GOLDEN_SYNC_CRC[2],
                GOLDEN_SYNC_CRC[3],
                3,
                0,
                0,
                28,
                0,
                0,
                0, // kind, key length, value length
                7,
                0,
                0,
                0, // file id
                0x34,
                0x12,
                0,
                0,
                0,
                0,
                0,
                0, // own offset
                0,
                0x10,
                0,
                0,
                0,
                0,
                0,
                0, // durable
                8,
                7,
                6,
                5,
                4,
                3,
                2,
                1, // MAC
            ],
            "the sync point encoding is frozen: a change here breaks every existing store"
        );
        assert_eq!(out[4..11], SYNC_HEADER_TAIL);
        let rec = decode(&out).expect("round trip");
        assert_eq!(rec.kind, Kind::Sync);
        assert!(rec.key.is_empty());
        assert_eq!(SyncPayload::decode(rec.value), Some(payload));
        assert_eq!(&payload.signed()[..8], b"USSDBSYN");
        assert_eq!(payload.signed()[8..], out[11..31]);
    }

    /// The checksum of the golden sync point above.
    const GOLDEN_SYNC_CRC: [u8; 4] = [0x54, 0x3d, 0x36, 0x89];

    #[test]
    fn a_sync_point_of_another_shape_is_refused() {
        let with = |key: &[u8], value: &[u8]| {
            let mut out = Vec::new();
            encode(&mut out, Kind::Sync, key, value);
            decode(&out).map(|_| ())
        };
        assert!(with(&[], &[0; SYNC_PAYLOAD_LEN]).is_ok());
        for (key, value) in [
            (&b"\x01\x00uc"[..], &[0u8; SYNC_PAYLOAD_LEN][..]),
            (&[][..], &[0u8; SYNC_PAYLOAD_LEN - 1][..]),
            (&[][..], &[0u8; SYNC_PAYLOAD_LEN + 1][..]),
            (&[][..], &[][..]),
        ] {
            assert!(
                matches!(with(key, value), Err(DecodeError::Invalid(_))),
                "key {key:?}, value of {} bytes",
                value.len()
            );
        }
        // Puts and deletes still need a key.
        let mut out = Vec::new();
        encode(&mut out, Kind::Put, &[], &[0; SYNC_PAYLOAD_LEN]);
        assert!(decode(&out).is_err());
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
