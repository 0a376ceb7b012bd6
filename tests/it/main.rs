//! Integration tests: one binary, one module per behaviour. They use only the public API.

mod async_writes;
mod atomic_ops;
mod backup;
#[cfg(feature = "cli")]
mod cli;
mod common;
mod compaction;
mod compaction_crash;
mod concurrency;
mod corruption;
mod crash;
mod crash_files;
mod faults;
#[cfg(feature = "redis")]
mod fleet;
// The FME records' tests go through JSON import and export.
#[cfg(feature = "json")]
mod fme;
mod full_disk;
mod fuzz_corpus;
mod fuzz_harness;
mod hints;
#[cfg(feature = "json")]
mod import_export;
mod load;
mod locking;
mod manifest;
mod maps;
mod misuse;
mod model;
mod multiprocess;
mod recovery;
mod repair;
mod saved_index;
mod scale;
mod sdk;
mod simfs;
mod sync_points;
mod verify;
