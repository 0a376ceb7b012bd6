'use strict';
// ussdb for Node.js: an embedded, crash-safe user storage for the VWO SDKs.
//
// `Store` is the engine; `UserStorage` / `AsyncUserStorage` are what vwo-node-sdk calls (`userStorageService`),
// `FmeStorage` what vwo-fme-node-sdk calls (`storage`). The native addon (ussdb.node, built from src/lib.rs) works
// on an opaque handle; this file checks arguments and shapes the objects callers see.

const { fileURLToPath } = require('node:url');
const native = require('./ussdb.node');

const OPTIONS = ['durability', 'segmentSize', 'compactionThreshold', 'autoCompaction', 'readOnly'];
// "periodic": `set` returns after write(2) and a background thread fsyncs every 100 ms. The same default as the
// Python binding: a process crash loses nothing, a power loss at most the last 100 ms, and a set costs no fsync.
const DEFAULT_DURABILITY = 'periodic';

function describe(value) {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  const t = typeof value;
  return t === 'undefined' ? 'undefined' : `${/^[aeiou]/.test(t) ? 'an' : 'a'} ${t}`;
}

function typeError(name, expected, value) {
  const err = new TypeError(`${name} must be ${expected}, not ${describe(value)}`);
  err.code = 'ERR_INVALID_ARG_TYPE';
  return err;
}

function valueError(message) {
  const err = new RangeError(message);
  err.code = 'ERR_INVALID_ARG_VALUE';
  return err;
}

function str(name, value) {
  if (typeof value !== 'string') throw typeError(name, 'a string', value);
  return value;
}

function isObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** The store directory as a string path (strings and file: URLs). */
function dirPath(path, name = 'path') {
  if (typeof path === 'string') return path;
  if (path instanceof URL) return fileURLToPath(path);
  throw typeError(name, 'a string or a file: URL', path);
}

function openHandle(path, options) {
  if (options === undefined || options === null) options = {};
  if (!isObject(options)) throw typeError('options', 'an object', options);
  for (const key of Object.keys(options)) {
    if (!OPTIONS.includes(key)) {
      throw valueError(`unknown option ${JSON.stringify(key)}; the options are ${OPTIONS.join(', ')}`);
    }
  }
  const {
    durability = DEFAULT_DURABILITY,
    segmentSize,
    compactionThreshold,
    autoCompaction = true,
    readOnly = false,
  } = options;
  if (typeof durability !== 'string') {
    throw typeError('options.durability', '"immediate", "periodic" or "never"', durability);
  }
  if (segmentSize !== undefined && !(Number.isSafeInteger(segmentSize) && segmentSize >= 0)) {
    throw typeError('options.segmentSize', 'a whole number of bytes', segmentSize);
  }
  if (compactionThreshold !== undefined && typeof compactionThreshold !== 'number') {
    throw typeError('options.compactionThreshold', 'a number from 0 to 1', compactionThreshold);
  }
  if (typeof autoCompaction !== 'boolean') throw typeError('options.autoCompaction', 'a boolean', autoCompaction);
  if (typeof readOnly !== 'boolean') throw typeError('options.readOnly', 'a boolean', readOnly);
  return native.open(dirPath(path), durability, segmentSize, compactionThreshold, autoCompaction, readOnly);
}

/** The native `get` answer (undefined, a variation name, or [variation, goals]) as the record object. */
function record(userId, campaignKey, found) {
  if (found === undefined) return undefined;
  if (typeof found === 'string') return { userId, campaignKey, variationName: found };
  return { userId, campaignKey, variationName: found[0], goalIdentifier: found[1] };
}

function records(userId, flat) {
  const out = [];
  for (let i = 0; i < flat.length; i += 3) {
    const map = { userId, campaignKey: flat[i], variationName: flat[i + 1] };
    if (flat[i + 2] !== undefined) map.goalIdentifier = flat[i + 2];
    out.push(map);
  }
  return out;
}

function checkRecord(map) {
  if (!isObject(map)) throw typeError('the record', 'an object', map);
  return map;
}

/** Runs `f` and returns its Promise, or a rejected one if it throws before starting (e.g. a wrong argument). */
function promised(f) {
  try {
    return f();
  } catch (err) {
    return Promise.reject(err);
  }
}

/** An FME record as the JSON the engine reads; its keys are checked here for a clear TypeError. */
function featureJson(record) {
  if (!isObject(record)) throw typeError('the FME record', 'an object', record);
  str('featureKey', record.featureKey);
  str('userId', record.userId);
  return JSON.stringify(record);
}

function parsed(json) {
  return json === undefined || json === null ? undefined : JSON.parse(json);
}

function statsOf(s) {
  return { ...s, lastCompactionSeconds: s.lastCompactionSeconds ?? null };
}

class Store {
  #h;
  #path;

