//! Signatures and attestations as OCI 1.1 referrers: artifact manifests
//! whose `subject` is the image and whose `artifactType` says what they
//! are. A registry with the referrers API (`GET /v2/<name>/referrers/<digest>`
//! answering 200) indexes them itself; on one without it (Debian's
//! `docker-registry`) they are listed in the referrers tag index, an image
//! index tagged `sha256-<hex>` holding one descriptor per referrer, updated
//! read-modify-write. Listing reads the API where it answers, the tag index
//! otherwise.

use std::collections::BTreeMap;

use oci_client::Reference;
use serde_json::{json, Map, Value};

use super::bundle::{self, Opened, BUNDLE_MEDIA_TYPE, DSSE_MEDIA_TYPE, SIGN_PREDICATE};
use super::cosign::{self, NamedKey};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{Stored, INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};
use crate::json::canonical;
use crate::registry::Registry;
use crate::store::Store;

/// Media type (and content, `{}`) of an artifact's empty config.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The annotation naming what a bundle holds (`dsse-envelope`, `message-signature`).
pub const CONTENT_ANNOTATION: &str = "dev.sigstore.bundle.content";
/// The annotation naming a bundle's predicate type.
pub const PREDICATE_ANNOTATION: &str = "dev.sigstore.bundle.predicateType";

/// Where signatures and attestations are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheme {
    /// cosign's tags `sha256-<hex>.sig` / `.att` only.
    Tags,
    /// OCI 1.1 referrers only.
    Referrers,
    /// Both (the default: today's verifiers keep working).
    #[default]
    Both,
}

impl Scheme {
    /// Whether cosign's tags are written.
    pub fn tags(self) -> bool {
        self != Scheme::Referrers
    }

    /// Whether referrers are written.
    pub fn referrers(self) -> bool {
        self != Scheme::Tags
    }
}

impl std::str::FromStr for Scheme {
    type Err = Error;

    fn from_str(s: &str) -> Result<Scheme> {
        match s {
            "tags" => Ok(Scheme::Tags),
            "referrers" => Ok(Scheme::Referrers),
            "both" => Ok(Scheme::Both),
            _ => Err(Error::invalid(
                format!("`{s}` is not a signature scheme (`tags`, `referrers` or `both`)"),
                Some("give `--signature-scheme tags`, `referrers` or `both`".into()),
            )),
        }
    }
}

/// The tag of `digest`'s referrers tag index: `sha256-<hex>`.
pub fn index_tag(digest: &Digest) -> String {
    format!("{}-{}", digest.algorithm(), digest.hex())
}

/// How a referrer was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Found {
    /// Listed by the registry's referrers API.
    ReferrersApi,
    /// Listed in the `sha256-<hex>` referrers tag index.
    ReferrersTag,
    /// cosign's `sha256-<hex>.sig` / `.att` tag.
    CosignTag,
}

/// Something attached to an image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Referrer {
    /// The image digest it is about.
    pub subject: String,
    /// The manifest's digest.
    pub digest: String,
    /// Its media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Its size.
    pub size: u64,
    /// What it is (`artifactType`; for cosign tags, the tag's kind).
    #[serde(rename = "artifactType")]
    pub artifact_type: String,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// How it was found.
    pub scheme: Found,
    /// For a cosign tag, the tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

fn repo_ref(image: &Reference, tag: String) -> Reference {
    Reference::with_tag(image.registry().into(), image.repository().into(), tag)
}

fn digest_ref(image: &Reference, digest: &Digest) -> Reference {
    Reference::with_digest(
        image.registry().into(),
        image.repository().into(),
        digest.to_string(),
    )
}

fn index_entries(bytes: &[u8], what: &str) -> Result<Vec<Value>> {
    let index: Value = serde_json::from_slice(bytes).map_err(|e| {
        Error::invalid(
            format!("{what} is not JSON: {e}"),
            Some("the registry holds something else under this name".into()),
        )
    })?;
    Ok(index["manifests"].as_array().cloned().unwrap_or_default())
}

