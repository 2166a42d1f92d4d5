//! What kiln writes, read back only by independent tools: `umoci` unpacks it,
//! `skopeo` inspects and copies it, `runc` runs it, GNU `tar` lists its layers.
//! Nothing here reads kiln's output with kiln's own code, so a bug that the
//! writer and a reader of ours would share cannot hide.
//!
//! The tools are not optional: a missing one fails the test with a message
//! pointing at `scripts/test.sh`, which installs them.

use crate::support;
use crate::support::*;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Panics (never skips) when `tool` is not installed.
fn need(tool: &str) {
    assert!(
        have(tool),
        "`{tool}` is not installed; run scripts/test.sh (as root), which installs \
         umoci, skopeo, runc, gcc and libc6-dev before running the tests"
    );
}

/// A command for an external tool that must be installed.
fn tool(name: &str) -> Command {
    need(name);
    Command::new(name)
}

/// Fails unless the tests run as root: `umoci unpack` keeps owners and `runc`
/// makes namespaces only as root.
fn need_root() {
    support::need_root(
        "these tests unpack and run images, which needs root; run scripts/test.sh as root",
    );
}

/// `skopeo` with no signature policy: every copy here is local, from a layout
/// the test just wrote, and the host may have no `/etc/containers/policy.json`.
fn skopeo(args: &[&str]) -> String {
    run(tool("skopeo").arg("--insecure-policy").args(args))
}

/// `skopeo inspect ARGS…` parsed as JSON.
fn skopeo_json(args: &[&str]) -> Value {
    let mut all = vec!["inspect"];
    all.extend_from_slice(args);
    let text = skopeo(&all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("skopeo {all:?}: {e}\n{text}"))
}

/// `skopeo copy --dest-decompress SRC dir:DIR` (DIR is `dir` in the
/// workspace); returns DIR and the image's config as skopeo reads it.
fn decompressed_layers(w: &Work, src: &str) -> (PathBuf, Value) {
    let dir = w.path().join("dir");
    skopeo(&[
        "copy",
        "--dest-decompress",
        src,
        &format!("dir:{}", dir.display()),
    ]);
    (dir, skopeo_json(&["--config", src]))
}

/// The sha256 of a file as `sha256sum` computes it, as `sha256:<hex>`.
fn sha256sum(path: &Path) -> String {
    let out = run(tool("sha256sum").arg(path));
    format!("sha256:{}", out.split_whitespace().next().unwrap())
}

/// The sha256 of `skopeo inspect --raw REF`'s bytes: the digest of the
/// manifest or index exactly as stored.
fn raw_digest(w: &Work, reference: &str) -> (Value, String) {
    let raw = skopeo(&["inspect", "--raw", reference]);
    let file = w.write("raw-manifest.json", raw.as_bytes());
    let digest = sha256sum(&file);
    fs::remove_file(file).unwrap();
    (serde_json::from_str(&raw).unwrap(), digest)
}

/// `umoci unpack --image LAYOUT:TAG BUNDLE` (as root, so owners are kept);
/// returns the bundle directory.
fn unpack(w: &Work, layout: &str, tag: &str, bundle: &str) -> PathBuf {
    need_root();
    let image = format!("{layout}:{tag}");
    umoci_unpack(tool("umoci"), w.path(), &image, bundle)
}

/// The C source of the probe the `runc` tests run: it prints a marker, its
/// identity, argv and environment, and acts on `cat=PATH` / `readlink=PATH`
/// arguments so a test can see files from inside the container.
const PROBE_C: &str = r#"
#include <stdio.h>
#include <string.h>
#include <unistd.h>
extern char **environ;
int main(int argc, char **argv) {
    char buf[4096];
    printf("KILN-PROBE-OK\n");
    printf("uid=%d gid=%d\n", (int)getuid(), (int)getgid());
    if (getcwd(buf, sizeof buf)) printf("cwd=%s\n", buf);
    for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
    for (char **e = environ; *e; e++) printf("env=%s\n", *e);
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "cat=", 4) == 0) {
            FILE *f = fopen(argv[i] + 4, "r");
            if (!f) { printf("cat %s: missing\n", argv[i] + 4); continue; }
            size_t n = fread(buf, 1, sizeof buf - 1, f);
            buf[n] = 0;
            fclose(f);
            printf("cat %s: %s", argv[i] + 4, buf);
        } else if (strncmp(argv[i], "readlink=", 9) == 0) {
            ssize_t n = readlink(argv[i] + 9, buf, sizeof buf - 1);
            if (n < 0) { printf("readlink %s: missing\n", argv[i] + 9); continue; }
            buf[n] = 0;
            printf("readlink %s: %s\n", argv[i] + 9, buf);
        }
    }
    return 0;
}
"#;

/// The probe compiled once per test process with `gcc -static`, so it runs
/// in a `scratch` image with no libc.
fn probe() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        need("gcc");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        fs::create_dir_all(&dir).unwrap();
        let src = dir.join(format!("kiln-probe-{}.c", std::process::id()));
        let tmp = dir.join(format!("kiln-probe-{}.tmp", std::process::id()));
        fs::write(&src, PROBE_C).unwrap();
        let out = Command::new("gcc")
            .args(["-static", "-O1", "-o"])
            .arg(&tmp)
            .arg(&src)
            .output()
            .expect("cannot run gcc");
        assert_success(
            &out,
            "gcc -static (needs libc6-dev; run scripts/test.sh to install it)",
        );
        fs::remove_file(&src).unwrap();
        // Renamed into place so concurrent test processes never see half a binary.
        let bin = dir.join("kiln-probe");
        fs::rename(&tmp, &bin).unwrap();
        bin
    })
}

/// Copies the probe into the workspace as `rel` (for a recipe's `files`).
pub(crate) fn put_probe(w: &Work, rel: &str) {
    let dest = w.path().join(rel);
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    fs::copy(probe(), &dest).unwrap();
}

