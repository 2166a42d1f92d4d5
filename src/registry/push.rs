//! Pushes: blobs first (skipped when present, mounted when another
//! repository of the registry has them, small ones in one request, large
//! ones in chunks), then manifests by digest, then the tag.

use futures_util::{StreamExt, TryStreamExt};
use oci_client::errors::OciDistributionError;
use oci_client::{Reference, RegistryOperation};
use serde_json::Value;

use super::{registry_error, PushReport, Registry};
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
        let auth = self.auth(target)?;
        self.runtime.block_on(async {
            for client in [&self.client, &self.small] {
                client
                    .auth(target, &auth, RegistryOperation::Push)
                    .await
                    .map_err(|e| {
                        registry_error(e, &format!("log in to `{}` for pushing", target.registry()))
                    })?;
            }
            let mounts: Vec<&Reference> = mount_from
                .iter()
                .filter(|m| {
                    m.registry() == target.registry() && m.repository() != target.repository()
                })
                .collect();
            let results: Vec<BlobOutcome> = futures_util::stream::iter(plan.blobs.iter())
                .map(|(digest, size)| self.push_blob(store, target, digest, *size, &mounts))
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
                let by_digest = target.clone_with_digest(digest.to_string());
                self.push_manifest(&by_digest, bytes, media_type, digest)
                    .await?;
            }
            if let Some(tag) = target.tag() {
                let tagged = Reference::with_tag(
                    target.registry().into(),
                    target.repository().into(),
                    tag.into(),
                );
                let (digest, media_type, bytes) = plan
                    .manifests
                    .last()
                    .expect("the top manifest is in the plan");
                self.push_manifest(&tagged, bytes, media_type, digest)
                    .await?;
            }
            Ok(report)
        })
    }

    async fn push_blob(
        &self,
        store: &Store,
        target: &Reference,
        digest: &Digest,
        size: u64,
        mounts: &[&Reference],
    ) -> Result<BlobOutcome> {
        let what = format!("push blob `{digest}` to `{}`", target.whole());
        let d = digest.to_string();
        let exists = self
            .retry(&what, || self.client.blob_exists(target, &d))
            .await?;
        if exists {
            return Ok(BlobOutcome::Skipped);
        }
        for source in mounts {
            if self.client.mount_blob(target, source, &d).await.is_ok()
                && self.client.blob_exists(target, &d).await.unwrap_or(false)
            {
                return Ok(BlobOutcome::Mounted);
            }
        }
        let path = store.blob_path(digest);
        let sent = self
            .retry(&what, || {
                let path = path.clone();
                let d = d.clone();
                async move {
                    let file = tokio::fs::File::open(&path).await?;
                    let stream = verified_stream(file, digest.clone(), path.clone());
                    let client = if size <= SMALL_BLOB {
                        &self.small
                    } else {
                        &self.client
                    };
                    client
                        .push_blob_stream(target, stream, &d, Some(size))
                        .await
                }
            })
            .await;
        if let Err(e) = sent {
            // A damaged store copy is removed (and said so), never sent.
            if !store.check_blob(digest)? {
                return Err(Error::verification(
                    format!("store blob `{digest}` was damaged; it was removed, not pushed"),
                    "build the image again, or push the layout it was written to",
                ));
            }
            return Err(e);
        }
        Ok(BlobOutcome::Uploaded)
    }

    async fn push_manifest(
        &self,
        at: &Reference,
        bytes: &[u8],
        media_type: &str,
        digest: &Digest,
    ) -> Result<()> {
        let what = format!("push manifest `{digest}` to `{}`", at.whole());
        let content_type: http::HeaderValue = media_type
            .parse()
            .expect("media types are valid header values");
        let body = bytes::Bytes::copy_from_slice(bytes);
        self.retry(&what, || {
            self.client
                .push_manifest_raw(at, body.clone(), content_type.clone())
        })
        .await?;
        Ok(())
    }
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
                            None,
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

/// Blobs up to this size go up in one request; larger ones in chunks.
const SMALL_BLOB: u64 = 32 << 20;

/// Bytes per upload request: oci-client sends each stream item as PATCH
/// requests of at most 4 MiB, so items of exactly that size make the fewest.
const UPLOAD_CHUNK: usize = 4 << 20;

/// The store file of blob `expected`, in upload chunks, hashed as it goes:
/// at its end, content that does not match the digest fails the upload
/// before it completes, so a damaged store copy is never sent.
fn verified_stream(
    file: tokio::fs::File,
    expected: Digest,
    path: std::path::PathBuf,
) -> impl futures_util::Stream<Item = std::result::Result<bytes::Bytes, OciDistributionError>>
       + Send
       + 'static {
    use sha2::Digest as _;
    use tokio::io::AsyncReadExt;
    let state = (file, sha2::Sha256::new(), expected, path);
    futures_util::stream::try_unfold(state, |(mut file, mut hasher, expected, path)| async move {
        let mut buf = vec![0u8; UPLOAD_CHUNK];
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read(&mut buf[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            let actual = Digest::from_hasher(hasher);
            if actual != expected {
                // Not an I/O error: resending the same bytes cannot help.
                return Err(OciDistributionError::GenericError(Some(format!(
                    "store blob `{}` does not match its digest `{expected}` (it hashes to `{actual}`)",
                    path.display()
                ))));
            }
            return Ok(None);
        }
        buf.truncate(filled);
        hasher.update(&buf);
        Ok(Some((
            bytes::Bytes::from(buf),
            (file, hasher, expected, path),
        )))
    })
}
