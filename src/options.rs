//! How a store is opened: [`Options`] and the limits of each setting.

use std::sync::Arc;

use crate::durability::Durability;
use crate::vfs::{StdVfs, Vfs};
use crate::{Error, Result};

/// How a store is opened (`Store::open_with`). Build with [`Options::default`] and the builder methods.
#[derive(Clone, Debug)]
pub struct Options {
    pub(crate) durability: Durability,
    pub(crate) segment_size: u64,
    pub(crate) weak_hash: bool,
    pub(crate) vfs: Arc<dyn Vfs>,
    pub(crate) compaction_threshold: f64,
    pub(crate) auto_compaction: bool,
    pub(crate) read_only: bool,
    pub(crate) shared: bool,
    /// Bytes of the disk reserve file; `None` sizes it from the segment size.
    pub(crate) disk_reserve: Option<u64>,
    /// Replays every hint in this many parts on threads of their own, whatever its size (tests).
    pub(crate) hint_replay_parts: Option<usize>,
    /// A clean close saves the index when it holds at least this many entries.
    pub(crate) save_index_from: u64,
}

/// The default [`Options::save_index_from`]: about a million mappings, where the saved index starts to save an
/// open more than a tenth of a second.
pub const DEFAULT_SAVE_INDEX_FROM: u64 = 1 << 20;

/// The default [`Options::compaction_threshold`]: a sealed segment is compacted once half of it is dead.
pub const DEFAULT_COMPACTION_THRESHOLD: f64 = 0.5;

/// The default segment size: 64 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// The default disk reserve holds one compaction output of at most this many bytes (see [`Options::disk_reserve`]).
const RESERVE_ROOM_CAP: u64 = 16 << 20;
/// Room in the default disk reserve for a manifest and a new segment's header.
const RESERVE_MARGIN: u64 = 16 << 10;
/// The smallest segment size accepted.
pub(crate) const MIN_SEGMENT_SIZE: u64 = 4096;
/// The largest segment size accepted (record offsets are 40-bit).
pub(crate) const MAX_SEGMENT_SIZE: u64 = 1 << 32;

impl Default for Options {
    fn default() -> Options {
        Options {
            durability: Durability::Immediate,
            segment_size: DEFAULT_SEGMENT_SIZE,
            weak_hash: false,
            vfs: Arc::new(StdVfs),
            compaction_threshold: DEFAULT_COMPACTION_THRESHOLD,
            auto_compaction: true,
            read_only: false,
            shared: false,
            disk_reserve: None,
            hint_replay_parts: None,
            save_index_from: DEFAULT_SAVE_INDEX_FROM,
        }
    }
}

impl Options {
    /// Sets the durability mode (default [`Durability::Immediate`]).
    pub fn durability(mut self, durability: Durability) -> Options {
        self.durability = durability;
        self
    }

    /// Sets the size at which the active segment is sealed and a new one started (default 64 MiB; 4 KiB to
    /// 4 GiB). A single record larger than this gets a segment of its own.
    pub fn segment_size(mut self, bytes: u64) -> Options {
        self.segment_size = bytes;
        self
    }

    /// Sets the fraction of a sealed segment's bytes that must be dead (overwritten, deleted, tombstones) before
    /// background compaction rewrites it (default 0.5, from 0.0 to 1.0). Lower keeps the directory smaller and
    /// costs more rewriting: with threshold `t`, sealed segments hold at most about `1 / (1 - t)` times their live
    /// data. `Store::compact` ignores it and reclaims every dead byte it can.
    pub fn compaction_threshold(mut self, ratio: f64) -> Options {
        self.compaction_threshold = ratio;
        self
    }

    /// Turns the background compaction thread on or off (default on). Woken whenever a segment is sealed and
    /// every second, it compacts segments over [`Options::compaction_threshold`] and writes hint files for sealed
    /// segments (for a fast open; all but the two newest). With it off, the directory only shrinks and hint
    /// files are only written when `Store::compact` is called.
    pub fn auto_compaction(mut self, on: bool) -> Options {
        self.auto_compaction = on;
        self
    }

