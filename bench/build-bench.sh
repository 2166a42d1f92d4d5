#!/usr/bin/env bash
# kiln build benchmark (a benchmark, not a test: it asserts nothing about speed).
#
# Builds a one-layer image from a ~1 GiB, ~50,000-file tree with kiln and with
# the peers in the same run (umoci, `tar | pigz -6 -p2`, `tar | zstd -3 -T2`,
# optionally `tar | gzip`), and prints wall time, CPU and peak RSS for:
#   cold     kiln: fresh KILN_CACHE and --out
#   noop     kiln: same cache, nothing changed
#   changed  kiln: same cache, one file's content changed (gzip: only the
#            chunks holding it are compressed again)
#   mid      kiln: same cache, a file in the middle of the tree changed, the
#            second such change in a row (the chunks before it are taken up
#            from the last build's blob without reading their files; the
#            first change brings the blob they come from into the page cache)
# kiln-zstd is the same recipe with `compression = "zstd"` (cold only), and
# the remote-cache case (BENCH_REMOTE=1, the default) runs
# bench/remote-cache-bench.sh on the same tree. A last table compares each
# figure with issue 12's target.
#
# Usage:  bench/build-bench.sh                       # full run (~1 GiB, ~50k files)
#         BENCH_MB=50 BENCH_FILES=2000 bench/build-bench.sh   # quick run
#
# Environment:
#   BENCH_DIR    work dir (default /tmp/kiln-bench); the tree is reused when its
#                parameters match, everything else is rebuilt each run
#   BENCH_MB     tree size in MiB (default 1024)
#   BENCH_FILES  number of files in the tree (default 50000)
#   KILN_BIN     use this kiln binary instead of running `cargo build --release`
#   BENCH_TOOLS  which tools to run (default "kiln kiln-zstd umoci pigz zstd";
#                "tar" adds single-threaded `tar | gzip -6`; "kiln" alone
#                checks how kiln's time and memory scale with BENCH_MB/FILES)
#   BENCH_PAIRS  how many interleaved pairs (kiln, peer, kiln, peer, ...) the
#                target ratios are measured in again after the one-run table
#                (default 3; 0 skips them and the targets use the one run)
#   BENCH_REMOTE=0  skip the remote-cache case
#   BENCH_NO_UMOCI_REPACK=1  skip the extra `umoci repack` rows
#
# Peak RSS is GNU time's %M: the largest resident set of the process or of any
# one of its waited-for descendants (for `tar | gzip` the larger of the two,
# not their sum). All runs read the tree from a warm page cache.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${BENCH_DIR:-/tmp/kiln-bench}
MB=${BENCH_MB:-1024}
FILES=${BENCH_FILES:-50000}
TOOLS=" ${BENCH_TOOLS:-kiln kiln-zstd umoci pigz zstd} "
GEN_VERSION=1

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

[[ $MB =~ ^[0-9]+$ && $MB -ge 1 ]] || die "BENCH_MB must be a positive integer"
[[ $FILES =~ ^[0-9]+$ && $FILES -ge 10 ]] || die "BENCH_FILES must be an integer >= 10"
command -v python3 >/dev/null || die "python3 is needed to generate the tree"

# --- tools -----------------------------------------------------------------
want() { [[ $TOOLS == *" $1 "* ]]; }
need=()
[[ -x /usr/bin/time ]] || need+=(time)
want umoci && ! command -v umoci >/dev/null && need+=(umoci)
command -v gzip >/dev/null || need+=(gzip)
want pigz && ! command -v pigz >/dev/null && need+=(pigz)
want zstd && ! command -v zstd >/dev/null && need+=(zstd)
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
install_missing "${need[@]}"

[[ -n ${KILN_BIN:-} ]] || log "cargo build --release"
KILN=$(kiln_binary "$REPO")
[[ -x $KILN ]] || die "no kiln binary at $KILN"
KILN=$(realpath "$KILN")

mkdir -p "$DIR"
DIR=$(realpath "$DIR")
cd "$DIR"

# --- the tree ----------------------------------------------------------------
# About 70% of the files and 60% of the bytes are copied from /usr (text and
# binaries as found there); the rest is generated: one big file (1/8 of the
# size, to show whether memory follows file size) and many small-to-medium
# files, half compressible text and half random bytes. Generation is seeded,
# so a tree of given parameters is the same on every run on one machine.
stamp="v$GEN_VERSION mb=$MB files=$FILES"
if [[ -d tree && -f tree.stamp && $(cat tree.stamp) == "$stamp" ]]; then
    log "reusing $DIR/tree ($stamp)"
