#!/usr/bin/env bash
# Node.js binding (bindings/node): builds the addon, runs its tests against the published VWO Node SDKs
# (vwo-node-sdk, vwo-fme-node-sdk; offline), and installs the packed npm package into a scratch project.
# Self-contained: installs Node.js and npm with apt-get if they are missing. Needs cargo and the npm registry.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

step() { printf '\n== %s\n' "$*"; }

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    step "installing Node.js and npm (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
fi
# @napi-rs/cli 3 needs Node.js ^20.17 || ^22.13 || >= 23.5.
node -e '
  const [maj, min] = process.versions.node.split(".").map(Number);
  const ok = (maj === 20 && min >= 17) || (maj === 22 && min >= 13) || maj > 23 || (maj === 23 && min >= 5);
  if (!ok) {
    console.error(`Node.js ${process.version} is too old to build the binding (@napi-rs/cli 3 needs ^20.17, ^22.13 or >= 23.5); install a newer nodejs package`);
    process.exit(1);
  }'
echo "node $(node --version), npm $(npm --version)"

cd "$root/bindings/node"
step "npm ci (pinned: @napi-rs/cli, typescript, vwo-node-sdk, vwo-fme-node-sdk)"
npm ci --no-audit --no-fund

step "build the addon (napi build --release)"
npm run build

step "tests (node --test)"
npm test

step "npm pack, then install the tarball into a scratch project and use it"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
npm pack --pack-destination "$scratch" --silent >/dev/null
tarball="$(ls "$scratch"/ussdb-*.tgz)"
(
    cd "$scratch"
    npm init -y >/dev/null
    npm install --offline --no-audit --no-fund "$tarball" >/dev/null
    node -e '
      const { Store } = require("ussdb");
      const store = new Store(process.argv[1] + "/data");
      store.set({ userId: "u", campaignKey: "c", variationName: "Control" });
      if (store.get("u", "c").variationName !== "Control") throw new Error("the installed package does not read back");
      store.close();
      console.log("the installed package stores and reads back");
    ' "$scratch"
)
