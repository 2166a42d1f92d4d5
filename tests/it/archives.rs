//! Archives per repository (issue 11, part 3): a repository names the archive
//! it comes from (`archive = "debian-security"`), each archive has its own
//! mirror (`KILN_MIRROR_<ARCHIVE>` or the host's apt sources), and a pinned
//! `.deb` that left its mirror is fetched from the archive's fallbacks
//! (`KILN_FALLBACK_<ARCHIVE>`) by the same pool path, verified by the lock's
//! SHA-256. Every archive here is a signed repository on 127.0.0.1
//! (`tests/it/support/apt.rs`); what each server was asked is read from its log.

use std::process::Output;

use crate::support::apt::{Pkg, Repo};
use crate::support::{assert_success, read, Work};

/// The environment variables that pick mirrors, cleared so the caller's
/// environment cannot leak in.
const MIRROR_VARS: &[&str] = &[
    "KILN_DEBIAN_MIRROR",
    "KILN_MIRROR_DEBIAN",
    "KILN_MIRROR_DEBIAN_SECURITY",
    "KILN_DEBIAN_FALLBACK",
    "KILN_FALLBACK_DEBIAN",
    "KILN_FALLBACK_DEBIAN_SECURITY",
];

/// `kiln ARGS…` in `w` with exactly the mirror variables `env`.
fn kiln(w: &Work, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = w.kiln();
    for v in MIRROR_VARS {
        c.env_remove(v);
    }
    c.envs(env.iter().copied()).args(args);
    c.output().unwrap()
}

fn ok(w: &Work, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = kiln(w, env, args);
    assert_success(&out, &format!("kiln {}", args.join(" ")));
    String::from_utf8(out.stdout).unwrap()
}

fn fails(w: &Work, env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let out = kiln(w, env, args);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        !out.status.success(),
        "kiln {} should have failed; stderr:\n{stderr}",
        args.join(" ")
    );
    (out.status.code().unwrap_or(-1), stderr)
}

fn pkg(name: &str, version: &str) -> Pkg {
    Pkg::new(name, version, "amd64").file(
        &format!("/usr/share/{name}/version"),
        format!("{version}\n"),
        0o644,
    )
}

/// The requests that asked `repo` for `rel` (its log holds paths below `/debian/`).
fn asked(repo: &Repo, rel: &str) -> usize {
    repo.requests().iter().filter(|r| r.ends_with(rel)).count()
}

/// A main repository and a security one, each in its own archive on its own
/// server: `kiln lock` reads each index from its archive's mirror and
/// `kiln build` fetches each `.deb` from there.
#[test]
fn main_and_security_archives_each_from_their_own_mirror() {
    let main = Repo::start("kiln-main", &["main"], &[pkg("hello", "1.0")]);
    let security = Repo::start(
        "kiln-main-security",
        &["main"],
        &[pkg("libfix", "1.0+sec1")],
    );
    let w = Work::new();
    w.write(
        "recipe.toml",
        r#"name = "two-archives"
platforms = ["linux/amd64"]

[repositories.debian]
suite = "kiln-main"
keyring = "MAIN_KEYRING"

[repositories.security]
suite = "kiln-main-security"
archive = "debian-security"
keyring = "SECURITY_KEYRING"

[[layers]]
name = "packages"
packages = ["hello", "libfix"]
"#
        .replace("MAIN_KEYRING", &main.keyring.display().to_string())
        .replace("SECURITY_KEYRING", &security.keyring.display().to_string()),
    );
    let env = [
        ("KILN_MIRROR_DEBIAN", main.url.as_str()),
        ("KILN_MIRROR_DEBIAN_SECURITY", security.url.as_str()),
    ];
    ok(&w, &env, &["lock", "recipe.toml"]);
    let lock = std::fs::read_to_string(w.path().join("recipe.lock")).unwrap();
    let doc: toml::Table = lock.parse().unwrap();
    let rows: Vec<(String, String)> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["repository"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("hello".to_string(), "debian".to_string()),
            ("libfix".to_string(), "security".to_string())
        ],
        "{lock}"
    );
    assert_eq!(asked(&main, "dists/kiln-main/InRelease"), 1);
    assert_eq!(asked(&security, "dists/kiln-main-security/InRelease"), 1);
    assert_eq!(
        asked(&main, "dists/kiln-main-security/InRelease"),
        0,
        "the security suite is not asked of the main mirror"
    );

    ok(
        &w,
        &env,
        &["build", "recipe.toml", "--locked", "--out", "out"],
    );
    let (hello, libfix) = (main.deb_path("hello"), security.deb_path("libfix"));
    assert_eq!(asked(&main, &hello), 1, "{:?}", main.requests());
    assert_eq!(asked(&security, &libfix), 1, "{:?}", security.requests());
    assert_eq!(asked(&main, &libfix), 0);
    assert_eq!(asked(&security, &hello), 0);
    let root = unpack(&w, "out");
    assert_eq!(read(&root.join("usr/share/hello/version")), "1.0\n");
    assert_eq!(read(&root.join("usr/share/libfix/version")), "1.0+sec1\n");
}

