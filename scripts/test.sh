#!/usr/bin/env bash
# kiln's test command: installs what the tests need when it is missing, then
# runs the formatting check, clippy and every test. Run it from anywhere, as
# root (the tests unpack images with umoci and run them with runc).
#
#   scripts/test.sh                      # everything
#   scripts/test.sh --test real_tools    # extra arguments go to `cargo test`
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The Debian packages the tests use: umoci, skopeo, runc and GNU tar read and
# run what kiln writes (tests/real_tools.rs); gcc and libc6-dev compile the
# static probe those images run; faketime and util-linux (unshare) vary the
# clock and the user (tests/reproducibility.rs); docker-registry, htpasswd
# from apache2-utils and openssl serve a real registry (tests/registry.rs);
# dpkg-dev, apt-utils, gnupg, gpgv, xz-utils and zstd build and serve a
# signed Debian repository on 127.0.0.1 (tests/apt_support); qemu-system-x86,
# qemu-utils, erofs-utils, squashfs-tools, e2fsprogs,
# a Debian kernel, busybox-static and cpio boot and read VM bundles (tests/vm.rs).
PACKAGES=(
    umoci skopeo runc tar gcc libc6-dev faketime util-linux
    docker-registry apache2-utils openssl
    dpkg-dev apt-utils gnupg gpgv xz-utils zstd
    qemu-system-x86 qemu-utils erofs-utils squashfs-tools e2fsprogs linux-image-cloud-amd64 busybox-static cpio
)

# runc lives in /usr/sbin, which a non-login shell may not have on PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "installing packages needs root: run scripts/test.sh as root (or install: $*)"
    fi
}

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        installed "$p" || missing+=("$p")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        say "packages: all present (${PACKAGES[*]})"
        return
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "missing packages (${missing[*]}) and no apt-get: install them by hand"
    say "packages: installing ${missing[*]}"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
}

ensure_components() {
    local missing=()
    cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
    cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
    if [ "${#missing[@]}" -eq 0 ]; then
        return
    fi
    command -v rustup >/dev/null 2>&1 \
        || die "cargo lacks ${missing[*]} and there is no rustup to add them"
    say "toolchain: adding ${missing[*]}"
    rustup component add "${missing[@]}" \
        || die "cannot add ${missing[*]} (offline?): install them, then rerun"
}

# SPDX's own validator checks kiln's SBOMs (tests/attestations.rs); it comes
# from PyPI, as Debian has no package of it.
install_spdx_tools() {
    if command -v pyspdxtools >/dev/null 2>&1; then
        return
    fi
    command -v python3 >/dev/null 2>&1 || die "no python3: install it to get the SPDX validator"
    say "python: installing spdx-tools"
    python3 -m pip install --quiet --disable-pip-version-check spdx-tools \
        || die "cannot install spdx-tools with pip"
    hash -r
}

command -v cargo >/dev/null 2>&1 || die "no cargo on PATH: install a Rust toolchain (rustup) first"
install_packages
install_spdx_tools
ensure_components
[ "$(id -u)" -eq 0 ] \
    || say "warning: not root; the umoci and runc tests will fail (run scripts/test.sh as root)"

# Every step runs even when an earlier one fails, so one run shows every
# problem; the summary says which failed and the exit status is non-zero.
declare -a NAMES=() RESULTS=() TIMES=()
step() {
    local name=$1 start rc=0
    shift
    say "$name: $*"
    start=$SECONDS
    "$@" || rc=$?
    NAMES+=("$name")
    TIMES+=("$((SECONDS - start))s")
    if [ "$rc" -eq 0 ]; then RESULTS+=(ok); else RESULTS+=("FAILED (exit $rc)"); fi
}

step fmt cargo fmt --all -- --check
step clippy cargo clippy --all-targets -- -D warnings
step test cargo test --no-fail-fast "$@"

failed=0
printf '\n%-8s %-18s %s\n' step result time >&2
for i in "${!NAMES[@]}"; do
    printf '%-8s %-18s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${TIMES[$i]}" >&2
    [ "${RESULTS[$i]}" = ok ] || failed=1
done
if [ "$failed" -ne 0 ]; then
    printf '\nscripts/test.sh: FAILED\n' >&2
    exit 1
fi
printf '\nscripts/test.sh: all passed\n' >&2
