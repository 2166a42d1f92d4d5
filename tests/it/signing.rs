//! `kiln keygen`, `kiln sign`, `kiln verify` and `kiln build --sign-key`
//! against a real registry (Debian's `docker-registry` on 127.0.0.1, started
//! once per test process by `support::registry`), with a real `cosign` 2.5
//! (fetched by `support::cosign`) as the independent verifier: what kiln signs
//! cosign must accept, what cosign signs kiln must accept, and a signature
//! moved onto another digest must be refused (onto another repository, only
//! with `--exact-identity`).
//!
//! The signature manifests themselves (`sha256-<hex>.sig`) are read back and
//! copied around with `skopeo`. Every test pushes an image of its own (a
//! marker with the test's name), into a repository of its own.
//!
//! Seen with cosign 2.5.0 (Debian 2.5.0-2+b5): cosign's keyed `verify` checks
//! the signature and the payload's `docker-manifest-digest`, but not its
//! `docker-reference` (identity); it refuses repository names shorter than
//! two characters. Debian's skopeo is built without sigstore support ("sigstore
//! disabled"), so a `sigstoreSigned` policy cannot serve as a second verifier.

use crate::support;
use crate::support::registry::{registry, tool, Flavour, Registry};
use crate::support::*;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The plain (no auth) registry shared by every test in this file.
fn reg() -> &'static Registry {
    registry(Flavour::Plain)
}

/// A `kiln` command with the workspace's own auth files and no key password
/// inherited from the caller's environment.
fn kiln(w: &Work) -> Command {
    let mut c = w.kiln();
    c.env("DOCKER_CONFIG", w.path().join("docker"))
        .env("HOME", w.path())
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("KILN_PASSWORD")
        .env_remove("COSIGN_PASSWORD")
        .stdin(Stdio::null());
    c
}

