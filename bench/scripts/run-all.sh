#!/usr/bin/env bash
# Runs every benchmark case against roomchat and its peers in one run, with one
# load generator (what `make bench` calls): builds roomchat and roomchat-bench
# in release, copies and builds the peers (bench/scripts/build-peers.sh),
# starts a fresh server for every run, and writes the JSON lines to
# bench/results/, the side-by-side median tables into docs/BENCHMARKS.md.
#
# Knobs (environment):
#   RUNS=3            runs per case and server (the tables show medians)
#   CASES="light fanout fanout10 mid big conns auth churn"   which cases to run
#                     (auth: 10,000 clients connecting with HS256 tokens, with
#                     RS256 tokens and with none, roomchat native only, and
#                     the cost of one token check, `roomchat-bench verify`); add
#                     `cluster` for roomchat as 2 nodes + Redis against one
#                     node, side by side (1 × 100 fan-out and light load;
#                     needs redis-server)
#   SERVERS="roomchat-native roomchat-socketio"     roomchat's two front doors
#   PEERS="seed-socketio socketioxide-chat"         peers; PEERS= for none
#   PIN="pinned shared"   for the cases measured both ways: pinned (server on
#                     CPU 0, generator on CPU 1, with taskset) and/or shared
#                     (both free on both cores)
#   THREADS=          generator threads (`roomchat-bench fanout --threads`) in
#                     every fan-out case; unset: 1, but 2 for 1 × 1000 shared.
#                     Verdicts that flip between THREADS=1 and 2 are the
#                     generator's timing, not the server's design.
#   SECS=3            seconds of sending in the window cases
#   LIGHT_SECS=4      seconds of the light-load case (100 msg/s)
#   BIG_SECS=3        seconds of the 1 × 1000 case (400 msg/s): long enough
#                     that the last frames' latency does not decide whether
#                     delivered ÷ offered reaches 98 %
#   CHURN_SECS=6      seconds of churn
#   CONNS=10000       idle connections in the conns case
#   SWEEP=0           1: also the latency-vs-load sweep (roomchat native) and
#                     its plot, docs/latency-vs-load.svg
#   DOC=docs/BENCHMARKS.md   where the tables go (DOC= : nowhere)
#   DOC_SECTION=results      between which markers of DOC:
#                     <!-- DOC_SECTION:begin --> … <!-- DOC_SECTION:end -->
#   CARGO_TARGET_DIR  where the builds are (default target/); the peers are
#                     built under it too (PEERS_DIR, default $CARGO_TARGET_DIR/peers)
#   BENCH_LOCK=/tmp/roomchat-cargo.lock   held for the whole run so that no
#                     build competes for the CPU; empty: no lock
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${RUNS:-3}
CASES=${CASES:-"light fanout fanout10 mid big conns auth churn"}
THREADS=${THREADS:-}
SERVERS=${SERVERS:-"roomchat-native roomchat-socketio"}
PEERS=${PEERS-"seed-socketio socketioxide-chat"}
PIN=${PIN:-"pinned shared"}
SECS=${SECS:-3}
LIGHT_SECS=${LIGHT_SECS:-4}
BIG_SECS=${BIG_SECS:-3}
CHURN_SECS=${CHURN_SECS:-6}
CONNS=${CONNS:-10000}
SWEEP=${SWEEP:-0}
DOC=${DOC-docs/BENCHMARKS.md}
DOC_SECTION=${DOC_SECTION:-results}
OUT=bench/results
BENCH_LOCK=${BENCH_LOCK-/tmp/roomchat-cargo.lock}
TARGET=${CARGO_TARGET_DIR:-target}
SERVER=$TARGET/release/roomchat
BENCH=$TARGET/release/roomchat-bench
PEERS_DIR=${PEERS_DIR:-$TARGET/peers}
# The command as given, for the doc.
command_line="make bench"
for v in RUNS CASES THREADS SERVERS PEERS PIN SECS LIGHT_SECS BIG_SECS CHURN_SECS CONNS SWEEP; do
    if printenv "$v" >/dev/null; then
        command_line="$v=\"$(printenv "$v")\" $command_line"
    fi
done

if [ -n "$BENCH_LOCK" ]; then
    exec 9>"$BENCH_LOCK"
    echo "bench: waiting for $BENCH_LOCK" >&2
    flock 9
fi

# shellcheck source=bench/scripts/limits.sh
. bench/scripts/limits.sh
raise_limits "$CONNS"

