// Compiled by types.test.js with `tsc --noEmit --strict`: index.d.ts describes the API and fits the SDKs' types.
import * as vwo from 'vwo-node-sdk';
import * as fme from 'vwo-fme-node-sdk';
import { AsyncUserStorage, CampaignUserMap, FeatureRecord, FmeStorage, Store, Stats, UserStorage, UssdbError } from '../index';

const store: Store = new Store('/tmp/x', { durability: 'periodic:50ms', segmentSize: 1 << 20 });
const found: CampaignUserMap | undefined = store.get('u', 'c');
if (found !== undefined) {
  const goals: string | undefined = found.goalIdentifier;
  void goals;
}
store.set({ userId: 'u', campaignKey: 'c', variationName: 'v', goalIdentifier: null, metaData: { a: 1 } });
const n: number = store.forgetUser('u');
const stats: Stats = store.stats();
const seconds: number | null = stats.lastCompactionSeconds;
void n;
void seconds;

async function promises(): Promise<void> {
  const maps: CampaignUserMap[] = await store.campaignsOfAsync('u');
  void maps;
  try {
    await store.setAsync({ userId: 'u', campaignKey: 'c', variationName: 'v' });
  } catch (e) {
    const code: string = (e as UssdbError).code;
    void code;
  }
}
void promises;

const sync = new UserStorage(store);
vwo.launch({ settingsFile: {}, userStorageService: sync, isDevelopmentMode: true });
const redisStorage = new AsyncUserStorage('/tmp/y', { onError: (e: Error) => console.error(e) });
void redisStorage;

// vwo-node-sdk declares no `asyncStorageConfig` in its launch options: the Promise mode needs a cast in TypeScript.
const asyncSdk = vwo.launch({
  settingsFile: {},
  asyncStorageConfig: { redisStorage },
  returnPromiseFor: { all: true },
} as vwo.VWOAsyncLaunchConfig);
void asyncSdk;

const fmeStorage = new FmeStorage(store);
void fme.init({ accountId: '1', sdkKey: 'k', storage: fmeStorage });
const rec: FeatureRecord | undefined = store.getFeature('f', 'u');
void rec;
