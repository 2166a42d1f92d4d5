//! SLSA provenance v1 for a build: which recipe (path and digest), which
//! inputs (every host file, base image and lockfile, by digest), which git
//! commit the recipe's repository was at, and which builder. Start and finish
//! times are recorded only when `SOURCE_DATE_EPOCH` is unset, so that with it
//! set the statement is byte-identical across builds.
//!
//! No host path is written: paths are relative to the root of the recipe's
//! git repository (the recipe's own directory when it is in none), so two
//! checkouts at different places give the same statement; a path outside
//! that root (a layout elsewhere on the host) is named by its last component
//! only, its digest saying what it is. Packages are named by pool path and
//! SHA-256 (`deb:pool/…`), never by where the store keeps them.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::digest::Digest;

/// The builder id kiln writes.
pub const BUILDER_ID: &str = "kiln";
/// The build type kiln writes.
pub const BUILD_TYPE: &str = "urn:kiln:build:v1";

/// The provenance predicate of the build `subject` describes.
pub fn predicate(subject: &super::Subject<'_>) -> Value {
    let root = root(&subject.recipe.dir);
    let mut deps: Vec<Value> = subject
        .materials
        .iter()
        .map(|m| json!({ "uri": relative_uri(&root, &m.uri), "digest": { "sha256": m.digest.hex() } }))
        .collect();
    if let Some(commit) = git_commit(&subject.recipe.dir) {
        deps.push(json!({ "uri": "git+recipe-repository", "digest": { "gitCommit": commit } }));
    }
    let mut metadata = serde_json::Map::new();
    if let Some((start, end)) = &subject.times {
        metadata.insert("startedOn".into(), json!(start));
        metadata.insert("finishedOn".into(), json!(end));
    }
    json!({
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "recipe": {
                    "path": relative(&root, &subject.recipe.source.path),
                    "digest": { "sha256": Digest::of(subject.recipe.source.text.as_bytes()).hex() },
                },
                "platforms": subject.manifests.iter().map(|m| m.platform.clone()).collect::<Vec<_>>(),
            },
            "internalParameters": {
                "sourceDateEpoch": subject.source_date_epoch,
            },
            "resolvedDependencies": deps,
        },
        "runDetails": {
            "builder": { "id": BUILDER_ID, "version": { "kiln": env!("CARGO_PKG_VERSION") } },
            "metadata": metadata,
        },
    })
}

/// What paths are written relative to: the top of the git repository that
/// holds `dir`, else `dir` itself (canonical either way).
pub fn root(dir: &Path) -> PathBuf {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let top = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--show-toplevel"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| PathBuf::from(s.trim_end_matches('\n')));
    let root = top.unwrap_or_else(|| dir.to_path_buf());
    root.canonicalize().unwrap_or(root)
}

/// `path` relative to `root` (`/`-separated); its last component when it is
/// not below `root`.
fn relative(root: &Path, path: &Path) -> String {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let abs = abs.canonicalize().unwrap_or(abs);
    match abs.strip_prefix(root) {
        Ok(rel) => rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/"),
        Err(_) => abs
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

/// A material's uri with its host path (`file:`, `recipe:`, `lock:`, `oci:`,
/// `base:`) made relative to `root`.
pub fn relative_uri(root: &Path, uri: &str) -> String {
    for scheme in ["file:", "recipe:", "lock:", "oci:", "base:"] {
        if let Some(path) = uri.strip_prefix(scheme) {
            return format!("{scheme}{}", relative(root, Path::new(path)));
        }
    }
    uri.to_string()
}

/// The commit the recipe's git repository is at, if it is in one.
fn git_commit(dir: &std::path::Path) -> Option<String> {
    let dir = if dir.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        dir
    };
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && commit.len() == 40).then_some(commit)
}
