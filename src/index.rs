//! The in-memory index: a 64-bit hash of each key mapped to the location of its newest record.
//!
//! Each entry is 16 bytes (hash, packed location) whatever the ids' length; full keys live only on disk and are
//! compared against the record on every read, so two keys with the same hash stay correct (the table simply
//! holds both entries). The hash is built so that all of a user's mappings sit in one run of the table:
//! the upper 40 bits hash the user id and alone choose the shard and the home slot, the lower 24 bits hash the
//! campaign key. `campaigns_of` and `forget_user` therefore walk one short run instead of the whole table.
//!
//! The table is split into shards, each an open-addressing table with linear probing behind its own `RwLock`:
//! readers of different shards never meet, a resize moves one shard, and no lock is held while a record is read.

#![expect(
    clippy::indexing_slicing,
    reason = "slots are indexed by a hash masked to the table length, which is a power of two and never zero"
)]

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::seed::{KeyHasher, USER_SHIFT};

/// Where a record lives: segment id (24 bits) and byte offset (40 bits), packed. Zero is never a location
/// (segment ids start at 1), which lets the table use it for an empty slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Loc(u64);

/// Largest segment id a location can hold.
pub(crate) const MAX_SEGMENT_ID: u32 = (1 << 24) - 1;
/// Largest offset a location can hold.
pub(crate) const MAX_OFFSET: u64 = (1 << 40) - 1;

impl Loc {
    /// Packs a location; the caller keeps `segment` in 1..=MAX_SEGMENT_ID and `offset` <= MAX_OFFSET.
    pub(crate) fn new(segment: u32, offset: u64) -> Loc {
        debug_assert!(segment != 0 && segment <= MAX_SEGMENT_ID && offset <= MAX_OFFSET);
        Loc((u64::from(segment) << 40) | offset)
    }
    /// The segment id.
    pub(crate) fn segment(self) -> u32 {
        (self.0 >> 40) as u32
    }
    /// The byte offset within the segment.
    pub(crate) fn offset(self) -> u64 {
        self.0 & MAX_OFFSET
    }
}

const SHARD_BITS: u32 = 6;
const MIN_CAPACITY: usize = 16;

#[derive(Clone, Copy, Default)]
struct Slot {
    hash: u64,
    /// 0 = empty.
    loc: u64,
}

#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    len: usize,
}

