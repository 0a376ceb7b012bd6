'use strict';
// Benchmark (not a test): ussdb's Node API against a JavaScript Map (the limit: no persistence at all),
// better-sqlite3 and lmdb-js, on the same workload in one run.
//
//   cd bindings/node && npm run build && npm run bench            # installs the peers into bench/ first
//   node bench.js [--mappings N] [--rounds R] [--segment-mib M]
//
// Workload: N mappings (users x 4 campaigns, a quarter of them with a goal list), keys visited in a shuffled
// order. "load" stores each mapping once into an empty store; "set" overwrites every mapping (median of R
// rounds); "get" reads every mapping back as the SDK's object {userId, campaignKey, variationName,
// goalIdentifier} (median of R rounds). Rounds of the stores alternate, so a noisy neighbour on the machine hits
// all of them alike. Every store keeps what a process crash would otherwise lose and none fsyncs per write:
// ussdb "periodic" (fsync every 100 ms in the background), SQLite WAL with synchronous=NORMAL, LMDB noSync.

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { createRequire } = require('node:module');

const { Store } = require('.');

const peers = createRequire(path.join(__dirname, 'bench', 'package.json'));
let Database;
let lmdb;
try {
  Database = peers('better-sqlite3');
  lmdb = peers('lmdb');
} catch (err) {
  console.error(`the peers are not installed (${err.message}); run: npm ci --prefix bench (or npm run bench)`);
  process.exit(1);
}

function flag(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i === -1 ? fallback : Number(process.argv[i + 1]);
}
const MAPPINGS = flag('mappings', 200_000);
const ROUNDS = flag('rounds', 5);
const SEGMENT_MIB = flag('segment-mib', undefined);
const CAMPAIGNS = ['checkout_redesign', 'pricing_page', 'onboarding_flow', 'search_ranking'];

// ---- the workload, the same for every store ----

function shuffled(n, seed) {
  // xorshift32, so every run visits the keys in the same order.
  let x = seed >>> 0 || 1;
  const next = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

const maps = Array.from({ length: MAPPINGS }, (_, i) => {
  const map = {
    userId: `user-${String(Math.floor(i / CAMPAIGNS.length)).padStart(8, '0')}`,
    campaignKey: CAMPAIGNS[i % CAMPAIGNS.length],
    variationName: i % 2 ? 'Control' : 'Variation-1',
  };
  if (i % 4 === 0) map.goalIdentifier = 'signup_vwo_purchase';
  return map;
});
const loadOrder = shuffled(MAPPINGS, 1).map((i) => maps[i]);
const setOrders = Array.from({ length: ROUNDS }, (_, r) =>
  shuffled(MAPPINGS, 100 + r).map((i) => ({ ...maps[i], variationName: `round-${r}` })),
);
const getOrders = Array.from({ length: ROUNDS }, (_, r) => shuffled(MAPPINGS, 200 + r).map((i) => maps[i]));

// ---- the stores, each behind the same three calls ----

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'ussdb-node-bench-'));
process.on('exit', () => fs.rmSync(root, { recursive: true, force: true }));

function ussdbAdapter() {
  const options = { durability: 'periodic' };
  if (SEGMENT_MIB !== undefined) options.segmentSize = SEGMENT_MIB * 2 ** 20;
  const store = new Store(path.join(root, 'ussdb'), options);
  return {
    name: 'ussdb',
    set: (m) => store.set(m),
    get: (u, c) => store.get(u, c),
    close: () => store.close(),
  };
}

function mapAdapter() {
  const map = new Map();
  return {
    name: 'Map',
    set: (m) => map.set(`${m.userId}\u0000${m.campaignKey}`, m),
    get: (u, c) => map.get(`${u}\u0000${c}`),
    close: () => {},
  };
}

