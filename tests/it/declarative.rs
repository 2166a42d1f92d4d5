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
    vec![
        tool,
        jre("17", 1711),
        jre("11", 1111),
        // A postinst-registered `java` of lower priority than both runtimes.
        Pkg::new("other-java", "1", "amd64")
            .file("/usr/lib/other/java", "other\n", 0o755)
            .file(
                "/DEBIAN/postinst",
                "#!/bin/sh\nset -e\nupdate-alternatives --install /usr/bin/java java /usr/lib/other/java 100\n",
                0o755,
            ),
    ]
}

/// A JRE-like package as Debian's openjdk packages lay it out: the runtime
/// in `/usr/lib/jvm/java-V-fake`, a `java-1.V.0-fake` link to it, and the
/// `.jinfo` file that its `postinst` reads to install the alternatives.
fn jre(v: &str, priority: u32) -> Pkg {
    let base = format!("/usr/lib/jvm/java-{v}-fake");
    let jinfo = format!(
        "name=java-1.{v}.0-fake\nalias=java-1.{v}.0-fake\npriority={priority}\nsection=main\n\n\
         hl java /usr/lib/jvm/java-1.{v}.0-fake/bin/java\n\
         hl keytool {base}/bin/keytool\n\
         jre policytool {base}/bin/policytool\n"
    );
    Pkg::new(&format!("fake-jre-{v}"), "1", "amd64")
        .file(&format!("{base}/bin/java"), format!("java {v}\n"), 0o755)
        .file(
            &format!("{base}/bin/keytool"),
            format!("keytool {v}\n"),
            0o755,
        )
        .file(&format!("{base}/man/man1/java.1.gz"), "man\n", 0o644)
        .symlink(
            &format!("/usr/lib/jvm/java-1.{v}.0-fake"),
            &format!("java-{v}-fake"),
        )
        .file(
            &format!("/usr/lib/jvm/.java-1.{v}.0-fake.jinfo"),
            jinfo,
            0o644,
        )
}

fn repo() -> &'static Repo {
    static REPO: OnceLock<Repo> = OnceLock::new();
    REPO.get_or_init(|| Repo::start(SUITE, &["main"], &packages()))
}

fn ok(w: &Work, args: &[&str]) -> String {
    support::apt::kiln_ok_at(w, &repo().url, args)
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

#[test]
fn java_alternatives_come_from_jinfo_files_and_the_highest_priority_wins() {
    support::need_root("umoci keeps owners only as root");
    let w =
        workspace("[[layers]]\npackages = [\"fake-jre-11\", \"other-java\", \"fake-jre-17\"]\n");
    ok(&w, &["build", "recipe.toml", "--out", "img"]);
    let root =
        support::umoci_unpack(Command::new("umoci"), w.path(), "img:latest", "b").join("rootfs");
    let link = |p: &str| {
        fs::read_link(root.join(p))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .display()
            .to_string()
    };
    assert_eq!(link("usr/bin/java"), "/etc/alternatives/java");
    assert_eq!(
        link("etc/alternatives/java"),
        "/usr/lib/jvm/java-1.17.0-fake/bin/java"
    );
    // Followed inside the image (the links are absolute, so step by step),
    // it is the runtime of priority 1711.
    let within = |p: &str| {
        let mut at = p.to_string();
        for _ in 0..8 {
            match fs::read_link(root.join(at.trim_start_matches('/'))) {
                Ok(t) if t.is_absolute() => at = t.display().to_string(),
                _ => break,
            }
        }
        support::read(&root.join(at.trim_start_matches('/')))
    };
    assert_eq!(within("/usr/bin/java"), "java 17\n");
    assert_eq!(within("/usr/bin/keytool"), "keytool 17\n");
    assert_eq!(
        link("etc/alternatives/java.1.gz"),
        "/usr/lib/jvm/java-1.17.0-fake/man/man1/java.1.gz"
    );
    assert_eq!(
        link("usr/share/man/man1/java.1.gz"),
        "/etc/alternatives/java.1.gz"
    );
    // A tool the runtime does not ship gets no link.
    assert!(!root.join("usr/bin/policytool").exists());
    assert!(fs::symlink_metadata(root.join("usr/bin/policytool")).is_err());
}