fn mix(user_part: u64) -> u64 {
    user_part.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Table {
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, hash: u64) -> usize {
        // The top bits of the mixed user part chose the shard; the next ones choose the slot.
        let bits = self.slots.len().trailing_zeros();
        ((mix(hash >> USER_SHIFT) << SHARD_BITS) >> (64 - bits)) as usize
    }

    /// Visits the run that starts at the home slot of `hash`, until an empty slot.
    fn probe(&self, hash: u64) -> impl Iterator<Item = (usize, Slot)> + '_ {
        let mask = self.slots.len().wrapping_sub(1);
        let start = if self.slots.is_empty() {
            0
        } else {
            self.home(hash)
        };
        (0..self.slots.len())
            .map(move |i| (start + i) & mask)
            .map(|i| (i, self.slots[i]))
            .take_while(|(_, s)| s.loc != 0)
    }

    fn candidates(&self, hash: u64) -> Candidates {
        let mut out = Candidates::new();
        for (_, slot) in self.probe(hash).filter(|(_, s)| s.hash == hash) {
            out.push(Loc(slot.loc));
        }
        out
    }

    fn replace(&mut self, hash: u64, old: Loc, new: Loc) -> bool {
        match self.find(hash, old) {
            Some(i) => {
                self.slots[i].loc = new.0;
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, hash: u64, loc: Loc) -> bool {
        match self.find(hash, loc) {
            Some(i) => {
                self.remove_at(i);
                true
            }
            None => false,
        }
    }

    /// Reads the home slot of `hash`, to bring it into the cache.
    fn touch(&self, hash: u64) -> u64 {
        if self.slots.is_empty() {
            0
        } else {
            self.slots[self.home(hash)].loc
        }
    }

    fn find(&self, hash: u64, loc: Loc) -> Option<usize> {
        self.probe(hash)
            .find(|(_, s)| s.hash == hash && s.loc == loc.0)
            .map(|(i, _)| i)
    }

    fn insert(&mut self, hash: u64, loc: Loc) {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let mask = self.mask();
        let mut i = self.home(hash);
        while self.slots[i].loc != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = Slot { hash, loc: loc.0 };
        self.len += 1;
    }

    /// Inserts (`hash`, `loc`) unless an entry with this hash exists; one probe does both (recovery from hints).
    fn insert_new_hash(&mut self, hash: u64, loc: Loc) -> bool {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let mask = self.mask();
        let mut i = self.home(hash);
        while self.slots[i].loc != 0 {
            if self.slots[i].hash == hash {
                return false;
            }
            i = (i + 1) & mask;
        }
        self.slots[i] = Slot { hash, loc: loc.0 };
        self.len += 1;
        true
    }

    /// Grows the table (once) so that `more` further entries fit without a resize.
    fn reserve(&mut self, more: usize) {
        // Checked: a count that cannot fit is no reason to fail, the table just grows as usual.
        let Some(want) = self.len.checked_add(more).and_then(|n| n.checked_mul(4)) else {
            return;
        };
        let mut capacity = self.slots.len().max(MIN_CAPACITY);
        while want > capacity * 3 {
            match capacity
                .checked_mul(2)
                .filter(|c| c.checked_mul(3).is_some())
            {
                Some(c) => capacity = c,
                None => return,
            }
        }
        if capacity > self.slots.len() {
            self.resize(capacity);
        }
    }

    fn grow(&mut self) {
        self.resize((self.slots.len() * 2).max(MIN_CAPACITY));
    }

    fn resize(&mut self, capacity: usize) {
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); capacity]);
        let mask = self.mask();
        for slot in old.into_iter().filter(|s| s.loc != 0) {
            let mut i = self.home(slot.hash);
            while self.slots[i].loc != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = slot;
        }
    }

    /// Removes slot `i` and shifts later entries of the run back, so every entry stays reachable from its home
    /// without tombstones.
    fn remove_at(&mut self, mut i: usize) {
        let mask = self.mask();
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let slot = self.slots[j];
            if slot.loc == 0 {
                break;
            }
            let home = self.home(slot.hash);
            // The entry at j may fill the hole at i only if its home is not inside (i, j].
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(i) & mask) {
                self.slots[i] = slot;
                i = j;
            }
        }
        self.slots[i] = Slot::default();
        self.len -= 1;
        if self.len == 0 {
            self.slots = Vec::new();
        }
    }
}

fn shard_of(hash: u64) -> usize {
    (mix(hash >> USER_SHIFT) >> (64 - SHARD_BITS)) as usize
}

#[repr(align(64))]
#[derive(Default)]
struct Shard(RwLock<Table>);

/// The whole index.
pub(crate) struct Index {
    shards: Box<[Shard]>,
    hasher: KeyHasher,
}

/// Up to this many candidates are returned without allocating.
pub(crate) type Candidates = smallvec_lite::SmallVec;

impl Index {
    /// An empty index.
    pub(crate) fn new(hasher: KeyHasher) -> Index {
        let shards = (0..1 << SHARD_BITS).map(|_| Shard::default()).collect();
        Index { shards, hasher }
    }

    /// The hasher whose hashes this index takes.
    pub(crate) fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    fn shard(&self, hash: u64) -> &RwLock<Table> {
        &self.shards[shard_of(hash)].0
    }

