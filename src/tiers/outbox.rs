//! The in-memory half of a [`Tiered`](super::Tiered) store's outbox: which mappings wait for Redis, in the order
//! they first changed.
//!
//! Two parts. The [`Queue`] is the `set` path's: every marked write appends its number and ids to it, under the
//! local store's write lock, so its order is the log's; it copies the ids into one growing buffer, so once the
//! buffers have grown a set allocates nothing here and hashes nothing. The [`Outbox`] is the shipper's: it takes
//! the queue's entries in bulk (swapping buffers) and keeps one entry per mapping, in a table looked up by
//! borrowed ids with the tier's keyed hash, and an order queue that only appends (an entry whose mapping left
//! the table, or was queued again under a newer number, is stale and dropped when it reaches the front or when
//! stale entries outnumber live ones).

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What a mapping's outbox mark (its `metaData`) starts with: the key `ussdbOutbox`.
pub(super) const MARK_PREFIX: &str = "{\"ussdbOutbox\":";

/// The mark of number `seq`: `{"ussdbOutbox":N}`.
pub(super) fn mark_text(seq: u64) -> String {
    format!("{MARK_PREFIX}{seq}}}")
}

/// Turns `mark`, the mark of `seq - 1`, into the mark of `seq`, in place: every set writes a mark, and the next
/// number's text differs from the last one's in its last digits only (a carry changes more). Falls back to
/// writing the text anew if `mark` is not what it should be.
fn bump_mark(mark: &mut String, seq: u64) {
    if mark.pop() == Some('}') {
        let mut zeros = 0;
        loop {
            match mark.pop() {
                Some('9') => zeros += 1,
                Some(d @ '0'..='8') => {
                    mark.push(char::from(d as u8 + 1));
                    break;
                }
                Some(':') => {
                    mark.push_str(":1");
                    break;
                }
                _ => {
                    *mark = mark_text(seq);
                    return;
                }
            }
        }
        for _ in 0..zeros {
            mark.push('0');
        }
        mark.push('}');
    } else {
        *mark = mark_text(seq);
    }
}

/// A queued mapping's ids (one allocation: the user id and the campaign key end to end) and the tier's hash of
/// them; clones share the text.
#[derive(Clone)]
pub(super) struct OutKey {
    hash: u64,
    /// Where the campaign key starts in `ids`.
    split: usize,
    ids: Arc<[u8]>,
}

impl OutKey {
    pub(super) fn new(hash: u64, user_id: &str, campaign_key: &str) -> OutKey {
        // A chain of two slices has an exact length, so the shared buffer is allocated once.
        let ids: Arc<[u8]> = user_id
            .as_bytes()
            .iter()
            .chain(campaign_key.as_bytes())
            .copied()
            .collect();
        OutKey {
            hash,
            split: user_id.len(),
            ids,
        }
    }

    pub(super) fn hash(&self) -> u64 {
        self.hash
    }

    /// Both halves were `&str`s, so both are UTF-8.
    pub(super) fn user_id(&self) -> &str {
        std::str::from_utf8(self.ids.get(..self.split).unwrap_or_default()).unwrap_or_default()
    }

    pub(super) fn campaign_key(&self) -> &str {
        std::str::from_utf8(self.ids.get(self.split..).unwrap_or_default()).unwrap_or_default()
    }
}

impl PartialEq for OutKey {
    fn eq(&self, other: &Self) -> bool {
        self.split == other.split && self.ids == other.ids
    }
}

impl Eq for OutKey {}

/// The ids of a mapping with their hash, owned or borrowed: what the table is looked up by, so a lookup copies
/// nothing.
trait Ids {
    fn hash(&self) -> u64;
    fn ids(&self) -> (&[u8], &[u8]);
}

impl Ids for OutKey {
    fn hash(&self) -> u64 {
        OutKey::hash(self)
    }
    fn ids(&self) -> (&[u8], &[u8]) {
        self.ids.split_at_checked(self.split).unwrap_or_default()
    }
}

impl Ids for (u64, &str, &str) {
    fn hash(&self) -> u64 {
        self.0
    }
    fn ids(&self) -> (&[u8], &[u8]) {
        (self.1.as_bytes(), self.2.as_bytes())
    }
}

/// Hands the precomputed hash through: keys are hashed by the tier's keyed hash already.
#[derive(Default)]
pub(super) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; anything else still hashes deterministically.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl<'a> Borrow<dyn Ids + 'a> for OutKey {
    fn borrow(&self) -> &(dyn Ids + 'a) {
        self
    }
}

