//! Signatures in cosign's keyed format, so the verifiers people already run
//! (cosign, policy controllers, containers/image policies) accept kiln's,
//! and kiln accepts theirs.
//!
//! A signature is a "simple signing" payload naming the repository and the
//! manifest digest, signed with ECDSA P-256 over SHA-256 (RFC 6979
//! deterministic nonces), DER, base64, in the annotation
//! `dev.cosignproject.cosign/signature` of a layer whose blob is the payload.
//! The layers live in an OCI manifest tagged `sha256-<hex>.sig` in the
//! image's repository; signing again appends a layer and keeps the others.

use std::path::PathBuf;

use base64::Engine;
use oci_client::Reference;
use oci_spec::image::{Descriptor, ImageManifestBuilder, MediaType};
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde::Deserialize;
use serde_json::json;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{oci_digest, Stored, MANIFEST_MEDIA_TYPE};
use crate::json::canonical;
use crate::oci::{self, Desc};
use crate::registry::Registry;
use crate::store::Store;

use super::referrers::Scheme;

/// Media type of a signature layer (its blob is the payload).
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// `critical.type` of a signature payload.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";

/// The repository an image is signed as: `REGISTRY/REPOSITORY`.
pub fn identity(r: &Reference) -> String {
    format!("{}/{}", r.registry(), r.repository())
}

/// The tag a digest's signatures (`sig`) or attestations (`att`) live under.
pub fn tag_for(digest: &Digest, suffix: &str) -> String {
    format!("{}-{}.{suffix}", digest.algorithm(), digest.hex())
}

/// The simple-signing payload for `digest` in repository `identity`.
pub fn payload(identity: &str, digest: &Digest) -> Vec<u8> {
    canonical(&json!({
        "critical": {
            "identity": { "docker-reference": identity },
            "image": { "docker-manifest-digest": digest.to_string() },
            "type": SIGNATURE_TYPE,
        },
        "optional": null,
    }))
}

/// Signs `bytes`: base64 of the DER ECDSA signature.
pub fn sign_bytes(key: &SigningKey, bytes: &[u8]) -> String {
    let sig: Signature = key.sign(bytes);
    base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
}

/// Whether `b64` is a valid signature of `bytes` by `key`.
pub fn verify_bytes(key: &VerifyingKey, bytes: &[u8], b64: &str) -> bool {
    let Ok(der) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return false;
    };
    let Ok(sig) = Signature::from_der(&der) else {
        return false;
    };
    key.verify(bytes, &sig).is_ok()
}

/// A layer to add to a `.sig` or `.att` manifest.
pub struct NewLayer {
    /// The layer blob (payload or DSSE envelope).
    pub blob: Vec<u8>,
    /// Its media type.
    pub media_type: &'static str,
    /// Its annotations.
    pub annotations: Vec<(String, String)>,
}

/// Appends `layer` to the manifest tagged `tag` in `image`'s repository
/// (creating it if needed) and pushes it. A layer already there with the
/// same blob and annotations is not added twice.
pub fn append_layer(
    registry: &Registry,
    store: &Store,
    image: &Reference,
    tag: &str,
    layer: NewLayer,
) -> Result<Digest> {
    let digest = store.put_bytes(&layer.blob)?;
    let mut descriptor = Descriptor::new(
        MediaType::from(layer.media_type),
        layer.blob.len() as u64,
        oci_digest(&digest),
    );
    descriptor.set_annotations(Some(layer.annotations.into_iter().collect()));
    append_existing_layer(registry, store, image, tag, descriptor)
}

/// Appends the layer `descriptor` (its blob in the store) to the manifest
/// tagged `tag` in `image`'s repository, as [`append_layer`] does.
pub fn append_existing_layer(
    registry: &Registry,
    store: &Store,
    image: &Reference,
    tag: &str,
    descriptor: Descriptor,
) -> Result<Digest> {
    let target = Reference::with_tag(
        image.registry().into(),
        image.repository().into(),
        tag.into(),
    );
    let mut layers: Vec<Descriptor> = match registry.pull_if_present(store, &target)? {
        Some(top) => {
            let what = format!("manifest `{}` from `{}`", top.digest, target.whole());
            let manifest = oci::parse_manifest(&store.read(&top.digest)?, &what)?;
            manifest.doc.layers().clone()
        }
        None => Vec::new(),
    };
    let duplicate = layers
        .iter()
        .any(|l| l.digest() == descriptor.digest() && l.annotations() == descriptor.annotations());
    if !duplicate {
        layers.push(descriptor);
    }
    let manifest = signature_manifest(store, layers)?;
    let manifest_digest = store.put_bytes(&manifest)?;
    let stored = Stored {
        digest: manifest_digest.clone(),
        size: manifest.len() as u64,
        media_type: MANIFEST_MEDIA_TYPE,
    };
    registry.push(store, &stored, &target, &[])?;
    Ok(manifest_digest)
}

