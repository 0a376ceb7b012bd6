// Type declarations of the `ussdb` package (index.js).

/** One user's assignment in one campaign, as vwo-node-sdk stores it. */
export interface CampaignUserMap {
  userId: string;
  campaignKey: string;
  variationName: string;
  /** Goals already tracked, joined by "_vwo_"; absent when none. */
  goalIdentifier?: string;
}

/**
 * One user's record for one feature flag, as vwo-fme-node-sdk passes it to its storage connector (unknown members
 * are kept, member for member).
 */
export interface FeatureRecord {
  featureKey: string;
  userId: string;
  featureId?: number | null;
  rolloutId?: number | null;
  rolloutKey?: string | null;
  rolloutVariationId?: number | null;
  experimentId?: number | null;
  experimentKey?: string | null;
  experimentVariationId?: number | null;
  isInHoldoutId?: number[] | null;
  notInHoldoutId?: number[] | null;
  [member: string]: unknown;
}

/** What `set` accepts: a map whose goal list may also be null; other fields are ignored. */
export interface CampaignUserMapInput {
  userId: string;
  campaignKey: string;
  variationName: string;
  goalIdentifier?: string | null;
  [extra: string]: unknown;
}

export type Durability = 'immediate' | 'periodic' | 'never' | `periodic:${number}ms`;

export interface StoreOptions {
  /**
   * When a `set` is on disk. "periodic" (default): after write(2), fsync every 100 ms in the background (a
   * process crash loses nothing, a power loss at most the last 100 ms). "immediate": after fsync (concurrent
   * writers share one). "never": the OS writes back when it likes. "periodic:<N>ms" picks the interval.
   */
  durability?: Durability;
  /** Bytes at which a segment file is sealed and a new one started (default 64 MiB; 4 KiB to 256 GiB). */
  segmentSize?: number;
  /** Dead fraction of a sealed segment that triggers background compaction (default 0.5, from 0 to 1). */
  compactionThreshold?: number;
  /** Background compaction and hint files (default true); with false, only `compact()` reclaims space. */
  autoCompaction?: boolean;
  /**
   * Opens without writing anything (default false): writes fail with USSDB_READ_ONLY, and any number of read-only
   * openers may share the directory (a writer and a reader exclude each other).
   */
  readOnly?: boolean;
  /** Multi-process mode: node:cluster / PM2 workers open one directory together (default true unless readOnly). */
  shared?: boolean;
}

/** What `backup` copied. */
export interface BackupReport {
  /** Segment files in the copy. */
  segments: number;
  /** Files hard-linked (no bytes copied). */
  linked: number;
  /** Files copied byte by byte. */
  copied: number;
  /** Bytes of segment files in the copy. */
  bytes: number;
}

export interface Stats {
  mappings: number;
  segments: number;
  diskBytes: number;
  liveBytes: number;
  deadBytes: number;
  spaceAmplification: number;
  indexHeapBytes: number;
  sets: number;
  deletes: number;
  fsyncs: number;
  compactions: number;
  /** Seconds the last compaction pass took, or null if none has run since open. */
  lastCompactionSeconds: number | null;
  reclaimedBytes: number;
  hintFiles: number;
  /** The open loaded the index the last clean close saved (instead of rebuilding it from hint files). */
  indexLoaded: boolean;
}

/** The `code` of an error from the engine (the `Error`'s message is the engine's). */
export type UssdbErrorCode =
  | 'USSDB_IO'
  | 'USSDB_CORRUPTED'
  | 'USSDB_BAD_MAGIC'
  | 'USSDB_UNSUPPORTED_VERSION'
  | 'USSDB_INVALID_KEY'
  | 'USSDB_VALUE_TOO_LARGE'
  | 'USSDB_INVALID_OPTION'
  | 'USSDB_LOCKED'
  | 'USSDB_NOT_A_DIRECTORY'
  | 'USSDB_READ_ONLY'
  | 'USSDB_FORKED'
  | 'USSDB_POISONED'
  | 'USSDB_IMPORT'
  | 'USSDB_BACKEND'
  | 'USSDB_EXPORT'
  | 'USSDB_JSON'
  | 'USSDB_CLOSED'
  | 'USSDB_INTERNAL'
  | 'USSDB_ERROR';

/** An engine error as thrown (or rejected with): a plain `Error` with a `code`. */
export interface UssdbError extends Error {
  code: UssdbErrorCode;
}

/**
 * An open store directory. Synchronous methods run on the calling thread; `...Async` methods run on the libuv
 * thread pool. Wrong argument types throw (or reject with) a `TypeError` with code ERR_INVALID_ARG_TYPE; engine
 * failures an `Error` with a `UssdbErrorCode`.
 */
export declare class Store {
  /** Opens (or creates) the store in `path`. A directory open elsewhere gives USSDB_LOCKED. */
  constructor(path: string | URL, options?: StoreOptions);
  readonly path: string;
  readonly closed: boolean;

