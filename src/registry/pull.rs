//! Pulls: every manifest and blob into the store, verified against its
//! digest before anything is written elsewhere.

use std::io::Write;
use std::time::Instant;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::Reference;
use reqwest::header::{ACCEPT, RANGE};
use reqwest::StatusCode;

use super::http::{status_error, Attempt, Session};
use super::{blob_url, manifest_url, Access, Registry};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{Stored, INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};
use crate::oci::{self, Document};
use crate::progress::{blob_name, Kind};
use crate::recipe::Platform;
use crate::source::layout::matches_platform;
use crate::store::Store;

/// No manifest or index kiln reads is larger.
const MAX_MANIFEST: u64 = 4 << 20;

impl Registry {
    /// Like [`Registry::pull`], but `None` when the registry has no such manifest.
    pub fn pull_if_present(&self, store: &Store, source: &Reference) -> Result<Option<Stored>> {
        self.pull_if_present_checked(store, source, &|_| Ok(()))
    }

    /// Like [`Registry::pull_checked`], but `None` when the registry has no
    /// such manifest.
    pub fn pull_if_present_checked(
        &self,
        store: &Store,
        source: &Reference,
        check: &dyn Fn(&Document) -> Result<()>,
    ) -> Result<Option<Stored>> {
        if !self.has_manifest(source)? {
            return Ok(None);
        }
        self.pull_checked(store, source, None, check).map(Some)
    }

    /// Whether the registry has a manifest at `source` (a `HEAD`).
    pub fn has_manifest(&self, source: &Reference) -> Result<bool> {
        self.runtime.block_on(async {
            let s = self.session(source, Access::Pull, &[]).await?;
            let what = format!("look up `{}`", source.whole());
            let url = manifest_url(&s, source, &tag_or_digest(source));
            let resp = s
                .send(&what, || s.client.head(&url).header(ACCEPT, accept()))
                .await?;
            match resp.status() {
                StatusCode::NOT_FOUND => Ok(false),
                status if status.is_success() => Ok(true),
                _ => Err(status_error(&what, resp).await),
            }
        })
    }

    /// The digest `source`'s tag points at now.
    pub fn resolve(&self, source: &Reference) -> Result<Digest> {
        self.runtime.block_on(async {
            let s = self.session(source, Access::Pull, &[]).await?;
            let (_, digest) = fetch_manifest(&s, source, None).await?;
            Ok(digest)
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
        self.pull_checked(store, source, platforms, &|_| Ok(()))
    }

    /// As [`Registry::pull`], asking `check` about the top manifest or
    /// index before anything it names is fetched: its error stops the pull
    /// (so a document naming a blob bigger than its kind may be is refused
    /// before that blob is downloaded).
    pub fn pull_checked(
        &self,
        store: &Store,
        source: &Reference,
        platforms: Option<&[Platform]>,
        check: &dyn Fn(&Document) -> Result<()>,
    ) -> Result<Stored> {
        self.runtime.block_on(async {
            let s = self.session(source, Access::Pull, &[]).await?;
            let (top, doc) = pull_manifest(&s, store, source, None).await?;
            check(&doc)?;
            let mut blobs = Vec::new();
            let mut manifests = vec![doc];
            if let Document::Index(index) = &manifests[0] {
                let mut children = Vec::new();
                for child in &index.manifests {
                    let wanted =
                        platforms.is_none_or(|ps| ps.iter().any(|p| matches_platform(child, p)));
                    if !wanted {
                        continue;
                    }
                    let r = source.clone_with_digest(child.digest.to_string());
                    children.push(pull_manifest(&s, store, &r, Some(&child.digest)).await?.1);
                }
                manifests.extend(children);
            }
            for m in &manifests {
                if let Document::Manifest(m) = m {
                    blobs.extend(m.blobs().map(|d| (d.digest.clone(), d.size)));
                }
            }
            blobs.sort();
            blobs.dedup();
            futures_util::stream::iter(blobs.iter())
                .map(|(digest, size)| pull_blob(&s, store, source, digest, *size))
                .buffer_unordered(self.jobs())
                .try_collect::<Vec<()>>()
                .await?;
            Ok(top)
        })
    }
}

fn accept() -> String {
    format!("{MANIFEST_MEDIA_TYPE}, {INDEX_MEDIA_TYPE}")
}

fn tag_or_digest(r: &Reference) -> String {
    match (r.digest(), r.tag()) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.to_string(),
        (None, None) => "latest".to_string(),
    }
}

/// A manifest's bytes and digest, checked against `expected` and against the
/// digest the registry names it by (`Docker-Content-Digest`): any
/// difference is a digest mismatch, never retried.
pub(super) async fn fetch_manifest(
    s: &Session,
    r: &Reference,
    expected: Option<&Digest>,
) -> Result<(Vec<u8>, Digest)> {
    let what = format!("pull manifest `{}`", r.whole());
    let expected = match expected {
        Some(e) => Some(e.clone()),
        None => r
            .digest()
            .map(|e| {
                e.parse::<Digest>().map_err(|e| {
                    Error::invalid(format!("{e}"), Some(crate::error::hint::DIGEST.into()))
                })
            })
            .transpose()?,
    };
    let at = match &expected {
        Some(d) => d.to_string(),
        None => tag_or_digest(r),
    };
    let url = manifest_url(s, r, &at);
    let make = || s.client.get(&url).header(ACCEPT, accept());
    let started = Instant::now();
    let mut attempt = 0;
    let (headers, bytes) = loop {
        // A cut answer is a transient failure like a reset, so the body is
        // read inside the retry.
        let failure = match s.send(&what, make).await? {
            resp if resp.status().is_success() => {
                if resp.content_length().is_some_and(|n| n > MAX_MANIFEST) {
                    return Err(Error::Registry {
                        message: format!(
                            "cannot {what}: the manifest is larger than {MAX_MANIFEST} bytes"
                        ),
                        hint: Some("check that the reference names an image or an index".into()),
                    });
                }
                let headers = resp.headers().clone();
                match resp.bytes().await {
                    Ok(b) => break (headers, b),
                    Err(e) => crate::error::render_chain(&e.without_url()),
                }
            }
            resp => return Err(status_error(&what, resp).await),
        };
        s.pause(&what, &mut attempt, started, failure, None).await?;
    };
    let actual = Digest::of(&bytes);
    if let Some(expected) = expected {
        if actual != expected {
            return Err(Error::DigestMismatch {
                what,
                expected: Box::new(expected),
                actual: Box::new(actual),
            });
        }
    }
    if let Some(named) = headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Digest>().ok())
    {
        if named != actual {
            return Err(Error::DigestMismatch {
                what: format!("{what} (the digest the registry names it by)"),
                expected: Box::new(named),
                actual: Box::new(actual),
            });
        }
    }
    Ok((bytes.to_vec(), actual))
}