    fn read(&self, hash: u64) -> RwLockReadGuard<'_, Table> {
        self.shard(hash).read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, hash: u64) -> RwLockWriteGuard<'_, Table> {
        self.shard(hash).write().unwrap_or_else(|e| e.into_inner())
    }

    /// Exclusive access without the shard locks, for a single-threaded bulk build (recovery, before the index
    /// is shared): a lock round trip per operation costs as much as the operation.
    pub(crate) fn unshared(&mut self) -> Unshared<'_> {
        Unshared {
            shards: &mut self.shards,
        }
    }

    /// Locations of every entry with this exact hash (usually zero or one).
    pub(crate) fn candidates(&self, hash: u64) -> Candidates {
        self.read(hash).candidates(hash)
    }

    /// Locations of every entry whose user part is `user_part` (a superset of one user's mappings).
    pub(crate) fn user_candidates(&self, user_part: u64) -> Vec<(u64, Loc)> {
        let probe_hash = user_part << USER_SHIFT;
        let table = self.read(probe_hash);
        table
            .probe(probe_hash)
            .filter(|(_, s)| s.hash >> USER_SHIFT == user_part)
            .map(|(_, s)| (s.hash, Loc(s.loc)))
            .collect()
    }

    /// Adds an entry (the caller has checked that its key has none).
    pub(crate) fn insert(&self, hash: u64, loc: Loc) {
        self.write(hash).insert(hash, loc);
    }

    /// Points the entry (`hash`, `old`) at `new`; false if there is no such entry (it moved or was removed).
    pub(crate) fn replace(&self, hash: u64, old: Loc, new: Loc) -> bool {
        self.write(hash).replace(hash, old, new)
    }

    /// Removes the entry (`hash`, `loc`); false if there is none.
    pub(crate) fn remove(&self, hash: u64, loc: Loc) -> bool {
        self.write(hash).remove(hash, loc)
    }

    /// Number of shards; [`Index::shard_entries`] takes 0..this.
    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// A copy of every entry of shard `i` (none past the last shard). The shard's lock is held only while copying.
    pub(crate) fn shard_entries(&self, i: usize) -> Vec<(u64, Loc)> {
        let Some(shard) = self.shards.get(i) else {
            return Vec::new();
        };
        let table = shard.0.read().unwrap_or_else(|e| e.into_inner());
        table
            .slots
            .iter()
            .filter(|s| s.loc != 0)
            .map(|s| (s.hash, Loc(s.loc)))
            .collect()
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.read().unwrap_or_else(|e| e.into_inner()).len as u64)
            .sum()
    }

    /// Heap bytes held by the tables.
    pub(crate) fn heap_bytes(&self) -> u64 {
        let slots: usize = self
            .shards
            .iter()
            .map(|s| {
                s.0.read()
                    .unwrap_or_else(|e| e.into_inner())
                    .slots
                    .capacity()
            })
            .sum();
        (slots * size_of::<Slot>() + self.shards.len() * size_of::<Shard>()) as u64
    }
}

/// The index, borrowed exclusively: the same operations as [`Index`] without locking (see [`Index::unshared`]).
pub(crate) struct Unshared<'a> {
    shards: &'a mut [Shard],
}

impl Unshared<'_> {
    fn table(&mut self, hash: u64) -> &mut Table {
        self.shards[shard_of(hash)]
            .0
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Loads the home slots of `hashes` into the cache, so that the lookups that follow do not each wait for
    /// memory: the loads here are independent, and the CPU overlaps their misses. For bulk work that knows its
    /// keys in advance (recovery from hint files).
    pub(crate) fn prefetch(&mut self, hashes: &[u64]) {
        let sum = hashes.iter().fold(0u64, |sum, &hash| {
            sum.wrapping_add(self.table(hash).touch(hash))
        });
        std::hint::black_box(sum);
    }

    /// Inserts (`hash`, `loc`) if no entry has this hash, and says whether it did. No entry with the hash means
    /// no entry for the key, so recovery from hints needs no key for it.
    pub(crate) fn insert_new_hash(&mut self, hash: u64, loc: Loc) -> bool {
        self.table(hash).insert_new_hash(hash, loc)
    }

    /// Makes room for about `entries` more entries spread over all shards, so a bulk build does not rehash
    /// each shard again and again as it fills. Shards take users by hash, so each gets close to an equal share;
    /// one that gets more simply grows once more.
    pub(crate) fn reserve(&mut self, entries: usize) {
        // A little slack: shards a few percent above the average share must not each grow once more.
        let per_shard = entries.div_ceil(self.shards.len());
        let per_shard = per_shard.saturating_add(per_shard / 16);
        for shard in self.shards.iter_mut() {
            shard
                .0
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .reserve(per_shard);
        }
    }

    /// As [`Index::candidates`].
    pub(crate) fn candidates(&mut self, hash: u64) -> Candidates {
        self.table(hash).candidates(hash)
    }

    /// As [`Index::insert`].
    pub(crate) fn insert(&mut self, hash: u64, loc: Loc) {
        self.table(hash).insert(hash, loc);
    }

    /// As [`Index::replace`].
    pub(crate) fn replace(&mut self, hash: u64, old: Loc, new: Loc) -> bool {
        self.table(hash).replace(hash, old, new)
    }

    /// As [`Index::remove`].
    pub(crate) fn remove(&mut self, hash: u64, loc: Loc) -> bool {
        self.table(hash).remove(hash, loc)
    }
}