/// The image layout at `layout` unpacked by umoci (as root, so owners are kept);
/// returns its root file system.
fn unpack(w: &Work, layout: &str) -> std::path::PathBuf {
    crate::support::need_root("umoci keeps owners only as root; run scripts/test.sh as root");
    let umoci = std::process::Command::new("umoci");
    crate::support::umoci_unpack(umoci, w.path(), &format!("{layout}:latest"), "bundle")
        .join("rootfs")
}

/// A repository whose archive has no mirror configured: exit 2, at the
/// recipe line of `archive`, naming the repository and both ways to set it.
#[test]
fn an_archive_without_a_mirror_is_a_clear_error() {
    let main = Repo::start("kiln-main", &["main"], &[pkg("hello", "1.0")]);
    let w = Work::new();
    w.write(
        "recipe.toml",
        r#"name = "no-security-mirror"
platforms = ["linux/amd64"]

[repositories.debian]
suite = "kiln-main"

[repositories.security]
suite = "kiln-nowhere-security"
archive = "debian-security"

[[layers]]
packages = ["hello"]
"#,
    );
    let (code, stderr) = fails(
        &w,
        &[("KILN_MIRROR_DEBIAN", main.url.as_str())],
        &["lock", "recipe.toml"],
    );
    assert_eq!(code, 2, "{stderr}");
    for needle in [
        "recipe.toml:9:",
        "`debian-security` archive of repository `security`",
        "KILN_MIRROR_DEBIAN_SECURITY",
        "deb URL kiln-nowhere-security main",
        "apt sources",
    ] {
        assert!(stderr.contains(needle), "no `{needle}` in:\n{stderr}");
    }
    assert!(
        main.requests().is_empty(),
        "nothing is fetched before the error: {:?}",
        main.requests()
    );

    // A bad archive name is refused where it is written.
    w.write(
        "bad.toml",
        "name = \"bad\"\n[repositories.x]\nsuite = \"s\"\narchive = \"Debian Security\"\n",
    );
    let (code, stderr) = fails(&w, &[], &["lock", "bad.toml"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("bad.toml:4:"), "{stderr}");
    assert!(stderr.contains("not an archive name"), "{stderr}");
}

/// Locked against mirror A; the `.deb` then leaves A. The build fetches it
/// from fallback B by the same pool path and checks it against the lock;
/// different bytes at B are refused (exit 4); a fallback that lacks it too
/// gives an error naming both attempts (exit 3).
#[test]
fn a_deb_gone_from_the_mirror_comes_from_the_fallback_verified() {
    let a = Repo::start("kiln-main", &["main"], &[pkg("hello", "1.0")]);
    let b = Repo::start("kiln-snapshot", &["main"], &[]);
    let w = Work::new();
    w.write(
        "recipe.toml",
        r#"name = "fallback"
platforms = ["linux/amd64"]

[repositories.debian]
suite = "kiln-main"
keyring = "A_KEYRING"

[[layers]]
packages = ["hello"]
"#
        .replace("A_KEYRING", &a.keyring.display().to_string()),
    );
    ok(
        &w,
        &[("KILN_MIRROR_DEBIAN", a.url.as_str())],
        &["lock", "recipe.toml"],
    );
    let deb = a.deb_path("hello");
    let bytes = a.read(&deb);
    a.remove(&deb);

    // Neither has it: both attempts named, exit 3.
    let env = [
        ("KILN_MIRROR_DEBIAN", a.url.as_str()),
        ("KILN_FALLBACK_DEBIAN", b.url.as_str()),
    ];
    let (code, stderr) = fails(
        &w,
        &env,
        &["build", "recipe.toml", "--locked", "--out", "out"],
    );
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains(&a.url_of(&deb)), "{stderr}");
    assert!(stderr.contains(&b.url_of(&deb)), "{stderr}");
    assert!(stderr.contains("KILN_FALLBACK_DEBIAN"), "{stderr}");

    // Without a fallback, the hint says how to configure one.
    let (code, stderr) = fails(
        &w,
        &[("KILN_MIRROR_DEBIAN", a.url.as_str())],
        &["build", "recipe.toml", "--locked", "--out", "out"],
    );
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("HTTP 404"), "{stderr}");
    assert!(stderr.contains("`KILN_FALLBACK_DEBIAN`"), "{stderr}");

    // B has other bytes at the same pool path: refused, exit 4.
    let mut other = bytes.clone();
    other.push(0);
    b.write(&deb, &other);
    let (code, stderr) = fails(
        &w,
        &env,
        &["build", "recipe.toml", "--locked", "--out", "out"],
    );
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains(&b.url),
        "the refusal names where the bytes came from:\n{stderr}"
    );

    // B has the same bytes: fetched from B, verified, built.
    b.write(&deb, &bytes);
    b.clear_requests();
    ok(
        &w,
        &env,
        &["build", "recipe.toml", "--locked", "--out", "out"],
    );
    assert_eq!(asked(&b, &deb), 1, "{:?}", b.requests());
}
