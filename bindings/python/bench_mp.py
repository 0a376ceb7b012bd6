"""Multi-process benchmark: ussdb single-process mode, ussdb multi-process mode and LMDB (py-lmdb), get and set,
from 1 and 4 processes on one store, through Python in every case (docs/BENCHMARKS.md, "Multi-process").

    python bench_mp.py [--keys 100000] [--ops 200000] [--rounds 1]

Each process is started with the spawn method and opens the store itself; it runs `ops` operations on random
keys of a preloaded store and reports its time. Aggregate = all processes' operations / the slowest one's time.
No fsync per write on either side: ussdb `durability="never"`, LMDB `sync=False, metasync=False`. ussdb uses
1 MiB segments, so that, as in a store of realistic size (64 MiB segments, millions of mappings), nearly every
record sits in a sealed, memory-mapped segment rather than in the active one (read with `pread`).
"""

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import tempfile
import time

CAMPAIGN = "sticky_ab"
SEGMENT = 1 << 20


def user(i):
    return "user-%08d" % i


def worker(kind, path, op, keys, ops, seed, start, out):
    rng = random.Random(seed)
    ids = [rng.randrange(keys) for _ in range(ops)]
    if kind == "lmdb":
        import lmdb

        env = lmdb.open(path, map_size=1 << 31, sync=False, metasync=False, max_readers=64, lock=True)
        start.wait()
        t0 = time.perf_counter()
        if op == "get":
            for i in ids:
                with env.begin() as txn:
                    value = txn.get(("%s\x00%s" % (user(i), CAMPAIGN)).encode())
                    assert value is not None
        else:
            for n, i in enumerate(ids):
                with env.begin(write=True) as txn:
                    txn.put(("%s\x00%s" % (user(i), CAMPAIGN)).encode(), ("v%d" % n).encode())
        elapsed = time.perf_counter() - t0
        env.close()
    else:
        import ussdb

        store = ussdb.Store(
            path, durability="never", segment_size=SEGMENT, shared=(kind == "shared"), auto_compaction=False
        )
        start.wait()
        t0 = time.perf_counter()
        if op == "get":
            for i in ids:
                assert store.get(user(i), CAMPAIGN) is not None
        else:
            for n, i in enumerate(ids):
                store.set({"userId": user(i), "campaignKey": CAMPAIGN, "variationName": "v%d" % n})
        elapsed = time.perf_counter() - t0
        store.close()
    out.put(elapsed)


def preload(kind, path, keys):
    if kind == "lmdb":
        import lmdb

        env = lmdb.open(path, map_size=1 << 31, sync=False, metasync=False)
        with env.begin(write=True) as txn:
            for i in range(keys):
                txn.put(("%s\x00%s" % (user(i), CAMPAIGN)).encode(), b"Control")
        env.sync(True)
        env.close()
    else:
        import ussdb

        store = ussdb.Store(path, durability="never", segment_size=SEGMENT, shared=(kind == "shared"))
        for i in range(keys):
            store.set({"userId": user(i), "campaignKey": CAMPAIGN, "variationName": "Control"})
        store.close()


def run(kind, op, procs, keys, ops, root):
    path = os.path.join(root, "%s-%s-%d" % (kind, op, procs))
    os.makedirs(path)
    preload(kind, path, keys)
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(procs)
    out = ctx.Queue()
    children = [
        ctx.Process(target=worker, args=(kind, path, op, keys, ops, 1000 + p, start, out)) for p in range(procs)
    ]
    for c in children:
        c.start()
    times = [out.get(timeout=600) for _ in children]
    for c in children:
        c.join()
        assert c.exitcode == 0, "%s %s x%d failed" % (kind, op, procs)
    shutil.rmtree(path)
    return procs * ops / max(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="ussdb-bench-mp-")
    # Each round runs every configuration once, in the same order, so a drift of the machine's speed (it moves by
    # more than the ratios measured) touches every configuration alike; each figure is the median of its rounds.
    rounds = {}
    try:
        for r in range(args.rounds):
            for op in ("get", "set"):
                for kind, procs in (("single", 1), ("shared", 1), ("shared", 4), ("lmdb", 1), ("lmdb", 4)):
                    rate = run(kind, op, procs, args.keys, args.ops, root)
                    rounds.setdefault("%s %s x%d" % (kind, op, procs), []).append(rate)
                    print("round %d  %-7s %s x%d: %10.0f ops/s" % (r + 1, kind, op, procs, rate), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results = {name: sorted(rates)[len(rates) // 2] for name, rates in rounds.items()}
    if args.rounds > 1:
        print("medians of %d rounds:" % args.rounds)
        for name, rate in results.items():
            print("%-16s %10.0f ops/s" % (name, rate))
    for op in ("get", "set"):
        print(
            "%s: shared/single x1 = %.2f; shared x4 / lmdb x4 = %.2f"
            % (
                op,
                results["shared %s x1" % op] / results["single %s x1" % op],
                results["shared %s x4" % op] / results["lmdb %s x4" % op],
            )
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