/// A tiny inline vector for the usual zero or one candidate, so a lookup does not allocate.
mod smallvec_lite {
    use super::Loc;

    /// Inline up to two, then spills to the heap.
    #[derive(Debug, Default)]
    pub(crate) struct SmallVec {
        inline: [Option<Loc>; 2],
        spill: Vec<Loc>,
    }

    impl SmallVec {
        pub(crate) fn new() -> SmallVec {
            SmallVec::default()
        }

        pub(crate) fn push(&mut self, loc: Loc) {
            match self.inline.iter_mut().find(|s| s.is_none()) {
                Some(slot) => *slot = Some(loc),
                None => self.spill.push(loc),
            }
        }

        pub(crate) fn is_empty(&self) -> bool {
            self.inline[0].is_none()
        }

        pub(crate) fn iter(&self) -> impl Iterator<Item = Loc> + '_ {
            self.inline
                .iter()
                .flatten()
                .copied()
                .chain(self.spill.iter().copied())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn table_matches_a_model_under_heavy_collisions() {
        // Hashes drawn from a tiny range force long runs, wrap-around and backward shifts.
        let mut table = Table::default();
        let mut model: HashMap<u64, u64> = HashMap::new();
        let mut seed = 0x1234_5678_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for step in 1..20_000u64 {
            let hash = (next() % 7) << USER_SHIFT | (next() % 3);
            let loc = Loc::new(1, step);
            if next() % 3 == 0 {
                if let Some((&l, _)) = model.iter().find(|(_, h)| **h == hash) {
                    let i = table
                        .find(hash, Loc(l))
                        .expect("model entry is in the table");
                    table.remove_at(i);
                    model.remove(&l);
                }
            } else {
                table.insert(hash, loc);
                model.insert(loc.0, hash);
            }
            assert_eq!(table.len, model.len());
        }
        for (&loc, &hash) in &model {
            assert!(table.find(hash, Loc(loc)).is_some());
        }
    }

    #[test]
    fn locations_pack_and_unpack() {
        let loc = Loc::new(MAX_SEGMENT_ID, MAX_OFFSET);
        assert_eq!((loc.segment(), loc.offset()), (MAX_SEGMENT_ID, MAX_OFFSET));
        let loc = Loc::new(1, 20);
        assert_eq!((loc.segment(), loc.offset()), (1, 20));
    }

    #[test]
    fn shard_entries_cover_every_entry_once() {
        let index = Index::new(KeyHasher::new(crate::seed::Seed::random(), false));
        let h = index.hasher().clone();
        for i in 0..1000u64 {
            index.insert(
                h.hash(format!("u{i}").as_bytes(), b"c"),
                Loc::new(1, 100 + i),
            );
        }
        let mut all: Vec<Loc> = (0..index.shard_count() + 1)
            .flat_map(|i| index.shard_entries(i))
            .map(|(_, loc)| loc)
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 1000);
    }

    #[test]
    fn user_candidates_finds_all_of_a_users_keys() {
        let index = Index::new(KeyHasher::new(crate::seed::Seed::random(), false));
        let h = index.hasher().clone();
        for c in 0..50u64 {
            index.insert(
                h.hash(b"alice", format!("c{c}").as_bytes()),
                Loc::new(1, 100 + c),
            );
            index.insert(
                h.hash(format!("other{c}").as_bytes(), b"c"),
                Loc::new(1, 1000 + c),
            );
        }
        assert_eq!(index.user_candidates(h.user_part(b"alice")).len(), 50);
        assert_eq!(index.len(), 100);
    }
}
