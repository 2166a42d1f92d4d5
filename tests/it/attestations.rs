//! SBOM and provenance written beside local outputs: reproducible with
//! `SOURCE_DATE_EPOCH`, valid SPDX 2.3 by SPDX's own validator, and true to
//! the image's files.

use crate::support;
use std::process::Command;

use crate::support::{run, Work};
use serde_json::Value;

const RECIPE: &str = r#"
name = "att"
[[layers]]
name = "app"
files = [ { src = "app.txt", dest = "/app/app.txt" } ]
contents = [ { dest = "/etc/motd", text = "hello\n" } ]
[[layers]]
name = "over"
contents = [ { dest = "/etc/motd", text = "replaced\n" } ]
symlinks = [ { path = "/app/link", target = "app.txt" } ]
"#;

fn workspace(extra: &str) -> Work {
    let w = Work::new();
    let dir = w.path().join(extra);
    std::fs::create_dir_all(&dir).unwrap();
    w.write(&format!("{extra}/recipe.toml"), RECIPE);
    w.write(&format!("{extra}/app.txt"), "app contents\n");
    w
}

fn build(w: &Work, sub: &str, epoch: Option<&str>) {
    let mut cmd = w.kiln();
    cmd.current_dir(w.path().join(sub)).args([
        "build",
        "recipe.toml",
        "--out",
        "out/att",
        "--sbom",
        "--provenance",
    ]);
    if let Some(e) = epoch {
        cmd.env("SOURCE_DATE_EPOCH", e);
    }
    let out = cmd.output().unwrap();
    support::assert_success(&out, "kiln build --sbom --provenance");
}