/// Runs an unpacked bundle with `runc run` (no terminal; `args` replace the
/// process's argv when given) and returns what it printed.
fn runc(w: &Work, bundle: &Path, args: Option<&[&str]>) -> String {
    need_root();
    static N: AtomicUsize = AtomicUsize::new(0);
    let id = format!(
        "kiln-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    runc_run(tool("runc"), &w.path().join("runc-root"), bundle, &id, args)
}

/// Asserts that each of `lines` is a whole line of `out`.
fn assert_has_lines(out: &str, lines: &[&str]) {
    for line in lines {
        assert!(
            out.lines().any(|l| l == *line),
            "no line {line:?} in:\n{out}"
        );
    }
}

#[test]
fn umoci_unpacks_every_kind_of_entry() {
    let w = Work::new();
    // Names stay under the 255-byte limit of Linux file systems.
    let a100 = "a".repeat(120);
    let b200 = "b".repeat(200);
    // Host tree: plain files, an excluded file, a hard link pair whose paths
    // (and so the link's target) are over 100 bytes, and names with spaces
    // and non-ASCII letters.
    w.write("tree/index.html", "<h1>hi</h1>\n");
    w.write("tree/drop.tmp", "excluded\n");
    w.write("tree/sub/skip.tmp", "excluded too\n");
    w.write("tree/héllo wörld/ünï cödé ✓.txt", "unicode\n");
    let hl = w.write(&format!("tree/{a100}/first.txt"), "linked\n");
    fs::hard_link(&hl, w.path().join(format!("tree/{a100}/second.txt"))).unwrap();
    w.write("script.sh", "#!/bin/sh\necho hi\n");
    fs::set_permissions(
        w.path().join("script.sh"),
        fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let deep = format!("/deep/{a100}/{b200}/file.txt"); // > 255 bytes
    let long_target = format!("/deep/{a100}/{b200}"); // > 100 bytes
    w.write(
        "recipe.toml",
        format!(
            r#"
name = "entries"
tags = ["v1"]

[[layers]]
name = "everything"
files = [
  {{ src = "script.sh", dest = "/app/run.sh", uid = 1000, gid = 1001 }},
  {{ src = "script.sh", dest = "/app/mode 0640.sh", mode = 0o640 }},
  {{ src = "script.sh", dest = "/app/big-ids", uid = 3000000, gid = 3000001 }},
]
trees = [ {{ src = "tree", dest = "/srv/www", exclude = ["*.tmp"] }} ]
contents = [
  {{ dest = "/etc/greeting", text = "hello from kiln\n" }},
  {{ dest = "{deep}", text = "deep\n", mode = 0o600, uid = 7, gid = 8 }},
  {{ dest = "/données/fichier à espaces.txt", text = "accents\n" }},
]
dirs = [
  {{ path = "/empty" }},
  {{ path = "/tmp", mode = 0o1777 }},
  {{ path = "/data", mode = 0o700, uid = 65532, gid = 65533 }},
]
symlinks = [
  {{ path = "/usr/bin/run", target = "/app/run.sh" }},
  {{ path = "/srv/www/home.html", target = "index.html" }},
  {{ path = "/long-link", target = "{long_target}" }},
]
"#
        ),
    );
    let mut cmd = w.kiln();
    cmd.env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["build", "recipe.toml", "--out", "img"]);
    last_digest(&run(&mut cmd));
    let root = unpack(&w, "img", "v1", "bundle").join("rootfs");

    // Files: content, default mode from the host's executable bit, owners.
    let run_sh = root.join("app/run.sh");
    assert_eq!(read(&run_sh), "#!/bin/sh\necho hi\n");
    assert_eq!(mode(&run_sh), 0o755, "executable host file gets 0755");
    assert_eq!(owner(&run_sh), (1000, 1001));
    assert_eq!(mode(&root.join("app/mode 0640.sh")), 0o640);
    assert_eq!(
        owner(&root.join("app/big-ids")),
        (3000000, 3000001),
        "ids over 2097151 need PAX records"
    );

    // Inline contents, including a path over 255 bytes.
    assert_eq!(read(&root.join("etc/greeting")), "hello from kiln\n");
    assert_eq!(mode(&root.join("etc/greeting")), 0o644);
    assert_eq!(owner(&root.join("etc/greeting")), (0, 0));
    let deep_file = root.join(&deep[1..]);
    assert!(deep.len() > 255);
    assert_eq!(read(&deep_file), "deep\n");
    assert_eq!(mode(&deep_file), 0o600);
    assert_eq!(owner(&deep_file), (7, 8));
    assert_eq!(
        read(&root.join("données/fichier à espaces.txt")),
        "accents\n"
    );

    // Trees: excludes honoured, non-ASCII names, default modes, hard links.
    assert_eq!(read(&root.join("srv/www/index.html")), "<h1>hi</h1>\n");
    assert_eq!(mode(&root.join("srv/www/index.html")), 0o644);
    assert!(!root.join("srv/www/drop.tmp").exists());
    assert!(!root.join("srv/www/sub/skip.tmp").exists());
    assert_eq!(
        read(&root.join("srv/www/héllo wörld/ünï cödé ✓.txt")),
        "unicode\n"
    );
    let first = root.join(format!("srv/www/{a100}/first.txt"));
    let second = root.join(format!("srv/www/{a100}/second.txt"));
    let (m1, m2) = (
        fs::metadata(&first).unwrap(),
        fs::metadata(&second).unwrap(),
    );
    assert_eq!(read(&second), "linked\n");
    assert_eq!(m1.ino(), m2.ino(), "hard links in a tree stay hard links");
    assert_eq!(m1.nlink(), 2);

    // Directories: empty ones exist, modes (sticky bit too) and owners kept,
    // implied parents are 0755 root.
    assert!(root.join("empty").is_dir());
    assert_eq!(fs::read_dir(root.join("empty")).unwrap().count(), 0);
    assert_eq!(mode(&root.join("tmp")), 0o1777);
    assert_eq!(mode(&root.join("data")), 0o700);
    assert_eq!(owner(&root.join("data")), (65532, 65533));
    assert_eq!(mode(&root.join("usr/bin")), 0o755);
    assert_eq!(owner(&root.join("usr/bin")), (0, 0));

    // Symlinks: targets stored exactly as written, even over 100 bytes.
    assert_eq!(
        fs::read_link(root.join("usr/bin/run")).unwrap(),
        Path::new("/app/run.sh")
    );
    assert_eq!(
        fs::read_link(root.join("srv/www/home.html")).unwrap(),
        Path::new("index.html")
    );
    assert_eq!(
        fs::read_link(root.join("long-link")).unwrap(),
        Path::new(&long_target)
    );

    // SOURCE_DATE_EPOCH is every entry's mtime.
    for p in [
        "app/run.sh",
        "etc/greeting",
        "srv/www/index.html",
        &deep[1..],
        "usr/bin/run",
    ] {
        let m = fs::symlink_metadata(root.join(p)).unwrap();
        assert_eq!(m.mtime(), 1700000000, "mtime of /{p}");
    }
}

/// A host tree as the walk reads it (`getdents64` into a reused buffer,
/// directories and symlinks typed by the listing alone, everything else
/// stat'ed from its directory), unpacked by umoci: every path there with
/// its kind, content, link target and the mode the rules give it. A
/// directory of 3,000 entries takes several `getdents64` calls to list.
#[test]
fn umoci_unpacks_a_host_tree_as_listed() {
    let w = Work::new();
    w.write("tree/a/b/c/deep.txt", "deep\n");
    w.write("tree/run.sh", "#!/bin/sh\n");
    fs::set_permissions(
        w.path().join("tree/run.sh"),
        fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    fs::create_dir_all(w.path().join("tree/empty")).unwrap();
    fs::create_dir_all(w.path().join("tree/private")).unwrap();
    fs::set_permissions(
        w.path().join("tree/private"),
        fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    std::os::unix::fs::symlink("a/b/c/deep.txt", w.path().join("tree/to-file")).unwrap();
    std::os::unix::fs::symlink("a/b", w.path().join("tree/to-dir")).unwrap();
    std::os::unix::fs::symlink("nowhere", w.path().join("tree/dangling")).unwrap();
    for i in 0..3000 {
        w.write(
            &format!("tree/many/entry-with-a-longish-name-{i:05}"),
            format!("{i}\n"),
        );
    }
    w.write(
        "recipe.toml",
        "name = \"listed\"\ntags = [\"v1\"]\n[[layers]]\ntrees = [ { src = \"tree\", dest = \"/t\" } ]\n",
    );
    w.build("recipe.toml", "img");
    let root = unpack(&w, "img", "v1", "bundle").join("rootfs/t");
    let listing = |top: &Path| -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = walkdir::WalkDir::new(top)
            .min_depth(1)
            .into_iter()
            .map(|e| {
                let e = e.unwrap();
                let rel = e.path().strip_prefix(top).unwrap().display().to_string();
                let ft = e.file_type();
                let what = if ft.is_symlink() {
                    format!("link {}", fs::read_link(e.path()).unwrap().display())
                } else if ft.is_dir() {
                    "dir".to_string()
                } else {
                    format!("file {}", read(e.path()))
                };
                (rel, what)
            })
            .collect();
        all.sort();
        all
    };
    let (host, image) = (listing(&w.path().join("tree")), listing(&root));
    assert_eq!(host.len(), 3011);
    assert_eq!(image, host);
    assert_eq!(
        mode(&root.join("run.sh")),
        0o755,
        "an executable host file gets 0755"
    );
    assert_eq!(mode(&root.join("a/b/c/deep.txt")), 0o644);
    assert_eq!(
        mode(&root.join("private")),
        0o755,
        "a tree's directories are 0755"
    );
    assert_eq!(mode(&root.join("empty")), 0o755);
}

/// The recipe the skopeo and runc tests share: a static probe as entrypoint,
/// every config field set.
fn probe_recipe(w: &Work, extra_top: &str) {
    put_probe(w, "bin/probe");
    w.write(
        "recipe.toml",
        format!(
            r#"
name = "probe"
tags = ["v1", "stable"]
annotations = {{ "org.example.note" = "from kiln" }}
{extra_top}

[config]
entrypoint = ["/app/probe"]
cmd = ["two words", "cat=/etc/greeting", "readlink=/usr/bin/probe"]
env = {{ PATH = "/usr/bin:/bin", GREETING = "hé llo" }}
user = "65532:65533"
workdir = "/app"
labels = {{ "org.example.label" = "yes" }}
exposed_ports = ["8080", "53/udp"]
volumes = ["/data"]
stop_signal = "SIGTERM"

[[layers]]
name = "probe"
files = [ {{ src = "bin/probe", dest = "/app/probe" }} ]
symlinks = [ {{ path = "/usr/bin/probe", target = "/app/probe" }} ]

[[layers]]
name = "etc"
contents = [ {{ dest = "/etc/greeting", text = "hello from kiln\n" }} ]
dirs = [ {{ path = "/data", mode = 0o700, uid = 65532, gid = 65533 }} ]
"#
        ),
    );
}

#[test]
fn skopeo_reads_the_digest_config_and_tags() {
    let w = Work::new();
    probe_recipe(&w, "");
    let mut cmd = w.kiln();
    cmd.env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["build", "recipe.toml", "--out", "img"]);
    let digest = last_digest(&run(&mut cmd));

    // The digest kiln prints is the manifest's, as skopeo computes it and as
    // sha256sum computes it over the raw bytes; both tags name it.
    let layout = format!("oci:{}", w.path().join("img").display());
    for tag in ["v1", "stable"] {
        let info = skopeo_json(&[&format!("{layout}:{tag}")]);
        assert_eq!(info["Digest"], digest.as_str(), "tag {tag}");
    }
    let (manifest, raw) = raw_digest(&w, &format!("{layout}:v1"));
    assert_eq!(raw, digest);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["annotations"]["org.example.note"], "from kiln");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for l in layers {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
    }

    // Tags, as umoci lists them.
    let tags = run(tool("umoci")
        .args(["ls", "--layout"])
        .arg(w.path().join("img")));
    let mut tags: Vec<&str> = tags.lines().collect();
    tags.sort();
    assert_eq!(tags, ["stable", "v1"]);

    // Every config field, as skopeo reads the config blob.
    let info = skopeo_json(&[&format!("{layout}:v1")]);
    assert_eq!(info["Created"], "2023-11-14T22:13:20Z");
    assert_eq!(info["Architecture"], "amd64");
    assert_eq!(info["Os"], "linux");
    assert_eq!(info["Labels"]["org.example.label"], "yes");
    let config = skopeo_json(&["--config", &format!("{layout}:v1")]);
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    let c = &config["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!(["/app/probe"]));
    assert_eq!(
        c["Cmd"],
        serde_json::json!(["two words", "cat=/etc/greeting", "readlink=/usr/bin/probe"])
    );
    let mut env: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    env.sort();
    assert_eq!(env, ["GREETING=hé llo", "PATH=/usr/bin:/bin"]);
    assert_eq!(c["User"], "65532:65533");
    assert_eq!(c["WorkingDir"], "/app");
    assert_eq!(
        c["ExposedPorts"],
        serde_json::json!({"8080/tcp": {}, "53/udp": {}})
    );
    assert_eq!(c["Volumes"], serde_json::json!({"/data": {}}));
    assert_eq!(c["StopSignal"], "SIGTERM");
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
}

#[test]
fn recipe_without_tags_is_tagged_latest() {
    let w = Work::new();
    w.write(
        "recipe.toml",
        "name = \"untagged\"\n[[layers]]\ncontents = [ { dest = \"/a\", text = \"a\" } ]\n",
    );
    let digest = w.build("recipe.toml", "img");
    let layout = format!("oci:{}:latest", w.path().join("img").display());
    assert_eq!(skopeo_json(&[&layout])["Digest"], digest.as_str());
    let tags = run(tool("umoci")
        .args(["ls", "--layout"])
        .arg(w.path().join("img")));
    assert_eq!(tags.trim(), "latest");
}

#[test]
fn skopeo_copies_the_layout_and_checks_every_blob() {
    let w = Work::new();
    probe_recipe(&w, "");
    let digest = w.build("recipe.toml", "img");
    let src = format!("oci:{}:v1", w.path().join("img").display());

    // oci → oci keeps the manifest byte for byte.
    let dst = format!("oci:{}:copied", w.path().join("copy").display());
    skopeo(&["copy", &src, &dst]);
    assert_eq!(skopeo_json(&[&dst])["Digest"], digest.as_str());

    // oci → dir with layers decompressed: skopeo verifies each compressed
    // blob against its digest on the way; the uncompressed tar's sha256 must
    // be the diff_id in the config, and GNU tar must read it.
    let (dir, config) = decompressed_layers(&w, &src);
    let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for id in &diff_ids {
        let tar = dir.join(id.strip_prefix("sha256:").unwrap());
        assert!(tar.exists(), "skopeo wrote no blob {id}");
        assert_eq!(&sha256sum(&tar), id);
    }
    let listing = run(tool("tar")
        .arg("-tvf")
        .arg(dir.join(diff_ids[0].strip_prefix("sha256:").unwrap())));
    assert!(listing.contains("app/probe"), "{listing}");
    assert!(listing.contains("usr/bin/probe -> /app/probe"), "{listing}");
}

/// Layers decompressed by skopeo, listed by GNU tar: the format rules of
/// DESIGN.md as an independent reader sees them.
#[test]
fn gnu_tar_sees_sorted_entries_parents_first_numeric_owners() {
    let w = Work::new();
    // Created in an order unlike the sorted one; byte order puts `a-b` and
    // `a.txt` between the directory `a` and its child `a/x`.
    for name in ["z", "a/x/deep", "a.txt", "B", "a-b", "é", "a/x/Ä", "a/y"] {
        w.write(&format!("tree/{name}"), name);
    }
    w.write(
        "recipe.toml",
        r#"
name = "order"
compression = "zstd"
[[layers]]
name = "tree"
trees = [ { src = "tree", dest = "/t" } ]
contents = [ { dest = "/etc/owned", text = "x", uid = 1000, gid = 1000 } ]
symlinks = [ { path = "/t/link", target = "a/y" } ]
"#,
    );
    let mut cmd = w.kiln();
    cmd.env("SOURCE_DATE_EPOCH", "1234567890")
        .args(["build", "recipe.toml", "--out", "img"]);
    last_digest(&run(&mut cmd));
    let src = format!("oci:{}:latest", w.path().join("img").display());
    let (dir, config) = decompressed_layers(&w, &src);
    let id = config["rootfs"]["diff_ids"][0].as_str().unwrap();
    let tar = dir.join(id.strip_prefix("sha256:").unwrap());

    let names = run(tool("tar")
        .args(["--quoting-style=literal", "-tf"])
        .arg(&tar));
    let paths: Vec<&str> = names.lines().map(|l| l.trim_end_matches('/')).collect();
    let mut sorted = paths.clone();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    sorted.dedup();
    assert_eq!(paths, sorted, "entries sorted by path bytes, each once");
    for (i, p) in paths.iter().enumerate() {
        if let Some((parent, _)) = p.rsplit_once('/') {
            let at = paths.iter().position(|q| *q == parent);
            assert!(
                at.is_some_and(|at| at < i),
                "parent `{parent}` of `{p}` is not an earlier entry: {paths:?}"
            );
        }
    }
    assert!(paths.contains(&"t/a/x/Ä") && paths.contains(&"t/é"));

    // `tar -tv` shows user and group names when a header has them: here every
    // owner must be numeric, and every mtime SOURCE_DATE_EPOCH (2009-02-13 23:31:30 UTC).
    let long = run(tool("tar")
        .args(["--quoting-style=literal", "--utc", "--full-time", "-tvf"])
        .arg(&tar)
        .env("TZ", "UTC"));
    for line in long.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let owner = if line.ends_with("etc/owned") {
            "1000/1000"
        } else {
            "0/0"
        };
        assert_eq!(cols[1], owner, "owner in {line:?}");
        assert_eq!(
            (cols[3], cols[4]),
            ("2009-02-13", "23:31:30"),
            "mtime in {line:?}"
        );
    }
}

