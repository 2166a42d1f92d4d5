//! Hostile and malformed input that once blew up or slipped through: each
//! must end with exit 2, an error that names the file (and, in a recipe, the
//! line and column) and says what to do, in bounded time and memory, and
//! without printing raw bytes or a password.

use std::process::Command;

use crate::support::{kiln_bin, Work};

/// Runs `kiln ARGS…` in `w` under an address-space limit of 1 GiB (a 4 MB
/// path once took 5.7 GB) and returns (exit code, stderr).
fn fails_bounded(w: &Work, args: &[&str]) -> (i32, String) {
    let out = Command::new("prlimit")
        .arg("--as=1073741824")
        .arg(kiln_bin())
        .args(args)
        .current_dir(w.path())
        .env("KILN_CACHE", w.cache())
        .env("KILN_NO_PROGRESS", "1")
        .output()
        .expect("run prlimit (util-linux)");
    let stderr = String::from_utf8(out.stderr).expect("stderr is UTF-8");
    assert!(
        !stderr
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'),
        "stderr holds raw control bytes:\n{}",
        stderr.escape_debug()
    );
    (out.status.code().unwrap_or(-1), stderr)
}

/// The 1-based line and column of the first `needle` in `text`.
fn place(text: &str, needle: &str) -> String {
    let at = text.find(needle).unwrap_or_else(|| panic!("no `{needle}`"));
    let line = text[..at].matches('\n').count() + 1;
    let col = text[..at].rsplit('\n').next().unwrap().chars().count() + 1;
    format!("recipe.toml:{line}:{col}`")
}

/// Builds `recipe` and asserts exit 2 with an error at the first `needle`.
fn refused_at(recipe: &str, needle: &str) -> String {
    let w = Work::new();
    w.write("recipe.toml", recipe);
    w.write("hello", "hi\n");
    let (code, stderr) = fails_bounded(&w, &["build", "recipe.toml", "--out", "out/img"]);
    assert_eq!(code, 2, "bad input exits with 2; stderr:\n{stderr}");
    let at = place(recipe, needle);
    assert!(
        stderr.contains(&at),
        "stderr should point at `{at}`:\n{stderr}"
    );
    assert!(stderr.contains("hint:"), "no hint:\n{stderr}");
    assert!(
        !w.path().join("out").exists(),
        "a refused recipe left output"
    );
    stderr
}

#[test]
fn a_four_megabyte_dest_is_refused_quickly_and_shown_in_part() {
    let long = "/a".repeat(2 * 1024 * 1024);
    let recipe =
        format!("name = \"x\"\n[[layers]]\nfiles = [ {{ src = \"hello\", dest = \"{long}\" }} ]\n");
    let stderr = refused_at(&recipe, "\"/a/a");
    assert_output_snapshot!(&*stderr);
    assert!(
        stderr.len() < 2000,
        "the 4 MB line is echoed whole ({} bytes of stderr)",
        stderr.len()
    );
}

#[test]
fn a_path_component_over_255_bytes_is_refused() {
    let name = "n".repeat(256);
    let recipe = format!(
        "name = \"x\"\n[[layers]]\ncontents = [ {{ dest = \"/etc/{name}\", text = \"x\" }} ]\n"
    );
    let stderr = refused_at(&recipe, "\"/etc/n");
    assert_output_snapshot!(&*stderr);
    // 255 is still fine.
    let ok = format!(
        "name = \"x\"\n[[layers]]\ncontents = [ {{ dest = \"/etc/{}\", text = \"x\" }} ]\n",
        "n".repeat(255)
    );
    let w = Work::new();
    w.write("recipe.toml", ok);
    w.ok(&["build", "recipe.toml", "--out", "out/img"]);
}

#[test]
fn a_link_target_longer_than_path_max_is_refused() {
    let target = "t".repeat(4097);
    let recipe = format!(
        "name = \"x\"\n[[layers]]\nsymlinks = [ {{ path = \"/l\", target = \"{target}\" }} ]\n"
    );
    assert_output_snapshot!(refused_at(&recipe, "\"ttt"));
}

#[test]
fn nul_in_a_link_target_is_refused_not_truncated() {
    let recipe = "name = \"x\"\n[[layers]]\nsymlinks = [ { path = \"/l\", target = \"index\\u0000.html\" } ]\n";
    let stderr = refused_at(recipe, "\\u0000");
    assert_output_snapshot!(&*stderr);
}

