//! The lock's `satisfied` names checked when the image is built: `kiln lock`
//! records a name the base recipe already installs instead of pinning it;
//! when the base later drops that package, `kiln build --locked` must say so
//! (naming the package, the recipe and lock lines, and `kiln lock`) instead of
//! building an image that lacks it. Against a local signed Debian repository
//! on 127.0.0.1 (`tests/it/support/apt.rs`); the image is read back by umoci.

use std::fs;
use std::process::{Command, Output};

use crate::support::apt::{Pkg, Repo};
use crate::support::{self, Work};

const SUITE: &str = "kiln-satisfied";

fn kiln(w: &Work, repo: &Repo, args: &[&str]) -> Output {
    crate::support::apt::kiln_at(w, &repo.url, args)
}

fn ok(w: &Work, repo: &Repo, args: &[&str]) -> String {
    crate::support::apt::kiln_ok_at(w, &repo.url, args)
}

fn base(w: &Work, packages: &str) {
    w.write(
        "base.toml",
        format!(
            "name = \"base\"\nplatforms = [\"linux/amd64\"]\n\n[repositories.test]\n\
             suite = \"{SUITE}\"\nkeyring = \"keys/test.gpg\"\n\n[[layers]]\npackages = [{packages}]\n"
        ),
    );
}

#[test]
fn a_package_the_base_no_longer_installs_fails_the_build_until_locked_again() {
    support::need_root("umoci keeps owners only as root");
    let repo = Repo::start(
        SUITE,
        &["main"],
        &[
            Pkg::new("libc", "1", "amd64").file("/usr/lib/libc.txt", "libc 1\n", 0o644),
            Pkg::new("tool-data", "1", "all").file("/usr/share/tool/data", "data 1\n", 0o644),
            Pkg::new("other", "1", "amd64").depends("libc").file(
                "/usr/bin/other",
                "other 1\n",
                0o755,
            ),
        ],
    );
    let w = Work::new();
    w.write("keys/test.gpg", fs::read(&repo.keyring).unwrap());
    base(&w, "\"libc\", \"tool-data\"");
    w.write(
        "app.toml",
        "name = \"app\"\nbase = \"base.toml\"\nplatforms = [\"linux/amd64\"]\n\n\
         [[layers]]\npackages = [\"other\", \"tool-data\"]\n",
    );
    ok(&w, &repo, &["lock", "app.toml"]);
    let lock = fs::read_to_string(w.path().join("app.lock")).unwrap();
    assert!(lock.contains("satisfied = [\"tool-data\"]"), "{lock}");
    ok(
        &w,
        &repo,
        &["build", "app.toml", "--locked", "--out", "out"],
    );

    // The base drops `tool-data` and is locked again; the child's lock still
    // says the base installs it.
    base(&w, "\"libc\"");
    ok(&w, &repo, &["lock", "base.toml"]);
    assert_eq!(fs::read_to_string(w.path().join("app.lock")).unwrap(), lock);
    let out = kiln(
        &w,
        &repo,
        &["build", "app.toml", "--locked", "--out", "out2"],
    );
    assert!(!out.status.success(), "the build should have failed");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("app.toml:6:"), "{stderr}");
    assert!(stderr.contains("`tool-data`"), "{stderr}");
    // `app.lock:N` is the line that records it.
    let n: usize = stderr
        .split("app.lock:")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        lock.lines().nth(n - 1),
        Some("satisfied = [\"tool-data\"]"),
        "{stderr}"
    );
    assert!(stderr.contains("kiln lock"), "{stderr}");
    assert_output_snapshot!(&*stderr);
    assert!(!w.path().join("out2").exists());

    // `kiln lock` again pins it in the child, and the image has it.
    ok(&w, &repo, &["lock", "app.toml"]);
    let relocked = fs::read_to_string(w.path().join("app.lock")).unwrap();
    assert!(relocked.contains("name = \"tool-data\""), "{relocked}");
    assert!(!relocked.contains("satisfied"), "{relocked}");
    ok(
        &w,
        &repo,
        &["build", "app.toml", "--locked", "--out", "out3"],
    );
    let rootfs =
        support::umoci_unpack(Command::new("umoci"), w.path(), "out3:latest", "b").join("rootfs");
    assert_eq!(
        support::read(&rootfs.join("usr/share/tool/data")),
        "data 1\n"
    );
}
