//! The store directory: its lock, the names of the files in it, and the one way a new file is made durable.
//!
//! Every file the engine creates whole (a new segment's header, the seed, a hint file) goes through
//! [`write_durably`]: written under a `*.tmp` name, fsynced, renamed into place, directory fsynced. A crash leaves
//! either no file or a complete one, plus at most a `*.tmp` that `open` removes.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::vfs::{VFile, Vfs};
use crate::{Error, Result};

/// Name of the lock file in a store directory.
pub(crate) const LOCK_FILE: &str = "LOCK";
/// The control file of the multi-process mode (`Options::shared`): mapped by every process, and locked shared
/// (flock) by each for as long as it has the store open.
pub(crate) const CONTROL_FILE: &str = "SHARED";
/// Locked (flock, exclusive) around each group of appends in the multi-process mode.
pub(crate) const APPEND_LOCK_FILE: &str = "APPEND.lock";
/// Locked (flock, exclusive) around each compaction pass in the multi-process mode.
pub(crate) const COMPACT_LOCK_FILE: &str = "COMPACT.lock";
/// File name suffix of segments.
pub(crate) const SEGMENT_SUFFIX: &str = ".seg";
/// Suffix of files being written that are not yet part of the store; removed on open.
pub(crate) const TMP_SUFFIX: &str = ".tmp";
/// File name suffix of hint files.
pub(crate) const HINT_SUFFIX: &str = ".hint";
/// Name of the disk reserve: zeros that hold space for deletes and compaction on a full disk. It is no part of
/// the store's data: `list` ignores it, `open` makes it again when it is missing, and a backup leaves it out.
pub(crate) const RESERVE_FILE: &str = "RESERVE";

/// The file name of segment `id`: zero-padded so names sort by id.
pub(crate) fn segment_file_name(id: u32) -> String {
    format!("{id:010}{SEGMENT_SUFFIX}")
}

/// The file name of the hint file of segment `id`.
pub(crate) fn hint_file_name(id: u32) -> String {
    format!("{id:010}{HINT_SUFFIX}")
}

/// The temporary name under which `name` is written before it is renamed into place.
pub(crate) fn tmp_name(name: &str) -> String {
    format!("{name}{TMP_SUFFIX}")
}

/// The id in a segment file name, if `name` is one.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u32> {
    parse_id(name, SEGMENT_SUFFIX)
}

/// The id in a hint file name, if `name` is one.
pub(crate) fn parse_hint_file_name(name: &str) -> Option<u32> {
    parse_id(name, HINT_SUFFIX)
}

fn parse_id(name: &str, suffix: &str) -> Option<u32> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Creates the file `dir/name` durably with `bytes` as its contents: written to `name.tmp`, fsynced, renamed onto
/// `name` (replacing it), and the directory fsynced. Returns the open file (positioned nowhere: all I/O is
/// positional). On failure the temporary file is removed and `name` is untouched, except when the last step, the
/// directory fsync, fails (see [`write_durably_or_unknown`]).
pub(crate) fn write_durably(
    vfs: &dyn Vfs,
    dir: &Path,
    name: &str,
    bytes: &[u8],
    what: &'static str,
) -> Result<Box<dyn VFile>> {
    write_durably_or_unknown(vfs, dir, name, bytes, what).map_err(|(e, _)| e)
}

/// [`write_durably`], telling apart the failures that left `name` as it was (`false`) from a failed directory
/// fsync after the rename (`true`), after which `name` may hold either version once the power goes.
pub(crate) fn write_durably_or_unknown(
    vfs: &dyn Vfs,
    dir: &Path,
    name: &str,
    bytes: &[u8],
    what: &'static str,
) -> std::result::Result<Box<dyn VFile>, (Error, bool)> {
    let path = dir.join(name);
    let tmp = dir.join(tmp_name(name));
    let _ = vfs.remove_file(&tmp);
    let file = vfs
        .create_new(&tmp)
        .map_err(|e| (Error::io(what, &tmp, e), false))?;
    let written = file
        .write_all_at(bytes, 0)
        .and_then(|()| file.sync_data())
        .map_err(|e| Error::io(what, &tmp, e))
        .and_then(|()| {
            vfs.rename(&tmp, &path)
                .map_err(|e| Error::io(what, &tmp, e))
        });
    if let Err(e) = written {
        let _ = vfs.remove_file(&tmp);
        return Err((e, false));
    }
    sync_dir(vfs, dir).map_err(|e| (e, true))?;
    Ok(file)
}

/// Creates the store directory if it does not exist, and makes its entry in the parent durable.
pub(crate) fn create(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| Error::io("create store directory", dir, e))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::File::open(parent)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io("sync the parent of the store directory", parent, e))?;
    }
    Ok(())
}

/// fsyncs the directory, so that creations, renames and removals in it survive a power cut.
pub(crate) fn sync_dir(vfs: &dyn Vfs, dir: &Path) -> Result<()> {
    vfs.sync_dir(dir)
        .map_err(|e| Error::io("sync directory", dir, e))
}

/// How long `open` waits for a held lock before it reports [`Error::Locked`]. A lock can be held for a moment by
/// no store at all: a child process that any thread of this process is starting shares the lock file's open
/// description from fork until exec (close-on-exec closes it only then), so without patience a store closed and
/// reopened while another thread spawns a process fails at random.
const LOCK_PATIENCE: Duration = Duration::from_millis(500);

/// The locks a store holds while open; dropping it releases them.
#[derive(Debug)]
pub(crate) struct DirLock {
    /// The directory itself, locked (flock) exclusively by a writer, shared by readers: removing `LOCK` cannot
    /// undo it, and it needs no write access.
    _dir: fs::File,
    /// The `LOCK` file of a writer (kept for the tools that look for it); `None` for a reader.
    _file: Option<fs::File>,
    /// Other files whose locks last as long as the store is open (the control file of the multi-process mode).
    kept: Vec<fs::File>,
}

