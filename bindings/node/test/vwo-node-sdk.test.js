'use strict';
// The published vwo-node-sdk, unmodified, keeping its assignments in ussdb, in its synchronous mode
// (`userStorageService`) and its Promise mode (`asyncStorageConfig`). Runs offline: isDevelopmentMode turns the
// SDK's event dispatch off, the settings file is made here, and helpers.js refuses connections to other hosts.

const assert = require('node:assert/strict');
const { test } = require('node:test');

const vwo = require('vwo-node-sdk'); // a missing SDK fails the run: `npm ci` in bindings/node installs it
const { Store, UserStorage, AsyncUserStorage } = require('..');
const { tempDir, refusedConnections, vwoSettings, CAMPAIGN_KEY, GOALS } = require('./helpers');

const USERS = Array.from({ length: 400 }, (_, i) => `user-${String(i).padStart(4, '0')}`);
// The SDK logs its launch options before it reads `logging`: set the level up front.
vwo.setLogLevel(vwo.LogLevelEnum.ERROR);
const quiet = { level: vwo.LogLevelEnum.ERROR, logger: { log: () => {} } };

function launch(storage, controlWeight = 50, variationWeight = 50) {
  const config = { settingsFile: vwoSettings(controlWeight, variationWeight), isDevelopmentMode: true, logging: quiet };
  if (storage !== undefined) config.userStorageService = storage;
  const sdk = vwo.launch(config);
  assert.ok(sdk && typeof sdk.activate === 'function', 'vwo.launch rejected the settings or the user storage');
  return sdk;
}

function launchAsync(storage, controlWeight = 50, variationWeight = 50) {
  return vwo.launch({
    settingsFile: vwoSettings(controlWeight, variationWeight),
    asyncStorageConfig: { redisStorage: storage },
    isDevelopmentMode: true,
    logging: quiet,
  });
}

test.afterEach(() => assert.deepEqual(refusedConnections, [], 'the SDK tried to reach another host'));

test('the SDK calls get and set with the shapes UserStorage speaks', (t) => {
  const storage = new UserStorage(tempDir(t));
  t.after(() => storage.close());
  const calls = [];
  const recorder = {
    get: (...args) => {
      const found = storage.get(...args);
      calls.push(['get', args, found]);
      return found;
    },
    set: (...args) => {
      calls.push(['set', args.map((a) => ({ ...a }))]);
      return storage.set(...args);
    },
  };
  const sdk = launch(recorder);
  const variation = sdk.activate(CAMPAIGN_KEY, 'alice');
  assert.ok(['Control', 'Variation-1'].includes(variation));
  assert.equal(sdk.track(CAMPAIGN_KEY, 'alice', GOALS[0])[CAMPAIGN_KEY], true);

  const stored = { userId: 'alice', campaignKey: CAMPAIGN_KEY, variationName: variation };
  assert.deepEqual(calls, [
    ['get', ['alice', CAMPAIGN_KEY], undefined],
    ['set', [{ userId: 'alice', variationName: variation, campaignKey: CAMPAIGN_KEY }]],
    ['get', ['alice', CAMPAIGN_KEY], stored],
    ['set', [{ ...stored, goalIdentifier: GOALS[0] }]],
  ]);
  assert.deepEqual(storage.get('alice', CAMPAIGN_KEY), { ...stored, goalIdentifier: GOALS[0] });
});

test('every user keeps their variation after the weights move to 100/0 and a relaunch over the reopened store', (t) => {
  const dir = tempDir(t);
  const storage = new UserStorage(dir);
  const sdk = launch(storage, 50, 50);
  const first = Object.fromEntries(USERS.map((u) => [u, sdk.activate(CAMPAIGN_KEY, u)]));
  storage.close();
  assert.deepEqual(new Set(Object.values(first)), new Set(['Control', 'Variation-1']));

  // Without storage, 100/0 sends everyone to Control: that is what stickiness has to beat.
  const unsticky = launch(undefined, 100, 0);
  assert.deepEqual(new Set(USERS.map((u) => unsticky.activate(CAMPAIGN_KEY, u))), new Set(['Control']));

  const reopened = new UserStorage(dir);
  t.after(() => reopened.close());
  const relaunched = launch(reopened, 100, 0);
  const after = Object.fromEntries(USERS.map((u) => [u, relaunched.activate(CAMPAIGN_KEY, u)]));
  assert.deepEqual(after, first);
  assert.equal(relaunched.getVariationName(CAMPAIGN_KEY, USERS[7]), first[USERS[7]]);
  // A user first seen after the change follows the new weights.
  assert.equal(relaunched.activate(CAMPAIGN_KEY, 'newcomer'), 'Control');
  for (const u of USERS) {
    assert.deepEqual(reopened.get(u, CAMPAIGN_KEY), { userId: u, campaignKey: CAMPAIGN_KEY, variationName: first[u] });
  }
});