impl Hash for dyn Ids + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(Ids::hash(self));
    }
}

impl PartialEq for dyn Ids + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.ids() == other.ids()
    }
}

impl Eq for dyn Ids + '_ {}

// Must hash as `dyn Ids` does, for borrowed lookups to find owned keys.
impl Hash for OutKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(OutKey::hash(self));
    }
}

pub(super) struct Pending {
    /// The number the mapping waits under (its first change's, or its last requeue's): its place in the order.
    pub(super) seq: u64,
    /// The highest number of the mapping's writes taken from the queue: a shipment's answer takes the mapping out
    /// only if it did not grow meanwhile.
    pub(super) mark: u64,
    pub(super) since: Instant,
}

/// The `set` path's half of the outbox: marked writes since the shipper last took them, in number order.
#[derive(Default)]
pub(super) struct Queue {
    /// The number the next marked write gets.
    next_seq: u64,
    /// The text of the mark of `next_seq` (see [`Queue::mark`]), kept up to date as the number grows.
    mark: String,
    /// The ids of the entries, end to end.
    ids: Vec<u8>,
    /// Each entry's number, where its ids start in `ids`, and its user id's length.
    entries: Vec<(u64, usize, usize)>,
    /// When the first of the entries went in.
    since: Option<Instant>,
}

impl Queue {
    /// An empty queue whose next number is `next_seq`.
    pub(super) fn new(next_seq: u64) -> Queue {
        Queue {
            next_seq,
            mark: mark_text(next_seq),
            ..Queue::default()
        }
    }

    /// The `metaData` of a mapping waiting for Redis under the next number: `{"ussdbOutbox":N}`.
    pub(super) fn mark(&self) -> &str {
        &self.mark
    }

    /// Gives the mapping of these ids the next number; returns it and whether the queue was empty before.
    pub(super) fn push(&mut self, user_id: &str, campaign_key: &str) -> (u64, bool) {
        let seq = self.next_seq;
        self.next_seq += 1;
        bump_mark(&mut self.mark, self.next_seq);
        let was_empty = self.entries.is_empty();
        if was_empty {
            // One clock read per batch the shipper takes, not per set: the batch's age is its first entry's.
            self.since = Some(Instant::now());
        }
        self.entries.push((seq, self.ids.len(), user_id.len()));
        self.ids.extend_from_slice(user_id.as_bytes());
        self.ids.extend_from_slice(campaign_key.as_bytes());
        (seq, was_empty)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Gives out the next number without an entry (for a mapping moved to the back of the outbox in memory).
    fn skip(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        bump_mark(&mut self.mark, self.next_seq);
        seq
    }

    /// Moves every entry into `into` (emptied first); the buffers are swapped, so both keep their capacity.
    fn take_into(&mut self, into: &mut Queue) {
        into.ids.clear();
        into.entries.clear();
        std::mem::swap(&mut self.ids, &mut into.ids);
        std::mem::swap(&mut self.entries, &mut into.entries);
        into.since = self.since.take();
        into.next_seq = self.next_seq;
    }

    /// The entries: number, user id, campaign key.
    fn iter(&self) -> impl Iterator<Item = (u64, &str, &str)> {
        let ends = self
            .entries
            .iter()
            .skip(1)
            .map(|&(_, start, _)| start)
            .chain(std::iter::once(self.ids.len()));
        self.entries
            .iter()
            .zip(ends)
            .map(|(&(seq, start, user_len), end)| {
                let text = |range: std::ops::Range<usize>| {
                    // Both halves were `&str`s, so both are UTF-8.
                    std::str::from_utf8(self.ids.get(range).unwrap_or_default()).unwrap_or_default()
                };
                (
                    seq,
                    text(start..start + user_len),
                    text(start + user_len..end),
                )
            })
    }
}

/// Mappings waiting to be shipped, in the order they first changed.
#[derive(Default)]
pub(super) struct Outbox {
    pub(super) next_seq: u64,
    /// The watermark last written to the local store.
    pub(super) watermark: u64,
    /// Whether the watermark last written records since when the oldest mapping waits.
    pub(super) since_recorded: bool,
    pending: HashMap<OutKey, Pending, BuildHasherDefault<PassThrough>>,
    /// Sequence numbers ascending; an entry is live while `pending` holds its key with the same number.
    order: VecDeque<(u64, OutKey)>,
    /// The buffers the queue's entries are taken into, kept for their capacity.
    spare: Queue,
}

impl Outbox {
    /// How many mappings wait.
    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The waiting mapping of these ids, if it waits.
    #[cfg(test)]
    fn get(&self, hash: u64, user_id: &str, campaign_key: &str) -> Option<&Pending> {
        self.pending.get(&(hash, user_id, campaign_key) as &dyn Ids)
    }

