//! The in-memory half of a [`Tiered`](super::Tiered) store's outbox: which mappings wait for Redis, in the order
//! they first changed.
//!
//! Built for the `set` path, which queues a mapping on every first change: one allocation per queued mapping
//! (its key, shared by the table and the queue), lookups by borrowed ids with no allocation and no second hash
//! (the table reuses the tier's keyed hash of the mapping, computed once per call), and a queue that
//! only appends (an entry whose mapping left the table, or was queued again under a newer number, is stale and
//! dropped when it reaches the front or when stale entries outnumber live ones).

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

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
    pub(super) seq: u64,
    /// Bumped by every write of the mapping, so a shipment's answer is applied only if nothing changed meanwhile.
    pub(super) generation: u64,
    pub(super) since: Instant,
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
    pub(super) fn get(&self, hash: u64, user_id: &str, campaign_key: &str) -> Option<&Pending> {
        self.pending.get(&(hash, user_id, campaign_key) as &dyn Ids)
    }

    /// Queues the mapping (or, if it waits, counts one more change of it); returns its number and whether it was
    /// newly queued.
    pub(super) fn enqueue(&mut self, hash: u64, user_id: &str, campaign_key: &str) -> (u64, bool) {
        if let Some(p) = self
            .pending
            .get_mut(&(hash, user_id, campaign_key) as &dyn Ids)
        {
            p.generation += 1;
            return (p.seq, false);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.insert(
            seq,
            OutKey::new(hash, user_id, campaign_key),
            Instant::now(),
        );
        (seq, true)
    }

    /// Queues `key` under `seq`, which must be above every number in the queue (recovery inserts in order).
    pub(super) fn insert(&mut self, seq: u64, key: OutKey, since: Instant) {
        self.next_seq = self.next_seq.max(seq + 1);
        self.order.push_back((seq, key.clone()));
        self.pending.insert(
            key,
            Pending {
                seq,
                generation: 0,
                since,
            },
        );
    }

    /// Takes the mapping out of the queue (shipped, or its write failed).
    pub(super) fn remove(&mut self, hash: u64, user_id: &str, campaign_key: &str) {
        self.pending
            .remove(&(hash, user_id, campaign_key) as &dyn Ids);
        self.tidy();
    }

    /// Moves the mapping to the back of the queue under a new number, which it returns (`None` if it does not
    /// wait).
    pub(super) fn requeue(&mut self, key: &OutKey) -> Option<u64> {
        let seq = self.next_seq;
        let pending = self.pending.get_mut(key)?;
        pending.seq = seq;
        self.next_seq += 1;
        self.order.push_back((seq, key.clone()));
        self.tidy();
        Some(seq)
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

    /// Up to `n` waiting mappings, oldest first.
    pub(super) fn batch(&self, n: usize) -> Vec<OutKey> {
        self.order
            .iter()
            .filter(|(seq, key)| self.is_live(*seq, key))
            .take(n)
            .map(|(_, key)| key.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_keeps_first_change_order_and_forgets_removed() {
        let mut o = Outbox::default();
        assert_eq!(o.enqueue(1, "u1", "c"), (0, true));
        assert_eq!(o.enqueue(1, "u2", "c"), (1, true));
        assert_eq!(o.enqueue(1, "u1", "c"), (0, false));
        assert_eq!(o.get(1, "u1", "c").map(|p| p.generation), Some(1));
        assert_eq!(o.low(), 0);
        o.remove(1, "u1", "c");
        assert!(o.get(1, "u1", "c").is_none());
        assert_eq!(o.low(), 1);
        let batch = o.batch(10);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].user_id(), "u2");
        assert_eq!(o.requeue(&batch[0]), Some(2));
        assert_eq!(o.low(), 2);
        o.remove(1, "u2", "c");
        assert!(o.is_empty());
        assert_eq!(o.low(), 3);
        assert!(o.order.is_empty(), "stale entries are dropped");
    }

    #[test]
    fn stale_entries_do_not_pile_up() {
        let mut o = Outbox::default();
        o.enqueue(7, "keep", "c");
        for i in 0..1000 {
            let user = format!("u{i}");
            o.enqueue(i, &user, "c");
            o.remove(i, &user, "c");
        }
        assert!(o.order.len() <= 2 * o.len() + 65, "{}", o.order.len());
        assert_eq!(o.batch(10).len(), 1);
    }
}
