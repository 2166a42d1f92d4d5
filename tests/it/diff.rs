//! `kiln diff A B`: two images built by kiln from recipes that differ in a
//! file's content, a mode, a link, an env variable and a package version
//! (from a local signed Debian repository on 127.0.0.1). The files reported
//! are checked against `umoci unpack` and a walk of both root filesystems,
//! the direction of a version change against `dpkg --compare-versions`;
//! the sides are given as layouts, archives, registry references (a
//! `docker-registry` on 127.0.0.1) and recipes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

use crate::support::apt::{Pkg, Repo};
use crate::support::{self, Work};

const SUITE_A: &str = "kiln-diff-a";
const SUITE_B: &str = "kiln-diff-b";

fn tool(version: &str) -> Pkg {
    Pkg::new("tool", version, "amd64")
        .file(
            "/usr/bin/tool",
            format!("#!/bin/sh\necho tool {version}\n"),
            0o755,
        )
        .file("/usr/share/doc/tool/README", "the same readme\n", 0o644)
}

/// Suite A has `tool` 1.0; suite B has `tool` 1.2 and `extra`.
fn repos() -> &'static (Repo, Repo) {
    static REPOS: OnceLock<(Repo, Repo)> = OnceLock::new();
    REPOS.get_or_init(|| {
        let a = Repo::start(SUITE_A, &["main"], &[tool("1.0")]);
        let b = Repo::start(
            SUITE_B,
            &["main"],
            &[
                tool("1.2"),
                Pkg::new("extra", "3", "amd64").file("/usr/share/extra", "extra\n", 0o644),
            ],
        );
        (a, b)
    })
}

/// Recipe A (`b = false`) or B, in its own directory `dir` of `w`.
fn recipe(b: bool) -> String {
    let (suite, packages, mode_val, changed, link, gone, new, env) = if b {
        (
            SUITE_B,
            r#"["tool", "extra"]"#,
            "0o755",
            "two\n",
            "mode",
            "",
            r#"{ dest = "/app/new", text = "new\n" },"#,
            "b",
        )
    } else {
        (
            SUITE_A,
            r#"["tool"]"#,
            "0o644",
            "one\n",
            "changed",
            r#"{ dest = "/app/gone", text = "bye\n" },"#,
            "",
            "a",
        )
    };
    format!(
        r#"name = "d"
platforms = ["linux/amd64"]

[repositories.test]
suite = "{suite}"
keyring = "keys/test.gpg"

[config]
entrypoint = ["/usr/bin/tool"]
env = {{ MODE = "{env}", KEEP = "1" }}

[[layers]]
name = "shared"
contents = [ {{ dest = "/etc/shared", text = "same\n" }} ]

[[layers]]
name = "packages"
packages = {packages}

[[layers]]
name = "app"
contents = [
  {{ dest = "/app/changed", text = {changed:?} }},
  {{ dest = "/app/mode", text = "m\n", mode = {mode_val} }},
  {gone}{new}
]
symlinks = [ {{ path = "/app/link", target = "{link}" }} ]
"#
    )
}

fn url(b: bool) -> &'static str {
    let (a, bb) = repos();
    if b {
        &bb.url
    } else {
        &a.url
    }
}

/// A workspace with recipes `a/recipe.toml` and `b/recipe.toml`, locked.
fn workspace() -> Work {
    let w = Work::new();
    for (dir, b) in [("a", false), ("b", true)] {
        w.write(
            &format!("{dir}/keys/test.gpg"),
            fs::read(&repos().0.keyring).unwrap(),
        );
        w.write(&format!("{dir}/recipe.toml"), recipe(b));
        support::apt::kiln_ok_at(&w, url(b), &["lock", &format!("{dir}/recipe.toml")]);
    }
    w
}

