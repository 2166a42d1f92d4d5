//! Bad input, as a user meets it: every mistake in a recipe exits with 2 and
//! says `error: `FILE:LINE:COL`: …`, quotes the line, and gives a `hint:`.
//! The expected line and column are computed here from the recipe text, so
//! each test pins the exact place kiln must point at.
//!
//! Also the "nothing half-written" rule: a failed build leaves the previous
//! output as it was (or no output at all) and no temporary files beside it.

use crate::support;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{assert_success, kiln_bin, last_digest, run, Work};
use sha2::Digest as _;

/// The 1-based (line, column) of `token` on the first line of `text` that
/// contains `line_has`; the column counts characters.
fn pos(text: &str, line_has: &str, token: &str) -> (usize, usize) {
    for (i, line) in text.lines().enumerate() {
        if line.contains(line_has) {
            let at = line
                .find(token)
                .unwrap_or_else(|| panic!("`{token}` is not on line {line:?}"));
            return (i + 1, line[..at].chars().count() + 1);
        }
    }
    panic!("no line contains `{line_has}`");
}

/// Asserts that a failed `kiln` run reported bad input at `file:line:col`.
fn assert_points_at(code: i32, stderr: &str, file: &str, (line, col): (usize, usize)) {
    assert_eq!(code, 2, "bad input exits with 2; stderr:\n{stderr}");
    assert!(
        stderr.contains("error:"),
        "no `error:` in stderr:\n{stderr}"
    );
    let place = format!("{file}:{line}:{col}`");
    assert!(
        stderr.contains(&place),
        "stderr should point at `{place}`:\n{stderr}"
    );
    assert!(stderr.contains("hint:"), "no `hint:` in stderr:\n{stderr}");
}

/// Writes `recipe.toml` (and a `hello` input), builds it, and asserts the
/// error points at `token` on the line containing `line_has`.
fn recipe_error(recipe: &str, line_has: &str, token: &str) -> String {
    let w = Work::new();
    w.write("recipe.toml", recipe);
    w.write("hello", "#!/bin/sh\necho hello\n");
    let (code, stderr) = w.fails(&["build", "recipe.toml", "--out", "out/img"]);
    assert_points_at(code, &stderr, "recipe.toml", pos(recipe, line_has, token));
    assert!(
        !w.path().join("out").exists(),
        "a recipe error left output behind"
    );
    stderr
}

/// Hands the workspace to `nobody` (65534) and returns a `kiln` command run
/// as that user in it: tests run as root, who can read anything. The binary
/// is copied in, since the target directory may not be readable by `nobody`.
/// Call it after writing the inputs; change modes afterwards.
fn as_nobody(w: &Work) -> impl Fn() -> Command + '_ {
    assert!(
        support::have("setpriv"),
        "`setpriv` (util-linux) is missing"
    );
    let bin = w.path().join("kiln");
    fs::copy(kiln_bin(), &bin).unwrap();
    run(Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(w.path()));
    fs::set_permissions(w.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    move || {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .current_dir(w.path())
            .env("KILN_CACHE", w.cache())
            .env("HOME", w.path())
            .env("KILN_NO_PROGRESS", "1")
            .env_remove("SOURCE_DATE_EPOCH");
        c
    }
}

#[test]
fn unknown_top_level_key() {
    let recipe = "name = \"bad\"\ncolour = \"red\"\n\n[[layers]]\ncontents = [ { dest = \"/a\", text = \"a\" } ]\n";
    let stderr = recipe_error(recipe, "colour", "colour");
    assert_output_snapshot!(&*stderr);
}

#[test]
fn unknown_key_in_a_files_entry() {
    let recipe = r#"name = "bad"

[[layers]]
name = "app"
files = [
  { src = "hello", dest = "/app/hello" },
  { src = "hello", dest = "/app/hello2", owner = "root" },
]
"#;
    let stderr = recipe_error(recipe, "owner", "owner");
    assert_output_snapshot!(&*stderr);
}

#[test]
fn wrong_type() {
    let recipe = "# a comment first\nname = 5\n";
    assert_output_snapshot!(recipe_error(recipe, "name = 5", "5"));
}

