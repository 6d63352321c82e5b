#!/usr/bin/env bash
# make fuzz: runs each cargo-fuzz target (libFuzzer) for a bounded time.
#
#   scripts/fuzz.sh                 every target, FUZZ_SECONDS (60) each
#   FUZZ_SECONDS=300 scripts/fuzz.sh registry
#
# Toolchain: cargo-fuzz needs nightly-only rustc flags (-Zsanitizer,
# -Cpasses=sancov). The project's machines have one stable toolchain and
# cannot fetch another, so we use that stable compiler with
# RUSTC_BOOTSTRAP=1, which unlocks those flags; set FUZZ_TOOLCHAIN=nightly
# to use a real nightly where there is one. cargo-fuzz itself comes from
# crates.io (cargo install) when missing.
#
# The committed seeds in fuzz/corpus/<target>/ are read, never written: new
# inputs go to fuzz/scratch/<target>/ (ignored by git). A crash leaves its
# input in fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"
seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame registry token)

# Shared machines serialize cargo through this lock (see the project's notes);
# without flock, run as is.
lock=()
if command -v flock >/dev/null; then lock=(flock /tmp/roomchat-cargo.lock); fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz from crates.io" >&2
    "${lock[@]}" cargo install cargo-fuzz --locked
fi

toolchain=()
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
    toolchain=("+$FUZZ_TOOLCHAIN")
else
    export RUSTC_BOOTSTRAP=1
fi

# Build under the lock; the runs themselves need no lock.
for t in "${targets[@]}"; do
    "${lock[@]}" cargo "${toolchain[@]}" fuzz build "$t"
done
host="$(rustc "${toolchain[@]}" -vV | sed -n 's/^host: //p')"

status=0
for t in "${targets[@]}"; do
    mkdir -p "scratch/$t" "artifacts/$t"
    log="scratch/$t.log"
    echo "fuzz: $t for ${seconds}s" >&2
    # -rss_limit_mb: a 1 GiB allocation from a length header would show as an OOM crash.
    # The binary cargo-fuzz built, run directly (so no cargo runs outside the lock).
    if "target/$host/release/$t" "scratch/$t" "corpus/$t" \
        -max_total_time="$seconds" -rss_limit_mb=1024 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
        result=ok
    else
        result=FAILED
        status=1
    fi
    execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' || true)
    speed=$(grep -E '^stat::average_exec_per_sec' "$log" | awk '{print $2}' || true)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | awk '{print $2}' || true)
    corpus=$(ls "scratch/$t" | wc -l)
    echo "fuzz: $t $result: ${execs:-?} execs in ${seconds}s (${speed:-?}/s), coverage ${cov:-?} edges, ${corpus} new corpus inputs; log $root/fuzz/$log"
    if [ "$result" = FAILED ]; then
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -n 10 >&2 || true
    fi
done
exit $status