test('goals are appended with _vwo_ and not counted twice, across restarts', (t) => {
  const dir = tempDir(t);
  let storage = new UserStorage(dir);
  let sdk = launch(storage);
  const variation = sdk.activate(CAMPAIGN_KEY, 'bob');
  assert.equal(sdk.track(CAMPAIGN_KEY, 'bob', GOALS[0])[CAMPAIGN_KEY], true);
  assert.equal(sdk.track(CAMPAIGN_KEY, 'bob', GOALS[0])[CAMPAIGN_KEY], false);
  storage.close();

  storage = new UserStorage(dir);
  sdk = launch(storage, 100, 0);
  // Tracked before the restart: not counted again.
  assert.equal(sdk.track(CAMPAIGN_KEY, 'bob', GOALS[0])[CAMPAIGN_KEY], false);
  // A new goal is counted and appended with the SDK's separator.
  assert.equal(sdk.track(CAMPAIGN_KEY, 'bob', GOALS[1])[CAMPAIGN_KEY], true);
  assert.deepEqual(storage.get('bob', CAMPAIGN_KEY), {
    userId: 'bob',
    campaignKey: CAMPAIGN_KEY,
    variationName: variation,
    goalIdentifier: `${GOALS[0]}_vwo_${GOALS[1]}`,
  });
  storage.close();

  storage = new UserStorage(dir);
  t.after(() => storage.close());
  sdk = launch(storage, 100, 0);
  assert.equal(sdk.track(CAMPAIGN_KEY, 'bob', GOALS[0])[CAMPAIGN_KEY], false);
  assert.equal(sdk.track(CAMPAIGN_KEY, 'bob', GOALS[1])[CAMPAIGN_KEY], false);
  assert.equal(sdk.activate(CAMPAIGN_KEY, 'bob'), variation);
  assert.equal(storage.store.get('bob', CAMPAIGN_KEY).goalIdentifier, 'signup_vwo_purchase');
});

test('without the goal union the SDK would count an earlier goal again (what UserStorage guards against)', (t) => {
  // A storage that stores exactly what it is given, as a plain key-value store would.
  const store = new Store(tempDir(t));
  t.after(() => store.close());
  const plain = { get: (u, c) => store.get(u, c), set: (m) => store.set(m) };
  const sdk = launch(plain);
  sdk.activate(CAMPAIGN_KEY, 'carol');
  assert.equal(sdk.track(CAMPAIGN_KEY, 'carol', GOALS[0])[CAMPAIGN_KEY], true);
  assert.equal(sdk.track(CAMPAIGN_KEY, 'carol', GOALS[1])[CAMPAIGN_KEY], true);
  // vwo-node-sdk 1.73.0 wrote "signup_vwo_purchase" and then "purchase" over it.
  assert.equal(store.get('carol', CAMPAIGN_KEY).goalIdentifier, GOALS[1]);
  assert.equal(sdk.track(CAMPAIGN_KEY, 'carol', GOALS[0])[CAMPAIGN_KEY], true, 'signup was counted twice');
});

test('track before activate is refused and stores nothing', (t) => {
  const storage = new UserStorage(tempDir(t));
  t.after(() => storage.close());
  const sdk = launch(storage);
  assert.equal(sdk.track(CAMPAIGN_KEY, 'stranger', GOALS[0])[CAMPAIGN_KEY], false);
  assert.equal(storage.get('stranger', CAMPAIGN_KEY), undefined);
});