#[test]
fn wrong_type_inside_a_layer() {
    let recipe = r#"name = "bad"
[[layers]]
dirs = [ { path = "/data", mode = "rwx" } ]
"#;
    assert_output_snapshot!(recipe_error(recipe, "rwx", "\"rwx\""));
}

#[test]
fn missing_src() {
    let recipe = r#"name = "bad"

[[layers]]
files = [
  { src = "hello", dest = "/app/hello" },
  { dest = "/app/other" },
]
"#;
    let stderr = recipe_error(recipe, "/app/other", "{");
    assert_output_snapshot!(&*stderr);
}

#[test]
fn dest_not_absolute() {
    let recipe = r#"name = "bad"
[[layers]]
files = [ { src = "hello", dest = "app/hello" } ]
"#;
    assert_output_snapshot!(recipe_error(recipe, "app/hello", "\"app/hello\""));
}

#[test]
fn dest_escaping_with_dot_dot() {
    let recipe = r#"name = "bad"
[[layers]]
contents = [ { dest = "/etc/ok", text = "ok" } ]
files = [ { src = "hello", dest = "/app/../../etc/shadow" } ]
"#;
    assert_output_snapshot!(recipe_error(recipe, "shadow", "\"/app/../../etc/shadow\""));
}

#[test]
fn same_path_twice_in_one_layer() {
    let recipe = r#"name = "bad"

[[layers]]
name = "etc"
contents = [
  { dest = "/etc/motd", text = "one" },
  { dest = "/etc/issue", text = "two" },
  { dest = "/etc//motd", text = "three" },
]
"#;
    let stderr = recipe_error(recipe, "three", "{");
    assert_output_snapshot!(&*stderr);
}

#[test]
fn same_path_in_two_layers_is_fine() {
    let w = Work::new();
    w.write(
        "recipe.toml",
        r#"name = "ok"
[[layers]]
contents = [ { dest = "/etc/motd", text = "one" } ]
[[layers]]
contents = [ { dest = "/etc/motd", text = "two" } ]
"#,
    );
    w.build("recipe.toml", "out/img");
}

#[test]
fn symlink_loop_in_a_tree() {
    let w = Work::new();
    let recipe = r#"name = "bad"

[[layers]]
name = "tree"
trees = [ { src = "loop", dest = "/srv" } ]
"#;
    w.write("recipe.toml", recipe);
    w.write("loop/file.txt", "x");
    fs::create_dir_all(w.path().join("loop")).unwrap();
    std::os::unix::fs::symlink("b", w.path().join("loop/a")).unwrap();
    std::os::unix::fs::symlink("a", w.path().join("loop/b")).unwrap();
    let (code, stderr) = w.fails(&["build", "recipe.toml", "--out", "out/img"]);
    assert_points_at(
        code,
        &stderr,
        "recipe.toml",
        pos(recipe, "loop", "\"loop\""),
    );
    assert_output_snapshot!(&*stderr);
}

