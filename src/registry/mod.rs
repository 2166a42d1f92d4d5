//! Stage 7, distribute: push and pull images by digest (oci-client).
//!
//! Everything goes through the store: a push reads blobs from it, a pull
//! writes verified blobs into it before any output is written. Pushes send
//! blobs first (skipping those the registry has, mounting those another
//! repository of the same registry has), then manifests by digest, then
//! tags. Transient failures (connection errors, 429, 5xx) are retried with
//! backoff, a bounded number of times; blobs that already arrived are not
//! sent again on a re-run.

pub mod auth;

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde_json::Value;

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::image::{Stored, INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};
use crate::recipe::Platform;
use crate::store::Store;

pub use auth::Credentials;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Registries (`host[:port]`) reached over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
    /// Extra CA certificates (PEM files) to trust.
    pub ca_certs: Vec<PathBuf>,
    /// Credentials that override the auth files (for the registries pushed to or pulled from).
    pub credentials: Option<Credentials>,
    /// How many blobs move at once (default 4).
    pub jobs: usize,
    /// How many times a transient failure is retried (default 5).
    pub retries: u32,
}

/// What a push did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PushReport {
    /// The digest pushed.
    pub digest: String,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs the registry already had.
    pub skipped: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
    /// Bytes uploaded.
    pub bytes: u64,
}

/// A registry client.
pub struct Registry {
    client: Client,
    /// Uploads small blobs in one request (POST then PUT), which a flaky
    /// network interrupts less often than a chunked session.
    small: Client,
    options: Options,
    runtime: tokio::runtime::Runtime,
}

/// Parses `REGISTRY/REPO[:TAG][@sha256:…]`.
pub fn parse_reference(text: &str) -> Result<Reference> {
    text.parse::<Reference>().map_err(|e| {
        Error::invalid(
            format!("`{text}` is not an image reference: {e}"),
            Some("write `REGISTRY/REPOSITORY:TAG` or `REGISTRY/REPOSITORY@sha256:…`, e.g. `127.0.0.1:5000/app:1.0`".into()),
        )
    })
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Registry {
    /// A client for the registries named in `references` (loopback ones over plain HTTP).
    pub fn new(options: Options, references: &[&Reference]) -> Result<Registry> {
        let mut plain: Vec<String> = options.insecure.clone();
        for r in references {
            if is_loopback(r.registry()) {
                plain.push(r.registry().to_string());
            }
        }
        let mut certs = Vec::new();
        for path in &options.ca_certs {
            let data = std::fs::read(path).at("read CA certificate", path)?;
            certs.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let config = |monolithic: bool| ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain.clone()),
            extra_root_certificates: certs.clone(),
            max_concurrent_upload: options.jobs.max(1),
            max_concurrent_download: options.jobs.max(1),
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(300)),
            use_monolithic_push: monolithic,
            ..Default::default()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the network runtime", PathBuf::from("tokio"), e))?;
        Ok(Registry {
            client: Client::new(config(false)),
            small: Client::new(config(true)),
            options,
            runtime,
        })
    }

    fn auth(&self, r: &Reference) -> Result<RegistryAuth> {
        if let Some(c) = &self.options.credentials {
            return Ok(RegistryAuth::Basic(c.username.clone(), c.password.clone()));
        }
        Ok(match auth::lookup(r.registry())? {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        })
    }

    fn jobs(&self) -> usize {
        if self.options.jobs == 0 {
            4
        } else {
            self.options.jobs
        }
    }

    fn retries(&self) -> u32 {
        if self.options.retries == 0 {
            5
        } else {
            self.options.retries
        }
    }

    /// Checks that the credentials for `r` are accepted for `op`.
    pub fn login_check(&self, r: &Reference) -> Result<()> {
        let auth = self.auth(r)?;
        let what = format!("log in to `{}`", r.registry());
        self.runtime.block_on(async {
            self.client
                .auth(r, &auth, RegistryOperation::Pull)
                .await
                .map_err(|e| registry_error(e, &what))?;
            // With basic auth nothing is checked until a request is made:
            // ask for a manifest; "not found" means the credentials passed.
            match self.client.fetch_manifest_digest(r, &auth).await {
                Ok(_) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(registry_error(e, &what)),
            }
        })
    }

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
        self.retry(&what, || {
            let path = path.clone();
            let d = d.clone();
            async move {
                let file = tokio::fs::File::open(&path).await?;
                let stream = tokio_reader_stream(file);
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
        .await?;
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
                let descs = std::iter::once(&doc["config"])
                    .chain(doc["layers"].as_array().into_iter().flatten());
                for desc in descs {
                    let digest: Digest = desc["digest"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| {
                            Error::invalid(
                                format!(
                                    "manifest `{}` has a descriptor without a valid digest",
                                    m.digest
                                ),
                                None,
                            )
                        })?;
                    blobs.push((digest, desc["size"].as_u64().unwrap_or(0)));
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
        if store.contains(digest) {
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

    async fn retry<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, OciDistributionError>>,
    {
        let mut attempt = 0;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if is_transient(&e) && attempt < self.retries() => {
                    backoff(attempt).await;
                    attempt += 1;
                }
                Err(e) => return Err(registry_error(e, what)),
            }
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
        let descs =
            std::iter::once(&doc["config"]).chain(doc["layers"].as_array().into_iter().flatten());
        for desc in descs {
            let d: Digest = desc["digest"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    Error::invalid(
                        format!("manifest `{digest}` has an invalid descriptor"),
                        None,
                    )
                })?;
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

fn tokio_reader_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::result::Result<bytes::Bytes, OciDistributionError>>
       + Send
       + 'static {
    use tokio::io::AsyncReadExt;
    futures_util::stream::try_unfold(file, |mut file| async move {
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
            return Ok(None);
        }
        buf.truncate(filled);
        Ok(Some((bytes::Bytes::from(buf), file)))
    })
}

fn is_transient(e: &OciDistributionError) -> bool {
    if digest_error(e).is_some() {
        return false;
    }
    match e {
        OciDistributionError::RequestError(r) => match r.status() {
            Some(status) => status.as_u16() == 429 || status.is_server_error(),
            None => !r.is_builder() && !r.is_redirect(),
        },
        OciDistributionError::ServerError { code, .. } => *code == 429 || *code >= 500,
        OciDistributionError::IoError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| format!("{:?}", e.code).contains("TooManyRequests")),
        _ => false,
    }
}

fn is_not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            let code = format!("{:?}", e.code);
            code.contains("ManifestUnknown") || code.contains("NameUnknown")
        }),
        _ => false,
    }
}

