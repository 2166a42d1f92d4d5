//! SLSA provenance v1 for a build: which recipe (path and digest), which
//! inputs (every host file, base image and lockfile, by digest), which git
//! commit the recipe's repository was at, and which builder. Start and finish
//! times are recorded only when `SOURCE_DATE_EPOCH` is unset, so that with it
//! set the statement is byte-identical across builds.

use serde_json::{json, Value};

use crate::digest::Digest;

/// The builder id kiln writes.
pub const BUILDER_ID: &str = "kiln";
/// The build type kiln writes.
pub const BUILD_TYPE: &str = "urn:kiln:build:v1";

/// The provenance predicate of the build `subject` describes.
pub fn predicate(subject: &super::Subject<'_>) -> Value {
    let mut deps: Vec<Value> = subject
        .materials
        .iter()
        .map(|m| json!({ "uri": m.uri, "digest": { "sha256": m.digest.hex() } }))
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
                    "path": subject.recipe.source.path.display().to_string(),
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