function sqliteAdapter() {
  const db = new Database(path.join(root, 'sqlite.db'));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.exec(`CREATE TABLE user_storage (
    user_id TEXT NOT NULL, campaign_key TEXT NOT NULL, variation_name TEXT NOT NULL, goal_identifier TEXT,
    PRIMARY KEY (user_id, campaign_key)) WITHOUT ROWID`);
  const put = db.prepare('INSERT OR REPLACE INTO user_storage VALUES (?, ?, ?, ?)');
  const read = db.prepare(`SELECT user_id AS userId, campaign_key AS campaignKey, variation_name AS variationName,
    goal_identifier AS goalIdentifier FROM user_storage WHERE user_id = ? AND campaign_key = ?`);
  return {
    name: 'better-sqlite3',
    set: (m) => put.run(m.userId, m.campaignKey, m.variationName, m.goalIdentifier ?? null),
    get: (u, c) => read.get(u, c),
    close: () => db.close(),
  };
}

function lmdbAdapter() {
  const db = lmdb.open({ path: path.join(root, 'lmdb'), noSync: true });
  return {
    name: 'lmdb-js',
    set: (m) => db.putSync(`${m.userId}\u0000${m.campaignKey}`, m),
    get: (u, c) => db.get(`${u}\u0000${c}`),
    close: () => db.close(),
  };
}

// ---- measuring ----

function opsPerSecond(work) {
  const start = process.hrtime.bigint();
  work();
  return MAPPINGS / (Number(process.hrtime.bigint() - start) / 1e9);
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

const adapters = [mapAdapter(), ussdbAdapter(), sqliteAdapter(), lmdbAdapter()];
const results = new Map(adapters.map((a) => [a.name, { load: 0, set: [], get: [] }]));

for (const a of adapters) {
  results.get(a.name).load = opsPerSecond(() => {
    for (const m of loadOrder) a.set(m);
  });
}
// Every store answers alike before anything is timed.
for (const a of adapters) {
  for (const i of [0, 1, 4, MAPPINGS - 1]) {
    const got = a.get(maps[i].userId, maps[i].campaignKey);
    if (got?.variationName !== maps[i].variationName || (got.goalIdentifier ?? undefined) !== maps[i].goalIdentifier) {
      throw new Error(`${a.name} read back ${JSON.stringify(got)} for ${JSON.stringify(maps[i])}`);
    }
  }
}
for (let r = 0; r < ROUNDS; r++) {
  for (const a of adapters) {
    results.get(a.name).get.push(
      opsPerSecond(() => {
        for (const m of getOrders[r]) if (a.get(m.userId, m.campaignKey) === undefined) throw new Error('lost');
      }),
    );
  }
  for (const a of adapters) {
    results.get(a.name).set.push(
      opsPerSecond(() => {
        for (const m of setOrders[r]) a.set(m);
      }),
    );
  }
}
for (const a of adapters) a.close();

// ---- report ----

const fmt = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : `${(n / 1e3).toFixed(1)}k`);
const rows = [
  ['get (hit)', (r) => median(r.get)],
  ['set (overwrite)', (r) => median(r.set)],
  ['load (insert)', (r) => r.load],
];
const ussdb = results.get('ussdb');
const others = adapters.map((a) => a.name).filter((n) => n !== 'ussdb');
console.log(
  `ussdb Node benchmark: ${MAPPINGS} mappings, median of ${ROUNDS} rounds; node ${process.version}, ` +
    `${os.cpus().length} cores` +
    (SEGMENT_MIB === undefined ? '' : `, ussdb segments of ${SEGMENT_MIB} MiB`),
);
console.log('ops/s; the ratio is ussdb / that store (above 1: ussdb is faster)\n');
console.log(`| op | ussdb | ${others.join(' | ')} |`);
console.log(`| --- | --- | ${others.map(() => '---').join(' | ')} |`);
for (const [label, pick] of rows) {
  const mine = pick(ussdb);
  const cells = others.map((n) => {
    const theirs = pick(results.get(n));
    return `${fmt(theirs)} (${(mine / theirs).toFixed(2)}×)`;
  });
  console.log(`| ${label} | ${fmt(mine)} | ${cells.join(' | ')} |`);
}