#[test]
fn runc_runs_the_entrypoint() {
    let w = Work::new();
    probe_recipe(&w, "");
    w.build("recipe.toml", "img");
    let bundle = unpack(&w, "img", "v1", "bundle");
    let out = runc(&w, &bundle, None);
    assert!(out.starts_with("KILN-PROBE-OK\n"), "{out}");
    assert_has_lines(
        &out,
        &[
            "uid=65532 gid=65533",
            "cwd=/app",
            "argv[0]=/app/probe",
            "argv[1]=two words",
            "argv[2]=cat=/etc/greeting",
            "argv[3]=readlink=/usr/bin/probe",
            "env=PATH=/usr/bin:/bin",
            "env=GREETING=hé llo",
            "cat /etc/greeting: hello from kiln",
            "readlink /usr/bin/probe: /app/probe",
        ],
    );
}

#[test]
fn oci_archive_is_read_by_skopeo() {
    let w = Work::new();
    probe_recipe(&w, "");
    let out = w.ok(&[
        "build",
        "recipe.toml",
        "--format",
        "oci-archive",
        "--out",
        "probe.tar",
        "--digest-file",
        "probe.digest",
    ]);
    let digest = last_digest(&out);
    assert_eq!(read(&w.path().join("probe.digest")).trim(), digest);
    let archive = w.path().join("probe.tar");
    assert!(archive.is_file());
    for tag in ["v1", "stable"] {
        let r = format!("oci-archive:{}:{tag}", archive.display());
        assert_eq!(skopeo_json(&[&r])["Digest"], digest.as_str());
    }
    // Out of the archive into a layout, then unpacked and run.
    let src = format!("oci-archive:{}:v1", archive.display());
    skopeo(&[
        "copy",
        &src,
        &format!("oci:{}:v1", w.path().join("img").display()),
    ]);
    let bundle = unpack(&w, "img", "v1", "bundle");
    let out = runc(&w, &bundle, None);
    assert!(out.contains("cat /etc/greeting: hello from kiln"), "{out}");
}