  get(userId: string, campaignKey: string): CampaignUserMap | undefined;
  /** Stores the map, replacing any earlier one of its user and campaign. */
  set(map: CampaignUserMapInput): void;
  /** Erases one mapping; true if there was one. */
  delete(userId: string, campaignKey: string): boolean;
  /** Erases every mapping of a user; returns how many there were. */
  forgetUser(userId: string): number;
  /** Every mapping of a user, sorted by campaign key. */
  campaignsOf(userId: string): CampaignUserMap[];
  /** Returns once everything written so far is on disk, whatever the durability. */
  sync(): void;
  /** Compacts now: rewrites segments that hold overwritten or deleted records. */
  compact(): void;
  stats(): Stats;
  /**
   * Copies the store into `dest` (a new or empty directory) while it stays in use: every write acknowledged
   * before the call is in the copy, which opens as a store. Sealed files are hard-linked where possible.
   */
  backup(dest: string | URL): BackupReport;
  /** Syncs and closes; the directory can be opened again at once. Closing twice is harmless. */
  close(): void;

  getAsync(userId: string, campaignKey: string): Promise<CampaignUserMap | undefined>;
  /**
   * Appends at once (on the calling thread) and settles when the write is durable: under "immediate", once the
   * group commit covering it has fsynced, with no thread of the pool waiting for it; at once otherwise.
   */
  setAsync(map: CampaignUserMapInput): Promise<void>;
  deleteAsync(userId: string, campaignKey: string): Promise<boolean>;
  forgetUserAsync(userId: string): Promise<number>;
  campaignsOfAsync(userId: string): Promise<CampaignUserMap[]>;
  /** The FME record of a user in a feature, or undefined. */
  getFeature(featureKey: string, userId: string): FeatureRecord | undefined;
  /** Stores an FME record, replacing the one of its feature and user. */
  setFeature(record: FeatureRecord): void;
  deleteFeature(featureKey: string, userId: string): boolean;
  /** Every FME record of a user. */
  featuresOf(userId: string): FeatureRecord[];
  getFeatureAsync(featureKey: string, userId: string): Promise<FeatureRecord | undefined>;
  setFeatureAsync(record: FeatureRecord): Promise<void>;
  deleteFeatureAsync(featureKey: string, userId: string): Promise<boolean>;
  featuresOfAsync(userId: string): Promise<FeatureRecord[]>;
  syncAsync(): Promise<void>;
  compactAsync(): Promise<void>;
  backupAsync(dest: string | URL): Promise<BackupReport>;
  closeAsync(): Promise<void>;
}

/**
 * vwo-node-sdk's user storage, synchronous mode:
 * `vwo.launch({ settingsFile, userStorageService: new UserStorage(dir) })`.
 */
export declare class UserStorage {
  /** Opens its own Store on a path (with options), or shares a Store. */
  constructor(pathOrStore: string | URL | Store, options?: StoreOptions);
  /** The stored map, or undefined when there is none. */
  get(userId: string, campaignKey: string): CampaignUserMap | undefined;
  /**
   * The same call, as vwo-node-sdk's own declarations type a user storage's `get` (always an object): this lets
   * `userStorageService: new UserStorage(dir)` compile under `strict`. The SDK reads undefined as "nothing stored".
   */
  get(userId: string, campaignKey: string): Record<string, any>;
  /** Stores the SDK's map, keeping goals already stored for the same variation. */
  set(map: CampaignUserMapInput): void;
  readonly store: Store;
  close(): void;
}

export interface AsyncUserStorageOptions extends StoreOptions {
  /** Hears about writes that failed (the SDK does not wait for them). Default: `process.emitWarning`. */
  onError?: (error: Error) => void;
}

/**
 * vwo-node-sdk's user storage, Promise mode (vwo-node-sdk >= 1.68.0):
 * `vwo.launch({ settingsFile, asyncStorageConfig: { redisStorage: new AsyncUserStorage(dir) } })`.
 */
export declare class AsyncUserStorage {
  constructor(pathOrStore: string | URL | Store, options?: AsyncUserStorageOptions);
  get(userId: string, campaignKey: string): Promise<CampaignUserMap | undefined>;
  set(map: CampaignUserMapInput): Promise<void>;
  readonly store: Store;
  /** Waits for pending writes, then syncs and closes. */
  close(): Promise<void>;
}

/**
 * vwo-fme-node-sdk's storage connector: `init({ accountId, sdkKey, storage: new FmeStorage(dir) })`. Both calls
 * run on the libuv thread pool.
 */
export declare class FmeStorage {
  constructor(pathOrStore: string | URL | Store, options?: AsyncUserStorageOptions);
  get(featureKey: string, userId: string): Promise<FeatureRecord | undefined>;
  set(data: FeatureRecord): Promise<void>;
  readonly store: Store;
  /** Waits for pending writes, then syncs and closes. */
  close(): Promise<void>;
}

/** "periodic" */
export declare const DEFAULT_DURABILITY: Durability;
/** "_vwo_", what separates goals in `goalIdentifier`. */
export declare const GOAL_DELIMITER: string;
