//! A real `cosign`, as an independent verifier of what kiln signs.
//!
//! Debian bookworm has no cosign package, so [`cosign`] runs
//! `scripts/fetch-cosign.sh`, which downloads trixie's `cosign` .deb through a
//! private apt configuration (InRelease verified against the Debian archive
//! keyring) and unpacks it under `target/cosign`. That happens once per test
//! process, and not at all once the binary is there, so repeated runs do not
//! refetch. A failed fetch fails the test: it never skips.
//!
//! [`cosign_cmd`] gives a `Command` that cannot reach beyond this machine: its
//! HTTP(S) proxy is a closed loopback port, with loopback exempt, so a
//! forgotten offline flag fails at once ("proxyconnect tcp: dial tcp
//! 127.0.0.1:9: connect: connection refused") instead of talking to the public
//! Sigstore services. The flags an offline, keyed run needs are in
//! [`SIGN_FLAGS`] and [`VERIFY_FLAGS`]; the helpers below use them.
//!
//! Seen with cosign 2.5.0 (Debian 2.5.0-2+b5) against `docker-registry` on
//! 127.0.0.1: `sign` pushes the tag `sha256-<hex>.sig`, `attest` the tag
//! `sha256-<hex>.att` (one layer per attestation, appended), both OCI image
//! manifests; `verify` prints the simple-signing payloads as a JSON array on
//! stdout (after a blank line) and its report on stderr, and exits 12 when no
//! signature matches the key.
//!
//! Seen with cosign 3.1.1 (Debian unstable 3.1.1-2, [`cosign3`]) against the
//! same registry, with a key-only signing config (`cosign signing-config
//! create --no-default-fulcio --no-default-oidc --no-default-rekor
//! --no-default-tsa`, which writes `{"mediaType":
//! "application/vnd.dev.sigstore.signingconfig.v0.2+json", …}` and with
//! which cosign refuses `--tlog-upload=false`): `sign` and `attest` write no
//! `.sig`/`.att` tag but a Sigstore bundle (`dsseEnvelope`, an in-toto
//! statement; `sign`'s predicate type is `https://sigstore.dev/cosign/sign/v1`)
//! as the one layer of an artifact manifest with `subject`, pushed by digest
//! and listed in the referrers tag index `sha256-<hex>` (the registry has no
//! referrers API), the index entry's `artifactType` being
//! `application/vnd.oci.empty.v1+json`. Its `verify` reads such bundles (through
//! the referrers API when the registry answers it) and needs the same
//! [`VERIFY_FLAGS`]; it also still accepts cosign 2's `.sig` tags.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// Where the fetched cosign lives (`usr/bin/cosign` below it), kept across runs.
pub const CACHE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/cosign");

/// The fetch script.
pub const FETCH_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/fetch-cosign.sh");

/// The password [`cosign_cmd`] gives cosign for its encrypted private keys, so
/// `generate-key-pair`, `sign` and `attest` never prompt.
pub const PASSWORD: &str = "kiln-cosign-test";

/// A closed loopback port used as the HTTP(S) proxy for everything but loopback.
const NO_NETWORK_PROXY: &str = "http://127.0.0.1:9";

/// Flags for `cosign sign` / `cosign attest` with a key, against a plain-HTTP
/// registry on loopback, uploading nothing to a transparency log.
pub const SIGN_FLAGS: &[&str] = &[
    "--tlog-upload=false",
    "--allow-http-registry",
    "--allow-insecure-registry",
    "-y",
];

/// Flags for `cosign verify` / `cosign verify-attestation` with a key, against
/// a plain-HTTP registry on loopback, without a transparency log. (`--offline`
/// alone is not enough: without `--insecure-ignore-tlog=true` cosign fetches
/// the Sigstore TUF root to get Rekor's keys.)
pub const VERIFY_FLAGS: &[&str] = &[
    "--insecure-ignore-tlog=true",
    "--allow-http-registry",
    "--allow-insecure-registry",
];

/// The path of a working `cosign` binary, fetched on first use.
///
/// Panics, with the script's output, when it cannot be had.
pub fn cosign() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(fetch).clone()
}

fn fetch() -> PathBuf {
    fetch_suite(CACHE_DIR, "trixie")
}

/// Where unstable's cosign (3.x) lives, kept across runs.
pub const CACHE_DIR_3: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/cosign3");

/// The path of a working cosign 3 (Debian unstable's package), fetched on
/// first use by the same script and private apt configuration.
pub fn cosign3() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| fetch_suite(CACHE_DIR_3, "unstable"))
        .clone()
}

/// [`cosign_cmd`] running cosign 3 instead.
pub fn cosign3_cmd() -> Command {
    let cmd = cosign_cmd();
    let mut c3 = Command::new(cosign3());
    c3.stdin(Stdio::null());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c3.env(k, v),
            None => c3.env_remove(k),
        };
    }
    c3
}

/// A key-only signing config for cosign 3 (`cosign signing-config create`
/// with no services), written in `dir`: with it cosign 3 signs with a key
/// and talks to no Fulcio, Rekor or timestamp authority.
pub fn signing_config(dir: &Path) -> PathBuf {
    let out = dir.join("signing-config.json");
    let mut cmd = cosign3_cmd();
    cmd.args([
        "signing-config",
        "create",
        "--no-default-fulcio",
        "--no-default-oidc",
        "--no-default-rekor",
        "--no-default-tsa",
        "--out",
    ])
    .arg(&out);
    run_ok(cmd);
    out
}

