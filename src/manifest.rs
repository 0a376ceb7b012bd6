//! The manifest: one small checksummed file, `MANIFEST`, that names every segment of the store in replay order,
//! with each sealed segment's length, checksum and hint file identity, and the active segment. It is rewritten
//! whole (through [`dir::write_durably`]) at each seal and each compaction, so that `open` and `verify` know
//! exactly which files the store consists of: a missing, shortened, extra or stale file is reported by name
//! instead of silently changing what the store holds.
//!
//! ## Format, version 1 (all integers little-endian; see `docs/FORMAT.md`)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `USSDBMAN` |
//! | 8 | 4 | manifest version, [`MANIFEST_VERSION`] |
//! | 12 | 8 | generation: incremented at every write |
//! | 20 | 4 | next file id: every segment file id below it was handed out; files at or above it are uncommitted |
//! | 24 | 4 | file id of the active segment |
//! | 28 | 4 | number of sealed entries, N |
//! | 32 | 4 | number of retired ids, M |
//! | 36 | 24 × N | sealed segments in replay order (below) |
//! | … | 4 × M | file ids retired by a compaction whose files may still exist (removed on open) |
//! | … | 4 | crc32 of everything before it |
//!
//! A sealed entry: file id (4), length in bytes (8), crc32 of the whole file (4; 0 = not known, for segments
//! sealed before the manifest existed), crc32 of the hint file's header (4; 0 = no hint file), reserved (4, 0).

use std::path::Path;

use crate::dir;
use crate::vfs::Vfs;
use crate::{Error, Result};

/// The manifest's file name in a store directory.
pub(crate) const MANIFEST_FILE: &str = "MANIFEST";
/// Magic number at the start of the manifest.
const MAGIC: [u8; 8] = *b"USSDBMAN";
/// The manifest format version this build writes and reads.
pub(crate) const MANIFEST_VERSION: u32 = 1;
const HEADER_LEN: usize = 36;
const ENTRY_LEN: usize = 24;

/// What the manifest says of one sealed segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sealed {
    /// The id in the segment's file name.
    pub(crate) file_id: u32,
    /// Its length in bytes, fixed at sealing.
    pub(crate) len: u64,
    /// crc32 of the whole file; 0 when not known.
    pub(crate) crc: u32,
    /// The identity (header checksum) of its hint file; 0 when it has none.
    pub(crate) hint: u32,
}

/// The manifest's contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Manifest {
    /// Incremented at every write.
    pub(crate) generation: u64,
    /// Every segment file id below it was handed out.
    pub(crate) next_file_id: u32,
    /// The segment appended to.
    pub(crate) active: u32,
    /// Sealed segments in replay order.
    pub(crate) sealed: Vec<Sealed>,
    /// Ids retired by a compaction whose files may not be removed yet.
    pub(crate) retired: Vec<u32>,
}

