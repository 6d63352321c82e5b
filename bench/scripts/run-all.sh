#!/usr/bin/env bash
# Runs every roomchat benchmark (what `make bench` calls): builds release,
# starts a fresh server for each run, runs each case RUNS times, writes the
# JSON lines to bench/results/, the median tables into docs/BENCHMARKS.md and
# the latency-vs-load plot to docs/latency-vs-load.svg.
#
#   RUNS=3            runs per case (the tables show medians)
#   SWEEP=1           also run the load sweep for the plot (0: skip)
#   BENCH_LOCK=/tmp/roomchat-cargo.lock   held for the whole run so no build
#                     competes for the CPU; empty: no lock
#   CASES="fanout conns churn"            which groups to run
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${RUNS:-3}
SWEEP=${SWEEP:-1}
CASES=${CASES:-"fanout conns churn"}
OUT=bench/results
BENCH_LOCK=${BENCH_LOCK-/tmp/roomchat-cargo.lock}
SERVER=target/release/roomchat
BENCH=target/release/roomchat-bench

if [ -n "$BENCH_LOCK" ]; then
    exec 9>"$BENCH_LOCK"
    echo "bench: waiting for $BENCH_LOCK" >&2
    flock 9
fi

# 10,000 connections need 10,000+ descriptors in the server and in the bench.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10240 ]; then
    echo "bench: open-file limit $(ulimit -n) is below 10240; conns 10000 will fail" >&2
fi

# Every server thread maps 4 memory areas (stack, signal stack, a guard page
# each); a busy client has two threads. The server caps its clients at what
# vm.max_map_count allows (8 maps each), 7,935 at Linux's default, so for the
# 10,000-connection case the limit is raised for this run and put back after.
maps_before=$(cat /proc/sys/vm/max_map_count 2>/dev/null || echo 0)
maps_needed=$((20000 * 8 + 2048))
restore_maps() { :; }
if [ "$maps_before" -lt "$maps_needed" ]; then
    if [ -w /proc/sys/vm/max_map_count ] && echo "$maps_needed" >/proc/sys/vm/max_map_count 2>/dev/null; then
        echo "bench: vm.max_map_count $maps_before -> $maps_needed for this run" >&2
        restore_maps() { echo "$maps_before" >/proc/sys/vm/max_map_count; }
    else
        echo "bench: vm.max_map_count is $maps_before; the server will refuse clients past $(((maps_before - 2048) / 8))" >&2
    fi
fi

cargo build --release -p roomchat -p roomchat-bench

mkdir -p "$OUT"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results="$OUT/results-$stamp.jsonl"
log="$OUT/server-$stamp.log"
tmp=$(mktemp -d)
server_pid=""
failures=0

stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
trap 'stop_server; restore_maps; rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

start_server() {
    : >"$tmp/out"
    RUST_LOG=${RUST_LOG:-warn} "$SERVER" --host 127.0.0.1 --http-port 0 --ws-port 0 \
        --rate-limit off --max-connections 20000 >"$tmp/out" 2>>"$log" &
    server_pid=$!
    for _ in $(seq 100); do
        grep -q 'ws://' "$tmp/out" && break
        sleep 0.1
    done
    url=$(grep -o 'ws://[^ )",]*' "$tmp/out" | head -n 1 || true)
    if [ -z "$url" ]; then
        echo "bench: the server printed no ws:// line; see $log" >&2
        exit 2
    fi
}

# case LABEL RUNS COUNTS SCENARIO ARGS...: COUNTS=1 makes a failed run fail `make bench`.
case_() {
    local label=$1 runs=$2 counts=$3
    shift 3
    for i in $(seq "$runs"); do
        echo "bench: $label run $i/$runs" >&2
        start_server
        if ! "$BENCH" "$@" --url "$url" --server-pid "$server_pid" --label "$label" \
            --json-out "$results" >"$tmp/run.txt"; then
            [ "$counts" = 1 ] && failures=$((failures + 1))
        fi
        grep -v '^{' "$tmp/run.txt" >&2 || true
        stop_server
    done
}

for group in $CASES; do
    case $group in
    fanout)
        case_ fanout-1x100-w8 "$RUNS" 1 fanout --rooms 1 --members 100 --senders 10 --window 8 --messages 10000
        case_ fanout-10x100-w8 "$RUNS" 1 fanout --rooms 10 --members 100 --senders 10 --window 8 --messages 1000
        case_ fanout-1x1000-400ps "$RUNS" 1 fanout --rooms 1 --members 1000 --senders 1 --rate 400 --messages 2000 --threads 2
        case_ light-1x100-100ps "$RUNS" 1 fanout --rooms 1 --members 100 --senders 10 --rate 100 --messages 100
        if [ "$SWEEP" = 1 ]; then
            # Open-loop load sweep for the plot: 3 seconds at each rate.
            for rate in 100 300 1000 3000 10000 20000 30000 40000 50000; do
                case_ "load-$rate" 1 0 fanout --rooms 1 --members 100 --senders 10 \
                    --rate "$rate" --messages $((rate * 3 / 10)) --timeout 30
            done
        fi
        ;;
    conns)
        case_ conns-2000 "$RUNS" 1 conns --conns 2000 --rooms 100
        case_ conns-10000 "$RUNS" 1 conns --conns 10000 --rooms 100 --connect-rate 2500
        ;;
    churn)
        case_ churn-10s "$RUNS" 1 churn --duration 10 --clients 32 --rooms 10
        ;;
    esac
done

rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain -- src Cargo.toml 2>/dev/null)" ]; then
    rev="$rev with uncommitted changes to the server"
fi
measured="roomchat $rev, $(date -u +%Y-%m-%d), $RUNS run(s) per case, medians"
"$BENCH" summary "$results" --measured "$measured" >"$OUT/summary-$stamp.md"
if grep -q 'results:begin' docs/BENCHMARKS.md 2>/dev/null; then
    "$BENCH" summary "$results" --measured "$measured" --doc docs/BENCHMARKS.md >/dev/null
fi
if [ "$SWEEP" = 1 ] && grep -q '"label":"load-' "$results"; then
    "$BENCH" plot "$results" --prefix load- --out docs/latency-vs-load.svg
fi
cat "$OUT/summary-$stamp.md"
echo "bench: results in $results, tables in $OUT/summary-$stamp.md" >&2
if [ "$failures" -gt 0 ]; then
    echo "bench: $failures run(s) FAILED (loss, errors or leaks): see above" >&2
    exit 1
fi
