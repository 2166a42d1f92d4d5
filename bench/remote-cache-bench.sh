#!/usr/bin/env bash
# kiln shared-cache benchmark (a benchmark, not a test: it asserts nothing about speed).
#
# One recipe, one local registry (Debian's docker-registry on 127.0.0.1),
# every run on an empty store, wall time and peak RSS for:
#   cold         kiln build, no cache: every layer compressed here
#   cold+push    kiln build --cache --cache-sign-key: compressed here, then
#                pushed to the cache with signed records
#   remote       kiln build --cache on another empty store: every layer
#                downloaded from the cache, verified (digest, diff_id against
#                the record and against the local inputs' tar), nothing compressed
#   remote-signed  the same with --cache-key (the signing key's public half):
#                every layer taken on its blob's digest and the signed record
#   download     curl fetching the same layer blobs to /dev/null: the floor
# and checks that the four builds print the same digest.
#
# Usage:  bench/remote-cache-bench.sh
#
# Environment:
#   BENCH_DIR   where bench/build-bench.sh works (default /tmp/kiln-bench);
#               its `tree` is used when present, else a 256 MiB tree is made
#   KILN_BIN    use this kiln binary instead of `cargo build --release`
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${BENCH_DIR:-/tmp/kiln-bench}

log() { printf '[remote-cache-bench] %s\n' "$*" >&2; }
die() { printf '[remote-cache-bench] error: %s\n' "$*" >&2; exit 1; }

need=()
[[ -x /usr/bin/time ]] || need+=(time)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v curl >/dev/null || need+=(curl)
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
install_missing "${need[@]}"
KILN=$(realpath "$(kiln_binary "$REPO")")

WORK=$(mktemp -d /tmp/kiln-remote-cache-bench.XXXXXX)
REG_PID=
cleanup() {
    if [[ -n $REG_PID ]]; then kill "$REG_PID" 2>/dev/null; wait "$REG_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

if [[ -d $DIR/tree ]]; then
    TREE=$DIR/tree
else
    TREE=$WORK/tree
    log "no $DIR/tree: making a 256 MiB tree (half random, half text)"
    mkdir -p "$TREE"
    for i in $(seq 8); do head -c 16M /dev/urandom >"$TREE/random$i"; done
    for i in $(seq 8); do head -c 12M /dev/urandom | base64 >"$TREE/text$i"; done
fi
cat >"$WORK/bench.toml" <<EOF
name = "remote-cache-bench"

[[layers]]
trees = [{ src = "$TREE", dest = "/data" }]
EOF

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$WORK/storage"
cat >"$WORK/config.yml" <<YML
version: 0.1
log: { level: error }
storage: { filesystem: { rootdirectory: $WORK/storage } }
http: { addr: 127.0.0.1:$port }
YML
docker-registry serve "$WORK/config.yml" >"$WORK/registry.log" 2>&1 &
REG_PID=$!
REG=127.0.0.1:$port
for _ in $(seq 100); do
    curl -fs "http://$REG/v2/" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fs "http://$REG/v2/" >/dev/null || die "the registry did not start: $(cat "$WORK/registry.log")"

ROWS=()
measure() { # case -- command…
    local case=$1
    shift 2
    /usr/bin/time -f '%e %M' -o "$WORK/time" "$@" >"$WORK/$case.out" 2>"$WORK/$case.err" \
        || die "$case failed: $(tail -5 "$WORK/$case.err")"
    read -r wall rss <"$WORK/time"
    ROWS+=("$case $wall $((rss / 1024))")
}

export KILN_NO_PROGRESS=1
cd "$WORK"
# warm the page cache so no run pays for the first read of the tree
tar cf - -C "$TREE" . >/dev/null
measure cold -- env KILN_CACHE="$WORK/s0" "$KILN" build bench.toml --out o0 --json
env -u KILN_PASSWORD "$KILN" keygen --out "$WORK/fleet" --quiet >/dev/null
measure cold+push -- env KILN_CACHE="$WORK/s1" "$KILN" build bench.toml --out o1 --json --cache "$REG/bench/cache" --cache-sign-key "$WORK/fleet.key"
measure remote -- env KILN_CACHE="$WORK/s2" "$KILN" build bench.toml --out o2 --json --cache "$REG/bench/cache"
measure remote-signed -- env KILN_CACHE="$WORK/s3" "$KILN" build bench.toml --out o3 --json --cache "$REG/bench/cache" --cache-key "$WORK/fleet.pub"
mapfile -t blobs < <(python3 -c 'import json,sys; [print(l["digest"]) for l in json.load(open(sys.argv[1]))["layers"]]' remote.out)
urls=()
for b in "${blobs[@]}"; do urls+=("http://$REG/v2/bench/cache/blobs/$b"); done
measure download -- curl -fsS -o /dev/null "${urls[@]}"

digest() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["digest"])' "$1"; }
sources=$(python3 -c 'import json,sys; print(",".join(l["source"] for l in json.load(open(sys.argv[1]))["layers"]))' remote.out)
bytes=$(python3 -c 'import json,sys; print(sum(l["size"] for l in json.load(open(sys.argv[1]))["layers"]))' remote.out)

printf '\ntree %s MiB, %s MiB of layer blobs\n' "$(($(du -sb "$TREE" | cut -f1) / 1048576))" "$((bytes / 1048576))"
printf '%-14s %10s %12s\n' case "wall s" "peak MiB"
for r in "${ROWS[@]}"; do
    read -r c w m <<<"$r"
    printf '%-14s %10s %12s\n' "$c" "$w" "$m"
done
printf '\nremote layers came from: %s\n' "$sources"
signed=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["cache"]["signed"])' remote-signed.out)
printf 'remote-signed: %s layers taken on the fleet key'"'"'s signature\n' "$signed"
d0=$(digest cold.out) d1=$(digest cold+push.out) d2=$(digest remote.out) d3=$(digest remote-signed.out)
if [[ $d0 == "$d1" && $d1 == "$d2" && $d2 == "$d3" ]]; then
    printf 'digests: all four %s\n' "${d0:7:12}"
else
    printf 'digests DIFFER: cold %s, cold+push %s, remote %s, remote-signed %s\n' "${d0:7:12}" "${d1:7:12}" "${d2:7:12}" "${d3:7:12}"
    exit 1
fi
rw= sw= dw=
for r in "${ROWS[@]}"; do
    read -r c w _ <<<"$r"
    [[ $c == remote ]] && rw=$w
    [[ $c == remote-signed ]] && sw=$w
    [[ $c == download ]] && dw=$w
done
awk -v r="$rw" -v d="$dw" 'BEGIN { if (d > 0) printf "remote / download wall: %.2f× (every entry checked against the local inputs)\n", r / d }'
awk -v r="$sw" -v d="$dw" 'BEGIN { if (d > 0) printf "remote-signed / download wall: %.2f× (target ≤ 1.1×)\n", r / d }'
