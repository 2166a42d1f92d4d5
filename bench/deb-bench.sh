#!/usr/bin/env bash
# The Debian path of issue 12, two binaries side by side in one run:
# `kiln build recipes/python.toml --locked` rebuilt with nothing changed
# (every layer a cache hit), and `kiln lock recipes/python.toml` (which
# locks its base, base-images/debian-static.toml, first), against the real
# Debian mirror (KILN_MIRROR_<ARCHIVE> / KILN_DEBIAN_MIRROR, or the host's
# apt sources, as scripts/examples-check.sh does). Run as root, by hand:
#
#   KILN_BEFORE=/path/to/old/kiln bench/deb-bench.sh   # RUNS=5 by default
#
# Each binary has its own store, built cold once; then the warm rebuilds
# alternate between the binaries and the best wall time of RUNS is shown,
# with its peak RSS, and the number of files it opened, copied and linked
# (one extra run under strace). Locks run warm (indexes in the store) and
# must write the same lockfiles.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
KILN=$(realpath "${KILN_BIN:-target/release/kiln}")
BEFORE=${KILN_BEFORE:-}
RUNS=${RUNS:-5}
WORK=$(mktemp -d /tmp/kiln-deb-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export KILN_NO_PROGRESS=1
tools=(kiln)
declare -A bin=([kiln]=$KILN)
if [[ -n $BEFORE ]]; then
    tools+=(kiln-before)
    bin[kiln-before]=$(realpath "$BEFORE")
fi
cp -r recipes base-images "$WORK/"
cd "$WORK"

# "wall_seconds peak_rss_kib" of one run (wall to the millisecond).
measure() {
    local start end
    start=$(date +%s%N)
    /usr/bin/time -f '%M' -o "$WORK/time" "$@" >/dev/null 2>"$WORK/err" ||
        { cat "$WORK/err" >&2; exit 1; }
    end=$(date +%s%N)
    echo "$((end - start)) $(cat "$WORK/time")" | awk '{ printf "%.3f %s\n", $1 / 1e9, $2 }'
}

best() { sort -n | head -1; }

for t in "${tools[@]}"; do
    KILN_CACHE="$WORK/c-$t" "${bin[$t]}" build recipes/python.toml --locked --out "$WORK/o-$t" >"$WORK/d-$t" 2>/dev/null
done
for _ in $(seq "$RUNS"); do
    for t in "${tools[@]}"; do
        KILN_CACHE="$WORK/c-$t" measure "${bin[$t]}" build recipes/python.toml --locked --out "$WORK/o-$t" >>"$WORK/warm-$t"
        KILN_CACHE="$WORK/lock" measure "${bin[$t]}" lock recipes/python.toml >>"$WORK/lock-$t"
    done
done
echo "| case | tool | wall s (best of $RUNS) | peak RSS MiB | opened | copied | linked | digest |"
echo "|------|------|------:|------:|------:|------:|------:|------|"
for t in "${tools[@]}"; do
    KILN_CACHE="$WORK/c-$t" strace -f -qq -o "$WORK/strace-$t" -e trace=openat,copy_file_range,sendfile,link,linkat \
        "${bin[$t]}" build recipes/python.toml --locked --out "$WORK/o-$t" >"$WORK/d2-$t" 2>/dev/null
    [[ $(tail -1 "$WORK/d-$t") == $(tail -1 "$WORK/d2-$t") ]] || { echo "$t: warm digest differs" >&2; exit 1; }
    opened=$(grep -c ' openat(' "$WORK/strace-$t" || true)
    copied=$(grep -c -E ' (copy_file_range|sendfile)\(' "$WORK/strace-$t" || true)
    linked=$(grep -c -E ' link(at)?\(' "$WORK/strace-$t" || true)
    read -r wall rss < <(best <"$WORK/warm-$t")
    printf '| warm python build | %s | %.3f | %d | %s | %s | %s | %s |\n' "$t" "$wall" $((rss / 1024)) \
        "$opened" "$copied" "$linked" "$(tail -1 "$WORK/d-$t" | cut -c1-19)…"
done
for t in "${tools[@]}"; do
    echo "$t lock runs (wall s, peak RSS KiB): $(tr '\n' ' ' <"$WORK/lock-$t")" >&2
    read -r wall rss < <(best <"$WORK/lock-$t")
    peak=$(sort -k2 -n "$WORK/lock-$t" | tail -1 | cut -d' ' -f2)
    printf '| python lock | %s | %.2f | %d (max of runs %d) | | | | |\n' "$t" "$wall" $((rss / 1024)) $((peak / 1024))
done
for f in recipes/python.lock base-images/debian-static.lock; do
    cmp -s "$f" "$OLDPWD/$f" || echo "note: $f differs from the committed one (the mirror moved on?)" >&2
done
