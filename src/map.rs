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
    // could hand over. Other processes are kept out of the directory by the lock, or, in the multi-process mode,
    // run this same engine, which never writes to a sealed segment either; the files are created 0600, so
    // nothing else changes the mapped bytes while the map lives. Readers stay within `len`, the length at sealing
    // time.
    let map = unsafe { memmap2::MmapOptions::new().len(len).map(file.file()) };
    map.ok()
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