/// The bytes of a `.sig` or `.att` manifest over `layers`, with its config
/// (stored).
fn signature_manifest(store: &Store, layers: Vec<Descriptor>) -> Result<Vec<u8>> {
    let diff_ids: Vec<String> = layers.iter().map(|l| l.digest().to_string()).collect();
    let history: Vec<_> = layers
        .iter()
        .map(|_| json!({"created": "0001-01-01T00:00:00Z"}))
        .collect();
    let config = canonical(&json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": history,
        "os": "",
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }));
    let config_digest = store.put_bytes(&config)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(Descriptor::new(
            MediaType::ImageConfig,
            config.len() as u64,
            oci_digest(&config_digest),
        ))
        .layers(layers)
        .build()
        .expect("every required manifest field is set");
    Ok(canonical(&manifest))
}

/// Signs the manifest `digest` in `image`'s repository, as `scheme` says:
/// a simple-signing layer in the `.sig` tag, a Sigstore bundle referrer, or both.
pub fn sign(
    registry: &Registry,
    store: &Store,
    image: &Reference,
    digest: &Digest,
    key: &SigningKey,
    scheme: Scheme,
) -> Result<()> {
    if scheme.referrers() {
        super::referrers::sign(registry, store, image, digest, key)?;
    }
    if !scheme.tags() {
        return Ok(());
    }
    let body = payload(&identity(image), digest);
    let signature = sign_bytes(key, &body);
    append_layer(
        registry,
        store,
        image,
        &tag_for(digest, "sig"),
        NewLayer {
            blob: body,
            media_type: SIGNATURE_MEDIA_TYPE,
            annotations: vec![(SIGNATURE_ANNOTATION.to_string(), signature)],
        },
    )?;
    Ok(())
}

/// The layer descriptors of the `sha256-<hex>.SUFFIX` manifest of `digest`
/// in `image`'s repository (pulled, verified, into the store); `None` if there is none.
pub fn stored_layers(
    registry: &Registry,
    store: &Store,
    image: &Reference,
    digest: &Digest,
    suffix: &str,
) -> Result<Option<Vec<Desc>>> {
    let target = Reference::with_tag(
        image.registry().into(),
        image.repository().into(),
        tag_for(digest, suffix),
    );
    let Some(top) = registry.pull_if_present_checked(store, &target, &super::fetch_signed)? else {
        return Ok(None);
    };
    let what = format!("manifest `{}` from `{}`", top.digest, target.whole());
    let manifest = oci::parse_manifest(&store.read(&top.digest)?, &what)?;
    Ok(Some(manifest.layers))
}