fn referrer_of(subject: &Digest, entry: &Value, scheme: Found) -> Option<Referrer> {
    let annotations = entry["annotations"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    Some(Referrer {
        subject: subject.to_string(),
        digest: entry["digest"].as_str()?.to_string(),
        media_type: entry["mediaType"].as_str().unwrap_or_default().to_string(),
        size: entry["size"].as_u64().unwrap_or_default(),
        artifact_type: entry["artifactType"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        annotations,
        scheme,
        tag: None,
    })
}

/// The referrers of `digest` in `image`'s repository: through the API
/// where the registry has it, else from the referrers tag index.
pub fn list(registry: &Registry, image: &Reference, digest: &Digest) -> Result<Vec<Referrer>> {
    if let Some(bytes) = registry.referrers_api(image, digest)? {
        let what = format!("the referrers of `{}@{digest}`", cosign::identity(image));
        return Ok(index_entries(&bytes, &what)?
            .iter()
            .filter_map(|e| referrer_of(digest, e, Found::ReferrersApi))
            .collect());
    }
    let tag = repo_ref(image, index_tag(digest));
    let Some((bytes, _)) = registry.manifest_bytes(&tag)? else {
        return Ok(Vec::new());
    };
    let what = format!("referrers tag index `{}`", tag.whole());
    Ok(index_entries(&bytes, &what)?
        .iter()
        .filter_map(|e| referrer_of(digest, e, Found::ReferrersTag))
        .collect())
}

/// Everything attached to `digest`: its referrers and cosign's `.sig` / `.att`
/// tags. A referrer listed without annotations (cosign 3 writes index entries
/// with none, and the config's media type as `artifactType`) is described
/// from its manifest.
pub fn list_all(registry: &Registry, image: &Reference, digest: &Digest) -> Result<Vec<Referrer>> {
    let mut all = list(registry, image, digest)?;
    for r in all.iter_mut().filter(|r| r.annotations.is_empty()) {
        let Ok(d) = r.digest.parse::<Digest>() else {
            continue;
        };
        let Some((bytes, _)) = registry.manifest_bytes(&digest_ref(image, &d))? else {
            continue;
        };
        let entry = entry_for(&bytes);
        if let Some(t) = entry["artifactType"].as_str().filter(|t| !t.is_empty()) {
            r.artifact_type = t.to_string();
        }
        if let Some(a) = entry["annotations"].as_object() {
            r.annotations = a
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
        }
    }
    for (suffix, kind) in [
        ("sig", cosign::SIGNATURE_MEDIA_TYPE),
        ("att", DSSE_MEDIA_TYPE),
    ] {
        let tag = cosign::tag_for(digest, suffix);
        if let Some((bytes, d)) = registry.manifest_bytes(&repo_ref(image, tag.clone()))? {
            let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            all.push(Referrer {
                subject: digest.to_string(),
                digest: d.to_string(),
                media_type: doc["mediaType"].as_str().unwrap_or_default().to_string(),
                size: bytes.len() as u64,
                artifact_type: kind.to_string(),
                annotations: BTreeMap::new(),
                scheme: Found::CosignTag,
                tag: Some(tag),
            });
        }
    }
    Ok(all)
}

/// Adds `entry` (a descriptor of a referrer of `subject`) to the referrers
/// tag index of `subject`, unless the registry has the referrers API or the
/// index lists it already.
pub fn index_referrer(
    registry: &Registry,
    image: &Reference,
    subject: &Digest,
    entry: Value,
) -> Result<()> {
    if registry.referrers_api(image, subject)?.is_some() {
        return Ok(());
    }
    let tag = index_tag(subject);
    let at = repo_ref(image, tag.clone());
    let what = format!("referrers tag index `{}`", at.whole());
    // Read-modify-write; another signer may write between our read and our
    // put, so read again and put again while our entry is missing.
    for attempt in 0..4 {
        let mut entries = match registry.manifest_bytes(&at)? {
            Some((bytes, _)) => index_entries(&bytes, &what)?,
            None => Vec::new(),
        };
        if entries.iter().any(|e| e["digest"] == entry["digest"]) {
            return Ok(());
        }
        if attempt == 3 {
            break;
        }
        entries.push(entry.clone());
        let index = canonical(&json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": entries,
        }));
        registry.put_manifest(image, &tag, &index, INDEX_MEDIA_TYPE)?;
    }
    Err(Error::Registry {
        message: format!(
            "{what} keeps changing under kiln: referrer `{}` could not be added",
            entry["digest"].as_str().unwrap_or_default()
        ),
        hint: Some("another client is rewriting it at the same time: run the command again".into()),
    })
}

/// The descriptor of a referrer manifest, for an index: with its
/// `artifactType` and annotations.
fn entry_for(bytes: &[u8]) -> Value {
    let doc: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let mut entry = Map::new();
    entry.insert("mediaType".into(), json!(MANIFEST_MEDIA_TYPE));
    entry.insert("digest".into(), json!(Digest::of(bytes).to_string()));
    entry.insert("size".into(), json!(bytes.len()));
    let artifact_type = doc["artifactType"]
        .as_str()
        .or(doc["config"]["mediaType"].as_str())
        .unwrap_or_default();
    entry.insert("artifactType".into(), json!(artifact_type));
    if let Some(a) = doc["annotations"].as_object() {
        entry.insert("annotations".into(), Value::Object(a.clone()));
    }
    Value::Object(entry)
}

