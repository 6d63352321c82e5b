#!/usr/bin/env bash
# WebSocket clients on the HTTP port against the WebSocket port: one fresh
# release server per run, the two ports alternating; 1 x 100 fan-out (native
# and Socket.IO) and light load, shared cores.
#
#   bench/scripts/compare-ports.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
bench=target/release/roomchat-bench
out=$(mktemp /tmp/compare-ports.XXXXXX.jsonl)
log=$(mktemp /tmp/compare-ports.XXXXXX.log)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq "$runs"); do
    for port in ws http; do
        target/release/roomchat --http-port 0 --ws-port 0 --rate-limit off > "$log" 2>&1 &
        pid=$!
        for _ in $(seq 100); do grep -q 'ws://' "$log" && break; sleep 0.1; done
        if [ "$port" = ws ]; then
            url=$(grep -o 'ws://[0-9.:]*/ws' "$log" | head -1)
        else
            url=ws://$(grep -o 'http://[0-9.:]*' "$log" | head -1 | sed 's#http://##')/ws
        fi
        for protocol in native socketio; do
            "$bench" fanout --url "$url" --server-pid "$pid" --protocol "$protocol" \
                --server-name "$port-port-$protocol" --label fanout-1x100 --rooms 1 --members 100 \
                --senders 10 --window 8 --duration 3 --flow echo --json-out "$out" > /dev/null \
                || echo "FAIL fanout $port $protocol" >&2
        done
        "$bench" fanout --url "$url" --server-pid "$pid" --server-name "$port-port-native" \
            --label light-1x100 --rooms 1 --members 100 --senders 10 --rate 100 --messages 40 \
            --flow echo --json-out "$out" > /dev/null || echo "FAIL light $port" >&2
        kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
    done
done
python3 "$(dirname "$0")/medians.py" "$out"
