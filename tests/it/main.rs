//! Integration tests: one binary, one module per behaviour. They use only the public API.

mod common;
mod concurrency;
mod misuse;
mod model;
mod recovery;
mod sdk;
