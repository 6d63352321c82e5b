#!/usr/bin/env bash
# Where an idle connection's memory goes: starts a release roomchat, holds N
# idle connections with roomchat-bench conns, and while they are held sums the
# server's RSS by mapping from /proc/PID/smaps (thread stacks show as anon
# mappings of the stack size, malloc arenas as the ~2-4 MiB ones).
#
#   bench/scripts/smaps-breakdown.sh [N]      (default 2000)
# Extra environment for the server goes through SERVER_ENV, e.g.
#   SERVER_ENV="GLIBC_TUNABLES=glibc.malloc.tcache_count=0" bench/scripts/smaps-breakdown.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-2000}
ulimit -n 20000 2>/dev/null || true
flock /tmp/roomchat-cargo.lock cargo build --release -p roomchat -p roomchat-bench
bin=${CARGO_TARGET_DIR:-target}/release
out=$(mktemp)
env ${SERVER_ENV:-} RUST_LOG=warn "$bin/roomchat" --http-port 0 --ws-port 0 \
    --rate-limit off --max-connections 20000 >"$out" 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 50); do grep -q ws:// "$out" && break; sleep 0.1; done
url=$(grep -o 'ws://[^ )]*' "$out")
"$bin/roomchat-bench" conns --url "$url" --server-pid "$server" --conns "$n" \
    --rooms 100 --hold 6 --settle 3 >"$out.bench" 2>&1 &
bench=$!
sleep 5 # the bench connects for ~1 s, then holds for 6 s: sample in the hold
grep -E 'VmRSS|Threads' "/proc/$server/status"
python3 - "$server" <<'PY'
import re, sys
agg = {}
size = name = None
for line in open(f"/proc/{sys.argv[1]}/smaps"):
    m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$", line)
    if m:
        size = (int(m.group(2), 16) - int(m.group(1), 16)) // 1024
        name = m.group(3) or f"anon {size} KiB"
    elif line.startswith("Rss:") and name:
        count, rss = agg.get(name, (0, 0))
        agg[name] = (count + 1, rss + int(line.split()[1]))
for name, (count, rss) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:12]:
    print(f"{name:40s} maps={count:6d} rss={rss:8d} KiB")
PY
wait $bench || true
grep -E 'RSS per connection|RSS returned' "$out.bench"
rm -f "$out.bench"
