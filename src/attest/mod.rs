//! Attestations: an SBOM ([`sbom`]) and SLSA provenance ([`provenance`]) as
//! in-toto statements, signed in DSSE envelopes and stored the way cosign
//! stores them (`sha256-<hex>.att`), so `cosign verify-attestation` accepts them.

pub mod provenance;
pub mod sbom;

use base64::Engine;
use oci_client::Reference;
use p256::ecdsa::SigningKey;
use serde_json::{json, Value};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::json::canonical;
use crate::recipe::Recipe;
use crate::registry::Registry;
use crate::resolve::Material;
use crate::sign::cosign::{self, NamedKey, NewLayer, SIGNATURE_ANNOTATION};
use crate::sign::Scheme;
use crate::store::Store;

/// The in-toto statement type kiln writes (cosign's own, which every cosign reads).
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v0.1";
/// The SPDX predicate type.
pub const SPDX_PREDICATE: &str = "https://spdx.dev/Document";
/// The SLSA provenance v1 predicate type.
pub const SLSA_PREDICATE: &str = "https://slsa.dev/provenance/v1";
/// The DSSE payload type of in-toto statements.
pub const INTOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// Media type of an attestation layer.
pub use crate::sign::bundle::DSSE_MEDIA_TYPE;

/// An in-toto statement about the image `digest` named `name`.
pub fn statement(name: &str, digest: &Digest, predicate_type: &str, predicate: Value) -> Vec<u8> {
    canonical(&json!({
        "_type": STATEMENT_TYPE,
        "subject": [{ "name": name, "digest": { "sha256": digest.hex() } }],
        "predicateType": predicate_type,
        "predicate": predicate,
    }))
}

use crate::sign::bundle::pae;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A DSSE envelope around `statement`, signed with `key`.
pub fn envelope(statement: &[u8], key: &SigningKey) -> Vec<u8> {
    let sig = cosign::sign_bytes(key, &pae(INTOTO_PAYLOAD_TYPE, statement));
    canonical(&json!({
        "payloadType": INTOTO_PAYLOAD_TYPE,
        "payload": b64(statement),
        "signatures": [{ "keyid": "", "sig": sig }],
    }))
}

/// Signs `statement` and attaches it as `scheme` says: appended to the
/// image's `.att` manifest, as a Sigstore bundle referrer, or both.
#[allow(clippy::too_many_arguments)]
pub fn attach(
    registry: &Registry,
    store: &Store,
    image: &Reference,
    digest: &Digest,
    predicate_type: &str,
    statement: &[u8],
    key: &SigningKey,
    scheme: Scheme,
) -> Result<()> {
    if scheme.referrers() {
        let bundle = crate::sign::bundle::dsse_bundle(statement, key);
        crate::sign::referrers::attach_bundle(
            registry,
            store,
            image,
            digest,
            bundle,
            predicate_type,
        )?;
    }
    if !scheme.tags() {
        return Ok(());
    }
    cosign::append_layer(
        registry,
        store,
        image,
        &cosign::tag_for(digest, "att"),
        NewLayer {
            blob: envelope(statement, key),
            media_type: DSSE_MEDIA_TYPE,
            annotations: vec![
                (SIGNATURE_ANNOTATION.to_string(), String::new()),
                ("predicateType".to_string(), predicate_type.to_string()),
            ],
        },
    )?;
    Ok(())
}

/// What an attestation layer's blob holds, read with some keys.
#[doc(hidden)]
#[derive(Debug)]
pub enum Envelope {
    /// Not a DSSE envelope with a base64 payload.
    Unreadable,
    /// An envelope no key signed.
    Unsigned,
    /// The statement of an envelope a key signed (`Null` if it is not JSON).
    Signed(Value),
}

