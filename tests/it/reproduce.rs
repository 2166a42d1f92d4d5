//! `kiln reproduce REF --key PUB`: an image built, pushed, signed and
//! attested (SLSA provenance) to a `docker-registry` on 127.0.0.1 is rebuilt
//! from the working tree in a clean store; a changed input is named, and the
//! diff of the rebuilt image is printed, with a non-zero exit.

use std::process::Output;

use serde_json::Value;

use crate::support::{self, Work};

const RECIPE: &str = r##"
name = "rep"
[config]
entrypoint = ["/app/run"]
[[layers]]
name = "app"
files = [ { src = "app.txt", dest = "/app/app.txt" } ]
contents = [ { dest = "/app/run", text = "#!/bin/sh\ncat /app/app.txt\n", mode = 0o755 } ]
"##;

/// `kiln reproduce ARGS` in `w` with a store of its own (`WORK/clean`).
fn reproduce(w: &Work, args: &[&str]) -> Output {
    w.kiln()
        .env("KILN_CACHE", w.path().join("clean"))
        .arg("reproduce")
        .args(args)
        .output()
        .unwrap()
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

#[test]
fn reproduces_a_signed_image_and_names_a_changed_input() {
    let reg = support::registry::registry(support::registry::Flavour::Plain);
    let w = Work::new();
    w.write("recipe.toml", RECIPE);
    w.write("app.txt", "app contents\n");
    w.ok(&["keygen", "--out", "ci"]);
    w.ok(&["keygen", "--out", "other"]);
    let target = format!("{}:v1", reg.repo("kiln/reproduce"));
    let out = w
        .kiln()
        .args(["build", "recipe.toml", "--out", "out/rep", "--provenance"])
        .args(["--push", &target, "--sign-key", "ci.key"])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    support::assert_success(&out, "kiln build --push --sign-key --provenance");
    let digest = support::last_digest(&String::from_utf8(out.stdout).unwrap());
    let pinned = format!("{}@{digest}", reg.repo("kiln/reproduce"));

    // From a clean store, the working tree as built: reproduced.
    let out = reproduce(&w, &[&pinned, "--key", "ci.pub"]);
    support::assert_success(&out, "kiln reproduce");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.trim_end().lines().last(),
        Some(&*format!("reproduced {digest}")),
        "{text}"
    );
    // By tag too, and as JSON.
    let out = reproduce(&w, &[&target, "--key", "ci.pub", "--json"]);
    support::assert_success(&out, "kiln reproduce --json");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["reproduced"], true);
    assert_eq!(r["digest"], digest.as_str());
    assert_eq!(r["materials"], serde_json::json!([]));

    // Another key: refused before anything is built.
    let out = reproduce(&w, &[&pinned, "--key", "other.pub"]);
    assert_exit(&out, 4);

    // A changed input: named with its path, the diff shows the file, exit 1.
    w.write("app.txt", "changed contents\n");
    let out = reproduce(&w, &[&pinned, "--key", "ci.pub"]);
    assert_exit(&out, 1);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("differs: file:app.txt"), "{text}");
    assert!(
        text.contains(&format!("not reproduced: {digest}")),
        "{text}"
    );
    assert!(text.contains("~ app/app.txt (content, size)"), "{text}");
    assert!(!text.contains("reproduced sha256"), "{text}");

    // A changed recipe: named too, and its config change shown.
    w.write("app.txt", "app contents\n");
    w.write(
        "recipe.toml",
        RECIPE.replace("[config]\n", "[config]\nuser = \"1000\"\n"),
    );
    let out = reproduce(&w, &[&pinned, "--key", "ci.pub"]);
    assert_exit(&out, 1);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("differs: recipe:recipe.toml"), "{text}");
    assert!(!text.contains("file:app.txt"), "{text}");
    assert!(
        text.contains("+ config User: (unset) -> \"1000\""),
        "{text}"
    );
}

/// In a git checkout, the recipe is found below the top of the checkout from
/// a subdirectory, and the provenance's commit is no material to match.
#[test]
fn reproduces_from_a_git_checkout_subdirectory() {
    let reg = support::registry::registry(support::registry::Flavour::Plain);
    let w = Work::new();
    w.write("images/app/recipe.toml", RECIPE);
    w.write("images/app/app.txt", "app contents\n");
    w.write("docs/README", "docs\n");
    let git = |args: &[&str]| {
        support::run(
            std::process::Command::new("git")
                .current_dir(w.path())
                .args([
                    "-c",
                    "user.name=t",
                    "-c",
                    "user.email=t@t",
                    "-c",
                    "commit.gpgsign=false",
                ])
                .args(args),
        )
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "app"]);
    w.ok(&["keygen", "--out", "ci"]);
    let target = format!("{}:git", reg.repo("kiln/reproduce-git"));
    let out = w
        .kiln()
        .args([
            "build",
            "images/app/recipe.toml",
            "--out",
            "out/rep",
            "--provenance",
        ])
        .args(["--push", &target, "--sign-key", "ci.key"])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    support::assert_success(&out, "kiln build --push --sign-key --provenance");
    let digest = support::last_digest(&String::from_utf8(out.stdout).unwrap());
    let key = w.path().join("ci.pub");
    let out = w
        .kiln()
        .current_dir(w.path().join("docs"))
        .env("KILN_CACHE", w.path().join("clean"))
        .args(["reproduce", &target, "--key", key.to_str().unwrap()])
        .output()
        .unwrap();
    support::assert_success(&out, "kiln reproduce from docs/");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.trim_end(), format!("reproduced {digest}"), "{text}");
}