/// Attaches a Sigstore bundle to `subject` in `image`'s repository as a
/// referrer: an artifact manifest (empty config, the bundle as its one
/// layer) whose `subject` is the image, pushed by digest and indexed.
pub fn attach_bundle(
    registry: &Registry,
    store: &Store,
    image: &Reference,
    subject: &Digest,
    bundle_bytes: Vec<u8>,
    predicate_type: &str,
) -> Result<Digest> {
    let Some((subject_bytes, _)) = registry.manifest_bytes(&digest_ref(image, subject))? else {
        return Err(Error::invalid(
            format!(
                "`{}@{subject}` is not in the registry",
                cosign::identity(image)
            ),
            Some("push the image before signing it".into()),
        ));
    };
    let subject_doc: Value = serde_json::from_slice(&subject_bytes).unwrap_or(Value::Null);
    let subject_media = subject_doc["mediaType"]
        .as_str()
        .unwrap_or(MANIFEST_MEDIA_TYPE)
        .to_string();
    let config = b"{}".to_vec();
    let config_digest = store.put_bytes(&config)?;
    let layer_digest = store.put_bytes(&bundle_bytes)?;
    let manifest = canonical(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": BUNDLE_MEDIA_TYPE,
        "config": {
            "mediaType": EMPTY_MEDIA_TYPE,
            "size": config.len(),
            "digest": config_digest.to_string(),
        },
        "layers": [{
            "mediaType": BUNDLE_MEDIA_TYPE,
            "size": bundle_bytes.len(),
            "digest": layer_digest.to_string(),
        }],
        "subject": {
            "mediaType": subject_media,
            "size": subject_bytes.len(),
            "digest": subject.to_string(),
        },
        "annotations": {
            CONTENT_ANNOTATION: "dsse-envelope",
            PREDICATE_ANNOTATION: predicate_type,
        },
    }));
    push_referrer(registry, store, image, subject, &manifest, &[])?;
    Ok(Digest::of(&manifest))
}

/// Pushes the referrer manifest `bytes` of `subject` (its blobs in the
/// store) by digest to `image`'s repository and indexes it there.
pub fn push_referrer(
    registry: &Registry,
    store: &Store,
    image: &Reference,
    subject: &Digest,
    bytes: &[u8],
    mount_from: &[Reference],
) -> Result<()> {
    let digest = store.put_bytes(bytes)?;
    let stored = Stored {
        digest: digest.clone(),
        size: bytes.len() as u64,
        media_type: MANIFEST_MEDIA_TYPE,
    };
    registry.push(store, &stored, &digest_ref(image, &digest), mount_from)?;
    index_referrer(registry, image, subject, entry_for(bytes))
}

/// Signs `digest` as a referrer: a DSSE bundle of the in-toto statement
/// cosign 3 signs (predicate type `https://sigstore.dev/cosign/sign/v1`).
pub fn sign(
    registry: &Registry,
    store: &Store,
    image: &Reference,
    digest: &Digest,
    key: &p256::ecdsa::SigningKey,
) -> Result<Digest> {
    let bundle = bundle::dsse_bundle(&bundle::signature_statement(digest), key);
    attach_bundle(registry, store, image, digest, bundle, SIGN_PREDICATE)
}

/// What the referrers of an image prove, checked against some keys.
#[derive(Debug, Default)]
pub struct Checked {
    /// Valid signatures: the index of the key that made each.
    pub signatures: Vec<usize>,
    /// Predicate types of valid attestations about the digest.
    pub attestations: Vec<String>,
    /// Signatures and attestations signed by no given key.
    pub unsigned: usize,
    /// Signed statements about another digest.
    pub other_subject: usize,
    /// How many referrers were looked at.
    pub seen: usize,
}

