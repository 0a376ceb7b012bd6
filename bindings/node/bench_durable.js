'use strict';
// Durable writes from one Node.js process: N `setAsync` calls kept in flight on a store with
// durability "immediate" (each Promise settles once the fsync covering its write is done).
//
//   node bench_durable.js [inFlight=1000] [seconds=3] [packageDir=.]
//
// Prints one markdown row: in flight, sets/s, fsyncs per set, latency of a write p50 / p99 in µs.
// `packageDir` lets an older build of the package be measured side by side with this one.

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const inflight = Number(process.argv[2] || 1000);
const secs = Number(process.argv[3] || 3);
const { Store } = require(path.resolve(process.argv[4] || __dirname));

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ussdb-bench-durable-'));
  const store = new Store(dir, { durability: 'immediate' });
  try {
    const before = store.stats().fsyncs;
    const lats = [];
    const stop = Date.now() + secs * 1000;
    const began = process.hrtime.bigint();
    await Promise.all(
      Array.from({ length: inflight }, async (_, w) => {
        for (let i = 0; Date.now() < stop; i++) {
          const t0 = process.hrtime.bigint();
          await store.setAsync({ userId: `w${w}-${i}`, campaignKey: 'c', variationName: 'v' });
          lats.push(Number(process.hrtime.bigint() - t0) / 1000);
        }
      }),
    );
    const took = Number(process.hrtime.bigint() - began) / 1e9;
    const fsyncs = store.stats().fsyncs - before;
    lats.sort((a, b) => a - b);
    const at = (q) => Math.round(lats[Math.min(lats.length - 1, Math.floor(lats.length * q))]);
    console.log(
      `| ${inflight} in flight | ${Math.round(lats.length / took)} | ${(fsyncs / lats.length).toFixed(3)} | ${at(0.5)} / ${at(0.99)} |`,
    );
  } finally {
    store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main();