/// Reads a DSSE envelope and checks its signatures against `keys`.
#[doc(hidden)]
pub fn open_envelope(bytes: &[u8], keys: &[NamedKey]) -> Envelope {
    let env: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let payload_type = env["payloadType"].as_str().unwrap_or_default();
    let Ok(body) = base64::engine::general_purpose::STANDARD
        .decode(env["payload"].as_str().unwrap_or_default())
    else {
        return Envelope::Unreadable;
    };
    let signed = env["signatures"].as_array().into_iter().flatten().any(|s| {
        let sig = s["sig"].as_str().unwrap_or_default();
        keys.iter()
            .any(|k| cosign::verify_bytes(&k.key, &pae(payload_type, &body), sig))
    });
    if !signed {
        return Envelope::Unsigned;
    }
    Envelope::Signed(serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Checks the image's attestations: at least one, and every one whose
/// envelope some key signed must name `digest` as its subject. Returns the
/// predicate types verified.
pub fn verify(
    registry: &Registry,
    store: &Store,
    image: &Reference,
    digest: &Digest,
    keys: &[NamedKey],
) -> Result<Vec<String>> {
    let fail = Error::verification;
    let layers = cosign::stored_layers(registry, store, image, digest, "att")?;
    let found = crate::sign::referrers::check(registry, store, image, digest, keys, None)?;
    if layers.is_none() && found.attestations.is_empty() && found.unsigned == 0 {
        return Err(fail(
            format!(
                "no attestations found for `{}@{digest}` (no `{}` manifest, no attestation among its referrers)",
                cosign::identity(image),
                cosign::tag_for(digest, "att")
            ),
            "build with `--sbom` / `--provenance` and `--sign-key`",
        ));
    }
    let layers = layers.unwrap_or_default();
    let mut verified = found.attestations.clone();
    let mut unsigned = found.unsigned;
    for layer in &layers {
        let st = match open_envelope(&store.read(&layer.digest)?, keys) {
            Envelope::Unreadable => continue,
            Envelope::Unsigned => {
                unsigned += 1;
                continue;
            }
            Envelope::Signed(st) => st,
        };
        let names_digest = st["subject"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["digest"]["sha256"].as_str() == Some(digest.hex()));
        if !names_digest {
            return Err(fail(
                format!(
                    "an attestation of `{}@{digest}` names another subject digest",
                    cosign::identity(image)
                ),
                "the attestation belongs to another image: attest this digest",
            ));
        }
        verified.push(st["predicateType"].as_str().unwrap_or_default().to_string());
    }
    if verified.is_empty() {
        return Err(fail(
            format!(
                "none of the {} attestation(s) of `{}@{digest}` is signed by the given key(s)",
                unsigned,
                cosign::identity(image)
            ),
            "check which public key you pass",
        ));
    }
    verified.sort();
    verified.dedup();
    Ok(verified)
}

/// The attestation documents of one build.
#[derive(Debug, Clone, Default)]
pub struct Documents {
    /// Per platform manifest: its digest, platform and SPDX document.
    pub sboms: Vec<(Digest, String, Value)>,
    /// The provenance predicate, about the top digest.
    pub provenance: Option<Value>,
    /// The top digest (manifest or index).
    pub top: Option<Digest>,
}

/// What attestations are made about: the narrow view of a build that `attest` needs.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The recipe: its name, path, text (digested) and directory (for its git commit).
    pub recipe: &'a Recipe,
    /// What the output points at: the manifest, or the index for several platforms.
    pub top: &'a Digest,
    /// Per platform, its manifest.
    pub manifests: &'a [PlatformManifest],
    /// Every input, sorted.
    pub materials: &'a [Material],
    /// Start and finish (RFC 3339), only when `SOURCE_DATE_EPOCH` is unset.
    pub times: Option<&'a (String, String)>,
    /// `SOURCE_DATE_EPOCH` as used.
    pub source_date_epoch: Option<u64>,
}

/// One platform's manifest of a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformManifest {
    /// `os/arch[/variant]`.
    pub platform: String,
    /// The manifest's digest (an SBOM describes its layers).
    pub digest: Digest,
}

impl Documents {
    /// Computes the SBOMs (one per platform manifest) and the provenance of `subject`, as asked.
    pub fn of(
        store: &Store,
        subject: &Subject<'_>,
        sbom: bool,
        provenance: bool,
    ) -> Result<Documents> {
        let view = crate::source::layout::Layout::over_store(store);
        let created = crate::image::rfc3339(subject.source_date_epoch.unwrap_or(0));
        let mut docs = Documents {
            top: Some(subject.top.clone()),
            ..Default::default()
        };
        if sbom {
            for m in subject.manifests {
                let doc = sbom::spdx(&view, &m.digest, &subject.recipe.name, &created)?;
                docs.sboms.push((m.digest.clone(), m.platform.clone(), doc));
            }
        }
        if provenance {
            docs.provenance = Some(provenance::predicate(subject));
        }
        Ok(docs)
    }

    /// Writes the documents beside a local output `out`: `OUT.sbom.spdx.json`
    /// (`OUT.OS-ARCH.sbom.spdx.json` with several platforms) and
    /// `OUT.provenance.json` (the in-toto statement). Returns the files written.
    pub fn write_beside(
        &self,
        out: &std::path::Path,
        name: &str,
    ) -> Result<Vec<std::path::PathBuf>> {
        let mut written = Vec::new();
        let base = out
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        for (_, platform, doc) in &self.sboms {
            let path = if self.sboms.len() == 1 {
                format!("{base}.sbom.spdx.json")
            } else {
                format!("{base}.{}.sbom.spdx.json", platform.replace('/', "-"))
            };
            crate::files::write_atomic(std::path::Path::new(&path), &canonical(doc))?;
            written.push(path.into());
        }
        if let (Some(p), Some(top)) = (&self.provenance, &self.top) {
            let path = std::path::PathBuf::from(format!("{base}.provenance.json"));
            crate::files::write_atomic(&path, &statement(name, top, SLSA_PREDICATE, p.clone()))?;
            written.push(path);
        }
        Ok(written)
    }

    /// Signs and attaches every document to `image` in its registry: each SBOM
    /// to its platform manifest (and a single platform's to the top too, being
    /// the same digest), the provenance to the top digest.
    pub fn attach_all(
        &self,
        registry: &Registry,
        store: &Store,
        image: &Reference,
        key: &SigningKey,
        scheme: Scheme,
    ) -> Result<usize> {
        let name = cosign::identity(image);
        let mut n = 0;
        for (digest, _, doc) in &self.sboms {
            attach(
                registry,
                store,
                image,
                digest,
                SPDX_PREDICATE,
                &statement(&name, digest, SPDX_PREDICATE, doc.clone()),
                key,
                scheme,
            )?;
            n += 1;
        }
        if let (Some(p), Some(top)) = (&self.provenance, &self.top) {
            attach(
                registry,
                store,
                image,
                top,
                SLSA_PREDICATE,
                &statement(&name, top, SLSA_PREDICATE, p.clone()),
                key,
                scheme,
            )?;
            n += 1;
        }
        Ok(n)
    }
}
