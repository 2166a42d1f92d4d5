#!/usr/bin/env bash
# An end-to-end check against the real Debian mirror (from KILN_DEBIAN_MIRROR
# or the host's apt sources). Not part of scripts/test.sh: the tests use only
# loopback addresses. Run it by hand (as root) after changing Debian support:
#
#   scripts/mirror-check.sh
#
# It locks debian-static twice (the lockfiles must be identical), builds
# debian-busybox twice from two stores (the digests must match), runs
# `busybox echo ok` in it with runc, and rebuilds it --offline.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/sbin:/sbin"
KILN=${KILN_BIN:-target/release/kiln}
[[ -n ${KILN_BIN:-} ]] || cargo build --release --quiet
WORK=$(mktemp -d /tmp/kiln-mirror-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
say() { printf '[mirror-check] %s\n' "$*" >&2; }
export KILN_NO_PROGRESS=1

say "lock debian-static twice"
cp base-images/debian-static.toml "$WORK/static.toml"
KILN_CACHE=$WORK/c1 "$KILN" lock "$WORK/static.toml" >/dev/null
cp "$WORK/static.lock" "$WORK/first.lock"
KILN_CACHE=$WORK/c2 "$KILN" lock "$WORK/static.toml" >/dev/null
cmp "$WORK/first.lock" "$WORK/static.lock" || { say "FAIL: the two lockfiles differ"; exit 1; }

say "build debian-busybox from two stores"
d1=$(KILN_CACHE=$WORK/c1 "$KILN" build base-images/debian-busybox.toml --locked --out "$WORK/o1" | tail -1)
d2=$(cd "$WORK" && KILN_CACHE=$WORK/c2 "$OLDPWD/$KILN" build "$OLDPWD/base-images/debian-busybox.toml" --locked --out "$WORK/o2" | tail -1)
[[ $d1 == "$d2" ]] || { say "FAIL: digests differ: $d1 $d2"; exit 1; }

say "run busybox echo ok with runc"
skopeo copy --quiet "oci:$WORK/o1:bookworm" "oci:$WORK/amd64:x" >/dev/null
umoci unpack --image "$WORK/amd64:x" "$WORK/bundle" >/dev/null
python3 - "$WORK/bundle/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/busybox", "echo", "ok"]
json.dump(c, open(sys.argv[1], "w"))
PY
out=$(cd "$WORK/bundle" && runc run "kiln-mirror-check-$$")
[[ $out == ok ]] || { say "FAIL: busybox printed '$out'"; exit 1; }

say "rebuild --offline with no mirror"
d3=$(KILN_CACHE=$WORK/c1 KILN_DEBIAN_MIRROR=http://127.0.0.1:9 "$KILN" build base-images/debian-busybox.toml --offline --out "$WORK/o3" | tail -1)
[[ $d3 == "$d1" ]] || { say "FAIL: the offline build differs: $d3"; exit 1; }
say "ok: $d1"
