#!/usr/bin/env bash
# The fleet tiers (feature `redis`): lints with the feature on, then their tests against real redis-server
# processes (each test starts its own on free loopback ports, and a 3-master Cluster with redis-cli).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    apt-get update -qq
    apt-get install -y redis-server
fi
cargo clippy -p ussdb --all-targets --features redis -- -D warnings
cargo test --features redis --lib tiers
cargo test --features redis --doc tiers
cargo test --features redis --test it fleet
