//! What dpkg's configuration and maintainer scripts would have done, done
//! declaratively: a layer's `exclude` leaving out package files as dpkg's
//! `path-exclude` does (copyright files kept, the dpkg database complete),
//! and the links `update-alternatives` makes in auto mode. Packages come from
//! a local signed Debian repository on 127.0.0.1; images are read back with
//! `umoci unpack`, the dpkg database with `md5sum -c`.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use crate::support::apt::{Pkg, Repo};
use crate::support::{self, Work};

const SUITE: &str = "kiln-declarative";

const TOOL: &str = "#!/bin/sh\necho tool\n";
const COPYRIGHT: &str =
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nLicense: MIT\n";
const README: &str = "a long readme\n";
const MAN: &str = "man page bytes\n";
const MO: &str = "translated strings\n";

/// `md5sum` over `files` written to a scratch directory, as dpkg keeps it.
fn md5sums(files: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("md5sum");
    cmd.current_dir(dir.path());
    for (path, content) in files {
        let p = dir.path().join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        cmd.arg(path);
    }
    support::run(&mut cmd)
}

fn packages() -> Vec<Pkg> {
    let files = [
        ("usr/bin/tool", TOOL),
        ("usr/share/doc/tool/copyright", COPYRIGHT),
        ("usr/share/doc/tool/README", README),
        ("usr/share/man/man1/tool.1.gz", MAN),
        ("usr/share/locale/de/LC_MESSAGES/tool.mo", MO),
    ];
    let mut tool = Pkg::new("tool", "1.0", "amd64").file("/DEBIAN/md5sums", md5sums(&files), 0o644);
    for (path, content) in files {
        let mode = if path.starts_with("usr/bin") {
            0o755
        } else {
            0o644
        };
        tool = tool.file(&format!("/{path}"), content, mode);
    }
    vec![tool]
}

fn repo() -> &'static Repo {
    static REPO: OnceLock<Repo> = OnceLock::new();
    REPO.get_or_init(|| Repo::start(SUITE, &["main"], &packages()))
}

fn kiln(w: &Work, args: &[&str]) -> std::process::Output {
    w.kiln()
        .env("KILN_DEBIAN_MIRROR", &repo().url)
        .args(args)
        .output()
        .unwrap()
}

fn ok(w: &Work, args: &[&str]) -> String {
    let out = kiln(w, args);
    support::assert_success(&out, &format!("kiln {}", args.join(" ")));
    String::from_utf8(out.stdout).unwrap()
}

/// A locked workspace whose recipe has one repository and `layers`.
fn workspace(layers: &str) -> Work {
    let w = Work::new();
    w.write("keys/test.gpg", fs::read(&repo().keyring).unwrap());
    w.write(
        "recipe.toml",
        format!(
            "name = \"d\"\n\n[repositories.test]\nsuite = \"{SUITE}\"\nkeyring = \"keys/test.gpg\"\n\n{layers}"
        ),
    );
    ok(&w, &["lock", "recipe.toml"]);
    w
}

/// Every path under `root`, relative.
fn listing(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            out.insert(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out
}

/// The size of the image's only layer blob.
fn layer_size(w: &Work, layout: &str) -> u64 {
    let dir = w.path().join(layout);
    let index: serde_json::Value =
        serde_json::from_str(&support::read(&dir.join("index.json"))).unwrap();
    let blob = |d: &str| {
        dir.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value = serde_json::from_str(&support::read(&blob(
        index["manifests"][0]["digest"].as_str().unwrap(),
    )))
    .unwrap();
    manifest["layers"][0]["size"].as_u64().unwrap()
}

#[test]
fn exclude_leaves_out_docs_man_pages_and_locales_but_keeps_copyright_and_the_dpkg_database() {
    support::need_root("umoci keeps owners only as root");
    let w = workspace(
        "[[layers]]\npackages = [\"tool\"]\n\
         exclude = [\"/usr/share/doc/**\", \"/usr/share/man/**\", \"/usr/share/locale/**\"]\n",
    );
    ok(&w, &["build", "recipe.toml", "--out", "trimmed"]);
    let root = support::umoci_unpack(Command::new("umoci"), w.path(), "trimmed:latest", "b")
        .join("rootfs");
    let files = listing(&root);
    for kept in [
        "usr/bin/tool",
        "usr/share/doc/tool/copyright",
        "var/lib/dpkg/status.d/tool",
        "var/lib/dpkg/status.d/tool.md5sums",
    ] {
        assert!(files.contains(kept), "{kept} missing from {files:?}");
    }
    for gone in [
        "usr/share/doc/tool/README",
        "usr/share/man/man1",
        "usr/share/locale/de",
    ] {
        assert!(!files.contains(gone), "{gone} is still there: {files:?}");
    }
    // The dpkg database lists every file the package holds, excluded ones too.
    let sums = support::read(&root.join("var/lib/dpkg/status.d/tool.md5sums"));
    assert_eq!(sums.lines().count(), 5, "{sums}");
    assert!(sums.contains("usr/share/man/man1/tool.1.gz"), "{sums}");
    // `md5sum -c` agrees for what is there and names what was left out.
    let check = Command::new("md5sum")
        .args(["-c", "--quiet"])
        .arg(root.join("var/lib/dpkg/status.d/tool.md5sums"))
        .current_dir(&root)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    let failed: BTreeSet<&str> = said.lines().filter_map(|l| l.split(':').next()).collect();
    assert_eq!(
        failed,
        BTreeSet::from([
            "usr/share/doc/tool/README",
            "usr/share/locale/de/LC_MESSAGES/tool.mo",
            "usr/share/man/man1/tool.1.gz",
        ]),
        "{said}"
    );

    // The same layer without `exclude` is bigger.
    w.write(
        "recipe.toml",
        format!(
            "name = \"d\"\n\n[repositories.test]\nsuite = \"{SUITE}\"\nkeyring = \"keys/test.gpg\"\n\n\
             [[layers]]\npackages = [\"tool\"]\n"
        ),
    );
    ok(&w, &["build", "recipe.toml", "--out", "full"]);
    assert!(layer_size(&w, "trimmed") < layer_size(&w, "full"));
}

#[test]
fn exclude_is_checked_when_the_recipe_is_read() {
    let w = Work::new();
    w.write(
        "recipe.toml",
        "name = \"d\"\n[[layers]]\ncontents = [{ dest = \"/a\", text = \"a\" }]\nexclude = [\"/usr/share/doc/**\"]\n",
    );
    let (code, err) = w.fails(&["build", "recipe.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("recipe.toml:4:12"), "{err}");
    assert!(err.contains("has none"), "{err}");
    w.write(
        "recipe.toml",
        "name = \"d\"\n[repositories.test]\nsuite = \"s\"\n[[layers]]\npackages = [\"tool\"]\nexclude = [\"usr/share/doc/**\"]\n",
    );
    let (code, err) = w.fails(&["build", "recipe.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("recipe.toml:6:12"), "{err}");
    assert!(err.contains("not absolute"), "{err}");
}
