//! Pulls: every manifest and blob into the store, verified against its
//! digest before anything is written elsewhere.

use futures_util::{StreamExt, TryStreamExt};
use oci_client::errors::OciDistributionError;
use oci_client::{Reference, RegistryOperation};
use serde_json::Value;

use super::{backoff, digest_error, is_not_found, is_transient, registry_error, Registry};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{Stored, INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};
use crate::recipe::Platform;
use crate::store::Store;

impl Registry {
    /// Like [`Registry::pull`], but `None` when the registry has no such manifest.
    pub fn pull_if_present(&self, store: &Store, source: &Reference) -> Result<Option<Stored>> {
        let auth = self.auth(source)?;
        let present = self.runtime.block_on(async {
            match self.client.fetch_manifest_digest(source, &auth).await {
                Ok(_) => Ok(true),
                Err(e) if is_not_found(&e) => Ok(false),
                Err(e) => Err(registry_error(e, &format!("look up `{}`", source.whole()))),
            }
        })?;
        if !present {
            return Ok(None);
        }
        self.pull(store, source, None).map(Some)
    }

    /// The digest `source`'s tag points at now.
    pub fn resolve(&self, source: &Reference) -> Result<Digest> {
        let auth = self.auth(source)?;
        self.runtime.block_on(async {
            let what = format!("resolve `{}`", source.whole());
            let accept = [MANIFEST_MEDIA_TYPE, INDEX_MEDIA_TYPE];
            let (bytes, _) = self
                .retry(&what, || {
                    self.client.pull_manifest_raw(source, &auth, &accept)
                })
                .await?;
            Ok(Digest::of(&bytes))
        })
    }

    /// Pulls `source` (by digest, or by tag) into the store, verifying every
    /// manifest and blob; returns the stored top manifest or index. With
    /// `platforms`, only those platforms' manifests of an index are fetched.
    pub fn pull(
        &self,
        store: &Store,
        source: &Reference,
        platforms: Option<&[Platform]>,
    ) -> Result<Stored> {
        let auth = self.auth(source)?;
        self.runtime.block_on(async {
            self.client
                .auth(source, &auth, RegistryOperation::Pull)
                .await
                .map_err(|e| registry_error(e, &format!("log in to `{}`", source.registry())))?;
            let top = self.pull_manifest(store, source, source.digest()).await?;
            let mut blobs = Vec::new();
            let mut manifests = vec![top.clone()];
            if top.media_type == INDEX_MEDIA_TYPE {
                let doc: Value =
                    serde_json::from_slice(&store.read(&top.digest)?).unwrap_or(Value::Null);
                for child in doc["manifests"].as_array().into_iter().flatten() {
                    let wanted = platforms.is_none_or(|ps| {
                        ps.iter()
                            .any(|p| crate::source::layout::matches_platform(child, p))
                    });
                    if !wanted {
                        continue;
                    }
                    let d = child["digest"].as_str().unwrap_or_default();
                    let r = source.clone_with_digest(d.to_string());
                    manifests.push(self.pull_manifest(store, &r, Some(d)).await?);
                }
            }
            for m in &manifests[..] {
                if m.media_type != MANIFEST_MEDIA_TYPE {
                    continue;
                }
                let doc: Value =
                    serde_json::from_slice(&store.read(&m.digest)?).unwrap_or(Value::Null);
                let path = store.blob_path(&m.digest);
                for desc in crate::source::layout::manifest_blobs(&doc, &path)? {
                    blobs.push((desc.digest, desc.size));
                }
            }
            blobs.sort();
            blobs.dedup();
            futures_util::stream::iter(blobs.iter())
                .map(|(digest, size)| self.pull_blob(store, source, digest, *size))
                .buffer_unordered(self.jobs())
                .try_collect::<Vec<()>>()
                .await?;
            Ok(top)
        })
    }

    async fn pull_manifest(
        &self,
        store: &Store,
        r: &Reference,
        expected: Option<&str>,
    ) -> Result<Stored> {
        let auth = self.auth(r)?;
        let what = format!("pull manifest `{}`", r.whole());
        let accept = [MANIFEST_MEDIA_TYPE, INDEX_MEDIA_TYPE];
        let (bytes, _) = self
            .retry(&what, || self.client.pull_manifest_raw(r, &auth, &accept))
            .await?;
        let actual = Digest::of(&bytes);
        if let Some(expected) = expected {
            let expected: Digest = expected
                .parse()
                .map_err(|e| Error::invalid(format!("{e}"), None))?;
            if actual != expected {
                return Err(Error::DigestMismatch {
                    what,
                    expected,
                    actual,
                });
            }
        }
        let doc: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::invalid(format!("{what} is not JSON: {e}"), None))?;
        let media_type = if crate::source::layout::is_index(&doc) {
            INDEX_MEDIA_TYPE
        } else if crate::source::layout::is_manifest(&doc) {
            MANIFEST_MEDIA_TYPE
        } else {
            return Err(Error::invalid(
                format!("{what} is neither an OCI image manifest nor an index"),
                Some("kiln reads OCI images; convert Docker v2 images with `skopeo copy --format oci`".into()),
            ));
        };
        store.put_bytes(&bytes)?;
        Ok(Stored {
            digest: actual,
            size: bytes.len() as u64,
            media_type,
        })
    }

    async fn pull_blob(
        &self,
        store: &Store,
        source: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        if store.check_blob(digest)? {
            return Ok(());
        }
        let what = format!("pull blob `{digest}` from `{}`", source.whole());
        let desc = oci_client::manifest::OciDescriptor {
            digest: digest.to_string(),
            size: size as i64,
            ..Default::default()
        };
        for attempt in 0..=self.retries() {
            let mut writer = store.writer()?;
            let result: std::result::Result<(), OciDistributionError> = async {
                let mut stream = self.client.pull_blob_stream(source, &desc).await?;
                use std::io::Write;
                while let Some(chunk) = stream.stream.next().await {
                    let chunk = chunk?;
                    writer.write_all(&chunk)?;
                }
                Ok(())
            }
            .await;
            match result {
                Ok(()) => {
                    writer.commit(Some(digest)).map_err(|e| match e {
                        Error::DigestMismatch {
                            expected, actual, ..
                        } => Error::DigestMismatch {
                            what: what.clone(),
                            expected,
                            actual,
                        },
                        other => other,
                    })?;
                    return Ok(());
                }
                Err(e) if digest_error(&e).is_some() => {
                    let actual = digest_error(&e)
                        .and_then(|a| a.parse().ok())
                        .unwrap_or_else(|| digest.clone());
                    return Err(Error::DigestMismatch {
                        what,
                        expected: digest.clone(),
                        actual,
                    });
                }
                Err(e) if is_transient(&e) && attempt < self.retries() => backoff(attempt).await,
                Err(e) => return Err(registry_error(e, &what)),
            }
        }
        unreachable!("the loop returns on its last attempt")
    }
}
