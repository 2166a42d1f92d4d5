//! `kiln lock` as people live with it (issue 11, part 4), against a local
//! signed Debian repository (`tests/it/support/apt.rs`, on 127.0.0.1):
//! a package the base recipe already installs is recorded as satisfied by
//! the base (no "not pinned" loop); pins that still resolve are kept;
//! `--update [PKG…]` moves to the newest versions, and the lockfile diff of
//! a one-package update is one hunk; base recipes are locked with their
//! child; repositories are inherited from the base recipe; a build whose
//! lock is missing says so before any base is built.

use std::fs;

use crate::support::apt::{Pkg, Repo};
use crate::support::{assert_success, Work};

const SUITE: &str = "kiln-test";

fn ok(w: &Work, repo: &Repo, args: &[&str]) -> String {
    crate::support::apt::kiln_ok_at(w, &repo.url, args)
}

fn fails(w: &Work, repo: &Repo, args: &[&str]) -> (i32, String) {
    crate::support::apt::kiln_fails_at(w, &repo.url, args)
}

fn repositories() -> String {
    format!("[repositories.test]\nsuite = \"{SUITE}\"\nkeyring = \"keys/test.gpg\"\n")
}

/// A workspace with the repository's keyring at `keys/test.gpg`.
fn workspace(repo: &Repo) -> Work {
    let w = Work::new();
    w.write("keys/test.gpg", fs::read(&repo.keyring).unwrap());
    w
}

/// `base.toml` installing `base_packages`, and `app.toml` on it installing
/// `app_packages`; the child names its own repositories only when `repeat`.
fn base_and_child(w: &Work, base_packages: &str, app_packages: &str, repeat: bool) {
    w.write(
        "base.toml",
        format!(
            "name = \"base\"\nplatforms = [\"linux/amd64\"]\n\n{}\n[[layers]]\npackages = [{base_packages}]\n",
            repositories()
        ),
    );
    w.write(
        "app.toml",
        format!(
            "name = \"app\"\nbase = \"base.toml\"\nplatforms = [\"linux/amd64\"]\n\n{}\n[[layers]]\npackages = [{app_packages}]\n",
            if repeat { repositories() } else { String::new() }
        ),
    );
}

fn repo_v1() -> Repo {
    Repo::start(
        SUITE,
        &["main"],
        &[
            Pkg::new("libc", "1", "amd64").file("/usr/lib/libc.txt", "libc 1\n", 0o644),
            Pkg::new("tool", "1", "amd64")
                .depends("libc, tool-data (= 1)")
                .file("/usr/bin/tool", "tool 1\n", 0o755),
            Pkg::new("tool-data", "1", "all").file("/usr/share/tool/data", "data 1\n", 0o644),
            Pkg::new("other", "1", "amd64").depends("libc").file(
                "/usr/bin/other",
                "other 1\n",
                0o755,
            ),
        ],
    )
}

fn v2() -> Vec<Pkg> {
    vec![
        Pkg::new("tool", "2", "amd64")
            .depends("libc, tool-data (= 2)")
            .file("/usr/bin/tool", "tool 2\n", 0o755),
        Pkg::new("tool-data", "2", "all").file("/usr/share/tool/data", "data 2\n", 0o644),
        Pkg::new("other", "2", "amd64")
            .depends("libc")
            .file("/usr/bin/other", "other 2\n", 0o755),
    ]
}