#[test]
fn oci_archive_default_out_is_relative_to_the_cwd() {
    let w = Work::new();
    w.write(
        "recipes/r.toml",
        "name = \"deflt\"\n[[layers]]\ncontents = [ { dest = \"/a\", text = \"a\" } ]\n",
    );
    let digest = last_digest(&w.ok(&["build", "recipes/r.toml", "--format", "oci-archive"]));
    let archive = w.path().join("out/deflt.tar");
    let r = format!("oci-archive:{}:latest", archive.display());
    assert_eq!(skopeo_json(&[&r])["Digest"], digest.as_str());
    let digest = w.ok(&["build", "recipes/r.toml"]);
    let r = format!("oci:{}:latest", w.path().join("out/deflt").display());
    assert_eq!(skopeo_json(&[&r])["Digest"], last_digest(&digest).as_str());
}

#[test]
fn zstd_layers_are_read_by_skopeo_and_tar() {
    let w = Work::new();
    probe_recipe(&w, "compression = \"zstd\"");
    let digest = w.build("recipe.toml", "img");
    let src = format!("oci:{}:v1", w.path().join("img").display());
    let (manifest, raw) = raw_digest(&w, &src);
    assert_eq!(raw, digest);
    for l in manifest["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
    }

    // umoci 0.4 cannot read zstd layers: skopeo decompresses them (checking
    // each blob's digest), and the tars must match the config's diff_ids.
    let (dir, config) = decompressed_layers(&w, &src);
    for id in config["rootfs"]["diff_ids"].as_array().unwrap() {
        let id = id.as_str().unwrap();
        let tar = dir.join(id.strip_prefix("sha256:").unwrap());
        assert_eq!(sha256sum(&tar), id);
        run(tool("tar").arg("-tf").arg(&tar));
    }

    // Recompressed as gzip by skopeo, the image unpacks and runs.
    let gz = format!("oci:{}:v1", w.path().join("gz").display());
    skopeo(&["copy", "--dest-compress-format", "gzip", &src, &gz]);
    let bundle = unpack(&w, "gz", "v1", "bundle");
    let out = runc(&w, &bundle, None);
    assert!(out.contains("cat /etc/greeting: hello from kiln"), "{out}");
    assert!(out.contains("argv[1]=two words"), "{out}");
}

