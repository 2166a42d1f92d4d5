//! The reproducibility promise, tested by variation: each test changes one
//! thing that DESIGN.md says must not matter (checkout path, umask, mtimes,
//! creation order, time of day, host user) and asserts that the digest
//! `kiln build` prints does not move. Each build runs in its own workspace
//! with its own store, except where the test is about the store.
//!
//! When two digests differ, the failure message lists the blobs of both
//! layouts and the tar entries of the layers that differ, so that the rule
//! that broke can be read off the message.

use crate::support;
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::{assert_success, have, kiln_bin, last_digest, run, Work};
use serde_json::Value;

// ---------------------------------------------------------------------------
// The fixture: a recipe that uses every kind of input, and its host inputs.
// ---------------------------------------------------------------------------

/// Uses files, trees (nested dirs, an empty dir, symlinks, a hard link, an
/// excluded file, a file large enough for several compression blocks),
/// contents, dirs and symlinks, over three layers.
const RECIPE: &str = r#"name = "repro"
base = "scratch"
platforms = ["linux/amd64"]
compression = "gzip"
tags = ["v1"]

[config]
entrypoint = ["/app/hello"]
env = { PATH = "/usr/bin:/bin" }

[[layers]]
name = "etc"
contents = [ { dest = "/etc/passwd", text = "root:x:0:0::/:/sbin/nologin\n" } ]
dirs = [ { path = "/data", mode = 0o700 } ]

[[layers]]
name = "app"
files = [
  { src = "hello", dest = "/app/hello" },
  { src = "README.txt", dest = "/app/README.txt", uid = 1, gid = 1 },
]
symlinks = [ { path = "/usr/bin/hello", target = "/app/hello" } ]

[[layers]]
name = "static"
trees = [ { src = "static", dest = "/app/static", exclude = ["*.tmp"] } ]
"#;

