//! Pushes: blobs first (skipped when present, mounted when another
//! repository of the registry has them, small ones in one request, large
//! ones in chunks), then manifests by digest, then the tag.

use futures_util::{StreamExt, TryStreamExt};
use oci_client::Reference;
use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;
use serde_json::Value;

use super::http::{status_error, Session};
use super::upload::{check_digest, exists, upload};
use super::{manifest_url, Access, PushReport, Registry};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{Stored, INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};
use crate::store::Store;

impl Registry {
    /// Pushes the manifest or index `top` (with every blob it needs, from
    /// `store`) to `target`; tags it with `target`'s tag, if any.
    /// `mount_from` names repositories of the same registry that may hold blobs already.
    pub fn push(
        &self,
        store: &Store,
        top: &Stored,
        target: &Reference,
        mount_from: &[Reference],
    ) -> Result<PushReport> {
        let plan = PushPlan::of(store, top)?;
        self.runtime.block_on(async {
            let mounts: Vec<&Reference> = mount_from
                .iter()
                .filter(|m| {
                    m.registry() == target.registry() && m.repository() != target.repository()
                })
                .collect();
            let s = self.session(target, Access::Push, &mounts).await?;
            let results: Vec<BlobOutcome> = futures_util::stream::iter(plan.blobs.iter())
                .map(|(digest, size)| push_blob(&s, store, target, digest, *size, &mounts))
                .buffer_unordered(self.jobs())
                .try_collect()
                .await?;
            let mut report = PushReport {
                digest: top.digest.to_string(),
                ..Default::default()
            };
            for (r, (_, size)) in results.iter().zip(&plan.blobs) {
                match r {
                    BlobOutcome::Uploaded => {
                        report.uploaded += 1;
                        report.bytes += size;
                    }
                    BlobOutcome::Skipped => report.skipped += 1,
                    BlobOutcome::Mounted => report.mounted += 1,
                }
            }
            for (digest, media_type, bytes) in &plan.manifests {
                push_manifest(&s, target, &digest.to_string(), bytes, media_type, digest).await?;
            }
            if let Some(tag) = target.tag() {
                let (digest, media_type, bytes) = plan
                    .manifests
                    .last()
                    .expect("the top manifest is in the plan");
                push_manifest(&s, target, tag, bytes, media_type, digest).await?;
            }
            Ok(report)
        })
    }
}

async fn push_blob(
    s: &Session,
    store: &Store,
    target: &Reference,
    digest: &Digest,
    size: u64,
    mounts: &[&Reference],
) -> Result<BlobOutcome> {
    let what = format!("push blob `{digest}` to `{}`", target.whole());
    if exists(s, target, digest, &what).await? {
        return Ok(BlobOutcome::Skipped);
    }
    for source in mounts {
        let url = format!("{}/v2/{}/blobs/uploads/", s.base, target.repository());
        let query = [
            ("mount", digest.to_string()),
            ("from", source.repository().to_string()),
        ];
        let resp = s
            .send(&what, || {
                s.client
                    .post(&url)
                    .query(&query)
                    .header("content-length", 0)
            })
            .await?;
        if resp.status() == StatusCode::CREATED && exists(s, target, digest, &what).await? {
            return Ok(BlobOutcome::Mounted);
        }
    }
    // Push verifies what it sends: a damaged store copy is removed (a note
    // says so) and never uploaded.
    if !tokio::task::block_in_place(|| store.check_blob(digest))? {
        return Err(Error::verification(
            format!("store blob `{digest}` was damaged; it was removed, not pushed"),
            "build the image again, or push the layout it was written to",
        ));
    }
    upload(s, target, digest, size, &store.blob_path(digest)).await?;
    Ok(BlobOutcome::Uploaded)
}

/// Puts a manifest under `tag_or_digest`; the registry must name it by our digest.
async fn push_manifest(
    s: &Session,
    target: &Reference,
    tag_or_digest: &str,
    bytes: &[u8],
    media_type: &str,
    digest: &Digest,
) -> Result<()> {
    let what = format!(
        "push manifest `{digest}` to `{}/{}:{tag_or_digest}`",
        target.registry(),
        target.repository()
    );
    let url = manifest_url(s, target, tag_or_digest);
    let body = bytes::Bytes::copy_from_slice(bytes);
    let resp = s
        .send(&what, || {
            s.client
                .put(&url)
                .header(CONTENT_TYPE, media_type)
                .body(body.clone())
        })
        .await?;
    if !resp.status().is_success() {
        return Err(status_error(&what, resp).await);
    }
    check_digest(resp.headers(), digest, &what)
}

enum BlobOutcome {
    Uploaded,
    Skipped,
    Mounted,
}

/// What one push sends: blobs (config and layers) and manifests, children before parents.
struct PushPlan {
    blobs: Vec<(Digest, u64)>,
    manifests: Vec<(Digest, &'static str, Vec<u8>)>,
}

impl PushPlan {
    fn of(store: &Store, top: &Stored) -> Result<PushPlan> {
        let mut plan = PushPlan {
            blobs: Vec::new(),
            manifests: Vec::new(),
        };
        let bytes = store.read(&top.digest)?;
        if top.media_type == INDEX_MEDIA_TYPE {
            let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            for child in doc["manifests"].as_array().into_iter().flatten() {
                let d: Digest = child["digest"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| {
                        Error::invalid(
                            format!("index `{}` has an invalid descriptor", top.digest),
                            Some(crate::error::hint::DAMAGED_IMAGE.into()),
                        )
                    })?;
                let child_bytes = store.read(&d)?;
                plan.add_manifest_blobs(store, &d, &child_bytes)?;
                plan.manifests.push((d, MANIFEST_MEDIA_TYPE, child_bytes));
            }
        } else {
            plan.add_manifest_blobs(store, &top.digest, &bytes)?;
        }
        plan.manifests
            .push((top.digest.clone(), top.media_type, bytes));
        plan.blobs.sort();
        plan.blobs.dedup();
        Ok(plan)
    }

    fn add_manifest_blobs(&mut self, store: &Store, digest: &Digest, bytes: &[u8]) -> Result<()> {
        let doc: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
        let path = store.blob_path(digest);
        for desc in crate::source::layout::manifest_blobs(&doc, &path)? {
            let d = desc.digest;
            if !store.contains(&d) {
                return Err(Error::invalid(
                    format!("blob `{d}` of manifest `{digest}` is not in the store"),
                    Some("build or pull the image again".into()),
                ));
            }
            let size = store.size(&d)?;
            self.blobs.push((d, size));
        }
        Ok(())
    }
}
