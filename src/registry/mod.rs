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
mod pull;
mod push;

use std::path::PathBuf;
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use crate::error::{Error, IoContext, Result};

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
    if let Some(shown) = crate::error::redact_userinfo(text) {
        return Err(Error::invalid(
            format!("`{shown}` carries credentials in the reference"),
            Some("remove `USER:PASSWORD@` and log in with `kiln login REGISTRY --username USER --password-stdin` (or a docker credential helper)".into()),
        ));
    }
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
