//! OCI layout, index and manifest JSON, and signature payloads: cosign's
//! simple-signing payloads and signatures, and DSSE envelopes.

use std::path::{Path, PathBuf};

use kiln::attest::{envelope, open_envelope, statement, Envelope, INTOTO_PAYLOAD_TYPE};
use kiln::digest::Digest;
use kiln::oci::{self, Document};
use kiln::recipe::Platform;
use kiln::sign::cosign::{payload, sign_bytes, verify_bytes, NamedKey};
use kiln::source::layout::{matches_platform, Layout};
use kiln::store::Store;
use p256::ecdsa::SigningKey;
use serde_json::{json, Value};

use super::gen::{self, Rng};

const JSON_TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"null",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"\"sha256:\"",
    b"\"digest\"",
    b"\"size\"",
    b"\"manifests\"",
    b"\"layers\"",
    b"\"config\"",
    b"\\u0000",
    b"\\ud800",
];

fn manifest(config: &[u8], layer: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::of(config).to_string(), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": Digest::of(layer).to_string(), "size": layer.len() }],
    }))
    .expect("json")
}

fn index(children: &[(&[u8], &str)]) -> Vec<u8> {
    let list: Vec<Value> = children
        .iter()
        .map(|(b, media)| json!({ "mediaType": media, "digest": Digest::of(b).to_string(), "size": b.len(), "platform": { "os": "linux", "architecture": "amd64" } }))
        .collect();
    serde_json::to_vec(&json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": list })).expect("json")
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

#[test]
fn oci_json_documents() {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let m = manifest(config, b"layer");
    let i = index(&[(&m, MANIFEST)]);
    let seeds: Vec<&[u8]> = vec![&m, &i, config];
    let platforms = [
        Platform {
            os: "linux".into(),
            arch: "amd64".into(),
            variant: None,
        },
        Platform {
            os: "linux".into(),
            arch: "arm".into(),
            variant: Some("v7".into()),
        },
    ];
    gen::run("oci_json_documents", 2000, |rng| {
        let bytes = gen::input(rng, &seeds, JSON_TOKENS);
        let parsed = oci::parse(&bytes, "`fuzz.json`");
        let is_json = serde_json::from_slice::<Value>(&bytes).is_ok();
        match parsed {
            Ok(Document::Index(index)) => {
                for d in &index.manifests {
                    assert_eq!(d.descriptor.digest().to_string(), d.digest.to_string());
                    for p in &platforms {
                        let _ = matches_platform(d, p);
                    }
                }
            }
            Ok(Document::Manifest(m)) => {
                assert_eq!(
                    m.blobs().count(),
                    m.layers.len() + 1,
                    "the config comes first"
                );
            }
            // A malformed document is an invalid-input error that names it.
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{e}");
                assert!(e.to_string().contains("`fuzz.json`"), "{e}");
                if !is_json {
                    assert!(e.to_string().contains("not valid JSON"), "{e}");
                }
            }
        }
    });
}

/// A layout directory whose documents are mutated and then stored under
/// their new digests, so that the edits get past digest checks.
fn write_layout(rng: &mut Rng, dir: &Path) {
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = b"layer bytes".to_vec();
    let mut m = manifest(&config, &layer);
    if rng.bool() {
        m = gen::mutate(rng, &m, JSON_TOKENS, &[]);
    }
    let mut top = index(&[(&m, MANIFEST)]);
    if rng.u8(0..3) == 0 {
        top = index(&[(&top, INDEX), (&m, MANIFEST), (&top, INDEX)]);
    }
    let mut idx = index(&[(&top, INDEX)]);
    if rng.bool() {
        idx = gen::mutate(rng, &idx, JSON_TOKENS, &[&m]);
    }
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    for b in [&config, &layer, &m, &top] {
        std::fs::write(blobs.join(Digest::of(b).hex()), b).expect("write blob");
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
    std::fs::write(dir.join("index.json"), idx).expect("write");
}

#[test]
fn oci_layout_import() {
    gen::run("oci_layout_import", 60, |rng| {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir: PathBuf = tmp.path().join("layout");
        write_layout(rng, &dir);
        let store = Store::open(tmp.path().join("store")).expect("store");
        let layout = Layout::open(&dir).expect("has oci-layout");
        if let Ok(top) = layout.import(&store) {
            assert!(store.contains(&top.digest), "the top is stored");
        }
    });
}

fn key(rng: &mut Rng) -> SigningKey {
    loop {
        let bytes: Vec<u8> = (0..32).map(|_| rng.u8(..)).collect();
        if let Ok(k) = SigningKey::from_slice(&bytes) {
            return k;
        }
    }
}

/// cosign signatures: a signature verifies only its own payload, whatever
/// is done to the signature text or the payload.
#[test]
fn cosign_signature() {
    gen::run("cosign_signature", 150, |rng| {
        let k = key(rng);
        let digest = Digest::of(&gen::bytes(rng, 16));
        let identity = String::from_utf8_lossy(&gen::bytes(rng, 24)).into_owned();
        let body = payload(&identity, &digest);
        let claims: Value = serde_json::from_slice(&body).expect("payload is JSON");
        assert_eq!(
            claims["critical"]["identity"]["docker-reference"],
            identity.as_str()
        );
        assert_eq!(
            claims["critical"]["image"]["docker-manifest-digest"],
            digest.to_string().as_str()
        );
        let sig = sign_bytes(&k, &body);
        assert!(verify_bytes(k.verifying_key(), &body, &sig));
        let sig2 = String::from_utf8_lossy(&gen::mutate(
            rng,
            sig.as_bytes(),
            &[b"=", b"+", b"/", b" ", b"\n"],
            &[],
        ))
        .into_owned();
        let body2 = if rng.bool() {
            gen::mutate(rng, &body, JSON_TOKENS, &[])
        } else {
            body.clone()
        };
        if verify_bytes(k.verifying_key(), &body2, &sig2) {
            assert_eq!(body2, body, "a signature verified a changed payload");
        }
        assert!(
            !verify_bytes(key(rng).verifying_key(), &body, &sig),
            "another key verified"
        );
    });
}

/// DSSE envelopes: only an unchanged statement opens as signed.
#[test]
fn dsse_envelope() {
    gen::run("dsse_envelope", 150, |rng| {
        let k = key(rng);
        let keys = [NamedKey {
            path: PathBuf::from("k.pub"),
            key: *k.verifying_key(),
        }];
        let digest = Digest::of(&gen::bytes(rng, 8));
        let st = statement(
            "img",
            &digest,
            "https://slsa.dev/provenance/v1",
            json!({ "x": 1 }),
        );
        let env = envelope(&st, &k);
        match open_envelope(&env, &keys) {
            Envelope::Signed(v) => {
                assert_eq!(v, serde_json::from_slice::<Value>(&st).expect("json"))
            }
            other => panic!("kiln's own envelope reads as {other:?}"),
        }
        let env2 = gen::mutate(
            rng,
            &env,
            &[
                b"\"payloadType\"",
                INTOTO_PAYLOAD_TYPE.as_bytes(),
                b"\"sig\":\"\"",
                b"=",
            ],
            &[],
        );
        if let Envelope::Signed(v) = open_envelope(&env2, &keys) {
            assert_eq!(
                v,
                serde_json::from_slice::<Value>(&st).expect("json"),
                "a changed statement opened as signed"
            );
        }
    });
}