    /// Takes every entry of `queue` in: a mapping that waits already keeps its place and notes the newer number;
    /// another is queued. `hash` is the tier's hash of a mapping's ids.
    pub(super) fn take_from(&mut self, queue: &Mutex<Queue>, hash: impl Fn(&str, &str) -> u64) {
        self.take(queue, hash, false);
    }

    /// Takes the queue's entries in (as [`Outbox::take_from`]) and moves the mapping `key` to the back of the
    /// order under a new number, if no write newer than `mark` was taken in; true if it moved. The number is
    /// given out while the queue is taken, so every entry still to come has a higher one: the order stays by
    /// number, which the lowest waiting number (and so the watermark) relies on.
    pub(super) fn move_back(
        &mut self,
        queue: &Mutex<Queue>,
        hash: impl Fn(&str, &str) -> u64,
        key: &OutKey,
        mark: u64,
    ) -> bool {
        let seq = self.take(queue, hash, true);
        let Some(p) = self.pending.get_mut(key).filter(|p| p.mark == mark) else {
            return false;
        };
        p.seq = seq;
        self.order.push_back((seq, key.clone()));
        self.tidy();
        true
    }

    /// Takes the queue's entries in; if `skip`, also gives out the queue's next number, with no entry, and
    /// returns it.
    fn take(&mut self, queue: &Mutex<Queue>, hash: impl Fn(&str, &str) -> u64, skip: bool) -> u64 {
        let mut taken = std::mem::take(&mut self.spare);
        let skipped = {
            // Held for a swap of buffers only: writers wait on it under the store's write lock.
            let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.take_into(&mut taken);
            if skip { queue.skip() } else { queue.next_seq }
        };
        self.next_seq = self
            .next_seq
            .max(taken.next_seq)
            .max(skipped + u64::from(skip));
        let since = taken.since.unwrap_or_else(Instant::now);
        for (seq, user_id, campaign_key) in taken.iter() {
            let h = hash(user_id, campaign_key);
            match self
                .pending
                .get_mut(&(h, user_id, campaign_key) as &dyn Ids)
            {
                Some(p) => p.mark = p.mark.max(seq),
                None => self.insert(seq, OutKey::new(h, user_id, campaign_key), since),
            }
        }
        self.spare = taken;
        skipped
    }

    /// Queues `key` under `seq`, which must be above every number in the queue (recovery inserts in order).
    pub(super) fn insert(&mut self, seq: u64, key: OutKey, since: Instant) {
        self.next_seq = self.next_seq.max(seq + 1);
        self.order.push_back((seq, key.clone()));
        self.pending.insert(
            key,
            Pending {
                seq,
                mark: seq,
                since,
            },
        );
    }

    /// Takes the mapping out of the queue (shipped, or nothing left to ship) if no write newer than `mark` was
    /// taken in since; true if it left.
    pub(super) fn remove_if(&mut self, key: &OutKey, mark: u64) -> bool {
        if self.pending.get(key).is_none_or(|p| p.mark != mark) {
            return false;
        }
        self.pending.remove(key);
        self.tidy();
        true
    }

    fn is_live(&self, seq: u64, key: &OutKey) -> bool {
        self.pending.get(key).is_some_and(|p| p.seq == seq)
    }

    /// Drops stale entries at the front, and all of them once they outnumber the live ones.
    fn tidy(&mut self) {
        while let Some((seq, key)) = self.order.front() {
            if self.is_live(*seq, key) {
                break;
            }
            self.order.pop_front();
        }
        if self.order.len() > 2 * self.pending.len() + 64 {
            let pending = &self.pending;
            self.order
                .retain(|(seq, key)| pending.get(key).is_some_and(|p| p.seq == *seq));
        }
    }

    /// The oldest waiting mapping.
    pub(super) fn oldest(&self) -> Option<&Pending> {
        self.order
            .iter()
            .find(|(seq, key)| self.is_live(*seq, key))
            .and_then(|(_, key)| self.pending.get(key))
    }

    /// The lowest number still waiting, or the next one to be given.
    pub(super) fn low(&self) -> u64 {
        self.oldest().map_or(self.next_seq, |p| p.seq)
    }

