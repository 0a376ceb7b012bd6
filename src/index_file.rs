//! The index file: the whole index saved at a clean close, so that the next open loads it instead of rebuilding
//! it from hint files. Its byte layout is in docs/FORMAT.md ("The index file").
//!
//! Hint files list records in log order, and rebuilding the index from them puts each entry into a table of a
//! quarter gigabyte (at 10M mappings) at a place of its own: a cache miss per entry, most of an open's time. The
//! index file holds the tables themselves, slot by slot, so loading it writes each table front to back.
//!
//! It is used only when the store is exactly as it was saved: the same hash function, manifest generation, and
//! segments in the same order with the same lengths and the same last bytes (as a hint file is checked against its
//! segment). Every section has its checksum, every entry must point into a segment of the store and be reachable
//! in its table; anything else and the open rebuilds the index from hint files and segments, as without the file.
//! A writable open removes the file before its first append, so a file that outlived its state is never there to
//! be mistaken for a current one.

use std::path::Path;

use crate::index::{Index, Loc, SHARD_COUNT, Unshared};
use crate::vfs::{VFile, Vfs};
use crate::{Error, Result};

/// The index file's name in the store directory.
pub(crate) const INDEX_FILE: &str = "INDEX";
const MAGIC: [u8; 8] = *b"USSDBIDX";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 48;
const SEGMENT_ENTRY_LEN: usize = 32;
const SHARD_ENTRY_LEN: usize = 32;
const SLOT_LEN: usize = 16;
/// How many of a segment's last bytes the file's checksum of the segment covers.
pub(crate) const TAIL_LEN: usize = 64;

/// A segment as the index file records it: what must still be true of it for the file to be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SavedSegment {
    pub(crate) id: u32,
    /// The newest segment (the last one), which takes the appends.
    pub(crate) active: bool,
    pub(crate) len: u64,
    /// CRC-32 of the segment's last [`TAIL_LEN`] bytes, or of all of them when it is shorter.
    pub(crate) tail_crc: u32,
}

/// The state of a store the index file is made for, and must find again to be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct State {
    /// `KeyHasher::identity`: the hashes in the tables are this function's.
    pub(crate) hasher: u64,
    /// The manifest's generation.
    pub(crate) generation: u64,
    /// In replay order: the sealed segments in the manifest's order, then the active one.
    pub(crate) segments: Vec<SavedSegment>,
}

/// A map from segment ids to numbers, looked up once per entry of the index: a vector indexed from the lowest id
/// where the ids lie close together (they do, short of a store compacted many times over), else a sorted one
/// searched.
enum IdMap {
    Dense {
        first: u32,
        values: Vec<Option<u64>>,
    },
    Sparse(Vec<(u32, u64)>),
}

impl IdMap {
    /// Ids this far apart or closer get the dense form (16 MiB at most).
    const DENSE_SPAN: u32 = 1 << 20;

    fn new(pairs: impl Iterator<Item = (u32, u64)> + Clone) -> IdMap {
        let first = pairs.clone().map(|(id, _)| id).min().unwrap_or(0);
        let last = pairs.clone().map(|(id, _)| id).max().unwrap_or(0);
        if last - first < Self::DENSE_SPAN {
            let mut values = vec![None; (last - first) as usize + 1];
            for (id, value) in pairs {
                if let Some(slot) = values.get_mut((id - first) as usize) {
                    *slot = Some(value);
                }
            }
            return IdMap::Dense { first, values };
        }
        let mut sorted: Vec<(u32, u64)> = pairs.collect();
        sorted.sort_unstable();
        IdMap::Sparse(sorted)
    }

    fn get(&self, id: u32) -> Option<u64> {
        match self {
            IdMap::Dense { first, values } => id
                .checked_sub(*first)
                .and_then(|k| values.get(k as usize).copied().flatten()),
            IdMap::Sparse(sorted) => sorted
                .binary_search_by_key(&id, |&(id, _)| id)
                .ok()
                .and_then(|k| sorted.get(k).map(|&(_, value)| value)),
        }
    }
}

/// The checksum a [`SavedSegment`] keeps of a segment whose bytes are `bytes`.
pub(crate) fn tail_crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(
        bytes
            .get(bytes.len().saturating_sub(TAIL_LEN)..)
            .unwrap_or_default(),
    )
}

