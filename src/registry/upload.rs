//! Blob uploads that survive a bad network: a session (`POST`), the whole
//! blob streamed in one `PATCH` (verified against its digest as it goes: the
//! last bytes are held back until the hash matches, so a damaged blob never
//! reaches the registry whole), then `PUT ?digest=`. When that `PATCH`
//! fails, the rest goes in chunks (`PATCH` with `Content-Range`), and the
//! file is hashed again before the `PUT`. When a chunk fails,
//! the session's status (`GET` on its `Location`) says how many bytes the
//! registry holds (`Range: 0-LAST`), and the upload resumes from there; only
//! a session the registry no longer knows (404, or refused as invalid) is
//! started again. When the final `PUT`'s answer is lost and the session is
//! gone with it, the blob's presence decides whether it went through.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest as _, Sha256};

use oci_client::Reference;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::blob_url;
use super::http::{status_error, Attempt, Session};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::progress::{blob_name, Kind, Meter};

/// Bytes per `PATCH`. Larger chunks mean fewer requests to lose; smaller
/// ones less to send again when a registry drops a session.
pub(super) const CHUNK: u64 = 8 << 20;

/// Bytes per read of a streamed blob.
const READ: usize = 1 << 20;

/// Where an upload session stands.
struct Upload {
    /// The session's URL (the registry's latest `Location`).
    location: reqwest::Url,
    /// Bytes the registry holds.
    offset: u64,
}

/// Uploads blob `digest` (`size` bytes, the file at `path`) to `r`'s repository.
pub(super) async fn upload(
    s: &Session,
    r: &Reference,
    digest: &Digest,
    size: u64,
    path: &Path,
) -> Result<()> {
    let what = format!("push blob `{digest}` to `{}`", r.whole());
    let mut file = tokio::fs::File::open(path).await.at("open", path)?;
    // Failures in a row since the last chunk that went through, and when
    // that was: the bounds apply to a stall, not to a long upload.
    let mut started = Instant::now();
    let mut failures = 0;
    let mut upload: Option<Upload> = None;
    // Sessions started: progress does not reset this, so a registry that
    // keeps dropping sessions cannot keep kiln busy for ever.
    let mut sessions = 0;
    // Whether the bytes sent were checked against `digest`: by the
    // streamed `PATCH`, or by hashing the file before the `PUT`.
    let mut verified = false;
    // The first `PATCH` of a session at offset 0 streams the whole blob.
    let mut streamed = false;
    let meter = Arc::new(s.progress.start(Kind::Push, &blob_name(digest), Some(size)));
    loop {
        let mut up = match upload.take() {
            Some(up) => up,
            None if sessions > 2 * s.policy.attempts => {
                return Err(Error::Registry {
                    message: format!(
                        "cannot {what}: the registry dropped {sessions} upload sessions"
                    ),
                    hint: Some(
                        "check the registry's health and its upload purging settings".into(),
                    ),
                })
            }
            None => {
                sessions += 1;
                start(s, r, &what).await?
            }
        };
        if up.offset == 0 && !streamed && size > 0 {
            streamed = true;
            let mismatch = Arc::new(Mutex::new(None));
            let url = up.location.clone();
            let range = format!("0-{}", size - 1);
            let file = std::fs::File::open(path).at("open", path)?;
            let body = verified_stream(file, digest.clone(), size, mismatch.clone(), meter.clone());
            // `attempt` builds the request once.
            let body = Mutex::new(Some(body));
            let make = || {
                let b = body
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .unwrap_or_else(|| reqwest::Body::from(Vec::new()));
                s.client
                    .patch(url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_RANGE, &range)
                    .header(CONTENT_LENGTH, size)
                    .body(b)
            };
            let answer = s.attempt(&make).await;
            let actual = mismatch.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(actual) = actual {
                abandon(s, &up).await;
                return Err(damaged(path, digest, actual));
            }
            let failure = match answer {
                Attempt::Answer(resp) if resp.status() == StatusCode::ACCEPTED => {
                    up.location = location(&up.location, resp.headers()).unwrap_or(up.location);
                    up.offset = held(resp.headers()).unwrap_or(size);
                    verified = up.offset == size;
                    failures = 0;
                    started = Instant::now();
                    None
                }
                Attempt::Answer(resp) => Some((format!("HTTP {}", resp.status().as_u16()), None)),
                Attempt::Transient { why, retry_after } => Some((why, retry_after)),
            };
            if let Some((why, retry_after)) = failure {
                s.pause(&what, &mut failures, started, why, retry_after)
                    .await?;
                match status(s, &up, &what).await? {
                    Some(now) => up = now,
                    None => continue, // the session is gone: start another
                }
            }
        }
        // Chunks, from wherever the registry stands.
        while up.offset < size {
            let end = (up.offset + CHUNK).min(size);
            let mut chunk = vec![0u8; (end - up.offset) as usize];
            file.seek(std::io::SeekFrom::Start(up.offset))
                .await
                .at("seek in", path)?;
            file.read_exact(&mut chunk).await.at("read", path)?;
            let chunk = bytes::Bytes::from(chunk);
            let url = up.location.clone();
            let range = format!("{}-{}", up.offset, end - 1);
            let make = || {
                s.client
                    .patch(url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_RANGE, &range)
                    .header(CONTENT_LENGTH, chunk.len())
                    .body(chunk.clone())
            };
            let failure = match s.attempt(&make).await {
                Attempt::Answer(resp) if resp.status() == StatusCode::ACCEPTED => {
                    up.location = location(&up.location, resp.headers()).unwrap_or(up.location);
                    up.offset = held(resp.headers()).unwrap_or(end);
                    meter.set(up.offset);
                    failures = 0;
                    started = Instant::now();
                    continue;
                }
                Attempt::Answer(resp) => (format!("HTTP {}", resp.status().as_u16()), None),
                Attempt::Transient { why, retry_after } => (why, retry_after),
            };
            s.pause(&what, &mut failures, started, failure.0, failure.1)
                .await?;
            match status(s, &up, &what).await? {
                Some(now) => up = now,
                None => break,
            }
        }
        if up.offset < size {
            continue; // the session is gone: start another
        }
        if !verified {
            // Chunks were read without hashing them: kiln does not send a
            // blob as good (the `PUT`) without knowing it is.
            let file = std::fs::File::open(path).at("open", path)?;
            let (actual, _) = tokio::task::block_in_place(|| {
                crate::digest::digest_reader(std::io::BufReader::with_capacity(READ, file))
            })
            .at("read", path)?;
            if actual != *digest {
                abandon(s, &up).await;
                return Err(damaged(path, digest, actual));
            }
            verified = true;
        }
        // Done: the registry checks the digest.
        let mut url = up.location.clone();
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let make = || s.client.put(url.clone()).header(CONTENT_LENGTH, 0);
        let failure = match s.attempt(&make).await {
            Attempt::Answer(resp) if resp.status() == StatusCode::CREATED => {
                return check_digest(resp.headers(), digest, &what).map(|()| meter.finish());
            }
            Attempt::Answer(resp) if resp.status() == StatusCode::BAD_REQUEST => {
                let body = resp.text().await.unwrap_or_default();
                if body.contains("DIGEST_INVALID") {
                    // What the registry received is not this blob.
                    return Err(Error::verification(
                        format!("digest mismatch for {what}: the registry says the bytes it received do not hash to it"),
                        "push again; if it persists, something between kiln and the registry changes the data, or the store's copy of the blob is damaged (remove it from the store and build again)",
                    ));
                }
                (format!("HTTP 400 {body}"), None)
            }
            Attempt::Answer(resp) => (format!("HTTP {}", resp.status().as_u16()), None),
            Attempt::Transient { why, retry_after } => (why, retry_after),
        };
        s.pause(&what, &mut failures, started, failure.0, failure.1)
            .await?;
        // A session the registry still knows did not complete; one it no
        // longer knows may have: the answer can be lost after the registry
        // took the blob.
        upload = status(s, &up, &what).await?;
        if upload.is_none() && exists(s, r, digest, &what).await? {
            meter.finish();
            return Ok(());
        }
    }
}