# Pinned runs need taskset (util-linux); without it they are skipped.
if [[ " $PIN " == *" pinned "* ]] && ! command -v taskset >/dev/null; then
    echo "bench: no taskset (util-linux): the pinned runs are skipped" >&2
    PIN=${PIN//pinned/}
fi
if [ "$(nproc)" -lt 2 ] && [[ " $PIN " == *" pinned "* ]]; then
    echo "bench: fewer than 2 CPUs: the pinned runs are skipped" >&2
    PIN=${PIN//pinned/}
fi

cargo build --release -p roomchat -p roomchat-bench
peers_ok=""
for p in $PEERS; do
    if PEERS_DIR=$PEERS_DIR bench/scripts/build-peers.sh "$p"; then
        peers_ok="$peers_ok $p"
    else
        echo "bench: peer $p could not be built; it is left out of this run" >&2
    fi
done
ALL="$SERVERS$peers_ok"

mkdir -p "$OUT"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results="$OUT/results-$stamp.jsonl"
log="$OUT/server-$stamp.log"
tmp=$(mktemp -d)
server_pid=""
cluster_pids=()
failures=0
peer_failures=0

stop_server() {
    # A cluster: the nodes first (each takes its members out of Redis), then Redis.
    if [ "${#cluster_pids[@]}" -gt 0 ]; then
        kill "${cluster_pids[@]:1}" 2>/dev/null || true
        for pid in "${cluster_pids[@]:1}"; do wait "$pid" 2>/dev/null || true; done
        kill "${cluster_pids[0]}" 2>/dev/null || true
        wait "${cluster_pids[0]}" 2>/dev/null || true
        cluster_pids=()
    fi
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
trap 'stop_server; restore_maps; rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

# start_cluster: a private redis-server on a Unix socket and two roomchat
# nodes sharing it; sets cluster_pids (Redis first) and urls (both nodes).
start_cluster() {
    local redis=${REDIS_SERVER:-/usr/bin/redis-server} dir="$tmp/redis"
    mkdir -p "$dir"
    rm -f "$dir/redis.sock"
    "$redis" --port 0 --unixsocket "$dir/redis.sock" --unixsocketperm 700 --save '' \
        --appendonly no --dir "$dir" >>"$log" 2>&1 &
    cluster_pids=($!)
    for _ in $(seq 100); do [ -S "$dir/redis.sock" ] && break; sleep 0.05; done
    urls=()
    for n in 1 2; do
        : >"$tmp/out$n"
        RUST_LOG=${RUST_LOG:-warn} "$SERVER" --host 127.0.0.1 --http-port 0 --ws-port 0 \
            --rate-limit off --max-connections 20000 --redis "unix://$dir/redis.sock" \
            >"$tmp/out$n" 2>>"$log" &
        cluster_pids+=($!)
    done
    for n in 1 2; do
        for _ in $(seq 150); do
            grep -q 'listening on' "$tmp/out$n" && break
            sleep 0.1
        done
        urls+=(--url "$(grep -o 'ws://[^ )",]*' "$tmp/out$n" | head -n 1)")
    done
    protocol=native
}

# start_server NAME PINNED: sets server_pid (empty for a cluster), urls
# (--url arguments) and protocol.
start_server() {
    local name=$1 pinned=$2
    local pin=()
    [ "$pinned" = pinned ] && pin=(taskset -c 0)
    : >"$tmp/out"
    echo "== $name" >>"$log"
    if [ "$name" = roomchat-cluster ]; then
        start_cluster
        return
    fi
    case $name in
    roomchat-native | roomchat-socketio)
        protocol=${name#roomchat-}
        RUST_LOG=${RUST_LOG:-warn} "${pin[@]}" "$SERVER" --host 127.0.0.1 --http-port 0 \
            --ws-port 0 --rate-limit off --max-connections 20000 >"$tmp/out" 2>>"$log" &
        ;;
    roomchat-hs256 | roomchat-rs256)
        # roomchat native with a key (protocol v3); the secret by variable,
        # as the README asks, not on the command line.
        protocol=native
        local key=()
        [ "$name" = roomchat-rs256 ] && key=(--auth-public-key tests/keys/rsa-public.pem)
        (
            [ "$name" = roomchat-hs256 ] && export CHAT_AUTH_HMAC_SECRET="$(cat "$tmp/hmac-secret")"
            RUST_LOG=${RUST_LOG:-warn} exec "${pin[@]}" "$SERVER" --host 127.0.0.1 \
                --http-port 0 --ws-port 0 --rate-limit off --max-connections 20000 "${key[@]}"
        ) >"$tmp/out" 2>>"$log" &
        ;;
    seed-socketio)
        protocol=peer
        (cd "$PEERS_DIR/seed-socketio" && export PORT=0 HOST=127.0.0.1 &&
            exec "${pin[@]}" node server.js) >"$tmp/out" 2>>"$log" &
        ;;
    socketioxide-chat)
        protocol=peer
        PORT=0 HOST=127.0.0.1 "${pin[@]}" "$PEERS_DIR/socketioxide-chat/target/release/socketioxide-chat" \
            >"$tmp/out" 2>>"$log" &
        ;;
    *)
        echo "bench: unknown server $name" >&2
        exit 2
        ;;
    esac
    server_pid=$!
    for _ in $(seq 150); do
        grep -q 'listening on' "$tmp/out" && break
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    url=$(grep -o 'ws://[^ )",]*' "$tmp/out" | head -n 1 || true)
    [ -n "$url" ] || url=$(grep -o 'http://[^ )",]*' "$tmp/out" | head -n 1 || true)
    if [ -z "$url" ]; then
        echo "bench: $name printed no listening line within 15 s; see $log" >&2
        exit 2
    fi
    urls=(--url "$url")
}