/// For a blob whose content did not match its digest, the digest it had.
fn digest_error(e: &OciDistributionError) -> Option<String> {
    use oci_client::errors::DigestError;
    let inner: &DigestError = match e {
        OciDistributionError::DigestError(d) => d,
        OciDistributionError::IoError(io) => io.get_ref()?.downcast_ref::<DigestError>()?,
        _ => return None,
    };
    match inner {
        DigestError::VerificationError { actual, .. } => Some(actual.to_string()),
        _ => None,
    }
}

async fn backoff(attempt: u32) {
    let ms = (200u64 << attempt.min(5)).min(5_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

const CREDENTIALS_HINT: &str = "check the credentials: `kiln login REGISTRY -u USER --password-stdin`, or pass `--username USER --password-stdin`";

/// Turns an oci-client error into kiln's, naming what was being done.
fn registry_error(e: OciDistributionError, what: &str) -> Error {
    match e {
        OciDistributionError::AuthenticationFailure(_) | OciDistributionError::UnauthorizedError { .. } => {
            Error::Registry {
                message: format!("cannot {what}: the registry refused the credentials (HTTP 401)"),
                hint: Some(CREDENTIALS_HINT.into()),
            }
        }
        OciDistributionError::ServerError { code, message, .. } => Error::Registry {
            message: format!("cannot {what}: the registry answered HTTP {code}: {}", message.trim()),
            hint: match code {
                401 => Some(CREDENTIALS_HINT.into()),
                403 => Some("check that the user may access this repository".into()),
                404 => Some("check the repository name and digest".into()),
                _ => None,
            },
        },
        OciDistributionError::RequestError(r) if r.status().is_some_and(|s| s.as_u16() == 401) => Error::Registry {
            message: format!("cannot {what}: the registry refused the credentials (HTTP 401)"),
            hint: Some(CREDENTIALS_HINT.into()),
        },
        OciDistributionError::RequestError(r) if r.status().is_some() => Error::Registry {
            message: format!(
                "cannot {what}: the registry answered HTTP {}",
                r.status().expect("checked").as_u16()
            ),
            hint: match r.status().expect("checked").as_u16() {
                403 => Some("check that the user may access this repository".into()),
                404 => Some("check the repository name and digest".into()),
                _ => None,
            },
        },
        OciDistributionError::RequestError(r) => Error::Registry {
            message: format!("cannot {what}: {}", crate::build::render_chain(&r)),
            hint: Some("check that the registry is running and reachable; plain HTTP is used only for loopback and `--insecure-registry` hosts".into()),
        },
        other => Error::Registry {
            message: format!("cannot {what}: {other}"),
            hint: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        for yes in [
            "127.0.0.1:5000",
            "localhost",
            "localhost:80",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(yes), "{yes}");
        }
        for no in [
            "registry.example:5000",
            "10.0.0.1:5000",
            "localhost.example",
        ] {
            assert!(!is_loopback(no), "{no}");
        }
    }
}
