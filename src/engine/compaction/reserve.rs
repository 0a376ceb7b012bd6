//! The disk reserve: a file of zeros (`RESERVE`) that holds space for the operations that free space.
//!
//! On a full disk every write fails with `ENOSPC`, and so would the writes that make room: a delete appends a
//! tombstone, and compaction writes its output (and a hint and a manifest) before it unlinks its inputs. So a
//! writer keeps a reserve file in the store directory. When a delete, a `forget_user` or a compaction pass fails
//! with `ENOSPC`, the reserve is unlinked and the operation runs once more, in the space it held. Sets never
//! release it: they would only fill the disk again, leaving nothing for the operations that empty it.
//!
//! The reserve is made again at open and after each compaction pass, whenever there is room for it. It carries
//! no data and needs no fsync: a power cut that takes it (or leaves it short) is followed by an open that makes
//! it whole again. `open`, `verify` and `repair` ignore it (its name is not a store file's), backup leaves it out.

use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::dir::{self, RESERVE_FILE};
use crate::engine::Engine;
use crate::{Error, Result};

/// Zeros written per call while the reserve is made.
const CHUNK: u64 = 1 << 20;
/// After a failed attempt to make the reserve, the next one waits for a compaction that reclaimed space, or for
/// this long: each attempt on a full disk writes (and removes) up to the whole reserve.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// What the last attempt to make the reserve found.
#[derive(Default)]
pub(crate) struct ReserveState {
    /// When it failed, and the bytes compaction had reclaimed by then.
    failed: Option<(Instant, u64)>,
}

/// True when `e` says the disk (or the user's quota) is full.
pub(crate) fn is_disk_full(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if is_full(source))
}

/// Adds to a full-disk error what to do about it (the kind stays `StorageFull`, for callers that match on it).
pub(crate) fn explain_disk_full(e: Error) -> Error {
    match e {
        Error::Io { op, path, source } if is_full(&source) && !explained(&source) => Error::Io {
            op,
            path,
            source: io::Error::new(
                source.kind(),
                format!(
                    "{source}; {ADVICE}: free space on the disk, or delete mappings, forget users or compact \
                     (the store's {RESERVE_FILE} file keeps room for those)"
                ),
            ),
        },
        e => e,
    }
}

const ADVICE: &str = "the disk is full";

fn is_full(source: &io::Error) -> bool {
    matches!(
        source.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

fn explained(source: &io::Error) -> bool {
    source.to_string().contains(ADVICE)
}

impl Engine {
    /// Makes the reserve file unless it is there at its full size. Nothing for a reader, or with the reserve off.
    /// On failure (no room yet) nothing is left behind, and the next attempt waits for a compaction that reclaimed
    /// space or for a minute.
    pub(crate) fn keep_reserve(&self) -> Result<()> {
        let want = self.options.reserve_len();
        if self.options.read_only || want == 0 {
            return Ok(());
        }
        let mut state = self.compaction.lock_reserve();
        let path = self.dir.join(RESERVE_FILE);
        if let Ok(file) = self.vfs.open(&path)
            && file.len().ok() == Some(want)
        {
            return Ok(());
        }
        let reclaimed = self.compaction.reclaimed.load(Ordering::Relaxed);
        if let Some((at, then)) = state.failed
            && then == reclaimed
            && at.elapsed() < RETRY_AFTER
        {
            return Ok(());
        }
        let made = self.make_reserve(&path, want);
        state.failed = made.is_err().then(|| (Instant::now(), reclaimed));
        made
    }

    fn make_reserve(&self, path: &Path, want: u64) -> Result<()> {
        // A short or oversized one (a crash while it was made, another size asked for) is made anew.
        match self.vfs.remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove disk reserve", path, e)),
        }
        let file = self
            .vfs
            .create_new(path)
            .map_err(|e| Error::io("create disk reserve", path, e))?;
        let zeros = vec![0u8; CHUNK.min(want) as usize];
        let mut at = 0;
        while at < want {
            let n = CHUNK.min(want - at);
            if let Err(e) = file.write_all_at(zeros.get(..n as usize).unwrap_or_default(), at) {
                drop(file);
                let _ = self.vfs.remove_file(path);
                return Err(Error::io("write disk reserve", path, e));
            }
            at += n;
        }
        Ok(())
    }

    /// Unlinks the reserve file, freeing its space; true if there was one.
    pub(crate) fn release_reserve(&self) -> bool {
        let _held = self.compaction.lock_reserve();
        let path = self.dir.join(RESERVE_FILE);
        match self.vfs.remove_file(&path) {
            Ok(()) => {
                log::warn!(
                    "{}: the disk is full; released the disk reserve ({} bytes) so that deletes and compaction \
                     can go on. Free space on the disk: the reserve is made again once there is room",
                    self.dir.display(),
                    self.options.reserve_len()
                );
                // Not needed for the space (an unlink frees it at once), only so a crash does not bring it back.
                let _ = dir::sync_dir(&*self.vfs, &self.dir);
                true
            }
            Err(_) => false,
        }
    }

    /// Runs `op`, an operation that frees space (a delete, a `forget_user`, a compaction pass); when it fails
    /// because the disk is full, releases the reserve and runs it once more. `op` must be safe to repeat after a
    /// failure: each of them either left no trace or is idempotent.
    pub(crate) fn with_reserve<T>(&self, op: impl Fn() -> Result<T>) -> Result<T> {
        match op() {
            Err(e) if is_disk_full(&e) && self.release_reserve() => op(),
            result => result,
        }
        .map_err(explain_disk_full)
    }
}