/// Fetches a manifest or an index (checked against `expected`, or the
/// reference's digest), parses it and stores its bytes as they came.
async fn pull_manifest(
    s: &Session,
    store: &Store,
    r: &Reference,
    expected: Option<&Digest>,
) -> Result<(Stored, Document)> {
    let (bytes, actual) = fetch_manifest(s, r, expected).await?;
    let doc = oci::parse(&bytes, &format!("manifest `{actual}` from `{}`", r.whole()))?;
    store.put_bytes(&bytes)?;
    let stored = Stored {
        digest: actual,
        size: bytes.len() as u64,
        media_type: doc.media_type(),
    };
    Ok((stored, doc))
}

/// Downloads blob `digest` into the store. An answer cut short resumes with
/// a `Range` request from the bytes already written (or starts over when
/// the registry ignores `Range`); the whole blob is verified before it is
/// stored, and a blob longer than its descriptor says is refused.
async fn pull_blob(
    s: &Session,
    store: &Store,
    source: &Reference,
    digest: &Digest,
    size: u64,
) -> Result<()> {
    if tokio::task::block_in_place(|| store.check_blob(digest))? {
        return Ok(());
    }
    let what = format!("pull blob `{digest}` from `{}`", source.whole());
    let url = blob_url(s, source, &digest.to_string());
    // The bounds apply to a stall: both start again when bytes arrive.
    let mut started = Instant::now();
    let mut attempt = 0;
    let mut writer = store.layer_writer()?;
    let mut written: u64 = 0;
    let meter = s.progress.start(Kind::Pull, &blob_name(digest), Some(size));
    loop {
        let from = written;
        let make = || {
            let req = s.client.get(&url);
            if from > 0 {
                req.header(RANGE, format!("bytes={from}-"))
            } else {
                req
            }
        };
        let (why, retry_after) = match s.attempt(&make).await {
            Attempt::Answer(resp)
                if resp.status() == StatusCode::OK
                    || (from > 0 && resp.status() == StatusCode::PARTIAL_CONTENT) =>
            {
                if resp.status() == StatusCode::OK && written > 0 {
                    writer = store.layer_writer()?;
                    written = 0;
                }
                let mut resp = resp;
                let mut cut = None;
                loop {
                    match resp.chunk().await {
                        Ok(Some(chunk)) => {
                            written += chunk.len() as u64;
                            if written > size {
                                return Err(Error::verification(
                                    format!("digest mismatch for {what}: the registry sent more than the {size} bytes of its descriptor"),
                                    "the registry serves other content under this digest; pull from another mirror or push the image again",
                                ));
                            }
                            writer
                                .write_all(&chunk)
                                .map_err(|e| Error::io("write", store.blob_path(digest), e))?;
                            meter.set(written);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            cut = Some(crate::error::render_chain(&e.without_url()));
                            break;
                        }
                    }
                }
                match cut {
                    None => {
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
                        meter.finish();
                        return Ok(());
                    }
                    Some(why) => {
                        if written > from {
                            attempt = 0;
                            started = Instant::now();
                        }
                        (why, None)
                    }
                }
            }
            Attempt::Answer(resp) if resp.status() == StatusCode::UNAUTHORIZED => {
                // An expired token: `send` asks for a new one.
                let resp = s.send(&what, || s.client.head(&url)).await?;
                if !resp.status().is_success() {
                    return Err(status_error(&what, resp).await);
                }
                continue;
            }
            Attempt::Answer(resp) => return Err(status_error(&what, resp).await),
            Attempt::Transient { why, retry_after } => (why, retry_after),
        };
        s.pause(&what, &mut attempt, started, why, retry_after)
            .await?;
    }
}
