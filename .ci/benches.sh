#!/usr/bin/env bash
# Builds ussdb's own criterion benchmarks (`cargo bench`) without running them: timings are not checked in CI,
# but the benchmarks must keep compiling and linking against the library. Needs only cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
cargo bench --no-run