/// One step of creating the host inputs.
#[derive(Clone)]
enum Op {
    /// A file holding `text` (a line); `exec` runs `chmod +x` on it, which
    /// honours the umask just as a developer's checkout would.
    File(&'static str, &'static str, bool),
    /// A file of about 400 kB (`seq 1 70000`).
    Big(&'static str),
    /// An empty directory.
    Dir(&'static str),
    /// A symlink: path, target.
    Symlink(&'static str, &'static str),
    /// A pair of hard links to one file with `text`: created as the first
    /// path and linked from the second.
    HardLinks(&'static str, &'static str, &'static str),
}

fn fixture_ops() -> Vec<Op> {
    use Op::*;
    let mut ops = vec![
        File("hello", "#!/bin/sh echo hello", true),
        File("README.txt", "read me", false),
        File("static/index.html", "<h1>hello</h1>", false),
        File("static/css/site.css", "body { margin: 0 }", false),
        File("static/js/run.sh", "#!/bin/sh true", true),
        HardLinks(
            "static/js/app.js",
            "static/js/app-copy.js",
            "console.log(1)",
        ),
        File("static/deep/a/b/c/d.txt", "deep", false),
        File("static/scratch.tmp", "excluded", false),
        File("static/css/old.tmp", "excluded too", false),
        Big("static/big.txt"),
        Dir("static/empty"),
        Symlink("static/latest", "index.html"),
        Symlink("static/css/up", "../index.html"),
        Symlink("static/abs", "/etc/passwd"),
        Symlink("static/dangling", "does-not-exist"),
    ];
    for name in [
        "f00", "f01", "f02", "f03", "f04", "f05", "f06", "f07", "f08", "f09", "f10", "f11", "F12",
        "_13", "f-14", "f.15", "f16.txt", "f17", "f18", "f19",
    ] {
        ops.push(File(
            leak(format!("static/many/{name}")),
            leak(name.to_string()),
            false,
        ));
    }
    ops
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// How to create the inputs.
#[derive(Clone, Copy)]
struct Making {
    umask: &'static str,
    /// Create everything in the opposite order (and the hard link pair the
    /// other way round, so a different path is the "original").
    reverse: bool,
}

const NORMAL: Making = Making {
    umask: "022",
    reverse: false,
};

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Writes the recipe and creates its inputs under `dir` with a shell, so that
/// the umask applies to every file and directory as it would in a checkout.
fn make_inputs(dir: &Path, how: Making) {
    fs::create_dir_all(dir).unwrap();
    let mut ops = fixture_ops();
    if how.reverse {
        ops.reverse();
    }
    let mut script = format!("set -e\numask {}\n", how.umask);
    script.push_str(&format!("printf '%s' {} > recipe.toml\n", sh_quote(RECIPE)));
    let parent = |p: &str| {
        Path::new(p)
            .parent()
            .map(|d| d.to_str().unwrap().to_string())
            .filter(|d| !d.is_empty())
    };
    for op in ops {
        let mkparent = |p: &str, script: &mut String| {
            if let Some(d) = parent(p) {
                script.push_str(&format!("mkdir -p {}\n", sh_quote(&d)));
            }
        };
        match op {
            Op::File(p, text, exec) => {
                mkparent(p, &mut script);
                script.push_str(&format!(
                    "printf '%s\\n' {} > {}\n",
                    sh_quote(text),
                    sh_quote(p)
                ));
                if exec {
                    script.push_str(&format!("chmod +x {}\n", sh_quote(p)));
                }
            }
            Op::Big(p) => {
                mkparent(p, &mut script);
                script.push_str(&format!("seq 1 70000 > {}\n", sh_quote(p)));
            }
            Op::Dir(p) => script.push_str(&format!("mkdir -p {}\n", sh_quote(p))),
            Op::Symlink(p, target) => {
                mkparent(p, &mut script);
                script.push_str(&format!("ln -s {} {}\n", sh_quote(target), sh_quote(p)));
            }
            Op::HardLinks(a, b, text) => {
                let (first, second) = if how.reverse { (b, a) } else { (a, b) };
                mkparent(first, &mut script);
                mkparent(second, &mut script);
                script.push_str(&format!(
                    "printf '%s\\n' {} > {}\nln {} {}\n",
                    sh_quote(text),
                    sh_quote(first),
                    sh_quote(first),
                    sh_quote(second)
                ));
            }
        }
    }
    run(Command::new("sh").arg("-c").arg(&script).current_dir(dir));
}

// ---------------------------------------------------------------------------
// Running kiln.
// ---------------------------------------------------------------------------

/// `kiln` run in `cwd` with the store `cwd/cache`, optionally behind a
/// wrapper command (`faketime …`, `setpriv …`, `sh -c 'umask …'`).
fn kiln_in(cwd: &Path, wrapper: &[&str]) -> Command {
    kiln_with(&kiln_bin(), cwd, wrapper)
}

fn kiln_with(bin: &Path, cwd: &Path, wrapper: &[&str]) -> Command {
    let mut c = match wrapper.split_first() {
        None => Command::new(bin),
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
    };
    c.current_dir(cwd)
        .env("KILN_CACHE", cwd.join("cache"))
        .env("KILN_NO_PROGRESS", "1")
        .env_remove("SOURCE_DATE_EPOCH");
    c
}

/// A finished build: the printed digest and the layout it wrote.
struct Built {
    digest: String,
    out: PathBuf,
}

/// Runs `cmd build recipe.toml --out out/img` and returns what it built.
fn build(mut cmd: Command, cwd: &Path) -> Built {
    let out = cmd
        .args(["build", "recipe.toml", "--out", "out/img"])
        .output()
        .unwrap();
    assert_success(&out, &format!("{cmd:?}"));
    Built {
        digest: last_digest(&String::from_utf8(out.stdout).unwrap()),
        out: cwd.join("out/img"),
    }
}

/// Builds the fixture made in `how` under `dir` with plain `kiln`.
fn build_fixture(dir: &Path, how: Making) -> Built {
    make_inputs(dir, how);
    build(kiln_in(dir, &[]), dir)
}

/// Asserts two builds printed the same digest; on failure, shows how the
/// layouts differ.
fn assert_same(what: &str, a: &Built, b: &Built) {
    if a.digest != b.digest {
        panic!(
            "{what}: the digest moved: {} vs {}\n{}",
            a.digest,
            b.digest,
            layout_diff(&a.out, &b.out)
        );
    }
}

// ---------------------------------------------------------------------------
// Reading a layout back (for failure messages and the rules test).
// ---------------------------------------------------------------------------

fn blob_path(out: &Path, digest: &str) -> PathBuf {
    out.join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").expect("sha256 digest"))
}

fn read_json(path: &Path) -> Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("cannot read `{}`: {e}", path.display()));
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("`{}` is not JSON: {e}", path.display()))
}

/// Every image manifest reachable from the layout's `index.json`.
fn manifests(out: &Path) -> Vec<Value> {
    fn walk(out: &Path, index: &Value, found: &mut Vec<Value>) {
        for m in index["manifests"].as_array().expect("index has manifests") {
            let doc = read_json(&blob_path(out, m["digest"].as_str().unwrap()));
            if doc.get("manifests").is_some() {
                walk(out, &doc, found);
            } else {
                found.push(doc);
            }
        }
    }
    let mut found = Vec::new();
    walk(out, &read_json(&out.join("index.json")), &mut found);
    found
}

/// One tar entry as the rules see it.
#[derive(Debug, Clone, PartialEq)]
struct TarEntry {
    path: String,
    kind: char,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: Option<String>,
    size: u64,
    pax_keys: Vec<String>,
}

fn layer_entries(out: &Path, layer: &Value) -> Vec<TarEntry> {
    let path = blob_path(out, layer["digest"].as_str().unwrap());
    let file = fs::File::open(&path).unwrap();
    let media = layer["mediaType"].as_str().unwrap_or_default();
    let reader: Box<dyn Read> = if media.ends_with("+gzip") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else if media.ends_with("+zstd") {
        Box::new(zstd::stream::read::Decoder::new(file).unwrap())
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    let mut entries = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let pax_keys = match e.pax_extensions().unwrap() {
            Some(exts) => exts
                .map(|x| x.unwrap().key().unwrap_or("?").to_string())
                .collect(),
            None => Vec::new(),
        };
        let h = e.header();
        entries.push(TarEntry {
            path: String::from_utf8_lossy(&e.path_bytes()).into_owned(),
            kind: match h.entry_type() {
                tar::EntryType::Regular => 'f',
                tar::EntryType::Directory => 'd',
                tar::EntryType::Symlink => 'l',
                tar::EntryType::Link => 'h',
                other => panic!("unexpected tar entry type {other:?}"),
            },
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            link: e
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned()),
            size: h.size().unwrap(),
            pax_keys,
        });
    }
    entries
}

