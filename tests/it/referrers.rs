//! Signatures and attestations as OCI 1.1 referrers on Debian's
//! `docker-registry` (no referrers API: the `sha256-<hex>` referrers tag
//! index), both directions with cosign 3 (unstable; its defaults: a Sigstore
//! bundle attached as a referrer, with a key-only signing config from
//! `cosign signing-config create`) and cosign 2.5 (trixie; cosign's tags).

use crate::support;
use crate::support::registry::client::unique_recipe;
use crate::support::registry::{registry, Flavour};
use crate::support::*;
use serde_json::Value;
use std::process::{Command, Output, Stdio};

/// cosign 3's signing flags with a key-only signing config: it refuses
/// `--tlog-upload=false` beside `--signing-config` (the config names no log).
const COSIGN3_SIGN_FLAGS: &[&str] = &["--allow-http-registry", "--allow-insecure-registry", "-y"];

fn kiln(w: &Work) -> Command {
    support::cosign::kiln(w, Stdio::null())
}

fn run(w: &Work, args: &[&str]) -> Output {
    kiln(w).args(args).output().unwrap()
}

fn ok(w: &Work, args: &[&str]) -> String {
    let out = run(w, args);
    assert_success(&out, &format!("kiln {}", args.join(" ")));
    String::from_utf8(out.stdout).unwrap()
}

/// Asserts that `out` exited with `code` and its stderr names `needle`.
fn assert_fails(out: &Output, code: i32, needle: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(needle),
        "{}",
        text(out)
    );
}

fn text(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn cosign3(args: &[&str], w: &Work) -> Output {
    let mut c = support::cosign::cosign3_cmd();
    c.current_dir(w.path()).args(args);
    support::cosign::output(c)
}

fn referrers(w: &Work, pinned: &str) -> Vec<Value> {
    serde_json::from_str(&ok(w, &["referrers", pinned, "--json"])).unwrap()
}

/// Builds and pushes the test's own image (unsigned); returns `REPO@DIGEST`.
fn pushed(w: &Work, name: &str, extra: &[&str]) -> String {
    unique_recipe(w, name, "", "", "");
    let repo = registry(Flavour::Plain).repo(&format!("referrers-{name}/app"));
    let mut args = vec!["build", "recipe.toml", "--out", "img", "--push"];
    let target = format!("{repo}:v1");
    args.push(&target);
    args.extend(extra);
    format!("{repo}@{}", last_digest(&ok(w, &args)))
}

#[test]
fn what_cosign3_signs_with_its_defaults_kiln_verifies() {
    let w = Work::new();
    support::cosign::generate_key_pair(w.path());
    let pinned = pushed(&w, "cosign3-signs", &[]);
    let config = support::cosign::signing_config(w.path());
    let config = config.to_str().unwrap();
    let mut sign = vec!["sign", "--key", "cosign.key", "--signing-config", config];
    sign.extend(COSIGN3_SIGN_FLAGS);
    sign.push(&pinned);
    let out = cosign3(&sign, &w);
    assert!(out.status.success(), "cosign 3 sign: {}", text(&out));
    w.write("predicate.json", r#"{"checked": "by kiln"}"#);
    let mut attest = vec![
        "attest",
        "--key",
        "cosign.key",
        "--signing-config",
        config,
        "--type",
        "https://example.com/check/v1",
        "--predicate",
        "predicate.json",
    ];
    attest.extend(COSIGN3_SIGN_FLAGS);
    attest.push(&pinned);
    let out = cosign3(&attest, &w);
    assert!(out.status.success(), "cosign 3 attest: {}", text(&out));

    // cosign 3 wrote no cosign tag: both are in the referrers tag index.
    let listed = referrers(&w, &pinned);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed.iter().all(|r| r["scheme"] == "referrers-tag"),
        "{listed:?}"
    );
    // Described from their manifests: Sigstore bundles, by predicate type.
    let mut types: Vec<&str> = listed
        .iter()
        .map(|r| {
            assert_eq!(
                r["artifactType"],
                "application/vnd.dev.sigstore.bundle.v0.3+json"
            );
            r["annotations"]["dev.sigstore.bundle.predicateType"]
                .as_str()
                .unwrap()
        })
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            "https://example.com/check/v1",
            "https://sigstore.dev/cosign/sign/v1"
        ]
    );

    let out = ok(
        &w,
        &["verify", &pinned, "--key", "cosign.pub", "--attestations"],
    );
    assert!(out.contains("(referrer)"), "{out}");
    assert!(out.contains("https://example.com/check/v1"), "{out}");

    // Another key is refused, naming the key problem.
    ok(&w, &["keygen", "--out", "other"]);
    let out = run(&w, &["verify", &pinned, "--key", "other.pub"]);
    assert_fails(&out, 4, "wrong key");
}