# case_ LABEL PINNED SCENARIO ARGS...: every server, RUNS times, interleaved
# (run 1 of every server, then run 2 ...) so that a change in the machine's
# background load falls on all of them alike. A failed roomchat run fails
# `make bench`; a peer's run only counts as a warning.
case_() {
    local label=$1 pinned=$2
    shift 2
    local gen=()
    [ "$pinned" = pinned ] && gen=(taskset -c 1)
    for i in $(seq "$RUNS"); do
        for s in $ALL; do
            echo "bench: $label $s run $i/$RUNS" >&2
            start_server "$s" "$pinned"
            local pid=() tokens=()
            [ -n "$server_pid" ] && pid=(--server-pid "$server_pid")
            case $s in
            roomchat-hs256 | roomchat-rs256) tokens=(--tokens "$tmp/tokens-${s#roomchat-}") ;;
            esac
            if ! "${gen[@]}" "$BENCH" "$@" "${tokens[@]}" "${urls[@]}" "${pid[@]}" \
                --protocol "$protocol" --server-name "$s" --label "$label" \
                --json-out "$results" >"$tmp/run.txt"; then
                case $s in
                roomchat-*) failures=$((failures + 1)) ;;
                *) peer_failures=$((peer_failures + 1)) ;;
                esac
            fi
            grep -v '^{' "$tmp/run.txt" >&2 || true
            stop_server
        done
    done
}

pinned_too() { [[ " $PIN " == *" $1 "* ]]; }

# threads DEFAULT: the generator's --threads for a fan-out case (THREADS, else DEFAULT).
threads() { echo "--threads ${THREADS:-$1}"; }

