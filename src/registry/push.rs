//! Pushes: blobs first, several at once (skipped when present, mounted when
//! another repository of the registry has them, otherwise streamed in one
//! request and verified as they go, with chunks to resume from after a
//! failure), then manifests by digest, then the tag (neither sent again when
//! the tag already names the same digest). Blobs come from the store, or
//! straight from an OCI layout's `blobs/sha256/` (`kiln push DIR`).

use std::path::{Path, PathBuf};

use futures_util::{StreamExt, TryStreamExt};
use oci_client::Reference;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::StatusCode;

use super::http::{error_codes, status_error_of, Session};
use super::upload::{check_digest, exists, upload};
use super::{manifest_url, Access, PushReport, Registry};
use crate::digest::Digest;
use crate::error::IoContext;
use crate::error::{Error, Result};
use crate::image::{Stored, INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};
use crate::oci;
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
        self.push_from(Blobs::Store(store), top, target, mount_from)
    }

    /// Pushes the manifest or index `top` of the OCI layout directory `dir`
    /// straight from its `blobs/sha256/`, without copying it into the
    /// store: manifests and configs are read verified, layers are verified
    /// while they stream (a damaged one fails the push, exit 4, before the
    /// registry has all of it, and is never committed).
    pub fn push_layout(&self, dir: &Path, top: &Stored, target: &Reference) -> Result<PushReport> {
        self.push_from(Blobs::Layout(dir), top, target, &[])
    }

    fn push_from(
        &self,
        blobs: Blobs<'_>,
        top: &Stored,
        target: &Reference,
        mount_from: &[Reference],
    ) -> Result<PushReport> {
        let plan = PushPlan::of(&blobs, top)?;
        let blobs = &blobs;
        self.runtime.block_on(async {
            let mounts: Vec<&Reference> = mount_from
                .iter()
                .filter(|m| {
                    m.registry() == target.registry() && m.repository() != target.repository()
                })
                .collect();
            let s = self.session(target, Access::Push, &mounts).await?;
            let (top_digest, top_media, _) = plan
                .manifests
                .last()
                .expect("the top manifest is in the plan");
            // Whether the registry already names our top by the tag (or
            // holds it by digest), asked beside the blobs' HEADs.
            let there = manifest_there(
                &s,
                target,
                target
                    .tag()
                    .map(String::from)
                    .unwrap_or(top_digest.to_string()),
                top_media,
                top_digest,
            );
            // Every blob the registry lacks, sent (several at once).
            let push_blobs = || {
                futures_util::stream::iter(plan.blobs.iter())
                    .map(|(digest, size)| push_blob(&s, blobs, target, digest, *size, &mounts))
                    .buffered(self.jobs())
                    .try_collect::<Vec<BlobOutcome>>()
            };
            let (results, there) = futures_util::future::join(push_blobs(), there).await;
            let (results, there) = (results?, there?);
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
            if there {
                return Ok(report);
            }
            // Another client putting the same blobs into the repository at
            // the same moment can make the registry miss one of ours for a
            // moment (Debian's docker-registry rewrites a blob's link in
            // the repository in place): its blobs are looked up again (and
            // sent again where missing) and the manifests put again.
            let mut retries = 0;
            loop {
                match put_manifests(&s, target, &plan).await? {
                    Put::Done(_) => return Ok(report),
                    Put::BlobsUnknown(e) if retries == BLOB_RACE_RETRIES => return Err(e),
                    Put::BlobsUnknown(_) => {
                        retries += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(25 << retries)).await;
                        push_blobs().await?;
                    }
                }
            }
        })
    }
}

/// How many times a manifest is put again after the registry said a blob
/// it names is unknown (waiting 50, 100, 200 and 400 ms before each).
const BLOB_RACE_RETRIES: u32 = 4;

/// Puts the plan's manifests: children by digest, the top by its tag when
/// it has one (the registry then holds it by digest too).
async fn put_manifests(s: &Session, target: &Reference, plan: &PushPlan) -> Result<Put> {
    let by_digest = plan.manifests.len() - usize::from(target.tag().is_some());
    for (digest, media_type, bytes) in &plan.manifests[..by_digest] {
        if let Put::BlobsUnknown(e) =
            put_manifest(s, target, &digest.to_string(), bytes, media_type, digest).await?
        {
            return Ok(Put::BlobsUnknown(e));
        }
    }
    if let Some(tag) = target.tag() {
        let (digest, media_type, bytes) = plan
            .manifests
            .last()
            .expect("the top manifest is in the plan");
        return put_manifest(s, target, tag, bytes, media_type, digest).await;
    }
    Ok(Put::Done(false))
}

async fn push_blob(
    s: &Session,
    blobs: &Blobs<'_>,
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
    // says so) and never uploaded; a layout's blob is verified as it streams.
    if let Blobs::Store(store) = blobs {
        if !tokio::task::block_in_place(|| store.check_blob(digest))? {
            return Err(Error::verification(
                format!("store blob `{digest}` was damaged; it was removed, not pushed"),
                "build the image again, or push the layout it was written to",
            ));
        }
    }
    upload(s, target, digest, size, &blobs.path(digest)).await?;
    Ok(BlobOutcome::Uploaded)
}

