//! kiln's archives in Debian's docker (`docker.io`, dockerd 20.10, with the
//! classic image store, which reads `manifest.json`), against a dockerd the
//! test starts on a unix socket of its own (`support::runtimes`): `docker
//! load` takes the OCI archive and the docker-archive as they are, names the
//! image as the recipe and `--tag` say, and `docker run` runs it; skopeo
//! reads the docker-archive; `kiln build --load` puts the image in docker
//! and says so, or names docker when it cannot.

use std::process::Command;

use crate::support::runtimes::{archive_config_digest, busybox_recipe, dockerd};
use crate::support::*;

fn docker_ok(args: &[&str]) -> String {
    let d = dockerd();
    let out = d.docker().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}\n{}\ndockerd's log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
        d.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `docker image inspect NAME`: (RepoTags, Id).
fn inspect(name: &str) -> (Vec<String>, String) {
    let v: serde_json::Value =
        serde_json::from_str(&docker_ok(&["image", "inspect", name])).unwrap();
    let mut tags: Vec<String> = v[0]["RepoTags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    tags.sort();
    (tags, v[0]["Id"].as_str().unwrap().to_string())
}

#[test]
fn docker_loads_the_oci_archive_by_its_names_and_runs_it() {
    let w = Work::new();
    let marker = unique_marker("docker-oci");
    let recipe = busybox_recipe(
        &w,
        "kiln-load-docker",
        &["v1", "registry.example/kiln/load-docker:1.4"],
        &marker,
    );
    w.ok(&[
        "build",
        &recipe,
        "--format",
        "oci-archive",
        "--out",
        "app.tar",
    ]);
    let archive = w.path().join("app.tar");
    let loaded = docker_ok(&["load", "--input", archive.to_str().unwrap()]);
    assert!(
        loaded.contains("Loaded image: kiln-load-docker:v1")
            && loaded.contains("Loaded image: registry.example/kiln/load-docker:1.4"),
        "{loaded}"
    );
    let (tags, id) = inspect("kiln-load-docker:v1");
    assert_eq!(
        tags,
        [
            "kiln-load-docker:v1",
            "registry.example/kiln/load-docker:1.4"
        ]
    );
    // The image ID docker computes is the digest of kiln's config.
    assert_eq!(id, archive_config_digest(&archive));
    let out = docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "registry.example/kiln/load-docker:1.4",
    ]);
    assert_eq!(out.trim(), marker);
}

#[test]
fn docker_loads_the_docker_archive_and_skopeo_reads_it() {
    let w = Work::new();
    let marker = unique_marker("docker-archive");
    let recipe = busybox_recipe(&w, "kiln-load-docker-archive", &["v2"], &marker);
    w.ok(&[
        "build",
        &recipe,
        "--format",
        "oci-archive",
        "--out",
        "oci.tar",
    ]);
    let config = archive_config_digest(&w.path().join("oci.tar"));
    w.ok(&[
        "build",
        &recipe,
        "--format",
        "docker-archive",
        "--out",
        "docker.tar",
        "--tag",
        "app-from-kiln:dev",
    ]);
    let archive = w.path().join("docker.tar");
    // What `docker save` writes: manifest.json, the config, uncompressed
    // layer tars, `repositories`.
    let listing = run(Command::new("tar").arg("-tf").arg(&archive));
    let hex = config.trim_start_matches("sha256:");
    for member in [
        "manifest.json".to_string(),
        "repositories".into(),
        format!("{hex}.json"),
    ] {
        assert!(
            listing.lines().any(|l| l == member),
            "{member} in\n{listing}"
        );
    }
    assert!(
        listing.lines().any(|l| l.ends_with("/layer.tar")),
        "{listing}"
    );

    // skopeo's docker-archive reader: the config kiln wrote, its layers
    // (uncompressed, so named by diff_id).
    let config_text = run(Command::new("skopeo")
        .args(["--insecure-policy", "inspect", "--config"])
        .arg(format!("docker-archive:{}", archive.display())));
    let skopeo_config: serde_json::Value = serde_json::from_str(&config_text).unwrap();
    assert_eq!(
        skopeo_config["config"]["Cmd"],
        serde_json::json!([marker.clone()])
    );
    let raw = run(Command::new("skopeo")
        .args(["--insecure-policy", "inspect"])
        .arg(format!("docker-archive:{}", archive.display())));
    let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(raw["Layers"], skopeo_config["rootfs"]["diff_ids"]);
    // skopeo finds the image by its name (`docker-archive:PATH:NAME`).
    run(Command::new("skopeo")
        .args(["--insecure-policy", "inspect"])
        .arg(format!(
            "docker-archive:{}:app-from-kiln:dev",
            archive.display()
        )));

    let loaded = docker_ok(&["load", "--input", archive.to_str().unwrap()]);
    assert!(
        loaded.contains("Loaded image: app-from-kiln:dev"),
        "{loaded}"
    );
    let (tags, id) = inspect("app-from-kiln:dev");
    assert_eq!(tags, ["app-from-kiln:dev"]);
    assert_eq!(id, config);
    let out = docker_ok(&["run", "--rm", "--network", "none", "app-from-kiln:dev"]);
    assert_eq!(out.trim(), marker);
}