#[test]
fn what_kiln_signs_cosign3_and_cosign25_verify() {
    let w = Work::new();
    support::cosign::generate_key_pair(w.path());
    let pinned = pushed(&w, "kiln-signs", &["--sign-key", "cosign.key", "--sbom"]);
    let listed = referrers(&w, &pinned);
    let mut seen: Vec<(String, String)> = listed
        .iter()
        .map(|r| {
            (
                r["scheme"].as_str().unwrap().to_string(),
                r["annotations"]["dev.sigstore.bundle.predicateType"]
                    .as_str()
                    .unwrap_or(r["artifactType"].as_str().unwrap())
                    .to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (
                "cosign-tag".into(),
                "application/vnd.dev.cosign.simplesigning.v1+json".into()
            ),
            (
                "cosign-tag".into(),
                "application/vnd.dsse.envelope.v1+json".into()
            ),
            (
                "referrers-tag".into(),
                "https://sigstore.dev/cosign/sign/v1".into()
            ),
            ("referrers-tag".into(), "https://spdx.dev/Document".into()),
        ]
    );
    let key = w.path().join("cosign.pub");
    let out = support::cosign::verify(&key, &pinned);
    assert!(out.status.success(), "cosign 2.5 verify: {}", text(&out));
    let mut verify = vec!["verify", "--key", "cosign.pub"];
    verify.extend(support::cosign::VERIFY_FLAGS);
    verify.push(&pinned);
    let out = cosign3(&verify, &w);
    assert!(out.status.success(), "cosign 3 verify: {}", text(&out));
    let mut attest = vec![
        "verify-attestation",
        "--type",
        "spdxjson",
        "--key",
        "cosign.pub",
    ];
    attest.extend(support::cosign::VERIFY_FLAGS);
    attest.push(&pinned);
    let out = cosign3(&attest, &w);
    assert!(
        out.status.success(),
        "cosign 3 verify-attestation: {}",
        text(&out)
    );
}

#[test]
fn signature_schemes_write_where_they_say() {
    let w = Work::new();
    support::cosign::generate_key_pair(w.path());
    let pinned = pushed(&w, "schemes", &[]);
    ok(
        &w,
        &[
            "sign",
            &pinned,
            "--key",
            "cosign.key",
            "--signature-scheme",
            "referrers",
        ],
    );
    let listed = referrers(&w, &pinned);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["scheme"], "referrers-tag");
    assert_eq!(
        listed[0]["artifactType"],
        "application/vnd.dev.sigstore.bundle.v0.3+json"
    );
    assert!(ok(&w, &["verify", &pinned, "--key", "cosign.pub"]).contains("(referrer)"));
    let mut verify = vec!["verify", "--key", "cosign.pub"];
    verify.extend(support::cosign::VERIFY_FLAGS);
    verify.push(&pinned);
    let out = cosign3(&verify, &w);
    assert!(out.status.success(), "cosign 3 verify: {}", text(&out));
    // cosign 2.5 reads only the tag scheme: nothing there yet.
    let key = w.path().join("cosign.pub");
    assert!(!support::cosign::verify(&key, &pinned).status.success());

    ok(
        &w,
        &[
            "sign",
            &pinned,
            "--key",
            "cosign.key",
            "--signature-scheme",
            "tags",
        ],
    );
    assert_eq!(
        referrers(&w, &pinned).len(),
        2,
        "the tag index unchanged, a .sig added"
    );
    let out = support::cosign::verify(&key, &pinned);
    assert!(out.status.success(), "cosign 2.5 verify: {}", text(&out));

    let out = run(
        &w,
        &[
            "sign",
            &pinned,
            "--key",
            "cosign.key",
            "--signature-scheme",
            "notes",
        ],
    );
    assert_fails(&out, 2, "tags");
}

