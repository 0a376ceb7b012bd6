#![no_main]

use std::sync::OnceLock;

/// One scratch directory per fuzzing process, emptied before each input: creating a directory per input
/// would cost more than most inputs. Kept in memory (/dev/shm) where there is one.
fn scratch() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("scratch directory")
    })
    .path()
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ussdb_fuzz::clear_dir(scratch());
    ussdb_fuzz::model(scratch(), data);
});