/// One shard's place in the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ShardEntry {
    offset: u64,
    /// Slots of the shard's shared table.
    capacity: u64,
    /// Entries of its users' own tables.
    own: u64,
    crc: u32,
}

impl ShardEntry {
    fn len(&self) -> Option<u64> {
        self.capacity
            .checked_add(self.own)?
            .checked_mul(SLOT_LEN as u64)
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = bytes.get(at..at + 4) {
        b.copy_from_slice(s);
    }
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = bytes.get(at..at + 8) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

/// Where the shard directory starts in a file of a store with `segments` segments.
fn directory_at(segments: usize) -> usize {
    HEADER_LEN + segments * SEGMENT_ENTRY_LEN
}

/// The length of the head (header, segment table, shard directory) of such a file; the sections follow it.
fn head_len(segments: usize) -> usize {
    directory_at(segments) + SHARD_COUNT * SHARD_ENTRY_LEN
}

/// Header, segment table and shard directory, with the header's checksum over all three.
fn encode_head(state: &State, dead: &[u64], shards: &[ShardEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head_len(state.segments.len()));
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(shards.len() as u32).to_le_bytes());
    out.extend_from_slice(&state.hasher.to_le_bytes());
    out.extend_from_slice(&state.generation.to_le_bytes());
    out.extend_from_slice(&(state.segments.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 12]);
    for (s, dead) in state.segments.iter().zip(dead) {
        out.extend_from_slice(&s.id.to_le_bytes());
        out.extend_from_slice(&u32::from(s.active).to_le_bytes());
        out.extend_from_slice(&s.len.to_le_bytes());
        out.extend_from_slice(&dead.to_le_bytes());
        out.extend_from_slice(&s.tail_crc.to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
    }
    for shard in shards {
        out.extend_from_slice(&shard.offset.to_le_bytes());
        out.extend_from_slice(&shard.capacity.to_le_bytes());
        out.extend_from_slice(&shard.own.to_le_bytes());
        out.extend_from_slice(&shard.crc.to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
    }
    let crc = head_crc(&out);
    if let Some(field) = out.get_mut(40..44) {
        field.copy_from_slice(&crc.to_le_bytes());
    }
    out
}

/// The header's checksum: everything before the sections, with the checksum field itself taken as zero.
fn head_crc(head: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(head.get(..40).unwrap_or_default());
    hasher.update(&[0u8; 4]);
    hasher.update(head.get(44..).unwrap_or_default());
    hasher.finalize()
}

/// Writes `index` to the index file in `dir` (through a temporary file and a rename), for a store in `state`
/// whose segments have `dead` dead bytes each (in the order of `state.segments`). `ids` maps the segment ids of
/// the index's locations to the segments' file ids, which `state` names and the next open gives them (a
/// `Segment` keeps the two apart; today a compaction output gets the same number for both). Returns the file's
/// length.
///
/// Not fsynced: the file only saves time, and one that did not reach the disk whole fails its checksums at the
/// next open, which then rebuilds the index as it would without it. The caller keeps the index from changing
/// while it runs (no write, no compaction).
pub(crate) fn write(
    vfs: &dyn Vfs,
    dir: &Path,
    index: &Index,
    state: &State,
    dead: &[u64],
    ids: &[(u32, u32)],
) -> Result<u64> {
    let path = dir.join(INDEX_FILE);
    let tmp = dir.join(crate::dir::tmp_name(INDEX_FILE));
    let _ = vfs.remove_file(&tmp);
    let file = vfs
        .create_new(&tmp)
        .map_err(|e| Error::io("create index file", &tmp, e))?;
    let ids = IdMap::new(ids.iter().map(|&(id, file_id)| (id, u64::from(file_id))));
    let written = write_to(&*file, &tmp, index, state, dead, &ids).and_then(|len| {
        vfs.rename(&tmp, &path)
            .map_err(|e| Error::io("rename index file", &tmp, e))?;
        Ok(len)
    });
    if written.is_err() {
        let _ = vfs.remove_file(&tmp);
    }
    written
}

fn write_to(
    file: &dyn VFile,
    path: &Path,
    index: &Index,
    state: &State,
    dead: &[u64],
    ids: &IdMap,
) -> Result<u64> {
    let head_len = head_len(state.segments.len());
    // The head's size does not depend on the sections: they are written one after the other behind it, and the
    // head, with their places and checksums, last.
    let mut shards = Vec::with_capacity(SHARD_COUNT);
    let mut offset = head_len as u64;
    let mut section = Vec::new();
    let mut own = Vec::new();
    let mut unknown = None;
    for i in 0..SHARD_COUNT {
        section.clear();
        own.clear();
        // A location names its segment by the id it has in memory; the file names it by its file id.
        let mut file_loc = |loc: u64| {
            let loc = Loc::from_bits(loc);
            match ids.get(loc.segment()) {
                Some(file_id) => Loc::new(file_id as u32, loc.offset()).bits(),
                None => {
                    unknown = Some(loc);
                    0
                }
            }
        };
        let (capacity, owned) = index.save_shard(
            i,
            |hash, loc| {
                let loc = if loc == 0 { 0 } else { file_loc(loc) };
                section.extend_from_slice(&hash.to_le_bytes());
                section.extend_from_slice(&loc.to_le_bytes());
            },
            |hash, loc| own.push((hash, loc)),
        );
        for &(hash, loc) in &own {
            let loc = file_loc(loc);
            section.extend_from_slice(&hash.to_le_bytes());
            section.extend_from_slice(&loc.to_le_bytes());
        }
        if let Some(loc) = unknown {
            return Err(Error::io(
                "write index file",
                path,
                std::io::Error::other(format!(
                    "an entry points into segment {}, not one of the store's",
                    loc.segment()
                )),
            ));
        }
        file.write_all_at(&section, offset)
            .map_err(|e| Error::io("write index file", path, e))?;
        shards.push(ShardEntry {
            offset,
            capacity: capacity as u64,
            own: owned as u64,
            crc: crc32fast::hash(&section),
        });
        offset += section.len() as u64;
    }
    file.write_all_at(&encode_head(state, dead, &shards), 0)
        .map_err(|e| Error::io("write index file", path, e))?;
    Ok(offset)
}

/// Loads the index file of `dir` into `index` (empty) if it was made for a store in `state`, on `parts` threads.
/// Returns the dead bytes of each segment of `state`, or why the file was not used, after which `index` is empty
/// again. `None` when there is no index file.
pub(crate) fn load(
    vfs: &dyn Vfs,
    dir: &Path,
    index: &mut Index,
    state: &State,
    parts: usize,
) -> Option<std::result::Result<Vec<u64>, String>> {
    let path = dir.join(INDEX_FILE);
    let file = match vfs.open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(format!("unreadable: {e}"))),
    };
    let loaded = load_from(&*file, index, state, parts);
    if loaded.is_err() {
        index.clear();
    }
    Some(loaded)
}

fn load_from(
    file: &dyn VFile,
    index: &mut Index,
    state: &State,
    parts: usize,
) -> std::result::Result<Vec<u64>, String> {
    let file_len = file.len().map_err(|e| format!("unreadable: {e}"))?;
    let head_len = head_len(state.segments.len());
    if file_len < head_len as u64 {
        return Err(format!("{file_len} bytes: too short for its header"));
    }
    let mut head = vec![0u8; head_len];
    read_exact_at(file, &mut head, 0)?;
    if head.get(..8) != Some(&MAGIC[..]) {
        return Err("not an index file".into());
    }
    let version = u32_at(&head, 8);
    if version != VERSION {
        return Err(format!("version {version}, this build reads {VERSION}"));
    }
    if u32_at(&head, 40) != head_crc(&head) {
        return Err("header checksum mismatch".into());
    }
    if u32_at(&head, 12) as usize != SHARD_COUNT {
        return Err(format!(
            "{} shards, the index has {SHARD_COUNT}",
            u32_at(&head, 12)
        ));
    }
    if u64_at(&head, 16) != state.hasher {
        return Err("made under another hash function".into());
    }
    if u64_at(&head, 24) != state.generation {
        return Err(format!(
            "made at manifest generation {}, the store is at {}",
            u64_at(&head, 24),
            state.generation
        ));
    }
    if u32_at(&head, 32) as usize != state.segments.len() {
        return Err(format!(
            "made for {} segments, the store has {}",
            u32_at(&head, 32),
            state.segments.len()
        ));
    }
    let mut dead = Vec::with_capacity(state.segments.len());
    for (k, s) in state.segments.iter().enumerate() {
        let at = HEADER_LEN + k * SEGMENT_ENTRY_LEN;
        let saved = SavedSegment {
            id: u32_at(&head, at),
            active: u32_at(&head, at + 4) == 1,
            len: u64_at(&head, at + 8),
            tail_crc: u32_at(&head, at + 24),
        };
        if saved != *s {
            return Err(format!(
                "made for segment {} of {} bytes, the store's is {} of {} bytes (or its last bytes differ)",
                saved.id, saved.len, s.id, s.len
            ));
        }
        dead.push(u64_at(&head, at + 16));
    }
    let directory = directory_at(state.segments.len());
    let mut shards = Vec::with_capacity(SHARD_COUNT);
    let mut offset = head_len as u64;
    for i in 0..SHARD_COUNT {
        let at = directory + i * SHARD_ENTRY_LEN;
        let entry = ShardEntry {
            offset: u64_at(&head, at),
            capacity: u64_at(&head, at + 8),
            own: u64_at(&head, at + 16),
            crc: u32_at(&head, at + 24),
        };
        // Sections follow each other, and none reaches past the end: no size read here can make the load
        // allocate more than the file holds.
        let end = entry.len().and_then(|len| offset.checked_add(len));
        if entry.offset != offset || end.is_none_or(|end| end > file_len) {
            return Err(format!("shard {i}'s section lies outside the file"));
        }
        offset = end.unwrap_or(file_len);
        shards.push(entry);
    }
    if offset != file_len {
        return Err(format!("{file_len} bytes, its sections end at {offset}"));
    }
    let lengths = IdMap::new(state.segments.iter().map(|s| (s.id, s.len)));
    // Each part restores the shards it owns.
    let results = index
        .unshared()
        .in_parts(parts, |view| load_shards(file, view, &shards, &lengths));
    results
        .into_iter()
        .collect::<std::result::Result<(), String>>()?;
    Ok(dead)
}

/// Loads the shards `view` owns.
fn load_shards(
    file: &dyn VFile,
    mut view: Unshared<'_>,
    shards: &[ShardEntry],
    lengths: &IdMap,
) -> std::result::Result<(), String> {
    let mut bytes = Vec::new();
    for i in view.shard_numbers() {
        let Some(entry) = shards.get(i) else {
            return Err(format!("no directory entry for shard {i}"));
        };
        let len = usize::try_from(entry.len().unwrap_or(u64::MAX))
            .map_err(|_| format!("shard {i}'s section is too large"))?;
        bytes.clear();
        bytes.resize(len, 0);
        read_exact_at(file, &mut bytes, entry.offset)?;
        if crc32fast::hash(&bytes) != entry.crc {
            return Err(format!("shard {i}'s section checksum mismatch"));
        }
        let capacity = entry.capacity as usize;
        let pair = |s: &[u8]| (u64_at(s, 0), u64_at(s, 8));
        let (runs, own) = bytes.split_at(capacity.saturating_mul(SLOT_LEN).min(bytes.len()));
        view.restore_shard(
            i,
            runs.chunks_exact(SLOT_LEN).map(pair),
            own.chunks_exact(SLOT_LEN).map(pair),
            |loc| {
                lengths
                    .get(loc.segment())
                    .is_some_and(|len| loc.offset() < len)
            },
        )
        .map_err(|reason| format!("shard {i}: {reason}"))?;
    }
    Ok(())
}

fn read_exact_at(file: &dyn VFile, buf: &mut [u8], offset: u64) -> std::result::Result<(), String> {
    let mut done = 0;
    while done < buf.len() {
        let rest = buf.get_mut(done..).unwrap_or_default();
        match file.read_at(rest, offset + done as u64) {
            Ok(0) => return Err(format!("ends early, at {}", offset + done as u64)),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("unreadable: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::{KeyHasher, Seed};
    use crate::vfs::StdVfs;

    fn state() -> State {
        State {
            hasher: 0x1234,
            generation: 9,
            segments: vec![
                SavedSegment {
                    id: 3,
                    active: false,
                    len: 5000,
                    tail_crc: 11,
                },
                SavedSegment {
                    id: 1,
                    active: false,
                    len: 7000,
                    tail_crc: 12,
                },
                SavedSegment {
                    id: 8,
                    active: true,
                    len: 300,
                    tail_crc: 13,
                },
            ],
        }
    }

    fn index() -> Index {
        let index = Index::new(KeyHasher::new(Seed::random(), false));
        let mut rng = crate::testing::Rng(7);
        for k in 1..2000u64 {
            let (id, len) = [(3, 5000), (1, 7000), (8, 300)][(k % 3) as usize];
            index.insert(rng.next(), Loc::new(id, rng.next() % len));
        }
        index
    }

    fn entries(index: &Index) -> Vec<(u64, u64)> {
        let mut all: Vec<(u64, u64)> = (0..SHARD_COUNT)
            .flat_map(|i| index.shard_entries(i))
            .map(|(h, l)| (h, l.bits()))
            .collect();
        all.sort_unstable();
        all
    }

    #[test]
    fn the_file_loads_only_for_the_state_it_was_made_for() {
        let dir = tempfile::tempdir().expect("temp dir");
        let index = index();
        let dead = [100, 200, 0];
        // In memory segment 8 is segment 8, the others keep their ids.
        let ids = [(3, 3), (1, 1), (8, 8)];
        write(&StdVfs, dir.path(), &index, &state(), &dead, &ids).expect("write");
        for parts in [1, 3] {
            let mut loaded = Index::new(index.hasher().clone());
            let got = load(&StdVfs, dir.path(), &mut loaded, &state(), parts);
            assert_eq!(got, Some(Ok(dead.to_vec())));
            assert_eq!(entries(&loaded), entries(&index));
        }
        type Change = (&'static str, fn(&mut State));
        let changes: [Change; 8] = [
            ("hasher", |s| s.hasher ^= 1),
            ("generation", |s| s.generation += 1),
            ("a segment more", |s| {
                s.segments.insert(
                    0,
                    SavedSegment {
                        id: 9,
                        active: false,
                        len: 20,
                        tail_crc: 0,
                    },
                )
            }),
            ("a segment less", |s| {
                s.segments.remove(0);
            }),
            ("another order", |s| s.segments.swap(0, 1)),
            ("a length", |s| s.segments[2].len += 39),
            ("the last bytes", |s| s.segments[0].tail_crc ^= 1),
            ("which is active", |s| s.segments[2].active = false),
        ];
        for (what, change) in changes {
            let mut other = state();
            change(&mut other);
            let mut loaded = Index::new(index.hasher().clone());
            let got = load(&StdVfs, dir.path(), &mut loaded, &other, 2);
            assert!(matches!(got, Some(Err(_))), "{what}: {got:?}");
            assert_eq!(loaded.len(), 0, "{what}: the index is left empty");
        }
    }

    #[test]
    fn locations_are_saved_under_their_segments_file_ids() {
        // A compaction output has an id of its own in memory; the file and the next open know it by its file id.
        let dir = tempfile::tempdir().expect("temp dir");
        let index = Index::new(KeyHasher::new(Seed::random(), false));
        index.insert(42, Loc::new(20, 100));
        index.insert(43, Loc::new(8, 50));
        let ids = [(20, 3), (8, 8)];
        write(
            &StdVfs,
            dir.path(),
            &index,
            &state(),
            &[0, 0, 0],
            &[(20, 3), (1, 1), (8, 8)],
        )
        .expect("write");
        let mut loaded = Index::new(index.hasher().clone());
        load(&StdVfs, dir.path(), &mut loaded, &state(), 1)
            .expect("a file")
            .expect("loaded");
        assert_eq!(
            loaded.candidates(42).iter().collect::<Vec<_>>(),
            vec![Loc::new(3, 100)]
        );
        assert_eq!(
            loaded.candidates(43).iter().collect::<Vec<_>>(),
            vec![Loc::new(8, 50)]
        );
        // An entry in a segment the store does not name is not saved.
        index.insert(44, Loc::new(5, 1));
        let err = write(&StdVfs, dir.path(), &index, &state(), &[0, 0, 0], &ids);
        assert!(err.is_err());
    }
}