/// A registry with the referrers API: `docker-registry` behind the test
/// proxy in its `ReferrersApi` mode (Debian has no registry with the API).
/// kiln then writes no referrers tag index, cosign 3 finds kiln's bundles
/// through the API, and a copy to a registry without it writes the index there.
#[test]
fn with_the_referrers_api_no_tag_index_is_written() {
    use crate::support::registry::proxy::{Faults, Proxy};
    let w = Work::new();
    support::cosign::generate_key_pair(w.path());
    let upstream = registry(Flavour::Plain);
    let api = Proxy::start(&upstream.host, Faults::ReferrersApi);
    unique_recipe(&w, "api", "", "", "");
    let repo = "referrers-api/app";
    let target = format!("{}/{repo}:v1", api.host);
    let digest = last_digest(&ok(
        &w,
        &[
            "build",
            "recipe.toml",
            "--out",
            "img",
            "--push",
            &target,
            "--sign-key",
            "cosign.key",
            "--sbom",
            "--signature-scheme",
            "referrers",
        ],
    ));
    let pinned = format!("{}/{repo}@{digest}", api.host);
    let schemes = |reference: &str| -> Vec<String> {
        referrers(&w, reference)
            .iter()
            .map(|r| r["scheme"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(schemes(&pinned), ["referrers-api", "referrers-api"]);
    // Straight at the registry (no API): no `sha256-<hex>` tag index, no cosign tag.
    assert_eq!(
        schemes(&format!("{}/{repo}@{digest}", upstream.host)),
        Vec::<String>::new()
    );

    let out = ok(
        &w,
        &["verify", &pinned, "--key", "cosign.pub", "--attestations"],
    );
    assert!(
        out.contains("(referrer)") && out.contains("https://spdx.dev/Document"),
        "{out}"
    );
    let mut verify = vec!["verify", "--key", "cosign.pub"];
    verify.extend(support::cosign::VERIFY_FLAGS);
    verify.push(&pinned);
    let out = cosign3(&verify, &w);
    assert!(
        out.status.success(),
        "cosign 3 verify through the API: {}",
        text(&out)
    );

    // Promoted to a registry without the API: the referrers tag index there.
    let prod = format!("{}/referrers-api-prod/app", upstream.host);
    ok(&w, &["copy", &pinned, &format!("{prod}:1.4")]);
    let copied = format!("{prod}@{digest}");
    assert_eq!(schemes(&copied), ["referrers-tag", "referrers-tag"]);
    let out = ok(
        &w,
        &["verify", &copied, "--key", "cosign.pub", "--attestations"],
    );
    assert!(out.contains("https://spdx.dev/Document"), "{out}");
    let mut verify = vec!["verify", "--key", "cosign.pub"];
    verify.extend(support::cosign::VERIFY_FLAGS);
    verify.push(&copied);
    let out = cosign3(&verify, &w);
    assert!(
        out.status.success(),
        "cosign 3 verify of the copy: {}",
        text(&out)
    );
}

/// Any artifact may refer to an image. One whose blobs are bigger than a
/// signature or attestation kiln reads (here one layer of 64 MiB and a
/// byte, attached by hand: curl, and the `sha256-<hex>` tag index updated)
/// is passed over by `kiln verify` without being downloaded, and the
/// image's own signature still verifies.
#[test]
fn a_referrer_too_big_to_be_a_signature_is_passed_over_unfetched() {
    use crate::remote_cache::{curl, put_blob};
    use serde_json::json;
    use sha2::{Digest as _, Sha256};
    let w = Work::new();
    support::cosign::generate_key_pair(w.path());
    let signed = [
        "--sign-key",
        "cosign.key",
        "--signature-scheme",
        "referrers",
    ];
    let pinned = pushed(&w, "big", &signed);
    let r = registry(Flavour::Plain);
    let (name, digest) = pinned.split_once('@').unwrap();
    let repo = name.strip_prefix(&format!("{}/", r.host)).unwrap();
    let url = |what: &str| format!("http://{}/v2/{repo}/manifests/{what}", r.host);
    let oci_manifest = "application/vnd.oci.image.manifest.v1+json";
    let oci_index = "application/vnd.oci.image.index.v1+json";
    let subject = curl(&["-H", &format!("Accept: {oci_manifest}"), &url(digest)]);

    let big = vec![7u8; (64 << 20) + 1];
    let big_digest = put_blob(r, repo, &big);
    let empty = put_blob(r, repo, b"{}");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": oci_manifest,
        "artifactType": "application/x-big",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/x-big", "digest": big_digest, "size": big.len()}],
        "subject": {"mediaType": oci_manifest, "digest": digest, "size": subject.len()},
    }))
    .unwrap();
    let manifest_digest = format!("sha256:{}", hex::encode(Sha256::digest(&manifest)));
    let put = |bytes: &[u8], media_type: &str, at: &str| {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        curl(&[
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {media_type}"),
            "--data-binary",
            &format!("@{}", file.path().display()),
            &url(at),
        ]);
    };
    put(&manifest, oci_manifest, &manifest_digest);
    // This registry has no referrers API: kiln reads the tag index.
    let tag = digest.replace(':', "-");
    let mut index: Value =
        serde_json::from_slice(&curl(&["-H", &format!("Accept: {oci_index}"), &url(&tag)]))
            .unwrap();
    index["manifests"].as_array_mut().unwrap().push(json!({
        "mediaType": oci_manifest,
        "digest": manifest_digest,
        "size": manifest.len(),
        "artifactType": "application/x-big",
    }));
    put(&serde_json::to_vec(&index).unwrap(), oci_index, &tag);
    assert_eq!(
        referrers(&w, &pinned).len(),
        2,
        "the signature and the big one"
    );

    ok(&w, &["verify", &pinned, "--key", "cosign.pub"]);
    let hex = big_digest.strip_prefix("sha256:").unwrap();
    assert!(
        !w.cache().join("blobs/sha256").join(hex).exists(),
        "the big referrer was downloaded"
    );
}