#[test]
fn unreadable_file() {
    let w = Work::new();
    let recipe = r#"name = "bad"

[[layers]]
files = [
  { src = "hello", dest = "/app/hello" },
  { src = "secret", dest = "/app/secret" },
]
"#;
    w.write("recipe.toml", recipe);
    w.write("hello", "hello\n");
    let secret = w.write("secret", "do not read\n");
    let kiln = as_nobody(&w);
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    let out = kiln()
        .args(["build", "recipe.toml", "--out", "out/img"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "reading a mode-000 file as nobody should fail"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_points_at(
        out.status.code().unwrap_or(-1),
        &stderr,
        "recipe.toml",
        pos(recipe, "secret", "\"secret\""),
    );
    assert_output_snapshot!(&*stderr);
    assert!(!w.path().join("out/img").exists());
}

#[test]
fn src_that_is_a_dangling_symlink() {
    let w = Work::new();
    let recipe = r#"name = "bad"
[[layers]]
files = [ { src = "gone", dest = "/app/gone" } ]
"#;
    w.write("recipe.toml", recipe);
    std::os::unix::fs::symlink("nowhere", w.path().join("gone")).unwrap();
    let (code, stderr) = w.fails(&["build", "recipe.toml", "--out", "out/img"]);
    assert_points_at(
        code,
        &stderr,
        "recipe.toml",
        pos(recipe, "gone", "\"gone\""),
    );
    assert_output_snapshot!(&*stderr);
}

#[test]
fn base_recipe_that_does_not_exist() {
    let recipe = r#"name = "bad"
# the base is built first
base = "base-images/nope.toml"
"#;
    let stderr = recipe_error(recipe, "nope", "\"base-images/nope.toml\"");
    assert_output_snapshot!(&*stderr);
}

#[test]
fn base_cycle() {
    let w = Work::new();
    let first = "name = \"first\"\nbase = \"second.toml\"\n";
    let second = "name = \"second\"\n\n# back to the start\nbase = \"first.toml\"\n";
    w.write("first.toml", first);
    w.write("second.toml", second);
    let (code, stderr) = w.fails(&["build", "first.toml", "--out", "out/img"]);
    // Either end of the loop is a fair place to point at: the `base` that
    // closes it (in second.toml) or the one that starts it (in first.toml).
    let (l1, c1) = pos(first, "base", "\"second.toml\"");
    let (l2, c2) = pos(second, "base", "\"first.toml\"");
    let at_first = format!("first.toml:{l1}:{c1}`");
    let at_second = format!("second.toml:{l2}:{c2}`");
    assert_eq!(code, 2, "stderr:\n{stderr}");
    assert!(
        stderr.contains(&at_first) || stderr.contains(&at_second),
        "stderr should point at `{at_second}` (or `{at_first}`):\n{stderr}"
    );
    assert_output_snapshot!(&*stderr);
    assert!(!w.path().join("out").exists());
}

#[test]
fn base_that_is_itself() {
    let w = Work::new();
    let recipe = "name = \"selfish\"\nbase = \"recipe.toml\"\n";
    w.write("recipe.toml", recipe);
    let (code, stderr) = w.fails(&["build", "recipe.toml", "--out", "out/img"]);
    assert_points_at(
        code,
        &stderr,
        "recipe.toml",
        pos(recipe, "base", "\"recipe.toml\""),
    );
    assert_output_snapshot!(&*stderr);
}

#[test]
fn invalid_platform() {
    let recipe = r#"name = "bad"
platforms = ["linux/amd64", "linux/x86_64"]
"#;
    let stderr = recipe_error(recipe, "platforms", "\"linux/x86_64\"");
    assert_output_snapshot!(&*stderr);
}

#[test]
fn missing_recipe_file() {
    let w = Work::new();
    let (code, stderr) = w.fails(&["build", "nope.toml"]);
    assert_eq!(code, 2, "stderr:\n{stderr}");
    assert_output_snapshot!(&*stderr);
    assert!(!w.path().join("out").exists());
}

// ---------------------------------------------------------------------------
// Nothing half-written.
// ---------------------------------------------------------------------------

/// A good recipe with a layer big enough to take a moment to write.
const GOOD: &str = r#"name = "img"
[[layers]]
name = "big"
files = [ { src = "big.bin", dest = "/big.bin" } ]
[[layers]]
name = "etc"
contents = [ { dest = "/etc/motd", text = "hello" } ]
"#;

/// The same image with one more layer whose input is missing: it fails
/// after the first layers have been built.
const FAILS_LATE: &str = r#"name = "img"
[[layers]]
name = "big"
files = [ { src = "big2.bin", dest = "/big.bin" } ]
[[layers]]
name = "etc"
contents = [ { dest = "/etc/motd", text = "changed" } ]
[[layers]]
name = "broken"
files = [ { src = "missing.bin", dest = "/missing.bin" } ]
"#;

fn workspace_with_inputs() -> Work {
    let w = Work::new();
    w.write("good.toml", GOOD);
    w.write("bad.toml", FAILS_LATE);
    let big: Vec<u8> = (0..4_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    w.write("big.bin", &big);
    w.write("big2.bin", &big[..3_000_000]);
    w
}

/// Every path under `dir` with its bytes (or link target); directories as empty.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut map = BTreeMap::new();
    if !dir.exists() {
        return map;
    }
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.unwrap();
        let ft = e.file_type();
        let content = if ft.is_symlink() {
            fs::read_link(e.path())
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if ft.is_file() {
            fs::read(e.path()).unwrap()
        } else {
            Vec::new()
        };
        map.insert(e.path().strip_prefix(dir).unwrap().to_path_buf(), content);
    }
    map
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Checks an OCI layout is complete: `index.json` names the manifest with
/// `digest`, and every blob reachable from it exists and hashes to its name.
fn assert_complete_layout(out: &Path, digest: &str) {
    fn blob(out: &Path, d: &str) -> Vec<u8> {
        let hex = d.strip_prefix("sha256:").expect("sha256 digest");
        let bytes = fs::read(out.join("blobs/sha256").join(hex))
            .unwrap_or_else(|e| panic!("blob {d} missing from `{}`: {e}", out.display()));
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            hex,
            "blob {d} is corrupt"
        );
        bytes
    }
    fn walk(out: &Path, doc: &serde_json::Value) {
        for key in ["manifests", "layers"] {
            for d in doc[key].as_array().into_iter().flatten() {
                let bytes = blob(out, d["digest"].as_str().unwrap());
                if key == "manifests" {
                    walk(out, &serde_json::from_slice(&bytes).unwrap());
                }
            }
        }
        if let Some(c) = doc["config"]["digest"].as_str() {
            blob(out, c);
        }
    }
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("index.json")).unwrap()).unwrap();
    let listed: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&digest),
        "index.json {index} does not name {digest}"
    );
    assert!(out.join("oci-layout").is_file(), "no `oci-layout` file");
    walk(out, &index);
}