#[test]
fn multi_platform_build_is_an_index_over_both() {
    let w = Work::new();
    probe_recipe(&w, "platforms = [\"linux/amd64\", \"linux/arm64\"]");
    let digest = w.build("recipe.toml", "img");
    let src = format!("oci:{}:v1", w.path().join("img").display());
    let (index, raw) = raw_digest(&w, &src);
    assert_eq!(raw, digest, "the printed digest is the index's");
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let manifests = index["manifests"].as_array().unwrap();
    for m in manifests {
        assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    }
    assert_eq!(platforms(manifests), ["linux/amd64", "linux/arm64"]);

    // skopeo picks each platform's manifest, whose config names that platform.
    for arch in ["amd64", "arm64"] {
        let info = skopeo_json(&["--override-arch", arch, &src]);
        assert_eq!(info["Architecture"], arch);
        assert_eq!(info["Os"], "linux");
        let config = skopeo_json(&["--override-arch", arch, "--config", &src]);
        assert_eq!(config["architecture"], arch);
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!(["/app/probe"])
        );
    }

    // The whole index copies, digest kept; one platform copies out and unpacks.
    let all = format!("oci:{}:v1", w.path().join("all").display());
    skopeo(&["copy", "--all", &src, &all]);
    let (_, copied) = raw_digest(&w, &all);
    assert_eq!(copied, digest);
    let one = format!("oci:{}:arm64", w.path().join("one").display());
    skopeo(&["copy", "--override-arch", "arm64", &src, &one]);
    let root = unpack(&w, "one", "arm64", "bundle").join("rootfs");
    assert_eq!(read(&root.join("etc/greeting")), "hello from kiln\n");
}

