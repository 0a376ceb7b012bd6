//! All file I/O of the engine goes through the two traits here, so tests can swap in a layer that fails the Nth
//! write, tears a write in half, fails fsync or forgets unsynced bytes, without touching production paths.
//!
//! [`StdVfs`] is the real thing: positional reads and writes (`pread`/`pwrite`), `fdatasync`, data files created
//! with mode 0600.
//!
//! ## An extension point, with one rule
//!
//! [`Vfs`] is public so that a store can run over another file layer (fault injection, an in-memory file system
//! for tests, accounting). A layer must keep the promises of each method's documentation: a write is visible to
//! every later read, `sync_data` makes everything written before it durable, `rename` replaces its target
//! atomically. Files of other layers are always read with positional reads: the engine memory-maps only files of
//! [`StdVfs`], whose inode it knows is a real file that nothing else writes (see `segment.rs`), so no
//! implementation of these safe traits can break the map's safety argument.

use std::any::Any;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A file system, as the engine uses it.
pub trait Vfs: Send + Sync + Debug {
    /// Creates `path` (which must not exist) for reading and writing, with mode 0600.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn VFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn VFile>>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Lists the names of the entries of a directory.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
}

/// An open file, as the engine uses it. All access is positional, so one handle serves many threads.
///
/// `Any` lets the engine recognise the files of [`StdVfs`] (the only ones it memory-maps).
#[expect(
    clippy::len_without_is_empty,
    reason = "a file's length is all the engine asks"
)]
pub trait VFile: Any + Send + Sync + Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (fewer only at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the file's data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Cuts or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file's current length.
    fn len(&self) -> io::Result<u64>;
}

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdVfs;

/// A file of [`StdVfs`]. Only [`StdVfs`] makes them, so a `StdFile` is always a real file opened by the engine.
#[derive(Debug)]
pub struct StdFile(File);

impl StdFile {
    /// The operating system's file, for the memory map of a segment.
    pub(crate) fn file(&self) -> &File {
        &self.0
    }
}

impl Vfs for StdVfs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn VFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        Ok(Box::new(StdFile(file)))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn VFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(StdFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            names.push(PathBuf::from(entry?.file_name()));
        }
        Ok(names)
    }
}

impl VFile for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while let Some(rest) = buf.get_mut(done..).filter(|rest| !rest.is_empty()) {
            match self.0.read_at(rest, offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}
