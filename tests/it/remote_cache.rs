//! `kiln build --cache REGISTRY/REPO`: the layer cache shared through a real
//! registry (Debian's `docker-registry` on 127.0.0.1). Two stores and one
//! registry: the second store builds nothing and gets the same digest; what
//! the registry holds is read back with `skopeo` and the registry API
//! (`curl`); a poisoned entry is ignored; a closed port never fails a build.

use crate::support::registry::client::*;
use crate::support::registry::{registry, tool, Flavour, Registry};
use crate::support::*;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::process::Command;

/// `kiln build recipe.toml --json --cache CACHE` with the store at `store`.
fn build(w: &Work, store: &str, cache: &str, out: &str) -> Value {
    build_with(w, store, cache, out, &[])
}

/// [`build`] with `extra` arguments.
fn build_with(w: &Work, store: &str, cache: &str, out: &str, extra: &[&str]) -> Value {
    let mut c = kiln(w);
    c.env("KILN_CACHE", w.path().join(store));
    let o = c
        .args([
            "build",
            "recipe.toml",
            "--json",
            "--out",
            out,
            "--cache",
            cache,
        ])
        .args(extra)
        .output()
        .unwrap();
    assert_success(&o, &format!("kiln build --cache {cache} (store {store})"));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn sources(doc: &Value) -> Vec<String> {
    doc["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["source"].as_str().unwrap().to_string())
        .collect()
}

pub(crate) fn curl(args: &[&str]) -> Vec<u8> {
    let out = tool("curl").arg("-sSf").args(args).output().unwrap();
    assert_success(&out, &format!("curl {args:?}"));
    out.stdout
}

/// The tags of `repo`, from the registry API.
fn tags(r: &Registry, repo: &str) -> Vec<String> {
    let url = format!("http://{}/v2/{repo}/tags/list", r.host);
    let v: Value = serde_json::from_slice(&curl(&[&url])).unwrap();
    let mut t: Vec<String> = v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    t.sort();
    t
}

/// Uploads `bytes` as a blob of `repo` (POST, then PUT with the digest).
pub(crate) fn put_blob(r: &Registry, repo: &str, bytes: &[u8]) -> String {
    let digest = format!("sha256:{}", hex(&Sha256::digest(bytes)));
    let url = format!("http://{}/v2/{repo}/blobs/uploads/", r.host);
    let head = String::from_utf8(curl(&["-i", "-X", "POST", &url])).unwrap();
    let location = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("Location: ")
                .or_else(|| l.strip_prefix("location: "))
        })
        .unwrap()
        .trim()
        .to_string();
    let location = if location.starts_with('/') {
        format!("http://{}{location}", r.host)
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = format!("{location}{sep}digest={digest}");
    let w = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(w.path(), bytes).unwrap();
    let data = format!("@{}", w.path().display());
    curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &data,
        &put,
    ]);
    digest
}

/// Writes a cache entry by hand under `tag`: `record` as its config, the
/// blob of the built layer `layer` (as `--json` reports it) as its layer.
fn put_entry(
    r: &Registry,
    repo: &str,
    tag: &str,
    record: &[u8],
    layer: &Value,
    annotations: Option<Value>,
) {
    let config = put_blob(r, repo, record);
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.kiln.layer-cache.v1+json",
        "config": {"mediaType": "application/vnd.kiln.layer-cache.v1+json", "digest": config, "size": record.len()},
        "layers": [{"mediaType": layer["media_type"], "digest": layer["digest"], "size": layer["size"]}],
    });
    if let Some(a) = annotations {
        manifest["annotations"] = a;
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&manifest).unwrap()).unwrap();
    curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/vnd.oci.image.manifest.v1+json",
        "--data-binary",
        &format!("@{}", file.path().display()),
        &format!("http://{}/v2/{repo}/manifests/{tag}", r.host),
    ]);
}