/// The output of `cmd ARGS…`, whatever its status, as (status code, stdout, stderr).
fn outcome(mut cmd: Command, args: &[&str]) -> (Option<i32>, String, String) {
    let out = cmd
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `cmd ARGS…` (a kiln command), asserts success, returns stdout.
fn ok(cmd: Command, args: &[&str]) -> String {
    let (code, stdout, stderr) = outcome(cmd, args);
    assert_eq!(
        code,
        Some(0),
        "kiln {} failed\nstdout:\n{stdout}\nstderr:\n{stderr}",
        args.join(" ")
    );
    stdout
}

/// Runs `cmd ARGS…` (a kiln command), asserts it exits with `expected`,
/// returns (stdout, stderr).
fn fails_with(cmd: Command, args: &[&str], expected: i32) -> (String, String) {
    let (code, stdout, stderr) = outcome(cmd, args);
    assert_eq!(
        code,
        Some(expected),
        "kiln {} should exit {expected}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        args.join(" ")
    );
    (stdout, stderr)
}

/// Writes `recipe.toml`: one layer and a label unique to `name` and this
/// process, so no other test pushes the same blobs. `top` is added to the top
/// level. The label value is `tamper-A <marker>`, one byte of which
/// [`tamper_config`] changes.
fn recipe(w: &Work, name: &str, top: &str) {
    let marker = unique_marker(name);
    w.write(
        "recipe.toml",
        format!(
            r#"
name = "{name}"
{top}

[config]
labels = {{ marker = "tamper-A {marker}" }}

[[layers]]
name = "hello"
contents = [ {{ dest = "/hello", text = "hi from {marker}\n" }} ]
"#
        ),
    );
}

/// `REGISTRY/signing-NAME`: cosign refuses one-character repository names.
fn repo(name: &str) -> String {
    reg().repo(&format!("signing-{name}"))
}

/// Builds `recipe.toml` into `img`, pushes it to `target` (signing with the
/// `extra` arguments, e.g. `--sign-key`), returns the printed digest.
fn build_push(w: &Work, target: &str, extra: &[&str]) -> String {
    let mut args = vec!["build", "recipe.toml", "--out", "img", "--push", target];
    args.extend(extra);
    last_digest(&ok(kiln(w), &args))
}

/// `kiln keygen --out NAME` (unencrypted) in the workspace; returns (NAME.key, NAME.pub).
fn keygen(w: &Work, name: &str) -> (String, String) {
    ok(kiln(w), &["keygen", "--out", name]);
    (format!("{name}.key"), format!("{name}.pub"))
}

/// `cosign verify --key PUB REFERENCE` (offline flags), with `PUB` relative
/// to the workspace.
fn cosign_verify(w: &Work, public: &str, reference: &str) -> Output {
    support::cosign::verify(&w.path().join(public), reference)
}

/// The payloads `cosign verify` printed, after asserting it succeeded.
fn cosign_accepts(w: &Work, public: &str, reference: &str) -> Vec<Value> {
    let out = cosign_verify(w, public, reference);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "cosign verify --key {public} {reference} should pass ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let payloads: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("cosign's stdout is not JSON ({e}):\n{stdout}"));
    payloads.as_array().expect("a JSON array").clone()
}

/// Asserts that `cosign verify --key PUB REFERENCE` fails; returns its stderr.
fn cosign_refuses(w: &Work, public: &str, reference: &str) -> String {
    let out = cosign_verify(w, public, reference);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "cosign verify --key {public} {reference} should fail\nstdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// `sha256-<hex>.sig`, the tag a digest's signatures live under.
fn sig_tag(digest: &str) -> String {
    format!("sha256-{}.sig", digest.strip_prefix("sha256:").unwrap())
}

/// The raw manifest at `docker://REFERENCE`, parsed.
fn remote_raw(reference: &str) -> Value {
    let out = run(tool("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--no-creds",
        &format!("docker://{reference}"),
    ]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{reference}: not JSON ({e}): {out}"))
}

/// The layers of the signature manifest of `repository@digest`.
fn sig_layers(repository: &str, digest: &str) -> Vec<Value> {
    let manifest = remote_raw(&format!("{repository}:{}", sig_tag(digest)));
    manifest["layers"].as_array().expect("layers").clone()
}

/// `skopeo copy` of one manifest from `src` to `dst` (both `REGISTRY/REPO[:TAG|@DIGEST]`),
/// byte for byte.
fn skopeo_copy(src: &str, dst: &str) {
    run(tool("skopeo").args([
        "--insecure-policy",
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--src-no-creds",
        "--dest-no-creds",
        &format!("docker://{src}"),
        &format!("docker://{dst}"),
    ]));
}

fn sha256(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn blob_path(layout: &Path, digest: &str) -> std::path::PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// Changes one byte of the config of the single image in `layout` (the
/// recipe's `tamper-A` label becomes `tamper-B`), writes the new config and
/// manifest blobs and points `index.json` at the new manifest. Returns the
/// new manifest's digest.
fn tamper_config(layout: &Path) -> String {
    let index_path = layout.join("index.json");
    let index = fs::read_to_string(&index_path).unwrap();
    let parsed: Value = serde_json::from_str(&index).unwrap();
    let old_manifest = parsed["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest = fs::read_to_string(blob_path(layout, &old_manifest)).unwrap();
    let parsed: Value = serde_json::from_str(&manifest).unwrap();
    let old_config = parsed["config"]["digest"].as_str().unwrap().to_string();
    let config = fs::read_to_string(blob_path(layout, &old_config)).unwrap();
    assert_eq!(config.matches("tamper-A").count(), 1, "{config}");
    let new_config = config.replace("tamper-A", "tamper-B");
    assert_eq!(
        new_config.len(),
        config.len(),
        "one byte changed, same size"
    );
    let new_config_digest = sha256(new_config.as_bytes());
    fs::write(blob_path(layout, &new_config_digest), &new_config).unwrap();
    let new_manifest = manifest.replace(&old_config, &new_config_digest);
    assert_ne!(new_manifest, manifest);
    let new_manifest_digest = sha256(new_manifest.as_bytes());
    fs::write(blob_path(layout, &new_manifest_digest), &new_manifest).unwrap();
    fs::write(
        &index_path,
        index.replace(&old_manifest, &new_manifest_digest),
    )
    .unwrap();
    new_manifest_digest
}

/// The `docker-reference` and `docker-manifest-digest` a payload claims.
fn claims(payload: &Value) -> (String, String) {
    let critical = &payload["critical"];
    (
        critical["identity"]["docker-reference"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        critical["image"]["docker-manifest-digest"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[test]
fn build_sign_key_signature_verifies_with_cosign_and_kiln() {
    let w = Work::new();
    recipe(&w, "ci-signed", "");
    let (ci_key, ci_pub) = keygen(&w, "ci");
    let (_, other_pub) = keygen(&w, "other");
    let target = repo("ci-signed");
    let digest = build_push(&w, &format!("{target}:v1"), &["--sign-key", &ci_key]);
    let reference = format!("{target}@{digest}");

    // The independent verifier accepts it, and the payload it checked names
    // this repository and this digest.
    let payloads = cosign_accepts(&w, &ci_pub, &reference);
    assert_eq!(payloads.len(), 1, "{payloads:?}");
    assert_eq!(claims(&payloads[0]), (target.clone(), digest.clone()));
    cosign_refuses(&w, &other_pub, &reference);

    // kiln accepts it and says which key matched, even when it is not the first.
    let stdout = ok(
        kiln(&w),
        &["verify", &reference, "--key", &other_pub, "--key", &ci_pub],
    );
    assert!(
        stdout.contains("`ci.pub`") && !stdout.contains("other.pub"),
        "kiln verify should name the matching key: {stdout}"
    );

    let (stdout, stderr) = fails_with(kiln(&w), &["verify", &reference, "--key", &other_pub], 4);
    assert!(
        stdout.is_empty(),
        "nothing verified, nothing on stdout: {stdout}"
    );
    assert!(
        stderr.contains("key")
            && (stderr.contains("valid")
                || stderr.contains("wrong")
                || stderr.contains("another key")),
        "kiln verify with the wrong key should say the key does not match: {stderr}"
    );
    assert!(
        !stderr.contains("no signature found"),
        "there is a signature, just not by this key: {stderr}"
    );
}

#[test]
fn replayed_signature_on_a_tampered_image_is_refused() {
    let w = Work::new();
    recipe(&w, "replay", "");
    let (ci_key, ci_pub) = keygen(&w, "ci");
    let target = repo("replay");
    let digest = build_push(&w, &format!("{target}:v1"), &["--sign-key", &ci_key]);

    // One byte of the config changes, so the manifest digest changes; the old
    // signature manifest is copied to the new digest's tag, as an attacker
    // replaying a signature would.
    let tampered = tamper_config(&w.path().join("img"));
    assert_ne!(tampered, digest);
    let pushed = last_digest(&ok(
        kiln(&w),
        &["push", "img", &format!("{target}:tampered")],
    ));
    assert_eq!(
        pushed, tampered,
        "kiln push sends the edited manifest as is"
    );
    skopeo_copy(
        &format!("{target}:{}", sig_tag(&digest)),
        &format!("{target}:{}", sig_tag(&tampered)),
    );
    assert_eq!(sig_layers(&target, &tampered).len(), 1);

    let old = format!("{target}@{digest}");
    let new = format!("{target}@{tampered}");
    cosign_accepts(&w, &ci_pub, &old);
    cosign_refuses(&w, &ci_pub, &new);

    ok(kiln(&w), &["verify", &old, "--key", &ci_pub]);
    let (_, stderr) = fails_with(kiln(&w), &["verify", &new, "--key", &ci_pub], 4);
    assert!(
        stderr.contains("digest") && stderr.contains(&digest),
        "kiln should say the signature is for another digest ({digest}): {stderr}"
    );
}

#[test]
fn cosign_signatures_and_kiln_signatures_live_side_by_side() {
    let w = Work::new();
    recipe(&w, "cosign-signed", "");
    let target = repo("cosign-signed");
    let digest = build_push(&w, &format!("{target}:v1"), &[]);
    let reference = format!("{target}@{digest}");
    support::cosign::generate_key_pair(w.path());
    support::cosign::sign(&w.path().join("cosign.key"), &reference);
    assert_eq!(sig_layers(&target, &digest).len(), 1);

    let stdout = ok(kiln(&w), &["verify", &reference, "--key", "cosign.pub"]);
    assert!(stdout.contains("cosign.pub"), "{stdout}");

    // kiln signs with cosign's encrypted key; cosign's signature stays.
    let mut sign = kiln(&w);
    sign.env("KILN_PASSWORD", support::cosign::PASSWORD);
    let stdout = ok(sign, &["sign", &reference, "--key", "cosign.key"]);
    assert_eq!(last_digest(&stdout), digest);
    let layers = sig_layers(&target, &digest);
    assert_eq!(layers.len(), 2, "cosign's signature and kiln's: {layers:?}");
    let payloads = cosign_accepts(&w, "cosign.pub", &reference);
    assert_eq!(
        payloads.len(),
        2,
        "cosign verifies both signatures: {payloads:?}"
    );
    for p in &payloads {
        assert_eq!(claims(p), (target.clone(), digest.clone()));
    }

    // Signing again with the same key adds nothing.
    let mut again = kiln(&w);
    again.env("KILN_PASSWORD", support::cosign::PASSWORD);
    ok(again, &["sign", &reference, "--key", "cosign.key"]);
    assert_eq!(sig_layers(&target, &digest), layers, "no duplicate layer");

    // A kiln key adds one layer, once.
    let (kiln_key, kiln_pub) = keygen(&w, "kiln");
    ok(kiln(&w), &["sign", &reference, "--key", &kiln_key]);
    ok(kiln(&w), &["sign", &reference, "--key", &kiln_key]);
    let three = sig_layers(&target, &digest);
    assert_eq!(three.len(), 3, "{three:?}");
    assert_eq!(&three[..2], &layers[..], "earlier layers kept in order");
    assert_eq!(cosign_accepts(&w, &kiln_pub, &reference).len(), 1);
    assert_eq!(cosign_accepts(&w, "cosign.pub", &reference).len(), 2);
    let stdout = ok(kiln(&w), &["verify", &reference, "--key", &kiln_pub]);
    assert!(stdout.contains("kiln.pub"), "{stdout}");
}

#[test]
fn unsigned_image_has_no_signature() {
    let w = Work::new();
    recipe(&w, "unsigned", "");
    let (_, ci_pub) = keygen(&w, "ci");
    let target = repo("unsigned");
    let digest = build_push(&w, &format!("{target}:v1"), &[]);
    let reference = format!("{target}@{digest}");

    cosign_refuses(&w, &ci_pub, &reference);
    let (stdout, stderr) = fails_with(kiln(&w), &["verify", &reference, "--key", &ci_pub], 4);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("no signature"), "{stderr}");
}

#[test]
fn signature_copied_to_another_repository_matches_its_identity_only_when_asked() {
    let w = Work::new();
    recipe(&w, "identity", "");
    let (ci_key, ci_pub) = keygen(&w, "ci");
    let first = repo("identity-first");
    let second = repo("identity-copy");
    let digest = build_push(&w, &format!("{first}:v1"), &["--sign-key", &ci_key]);
    skopeo_copy(&format!("{first}@{digest}"), &format!("{second}:v1"));
    skopeo_copy(
        &format!("{first}:{}", sig_tag(&digest)),
        &format!("{second}:{}", sig_tag(&digest)),
    );
    assert_eq!(sig_layers(&second, &digest).len(), 1);
    let copy = format!("{second}@{digest}");

    ok(
        kiln(&w),
        &["verify", &format!("{first}@{digest}"), "--key", &ci_pub],
    );
    // A promoted image keeps its signatures: kiln accepts the copy, and
    // refuses it only when asked for the exact identity.
    ok(kiln(&w), &["verify", &copy, "--key", &ci_pub]);
    let (_, stderr) = fails_with(
        kiln(&w),
        &["verify", &copy, "--key", &ci_pub, "--exact-identity"],
        4,
    );
    assert!(
        stderr.contains(&format!("`{first}`")),
        "kiln should name the repository the signature is for ({first}): {stderr}"
    );
    assert!(
        stderr.contains("identity") || stderr.contains("repository"),
        "kiln should say the identity (repository) does not match: {stderr}"
    );

    // cosign 2.5's keyed verify does not compare `docker-reference` with the
    // reference it was given (it checks the key and the digest claim), so it
    // accepts the copy; what it reports confirms that the payload names the
    // first repository, which is what kiln refuses with `--exact-identity`.
    let payloads = cosign_accepts(&w, &ci_pub, &copy);
    assert_eq!(payloads.len(), 1, "{payloads:?}");
    assert_eq!(claims(&payloads[0]), (first.clone(), digest.clone()));
}

#[test]
fn encrypted_keys_work_with_cosign_and_a_wrong_password_is_bad_input() {
    const PW: &str = "Kiln-enc-pw-7f3a91";
    const WRONG: &str = "Wrong-pw-c0ffee-42";
    let w = Work::new();
    recipe(&w, "encrypted", "");
    let mut keygen = kiln(&w);
    keygen.env("KILN_PASSWORD", PW);
    let stdout = ok(keygen, &["keygen", "--out", "enc"]);
    assert!(!stdout.contains(PW), "{stdout}");
    let private = fs::read_to_string(w.path().join("enc.key")).unwrap();
    assert!(
        private.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"),
        "{private}"
    );
    assert!(!private.contains("-----BEGIN PRIVATE KEY-----"));
    let public = fs::read_to_string(w.path().join("enc.pub")).unwrap();
    assert!(
        public.starts_with("-----BEGIN PUBLIC KEY-----\n"),
        "{public}"
    );

    // cosign decrypts it and derives the same public key.
    let mut derive = support::cosign::cosign_cmd();
    derive
        .current_dir(w.path())
        .env("COSIGN_PASSWORD", PW)
        .args(["public-key", "--key", "enc.key"]);
    let derived = support::cosign::run_ok(derive);
    assert_eq!(
        String::from_utf8_lossy(&derived.stdout).trim(),
        public.trim()
    );

    let target = repo("encrypted");
    let digest = build_push(&w, &format!("{target}:v1"), &[]);
    let reference = format!("{target}@{digest}");
    let mut sign = support::cosign::cosign_cmd();
    sign.current_dir(w.path())
        .env("COSIGN_PASSWORD", PW)
        .args(["sign", "--key", "enc.key"])
        .args(support::cosign::SIGN_FLAGS)
        .arg(&reference);
    support::cosign::run_ok(sign);
    let stdout = ok(kiln(&w), &["verify", &reference, "--key", "enc.pub"]);
    assert!(stdout.contains("enc.pub"), "{stdout}");

    // A wrong password: bad input, and neither password is echoed.
    let mut wrong = kiln(&w);
    wrong.env("KILN_PASSWORD", WRONG);
    let (stdout, stderr) = fails_with(wrong, &["sign", &reference, "--key", "enc.key"], 2);
    for (what, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(
            !text.contains(WRONG) && !text.contains(PW),
            "a password leaked to {what}: {text}"
        );
    }
    assert!(stderr.contains("enc.key"), "{stderr}");
    assert_eq!(sig_layers(&target, &digest).len(), 1, "nothing was signed");

    // COSIGN_PASSWORD is read when KILN_PASSWORD is unset; cosign then sees
    // its own signature and kiln's.
    let mut fallback = kiln(&w);
    fallback.env("COSIGN_PASSWORD", PW);
    ok(fallback, &["sign", &reference, "--key", "enc.key"]);
    assert_eq!(sig_layers(&target, &digest).len(), 2);
    assert_eq!(cosign_accepts(&w, "enc.pub", &reference).len(), 2);
}

#[test]
fn recursive_signing_covers_the_index_and_every_platform() {
    let w = Work::new();
    recipe(&w, "multi", r#"platforms = ["linux/amd64", "linux/arm64"]"#);
    let (ci_key, ci_pub) = keygen(&w, "ci");
    let target = repo("multi");
    let digest = build_push(
        &w,
        &format!("{target}:v1"),
        &["--sign-key", &ci_key, "--recursive"],
    );
    let index = remote_raw(&format!("{target}@{digest}"));
    let manifests: Vec<String> = index["manifests"]
        .as_array()
        .expect("an image index")
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(manifests.len(), 2, "{index}");
    for d in std::iter::once(&digest).chain(&manifests) {
        let reference = format!("{target}@{d}");
        let payloads = cosign_accepts(&w, &ci_pub, &reference);
        assert_eq!(payloads.len(), 1, "{reference}: {payloads:?}");
        assert_eq!(claims(&payloads[0]), (target.clone(), d.clone()));
        ok(kiln(&w), &["verify", &reference, "--key", &ci_pub]);
    }
}

#[test]
fn keygen_never_overwrites_a_key() {
    let w = Work::new();
    keygen(&w, "ci");
    let key = fs::read(w.path().join("ci.key")).unwrap();
    let public = fs::read(w.path().join("ci.pub")).unwrap();
    let (_, stderr) = fails_with(kiln(&w), &["keygen", "--out", "ci"], 2);
    assert!(stderr.contains("ci.key"), "{stderr}");
    assert_eq!(fs::read(w.path().join("ci.key")).unwrap(), key);
    assert_eq!(fs::read(w.path().join("ci.pub")).unwrap(), public);

    // Either file alone is enough to refuse, and nothing new is written.
    fs::remove_file(w.path().join("ci.key")).unwrap();
    let (_, stderr) = fails_with(kiln(&w), &["keygen", "--out", "ci"], 2);
    assert!(stderr.contains("ci.pub"), "{stderr}");
    assert!(!w.path().join("ci.key").exists());
    assert_eq!(fs::read(w.path().join("ci.pub")).unwrap(), public);
}