#[test]
fn base_recipe_layers_and_config_are_inherited() {
    let w = Work::new();
    put_probe(&w, "bin/probe");
    w.write(
        "base.toml",
        r#"
name = "base"
[config]
env = { PATH = "/usr/bin:/bin", FROM_BASE = "base", OVERRIDDEN = "base" }
user = "65532:65532"
workdir = "/srv"
labels = { "org.example.base" = "yes" }

[[layers]]
name = "base-files"
contents = [
  { dest = "/etc/base-only", text = "base\n" },
  { dest = "/etc/replaced", text = "from base\n" },
]
dirs = [ { path = "/srv", mode = 0o750, uid = 65532, gid = 65532 } ]
files = [ { src = "bin/probe", dest = "/app/probe" } ]
"#,
    );
    w.write(
        "child.toml",
        r#"
name = "child"
base = "base.toml"
tags = ["v1"]
[config]
entrypoint = ["/app/probe", "cat=/etc/base-only", "cat=/etc/replaced", "cat=/srv/site/index.html"]
env = { FROM_CHILD = "child", OVERRIDDEN = "child" }
labels = { "org.example.child" = "yes" }

[[layers]]
name = "child-files"
contents = [
  { dest = "/etc/replaced", text = "from child\n" },
  { dest = "/srv/site/index.html", text = "site\n" },
]
"#,
    );
    let digest = w.build("child.toml", "img");
    let src = format!("oci:{}:v1", w.path().join("img").display());
    let info = skopeo_json(&[&src]);
    assert_eq!(info["Digest"], digest.as_str());
    assert_eq!(info["Layers"].as_array().unwrap().len(), 2);
    assert_eq!(info["Labels"]["org.example.base"], "yes");
    assert_eq!(info["Labels"]["org.example.child"], "yes");

    let bundle = unpack(&w, "img", "v1", "bundle");
    let root = bundle.join("rootfs");
    assert_eq!(read(&root.join("etc/base-only")), "base\n");
    assert_eq!(read(&root.join("etc/replaced")), "from child\n");
    assert_eq!(read(&root.join("srv/site/index.html")), "site\n");
    // /srv is implied by the child's layer, and keeps the base's mode and owner.
    assert_eq!(mode(&root.join("srv")), 0o750);
    assert_eq!(owner(&root.join("srv")), (65532, 65532));

    let out = runc(&w, &bundle, None);
    assert_has_lines(
        &out,
        &[
            "uid=65532 gid=65532",
            "cwd=/srv",
            "env=PATH=/usr/bin:/bin",
            "env=FROM_BASE=base",
            "env=FROM_CHILD=child",
            "env=OVERRIDDEN=child",
            "cat /etc/base-only: base",
            "cat /etc/replaced: from child",
            "cat /srv/site/index.html: site",
        ],
    );
    assert!(!out.contains("OVERRIDDEN=base"), "{out}");
}

#[test]
fn oci_layout_base_by_digest() {
    let w = Work::new();
    probe_recipe(&w, "");
    let base_digest = w.build("recipe.toml", "outA");
    w.write(
        "b.toml",
        format!(
            r#"
name = "b"
base = "oci:outA@{base_digest}"
tags = ["v1"]
[config]
env = {{ FROM_B = "b" }}
[[layers]]
name = "b"
contents = [ {{ dest = "/etc/b", text = "b\n" }} ]
"#
        ),
    );
    let digest = w.build("b.toml", "outB");
    assert_ne!(digest, base_digest);
    let a = skopeo_json(&[&format!("oci:{}:v1", w.path().join("outA").display())]);
    let b = skopeo_json(&[&format!("oci:{}:v1", w.path().join("outB").display())]);
    assert_eq!(b["Digest"], digest.as_str());
    let (la, lb) = (
        a["Layers"].as_array().unwrap(),
        b["Layers"].as_array().unwrap(),
    );
    assert_eq!(lb.len(), la.len() + 1);
    assert_eq!(
        &lb[..la.len()],
        &la[..],
        "the base's layers come first, unchanged"
    );

    let bundle = unpack(&w, "outB", "v1", "bundle");
    assert_eq!(read(&bundle.join("rootfs/etc/b")), "b\n");
    let out = runc(
        &w,
        &bundle,
        Some(&["/app/probe", "cat=/etc/greeting", "cat=/etc/b"]),
    );
    assert_has_lines(
        &out,
        &[
            "uid=65532 gid=65533",
            "env=GREETING=hé llo",
            "env=FROM_B=b",
            "cat /etc/greeting: hello from kiln",
            "cat /etc/b: b",
        ],
    );

    // Without a digest, a layout holding one image is that image.
    w.write(
        "c.toml",
        "name = \"c\"\nbase = \"oci:outA\"\n[[layers]]\ncontents = [ { dest = \"/etc/c\", text = \"c\\n\" } ]\n",
    );
    w.build("c.toml", "outC");
    let root = unpack(&w, "outC", "latest", "bundle-c").join("rootfs");
    assert_eq!(read(&root.join("etc/c")), "c\n");
    assert_eq!(read(&root.join("etc/greeting")), "hello from kiln\n");
}

