"""Durable writes from Python: blocking sets on threads against set_async from asyncio tasks.

    python bench_async.py [--secs 3] [--tasks 1000] [--threads 8] [--dir DIR]

Every write is durable when acknowledged: ussdb with durability="immediate" (a set returns, or a
set_async's awaitable completes, after the fsync covering it), sqlite3 with synchronous=FULL in WAL
mode (fsync per commit, one transaction per set). Rows:
  ussdb set, 1 thread / N threads      Store.set on threads (the GIL is released while it waits)
  ussdb set_async, M asyncio tasks     each task awaits Store.set_async in a loop, one event loop
  sqlite3 FULL, 1 thread               the stdlib's durable store, for scale
Prints sets/s, fsyncs per set (ussdb) and the latency of each acknowledged write, p50 / p99.
"""

import argparse
import asyncio
import os
import shutil
import sqlite3
import tempfile
import threading
import time

import ussdb


def rec(prefix, i):
    return {"userId": "%s-%d" % (prefix, i), "campaignKey": "checkout", "variationName": "Variation-1"}


def pct(lats, q):
    lats = sorted(lats)
    return lats[min(len(lats) - 1, int(len(lats) * q))] * 1e6


def row(name, n, secs, lats, fsyncs=None):
    per = "%.3f" % (fsyncs / n) if fsyncs is not None else "–"
    print("| %s | %d | %s | %.0f / %.0f |" % (name, n / secs, per, pct(lats, 0.5), pct(lats, 0.99)))


def threads_run(store, threads, secs):
    lats = [[] for _ in range(threads)]
    stop = time.monotonic() + secs

    def work(t):
        i, out = 0, lats[t]
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            store.set(rec("t%d" % t, i))
            out.append(time.perf_counter() - t0)
            i += 1

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    began = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    flat = [x for part in lats for x in part]
    return len(flat), time.monotonic() - began, flat


def tasks_run(store, tasks, secs):
    lats = []

    async def work(t, stop):
        i = 0
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            await store.set_async(rec("a%d" % t, i))
            lats.append(time.perf_counter() - t0)
            i += 1

    async def main():
        stop = time.monotonic() + secs
        began = time.monotonic()
        await asyncio.gather(*(work(t, stop) for t in range(tasks)))
        return time.monotonic() - began

    took = asyncio.run(main())
    return len(lats), took, lats


def sqlite_run(path, secs):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE m (u TEXT, c TEXT, v TEXT, PRIMARY KEY (u, c))")
    lats, i = [], 0
    stop = time.monotonic() + secs
    began = time.monotonic()
    while time.monotonic() < stop:
        r = rec("s", i)
        t0 = time.perf_counter()
        conn.execute("INSERT OR REPLACE INTO m VALUES (?, ?, ?)", (r["userId"], r["campaignKey"], r["variationName"]))
        lats.append(time.perf_counter() - t0)
        i += 1
    took = time.monotonic() - began
    conn.close()
    return len(lats), took, lats


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--secs", type=float, default=3.0, help="seconds per row")
    ap.add_argument("--tasks", type=int, default=1000, help="asyncio tasks for the set_async row")
    ap.add_argument("--threads", type=int, default=8, help="threads for the many-threads set row")
    ap.add_argument("--dir", default=None, help="where to put the stores (default: a temp dir; must be a real disk)")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="ussdb-bench-async-", dir=args.dir)
    try:
        print("| writer | sets/s | fsyncs per set | latency p50 / p99, µs |")
        print("| --- | ---: | ---: | ---: |")
        with ussdb.Store(os.path.join(base, "ussdb"), durability="immediate") as store:
            for threads in (1, args.threads):
                before = store.stats()["fsyncs"]
                n, took, lats = threads_run(store, threads, args.secs)
                row("ussdb set, %d thread%s" % (threads, "s" * (threads > 1)), n, took, lats,
                    store.stats()["fsyncs"] - before)
            before = store.stats()["fsyncs"]
            n, took, lats = tasks_run(store, args.tasks, args.secs)
            row("ussdb set_async, %d asyncio tasks" % args.tasks, n, took, lats, store.stats()["fsyncs"] - before)
        n, took, lats = sqlite_run(os.path.join(base, "sqlite.db"), args.secs)
        row("sqlite3 FULL, 1 thread", n, took, lats)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