/// What a registry made of a manifest put ([`put_manifest`]).
pub(super) enum Put {
    /// It holds the manifest; whether it answered with an `OCI-Subject`
    /// header.
    Done(bool),
    /// It refused it for naming a blob it does not know.
    BlobsUnknown(Error),
}

impl Put {
    /// Whether the registry indexed the manifest's `subject` itself, or why
    /// it refused the manifest.
    pub(super) fn done(self) -> Result<bool> {
        match self {
            Put::Done(subject) => Ok(subject),
            Put::BlobsUnknown(e) => Err(e),
        }
    }
}

/// Puts a manifest under `tag_or_digest`; the registry must name it by our
/// digest. A refusal for a blob it does not know is told apart from other
/// failures ([`Put::BlobsUnknown`]).
pub(super) async fn put_manifest(
    s: &Session,
    target: &Reference,
    tag_or_digest: &str,
    bytes: &[u8],
    media_type: &str,
    digest: &Digest,
) -> Result<Put> {
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
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        let unknown: Vec<String> = error_codes(&body)
            .into_iter()
            .filter(|(code, _)| code == "MANIFEST_BLOB_UNKNOWN" || code == "BLOB_UNKNOWN")
            .map(|(_, detail)| detail)
            .collect();
        if status == StatusCode::BAD_REQUEST && !unknown.is_empty() {
            return Ok(Put::BlobsUnknown(Error::Registry {
                message: format!(
                    "cannot {what}: the registry answered HTTP 400: MANIFEST_BLOB_UNKNOWN, it does not know {}, which kiln had sent or found there",
                    unknown.join(", "),
                ),
                hint: Some(
                    "another client may be writing the same blobs into this repository: push again; if it keeps failing, check the registry's storage and logs".into(),
                ),
            }));
        }
        return Err(status_error_of(&what, status.as_u16(), &body));
    }
    check_digest(resp.headers(), digest, &what)?;
    Ok(Put::Done(resp.headers().contains_key("oci-subject")))
}

/// Whether `target`'s repository already names manifest `digest` by
/// `reference` (a tag or the digest itself), as a `HEAD` says.
async fn manifest_there(
    s: &Session,
    target: &Reference,
    reference: String,
    media_type: &str,
    digest: &Digest,
) -> Result<bool> {
    let what = format!(
        "look up manifest `{reference}` in `{}/{}`",
        target.registry(),
        target.repository()
    );
    let url = manifest_url(s, target, &reference);
    let resp = s
        .send(&what, || s.client.head(&url).header(ACCEPT, media_type))
        .await?;
    if !resp.status().is_success() {
        return Ok(false);
    }
    Ok(resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Digest>().ok())
        .is_some_and(|named| &named == digest))
}

/// Where a push reads blobs: the store, or an OCI layout directory (which
/// has the same `blobs/sha256/HEX` shape).
enum Blobs<'a> {
    Store(&'a Store),
    Layout(&'a Path),
}

impl Blobs<'_> {
    fn path(&self, d: &Digest) -> PathBuf {
        match self {
            Blobs::Store(store) => store.blob_path(d),
            Blobs::Layout(dir) => dir.join("blobs").join("sha256").join(d.hex()),
        }
    }

    /// A manifest, index or config, verified against its digest.
    fn read(&self, d: &Digest) -> Result<Vec<u8>> {
        match self {
            Blobs::Store(store) => store.read(d),
            Blobs::Layout(dir) => crate::source::layout::Layout::open(dir)?.read_blob(d),
        }
    }

    fn missing(&self, d: &Digest, of: &Digest) -> Error {
        let path = self.path(d);
        match self {
            Blobs::Store(_) => Error::invalid(
                format!("blob `{d}` of manifest `{of}` is not in the store"),
                Some("build or pull the image again".into()),
            ),
            Blobs::Layout(_) => Error::invalid(
                format!(
                    "blob `{d}` of manifest `{of}` is missing: no `{}`",
                    path.display()
                ),
                Some(crate::error::hint::DAMAGED_IMAGE.into()),
            ),
        }
    }

    /// The size of blob `d`, an error naming manifest `of` when it is missing.
    fn size(&self, d: &Digest, of: &Digest) -> Result<u64> {
        let path = self.path(d);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(m.len()),
            Ok(_) => Err(self.missing(d, of)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.missing(d, of)),
            Err(e) => Err(e).at("stat blob", &path),
        }
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
    fn of(store: &Blobs<'_>, top: &Stored) -> Result<PushPlan> {
        let mut plan = PushPlan {
            blobs: Vec::new(),
            manifests: Vec::new(),
        };
        let bytes = store.read(&top.digest)?;
        if top.media_type == INDEX_MEDIA_TYPE {
            let index = oci::parse_index(&bytes, &format!("index `{}`", top.digest))?;
            for child in index.manifests {
                let d = child.digest;
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

    fn add_manifest_blobs(
        &mut self,
        store: &Blobs<'_>,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<()> {
        let manifest = oci::parse_manifest(bytes, &format!("manifest `{digest}`"))?;
        for desc in manifest.blobs() {
            let d = desc.digest.clone();
            let size = store.size(&d, digest)?;
            self.blobs.push((d, size));
        }
        Ok(())
    }
}
