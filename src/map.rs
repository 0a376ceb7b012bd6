//! Memory maps: the crate's only `unsafe` code.
//!
//! Every segment the engine reads through a map is mapped here, as a [`Window`]: a read-only, shared map of a
//! fixed length, of which readers see only a *published prefix*. The active segment is mapped too, with room for
//! it to grow (its file is shorter than the map; pages past the end of the file are never touched), so a read
//! never makes a system call at any store size. The arguments that make this sound sit here, side by side.

use memmap2::MmapRaw;

use crate::vfs::StdFile;

/// A read-only `MAP_SHARED` map of the first `capacity` bytes of a segment file, which may be longer than the file
/// (the active segment grows into it). Bytes are handed out only as [`Window::prefix`]es.
///
/// A map survives the closing of the file descriptor it was made from, so a sealed segment keeps its `Window` and
/// closes its file.
#[derive(Debug)]
pub(crate) struct Window {
    raw: MmapRaw,
    capacity: usize,
}

impl Window {
    /// Maps `capacity` bytes of `file`. `None` when `capacity` is zero or does not fit the address space, or the
    /// OS refuses the map (the caller then reads with `pread`).
    pub(crate) fn new(file: &StdFile, capacity: u64) -> Option<Window> {
        let capacity = usize::try_from(capacity)
            .ok()
            .filter(|&c| c > 0 && isize::try_from(c).is_ok())?;
        let raw = memmap2::MmapOptions::new()
            .len(capacity)
            .map_raw_read_only(file.file())
            .ok()?;
        Some(Window { raw, capacity })
    }

    /// How many bytes the map covers.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity as u64
    }

    /// The first `published` bytes of the segment; `None` when they reach past the map (a record larger than the
    /// room the map was made with: the caller reads it with `pread`).
    ///
    /// `published` must be the segment's published length (`Segment::len` in segment.rs), or in the
    /// multi-process mode a tail another process published in the control file (`Segment::published_prefix`):
    /// bytes that a completed `pwrite` put in the file and that nothing in ussdb writes or truncates again.
    pub(crate) fn prefix(&self, published: u64) -> Option<&[u8]> {
        let len = usize::try_from(published)
            .ok()
            .filter(|&l| l <= self.capacity)?;
        #[expect(
            unsafe_code,
            reason = "a slice of mapped memory can only be made in an unsafe block"
        )]
        // SAFETY: `raw` maps `capacity` bytes read-only and lives as long as `&self`, so the pointer is valid for
        // `len <= capacity` bytes of address space, aligned (u8) and not null. Every one of those bytes is backed by
        // the file and immutable while the slice lives, because:
        // - `published` is a length the engine published only after the `pwrite` of those bytes returned (the
        //   segment's length is raised with Release after the write; readers load it with Acquire; in the
        //   multi-process mode another process stores the tail in the control file with Release after its
        //   `pwrite` returned, and this one loads it with Acquire), so the pages exist in the page cache and, the
        //   map being `MAP_SHARED` of the same inode, show the written bytes;
        // - ussdb never writes below a published length again: appends go at the tail, a failed append is undone
        //   by cutting the file back to the tail it started at (never below it), a torn tail is cut on open at the
        //   length the segment is then published with, and sealed segments are never written or truncated; so no
        //   page inside the prefix is ever past the end of the file (which would raise SIGBUS) or changing;
        // - the file is a `StdFile`, which only `StdVfs` makes: a real file the engine opened itself, created 0600
        //   in a directory other processes are kept out of by the lock, so nothing else changes it; in the
        //   multi-process mode the other processes run this same engine, which appends only past the published
        //   tail (the one it caught up with under the append lock, never below any process's `published`) and
        //   cuts a dead holder's torn bytes only past it. (A file shrunk
        //   by someone outside the store raises SIGBUS on access; docs/RELIABILITY.md states that limit and a test
        //   pins it.)
        // Bytes past `published` (a write in flight, the unwritten room) are never part of a slice.
        let bytes = unsafe { std::slice::from_raw_parts(self.raw.as_ptr(), len) };
        Some(bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::vfs::{StdVfs, VFile, Vfs};

    fn std_file(file: &dyn VFile) -> &StdFile {
        let any: &dyn std::any::Any = file;
        any.downcast_ref::<StdFile>()
            .expect("StdVfs makes StdFiles")
    }

    /// The argument above rests on a shared map showing what `pwrite` wrote after the map was made, past the
    /// file's length at mapping time, and on a map outliving its file descriptor.
    #[test]
    fn a_window_shows_later_appends_and_outlives_its_descriptor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seg");
        let file: Arc<dyn VFile> = Arc::from(StdVfs.create_new(&path).expect("create"));
        file.write_all_at(b"head", 0).expect("write");
        let window = Window::new(std_file(&*file), 1 << 20).expect("map");
        assert_eq!(window.prefix(4), Some(&b"head"[..]));
        file.write_all_at(b"tail-bytes", 4).expect("append");
        assert_eq!(window.prefix(14), Some(&b"headtail-bytes"[..]));
        // Cutting back a failed append to the published length leaves the prefix readable.
        file.write_all_at(b"torn", 14).expect("append");
        file.set_len(14).expect("cut");
        assert_eq!(window.prefix(14), Some(&b"headtail-bytes"[..]));
        drop(file);
        assert_eq!(window.prefix(14), Some(&b"headtail-bytes"[..]));
        assert_eq!(window.prefix((1 << 20) + 1), None);
        assert_eq!(window.capacity(), 1 << 20);
    }

    #[test]
    fn an_empty_window_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = StdVfs.create_new(&dir.path().join("seg")).expect("create");
        assert!(Window::new(std_file(&*file), 0).is_none());
    }
}

