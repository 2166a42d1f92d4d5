//! Debian packages end to end: `kiln lock` against a local signed repository
//! (`tests/it/support/apt.rs`, served on 127.0.0.1), then `kiln build` installing
//! the locked `.deb`s. What kiln writes is read back with independent tools
//! where one exists: `sha256sum` for the lock's hashes, `umoci unpack` for the
//! image's files, modes and owners, `md5sum -c` for the dpkg database, GNU
//! `tar` for the layers of a multi-platform image, `pyspdxtools` for the SBOM.
//!
//! The tools are not optional: a missing one fails the test (never skips it).

use crate::support;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::support::apt::{Pkg, Repo};
use crate::support::{assert_success, last_digest, mode, owner, read, Work};
use serde_json::Value;

const SUITE: &str = "kiln-test";

// ---------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------

/// A command for an external tool that must be installed (fails, never skips).
fn tool(name: &str) -> Command {
    assert!(
        support::have(name),
        "`{name}` is not installed; run scripts/test.sh (as root), which installs the tools \
         the tests use (umoci, tar, coreutils, spdx-tools, dpkg-dev, gnupg …)"
    );
    Command::new(name)
}

/// Runs `cmd`, asserts success, returns stdout.
fn run(cmd: &mut Command) -> String {
    support::run(cmd)
}