    /// Up to `n` waiting mappings, oldest first, each with the highest number of its writes taken in.
    pub(super) fn batch(&self, n: usize) -> Vec<(OutKey, u64)> {
        self.order
            .iter()
            .filter_map(|(seq, key)| {
                let p = self.pending.get(key).filter(|p| p.seq == *seq)?;
                Some((key.clone(), p.mark))
            })
            .take(n)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(_: &str, _: &str) -> u64 {
        1
    }

    #[test]
    fn queue_keeps_first_change_order_and_forgets_removed() {
        let (q, mut o) = (Mutex::new(Queue::default()), Outbox::default());
        assert_eq!(q.lock().expect("queue").push("u1", "c"), (0, true));
        assert_eq!(q.lock().expect("queue").push("u2", "camp"), (1, false));
        assert_eq!(q.lock().expect("queue").push("u1", "c"), (2, false));
        o.take_from(&q, h);
        assert_eq!(q.lock().expect("queue").len(), 0);
        assert_eq!(o.len(), 2);
        assert_eq!(o.get(1, "u1", "c").map(|p| (p.seq, p.mark)), Some((0, 2)));
        assert_eq!(o.get(1, "u2", "camp").map(|p| p.mark), Some(1));
        assert_eq!(o.low(), 0);
        let batch: Vec<OutKey> = o.batch(10).into_iter().map(|(k, _)| k).collect();
        assert_eq!(o.batch(10)[0].1, 2);
        assert_eq!(batch[0].user_id(), "u1");
        assert_eq!(batch[1].campaign_key(), "camp");
        assert!(!o.remove_if(&batch[0], 0), "a newer write was taken in");
        assert!(o.remove_if(&batch[0], 2));
        assert!(o.get(1, "u1", "c").is_none());
        assert_eq!(o.low(), 1);
        assert_eq!(q.lock().expect("queue").push("u3", "c"), (3, true));
        o.take_from(&q, h);
        assert!(o.remove_if(&batch[1], 1));
        assert_eq!(o.low(), 3);
        let last = o.batch(1)[0].0.clone();
        assert!(o.remove_if(&last, 3));
        assert!(o.is_empty());
        assert_eq!(o.low(), 4);
        assert!(o.order.is_empty(), "stale entries are dropped");
    }

    #[test]
    fn marks_follow_the_numbers() {
        let mut q = Queue::new(0);
        for seq in 0..2_100u64 {
            assert_eq!(q.mark(), format!("{{\"ussdbOutbox\":{seq}}}"));
            assert_eq!(q.push("u", "c").0, seq);
        }
        let mut q = Queue::new(99_999);
        q.push("u", "c");
        assert_eq!(q.mark(), "{\"ussdbOutbox\":100000}");
    }

    #[test]
    fn a_mapping_moved_back_goes_after_the_others() {
        let (q, mut o) = (Mutex::new(Queue::default()), Outbox::default());
        q.lock().expect("queue").push("u1", "c");
        q.lock().expect("queue").push("u2", "c");
        o.take_from(&q, h);
        let (first, mark) = o.batch(1)[0].clone();
        q.lock().expect("queue").push("u3", "c");
        assert!(
            !o.move_back(&q, h, &first, mark + 1),
            "a newer write keeps it in place"
        );
        assert!(o.move_back(&q, h, &first, mark));
        assert_eq!(o.low(), 1);
        let order: Vec<(String, u64)> = o
            .batch(10)
            .iter()
            .map(|(k, m)| (k.user_id().to_owned(), *m))
            .collect();
        assert_eq!(
            order,
            [("u2".into(), 1), ("u3".into(), 2), ("u1".into(), 0)]
        );
        assert_eq!(o.get(1, "u1", "c").map(|p| p.seq), Some(4));
        assert_eq!(q.lock().expect("queue").push("u4", "c").0, 5);
    }

    #[test]
    fn stale_entries_do_not_pile_up() {
        let (q, mut o) = (Mutex::new(Queue::default()), Outbox::default());
        q.lock().expect("queue").push("keep", "c");
        o.take_from(&q, h);
        for i in 0..1000 {
            let (seq, _) = q.lock().expect("queue").push(&format!("u{i}"), "c");
            o.take_from(&q, h);
            let key = o.batch(2)[1].0.clone();
            assert!(o.remove_if(&key, seq));
        }
        assert!(o.order.len() <= 2 * o.len() + 65, "{}", o.order.len());
        assert_eq!(o.batch(10).len(), 1);
    }
}