/// A human-readable account of how two layouts differ.
fn layout_diff(a: &Path, b: &Path) -> String {
    fn blobs(out: &Path) -> BTreeMap<String, PathBuf> {
        let dir = out.join("blobs/sha256");
        fs::read_dir(&dir)
            .map(|rd| {
                rd.map(|e| {
                    let e = e.unwrap();
                    (e.file_name().to_string_lossy().into_owned(), e.path())
                })
                .collect()
            })
            .unwrap_or_default()
    }
    let (ba, bb) = (blobs(a), blobs(b));
    let mut text = String::new();
    for (side, mine, theirs, out) in [("first", &ba, &bb, a), ("second", &bb, &ba, b)] {
        for (name, path) in mine {
            if theirs.contains_key(name) {
                continue;
            }
            let bytes = fs::read(path).unwrap_or_default();
            if bytes.first() == Some(&b'{') {
                text.push_str(&format!(
                    "only in {side}: {name}:\n  {}\n",
                    String::from_utf8_lossy(&bytes)
                ));
            } else {
                text.push_str(&format!("only in {side}: {name} ({} bytes)\n", bytes.len()));
            }
        }
        // The layers of this side that the other does not have, entry by entry.
        if let Ok(ms) = std::panic::catch_unwind(|| manifests(out)) {
            for m in ms {
                for layer in m["layers"].as_array().cloned().unwrap_or_default() {
                    let d = layer["digest"].as_str().unwrap_or_default();
                    let hex = d.trim_start_matches("sha256:");
                    if !theirs.contains_key(hex) {
                        if let Ok(entries) = std::panic::catch_unwind(|| layer_entries(out, &layer))
                        {
                            text.push_str(&format!("  entries of {side}'s layer {d}:\n"));
                            for e in entries {
                                text.push_str(&format!("    {e:?}\n"));
                            }
                        }
                    }
                }
            }
        }
    }
    text
}

/// Every file under `dir` with its mode and bytes (or link target).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut map = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.unwrap();
        let meta = e.path().symlink_metadata().unwrap();
        let content = if meta.file_type().is_symlink() {
            fs::read_link(e.path())
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if meta.is_file() {
            fs::read(e.path()).unwrap()
        } else {
            Vec::new()
        };
        map.insert(
            e.path().strip_prefix(dir).unwrap().to_path_buf(),
            (meta.permissions().mode(), content),
        );
    }
    map
}

// ---------------------------------------------------------------------------
// One variation per test.
// ---------------------------------------------------------------------------

#[test]
fn checkout_directory_does_not_change_the_digest() {
    let (a, b) = (Work::new(), Work::new());
    let short = a.path().join("c");
    let long = b
        .path()
        .join("a/much/longer/path/to/another/checkout/of/the/same/project/recipes");
    let one = build_fixture(&short, NORMAL);
    let two = build_fixture(&long, NORMAL);
    assert_same("checkout path", &one, &two);
}

#[test]
fn recipe_path_given_from_another_directory_does_not_change_the_digest() {
    // Same inputs, but kiln is started elsewhere and given the recipe's path.
    let (a, b) = (Work::new(), Work::new());
    let one = build_fixture(a.path(), NORMAL);
    make_inputs(&b.path().join("src/proj"), NORMAL);
    let out = kiln_in(b.path(), &[])
        .args(["build", "src/proj/recipe.toml", "--out", "out/img"])
        .output()
        .unwrap();
    assert_success(&out, "kiln build src/proj/recipe.toml");
    let two = Built {
        digest: last_digest(&String::from_utf8(out.stdout).unwrap()),
        out: b.path().join("out/img"),
    };
    assert_same("recipe named from another directory", &one, &two);
}

