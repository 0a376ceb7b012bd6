//! The one judgement of bytes that are not an intact record: a torn write that a crash left at the end of the
//! newest segment (cut off on open), or damage (reported by file and offset). `open` and `verify` both ask
//! [`classify`], so they always agree on the same bytes.
//!
//! Only the newest segment can legitimately end in a torn record: rotation fsyncs a segment before the next one
//! exists, so every byte of a sealed segment was durable and bad bytes there are damage.
//!
//! In the newest segment the judgement rests on **sync points** (format version 3 on): after each fsync of the
//! active segment the store appends a sync point saying "a completed fsync covered bytes `0..durable` of this
//! file", with a MAC under the store's secret seed over that claim, the segment's file id and the sync point's own
//! offset. A torn write can only lie past everything an fsync covered, so bad bytes at `at` are damage exactly when
//! an authentic sync point anywhere after them proves `durable > at`. Clients choose keys and values, but never
//! see the seed, so no stored value can forge a sync point; and the rule never looks at what the bytes after the
//! stop *look like* (zeros, records), which values can imitate.
//!
//! A segment of an older version has no sync points; its newest segment keeps the rule of those versions (bad
//! bytes are a torn write when no intact record follows them, or when the gap has the shape of pages the kernel
//! never wrote back, see [`lost_writeback`]). Opening such a store seals that segment at once, so it is judged
//! this way only until the first open by this version.

use crate::record::{self, DecodeError, Kind, SYNC_HEADER_TAIL, SYNC_RECORD_LEN, SyncPayload};
use crate::seed::Seed;

/// What the bytes at a point where the record walk stopped are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A torn write: everything from the stop to the end of the file may be cut off.
    Torn {
        /// Why, for the warning.
        reason: String,
    },
    /// Damage: the store must not silently drop what follows.
    Damaged {
        /// What is wrong.
        reason: String,
        /// The next intact record after the damage, if any.
        next: Option<usize>,
    },
}

/// Which segment the bytes are: that decides what may legitimately be wrong with them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role<'a> {
    /// A sealed segment: every byte was fsynced before the next segment existed.
    Sealed,
    /// The newest segment of the store, the only one a crash can leave torn.
    Newest {
        /// The format version in its header.
        version: u32,
        /// The id in its file name (and header), which its sync points name.
        file_id: u32,
        /// The store's seed, which authenticates sync points; `None` when it cannot be read (then no sync point
        /// can be told from a forgery, and none counts).
        seed: Option<&'a Seed>,
    },
}

/// Judges the bytes at `at`, where the walk over `bytes` (a whole segment) stopped with `error`.
pub(crate) fn classify(bytes: &[u8], at: usize, error: &DecodeError, role: Role<'_>) -> Stop {
    let reason = error.to_string();
    // Where a walk over damaged bytes may go on (verify lists all damage); a torn write needs none.
    let next = || record::next_intact_record(bytes, at + 1);
    let (version, file_id, seed) = match role {
        Role::Sealed => {
            return Stop::Damaged {
                reason: format!("{reason}; this sealed segment cannot hold a torn write"),
                next: next(),
            };
        }
        Role::Newest {
            version,
            file_id,
            seed,
        } => (version, file_id, seed),
    };
    if version < record::SYNC_POINTS_VERSION {
        return classify_by_shape(bytes, at, reason, next());
    }
    match proven_durable(bytes, at, file_id, seed) {
        Some(proof) if (at as u64) < proof.durable => Stop::Damaged {
            reason: format!(
                "{reason}; the sync point at offset {} shows that a completed fsync covered the first {} bytes \
                 of this file, so this is damage to durable data, not a torn write",
                proof.at, proof.durable
            ),
            next: next(),
        },
        Some(proof) => Stop::Torn {
            reason: format!(
                "{reason}; no fsync is known to have covered these {} bytes (sync points prove the first {}), so \
                 they are a torn write",
                bytes.len().saturating_sub(at),
                proof.durable
            ),
        },
        None => Stop::Torn {
            reason: format!(
                "{reason}; no sync point after it proves an fsync covered it, so the last {} bytes are a torn \
                 write",
                bytes.len().saturating_sub(at)
            ),
        },
    }
}

/// An authentic sync point: where it sits and how far the fsync it reports reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proof {
    /// Offset of the sync point.
    pub at: usize,
    /// A completed fsync covered bytes `0..durable`.
    pub durable: u64,
}

