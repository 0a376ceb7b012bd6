'use strict';
// The Store API: what it stores, what it refuses (and how), and that async calls behave like sync ones.

const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { test } = require('node:test');

const { Store, UserStorage, AsyncUserStorage } = require('..');
const native = require('../ussdb.node');
const { tempDir } = require('./helpers');

const map = (userId, campaignKey, variationName, goalIdentifier) =>
  goalIdentifier === undefined
    ? { userId, campaignKey, variationName }
    : { userId, campaignKey, variationName, goalIdentifier };

test('set, get, overwrite, delete, and everything survives a reopen', (t) => {
  const dir = tempDir(t);
  const store = new Store(dir);
  assert.equal(store.get('u1', 'c1'), undefined);
  store.set(map('u1', 'c1', 'Control'));
  store.set(map('u1', 'c2', 'Variation-1', 'signup_vwo_purchase'));
  store.set(map('u2', 'c1', 'Variation-1'));
  assert.deepEqual(store.get('u1', 'c1'), map('u1', 'c1', 'Control'));
  assert.deepEqual(store.get('u1', 'c2'), map('u1', 'c2', 'Variation-1', 'signup_vwo_purchase'));

  store.set(map('u2', 'c1', 'Control', 'signup'));
  assert.deepEqual(store.get('u2', 'c1'), map('u2', 'c1', 'Control', 'signup'));
  // A null goal list is no goal list.
  store.set({ ...map('u2', 'c1', 'Control'), goalIdentifier: null });
  assert.deepEqual(store.get('u2', 'c1'), map('u2', 'c1', 'Control'));

  assert.equal(store.delete('u2', 'c1'), true);
  assert.equal(store.delete('u2', 'c1'), false);
  assert.equal(store.get('u2', 'c1'), undefined);
  store.close();

  const reopened = new Store(dir);
  assert.deepEqual(reopened.campaignsOf('u1'), [
    map('u1', 'c1', 'Control'),
    map('u1', 'c2', 'Variation-1', 'signup_vwo_purchase'),
  ]);
  assert.equal(reopened.get('u2', 'c1'), undefined);
  reopened.close();
});

test('keys are exact: unicode, the separator inside ids, and ids around the stack buffer size', (t) => {
  const store = new Store(tempDir(t));
  t.after(() => store.close());
  const ids = ['ünïcödé-🙂', 'a\u0000b', 'user:1', 'x'.repeat(1020), 'é'.repeat(510), 'y'.repeat(1024)];
  for (const [i, id] of ids.entries()) store.set(map(id, `campaign-${i}`, `v${i}`));
  for (const [i, id] of ids.entries()) {
    assert.deepEqual(store.get(id, `campaign-${i}`), map(id, `campaign-${i}`, `v${i}`));
  }
  // Prefixes and near-misses of stored ids find nothing.
  assert.equal(store.get('a', 'campaign-1'), undefined);
  assert.equal(store.get('x'.repeat(1019), 'campaign-3'), undefined);
  // Long variation names and goal lists are values, not ids: they may be longer than an id.
  const long = map('u', 'c', 'V'.repeat(5000), 'g'.repeat(3000));
  store.set(long);
  assert.deepEqual(store.get('u', 'c'), long);
});

test('forgetUser and campaignsOf', (t) => {
  const store = new Store(tempDir(t));
  t.after(() => store.close());
  for (const c of ['b', 'a', 'c']) store.set(map('alice', c, `v-${c}`));
  store.set(map('bob', 'a', 'v'));
  assert.deepEqual(
    store.campaignsOf('alice').map((m) => m.campaignKey),
    ['a', 'b', 'c'],
  );
  assert.deepEqual(store.campaignsOf('nobody'), []);
  assert.equal(store.forgetUser('alice'), 3);
  assert.equal(store.forgetUser('alice'), 0);
  assert.deepEqual(store.campaignsOf('alice'), []);
  assert.deepEqual(store.get('bob', 'a'), map('bob', 'a', 'v'));
});