#[test]
fn later_layers_replace_earlier_ones() {
    let w = Work::new();
    w.write(
        "recipe.toml",
        r#"
name = "layers"
[[layers]]
name = "one"
contents = [ { dest = "/etc/conf", text = "one\n" }, { dest = "/etc/keep", text = "keep\n" } ]
symlinks = [ { path = "/etc/link", target = "conf" } ]
dirs = [ { path = "/var/lib/app", mode = 0o700, uid = 10, gid = 10 } ]
[[layers]]
name = "two"
contents = [
  { dest = "/etc/conf", text = "two\n", mode = 0o600 },
  { dest = "/var/lib/app/state", text = "s\n" },
]
symlinks = [ { path = "/etc/link", target = "keep" } ]
"#,
    );
    w.build("recipe.toml", "img");
    let root = unpack(&w, "img", "latest", "bundle").join("rootfs");
    assert_eq!(read(&root.join("etc/conf")), "two\n");
    assert_eq!(mode(&root.join("etc/conf")), 0o600);
    assert_eq!(read(&root.join("etc/keep")), "keep\n");
    assert_eq!(
        fs::read_link(root.join("etc/link")).unwrap(),
        Path::new("keep")
    );
    assert_eq!(mode(&root.join("var/lib/app")), 0o700);
    assert_eq!(owner(&root.join("var/lib/app")), (10, 10));
    assert_eq!(read(&root.join("var/lib/app/state")), "s\n");
}

#[test]
fn umoci_unpacks_tree_and_file_options() {
    let w = Work::new();
    // A tree with an empty directory, an executable, symlinks (relative,
    // dangling) and three names for one file, one of them in a subdirectory.
    fs::create_dir_all(w.path().join("tree/empty")).unwrap();
    w.write("tree/sub/exec", "#!/bin/sh\n");
    fs::set_permissions(
        w.path().join("tree/sub/exec"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let g = w.write("tree/g", "g\n");
    fs::hard_link(&g, w.path().join("tree/g2")).unwrap();
    fs::hard_link(&g, w.path().join("tree/sub/g3")).unwrap();
    std::os::unix::fs::symlink("sub/exec", w.path().join("tree/rel")).unwrap();
    std::os::unix::fs::symlink("/nowhere", w.path().join("tree/dangling")).unwrap();
    // The same shape again for the tree with options: one host tree included
    // twice with different owners is its own test below.
    run(Command::new("cp")
        .args(["-a", "tree", "tree-owned"])
        .current_dir(w.path()));
    w.write("host.txt", "host\n");
    w.write(
        "recipe.toml",
        r#"
name = "options"
[[layers]]
name = "opts"
files = [
  { src = "host.txt", dest = "/opt/dir/" },
  { src = "host.txt", dest = "/opt/suid", mode = "4755" },
]
trees = [
  { src = "tree", dest = "/plain" },
  { src = "tree-owned", dest = "/owned", mode = 0o600, uid = 3, gid = 4 },
]
[[layers]]
name = "nothing"
"#,
    );
    w.build("recipe.toml", "img");
    let root = unpack(&w, "img", "latest", "bundle").join("rootfs");

    // `dest` ending in `/` keeps the file's name; a string mode; setuid kept.
    assert_eq!(read(&root.join("opt/dir/host.txt")), "host\n");
    assert_eq!(mode(&root.join("opt/dir/host.txt")), 0o644);
    assert_eq!(mode(&root.join("opt/suid")), 0o4755);

    // Default modes from the host's executable bits; links as they were.
    assert_eq!(mode(&root.join("plain/sub/exec")), 0o755);
    assert_eq!(mode(&root.join("plain/g")), 0o644);
    assert_eq!(mode(&root.join("plain/empty")), 0o755);
    assert_eq!(fs::read_dir(root.join("plain/empty")).unwrap().count(), 0);
    assert_eq!(
        fs::read_link(root.join("plain/rel")).unwrap(),
        Path::new("sub/exec")
    );
    assert_eq!(
        fs::read_link(root.join("plain/dangling")).unwrap(),
        Path::new("/nowhere")
    );
    let ino = |p: &str| fs::metadata(root.join(p)).unwrap().ino();
    assert_eq!(ino("plain/g"), ino("plain/g2"));
    assert_eq!(ino("plain/g"), ino("plain/sub/g3"));
    assert_eq!(fs::metadata(root.join("plain/g")).unwrap().nlink(), 3);

    // A tree's `mode` sets its regular files, directories stay 0755, and
    // `uid`/`gid` set every entry, links included.
    for (p, m) in [
        ("owned", 0o755),
        ("owned/empty", 0o755),
        ("owned/sub", 0o755),
        ("owned/sub/exec", 0o600),
        ("owned/g", 0o600),
        ("owned/sub/g3", 0o600),
    ] {
        assert_eq!(mode(&root.join(p)), m, "mode of /{p}");
        assert_eq!(owner(&root.join(p)), (3, 4), "owner of /{p}");
    }
    assert_eq!(owner(&root.join("owned/rel")), (3, 4));
    assert_eq!(ino("owned/g"), ino("owned/sub/g3"));

    // The empty layer is still a layer skopeo can read.
    let src = format!("oci:{}:latest", w.path().join("img").display());
    assert_eq!(skopeo_json(&[&src])["Layers"].as_array().unwrap().len(), 2);
}

#[test]
fn child_entrypoint_drops_base_cmd_and_merges_ports_and_volumes() {
    let w = Work::new();
    w.write(
        "base.toml",
        r#"
name = "base"
[config]
entrypoint = ["/bin/base"]
cmd = ["base-arg"]
exposed_ports = ["80"]
volumes = ["/v1"]
labels = { kept = "1" }
stop_signal = "SIGINT"
[[layers]]
contents = [ { dest = "/etc/b", text = "b" } ]
"#,
    );
    w.write(
        "child.toml",
        r#"
name = "child"
base = "base.toml"
[config]
entrypoint = ["/bin/child"]
exposed_ports = ["443/tcp", "53/udp"]
volumes = ["/v2"]
[[layers]]
contents = [ { dest = "/etc/c", text = "c" } ]
"#,
    );
    w.build("child.toml", "img");
    let src = format!("oci:{}:latest", w.path().join("img").display());
    let c = &skopeo_json(&["--config", &src])["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/child"]));
    assert!(c["Cmd"].is_null(), "base cmd kept: {c}");
    assert_eq!(
        c["ExposedPorts"],
        serde_json::json!({"80/tcp": {}, "443/tcp": {}, "53/udp": {}})
    );
    assert_eq!(c["Volumes"], serde_json::json!({"/v1": {}, "/v2": {}}));
    assert_eq!(c["Labels"], serde_json::json!({"kept": "1"}));
    assert_eq!(c["StopSignal"], "SIGINT");
}