/// The claims of a simple-signing payload kiln checks; a payload that is
/// not JSON, or lacks one, reads as empty strings and fails the checks.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Claims {
    critical: Critical,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Critical {
    identity: ClaimedIdentity,
    image: ClaimedImage,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ClaimedIdentity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ClaimedImage {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// A public key to verify with, and where it came from.
pub struct NamedKey {
    /// The file it was read from.
    pub path: PathBuf,
    /// The key.
    pub key: VerifyingKey,
}

/// Checks one simple-signing layer: `None` when it carries no signature,
/// `Some(Ok(k))` when key `k` signed it and it names `digest`, otherwise
/// `Some(Err(problem))`. The repository the payload names is checked only
/// against `identity` when given: an image promoted to another repository
/// keeps its signatures.
pub fn check_layer(
    store: &Store,
    layer: &Desc,
    digest: &Digest,
    keys: &[NamedKey],
    identity: Option<&str>,
) -> Result<Option<std::result::Result<usize, Error>>> {
    let fail = Error::verification;
    let Some(sig) = layer.annotation(SIGNATURE_ANNOTATION) else {
        return Ok(None);
    };
    let body = store.read(&layer.digest)?;
    let Some(k) = keys.iter().position(|k| verify_bytes(&k.key, &body, sig)) else {
        return Ok(Some(Err(fail(
            format!("wrong key: no signature of `{digest}` is valid for the given key(s)"),
            "the image was signed with another key: check which public key you pass",
        ))));
    };
    let path = keys[k].path.display();
    let claims: Claims = serde_json::from_slice(&body).unwrap_or_default();
    let signed_digest = &claims.critical.image.docker_manifest_digest;
    Ok(Some(if *signed_digest != digest.to_string() {
        Err(fail(
            format!(
                "digest mismatch: a signature by `{path}` is for `{signed_digest}`, not `{digest}`"
            ),
            "the signature belongs to another image: sign this digest",
        ))
    } else if let Some(wanted) =
        identity.filter(|i| *i != claims.critical.identity.docker_reference)
    {
        Err(fail(
            format!(
                "identity mismatch: a signature by `{path}` names `{}`, not `{wanted}`",
                claims.critical.identity.docker_reference
            ),
            "the image was signed under another repository name: sign it where it is, or verify without `--exact-identity`",
        ))
    } else if claims.critical.kind != SIGNATURE_TYPE {
        Err(fail(
            format!("a signature by `{path}` has an unexpected payload type"),
            "re-sign the image",
        ))
    } else {
        Ok(k)
    }))
}

/// How a signature was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A simple-signing layer of the `.sig` tag.
    Tag,
    /// A referrer (a Sigstore bundle, or a simple-signing layer).
    Referrer,
}

/// Checks that `digest` in `image`'s repository has a valid signature by one
/// of `keys`, in cosign's `.sig` tag or among its referrers; returns the
/// path of the key that matched and where the signature was. With
/// `exact_identity`, a simple-signing payload must name `image`'s
/// repository (bundles name no repository).
pub fn verify(
    registry: &Registry,
    store: &Store,
    image: &Reference,
    digest: &Digest,
    keys: &[NamedKey],
    exact_identity: bool,
) -> Result<(PathBuf, Via)> {
    let wanted = identity(image);
    let wanted = exact_identity.then_some(wanted.as_str());
    let fail = Error::verification;
    let mut problem = None;
    let tagged = stored_layers(registry, store, image, digest, "sig")?;
    for layer in tagged.iter().flatten() {
        match check_layer(store, layer, digest, keys, wanted)? {
            Some(Ok(k)) => return Ok((keys[k].path.clone(), Via::Tag)),
            // A specific problem (digest, identity) beats "wrong key".
            Some(Err(e)) if problem.is_none() || !e.to_string().contains("wrong key") => {
                problem = Some(e);
            }
            Some(Err(_)) => {}
            None => {}
        }
    }
    let found = super::referrers::check(registry, store, image, digest, keys, wanted)?;
    if let Some(&k) = found.signatures.first() {
        return Ok((keys[k].path.clone(), Via::Referrer));
    }
    if let Some(p) = problem {
        return Err(p);
    }
    if found.unsigned > 0 {
        return Err(fail(
            format!(
                "wrong key: no signature of `{}@{digest}` is valid for the given key(s)",
                identity(image)
            ),
            "the image was signed with another key: check which public key you pass",
        ));
    }
    Err(fail(
        format!(
            "no signature found for `{}@{digest}` (no `{}` tag, {} referrer(s) and none a signature)",
            identity(image),
            tag_for(digest, "sig"),
            found.seen
        ),
        "sign it with `kiln sign REF --key KEY`, or check the reference",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `.sig` manifest is now built from oci-spec types: its bytes (and
    /// so its digest) are those the JSON-value writer produced.
    #[test]
    fn signature_manifest_bytes_did_not_move() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let pulled = br#"{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","size":3,"digest":"sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae","annotations":{"dev.cosignproject.cosign/signature":"MEUC","dev.sigstore.cosign/bundle":"{}"}}"#;
        let new = json!({
            "mediaType": SIGNATURE_MEDIA_TYPE,
            "size": 4,
            "digest": Digest::of(b"body").to_string(),
            "annotations": { SIGNATURE_ANNOTATION: "", "predicateType": "x" },
        });
        let old_layers = vec![
            serde_json::from_slice::<serde_json::Value>(pulled).unwrap(),
            new.clone(),
        ];
        let typed = vec![
            serde_json::from_slice::<Descriptor>(pulled).unwrap(),
            serde_json::from_value::<Descriptor>(new).unwrap(),
        ];
        let bytes = signature_manifest(&store, typed).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let config = store
            .read(&doc["config"]["digest"].as_str().unwrap().parse().unwrap())
            .unwrap();
        let old = canonical(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": crate::image::CONFIG_MEDIA_TYPE,
                "size": config.len(),
                "digest": Digest::of(&config).to_string(),
            },
            "layers": old_layers,
        }));
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            String::from_utf8(old).unwrap()
        );
    }

    #[test]
    fn payload_has_cosign_shape_and_signatures_are_deterministic() {
        let d = Digest::of(b"m");
        let body = String::from_utf8(payload("127.0.0.1:5000/app", &d)).unwrap();
        assert_eq!(
            body,
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"127.0.0.1:5000/app"}},"image":{{"docker-manifest-digest":"{d}"}},"type":"cosign container image signature"}},"optional":null}}"#
            )
        );
        let key = super::super::keys::generate();
        let s1 = sign_bytes(&key, body.as_bytes());
        assert_eq!(s1, sign_bytes(&key, body.as_bytes()), "RFC 6979 nonces");
        assert!(verify_bytes(key.verifying_key(), body.as_bytes(), &s1));
        let other = super::super::keys::generate();
        assert!(!verify_bytes(other.verifying_key(), body.as_bytes(), &s1));
    }
}
