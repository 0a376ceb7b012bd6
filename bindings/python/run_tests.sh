#!/usr/bin/env bash
# Builds the ussdb Python extension into a virtual environment and runs its pytest suite, which
# drives the published VWO Python SDK. Needs only cargo, python3 (with venv) and access to PyPI.
#   bindings/python/run_tests.sh [pytest args...]
# USSDB_PY_VENV picks the environment's directory (default: bindings/python/.venv, reused if there).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${USSDB_PY_VENV:-$here/.venv}"

# Pinned so a run today and a run next month test the same SDK. vwo-fme-python-sdk must never be
# added here: it installs a package also named `vwo`.
MATURIN=1.16.0
PYTEST=9.2.0
VWO_SDK=1.68.2

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install --quiet --disable-pip-version-check \
    "maturin==$MATURIN" "pytest==$PYTEST" "vwo-python-sdk==$VWO_SDK"

# maturin develop installs into the environment named by VIRTUAL_ENV.
(cd "$here" && VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" maturin develop --release --quiet)

cd "$here"
exec "$py" -m pytest -p no:cacheprovider tests "$@"
