//! `kiln copy SRC DST [DST…]`: promotion QA → staging → prod by digest,
//! with the image's signatures and attestations (cosign's `.sig`/`.att`
//! tags and OCI 1.1 referrers in the `sha256-<hex>` referrers tag index,
//! Debian's `docker-registry` having no referrers API). The oracles are
//! cosign 2.5 (trixie) and cosign 3 (unstable), which must verify every
//! copy with the key that signed the original, and `kiln verify`.

use crate::support;
use crate::support::registry::client::{creds_args, unique_recipe};
use crate::support::registry::{registry, Flavour, PASSWORD, USER};
use crate::support::*;
use serde_json::Value;
use std::process::{Command, Output, Stdio};

fn kiln(w: &Work) -> Command {
    support::cosign::kiln(w, Stdio::piped())
}

/// Runs kiln with `stdin`, asserts success, returns stdout.
fn ok(w: &Work, args: &[&str], stdin: Option<&str>) -> String {
    let out = support::registry::client::run_with_stdin(kiln(w), args, stdin);
    assert_success(&out, &format!("kiln {}", args.join(" ")));
    String::from_utf8(out.stdout).unwrap()
}

fn success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({})\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds `recipe.toml` into `img`, pushes it to each of `pushes`, signs it
/// with `cosign.key` and adds `flag`; returns the image's digest.
fn build_signed(w: &Work, pushes: &[&str], flag: &str) -> String {
    let mut args = vec!["build", "recipe.toml", "--out", "img"];
    for push in pushes {
        args.extend(["--push", push]);
    }
    args.extend(["--sign-key", "cosign.key", flag]);
    last_digest(&ok(w, &args, None))
}

