#!/usr/bin/env bash
# kiln push benchmark (a benchmark, not a test: it asserts nothing about speed).
#
# Pushes one OCI layout to a local registry (Debian's docker-registry on
# 127.0.0.1, fresh storage for every cold run) and prints wall time and peak
# RSS for:
#   cold   every blob is new to the registry
#   warm   every blob is already there (only HEADs and the manifest)
# for `kiln push` and, as the baseline, `skopeo copy oci:… docker://…`.
#
# Usage:  bench/push-bench.sh                  # the layout bench/build-bench.sh built
#         LAYOUT=out/hello bench/push-bench.sh # any OCI layout
#
# Environment:
#   BENCH_DIR   where bench/build-bench.sh works (default /tmp/kiln-bench);
#               its kiln output `out` is the default layout
#   LAYOUT      the OCI layout to push (default $BENCH_DIR/out)
#   KILN_BIN    use this kiln binary instead of `cargo build --release`
#   KILN_BEFORE another kiln binary (say, of the previous commit) measured in
#               the same run, as the row `kiln-before`
#   RUNS        warm runs per tool; the fastest is reported (default 5)
#
# Columns: wall (GNU time %e), cpu (%U + %S, user + system, less sensitive
# than wall to other load on the machine), peak RSS (%M). Each cold run
# gets a fresh registry; the load average is printed before and after.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${BENCH_DIR:-/tmp/kiln-bench}
LAYOUT=${LAYOUT:-$DIR/out}

log() { printf '[push-bench] %s\n' "$*" >&2; }
die() { printf '[push-bench] error: %s\n' "$*" >&2; exit 1; }

[[ -f $LAYOUT/oci-layout ]] || die "no OCI layout at $LAYOUT: run bench/build-bench.sh first, or set LAYOUT"
need=()
[[ -x /usr/bin/time ]] || need+=(time)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
install_missing "${need[@]}"
KILN=$(kiln_binary "$REPO")

WORK=$(mktemp -d /tmp/kiln-push-bench.XXXXXX)
REG_PID=
cleanup() {
    if [[ -n $REG_PID ]]; then kill "$REG_PID" 2>/dev/null; wait "$REG_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A fresh registry (new storage, new port) for each cold run.
start_registry() {
    [[ -n $REG_PID ]] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null || true
    local port storage
    port=$(free_port)
    storage=$WORK/storage-$port
    mkdir -p "$storage"
    cat >"$WORK/config.yml" <<YML
version: 0.1
log: { level: error }
storage: { filesystem: { rootdirectory: $storage } }
http: { addr: 127.0.0.1:$port }
YML
    docker-registry serve "$WORK/config.yml" >"$WORK/registry.log" 2>&1 &
    REG_PID=$!
    REG=127.0.0.1:$port
    for _ in $(seq 100); do
        curl -fs "http://$REG/v2/" >/dev/null 2>&1 && return
        sleep 0.1
    done
    die "the registry did not start: $(cat "$WORK/registry.log")"
}

ROWS=()
measure() { # case tool -- command…
    local case=$1 tool=$2
    shift 3
    local runs=1 best=
    [[ $case == warm ]] && runs=${RUNS:-5}
    for _ in $(seq "$runs"); do
        /usr/bin/time -f '%e %M %U %S' -o "$WORK/time" "$@" >"$WORK/out.log" 2>&1 \
            || die "$tool $case failed: $(tail -5 "$WORK/out.log")"
        read -r wall rss user sys <"$WORK/time"
        cpu=$(python3 -c "print(f'{$user+$sys:.2f}')")
        if [[ -z $best ]] || python3 -c "import sys; sys.exit(not $wall < ${best%% *})"; then
            best="$wall $cpu $((rss / 1024))"
        fi
    done
    ROWS+=("$case $tool $best")
}

SIZE=$(du -sb "$LAYOUT/blobs" | cut -f1)
REF=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))["manifests"][0]; print(m.get("annotations",{}).get("org.opencontainers.image.ref.name",""))' "$LAYOUT/index.json")
SRC="oci:$LAYOUT${REF:+:$REF}"
log "layout $LAYOUT: $((SIZE / 1048576)) MiB of blobs"
export KILN_CACHE=$WORK/cache KILN_NO_PROGRESS=1

log "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
kiln_case() { # tool binary
    rm -rf "$KILN_CACHE"
    start_registry
    measure cold "$1" -- "$2" push "$LAYOUT" "$REG/bench:kiln"
    measure warm "$1" -- "$2" push "$LAYOUT" "$REG/bench:kiln"
}
kiln_case kiln "$KILN"
[[ -n ${KILN_BEFORE:-} ]] && kiln_case kiln-before "$KILN_BEFORE"
start_registry
measure cold skopeo -- skopeo copy --dest-tls-verify=false "$SRC" "docker://$REG/bench:skopeo"
measure warm skopeo -- skopeo copy --dest-tls-verify=false "$SRC" "docker://$REG/bench:skopeo"
log "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

printf '\n| case | tool | wall s | cpu s | peak RSS MiB | x/skopeo wall | x/skopeo cpu |\n'
printf '|------|------|-------:|------:|-------------:|--------------:|-------------:|\n'
for r in "${ROWS[@]}"; do
    read -r c t w u m <<<"$r"
    read -r sw su _ < <(printf '%s\n' "${ROWS[@]}" | awk -v c="$c" '$1==c && $2=="skopeo" {print $3, $4}')
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$c" "$t" "$w" "$u" "$m" \
        "$(python3 -c "print(f'{$w/max($sw,0.001):.2f}')")" "$(python3 -c "print(f'{$u/max($su,0.001):.2f}')")"
done

