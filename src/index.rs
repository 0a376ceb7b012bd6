//! The in-memory index: a 64-bit hash of each key mapped to the location of its newest record.
//!
//! Each entry is 16 bytes (hash, packed location) whatever the ids' length, plus a tag byte per slot that lets a
//! lookup pass other entries without reading them (see [`Table`]); full keys live only on disk and are compared
//! against the record on every read, so two keys with the same hash stay correct (the table simply holds both
//! entries). The upper 40 bits of the hash hash the user id and alone choose the shard; the lower 24
//! bits hash the campaign key.
//!
//! Each shard has a shared table whose home slots depend only on the user part, so all of a user's mappings sit
//! in one run: `campaigns_of` and `forget_user` walk that run instead of the whole table, at no memory beyond the
//! entries. A run costs its length on every insert and lookup of that user, though, so a user with more than
//! [`OWN_TABLE_ABOVE`] entries moves to a table of its own, keyed by the whole hash (a map from user part to
//! table, behind a 64-bucket count that lets other users skip it), and moves back when it falls below
//! [`SHARED_BELOW`]. Every operation is then O(1) expected, and a user's walk costs that user's entries, however
//! many one user has; the hash itself (which hint files store) is the same either way.
//!
//! Each shard sits behind its own `RwLock`: readers of different shards never meet, a resize moves one table of
//! one shard, and no lock is held while a record is read.

#![expect(
    clippy::indexing_slicing,
    reason = "slots are indexed by positions below the table length (`Table::home`, `Table::next`), never zero"
)]

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::seed::{KeyHasher, USER_SHIFT};

/// Where a record lives: segment id (31 bits) and byte offset (33 bits), packed. Zero is never a location
/// (segment ids start at 1), which lets the table use it for an empty slot. 33 bits of offset hold the largest
/// segment (`MAX_SEGMENT_SIZE`, 4 GiB) plus one oversized record; 31 bits of id last a store's life: at 64 MiB
/// segments and a sustained 10 MB/s of appends, centuries (docs/GUIDE.md, Limits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Loc(u64);

/// Bits of a location that hold the offset; the ones above hold the segment id.
pub(crate) const OFFSET_BITS: u32 = 33;
/// Largest segment id a location can hold.
pub(crate) const MAX_SEGMENT_ID: u32 = (1 << (64 - OFFSET_BITS)) - 1;
/// Largest offset a location can hold.
pub(crate) const MAX_OFFSET: u64 = (1 << OFFSET_BITS) - 1;

// Every offset a segment can reach fits a location: the largest segment plus one oversized record after it.
const _: () = assert!(
    crate::options::MAX_SEGMENT_SIZE + 2 * crate::record::MAX_RECORD_VALUE_LEN as u64 <= MAX_OFFSET
);

impl Loc {
    /// Packs a location; the caller keeps `segment` in 1..=MAX_SEGMENT_ID and `offset` <= MAX_OFFSET.
    pub(crate) fn new(segment: u32, offset: u64) -> Loc {
        debug_assert!(segment != 0 && segment <= MAX_SEGMENT_ID && offset <= MAX_OFFSET);
        Loc((u64::from(segment) << OFFSET_BITS) | offset)
    }
    /// The packed form (for the index file).
    pub(crate) fn bits(self) -> u64 {
        self.0
    }
    /// A location from its packed form; the caller checks it names a segment of the store.
    pub(crate) fn from_bits(bits: u64) -> Loc {
        Loc(bits)
    }
    /// The segment id.
    pub(crate) fn segment(self) -> u32 {
        (self.0 >> OFFSET_BITS) as u32
    }
    /// The byte offset within the segment.
    pub(crate) fn offset(self) -> u64 {
        self.0 & MAX_OFFSET
    }
}

const SHARD_BITS: u32 = 6;
/// How many shards the index has (the index file saves each in a section of its own).
pub(crate) const SHARD_COUNT: usize = 1 << SHARD_BITS;
const MIN_CAPACITY: usize = 16;
/// A user with more entries than this in the shared table of a shard gets a table of its own: past this, walking
/// the user's run on every insert and lookup would cost more than one map lookup.
const OWN_TABLE_ABOVE: usize = 32;
/// A user's own table goes back into the shared table when it holds fewer entries than this. Far below
/// [`OWN_TABLE_ABOVE`], so a user hovering around either bound does not move back and forth on every write.
const SHARED_BELOW: usize = 8;

#[derive(Clone, Copy, Default)]
struct Slot {
    hash: u64,
    /// 0 = empty.
    loc: u64,
}

/// An open-addressing table with linear probing and backward-shift deletion. `BY_KEY` says how home slots are
/// chosen: `false` from the user part of the hash alone (the shared table of a shard, where each user's entries
/// form one run), `true` from the whole hash (one user's own table, where the entries spread out).
///
/// Beside the slots, a byte per slot holds a tag of its entry's hash (0 for an empty slot): a lookup walks the
/// run on the tags and reads a slot only where the tag matches. The tags are a sixteenth of the slots' memory,
/// so they stay in the cache where the slots do not: a get of a user the table does not hold (a first visit)
/// reads no slot unless another entry's tag equals its own (one in 128 per entry it passes), and a hit reads the
/// slots of its user's entries, which lie together.
#[derive(Default)]
struct Table<const BY_KEY: bool> {
    slots: Vec<Slot>,
    /// [`Table::tag`] of each slot's hash, or 0 where the slot is empty; always as long as `slots`.
    tags: Vec<u8>,
    len: usize,
    /// Capacity to allocate on the first insert (see [`Table::reserve`]); 0 when none is asked for.
    reserved: usize,
    /// Grow by doubling, not by a quarter (see [`Unshared::bulk`]).
    bulk: bool,
}

/// The shared table of a shard.
type Runs = Table<false>;
/// The table of one user with many entries.
type Own = Table<true>;

/// The capacity after `capacity` (one of the sequence below): a quarter of the power of two at or below it more.
/// The capacities run 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, …: four steps per doubling, so a table that has
/// just grown (at 3/4 load) is still at least 3/5 full, where doubling would leave it 3/8 full. With 17 bytes per
/// slot that bounds the index at about 28 bytes per mapping at every size, where doubling swung between 23 and 45.
/// The price: an entry is moved by ~5 resizes over a table's growth instead of ~1, sequentially (an entry's
/// home in the shared table is ordered by its mixed hash at every capacity, so a resize streams the table).
fn next_capacity(capacity: usize) -> usize {
    let power = 1usize << (usize::BITS - 1 - capacity.leading_zeros());
    capacity.saturating_add((power / 4).max(1))
}

/// The smallest capacity that holds `entries` at no more than 3/4 load, or `None` if none can.
fn capacity_for(entries: usize) -> Option<usize> {
    let want = entries.checked_mul(4)?;
    let mut capacity = MIN_CAPACITY;
    while want > capacity.checked_mul(3)? {
        capacity = next_capacity(capacity);
    }
    Some(capacity)
}

