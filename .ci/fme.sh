#!/usr/bin/env bash
# CI step: the Python binding's FmeStorage against the published VWO FME Python SDK (vwo-fme-python-sdk),
# in a virtual environment of its own (bindings/python/.venv-fme). Offline apart from PyPI: the tests serve
# the SDK's settings from 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -m venv --help >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3-venv
fi
bash bindings/python/run_fme_tests.sh