impl DirLock {
    /// Keeps `file` (and the flock it holds) open until this lock is dropped.
    pub(crate) fn keep(&mut self, file: fs::File) {
        self.kept.push(file);
    }
}

/// Takes the store's locks: exclusive for a writer (the directory and the `LOCK` file, created if missing), shared
/// for a reader (the directory only; nothing is created). Fails with [`Error::Locked`] when another process or
/// handle holds a conflicting lock.
pub(crate) fn lock(dir: &Path, shared: bool) -> Result<DirLock> {
    let dir_file = fs::File::open(dir).map_err(|e| Error::io("open store directory", dir, e))?;
    let lock_path = dir.join(LOCK_FILE);
    wait_for_lock(&dir_file, shared).map_err(|e| match e {
        LockError::Held if !shared && held_in_shared_mode(dir) => Error::LockMode {
            path: dir.to_owned(),
            held_shared: true,
        },
        LockError::Held => Error::Locked {
            path: lock_path.clone(),
        },
        LockError::Io(e) => Error::io("lock store directory", dir, e),
    })?;
    if shared {
        // A reader and a writer exclude each other in the multi-process mode too: its processes hold the control
        // file.
        if held_in_shared_mode(dir) {
            return Err(Error::Locked { path: lock_path });
        }
        return Ok(DirLock {
            _dir: dir_file,
            _file: None,
            kept: Vec::new(),
        });
    }
    let file = lock_file(dir)?;
    Ok(DirLock {
        _dir: dir_file,
        _file: Some(file),
        kept: Vec::new(),
    })
}

/// Takes the directory lock of the multi-process mode: shared (flock) on the directory, like a reader, so that
/// any number of multi-process openers share it while a single-process writer (exclusive) and they refuse each
/// other. The appends' and compaction's own locks are taken by the engine (`engine/shared.rs`).
pub(crate) fn lock_multi_process(dir: &Path) -> Result<DirLock> {
    let dir_file = fs::File::open(dir).map_err(|e| Error::io("open store directory", dir, e))?;
    wait_for_lock(&dir_file, true).map_err(|e| match e {
        LockError::Held => Error::LockMode {
            path: dir.to_owned(),
            held_shared: false,
        },
        LockError::Io(e) => Error::io("lock store directory", dir, e),
    })?;
    Ok(DirLock {
        _dir: dir_file,
        _file: None,
        kept: Vec::new(),
    })
}

/// True when another process holds the directory's lock beside this multi-process opener, which found itself
/// alone in its mode: a `read_only` reader, which a writer excludes. (The caller holds the append lock, so no
/// other opener of the mode is between its directory lock and its control file.) Tries to make this opener's own
/// shared lock exclusive, and makes it shared again.
pub(crate) fn readers_present(lock: &DirLock) -> bool {
    match lock._dir.try_lock() {
        Ok(()) => {
            let _ = lock._dir.lock_shared();
            false
        }
        Err(_) => true,
    }
}

/// True when some process holds the control file of the multi-process mode (so the directory's shared lock is
/// theirs, not a reader's): used only to word the error.
fn held_in_shared_mode(dir: &Path) -> bool {
    let Ok(file) = fs::File::open(dir.join(CONTROL_FILE)) else {
        return false;
    };
    matches!(file.try_lock(), Err(fs::TryLockError::WouldBlock))
}

enum LockError {
    Held,
    Io(std::io::Error),
}

fn wait_for_lock(file: &fs::File, shared: bool) -> std::result::Result<(), LockError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let attempt = if shared {
            file.try_lock_shared()
        } else {
            file.try_lock()
        };
        match attempt {
            Ok(()) => return Ok(()),
            Err(fs::TryLockError::WouldBlock) if start.elapsed() < LOCK_PATIENCE => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(fs::TryLockError::WouldBlock) => return Err(LockError::Held),
            Err(fs::TryLockError::Error(e)) => return Err(LockError::Io(e)),
        }
    }
}

/// Takes the `LOCK` file (creating it), as every earlier version did.
fn lock_file(dir: &Path) -> Result<fs::File> {
    let lock_path = dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| Error::io("open lock file", &lock_path, e))?;
    wait_for_lock(&lock, false).map_err(|e| match e {
        LockError::Held => Error::Locked { path: lock_path },
        LockError::Io(e) => Error::io("lock store directory", dir.join(LOCK_FILE), e),
    })?;
    Ok(lock)
}

/// What a store directory holds, by kind of file, as `open` and `verify` read it.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// Segment ids, ascending.
    pub(crate) segments: Vec<u32>,
    /// Ids of segments that have a hint file, ascending.
    pub(crate) hints: Vec<u32>,
    /// Names of `*.tmp` files left over from interrupted writes.
    pub(crate) leftovers: Vec<PathBuf>,
}

/// Lists the store files in `dir`; other names are ignored.
pub(crate) fn list(vfs: &dyn Vfs, dir: &Path) -> Result<Listing> {
    let mut listing = Listing::default();
    for name in vfs
        .list_dir(dir)
        .map_err(|e| Error::io("list store directory", dir, e))?
    {
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(TMP_SUFFIX) {
            listing.leftovers.push(PathBuf::from(name));
        } else if let Some(id) = parse_segment_file_name(name) {
            listing.segments.push(id);
        } else if let Some(id) = parse_hint_file_name(name) {
            listing.hints.push(id);
        }
    }
    listing.segments.sort_unstable();
    listing.hints.sort_unstable();
    Ok(listing)
}