/// True when `capacity` is one of the sequence [`next_capacity`] makes (or 0, a table never allocated).
fn is_capacity(capacity: usize) -> bool {
    let mut c = MIN_CAPACITY;
    while c < capacity {
        c = next_capacity(c);
    }
    capacity == 0 || c == capacity
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Multiplicative (Fibonacci) hashing: its top bits depend on every bit of `key`.
fn mix(key: u64) -> u64 {
    key.wrapping_mul(GOLDEN)
}

/// A full 64-bit mixer (the SplitMix64 finalizer): every output bit depends on every input bit, so two inputs
/// that differ in any way land independently.
fn scramble(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The user part of an index hash (see [`KeyHasher::user_part`]).
fn user_of(hash: u64) -> u64 {
    hash >> USER_SHIFT
}

/// Tags in [`Table::tags`] have their top bit set, so that none is 0, the empty slot's.
const TAG_BIT: u8 = 0x80;

impl<const BY_KEY: bool> Table<BY_KEY> {
    /// The tag of `hash` in [`Table::tags`]: 7 bits of it that do not choose its home slot. In the shared table
    /// they come from the user part, so a get of a user the table does not hold (a first visit) meets no tag of
    /// its own and never needs the item's bits of its hash (`Table::first_candidate`); in a user's own table,
    /// where every entry has the same user part, from the item.
    fn tag(hash: u64) -> u8 {
        let bits = if BY_KEY { hash } else { user_of(hash) };
        TAG_BIT | (bits & 0x7f) as u8
    }

    /// The slot after slot `i`, wrapping around at the end.
    fn next(&self, i: usize) -> usize {
        self.wrap(i + 1)
    }

    /// Position `i` (below twice the capacity) wrapped around the end of the table.
    fn wrap(&self, i: usize) -> usize {
        if i >= self.slots.len() {
            i - self.slots.len()
        } else {
            i
        }
    }

    /// How far slot `i` lies after slot `from`, going forward and wrapping around.
    fn distance(&self, from: usize, i: usize) -> usize {
        if i >= from {
            i - from
        } else {
            i + self.slots.len() - from
        }
    }

    /// The home slot of `hash`: a 64-bit mix of it scaled to the capacity (the high half of their product), so
    /// that the capacity need not be a power of two (see [`next_capacity`]).
    fn home(&self, hash: u64) -> usize {
        let mixed = if BY_KEY {
            // Salted with the capacity, so each resize scatters the entries anew. Without that, a table that
            // shrinks after losing entries in slot order (`forget_user` walks it so) would keep the survivors,
            // all from the top of the hash range, in the top of the smaller table: one huge run.
            scramble(hash.wrapping_add((self.slots.len() as u64).wrapping_mul(GOLDEN)))
        } else {
            // The top bits of the mixed user part chose the shard; the next ones choose the slot.
            mix(user_of(hash)) << SHARD_BITS
        };
        ((u128::from(mixed) * self.slots.len() as u128) >> 64) as usize
    }

    /// Visits the run that starts at the home slot of `hash`, until an empty slot.
    fn probe(&self, hash: u64) -> impl Iterator<Item = (usize, Slot)> + '_ {
        let start = if self.slots.is_empty() {
            0
        } else {
            self.home(hash)
        };
        (0..self.slots.len())
            .map(move |i| self.wrap(start + i))
            .map(|i| (i, self.slots[i]))
            .take_while(|(_, s)| s.loc != 0)
    }

    fn entries(&self) -> impl Iterator<Item = (u64, Loc)> + '_ {
        self.slots
            .iter()
            .filter(|s| s.loc != 0)
            .map(|s| (s.hash, Loc(s.loc)))
    }

    fn candidates(&self, hash: u64) -> Candidates {
        let mut out = Candidates::new();
        for (_, slot) in self.matches(hash) {
            out.push(Loc(slot.loc));
        }
        out
    }

    /// The slots of the run at the home of `hash` that hold an entry with this very hash, found on the tags.
    fn matches(&self, hash: u64) -> impl Iterator<Item = (usize, Slot)> + '_ {
        let start = if self.slots.is_empty() {
            0
        } else {
            self.home(hash)
        };
        let want = Self::tag(hash);
        (0..self.tags.len())
            .map(move |i| self.wrap(start + i))
            .map(|i| (i, self.tags[i]))
            .take_while(|&(_, t)| t != 0)
            .filter(move |&(_, t)| t == want)
            .map(|(i, _)| (i, self.slots[i]))
            .filter(move |(_, s)| s.hash == hash)
    }

    /// The first entry with the hash `full()` returns ([`Table::matches`]`.next()`), written out: this is the
    /// walk of every get. `probe` has the key's home slot and tag: the key's hash, or in the shared table any
    /// hash of its user, so `full` is called only when an entry of the user is met. It reads the tags eight at a
    /// time as one word (a run of a miss is ~10 slots long at 200k mappings), and byte by byte in the last seven
    /// slots before the table wraps around.
    fn first_candidate(&self, probe: u64, full: impl Fn() -> u64) -> Option<Loc> {
        const HIGH: u64 = 0x8080_8080_8080_8080;
        const LOW: u64 = 0x7f7f_7f7f_7f7f_7f7f;
        if self.slots.is_empty() {
            return None;
        }
        let want = Self::tag(probe);
        let wanted = u64::from(want) * 0x0101_0101_0101_0101;
        let mut hash = None;
        let mut i = self.home(probe);
        // The table is at most 3/4 full, so the walk meets an empty slot (tag 0).
        loop {
            let Some(bytes) = self.tags.get(i..i + 8) else {
                let t = self.tags[i];
                if t == 0 {
                    return None;
                }
                if t == want && self.slots[i].hash == *hash.get_or_insert_with(&full) {
                    return Some(Loc(self.slots[i].loc));
                }
                i = self.next(i);
                continue;
            };
            let mut word = [0u8; 8];
            word.copy_from_slice(bytes);
            let word = u64::from_le_bytes(word);
            // A full slot's tag has its top bit set, an empty one's is 0: the top bits clear are the empty slots.
            let empty = !word & HIGH;
            // The bytes equal to `want`: zero after the XOR. Adding 0x7f to the low 7 bits carries into the top
            // bit of exactly the nonzero bytes, never into the next byte.
            let x = word ^ wanted;
            let equal = !(((x & LOW) + LOW) | x) & HIGH;
            // Only the bytes before the first empty slot are in the run.
            let in_run = if empty == 0 {
                u64::MAX
            } else {
                (empty & empty.wrapping_neg()) - 1
            };
            let mut candidates = equal & in_run;
            if candidates != 0 {
                // The address of slot `i` does not wait for the tags, and this branch is taken when the run holds
                // the user. Predicted taken (a server whose gets mostly hit), the CPU starts loading the slot's
                // line while the tags are still on their way, where the slot of a candidate found on the tags
                // waits for them: in a big store, two cache misses overlap instead of following each other.
                // Predicted not taken (gets that mostly miss), nothing is loaded that a miss would wait for; a
                // load begun on a wrong prediction is dropped with it.
                std::hint::black_box(self.slots[i].hash);
            }
            while candidates != 0 {
                let j = i + (candidates.trailing_zeros() / 8) as usize;
                if self.slots[j].hash == *hash.get_or_insert_with(&full) {
                    return Some(Loc(self.slots[j].loc));
                }
                candidates &= candidates - 1;
            }
            if empty != 0 {
                return None;
            }
            i = self.wrap(i + 8);
        }
    }

    /// Writes slot `i` and its tag.
    fn put(&mut self, i: usize, slot: Slot) {
        self.slots[i] = slot;
        self.tags[i] = if slot.loc == 0 {
            0
        } else {
            Self::tag(slot.hash)
        };
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

    /// Reads the home slot of `hash` and its tag, to bring them into the cache.
    fn touch(&self, hash: u64) -> u64 {
        if self.slots.is_empty() {
            0
        } else {
            let home = self.home(hash);
            self.slots[home].loc ^ u64::from(self.tags[home])
        }
    }

    fn find(&self, hash: u64, loc: Loc) -> Option<usize> {
        self.matches(hash)
            .find(|(_, s)| s.loc == loc.0)
            .map(|(i, _)| i)
    }

    /// Walks the run at the home of `hash` on the tags to its first empty slot, and returns that slot and how
    /// many entries of the same user the run holds (in the shared table, where their tags are all the user's;
    /// 0 in a user's own table), or `None` when `refuse_hash` and an entry with this very hash is in the run.
    /// Only slots whose tag matches are read: at 10M entries the tags are ~14 MB and the slots ~230 MB, so the
    /// walk costs a cache line of tags instead of the slots it passes (recovery inserts millions this way).
    fn free_slot(&self, hash: u64, refuse_hash: bool) -> Option<(usize, usize)> {
        let want = Self::tag(hash);
        let user = user_of(hash);
        let mut i = self.home(hash);
        let mut same_user = 0;
        loop {
            let t = self.tags[i];
            if t == 0 {
                return Some((i, same_user));
            }
            if t == want {
                let other = self.slots[i].hash;
                if refuse_hash && other == hash {
                    return None;
                }
                same_user += usize::from(!BY_KEY && user_of(other) == user);
            }
            i = self.next(i);
        }
    }

    /// Adds an entry and returns how many entries of the same user it passed on the way: in the shared table,
    /// the user's other entries (they all sit in the run the probe walks); 0 in a user's own table.
    fn insert(&mut self, hash: u64, loc: Loc) -> usize {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        // Never `None`: no hash is refused here.
        let (i, same_user) = self.free_slot(hash, false).unwrap_or_default();
        self.put(i, Slot { hash, loc: loc.0 });
        self.len += 1;
        same_user
    }

    /// Inserts (`hash`, `loc`) unless an entry with this hash exists (`None`); one probe does both (recovery from
    /// hints). Counts the same user's entries as [`Table::insert`].
    fn insert_new_hash(&mut self, hash: u64, loc: Loc) -> Option<usize> {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let (i, same_user) = self.free_slot(hash, true)?;
        self.put(i, Slot { hash, loc: loc.0 });
        self.len += 1;
        Some(same_user)
    }

    /// Makes room so that `more` further entries fit without a resize: at once if the table holds entries, else
    /// on its first insert, so a shard that never gets an entry (its users all went to tables of their own, or
    /// there are fewer users than shards) holds no memory for them.
    fn reserve(&mut self, more: usize) {
        // Checked: a count that cannot fit is no reason to fail, the table just grows as usual.
        let Some(capacity) = self.len.checked_add(more).and_then(capacity_for) else {
            return;
        };
        if self.slots.is_empty() {
            self.reserved = self.reserved.max(capacity);
        } else if capacity > self.slots.len() {
            self.resize(capacity);
        }
    }

    fn grow(&mut self) {
        let capacity = match self.slots.len() {
            0 => MIN_CAPACITY,
            // Doubling keeps a capacity in the sequence (it is a multiple of the same 4..=7).
            n if self.bulk => n.saturating_mul(2),
            n => next_capacity(n),
        }
        .max(std::mem::take(&mut self.reserved));
        self.resize(capacity);
    }

    fn resize(&mut self, capacity: usize) {
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); capacity]);
        self.tags = vec![0; capacity];
        for slot in old.into_iter().filter(|s| s.loc != 0) {
            let mut i = self.home(slot.hash);
            while self.tags[i] != 0 {
                i = self.next(i);
            }
            self.put(i, slot);
        }
    }

    /// Removes slot `i` and shifts later entries of the run back, so every entry stays reachable from its home
    /// without tombstones. Moves entries only into slot `i` and the holes that follow it, never before `i`.
    fn remove_at(&mut self, mut i: usize) {
        let mut j = i;
        loop {
            j = self.next(j);
            let slot = self.slots[j];
            if slot.loc == 0 {
                break;
            }
            let home = self.home(slot.hash);
            // The entry at j may fill the hole at i only if its home is not inside (i, j].
            if self.distance(home, j) >= self.distance(i, j) {
                self.put(i, slot);
                i = j;
            }
        }
        self.put(i, Slot::default());
        self.len -= 1;
        if self.len == 0 {
            self.slots = Vec::new();
            self.tags = Vec::new();
        } else if BY_KEY && self.slots.len() > MIN_CAPACITY && self.len * 8 < self.slots.len() {
            // A user's own table is walked whole by `user_candidates`, so it must shrink with the user: a walk
            // then costs in proportion to the entries, not to the most the user ever had.
            if let Some(capacity) = capacity_for(self.len * 2) {
                self.resize(capacity);
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Slot>() + self.tags.capacity()
    }

    /// Shrinks the table to the smallest capacity that holds its entries, if it is larger, and drops a
    /// reservation that no insert took up (a shard that got no entry holds no memory later either).
    fn fit(&mut self) {
        self.reserved = 0;
        if let Some(capacity) = capacity_for(self.len).filter(|&c| c < self.slots.len()) {
            self.resize(capacity);
        }
    }

    /// Replaces the table with the saved slots `slots` ((hash, packed location) in slot order, (0, 0) where
    /// empty) if they make a sound table: a capacity of the sequence, at most 3/4 full, every entry taken by
    /// `accept` and reachable from its home slot (every slot between the two taken). Else the table is left
    /// empty and the reason returned.
    fn restore(
        &mut self,
        slots: impl ExactSizeIterator<Item = (u64, u64)>,
        accept: impl Fn(u64, Loc) -> bool,
    ) -> std::result::Result<(), String> {
        *self = Table::default();
        let capacity = slots.len();
        if !is_capacity(capacity) {
            return Err(format!("{capacity} is not a table capacity"));
        }
        let mut restored = Table::<BY_KEY> {
            slots: Vec::with_capacity(capacity),
            tags: Vec::with_capacity(capacity),
            ..Table::default()
        };
        for (i, (hash, loc)) in slots.enumerate() {
            if loc != 0 && !accept(hash, Loc(loc)) {
                return Err(format!(
                    "slot {i} holds an entry of another shard or segment"
                ));
            }
            if loc == 0 && hash != 0 {
                return Err(format!("empty slot {i} has a hash"));
            }
            restored.len += usize::from(loc != 0);
            restored.slots.push(Slot { hash, loc });
            restored
                .tags
                .push(if loc == 0 { 0 } else { Self::tag(hash) });
        }
        if restored.len.saturating_mul(4) > capacity.saturating_mul(3) {
            return Err(format!("{} entries in {capacity} slots", restored.len));
        }
        // Reachability: walking from an empty slot, each entry's home lies in the run it belongs to.
        if let Some(empty) = restored.tags.iter().position(|&t| t == 0) {
            let mut run_start = restored.next(empty);
            for step in 1..=capacity {
                let i = restored.wrap(empty + step);
                if restored.tags[i] == 0 {
                    run_start = restored.next(i);
                    continue;
                }
                let home = restored.home(restored.slots[i].hash);
                if restored.distance(home, i) > restored.distance(run_start, i) {
                    return Err(format!(
                        "slot {i} cannot be reached from its home slot {home}"
                    ));
                }
            }
        }
        *self = restored;
        Ok(())
    }
}

/// Hashes a user part for [`OwnTables`]: it is already a keyed SipHash output (`seed.rs`), so hashing it again
/// with std's SipHash would only cost time on every operation of a user with a table of its own.
#[derive(Default)]
struct UserPartHasher(u64);

impl Hasher for UserPartHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the keys are u64); any other input still hashes to something sound.
        for &b in bytes {
            self.0 = mix(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, user_part: u64) {
        // The map takes its bucket from the low bits and a tag from the top ones: the user part is random in
        // its low 40 bits, and the multiply carries them into the top.
        self.0 = user_part ^ mix(user_part);
    }
}

