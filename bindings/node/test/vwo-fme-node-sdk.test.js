'use strict';
// The published vwo-fme-node-sdk, unmodified, keeping its decisions in ussdb through FmeStorage. Runs offline: a
// loopback HTTP server named in the SDK's `gatewayService` option serves the settings and takes the events, and
// helpers.js refuses connections to any other host.

const assert = require('node:assert/strict');
const http = require('node:http');
const path = require('node:path');
const { before, beforeEach, test } = require('node:test');

const { init } = require('vwo-fme-node-sdk'); // a missing SDK fails the run: `npm ci` in bindings/node installs it
const { Store, FmeStorage } = require('..');
const { tempDir, refusedConnections, fmeSettings, FEATURE_KEY, FME_ACCOUNT_ID, FME_SDK_KEY } = require('./helpers');

const USERS = Array.from({ length: 200 }, (_, i) => `user-${String(i).padStart(4, '0')}`);

// vwo-fme-node-sdk polls its settings every 10 minutes (and retries failed calls) with timers it offers no way to
// stop; they must not keep this test process alive once the tests are done. Only the SDK's own timers are unref'd.
const realSetTimeout = global.setTimeout;
global.setTimeout = function setTimeoutUnrefForTheSdk(...args) {
  const timer = realSetTimeout(...args);
  if (new Error().stack.includes(`${path.sep}vwo-fme-node-sdk${path.sep}`)) timer.unref();
  return timer;
};

/**
 * A stand-in for VWO's servers on 127.0.0.1, for the whole file (the SDK sends events after a test is done):
 * settings with the current weights, and an events sink.
 */
const served = { settings: fmeSettings(50, 50), requests: [], url: undefined };
const server = http.createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    const route = req.url.split('?')[0];
    served.requests.push(`${req.method} ${route}`);
    res.setHeader('content-type', 'application/json');
    res.end(route.includes('settings') ? JSON.stringify(served.settings) : '{}');
  });
});
server.unref();

before(async () => {
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  served.url = `http://127.0.0.1:${server.address().port}`;
});

beforeEach(() => {
  served.settings = fmeSettings(50, 50);
});

async function client(storage) {
  return init({
    accountId: FME_ACCOUNT_ID,
    sdkKey: FME_SDK_KEY,
    storage,
    gatewayService: { url: served.url },
    isUsageStatsDisabled: true,
    logger: { level: 'ERROR', transports: [{ log: () => {} }] },
  });
}

/** Which variation (by its `label` variable) each user sees. */
async function labels(vwoClient, users) {
  const out = {};
  for (const u of users) {
    const flag = await vwoClient.getFlag(FEATURE_KEY, { id: u });
    assert.equal(flag.isEnabled(), true, `${u}: the rollout covers everyone`);
    out[u] = flag.getVariable('label', 'none');
  }
  return out;
}

test.afterEach(() => assert.deepEqual(refusedConnections, [], 'the SDK tried to reach another host'));

test('the SDK reads its settings from the loopback gateway and stores its record through FmeStorage', async (t) => {
  const storage = new FmeStorage(tempDir(t));
  t.after(() => storage.close());
  const seen = await labels(await client(storage), ['alice']);
  assert.ok(['default', 'variation-1'].includes(seen.alice));
  assert.ok(served.requests.some((r) => r.startsWith('GET /server-side/')), served.requests.join(', '));
  const record = await storage.get(FEATURE_KEY, 'alice');
  assert.deepEqual(
    { ...record, experimentVariationId: undefined },
    {
      featureKey: FEATURE_KEY,
      userId: 'alice',
      rolloutId: 21,
      rolloutKey: `${FEATURE_KEY}_rollout`,
      rolloutVariationId: 1,
      experimentId: 22,
      experimentKey: `${FEATURE_KEY}_test`,
      experimentVariationId: undefined,
    },
  );
  assert.equal(record.experimentVariationId, seen.alice === 'default' ? 1 : 2);
});

test('variations stick after the weights move to 100/0 and a re-init over the reopened store', async (t) => {
  const dir = tempDir(t);
  let storage = new FmeStorage(dir);
  const first = await labels(await client(storage), USERS);
  assert.deepEqual(new Set(Object.values(first)), new Set(['default', 'variation-1']));
  await storage.close();

  served.settings = fmeSettings(100, 0);
  // With nothing stored, 100/0 sends everyone to the default variation: that is what stickiness has to beat. (A
  // connector that stores nothing, not `storage: undefined`: the SDK keeps the last connector in a singleton.)
  const nothingStored = { get: async () => undefined, set: async () => {} };
  const unsticky = await labels(await client(nothingStored), USERS);
  assert.deepEqual(new Set(Object.values(unsticky)), new Set(['default']));

  storage = new FmeStorage(dir);
  t.after(() => storage.close());
  const after = await labels(await client(storage), USERS);
  assert.deepEqual(after, first);
  // A user first seen after the change follows the new weights.
  assert.deepEqual(await labels(await client(storage), ['newcomer']), { newcomer: 'default' });
});