impl Manifest {
    /// The bytes of the manifest file.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            HEADER_LEN + ENTRY_LEN * self.sealed.len() + 4 * self.retired.len() + 4,
        );
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.next_file_id.to_le_bytes());
        out.extend_from_slice(&self.active.to_le_bytes());
        out.extend_from_slice(&(self.sealed.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.retired.len() as u32).to_le_bytes());
        for s in &self.sealed {
            out.extend_from_slice(&s.file_id.to_le_bytes());
            out.extend_from_slice(&s.len.to_le_bytes());
            out.extend_from_slice(&s.crc.to_le_bytes());
            out.extend_from_slice(&s.hint.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
        }
        for id in &self.retired {
            out.extend_from_slice(&id.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and checks a manifest file; the error says what is wrong.
    pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<Manifest, String> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(8)? != MAGIC {
            return Err("wrong magic number".into());
        }
        let version = r.u32()?;
        if version != MANIFEST_VERSION {
            return Err(format!(
                "manifest version {version}, this build reads {MANIFEST_VERSION}"
            ));
        }
        let (body, stored) = bytes
            .split_last_chunk::<4>()
            .ok_or("shorter than its checksum")?;
        let computed = crc32fast::hash(body);
        if u32::from_le_bytes(*stored) != computed {
            return Err(format!(
                "checksum mismatch: stored {:#010x}, computed {computed:#010x}",
                u32::from_le_bytes(*stored)
            ));
        }
        let generation = r.u64()?;
        let next_file_id = r.u32()?;
        let active = r.u32()?;
        let n = r.u32()? as usize;
        let m = r.u32()? as usize;
        if body.len() != HEADER_LEN + n * ENTRY_LEN + m * 4 {
            return Err(format!(
                "{} bytes, but {n} entries and {m} retired ids need {}",
                bytes.len(),
                HEADER_LEN + n * ENTRY_LEN + m * 4 + 4
            ));
        }
        let mut sealed = Vec::with_capacity(n);
        for _ in 0..n {
            let entry = Sealed {
                file_id: r.u32()?,
                len: r.u64()?,
                crc: r.u32()?,
                hint: r.u32()?,
            };
            r.u32()?;
            sealed.push(entry);
        }
        let mut retired = Vec::with_capacity(m);
        for _ in 0..m {
            retired.push(r.u32()?);
        }
        let manifest = Manifest {
            generation,
            next_file_id,
            active,
            sealed,
            retired,
        };
        manifest.check()?;
        Ok(manifest)
    }

    /// The invariants a sound manifest keeps: ids are nonzero, below `next_file_id`, and named once.
    fn check(&self) -> std::result::Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for id in self
            .sealed
            .iter()
            .map(|s| s.file_id)
            .chain(std::iter::once(self.active))
        {
            if id == 0 || id >= self.next_file_id {
                return Err(format!(
                    "segment id {id} is outside 1..{}",
                    self.next_file_id
                ));
            }
            if !seen.insert(id) {
                return Err(format!("segment id {id} is listed twice"));
            }
        }
        Ok(())
    }

    /// The entry of sealed segment `file_id`.
    pub(crate) fn sealed_entry(&mut self, file_id: u32) -> Option<&mut Sealed> {
        self.sealed.iter_mut().find(|s| s.file_id == file_id)
    }

    /// Writes the manifest durably into `dir`, as the next generation. A failure says whether the old manifest
    /// surely stays in force (`false`) or the new one may have taken its place (`true`: the directory fsync
    /// after the rename failed, so the caller must treat the store's state as unknown).
    pub(crate) fn write(
        &mut self,
        vfs: &dyn Vfs,
        dir: &Path,
    ) -> std::result::Result<(), (Error, bool)> {
        self.generation += 1;
        dir::write_durably_or_unknown(vfs, dir, MANIFEST_FILE, &self.encode(), "write manifest")
            .map(drop)
    }
}

/// Reads the manifest of the store in `dir`: `Ok(None)` when there is none (a store made before manifests).
pub(crate) fn read(vfs: &dyn Vfs, dir: &Path) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST_FILE);
    let file = match vfs.open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open manifest", &path, e)),
    };
    let len = file
        .len()
        .map_err(|e| Error::io("read manifest length", &path, e))?;
    let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX).min(64 << 20)];
    let got = file
        .read_at(&mut bytes, 0)
        .map_err(|e| Error::io("read manifest", &path, e))?;
    bytes.truncate(got);
    Manifest::decode(&bytes)
        .map(Some)
        .map_err(|reason| Error::corrupted(&path, 0, reason))
}

/// A bounds-checked little-endian reader.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> std::result::Result<&[u8], String> {
        let got = self
            .bytes
            .get(self.at..self.at + n)
            .ok_or_else(|| format!("cut short at byte {}", self.at))?;
        self.at += n;
        Ok(got)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        let b: [u8; 4] = self
            .take(4)?
            .try_into()
            .map_err(|_| "cut short".to_owned())?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        let lo = u64::from(self.u32()?);
        let hi = u64::from(self.u32()?);
        Ok(lo | hi << 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            generation: 7,
            next_file_id: 10,
            active: 9,
            sealed: vec![
                Sealed {
                    file_id: 8,
                    len: 1 << 20,
                    crc: 0xdead_beef,
                    hint: 0x1234,
                },
                Sealed {
                    file_id: 3,
                    len: 20,
                    crc: 0,
                    hint: 0,
                },
            ],
            retired: vec![1, 2],
        }
    }

    #[test]
    fn round_trips_and_refuses_every_flipped_byte() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes), Ok(m));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(Manifest::decode(&bad).is_err(), "flip at {i} accepted");
        }
        for len in 0..bytes.len() {
            assert!(Manifest::decode(&bytes[..len]).is_err(), "cut at {len}");
        }
    }

    #[test]
    fn refuses_ids_out_of_range_or_twice() {
        let mut m = sample();
        m.active = 10;
        assert!(Manifest::decode(&m.encode()).is_err());
        let mut m = sample();
        m.active = 8;
        assert!(Manifest::decode(&m.encode()).is_err());
    }
}