#[test]
fn a_second_store_takes_every_layer_from_the_registry() {
    let r = registry(Flavour::Plain);
    let w = Work::new();
    unique_recipe(&w, "rcache", "", "", "");
    let cache = r.repo("kiln/rcache-roundtrip");

    let a = build(&w, "store-a", &cache, "img-a");
    assert_eq!(sources(&a), ["built", "built"]);
    assert_eq!(a["cache"]["reachable"], true, "{a:#}");
    assert_eq!(a["cache"]["pushed"], 2, "{a:#}");

    // What the registry holds: one artifact per layer, tagged by its key,
    // whose one layer is the built blob (read back by skopeo).
    let entries = tags(r, "kiln/rcache-roundtrip");
    assert_eq!(entries.len(), 2, "{entries:?}");
    let mut held = Vec::new();
    for t in &entries {
        assert!(t.starts_with("kiln-layer-") && t.len() == 75, "{t}");
        let (m, _) = remote_raw(r, &format!("{cache}:{t}"));
        assert_eq!(
            m["artifactType"],
            "application/vnd.kiln.layer-cache.v1+json"
        );
        assert_eq!(
            m["config"]["mediaType"],
            "application/vnd.kiln.layer-cache.v1+json"
        );
        held.push(m["layers"][0]["digest"].as_str().unwrap().to_string());
    }
    held.sort();
    let mut built: Vec<String> = a["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    built.sort();
    assert_eq!(held, built);

    // An empty store: nothing built, nothing compressed, the same digest.
    let b = build(&w, "store-b", &cache, "img-b");
    assert_eq!(b["digest"], a["digest"]);
    assert_eq!(sources(&b), ["remote-cache", "remote-cache"], "{b:#}");
    assert_eq!(b["cache"]["hits"], 2, "{b:#}");
    assert_eq!(b["cache"]["pushed"], 0, "{b:#}");
    assert_same_blobs(&w.path().join("img-a"), &w.path().join("img-b"));
    // Pulled blobs are written twice as they come (store and layout): the
    // layout's are files of their own, which skopeo reads (checking every
    // blob against its digest), and no second copy is left over.
    {
        use std::os::unix::fs::MetadataExt;
        let copied = w.path().join("img-b-copied");
        skopeo(&[
            "copy",
            &format!("oci:{}", w.path().join("img-b").display()),
            &format!("dir:{}", copied.display()),
        ]);
        for l in b["layers"].as_array().unwrap() {
            let hex = l["digest"]
                .as_str()
                .unwrap()
                .strip_prefix("sha256:")
                .unwrap();
            let out = std::fs::metadata(w.path().join("img-b/blobs/sha256").join(hex)).unwrap();
            let kept = std::fs::metadata(w.path().join("store-b/blobs/sha256").join(hex)).unwrap();
            assert_ne!(
                out.ino(),
                kept.ino(),
                "the layout's blob is a file of its own"
            );
            assert_eq!(
                std::fs::read(copied.join(hex)).unwrap(),
                std::fs::read(w.path().join("img-a/blobs/sha256").join(hex)).unwrap()
            );
        }
        let left = crate::support::store_tmp(&w.path().join("store-b"));
        assert!(left.is_empty(), "left in the store's tmp: {left:?}");
    }

    // The layers are now in store B's own cache.
    let again = build(&w, "store-b", &cache, "img-b2");
    assert_eq!(sources(&again), ["local-cache", "local-cache"]);
    assert_eq!(again["digest"], a["digest"]);
}

#[test]
fn an_entry_pointing_at_another_blob_is_ignored_and_the_layer_rebuilt() {
    let r = registry(Flavour::Plain);
    let w = Work::new();
    unique_recipe(&w, "rcache-poison", "", "", "");
    let repo = "kiln/rcache-poison";
    let cache = r.repo(repo);
    let a = build(&w, "store-a", &cache, "img-a");
    let layer = |i: usize| a["layers"][i].clone();
    let (hello, etc) = (layer(0), layer(1));

    // Point the entry of layer `hello` at layer `etc`'s blob, with a record
    // consistent with that blob (its own digest, diff_id and size).
    let entries = tags(r, repo);
    let hello_tag = entries
        .iter()
        .find(|t| {
            let (m, _) = remote_raw(r, &format!("{cache}:{t}"));
            m["layers"][0]["digest"] == hello["digest"]
        })
        .unwrap()
        .clone();
    let (old, _) = remote_raw(r, &format!("{cache}:{hello_tag}"));
    let input = old["annotations"]["dev.kiln.layer-cache.input"].clone();
    let record = serde_json::to_vec(&json!({
        "input": input,
        "digest": etc["digest"],
        "diff_id": etc["diff_id"],
        "size": etc["size"],
        "media_type": etc["media_type"],
    }))
    .unwrap();
    put_entry(r, repo, &hello_tag, &record, &etc, None);

    let b = build(&w, "store-b", &cache, "img-b");
    assert_eq!(
        b["digest"], a["digest"],
        "the poisoned entry changed the image"
    );
    assert_eq!(sources(&b), ["built", "remote-cache"], "{b:#}");
    assert_eq!(b["cache"]["rejected"], 1, "{b:#}");
    assert_eq!(b["layers"][0]["digest"], hello["digest"]);
    // The rebuilt layer's entry was pushed again, pointing at the right blob.
    let (fixed, _) = remote_raw(r, &format!("{cache}:{hello_tag}"));
    assert_eq!(fixed["layers"][0]["digest"], hello["digest"]);
}

/// A registry may say an entry's record is as big as it likes: one over
/// the 64 KiB a record may have is refused from the entry's manifest, before
/// the record is downloaded, and the layer is rebuilt.
#[test]
fn an_entry_with_an_oversized_record_is_ignored_before_its_download() {
    let r = registry(Flavour::Plain);
    let w = Work::new();
    unique_recipe(&w, "rcache-big", "", "", "");
    let repo = "kiln/rcache-big";
    let cache = r.repo(repo);
    let a = build(&w, "store-a", &cache, "img-a");
    let hello = a["layers"][0].clone();
    let hello_tag = tags(r, repo)
        .into_iter()
        .find(|t| {
            let (m, _) = remote_raw(r, &format!("{cache}:{t}"));
            m["layers"][0]["digest"] == hello["digest"]
        })
        .unwrap();
    let (old, _) = remote_raw(r, &format!("{cache}:{hello_tag}"));
    let mut record = json!({
        "input": old["annotations"]["dev.kiln.layer-cache.input"],
        "digest": hello["digest"],
        "diff_id": hello["diff_id"],
        "size": hello["size"],
        "media_type": hello["media_type"],
    });
    record["padding"] = json!("x".repeat(100 << 10));
    let record = serde_json::to_vec(&record).unwrap();
    put_entry(r, repo, &hello_tag, &record, &hello, None);
    let big = hex(&Sha256::digest(&record));

    let b = build(&w, "store-b", &cache, "img-b");
    assert_eq!(b["digest"], a["digest"]);
    assert_eq!(sources(&b)[0], "built", "{b:#}");
    assert_eq!(b["cache"]["rejected"], 1, "{b:#}");
    assert!(
        !w.path().join("store-b/blobs/sha256").join(&big).exists(),
        "the oversized record was downloaded"
    );
}

#[test]
fn an_unreachable_cache_does_not_fail_the_build() {
    let w = Work::new();
    w.write(
        "recipe.toml",
        r#"
name = "offcache"
[[layers]]
name = "hello"
contents = [ { dest = "/hello", text = "hi\n" } ]
"#,
    );
    let cache = unreachable_cache();
    let plain = w.build("recipe.toml", "plain");
    let mut c: Command = kiln(&w);
    c.env("KILN_CACHE", w.path().join("other-store"))
        .env("KILN_CACHE_REPO", &cache)
        .env_remove("KILN_NO_PROGRESS");
    let o = c
        .args(["build", "recipe.toml", "--json", "--out", "img"])
        .output()
        .unwrap();
    assert_success(&o, "kiln build with the cache down");
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(doc["digest"], plain.as_str());
    assert_eq!(doc["cache"]["reachable"], false, "{doc:#}");
    assert_eq!(sources(&doc), ["built"]);
    assert!(
        stderr.contains(&format!("layer cache `{}` is unreachable", &cache)),
        "{stderr}"
    );
}

#[test]
fn the_cache_uses_the_push_credentials_and_never_shows_them() {
    use crate::support::registry::PASSWORD;
    let r = registry(Flavour::Token);
    let w = Work::new();
    unique_recipe(&w, "rcache-auth", "", "", "");
    let cache = r.repo("kiln/rcache-auth");
    let run = |store: &str, out: &str, password: &str| {
        let mut c = kiln(&w);
        c.env("KILN_CACHE", w.path().join(store))
            .env_remove("KILN_NO_PROGRESS");
        let mut args = vec![
            "build",
            "recipe.toml",
            "--json",
            "--out",
            out,
            "--cache",
            &cache,
        ];
        args.extend(creds_args(r));
        let o = run_with_stdin(c, &args, Some(password));
        assert_success(&o, "kiln build --cache with credentials");
        let (stdout, stderr) = (
            String::from_utf8(o.stdout).unwrap(),
            String::from_utf8(o.stderr).unwrap(),
        );
        assert!(!stdout.contains(password) && !stderr.contains(password));
        (serde_json::from_str::<Value>(&stdout).unwrap(), stderr)
    };
    let (a, _) = run("store-a", "img-a", PASSWORD);
    assert_eq!(a["cache"]["pushed"], 2, "{a:#}");
    let (b, _) = run("store-b", "img-b", PASSWORD);
    assert_eq!(sources(&b), ["remote-cache", "remote-cache"], "{b:#}");
    assert_eq!(b["digest"], a["digest"]);
    // A wrong password: refused, reported, built from local inputs.
    let (c, stderr) = run("store-c", "img-c", "not-the-password-0xk1ln");
    assert_eq!(c["cache"]["reachable"], false, "{c:#}");
    assert_eq!(sources(&c), ["built", "built"]);
    assert_eq!(c["digest"], a["digest"]);
    assert!(stderr.contains("is unreachable"), "{stderr}");
}

#[test]
fn a_cache_with_a_tag_or_without_a_registry_is_refused_with_a_fix() {
    let w = Work::new();
    w.write(
        "recipe.toml",
        "name = \"badcache\"\n[[layers]]\ncontents = [ { dest = \"/a\", text = \"a\" } ]\n",
    );
    let (code, stderr) = w.fails(&["build", "recipe.toml", "--cache", "127.0.0.1:1/x:v1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("names a tag or digest"), "{stderr}");
    assert!(stderr.contains("--cache 127.0.0.1:1/x`"), "{stderr}");
    let (code, stderr) = w.fails(&["build", "recipe.toml", "--cache", "UPPER/cache"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("does not name its registry"), "{stderr}");
}

/// The signature annotation of the entry whose layer is `layer`, and the
/// entry's record (its config blob).
fn signed_record(r: &Registry, repo: &str, layer: &Value) -> (Option<String>, Vec<u8>, String) {
    let cache = r.repo(repo);
    for t in tags(r, repo) {
        let (m, _) = remote_raw(r, &format!("{cache}:{t}"));
        if m["layers"][0]["digest"] == layer["digest"] {
            let url = format!(
                "http://{}/v2/{repo}/blobs/{}",
                r.host,
                m["config"]["digest"].as_str().unwrap()
            );
            let sig = m["annotations"]["dev.kiln.layer-cache.signature"]
                .as_str()
                .map(str::to_string);
            return (sig, curl(&[&url]), t);
        }
    }
    panic!("no entry for {layer}");
}

/// `openssl dgst -sha256 -verify PUB`: whether `sig` (base64 DER) signs `data`.
fn openssl_verifies(w: &Work, public: &str, data: &[u8], sig: &str) -> bool {
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(sig)
        .unwrap();
    std::fs::write(w.path().join("sig.der"), der).unwrap();
    std::fs::write(w.path().join("data"), data).unwrap();
    tool("openssl")
        .current_dir(w.path())
        .args([
            "dgst",
            "-sha256",
            "-verify",
            public,
            "-signature",
            "sig.der",
            "data",
        ])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn entries_signed_by_a_trusted_key_skip_the_local_check_and_others_get_it() {
    let r = registry(Flavour::Plain);
    let w = Work::new();
    unique_recipe(&w, "rcache-signed", "", "", "");
    kiln_ok(&w, &["keygen", "--out", "fleet"], None);
    kiln_ok(&w, &["keygen", "--out", "other"], None);
    let repo = "kiln/rcache-signed";
    let cache = r.repo(repo);
    let a = build_with(
        &w,
        "store-a",
        &cache,
        "img-a",
        &["--cache-sign-key", "fleet.key"],
    );
    assert_eq!(a["cache"]["pushed"], 2, "{a:#}");

    // Each record is signed, as OpenSSL sees it: by the fleet key, not another.
    let (hello, etc) = (a["layers"][0].clone(), a["layers"][1].clone());
    for layer in [&hello, &etc] {
        let (sig, record, _) = signed_record(r, repo, layer);
        let sig = sig.expect("a signed entry");
        assert!(openssl_verifies(&w, "fleet.pub", &record, &sig));
        assert!(!openssl_verifies(&w, "other.pub", &record, &sig));
    }

    // Trusting the fleet key: every layer taken on its signed record.
    let b = build_with(
        &w,
        "store-b",
        &cache,
        "img-b",
        &["--cache-key", "fleet.pub"],
    );
    assert_eq!(b["digest"], a["digest"]);
    assert_eq!(sources(&b), ["remote-cache", "remote-cache"], "{b:#}");
    assert_eq!(b["cache"]["signed"], 2, "{b:#}");
    assert_same_blobs(&w.path().join("img-a"), &w.path().join("img-b"));

    // Trusting another key: the same entries, checked in full.
    let c = build_with(
        &w,
        "store-c",
        &cache,
        "img-c",
        &["--cache-key", "other.pub"],
    );
    assert_eq!(c["digest"], a["digest"]);
    assert_eq!(sources(&c), ["remote-cache", "remote-cache"], "{c:#}");
    assert_eq!(
        (c["cache"]["hits"].clone(), c["cache"]["signed"].clone()),
        (json!(2), json!(0))
    );

    // An entry pointing `hello` at `etc`'s blob, its record signed by a key
    // the build does not trust (OpenSSL signs it): checked, and rejected.
    let (_, _, hello_tag) = signed_record(r, repo, &hello);
    let (old, _) = remote_raw(r, &format!("{cache}:{hello_tag}"));
    let record = serde_json::to_vec(&json!({
        "input": old["annotations"]["dev.kiln.layer-cache.input"],
        "digest": etc["digest"],
        "diff_id": etc["diff_id"],
        "size": etc["size"],
        "media_type": etc["media_type"],
    }))
    .unwrap();
    std::fs::write(w.path().join("record"), &record).unwrap();
    let signed = tool("openssl")
        .current_dir(w.path())
        .args([
            "dgst",
            "-sha256",
            "-sign",
            "other.key",
            "-out",
            "poison.der",
            "record",
        ])
        .output()
        .unwrap();
    assert_success(&signed, "openssl dgst -sign");
    let sig = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(w.path().join("poison.der")).unwrap())
    };
    let annotations = json!({
        "dev.kiln.layer-cache.input": old["annotations"]["dev.kiln.layer-cache.input"],
        "dev.kiln.layer-cache.signature": sig,
    });
    put_entry(r, repo, &hello_tag, &record, &etc, Some(annotations));
    let d = build_with(
        &w,
        "store-d",
        &cache,
        "img-d",
        &["--cache-key", "fleet.pub"],
    );
    assert_eq!(
        d["digest"], a["digest"],
        "the poisoned entry changed the image"
    );
    assert_eq!(sources(&d), ["built", "remote-cache"], "{d:#}");
    assert_eq!(
        (d["cache"]["rejected"].clone(), d["cache"]["signed"].clone()),
        (json!(1), json!(1))
    );
}

/// A fleet whose machines build the same recipe at the same moment, each on
/// an empty store, all publishing to one cache: every build succeeds with
/// the same digest, the cache holds one entry per layer, each naming a blob
/// the registry serves, and a machine that comes after takes every layer
/// from it on the fleet key's signature.
#[test]
fn machines_publishing_at_once_leave_one_good_entry_per_layer() {
    let r = registry(Flavour::Plain);
    let w = Work::new();
    // A third layer of 8 MiB of noise, so that the uploads overlap.
    let mut rng = fastrand::Rng::with_seed(41);
    let noise: Vec<u8> = (0..8 << 20).map(|_| rng.u8(..)).collect();
    w.write("noise.bin", &noise);
    unique_recipe(
        &w,
        "rcache-fleet",
        "",
        "",
        "[[layers]]\nname = \"noise\"\nfiles = [ { src = \"noise.bin\", dest = \"/noise.bin\" } ]\n",
    );
    kiln_ok(&w, &["keygen", "--out", "fleet"], None);
    let repo = "kiln/rcache-fleet";
    let cache = r.repo(repo);

    let machines = 4;
    let docs: Vec<Value> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..machines)
            .map(|i| {
                let (w, cache) = (&w, &cache);
                s.spawn(move || {
                    build_with(
                        w,
                        &format!("store-{i}"),
                        cache,
                        &format!("img-{i}"),
                        &["--cache-sign-key", "fleet.key"],
                    )
                })
            })
            .collect();
        runs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let digest = docs[0]["digest"].clone();
    for (i, doc) in docs.iter().enumerate() {
        assert_eq!(doc["digest"], digest, "machine {i}: {doc:#}");
        assert_eq!(doc["cache"]["reachable"], true, "machine {i}: {doc:#}");
        for source in sources(doc) {
            assert!(
                source == "built" || source == "remote-cache",
                "machine {i}: {source}"
            );
        }
    }
    let built: std::collections::BTreeSet<String> = docs[0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(built.len(), 3);

    // One entry per layer, whatever order the writes landed in, each naming
    // one of the built blobs, which the registry serves whole.
    let entries = tags(r, repo);
    assert_eq!(entries.len(), 3, "{entries:?}");
    let mut held = std::collections::BTreeSet::new();
    for t in &entries {
        let (m, _) = remote_raw(r, &format!("{cache}:{t}"));
        let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
        let blob = curl(&["-L", &format!("http://{}/v2/{repo}/blobs/{layer}", r.host)]);
        assert_eq!(format!("sha256:{:x}", Sha256::digest(&blob)), layer);
        held.insert(layer);
    }
    assert_eq!(held, built);

    // A machine that comes after builds nothing.
    let after = build_with(
        &w,
        "store-after",
        &cache,
        "img-after",
        &["--cache-key", "fleet.pub"],
    );
    assert_eq!(after["digest"], digest);
    assert_eq!(sources(&after), ["remote-cache"; 3], "{after:#}");
    assert_eq!(after["cache"]["signed"], 3, "{after:#}");
}
