#!/usr/bin/env bash
# Builds the ussdb Python extension into its own virtual environment and runs the pytest suite in
# tests_fme/, which drives the published VWO FME Python SDK (vwo-fme-python-sdk) against a settings
# server on 127.0.0.1 that the tests start themselves. Needs only cargo, python3 (with venv) and
# access to PyPI.
#   bindings/python/run_fme_tests.sh [pytest args...]
# USSDB_FME_VENV picks the environment's directory (default: bindings/python/.venv-fme, reused if there).
#
# A venv of its own: vwo-fme-python-sdk installs a package named `vwo`, as the older vwo-python-sdk
# that run_tests.sh tests does, so the two can never share an environment.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${USSDB_FME_VENV:-$here/.venv-fme}"

# Pinned so a run today and a run next month test the same SDK.
MATURIN=1.16.0
PYTEST=9.2.0
VWO_FME_SDK=1.65.0

if [ ! -x "$venv/bin/python" ]; then
    if ! python3 -m venv "$venv"; then
        echo "python3 cannot make a virtual environment; install it with: apt-get install -y python3-venv" >&2
        exit 1
    fi
fi
py="$venv/bin/python"
"$py" -m pip install --quiet --disable-pip-version-check \
    "maturin==$MATURIN" "pytest==$PYTEST" "vwo-fme-python-sdk==$VWO_FME_SDK"
if "$py" -m pip show --quiet vwo-python-sdk >/dev/null 2>&1; then
    echo "$venv also holds vwo-python-sdk, whose package is also named vwo; use a fresh USSDB_FME_VENV" >&2
    exit 1
fi

# maturin develop installs into the environment named by VIRTUAL_ENV.
(cd "$here" && VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" maturin develop --release --quiet)

cd "$here/tests_fme"
exec "$py" -m pytest -p no:cacheprovider . "$@"