test('stats, sync and compact', (t) => {
  const store = new Store(tempDir(t), { durability: 'never', segmentSize: 4096, autoCompaction: false });
  t.after(() => store.close());
  for (let round = 0; round < 20; round++) {
    for (let i = 0; i < 50; i++) store.set(map(`user-${i}`, 'c', `round-${round}`));
  }
  const before = store.stats();
  assert.equal(before.mappings, 50);
  assert.equal(before.sets, 1000);
  assert.ok(before.segments > 1, 'a 4 KiB segment size should give several segments');
  assert.ok(before.deadBytes > 0);
  assert.equal(before.lastCompactionSeconds, null);
  store.sync();
  assert.ok(store.stats().fsyncs >= 1);
  store.compact();
  const after = store.stats();
  assert.ok(after.diskBytes < before.diskBytes, `compaction should shrink ${before.diskBytes} bytes`);
  assert.equal(typeof after.lastCompactionSeconds, 'number');
  for (let i = 0; i < 50; i++) assert.equal(store.get(`user-${i}`, 'c').variationName, 'round-19');
});

test('every durability mode opens, stores and reads back', (t) => {
  for (const durability of ['immediate', 'periodic', 'periodic:20ms', 'never']) {
    const dir = tempDir(t);
    const store = new Store(dir, { durability });
    store.set(map('u', 'c', durability));
    store.close();
    const reopened = new Store(dir);
    assert.equal(reopened.get('u', 'c').variationName, durability);
    reopened.close();
  }
});

test('readOnly opens share the directory, refuse writes, and exclude a writer', (t) => {
  const dir = tempDir(t);
  const writer = new Store(dir);
  writer.set(map('u', 'c', 'v'));
  assert.throws(() => new Store(dir, { readOnly: true }), { code: 'USSDB_LOCKED' });
  writer.close();

  const a = new Store(dir, { readOnly: true });
  const b = new Store(dir, { readOnly: true });
  assert.deepEqual(a.get('u', 'c'), map('u', 'c', 'v'));
  assert.deepEqual(b.campaignsOf('u'), [map('u', 'c', 'v')]);
  assert.throws(() => a.set(map('u', 'c', 'w')), { code: 'USSDB_READ_ONLY' });
  assert.throws(() => new Store(dir), { code: 'USSDB_LOCKED' });
  a.close();
  b.close();
});

test('backup makes a copy that opens as a store, sync and async', async (t) => {
  const store = new Store(tempDir(t), { segmentSize: 4096 });
  t.after(() => store.close());
  for (let i = 0; i < 300; i++) store.set(map(`user-${i}`, 'c', `v${i}`));
  const first = path.join(tempDir(t), 'copy');
  const report = store.backup(first);
  assert.ok(report.segments >= 2, JSON.stringify(report));
  assert.equal(report.linked + report.copied >= report.segments, true, JSON.stringify(report));
  store.set(map('late', 'c', 'v'));
  const second = path.join(tempDir(t), 'copy');
  assert.ok((await store.backupAsync(new URL(`file://${second}`))).bytes > 0);
  assert.throws(() => store.backup(first), { code: 'USSDB_INVALID_OPTION', message: /empty/ });
  assert.throws(() => store.backup(7), { name: 'TypeError', message: /dest must be/ });

  const copy = new Store(first, { readOnly: true });
  assert.equal(copy.stats().mappings, 300);
  assert.equal(copy.get('late', 'c'), undefined);
  copy.close();
  const copy2 = new Store(second);
  assert.deepEqual(copy2.get('late', 'c'), map('late', 'c', 'v'));
  copy2.close();
});

test('engine errors are Errors with the engine message and a USSDB_ code', (t) => {
  const dir = tempDir(t);
  const store = new Store(dir);
  t.after(() => store.close());

  assert.throws(() => store.set(map('', 'c', 'v')), {
    name: 'Error',
    code: 'USSDB_INVALID_KEY',
    message: /user_id/,
  });
  assert.throws(() => store.get('u', 'c'.repeat(1025)), { code: 'USSDB_INVALID_KEY', message: /1024/ });
  // Stores share a directory (the multi-process mode); one that wants it alone is refused.
  assert.throws(() => new Store(dir, { shared: false }), { code: 'USSDB_LOCKED', message: /multi-process/ });
  assert.throws(() => new Store(path.join(dir, '..', 'x'), { durability: 'sometimes' }), {
    code: 'USSDB_INVALID_OPTION',
    message: /sometimes/,
  });
  assert.throws(() => new Store(tempDir(t), { segmentSize: 10 }), {
    code: 'USSDB_INVALID_OPTION',
    message: /segment_size/,
  });
  const file = path.join(tempDir(t), 'plain-file');
  fs.writeFileSync(file, 'not a directory');
  assert.throws(() => new Store(file), { code: 'USSDB_NOT_A_DIRECTORY' });
});