test('8 concurrent callers lose nothing', async (t) => {
  const dir = tempDir(t);
  const storage = new FmeStorage(dir, { durability: 'immediate' });
  const vwoClient = await client(storage);
  const results = await Promise.all(
    Array.from({ length: 8 }, async (_, c) => labels(vwoClient, USERS.slice(c * 25, c * 25 + 25).concat(USERS.slice(0, 5)))),
  );
  const merged = {};
  for (const got of results) {
    for (const [u, label] of Object.entries(got)) {
      assert.equal(merged[u] ?? label, label, `callers disagree about ${u}`);
      merged[u] = label;
    }
  }
  assert.equal(Object.keys(merged).length, USERS.length);
  await storage.close();
  const reopened = new Store(dir);
  t.after(() => reopened.close());
  for (const [u, label] of Object.entries(merged)) {
    assert.equal(reopened.getFeature(FEATURE_KEY, u).experimentVariationId, label === 'default' ? 1 : 2, u);
  }
});

test('FmeStorage: unknown members are kept, bad input rejects with a clear error', async (t) => {
  const reported = [];
  const storage = new FmeStorage(tempDir(t), { onError: (err) => reported.push(err.code) });
  t.after(() => storage.close());
  const record = { featureKey: 'f', userId: 'u', experimentId: 3, experimentKey: 'f_t', experimentVariationId: 2 };
  await storage.set({ ...record, isInHoldoutId: [7], fromANewerSdk: { x: [1, 2] }, skipped: undefined });
  assert.deepEqual(await storage.get('f', 'u'), { ...record, isInHoldoutId: [7], fromANewerSdk: { x: [1, 2] } });
  assert.equal(await storage.get('f', 'nobody'), undefined);
  await assert.rejects(storage.get(1, 'u'), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' });
  await assert.rejects(storage.set('f'), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' });
  await assert.rejects(storage.set({ userId: 'u' }), { name: 'TypeError', message: /featureKey/ });
  await assert.rejects(storage.set({ ...record, rolloutKey: 5 }), { code: 'USSDB_JSON', message: /rolloutKey/ });
  await assert.rejects(storage.set({ ...record, userId: '' }), { code: 'USSDB_INVALID_KEY' });
  assert.deepEqual(reported, ['ERR_INVALID_ARG_TYPE', 'ERR_INVALID_ARG_TYPE', 'USSDB_JSON', 'USSDB_INVALID_KEY']);
  await storage.close();
  await assert.rejects(storage.get('f', 'u'), { code: 'USSDB_CLOSED' });
});

test('Store FME methods: sync and async, kept apart from campaign mappings, closed store', async (t) => {
  const store = new Store(tempDir(t));
  const rec = (featureKey, userId, variation) => ({
    featureKey,
    userId,
    rolloutId: 21,
    rolloutKey: 'r',
    rolloutVariationId: 1,
    experimentId: 22,
    experimentKey: 'e',
    experimentVariationId: variation,
  });
  store.setFeature(rec('f1', 'u', 1));
  await store.setFeatureAsync(rec('f2', 'u', 2));
  // A campaign mapping with the same names is another record.
  store.set({ userId: 'u', campaignKey: 'f1', variationName: 'Control' });
  assert.deepEqual(store.getFeature('f1', 'u'), rec('f1', 'u', 1));
  assert.deepEqual(await store.getFeatureAsync('f2', 'u'), rec('f2', 'u', 2));
  assert.equal(store.getFeature('f1', 'nobody'), undefined);
  assert.deepEqual(
    store.featuresOf('u').map((r) => r.featureKey).sort(),
    ['f1', 'f2'],
  );
  assert.deepEqual(await store.featuresOfAsync('u'), store.featuresOf('u'));
  assert.equal(store.deleteFeature('f1', 'u'), true);
  assert.equal(await store.deleteFeatureAsync('f1', 'u'), false);
  assert.deepEqual(store.get('u', 'f1'), { userId: 'u', campaignKey: 'f1', variationName: 'Control' });
  assert.throws(() => store.setFeature({ featureKey: 'f' }), { name: 'TypeError', message: /userId/ });
  assert.throws(() => store.getFeature('f', 5), { name: 'TypeError', message: /userId must be a string/ });
  store.close();
  assert.throws(() => store.getFeature('f2', 'u'), { code: 'USSDB_CLOSED' });
  await assert.rejects(store.setFeatureAsync(rec('f3', 'u', 1)), { code: 'USSDB_CLOSED' });
});
