#!/usr/bin/env bash
# Copies the benchmark peers out of the shared folder (read-only) into
# target/peers/ and builds them there: seed-socketio with `npm ci`,
# socketioxide-chat with `cargo build --release --locked` as a workspace of
# its own (its own Cargo.lock and target dir, not a member of ours).
#
#   PEERS_SRC=/work/shared/peers   where the peers are (default: ../shared/peers
#                                  beside the repo, else /work/shared/peers)
#   PEERS_DIR=target/peers         where they are copied and built
#
# A copy is refreshed when its source changed; npm ci runs again only when
# package-lock.json changed. Prints nothing on stdout; exits non-zero when a
# peer cannot be built.
set -euo pipefail
cd "$(dirname "$0")/../.."

src=${PEERS_SRC:-}
if [ -z "$src" ]; then
    for d in ../shared/peers /work/shared/peers; do
        [ -d "$d" ] && src=$d && break
    done
fi
if [ -z "$src" ] || [ ! -d "$src" ]; then
    echo "build-peers: no peers folder (set PEERS_SRC)" >&2
    exit 2
fi
dir=${PEERS_DIR:-target/peers}
mkdir -p "$dir"

copy() { # copy NAME: the source tree, without build output, made writable
    local name=$1
    mkdir -p "$dir/$name"
    # tar keeps it to the files themselves; node_modules/ and target/ stay ours.
    (cd "$src/$name" && tar --exclude=./node_modules --exclude=./target -cf - .) |
        (cd "$dir/$name" && tar -xf - --no-same-owner)
    chmod -R u+w "$dir/$name"
}

build_seed() {
    local d=$dir/seed-socketio
    copy seed-socketio
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        echo "build-peers: seed-socketio needs node and npm (apt-get install nodejs npm)" >&2
        return 1
    fi
    local sum
    sum=$(sha256sum "$d/package-lock.json" | cut -d' ' -f1)
    if [ ! -d "$d/node_modules" ] || [ "$(cat "$d/.lock-sum" 2>/dev/null)" != "$sum" ]; then
        echo "build-peers: npm ci in $d" >&2
        (cd "$d" && npm ci --no-audit --no-fund --loglevel=error >&2)
        echo "$sum" >"$d/.lock-sum"
    fi
}

build_sxd() {
    local d=$dir/socketioxide-chat
    copy socketioxide-chat
    # Our repository's Cargo.toml is a workspace root above this copy; an empty
    # [workspace] table makes the copy a workspace of its own.
    # Its mtime stays the source's, so an unchanged peer is not rebuilt.
    grep -q '^\[workspace\]' "$d/Cargo.toml" || printf '\n[workspace]\n' >>"$d/Cargo.toml"
    touch -r "$src/socketioxide-chat/Cargo.toml" "$d/Cargo.toml"
    echo "build-peers: cargo build --release in $d" >&2
    cargo build --release --locked --quiet --manifest-path "$d/Cargo.toml" \
        --target-dir "$d/target" >&2
}

want=${1:-"seed-socketio socketioxide-chat"}
for p in $want; do
    case $p in
    seed-socketio) build_seed ;;
    socketioxide-chat) build_sxd ;;
    *) echo "build-peers: unknown peer $p" >&2; exit 2 ;;
    esac
done