/// The users of a shard that have tables of their own.
struct OwnTables {
    users: HashMap<u64, Own, BuildHasherDefault<UserPartHasher>>,
    /// How many of `users` fall on each of 64 buckets by their low bits: a lookup of a user whose bucket is
    /// empty (nearly all users, when a few have many items) skips the map.
    buckets: [u32; 64],
}

impl Default for OwnTables {
    fn default() -> OwnTables {
        OwnTables {
            users: HashMap::default(),
            buckets: [0; 64],
        }
    }
}

fn bucket_of(user_part: u64) -> usize {
    (user_part & 63) as usize
}

impl OwnTables {
    fn get(&self, user_part: u64) -> Option<&Own> {
        if self.buckets[bucket_of(user_part)] == 0 {
            return None;
        }
        self.users.get(&user_part)
    }

    fn get_mut(&mut self, user_part: u64) -> Option<&mut Own> {
        if self.buckets[bucket_of(user_part)] == 0 {
            return None;
        }
        self.users.get_mut(&user_part)
    }
}

/// One shard of the index: a shared table where each user's entries form one run, and tables of their own for
/// the few users with more than [`OWN_TABLE_ABOVE`] entries. Either holds all of a user's entries, never both.
#[derive(Default)]
struct Tables {
    runs: Runs,
    /// Boxed: most shards never have a user with a table of its own, and shards are packed one per cache line.
    own: Option<Box<OwnTables>>,
}

impl Tables {
    fn own(&self, user_part: u64) -> Option<&Own> {
        self.own.as_deref().and_then(|o| o.get(user_part))
    }

    fn own_mut(&mut self, user_part: u64) -> Option<&mut Own> {
        self.own.as_deref_mut().and_then(|o| o.get_mut(user_part))
    }

    fn len(&self) -> usize {
        let own = self.own.as_deref();
        self.runs.len + own.map_or(0, |o| o.users.values().map(|t| t.len).sum())
    }

    fn heap_bytes(&self) -> usize {
        let own = self.own.as_deref().map_or(0, |o| {
            // The map's buckets (one control byte each) and the tables they own.
            size_of::<OwnTables>()
                + o.users.capacity() * (size_of::<(u64, Own)>() + 1)
                + o.users.values().map(Own::heap_bytes).sum::<usize>()
        });
        self.runs.heap_bytes() + own
    }

