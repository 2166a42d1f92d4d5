# Shared by the bench scripts (sourced, not run).

# install_missing PACKAGE… — installs the Debian packages given, if any.
install_missing() {
    (($#)) || return 0
    printf '[bench] installing %s\n' "$*" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "$@" >/dev/null
}

# kiln_binary REPO — prints the kiln to benchmark: KILN_BIN, or a fresh release build.
kiln_binary() {
    if [[ -n ${KILN_BIN:-} ]]; then
        printf '%s\n' "$KILN_BIN"
    else
        (cd "$1" && cargo build --release --quiet)
        printf '%s\n' "${CARGO_TARGET_DIR:-$1/target}/release/kiln"
    fi
}