/// The body of a streamed `PATCH`: the file's bytes, hashed as they are
/// read. The last read is held back until the end of the file: when the
/// bytes do not hash to `digest` (or are not `size` long), the stream fails
/// instead of sending it (the request is cut short and the registry never
/// holds the whole blob) and `mismatch` gets the digest they do hash to.
fn verified_stream(
    file: std::fs::File,
    digest: Digest,
    size: u64,
    mismatch: Arc<Mutex<Option<Digest>>>,
    meter: Arc<Meter>,
) -> reqwest::Body {
    struct State {
        file: tokio::fs::File,
        hasher: Option<Sha256>,
        pending: Option<bytes::Bytes>,
        read: u64,
    }
    let state = State {
        file: tokio::fs::File::from_std(file),
        hasher: Some(Sha256::new()),
        pending: None,
        read: 0,
    };
    let stream = futures_util::stream::unfold(state, move |mut st| {
        let digest = digest.clone();
        let mismatch = mismatch.clone();
        let meter = meter.clone();
        async move {
            let hasher = st.hasher.as_mut()?;
            loop {
                let mut buf = vec![0u8; READ];
                let mut n = 0;
                while n < READ {
                    match st.file.read(&mut buf[n..]).await {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) => {
                            st.hasher = None;
                            return Some((Err(e), st));
                        }
                    }
                }
                if n > 0 {
                    buf.truncate(n);
                    hasher.update(&buf);
                    st.read += n as u64;
                    meter.set(st.read);
                    if st.read <= size {
                        if let Some(prev) = st.pending.replace(bytes::Bytes::from(buf)) {
                            return Some((Ok(prev), st));
                        }
                        continue;
                    }
                }
                // The end of the file (or more bytes than the blob has).
                let actual = Digest::from_hasher(st.hasher.take().expect("still hashing"));
                if actual == digest && st.read == size {
                    return st.pending.take().map(|last| (Ok(last), st));
                }
                *mismatch.lock().unwrap_or_else(|e| e.into_inner()) = Some(actual);
                let e = std::io::Error::other("the blob does not match its digest");
                return Some((Err(e), st));
            }
        }
    });
    reqwest::Body::wrap_stream(stream)
}

