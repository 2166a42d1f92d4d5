//! Only what is asked is built (issue 11, part 7): a single-platform recipe
//! on a two-platform base recipe builds and downloads only that platform of
//! the base, and its image is the one it was before (the base's per-platform
//! image is the one a standalone build of the base makes).

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::apt::{Pkg, Repo};
use crate::support::{assert_success, last_digest, Work};

const SUITE: &str = "kiln-test";

fn kiln(dir: &Path, cache: &Path, mirror: &str, args: &[&str]) -> String {
    let out = Command::new(crate::support::kiln_bin())
        .current_dir(dir)
        .env("KILN_CACHE", cache)
        .env("KILN_NO_PROGRESS", "1")
        .env("KILN_DEBIAN_MIRROR", mirror)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(args)
        .output()
        .unwrap();
    assert_success(&out, &format!("kiln {}", args.join(" ")));
    String::from_utf8(out.stdout).unwrap()
}

fn recipe(name: &str, platforms: &[&str], rest: &str) -> String {
    let platforms: Vec<String> = platforms.iter().map(|p| format!("{p:?}")).collect();
    format!(
        "name = \"{name}\"\nplatforms = [{}]\n{rest}\n[repositories.test]\nsuite = \"{SUITE}\"\n\
         components = [\"main\"]\nkeyring = \"keys/test.gpg\"\n\n",
        platforms.join(", ")
    )
}

fn blob(layout: &Path, digest: &str) -> Value {
    let hex = digest.strip_prefix("sha256:").unwrap();
    serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(hex)).unwrap()).unwrap()
}

#[test]
fn a_single_platform_recipe_builds_only_that_platform_of_its_base() {
    let repo = Repo::start(
        SUITE,
        &["main"],
        &[
            Pkg::new("tool", "1", "amd64").file("/usr/bin/tool", "tool amd64\n", 0o755),
            Pkg::new("tool", "1", "arm64").file("/usr/bin/tool", "tool arm64\n", 0o755),
            Pkg::new("app", "2", "amd64").file("/usr/bin/app", "app\n", 0o755),
        ],
    );
    let w = Work::new();
    let dir = w.path().join("project");
    fs::create_dir_all(dir.join("keys")).unwrap();
    fs::copy(&repo.keyring, dir.join("keys/test.gpg")).unwrap();
    fs::write(
        dir.join("base.toml"),
        recipe(
            "base",
            &["linux/amd64", "linux/arm64"],
            "\n[[layers]]\npackages = [\"tool\"]\n",
        ),
    )
    .unwrap();
    fs::write(
        dir.join("recipe.toml"),
        recipe(
            "app",
            &["linux/amd64"],
            "base = \"base.toml\"\n\n[[layers]]\npackages = [\"app\"]\n",
        ),
    )
    .unwrap();
    let lock_store = w.path().join("store-lock");
    kiln(&dir, &lock_store, &repo.url, &["lock", "base.toml"]);
    kiln(&dir, &lock_store, &repo.url, &["lock", "recipe.toml"]);

    // Cold: the child alone, in a store of its own.
    repo.clear_requests();
    let cold = w.path().join("store-cold");
    let child = last_digest(&kiln(
        &dir,
        &cold,
        &repo.url,
        &["build", "recipe.toml", "--provenance", "--out", "out/app"],
    ));
    let requests = repo.requests();
    println!("requests: {requests:#?}");
    assert!(
        requests.iter().any(|r| r.contains("tool_1_amd64.deb")),
        "the amd64 base package was not downloaded: {requests:?}"
    );
    assert!(
        !requests.iter().any(|r| r.contains("arm64")),
        "an amd64-only build downloaded arm64 files: {requests:?}"
    );
    let prov: Value =
        serde_json::from_slice(&fs::read(dir.join("out/app.provenance.json")).unwrap()).unwrap();
    let base_dep = prov["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["uri"] == "base:base.toml")
        .unwrap_or_else(|| panic!("no base among the inputs: {prov}"))
        .clone();
    let restricted_base = format!("sha256:{}", base_dep["digest"]["sha256"].as_str().unwrap());

    // The base built on its own, for both platforms: its amd64 image is
    // the one the child's build made, and the child's digest is the same
    // when built over it.
    let full = w.path().join("store-full");
    let base_index = last_digest(&kiln(
        &dir,
        &full,
        &repo.url,
        &["build", "base.toml", "--out", "out/base"],
    ));
    let index = blob(&dir.join("out/base"), &base_index);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 2, "{index}");
    let amd64 = manifests
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .unwrap();
    assert_eq!(
        amd64["digest"].as_str().unwrap(),
        restricted_base,
        "the base's amd64 image built for the child differs from the standalone build's"
    );
    let over_full = last_digest(&kiln(
        &dir,
        &full,
        &repo.url,
        &["build", "recipe.toml", "--out", "out/app2"],
    ));
    assert_eq!(child, over_full, "the child's digest");
}