fn fetch_suite(dir: &str, suite: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg(FETCH_SCRIPT)
        .arg(dir)
        .arg(suite)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash {FETCH_SCRIPT}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "could not fetch cosign: `bash {FETCH_SCRIPT} {dir}` failed ({}).\n\
         It needs apt-get, dpkg-deb and network access to the host's Debian mirror.\n\
         --- stdout\n{stdout}--- stderr\n{stderr}",
        out.status
    );
    let bin = PathBuf::from(stdout.trim());
    assert!(
        bin.is_file(),
        "{FETCH_SCRIPT} printed {bin:?}, which is not a file\n--- stderr\n{stderr}"
    );
    bin
}

/// A private home for cosign (its `~/.sigstore`, `~/.docker` and TUF root);
/// offline, keyed runs leave it empty.
fn state_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(CACHE_DIR).join("home");
        std::fs::create_dir_all(dir.join("tuf"))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        dir
    })
}

/// `cosign` with an environment that keeps it on this machine: no Sigstore
/// cache or TUF updates outside `target/cosign/home`, no registry credentials
/// from the user's Docker config, the key password set, stdin closed, and a
/// dead proxy for every non-loopback host.
pub fn cosign_cmd() -> Command {
    let home = state_dir();
    let mut cmd = Command::new(cosign());
    cmd.stdin(Stdio::null())
        .env("HOME", home)
        .env("DOCKER_CONFIG", home.join("docker"))
        .env("TUF_ROOT", home.join("tuf"))
        .env("SIGSTORE_NO_CACHE", "1")
        .env("COSIGN_EXPERIMENTAL", "0")
        .env("COSIGN_PASSWORD", PASSWORD)
        .env("HTTPS_PROXY", NO_NETWORK_PROXY)
        .env("https_proxy", NO_NETWORK_PROXY)
        .env("HTTP_PROXY", NO_NETWORK_PROXY)
        .env("http_proxy", NO_NETWORK_PROXY)
        .env("NO_PROXY", "127.0.0.1,localhost,::1")
        .env("no_proxy", "127.0.0.1,localhost,::1");
    for var in [
        "ALL_PROXY",
        "all_proxy",
        "COSIGN_REPOSITORY",
        "COSIGN_DOCKER_MEDIA_TYPES",
        "SIGSTORE_ID_TOKEN",
        "SIGSTORE_ROOT_FILE",
        "SIGSTORE_REKOR_PUBLIC_KEY",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
        "ACTIONS_ID_TOKEN_REQUEST_URL",
        "SOURCE_DATE_EPOCH",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `cmd`, returning its output whatever the exit status.
pub fn output(mut cmd: Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` and panics, with its output, unless it succeeds.
pub fn run_ok(cmd: Command) -> Output {
    let desc = format!("{cmd:?}");
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{desc} failed ({})\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A `kiln` command in `w` with the workspace's own auth files (none of the
/// caller's), the test key's password and `stdin`.
pub fn kiln(w: &super::Work, stdin: Stdio) -> Command {
    let mut c = w.kiln();
    c.env("DOCKER_CONFIG", w.path().join("docker"))
        .env("HOME", w.path())
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR")
        .env("KILN_PASSWORD", PASSWORD)
        .stdin(stdin);
    c
}

/// A cosign key pair made by `cosign generate-key-pair` in `dir`: returns
/// (`cosign.key`, encrypted with [`PASSWORD`]; `cosign.pub`, a PEM
/// SubjectPublicKeyInfo for ECDSA P-256).
pub fn generate_key_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let mut cmd = cosign_cmd();
    cmd.current_dir(dir).arg("generate-key-pair");
    run_ok(cmd);
    (dir.join("cosign.key"), dir.join("cosign.pub"))
}

/// `cosign sign --key KEY` of `reference` (`127.0.0.1:PORT/repo@sha256:…`).
pub fn sign(key: &Path, reference: &str) -> Output {
    let mut cmd = cosign_cmd();
    cmd.arg("sign")
        .arg("--key")
        .arg(key)
        .args(SIGN_FLAGS)
        .arg(reference);
    run_ok(cmd)
}

/// `cosign verify --key PUB` of `reference`, whatever its outcome: exit 0 and
/// the verified payloads as JSON on stdout when a signature matches, exit 12
/// ("no matching signatures") when none does.
pub fn verify(public_key: &Path, reference: &str) -> Output {
    let mut cmd = cosign_cmd();
    cmd.arg("verify")
        .arg("--key")
        .arg(public_key)
        .args(VERIFY_FLAGS)
        .arg(reference);
    output(cmd)
}

/// `cosign verify-attestation --key PUB --type TYPE` of `reference`, whatever
/// its outcome: on success stdout has one DSSE envelope (JSON) per line for
/// each attestation of that type; when none verifies it exits 1 ("no matching
/// attestations").
pub fn verify_attestation(public_key: &Path, predicate_type: &str, reference: &str) -> Output {
    let mut cmd = cosign_cmd();
    cmd.arg("verify-attestation")
        .arg("--key")
        .arg(public_key)
        .arg("--type")
        .arg(predicate_type)
        .args(VERIFY_FLAGS)
        .arg(reference);
    output(cmd)
}
