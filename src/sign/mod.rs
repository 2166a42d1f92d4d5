//! Stage 8, trust: keys, cosign-compatible signatures, attestations.

pub mod cosign;
pub mod keys;

use crate::digest::Digest;
use crate::error::Error;
use crate::registry::Registry;
use crate::store::Store;
use oci_client::Reference;
use serde_json::Value;

/// Signs `digest` (and with `recursive`, the manifests of an index) in `image`'s repository.
pub fn sign_all(
    registry: &Registry,
    store: &Store,
    image: &Reference,
    digest: &Digest,
    key: &p256::ecdsa::SigningKey,
    recursive: bool,
) -> Result<Vec<Digest>, Error> {
    let mut signed = vec![digest.clone()];
    if recursive {
        let pinned = image.clone_with_digest(digest.to_string());
        let top = registry.pull(store, &pinned, None)?;
        let doc: Value = serde_json::from_slice(&store.read(&top.digest)?).unwrap_or(Value::Null);
        for m in doc["manifests"].as_array().into_iter().flatten() {
            if let Some(d) = m["digest"].as_str().and_then(|d| d.parse().ok()) {
                signed.push(d);
            }
        }
    }
    for d in &signed {
        cosign::sign(registry, store, image, d, key)?;
    }
    Ok(signed)
}