  /**
   * Opens (or creates) the store in directory `path`. Only one `Store` (in one process) may have a directory
   * open at a time; another gets an error with code USSDB_LOCKED.
   */
  constructor(path, options) {
    this.#h = openHandle(path, options);
    this.#path = dirPath(path);
  }

  get path() {
    return this.#path;
  }

  get closed() {
    return native.isClosed(this.#h);
  }

  get(userId, campaignKey) {
    return record(userId, campaignKey, native.get(this.#h, userId, campaignKey));
  }

  set(map) {
    checkRecord(map);
    native.set(this.#h, map.userId, map.campaignKey, map.variationName, map.goalIdentifier);
  }

  delete(userId, campaignKey) {
    return native.delete(this.#h, str('userId', userId), str('campaignKey', campaignKey));
  }

  forgetUser(userId) {
    return native.forgetUser(this.#h, str('userId', userId));
  }

  campaignsOf(userId) {
    return records(userId, native.campaignsOf(this.#h, str('userId', userId)));
  }

  sync() {
    native.sync(this.#h);
  }

  compact() {
    native.compact(this.#h);
  }

  stats() {
    return statsOf(native.stats(this.#h));
  }

  /** Copies the store into `dest` (new or empty) while it stays in use; see README. */
  backup(dest) {
    return native.backup(this.#h, dirPath(dest, 'dest'));
  }

  close() {
    native.close(this.#h);
  }

  getAsync(userId, campaignKey) {
    return promised(() => {
      str('userId', userId);
      str('campaignKey', campaignKey);
      return native.getAsync(this.#h, userId, campaignKey).then((found) => record(userId, campaignKey, found));
    });
  }

  setAsync(map) {
    return promised(() => {
      checkRecord(map);
      const { userId, campaignKey, variationName, goalIdentifier } = map;
      str('userId', userId);
      str('campaignKey', campaignKey);
      str('variationName', variationName);
      if (goalIdentifier !== undefined && goalIdentifier !== null) str('goalIdentifier', goalIdentifier);
      return native.setAsync(this.#h, userId, campaignKey, variationName, goalIdentifier ?? undefined);
    });
  }

  deleteAsync(userId, campaignKey) {
    return promised(() => native.deleteAsync(this.#h, str('userId', userId), str('campaignKey', campaignKey)));
  }

  forgetUserAsync(userId) {
    return promised(() => native.forgetUserAsync(this.#h, str('userId', userId)));
  }

  campaignsOfAsync(userId) {
    return promised(() =>
      native.campaignsOfAsync(this.#h, str('userId', userId)).then((flat) => records(userId, flat)),
    );
  }

  syncAsync() {
    return promised(() => native.syncAsync(this.#h));
  }

  compactAsync() {
    return promised(() => native.compactAsync(this.#h));
  }

  backupAsync(dest) {
    return promised(() => native.backupAsync(this.#h, dirPath(dest, 'dest')));
  }

  closeAsync() {
    return promised(() => native.closeAsync(this.#h));
  }

  // ---- FME records (vwo-fme-node-sdk): objects in, objects out; the engine keeps them as the SDKs' JSON ----

  /** The FME record of `userId` in feature `featureKey`, or undefined. */
  getFeature(featureKey, userId) {
    return parsed(native.getFeature(this.#h, str('featureKey', featureKey), str('userId', userId)));
  }

  /** Stores an FME record (`featureKey`, `userId`, the rule and variation ids; other members are kept too). */
  setFeature(record) {
    native.setFeature(this.#h, featureJson(record));
  }

  deleteFeature(featureKey, userId) {
    return native.deleteFeature(this.#h, str('featureKey', featureKey), str('userId', userId));
  }

  /** Every FME record of a user. */
  featuresOf(userId) {
    return native.featuresOf(this.#h, str('userId', userId)).map((json) => JSON.parse(json));
  }

  getFeatureAsync(featureKey, userId) {
    return promised(() =>
      native
        .getFeatureAsync(this.#h, str('featureKey', featureKey), str('userId', userId))
        .then(parsed),
    );
  }

  setFeatureAsync(record) {
    return promised(() => native.setFeatureAsync(this.#h, featureJson(record)));
  }

  deleteFeatureAsync(featureKey, userId) {
    return promised(() => native.deleteFeatureAsync(this.#h, str('featureKey', featureKey), str('userId', userId)));
  }

  featuresOfAsync(userId) {
    return promised(() =>
      native.featuresOfAsync(this.#h, str('userId', userId)).then((jsons) => jsons.map((json) => JSON.parse(json))),
    );
  }

  get [Symbol.toStringTag]() {
    return 'ussdb.Store';
  }
}

function storeFor(pathOrStore, options, className) {
  if (pathOrStore instanceof Store) {
    if (options !== undefined) throw valueError(`${className}: options apply only when it opens a path`);
    return pathOrStore;
  }
  if (typeof pathOrStore !== 'string' && !(pathOrStore instanceof URL)) {
    throw typeError(`${className}'s first argument`, 'a path or a ussdb.Store', pathOrStore);
  }
  return new Store(pathOrStore, options);
}

/** Where a write the SDK does not wait for goes when it fails: a process warning, unless told otherwise. */
function reporter(onError) {
  if (onError === undefined) return (err) => process.emitWarning(err);
  if (typeof onError !== 'function') throw typeError('onError', 'a function', onError);
  return onError;
}

const GOAL_DELIMITER = '_vwo_';

function goalsOf(list) {
  return typeof list === 'string' ? list.split(GOAL_DELIMITER).filter((g) => g !== '') : [];
}

/**
 * The map to store when the SDK hands over `incoming` and `stored` is there: the same variation keeps every goal
 * already tracked. vwo-node-sdk (1.73.0, accounts without the event architecture) stores the list with the new
 * goal appended and then once more with the new goal alone, which would let the earlier goals be counted again;
 * the union undoes that. A different variation is a new assignment and replaces the record whole.
 */
function mergedForSdk(stored, incoming) {
  if (stored === undefined || stored.variationName !== incoming.variationName) return incoming;
  const had = goalsOf(stored.goalIdentifier);
  if (had.length === 0) return incoming;
  const coming = goalsOf(incoming.goalIdentifier);
  const missing = had.filter((g) => !coming.includes(g));
  if (missing.length === 0) return incoming;
  return { ...incoming, goalIdentifier: [...had, ...coming.filter((g) => !had.includes(g))].join(GOAL_DELIMITER) };
}

/** The SDK map's fields (extra ones such as `metaData` are not kept), checked. */
function sdkMap(map) {
  checkRecord(map);
  const { userId, campaignKey, variationName, goalIdentifier } = map;
  str('userId', userId);
  str('campaignKey', campaignKey);
  str('variationName', variationName);
  if (goalIdentifier !== undefined && goalIdentifier !== null) str('goalIdentifier', goalIdentifier);
  return { userId, campaignKey, variationName, goalIdentifier: goalIdentifier ?? undefined };
}

/**
 * Async writes of one store, chained per key. `AsyncUserStorage.set` reads the stored goals before it writes, and
 * two of those for the same user and campaign must not interleave; and the SDK does not wait for a `set` before
 * its next `get` of the same key, which must still see it (the thread pool runs calls in any order). A store has
 * one process, so this is all the ordering there is to keep.
 */
const pendingWrites = new WeakMap();

function keyOf(userId, campaignKey) {
  return `${userId.length}:${userId}${campaignKey}`;
}

function featureKeyOf(featureKey, userId) {
  return `f${featureKey.length}:${featureKey}${userId}`;
}

/** The write still running for `key`, if any. */
function pendingWrite(store, key) {
  return pendingWrites.get(store)?.get(key);
}

function serialized(store, key, work) {
  let byKey = pendingWrites.get(store);
  if (byKey === undefined) pendingWrites.set(store, (byKey = new Map()));
  const before = byKey.get(key) ?? Promise.resolve();
  const done = before.then(work, work);
  const tail = done.then(
    () => undefined,
    () => undefined,
  );
  byKey.set(key, tail);
  tail.then(() => {
    if (byKey.get(key) === tail) byKey.delete(key);
  });
  return done;
}

/**
 * The user storage of vwo-node-sdk in its default, synchronous mode:
 * `vwo.launch({ settingsFile, userStorageService: new UserStorage(dir) })`.
 */
class UserStorage {
  #store;

  constructor(pathOrStore, options) {
    this.#store = storeFor(pathOrStore, options, 'UserStorage');
  }

  /** The stored `{userId, campaignKey, variationName[, goalIdentifier]}`, or undefined. */
  get(userId, campaignKey) {
    return this.#store.get(userId, campaignKey);
  }

  /**
   * Stores the map the SDK passes (`metaData` and other extra fields are not kept), keeping the goals already
   * stored for the same variation (see README: the SDK would otherwise count a goal twice).
   */
  set(map) {
    const incoming = sdkMap(map);
    this.#store.set(mergedForSdk(this.#store.get(incoming.userId, incoming.campaignKey), incoming));
  }

  get store() {
    return this.#store;
  }

  close() {
    this.#store.close();
  }
}

/**
 * The user storage of vwo-node-sdk in its Promise mode (vwo-node-sdk >= 1.68.0):
 * `vwo.launch({ settingsFile, asyncStorageConfig: { redisStorage: new AsyncUserStorage(dir) } })`.
 * Every call runs on the libuv thread pool.
 */
/**
 * The writes of an SDK adapter that the SDK does not wait for: ordered per key after one another and before a
 * read of the same key, failures handed to `onError` (and the Promise marked handled, so a full disk is no
 * unhandled rejection that ends the process; a caller who awaits still sees it), and waited for on close.
 */
class SdkWrites {
  #store;
  #onError;
  #running = new Set();

  constructor(store, onError) {
    this.#store = store;
    this.#onError = onError;
  }

  read(key, work) {
    const pending = pendingWrite(this.#store, key);
    return pending === undefined ? work() : pending.then(work);
  }

  write(key, work) {
    const done = promised(() => serialized(this.#store, key(), work));
    done.catch(this.#onError);
    const running = this.#running;
    running.add(done);
    const forget = () => running.delete(done);
    done.then(forget, forget);
    return done;
  }

  drain() {
    return Promise.allSettled([...this.#running]);
  }
}

/** `new X(pathOrStore, {onError, ...storeOptions})` for the Promise-based adapters. */
function asyncAdapter(pathOrStore, options, className) {
  if (options !== undefined && !isObject(options)) throw typeError('options', 'an object', options);
  const { onError, ...storeOptions } = options ?? {};
  const report = reporter(onError);
  const opening = Object.keys(storeOptions).length > 0 ? storeOptions : undefined;
  const store = storeFor(pathOrStore, opening, className);
  return { store, writes: new SdkWrites(store, report) };
}

/**
 * The user storage of vwo-node-sdk in its Promise mode (vwo-node-sdk >= 1.68.0):
 * `vwo.launch({ settingsFile, asyncStorageConfig: { redisStorage: new AsyncUserStorage(dir) } })`.
 * Every call runs on the libuv thread pool.
 */
class AsyncUserStorage {
  #store;
  #writes;

  /** `options.onError(err)` hears about failed writes (default: `process.emitWarning`), see `set`. */
  constructor(pathOrStore, options) {
    ({ store: this.#store, writes: this.#writes } = asyncAdapter(pathOrStore, options, 'AsyncUserStorage'));
  }

  /** The stored map, or undefined; waits for a `set` of the same key that is still running. */
  get(userId, campaignKey) {
    const store = this.#store;
    if (typeof userId !== 'string' || typeof campaignKey !== 'string') return store.getAsync(userId, campaignKey);
    return this.#writes.read(keyOf(userId, campaignKey), () => store.getAsync(userId, campaignKey));
  }

  /**
   * Stores the map, keeping goals already stored for the same variation. The SDK does not wait for this
   * Promise: a failure also goes to `onError`, and the Promise is marked handled.
   */
  set(map) {
    const store = this.#store;
    let incoming;
    return this.#writes.write(
      () => {
        incoming = sdkMap(map);
        return keyOf(incoming.userId, incoming.campaignKey);
      },
      () =>
        store
          .getAsync(incoming.userId, incoming.campaignKey)
          .then((stored) => store.setAsync(mergedForSdk(stored, incoming))),
    );
  }

  get store() {
    return this.#store;
  }

  /** Waits for the writes still running (the SDK's `set` calls are not awaited), then syncs and closes. */
  close() {
    return this.#writes.drain().then(() => this.#store.closeAsync());
  }
}

/**
 * The storage connector of vwo-fme-node-sdk: `init({ accountId, sdkKey, storage: new FmeStorage(dir) })`.
 * `get(featureKey, userId)` and `set(data)` return Promises and run on the libuv thread pool; the record is the
 * SDK's object (`featureKey`, `userId`, rollout and experiment ids and keys, ...), kept member for member.
 */
class FmeStorage {
  #store;
  #writes;

  /** `options.onError(err)` hears about failed writes (default: `process.emitWarning`). */
  constructor(pathOrStore, options) {
    ({ store: this.#store, writes: this.#writes } = asyncAdapter(pathOrStore, options, 'FmeStorage'));
  }

  /** The stored record, or undefined; waits for a `set` of the same key that is still running. */
  get(featureKey, userId) {
    const store = this.#store;
    if (typeof featureKey !== 'string' || typeof userId !== 'string') return store.getFeatureAsync(featureKey, userId);
    return this.#writes.read(featureKeyOf(featureKey, userId), () => store.getFeatureAsync(featureKey, userId));
  }

  /** Stores the record the SDK passes (members it leaves undefined are dropped, as JSON does). */
  set(data) {
    const store = this.#store;
    let json;
    return this.#writes.write(
      () => {
        json = featureJson(data);
        return featureKeyOf(data.featureKey, data.userId);
      },
      () => store.setFeatureAsync(JSON.parse(json)),
    );
  }

  get store() {
    return this.#store;
  }

  /** Waits for the writes still running, then syncs and closes. */
  close() {
    return this.#writes.drain().then(() => this.#store.closeAsync());
  }
}

module.exports = { Store, UserStorage, AsyncUserStorage, FmeStorage, DEFAULT_DURABILITY, GOAL_DELIMITER };