#[test]
fn failed_build_leaves_the_previous_layout() {
    let w = workspace_with_inputs();
    let digest = w.build("good.toml", "out/img");
    let index_before = fs::read(w.path().join("out/img/index.json")).unwrap();
    let out_before = snapshot(&w.path().join("out"));
    let root_before = names(w.path());

    let (code, stderr) = w.fails(&["build", "bad.toml", "--out", "out/img"]);
    assert_eq!(code, 2, "{stderr}");
    assert_output_snapshot!(&*stderr);

    assert_eq!(
        fs::read(w.path().join("out/img/index.json")).unwrap(),
        index_before,
        "index.json changed"
    );
    let out_after = snapshot(&w.path().join("out"));
    let added: Vec<_> = out_after
        .keys()
        .filter(|k| !out_before.contains_key(*k))
        .collect();
    let removed: Vec<_> = out_before
        .keys()
        .filter(|k| !out_after.contains_key(*k))
        .collect();
    assert!(
        out_before == out_after,
        "a failed build touched `out/`: added {added:?}, removed {removed:?}"
    );
    assert_eq!(names(w.path()), root_before, "files left beside the output");
    assert_complete_layout(&w.path().join("out/img"), &digest);
}

#[test]
fn failed_build_leaves_the_previous_archive() {
    let w = workspace_with_inputs();
    w.ok(&[
        "build",
        "good.toml",
        "--format",
        "oci-archive",
        "--out",
        "out/img.tar",
    ]);
    let before = snapshot(&w.path().join("out"));
    assert!(
        before.contains_key(Path::new("img.tar")),
        "{:?}",
        before.keys()
    );
    let (code, stderr) = w.fails(&[
        "build",
        "bad.toml",
        "--format",
        "oci-archive",
        "--out",
        "out/img.tar",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        before == snapshot(&w.path().join("out")),
        "a failed build touched `out/`: {:?}",
        names(&w.path().join("out"))
    );
}

#[test]
fn failed_first_build_leaves_no_output() {
    let w = workspace_with_inputs();
    let root_before = names(w.path());
    let (code, _) = w.fails(&["build", "bad.toml", "--out", "out/img"]);
    assert_eq!(code, 2);
    assert!(!w.path().join("out/img").exists(), "half-written `out/img`");
    assert_eq!(
        names(&w.path().join("out")),
        Vec::<String>::new(),
        "files left in `out/`"
    );
    let root_after: Vec<String> = names(w.path())
        .into_iter()
        .filter(|n| n != "cache" && n != "out")
        .collect();
    let root_before: Vec<String> = root_before.into_iter().filter(|n| n != "cache").collect();
    assert_eq!(
        root_after, root_before,
        "files left in the working directory"
    );

    // The default output (`out/NAME`) is not created either.
    let (code, _) = w.fails(&["build", "bad.toml"]);
    assert_eq!(code, 2);
    assert!(
        !w.path().join("out/img").exists(),
        "half-written default `out/img`"
    );

    // Nor an archive.
    let (code, _) = w.fails(&["build", "bad.toml", "--format", "oci-archive"]);
    assert_eq!(code, 2);
    assert_eq!(names(&w.path().join("out")), Vec::<String>::new());
}

/// A build that fails while exporting (the output's directory cannot be
/// written) must leave either the old layout or the new one, complete, and
/// nothing else beside it.
#[test]
fn build_that_cannot_write_its_output_leaves_a_complete_layout() {
    let w = workspace_with_inputs();
    let good_changed = GOOD.replace("text = \"hello\"", "text = \"changed\"");
    w.write("good2.toml", &good_changed);
    let kiln = as_nobody(&w);
    let nobody = |recipe: &str| {
        kiln()
            .args(["build", recipe, "--out", "out/img"])
            .output()
            .unwrap()
    };
    let first = nobody("good.toml");
    assert_success(&first, "first build as nobody");
    let old = last_digest(&String::from_utf8_lossy(&first.stdout));
    let before = snapshot(&w.path().join("out"));

    fs::set_permissions(w.path().join("out"), fs::Permissions::from_mode(0o555)).unwrap();
    let second = nobody("good2.toml");
    fs::set_permissions(w.path().join("out"), fs::Permissions::from_mode(0o755)).unwrap();

    assert_eq!(
        names(&w.path().join("out")),
        ["img"],
        "temporary files beside the output"
    );
    eprintln!(
        "export into a read-only directory: {}",
        if second.status.success() {
            "succeeded"
        } else {
            "failed"
        }
    );
    if second.status.success() {
        let new = last_digest(&String::from_utf8_lossy(&second.stdout));
        assert_ne!(new, old);
        assert_complete_layout(&w.path().join("out/img"), &new);
    } else {
        assert!(
            before == snapshot(&w.path().join("out")),
            "a failed export changed `out/img`; stderr:\n{}",
            String::from_utf8_lossy(&second.stderr)
        );
        assert_complete_layout(&w.path().join("out/img"), &old);
    }
}

#[test]
fn out_that_is_a_directory_of_something_else_is_refused() {
    let w = Work::new();
    w.write("recipe.toml", GOOD);
    w.write("big.bin", "small really\n");
    w.write("precious/notes.txt", "do not delete\n");
    w.write("precious/sub/data.csv", "a,b\n1,2\n");
    let before = snapshot(&w.path().join("precious"));
    let (code, stderr) = w.fails(&["build", "recipe.toml", "--out", "precious"]);
    assert_eq!(code, 2, "{stderr}");
    assert_output_snapshot!(&*stderr);
    assert!(
        before == snapshot(&w.path().join("precious")),
        "`precious/` was modified"
    );
    assert_eq!(
        names(w.path())
            .into_iter()
            .filter(|n| n != "cache")
            .collect::<Vec<_>>(),
        ["big.bin", "precious", "recipe.toml"],
        "files left in the working directory"
    );
}

#[test]
fn error_in_a_base_recipe_names_the_base_file() {
    let w = Work::new();
    let base =
        "name = \"base\"\n\n[[layers]]\ncontents = [ { dest = \"etc/motd\", text = \"hi\" } ]\n";
    w.write(
        "images/app.toml",
        "name = \"app\"\nbase = \"../base/base.toml\"\n",
    );
    w.write("base/base.toml", base);
    let (code, stderr) = w.fails(&["build", "images/app.toml", "--out", "out/img"]);
    let (line, col) = pos(base, "etc/motd", "\"etc/motd\"");
    assert_points_at(code, &stderr, "base.toml", (line, col));
    assert_output_snapshot!(&*stderr);
    assert!(
        stderr.contains(&format!("base/base.toml:{line}:{col}`")),
        "the base is named by its path:\n{stderr}"
    );
}

#[test]
fn invalid_source_date_epoch() {
    let w = Work::new();
    w.write(
        "recipe.toml",
        "name = \"t\"\n[[layers]]\ncontents = [ { dest = \"/a\", text = \"a\" } ]\n",
    );
    let mut all = String::new();
    for bad in ["yesterday", "-5", "1.5"] {
        let out = w
            .kiln()
            .env("SOURCE_DATE_EPOCH", bad)
            .args(["build", "recipe.toml", "--out", "out/img"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "SOURCE_DATE_EPOCH={bad}:\n{stderr}"
        );
        all += &format!("SOURCE_DATE_EPOCH={bad}\n{stderr}\n");
        assert!(!w.path().join("out").exists());
    }
    assert_output_snapshot!(all);
}

#[test]
fn out_that_is_a_file_is_refused() {
    let w = Work::new();
    w.write(
        "recipe.toml",
        "name = \"t\"\n[[layers]]\ncontents = [ { dest = \"/a\", text = \"a\" } ]\n",
    );
    w.write("notes.txt", "precious\n");
    let (code, stderr) = w.fails(&["build", "recipe.toml", "--out", "notes.txt"]);
    assert_eq!(code, 2, "{stderr}");
    assert_output_snapshot!(&*stderr);
    assert_eq!(
        fs::read_to_string(w.path().join("notes.txt")).unwrap(),
        "precious\n"
    );
}

#[test]
fn archive_out_that_is_a_directory_is_refused() {
    let w = Work::new();
    w.write(
        "recipe.toml",
        "name = \"t\"\n[[layers]]\ncontents = [ { dest = \"/a\", text = \"a\" } ]\n",
    );
    w.write("keep/file", "precious\n");
    let before = snapshot(&w.path().join("keep"));
    let (code, stderr) = w.fails(&[
        "build",
        "recipe.toml",
        "--format",
        "oci-archive",
        "--out",
        "keep",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert_output_snapshot!(&*stderr);
    assert!(
        before == snapshot(&w.path().join("keep")),
        "`keep/` was modified"
    );
}

#[test]
fn fifo_in_a_tree() {
    let w = Work::new();
    let recipe = "name = \"bad\"\n\n[[layers]]\ntrees = [ { src = \"t\", dest = \"/t\" } ]\n";
    w.write("recipe.toml", recipe);
    w.write("t/ok", "ok\n");
    run(Command::new("mkfifo").arg(w.path().join("t/pipe")));
    let (code, stderr) = w.fails(&["build", "recipe.toml", "--out", "out/img"]);
    assert_points_at(code, &stderr, "recipe.toml", pos(recipe, "trees", "\"t\""));
    assert_output_snapshot!(&*stderr);
}

#[test]
fn symlink_loop_that_is_excluded_is_fine() {
    let w = Work::new();
    w.write(
        "recipe.toml",
        "name = \"ok\"\n[[layers]]\ntrees = [ { src = \"loop\", dest = \"/srv\", exclude = [\"a\", \"b\"] } ]\n",
    );
    w.write("loop/file.txt", "x");
    std::os::unix::fs::symlink("b", w.path().join("loop/a")).unwrap();
    std::os::unix::fs::symlink("a", w.path().join("loop/b")).unwrap();
    w.build("recipe.toml", "out/img");
}

#[test]
fn unreadable_directory_in_a_tree() {
    let w = Work::new();
    let recipe = "name = \"bad\"\n\n[[layers]]\ntrees = [ { src = \"t\", dest = \"/t\" } ]\n";
    w.write("recipe.toml", recipe);
    w.write("t/ok", "ok\n");
    w.write("t/secret/f", "x\n");
    let kiln = as_nobody(&w);
    fs::set_permissions(w.path().join("t/secret"), fs::Permissions::from_mode(0o000)).unwrap();
    let out = kiln()
        .args(["build", "recipe.toml", "--out", "out/img"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_points_at(
        out.status.code().unwrap_or(-1),
        &stderr,
        "recipe.toml",
        pos(recipe, "trees", "\"t\""),
    );
    assert_output_snapshot!(&*stderr);
}