fn read(w: &Work, rel: &str) -> Vec<u8> {
    std::fs::read(w.path().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn sbom_and_provenance_are_byte_identical_with_source_date_epoch() {
    let (a, b) = (workspace("a"), workspace("some/deeper/checkout"));
    build(&a, "a", Some("1700000000"));
    build(&b, "some/deeper/checkout", Some("1700000000"));
    for file in ["out/att.sbom.spdx.json", "out/att.provenance.json"] {
        let one = read(&a, &format!("a/{file}"));
        let two = read(&b, &format!("some/deeper/checkout/{file}"));
        assert_eq!(
            String::from_utf8_lossy(&one),
            String::from_utf8_lossy(&two),
            "{file} differs between checkouts"
        );
    }
    let prov: Value = serde_json::from_slice(&read(&a, "a/out/att.provenance.json")).unwrap();
    assert!(
        prov["predicate"]["runDetails"]["metadata"]
            .get("startedOn")
            .is_none(),
        "no times with SOURCE_DATE_EPOCH: {prov}"
    );
}

#[test]
fn provenance_records_times_and_inputs_without_source_date_epoch() {
    let w = workspace("w");
    build(&w, "w", None);
    let prov: Value = serde_json::from_slice(&read(&w, "w/out/att.provenance.json")).unwrap();
    assert_eq!(prov["_type"], "https://in-toto.io/Statement/v0.1");
    assert_eq!(prov["predicateType"], "https://slsa.dev/provenance/v1");
    let pred = &prov["predicate"];
    assert_eq!(pred["runDetails"]["builder"]["id"], "kiln");
    let meta = &pred["runDetails"]["metadata"];
    assert!(
        meta["startedOn"].is_string() && meta["finishedOn"].is_string(),
        "{meta}"
    );
    let recipe = std::fs::read(w.path().join("w/recipe.toml")).unwrap();
    assert_eq!(
        pred["buildDefinition"]["externalParameters"]["recipe"]["digest"]["sha256"],
        sha256_hex(&recipe)
    );
    let deps = pred["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap();
    let app = deps
        .iter()
        .find(|d| d["uri"].as_str().unwrap_or_default().ends_with("app.txt"))
        .unwrap_or_else(|| panic!("app.txt is not among the inputs: {deps:?}"));
    assert_eq!(app["digest"]["sha256"], sha256_hex(b"app contents\n"));
    // The statement's subject is the image that was built.
    let index: Value = serde_json::from_slice(&read(&w, "w/out/att/index.json")).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    assert_eq!(
        format!(
            "sha256:{}",
            prov["subject"][0]["digest"]["sha256"].as_str().unwrap()
        ),
        digest
    );
}

#[test]
fn sbom_is_valid_spdx_and_lists_the_image_files() {
    let w = workspace("w");
    build(&w, "w", Some("0"));
    let path = w.path().join("w/out/att.sbom.spdx.json");
    assert!(
        support::have("pyspdxtools"),
        "pyspdxtools (PyPI spdx-tools) is missing: run scripts/test.sh"
    );
    run(Command::new("pyspdxtools").arg("-i").arg(&path));
    let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    let files: Vec<(String, String)> = doc["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let sha = f["checksums"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["algorithm"] == "SHA256")
                .unwrap()["checksumValue"]
                .as_str()
                .unwrap()
                .to_string();
            (f["fileName"].as_str().unwrap().to_string(), sha)
        })
        .collect();
    // The later layer's /etc/motd wins; links are not files.
    assert_eq!(
        files,
        vec![
            ("./app/app.txt".to_string(), sha256_hex(b"app contents\n")),
            ("./etc/motd".to_string(), sha256_hex(b"replaced\n")),
        ]
    );
    // `kiln sbom` on the layout prints the same document.
    let printed = w.ok(&["sbom", &w.path().join("w/out/att").display().to_string()]);
    let again: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(again, doc);
}

/// Attestations pushed with `--sign-key` verify with cosign, by type, and with
/// `kiln verify --attestations`; another key is refused by both.
#[test]
fn attached_attestations_verify_with_cosign_and_kiln() {
    let reg = support::registry::registry(support::registry::Flavour::Plain);
    let w = workspace("w");
    w.ok(&["keygen", "--out", "ci"]);
    w.ok(&["keygen", "--out", "other"]);
    let target = format!("{}:v1", reg.repo("kiln/attested"));
    let mut cmd = w.kiln();
    cmd.args([
        "build",
        "w/recipe.toml",
        "--out",
        "out/att",
        "--sbom",
        "--provenance",
    ])
    .args(["--push", &target, "--sign-key", "ci.key"])
    .env("SOURCE_DATE_EPOCH", "1700000000");
    let out = cmd.output().unwrap();
    support::assert_success(&out, "kiln build --push --sign-key --sbom --provenance");
    let digest = support::last_digest(&String::from_utf8(out.stdout).unwrap());
    let pinned = format!("{}@{digest}", reg.repo("kiln/attested"));
    let key = w.path().join("ci.pub");
    let other = w.path().join("other.pub");
    for kind in ["spdxjson", "slsaprovenance1"] {
        let ok = support::cosign::verify_attestation(&key, kind, &pinned);
        assert!(
            ok.status.success(),
            "cosign verify-attestation --type {kind}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let bad = support::cosign::verify_attestation(&other, kind, &pinned);
        assert!(
            !bad.status.success(),
            "cosign accepted {kind} with another key"
        );
    }
    let verified = w.ok(&["verify", &pinned, "--key", "ci.pub", "--attestations"]);
    assert!(verified.contains("https://spdx.dev/Document"), "{verified}");
    assert!(
        verified.contains("https://slsa.dev/provenance/v1"),
        "{verified}"
    );
    let (code, err) = w.fails(&["verify", &pinned, "--key", "other.pub", "--attestations"]);
    assert_eq!(code, 4, "{err}");
    // The attested SBOM is the one written beside the layout.
    let local: Value = serde_json::from_slice(&read(&w, "out/att.sbom.spdx.json")).unwrap();
    let envelopes = support::cosign::verify_attestation(&key, "spdxjson", &pinned);
    let line = String::from_utf8(envelopes.stdout).unwrap();
    let env: Value =
        serde_json::from_str(line.lines().find(|l| !l.trim().is_empty()).unwrap()).unwrap();
    use base64::Engine;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(env["payload"].as_str().unwrap())
        .unwrap();
    let statement: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(statement["predicate"], local);
    assert_eq!(
        format!(
            "sha256:{}",
            statement["subject"][0]["digest"]["sha256"]
                .as_str()
                .unwrap()
        ),
        digest
    );
}
