//! kiln's archives in Debian's podman (4.3), with a `vfs` store of the
//! test's own (`support::runtimes`). `podman load` tries an archive as an
//! OCI archive first, which it takes only when `index.json` has one entry
//! (else: `more than one image in oci, choose an image`), and names it from
//! `io.containerd.image.name`; then as a docker-archive, reading
//! `manifest.json`'s `RepoTags`, where a short name (`app:v1`) would become
//! `localhost/app:v1` — so kiln writes them in full there too. Either way
//! the image gets every name, as docker would give it.

use std::process::Command;

use crate::support::runtimes::{busybox_recipe, podman};
use crate::support::*;

fn podman_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    // podman says what it loaded on stdout, and its progress on stderr.
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The names podman gives the image `name`, sorted.
fn names(name: &str) -> Vec<String> {
    let text = podman_ok(podman().podman().args([
        "image",
        "inspect",
        "--format",
        "{{json .RepoTags}}",
        name,
    ]));
    let mut v: Vec<String> = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    v.sort();
    v
}

fn run_image(name: &str) -> String {
    let out = podman()
        .podman()
        .args(["run", "--rm", "--network", "none", name])
        .output()
        .unwrap();
    assert_success(&out, &format!("podman run {name}"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn podman_loads_a_single_name_archive_by_its_full_name_and_runs_it() {
    let w = Work::new();
    let marker = unique_marker("podman-one");
    let recipe = busybox_recipe(&w, "kiln-load-podman-one", &["v1"], &marker);
    w.ok(&[
        "build",
        &recipe,
        "--format",
        "oci-archive",
        "--out",
        "one.tar",
    ]);
    let said = podman_ok(
        podman()
            .podman()
            .args(["load", "--input"])
            .arg(w.path().join("one.tar")),
    );
    // Not `localhost/kiln-load-podman-one:v1`: the full name is in index.json.
    assert!(
        said.contains("Loaded image: docker.io/library/kiln-load-podman-one:v1"),
        "{said}"
    );
    assert_eq!(
        names("docker.io/library/kiln-load-podman-one:v1"),
        ["docker.io/library/kiln-load-podman-one:v1"]
    );
    assert_eq!(run_image("kiln-load-podman-one:v1"), marker);
}

#[test]
fn podman_loads_an_archive_with_several_names_under_each() {
    let w = Work::new();
    let marker = unique_marker("podman-many");
    let recipe = busybox_recipe(
        &w,
        "kiln-load-podman-many",
        &["latest", "v1", "registry.example/kiln/podman-many:1.4"],
        &marker,
    );
    w.ok(&[
        "build",
        &recipe,
        "--format",
        "oci-archive",
        "--out",
        "many.tar",
    ]);
    let said = podman_ok(
        podman()
            .podman()
            .args(["load", "--input"])
            .arg(w.path().join("many.tar")),
    );
    assert!(!said.contains("more than one image"), "{said}");
    assert_eq!(
        names("registry.example/kiln/podman-many:1.4"),
        [
            "docker.io/library/kiln-load-podman-many:latest",
            "docker.io/library/kiln-load-podman-many:v1",
            "registry.example/kiln/podman-many:1.4",
        ]
    );
    assert_eq!(
        run_image("docker.io/library/kiln-load-podman-many:v1"),
        marker
    );
}

#[test]
fn podman_loads_the_readme_quickstart_archive() {
    // recipes/hello.toml, tagged `latest` and `v1`: the archive the README
    // builds first. It serves files and has nothing to run; its names are
    // what matters here.
    let w = Work::new();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = w.path().join("hello.tar");
    w.ok(&[
        "build",
        repo.join("recipes/hello.toml").to_str().unwrap(),
        "--format",
        "oci-archive",
        "--out",
        out.to_str().unwrap(),
    ]);
    let said = podman_ok(podman().podman().args(["load", "--input"]).arg(&out));
    assert!(!said.contains("more than one image"), "{said}");
    assert_eq!(
        names("docker.io/library/hello:v1"),
        [
            "docker.io/library/hello:latest",
            "docker.io/library/hello:v1"
        ]
    );
}

#[test]
fn build_load_puts_the_image_into_podman() {
    let w = Work::new();
    let marker = unique_marker("podman-load");
    let recipe = busybox_recipe(&w, "kiln-load-podman-flag", &["v3"], &marker);
    let mut cmd = w.kiln();
    podman().env(&mut cmd);
    let out = cmd
        .env_remove("DOCKER_HOST")
        .env_remove("KILN_NO_PROGRESS")
        .args(["build", &recipe, "--load=podman"])
        .output()
        .unwrap();
    assert_success(&out, "kiln build --load=podman");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("loaded  docker.io/library/kiln-load-podman-flag:v3 into podman"),
        "{stderr}"
    );
    assert_eq!(run_image("kiln-load-podman-flag:v3"), marker);
}
