//! Memory maps: the crate's only `unsafe` code.
//!
//! memmap2 can only map a file in an `unsafe` block, because the compiler cannot know whether something else
//! changes or shrinks the file while the map lives. Every map the engine makes is made here, so the arguments
//! that make them sound sit side by side and are checked in one place.

use memmap2::Mmap;

use crate::vfs::StdFile;

/// A read-only map of the first `len` bytes of a complete, fsynced segment file that is never written to or
/// truncated again.
///
/// `None` when `len` is zero or does not fit the address space, or the OS refuses the map (the caller then reads
/// with `pread`).
pub(crate) fn sealed_segment(file: &StdFile, len: u64) -> Option<Mmap> {
    let len = usize::try_from(len).ok().filter(|&len| len > 0)?;
    #[expect(unsafe_code, reason = "memmap2 can only map a file in an unsafe block")]
    // SAFETY: the caller passes a sealed segment: complete and fsynced, and ussdb never writes to it or truncates it
    // again (compaction replaces or unlinks whole files, which leaves existing maps of the old inode valid). The file
    // is a `StdFile`, which only `StdVfs` makes: a real file the engine opened itself, not something a foreign `Vfs`
    // could hand over. Other processes are kept out of the directory by the lock and the files are created 0600, so
    // nothing else changes the mapped bytes while the map lives. Readers stay within `len`, the length at sealing
    // time.
    let map = unsafe { memmap2::MmapOptions::new().len(len).map(file.file()) };
    map.ok()
}
