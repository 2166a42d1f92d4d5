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

/// The most bytes kiln reads of one signature or attestation layer (a
/// signature is a few hundred; an SBOM attestation a few MiB).
pub const MAX_SIGNED_LAYER: u64 = 64 << 20;

/// The most bytes the blobs of one signature or attestation artifact may
/// total for kiln to fetch it.
pub const MAX_SIGNED_ARTIFACT: u64 = 256 << 20;

/// Whether kiln fetches the signature or attestation artifact `doc` (a
/// `.sig`/`.att` manifest or a referrer), from its manifest alone: a
/// manifest whose blobs total at most [`MAX_SIGNED_ARTIFACT`], none of
/// them over [`MAX_SIGNED_LAYER`]. A registry names what it likes; nothing
/// bigger is downloaded, let alone read into memory.
pub fn fetch_signed(doc: &crate::oci::Document) -> crate::error::Result<()> {
    let crate::oci::Document::Manifest(m) = doc else {
        return Err(Error::invalid(
            "an index is not a signature or attestation",
            None,
        ));
    };
    let total: u64 = m.blobs().map(|d| d.size).fold(0, u64::saturating_add);
    if total > MAX_SIGNED_ARTIFACT || m.blobs().any(|d| d.size > MAX_SIGNED_LAYER) {
        return Err(Error::invalid(
            format!(
                "a signature or attestation manifest names {total} bytes of blobs, more than kiln \
                 reads ({MAX_SIGNED_LAYER} a blob, {MAX_SIGNED_ARTIFACT} in all)"
            ),
            Some(
                "the registry serves something else under the signature's tag: check the reference"
                    .into(),
            ),
        ));
    }
    Ok(())
}
