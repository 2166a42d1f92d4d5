#!/usr/bin/env bash
# Fetches a real `cosign` binary for the tests, which use it as an independent
# verifier of what kiln signs. Debian bookworm ships no cosign; trixie's
# package depends only on libc and runs on bookworm.
#
#   scripts/fetch-cosign.sh DEST_DIR            # trixie's cosign (2.x); prints DEST_DIR/usr/bin/cosign
#   scripts/fetch-cosign.sh DEST_DIR unstable   # unstable's cosign (3.x), into its own DEST_DIR
#
# It reads the Debian mirror the host's apt already uses, points a private apt
# configuration (its own sources, lists, cache and state, all under a temp
# dir) at that mirror's trixie suite, downloads the cosign .deb with InRelease
# signatures checked against the system's Debian archive keyring, and unpacks
# it into DEST_DIR. The system's apt configuration and state are left alone.
# Idempotent: when DEST_DIR/usr/bin/cosign already runs it only prints the path.
set -euo pipefail

SUITE=${2:-trixie}
PACKAGE=cosign
SYSTEM_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

say() { printf 'fetch-cosign: %s\n' "$*" >&2; }
die() { printf 'fetch-cosign: error: %s\n' "$*" >&2; exit 1; }

[ "$#" -eq 1 ] || [ "$#" -eq 2 ] || die "usage: $0 DEST_DIR [SUITE]   (SUITE: trixie, the default, or unstable)"
case $SUITE in
    trixie | unstable | sid) ;;
    *) die "suite \`$SUITE\` is not one the tests use: give trixie or unstable" ;;
esac
mkdir -p "$1"
DEST=$(cd "$1" && pwd)
BIN=$DEST/usr/bin/cosign

runs() { [ -x "$BIN" ] && "$BIN" version >/dev/null 2>&1; }

if runs; then
    printf '%s\n' "$BIN"
    exit 0
fi

# Several test processes may ask at once: one fetches, the others wait.
exec 9>"$DEST.lock"
flock 9
if runs; then
    printf '%s\n' "$BIN"
    exit 0
fi

for tool in apt-get apt-config dpkg-deb flock; do
    command -v "$tool" >/dev/null 2>&1 || die "needs $tool (a Debian host with apt)"
done
[ -r "$SYSTEM_KEYRING" ] || die "no $SYSTEM_KEYRING: install debian-archive-keyring"

# The host's release codename (the suite whose mirror we reuse).
HOST_SUITE=bookworm
if [ -r /etc/os-release ]; then
    # shellcheck source=/dev/null
    HOST_SUITE=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-bookworm}")
fi

# Prints the first URI of the host's apt sources that serves the main Debian
# archive: the first `deb` entry whose suites include "$HOST_SUITE" itself.
# Suites are matched as whole words, so an entry that lists only
# "$HOST_SUITE-security" (the security archive) does not count.
mirror_uri() {
    local files=() f
    [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    local uri=""
    for f in "${files[@]}"; do
        case $f in
            *.sources)
                # deb822: paragraphs of `Field: value`, separated by blank lines.
                uri=$(awk -v suite="$HOST_SUITE" '
                    function flush() {
                        if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") &&
                            tolower(enabled) != "no" && uris != "") {
                            split(uris, u, " "); print u[1]; found = 1; exit
                        }
                        types = ""; suites = ""; uris = ""; enabled = ""
                    }
                    /^[[:space:]]*#/ { next }
                    /^[[:space:]]*$/ { flush(); next }
                    {
                        line = $0
                        if (match(line, /^[A-Za-z-]+:/)) {
                            key = tolower(substr(line, 1, RLENGTH - 1))
                            val = substr(line, RLENGTH + 1)
                        } else {
                            val = line   # continuation of the previous field
                        }
                        gsub(/^[[:space:]]+|[[:space:]]+$/, "", val)
                        if (key == "types") types = types " " val
                        else if (key == "suites") suites = suites " " val
                        else if (key == "uris") uris = uris " " val
                        else if (key == "enabled") enabled = val
                    }
                    END { if (!found) flush() }
                ' "$f" || true)
                ;;
            *)
                # One-line style: deb [options] URI SUITE COMPONENT...
                uri=$(awk -v suite="$HOST_SUITE" '
                    /^[[:space:]]*#/ { next }
                    $1 == "deb" {
                        i = 2
                        if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                        if ($(i + 1) == suite) { print $i; exit }
                    }
                ' "$f" || true)
                ;;
        esac
        if [ -n "$uri" ]; then
            printf '%s\n' "$uri"
            return
        fi
    done
}

MIRROR=$(mirror_uri)
[ -n "$MIRROR" ] || die "no apt source serves suite $HOST_SUITE (looked in /etc/apt/sources.list and /etc/apt/sources.list.d)"
MIRROR=${MIRROR%/}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fetch-cosign.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# apt downloads as the unprivileged _apt user when run as root: let it in.
chmod 755 "$WORK"

