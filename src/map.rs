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
    /// `published` must be the segment's published length ([`crate::segment::Segment::len`]): bytes that a
    /// completed `pwrite` put in the file and that nothing in ussdb writes or truncates again.
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
        //   segment's length is raised with Release after the write; readers load it with Acquire), so the pages
        //   exist in the page cache and, the map being `MAP_SHARED` of the same inode, show the written bytes;
        // - ussdb never writes below a published length again: appends go at the tail, a failed append is undone
        //   by cutting the file back to the tail it started at (never below it), a torn tail is cut on open at the
        //   length the segment is then published with, and sealed segments are never written or truncated; so no
        //   page inside the prefix is ever past the end of the file (which would raise SIGBUS) or changing;
        // - the file is a `StdFile`, which only `StdVfs` makes: a real file the engine opened itself, created 0600
        //   in a directory other processes are kept out of by the lock, so nothing else changes it. (A file shrunk
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
