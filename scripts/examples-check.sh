#!/usr/bin/env bash
# Builds the Debian example recipes (recipes/nginx.toml, python.toml,
# java.toml) from their committed locks against the real Debian mirror (from
# KILN_MIRROR_<ARCHIVE> / KILN_DEBIAN_MIRROR or the host's apt sources), runs
# each with runc and checks what it does. Not part of scripts/test.sh: the
# tests use only loopback addresses and small packages of their own. Run it by
# hand, as root, after changing Debian support:
#
#   scripts/examples-check.sh            # all three
#   scripts/examples-check.sh python     # one
#
# For each example it prints lock and build times, cold (empty store) and
# warm (same store, nothing changed), and the digest; the two builds must give
# the same digest. It also re-locks a copy of each recipe: a lock that comes
# out different only means the mirror moved on (a security update), and is
# reported, not failed. With syft on PATH it compares the python image's
# package list with syft's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/sbin:/sbin"
KILN=$(realpath "${KILN_BIN:-target/release/kiln}")
[[ -n ${KILN_BIN:-} ]] || cargo build --release --quiet
WORK=$(mktemp -d /tmp/kiln-examples.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
say() { printf '[examples] %s\n' "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }
export KILN_NO_PROGRESS=1
examples=("$@")
[[ ${#examples[@]} -gt 0 ]] || examples=(nginx python java)

# Seconds (to the millisecond) a command takes; its stdout goes to $2.
timed() {
    local out=$1
    shift
    local start end
    start=$(date +%s.%N)
    "$@" >"$out"
    end=$(date +%s.%N)
    python3 -c "print(f'{$end - $start:.2f}')"
}

# An OCI runtime bundle for the image in layout $1 (one platform), with the
# container sharing the host's network so that a server can be reached on
# 127.0.0.1, and the process not on a terminal.
bundle() {
    local layout=$1 dir=$2
    umoci unpack --image "$layout:v1" "$dir" >/dev/null
    python3 - "$dir/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["process"]["terminal"] = False
c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] != "network"]
json.dump(c, open(sys.argv[1], "w"))
PY
}

check_nginx() {
    local dir=$1
    (cd "$dir" && runc run --detach "kiln-ex-nginx-$$" >/dev/null 2>"$WORK/nginx.err") ||
        fail "nginx did not start: $(cat "$WORK/nginx.err")"
    local page=""
    for _ in $(seq 50); do
        page=$(curl -fsS http://127.0.0.1:8080/ 2>/dev/null) && break
        sleep 0.1
    done
    local user
    user=$(ps -o user= -p "$(runc state "kiln-ex-nginx-$$" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')")
    runc kill "kiln-ex-nginx-$$" KILL 2>/dev/null || true
    sleep 0.3
    runc delete --force "kiln-ex-nginx-$$" >/dev/null 2>&1 || true
    [[ $page == "$(cat recipes/nginx/site/index.html)" ]] || fail "nginx served '$page'"
    [[ $user == www-data || $user == 33 ]] || fail "nginx ran as $user, not www-data"
    say "nginx: served index.html on 127.0.0.1:8080 as $user"
}

check_python() {
    local dir=$1 out
    out=$(cd "$dir" && runc run "kiln-ex-python-$$")
    python3 - "$out" <<'PY' || fail "python printed: $out"
import json, sys
r = json.loads(sys.argv[1])
assert r["user"] == "nonroot" and r["uid"] == 65532, r
assert r["ca_certificates"] > 100 and r["sqlite"] == 42 and r["zlib"] == "ok", r
PY
    say "python: $out"
}

check_java() {
    local dir=$1 out
    out=$(cd "$dir" && runc run "kiln-ex-java-$$")
    [[ $out =~ user\ nonroot\ trusted\ issuers\ ([0-9]+)\ isrg-root-x1\ true ]] || fail "java printed: $out"
    ((BASH_REMATCH[1] > 100)) || fail "java trusts only ${BASH_REMATCH[1]} issuers"
    say "java: $out"
}

cp -r recipes base-images "$WORK/"
for ex in "${examples[@]}"; do
    recipe=recipes/$ex.toml
    [[ -f $recipe ]] || fail "no example $recipe"
    say "$ex: lock a copy, cold then warm"
    lock_cold=$(timed "$WORK/$ex.lock-out" env KILN_CACHE="$WORK/lock-$ex" "$KILN" lock "$WORK/$recipe")
    lock_warm=$(timed "$WORK/$ex.lock-out" env KILN_CACHE="$WORK/lock-$ex" "$KILN" lock "$WORK/$recipe")
    if ! cmp -s "recipes/$ex.lock" "$WORK/recipes/$ex.lock"; then
        say "$ex: the mirror has moved since recipes/$ex.lock was written (kiln lock --update would take):"
        diff -u "recipes/$ex.lock" "$WORK/recipes/$ex.lock" | grep '^[-+]version' >&2 || true
    fi
    say "$ex: build --locked, cold then warm"
    build_cold=$(timed "$WORK/$ex.d1" env KILN_CACHE="$WORK/c-$ex" "$KILN" build "$recipe" --locked --out "$WORK/o-$ex")
    build_warm=$(timed "$WORK/$ex.d2" env KILN_CACHE="$WORK/c-$ex" "$KILN" build "$recipe" --locked --out "$WORK/o-$ex")
    d1=$(tail -1 "$WORK/$ex.d1")
    d2=$(tail -1 "$WORK/$ex.d2")
    [[ $d1 == "$d2" ]] || fail "$ex: cold and warm builds differ: $d1 $d2"
    bundle "$WORK/o-$ex" "$WORK/b-$ex"
    "check_$ex" "$WORK/b-$ex"
    printf '%s\tlock cold %ss warm %ss\tbuild cold %ss warm %ss\t%s\n' \
        "$ex" "$lock_cold" "$lock_warm" "$build_cold" "$build_warm" "$d1"
    if [[ $ex == python ]] && command -v syft >/dev/null; then
        syft -q "oci-dir:$WORK/o-$ex" -o json |
            python3 -c 'import json,sys; print("\n".join(sorted({a["name"] + " " + a["version"] for a in json.load(sys.stdin)["artifacts"] if a["type"] == "deb"})))' >"$WORK/syft.txt"
        KILN_CACHE="$WORK/c-$ex" "$KILN" sbom "$WORK/o-$ex" |
            python3 -c 'import json,sys; print("\n".join(sorted({p["name"] + " " + p["versionInfo"] for p in json.load(sys.stdin)["packages"] if p["SPDXID"] != "SPDXRef-Image"})))' >"$WORK/kiln.txt"
        if diff "$WORK/syft.txt" "$WORK/kiln.txt" >&2; then
            say "python: syft and kiln list the same $(wc -l <"$WORK/kiln.txt") Debian packages"
        else
            fail "python: syft's and kiln's package lists differ (above: < syft, > kiln)"
        fi
    fi
done
