//! The bits of the distribution API that signatures and attestations need
//! besides whole-image pushes and pulls: the OCI 1.1 referrers API
//! (`GET /v2/<name>/referrers/<digest>`), a manifest's bytes by tag or digest
//! (absent is not an error), and putting one manifest whose blobs are
//! already there (a referrers tag index).

use oci_client::Reference;
use reqwest::header::ACCEPT;
use reqwest::StatusCode;

use super::{Access, Registry};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::INDEX_MEDIA_TYPE;

/// No referrers list or manifest kiln reads here is larger.
const MAX_DOCUMENT: usize = 4 << 20;

impl Registry {
    /// The referrers of `digest` in `r`'s repository, as the registry's
    /// referrers API lists them (an image index's bytes); `None` when the
    /// registry has no referrers API (it answers anything but 200).
    pub fn referrers_api(&self, r: &Reference, digest: &Digest) -> Result<Option<Vec<u8>>> {
        self.runtime.block_on(async {
            let s = self.session(r, Access::Pull, &[]).await?;
            let what = format!("list the referrers of `{}@{digest}`", r.whole());
            let url = format!("{}/v2/{}/referrers/{digest}", s.base, r.repository());
            let resp = s
                .send(&what, || {
                    s.client.get(&url).header(ACCEPT, INDEX_MEDIA_TYPE)
                })
                .await?;
            if resp.status() != StatusCode::OK {
                return Ok(None);
            }
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| Error::internal(&what, e.without_url()))?;
            if bytes.len() > MAX_DOCUMENT {
                return Err(Error::Registry {
                    message: format!(
                        "cannot {what}: the answer is larger than {MAX_DOCUMENT} bytes"
                    ),
                    hint: None,
                });
            }
            Ok(Some(bytes.to_vec()))
        })
    }

    /// The bytes and digest of the manifest or index `r` names (by tag or
    /// digest), checked against its digest; `None` when there is none.
    pub fn manifest_bytes(&self, r: &Reference) -> Result<Option<(Vec<u8>, Digest)>> {
        if !self.has_manifest(r)? {
            return Ok(None);
        }
        self.runtime.block_on(async {
            let s = self.session(r, Access::Pull, &[]).await?;
            super::pull::fetch_manifest(&s, r, None).await.map(Some)
        })
    }

    /// Puts manifest `bytes` (of `media_type`) under `tag_or_digest` in `r`'s
    /// repository; its blobs must be there already. Returns whether the
    /// registry answered with an `OCI-Subject` header (it indexed the
    /// manifest's `subject` itself).
    pub fn put_manifest(
        &self,
        r: &Reference,
        tag_or_digest: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<bool> {
        let digest = Digest::of(bytes);
        self.runtime.block_on(async {
            let s = self.session(r, Access::Push, &[]).await?;
            super::push::put_manifest(&s, r, tag_or_digest, bytes, media_type, &digest)
                .await?
                .done()
        })
    }
}
