//! Image names in recipes' `tags` and `kiln build --tag`: what is refused,
//! with the file, line and column and what to write instead, and what is
//! written for what is accepted (read back from the archive with `tar`).

use std::process::Command;

use crate::support::runtimes::busybox_recipe;
use crate::support::*;

fn index_names(archive: &std::path::Path) -> Vec<(String, String)> {
    let text = run(Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg("index.json"));
    let index: serde_json::Value = serde_json::from_str(&text).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let a = &m["annotations"];
            (
                a["io.containerd.image.name"].as_str().unwrap().to_string(),
                a["org.opencontainers.image.ref.name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
}

#[test]
fn tags_and_full_names_are_normalised_as_docker_does() {
    let w = Work::new();
    let recipe = busybox_recipe(
        &w,
        "kiln-names",
        &["v1", "app:dev", "user/tool", "127.0.0.1:5000/team/app:1.4"],
        "names",
    );
    w.ok(&[
        "build",
        &recipe,
        "--format",
        "oci-archive",
        "--out",
        "a.tar",
    ]);
    assert_eq!(
        index_names(&w.path().join("a.tar")),
        [
            ("docker.io/library/kiln-names:v1".into(), "v1".into()),
            ("docker.io/library/app:dev".into(), "dev".into()),
            ("docker.io/user/tool:latest".into(), "latest".into()),
            ("127.0.0.1:5000/team/app:1.4".into(), "1.4".into()),
        ]
    );
    // `--tag` replaces the recipe's tags; no tags at all is NAME:latest.
    w.ok(&[
        "build",
        &recipe,
        "--format",
        "oci-archive",
        "--out",
        "b.tar",
        "--tag",
        "x.example/y:z",
    ]);
    assert_eq!(
        index_names(&w.path().join("b.tar")),
        [("x.example/y:z".to_string(), "z".to_string())]
    );
    let bare = busybox_recipe(&w, "kiln-bare", &[], "bare");
    w.ok(&["build", &bare, "--format", "oci-archive", "--out", "c.tar"]);
    assert_eq!(
        index_names(&w.path().join("c.tar")),
        [(
            "docker.io/library/kiln-bare:latest".to_string(),
            "latest".to_string()
        )]
    );
}

#[test]
fn bad_names_are_refused_with_where_and_what_to_write() {
    let w = Work::new();
    let recipe = busybox_recipe(&w, "kiln-bad", &["v1", "App:1"], "bad");
    let (code, stderr) = w.fails(&["build", &recipe]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("kiln-bad.toml:2:"), "{stderr}");
    assert!(
        stderr.contains("`App:1` is not a valid tag or image name"),
        "{stderr}"
    );
    assert!(stderr.contains("hint: write a tag"), "{stderr}");

    let recipe = busybox_recipe(&w, "kiln-dup", &["v1", "kiln-dup:v1"], "dup");
    let (code, stderr) = w.fails(&["build", &recipe]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("listed already"), "{stderr}");

    // A bare tag names the image after the recipe, which must be a valid name.
    let recipe = busybox_recipe(&w, "Upper", &["v1"], "upper");
    let (code, stderr) = w.fails(&["build", &recipe]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("`Upper`, which is not a valid image name"),
        "{stderr}"
    );

    // `--tag` is checked before anything is built.
    let recipe = busybox_recipe(&w, "kiln-flag", &[], "flag");
    let (code, stderr) = w.fails(&["build", &recipe, "--tag", "app@sha256:00"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("`--tag` `app@sha256:00`"), "{stderr}");
    assert!(!w.path().join("out").exists(), "nothing is written");
}

#[test]
fn a_pulled_archive_is_named_as_pulled() {
    use crate::support::registry::{registry, Flavour};
    let r = registry(Flavour::Plain);
    let w = Work::new();
    let recipe = busybox_recipe(&w, "kiln-pulled", &["v1"], &unique_marker("pulled"));
    let target = r.repo("kiln/pulled:7");
    w.ok(&["build", &recipe, "--push", &target]);
    w.ok(&["pull", &target, "--format", "oci-archive", "--out", "p.tar"]);
    assert_eq!(
        index_names(&w.path().join("p.tar")),
        [(target.clone(), "7".to_string())]
    );
}
