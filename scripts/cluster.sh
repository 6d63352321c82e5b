#!/usr/bin/env bash
# `make cluster`: a local redis-server and two roomchat nodes sharing it, so
# that two browser tabs on two nodes chat in one room. Ctrl-C stops all
# three (by their PIDs). Ports: HTTP_PORT (3000) and the three after it.
set -euo pipefail
cd "$(dirname "$0")/.."

REDIS_SERVER=${REDIS_SERVER:-$(command -v redis-server || echo /usr/bin/redis-server)}
if [ ! -x "$REDIS_SERVER" ]; then
  echo "make cluster needs redis-server: apt-get install redis-server" >&2
  exit 1
fi
base=${HTTP_PORT:-3000}
cargo build --release --bin roomchat
bin=target/release/roomchat

dir=$(mktemp -d /tmp/roomchat-cluster.XXXXXX)
pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap stop INT TERM EXIT

# A private Redis on a Unix socket, nothing on disk: rooms last as long as it does.
"$REDIS_SERVER" --port 0 --unixsocket "$dir/redis.sock" --unixsocketperm 700 \
  --save '' --appendonly no --dir "$dir" --logfile "$dir/redis.log" &
pids+=($!)
for _ in $(seq 50); do [ -S "$dir/redis.sock" ] && break; sleep 0.1; done
url="unix://$dir/redis.sock"

for n in 0 1; do
  http=$((base + 2 * n)); ws=$((base + 2 * n + 1))
  "$bin" --redis "$url" --http-port "$http" --ws-port "$ws" "$@" \
    > "$dir/node$n.out" 2> >(sed -u "s/^/[node $((n + 1))] /" >&2) &
  pids+=($!)
done
for n in 0 1; do
  for _ in $(seq 100); do [ -s "$dir/node$n.out" ] && break; sleep 0.1; done
done

cat <<EOT

  Redis:  $url
  node 1: http://localhost:$base          (websocket :$((base + 1)))
  node 2: http://localhost:$((base + 2))          (websocket :$((base + 3)))

  Open one tab on each node, join the same room: one conversation.
  Ctrl-C stops Redis and both nodes.

EOT
wait -n "${pids[@]}" || true