/// `sha256sum FILE`'s hex digest.
fn sha256sum(path: &Path) -> String {
    run(tool("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// `md5sums` text (as dpkg keeps it: `<md5>  <path>` per line) for `files`,
/// computed by `md5sum` over copies written to a scratch directory.
fn md5sums(files: &[(&str, &[u8])]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tool("md5sum");
    cmd.current_dir(dir.path());
    for (path, content) in files {
        let p = dir.path().join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        cmd.arg(path);
    }
    run(&mut cmd)
}

/// Fails unless the tests run as root: `umoci unpack` keeps owners only then.
fn need_root() {
    support::need_root(
        "these tests unpack images with umoci, which keeps owners only as root; run \
         scripts/test.sh as root",
    );
}

/// `umoci unpack --image LAYOUT:latest BUNDLE` in the workspace; returns the rootfs.
fn unpack(w: &Work, layout: &str, bundle: &str) -> PathBuf {
    need_root();
    let image = format!("{layout}:latest");
    support::umoci_unpack(tool("umoci"), w.path(), &image, bundle).join("rootfs")
}

// ---------------------------------------------------------------------------
// Running kiln against a repository
// ---------------------------------------------------------------------------

/// `kiln ARGS…` in `w` with `KILN_DEBIAN_MIRROR=mirror`, and with the store
/// at `store` instead of the workspace's when given.
fn kiln(w: &Work, mirror: &str, store: Option<&Path>, args: &[&str]) -> Output {
    let mut c = w.kiln();
    c.env("KILN_DEBIAN_MIRROR", mirror).args(args);
    if let Some(s) = store {
        c.env("KILN_CACHE", s);
    }
    c.output().unwrap()
}

/// As [`kiln`], asserting success; returns stdout.
fn ok(w: &Work, mirror: &str, store: Option<&Path>, args: &[&str]) -> String {
    let out = kiln(w, mirror, store, args);
    assert_success(&out, &format!("kiln {}", args.join(" ")));
    String::from_utf8(out.stdout).unwrap()
}

/// `kiln build recipe.toml --out OUT` in `w` against `mirror` with the
/// workspace's store; returns the printed digest.
fn build(w: &Work, mirror: &str, out: &str) -> String {
    last_digest(&ok(
        w,
        mirror,
        None,
        &["build", "recipe.toml", "--out", out],
    ))
}

/// As [`kiln`], asserting failure; returns (exit code, stderr).
fn fails(w: &Work, mirror: &str, store: Option<&Path>, args: &[&str]) -> (i32, String) {
    let out = kiln(w, mirror, store, args);
    assert!(
        !out.status.success(),
        "kiln {} should have failed; stdout:\n{}\nstderr:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A recipe named `name` for `platforms`, with one repository `test` (suite
/// [`SUITE`], keyring `keyring` as written in the recipe), then `layers`.
fn recipe(name: &str, keyring: &str, platforms: &[&str], layers: &str) -> String {
    let platforms: Vec<String> = platforms.iter().map(|p| format!("{p:?}")).collect();
    format!(
        "name = \"{name}\"\nplatforms = [{}]\n\n[repositories.test]\nsuite = \"{SUITE}\"\n\
         components = [\"main\"]\nkeyring = {keyring:?}\n\n{layers}",
        platforms.join(", ")
    )
}

/// One row of a lockfile's `[[packages]]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Locked {
    arch: String,
    layer: i64,
    name: String,
    version: String,
    architecture: String,
    path: String,
    sha256: String,
    size: i64,
    repository: String,
}

/// The `[[packages]]` of the lockfile at `path`, parsed as plain TOML.
fn locked(path: &Path) -> Vec<Locked> {
    let text = read(path);
    let doc: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{} is not TOML: {e}\n{text}", path.display()));
    let Some(rows) = doc.get("packages") else {
        return Vec::new();
    };
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| {
                r.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or_else(|| panic!("lock row without string `{k}`: {r}"))
                    .to_string()
            };
            let i = |k: &str| {
                r.get(k)
                    .and_then(|v| v.as_integer())
                    .unwrap_or_else(|| panic!("lock row without integer `{k}`: {r}"))
            };
            Locked {
                arch: s("arch"),
                layer: i("layer"),
                name: s("name"),
                version: s("version"),
                architecture: s("architecture"),
                path: s("path"),
                sha256: s("sha256"),
                size: i("size"),
                repository: s("repository"),
            }
        })
        .collect()
}

/// (name, version, architecture) of the lock rows for `arch`.
fn set_for(rows: &[Locked], arch: &str) -> BTreeSet<(String, String, String)> {
    rows.iter()
        .filter(|r| r.arch == arch)
        .map(|r| (r.name.clone(), r.version.clone(), r.architecture.clone()))
        .collect()
}

fn triple(name: &str, version: &str, arch: &str) -> (String, String, String) {
    (name.into(), version.into(), arch.into())
}

/// Every row's path, size and SHA-256 are those of the served `.deb`.
fn assert_rows_match_pool(repo: &Repo, rows: &[Locked]) {
    for r in rows {
        let file = repo.path(&r.path);
        assert!(file.is_file(), "locked path {} is not in the pool", r.path);
        assert_eq!(
            r.sha256,
            sha256sum(&file),
            "sha256 of {} in the lock",
            r.path
        );
        assert_eq!(
            r.size as u64,
            fs::metadata(&file).unwrap().len(),
            "size of {}",
            r.path
        );
        assert_eq!(r.repository, "test");
    }
}

/// Parses a JSON blob of an OCI layout.
fn blob_json(layout: &Path, digest: &str) -> Value {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let bytes = fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

// ---------------------------------------------------------------------------
// The shared repository
// ---------------------------------------------------------------------------

const APP_BIN: &[u8] = b"#!/bin/sh\necho app\n";
const APP_SUID: &[u8] = b"\x7fELF pretend setuid helper\n";
const APP_README: &[u8] = b"app, a kiln test package\n";
const CERT_A: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
const CERT_B: &str = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n";
const CERT_Z: &str = "-----BEGIN CERTIFICATE-----\nZZZZ\n-----END CERTIFICATE-----\n";

/// The packages of the shared repository.
fn shared_packages() -> Vec<Pkg> {
    let sums = md5sums(&[
        ("usr/bin/app", APP_BIN),
        ("usr/lib/app/app-suid", APP_SUID),
        ("usr/share/doc/app/README", APP_README),
    ]);
    vec![
        // Resolution: versions, an alternative through a virtual package,
        // a virtual package with two providers of different priorities, a
        // versioned provider that must lose to the real package, an
        // essential dependency.
        Pkg::new("app", "1.0-1", "amd64")
            .depends("libfoo (>= 2), mta | postfix, awk, basefiles")
            .file("/usr/bin/app", APP_BIN, 0o755)
            .file("/usr/lib/app/app-suid", APP_SUID, 0o4755)
            .file("/usr/share/doc/app/README", APP_README, 0o644)
            .symlink("/usr/bin/app-link", "app")
            .dir("/var/lib/app", 0o750)
            // dpkg-deb puts `DEBIAN/*` into control.tar: the package's md5sums.
            .file("/DEBIAN/md5sums", sums, 0o644),
        Pkg::new("libfoo", "1", "amd64").file("/usr/lib/libfoo.so.1", "foo 1\n", 0o644),
        Pkg::new("libfoo", "3", "amd64").file("/usr/lib/libfoo.so.3", "foo 3\n", 0o644),
        Pkg::new("libfoo-compat", "1", "amd64")
            .provides("libfoo (= 9)")
            .file("/usr/lib/libfoo-compat.so", "compat\n", 0o644),
        Pkg::new("postfix", "3.7", "amd64").provides("mta").file(
            "/usr/sbin/postfix",
            "postfix\n",
            0o755,
        ),
        Pkg::new("gawk", "5.2", "amd64")
            .provides("awk")
            .file("/usr/bin/gawk", "gawk\n", 0o755),
        Pkg::new("mawk", "1.3.4", "amd64")
            .provides("awk")
            .field("Priority", "required")
            .file("/usr/bin/mawk", "mawk\n", 0o755),
        Pkg::new("basefiles", "12", "amd64").essential().file(
            "/etc/basefiles-marker",
            "essential\n",
            0o644,
        ),
        // Impossible: needy → middle → libbar (>= 5), with only libbar 1.
        // (Not libfoo: libfoo-compat's `Provides: libfoo (= 9)` satisfies it.)
        Pkg::new("needy", "1", "amd64").depends("middle"),
        Pkg::new("middle", "1", "amd64").depends("libbar (>= 5)"),
        Pkg::new("libbar", "1", "amd64").file("/usr/lib/libbar.so.1", "bar 1\n", 0o644),
        // The CA bundle.
        Pkg::new("ca-certificates", "20230311", "all")
            .file("/usr/share/ca-certificates/mozilla/B.crt", CERT_B, 0o644)
            .file("/usr/share/ca-certificates/mozilla/A.crt", CERT_A, 0o644)
            .file("/usr/share/ca-certificates/extra/Z.crt", CERT_Z, 0o644)
            .file(
                "/usr/share/ca-certificates/mozilla/README",
                "not a cert\n",
                0o644,
            )
            .file("/etc/ca-certificates.conf", "from the package\n", 0o644),
        // Multi-platform: one name per architecture, plus an `all` one.
        Pkg::new("tool", "2.0", "amd64")
            .depends("tool-data (= 2.0)")
            .file("/usr/bin/tool", "tool for amd64\n", 0o755),
        Pkg::new("tool", "2.0", "arm64")
            .depends("tool-data (= 2.0)")
            .file("/usr/bin/tool", "tool for arm64\n", 0o755),
        Pkg::new("tool-data", "2.0", "all").file("/usr/share/tool/data", "shared data\n", 0o644),
    ]
}

/// One repository for the tests that neither tamper with it nor count its requests.
fn shared() -> &'static Repo {
    static REPO: OnceLock<Repo> = OnceLock::new();
    REPO.get_or_init(|| Repo::start(SUITE, &["main"], &shared_packages()))
}

/// A workspace with `recipe.toml` using `repo`'s keyring (copied to
/// `keys/test.gpg`, named relative to the recipe).
fn workspace(repo: &Repo, platforms: &[&str], layers: &str) -> Work {
    let w = Work::new();
    w.write("keys/test.gpg", fs::read(&repo.keyring).unwrap());
    w.write(
        "recipe.toml",
        recipe("deb", "keys/test.gpg", platforms, layers),
    );
    w
}

/// [`workspace`], locked with `kiln lock` against `repo`.
fn locked_workspace(repo: &Repo, platforms: &[&str], layers: &str) -> Work {
    let w = workspace(repo, platforms, layers);
    ok(&w, &repo.url, None, &["lock", "recipe.toml"]);
    w
}

/// A repository with `hello` (depending on `libhello`) and a workspace whose
/// recipe installs `hello`, already locked.
fn hello_repo_locked() -> (Repo, Work) {
    let repo = Repo::start(
        SUITE,
        &["main"],
        &[
            Pkg::new("hello", "1", "amd64").depends("libhello").file(
                "/usr/bin/hello",
                "hello\n",
                0o755,
            ),
            Pkg::new("libhello", "1", "amd64").file("/usr/lib/libhello.so", "lib\n", 0o644),
        ],
    );
    let w = locked_workspace(
        &repo,
        &["linux/amd64"],
        "[[layers]]\npackages = [\"hello\"]\n",
    );
    (repo, w)
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn lock_resolves_dependencies_and_build_installs_the_locked_debs() {
    let repo = shared();
    let w = workspace(
        repo,
        &["linux/amd64"],
        "[[layers]]\nname = \"app\"\npackages = [\"app\"]\n",
    );

    // Lock: the dependency set, each row matching the served .deb.
    let out = ok(&w, &repo.url, None, &["lock", "recipe.toml"]);
    assert!(out.contains("wrote"), "first lock says it wrote: {out}");
    let lock_path = w.path().join("recipe.lock");
    let rows = locked(&lock_path);
    assert_eq!(
        set_for(&rows, "amd64"),
        BTreeSet::from([
            triple("app", "1.0-1", "amd64"),
            triple("libfoo", "3", "amd64"),
            triple("mawk", "1.3.4", "amd64"),
            triple("postfix", "3.7", "amd64"),
        ]),
        "libfoo 3 (not 1, not the provider libfoo-compat), postfix for `mta | postfix`, \
         mawk (Priority: required) for `awk`, and no essential basefiles:\n{}",
        read(&lock_path)
    );
    assert!(rows.iter().all(|r| r.arch == "amd64" && r.layer == 0));
    assert_rows_match_pool(repo, &rows);
    assert_eq!(
        rows.iter().find(|r| r.name == "app").unwrap().path,
        repo.deb_path("app")
    );

    // Locking again changes nothing, byte for byte, and says so.
    let first = fs::read(&lock_path).unwrap();
    let out = ok(&w, &repo.url, None, &["lock", "recipe.toml"]);
    assert!(out.contains("up to date"), "second lock: {out:?}");
    assert_eq!(
        String::from_utf8_lossy(&fs::read(&lock_path).unwrap()),
        String::from_utf8_lossy(&first),
        "the lockfile changed on a second `kiln lock`"
    );

    // Build twice from two different stores: the same digest.
    let one = build(&w, &repo.url, "out/one");
    let other_store = w.path().join("store-two");
    let two = last_digest(&ok(
        &w,
        &repo.url,
        Some(&other_store),
        &["build", "recipe.toml", "--out", "out/two"],
    ));
    assert_eq!(one, two, "the same lock built from two stores");
    let locked_build = last_digest(&ok(
        &w,
        &repo.url,
        None,
        &["build", "recipe.toml", "--locked", "--out", "out/three"],
    ));
    assert_eq!(one, locked_build, "--locked with an up-to-date lock");

    // The image, unpacked by umoci.
    let root = unpack(&w, "out/one", "bundle");
    let app = root.join("usr/bin/app");
    assert_eq!(fs::read(&app).unwrap(), APP_BIN);
    assert_eq!(mode(&app), 0o755);
    assert_eq!(owner(&app), (0, 0));
    let suid = root.join("usr/lib/app/app-suid");
    assert_eq!(fs::read(&suid).unwrap(), APP_SUID);
    assert_eq!(mode(&suid), 0o4755, "setuid bit kept");
    let readme = root.join("usr/share/doc/app/README");
    assert_eq!(fs::read(&readme).unwrap(), APP_README);
    assert_eq!(mode(&readme), 0o644);
    assert_eq!(
        fs::read_link(root.join("usr/bin/app-link")).unwrap(),
        PathBuf::from("app")
    );
    assert_eq!(
        mode(&root.join("var/lib/app")),
        0o750,
        "directory mode from the package"
    );
    assert_eq!(read(&root.join("usr/lib/libfoo.so.3")), "foo 3\n");
    assert!(
        !root.join("usr/lib/libfoo.so.1").exists(),
        "libfoo 1 installed"
    );
    assert!(root.join("usr/sbin/postfix").is_file());
    assert!(root.join("usr/bin/mawk").is_file());
    assert!(!root.join("usr/bin/gawk").exists(), "gawk installed");
    assert!(
        !root.join("etc/basefiles-marker").exists(),
        "essential basefiles installed though not asked for"
    );

    // The dpkg database, as distroless images keep it.
    let status = root.join("var/lib/dpkg/status.d");
    let mut names: Vec<String> = fs::read_dir(&status)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["app", "app.md5sums", "libfoo", "mawk", "postfix"],
        "status.d"
    );
    let app_status = read(&status.join("app"));
    assert!(
        app_status.starts_with("Package: app\nStatus: install ok installed\n"),
        "{app_status}"
    );
    for line in [
        "Version: 1.0-1\n",
        "Architecture: amd64\n",
        "Depends: libfoo (>= 2), mta | postfix, awk, basefiles\n",
    ] {
        assert!(app_status.contains(line), "no {line:?} in:\n{app_status}");
    }
    assert!(read(&status.join("libfoo")).contains("Version: 3\n"));
    assert!(read(&status.join("mawk")).contains("Provides: awk\n"));
    // The md5sums are the package's, and match the installed files.
    run(tool("md5sum")
        .current_dir(&root)
        .args(["--check", "--strict"])
        .arg(status.join("app.md5sums")));
}

#[test]
fn build_without_a_lock_fails_with_a_hint() {
    let repo = shared();
    let w = workspace(
        repo,
        &["linux/amd64"],
        "[[layers]]\npackages = [\"tool\"]\n",
    );
    let (code, err) = fails(&w, &repo.url, None, &["build", "recipe.toml", "--locked"]);
    assert_eq!(code, 2, "--locked without a lock: {err}");
    assert!(err.contains("kiln lock"), "{err}");
    let (code, err) = fails(&w, &repo.url, None, &["build", "recipe.toml"]);
    assert_eq!(code, 2, "no lock: {err}");
    assert!(err.contains("kiln lock"), "hint to run kiln lock: {err}");
    assert!(err.contains("recipe.toml:"), "names the recipe: {err}");
    assert!(!w.path().join("out").exists());

    // A lock missing one of the layer's packages.
    ok(&w, &repo.url, None, &["lock", "recipe.toml"]);
    w.write(
        "recipe.toml",
        recipe(
            "deb",
            "keys/test.gpg",
            &["linux/amd64"],
            "[[layers]]\npackages = [\"tool\", \"postfix\"]\n",
        ),
    );
    let (code, err) = fails(&w, &repo.url, None, &["build", "recipe.toml"]);
    assert_eq!(code, 2, "a package not in the lock: {err}");
    assert!(
        err.contains("postfix") && err.contains("kiln lock"),
        "{err}"
    );
}

#[test]
fn ca_certificates_bundle_and_recipe_files_win() {
    let repo = shared();
    let w = locked_workspace(
        repo,
        &["linux/amd64"],
        "[[layers]]\npackages = [\"ca-certificates\"]\n\
         contents = [{ dest = \"/etc/ca-certificates.conf\", text = \"from the recipe\\n\" }]\n",
    );
    let rows = locked(&w.path().join("recipe.lock"));
    assert_eq!(
        set_for(&rows, "amd64"),
        BTreeSet::from([triple("ca-certificates", "20230311", "all")])
    );
    ok(
        &w,
        &repo.url,
        None,
        &["build", "recipe.toml", "--out", "out/ca"],
    );
    let root = unpack(&w, "out/ca", "bundle");
    let bundle = root.join("etc/ssl/certs/ca-certificates.crt");
    // Path order: extra/Z.crt, mozilla/A.crt, mozilla/B.crt; README is no certificate.
    assert_eq!(read(&bundle), format!("{CERT_Z}{CERT_A}{CERT_B}"));
    assert_eq!(mode(&bundle), 0o644);
    assert_eq!(owner(&bundle), (0, 0));
    assert_eq!(
        read(&root.join("usr/share/ca-certificates/mozilla/A.crt")),
        CERT_A
    );
    assert_eq!(
        read(&root.join("etc/ca-certificates.conf")),
        "from the recipe\n",
        "a path the recipe names in the same layer wins over the package's file"
    );
    assert!(
        read(&root.join("var/lib/dpkg/status.d/ca-certificates")).contains("Architecture: all\n")
    );
}

#[test]
fn lock_refuses_another_key_and_a_tampered_index() {
    let repo = Repo::start(
        SUITE,
        &["main"],
        &[Pkg::new("hello", "1", "amd64").file("/usr/bin/hello", "hello\n", 0o755)],
    );
    let layers = "[[layers]]\npackages = [\"hello\"]\n";
    let lock_path = |w: &Work| w.path().join("recipe.lock");

    // The suite is signed, but not by the recipe's key (absolute path).
    let other = Repo::other_keyring();
    let w = Work::new();
    w.write(
        "recipe.toml",
        recipe("deb", other.to_str().unwrap(), &["linux/amd64"], layers),
    );
    let (code, err) = fails(&w, &repo.url, None, &["lock", "recipe.toml"]);
    assert_eq!(code, 4, "a signature by another key: {err}");
    assert!(err.contains("InRelease"), "names InRelease: {err}");
    assert!(!lock_path(&w).exists(), "a lock was written");

    // The right key (absolute path) works: the repository itself is fine.
    let good = Work::new();
    good.write(
        "recipe.toml",
        recipe(
            "deb",
            repo.keyring.to_str().unwrap(),
            &["linux/amd64"],
            layers,
        ),
    );
    ok(&good, &repo.url, None, &["lock", "recipe.toml"]);
    assert_eq!(locked(&lock_path(&good)).len(), 1);

    // Packages.gz (the form kiln reads first) no longer matches InRelease;
    // Packages.xz still does and must not be used to mask it.
    repo.tamper(&repo.dists("main/binary-amd64/Packages.gz"));
    let w = Work::new();
    w.write(
        "recipe.toml",
        recipe(
            "deb",
            repo.keyring.to_str().unwrap(),
            &["linux/amd64"],
            layers,
        ),
    );
    let (code, err) = fails(&w, &repo.url, None, &["lock", "recipe.toml"]);
    assert_eq!(code, 4, "a tampered Packages.gz: {err}");
    assert!(err.contains("Packages.gz"), "names the index: {err}");
    assert!(!lock_path(&w).exists(), "a lock was written");

    // A broken signature (text changed under it) fails too.
    let inrelease = repo.dists("InRelease");
    let text = String::from_utf8(repo.read(&inrelease)).unwrap();
    repo.write(&inrelease, text.replacen("kiln-test", "kiln-tesT", 1));
    let (code, err) = fails(&w, &repo.url, None, &["lock", "recipe.toml"]);
    assert_eq!(code, 4, "an InRelease whose signature breaks: {err}");
    assert!(!lock_path(&w).exists(), "a lock was written");
}

#[test]
fn lock_names_an_unknown_package_and_an_impossible_chain() {
    let repo = shared();
    let layers = "[[layers]]\nname = \"base\"\npackages = [\"postfix\"]\n\n\
                  [[layers]]\nname = \"more\"\npackages = [\n  \"mawk\",\n  \"no-such-package\",\n]\n";
    let w = workspace(repo, &["linux/amd64"], layers);
    let text = read(&w.path().join("recipe.toml"));
    let at = text.find("\"no-such-package\"").unwrap();
    let line = text[..at].matches('\n').count() + 1;
    let col = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    let (code, err) = fails(&w, &repo.url, None, &["lock", "recipe.toml"]);
    assert_eq!(code, 2, "an unknown package: {err}");
    assert!(
        err.contains(&format!("recipe.toml:{line}:{col}")),
        "expected recipe.toml:{line}:{col} in:\n{err}"
    );
    assert!(err.contains("no-such-package"), "{err}");
    assert!(!w.path().join("recipe.lock").exists());

    let w = workspace(
        repo,
        &["linux/amd64"],
        "[[layers]]\npackages = [\"needy\"]\n",
    );
    let (code, err) = fails(&w, &repo.url, None, &["lock", "recipe.toml"]);
    assert_eq!(code, 2, "an impossible dependency: {err}");
    assert!(
        err.contains("needy → middle → libbar (>= 5)"),
        "names the chain: {err}"
    );
    assert!(!w.path().join("recipe.lock").exists());
}

/// The chain's error points at the requested package it starts from, not at
/// whichever package the layer names first.
#[test]
fn an_impossible_chain_points_at_the_package_it_starts_from() {
    let repo = shared();
    let w = workspace(
        repo,
        &["linux/amd64"],
        "[[layers]]\npackages = [\"postfix\", \"needy\"]\n",
    );
    let text = read(&w.path().join("recipe.toml"));
    let at = text.find("\"needy\"").unwrap();
    let line = text[..at].matches('\n').count() + 1;
    let col = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    let (code, err) = fails(&w, &repo.url, None, &["lock", "recipe.toml"]);
    assert_eq!(code, 2, "an impossible dependency: {err}");
    assert!(err.contains("needy → middle → libbar (>= 5)"), "{err}");
    assert!(
        err.contains(&format!("recipe.toml:{line}:{col}")),
        "expected the location of \"needy\", recipe.toml:{line}:{col}, in:\n{err}"
    );
}

/// Packages an earlier layer installs count as installed in later layers:
/// they are pinned once, in the layer that asked first.
#[test]
fn later_layers_reuse_what_earlier_layers_install() {
    let repo = shared();
    let w = locked_workspace(
        repo,
        &["linux/amd64"],
        "[[layers]]\nname = \"base\"\npackages = [\"postfix\", \"libfoo\"]\n\n\
         [[layers]]\nname = \"app\"\npackages = [\"app\"]\n",
    );
    let rows = locked(&w.path().join("recipe.lock"));
    let layer = |n: i64| -> BTreeSet<String> {
        rows.iter()
            .filter(|r| r.layer == n)
            .map(|r| format!("{}={}", r.name, r.version))
            .collect()
    };
    assert_eq!(
        layer(0),
        BTreeSet::from(["libfoo=3".to_string(), "postfix=3.7".to_string()])
    );
    assert_eq!(
        layer(1),
        BTreeSet::from(["app=1.0-1".to_string(), "mawk=1.3.4".to_string()])
    );
    ok(
        &w,
        &repo.url,
        None,
        &["build", "recipe.toml", "--out", "out/two"],
    );
    let root = unpack(&w, "out/two", "bundle");
    for name in ["app", "libfoo", "mawk", "postfix"] {
        assert!(
            root.join("var/lib/dpkg/status.d").join(name).is_file(),
            "status.d/{name} missing"
        );
    }
}

/// `--locked` is for CI: it must fail when the lock no longer matches the
/// recipe's packages, here a package the recipe stopped asking for.
#[test]
fn locked_refuses_a_lock_that_pins_packages_the_recipe_dropped() {
    let repo = shared();
    let w = locked_workspace(
        repo,
        &["linux/amd64"],
        "[[layers]]\npackages = [\"tool\", \"postfix\"]\n",
    );
    w.write(
        "recipe.toml",
        recipe(
            "deb",
            "keys/test.gpg",
            &["linux/amd64"],
            "[[layers]]\npackages = [\"tool\"]\n",
        ),
    );
    let out = kiln(
        &w,
        &repo.url,
        None,
        &["build", "recipe.toml", "--locked", "--out", "out/stale"],
    );
    let installed_postfix = out.status.success() && {
        let root = unpack(&w, "out/stale", "bundle");
        root.join("usr/sbin/postfix").exists()
    };
    assert!(
        !out.status.success(),
        "`kiln build --locked` succeeded with a stale lock (postfix pinned, no longer \
         asked for; installed: {installed_postfix}); stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("kiln lock"));
}

#[test]
fn build_refuses_a_tampered_deb_and_leaves_out_alone() {
    let (repo, w) = hello_repo_locked();
    let good = build(&w, &repo.url, "out/img");
    let index_before = fs::read(w.path().join("out/img/index.json")).unwrap();

    repo.tamper(&repo.deb_path("libhello"));
    let fresh = w.path().join("fresh-store");
    for out in ["out/img", "out/new"] {
        let (code, err) = fails(
            &w,
            &repo.url,
            Some(&fresh),
            &["build", "recipe.toml", "--out", out],
        );
        assert_eq!(code, 4, "a .deb that does not match the lock: {err}");
        assert!(err.contains("libhello"), "names the package: {err}");
    }
    assert_eq!(
        fs::read(w.path().join("out/img/index.json")).unwrap(),
        index_before,
        "the previous --out was changed"
    );
    assert!(!w.path().join("out/new").exists(), "something at --out");
    // The first store still holds the good .deb: building from it still works.
    let again = build(&w, &repo.url, "out/img");
    assert_eq!(good, again);
}

#[test]
fn offline_builds_from_the_store_alone() {
    let (repo, w) = hello_repo_locked();
    let debs = [repo.deb_path("hello"), repo.deb_path("libhello")];

    repo.clear_requests();
    let first = build(&w, &repo.url, "out/one");
    let requests = repo.requests();
    for deb in &debs {
        assert_eq!(
            requests.iter().filter(|r| *r == deb).count(),
            1,
            "the first build fetches {deb} once: {requests:?}"
        );
    }

    // Online again with the same store: no .deb is downloaded again.
    repo.clear_requests();
    let second = build(&w, &repo.url, "out/two");
    assert_eq!(first, second);
    let requests = repo.requests();
    assert!(
        !requests.iter().any(|r| r.ends_with(".deb")),
        "the second build downloaded .debs already in the store: {requests:?}"
    );

    // Offline, with a mirror that cannot answer: the same digest.
    let dead = "http://127.0.0.1:9/debian";
    let offline = last_digest(&ok(
        &w,
        dead,
        None,
        &["build", "recipe.toml", "--offline", "--out", "out/three"],
    ));
    assert_eq!(first, offline, "--offline from the store");

    // Offline with an empty store: a clear failure, nothing at --out.
    let fresh = w.path().join("fresh-store");
    let (code, err) = fails(
        &w,
        dead,
        Some(&fresh),
        &["build", "recipe.toml", "--offline", "--out", "out/four"],
    );
    assert_eq!(code, 2, "--offline with the .debs missing: {err}");
    assert!(err.contains("--offline"), "{err}");
    assert!(err.contains("hello"), "names a missing package: {err}");
    assert!(!w.path().join("out/four").exists());
}

#[test]
fn multi_platform_locks_and_installs_each_architecture() {
    let repo = shared();
    let w = locked_workspace(
        repo,
        &["linux/amd64", "linux/arm64"],
        "[[layers]]\npackages = [\"tool\"]\n",
    );
    let rows = locked(&w.path().join("recipe.lock"));
    assert_eq!(
        set_for(&rows, "amd64"),
        BTreeSet::from([
            triple("tool", "2.0", "amd64"),
            triple("tool-data", "2.0", "all")
        ])
    );
    assert_eq!(
        set_for(&rows, "arm64"),
        BTreeSet::from([
            triple("tool", "2.0", "arm64"),
            triple("tool-data", "2.0", "all")
        ])
    );
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_rows_match_pool(repo, &rows);
    let tool_path = |arch: &str| {
        rows.iter()
            .find(|r| r.name == "tool" && r.arch == arch)
            .unwrap()
            .path
            .clone()
    };
    assert_eq!(
        tool_path("amd64"),
        Pkg::new("tool", "2.0", "amd64").pool_path("main")
    );
    assert_eq!(
        tool_path("arm64"),
        Pkg::new("tool", "2.0", "arm64").pool_path("main")
    );

    let digest = build(&w, &repo.url, "out/multi");
    let layout = w.path().join("out/multi");
    let top: Value = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let top = top["manifests"].as_array().unwrap();
    assert_eq!(top.len(), 1, "{top:?}");
    assert_eq!(top[0]["digest"], digest.as_str());
    assert_eq!(
        top[0]["mediaType"], "application/vnd.oci.image.index.v1+json",
        "two platforms give an index"
    );
    let index = blob_json(&layout, &digest);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 2, "{index}");
    let mut layers_by_arch = Vec::new();
    for m in manifests {
        let arch = m["platform"]["architecture"].as_str().unwrap().to_string();
        assert_eq!(m["platform"]["os"], "linux");
        let manifest = blob_json(&layout, m["digest"].as_str().unwrap());
        let layers: Vec<String> = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(layers.len(), 1, "{manifest}");
        // The layer's files, extracted by GNU tar.
        let dir = w.path().join(format!("layer-{arch}"));
        fs::create_dir_all(&dir).unwrap();
        let blob = layout
            .join("blobs/sha256")
            .join(layers[0].strip_prefix("sha256:").unwrap());
        run(tool("tar").arg("-xzf").arg(&blob).arg("-C").arg(&dir));
        assert_eq!(
            read(&dir.join("usr/bin/tool")),
            format!("tool for {arch}\n")
        );
        assert_eq!(read(&dir.join("usr/share/tool/data")), "shared data\n");
        let status = read(&dir.join("var/lib/dpkg/status.d/tool"));
        assert!(
            status.contains(&format!("Architecture: {arch}\n")),
            "{status}"
        );
        layers_by_arch.push((arch, layers));
    }
    layers_by_arch.sort();
    let archs: Vec<&str> = layers_by_arch.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(archs, ["amd64", "arm64"]);
    assert_ne!(
        layers_by_arch[0].1, layers_by_arch[1].1,
        "the two platforms' layers are the same"
    );
}

#[test]
fn sbom_lists_the_installed_packages_with_purls() {
    let repo = shared();
    let w = locked_workspace(repo, &["linux/amd64"], "[[layers]]\npackages = [\"app\"]\n");
    ok(
        &w,
        &repo.url,
        None,
        &["build", "recipe.toml", "--sbom", "--out", "out/app"],
    );
    let sbom = w.path().join("out/app.sbom.spdx.json");
    assert!(sbom.is_file(), "no SBOM at {}", sbom.display());
    run(tool("pyspdxtools").arg("-i").arg(&sbom));

    let expected = [
        "pkg:deb/debian/app@1.0-1?arch=amd64",
        "pkg:deb/debian/libfoo@3?arch=amd64",
        "pkg:deb/debian/mawk@1.3.4?arch=amd64",
        "pkg:deb/debian/postfix@3.7?arch=amd64",
    ];
    let purls = |doc: &Value| -> BTreeSet<String> {
        doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["externalRefs"].as_array().cloned().unwrap_or_default())
            .filter(|r| r["referenceType"] == "purl")
            .map(|r| r["referenceLocator"].as_str().unwrap().to_string())
            .collect()
    };
    let doc: Value = serde_json::from_slice(&fs::read(&sbom).unwrap()).unwrap();
    let got = purls(&doc);
    let want: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    assert_eq!(got, want, "purls of the build's SBOM");

    // `kiln sbom OUT` describes the same packages.
    let printed = ok(&w, &repo.url, None, &["sbom", "out/app"]);
    let doc: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(purls(&doc), want, "purls of `kiln sbom`");
    let file = w.write("printed.spdx.json", &printed);
    run(tool("pyspdxtools").arg("-i").arg(&file));
}

/// A layer that installs a shared library gets an `/etc/ld.so.cache` naming
/// it (made with ldconfig, as the package's trigger would have), the same on
/// every build.
#[test]
fn a_layer_with_shared_libraries_gets_an_ld_so_cache() {
    let src = Work::new();
    src.write("k.c", "int kiln_answer(void) { return 42; }\n");
    run(tool("gcc").current_dir(src.path()).args([
        "-shared",
        "-fPIC",
        "-Wl,-soname,libkilntest.so.1",
        "-o",
        "libkilntest.so.1.0",
        "k.c",
    ]));
    let lib = fs::read(src.path().join("libkilntest.so.1.0")).unwrap();
    let pkg = Pkg::new("libkilntest1", "1.0", "amd64")
        .file("/usr/lib/x86_64-linux-gnu/libkilntest.so.1.0", &lib, 0o644)
        .symlink(
            "/usr/lib/x86_64-linux-gnu/libkilntest.so.1",
            "libkilntest.so.1.0",
        );
    let repo = Repo::start(SUITE, &["main"], &[pkg]);
    let w = locked_workspace(
        &repo,
        &["linux/amd64"],
        "[[layers]]\npackages = [\"libkilntest1\"]\n",
    );
    let first = ok(
        &w,
        &repo.url,
        None,
        &["build", "recipe.toml", "--out", "out/lib"],
    );
    let again = Work::new();
    fs::create_dir_all(again.path().join("keys")).unwrap();
    for f in ["recipe.toml", "recipe.lock", "keys/test.gpg"] {
        fs::copy(w.path().join(f), again.path().join(f)).unwrap();
    }
    let second = ok(
        &again,
        &repo.url,
        None,
        &["build", "recipe.toml", "--out", "out/lib"],
    );
    assert_eq!(
        first.lines().last(),
        second.lines().last(),
        "the ld.so.cache is not reproducible"
    );
    let root = unpack(&w, "out/lib", "bundle");
    let cache = fs::read(root.join("etc/ld.so.cache")).expect("no /etc/ld.so.cache");
    assert!(
        cache.starts_with(b"glibc-ld.so.cache1.1"),
        "not a glibc cache"
    );
    let text = String::from_utf8_lossy(&cache);
    assert!(
        text.contains("/usr/lib/x86_64-linux-gnu/libkilntest.so.1"),
        "the cache does not name the library: {text:?}"
    );
}

/// A rebuild with nothing changed takes the layer's `/etc/ld.so.cache` from
/// the store: ldconfig is asked only for its version, and no scratch copy
/// of the layer is written; the digest is the same.
#[test]
fn a_warm_rebuild_does_not_run_ldconfig_again() {
    let real = ["/usr/sbin/ldconfig", "/sbin/ldconfig"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("no ldconfig on this host (libc-bin)");
    let src = Work::new();
    src.write("k.c", "int kiln_answer(void) { return 42; }\n");
    run(tool("gcc").current_dir(src.path()).args([
        "-shared",
        "-fPIC",
        "-o",
        "libkilnwarm.so.1",
        "k.c",
    ]));
    let lib = fs::read(src.path().join("libkilnwarm.so.1")).unwrap();
    let pkg = Pkg::new("libkilnwarm1", "1.0", "amd64").file(
        "/usr/lib/x86_64-linux-gnu/libkilnwarm.so.1",
        &lib,
        0o644,
    );
    let repo = Repo::start(SUITE, &["main"], &[pkg]);
    let w = locked_workspace(
        &repo,
        &["linux/amd64"],
        "[[layers]]\npackages = [\"libkilnwarm1\"]\n",
    );
    // An ldconfig that logs its arguments, then runs the real one.
    let log = w.path().join("ldconfig.log");
    let bin = w.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    w.write(
        "bin/ldconfig",
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\nexec {real} \"$@\"\n",
            log.display()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(bin.join("ldconfig"), fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let build = |out: &str| {
        let o = w
            .kiln()
            .env("KILN_DEBIAN_MIRROR", &repo.url)
            .env("PATH", &path)
            .args(["build", "recipe.toml", "--out", out])
            .output()
            .unwrap();
        assert_success(&o, "kiln build");
        last_digest(&String::from_utf8(o.stdout).unwrap())
    };
    let cold = build("out/a");
    let calls = fs::read_to_string(&log).unwrap();
    assert!(
        calls.lines().any(|l| l.contains("-r")),
        "the cold build did not run ldconfig -r: {calls:?}"
    );
    fs::remove_file(&log).unwrap();
    let warm = build("out/b");
    let calls = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !calls.lines().any(|l| l.contains("-r")),
        "the warm build ran ldconfig on a scratch tree again: {calls:?}"
    );
    assert_eq!(cold, warm, "the warm build gave another digest");
    let root = unpack(&w, "out/b", "bundle");
    let cache = fs::read(root.join("etc/ld.so.cache")).expect("no /etc/ld.so.cache");
    assert!(
        String::from_utf8_lossy(&cache).contains("libkilnwarm.so.1"),
        "the cache taken from the store does not name the library"
    );
}

/// A symlink from one package and a file beneath it from another (each
/// harmless alone) must not let the build write through the link on the
/// host: the ld.so.cache scratch tree once followed it and created the
/// library in the directory the link names.
#[test]
fn a_file_beneath_another_packages_symlink_is_refused_and_writes_nothing_outside() {
    let canary = support::Canary::new();
    let before = canary.listing();
    let target = canary.at("victim");
    let link = Pkg::new("evil-link", "1.0", "amd64").symlink("/usr/lib/evil", &target);
    let file = Pkg::new("evil-file", "1.0", "amd64").file(
        "/usr/lib/evil/libevil.so.1",
        b"\x7fELF not really",
        0o644,
    );
    let repo = Repo::start(SUITE, &["main"], &[link, file.clone().compression("none")]);
    // dpkg-deb writes every parent directory; a crafted package leaves out
    // `./usr/lib/evil/` so that only the other package's link stands there.
    let deb = repo.path(&file.pool_path("main"));
    let scratch = Work::new();
    run(tool("ar")
        .current_dir(scratch.path())
        .arg("x")
        .arg(&deb)
        .arg("data.tar"));
    run(tool("tar").current_dir(scratch.path()).args([
        "--delete",
        "--no-recursion",
        "-f",
        "data.tar",
        "./usr/lib/evil/",
    ]));
    run(tool("ar")
        .current_dir(scratch.path())
        .arg("r")
        .arg(&deb)
        .arg("data.tar"));
    repo.reindex();
    let w = locked_workspace(
        &repo,
        &["linux/amd64"],
        "[[layers]]\npackages = [\"evil-link\", \"evil-file\"]\n",
    );
    let out = kiln(
        &w,
        &repo.url,
        None,
        &["build", "recipe.toml", "--out", "out/evil"],
    );
    let (code, stderr) = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(
        canary.listing(),
        before,
        "the build wrote outside its tree (exit {code}): {stderr}"
    );
    assert_eq!(code, 2, "{stderr}");
    for word in [
        "evil-link",
        "evil-file",
        "/usr/lib/evil/libevil.so.1",
        "symlink",
    ] {
        assert!(
            stderr.contains(word),
            "the error does not name `{word}`: {stderr}"
        );
    }
    assert!(
        !w.path().join("out/evil").exists(),
        "a refused build left output"
    );
}
