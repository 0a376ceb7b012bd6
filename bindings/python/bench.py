"""Python-level get/set throughput: ussdb.Store against a plain dict and stdlib sqlite3.

    python bench.py [--n 200000] [--sync-n 2000] [--runs 3] [--dir DIR]

Each op takes (user_id, campaign_key) like a user storage does. Every backend runs the same loop
shape with the bound method hoisted, so the numbers differ by the backend's own cost:
  dict     d[(u, c)] = record / d.get((u, c)): the limit; returns the stored object, no copy.
  sqlite3  one table, PRIMARY KEY (user_id, campaign_key), WAL, autocommit (one transaction per
           set, as a user storage's set is), prepared statements cached by the module;
           get is execute(...).fetchone() and returns a tuple.
  ussdb    Store.set(dict) / Store.get(u, c) returning a new dict.
Durability is matched pairwise:
  ussdb "periodic"  (write(2) per set, fsync every second) ~ sqlite synchronous=NORMAL in WAL mode
                    (write to the WAL per commit, fsync at checkpoints): both survive a process crash.
  ussdb "immediate" (fsync before set returns)            ~ sqlite synchronous=FULL (fsync per commit).
Gets look up all n records in a shuffled order, on a store reopened after loading them.
"""

import argparse
import os
import platform
import random
import shutil
import sqlite3
import sys
import tempfile
import time

import ussdb

CAMPAIGN = "campaign-checkout-2026"


def records(n):
    rng = random.Random(7)
    out = []
    for i in range(n):
        r = {"userId": "user-%08d" % i, "campaignKey": CAMPAIGN, "variationName": rng.choice(["Control", "Variation-1"])}
        if i % 4 == 0:
            r["goalIdentifier"] = "signup_vwo_purchase"
        out.append(r)
    return out


def best_rate(fn, ops, runs):
    """(ops/s by the wall clock, CPU ns/op), each the best of `runs`. CPU time (user + system of this
    process) is the steadier figure on a shared machine; wall time is what includes waiting for fsync."""
    wall = cpu = float("inf")
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return ops / wall, cpu / ops * 1e9


# ---- dict -------------------------------------------------------------------------------------


def dict_set(d, recs):
    for r in recs:
        d[(r["userId"], r["campaignKey"])] = r


def dict_get(d, users):
    get = d.get
    c = CAMPAIGN
    for u in users:
        get((u, c))


# ---- sqlite3 ----------------------------------------------------------------------------------


def sqlite_open(path, synchronous):
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=%s" % synchronous)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS campaign_user (user_id TEXT NOT NULL, campaign_key TEXT NOT NULL,"
        " variation_name TEXT NOT NULL, goal_identifier TEXT, PRIMARY KEY (user_id, campaign_key))"
        " WITHOUT ROWID"
    )
    return conn


def sqlite_set(conn, recs):
    ex = conn.execute
    q = "INSERT OR REPLACE INTO campaign_user VALUES (?, ?, ?, ?)"
    for r in recs:
        ex(q, (r["userId"], r["campaignKey"], r["variationName"], r.get("goalIdentifier")))


def sqlite_get(conn, users):
    ex = conn.execute
    q = "SELECT variation_name, goal_identifier FROM campaign_user WHERE user_id = ? AND campaign_key = ?"
    c = CAMPAIGN
    for u in users:
        ex(q, (u, c)).fetchone()


# ---- ussdb ------------------------------------------------------------------------------------


def ussdb_set(store, recs):
    s = store.set
    for r in recs:
        s(r)


