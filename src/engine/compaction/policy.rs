//! Which sealed segments to rewrite: a pure function of their sizes, so it can be tested and tuned alone.

use std::ops::Range;

/// A sealed segment's sizes, as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct SegmentSize {
    /// Bytes in the file.
    pub(super) len: u64,
    /// Bytes of records that no longer hold a live version.
    pub(super) dead: u64,
    /// Compacting it alone was already found to reclaim nothing at this dead count.
    pub(super) futile: bool,
}

/// A sealed segment whose live bytes are under this fraction of the segment size is merged with its neighbours
/// even when it has few dead bytes, so compaction outputs do not pile up as many small files.
const SMALL_FRACTION: u64 = 4;

/// Runs worth compacting among `sealed` (in replay order), as index ranges: adjacent segments that pass
/// `threshold` (dead bytes over size) or are small, each run's live bytes within one `segment_size`. A run is
/// worth rewriting if one of its segments passed the threshold, or if it merges several files.
pub(super) fn pick_runs(
    sealed: &[SegmentSize],
    threshold: f64,
    segment_size: u64,
) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut over_seen = false;
    let mut live_sum = 0u64;
    let mut flush = |start: usize, end: usize, over_seen: bool| {
        if over_seen || end - start >= 2 {
            runs.push(start..end);
        }
    };
    for (i, segment) in sealed.iter().enumerate() {
        let live = segment.len.saturating_sub(segment.dead);
        // Tombstones that had to stay may go once their segment is the oldest: try it again then.
        let futile = segment.futile && i > 0;
        let over =
            segment.dead > 0 && segment.dead as f64 >= threshold * segment.len as f64 && !futile;
        let small = live < segment_size / SMALL_FRACTION;
        if !(over || small) {
            flush(start, i, over_seen);
            (start, over_seen, live_sum) = (i + 1, false, 0);
            continue;
        }
        if i > start && live_sum + live > segment_size {
            flush(start, i, over_seen);
            (start, over_seen, live_sum) = (i, false, 0);
        }
        live_sum += live;
        over_seen |= over;
    }
    flush(start, sealed.len(), over_seen);
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(len: u64, dead: u64) -> SegmentSize {
        SegmentSize {
            len,
            dead,
            futile: false,
        }
    }

    #[test]
    fn full_live_segments_are_left_alone_and_dead_ones_are_picked() {
        let mib = 1 << 20;
        let sealed = [seg(mib, 0), seg(mib, mib * 3 / 4), seg(mib, 0)];
        assert_eq!(pick_runs(&sealed, 0.5, mib), vec![1..2]);
        assert!(pick_runs(&sealed, 0.9, mib).is_empty());
    }

    #[test]
    fn small_neighbours_merge_within_one_segment_of_live_bytes() {
        let mib = 1 << 20;
        let small = seg(mib / 8, 0);
        let sealed = [small; 10];
        // 8 small ones fill one segment; the last two make a run of their own.
        assert_eq!(pick_runs(&sealed, 0.5, mib), vec![0..8, 8..10]);
        // A single small segment with nothing dead is not worth a rewrite.
        assert!(pick_runs(&[small], 0.5, mib).is_empty());
    }

    #[test]
    fn a_futile_segment_is_retried_only_when_oldest() {
        let mib = 1 << 20;
        let futile = SegmentSize {
            futile: true,
            ..seg(mib, mib)
        };
        assert_eq!(pick_runs(&[futile], 0.5, mib), vec![0..1]);
        assert!(pick_runs(&[seg(mib, 0), futile], 0.5, mib).is_empty());
    }
}
