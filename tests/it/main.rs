//! Integration tests: one binary, one module per behaviour. They use only the public API.

#[cfg(feature = "cli")]
mod cli;
mod common;
mod compaction;
mod compaction_crash;
mod concurrency;
mod corruption;
mod crash;
mod faults;
#[cfg(feature = "redis")]
mod fleet;
mod fuzz_corpus;
mod fuzz_harness;
mod hints;
mod import_export;
mod load;
mod misuse;
mod model;
mod recovery;
mod sdk;
mod verify;