def ussdb_get(store, users):
    g = store.get
    c = CAMPAIGN
    for u in users:
        g(u, c)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="records for the get and periodic-set runs")
    ap.add_argument("--sync-n", type=int, default=2_000, help="records for the fsync-per-set runs")
    ap.add_argument("--runs", type=int, default=3, help="best of this many runs")
    ap.add_argument("--dir", default=None, help="where to put the stores (default: a temp dir)")
    a = ap.parse_args()

    base = tempfile.mkdtemp(prefix="ussdb-bench-", dir=a.dir)
    recs = records(a.n)
    users = [r["userId"] for r in recs]
    random.Random(11).shuffle(users)
    results = []  # (op, durability, backend, ops/s)

    def fresh(name):
        p = os.path.join(base, name)
        shutil.rmtree(p, ignore_errors=True)
        if os.path.exists(p + ".sqlite"):
            os.remove(p + ".sqlite")
        for suffix in ("-wal", "-shm"):
            if os.path.exists(p + ".sqlite" + suffix):
                os.remove(p + ".sqlite" + suffix)
        return p

    try:
        # set, process-crash-safe tier; every run starts from an empty store
        def run_dict_set():
            dict_set({}, recs)

        results.append(("set", "in memory", "dict", best_rate(run_dict_set, a.n, a.runs)))

        def run_sqlite_set():
            conn = sqlite_open(fresh("sq") + ".sqlite", "NORMAL")
            sqlite_set(conn, recs)
            conn.close()

        results.append(("set", "process-crash safe", "sqlite3 WAL synchronous=NORMAL", best_rate(run_sqlite_set, a.n, a.runs)))

        def run_ussdb_set():
            with ussdb.Store(fresh("us"), durability="periodic") as s:
                ussdb_set(s, recs)

        results.append(("set", "process-crash safe", 'ussdb durability="periodic"', best_rate(run_ussdb_set, a.n, a.runs)))

        # set, fsync per set
        srecs = recs[: a.sync_n]

        def run_sqlite_full():
            conn = sqlite_open(fresh("sqf") + ".sqlite", "FULL")
            sqlite_set(conn, srecs)
            conn.close()

        results.append(("set", "fsync per set", "sqlite3 WAL synchronous=FULL", best_rate(run_sqlite_full, a.sync_n, a.runs)))

        def run_ussdb_immediate():
            with ussdb.Store(fresh("usi"), durability="immediate") as s:
                ussdb_set(s, srecs)

        results.append(("set", "fsync per set", 'ussdb durability="immediate"', best_rate(run_ussdb_immediate, a.sync_n, a.runs)))

        # get, on stores holding all n records
        d = {}
        dict_set(d, recs)
        results.append(("get", "-", "dict", best_rate(lambda: dict_get(d, users), a.n, a.runs)))

        conn = sqlite_open(fresh("sqg") + ".sqlite", "NORMAL")
        conn.execute("BEGIN")
        sqlite_set(conn, recs)
        conn.execute("COMMIT")
        results.append(("get", "-", "sqlite3", best_rate(lambda: sqlite_get(conn, users), a.n, a.runs)))
        conn.close()

        # The default 64 MiB segment holds all n records, so every get reads the active segment (pread);
        # with 1 MiB segments nearly all records sit in sealed, memory-mapped segments.
        for label, seg in (("ussdb", None), ("ussdb segment_size=1MiB", 1 << 20)):
            p = fresh("usg%s" % (seg or ""))
            with ussdb.Store(p, durability="periodic", segment_size=seg) as s:
                ussdb_set(s, recs)
            with ussdb.Store(p, segment_size=seg) as s:
                results.append(("get", "-", label, best_rate(lambda: ussdb_get(s, users), a.n, a.runs)))
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print("python %s, %s, ussdb %s, sqlite %s; n=%d (fsync runs: %d), best of %d"
          % (platform.python_version(), platform.machine(), ussdb.__version__, sqlite3.sqlite_version, a.n, a.sync_n, a.runs))
    print()
    print("| op | durability | backend | ops/s (wall) | ns/op (wall) | CPU ns/op |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for op, dur, backend, (rate, cpu_ns) in results:
        print("| %s | %s | %s | %s | %.0f | %.0f |" % (op, dur, backend, format(int(rate), ","), 1e9 / rate, cpu_ns))
    rates = {(op, b): r for op, _, b, (r, _) in results}
    g_us = rates[("get", "ussdb")]
    print()
    print("get: ussdb is %.1fx sqlite3 and %.1fx slower than dict"
          % (g_us / rates[("get", "sqlite3")], rates[("get", "dict")] / g_us))
    print("set: ussdb periodic is %.1fx sqlite3 NORMAL; ussdb immediate is %.1fx sqlite3 FULL"
          % (rates[("set", 'ussdb durability="periodic"')] / rates[("set", "sqlite3 WAL synchronous=NORMAL")],
             rates[("set", 'ussdb durability="immediate"')] / rates[("set", "sqlite3 WAL synchronous=FULL")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
