//! Integration tests: one binary, one module per behaviour. They use only the public API.

mod common;
mod compaction;
mod compaction_crash;
mod concurrency;
mod corruption;
mod crash;
mod faults;
mod fuzz_corpus;
mod fuzz_harness;
mod hints;
mod load;
mod misuse;
mod model;
mod recovery;
mod sdk;
