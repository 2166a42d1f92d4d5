//! Build script: tells the binary which commit it was built from, for
//! `kiln --version`. From a git checkout: `git rev-parse --short HEAD`, with
//! `-dirty` when tracked files differ from it; anywhere else (a crates
//! tarball, no git installed): `unknown`. It never fails the build.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Only the checkout this crate is the top of: a tarball unpacked inside
    // some other repository must not take that repository's commit.
    let top = git(&["rev-parse", "--show-toplevel"]);
    let ours = top
        .as_deref()
        .is_some_and(|t| Path::new(t).canonicalize().ok() == manifest.canonicalize().ok());
    let commit = match ours
        .then(|| git(&["rev-parse", "--short", "HEAD"]))
        .flatten()
    {
        Some(hash) if !hash.is_empty() => {
            // Tracked files that differ from HEAD (compared by content: a
            // touched but unchanged file is not dirty; the index is not written).
            let dirty = git(&["diff", "--quiet", "HEAD", "--"]).is_none();
            if dirty {
                format!("{hash}-dirty")
            } else {
                hash
            }
        }
        _ => "unknown".to_string(),
    };
    println!("cargo:rustc-env=KILN_COMMIT={commit}");
    // Again when HEAD moves (a commit, a checkout) or the index changes.
    if let Some(dir) = ours
        .then(|| git(&["rev-parse", "--absolute-git-dir"]))
        .flatten()
    {
        let dir = Path::new(&dir);
        println!("cargo:rerun-if-changed={}", dir.join("HEAD").display());
        println!("cargo:rerun-if-changed={}", dir.join("index").display());
        if let Some(head) = std::fs::read_to_string(dir.join("HEAD"))
            .ok()
            .and_then(|h| h.strip_prefix("ref: ").map(|r| r.trim().to_string()))
        {
            // A worktree's branch ref lives in the common git directory.
            let common = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| dir.to_path_buf());
            println!("cargo:rerun-if-changed={}", common.join(&head).display());
        }
    }
    // And when the sources change (they rebuild the binary anyway), so
    // `-dirty` follows edits.
    for path in ["build.rs", "src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={path}");
    }
}
