//! Stage 8, trust: keys, cosign-compatible signatures, attestations.

pub mod bundle;
pub mod cosign;
pub mod keys;
pub mod referrers;

pub use referrers::Scheme;

use crate::digest::Digest;
use crate::error::Error;
use crate::registry::Reference;
use crate::registry::Registry;
use crate::store::Store;

/// The digest a reference names: its own, or the one its tag points at now.
pub fn digest_of(registry: &Registry, r: &Reference) -> Result<Digest, Error> {
    match r.digest() {
        Some(d) => d.parse().map_err(|e: crate::digest::BadDigest| {
            Error::invalid(
                format!("`{}`: {e}", r.whole()),
                Some(crate::error::hint::DIGEST.into()),
            )
        }),
        None => registry.resolve(r),
    }
}

/// Signs `digest` (and with `recursive`, the manifests of an index) in `image`'s repository.
pub fn sign_all(
    registry: &Registry,
    store: &Store,
    image: &Reference,
    digest: &Digest,
    key: &p256::ecdsa::SigningKey,
    recursive: bool,
    scheme: Scheme,
) -> Result<Vec<Digest>, Error> {
    let mut signed = vec![digest.clone()];
    if recursive {
        let pinned = image.clone_with_digest(digest.to_string());
        let top = registry.pull(store, &pinned, None)?;
        if top.media_type == crate::oci::INDEX_MEDIA_TYPE {
            let what = format!("index `{}` from `{}`", top.digest, pinned.whole());
            let index = crate::oci::parse_index(&store.read(&top.digest)?, &what)?;
            signed.extend(index.manifests.into_iter().map(|m| m.digest));
        }
    }
    for d in &signed {
        cosign::sign(registry, store, image, d, key, scheme)?;
    }
    Ok(signed)
}