    fn entries(&self) -> Vec<(u64, Loc)> {
        let own = self.own.as_deref().into_iter();
        self.runs
            .entries()
            .chain(own.flat_map(|o| o.users.values().flat_map(Own::entries)))
            .collect()
    }

    fn candidates(&self, hash: u64) -> Candidates {
        match self.own(user_of(hash)) {
            Some(own) => own.candidates(hash),
            None => self.runs.candidates(hash),
        }
    }

    fn first_candidate(&self, prefix: u64, full: impl Fn() -> u64) -> Option<Loc> {
        match self.own(user_of(prefix)) {
            Some(own) => {
                let hash = full();
                own.first_candidate(hash, || hash)
            }
            None => self.runs.first_candidate(prefix, full),
        }
    }

    fn user_candidates(&self, user_part: u64) -> Vec<(u64, Loc)> {
        if let Some(own) = self.own(user_part) {
            return own.entries().collect();
        }
        let probe_hash = user_part << USER_SHIFT;
        self.runs
            .probe(probe_hash)
            .filter(|(_, s)| user_of(s.hash) == user_part)
            .map(|(_, s)| (s.hash, Loc(s.loc)))
            .collect()
    }

    fn touch(&self, hash: u64) -> u64 {
        match self.own(user_of(hash)) {
            Some(own) => own.touch(hash),
            None => self.runs.touch(hash),
        }
    }

    fn insert(&mut self, hash: u64, loc: Loc) {
        if let Some(own) = self.own_mut(user_of(hash)) {
            own.insert(hash, loc);
            return;
        }
        if self.runs.insert(hash, loc) >= OWN_TABLE_ABOVE {
            self.give_own_table(user_of(hash));
        }
    }

    fn insert_new_hash(&mut self, hash: u64, loc: Loc) -> bool {
        if let Some(own) = self.own_mut(user_of(hash)) {
            return own.insert_new_hash(hash, loc).is_some();
        }
        match self.runs.insert_new_hash(hash, loc) {
            None => false,
            Some(others) => {
                if others >= OWN_TABLE_ABOVE {
                    self.give_own_table(user_of(hash));
                }
                true
            }
        }
    }

    fn replace(&mut self, hash: u64, old: Loc, new: Loc) -> bool {
        match self.own_mut(user_of(hash)) {
            Some(own) => own.replace(hash, old, new),
            None => self.runs.replace(hash, old, new),
        }
    }

    fn remove(&mut self, hash: u64, loc: Loc) -> bool {
        let user = user_of(hash);
        let Some(own) = self.own_mut(user) else {
            return self.runs.remove(hash, loc);
        };
        let removed = own.remove(hash, loc);
        if own.len < SHARED_BELOW {
            self.back_to_shared(user);
        }
        removed
    }

    /// Moves every entry of `user_part` from the shared table into a table of its own. They all sit in the run
    /// at the user's home slot; removing one shifts later entries back but never before it, so one pass over
    /// the run finds them all.
    fn give_own_table(&mut self, user_part: u64) {
        let mut own = Own::default();
        let probe_hash = user_part << USER_SHIFT;
        let mut i = self.runs.home(probe_hash);
        // The run ends at an empty slot; the table is freed when its last entry leaves.
        while let Some(&slot) = self.runs.slots.get(i) {
            if slot.loc == 0 {
                break;
            }
            if user_of(slot.hash) == user_part {
                own.insert(slot.hash, Loc(slot.loc));
                self.runs.remove_at(i);
            } else {
                i = self.runs.next(i);
            }
        }
        let tables = self.own.get_or_insert_with(Box::default);
        tables.buckets[bucket_of(user_part)] += 1;
        tables.users.insert(user_part, own);
    }

    /// Puts an entry of a saved own table back into its user's own table, which it makes on the user's first
    /// entry. A user is in one place only: one with entries in the shared table cannot have an own table too.
    fn restore_own(&mut self, hash: u64, loc: Loc) -> std::result::Result<(), String> {
        let user = user_of(hash);
        if self.own(user).is_none() {
            let probe_hash = user << USER_SHIFT;
            if self
                .runs
                .probe(probe_hash)
                .any(|(_, s)| user_of(s.hash) == user)
            {
                return Err(format!("user {user:#x} has entries in both tables"));
            }
            let tables = self.own.get_or_insert_with(Box::default);
            tables.buckets[bucket_of(user)] += 1;
            tables.users.insert(user, Own::default());
        }
        if let Some(own) = self.own_mut(user) {
            own.insert(hash, loc);
        }
        Ok(())
    }

    /// Moves the entries of `user_part`'s own table back into the shared table.
    fn back_to_shared(&mut self, user_part: u64) {
        let Some(tables) = self.own.as_deref_mut() else {
            return;
        };
        let Some(own) = tables.users.remove(&user_part) else {
            return;
        };
        tables.buckets[bucket_of(user_part)] -= 1;
        if tables.users.is_empty() {
            self.own = None;
        }
        for (hash, loc) in own.entries() {
            // Fewer than SHARED_BELOW entries: far from another move.
            self.runs.insert(hash, loc);
        }
    }
}

fn shard_of(hash: u64) -> usize {
    (mix(user_of(hash)) >> (64 - SHARD_BITS)) as usize
}

#[repr(align(64))]
#[derive(Default)]
struct Shard(RwLock<Tables>);

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

    /// Empties the index.
    pub(crate) fn clear(&mut self) {
        for shard in self.shards.iter_mut() {
            *shard.0.get_mut().unwrap_or_else(|e| e.into_inner()) = Tables::default();
        }
    }

    /// The hasher whose hashes this index takes.
    pub(crate) fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    fn shard(&self, hash: u64) -> &RwLock<Tables> {
        &self.shards[shard_of(hash)].0
    }

    fn read(&self, hash: u64) -> RwLockReadGuard<'_, Tables> {
        self.shard(hash).read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, hash: u64) -> RwLockWriteGuard<'_, Tables> {
        self.shard(hash).write().unwrap_or_else(|e| e.into_inner())
    }

    /// Exclusive access without the shard locks, for a single-threaded bulk build (recovery, before the index
    /// is shared): a lock round trip per operation costs as much as the operation.
    pub(crate) fn unshared(&mut self) -> Unshared<'_> {
        Unshared {
            shards: &mut self.shards,
            first: 0,
        }
    }

    /// Shard `i` as the index file saves it: `slot` gets its shared table's slots in order as (hash, packed
    /// location), (0, 0) where empty, then `own` the entries of its users' own tables. Returns the counts of
    /// each.
    pub(crate) fn save_shard(
        &self,
        i: usize,
        mut slot: impl FnMut(u64, u64),
        mut own: impl FnMut(u64, u64),
    ) -> (usize, usize) {
        let Some(shard) = self.shards.get(i) else {
            return (0, 0);
        };
        let tables = shard.0.read().unwrap_or_else(|e| e.into_inner());
        for s in &tables.runs.slots {
            slot(s.hash, s.loc);
        }
        let mut owned = 0;
        for t in tables
            .own
            .as_deref()
            .into_iter()
            .flat_map(|o| o.users.values())
        {
            for (hash, loc) in t.entries() {
                own(hash, loc.0);
                owned += 1;
            }
        }
        (tables.runs.slots.len(), owned)
    }

    /// Locations of every entry with this exact hash (usually zero or one).
    pub(crate) fn candidates(&self, hash: u64) -> Candidates {
        self.read(hash).candidates(hash)
    }

    /// The first entry with the hash `full()` returns, if any: a get's guess, right unless two keys share the
    /// hash. It stops at the entry instead of walking the rest of the run for others. `prefix` is the key's
    /// user prefix ([`crate::seed::UserHash::prefix`]); `full` is called only if the index holds entries of
    /// that user, so a get of a first-time user never computes its item's bits.
    pub(crate) fn first_candidate(&self, prefix: u64, full: impl Fn() -> u64) -> Option<Loc> {
        self.read(prefix).first_candidate(prefix, full)
    }

    /// Every entry whose user part is `user_part` (a superset of one user's mappings).
    pub(crate) fn user_candidates(&self, user_part: u64) -> Vec<(u64, Loc)> {
        self.read(user_part << USER_SHIFT)
            .user_candidates(user_part)
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
        shard.0.read().unwrap_or_else(|e| e.into_inner()).entries()
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.read().unwrap_or_else(|e| e.into_inner()).len() as u64)
            .sum()
    }

    /// Heap bytes held by the tables.
    pub(crate) fn heap_bytes(&self) -> u64 {
        let tables: usize = self
            .shards
            .iter()
            .map(|s| s.0.read().unwrap_or_else(|e| e.into_inner()).heap_bytes())
            .sum();
        (tables + self.shards.len() * size_of::<Shard>()) as u64
    }
}