else
    log "generating $DIR/tree ($stamp)"
    rm -rf tree tree.stamp changed.orig
    python3 - "$MB" "$FILES" <<'PY'
import os, random, shutil, sys

mb, nfiles = int(sys.argv[1]), int(sys.argv[2])
total = mb << 20
rng = random.Random(20261125)
root = "tree"
os.makedirs(root)

# 1. copy regular files from /usr
max_copy = 16 << 20
cands = []
for top in ("/usr/share", "/usr/lib", "/usr/bin"):
    for d, dirs, names in os.walk(top):
        dirs.sort()
        for n in sorted(names):
            p = os.path.join(d, n)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if (st.st_mode & 0o170000) == 0o100000 and 0 < st.st_size <= max_copy \
                    and os.access(p, os.R_OK):
                cands.append((p, st.st_size))
want_files = int(nfiles * 0.7)
want_bytes = int(total * 0.6)
step = max(1, len(cands) // max(1, want_files))
copied = copied_bytes = 0
for p, size in cands[::step]:
    if copied >= want_files:
        break
    if copied_bytes + size > want_bytes:
        continue
    dst = os.path.join(root, p.lstrip("/"))
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        shutil.copy2(p, dst)
    except OSError:
        continue
    copied += 1
    copied_bytes += size

# 2. generated files
gen = nfiles - copied
rest = max(0, total - copied_bytes)
big = min(rest, total // 8)
vocab = ["".join(rng.choice("etaoinshrdlucmfwypvbgkjqxz") for _ in range(rng.randint(2, 10)))
         for _ in range(5000)]
weights = [1.0 / (i + 1) for i in range(len(vocab))]
lines = []
while sum(map(len, lines)) < (4 << 20):
    words = rng.choices(vocab, weights, k=4000)
    lines.append("\n".join(" ".join(words[i:i + 10]) for i in range(0, len(words), 10)) + "\n")
text = "".join(lines).encode()

def text_bytes(n):
    out = bytearray()
    while len(out) < n:
        off = rng.randrange(len(text))
        out += text[off:off + n - len(out)]
    return bytes(out)

def write(path, data, mode):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)

n = 0
if big > 0:
    with open(os.path.join(root, "big.bin"), "wb") as f:
        left = big
        while left:
            chunk = min(left, 8 << 20)
            f.write(rng.randbytes(chunk))
            left -= chunk
    n = 1
small = gen - n
if small > 0:
    raw = [2 ** rng.uniform(6, 22) for _ in range(small)]   # 64 B .. 4 MiB, log-uniform
    scale = (rest - big) / sum(raw)
    for i, r in enumerate(raw):
        size = max(0, int(r * scale))
        d = os.path.join(root, "gen", "%02d" % (i // 10000), "%02d" % (i // 100 % 100))
        if i % 2 == 0:
            write(os.path.join(d, "f%06d.txt" % i), text_bytes(size), 0o644)
        else:
            write(os.path.join(d, "f%06d.bin" % i), rng.randbytes(size), 0o755 if i % 10 == 1 else 0o644)
print("copied %d files (%d MiB) from /usr, generated %d files (%d MiB)"
      % (copied, copied_bytes >> 20, gen, rest >> 20), file=sys.stderr)
PY
    echo "$stamp" >tree.stamp
fi

CHANGED=tree/gen/00/00/f000000.txt
[[ -f $CHANGED ]] || die "$CHANGED missing from the tree"
[[ -f changed.orig ]] || cp -p "$CHANGED" changed.orig
tree_files=$(find tree -type f | wc -l)
tree_mib=$(find tree -type f -printf '%s\n' | awk '{s += $1} END {printf "%d", s / 1048576}')
log "tree: $tree_files files, $tree_mib MiB"

# A file half way through the tree in the order a layer holds it.
MID=tree/$(cd tree && find . -type f | LC_ALL=C sort | sed -n "$((tree_files / 2))p" | cut -c3-)
[[ -f mid.orig ]] && cp -p mid.orig "$MID"
restore() { cp -p changed.orig "$CHANGED"; }
change1() { cp -p changed.orig "$1"; printf 'changed by build-bench.sh\n' >>"$1"; }

cat >bench.toml <<'EOF'
name = "bench"

[[layers]]
trees = [{ src = "tree", dest = "/data" }]
EOF
cat >bench-zstd.toml <<'EOF'
name = "bench"
compression = "zstd"

[[layers]]
trees = [{ src = "tree", dest = "/data" }]
EOF

load0=$(cut -d' ' -f1-3 /proc/loadavg)
# warm the page cache so no tool pays for the first read of the tree
tar -cf - tree | cat >/dev/null

# --- measuring -----------------------------------------------------------------
RESULTS=()   # "case tool wall_s rss_kib out_bytes cpu_s"
out_bytes() {  # out_bytes PATH | LAYOUT:TAG -> bytes of a file, a dir, or one image in an OCI layout
    case $1 in
    *:*) python3 - "${1%%:*}" "${1#*:}" <<'PY'
import json, os, sys
layout, tag = sys.argv[1:]
def blob(d):
    return os.path.join(layout, "blobs", *d.split(":"))
for m in json.load(open(os.path.join(layout, "index.json")))["manifests"]:
    if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
        man = json.load(open(blob(m["digest"])))
        print(m["size"] + man["config"]["size"] + sum(l["size"] for l in man["layers"]))
        break
else:
    print(0)
PY
        ;;
    *) if [[ -e $1 ]]; then du -sb "$1" | cut -f1; else echo 0; fi ;;
    esac
}
measure() {  # measure CASE TOOL OUT_PATH -- CMD...
    local case=$1 tool=$2 out=$3; shift 4
    local tf=$DIR/logs/$tool-$case.time lf=$DIR/logs/$tool-$case.log
    if ! /usr/bin/time -f '%e %M %U %S' -o "$tf" "$@" >"$lf" 2>&1; then
        cat "$tf" >&2 || true
        tail -n 30 "$lf" >&2
        die "$tool ($case) failed; full log: $lf"
    fi
    local wall rss usr sys cpu
    read -r wall rss usr sys < <(tail -n 1 "$tf")
    cpu=$(awk -v u="$usr" -v s="$sys" 'BEGIN {printf "%.2f", u + s}')
    local bytes
    bytes=$(out_bytes "$out")
    RESULTS+=("$case $tool $wall $rss $bytes $cpu")
    log "$(printf '%-8s %-13s %8ss wall %8ss cpu %8.1f MiB' "$case" "$tool" "$wall" "$cpu" "$(echo "$rss" | awk '{print $1/1024}')")"
}
keep_median() {  # keep_median CASE TOOL: of that case's rows, keeps the median wall's
    local r rc rt rw keep=() rows=() kept
    for r in "${RESULTS[@]}"; do
        read -r rc rt rw _ <<<"$r"
        if [[ $rc == "$1" && $rt == "$2" ]]; then rows+=("$r"); else keep+=("$r"); fi
    done
    kept=$(printf '%s\n' "${rows[@]}" | sort -g -k3,3 | sed -n "$(((${#rows[@]} + 1) / 2))p")
    RESULTS=("${keep[@]}" "$kept")
}
rm -rf logs && mkdir logs

# kiln
if want kiln; then
restore
rm -rf cache out
export KILN_NO_PROGRESS=1
kiln=(env KILN_CACHE="$DIR/cache" "$KILN" build bench.toml --out "$DIR/out")
measure cold    kiln out -- "${kiln[@]}"
# A no-op takes a quarter of a second, so one run's noise is large against
# the 0.3 s target: the median of three is kept.
for _ in 1 2 3; do measure noop kiln out -- "${kiln[@]}"; done
keep_median noop kiln
change1 "$CHANGED"
measure changed kiln out -- "${kiln[@]}"
restore
cp -p "$MID" mid.orig
printf 'changed by build-bench.sh\n' >>"$MID"
"${kiln[@]}" >"$DIR/logs/kiln-mid-first.log" 2>&1 || die "kiln (mid, first) failed; log: $DIR/logs/kiln-mid-first.log"
printf 'changed again by build-bench.sh\n' >>"$MID"
measure mid kiln out -- "${kiln[@]}"
cp -p mid.orig "$MID"
fi

if want kiln-zstd; then
rm -rf cache-zstd out-zstd
kz=(env KILN_CACHE="$DIR/cache-zstd" KILN_NO_PROGRESS=1 "$KILN" build bench-zstd.toml --out "$DIR/out-zstd")
measure cold    kiln-zstd out-zstd -- "${kz[@]}"
rm -rf cache-zstd
fi

# umoci: no layer cache, so every case inserts the whole tree into the empty
# base image (the same one-layer image shape as kiln's), each under its own tag.
if want umoci; then
rm -rf oci bundle
umoci init --layout oci
umoci new --image oci:base
measure cold    umoci oci:t-cold    -- umoci insert --image oci:base --tag t-cold tree /data
measure noop    umoci oci:t-noop    -- umoci insert --image oci:base --tag t-noop tree /data
change1 "$CHANGED"
measure changed umoci oci:t-changed -- umoci insert --image oci:base --tag t-changed tree /data
restore

# umoci's own incremental path (extra rows): unpack the cold image once
# (untimed), then `umoci repack` diffs the bundle against its mtree and appends
# a delta layer to the image (out = the whole image, base layer + deltas).
if [[ -z ${BENCH_NO_UMOCI_REPACK:-} ]]; then
    umoci unpack --image oci:t-cold bundle >/dev/null
    measure noop    umoci-repack oci:t-cold -- umoci repack --image oci:t-cold bundle
    change1 bundle/rootfs/data/${CHANGED#tree/}
    measure changed umoci-repack oci:t-cold -- umoci repack --image oci:t-cold bundle
    rm -rf bundle
fi
fi

# tar | gzip: no cache, the same work in every case
tgz=(bash -o pipefail -c 'tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - tree | gzip -n >x.tar.gz')
if want tar; then
measure cold    tar x.tar.gz -- "${tgz[@]}"
measure noop    tar x.tar.gz -- "${tgz[@]}"
change1 "$CHANGED"
measure changed tar x.tar.gz -- "${tgz[@]}"
restore
fi

# tar | pigz and tar | zstd, the parallel compressors: no cache either
tpigz=(bash -o pipefail -c 'tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - tree | pigz -6 -p2 -n >x.tar.pigz')
tzstd=(bash -o pipefail -c 'tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - tree | zstd -3 -T2 -q >x.tar.zst')
want pigz && measure cold pigz x.tar.pigz -- "${tpigz[@]}"
want zstd && measure cold zstd x.tar.zst -- "${tzstd[@]}"
rm -f x.tar.gz x.tar.pigz x.tar.zst

# --- paired runs for the target ratios ------------------------------------------
# One run per case is noisy on a shared 2-CPU machine (one peer took 2.1 s in
# one run and 2.8 s in the next here). Each ratio a target names is measured
# again in BENCH_PAIRS interleaved pairs, kiln then the peer, and the target
# table takes the median of the per-pair ratios.
PAIRS=${BENCH_PAIRS:-3}
PAIRED=()   # "name pairs median_ratio median_kiln_s median_peer_s"
timed() {  # timed CMD...: runs CMD, prints its wall seconds
    if ! /usr/bin/time -f '%e' -o "$DIR/logs/paired.time" "$@" >"$DIR/logs/paired.log" 2>&1; then
        tail -n 20 "$DIR/logs/paired.log" >&2
        return 1
    fi
    tail -n 1 "$DIR/logs/paired.time"
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%.3f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
paired() {  # paired NAME KILN_FN PEER_FN: each function prepares untimed, then runs `timed`
    local name=$1 i a b as=() bs=() rs=()
    for ((i = 1; i <= PAIRS; i++)); do
        a=$("$2" "$i") || die "paired $name: kiln failed; log: $DIR/logs/paired.log"
        b=$("$3" "$i") || die "paired $name: the peer failed; log: $DIR/logs/paired.log"
        as+=("$a") bs+=("$b") rs+=("$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.4f", a / b }')")
    done
    PAIRED+=("$name $PAIRS $(median "${rs[@]}") $(median "${as[@]}") $(median "${bs[@]}")")
    log "$(printf 'paired %-14s kiln %s s, peer %s s, ratios %s' "$name" "${as[*]}" "${bs[*]}" "${rs[*]}")"
}
pkiln() {  # pkiln RECIPE: kiln into the paired store and output
    timed env KILN_CACHE="$DIR/pcache" KILN_NO_PROGRESS=1 "$KILN" build "$1" --out "$DIR/pout"
}
p_kiln_cold() { rm -rf pcache pout; sync; pkiln bench.toml; }
p_kiln_zstd() { rm -rf pcache pout; sync; pkiln bench-zstd.toml; }
# One more line in the changed file each time: every run is a build after
# one file changed, on the store the run before it left.
p_kiln_changed() { printf 'changed by build-bench.sh, pair %s\n' "$1" >>"$CHANGED"; sync; pkiln bench.toml; }
p_umoci() {
    rm -rf poci
    umoci init --layout poci >/dev/null && umoci new --image poci:base >/dev/null
    sync
    timed umoci insert --image poci:base --tag t tree /data
}
p_zstd() { rm -f x.tar.zst; sync; timed "${tzstd[@]}"; }
if [[ $PAIRS -gt 0 ]] && want kiln && want umoci; then
    paired gzip-cold p_kiln_cold p_umoci
    restore
    rm -rf pcache pout
    pkiln bench.toml >/dev/null || die "the paired store's first build failed"
    paired changed p_kiln_changed p_umoci
    restore
fi
if [[ $PAIRS -gt 0 ]] && want kiln-zstd && want zstd; then
    paired zstd-cold p_kiln_zstd p_zstd
fi
rm -rf pcache pout poci x.tar.zst
pfig() {  # pfig NAME -> the median ratio of its pairs, or empty
    local r n k
    for r in "${PAIRED[@]}"; do
        read -r n k <<<"$r"
        [[ $n == "$1" ]] && awk '{ print $2 }' <<<"$k"
    done
}

REMOTE_TABLE=
if want kiln && [[ ${BENCH_REMOTE:-1} != 0 ]]; then
    log "remote cache: bench/remote-cache-bench.sh on the same tree"
    REMOTE_TABLE=$(BENCH_DIR="$DIR" KILN_BIN="$KILN" bash "$REPO/bench/remote-cache-bench.sh" 2>"$DIR/logs/remote.log") \
        || { tail -n 30 "$DIR/logs/remote.log" >&2; die "remote-cache-bench.sh failed"; }
fi

# --- report --------------------------------------------------------------------
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
mem=$(awk '/^MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)
rev=$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)
echo
echo "## kiln build benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "- machine: $(nproc) CPUs ($cpu), $mem RAM; load average at start: $load0, at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- kiln: $rev ($KILN)"
echo "- tree: $tree_files files, $tree_mib MiB (BENCH_MB=$MB BENCH_FILES=$FILES); changed file: ${CHANGED#tree/}; mid file: ${MID#tree/}"
echo "- kiln: \`KILN_CACHE=cache KILN_NO_PROGRESS=1 kiln build bench.toml --out out\`; cold = fresh cache and out"
want umoci && echo "- umoci $(umoci --version | awk '{print $3}'): no cache, so every case is \`umoci insert --image oci:base --tag t-CASE tree /data\`"
want umoci && echo "  into an empty base image (closest to kiln's one-layer build from the source tree)"
want umoci && [[ -z ${BENCH_NO_UMOCI_REPACK:-} ]] && echo "- umoci-repack (extra): \`umoci repack\` of an unpacked bundle, umoci's incremental path (delta layer; unpack untimed)"
want tar && echo "- tar: \`tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - tree | gzip -n > x.tar.gz\`, same work in every case"
if want kiln; then
kd() { grep -o '^sha256:[0-9a-f]\{64\}' "logs/kiln-$1.log" | tail -n 1 || echo none; }
kcold=$(kd cold) knoop=$(kd noop) kchanged=$(kd changed)
echo "- kiln image digests: cold ${kcold:7:12}, noop ${knoop:7:12} ($([[ $kcold == "$knoop" ]] && echo same as cold || echo "DIFFERS from cold: a no-op rebuild must give the same digest")), changed ${kchanged:7:12} ($([[ $kchanged != "$kcold" ]] && echo differs, as it must || echo "SAME as cold: the change was missed"))"
fi
echo "- wall: GNU time %e; cpu: %U + %S (user + system, less sensitive than wall to other load on the machine);"
echo "  peak RSS: GNU time %M (largest single process); out: size of the output after the run"
echo "- noop: the median of three runs in a row"
echo
printf '| %-7s | %-12s | %8s | %7s | %13s | %8s | %11s | %10s | %10s |\n' case tool "wall s" "cpu s" "peak RSS MiB" "out MiB" "kiln/x wall" "kiln/x cpu" "kiln/x RSS"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' --------- -------------- ---------: --------: --------------: ---------: ------------: -----------: -----------:
for c in cold noop changed mid; do
    kw= kr= kc=
    for r in "${RESULTS[@]}"; do
        read -r rc rt rw rr rb rcpu <<<"$r"
        [[ $rc == "$c" && $rt == kiln ]] && kw=$rw kr=$rr kc=$rcpu
    done
    for r in "${RESULTS[@]}"; do
        read -r rc rt rw rr rb rcpu <<<"$r"
        [[ $rc == "$c" ]] || continue
        awk -v c="$rc" -v t="$rt" -v w="$rw" -v r="$rr" -v b="$rb" -v u="$rcpu" -v kw="$kw" -v kr="$kr" -v kc="$kc" '
        function ratio(k, x) { return (x > 0 && k != "") ? sprintf("%.2f", k / x) : "n/a" }
        BEGIN {
            if (t == "kiln") { xw = xr = xc = "-" }
            else { xw = ratio(kw, w); xr = ratio(kr, r); xc = ratio(kc, u) }
            printf "| %-7s | %-12s | %8.2f | %7.2f | %13.1f | %8.1f | %11s | %10s | %10s |\n", c, t, w, u, r / 1024, b / 1048576, xw, xc, xr
        }'
    done
done

# --- against issue 12's targets ------------------------------------------------------
fig() {  # fig CASE TOOL FIELD(wall|rss|out|cpu) -> the figure, or empty
    local r rc rt rw rr rb rcpu
    for r in "${RESULTS[@]}"; do
        read -r rc rt rw rr rb rcpu <<<"$r"
        [[ $rc == "$1" && $rt == "$2" ]] || continue
        case $3 in wall) echo "$rw" ;; rss) echo "$rr" ;; out) echo "$rb" ;; cpu) echo "$rcpu" ;; esac
    done
}
target() {  # target WHAT VALUE LIMIT UNIT
    awk -v w="$1" -v v="$2" -v l="$3" -v u="$4" 'BEGIN {
        if (v == "") { printf "| %s | n/a | %s%s | not measured |\n", w, l, u; exit }
        printf "| %s | %.2f%s | %s%s | %s |\n", w, v, u, l, u, (v <= l ? "met" : "NOT met")
    }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b != "" && b > 0) printf "%.3f", a / b }'; }