/// The authentic sync point after `at` (the stop) with the largest `durable`, if any.
///
/// Every byte offset past the stop is tried, since the record boundaries past damage are unknown. Sync points
/// before the stop need no search: one at offset `s` claims at most `s` (checked in [`authentic`]), which cannot
/// cover a stop after it.
pub(crate) fn proven_durable(
    bytes: &[u8],
    at: usize,
    file_id: u32,
    seed: Option<&Seed>,
) -> Option<Proof> {
    let seed = seed?;
    let mut best: Option<Proof> = None;
    // The 7 fixed header bytes sit 4 bytes into a sync point: look for them first, check the rest only there.
    let from = at + 1 + 4;
    let tail = bytes.get(from..)?;
    for (i, window) in tail.windows(SYNC_HEADER_TAIL.len()).enumerate() {
        if window != SYNC_HEADER_TAIL {
            continue;
        }
        let start = from + i - 4;
        if let Some(durable) = authentic(bytes, start, file_id, seed)
            && best.is_none_or(|b| durable > b.durable)
        {
            best = Some(Proof { at: start, durable });
        }
    }
    best
}

/// The `durable` claim of the sync point at `start`, if one the store wrote into this segment sits there: an
/// intact record of kind sync whose MAC checks under `seed`, that names this file and its own offset, and whose
/// claim does not reach past itself.
pub(crate) fn authentic(bytes: &[u8], start: usize, file_id: u32, seed: &Seed) -> Option<u64> {
    let rec = record::decode(bytes.get(start..)?).ok()?;
    if rec.kind != Kind::Sync {
        return None;
    }
    let payload = SyncPayload::decode(rec.value)?;
    let sound = payload.mac == seed.hash(&payload.signed())
        && payload.file_id == file_id
        && payload.offset == start as u64
        && payload.durable <= payload.offset;
    sound.then_some(payload.durable)
}

/// The sync point to append at `offset` of segment `file_id` after an fsync that covered its bytes
/// `0..durable`.
pub(crate) fn sync_point(
    seed: &Seed,
    file_id: u32,
    offset: u64,
    durable: u64,
) -> [u8; SYNC_RECORD_LEN] {
    let mut payload = SyncPayload {
        file_id,
        offset,
        durable,
        mac: 0,
    };
    payload.mac = seed.hash(&payload.signed());
    let mut out = Vec::with_capacity(SYNC_RECORD_LEN);
    record::encode(&mut out, Kind::Sync, &[], &payload.encode());
    let mut rec = [0u8; SYNC_RECORD_LEN];
    rec.copy_from_slice(&out);
    rec
}

/// The rule for the newest segment of a version without sync points: bad bytes are a torn write when no intact
/// record follows them, or when the gap before the next one has the shape of lost write-back.
fn classify_by_shape(bytes: &[u8], at: usize, reason: String, next: Option<usize>) -> Stop {
    match next {
        None => Stop::Torn {
            reason: format!(
                "{reason}; the last {} bytes are a torn write",
                bytes.len().saturating_sub(at)
            ),
        },
        Some(next) if lost_writeback(bytes, at, next) => Stop::Torn {
            reason: format!(
                "{reason}; the page cache wrote back later pages but not this one before a power loss"
            ),
        },
        Some(next) => Stop::Damaged {
            reason: format!(
                "{reason}; an intact record follows at offset {next}, so this is damage, not a torn write"
            ),
            next: Some(next),
        },
    }
}