/// The digests of what `kiln referrers --json` lists, sorted, with their schemes.
fn attached(
    w: &Work,
    reference: &str,
    creds: &[&str],
    stdin: Option<&str>,
) -> Vec<(String, String, String)> {
    let mut args = vec!["referrers", reference, "--json"];
    args.extend(creds);
    let list: Vec<Value> = serde_json::from_str(&ok(w, &args, stdin)).unwrap();
    let mut out: Vec<_> = list
        .iter()
        .map(|r| {
            (
                r["artifactType"].as_str().unwrap().to_string(),
                r["digest"].as_str().unwrap().to_string(),
                r["scheme"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn qa_staging_prod_in_one_registry_keeps_signatures_and_attestations() {
    let w = Work::new();
    let reg = registry(Flavour::Plain);
    unique_recipe(&w, "promote", "", "", "");
    support::cosign::generate_key_pair(w.path());
    let qa = reg.repo("promote-qa/app");
    let staging = reg.repo("promote-staging/app");
    let prod = reg.repo("promote-prod/app");
    let prod_eu = reg.repo("promote-prod-eu/app");
    let digest = build_signed(&w, &[&format!("{qa}:v1")], "--sbom");
    let source = attached(&w, &format!("{qa}@{digest}"), &[], None);
    let mut kinds: Vec<&str> = source.iter().map(|(_, _, s)| s.as_str()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        ["cosign-tag", "cosign-tag", "referrers-tag", "referrers-tag"],
        "two bundles in the referrers tag index, a .sig and an .att: {source:?}"
    );

    // prod-eu already has the image, signed there by another key (tags only):
    // the promotion merges its `.sig` with the one that travels.
    ok(
        &w,
        &[
            "copy",
            &format!("{qa}@{digest}"),
            &format!("{prod_eu}:old"),
            "--signature-scheme",
            "referrers",
        ],
        None,
    );
    ok(&w, &["keygen", "--out", "eu"], None);
    ok(
        &w,
        &[
            "sign",
            &format!("{prod_eu}@{digest}"),
            "--key",
            "eu.key",
            "--signature-scheme",
            "tags",
        ],
        None,
    );

    // QA → staging, then staging → two prod repositories in one copy.
    ok(
        &w,
        &["copy", &format!("{qa}@{digest}"), &format!("{staging}:rc")],
        None,
    );
    let copied = ok(
        &w,
        &[
            "copy",
            &format!("{staging}@{digest}"),
            &format!("{prod}:1.4"),
            &format!("{prod_eu}:1.4"),
        ],
        None,
    );
    assert_eq!(last_digest(&copied), digest);

    let eu_pinned = format!("{prod_eu}@{digest}");
    ok(&w, &["verify", &eu_pinned, "--key", "eu.pub"], None);
    let eu = support::cosign::verify(&w.path().join("eu.pub"), &eu_pinned);
    success(&eu, "cosign 2.5 verify with the key prod-eu signed with");
    for repo in [&staging, &prod, &prod_eu] {
        let pinned = format!("{repo}@{digest}");
        let here = attached(&w, &pinned, &[], None);
        if repo == &prod_eu {
            // The same referrers; its `.sig` is the merge, not the source's.
            let referrers = |l: &[(String, String, String)]| -> Vec<(String, String, String)> {
                l.iter()
                    .filter(|r| r.1 != "cosign-tag" && r.2 != "cosign-tag")
                    .cloned()
                    .collect()
            };
            assert_eq!(referrers(&here), referrers(&source));
        } else {
            assert_eq!(here, source, "{repo} has the same attachments");
        }
        let out = ok(
            &w,
            &["verify", &pinned, "--key", "cosign.pub", "--attestations"],
            None,
        );
        assert!(out.contains("https://spdx.dev/Document"), "{out}");
        let key = w.path().join("cosign.pub");
        success(&support::cosign::verify(&key, &pinned), "cosign 2.5 verify");
        success(
            &support::cosign::verify_attestation(&key, "spdxjson", &pinned),
            "cosign 2.5 verify-attestation",
        );
        let mut c3 = support::cosign::cosign3_cmd();
        c3.args(["verify", "--key"])
            .arg(&key)
            .args(support::cosign::VERIFY_FLAGS)
            .arg(&pinned);
        success(&support::cosign::output(c3), "cosign 3 verify");
    }

    // Only the tags: the copy has no referrers tag index.
    let tags_only = reg.repo("promote-tags-only/app");
    ok(
        &w,
        &[
            "copy",
            &format!("{qa}@{digest}"),
            &format!("{tags_only}:1"),
            "--signature-scheme",
            "tags",
        ],
        None,
    );
    let kinds: Vec<String> = attached(&w, &format!("{tags_only}@{digest}"), &[], None)
        .into_iter()
        .map(|(_, _, s)| s)
        .collect();
    assert_eq!(kinds, ["cosign-tag", "cosign-tag"]);
}

#[test]
fn promotion_to_another_registry_keeps_signatures() {
    let w = Work::new();
    let from = registry(Flavour::Plain);
    let to = registry(Flavour::Basic);
    unique_recipe(&w, "promote-two", "", "", "");
    support::cosign::generate_key_pair(w.path());
    let qa = from.repo("promote-two-qa/app");
    let prod = to.repo("promote-two-prod/app");
    let digest = build_signed(&w, &[&format!("{qa}:v1")], "--provenance");
    let creds = creds_args(to);
    let mut args = vec![
        "copy".to_string(),
        format!("{qa}@{digest}"),
        format!("{prod}:1.4"),
    ];
    args.extend(creds.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&w, &args, Some(PASSWORD));

    let pinned = format!("{prod}@{digest}");
    let mut verify = vec!["verify", &pinned, "--key", "cosign.pub", "--attestations"];
    verify.extend(creds.iter());
    let out = ok(&w, &verify, Some(PASSWORD));
    assert!(out.contains("https://slsa.dev/provenance/v1"), "{out}");
    assert_eq!(
        attached(&w, &pinned, &creds, Some(PASSWORD)),
        attached(&w, &format!("{qa}@{digest}"), &[], None)
    );

    // cosign with the second registry's credentials in a Docker config of its own.
    let docker = w.path().join("cosign-docker");
    std::fs::create_dir_all(&docker).unwrap();
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{USER}:{PASSWORD}"),
    );
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, to.host),
    )
    .unwrap();
    for c in [
        support::cosign::cosign_cmd(),
        support::cosign::cosign3_cmd(),
    ] {
        let mut c = c;
        c.env("DOCKER_CONFIG", &docker)
            .args(["verify", "--key"])
            .arg(w.path().join("cosign.pub"))
            .args(support::cosign::VERIFY_FLAGS)
            .arg(&pinned);
        success(
            &support::cosign::output(c),
            "cosign verify on the second registry",
        );
    }
}

#[test]
fn an_index_travels_with_the_signatures_of_its_platform_manifests() {
    let w = Work::new();
    let reg = registry(Flavour::Plain);
    unique_recipe(
        &w,
        "promote-index",
        r#"platforms = ["linux/amd64", "linux/arm64"]"#,
        "",
        "",
    );
    support::cosign::generate_key_pair(w.path());
    let qa = reg.repo("promote-index-qa/app");
    let prod = reg.repo("promote-index-prod/app");
    let digest = build_signed(&w, &[&format!("{qa}:v1")], "--recursive");
    ok(
        &w,
        &["copy", &format!("{qa}:v1"), &format!("{prod}:1.4")],
        None,
    );
    let (index, _) = support::registry::client::remote_raw(reg, &format!("{prod}@{digest}"));
    let mut digests = vec![digest.clone()];
    digests.extend(
        index["manifests"]
            .as_array()
            .expect("an index")
            .iter()
            .map(|m| m["digest"].as_str().unwrap().to_string()),
    );
    assert_eq!(digests.len(), 3);
    let key = w.path().join("cosign.pub");
    for d in &digests {
        let pinned = format!("{prod}@{d}");
        ok(&w, &["verify", &pinned, "--key", "cosign.pub"], None);
        success(&support::cosign::verify(&key, &pinned), "cosign 2.5 verify");
        let mut c3 = support::cosign::cosign3_cmd();
        c3.args(["verify", "--key"])
            .arg(&key)
            .args(support::cosign::VERIFY_FLAGS)
            .arg(&pinned);
        success(&support::cosign::output(c3), "cosign 3 verify");
    }
}

#[test]
fn build_pushes_to_several_destinations_each_signed_and_attested() {
    let w = Work::new();
    let reg = registry(Flavour::Plain);
    unique_recipe(&w, "promote-build", "", "", "");
    support::cosign::generate_key_pair(w.path());
    let a = reg.repo("promote-build-a/app");
    let b = reg.repo("promote-build-b/app");
    let digest = build_signed(
        &w,
        &[&format!("{a}:v1"), &format!("{b}:v1")],
        "--provenance",
    );
    let key = w.path().join("cosign.pub");
    for repo in [&a, &b] {
        let pinned = format!("{repo}@{digest}");
        let kinds: Vec<String> = attached(&w, &pinned, &[], None)
            .into_iter()
            .map(|(_, _, s)| s)
            .collect();
        assert_eq!(kinds.len(), 4, "{repo}: {kinds:?}");
        let out = ok(
            &w,
            &["verify", &pinned, "--key", "cosign.pub", "--attestations"],
            None,
        );
        assert!(out.contains("https://slsa.dev/provenance/v1"), "{out}");
        success(&support::cosign::verify(&key, &pinned), "cosign 2.5 verify");
        let mut c3 = support::cosign::cosign3_cmd();
        c3.args(["verify-attestation", "--type", "slsaprovenance1", "--key"])
            .arg(&key)
            .args(support::cosign::VERIFY_FLAGS)
            .arg(&pinned);
        success(&support::cosign::output(c3), "cosign 3 verify-attestation");
    }
}