if [[ ${#PAIRED[@]} -gt 0 ]]; then
    echo
    echo "### Paired runs (kiln, peer, kiln, peer, ...; medians)"
    echo
    echo "| ratio | pairs | kiln wall s | peer wall s | median of kiln / peer |"
    echo "|---|---:|---:|---:|---:|"
    for r in "${PAIRED[@]}"; do
        read -r n k rr ka pb <<<"$r"
        case $n in
        gzip-cold) peer="umoci insert" ;; changed) peer="umoci insert (changed tree)" ;; zstd-cold) peer="tar \\| zstd -3 -T2" ;; *) peer=$n ;;
        esac
        printf '| %s vs %s | %s | %.2f | %.2f | %.2f× |\n' "$n" "$peer" "$k" "$ka" "$pb" "$rr"
    done
fi
echo
echo "### Against the targets"
echo
echo "Ratios are the paired medians above where those ran, else the one-run table's."
echo
echo "| target | measured | limit | |"
echo "|---|---:|---:|---|"
# A ratio: the median of its pairs when they ran, else the one run's.
either() { if [[ -n $1 ]]; then echo "$1"; else echo "$2"; fi; }
target "gzip cold, kiln / umoci wall" "$(either "$(pfig gzip-cold)" "$(ratio "$(fig cold kiln wall)" "$(fig cold umoci wall)")")" 0.5 "×"
target "gzip output, kiln / umoci size" "$(ratio "$(fig cold kiln out)" "$(fig cold umoci out)")" 1.05 "×"
target "zstd cold, kiln / tar \\\\| zstd -T2 wall" "$(either "$(pfig zstd-cold)" "$(ratio "$(fig cold kiln-zstd wall)" "$(fig cold zstd wall)")")" 1.0 "×"
target "one file changed, kiln / umoci wall" "$(either "$(pfig changed)" "$(ratio "$(fig changed kiln wall)" "$(fig cold umoci wall)")")" 0.15 "×"
target "nothing changed, kiln wall" "$(fig noop kiln wall)" 0.3 " s"
rss_max=$(for c in cold noop changed mid; do fig "$c" kiln rss; done | sort -n | tail -n 1)
# The issue's limit is 150 MB: 143.05 MiB.
target "kiln gzip peak RSS (any case)" "$(awk -v r="$rss_max" 'BEGIN { if (r != "") printf "%.1f", r / 1024 }')" 143.05 " MiB"
target "kiln zstd peak RSS (cold)" "$(awk -v r="$(fig cold kiln-zstd rss)" 'BEGIN { if (r != "") printf "%.1f", r / 1024 }')" 143.05 " MiB"
if [[ -n $REMOTE_TABLE ]]; then
    echo
    echo "### Remote cache (bench/remote-cache-bench.sh, same tree)"
    echo
    echo "$REMOTE_TABLE"
fi
