//! Running kiln and skopeo against the test registries: kiln with auth
//! files of the workspace's own and a password on stdin, skopeo reading what
//! kiln pushed, and byte-for-byte comparisons of layouts.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::{layout_blobs, tool, Flavour, Registry, PASSWORD, USER};
use crate::support::{assert_success, last_digest, run, unique_marker, Work};

/// A `kiln` command whose auth files are the workspace's own: docker's
/// config under `WORK/docker`, no podman or `REGISTRY_AUTH_FILE` file.
pub fn kiln(w: &Work) -> Command {
    let mut c = w.kiln();
    c.env("DOCKER_CONFIG", w.path().join("docker"))
        .env("HOME", w.path())
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR");
    c
}

/// Runs `kiln ARGS…` with `stdin` piped in (nothing when `None`).
pub fn kiln_run(w: &Work, args: &[&str], stdin: Option<&str>) -> Output {
    run_with_stdin(kiln(w), args, stdin)
}

/// Runs `cmd ARGS…` with `stdin` piped in (nothing when `None`).
pub fn run_with_stdin(mut cmd: Command, args: &[&str], stdin: Option<&str>) -> Output {
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// A `kiln` command with an empty store of its own (`WORK/pull-cache`), so
/// that every blob a pull needs comes from the registry.
pub fn kiln_fresh_store(w: &Work) -> Command {
    let mut c = kiln(w);
    c.env("KILN_CACHE", w.path().join("pull-cache"));
    c
}

/// Runs `kiln ARGS…`, asserts success, returns (stdout, stderr).
pub fn kiln_ok(w: &Work, args: &[&str], stdin: Option<&str>) -> (String, String) {
    let out = kiln_run(w, args, stdin);
    assert_success(&out, &format!("kiln {}", args.join(" ")));
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Runs `kiln ARGS…`, asserts failure, returns (exit code, stdout, stderr).
pub fn kiln_fails(w: &Work, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let out = kiln_run(w, args, stdin);
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(
        !out.status.success(),
        "kiln {} should have failed; stdout:\n{stdout}\nstderr:\n{stderr}",
        args.join(" ")
    );
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// `--username USER --password-stdin` for registries that want them.
pub fn creds_args(r: &Registry) -> Vec<&'static str> {
    match r.flavour {
        Flavour::Plain => vec![],
        _ => vec!["--username", USER, "--password-stdin"],
    }
}

pub fn password_for(r: &Registry) -> Option<&'static str> {
    (r.flavour != Flavour::Plain).then_some(PASSWORD)
}

/// Writes `recipe.toml`: two layers whose content is unique to `name` (and
/// to this process), so its blobs are in no other test's image; `top`,
/// `config` and `layers` are added to the top level, `[config]` and the end.
pub fn unique_recipe(w: &Work, name: &str, top: &str, config: &str, layers: &str) -> String {
    let marker = unique_marker(name);
    w.write(
        "recipe.toml",
        format!(
            r#"
name = "{name}"
tags = ["v1"]
{top}

[config]
env = {{ MARKER = "{marker}" }}
{config}

[[layers]]
name = "hello"
contents = [ {{ dest = "/hello", text = "hi from {marker}\n" }} ]

[[layers]]
name = "etc"
contents = [ {{ dest = "/etc/marker", text = "{marker}\n" }} ]
dirs = [ {{ path = "/tmp", mode = 0o1777 }} ]
{layers}
"#
        ),
    );
    marker
}

/// `skopeo ARGS…` with no signature policy (the host may have none).
pub fn skopeo(args: &[&str]) -> String {
    run(tool("skopeo").arg("--insecure-policy").args(args))
}

/// The raw manifest or index at `docker://REFERENCE`, parsed, and the sha256
/// of its bytes exactly as the registry serves them.
pub fn remote_raw(r: &Registry, reference: &str) -> (Value, String) {
    let mut args = vec!["inspect", "--raw", "--tls-verify=false"];
    let creds = r.skopeo_creds();
    args.extend(creds.iter().map(String::as_str));
    let target = format!("docker://{reference}");
    args.push(&target);
    let out = tool("skopeo").args(&args).output().unwrap();
    assert_success(&out, &format!("skopeo {args:?}"));
    let digest = format!("sha256:{}", hex(&Sha256::digest(&out.stdout)));
    (serde_json::from_slice(&out.stdout).unwrap(), digest)
}

/// `skopeo inspect docker://REFERENCE`'s `Digest`.
pub fn remote_digest(r: &Registry, reference: &str) -> String {
    let mut args = vec!["inspect", "--tls-verify=false"];
    let creds = r.skopeo_creds();
    args.extend(creds.iter().map(String::as_str));
    let target = format!("docker://{reference}");
    args.push(&target);
    let info: Value = serde_json::from_str(&skopeo(&args)).unwrap();
    info["Digest"].as_str().unwrap().to_string()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Asserts that the blobs of two layouts are the same files, byte for byte.
pub fn assert_same_blobs(built: &Path, pulled: &Path) {
    let a = layout_blobs(built);
    let b = layout_blobs(pulled);
    let names =
        |v: &[(String, std::path::PathBuf)]| v.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b), "the same blobs");
    for ((digest, pa), (_, pb)) in a.iter().zip(&b) {
        let (da, db) = (fs::read(pa).unwrap(), fs::read(pb).unwrap());
        assert!(
            da == db,
            "blob {digest} differs between the build and the pull"
        );
        assert_eq!(&format!("sha256:{}", hex(&Sha256::digest(&db))), digest);
    }
}

/// Builds `recipe.toml` into `img` and pushes it to each of `refs`; returns the digest.
pub fn build_and_push(w: &Work, r: &Registry, refs: &[String]) -> String {
    let mut args = vec!["build", "recipe.toml", "--out", "img"];
    for reference in refs {
        args.extend(["--push", reference.as_str()]);
    }
    args.extend(creds_args(r));
    let (stdout, _) = kiln_ok(w, &args, password_for(r));
    last_digest(&stdout)
}

/// A static binary (so it runs in a `scratch` image) that prints a marker
/// and the content of `/etc/marker`, compiled once per test process.
pub fn probe() -> &'static Path {
    static PROBE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PROBE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        fs::create_dir_all(dir).unwrap();
        let src = dir.join(format!("kiln-registry-probe-{}.c", std::process::id()));
        let bin = dir.join(format!("kiln-registry-probe-{}", std::process::id()));
        fs::write(
            &src,
            r#"#include <stdio.h>
int main(void) {
    char buf[512];
    FILE *f = fopen("/etc/marker", "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    buf[n] = 0;
    printf("KILN-REGISTRY-PROBE marker=%s", buf);
    return 0;
}
"#,
        )
        .unwrap();
        let out = tool("gcc")
            .args(["-static", "-O1", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
            .unwrap();
        assert_success(&out, "gcc -static (needs libc6-dev; run scripts/test.sh)");
        fs::remove_file(&src).unwrap();
        bin
    })
}