fn build(w: &Work, b: bool, out: &str, extra: &[&str]) -> String {
    let dir = if b { "b" } else { "a" };
    let mut args = vec!["build", &*format!("{dir}/recipe.toml")]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    args.extend(["--out".to_string(), out.to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    support::last_digest(&support::apt::kiln_ok_at(w, url(b), &args))
}

fn diff(w: &Work, args: &[&str]) -> Output {
    w.kiln().arg("diff").args(args).output().unwrap()
}

/// Asserts that `out` exited with `code`, showing its stderr if not.
fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// What a root filesystem holds at each path: kind, content digest, mode, owner, link target.
fn walk(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link {}", fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else {
                use sha2::Digest;
                format!(
                    "file {}",
                    hex::encode(sha2::Sha256::digest(fs::read(&p).unwrap()))
                )
            };
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            out.insert(
                rel,
                format!("{what} {:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid()),
            );
        }
    }
    out
}

/// The (path, change) pairs of two walks.
fn oracle(
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) -> BTreeSet<(String, String)> {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter_map(|k| match (a.get(k), b.get(k)) {
            (None, Some(_)) => Some((k.clone(), "added".to_string())),
            (Some(_), None) => Some((k.clone(), "removed".to_string())),
            (Some(x), Some(y)) if x != y => Some((k.clone(), "changed".to_string())),
            _ => None,
        })
        .collect()
}

fn dpkg_lt(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "lt", b])
        .status()
        .unwrap()
        .success()
}

/// Files, config, packages and layers of two builds, against umoci's
/// unpacked trees and dpkg's version order; identical images exit 0.
#[test]
fn diff_of_two_builds_matches_umoci_and_dpkg() {
    support::need_root("umoci keeps owners only as root");
    let w = workspace();
    let da = build(&w, false, "out/a", &[]);
    let db = build(&w, true, "out/b", &[]);
    assert_ne!(da, db);

    // Text: exit 1 and one line per change.
    let out = diff(&w, &["out/a", "out/b"]);
    assert_exit(&out, 1);
    let text = String::from_utf8(out.stdout).unwrap();
    for line in [
        "~ config Env[MODE]: \"a\" -> \"b\"",
        "~ app/changed (content)",
        "~ app/mode (mode)",
        "~ app/link (target)",
        "- app/gone ",
        "+ app/new ",
        "+ package extra:amd64 (none) -> 3 (added)",
        "~ package tool:amd64 1.0 -> 1.2 (upgraded)",
        "layers: 1 shared (not read), 2 removed, 2 added",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }

    // JSON: the files against umoci + a walk of both trees.
    let out = diff(&w, &["--json", "out/a", "out/b"]);
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    assert_eq!(r["version"], 1);
    assert_eq!(r["identical"], false);
    assert_eq!(r["a"]["digest"], da.as_str());
    assert_eq!(r["b"]["digest"], db.as_str());
    let img = &r["images"][0];
    assert_eq!(img["platform"], "linux/amd64");
    assert_eq!(img["shared_layers"].as_array().unwrap().len(), 1);
    let got: BTreeSet<(String, String)> = img["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["change"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let ra = support::umoci_unpack(Command::new("umoci"), w.path(), "out/a:latest", "ua");
    let rb = support::umoci_unpack(Command::new("umoci"), w.path(), "out/b:latest", "ub");
    let want = oracle(&walk(&ra.join("rootfs")), &walk(&rb.join("rootfs")));
    assert_eq!(got, want, "kiln diff against umoci unpack");
    let mode = img["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "app/mode")
        .unwrap();
    assert_eq!(
        (mode["a"]["mode"].as_str(), mode["b"]["mode"].as_str()),
        (Some("0644"), Some("0755"))
    );
    assert_eq!(mode["what"], serde_json::json!(["mode"]));

    // Packages: direction as dpkg orders versions, both ways.
    let pkgs = |r: &Value| -> Vec<(String, String)> {
        r["images"][0]["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p["change"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert!(dpkg_lt("1.0", "1.2"));
    assert_eq!(
        pkgs(&r),
        [
            ("extra".into(), "added".into()),
            ("tool".into(), "upgraded".into())
        ]
    );
    // `tool` is listed in dpkg files both sides' own layers write; `extra`
    // only in B's, so what the shared layers hold for it is not known.
    let over: Vec<bool> = r["images"][0]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["over_shared"].as_bool().unwrap())
        .collect();
    assert_eq!(over, [true, false]);
    let back = json(&diff(&w, &["--json", "out/b", "out/a"]));
    assert_eq!(
        pkgs(&back),
        [
            ("extra".into(), "removed".into()),
            ("tool".into(), "downgraded".into())
        ]
    );
    let config: Vec<(String, Value, Value)> = r["images"][0]["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["key"].as_str().unwrap_or_default().to_string(),
                c["a"].clone(),
                c["b"].clone(),
            )
        })
        .collect();
    assert_eq!(
        config,
        [("MODE".to_string(), Value::from("a"), Value::from("b"))]
    );

    // The same image twice: exit 0, nothing read.
    let same = diff(&w, &["out/a", "oci:out/a"]);
    assert_exit(&same, 0);
    assert!(String::from_utf8_lossy(&same.stdout).contains("identical"));
    // An error: exit 2, as diff(1).
    let bad = diff(&w, &["out/a", "out/missing"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("out/missing"));
}

/// A shared layer is never read: with its blob gone from B's layout, the diff still works.
#[test]
fn shared_layers_are_never_read() {
    let w = workspace();
    build(&w, false, "out/a", &[]);
    build(&w, true, "out/b", &[]);
    let r = json(&diff(&w, &["--json", "out/a", "out/b"]));
    let shared = r["images"][0]["shared_layers"][0]
        .as_str()
        .unwrap()
        .to_string();
    let hex = shared.strip_prefix("sha256:").unwrap();
    fs::remove_file(w.path().join("out/b/blobs/sha256").join(hex)).unwrap();
    fs::remove_file(w.path().join("out/a/blobs/sha256").join(hex)).unwrap();
    let again = diff(&w, &["--json", "out/a", "out/b"]);
    assert_exit(&again, 1);
    assert_eq!(json(&again)["images"], r["images"]);

    // Archives are read in place: the shared layer's bytes inside each
    // (found by Python's tarfile) are zeroed, and the diff does not notice.
    build(&w, false, "out/a.tar", &["--format", "oci-archive"]);
    build(&w, true, "out/b.tar", &["--format", "oci-archive"]);
    for tar in ["out/a.tar", "out/b.tar"] {
        let path = w.path().join(tar);
        let offset = support::run(Command::new("python3").args([
            "-c",
            "import sys, tarfile; print(tarfile.open(sys.argv[1]).getmember(sys.argv[2]).offset_data)",
            path.to_str().unwrap(),
            &format!("blobs/sha256/{hex}"),
        ]));
        let offset: u64 = offset.trim().parse().unwrap();
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0u8; 64], offset).unwrap();
    }
    let archives = diff(&w, &["--json", "out/a.tar", "out/b.tar"]);
    assert_exit(&archives, 1);
    assert_eq!(json(&archives)["images"], r["images"]);
    // The damage is real: a command that reads every layer refuses the archive.
    let (code, err) = w.fails(&["sbom", "out/a.tar"]);
    assert_ne!(code, 0, "{err}");
}

