#!/usr/bin/env bash
# The Redis tier's tests against real redis-server processes (they start their own on free loopback ports).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    apt-get update -qq
    apt-get install -y redis-server
fi
cargo test --features redis --test it fleet
