//! OCI documents read as types: Docker schema 2 manifests and manifest lists
//! are still read as bases, and a malformed manifest or index is an error
//! (exit 2) that names the document and what is wrong with it, never "no
//! layers".

use std::path::Path;

use crate::support::Work;
use serde_json::{json, Value};

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Stores `doc` as a blob of `layout` and returns its descriptor.
fn put(layout: &Path, media_type: &str, doc: &Value) -> Value {
    let bytes = serde_json::to_vec(doc).unwrap();
    let digest = sha256(&bytes);
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::write(layout.join("blobs/sha256").join(hex), &bytes).unwrap();
    json!({ "mediaType": media_type, "digest": digest, "size": bytes.len() })
}

fn set_index(layout: &Path, manifests: Vec<Value>) {
    let index = json!({ "schemaVersion": 2, "manifests": manifests });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

/// A one-layer image built by kiln into `out/base`; returns the layout and
/// its manifest.
fn base(w: &Work) -> (std::path::PathBuf, Value) {
    w.write(
        "base.toml",
        "name = \"base\"\n\n[[layers]]\nname = \"etc\"\ncontents = [ { dest = \"/etc/base\", text = \"base\" } ]\n",
    );
    let digest = w.build("base.toml", "out/base");
    let layout = w.path().join("out/base");
    let hex = digest.strip_prefix("sha256:").unwrap();
    let manifest = read_json(&layout.join("blobs/sha256").join(hex));
    (layout, manifest)
}

fn app(w: &Work, base: &str) {
    w.write(
        "app.toml",
        format!("name = \"app\"\nbase = \"{base}\"\n\n[[layers]]\nname = \"app\"\ncontents = [ {{ dest = \"/app\", text = \"app\" }} ]\n"),
    );
}

#[test]
fn docker_schema2_manifest_lists_are_read_as_bases() {
    let w = Work::new();
    let (layout, mut manifest) = base(&w);
    manifest["mediaType"] = json!(DOCKER_MANIFEST);
    manifest["config"]["mediaType"] = json!("application/vnd.docker.container.image.v1+json");
    manifest["layers"][0]["mediaType"] = json!("application/vnd.docker.image.rootfs.diff.tar.gzip");
    let mut m = put(&layout, DOCKER_MANIFEST, &manifest);
    m["platform"] = json!({ "os": "linux", "architecture": "amd64" });
    let list = put(
        &layout,
        DOCKER_LIST,
        &json!({ "schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [m] }),
    );
    set_index(&layout, vec![list]);

    let report: Value = serde_json::from_str(&w.ok(&["inspect", "out/base", "--json"])).unwrap();
    assert_eq!(report["images"][0]["layers"].as_array().unwrap().len(), 1);
    assert_eq!(report["images"][0]["platform"], "linux/amd64");

    app(&w, "oci:out/base");
    w.build("app.toml", "out/app");
    let report: Value = serde_json::from_str(&w.ok(&["inspect", "out/app", "--json"])).unwrap();
    assert_eq!(report["images"][0]["layers"].as_array().unwrap().len(), 2);
}

/// A malformation of a manifest: its name, the edit, and the words the error must hold.
type Case = (&'static str, fn(&mut Value), &'static str);

#[test]
fn a_malformed_manifest_is_an_error_that_names_it_and_the_problem() {
    let cases: &[Case] = &[
        (
            "no layers",
            |m| {
                m.as_object_mut().unwrap().remove("layers");
            },
            "`layers` is missing",
        ),
        (
            "layers not a list",
            |m| m["layers"] = json!({}),
            "`layers`: it is a JSON object, not an array",
        ),
        (
            "a layer without digest",
            |m| {
                m["layers"][0].as_object_mut().unwrap().remove("digest");
            },
            "`layers[0]`",
        ),
        (
            "a sha512 layer digest",
            |m| m["layers"][0]["digest"] = json!(format!("sha512:{}", "a".repeat(128))),
            "`layers[0].digest`",
        ),
        (
            "a wrong media type",
            |m| m["mediaType"] = json!("application/octet-stream"),
            "media type `application/octet-stream`",
        ),
    ];
    for (name, edit, words) in cases {
        let w = Work::new();
        let (layout, mut manifest) = base(&w);
        edit(&mut manifest);
        let desc = put(
            &layout,
            "application/vnd.oci.image.manifest.v1+json",
            &manifest,
        );
        let hex = desc["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap()
            .to_string();
        set_index(&layout, vec![desc]);
        for args in [
            vec!["inspect", "out/base"],
            vec!["push", "out/base", "127.0.0.1:9/never:used"],
        ] {
            let (code, stderr) = w.fails(&args);
            assert_eq!(code, 2, "{name}: {args:?}: {stderr}");
            assert!(
                stderr.contains(&hex) && stderr.contains(words),
                "{name}: {args:?} should name the manifest and say {words:?}:\n{stderr}"
            );
        }
        app(&w, "oci:out/base");
        let (code, stderr) = w.fails(&["build", "app.toml", "--out", "out/app"]);
        assert_eq!(code, 2, "{name}: build: {stderr}");
        assert!(stderr.contains(words), "{name}: build: {stderr}");
    }
}

#[test]
fn an_index_json_whose_manifests_is_not_a_list_is_an_error() {
    let w = Work::new();
    let (layout, _) = base(&w);
    std::fs::write(
        layout.join("index.json"),
        br#"{"schemaVersion":2,"manifests":{"a":1}}"#,
    )
    .unwrap();
    let (code, stderr) = w.fails(&["inspect", "out/base"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("index.json")
            && stderr.contains("`manifests`: it is a JSON object, not an array"),
        "{stderr}"
    );
}

#[test]
fn an_index_entry_without_platform_is_named_when_a_platform_is_needed() {
    let w = Work::new();
    let (layout, manifest) = base(&w);
    let m = put(
        &layout,
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
    );
    let index = put(
        &layout,
        "application/vnd.oci.image.index.v1+json",
        &json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [m.clone()] }),
    );
    set_index(&layout, vec![index]);
    app(&w, "oci:out/base");
    let (code, stderr) = w.fails(&["build", "app.toml", "--out", "out/app"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("without a `platform`") && stderr.contains(m["digest"].as_str().unwrap()),
        "{stderr}"
    );
}
