#!/usr/bin/env bash
# The fleet tiers (cargo feature `redis`), self-contained: lints with the feature on, then every test that needs
# Redis against real redis-server processes (each test starts its own on free loopback ports, and a 3-master
# Cluster with redis-cli): the library's tier tests, the fleet integration tests (RedisStore, Tiered, and the
# `ussdb --redis` / `import --from-redis` / `export --to-redis` command line), and the Python binding's
# UserStorage(redis_url=...) under the published VWO Python SDK. Installs redis-server when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n== %s\n' "$*"; }

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    step "installing redis-server (apt-get install -y redis-server)"
    sudo=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo="sudo"; fi
    $sudo apt-get update -qq
    $sudo apt-get install -y redis-server
fi
redis-server --version

step "clippy with the feature on"
cargo clippy -p ussdb --all-targets --features redis -- -D warnings
cargo clippy -p ussdb-python --all-targets -- -D warnings

step "library: the tiers' unit tests and doc tests"
cargo test --features redis --lib tiers
cargo test --features redis --doc tiers

step "fleet integration tests, the command line's included (tests/it/fleet/)"
cargo test --features redis --test it fleet

step "Python binding: UserStorage(path, redis_url=...) under the VWO Python SDK"
bash bindings/python/run_tests.sh -k redis_fleet
