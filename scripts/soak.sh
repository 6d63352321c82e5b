#!/usr/bin/env bash
# make soak: a release roomchat under random clients for a bounded time.
#
#   scripts/soak.sh                    3 minutes, 32 concurrent random clients
#   SOAK_SECONDS=60 SOAK_CLIENTS=64 scripts/soak.sh
#
# Starts target/release/roomchat on free ports, runs the driver (the ignored
# test tests/soak.rs) against it by address and PID, prints the figures, then
# stops the server with SIGTERM and checks it exits 0.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export SOAK_SECONDS="${SOAK_SECONDS:-180}"
export SOAK_CLIENTS="${SOAK_CLIENTS:-32}"

lock=()
if command -v flock >/dev/null; then lock=(flock /tmp/roomchat-cargo.lock); fi

# Builds under the lock; the run itself holds no lock.
"${lock[@]}" cargo build --release --bin roomchat
driver="$("${lock[@]}" cargo test --test soak --no-run --message-format=json \
    | sed -n 's/.*"executable":"\([^"]*soak[^"]*\)".*/\1/p' | tail -n 1)"
[ -x "$driver" ] || { echo "soak: cannot find the driver binary" >&2; exit 1; }

work="$(mktemp -d)"
# Rate limit off: the soak measures load, not the limiter.
RUST_LOG="${RUST_LOG:-warn}" target/release/roomchat --http-port 0 --ws-port 0 \
    --rate-limit off >"$work/stdout" 2>"$work/stderr" &
pid=$!
cleanup() {
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

for _ in $(seq 100); do
    [ -s "$work/stdout" ] && break
    sleep 0.1
done
banner="$(head -n 1 "$work/stdout")"
http="$(sed -n 's|.*http://\([^ ]*\) .*|\1|p' <<<"$banner")"
ws="$(sed -n 's|.*ws://\([^/]*\)/.*|\1|p' <<<"$banner")"
[ -n "$http" ] && [ -n "$ws" ] || { echo "soak: no banner: $banner" >&2; cat "$work/stderr" >&2; exit 1; }
echo "soak: server pid $pid, $banner"

status=0
SOAK_HTTP="$http" SOAK_WS="$ws" SOAK_PID="$pid" \
    "$driver" --ignored --exact soak --nocapture --test-threads 1 || status=$?

kill -TERM "$pid"
exit_code=0
for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$pid" 2>/dev/null; then
    echo "soak: the server did not exit within 5 s of SIGTERM" >&2
    status=1
else
    wait "$pid" || exit_code=$?
    echo "soak: server exited with status $exit_code after SIGTERM"
    [ "$exit_code" -eq 0 ] || status=1
fi
warnings=$(grep -c -E ' (WARN|ERROR) ' "$work/stderr" || true)
echo "soak: server log: $warnings warnings or errors"
grep -E ' (WARN|ERROR) ' "$work/stderr" | head -n 5 || true
[ "$status" -eq 0 ] && echo "soak: PASSED" || echo "soak: FAILED"
exit "$status"