# Every case sends the same frames to every server: no acks (the window is
# driven by the sender's own copy of the broadcast), plain-text messages
# "<sender>:<n>:<nanos>".
for c in $CASES; do
    case $c in
    light)
        for p in $PIN; do
            case_ "light-1x100-$p" "$p" fanout --rooms 1 --members 100 --senders 10 \
                --rate 100 --messages "$(awk "BEGIN{print int($LIGHT_SECS * 10)}")" --flow echo \
                $(threads 1)
        done
        ;;
    fanout)
        for p in $PIN; do
            case_ "fanout-1x100-$p" "$p" fanout --rooms 1 --members 100 --senders 10 \
                --window 8 --duration "$SECS" --messages 100000000 --flow echo $(threads 1)
        done
        ;;
    fanout10)
        case_ fanout-10x100 shared fanout --rooms 10 --members 100 --senders 1 \
            --window 8 --duration "$SECS" --messages 100000000 --flow echo $(threads 1)
        ;;
    mid)
        # Issue 21's mid-size mix: several rooms of a few hundred, several
        # senders each, texts of a few hundred bytes.
        case_ fanout-4x250 shared fanout --rooms 4 --members 250 --senders 4 \
            --text-bytes 300 --window 8 --duration "$SECS" --messages 100000000 --flow echo \
            $(threads 1)
        ;;
    big)
        for p in $PIN; do
            t=2
            [ "$p" = pinned ] && t=1 # one core for the generator
            case_ "fanout-1x1000-$p" "$p" fanout --rooms 1 --members 1000 --senders 1 \
                --rate 400 --messages "$(awk "BEGIN{print int($BIG_SECS * 400)}")" \
                $(threads "$t") --flow echo --timeout 90
        done
        ;;
    conns)
        case_ "conns-$CONNS" shared conns --conns "$CONNS" --rooms 100 --connect-rate 2500 \
            --settle 10
        ;;
    auth)
        # Identity (v3): the same 10,000 clients as `conns`, each with its
        # own token, connecting as fast as the server admits them (at most
        # 100 handshakes in flight), against the server without a key. The
        # tokens are signed before the runs (RS256 signing is slow), with
        # the test key pair in tests/keys and a random secret.
        head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/hmac-secret"
        "$BENCH" tokens --alg hs256 --key "$tmp/hmac-secret" --count "$CONNS" \
            --out "$tmp/tokens-hs256"
        "$BENCH" tokens --alg rs256 --key tests/keys/rsa-private.pem --count "$CONNS" \
            --out "$tmp/tokens-rs256"
        saved=$ALL
        ALL="roomchat-native roomchat-hs256 roomchat-rs256"
        case_ "auth-$CONNS" shared conns --conns "$CONNS" --rooms 100 \
            --connect-rate 1000000 --hold 1 --settle 10
        ALL=$saved
        for i in $(seq "$RUNS"); do
            echo "bench: verify run $i/$RUNS" >&2
            "$BENCH" verify --hmac-secret "$tmp/hmac-secret" \
                --rsa-private tests/keys/rsa-private.pem --rsa-public tests/keys/rsa-public.pem \
                --ec-private tests/keys/ec-private.pem --ec-public tests/keys/ec-public.pem \
                --json-out "$results" >/dev/null
        done
        ;;
    churn)
        case_ churn shared churn --duration "$CHURN_SECS" --clients 32 --rooms 10 --flow echo
        ;;
    cluster)
        # roomchat as one node and as 2 nodes + Redis, interleaved run by
        # run; members are dealt round-robin over the nodes (50 + 50), so
        # every message crosses Redis to both. Shared cores only: three
        # processes and the generator share the machine's two.
        saved=$ALL
        ALL="roomchat-native roomchat-cluster"
        case_ cluster-fanout-1x100 shared fanout --rooms 1 --members 100 --senders 10 \
            --window 8 --duration "$SECS" --messages 100000000 --flow echo
        case_ cluster-light-1x100 shared fanout --rooms 1 --members 100 --senders 10 \
            --rate 100 --messages "$(awk "BEGIN{print int($LIGHT_SECS * 10)}")" --flow echo
        ALL=$saved
        ;;
    *)
        echo "bench: unknown case $c (light fanout fanout10 mid big conns auth churn cluster)" >&2
        exit 2
        ;;
    esac
done

if [ "$SWEEP" = 1 ]; then
    # Open-loop load sweep of roomchat alone, for the plot: 3 seconds per rate.
    saved=$ALL
    ALL=roomchat-native
    for rate in 100 300 1000 3000 10000 20000 30000 40000 50000; do
        RUNS=1 case_ "load-$rate" shared fanout --rooms 1 --members 100 --senders 10 \
            --rate "$rate" --messages $((rate * 3 / 10)) --timeout 30
    done
    ALL=$saved
fi

rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain -- src Cargo.toml 2>/dev/null)" ]; then
    rev="$rev with uncommitted changes to the server"
fi
versions="node $(node --version 2>/dev/null || echo -), socket.io $(
    sed -n 's/.*"version": "\(.*\)".*/\1/p' "$PEERS_DIR/seed-socketio/node_modules/socket.io/package.json" 2>/dev/null | head -n 1 || true
), socketioxide $(
    grep -A1 '^name = "socketioxide"$' "$PEERS_DIR/socketioxide-chat/Cargo.lock" 2>/dev/null | sed -n 's/version = "\(.*\)"/\1/p' || true
)"
if [ -n "$peers_ok" ]; then
    measured="roomchat $rev and its peers ($versions)"
else
    measured="roomchat $rev"
fi
measured="$measured, $(date -u +%Y-%m-%d), $RUNS run(s) per case and server, medians"
summary_args=(--measured "$measured" --command "$command_line")
"$BENCH" summary "$results" "${summary_args[@]}" >"$OUT/summary-$stamp.md"
if [ -n "$DOC" ] && grep -q "<!-- $DOC_SECTION:begin -->" "$DOC" 2>/dev/null; then
    "$BENCH" summary "$results" "${summary_args[@]}" --doc "$DOC" --section "$DOC_SECTION" >/dev/null
fi
if [ "$SWEEP" = 1 ] && grep -q '"label":"load-' "$results"; then
    "$BENCH" plot "$results" --prefix load- --out docs/latency-vs-load.svg
fi
cat "$OUT/summary-$stamp.md"
echo "bench: results in $results, tables in $OUT/summary-$stamp.md" >&2
if [ "$peer_failures" -gt 0 ]; then
    echo "bench: $peer_failures peer run(s) failed (a member never joined or was dropped): see above" >&2
fi
if [ "$failures" -gt 0 ]; then
    echo "bench: $failures roomchat run(s) FAILED (loss, errors or leaks): see above" >&2
    exit 1
fi