/// `name = version` for every `[[packages]]` stanza of a lockfile.
fn versions(text: &str) -> Vec<(String, String)> {
    let lock: toml::Value = toml::from_str(text).unwrap();
    let mut out: Vec<(String, String)> = lock
        .get("packages")
        .and_then(|p| p.as_array())
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap().to_string(),
                        p["version"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// The lines of `after` not in `before` and of `before` not in `after`, by
/// `diff -U3` (as a review shows it), and the number of hunks.
fn diff(before: &str, after: &str) -> (Vec<String>, usize) {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a"), before).unwrap();
    fs::write(dir.path().join("b"), after).unwrap();
    let out = std::process::Command::new("diff")
        .arg("-U3")
        .arg(dir.path().join("a"))
        .arg(dir.path().join("b"))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let hunks = text.lines().filter(|l| l.starts_with("@@")).count();
    let changed = text
        .lines()
        .filter(|l| {
            (l.starts_with('+') || l.starts_with('-'))
                && !l.starts_with("+++")
                && !l.starts_with("---")
        })
        .map(String::from)
        .collect();
    (changed, hunks)
}

/// The report's loop: the base installs `libc`, the child asks for it too.
/// `kiln lock` succeeded, then `kiln build` said `libc` was "not pinned" and
/// sent the user back to `kiln lock`, forever.
#[test]
fn a_package_the_base_installs_is_satisfied_by_the_base() {
    let repo = repo_v1();
    let w = workspace(&repo);
    base_and_child(&w, "\"libc\"", "\"libc\", \"other\"", true);
    ok(&w, &repo, &["lock", "app.toml"]);
    let lock = fs::read_to_string(w.path().join("app.lock")).unwrap();
    assert!(lock.contains("satisfied = [\"libc\"]"), "{lock}");
    // `libc` is not installed again by the child.
    assert_eq!(versions(&lock), pairs(&[("other", "1")]), "{lock}");
    ok(&w, &repo, &["build", "app.toml", "--out", "out"]);
    ok(
        &w,
        &repo,
        &["build", "app.toml", "--out", "out2", "--locked"],
    );
    // Locking again changes nothing.
    let again = ok(&w, &repo, &["lock", "app.toml"]);
    assert!(again.contains("up to date"), "{again}");
    assert_eq!(fs::read_to_string(w.path().join("app.lock")).unwrap(), lock);
}

/// A child layer asking only for what the base has: nothing to install.
#[test]
fn a_layer_wholly_satisfied_by_the_base_builds() {
    let repo = repo_v1();
    let w = workspace(&repo);
    base_and_child(&w, "\"tool\"", "\"libc\"", false);
    ok(&w, &repo, &["lock", "app.toml"]);
    ok(
        &w,
        &repo,
        &["build", "app.toml", "--out", "out", "--locked"],
    );
}

#[test]
fn lock_keeps_pins_and_update_moves_only_what_is_named() {
    let repo = repo_v1();
    let w = workspace(&repo);
    w.write(
        "recipe.toml",
        format!(
            "name = \"app\"\nplatforms = [\"linux/amd64\"]\n\n{}\n[[layers]]\npackages = [\"tool\", \"other\"]\n",
            repositories()
        ),
    );
    ok(&w, &repo, &["lock", "recipe.toml"]);
    let v1 = fs::read_to_string(w.path().join("recipe.lock")).unwrap();
    let at_v1 = pairs(&[
        ("libc", "1"),
        ("other", "1"),
        ("tool", "1"),
        ("tool-data", "1"),
    ]);
    assert_eq!(versions(&v1), at_v1);

    repo.add(&v2());
    // Plain `kiln lock` keeps what still resolves: the bytes do not move.
    let out = ok(&w, &repo, &["lock", "recipe.toml"]);
    assert!(out.contains("up to date"), "{out}");
    assert_eq!(
        fs::read_to_string(w.path().join("recipe.lock")).unwrap(),
        v1
    );

    // `--update tool` moves tool and what its new version requires, only.
    ok(&w, &repo, &["lock", "recipe.toml", "--update", "tool"]);
    let tool2 = fs::read_to_string(w.path().join("recipe.lock")).unwrap();
    assert_eq!(
        versions(&tool2),
        pairs(&[
            ("libc", "1"),
            ("other", "1"),
            ("tool", "2"),
            ("tool-data", "2")
        ])
    );
    // One package per stanza, sorted: the diff is one hunk over tool's and
    // tool-data's adjacent stanzas, and touches only their version, path,
    // sha256 and size lines (a size that happens to be equal does not move).
    let (changed, hunks) = diff(&v1, &tool2);
    assert!((12..=16).contains(&changed.len()), "{changed:#?}");
    assert_eq!(hunks, 1, "{changed:#?}");
    for line in &changed {
        assert!(
            ["version", "path", "sha256", "size"]
                .iter()
                .any(|k| line[1..].starts_with(k)),
            "an unrelated line moved: {line}"
        );
    }

    // `--update` moves everything to the newest.
    ok(&w, &repo, &["lock", "recipe.toml", "--update"]);
    let all = fs::read_to_string(w.path().join("recipe.lock")).unwrap();
    assert_eq!(
        versions(&all),
        pairs(&[
            ("libc", "1"),
            ("other", "2"),
            ("tool", "2"),
            ("tool-data", "2")
        ])
    );
    let (changed, hunks) = diff(&tool2, &all);
    assert!((6..=8).contains(&changed.len()), "{changed:#?}");
    assert_eq!(hunks, 1, "{changed:#?}");
    assert!(changed.iter().all(|l| !l.contains("tool")), "{changed:#?}");

    ok(
        &w,
        &repo,
        &["build", "recipe.toml", "--out", "out", "--locked"],
    );
}

#[test]
fn a_pin_that_no_longer_resolves_moves_and_only_it() {
    let repo = repo_v1();
    let w = workspace(&repo);
    w.write(
        "recipe.toml",
        format!(
            "name = \"app\"\nplatforms = [\"linux/amd64\"]\n\n{}\n[[layers]]\npackages = [\"tool\", \"other\"]\n",
            repositories()
        ),
    );
    ok(&w, &repo, &["lock", "recipe.toml"]);
    repo.add(&v2());
    // Debian drops the superseded `other` 1.
    repo.remove("pool/main/o/other/other_1_amd64.deb");
    repo.reindex();
    ok(&w, &repo, &["lock", "recipe.toml"]);
    let lock = fs::read_to_string(w.path().join("recipe.lock")).unwrap();
    assert_eq!(
        versions(&lock),
        pairs(&[
            ("libc", "1"),
            ("other", "2"),
            ("tool", "1"),
            ("tool-data", "1")
        ])
    );
}

/// A child's `kiln lock` locks its base recipe when the base's lock is
/// missing (and leaves an up-to-date one alone); the child need not repeat
/// the base's `[repositories]`.
#[test]
fn lock_locks_the_base_recipe_and_repositories_are_inherited() {
    let repo = repo_v1();
    let w = workspace(&repo);
    base_and_child(&w, "\"libc\"", "\"other\"", false);
    let out = ok(&w, &repo, &["lock", "app.toml"]);
    assert!(out.contains("base.lock"), "names the base's lock: {out}");
    let base = fs::read_to_string(w.path().join("base.lock")).unwrap();
    assert_eq!(versions(&base), pairs(&[("libc", "1")]));
    let app = fs::read_to_string(w.path().join("app.lock")).unwrap();
    assert_eq!(versions(&app), pairs(&[("other", "1")]));
    ok(
        &w,
        &repo,
        &["build", "app.toml", "--out", "out", "--locked"],
    );

    // The base recipe changes: its lock is stale, and the child's lock redoes it.
    w.write(
        "base.toml",
        format!(
            "name = \"base\"\nplatforms = [\"linux/amd64\"]\n\n{}\n[[layers]]\npackages = [\"libc\", \"tool\"]\n",
            repositories()
        ),
    );
    ok(&w, &repo, &["lock", "app.toml"]);
    let base = fs::read_to_string(w.path().join("base.lock")).unwrap();
    assert_eq!(
        versions(&base),
        pairs(&[("libc", "1"), ("tool", "1"), ("tool-data", "1")])
    );
    ok(
        &w,
        &repo,
        &["build", "app.toml", "--out", "out2", "--locked"],
    );
}

/// A recipe that names a repository of the base's name overrides it.
#[test]
fn a_recipe_overrides_an_inherited_repository_by_name() {
    let repo = repo_v1();
    let w = workspace(&repo);
    base_and_child(&w, "\"libc\"", "\"other\"", false);
    // The child's `test` has a suite that does not exist: it wins, and fails.
    let text = fs::read_to_string(w.path().join("app.toml")).unwrap();
    w.write(
        "app.toml",
        text.replace(
            "\n[[layers]]",
            "[repositories.test]\nsuite = \"nowhere\"\nkeyring = \"keys/test.gpg\"\n\n[[layers]]",
        ),
    );
    let (_, err) = fails(&w, &repo, &["lock", "app.toml"]);
    assert!(err.contains("nowhere"), "{err}");
}

/// A missing lock is reported before any base is built: resolution of the
/// whole chain runs first.
#[test]
fn a_missing_lock_fails_before_the_base_is_built() {
    let repo = repo_v1();
    let w = workspace(&repo);
    base_and_child(&w, "\"libc\"", "\"other\"", true);
    // The base is locked, the child is not.
    ok(&w, &repo, &["lock", "base.toml"]);
    // With progress on, as a user sees it.
    let out = w
        .kiln()
        .env("KILN_DEBIAN_MIRROR", &repo.url)
        .env_remove("KILN_NO_PROGRESS")
        .args(["build", "app.toml", "--out", "out"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let (code, err) = (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not pinned") && err.contains("kiln lock app.toml"),
        "{err}"
    );
    assert!(
        !err.contains("build   layer"),
        "built something first: {err}"
    );
    assert!(!w.path().join("out").exists());
    // Once locked, the same build reports its layers (the check above can fail).
    ok(&w, &repo, &["lock", "app.toml"]);
    let out = w
        .kiln()
        .env("KILN_DEBIAN_MIRROR", &repo.url)
        .env_remove("KILN_NO_PROGRESS")
        .args(["build", "app.toml", "--out", "out"])
        .output()
        .unwrap();
    assert_success(&out, "kiln build app.toml");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("build   layer"), "{err}");
}
