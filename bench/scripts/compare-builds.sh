#!/usr/bin/env bash
# Several roomchat builds side by side, alternating run by run in one session
# (run 1 of every build, then run 2 ...), shared cores. The bench starts each
# server itself (--server-bin), so each run gets a fresh one, and stops it.
#
#   bench/scripts/compare-builds.sh [RUNS] BUILD...
#
# A BUILD is a server binary, or a git commit: its tree is exported with
# `git archive` into $COMPARE_DIR/<commit>/src and built there
# (`cargo build --release -p roomchat`, one target dir shared by every
# commit, $COMPARE_DIR/target, so dependencies are built once); the binary is
# kept as $COMPARE_DIR/<commit>/roomchat and not built again. The first BUILD
# is the reference of the ratios.
#   e.g. bench/scripts/compare-builds.sh 3 c0d012e cd9f44a HEAD
# RUNS 0 only builds.
#
# Knobs (environment):
#   CASES="fanout light"   of: fanout (1 x 100, 10 senders, window 8),
#                     fanout10 (10 x 100, one sender each, window 8),
#                     big (1 x 1000, one sender at 400 msg/s for BIG_SECS s, 2
#                     generator threads), light (1 x 100, 100 msg/s), mid
#                     (4 x 250, 4 senders each, 300-byte texts), churn,
#                     conns (CONNS idle connections, as in make bench)
#   THREADS=          generator threads in the fan-out cases (default 1; big 2)
#   SECS=3 BIG_SECS=3 CHURN_SECS=6
#   COMPARE_DIR=$CARGO_TARGET_DIR/compare (default target/compare)
#   BENCH_LOCK=/tmp/roomchat-cargo.lock   held for each build, and for all the
#                     runs together, so that no build competes for the CPU
#
# Prints one line per case and build (medians, every run's figure, the ratio
# to the first build) and keeps the JSON lines in bench/results/.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=3
if [[ ${1:-} =~ ^[0-9]+$ ]]; then runs=$1; shift; fi
[ $# -gt 0 ] || { echo "usage: $0 [RUNS] BUILD..." >&2; exit 2; }
CASES=${CASES:-"fanout light"}
THREADS=${THREADS:-}
SECS=${SECS:-3}
BIG_SECS=${BIG_SECS:-3}
CHURN_SECS=${CHURN_SECS:-6}
CONNS=${CONNS:-10000}
TARGET=${CARGO_TARGET_DIR:-target}
COMPARE_DIR=${COMPARE_DIR:-$TARGET/compare}
BENCH_LOCK=${BENCH_LOCK-/tmp/roomchat-cargo.lock}
bench=$TARGET/release/roomchat-bench
locked() { if [ -n "$BENCH_LOCK" ]; then flock "$BENCH_LOCK" "$@"; else "$@"; fi; }

# Each BUILD becomes a binary and a name for the tables.
bins=()
names=()
for b in "$@"; do
    if [ -x "$b" ] && [ -f "$b" ]; then
        bins+=("$b")
        names+=("$b")
        continue
    fi
    sha=$(git rev-parse --verify --quiet "$b^{commit}") || {
        echo "compare-builds: $b is neither a binary nor a commit" >&2
        exit 2
    }
    short=$(git rev-parse --short "$sha")
    dir=$COMPARE_DIR/$short
    if [ ! -x "$dir/roomchat" ]; then
        echo "compare-builds: building $short in $dir" >&2
        rm -rf "$dir/src"
        mkdir -p "$dir/src"
        # -m: files dated now, not at the commit, so that cargo (whose
        # fingerprints are mtimes, in a target dir shared with the other
        # commits) sees them as newer than the last commit's build.
        git archive "$sha" | tar -x -m -C "$dir/src"
        locked cargo build --release --quiet -p roomchat \
            --manifest-path "$dir/src/Cargo.toml" --target-dir "$COMPARE_DIR/target"
        cp "$COMPARE_DIR/target/release/roomchat" "$dir/roomchat"
    fi
    bins+=("$dir/roomchat")
    names+=("roomchat-$short")
done

if [ "$runs" = 0 ]; then
    echo "compare-builds: built ${names[*]}; RUNS 0, nothing run" >&2
    exit 0
fi
mkdir -p bench/results
out=bench/results/compare-$(date -u +%Y%m%dT%H%M%SZ).jsonl
if [ -n "$BENCH_LOCK" ]; then
    exec 9>"$BENCH_LOCK"
    echo "compare-builds: waiting for $BENCH_LOCK" >&2
    flock 9
fi
# shellcheck source=bench/scripts/limits.sh
. bench/scripts/limits.sh
raise_limits "$CONNS"
trap restore_maps EXIT
t() { echo "--threads ${THREADS:-$1}"; }
for i in $(seq "$runs"); do
    for c in $CASES; do
        for k in "${!bins[@]}"; do
            bin=${bins[$k]} name=${names[$k]}
            common=(--server-bin "$bin" --server-name "$name" --json-out "$out")
            echo "compare-builds: $c $name run $i/$runs" >&2
            case $c in
            fanout) args=(fanout --label fanout-1x100 --rooms 1 --members 100 --senders 10
                --window 8 --duration "$SECS" --messages 100000000 --flow echo $(t 1)) ;;
            fanout10) args=(fanout --label fanout-10x100 --rooms 10 --members 100 --senders 1
                --window 8 --duration "$SECS" --messages 100000000 --flow echo $(t 1)) ;;
            big) args=(fanout --label fanout-1x1000 --rooms 1 --members 1000 --senders 1
                --rate 400 --messages "$(awk "BEGIN{print int($BIG_SECS * 400)}")" --flow echo
                --timeout 90 $(t 2)) ;;
            mid) args=(fanout --label fanout-4x250 --rooms 4 --members 250 --senders 4
                --text-bytes 300 --window 8 --duration "$SECS" --messages 100000000 --flow echo
                $(t 1)) ;;
            conns) args=(conns --label "conns-$CONNS" --conns "$CONNS" --rooms 100
                --connect-rate 2500 --settle 10) ;;
            light) args=(fanout --label light-1x100 --rooms 1 --members 100 --senders 10
                --rate 100 --messages 40 --flow echo $(t 1)) ;;
            churn) args=(churn --label churn --duration "$CHURN_SECS" --clients 32 --rooms 10
                --flow echo) ;;
            *) echo "compare-builds: unknown case $c" >&2; exit 2 ;;
            esac
            "$bench" "${args[@]}" "${common[@]}" >/dev/null || echo "FAIL $c $name run $i" >&2
        done
    done
done
python3 "$(dirname "$0")/medians.py" "$out" "${names[@]}"
echo "compare-builds: results in $out" >&2