/// The shards of an [`Unshared`] view.
#[derive(Clone, Debug)]
pub(crate) struct Owner(std::ops::Range<usize>);

impl Owner {
    /// True when `hash` belongs to one of these shards.
    pub(crate) fn owns(&self, hash: u64) -> bool {
        self.0.contains(&shard_of(hash))
    }
}

/// The index, borrowed exclusively: the same operations as [`Index`] without locking (see [`Index::unshared`]).
/// Either all of it, or one of the parts [`Unshared::split`] makes: a run of shards, which takes only the hashes
/// it [`owns`](Unshared::owns).
pub(crate) struct Unshared<'a> {
    shards: &'a mut [Shard],
    /// The number of the first shard in `shards`.
    first: usize,
}

impl<'a> Unshared<'a> {
    /// The caller passes only hashes this view owns (every hash, for the whole index).
    fn tables(&mut self, hash: u64) -> &mut Tables {
        debug_assert!(self.owns(hash));
        self.shards[shard_of(hash) - self.first]
            .0
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// True when `hash` belongs to a shard of this view.
    pub(crate) fn owns(&self, hash: u64) -> bool {
        self.owner().owns(hash)
    }

    /// Which hashes this view owns, as a value that does not borrow it.
    pub(crate) fn owner(&self) -> Owner {
        Owner(self.first..self.first + self.shards.len())
    }

    /// Starts (`true`) or ends a bulk build: while it lasts the shared tables grow by doubling, so that a
    /// build of unknown size (recovery scanning segments that have no hint) moves each entry about once instead of
    /// the ~5 times of quarter steps; ending it shrinks each shared table to the smallest capacity that holds its
    /// entries, which also takes back what [`Unshared::reserve`] gave for records that turned out dead. One
    /// pass over the tables, in order, and none at all for a table that is already the right size.
    pub(crate) fn bulk(&mut self, on: bool) {
        for shard in self.shards.iter_mut() {
            let tables = shard.0.get_mut().unwrap_or_else(|e| e.into_inner());
            tables.runs.bulk = on;
            if !on {
                tables.runs.fit();
            }
        }
    }

    /// Splits this view into at most `parts` views over disjoint runs of shards, which together own every hash
    /// this one owns: a bulk build can then fill them from several threads at once.
    pub(crate) fn split(self, parts: usize) -> Vec<Unshared<'a>> {
        let per_part = self.shards.len().div_ceil(parts.max(1)).max(1);
        let mut first = self.first;
        self.shards
            .chunks_mut(per_part)
            .map(|shards| {
                let part = Unshared { shards, first };
                first += part.shards.len();
                part
            })
            .collect()
    }