/// Reads every referrer of `digest` (pulled, verified, into the store) and
/// checks the bundles, legacy signature layers and DSSE envelopes in them.
pub fn check(
    registry: &Registry,
    store: &Store,
    image: &Reference,
    digest: &Digest,
    keys: &[NamedKey],
    identity: Option<&str>,
) -> Result<Checked> {
    let mut out = Checked::default();
    for r in list(registry, image, digest)? {
        let Ok(d) = r.digest.parse::<Digest>() else {
            continue;
        };
        out.seen += 1;
        // A referrer too big to be a signature or attestation kiln reads
        // (any artifact may refer to an image) is passed over unfetched.
        let too_big = std::cell::Cell::new(false);
        let fits = |doc: &crate::oci::Document| {
            super::fetch_signed(doc).inspect_err(|_| too_big.set(true))
        };
        let top = match registry.pull_checked(store, &digest_ref(image, &d), None, &fits) {
            Ok(top) => top,
            Err(_) if too_big.get() => continue,
            Err(e) => return Err(e),
        };
        let what = format!("referrer `{d}` of `{}@{digest}`", cosign::identity(image));
        let Ok(manifest) = crate::oci::parse_manifest(&store.read(&top.digest)?, &what) else {
            continue;
        };
        // Only layers of the kinds read here are read at all.
        for layer in &manifest.layers {
            let opened = match layer.media_type.as_str() {
                BUNDLE_MEDIA_TYPE => bundle::open_bundle(&store.read(&layer.digest)?, keys),
                DSSE_MEDIA_TYPE => {
                    let blob = store.read(&layer.digest)?;
                    let env: Value = serde_json::from_slice(&blob).unwrap_or(Value::Null);
                    bundle::open_envelope_value(&env, keys)
                }
                cosign::SIGNATURE_MEDIA_TYPE => {
                    match cosign::check_layer(store, layer, digest, keys, identity)? {
                        Some(Ok(k)) => out.signatures.push(k),
                        Some(Err(_)) => out.unsigned += 1,
                        None => {}
                    }
                    continue;
                }
                _ => continue,
            };
            match opened {
                Opened::Unreadable => {}
                Opened::Unsigned => out.unsigned += 1,
                Opened::Message(hex, k) if hex == digest.hex() => out.signatures.push(k),
                Opened::Message(..) => out.other_subject += 1,
                Opened::Statement(st, k) => {
                    if !bundle::names_digest(&st, digest) {
                        out.other_subject += 1;
                    } else if st["predicateType"] == SIGN_PREDICATE {
                        out.signatures.push(k);
                    } else {
                        out.attestations
                            .push(st["predicateType"].as_str().unwrap_or_default().to_string());
                    }
                }
            }
        }
    }
    Ok(out)
}

/// A signature or attestation to carry along with a copy.
#[derive(Debug, Clone)]
pub enum Carried {
    /// cosign's `.sig` / `.att` tag and the manifest it names (in the store).
    Tag {
        /// The tag.
        tag: String,
        /// Its manifest.
        top: Stored,
    },
    /// A referrer of `subject`, its manifest's bytes (in the store, with its blobs).
    Referrer {
        /// The digest it is about.
        subject: Digest,
        /// Its manifest's bytes.
        bytes: Vec<u8>,
    },
}

/// Reads every signature and attestation of `digests` in `source`'s
/// repository into the store (once, for any number of destinations).
pub fn collect(
    registry: &Registry,
    store: &Store,
    source: &Reference,
    digests: &[Digest],
) -> Result<Vec<Carried>> {
    let mut carried = Vec::new();
    for digest in digests {
        for suffix in ["sig", "att"] {
            let tag = cosign::tag_for(digest, suffix);
            if let Some(top) = registry.pull_if_present(store, &repo_ref(source, tag.clone()))? {
                carried.push(Carried::Tag { tag, top });
            }
        }
        for r in list(registry, source, digest)? {
            let Ok(d) = r.digest.parse::<Digest>() else {
                continue;
            };
            let top = registry.pull(store, &digest_ref(source, &d), None)?;
            carried.push(Carried::Referrer {
                subject: digest.clone(),
                bytes: store.read(&top.digest)?,
            });
        }
    }
    Ok(carried)
}

/// Writes what [`collect`] read to `target`'s repository: tags as they
/// are (a `.sig` / `.att` tag already there with other layers gets the
/// union of both), referrers by digest and indexed. Returns how many were written.
pub fn replicate(
    registry: &Registry,
    store: &Store,
    source: &Reference,
    target: &Reference,
    carried: &[Carried],
    scheme: Scheme,
) -> Result<usize> {
    let mounts = [source.clone()];
    let mut n = 0;
    for c in carried {
        match c {
            Carried::Tag { tag, top } if scheme.tags() => {
                let at = repo_ref(target, tag.clone());
                match registry.manifest_bytes(&at)? {
                    Some((_, d)) if d == top.digest => {}
                    Some(_) => {
                        let what = format!("manifest `{}` from `{}`", top.digest, source.whole());
                        let manifest =
                            crate::oci::parse_manifest(&store.read(&top.digest)?, &what)?;
                        for layer in manifest.layers {
                            cosign::append_existing_layer(
                                registry,
                                store,
                                target,
                                tag,
                                layer.descriptor,
                            )?;
                        }
                    }
                    None => {
                        registry.push(store, top, &at, &mounts)?;
                    }
                }
                n += 1;
            }
            Carried::Referrer { subject, bytes } if scheme.referrers() => {
                push_referrer(registry, store, target, subject, bytes, &mounts)?;
                n += 1;
            }
            _ => {}
        }
    }
    Ok(n)
}
