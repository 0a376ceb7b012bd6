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
  ussdb "periodic"  (write(2) per set, fsync every 100 ms) ~ sqlite synchronous=NORMAL in WAL mode
                    (write to the WAL per commit, fsync at checkpoints): both survive a process crash.
  ussdb "immediate" (fsync before set returns)            ~ sqlite synchronous=FULL (fsync per commit).
Gets look up all n records in a shuffled order, on a store reopened after loading them.

Last, the same three as the VWO Python SDK's user storage (if `vwo` is installed): CPU time per
activate() for first visits (get misses, set) and returning users (get hits), with the settings file
of the tests (one VISUAL_AB campaign), to show what the storage weighs in a whole SDK call.
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


class Timing:
    """Best-of-runs wall rate and CPU ns/op for one case. CPU time (user + system of this process) is
    the steadier figure on a shared machine; wall time is what includes waiting for fsync."""

    def __init__(self, ops):
        self.ops = ops
        self.wall = self.cpu = float("inf")

    def measure(self, fn):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        self.wall = min(self.wall, time.perf_counter() - t0)
        self.cpu = min(self.cpu, time.process_time() - c0)

    @property
    def rate(self):
        return self.ops / self.wall

    @property
    def cpu_ns(self):
        return self.cpu / self.ops * 1e9


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


# ---- the VWO SDK on top ------------------------------------------------------------------------


class DictUserStorage:
    def __init__(self):
        self.d = {}

    def get(self, user_id, campaign_key):
        return self.d.get((user_id, campaign_key))

    def set(self, data):
        self.d[(data["userId"], data["campaignKey"])] = data


class SqliteUserStorage:
    def __init__(self, path):
        self.conn = sqlite_open(path, "NORMAL")

    def get(self, user_id, campaign_key):
        row = self.conn.execute(
            "SELECT variation_name, goal_identifier FROM campaign_user WHERE user_id = ? AND campaign_key = ?",
            (user_id, campaign_key),
        ).fetchone()
        if row is None:
            return None
        d = {"userId": user_id, "campaignKey": campaign_key, "variationName": row[0]}
        if row[1] is not None:
            d["goalIdentifiers"] = row[1]
        return d

    def set(self, data):
        self.conn.execute(
            "INSERT OR REPLACE INTO campaign_user VALUES (?, ?, ?, ?)",
            (data["userId"], data["campaignKey"], data["variationName"], data.get("goalIdentifiers")),
        )