/// The error for a blob whose file at `path` hashes to `actual`.
fn damaged(path: &Path, digest: &Digest, actual: Digest) -> Error {
    Error::DigestMismatch {
        what: format!("`{}` (not pushed)", path.display()),
        expected: Box::new(digest.clone()),
        actual: Box::new(actual),
    }
}

/// Cancels an upload session (best effort: the registry purges stale ones anyway).
async fn abandon(s: &Session, up: &Upload) {
    let url = up.location.clone();
    let _ = s.attempt(&|| s.client.delete(url.clone())).await;
}

/// Starts an upload session.
async fn start(s: &Session, r: &Reference, what: &str) -> Result<Upload> {
    let url = format!("{}/v2/{}/blobs/uploads/", s.base, r.repository());
    let resp = s
        .send(what, || s.client.post(&url).header(CONTENT_LENGTH, 0))
        .await?;
    if resp.status() != StatusCode::ACCEPTED {
        return Err(status_error(what, resp).await);
    }
    let base = reqwest::Url::parse(&url).expect("a valid URL");
    let location = location(&base, resp.headers()).ok_or_else(|| Error::Registry {
        message: format!("cannot {what}: the registry started an upload without a `Location`"),
        hint: Some(crate::error::hint::NOT_OCI_REGISTRY.into()),
    })?;
    Ok(Upload {
        location,
        offset: 0,
    })
}

/// Where the session stands now, or `None` when the registry no longer
/// answers for it (404). Distribution signs the offset into its
/// `Location`s: after a chunk arrived whose answer was lost, the `Location`
/// kiln holds is refused (404 `BLOB_UPLOAD_INVALID`) and the session cannot
/// be resumed by us; some registries answer 400 for the same.
async fn status(s: &Session, up: &Upload, what: &str) -> Result<Option<Upload>> {
    let url = up.location.clone();
    let resp = s.send(what, || s.client.get(url.clone())).await?;
    match resp.status() {
        StatusCode::NO_CONTENT | StatusCode::OK | StatusCode::ACCEPTED => Ok(Some(Upload {
            location: location(&up.location, resp.headers()).unwrap_or(up.location.clone()),
            offset: held(resp.headers()).unwrap_or(0),
        })),
        StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => Ok(None),
        _ => Err(status_error(what, resp).await),
    }
}

/// Whether `r`'s repository has blob `digest`.
pub(super) async fn exists(
    s: &Session,
    r: &Reference,
    digest: &Digest,
    what: &str,
) -> Result<bool> {
    let url = blob_url(s, r, &digest.to_string());
    let resp = s.send(what, || s.client.head(&url)).await?;
    match resp.status() {
        StatusCode::OK => Ok(true),
        StatusCode::NOT_FOUND => Ok(false),
        _ => Err(status_error(what, resp).await),
    }
}

/// The registry's `Location`, resolved against `base`.
fn location(base: &reqwest::Url, headers: &reqwest::header::HeaderMap) -> Option<reqwest::Url> {
    let text = headers.get(LOCATION)?.to_str().ok()?;
    base.join(text).ok()
}

/// The bytes a session holds, from `Range: 0-LAST` (distribution writes
/// `0-0` for an empty session; a chunk is never one byte, so it means 0).
fn held(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let text = headers.get(RANGE)?.to_str().ok()?;
    let text = text.trim().trim_start_matches("bytes=");
    let (_, last) = text.split_once('-')?;
    let last: u64 = last.trim().parse().ok()?;
    Some(if last == 0 { 0 } else { last + 1 })
}

/// Fails when the registry names the blob by another digest than ours.
pub(super) fn check_digest(
    headers: &reqwest::header::HeaderMap,
    digest: &Digest,
    what: &str,
) -> Result<()> {
    let Some(named) = headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    match named.parse::<Digest>() {
        Ok(actual) if &actual == digest => Ok(()),
        Ok(actual) => Err(Error::DigestMismatch {
            what: what.to_string(),
            expected: Box::new(digest.clone()),
            actual: Box::new(actual),
        }),
        Err(_) => Err(Error::Registry {
            message: format!("cannot {what}: the registry names it `{named}`, not a digest"),
            hint: Some(crate::error::hint::NOT_OCI_REGISTRY.into()),
        }),
    }
}
