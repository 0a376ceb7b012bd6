//! The scratch directory of the whole-store targets: one per fuzzing process, emptied before each input
//! (creating a directory per input would cost more than most inputs), in memory (/dev/shm) where there is one.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const PREFIX: &str = "ussdb-fuzz-";

pub fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        };
        // libFuzzer ends the process with exit(), which runs no destructor, so each run removes the
        // directories of runs that are gone.
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
                continue;
            };
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = base.join(format!("{PREFIX}{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        dir
    })
}