test('a failing storage reaches the SDK as an exception it logs: no variation is made up, nothing crashes', (t) => {
  const storage = new UserStorage(tempDir(t));
  storage.close();
  const logged = [];
  const sdk = vwo.launch({
    settingsFile: vwoSettings(100, 0),
    userStorageService: storage,
    isDevelopmentMode: true,
    logging: { level: vwo.LogLevelEnum.ERROR, logger: { log: (level, message) => logged.push(message) } },
  });
  // vwo-node-sdk 1.73.0 answers null (no variation) when its storage throws, rather than re-bucketing a user
  // whose stored variation it cannot read.
  assert.equal(sdk.activate(CAMPAIGN_KEY, 'dave'), null);
  assert.ok(
    logged.some((m) => /store at .* is closed/.test(m)),
    `the SDK's log should carry the store's message, got: ${logged.join(' | ')}`,
  );
});

test('Promise mode: sticky after 100/0 and a reopen, goals counted once', async (t) => {
  const dir = tempDir(t);
  let storage = new AsyncUserStorage(dir);
  let sdk = launchAsync(storage, 50, 50);
  const first = {};
  for (const u of USERS.slice(0, 100)) first[u] = await sdk.activate(CAMPAIGN_KEY, u);
  assert.deepEqual(new Set(Object.values(first)), new Set(['Control', 'Variation-1']));
  assert.equal((await sdk.track(CAMPAIGN_KEY, USERS[0], GOALS[0]))[CAMPAIGN_KEY], true);
  await storage.close();

  storage = new AsyncUserStorage(dir);
  t.after(() => storage.close());
  sdk = launchAsync(storage, 100, 0);
  for (const u of USERS.slice(0, 100)) assert.equal(await sdk.activate(CAMPAIGN_KEY, u), first[u], u);
  assert.equal((await sdk.track(CAMPAIGN_KEY, USERS[0], GOALS[0]))[CAMPAIGN_KEY], false);
  assert.equal((await sdk.track(CAMPAIGN_KEY, USERS[0], GOALS[1]))[CAMPAIGN_KEY], true);
  assert.equal((await sdk.track(CAMPAIGN_KEY, USERS[0], GOALS[0]))[CAMPAIGN_KEY], false);
  assert.deepEqual(await storage.get(USERS[0], CAMPAIGN_KEY), {
    userId: USERS[0],
    campaignKey: CAMPAIGN_KEY,
    variationName: first[USERS[0]],
    goalIdentifier: 'signup_vwo_purchase',
  });
});

test('Promise mode: 8 concurrent callers lose nothing', async (t) => {
  for (const durability of ['periodic', 'immediate']) {
    const dir = tempDir(t);
    const storage = new AsyncUserStorage(dir, { durability });
    const sdk = launchAsync(storage);
    const shared = Array.from({ length: 40 }, (_, i) => `shared-${i}`);
    const callers = Array.from({ length: 8 }, async (_, c) => {
      const got = {};
      for (let i = 0; i < 100; i++) {
        const mine = `c${c}-user-${i}`;
        got[mine] = await sdk.activate(CAMPAIGN_KEY, mine);
        const other = shared[(i + c) % shared.length];
        got[other] = await sdk.activate(CAMPAIGN_KEY, other);
        if (i % 10 === 0) await sdk.track(CAMPAIGN_KEY, mine, GOALS[i % 2]);
      }
      return got;
    });
    const merged = {};
    for (const got of await Promise.all(callers)) {
      for (const [u, v] of Object.entries(got)) {
        assert.ok(['Control', 'Variation-1'].includes(v), `${u}: ${v}`);
        assert.equal(merged[u] ?? v, v, `callers disagree about ${u}`);
        merged[u] = v;
      }
    }
    assert.equal(Object.keys(merged).length, 8 * 100 + shared.length);
    await storage.close();

    const reopened = new Store(dir);
    for (const [u, v] of Object.entries(merged)) assert.equal(reopened.get(u, CAMPAIGN_KEY).variationName, v, u);
    for (let c = 0; c < 8; c++) {
      for (let i = 0; i < 100; i += 10) {
        assert.equal(reopened.get(`c${c}-user-${i}`, CAMPAIGN_KEY).goalIdentifier, GOALS[i % 2]);
      }
    }
    reopened.close();
  }
});
