//! Integration tests: one binary, one module per behaviour. They use only the public API.

mod common;
mod compaction;
mod compaction_crash;
mod concurrency;
mod hints;
mod misuse;
mod model;
mod recovery;
mod sdk;