test('a damaged segment is USSDB_CORRUPTED on open', (t) => {
  const dir = tempDir(t);
  const store = new Store(dir, { durability: 'immediate' });
  for (let i = 0; i < 100; i++) store.set(map(`user-${i}`, 'c', 'Control'));
  store.close();
  const segment = fs.readdirSync(dir).find((f) => f.endsWith('.log') || f.endsWith('.seg') || /^\d+/.test(f));
  assert.ok(segment, `no segment file among ${fs.readdirSync(dir)}`);
  const file = path.join(dir, segment);
  const bytes = fs.readFileSync(file);
  // Flip a byte in the middle of the log: not a torn tail, so the engine must refuse rather than guess.
  bytes[Math.floor(bytes.length / 2)] ^= 0xff;
  fs.writeFileSync(file, bytes);
  assert.throws(() => new Store(dir), (err) => {
    assert.ok(['USSDB_CORRUPTED', 'USSDB_BAD_MAGIC'].includes(err.code), `${err.code}: ${err.message}`);
    assert.match(err.message, new RegExp(segment));
    return true;
  });
});

test('wrong argument types are TypeErrors that say what was wrong', (t) => {
  const store = new Store(tempDir(t));
  t.after(() => store.close());
  const typeError = (message) => ({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE', message });

  assert.throws(() => store.get(42, 'c'), typeError(/userId must be a string, not a number/));
  assert.throws(() => store.get('u'), typeError(/campaignKey must be a string, not undefined/));
  assert.throws(() => store.set('u'), typeError(/record must be an object, not a string/));
  assert.throws(() => store.set(null), typeError(/not null/));
  assert.throws(() => store.set({ userId: 'u', campaignKey: 'c' }), typeError(/variationName must be a string/));
  assert.throws(() => store.set(map('u', 'c', 'v', 7)), typeError(/goalIdentifier must be a string, not a number/));
  assert.throws(() => store.delete('u', {}), typeError(/campaignKey must be a string, not an object/));
  assert.throws(() => store.forgetUser(), typeError(/userId/));
  assert.throws(() => store.campaignsOf(['u']), typeError(/not an array/));
  assert.throws(() => new Store(5), typeError(/path must be a string or a file: URL/));
  assert.throws(() => new Store(tempDir(t), 'immediate'), typeError(/options must be an object/));
  assert.throws(() => new Store(tempDir(t), { durabilty: 'never' }), {
    name: 'RangeError',
    code: 'ERR_INVALID_ARG_VALUE',
    message: /unknown option "durabilty"/,
  });
  assert.throws(() => new Store(tempDir(t), { segmentSize: 1.5 }), typeError(/segmentSize/));
  assert.throws(() => new Store(tempDir(t), { autoCompaction: 'yes' }), typeError(/autoCompaction/));
  assert.throws(() => new Store(tempDir(t), { readOnly: 1 }), typeError(/readOnly/));
  assert.throws(() => new UserStorage(42), typeError(/a path or a ussdb.Store/));
  // Nothing was stored by any of that.
  assert.deepEqual(store.stats().sets, 0);
});

test('the native module refuses anything but its own handle', () => {
  const notHandles = [undefined, null, 1, 'x', {}, [], () => {}, Buffer.alloc(8)];
  for (const h of notHandles) {
    assert.throws(() => native.get(h, 'u', 'c'), { name: 'TypeError', message: /not a ussdb store handle/ });
    assert.throws(() => native.set(h, 'u', 'c', 'v'), { name: 'TypeError' });
    assert.throws(() => native.stats(h), { name: 'TypeError', message: /not a ussdb store handle/ });
    assert.throws(() => native.close(h), { name: 'TypeError' });
  }
});

test('a closed store throws USSDB_CLOSED from every call, and closing twice is harmless', async (t) => {
  const dir = tempDir(t);
  const store = new Store(dir);
  store.set(map('u', 'c', 'v'));
  store.close();
  store.close();
  assert.equal(store.closed, true);
  const closed = { code: 'USSDB_CLOSED', message: new RegExp(`store at ${dir} is closed`) };
  assert.throws(() => store.get('u', 'c'), closed);
  assert.throws(() => store.set(map('u', 'c', 'v')), closed);
  assert.throws(() => store.delete('u', 'c'), closed);
  assert.throws(() => store.forgetUser('u'), closed);
  assert.throws(() => store.campaignsOf('u'), closed);
  assert.throws(() => store.sync(), closed);
  assert.throws(() => store.compact(), closed);
  assert.throws(() => store.stats(), closed);
  await assert.rejects(store.getAsync('u', 'c'), closed);
  await assert.rejects(store.setAsync(map('u', 'c', 'v')), closed);
  await assert.rejects(store.syncAsync(), closed);
  await store.closeAsync();
  // The directory was released: it opens again, with the data.
  const again = new Store(dir);
  assert.equal(again.get('u', 'c').variationName, 'v');
  again.close();
});

test('a Store dropped without close() is closed when collected: its writes stay, its directory is released', async (t) => {
  const dir = tempDir(t);
  (() => {
    const forgotten = new Store(dir);
    forgotten.set(map('u', 'c', 'kept'));
  })();
  const v8 = require('node:v8');
  const vm = require('node:vm');
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc');
  let reopened;
  for (let attempt = 0; attempt < 50 && reopened === undefined; attempt++) {
    gc();
    await new Promise((resolve) => setImmediate(resolve));
    try {
      reopened = new Store(dir);
    } catch (err) {
      assert.equal(err.code, 'USSDB_LOCKED');
    }
  }
  assert.ok(reopened, 'the collected store never released its directory');
  assert.equal(reopened.get('u', 'c').variationName, 'kept');
  reopened.close();
});

test('async calls match sync ones, and reject on bad input instead of throwing', async (t) => {
  const store = new Store(tempDir(t));
  t.after(() => store.close());
  await store.setAsync(map('u', 'c1', 'Control'));
  await store.setAsync(map('u', 'c2', 'Variation-1', 'g1_vwo_g2'));
  assert.deepEqual(await store.getAsync('u', 'c1'), map('u', 'c1', 'Control'));
  assert.deepEqual(await store.getAsync('u', 'c2'), store.get('u', 'c2'));
  assert.equal(await store.getAsync('u', 'missing'), undefined);
  assert.deepEqual(await store.campaignsOfAsync('u'), store.campaignsOf('u'));
  assert.equal(await store.deleteAsync('u', 'c1'), true);
  assert.equal(await store.forgetUserAsync('u'), 1);
  await store.syncAsync();
  await store.compactAsync();

  const bad = store.getAsync(1, 'c');
  assert.ok(bad instanceof Promise);
  await assert.rejects(bad, { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' });
  await assert.rejects(store.setAsync(undefined), { name: 'TypeError' });
  await assert.rejects(store.setAsync(map('', 'c', 'v')), { code: 'USSDB_INVALID_KEY' });
});

test('8 concurrent async writers and readers lose nothing', async (t) => {
  for (const durability of ['periodic', 'immediate']) {
    const dir = tempDir(t);
    const store = new Store(dir, { durability });
    const writers = Array.from({ length: 8 }, async (_, w) => {
      for (let i = 0; i < 200; i++) {
        await store.setAsync(map(`w${w}-user-${i}`, 'c', `v-${w}-${i}`));
        // Every writer also overwrites keys that all of them share.
        await store.setAsync(map(`shared-${i % 10}`, 'c', 'shared'));
        const mine = await store.getAsync(`w${w}-user-${i}`, 'c');
        assert.equal(mine.variationName, `v-${w}-${i}`);
      }
    });
    await Promise.all(writers);
    await store.closeAsync();

    const reopened = new Store(dir);
    assert.equal(reopened.stats().mappings, 8 * 200 + 10);
    for (let w = 0; w < 8; w++) {
      for (let i = 0; i < 200; i++) assert.equal(reopened.get(`w${w}-user-${i}`, 'c').variationName, `v-${w}-${i}`);
    }
    reopened.close();
  }
});

test('async calls run off the event loop: it turns while immediate-durability writes wait on fsync', async (t) => {
  const store = new Store(tempDir(t), { durability: 'immediate' });
  t.after(() => store.close());
  let completed = 0;
  const writes = [];
  for (let i = 0; i < 300; i++) {
    writes.push(store.setAsync(map(`user-${i}`, 'c', 'v')).then(() => completed++));
  }
  // Each write is appended at once, but its Promise settles only once an fsync covered it, which the commit
  // thread runs while the loop goes on; settled Promises before the next turn would mean no wait for the fsync.
  const completedAtNextTurn = await new Promise((resolve) => setImmediate(() => resolve(completed)));
  await Promise.all(writes);
  assert.ok(completedAtNextTurn < 300, `all 300 writes had finished before the event loop turned`);
  assert.equal(store.stats().mappings, 300);
  assert.ok(store.stats().fsyncs >= 1);
});

test('a thousand setAsync calls in flight share a few fsyncs and hold no pool thread', async (t) => {
  const dir = tempDir(t);
  const store = new Store(dir, { durability: 'immediate' });
  t.after(() => store.close());
  const before = store.stats().fsyncs;
  await Promise.all(Array.from({ length: 1000 }, (_, i) => store.setAsync(map(`user-${i}`, 'c', 'v'))));
  const fsyncs = store.stats().fsyncs - before;
  // Each fsync covers every write appended before it began, so a few dozen cover them all (more when appends are
  // slow, on a busy machine); writes that each held one of the libuv pool's four threads through their fsync
  // would need at least 250.
  assert.ok(fsyncs >= 1 && fsyncs <= 200, `${fsyncs} fsyncs for 1000 writes`);
  assert.equal(store.stats().mappings, 1000);
  for (let i = 0; i < 1000; i++) assert.equal(store.get(`user-${i}`, 'c').variationName, 'v');
});

test('setAsync settles only after an fsync covered its write (immediate durability)', async (t) => {
  const store = new Store(tempDir(t), { durability: 'immediate' });
  t.after(() => store.close());
  for (let i = 0; i < 20; i++) {
    const before = store.stats().fsyncs;
    await store.setAsync(map(`user-${i}`, 'c', 'v'));
    assert.ok(store.stats().fsyncs > before, `write ${i} settled before any fsync`);
  }
});

test('setAsync writes survive a SIGKILL once settled (immediate durability)', async (t) => {
  const dir = tempDir(t);
  const writer = `
    const { Store } = require(${JSON.stringify(path.join(__dirname, '..'))});
    const store = new Store(${JSON.stringify(dir)}, { durability: 'immediate' });
    (async () => {
      for (let batch = 0; batch < 10; batch++) {
        await Promise.all(Array.from({ length: 100 }, (_, i) =>
          store.setAsync({ userId: 'user-' + (batch * 100 + i), campaignKey: 'c', variationName: 'v' })));
      }
      process.stdout.write('acked\\n');
      process.kill(process.pid, 'SIGKILL');
    })();
  `;
  const child = spawnSync(process.execPath, ['-e', writer], { encoding: 'utf8', timeout: 120000 });
  assert.equal(child.signal, 'SIGKILL', child.stderr);
  assert.equal(child.stdout.trim(), 'acked');
  const reopened = new Store(dir);
  t.after(() => reopened.close());
  for (let i = 0; i < 1000; i++) assert.equal(reopened.get(`user-${i}`, 'c').variationName, 'v');
});

test('a killed process loses no acknowledged write (periodic durability)', async (t) => {
  const dir = tempDir(t);
  const writer = `
    const { Store } = require(${JSON.stringify(path.join(__dirname, '..'))});
    const store = new Store(${JSON.stringify(dir)}, { durability: 'periodic' });
    for (let i = 0; ; i++) {
      store.set({ userId: 'user-' + i, campaignKey: 'c', variationName: 'v' + i });
      if (i % 100 === 0) process.stdout.write(i + '\\n');
    }`;
  const child = spawn(process.execPath, ['-e', writer], { stdio: ['ignore', 'pipe', 'inherit'] });
  let acknowledged = -1;
  await new Promise((resolve, reject) => {
    let buffered = '';
    child.stdout.on('data', (chunk) => {
      buffered += chunk;
      const lines = buffered.split('\n');
      buffered = lines.pop();
      for (const line of lines) acknowledged = Number(line);
      if (acknowledged >= 5000 && !child.killed) child.kill('SIGKILL');
    });
    child.on('exit', (code, signal) =>
      signal === 'SIGKILL' ? resolve() : reject(new Error(`writer exited with ${code}`)),
    );
  });
  const store = new Store(dir);
  t.after(() => store.close());
  for (let i = 0; i <= acknowledged; i++) {
    assert.deepEqual(store.get(`user-${i}`, 'c'), map(`user-${i}`, 'c', `v${i}`), `user-${i} was acknowledged`);
  }
});

test('UserStorage and AsyncUserStorage share a Store or open their own', async (t) => {
  const dir = tempDir(t);
  const store = new Store(dir);
  const sync = new UserStorage(store);
  const async_ = new AsyncUserStorage(store);
  assert.equal(sync.store, store);
  assert.equal(async_.store, store);
  sync.set(map('u', 'c', 'v'));
  assert.deepEqual(await async_.get('u', 'c'), map('u', 'c', 'v'));
  assert.throws(() => new UserStorage(store, { durability: 'never' }), { code: 'ERR_INVALID_ARG_VALUE' });
  sync.close();
  assert.equal(store.closed, true);

  const own = new UserStorage(dir, { durability: 'immediate' });
  assert.deepEqual(own.get('u', 'c'), map('u', 'c', 'v'));
  own.close();
  const ownAsync = new AsyncUserStorage(dir, { onError: () => {} });
  assert.deepEqual(await ownAsync.get('u', 'c'), map('u', 'c', 'v'));
  await ownAsync.close();
});

test('a failed AsyncUserStorage.set goes to onError and is no unhandled rejection', async (t) => {
  const errors = [];
  const storage = new AsyncUserStorage(tempDir(t), { onError: (err) => errors.push(err) });
  const unhandled = [];
  const onUnhandled = (reason) => unhandled.push(reason);
  process.on('unhandledRejection', onUnhandled);
  t.after(() => process.off('unhandledRejection', onUnhandled));

  await storage.close();
  // What the SDK does: call set and drop the Promise.
  storage.set(map('u', 'c', 'v'));
  storage.set({ userId: 'u' });
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.deepEqual(
    errors.map((e) => e.code).sort(),
    ['ERR_INVALID_ARG_TYPE', 'USSDB_CLOSED'],
  );
  assert.deepEqual(unhandled, []);
  // A caller who awaits still sees the failure.
  await assert.rejects(storage.set(map('u', 'c', 'v')), { code: 'USSDB_CLOSED' });
});

test('worker processes share one directory: a set in one is read by the next get in another', async (t) => {
  const dir = tempDir(t);
  const store = new Store(dir);
  store.set(map('parent', 'c', 'from-parent'));
  const script = `
    const { Store } = require(${JSON.stringify(path.join(__dirname, '..'))});
    const store = new Store(process.argv[1]);
    const seen = store.get('parent', 'c');
    store.set({ userId: 'child', campaignKey: 'c', variationName: 'from-child' });
    process.stdout.write(JSON.stringify(seen));
    store.close();
  `;
  const child = spawn(process.execPath, ['-e', script, dir], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (chunk) => { out += chunk; });
  const code = await new Promise((resolve) => child.on('close', resolve));
  assert.equal(code, 0);
  assert.deepEqual(JSON.parse(out), map('parent', 'c', 'from-parent'));
  assert.deepEqual(store.get('child', 'c'), map('child', 'c', 'from-child'));
  store.close();
});