# The host's network settings for apt (proxies, date checks), and nothing else
# of its configuration: no hooks, no preferences, no extra index targets.
host_acquire() {
    apt-config dump 2>/dev/null \
        | grep -E '^Acquire::((https?|ftp)(::[^ ]+)?::Proxy|Check-Valid-Until|Check-Date|ForceIPv4|ForceIPv6|Retries) ' \
        || true
}

# Sets up a private apt root under $WORK/$1 whose only source is
# "URI SUITES main", verified with KEYRING; `apt_in NAME args` runs apt-get in it.
make_root() {
    local name=$1 uri=$2 suites=$3 keyring=$4 root=$WORK/$1
    mkdir -p "$root"/{etc/apt.conf.d,etc/preferences.d,etc/sources.list.d,etc/trusted.gpg.d} \
        "$root"/lists/partial "$root"/cache/archives/partial "$root"/log "$root"/download
    : >"$root/status"
    cat >"$root/etc/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $uri
Suites: $suites
Components: main
Signed-By: $keyring
EOF
    {
        cat <<EOF
Dir::Etc::main "$root/etc/apt.conf";
Dir::Etc::parts "$root/etc/apt.conf.d";
Dir::Etc::sourcelist "$root/etc/sources.list";
Dir::Etc::sourceparts "$root/etc/sources.list.d";
Dir::Etc::preferences "$root/etc/preferences";
Dir::Etc::preferencesparts "$root/etc/preferences.d";
Dir::Etc::trusted "$root/etc/trusted.gpg";
Dir::Etc::trustedparts "$root/etc/trusted.gpg.d";
Dir::State "$root";
Dir::State::lists "$root/lists";
Dir::State::status "$root/status";
Dir::State::extended_states "$root/extended_states";
Dir::Cache "$root/cache";
Dir::Cache::archives "$root/cache/archives";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Dir::Log "$root/log";
Acquire::Languages "none";
Acquire::AllowInsecureRepositories "false";
Acquire::AllowDowngradeToInsecureRepositories "false";
APT::Get::AllowUnauthenticated "false";
EOF
        host_acquire
    } >"$root/apt.conf"
    if [ "$(id -u)" -eq 0 ] && id _apt >/dev/null 2>&1; then
        chmod 755 "$root" "$root/download"
        chown _apt "$root/download"
    fi
}

apt_in() {
    local name=$1
    shift
    APT_CONFIG=$WORK/$name/apt.conf apt-get -q "$@"
}

# Downloads PACKAGE from apt root NAME into its download dir; prints the .deb.
download() {
    local name=$1 package=$2 deb
    (cd "$WORK/$name/download" && apt_in "$name" download "$package" >&2) \
        || die "apt-get download $package (apt root $name) failed"
    deb=$(find "$WORK/$name/download" -maxdepth 1 -name "${package}_*.deb" | head -n 1)
    [ -n "$deb" ] || die "apt-get download left no ${package}_*.deb"
    printf '%s\n' "$deb"
}

KEYRING=$SYSTEM_KEYRING
say "mirror from the host's apt sources; suite $SUITE; keyring $KEYRING"
make_root target "$MIRROR" "$SUITE" "$KEYRING"
rc=0
apt_in target update >"$WORK/update.log" 2>&1 || rc=$?
if grep -qE '^(W|E):.*(NO_PUBKEY|EXPKEYSIG|is not signed|signatures were invalid)' "$WORK/update.log"; then
    # An older debian-archive-keyring may lack trixie's keys. Its newer version
    # in bookworm-updates has them, and that suite is signed by keys the
    # system keyring already trusts, so the chain stays verified.
    cat "$WORK/update.log" >&2
    say "the system keyring does not verify $SUITE; fetching debian-archive-keyring from $HOST_SUITE-updates"
    make_root keyring "$MIRROR" "$HOST_SUITE $HOST_SUITE-updates" "$SYSTEM_KEYRING"
    apt_in keyring update >&2 || die "apt-get update for $HOST_SUITE-updates failed"
    keydeb=$(download keyring debian-archive-keyring)
    dpkg-deb -x "$keydeb" "$WORK/keyring/unpacked"
    KEYRING=$WORK/keyring/unpacked/usr/share/keyrings/debian-archive-keyring.gpg
    [ -r "$KEYRING" ] || die "debian-archive-keyring .deb has no debian-archive-keyring.gpg"
    rm -rf "${WORK:?}/target"
    make_root target "$MIRROR" "$SUITE" "$KEYRING"
    apt_in target update >"$WORK/update.log" 2>&1 || {
        cat "$WORK/update.log" >&2
        die "apt-get update for $SUITE failed even with the newer keyring"
    }
    if grep -qE '^(W|E):' "$WORK/update.log"; then
        cat "$WORK/update.log" >&2
        die "apt-get update for $SUITE warned (see above); refusing an unverified index"
    fi
elif [ "$rc" -ne 0 ] || grep -qE '^(W|E):' "$WORK/update.log"; then
    cat "$WORK/update.log" >&2
    die "apt-get update for $SUITE failed (see above)"
fi

deb=$(download target "$PACKAGE")
say "unpacking $(basename "$deb")"
dpkg-deb -x "$deb" "$DEST"
runs || die "$BIN does not run (\`$BIN version\` failed)"
printf '%s\n' "$BIN"