def sdk_rows(base, n_users):
    try:
        import vwo
    except ImportError:
        return []
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests"))
    from conftest import CAMPAIGN_KEY, settings_file

    users = ["sdk-user-%06d" % i for i in range(n_users)]
    rows = []
    for label, make in (
        ("dict", DictUserStorage),
        ("sqlite3 WAL synchronous=NORMAL", lambda: SqliteUserStorage(os.path.join(base, "sdk.sqlite"))),
        ('ussdb.UserStorage durability="periodic"', lambda: ussdb.UserStorage(os.path.join(base, "sdk-ussdb"))),
    ):
        storage = make()
        sdk = vwo.launch(settings_file(50, 50), user_storage=storage, is_development_mode=True,
                         log_level=vwo.LOG_LEVELS.ERROR)
        per_phase = []
        for _ in ("first visit", "returning"):
            c0 = time.process_time()
            for u in users:
                sdk.activate(CAMPAIGN_KEY, u)
            per_phase.append((time.process_time() - c0) / n_users * 1e6)
        rows.append((label, per_phase[0], per_phase[1]))
        if hasattr(storage, "close"):
            storage.close()
    return rows


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
    ap.add_argument("--sdk-users", type=int, default=5_000, help="users for the VWO SDK activate() runs")
    ap.add_argument("--dir", default=None, help="where to put the stores (default: a temp dir)")
    a = ap.parse_args()

    base = tempfile.mkdtemp(prefix="ussdb-bench-", dir=a.dir)
    recs = records(a.n)
    users = [r["userId"] for r in recs]
    random.Random(11).shuffle(users)

    def fresh(name):
        p = os.path.join(base, name)
        shutil.rmtree(p, ignore_errors=True)
        if os.path.exists(p + ".sqlite"):
            os.remove(p + ".sqlite")
        for suffix in ("-wal", "-shm"):
            if os.path.exists(p + ".sqlite" + suffix):
                os.remove(p + ".sqlite" + suffix)
        return p

    def sqlite_filled(name, synchronous):
        conn = sqlite_open(fresh(name) + ".sqlite", synchronous)
        conn.execute("BEGIN")
        sqlite_set(conn, recs)
        conn.execute("COMMIT")
        return conn

    srecs = recs[: a.sync_n]

    def set_dict():
        dict_set({}, recs)

    def set_sqlite(name, synchronous, rs):
        def run():
            conn = sqlite_open(fresh(name) + ".sqlite", synchronous)
            sqlite_set(conn, rs)
            conn.close()

        return run

    def set_ussdb(name, durability, rs):
        def run():
            with ussdb.Store(fresh(name), durability=durability) as s:
                ussdb_set(s, rs)

        return run

    try:
        d = {}
        dict_set(d, recs)
        conn = sqlite_filled("sqg", "NORMAL")
        # The default 64 MiB segment holds all n records, so every get reads the active segment (pread);
        # with 1 MiB segments nearly all records sit in sealed, memory-mapped segments.
        stores = {}
        for label, seg in (("ussdb", None), ("ussdb segment_size=1MiB", 1 << 20)):
            p = fresh("usg%s" % (seg or ""))
            with ussdb.Store(p, durability="periodic", segment_size=seg) as s:
                ussdb_set(s, recs)
            stores[label] = ussdb.Store(p, segment_size=seg)

        # (op, durability, backend, ops, fn); every round runs each case once, so a burst of load
        # from elsewhere on the machine hits all of them alike, and each keeps its best round.
        cases = [
            ("set", "in memory", "dict", a.n, set_dict),
            ("set", "process-crash safe", "sqlite3 WAL synchronous=NORMAL", a.n, set_sqlite("sq", "NORMAL", recs)),
            ("set", "process-crash safe", 'ussdb durability="periodic"', a.n, set_ussdb("us", "periodic", recs)),
            ("set", "fsync per set", "sqlite3 WAL synchronous=FULL", a.sync_n, set_sqlite("sqf", "FULL", srecs)),
            ("set", "fsync per set", 'ussdb durability="immediate"', a.sync_n, set_ussdb("usi", "immediate", srecs)),
            ("get", "-", "dict", a.n, lambda: dict_get(d, users)),
            ("get", "-", "sqlite3", a.n, lambda: sqlite_get(conn, users)),
        ] + [("get", "-", label, a.n, (lambda s=s: ussdb_get(s, users))) for label, s in stores.items()]
        timings = [Timing(ops) for (_, _, _, ops, _) in cases]
        for _ in range(a.runs):
            for (_, _, _, _, fn), t in zip(cases, timings):
                t.measure(fn)
        results = [(op, dur, backend, t) for (op, dur, backend, _, _), t in zip(cases, timings)]
        conn.close()
        for s in stores.values():
            s.close()
        sdk = sdk_rows(base, a.sdk_users)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print("python %s, %s, ussdb %s, sqlite %s; n=%d (fsync runs: %d), best of %d"
          % (platform.python_version(), platform.machine(), ussdb.__version__, sqlite3.sqlite_version, a.n, a.sync_n, a.runs))
    print()
    print("| op | durability | backend | ops/s (wall) | ns/op (wall) | CPU ns/op |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for op, dur, backend, t in results:
        print("| %s | %s | %s | %s | %.0f | %.0f |" % (op, dur, backend, format(int(t.rate), ","), 1e9 / t.rate, t.cpu_ns))
    rates = {(op, b): t.rate for op, _, b, t in results}
    cpu = {(op, b): t.cpu_ns for op, _, b, t in results}
    print()
    for label in ("ussdb", "ussdb segment_size=1MiB"):
        print("get, %s: %.1fx sqlite3's rate, %.1fx dict's time (by CPU: %.1fx and %.1fx)" % (
            label,
            rates[("get", label)] / rates[("get", "sqlite3")],
            rates[("get", "dict")] / rates[("get", label)],
            cpu[("get", "sqlite3")] / cpu[("get", label)],
            cpu[("get", label)] / cpu[("get", "dict")],
        ))
    print("set: ussdb periodic %.1fx sqlite3 NORMAL; ussdb immediate %.1fx sqlite3 FULL" % (
        rates[("set", 'ussdb durability="periodic"')] / rates[("set", "sqlite3 WAL synchronous=NORMAL")],
        rates[("set", 'ussdb durability="immediate"')] / rates[("set", "sqlite3 WAL synchronous=FULL")],
    ))
    if sdk:
        print()
        print("| VWO SDK user storage | CPU us/activate, first visit | CPU us/activate, returning |")
        print("| --- | ---: | ---: |")
        for label, first, returning in sdk:
            print("| %s | %.1f | %.1f |" % (label, first, returning))
    return 0


if __name__ == "__main__":
    sys.exit(main())
