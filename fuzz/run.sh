#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20), installing cargo-fuzz if it is missing.
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
# A crash stops the run with a non-zero status and leaves its input in fuzz/artifacts/<target>/; once fixed,
# commit it to fuzz/regressions/<target>/, and the stable `cargo test` replays it from then on.
set -euo pipefail

seconds="${1:-20}"
shift || true
cd "$(dirname "$0")"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo +nightly install cargo-fuzz --locked || cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(record segment_header value_codec hint open_dir model)
fi

# Build first, so each target's time budget is spent fuzzing, not compiling.
cargo +nightly fuzz build

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    # -rss_limit_mb: the store targets read whole segments; 2 GiB is far above what they need.
    if ! cargo +nightly fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz target $t failed; the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
    echo "fuzz $t: ${execs:-?} executions in ${seconds}s, no crash"
done
