'use strict';
// Shared by the tests: temporary store directories, VWO settings files, and a guard that fails a test whose
// code tries to reach any host but this machine.

const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;

/**
 * Every outbound TCP connection goes through `net.Socket.prototype.connect` (http, https, fetch). Connections to
 * other hosts are refused before any DNS lookup and written down, so a test can assert that none was tried.
 */
const refusedConnections = [];
const realConnect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function guardedConnect(...args) {
  const first = args[0];
  const options = Array.isArray(first) ? first[0] : first;
  let host;
  if (options !== null && typeof options === 'object') {
    // http and https pass their request options on, whose `path` is the URL's: only a connection without a port
    // is to a local (IPC) socket path.
    const ipc = options.port === undefined && typeof options.path === 'string';
    host = ipc ? 'localhost' : (options.host ?? 'localhost');
  } else if (typeof first === 'string' && !/^\d+$/.test(first)) {
    host = 'localhost'; // an IPC path
  } else {
    host = typeof args[1] === 'string' ? args[1] : 'localhost';
  }
  if (!LOOPBACK.test(host)) {
    refusedConnections.push(host);
    const err = new Error(`test guard: no connection to ${host} (tests stay on this machine)`);
    err.code = 'ECONNREFUSED';
    process.nextTick(() => this.destroy(err));
    return this;
  }
  return realConnect.apply(this, args);
};

function tempDir(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ussdb-node-test-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const CAMPAIGN_KEY = 'sticky_ab';
const GOALS = ['signup', 'purchase'];

/** A vwo-node-sdk settings file as the VWO server serves it: one running A/B campaign, two variations, two goals. */
function vwoSettings(controlWeight = 50, variationWeight = 50) {
  return {
    version: 1,
    accountId: 123456,
    sdkKey: '0123456789abcdef0123456789abcdef',
    campaigns: [
      {
        id: 101,
        key: CAMPAIGN_KEY,
        name: 'Sticky A/B',
        status: 'RUNNING',
        type: 'VISUAL_AB',
        percentTraffic: 100,
        isForcedVariationEnabled: false,
        segments: {},
        variations: [
          { id: 1, name: 'Control', weight: controlWeight },
          { id: 2, name: 'Variation-1', weight: variationWeight },
        ],
        goals: [
          { id: 201, identifier: GOALS[0], type: 'CUSTOM_GOAL' },
          { id: 202, identifier: GOALS[1], type: 'CUSTOM_GOAL' },
        ],
      },
    ],
  };
}

const FEATURE_KEY = 'new_checkout';
const FME_ACCOUNT_ID = 654321;
const FME_SDK_KEY = 'fedcba9876543210fedcba9876543210';

/**
 * A vwo-fme-node-sdk settings file: one feature flag with a rollout rule (everyone) and a testing rule whose two
 * variations split traffic `defaultWeight` / `variationWeight`.
 */
function fmeSettings(defaultWeight = 50, variationWeight = 50) {
  const variable = (value) => [{ id: 1, key: 'label', type: 'string', value }];
  return {
    version: 3,
    accountId: FME_ACCOUNT_ID,
    sdkKey: FME_SDK_KEY,
    features: [
      {
        id: 11,
        key: FEATURE_KEY,
        name: 'New checkout',
        type: 'FEATURE_FLAG',
        status: 'ON',
        metrics: [{ id: 31, type: 'CUSTOM_GOAL', identifier: 'order_placed' }],
        impactCampaign: {},
        rules: [
          { campaignId: 21, type: 'FLAG_ROLLOUT', ruleKey: 'rollout' },
          { campaignId: 22, type: 'FLAG_TESTING', ruleKey: 'test' },
        ],
      },
    ],
    campaigns: [
      {
        id: 21,
        key: `${FEATURE_KEY}_rollout`,
        name: 'Rollout',
        type: 'FLAG_ROLLOUT',
        status: 'RUNNING',
        percentTraffic: 100,
        segments: {},
        isForcedVariationEnabled: false,
        variations: [{ id: 1, name: 'Rollout-rule', weight: 100, segments: {}, variables: variable('rollout') }],
      },
      {
        id: 22,
        key: `${FEATURE_KEY}_test`,
        name: 'Test',
        type: 'FLAG_TESTING',
        status: 'RUNNING',
        percentTraffic: 100,
        segments: {},
        isForcedVariationEnabled: false,
        variations: [
          { id: 1, name: 'Default', weight: defaultWeight, variables: variable('default') },
          { id: 2, name: 'Variation-1', weight: variationWeight, variables: variable('variation-1') },
        ],
      },
    ],
  };
}

module.exports = {
  tempDir,
  refusedConnections,
  vwoSettings,
  fmeSettings,
  CAMPAIGN_KEY,
  GOALS,
  FEATURE_KEY,
  FME_ACCOUNT_ID,
  FME_SDK_KEY,
};