    /// Splits this view into at most `parts` (as [`Unshared::split`]) and runs `work` on each: the first on this
    /// thread, the others on threads of their own; a part whose thread cannot be started is done on this thread
    /// afterwards. The results come in no particular order. A panic in a part goes on on this thread.
    pub(crate) fn in_parts<T: Send>(
        self,
        parts: usize,
        work: impl Fn(Unshared<'a>) -> T + Sync,
    ) -> Vec<T> {
        let views: Vec<Mutex<Option<Unshared<'a>>>> = self
            .split(parts)
            .into_iter()
            .map(|view| Mutex::new(Some(view)))
            .collect();
        let pass = |slot: &Mutex<Option<Unshared<'a>>>| {
            let view = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            view.map(&work)
        };
        std::thread::scope(|scope| {
            let helpers: Vec<_> = views
                .iter()
                .skip(1)
                .filter_map(|slot| {
                    std::thread::Builder::new()
                        .name("ussdb-open".into())
                        .spawn_scoped(scope, || pass(slot))
                        .ok()
                })
                .collect();
            let mut results: Vec<T> = views.iter().take(1).filter_map(pass).collect();
            for helper in helpers {
                match helper.join() {
                    Ok(result) => results.extend(result),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            results.extend(views.iter().filter_map(pass));
            results
        })
    }

    /// Loads the home slots of `hashes` into the cache, so that the lookups that follow do not each wait for
    /// memory: the loads here are independent, and the CPU overlaps their misses. For bulk work that knows its
    /// keys in advance (recovery from hint files).
    pub(crate) fn prefetch(&mut self, hashes: &[u64]) {
        let sum = hashes.iter().fold(0u64, |sum, &hash| {
            sum.wrapping_add(self.tables(hash).touch(hash))
        });
        std::hint::black_box(sum);
    }

    /// Inserts (`hash`, `loc`) if no entry has this hash, and says whether it did. No entry with the hash means
    /// no entry for the key, so recovery from hints needs no key for it.
    pub(crate) fn insert_new_hash(&mut self, hash: u64, loc: Loc) -> bool {
        self.tables(hash).insert_new_hash(hash, loc)
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
                .runs
                .reserve(per_shard);
        }
    }

    /// The shards of this view, as numbers of the whole index.
    pub(crate) fn shard_numbers(&self) -> std::ops::Range<usize> {
        self.first..self.first + self.shards.len()
    }

    /// Restores shard `i` (one of [`Unshared::shard_numbers`]) from what [`Index::save_shard`] visited: the
    /// shared table's `slots`, then the `own` tables' entries. Every entry must belong to the shard and be taken
    /// by `accept` (a location in a segment of the store), and the table must be sound (`Table::restore`); else
    /// the shard is left empty and the reason returned.
    pub(crate) fn restore_shard(
        &mut self,
        i: usize,
        slots: impl ExactSizeIterator<Item = (u64, u64)>,
        mut own: impl Iterator<Item = (u64, u64)>,
        accept: impl Fn(Loc) -> bool,
    ) -> std::result::Result<(), String> {
        let Some(shard) = i
            .checked_sub(self.first)
            .and_then(|k| self.shards.get_mut(k))
        else {
            return Err(format!("shard {i} is not one of this part's"));
        };
        let tables = shard.0.get_mut().unwrap_or_else(|e| e.into_inner());
        *tables = Tables::default();
        let accept = |hash: u64, loc: Loc| shard_of(hash) == i && loc.segment() != 0 && accept(loc);
        tables.runs.restore(slots, accept)?;
        let restored = own.try_for_each(|(hash, loc)| {
            if loc == 0 || !accept(hash, Loc(loc)) {
                return Err("an own table's entry of another shard or segment".to_owned());
            }
            tables.restore_own(hash, Loc(loc))
        });
        if restored.is_err() {
            *tables = Tables::default();
        }
        restored
    }

    /// As [`Index::candidates`].
    pub(crate) fn candidates(&mut self, hash: u64) -> Candidates {
        self.tables(hash).candidates(hash)
    }

    /// As [`Index::insert`].
    pub(crate) fn insert(&mut self, hash: u64, loc: Loc) {
        self.tables(hash).insert(hash, loc);
    }

    /// As [`Index::replace`].
    pub(crate) fn replace(&mut self, hash: u64, old: Loc, new: Loc) -> bool {
        self.tables(hash).replace(hash, old, new)
    }

    /// As [`Index::remove`].
    pub(crate) fn remove(&mut self, hash: u64, loc: Loc) -> bool {
        self.tables(hash).remove(hash, loc)
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
    use std::collections::BTreeSet;

    /// A fixed sequence, so a failure replays.
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut rng = crate::testing::Rng(seed);
        move || rng.next()
    }

    fn table_matches_a_model<const BY_KEY: bool>() {
        // Hashes drawn from a tiny range force long runs, wrap-around and backward shifts (and, in a table by
        // key, shrinking as it empties).
        let mut table = Table::<BY_KEY>::default();
        let mut model: HashMap<u64, u64> = HashMap::new();
        let mut next = rng(0x1234_5678);
        for step in 1..20_000u64 {
            let hash = (next() % 7) << USER_SHIFT | (next() % 3);
            let loc = Loc::new(1, step);
            // Phases of mostly inserts and mostly removes, so the table grows and shrinks many times.
            let removing = match (step / 2000) % 2 {
                0 => next().is_multiple_of(3),
                _ => !next().is_multiple_of(4),
            };
            if removing {
                if let Some((&l, _)) = model.iter().find(|(_, h)| **h == hash) {
                    assert!(table.remove(hash, Loc(l)), "model entry is in the table");
                    model.remove(&l);
                }
            } else {
                table.insert(hash, loc);
                model.insert(loc.0, hash);
            }
            assert_eq!(table.len, model.len());
            assert_tags_mirror_slots(&table);
            // The word-wise walk of a get finds what the plain walk finds, for this hash and one never stored.
            for h in [hash, hash | 0x40, hash ^ (0x40 << USER_SHIFT)] {
                let first = table.matches(h).next().map(|(_, s)| Loc(s.loc));
                // The shared table finds from any hash of the user; a user's own table needs the key's.
                let probe = if BY_KEY {
                    h
                } else {
                    crate::seed::user_prefix(h)
                };
                assert_eq!(
                    table.first_candidate(probe, || h),
                    first,
                    "first entry of {h:#x}"
                );
            }
            if BY_KEY && table.slots.len() > MIN_CAPACITY {
                assert!(
                    table.len * 8 >= table.slots.len(),
                    "a table by key shrinks: {} in {}",
                    table.len,
                    table.slots.len()
                );
            }
        }
        for (&loc, &hash) in &model {
            assert!(table.find(hash, Loc(loc)).is_some());
        }
    }

    /// Every tag is its slot's: 0 for an empty slot, the hash's tag for a full one.
    fn assert_tags_mirror_slots<const BY_KEY: bool>(table: &Table<BY_KEY>) {
        assert_eq!(table.tags.len(), table.slots.len());
        for (i, (slot, &t)) in table.slots.iter().zip(&table.tags).enumerate() {
            let want = if slot.loc == 0 {
                0
            } else {
                Table::<BY_KEY>::tag(slot.hash)
            };
            assert_eq!(t, want, "tag of slot {i}");
        }
    }

    #[test]
    fn shared_table_matches_a_model_under_heavy_collisions() {
        table_matches_a_model::<false>();
    }

    #[test]
    fn own_table_matches_a_model_under_heavy_collisions() {
        table_matches_a_model::<true>();
    }

    /// User parts that all fall on one shard, so their runs and own tables share it.
    fn users_of_one_shard(count: usize) -> Vec<u64> {
        let shard = shard_of(1 << USER_SHIFT);
        (1u64..)
            .filter(|&u| shard_of(u << USER_SHIFT) == shard)
            .take(count)
            .collect()
    }

    /// Checks every way of reading the index against `model` (location -> hash).
    fn check_against(index: &Index, model: &HashMap<u64, u64>, users: &[u64], items: u64) {
        assert_eq!(index.len(), model.len() as u64);
        for &user in users {
            let want: BTreeSet<(u64, u64)> = model
                .iter()
                .filter(|(_, h)| user_of(**h) == user)
                .map(|(&l, &h)| (h, l))
                .collect();
            let got: Vec<(u64, u64)> = index
                .user_candidates(user)
                .into_iter()
                .map(|(h, l)| (h, l.0))
                .collect();
            assert_eq!(got.len(), want.len(), "user {user}: one copy of each entry");
            assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);
            for item in 0..items {
                let hash = user << USER_SHIFT | item;
                let want: BTreeSet<u64> = want
                    .iter()
                    .filter(|(h, _)| *h == hash)
                    .map(|(_, l)| *l)
                    .collect();
                let got: Vec<u64> = index.candidates(hash).iter().map(|l| l.0).collect();
                assert_eq!(got.len(), want.len());
                assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);
            }
        }
        let all: Vec<(u64, u64)> = (0..index.shard_count())
            .flat_map(|i| index.shard_entries(i))
            .map(|(h, l)| (h, l.0))
            .collect();
        assert_eq!(all.len(), model.len());
        let want: BTreeSet<(u64, u64)> = model.iter().map(|(&l, &h)| (h, l)).collect();
        assert_eq!(all.into_iter().collect::<BTreeSet<_>>(), want);
    }

    #[test]
    fn index_matches_a_model_as_users_move_in_and_out_of_own_tables() {
        // Users of one shard grow past OWN_TABLE_ABOVE and shrink below SHARED_BELOW again and again, with
        // colliding hashes (few item values), replaces, and misses mixed in; both the locked and the unshared
        // paths are used.
        const ITEMS: u64 = 40;
        let mut index = Index::new(KeyHasher::new(crate::seed::Seed::random(), false));
        let users = users_of_one_shard(5);
        let mut model: HashMap<u64, u64> = HashMap::new();
        let mut next = rng(0x9e37_79b9);
        let mut step = 0u64;
        let mut moved_out = 0;
        for round in 0..120 {
            let user = users[(next() % users.len() as u64) as usize];
            let target = [0, 3, 20, 40, 100][(next() % 5) as usize];
            let count =
                |model: &HashMap<u64, u64>| model.values().filter(|h| user_of(**h) == user).count();
            while count(&model) != target {
                step += 1;
                let unshared = next().is_multiple_of(2);
                let mine: Vec<(u64, u64)> = model
                    .iter()
                    .filter(|(_, h)| user_of(**h) == user)
                    .map(|(&l, &h)| (l, h))
                    .collect();
                if count(&model) < target {
                    let hash = (user << USER_SHIFT) | (next() % ITEMS);
                    let loc = Loc::new(1, step);
                    if unshared {
                        index.unshared().insert(hash, loc);
                    } else {
                        index.insert(hash, loc);
                    }
                    model.insert(loc.0, hash);
                } else {
                    let (l, h) = mine[(next() % mine.len() as u64) as usize];
                    let removed = if unshared {
                        index.unshared().remove(h, Loc(l))
                    } else {
                        index.remove(h, Loc(l))
                    };
                    assert!(removed);
                    model.remove(&l);
                }
                // A miss changes nothing; a replace moves one entry.
                assert!(!index.remove(user << USER_SHIFT | ITEMS, Loc::new(1, step)));
                assert!(!index.replace(user << USER_SHIFT, Loc::new(2, step), Loc::new(2, 1)));
                let first = model.iter().find(|(_, h)| user_of(**h) == user);
                if let Some((&l, &h)) = first {
                    let new = Loc::new(3, step);
                    assert!(index.replace(h, Loc(l), new));
                    model.remove(&l);
                    model.insert(new.0, h);
                }
            }
            let shard = index.shards[shard_of(user << USER_SHIFT)]
                .0
                .read()
                .expect("lock");
            let has_own = shard.own(user).is_some();
            let in_runs = shard
                .runs
                .entries()
                .filter(|(h, _)| user_of(*h) == user)
                .count();
            // A user's entries are all in one place.
            assert!(!has_own || in_runs == 0, "round {round}");
            if target > OWN_TABLE_ABOVE {
                assert!(
                    has_own,
                    "round {round}: {target} entries get a table of their own"
                );
            }
            if target < SHARED_BELOW {
                assert!(
                    !has_own,
                    "round {round}: {target} entries go back to the shared table"
                );
            }
            moved_out += usize::from(has_own);
            drop(shard);
            check_against(&index, &model, &users, ITEMS);
        }
        assert!(moved_out > 10, "the rounds exercised own tables");
    }

    /// (hash, packed location) pairs.
    type Pairs = Vec<(u64, u64)>;

    /// What `Index::save_shard` visits for shard `i`: its shared table's slots, then its own tables' entries.
    fn saved(index: &Index, i: usize) -> (Pairs, Pairs) {
        let (mut slots, mut own) = (Vec::new(), Vec::new());
        let shape = index.save_shard(i, |h, l| slots.push((h, l)), |h, l| own.push((h, l)));
        assert_eq!(shape, (slots.len(), own.len()));
        (slots, own)
    }

    #[test]
    fn a_saved_index_restores_to_the_same_entries() {
        // Users of one shard with a few entries each, users with tables of their own, colliding hashes
        // (few item values), removals; then every shard saved and restored into a new index, on two parts.
        const ITEMS: u64 = 40;
        let index = Index::new(KeyHasher::new(crate::seed::Seed::random(), false));
        let users = users_of_one_shard(60);
        let mut model: HashMap<u64, u64> = HashMap::new();
        let mut next = rng(0x5eed);
        for step in 1..6000u64 {
            let user = users[(next() % users.len() as u64) as usize];
            let hash = (user << USER_SHIFT) | (next() % ITEMS);
            let loc = Loc::new(1 + (step % 3) as u32, step);
            index.insert(hash, loc);
            model.insert(loc.0, hash);
            if next().is_multiple_of(4) {
                let (&l, &h) = model.iter().next().expect("an entry");
                assert!(index.remove(h, Loc(l)));
                model.remove(&l);
            }
        }
        // Other shards too.
        for step in 1..3000u64 {
            let hash = next();
            let loc = Loc::new(4, step);
            index.insert(hash, loc);
            model.insert(loc.0, hash);
        }
        let mut all_users = users.clone();
        all_users.extend(model.values().map(|h| user_of(*h)));
        all_users.sort_unstable();
        all_users.dedup();
        let owned = index
            .shards
            .iter()
            .filter_map(|s| s.0.read().ok()?.own.as_deref().map(|o| o.users.len()))
            .sum::<usize>();
        assert!(owned > 0, "some users have tables of their own");
        let mut restored = Index::new(index.hasher().clone());
        let parts = restored.unshared().split(2);
        for mut part in parts {
            for i in part.shard_numbers() {
                let (slots, own) = saved(&index, i);
                part.restore_shard(i, slots.into_iter(), own.into_iter(), |l| l.segment() <= 4)
                    .expect("a sound shard");
            }
        }
        check_against(&restored, &model, &all_users, ITEMS);
        for i in 0..SHARD_COUNT {
            let (mut back, mut before) = (saved(&restored, i), saved(&index, i));
            assert_eq!(
                back.0, before.0,
                "shard {i}: the shared table slot for slot"
            );
            back.1.sort_unstable();
            before.1.sort_unstable();
            assert_eq!(back.1, before.1, "shard {i}: the own tables' entries");
        }
        // A user in both tables is refused.
        let shard = shard_of(users[0] << USER_SHIFT);
        let (slots, mut own) = saved(&index, shard);
        let &(in_runs, _) = slots
            .iter()
            .find(|s| s.1 != 0)
            .expect("an entry in the shared table");
        own.push((in_runs, Loc::new(1, 1).0));
        let mut again = Index::new(index.hasher().clone());
        let result =
            again
                .unshared()
                .restore_shard(shard, slots.into_iter(), own.into_iter(), |_| true);
        assert!(result.is_err() && again.len() == 0, "{result:?}");
    }

    #[test]
    fn a_restore_refuses_what_no_table_could_hold() {
        let index = Index::new(KeyHasher::new(crate::seed::Seed::random(), false));
        let users = users_of_one_shard(20);
        let shard = shard_of(users[0] << USER_SHIFT);
        for (k, &user) in users.iter().enumerate() {
            index.insert(user << USER_SHIFT, Loc::new(1, k as u64 + 1));
        }
        let (slots, own) = saved(&index, shard);
        assert!(own.is_empty());
        let restore = |slots: Vec<(u64, u64)>, accept: &dyn Fn(Loc) -> bool| {
            let mut fresh = Index::new(index.hasher().clone());
            let result = fresh.unshared().restore_shard(
                shard,
                slots.into_iter(),
                std::iter::empty(),
                accept,
            );
            (result, fresh.len())
        };
        assert_eq!(restore(slots.clone(), &|_| true), (Ok(()), 20));
        let occupied =
            |slots: &[(u64, u64)]| slots.iter().position(|s| s.1 != 0).expect("an entry");
        let mut damaged: Vec<(&str, Vec<(u64, u64)>)> = Vec::new();
        // A capacity not of the sequence.
        let mut longer = slots.clone();
        longer.push((0, 0));
        damaged.push(("capacity", longer));
        // An entry moved to the slot before its home's run: unreachable.
        let mut moved = slots.clone();
        let i = occupied(&moved);
        let home = moved.len() - 1 + i;
        let entry = moved[i];
        let empty_before = (0..moved.len())
            .map(|k| (home - k) % moved.len())
            .find(|&k| moved[k].1 == 0)
            .expect("an empty slot");
        moved[i] = (0, 0);
        moved[empty_before] = entry;
        damaged.push(("unreachable", moved));
        // An empty slot with a hash.
        let mut ghost = slots.clone();
        let e = ghost.iter().position(|s| s.1 == 0).expect("an empty slot");
        ghost[e].0 = 7;
        damaged.push(("hash in an empty slot", ghost));
        // An entry of another shard.
        let mut stranger = slots.clone();
        let i = occupied(&stranger);
        stranger[i].0 = (1..)
            .map(|u: u64| u << USER_SHIFT)
            .find(|&h| shard_of(h) != shard)
            .expect("a hash");
        damaged.push(("another shard's", stranger));
        // More than 3/4 full.
        let full: Vec<(u64, u64)> = (0..16u64)
            .map(|k| {
                let user = users[k as usize % users.len()];
                (user << USER_SHIFT | k, Loc::new(1, k + 1).0)
            })
            .collect();
        damaged.push(("full", full));
        for (what, slots) in damaged {
            let (result, len) = restore(slots, &|_| true);
            assert!(result.is_err(), "{what}: refused");
            assert_eq!(len, 0, "{what}: the shard is left empty");
        }
        // An entry in a segment the store does not have.
        let (result, len) = restore(slots, &|l| l.segment() != 1);
        assert!(result.is_err() && len == 0);
    }

    #[test]
    fn insert_new_hash_moves_a_user_out_and_still_refuses_known_hashes() {
        let mut index = Index::new(KeyHasher::new(crate::seed::Seed::random(), false));
        let user = 77u64;
        let mut unshared = index.unshared();
        for item in 0..100u64 {
            assert!(unshared.insert_new_hash(user << USER_SHIFT | item, Loc::new(1, 10 + item)));
        }
        for item in 0..100u64 {
            assert!(!unshared.insert_new_hash(user << USER_SHIFT | item, Loc::new(2, 10 + item)));
        }
        assert!(index.read(user << USER_SHIFT).own(user).is_some());
        assert_eq!(index.len(), 100);
        for item in 0..100u64 {
            let found: Vec<Loc> = index.candidates(user << USER_SHIFT | item).iter().collect();
            assert_eq!(found, [Loc::new(1, 10 + item)]);
        }
    }

    /// Mean distance of an entry from its home slot: what a lookup walks past.
    fn mean_displacement<const BY_KEY: bool>(table: &Table<BY_KEY>) -> f64 {
        let total: usize = (0..table.slots.len())
            .filter(|&i| table.slots[i].loc != 0)
            .map(|i| table.distance(table.home(table.slots[i].hash), i))
            .sum();
        total as f64 / table.len.max(1) as f64
    }

    #[test]
    fn a_user_with_many_items_costs_what_a_user_with_few_does() {
        let index = Index::new(KeyHasher::new(crate::seed::Seed::random(), false));
        let h = index.hasher().clone();
        let big = h.user_part(b"big");
        let others = 2000u64;
        for i in 0..others {
            for c in 0..3u64 {
                let hash = h.hash(format!("u{i}").as_bytes(), format!("c{c}").as_bytes());
                index.insert(hash, Loc::new(2, i * 3 + c));
            }
        }
        let items = 100_000u64;
        for c in 0..items {
            index.insert(h.hash(b"big", format!("c{c}").as_bytes()), Loc::new(1, c));
        }
        assert_eq!(index.len(), items + others * 3);
        {
            let shard = index.read(big << USER_SHIFT);
            let own = shard.own(big).expect("a table of its own");
            assert_eq!(own.len as u64, items);
            // A lookup walks a few slots, not the user's 100k entries (linear probing at <= 3/4 load: ~2.5).
            assert!(mean_displacement(own) < 4.0, "{}", mean_displacement(own));
            assert!(mean_displacement(&shard.runs) < 8.0);
        }
        for c in (0..items).step_by(7) {
            let found: Vec<Loc> = index
                .candidates(h.hash(b"big", format!("c{c}").as_bytes()))
                .iter()
                .collect();
            assert!(found.contains(&Loc::new(1, c)));
        }
        assert_eq!(index.user_candidates(big).len() as u64, items);
        // Same heap per mapping as the shared tables: 17 bytes per slot at 3/5..3/4 load, plus fixed costs.
        let per_mapping = index.heap_bytes() as f64 / index.len() as f64;
        assert!(per_mapping < 30.0, "{per_mapping} heap bytes per mapping");

        // Forgetting all but a few moves them back and frees the table.
        for c in 5..items {
            let hash = h.hash(b"big", format!("c{c}").as_bytes());
            assert!(index.remove(hash, Loc::new(1, c)));
        }
        let shard = index.read(big << USER_SHIFT);
        assert!(shard.own.is_none());
        drop(shard);
        assert_eq!(index.user_candidates(big).len(), 5);
        assert_eq!(index.len(), 5 + others * 3);
        let per_mapping = index.heap_bytes() as f64 / index.len() as f64;
        assert!(per_mapping < 45.0, "{per_mapping} heap bytes per mapping");
    }

    #[test]
    fn capacities_grow_a_quarter_at_a_time() {
        let mut capacity = MIN_CAPACITY;
        let mut seen = vec![capacity];
        while capacity < 256 {
            capacity = next_capacity(capacity);
            seen.push(capacity);
        }
        assert_eq!(
            seen,
            [
                16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256
            ]
        );
        assert_eq!(capacity_for(0), Some(MIN_CAPACITY));
        assert_eq!(capacity_for(12), Some(16));
        assert_eq!(capacity_for(13), Some(20));
        assert_eq!(capacity_for(usize::MAX / 2), None);
    }

    #[test]
    fn the_index_costs_under_29_bytes_per_entry_at_any_size() {
        // 17 bytes per slot (entry and tag) at 3/5..3/4 load, plus the shards' fixed costs: measured at sizes
        // spread over more than a doubling, so that every point of the capacity cycle is met.
        let h = KeyHasher::new(crate::seed::Seed::random(), false);
        let index = Index::new(h.clone());
        let mut worst = 0f64;
        for i in 0..240_000u64 {
            index.insert(h.hash(format!("u{i}").as_bytes(), b"c"), Loc::new(1, i + 1));
            if i >= 100_000 && i % 1000 == 0 {
                worst = worst.max(index.heap_bytes() as f64 / index.len() as f64);
            }
        }
        assert!(worst <= 29.0, "{worst} heap bytes per entry");
        assert!(worst >= 24.0, "{worst}: the bound above is not the one met");
    }

    #[test]
    fn a_bulk_build_doubles_and_its_end_fits_the_tables() {
        let h = KeyHasher::new(crate::seed::Seed::random(), false);
        let mut index = Index::new(h.clone());
        index.unshared().bulk(true);
        // Reserved for more than comes (hints count dead records too), then filled past a doubling.
        index.unshared().reserve(30_000);
        let hashes: Vec<u64> = (0..50_000u64)
            .map(|i| h.hash(format!("u{i}").as_bytes(), b"c"))
            .collect();
        for (i, &hash) in (1..).zip(&hashes) {
            assert!(index.unshared().insert_new_hash(hash, Loc::new(1, i)));
        }
        let capacities = |index: &mut Index| -> Vec<usize> {
            let view = index.unshared();
            view.shards
                .iter()
                .map(|s| s.0.read().map_or(0, |t| t.runs.slots.len()))
                .collect()
        };
        let before = capacities(&mut index);
        index.unshared().bulk(false);
        let after = capacities(&mut index);
        assert!(before.iter().zip(&after).all(|(b, a)| a <= b));
        assert!(
            before != after,
            "some tables were larger than their entries need"
        );
        let per_entry = index.heap_bytes() as f64 / index.len() as f64;
        assert!(
            per_entry <= 29.0,
            "{per_entry} heap bytes per entry after the build"
        );
        for (i, &hash) in (1..).zip(&hashes) {
            assert_eq!(
                index.candidates(hash).iter().collect::<Vec<_>>(),
                [Loc::new(1, i)]
            );
        }
        // Writes after the build grow by quarter steps again.
        let shard = index.read(hashes[0]);
        assert!(!shard.runs.bulk);
    }

    #[test]
    fn an_own_table_emptied_in_slot_order_keeps_short_runs() {
        // `forget_user` removes a user's entries in slot order; each shrink must scatter the survivors (which
        // all come from the end of the old table) over the whole new table.
        let h = KeyHasher::new(crate::seed::Seed::random(), false);
        let mut table = Own::default();
        for c in 0..100_000u64 {
            let hash = h.hash(b"big", format!("c{c}").as_bytes());
            table.insert(hash, Loc::new(1, c + 1));
        }
        let order: Vec<(u64, Loc)> = table.entries().collect();
        let mut shrinks = 0;
        for (hash, loc) in order {
            let capacity = table.slots.len();
            assert!(table.remove(hash, loc));
            if table.slots.len() != capacity && table.len > 0 {
                shrinks += 1;
                let d = mean_displacement(&table);
                assert!(d < 4.0, "{d} after shrinking to {}", table.slots.len());
            }
        }
        assert!(shrinks >= 5, "{shrinks} shrinks");
    }

    #[test]
    fn colliding_hashes_stay_correct() {
        // The weak hasher maps every key onto four hashes: two users, two items.
        let index = Index::new(KeyHasher::new(crate::seed::Seed::random(), true));
        let h = index.hasher().clone();
        let keys: Vec<(String, String)> = (0..300)
            .map(|i| {
                (
                    format!("{}user{}", ["a", "b"][i % 2], i % 7),
                    format!("c{i}"),
                )
            })
            .collect();
        for (i, (u, c)) in keys.iter().enumerate() {
            index.insert(
                h.hash(u.as_bytes(), c.as_bytes()),
                Loc::new(1, i as u64 + 1),
            );
        }
        for (i, (u, c)) in keys.iter().enumerate() {
            let found: Vec<Loc> = index
                .candidates(h.hash(u.as_bytes(), c.as_bytes()))
                .iter()
                .collect();
            assert!(found.contains(&Loc::new(1, i as u64 + 1)));
        }
        let users: usize = [b"a".as_slice(), b"b"]
            .iter()
            .map(|u| index.user_candidates(h.user_part(u)).len())
            .sum();
        assert_eq!(users, 300);
        for (i, (u, c)) in keys.iter().enumerate().skip(3) {
            assert!(index.remove(
                h.hash(u.as_bytes(), c.as_bytes()),
                Loc::new(1, i as u64 + 1)
            ));
        }
        assert_eq!(index.len(), 3);
        for (i, (u, c)) in keys.iter().enumerate().take(3) {
            let found: Vec<Loc> = index
                .candidates(h.hash(u.as_bytes(), c.as_bytes()))
                .iter()
                .collect();
            assert!(found.contains(&Loc::new(1, i as u64 + 1)));
        }
    }

    #[test]
    fn split_views_own_every_hash_once_and_fill_the_shards_they_own() {
        let mut next = rng(0xABCD);
        let hashes: Vec<u64> = (0..5_000).map(|_| next()).collect();
        for parts in 1..=5 {
            let mut index = Index::new(KeyHasher::new(crate::seed::Seed::from_keys(1, 2), false));
            let mut views = index.unshared().split(parts);
            assert!(views.len() <= parts && !views.is_empty());
            for (i, &hash) in hashes.iter().enumerate() {
                let owners: Vec<usize> =
                    (0..views.len()).filter(|&v| views[v].owns(hash)).collect();
                assert_eq!(owners.len(), 1, "{parts} parts: hash {hash:#x}");
                assert!(views[owners[0]].insert_new_hash(hash, Loc::new(1, i as u64 + 1)));
            }
            drop(views);
            assert_eq!(index.len(), hashes.len() as u64, "{parts} parts");
            for (i, &hash) in hashes.iter().enumerate() {
                assert_eq!(
                    index.candidates(hash).iter().collect::<Vec<_>>(),
                    vec![Loc::new(1, i as u64 + 1)]
                );
            }
        }
    }

    #[test]
    fn reserve_takes_memory_only_where_entries_arrive() {
        let mut index = Index::new(KeyHasher::new(crate::seed::Seed::random(), false));
        let empty = index.heap_bytes();
        index.unshared().reserve(1_000_000);
        assert_eq!(index.heap_bytes(), empty);
        index.unshared().insert(5 << USER_SHIFT, Loc::new(1, 1));
        let one_shard = index.heap_bytes() - empty;
        // One shard's share of a million entries at <= 3/4 load, in one allocation.
        assert!(one_shard as usize >= 1_000_000 / 64 * 4 / 3 * size_of::<Slot>());
        assert!((one_shard as usize) < 1_000_000 / 64 * 3 * size_of::<Slot>());
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