#[test]
fn nul_in_name_env_label_or_key_is_refused() {
    let mut all = String::new();
    for (recipe, needle) in [
        ("name = \"a\\u0000b\"\n", "\\u0000"),
        (
            "name = \"x\"\n[config]\nenv = { A = \"x\\U00000000y\" }\n",
            "\\U00000000",
        ),
        (
            "name = \"x\"\n[config]\nlabels = { \"k\\u0000\" = \"v\" }\n",
            "\\u0000",
        ),
        (
            "name = \"x\"\n[config]\nentrypoint = [\"/bin/sh\", \"-c\\u0000\"]\n",
            "\\u0000",
        ),
    ] {
        all += &refused_at(recipe, needle);
    }
    assert_output_snapshot!(all);
}

#[test]
fn env_names_that_are_empty_or_hold_an_equals_sign_are_refused() {
    let mut all = String::new();
    for (recipe, needle) in [
        ("name = \"x\"\n[config]\nenv = { \"\" = \"y\" }\n", "\"\""),
        (
            "name = \"x\"\n[config]\nenv = { PATH = \"/bin\", \"A=B\" = \"x\" }\n",
            "\"A=B\"",
        ),
    ] {
        all += &refused_at(recipe, needle);
    }
    assert_output_snapshot!(all);
}

#[test]
fn invalid_utf8_names_the_line_and_the_byte() {
    let w = Work::new();
    let mut text = b"name = \"x\"\n# caf".to_vec();
    text.push(0xe9); // Latin-1 'é'
    text.extend_from_slice(b"\n");
    w.write("recipe.toml", &text);
    let (code, stderr) = fails_bounded(&w, &["build", "recipe.toml"]);
    assert_eq!(code, 2, "{stderr}");
    assert_output_snapshot!(&*stderr);
}

#[test]
fn inspect_of_what_is_not_an_image_says_what_it_is_not() {
    let w = Work::new();
    let mut noise = vec![0u8; 20_000];
    let mut x: u32 = 0x9e37_79b9;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    w.write("noise.bin", &noise);
    w.write("empty.tar", "");
    w.write("text.txt", "root:x:0:0:root:/root:/bin/sh\n".repeat(40));
    let mut gz = flate2_free_gzip_header();
    gz.extend_from_slice(&noise[..600]);
    w.write("layout.tar.gz", &gz);
    let mut all = String::new();
    for file in ["noise.bin", "empty.tar", "text.txt", "layout.tar.gz"] {
        let (code, stderr) = fails_bounded(&w, &["inspect", file]);
        assert_eq!(code, 2, "{file}: {stderr}");
        all += &stderr;
        assert!(
            !stderr.contains("kiln-archive-"),
            "names a temp dir: {stderr}"
        );
    }
    // A tar that holds something else is not a layout either.
    let status = Command::new("tar")
        .args(["cf", "other.tar", "text.txt"])
        .current_dir(w.path())
        .status()
        .unwrap();
    assert!(status.success());
    let (code, stderr) = fails_bounded(&w, &["inspect", "other.tar"]);
    assert_eq!(code, 2, "{stderr}");
    all += &stderr;
    assert_output_snapshot!(all);
}

/// The first bytes of a gzip member, enough to be recognised as one.
fn flate2_free_gzip_header() -> Vec<u8> {
    vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]
}

#[test]
fn a_password_in_a_reference_is_never_printed() {
    let w = Work::new();
    let secret = "pa55-w0rd-in-ref";
    let with = format!("user:{secret}@127.0.0.1:9/repo:tag");
    let https = format!(
        "https://user:{secret}@127.0.0.1:9/repo@sha256:{}",
        "0".repeat(64)
    );
    let mut all = String::new();
    for args in [
        vec!["pull", with.as_str(), "--out", "o"],
        vec!["copy", https.as_str(), "127.0.0.1:9/x:y"],
        vec!["copy", "127.0.0.1:9/x:y", with.as_str()],
        vec!["push", "o", with.as_str()],
    ] {
        let (code, stderr) = fails_bounded(&w, &args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            !stderr.contains(secret),
            "the password is printed:\n{stderr}"
        );
        all += &stderr;
    }
    let recipe = format!("name = \"x\"\nbase = \"{with}\"\n");
    let stderr = refused_at(&recipe, "\"user:");
    assert!(
        !stderr.contains(secret),
        "the password is printed:\n{stderr}"
    );
    all += &stderr;
    assert_output_snapshot!(all);
}
