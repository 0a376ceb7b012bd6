//! The one judgement of bytes that are not an intact record: a torn write that a crash left at the end of the
//! newest segment (cut off on open), or damage (reported by file and offset). `open` and `verify` both ask
//! [`classify`], so they always agree on the same bytes.
//!
//! Only the newest segment can legitimately end in a torn record: rotation fsyncs a segment before the next one
//! exists. There, bad bytes are a torn write when no intact record follows them, or when the gap before the next
//! intact record has the shape of pages the kernel never wrote back (see [`lost_writeback`]). Anything else is
//! damage.

use crate::record::{self, DecodeError};

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

/// Judges the bytes at `at`, where the walk over `bytes` (a whole segment) stopped with `error`. `newest`: the
/// segment is the newest of the store, the only one a crash can leave torn.
pub(crate) fn classify(bytes: &[u8], at: usize, error: &DecodeError, newest: bool) -> Stop {
    let reason = error.to_string();
    let next = record::next_intact_record(bytes, at + 1);
    if !newest {
        return Stop::Damaged {
            reason: format!("{reason}; this sealed segment cannot hold a torn write"),
            next,
        };
    }
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
/// back when the power went (it wrote a later page first). Bit rot flips bits; it does not zero a page's tail.
/// Without fsyncs (`Periodic`, `Never`) such a hole can precede intact records; with `Immediate`, anything after
/// it was never acknowledged, since the fsync that acknowledges a write covers every page before it.
fn lost_writeback(bytes: &[u8], from: usize, next: usize) -> bool {
    const PAGE: usize = 4096;
    const ZERO_TAIL: usize = 64;
    (from / PAGE + 1..=next / PAGE)
        .map(|page| page * PAGE)
        .filter_map(|boundary| bytes.get(boundary.saturating_sub(ZERO_TAIL)..boundary))
        .any(|tail| tail.iter().all(|&b| b == 0))
}