    /// A clean close saves the index in the file `INDEX` when it holds at least `entries` mappings (default
    /// [`DEFAULT_SAVE_INDEX_FROM`], about a million; `u64::MAX` never), and the next open loads it instead of
    /// rebuilding the index from hint files: at 10M mappings a 224 MiB file (23 bytes per mapping) that a clean
    /// close writes in ~0.15 s and an open loads in ~0.19 s, where replaying hint files took ~0.56 s (docs/
    /// BENCHMARKS.md). It is used only if the store is exactly as the close left it, and removed by the first
    /// writable open (docs/DESIGN.md, "The saved index"). Not in the multi-process mode.
    pub fn save_index_from(mut self, entries: u64) -> Options {
        self.save_index_from = entries;
        self
    }

    /// Opens the store for reading only (default off): nothing in the directory is created, changed or removed
    /// (a torn last write is left in place and ignored, left-over files stay), no background thread runs, and every
    /// write fails with [`Error::ReadOnly`]. It takes a *shared* lock: any number of read-only openers (and
    /// `verify_dir`) may share the directory, while a writer and a reader exclude each other. Works on a
    /// read-only file system (a snapshot, a mounted backup).
    pub fn read_only(mut self, on: bool) -> Options {
        self.read_only = on;
        self
    }

    /// Lets several processes open the store at once (default off): the multi-process mode that web servers with
    /// worker processes need (gunicorn `-w 4`, uWSGI, node:cluster, PM2). Every process holds a shared lock on
    /// the directory; appends take a cross-process lock (released by the kernel if its holder dies) one at a
    /// time, reads take none. A `set` that returned in one process is seen by every `get` that starts after it
    /// in any other. Compaction runs in one process at a time; the others pick up its result as they read.
    ///
    /// A store open in this mode refuses an opener without it, and the other way round
    /// ([`Error::LockMode`]). Each read first compares one word of the shared control file (`SHARED`) with what
    /// the process has seen; only when another process wrote does it read their records. See docs/DESIGN.md,
    /// "Several processes".
    pub fn shared(mut self, on: bool) -> Options {
        self.shared = on;
        self
    }

    /// Sets the size of the disk reserve, the `RESERVE` file of zeros a writer keeps in the store directory so
    /// that deletes, `forget_user` and compaction still work when the disk is full: they release it when they
    /// hit `ENOSPC` and go on in the space it held; it is made again once there is room (default: the segment
    /// size up to 16 MiB, plus a quarter for hint files and 16 KiB for the manifest; 0 turns it off). See
    /// docs/GUIDE.md, *A full disk*.
    pub fn disk_reserve(mut self, bytes: u64) -> Options {
        self.disk_reserve = Some(bytes);
        self
    }

    /// The size of the disk reserve these options ask for.
    pub(crate) fn reserve_len(&self) -> u64 {
        self.disk_reserve.unwrap_or_else(|| {
            let room = self.segment_size.min(RESERVE_ROOM_CAP);
            room + room / 4 + RESERVE_MARGIN
        })
    }

    /// Uses a different file layer (for fault-injection tests).
    #[doc(hidden)]
    pub fn vfs(mut self, vfs: Arc<dyn Vfs>) -> Options {
        self.vfs = vfs;
        self
    }

    /// Makes nearly every key share an index hash, to test that colliding hashes stay correct. Slow.
    #[doc(hidden)]
    pub fn colliding_hashes_for_tests(mut self, on: bool) -> Options {
        self.weak_hash = on;
        self
    }

    /// Replays every hint file at open in `parts` parts on threads of their own, as only large hints are
    /// otherwise, so that tests with small segments take that path too.
    #[doc(hidden)]
    pub fn parallel_hint_replay_for_tests(mut self, parts: usize) -> Options {
        self.hint_replay_parts = Some(parts.max(1));
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&self.segment_size) {
            return Err(Error::InvalidOption {
                option: "segment_size",
                reason: format!(
                    "{} bytes is outside {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE}",
                    self.segment_size
                ),
            });
        }
        if !(0.0..=1.0).contains(&self.compaction_threshold) {
            return Err(Error::InvalidOption {
                option: "compaction_threshold",
                reason: format!("{} is outside 0.0..=1.0", self.compaction_threshold),
            });
        }
        if self.shared && self.read_only {
            return Err(Error::InvalidOption {
                option: "shared",
                reason:
                    "a read-only store does not follow other processes' writes; open it shared and \
                         writable, or read-only alone"
                        .into(),
            });
        }
        if let Durability::Periodic(interval) = self.durability
            && interval.is_zero()
        {
            return Err(Error::InvalidOption {
                option: "durability",
                reason: "a Periodic interval must be longer than zero; use Immediate instead"
                    .into(),
            });
        }
        Ok(())
    }
}