#[test]
fn umask_does_not_change_the_digest() {
    let (a, b) = (Work::new(), Work::new());
    let one = build_fixture(a.path(), NORMAL);
    make_inputs(
        b.path(),
        Making {
            umask: "077",
            reverse: false,
        },
    );
    // The inputs really are private now: the umask reached them.
    let hello = fs::metadata(b.path().join("hello"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        hello & 0o777,
        0o700,
        "umask 077 should give the script 0700"
    );
    let readme = fs::metadata(b.path().join("README.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(readme & 0o777, 0o600);
    let two = build(
        kiln_in(b.path(), &["sh", "-c", "umask 077; exec \"$0\" \"$@\""]),
        b.path(),
    );
    assert_same("umask 022 vs 077", &one, &two);

    // And a permissive umask the other way.
    let c = Work::new();
    make_inputs(
        c.path(),
        Making {
            umask: "000",
            reverse: false,
        },
    );
    let three = build(
        kiln_in(c.path(), &["sh", "-c", "umask 000; exec \"$0\" \"$@\""]),
        c.path(),
    );
    assert_same("umask 022 vs 000", &one, &three);
}

#[test]
fn file_mtimes_do_not_change_the_digest() {
    let (a, b) = (Work::new(), Work::new());
    make_inputs(a.path(), NORMAL);
    make_inputs(b.path(), NORMAL);
    for (w, when) in [(&a, "2001-02-03 04:05:06"), (&b, "2037-12-31 23:59:58")] {
        // -h: links too; every file, directory and link of the inputs.
        run(Command::new("sh")
            .current_dir(w.path())
            .arg("-c")
            .arg(format!("find . -exec touch -h -d '{when}' {{}} +")));
    }
    let ma = fs::metadata(a.path().join("static/index.html")).unwrap();
    let mb = fs::metadata(b.path().join("static/index.html")).unwrap();
    assert_ne!(
        ma.modified().unwrap(),
        mb.modified().unwrap(),
        "touch -d did not change the mtimes"
    );
    let one = build(kiln_in(a.path(), &[]), a.path());
    let two = build(kiln_in(b.path(), &[]), b.path());
    assert_same("mtimes 2001 vs 2037", &one, &two);
}

#[test]
fn creation_order_does_not_change_the_digest() {
    // On tmpfs a directory lists its entries in creation order, so creating the
    // same tree in opposite orders gives two different readdir orders; on other
    // file systems the order may not move, so the premise is checked below.
    let base = Path::new("/dev/shm");
    let tmp = |tag: &str| {
        let mut b = tempfile::Builder::new();
        b.prefix(tag);
        if base.is_dir() {
            b.tempdir_in(base).unwrap()
        } else {
            b.tempdir().unwrap()
        }
    };
    let (a, b) = (tmp("kiln-test-order-a-"), tmp("kiln-test-order-b-"));
    let forward = a.path().join("forward");
    let backward = b.path().join("backward/checkout");
    make_inputs(&forward, NORMAL);
    make_inputs(
        &backward,
        Making {
            umask: "022",
            reverse: true,
        },
    );
    let listing = |dir: &Path| -> Vec<String> {
        fs::read_dir(dir.join("static/many"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    if base.is_dir() {
        assert_ne!(
            listing(&forward),
            listing(&backward),
            "the two trees list in the same order, so this test would prove nothing"
        );
    }
    let one = build(kiln_in(&forward, &[]), &forward);
    let two = build(kiln_in(&backward, &[]), &backward);
    assert_same("creation order", &one, &two);
}

#[test]
fn time_of_day_does_not_change_the_digest() {
    assert!(
        have("faketime"),
        "`faketime` is missing: install the Debian package `faketime` (scripts/test.sh does)"
    );
    // The premise: faketime really moves the clock kiln sees.
    let year = run(Command::new("faketime").args(["2031-05-05 23:59:59", "date", "+%Y"]));
    assert_eq!(year.trim(), "2031", "faketime does not move the clock");

    let (a, b) = (Work::new(), Work::new());
    let one = build_fixture(a.path(), NORMAL);
    make_inputs(b.path(), NORMAL);
    let two = build(
        kiln_in(b.path(), &["faketime", "2031-05-05 23:59:59"]),
        b.path(),
    );
    assert_same("now vs 2031-05-05 23:59:59", &one, &two);
}

#[test]
fn source_date_epoch_changes_the_digest_and_pins_it() {
    let unset_dir = Work::new();
    let unset = build_fixture(unset_dir.path(), NORMAL);
    let zero_dir = Work::new();
    make_inputs(zero_dir.path(), NORMAL);
    let mut c = kiln_in(zero_dir.path(), &[]);
    c.env("SOURCE_DATE_EPOCH", "0");
    let zero = build(c, zero_dir.path());
    assert_same("SOURCE_DATE_EPOCH unset vs 0", &unset, &zero);

    let set = |delay: bool| {
        let w = Work::new();
        make_inputs(w.path(), NORMAL);
        if delay {
            // A later wall clock, so a timestamp taken from "now" would show.
            std::thread::sleep(Duration::from_millis(1100));
        }
        let mut c = kiln_in(w.path(), &[]);
        c.env("SOURCE_DATE_EPOCH", "1700000000");
        let built = build(c, w.path());
        (w, built)
    };
    let (_wa, first) = set(false);
    let (_wb, second) = set(true);
    assert_same("same SOURCE_DATE_EPOCH, two builds", &first, &second);
    assert_ne!(
        unset.digest, first.digest,
        "SOURCE_DATE_EPOCH=1700000000 must change the digest (mtimes and `created`)"
    );

    // `created` follows it exactly.
    for (built, created) in [
        (&unset, "1970-01-01T00:00:00Z"),
        (&first, "2023-11-14T22:13:20Z"),
    ] {
        for m in manifests(&built.out) {
            let config = read_json(&blob_path(
                &built.out,
                m["config"]["digest"].as_str().unwrap(),
            ));
            assert_eq!(config["created"], created, "config: {config}");
        }
    }
}

#[test]
fn host_user_does_not_change_the_digest() {
    assert!(have("setpriv"), "`setpriv` (util-linux) is missing");
    let a = Work::new();
    let one = build_fixture(a.path(), NORMAL);

    // The same inputs, owned by and built as `nobody` (65534), with the store
    // and output where that user can write. The binary is copied in, since
    // the target directory may not be readable by that user.
    let b = Work::new();
    make_inputs(b.path(), NORMAL);
    let bin = b.path().join("kiln");
    fs::copy(kiln_bin(), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    run(Command::new("chown")
        .args(["-R", "-h", "65534:65534"])
        .arg(b.path()));
    fs::set_permissions(b.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = kiln_with(
        &bin,
        b.path(),
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
    );
    c.env("HOME", b.path());
    let two = build(c, b.path());
    assert_same("root vs uid 65534", &one, &two);
}

/// The reproducibility rules, read back from the layers: one fixed mtime,
/// owners and modes from the recipe or the defaults, sorted entries with
/// parents first, hard links kept, tree symlinks as is, nothing excluded, no
/// atime/ctime/xattr records, no time or name in the gzip header.
#[test]
fn layer_entries_follow_the_rules() {
    let w = Work::new();
    make_inputs(
        w.path(),
        Making {
            umask: "077",
            reverse: true,
        },
    );
    let mut c = kiln_in(w.path(), &[]);
    c.env("SOURCE_DATE_EPOCH", "1234567890");
    let built = build(c, w.path());
    let ms = manifests(&built.out);
    assert_eq!(ms.len(), 1);
    let layers = ms[0]["layers"].as_array().unwrap().clone();
    assert_eq!(layers.len(), 3, "one blob per [[layers]] table");

    let mut all = BTreeMap::new();
    for layer in &layers {
        let blob = fs::read(blob_path(&built.out, layer["digest"].as_str().unwrap())).unwrap();
        assert_eq!(&blob[..2], &[0x1f, 0x8b], "gzip layer");
        assert_eq!(blob[3] & 0x08, 0, "no file name in the gzip header");
        assert_eq!(&blob[4..8], &[0, 0, 0, 0], "no time in the gzip header");

        let entries = layer_entries(&built.out, layer);
        let paths: Vec<String> = entries
            .iter()
            .map(|e| {
                e.path
                    .trim_start_matches("./")
                    .trim_end_matches('/')
                    .to_string()
            })
            .collect();
        let mut sorted = paths.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(paths, sorted, "entries sorted by path bytes, one per path");
        for (i, p) in paths.iter().enumerate() {
            if let Some((parent, _)) = p.rsplit_once('/') {
                let at = paths.iter().position(|q| q == parent);
                assert!(
                    at.is_some_and(|at| at < i),
                    "`{parent}` must be an entry before `{p}`: {paths:?}"
                );
            }
        }
        for (e, p) in entries.into_iter().zip(paths) {
            assert_eq!(e.mtime, 1234567890, "mtime of `{p}`");
            for key in &e.pax_keys {
                assert!(
                    !key.contains("atime") && !key.contains("ctime") && !key.contains("xattr"),
                    "host metadata `{key}` leaked into `{p}`"
                );
            }
            all.insert(p, e);
        }
    }

    let get = |p: &str| {
        all.get(p).unwrap_or_else(|| {
            panic!(
                "no `{p}` in the layers: {:?}",
                all.keys().collect::<Vec<_>>()
            )
        })
    };
    let check = |p: &str, kind: char, mode: u32, owner: u64| {
        let e = get(p);
        assert_eq!(
            (e.kind, e.mode & 0o7777, e.uid, e.gid),
            (kind, mode, owner, owner),
            "`{p}`: {e:?}"
        );
    };
    check("etc", 'd', 0o755, 0);
    check("etc/passwd", 'f', 0o644, 0);
    check("data", 'd', 0o700, 0);
    check("app", 'd', 0o755, 0);
    check("app/hello", 'f', 0o755, 0); // executable on the host (0700 under umask 077)
    check("app/README.txt", 'f', 0o644, 1); // 0600 on the host
    check("app/static", 'd', 0o755, 0);
    check("app/static/empty", 'd', 0o755, 0);
    check("app/static/deep/a/b/c", 'd', 0o755, 0);
    check("app/static/index.html", 'f', 0o644, 0);
    check("app/static/js/run.sh", 'f', 0o755, 0);
    check("app/static/big.txt", 'f', 0o644, 0);
    assert_eq!(get("app/static/big.txt").size, 408_894);
    check("usr/bin/hello", 'l', get("usr/bin/hello").mode & 0o7777, 0);
    assert_eq!(get("usr/bin/hello").link.as_deref(), Some("/app/hello"));
    for (link, target) in [
        ("app/static/latest", "index.html"),
        ("app/static/css/up", "../index.html"),
        ("app/static/abs", "/etc/passwd"),
        ("app/static/dangling", "does-not-exist"),
    ] {
        assert_eq!(get(link).kind, 'l', "`{link}` is stored as a symlink");
        assert_eq!(get(link).link.as_deref(), Some(target), "`{link}` as is");
    }
    // Hard links: the first path in sorted order is the file, whatever the
    // host created first (the fixture created `app-copy.js` first here).
    check("app/static/js/app-copy.js", 'f', 0o644, 0);
    let linked = get("app/static/js/app.js");
    assert_eq!(linked.kind, 'h', "`app.js` is a hard link: {linked:?}");
    assert_eq!(
        linked.link.as_deref().map(|l| l.trim_start_matches("./")),
        Some("app/static/js/app-copy.js")
    );
    assert!(
        !all.keys().any(|p| p.ends_with(".tmp")),
        "excluded files are in the layer: {:?}",
        all.keys().collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------
// Golden digests.
// ---------------------------------------------------------------------------

/// A recipe with no host inputs at all: its digest depends only on kiln.
const GOLDEN: &str = r#"name = "golden"

[config]
entrypoint = ["/bin/true"]
env = { PATH = "/usr/bin:/bin" }

[[layers]]
name = "etc"
contents = [
  { dest = "/etc/passwd", text = "root:x:0:0::/:/sbin/nologin\n" },
  { dest = "/etc/hostname", text = "kiln\n", mode = 0o600, uid = 1, gid = 2 },
]
dirs = [ { path = "/data", mode = 0o700 } ]
symlinks = [ { path = "/etc/localtime", target = "/usr/share/zoneinfo/UTC" } ]
"#;

// A change to either golden digest below is a format-version bump: it means
// every image kiln builds from the same recipe now has a different digest.
// Change it only on purpose, together with `FORMAT_VERSION` in src/plan.rs
// and a note in the changelog, never to make this test pass.
const GOLDEN_GZIP: &str = "sha256:74a3662451c12d567f83be7a02b4a8c599d94e460fe7c2d4d7de5f94be2a6000";
const GOLDEN_ZSTD_INDEX: &str =
    "sha256:440729cc0b6ba8b1825300fb09014b98c824a4ed42d10dcdcac3a17010d4d670";

#[test]
fn golden_digest_gzip() {
    let w = Work::new();
    w.write("recipe.toml", GOLDEN);
    let digest = w.build("recipe.toml", "out/img");
    assert_eq!(
        digest, GOLDEN_GZIP,
        "the golden image's digest changed: a format-version bump (see the comment above)"
    );
}

#[test]
fn golden_digest_zstd_multi_platform() {
    let w = Work::new();
    let recipe = GOLDEN.replacen(
        "name = \"golden\"\n",
        "name = \"golden\"\nplatforms = [\"linux/amd64\", \"linux/arm64\"]\ncompression = \"zstd\"\n",
        1,
    );
    w.write("recipe.toml", recipe);
    let digest = w.build("recipe.toml", "out/img");
    assert_eq!(
        digest, GOLDEN_ZSTD_INDEX,
        "the golden index's digest changed: a format-version bump (see the comment above)"
    );
}

// ---------------------------------------------------------------------------
// The layer cache.
// ---------------------------------------------------------------------------

/// `kiln build recipe.toml --out OUT --json` in `cwd`, parsed.
fn build_json(cwd: &Path, out: &str) -> Value {
    let o = kiln_in(cwd, &[])
        .args(["build", "recipe.toml", "--out", out, "--json"])
        .output()
        .unwrap();
    assert_success(&o, "kiln build --json");
    let text = String::from_utf8(o.stdout).unwrap();
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("--json printed {text:?}: {e}"))
}

/// (layer name, cached, digest) for every layer of a `--json` result.
fn layer_cache(v: &Value) -> Vec<(String, bool, String)> {
    v["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("no `layers` array in {v}"))
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap_or_default().to_string(),
                l["cached"]
                    .as_bool()
                    .unwrap_or_else(|| panic!("`cached` is not a bool in {l}")),
                l["digest"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Asserts which layers of a `kiln build --json` result came from the cache,
/// by name and in order.
fn assert_cached(v: &Value, want: [(&str, bool); 3], what: &str) {
    let layers = layer_cache(v);
    let got: Vec<(&str, bool)> = layers.iter().map(|l| (l.0.as_str(), l.1)).collect();
    assert_eq!(got, want, "{what}");
}

/// Asserts that every layer of a `kiln build --json` result came from the
/// cache; the message is `WHAT: <layers>`.
fn assert_all_cached(v: &Value, what: &str) {
    let layers = layer_cache(v);
    assert!(layers.iter().all(|l| l.1), "{what}: {layers:?}");
}

#[test]
fn cache_reuses_unchanged_layers_and_rebuilds_changed_ones() {
    let w = Work::new();
    make_inputs(w.path(), NORMAL);

    let first = build_json(w.path(), "out/img");
    let layers = layer_cache(&first);
    let names: Vec<&str> = layers.iter().map(|l| l.0.as_str()).collect();
    assert_eq!(names, ["etc", "app", "static"], "{first}");
    assert!(
        layers.iter().all(|l| !l.1),
        "a fresh store cannot have cached layers: {layers:?}"
    );
    last_digest(first["digest"].as_str().unwrap_or_default());

    // Nothing changed: every layer comes from the cache, same digest.
    let again = build_json(w.path(), "out/img");
    assert_all_cached(&again, "nothing changed, yet not every layer was cached");
    assert_eq!(again["digest"], first["digest"]);

    // One file of the tree changes: only the `static` layer is rebuilt.
    fs::write(
        w.path().join("static/css/site.css"),
        "body { margin: 1px }\n",
    )
    .unwrap();
    let changed = build_json(w.path(), "out/img");
    let changed_layers = layer_cache(&changed);
    assert_cached(
        &changed,
        [("etc", true), ("app", true), ("static", false)],
        &changed.to_string(),
    );
    assert_ne!(changed["digest"], first["digest"]);
    for i in 0..2 {
        assert_eq!(
            changed_layers[i].2, layers[i].2,
            "unchanged layers keep their digest"
        );
    }
    assert_ne!(changed_layers[2].2, layers[2].2);

    // The same image built elsewhere from nothing has the same digest as the
    // one assembled from cached layers.
    let fresh = Work::new();
    make_inputs(fresh.path(), NORMAL);
    fs::write(
        fresh.path().join("static/css/site.css"),
        "body { margin: 1px }\n",
    )
    .unwrap();
    let cold = build_json(fresh.path(), "out/img");
    assert_eq!(cold["digest"], changed["digest"], "cached vs cold build");
}

#[test]
fn concurrent_builds_share_one_store() {
    let w = Work::new();
    make_inputs(w.path(), NORMAL);
    // Started at once, on one fresh store, each with its own output.
    let children: Vec<_> = (0..4)
        .map(|i| {
            kiln_in(w.path(), &[])
                .args(["build", "recipe.toml", "--out", &format!("out/p{i}")])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut digests = Vec::new();
    for (i, o) in outputs.iter().enumerate() {
        assert_success(o, &format!("concurrent build {i}"));
        digests.push(last_digest(&String::from_utf8_lossy(&o.stdout)));
    }
    assert!(
        digests.iter().all(|d| *d == digests[0]),
        "concurrent builds disagree: {digests:?}"
    );

    // And they agree with a build alone, and the shared store still verifies:
    // a rebuild from it gives the same digest.
    let alone = Work::new();
    let solo = build_fixture(alone.path(), NORMAL);
    assert_same(
        "concurrent vs alone",
        &Built {
            digest: digests[0].clone(),
            out: w.path().join("out/p0"),
        },
        &solo,
    );
    let rebuilt = build(kiln_in(w.path(), &[]), w.path());
    assert_eq!(rebuilt.digest, digests[0]);
    for i in 1..4 {
        assert_eq!(
            snapshot(&w.path().join("out/p0")),
            snapshot(&w.path().join(format!("out/p{i}"))),
            "layouts p0 and p{i} differ"
        );
    }
}

#[test]
fn moved_checkout_reuses_the_cache() {
    // The layer cache is keyed by what goes into a layer, not by host paths:
    // the same inputs elsewhere, on the same store, are all cache hits.
    let w = Work::new();
    let here = w.path().join("here");
    make_inputs(&here, NORMAL);
    let first = build_json(&here, "out/img");
    let there = w.path().join("somewhere/else/entirely/much/deeper");
    fs::create_dir_all(there.parent().unwrap()).unwrap();
    run(Command::new("cp").arg("-a").arg(&here).arg(&there));
    fs::remove_dir_all(there.join("out")).unwrap();
    let o = kiln_in(&there, &[])
        .env("KILN_CACHE", here.join("cache"))
        .args(["build", "recipe.toml", "--out", "out/img", "--json"])
        .output()
        .unwrap();
    assert_success(&o, "kiln build in the moved checkout");
    let moved: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(moved["digest"], first["digest"]);
    assert_all_cached(&moved, "moving the checkout missed the cache");
}

#[test]
fn excluded_files_do_not_change_the_digest() {
    let w = Work::new();
    make_inputs(w.path(), NORMAL);
    let first = build_json(w.path(), "out/img");
    fs::write(
        w.path().join("static/scratch.tmp"),
        "changed, still excluded\n",
    )
    .unwrap();
    fs::write(w.path().join("static/deep/new.tmp"), "new, excluded\n").unwrap();
    let again = build_json(w.path(), "out/img");
    assert_eq!(again["digest"], first["digest"]);
    assert_all_cached(&again, "only excluded files changed");
}

#[test]
fn cache_notices_same_size_edits_and_mode_changes() {
    let w = Work::new();
    make_inputs(w.path(), NORMAL);
    let first = build_json(w.path(), "out/img");
    let stamp = |p: &str| {
        run(Command::new("touch")
            .args(["-d", "2020-02-02 02:02:02"])
            .arg(w.path().join(p)));
    };
    stamp("static/index.html");
    let second = build_json(w.path(), "out/img");
    assert_eq!(second["digest"], first["digest"], "only an mtime changed");

    // Same size, same mtime, different bytes: a stat cache keyed on size and
    // mtime alone would miss this.
    let before = fs::read(w.path().join("static/index.html")).unwrap();
    let edited = String::from_utf8(before.clone())
        .unwrap()
        .replace("hello", "HELLO");
    assert_eq!(edited.len(), before.len());
    fs::write(w.path().join("static/index.html"), edited).unwrap();
    stamp("static/index.html");
    let third = build_json(w.path(), "out/img");
    assert_cached(
        &third,
        [("etc", true), ("app", true), ("static", false)],
        "a same-size, same-mtime edit must rebuild its layer",
    );
    assert_ne!(third["digest"], first["digest"]);

    // The executable bit picks the default mode, so `chmod +x` is a change.
    run(Command::new("chmod")
        .arg("+x")
        .arg(w.path().join("README.txt")));
    let fourth = build_json(w.path(), "out/img");
    assert_cached(
        &fourth,
        [("etc", true), ("app", false), ("static", true)],
        "chmod +x must rebuild its layer",
    );
    assert_ne!(fourth["digest"], third["digest"]);
}

#[test]
fn archive_bytes_do_not_depend_on_umask_or_clock() {
    // The archive is a file users hash and ship: its own bytes, not only the
    // digest inside it, must be reproducible. (One variation each.)
    let archive = |w: &Work, wrapper: &[&str]| -> Vec<u8> {
        make_inputs(w.path(), NORMAL);
        let o = kiln_in(w.path(), wrapper)
            .args([
                "build",
                "recipe.toml",
                "--format",
                "oci-archive",
                "--out",
                "out/img.tar",
            ])
            .output()
            .unwrap();
        assert_success(&o, "kiln build --format oci-archive");
        fs::read(w.path().join("out/img.tar")).unwrap()
    };
    let (a, b, c) = (Work::new(), Work::new(), Work::new());
    let plain = archive(&a, &[]);
    let umask = archive(&b, &["sh", "-c", "umask 077; exec \"$0\" \"$@\""]);
    assert!(plain == umask, "archive bytes depend on the umask");
    assert!(have("faketime"), "`faketime` is missing");
    let later = archive(&c, &["faketime", "2031-05-05 23:59:59"]);
    assert!(plain == later, "archive bytes depend on the clock");
}

/// An image on a base recipe, built from two checkouts at different paths.
#[test]
fn base_recipe_images_do_not_depend_on_the_checkout() {
    let app = "name = \"app\"\nbase = \"base/recipe.toml\"\n\n[[layers]]\nname = \"app\"\nfiles = [ { src = \"hello\", dest = \"/app/hello\" } ]\n";
    let make = |dir: &Path| {
        make_inputs(&dir.join("base"), NORMAL);
        fs::write(dir.join("app.toml"), app).unwrap();
        fs::write(dir.join("hello"), "#!/bin/sh\n").unwrap();
        let o = kiln_in(dir, &[])
            .args(["build", "app.toml", "--out", "out/app"])
            .output()
            .unwrap();
        assert_success(&o, "kiln build app.toml");
        Built {
            digest: last_digest(&String::from_utf8(o.stdout).unwrap()),
            out: dir.join("out/app"),
        }
    };
    let (a, b) = (Work::new(), Work::new());
    let one = make(a.path());
    let two = make(&b.path().join("another/checkout"));
    assert_same("base recipe, two checkouts", &one, &two);
}

/// `--json` reports whether each layer came from the store; that holds for
/// layers a base recipe contributes too.
#[test]
fn cache_reports_rebuilt_base_layers() {
    let w = Work::new();
    make_inputs(&w.path().join("base"), NORMAL);
    w.write(
        "app.toml",
        "name = \"app\"\nbase = \"base/base.toml\"\n\n[[layers]]\nname = \"top\"\ncontents = [ { dest = \"/top\", text = \"top\" } ]\n",
    );
    fs::rename(
        w.path().join("base/recipe.toml"),
        w.path().join("base/base.toml"),
    )
    .unwrap();
    let build = || {
        let o = kiln_in(w.path(), &[])
            .args(["build", "app.toml", "--out", "out/app", "--json"])
            .output()
            .unwrap();
        assert_success(&o, "kiln build app.toml --json");
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let layers: Vec<(String, bool, bool)> = v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["name"].as_str().unwrap_or("<null>").to_string(),
                    l["cached"].as_bool().unwrap(),
                    l["from_base"].as_bool().unwrap(),
                )
            })
            .collect();
        (v, layers)
    };
    // (name, cached, from_base) for the base's three layers and the app's one.
    let expect = |c: [bool; 4]| -> Vec<(String, bool, bool)> {
        [
            ("etc", true),
            ("app", true),
            ("static", true),
            ("top", false),
        ]
        .iter()
        .zip(c)
        .map(|((name, from_base), cached)| (name.to_string(), cached, *from_base))
        .collect()
    };
    let (_, first) = build();
    assert_eq!(
        first,
        expect([false, false, false, false]),
        "a fresh store has nothing cached, base layers included"
    );
    let (_, second) = build();
    assert_eq!(second, expect([true, true, true, true]), "nothing changed");
    fs::write(
        w.path().join("base/static/index.html"),
        "<h1>changed</h1>\n",
    )
    .unwrap();
    let (_, third) = build();
    assert_eq!(
        third,
        expect([true, true, false, true]),
        "only the base's `static` layer was rebuilt"
    );
}

#[test]
fn cpu_count_does_not_change_the_digest() {
    // zstd and gzip output must not depend on how many CPUs kiln may use.
    assert!(have("taskset"), "`taskset` (util-linux) is missing");
    let zstd = |dir: &Path| {
        make_inputs(dir, NORMAL);
        let recipe = fs::read_to_string(dir.join("recipe.toml")).unwrap();
        fs::write(
            dir.join("recipe.toml"),
            recipe.replace("compression = \"gzip\"", "compression = \"zstd\""),
        )
        .unwrap();
    };
    let (a, b) = (Work::new(), Work::new());
    zstd(a.path());
    zstd(b.path());
    let one = build(kiln_in(a.path(), &[]), a.path());
    let two = build(kiln_in(b.path(), &["taskset", "-c", "0"]), b.path());
    assert_same("all CPUs vs one", &one, &two);
    let media = manifests(&one.out)[0]["layers"][0]["mediaType"].clone();
    assert_eq!(media, "application/vnd.oci.image.layer.v1.tar+zstd");
}

/// gzip layers are compressed in 1 MiB chunks on every CPU kiln may use: a
/// layer of several chunks must come out the same on one CPU as on all.
#[test]
fn cpu_count_does_not_change_a_multi_chunk_gzip_layer() {
    assert!(have("taskset"), "`taskset` (util-linux) is missing");
    let data: Vec<u8> = (0..(3 * 1024 * 1024 + 777u32))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 & 0x7f)
        .collect();
    let digest_with = |prefix: &[&str]| {
        let w = support::Work::new();
        w.write("big.bin", &data);
        w.write(
            "recipe.toml",
            "name = \"big\"\n[[layers]]\nfiles = [ { src = \"big.bin\", dest = \"/big.bin\" } ]\n",
        );
        let mut cmd = if prefix.is_empty() {
            w.kiln()
        } else {
            let mut c = Command::new(prefix[0]);
            c.args(&prefix[1..])
                .arg(support::kiln_bin())
                .current_dir(w.path())
                .env("KILN_CACHE", w.cache())
                .env("KILN_NO_PROGRESS", "1")
                .env_remove("SOURCE_DATE_EPOCH");
            c
        };
        let out = cmd
            .args(["build", "recipe.toml", "--out", "out/big"])
            .output()
            .unwrap();
        support::assert_success(&out, "kiln build (big gzip layer)");
        support::last_digest(&String::from_utf8(out.stdout).unwrap())
    };
    assert_eq!(digest_with(&[]), digest_with(&["taskset", "-c", "0"]));
}