/// The multi-process mode's control file, mapped read-write and shared with every process that has the store
/// open: a few 64-bit words, each read and written only as an atomic.
#[derive(Debug)]
pub(crate) struct SharedWords {
    /// A raw map: it never hands out references to the bytes, only a pointer.
    map: memmap2::MmapRaw,
    words: usize,
}

impl SharedWords {
    /// Word `i` (byte offset `8 * i`), or `None` past the map.
    pub(crate) fn word(&self, i: usize) -> Option<&std::sync::atomic::AtomicU64> {
        if i >= self.words {
            return None;
        }
        let ptr = self.map.as_mut_ptr().cast::<u64>().wrapping_add(i);
        #[expect(
            unsafe_code,
            reason = "an atomic view of mapped memory needs a raw pointer"
        )]
        // SAFETY: `ptr` lies inside the live map (`i < words`, and `words * 8` bytes were mapped), and is 8-aligned
        // (a map starts on a page boundary). The map lives as long as `self`, which the returned reference borrows,
        // and the file is never truncated below the mapped length (see `control_file`), so the page stays backed.
        // Every access to these bytes, from this process or another, is through an `AtomicU64` (`MmapRaw` makes
        // no `&[u8]` of the map), so concurrent changes are atomic operations, not data races.
        Some(unsafe { std::sync::atomic::AtomicU64::from_ptr(ptr) })
    }
}

/// Maps the first `len` bytes of the control file `file` read-write and shared (`len` a multiple of 8, at most
/// the file's length). `None` if the OS refuses.
pub(crate) fn control_file(file: &std::fs::File, len: usize) -> Option<SharedWords> {
    if len == 0 || !len.is_multiple_of(8) || file.metadata().ok()?.len() < len as u64 {
        return None;
    }
    // No `unsafe` needed: a raw map hands out only a pointer, and every use of it is argued in `SharedWords::word`.
    // The file is the store's control file (`SHARED`, mode 0600, opened by the engine itself) and is at least
    // `len` bytes long (checked above; openers only grow it to its one size, under the append lock, and nothing
    // truncates it), so no access through the map reaches past the end of the file.
    let map = memmap2::MmapOptions::new().len(len).map_raw(file).ok()?;
    Some(SharedWords {
        map,
        words: len / 8,
    })
}

/// How many times this process has been forked from (in the child, the count goes up once per fork).
static FORKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn after_fork_in_child() {
    FORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// The number of forks this process is a child of (0 in a process that was never forked), counted by a
/// `pthread_atfork` handler installed on first use. One relaxed load: cheap enough for every read.
pub(crate) fn fork_generation() -> u64 {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        #[expect(unsafe_code, reason = "pthread_atfork is a C function")]
        // SAFETY: the handler is a plain `extern "C" fn` with static lifetime that only does one atomic add, which
        // is async-signal-safe, as a handler run in the child of a multi-threaded process must be. The other two
        // handlers are none. Registration cannot be undone, and need not be: the handler stays valid forever.
        let _ = unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
    FORKS.load(std::sync::atomic::Ordering::Relaxed)
}
