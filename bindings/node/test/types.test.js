'use strict';
// index.d.ts is written by hand: it must compile, describe what index.js exports, and fit vwo-node-sdk's types.

const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { test } = require('node:test');

const ussdb = require('..');

test('index.d.ts type-checks a program that uses the API with the SDK (tsc --strict)', () => {
  const tsc = require.resolve('typescript/bin/tsc');
  const program = path.join(__dirname, 'types.ts');
  try {
    execFileSync(process.execPath, [tsc, '--noEmit', '--strict', program], { encoding: 'utf8' });
  } catch (err) {
    assert.fail(`tsc found errors:\n${err.stdout}${err.stderr}`);
  }
});

test('index.d.ts declares every export of index.js, and only those', () => {
  const declarations = fs.readFileSync(path.join(__dirname, '..', 'index.d.ts'), 'utf8');
  const declared = [...declarations.matchAll(/^export declare (?:class|const|function) (\w+)/gm)].map((m) => m[1]);
  assert.deepEqual(declared.sort(), Object.keys(ussdb).sort());
});
