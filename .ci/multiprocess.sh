#!/usr/bin/env bash
# The multi-process mode in its real deployment: a WSGI app under `gunicorn -w 4` keeps the VWO Python SDK's
# assignments in `ussdb.UserStorage("data")` (opened in gunicorn's post_fork hook), driven by a bounded client on
# 127.0.0.1. Every user must keep one variation whichever worker serves them, though the workers' SDK settings
# disagree (each request picks a 100/0 or 0/100 split at random): only the shared store keeps it sticky.
# Then the binding's pytest suite (it includes the fork and multi-process tests).
#
# Self-contained: makes a venv (USSDB_MP_VENV, default target/mp-venv), installs maturin, gunicorn, pytest and
# the VWO SDK from PyPI, builds the binding, starts and stops gunicorn on a free loopback port.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${USSDB_MP_VENV:-$root/target/mp-venv}"
MATURIN=1.16.0
PYTEST=9.2.0
VWO_SDK=1.68.2
GUNICORN=23.0.0
USERS="${USSDB_MP_USERS:-300}"
REQUESTS_PER_USER="${USSDB_MP_REQUESTS:-6}"

command -v python3 >/dev/null || { echo "FAIL: python3 is missing (apt-get install -y python3 python3-venv)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "FAIL: cargo is missing (https://rustup.rs)" >&2; exit 1; }
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || { echo "FAIL: python3 -m venv failed (apt-get install -y python3-venv)" >&2; exit 1; }
fi
py="$venv/bin/python"
"$py" -m pip install --quiet --disable-pip-version-check \
    "maturin==$MATURIN" "pytest==$PYTEST" "vwo-python-sdk==$VWO_SDK" "gunicorn==$GUNICORN"
(cd "$root/bindings/python" && VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" maturin develop --release --quiet)
[ -x "$venv/bin/gunicorn" ] || { echo "FAIL: gunicorn did not install into $venv" >&2; exit 1; }

work="$(mktemp -d)"
gunicorn_pid=""
cleanup() {
    if [ -n "$gunicorn_pid" ] && kill -0 "$gunicorn_pid" 2>/dev/null; then
        kill -TERM "$gunicorn_pid" 2>/dev/null || true
        wait "$gunicorn_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/app.py" <<'EOF'
"""A WSGI app that asks the VWO SDK for a user's variation, keeping assignments in ussdb."""
import json
import os
from urllib.parse import parse_qs

import ussdb
import vwo

CAMPAIGN = "sticky_ab"
SDK = {}


def settings(control_weight):
    return json.dumps({
        "version": 1, "accountId": 123456, "sdkKey": "0123456789abcdef0123456789abcdef",
        "campaigns": [{
            "id": 101, "key": CAMPAIGN, "name": "Sticky A/B", "status": "RUNNING", "type": "VISUAL_AB",
            "percentTraffic": 100, "isForcedVariationEnabled": False, "segments": {},
            "variations": [
                {"id": 1, "name": "Control", "weight": control_weight},
                {"id": 2, "name": "Variation-1", "weight": 100 - control_weight},
            ],
            "goals": [{"id": 1, "identifier": "signup", "type": "CUSTOM_GOAL"}],
        }],
    })


def open_store():
    """Called in each worker after the fork (gunicorn.conf.py's post_fork): one store, shared by all."""
    storage = ussdb.UserStorage(os.environ["USSDB_MP_DATA"])
    for weight in (0, 100):
        SDK[weight] = vwo.launch(settings(weight), user_storage=storage, is_development_mode=True,
                                 log_level=vwo.LOG_LEVELS.ERROR)
        assert SDK[weight] is not None, "vwo.launch refused the settings or the storage"


def app(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    user = query["user"][0]
    weight = int(query["weight"][0])
    variation = SDK[weight].activate(CAMPAIGN, user)
    body = json.dumps({"user": user, "variation": variation, "pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
EOF

cat >"$work/gunicorn.conf.py" <<'EOF'
# The recipe: open the store in each worker after the fork, never in the master (a store opened before
# fork() refuses work in the child).
def post_fork(server, worker):
    import app
    app.open_store()
EOF

cat >"$work/client.py" <<'EOF'
"""A bounded client: each user's requests in sequence (so each one starts after the last returned), users in
parallel on 8 threads; each request's SDK settings chosen at random."""
import json
import random
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

port, users, per_user = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])


def run(i):
    rng = random.Random(i)
    user = "user-%05d" % i
    answers = []
    for _ in range(per_user):
        url = "http://127.0.0.1:%d/?user=%s&weight=%d" % (port, user, rng.choice((0, 100)))
        with urllib.request.urlopen(url, timeout=30) as response:
            answers.append(json.loads(response.read()))
    return user, answers


with ThreadPoolExecutor(8) as pool:
    results = list(pool.map(run, range(users)))
pids = set()
flips = 0
for user, answers in results:
    pids.update(a["pid"] for a in answers)
    variations = {a["variation"] for a in answers}
    if len(variations) != 1 or None in variations:
        flips += 1
        print("FAIL: %s got %s from workers %s" % (user, [a["variation"] for a in answers],
                                                    [a["pid"] for a in answers]), file=sys.stderr)
print(json.dumps({"users": len(results), "requests": len(results) * per_user, "workers": len(pids),
                  "flipped": flips}))
json.dump({user: answers[0]["variation"] for user, answers in results}, open(sys.argv[4], "w"))
if flips:
    sys.exit("FAIL: %d users changed variation between workers" % flips)
if len(pids) < 2:
    sys.exit("FAIL: only %d worker served requests; the test needs several" % len(pids))
EOF

port="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export USSDB_MP_DATA="$work/data"
(cd "$work" && exec "$venv/bin/gunicorn" -w 4 -b "127.0.0.1:$port" -c gunicorn.conf.py --log-level warning app:app) &
gunicorn_pid=$!
for _ in $(seq 1 100); do
    if "$py" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/?user=probe&weight=0', timeout=1)" 2>/dev/null; then
        break
    fi
    kill -0 "$gunicorn_pid" 2>/dev/null || { echo "FAIL: gunicorn exited before serving" >&2; exit 1; }
    sleep 0.2
done
"$py" "$work/client.py" "$port" "$USERS" "$REQUESTS_PER_USER" "$work/assigned.json"
kill -TERM "$gunicorn_pid"
wait "$gunicorn_pid" || true
gunicorn_pid=""

# What the workers stored is what the users saw.
"$py" - "$work/data" "$work/assigned.json" <<'EOF'
import json
import sys

import ussdb

store = ussdb.UserStorage(sys.argv[1])
assigned = json.load(open(sys.argv[2]))
wrong = {u: v for u, v in assigned.items() if (store.get(u, "sticky_ab") or {}).get("variationName") != v}
if wrong:
    sys.exit("FAIL: %d users' stored variation differs from what they saw, e.g. %s" % (len(wrong), list(wrong)[:3]))
print("stored assignments match for %d users" % len(assigned))
EOF

cd "$root/bindings/python"
"$py" -m pytest -p no:cacheprovider -q tests
echo "multiprocess: OK"
