#!/usr/bin/env bash
# Vendor the official Socket.IO browser client bundle at a pinned version.
#
#   scripts/update-socketio-client.sh 4.8.4
#
# Fetches socket.io-client@VERSION with `npm pack` into a temporary folder,
# checks the tarball's sha512 against the registry's dist.integrity, then
# copies the six dist/ bundles (socket.io.js, socket.io.min.js,
# socket.io.esm.min.js and their .map) and LICENSE into
# vendor/socket.io-client/, and rewrites the version and integrity lines of
# its README.md. Review with `git diff --stat vendor/socket.io-client` and
# commit the result; bump tests/node/package.json to the same version so the
# Node tests drive the client the server serves.
set -euo pipefail

usage() { echo "usage: $0 VERSION   (e.g. $0 4.8.4)" >&2; exit 2; }
[ $# -eq 1 ] || usage
version="$1"
# An exact version only: a range or tag would make the vendored copy unreproducible.
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] || usage

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/vendor/socket.io-client"
files=(socket.io.js socket.io.js.map socket.io.min.js socket.io.min.js.map
       socket.io.esm.min.js socket.io.esm.min.js.map)

for tool in npm node tar timeout; do
    command -v "$tool" >/dev/null || { echo "update-socketio-client: needs $tool" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The registry's word on what the tarball must hash to.
expected="$(timeout 120 npm view "socket.io-client@$version" dist.integrity)"
[[ "$expected" == sha512-* ]] || {
    echo "update-socketio-client: no sha512 integrity for socket.io-client@$version (got: '$expected')" >&2
    exit 1
}

# A cache of our own, so a stale or shared ~/.npm cannot hand us another tarball.
tarball_name="$(cd "$work" && timeout 300 npm pack "socket.io-client@$version" \
    --cache "$work/npm-cache" --pack-destination "$work" --silent | tail -n 1)"
tarball="$work/$tarball_name"
[ -f "$tarball" ] || { echo "update-socketio-client: npm pack made no tarball" >&2; exit 1; }

# node comes with npm; it gives the digest in the registry's base64 form.
actual="$(node -e '
const h = require("crypto").createHash("sha512");
h.update(require("fs").readFileSync(process.argv[1]));
process.stdout.write("sha512-" + h.digest("base64"));' "$tarball")"
if [ "$actual" != "$expected" ]; then
    echo "update-socketio-client: integrity mismatch for $tarball_name" >&2
    echo "  registry: $expected" >&2
    echo "  tarball:  $actual" >&2
    exit 1
fi

mkdir -p "$work/x"
timeout 60 tar -xzf "$tarball" -C "$work/x"
pkg="$work/x/package"
got="$(sed -n 's/^  "version": "\([^"]*\)".*/\1/p' "$pkg/package.json" | head -n 1)"
[ "$got" = "$version" ] || { echo "update-socketio-client: tarball is version '$got', not $version" >&2; exit 1; }
for f in "${files[@]}"; do
    [ -s "$pkg/dist/$f" ] || { echo "update-socketio-client: dist/$f missing from the tarball" >&2; exit 1; }
done
[ -s "$pkg/LICENSE" ] || { echo "update-socketio-client: LICENSE missing from the tarball" >&2; exit 1; }

mkdir -p "$dest"
for f in "${files[@]}"; do
    install -m 0644 "$pkg/dist/$f" "$dest/$f"
done
install -m 0644 "$pkg/LICENSE" "$dest/LICENSE"

readme="$dest/README.md"
if [ -f "$readme" ]; then
    # The two lines the README keeps for this script; everything else is prose.
    sed -i -e "s/^Version: .*/Version: $version/" \
           -e "s|^Integrity: .*|Integrity: $expected|" "$readme"
    grep -q "^Version: $version\$" "$readme" && grep -qF "Integrity: $expected" "$readme" || {
        echo "update-socketio-client: README.md lacks the 'Version:' / 'Integrity:' lines; fix it by hand" >&2
        exit 1
    }
else
    echo "update-socketio-client: $readme missing; write it (see git history)" >&2
    exit 1
fi

echo "vendored socket.io-client@$version ($expected) into ${dest#"$root"/}"
