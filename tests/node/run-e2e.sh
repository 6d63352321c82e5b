#!/usr/bin/env bash
# Browser end-to-end tests (headless Chromium + playwright-core) against a real roomchat.
#   ROOMCHAT_BIN       server binary (default ../../target/debug/roomchat, relative to this folder)
#   CHROMIUM_PATH      browser (default /usr/bin/chromium, Debian's `chromium` package)
#   UPDATE_SCREENSHOT=1  copy the fresh screenshots to docs/screenshot.png (two pages)
#                        and docs/screenshot-cluster.png (two pages on two nodes)
# Runs every *.test.mjs here; arguments, if any, replace that list (e.g. ./run-e2e.sh e2e.test.mjs).
set -euo pipefail
cd "$(dirname "$0")"

export ROOMCHAT_BIN="${ROOMCHAT_BIN:-../../target/debug/roomchat}"
if [ ! -x "$ROOMCHAT_BIN" ]; then
  echo "run-e2e: no server binary at $ROOMCHAT_BIN (build it with cargo build, or set ROOMCHAT_BIN)" >&2
  exit 1
fi
if [ ! -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]; then
  echo "run-e2e: no Chromium at ${CHROMIUM_PATH:-/usr/bin/chromium} (apt-get install -y chromium)" >&2
  exit 1
fi
if [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund
fi

files=("$@")
if [ ${#files[@]} -eq 0 ]; then
  files=(*.test.mjs)
fi

start=$(date +%s.%N)
status=0
node --test --test-timeout=300000 "${files[@]}" || status=$?
end=$(date +%s.%N)
awk -v s="$start" -v e="$end" -v r="$([ $status -eq 0 ] && echo passed || echo FAILED)" \
  'BEGIN { printf "run-e2e: %s in %.1f s\n", r, e - s }'

if [ $status -eq 0 ] && [ "${UPDATE_SCREENSHOT:-0}" = 1 ] && [ -f artifacts/two-pages.png ]; then
  cp artifacts/two-pages.png ../../docs/screenshot.png
  echo "run-e2e: updated docs/screenshot.png"
fi
if [ $status -eq 0 ] && [ "${UPDATE_SCREENSHOT:-0}" = 1 ] && [ -f artifacts/two-nodes.png ]; then
  cp artifacts/two-nodes.png ../../docs/screenshot-cluster.png
  echo "run-e2e: updated docs/screenshot-cluster.png"
fi
exit $status
