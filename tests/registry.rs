//! `kiln build --push`, `push`, `pull`, `copy` and `login` against a real
//! registry: Debian's `docker-registry` (CNCF distribution 2.8) on 127.0.0.1,
//! without auth, with htpasswd basic auth and behind the token flow, started
//! once per test process by `registry_support`. What kiln pushes is read
//! back by `skopeo` (and run with `runc`); what it pulls is compared byte for
//! byte with what it built. Registry-side faults come from a proxy in the
//! test and from corrupting the registry's storage.
//!
//! Every test pushes content of its own (a marker with the test's name), so
//! no two tests share a blob in the shared registries.

mod common;
mod registry_support;

use common::*;
use registry_support::proxy::{Faults, Proxy};
use registry_support::{layout_blobs, registry, tool, Flavour, Registry, PASSWORD, USER};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A `kiln` command whose auth files are the workspace's own: docker's
/// config under `WORK/docker`, no podman or `REGISTRY_AUTH_FILE` file.
fn kiln(w: &Work) -> Command {
    let mut c = w.kiln();
    c.env("DOCKER_CONFIG", w.path().join("docker"))
        .env("HOME", w.path())
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR");
    c
}

/// Runs `kiln ARGS…` with `stdin` piped in (nothing when `None`).
fn kiln_run(w: &Work, args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = kiln(w);
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// Runs `kiln ARGS…`, asserts success, returns (stdout, stderr).
fn kiln_ok(w: &Work, args: &[&str], stdin: Option<&str>) -> (String, String) {
    let out = kiln_run(w, args, stdin);
    assert_success(&out, &format!("kiln {}", args.join(" ")));
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Runs `kiln ARGS…`, asserts failure, returns (exit code, stdout, stderr).
fn kiln_fails(w: &Work, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
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
fn creds_args(r: &Registry) -> Vec<&'static str> {
    match r.flavour {
        Flavour::Plain => vec![],
        _ => vec!["--username", USER, "--password-stdin"],
    }
}

fn password_for(r: &Registry) -> Option<&'static str> {
    (r.flavour != Flavour::Plain).then_some(PASSWORD)
}

/// Writes `recipe.toml`: two layers whose content is unique to `name` (and
/// this process), so its blobs are in no other test's image.
fn unique_recipe(w: &Work, name: &str, extra_top: &str) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let marker = format!("{name} {} {nanos}", std::process::id());
    w.write(
        "recipe.toml",
        format!(
            r#"
name = "{name}"
tags = ["v1"]
{extra_top}

[config]
env = {{ MARKER = "{marker}" }}

[[layers]]
name = "hello"
contents = [ {{ dest = "/hello", text = "hi from {marker}\n" }} ]

[[layers]]
name = "etc"
contents = [ {{ dest = "/etc/marker", text = "{marker}\n" }} ]
dirs = [ {{ path = "/tmp", mode = 0o1777 }} ]
"#
        ),
    );
}

/// `skopeo ARGS…` with no signature policy (the host may have none).
fn skopeo(args: &[&str]) -> String {
    run(tool("skopeo").arg("--insecure-policy").args(args))
}

/// The raw manifest or index at `docker://REFERENCE`, parsed, and the sha256
/// of its bytes exactly as the registry serves them.
fn remote_raw(r: &Registry, reference: &str) -> (Value, String) {
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
fn remote_digest(r: &Registry, reference: &str) -> String {
    let mut args = vec!["inspect", "--tls-verify=false"];
    let creds = r.skopeo_creds();
    args.extend(creds.iter().map(String::as_str));
    let target = format!("docker://{reference}");
    args.push(&target);
    let info: Value = serde_json::from_str(&skopeo(&args)).unwrap();
    info["Digest"].as_str().unwrap().to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Asserts that the blobs of two layouts are the same files, byte for byte.
fn assert_same_blobs(built: &Path, pulled: &Path) {
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
fn build_and_push(w: &Work, r: &Registry, refs: &[String]) -> String {
    let mut args = vec!["build", "recipe.toml", "--out", "img"];
    for reference in refs {
        args.extend(["--push", reference.as_str()]);
    }
    args.extend(creds_args(r));
    let (stdout, _) = kiln_ok(w, &args, password_for(r));
    last_digest(&stdout)
}

#[test]
fn build_push_is_what_skopeo_sees() {
    let r = registry(Flavour::Plain);
    let w = Work::new();
    unique_recipe(&w, "pushed", "");
    let (a, b) = (r.repo("kiln/pushed:v1"), r.repo("kiln/pushed:stable"));
    let (stdout, _) = kiln_ok(
        &w,
        &[
            "build",
            "recipe.toml",
            "--out",
            "img",
            "--push",
            &a,
            "--push",
            &b,
            "--digest-file",
            "digest.txt",
        ],
        None,
    );
    let digest = last_digest(&stdout);
    assert_eq!(
        fs::read_to_string(w.path().join("digest.txt"))
            .unwrap()
            .trim(),
        digest
    );
    assert_eq!(remote_digest(r, &a), digest);
    assert_eq!(remote_digest(r, &b), digest);
    let (manifest, raw) = remote_raw(r, &r.repo(&format!("kiln/pushed@{digest}")));
    assert_eq!(
        raw, digest,
        "the registry serves the manifest byte for byte"
    );
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 2);
    // The same image, as a layout and as an archive, pushed by `kiln push`.
    let (stdout, _) = kiln_ok(&w, &["push", "img", &r.repo("kiln/pushed-layout:v2")], None);
    assert_eq!(last_digest(&stdout), digest);
    assert_eq!(remote_digest(r, &r.repo("kiln/pushed-layout:v2")), digest);
    w.ok(&[
        "build",
        "recipe.toml",
        "--format",
        "oci-archive",
        "--out",
        "img.tar",
    ]);
    let (stdout, _) = kiln_ok(
        &w,
        &["push", "img.tar", &r.repo("kiln/pushed-archive:v3")],
        None,
    );
    assert_eq!(last_digest(&stdout), digest);
    assert_eq!(remote_digest(r, &r.repo("kiln/pushed-archive:v3")), digest);
}
