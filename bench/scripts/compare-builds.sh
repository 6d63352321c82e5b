#!/usr/bin/env bash
# Several roomchat builds side by side, alternating run by run in one session:
# 1 x 100 fan-out (10 senders, window 8) and light load (100 msg/s), shared
# cores. The bench starts each server itself (--server-bin), so each run gets
# a fresh one, and stops it.
#
#   bench/scripts/compare-builds.sh [RUNS] BIN...
#   e.g. git worktree add /tmp/old c0d012e && (cd /tmp/old && cargo build --release)
#        bench/scripts/compare-builds.sh 3 /tmp/old/target/release/roomchat target/release/roomchat
#
# Prints one line per case and build: medians, and every run's frames/s.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=3
if [[ ${1:-} =~ ^[0-9]+$ ]]; then runs=$1; shift; fi
[ $# -gt 0 ] || { echo "usage: $0 [RUNS] BIN..." >&2; exit 2; }
bench=target/release/roomchat-bench
out=$(mktemp /tmp/compare-builds.XXXXXX.jsonl)
for _ in $(seq "$runs"); do
    for bin in "$@"; do
        name="$bin"
        "$bench" fanout --server-bin "$bin" --server-name "$name" --label fanout-1x100 \
            --rooms 1 --members 100 --senders 10 --window 8 --duration 3 --flow echo \
            --json-out "$out" > /dev/null || echo "FAIL fanout $bin" >&2
        "$bench" fanout --server-bin "$bin" --server-name "$name" --label light-1x100 \
            --rooms 1 --members 100 --senders 10 --rate 100 --messages 40 --flow echo \
            --json-out "$out" > /dev/null || echo "FAIL light $bin" >&2
    done
done
python3 "$(dirname "$0")/medians.py" "$out"