/// Layout, archive, registry reference and recipe name the same image alike.
#[test]
fn sides_are_layouts_archives_registry_references_or_recipes() {
    let reg = support::registry::registry(support::registry::Flavour::Plain);
    let w = workspace();
    let da = build(&w, false, "out/a", &[]);
    let db = build(&w, true, "out/b.tar", &["--format", "oci-archive"]);
    let target = format!("{}:v1", reg.repo("kiln/diff"));
    w.ok(&["push", "out/a", &target]);
    let pinned = format!("{}@{da}", reg.repo("kiln/diff"));
    for (a, b) in [("out/a", pinned.as_str()), (target.as_str(), "out/a")] {
        let out = diff(&w, &[a, b]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{a} vs {b}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A recipe is built first (with the same SOURCE_DATE_EPOCH: the same digest).
    let out = w
        .kiln()
        .env("KILN_DEBIAN_MIRROR", url(false))
        .args(["diff", "a/recipe.toml", &pinned])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    // Registry vs archive, and archive vs recipe: different.
    let r = json(&diff(&w, &["--json", &pinned, "out/b.tar"]));
    assert_eq!(r["b"]["digest"], db.as_str());
    assert_eq!(r["identical"], false);
    let out = w
        .kiln()
        .env("KILN_DEBIAN_MIRROR", url(false))
        .args(["diff", "--json", "out/b.tar", "a/recipe.toml"])
        .output()
        .unwrap();
    assert_exit(&out, 1);
    assert_eq!(json(&out)["b"]["digest"], da.as_str());
}

/// A file deleted by `umoci repack` (a layer of whiteouts over A's layers,
/// all shared) counts as removed; nothing of A is read.
#[test]
fn a_whiteout_made_by_umoci_counts_as_removed() {
    support::need_root("umoci repack keeps owners only as root");
    let w = Work::new();
    w.write(
        "r.toml",
        "name = \"w\"\n[[layers]]\ncontents = [ { dest = \"/app/gone\", text = \"bye\\n\" }, { dest = \"/app/kept\", text = \"k\\n\" } ]\n",
    );
    w.build("r.toml", "out/a");
    support::run(
        Command::new("cp")
            .args(["-a", "out/a", "out/w"])
            .current_dir(w.path()),
    );
    let bundle = support::umoci_unpack(Command::new("umoci"), w.path(), "out/w:latest", "bw");
    fs::remove_file(bundle.join("rootfs/app/gone")).unwrap();
    support::run(Command::new("umoci").current_dir(w.path()).args([
        "repack",
        "--image",
        "out/w:latest",
        "bw",
    ]));
    let out = diff(&w, &["--json", "out/a", "out/w:latest"]);
    assert_exit(&out, 1);
    let r = json(&out);
    let img = &r["images"][0];
    assert_eq!(img["layers_removed"], serde_json::json!([]));
    assert_eq!(img["layers_added"].as_array().unwrap().len(), 1);
    let files: BTreeMap<&str, (&str, bool)> = img["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap(),
                (
                    f["change"].as_str().unwrap(),
                    f["over_shared"].as_bool().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(files.get("app/gone"), Some(&("removed", true)), "{files:?}");
    assert!(!files.contains_key("app/kept"), "{files:?}");
}

/// For indexes, platforms are matched by `os/arch`: one only A has is removed.
#[test]
fn platforms_of_indexes_are_compared_one_by_one() {
    let w = Work::new();
    let layer = "[[layers]]\ncontents = [ { dest = \"/etc/motd\", text = \"hi\\n\" } ]\n";
    w.write(
        "two.toml",
        format!("name = \"p\"\nplatforms = [\"linux/amd64\", \"linux/arm64\"]\n{layer}"),
    );
    w.write(
        "one.toml",
        format!("name = \"p\"\nplatforms = [\"linux/amd64\"]\n{layer}"),
    );
    w.build("two.toml", "out/two");
    w.build("one.toml", "out/one");
    let out = diff(&w, &["--json", "out/two", "out/one"]);
    assert_exit(&out, 1);
    let r = json(&out);
    assert_eq!(r["platforms_removed"], serde_json::json!(["linux/arm64"]));
    assert_eq!(r["platforms_added"], serde_json::json!([]));
    assert_eq!(r["images"][0]["platform"], "linux/amd64");
    assert_eq!(r["images"][0]["identical"], true);
    let text = String::from_utf8(diff(&w, &["out/two", "out/one"]).stdout).unwrap();
    assert!(text.contains("- platform linux/arm64"), "{text}");
}

/// The README documents every flag of `kiln diff` and `kiln reproduce`.
#[test]
fn readme_documents_diff_and_reproduce_flags() {
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let w = Work::new();
    for cmd in ["diff", "reproduce"] {
        assert!(
            readme.contains(&format!("`kiln {cmd}")),
            "README lacks `kiln {cmd}`"
        );
        let help = w.ok(&[cmd, "--help"]);
        for flag in help
            .split_whitespace()
            .filter(|t| t.starts_with("--") && t.len() > 2)
            .map(|t| t.trim_end_matches([',', '.']))
            .filter(|t| !matches!(*t, "--help" | "--version"))
        {
            assert!(
                readme.contains(&format!("`{flag}")),
                "README lacks `{flag}` of kiln {cmd}"
            );
        }
    }
}