/// True when the damage at `from`, followed by an intact record at `next`, has the shape of writes that never
/// reached the disk: some 4 KiB page between them ends in zeros, as a page does that the kernel had not written
/// back when the power went (it wrote a later page first). Only for segments without sync points: values can hold
/// zeros and whole records, so this shape is no proof (sync points are).
fn lost_writeback(bytes: &[u8], from: usize, next: usize) -> bool {
    const PAGE: usize = 4096;
    const ZERO_TAIL: usize = 64;
    (from / PAGE + 1..=next / PAGE)
        .map(|page| page * PAGE)
        .filter_map(|boundary| bytes.get(boundary.saturating_sub(ZERO_TAIL)..boundary))
        .any(|tail| tail.iter().all(|&b| b == 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{SEGMENT_HEADER_LEN, segment_header};

    fn seed() -> Seed {
        Seed::from_keys(0x0123_4567_89ab_cdef, 42)
    }

    /// A segment of `file_id`: header, `records` puts of a value holding `value`, and after each a sync point
    /// claiming everything before it.
    fn segment(file_id: u32, value: &[u8], records: usize) -> Vec<u8> {
        let mut bytes = segment_header(file_id).to_vec();
        for _ in 0..records {
            record::encode(&mut bytes, Kind::Put, b"\x01\x00uc", value);
            let durable = bytes.len() as u64;
            bytes.extend_from_slice(&sync_point(&seed(), file_id, durable, durable));
        }
        bytes
    }

    fn newest<'a>(seed: Option<&'a Seed>) -> Role<'a> {
        Role::Newest {
            version: record::FORMAT_VERSION,
            file_id: 5,
            seed,
        }
    }

    fn judge(bytes: &[u8], at: usize, seed: Option<&Seed>) -> Stop {
        let error = record::decode(bytes.get(at..).unwrap_or_default())
            .err()
            .unwrap_or(DecodeError::Short { needed: None });
        classify(bytes, at, &error, newest(seed))
    }

    #[test]
    fn damage_before_a_sync_point_that_covers_it_is_damage() {
        let s = seed();
        let mut bytes = segment(5, &[0; 100], 3);
        let at = SEGMENT_HEADER_LEN as usize;
        bytes[at + 50] ^= 1;
        assert!(
            matches!(judge(&bytes, at, Some(&s)), Stop::Damaged { ref reason, .. } if reason.contains("sync point")),
            "{:?}",
            judge(&bytes, at, Some(&s))
        );
        // Without the seed no sync point can be trusted: the stop reads as a torn write.
        assert!(matches!(judge(&bytes, at, None), Stop::Torn { .. }));
    }

    #[test]
    fn a_sync_point_counts_only_in_its_own_file_at_its_own_offset_under_the_seed() {
        let s = seed();
        let bytes = segment(5, b"value", 1);
        let at = bytes.len() - SYNC_RECORD_LEN;
        assert_eq!(authentic(&bytes, at, 5, &s), Some(at as u64));
        assert_eq!(authentic(&bytes, at, 6, &s), None, "another file");
        assert_eq!(
            authentic(&bytes, at, 5, &Seed::from_keys(1, 2)),
            None,
            "another seed"
        );
        // Moved by one byte: its own offset no longer matches where it sits.
        let mut moved = bytes[..at].to_vec();
        moved.push(0);
        moved.extend_from_slice(&bytes[at..]);
        assert_eq!(authentic(&moved, at + 1, 5, &s), None);
        // A claim past itself is refused even with a good MAC.
        let mut over = bytes[..at].to_vec();
        over.extend_from_slice(&sync_point(&s, 5, at as u64, at as u64 + 1));
        assert_eq!(authentic(&over, at, 5, &s), None);
        // Every flipped bit of the sync point makes it worthless.
        for byte in at..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[byte] ^= 1 << bit;
                assert_eq!(authentic(&bad, at, 5, &s), None, "bit {bit} of byte {byte}");
            }
        }
    }

    #[test]
    fn a_forged_sync_point_in_a_value_proves_nothing() {
        let s = seed();
        let mut bytes = segment_header(5).to_vec();
        let at = bytes.len();
        // A value holding what a sync point at its own position would look like, with a MAC under another seed.
        let value_at = at + record::RECORD_HEADER_LEN + 4;
        let forged = sync_point(&Seed::from_keys(9, 9), 5, value_at as u64, value_at as u64);
        record::encode(&mut bytes, Kind::Put, b"\x01\x00uc", &forged);
        assert_eq!(&bytes[value_at..value_at + SYNC_RECORD_LEN], &forged[..]);
        bytes.truncate(bytes.len() - 1);
        assert_eq!(proven_durable(&bytes, at, 5, Some(&s)), None);
        assert!(matches!(judge(&bytes, at, Some(&s)), Stop::Torn { .. }));
    }

    #[test]
    fn older_versions_keep_the_rule_of_their_time() {
        // A torn record followed by an intact one: damage by the old rule; sync points play no part.
        let mut bytes = segment_header(5).to_vec();
        record::encode(&mut bytes, Kind::Put, b"\x01\x00uc", b"v");
        let at = bytes.len();
        record::encode(&mut bytes, Kind::Put, b"\x01\x00uc", b"torn");
        bytes[at + 12] ^= 1;
        record::encode(&mut bytes, Kind::Put, b"\x01\x00uc", b"after");
        let error = DecodeError::Invalid("checksum mismatch".into());
        let old = Role::Newest {
            version: 2,
            file_id: 5,
            seed: Some(&seed()),
        };
        assert!(matches!(
            classify(&bytes, at, &error, old),
            Stop::Damaged { .. }
        ));
        assert!(matches!(
            classify(&bytes, at, &error, newest(Some(&seed()))),
            Stop::Torn { .. }
        ));
        assert!(matches!(
            classify(&bytes, at, &error, Role::Sealed),
            Stop::Damaged { .. }
        ));
    }
}
