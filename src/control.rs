//! The control file of the multi-process mode (`Options::shared`): `SHARED`, one page mapped by every process that
//! has the store open, holding what the appender last published (layout in docs/FORMAT.md, "Control file").
//!
//! | word | byte offset | field |
//! | --- | --- | --- |
//! | 0 | 0 | magic `USSDBCTL` |
//! | 1 | 8 | layout version, 1 |
//! | 2 | 16 | `seq`: incremented after every publication (the one word a reader loads) |
//! | 3 | 24 | `generation`: the manifest generation last published |
//! | 4 | 32 | `tail`: the active segment's file id (high 31 bits) and its published length (low 33 bits), packed like an index location |
//! | 5 | 40 | `busy`: 1 while a process holds the append lock, 0 once it published and let go |
//!
//! The file also carries the locks: every process holds a shared `flock` on it while open, and an opener that can
//! take it exclusively knows it is alone (and may clean up what dead processes left).

use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::index::{MAX_OFFSET, OFFSET_BITS};
use crate::map::{self, SharedWords};
use crate::{Error, Result};

/// Bytes of the control file (one page; only the first words are used).
pub(crate) const CONTROL_LEN: usize = 4096;
const MAGIC: u64 = u64::from_le_bytes(*b"USSDBCTL");
const VERSION: u64 = 1;

const W_MAGIC: usize = 0;
const W_VERSION: usize = 1;
const W_SEQ: usize = 2;
const W_GENERATION: usize = 3;
const W_TAIL: usize = 4;
const W_BUSY: usize = 5;

/// What the appender last published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Published {
    pub(crate) seq: u64,
    pub(crate) generation: u64,
    /// File id of the active segment.
    pub(crate) file_id: u32,
    /// Its length: every record below it is complete.
    pub(crate) tail: u64,
}

/// The mapped control file. Its open file, whose shared flock says "a process has the store open", is handed to
/// the store's [`crate::dir::DirLock`] with its other lifetime locks, so all of them are released together.
#[derive(Debug)]
pub(crate) struct Control {
    words: SharedWords,
}

/// Opens (creating if needed) the file `dir/name` for locking, mode 0600.
pub(crate) fn open_lock_file(dir: &Path, name: &str) -> Result<fs::File> {
    let path = dir.join(name);
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io("open lock file", &path, e))
}

impl Control {
    /// Opens the control file of `dir`, creating or sizing it, and returns its map and its open file (for the
    /// lock). The caller holds the append lock, so no other process sizes or initializes it meanwhile.
    pub(crate) fn open(dir: &Path) -> Result<(Control, fs::File)> {
        let path = dir.join(crate::dir::CONTROL_FILE);
        let file = open_lock_file(dir, crate::dir::CONTROL_FILE)?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("read control file length", &path, e))?
            .len();
        if len < CONTROL_LEN as u64 {
            file.set_len(CONTROL_LEN as u64)
                .map_err(|e| Error::io("size control file", &path, e))?;
        }
        let words = map::control_file(&file, CONTROL_LEN).ok_or_else(|| {
            Error::io(
                "map control file",
                &path,
                std::io::Error::other("the OS refused to map it"),
            )
        })?;
        let control = Control { words };
        let magic = control.word(W_MAGIC).load(Ordering::Acquire);
        let version = control.word(W_VERSION).load(Ordering::Acquire);
        match (magic, version) {
            (MAGIC, VERSION) => {}
            (0, 0) => {
                control.word(W_VERSION).store(VERSION, Ordering::Release);
                control.word(W_MAGIC).store(MAGIC, Ordering::Release);
            }
            _ => {
                return Err(Error::corrupted(
                    &path,
                    0,
                    format!(
                        "not a control file of this version (magic {magic:#x}, version {version}); remove it \
                         while no process has the store open"
                    ),
                ));
            }
        }
        Ok((control, file))
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        // The indexes are constants below CONTROL_LEN / 8, so the map always has them.
        static SPARE: AtomicU64 = AtomicU64::new(0);
        self.words.word(i).unwrap_or(&SPARE)
    }

    /// The publication counter: the one load of a read's fast path.
    #[inline]
    pub(crate) fn seq(&self) -> u64 {
        self.word(W_SEQ).load(Ordering::Acquire)
    }

    /// Everything published, `seq` loaded first (Acquire), so the rest is at least as new as it.
    pub(crate) fn load(&self) -> Published {
        let seq = self.seq();
        let generation = self.word(W_GENERATION).load(Ordering::Acquire);
        let tail = self.word(W_TAIL).load(Ordering::Acquire);
        Published {
            seq,
            generation,
            file_id: (tail >> OFFSET_BITS) as u32,
            tail: tail & MAX_OFFSET,
        }
    }

    /// Publishes a new state (the caller holds the append lock); returns the new `seq`.
    pub(crate) fn publish(&self, generation: u64, file_id: u32, tail: u64) -> u64 {
        // Packed like an index location, so one atomic store carries both.
        let packed = (u64::from(file_id) << OFFSET_BITS) | tail.min(MAX_OFFSET);
        self.word(W_TAIL).store(packed, Ordering::Release);
        self.word(W_GENERATION).store(generation, Ordering::Release);
        self.word(W_SEQ).fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Marks the append lock taken (returns whether the previous holder died holding it) or let go.
    pub(crate) fn set_busy(&self, busy: bool) -> bool {
        self.word(W_BUSY).swap(u64::from(busy), Ordering::AcqRel) != 0
    }
}