#[test]
fn build_load_puts_the_image_into_docker() {
    let w = Work::new();
    let marker = unique_marker("docker-load");
    let recipe = busybox_recipe(&w, "kiln-load-flag", &["v1"], &marker);
    let d = dockerd();
    let out = w
        .kiln()
        .env("DOCKER_HOST", &d.host)
        .args(["build", &recipe, "--load", "--tag", "kiln-load-flag:docker"])
        .env_remove("KILN_NO_PROGRESS")
        .output()
        .unwrap();
    assert_success(&out, "kiln build --load");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("loaded  kiln-load-flag:docker into docker"),
        "{stderr}"
    );
    let (tags, _) = inspect("kiln-load-flag:docker");
    assert_eq!(tags, ["kiln-load-flag:docker"]);
    let ran = docker_ok(&["run", "--rm", "--network", "none", "kiln-load-flag:docker"]);
    assert_eq!(ran.trim(), marker);
}

#[test]
fn build_load_names_docker_when_it_cannot_load() {
    let w = Work::new();
    let recipe = busybox_recipe(&w, "kiln-load-nowhere", &["v1"], "never");
    let gone = w.path().join("no-daemon.sock");
    let out = w
        .kiln()
        .env("DOCKER_HOST", format!("unix://{}", gone.display()))
        .args(["build", &recipe, "--load=docker"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("`docker load` failed"), "{stderr}");
    assert!(stderr.contains("no-daemon.sock"), "{stderr}");
    assert!(stderr.contains("hint:"), "{stderr}");
}

#[test]
fn docker_loads_the_first_platform_of_a_multi_platform_archive() {
    // manifest.json holds one image: the recipe's first platform. (busybox
    // is amd64 in both; only the config's architecture differs.)
    let w = Work::new();
    let marker = unique_marker("docker-multi");
    let recipe = busybox_recipe(&w, "kiln-load-docker-multi", &["v1"], &marker);
    let text = std::fs::read_to_string(w.path().join(&recipe)).unwrap();
    w.write(
        &recipe,
        format!("platforms = [\"linux/amd64\", \"linux/arm64\"]\n{text}"),
    );
    w.ok(&[
        "build",
        &recipe,
        "--format",
        "oci-archive",
        "--out",
        "multi.tar",
    ]);
    let loaded = docker_ok(&[
        "load",
        "--input",
        w.path().join("multi.tar").to_str().unwrap(),
    ]);
    assert!(
        loaded.contains("Loaded image: kiln-load-docker-multi:v1"),
        "{loaded}"
    );
    let v: serde_json::Value = serde_json::from_str(&docker_ok(&[
        "image",
        "inspect",
        "kiln-load-docker-multi:v1",
    ]))
    .unwrap();
    assert_eq!(v[0]["Architecture"], "amd64");
    let out = docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "kiln-load-docker-multi:v1",
    ]);
    assert_eq!(out.trim(), marker);
}