#[test]
fn multi_platform_child_of_an_oci_index_base() {
    let w = Work::new();
    w.write(
        "base.toml",
        r#"
name = "base"
platforms = ["linux/amd64", "linux/arm64/v8"]
tags = ["v1"]
[[layers]]
contents = [ { dest = "/etc/base", text = "base\n" } ]
"#,
    );
    let base = w.build("base.toml", "base");
    w.write(
        "child.toml",
        format!(
            r#"
name = "child"
base = "oci:base@{base}"
platforms = ["linux/amd64", "linux/arm64/v8"]
tags = ["v1"]
[[layers]]
contents = [ {{ dest = "/etc/child", text = "child\n" }} ]
"#
        ),
    );
    let digest = w.build("child.toml", "child");
    let src = format!("oci:{}:v1", w.path().join("child").display());
    let (index, raw) = raw_digest(&w, &src);
    assert_eq!(raw, digest);
    let platforms: Vec<Value> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"].clone())
        .collect();
    assert_eq!(
        platforms,
        [
            serde_json::json!({"architecture": "amd64", "os": "linux"}),
            serde_json::json!({"architecture": "arm64", "os": "linux", "variant": "v8"}),
        ]
    );
    let base_src = format!("oci:{}:v1", w.path().join("base").display());
    for arch in ["amd64", "arm64"] {
        let b = skopeo_json(&["--override-arch", arch, "--config", &base_src]);
        let c = skopeo_json(&["--override-arch", arch, "--config", &src]);
        assert_eq!(c["architecture"], arch);
        let (bd, cd) = (
            b["rootfs"]["diff_ids"].as_array().unwrap(),
            c["rootfs"]["diff_ids"].as_array().unwrap(),
        );
        assert_eq!(cd.len(), 2);
        assert_eq!(cd[0], bd[0], "{arch}: the base's layer comes first");
    }
    let one = format!("oci:{}:arm64", w.path().join("one").display());
    skopeo(&[
        "copy",
        "--override-arch",
        "arm64",
        "--override-variant",
        "v8",
        &src,
        &one,
    ]);
    let root = unpack(&w, "one", "arm64", "bundle").join("rootfs");
    assert_eq!(read(&root.join("etc/base")), "base\n");
    assert_eq!(read(&root.join("etc/child")), "child\n");
}

/// The README's example, checked the way the README tells a user to look at it.
#[test]
fn readme_example_unpacks_and_runs() {
    let w = Work::new();
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/hello.toml");
    let digest = w.build(recipe.to_str().unwrap(), "hello");
    let src = format!("oci:{}:v1", w.path().join("hello").display());
    assert_eq!(skopeo_json(&[&src])["Digest"], digest.as_str());
    let bundle = unpack(&w, "hello", "v1", "bundle");
    let root = bundle.join("rootfs");
    assert_eq!(read(&root.join("srv/www/VERSION")), "1\n");
    assert_eq!(read(&root.join("etc/motd")), "Built with kiln.\n");
    assert!(root.join("srv/www/index.html").is_file());
    assert_eq!(
        fs::read_link(root.join("srv/www/home.html")).unwrap(),
        Path::new("index.html")
    );
    assert_eq!(mode(&root.join("tmp")), 0o1777);
    assert_eq!(mode(&root.join("home/nonroot")), 0o700);
    assert_eq!(owner(&root.join("home/nonroot")), (65532, 65532));
    assert_eq!(owner(&root.join("var/log/hello")), (65532, 65532));

    // The image ships no program: run the probe in it, as its configured user
    // in its configured directory.
    fs::copy(probe(), root.join("probe")).unwrap();
    let out = runc(
        &w,
        &bundle,
        Some(&["/probe", "cat=/srv/www/VERSION", "cat=/etc/passwd"]),
    );
    assert_has_lines(
        &out,
        &[
            "uid=65532 gid=65532",
            "cwd=/srv/www",
            "env=SITE_ROOT=/srv/www",
            "env=PATH=/usr/local/bin:/usr/bin:/bin",
            "cat /srv/www/VERSION: 1",
        ],
    );
    assert!(out.contains("nonroot:x:65532:65532"), "{out}");
}

/// Regression: links are grouped by host inode alone, so when one host tree is
/// included twice in a layer with different owners, only the copy that sorts
/// first keeps its hard links; the other's become separate files.
#[test]
fn hard_links_survive_a_tree_included_twice_with_different_owners() {
    let w = Work::new();
    let g = w.write("tree/g", "g\n");
    fs::hard_link(&g, w.path().join("tree/g2")).unwrap();
    w.write(
        "recipe.toml",
        r#"
name = "twice"
[[layers]]
trees = [
  { src = "tree", dest = "/plain" },
  { src = "tree", dest = "/owned", mode = 0o600, uid = 3, gid = 4 },
]
"#,
    );
    w.build("recipe.toml", "img");
    let root = unpack(&w, "img", "latest", "bundle").join("rootfs");
    let meta = |p: &str| fs::metadata(root.join(p)).unwrap();
    assert_eq!(meta("owned/g").ino(), meta("owned/g2").ino());
    assert_eq!(
        (meta("owned/g").mode() & 0o7777, meta("owned/g").uid()),
        (0o600, 3)
    );
    assert_eq!(
        (meta("plain/g").mode() & 0o7777, meta("plain/g").uid()),
        (0o644, 0)
    );
    assert_ne!(meta("plain/g").ino(), meta("owned/g").ino());
    assert_eq!(
        meta("plain/g").ino(),
        meta("plain/g2").ino(),
        "/plain/g and /plain/g2 are one file on the host and should stay hard links"
    );
}
