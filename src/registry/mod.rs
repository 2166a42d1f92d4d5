//! Stage 7, distribute: push and pull images by digest, speaking the
//! distribution API over reqwest (`http`); oci-client parses references.
//!
//! Everything goes through the store: a push reads blobs from it, a pull
//! writes verified blobs into it before any output is written. Pushes send
//! blobs first (skipping those the registry has, mounting those another
//! repository of the same registry has), then manifests by digest, then
//! tags. Transient failures (connection errors, cut answers, 408, 429, 5xx)
//! are retried after `Retry-After` or a backoff, within a bounded number of
//! attempts and time; an interrupted upload resumes from the offset the
//! registry reports (`upload`); blobs that already arrived are not sent
//! again on a re-run. Every digest mismatch is [`Error::DigestMismatch`].

pub mod auth;
mod http;
mod pull;
mod push;
mod referrers;
mod upload;

use std::path::PathBuf;
use std::time::Duration;

pub use oci_client::Reference;

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
    /// How many times a transient failure is retried (default 7).
    pub retries: u32,
    /// Where the byte progress of blob pulls and pushes goes.
    pub progress: crate::progress::Progress,
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
    client: reqwest::Client,
    /// Registries reached over plain HTTP.
    plain: Vec<String>,
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
    if let Some(r) = plain_reference(text) {
        return Ok(r);
    }
    text.parse::<Reference>().map_err(|e| {
        Error::unusable(format!("`{text}` is not an image reference"), e, "write `REGISTRY/REPOSITORY:TAG` or `REGISTRY/REPOSITORY@sha256:…`, e.g. `127.0.0.1:5000/app:1.0`")
    })
}

/// The common form `HOST[:PORT]/PATH[:TAG][@sha256:HEX]` (a host with a dot
/// or a port, or `localhost`; not Docker Hub), read without oci-client's
/// reference regex, whose compilation (Unicode `\w{0,127}`) costs 60 ms of
/// CPU, more than a whole push that finds everything in place (issue 12).
/// `None` for anything else, which the regex then reads; the unit test
/// checks that both agree.
fn plain_reference(text: &str) -> Option<Reference> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let (rest, digest) = match text.split_once('@') {
        Some((rest, d)) => {
            let hex = d.strip_prefix("sha256:")?;
            let ok = hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit());
            (rest, Some(d.to_string()).filter(|_| ok)?.into())
        }
        None => (text, None),
    };
    let (domain, path) = rest.split_once('/')?;
    let (path, tag) = match path.rsplit_once(':') {
        Some((p, t)) => {
            let mut chars = t.chars();
            let first = chars.next()?;
            let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
            let ok =
                t.len() <= 128 && word(first) && chars.all(|c| word(c) || c == '.' || c == '-');
            (p, Some(t.to_string()).filter(|_| ok)?.into())
        }
        None => (path, None),
    };
    let (host, port) = match domain.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (domain, None),
    };
    if !(domain.contains('.') || port.is_some() || domain == "localhost")
        || matches!(host, "docker.io" | "index.docker.io")
        || port.is_some_and(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()))
        || !host.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        || path.len() > 255
    {
        return None;
    }
    for component in path.split('/') {
        if !component.starts_with(alnum) || !component.ends_with(alnum) {
            return None;
        }
        // Separators between alphanumeric runs: `.`, `_`, `__` or dashes.
        for sep in component.split(alnum).filter(|s| !s.is_empty()) {
            if !(matches!(sep, "." | "_" | "__") || sep.chars().all(|c| c == '-')) {
                return None;
            }
        }
    }
    let (registry, repository) = (domain.to_string(), path.to_string());
    Some(match (tag, digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, repository, t, d),
        (None, Some(d)) => Reference::with_digest(registry, repository, d),
        (Some(t), None) => Reference::with_tag(registry, repository, t),
        (None, None) => Reference::with_tag(registry, repository, "latest".into()),
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

/// What an operation does to a repository, for a token's scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Pull,
    Push,
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
            let cert = reqwest::Certificate::from_pem(&data).map_err(|e| {
                Error::unusable(
                    format!("`{}` is not a PEM certificate", path.display()),
                    e,
                    "give `--ca-cert` a PEM file (`-----BEGIN CERTIFICATE-----`)",
                )
            })?;
            certs.push(cert);
        }
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(30))
                .read_timeout(Duration::from_secs(300))
                .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        };
        // A machine without system CA certificates (a minimal container)
        // cannot build the platform verifier. Plain-HTTP registries still
        // work then, and HTTPS trusts only `--ca-cert`: it fails closed.
        let client = builder()
            .tls_certs_merge(certs.clone())
            .build()
            .or_else(|_| builder().tls_certs_only(certs).build())
            .map_err(|e| Error::internal("set up the HTTP client", e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::internal("start the network runtime", e))?;
        Ok(Registry {
            client,
            plain,
            options,
            runtime,
        })
    }

    fn credentials(&self, r: &Reference) -> Result<Option<Credentials>> {
        if let Some(c) = &self.options.credentials {
            return Ok(Some(c.clone()));
        }
        auth::lookup(r.registry())
    }

    fn jobs(&self) -> usize {
        if self.options.jobs == 0 {
            4
        } else {
            self.options.jobs
        }
    }

    /// `http[s]://HOST` of `r`'s registry.
    fn base(&self, r: &Reference) -> String {
        let scheme = if self.plain.iter().any(|p| p == r.registry()) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", r.resolve_registry())
    }

    /// A session with `r`'s registry for `access` to its repository (and
    /// pulls from `also`, repositories to mount from).
    async fn session(
        &self,
        r: &Reference,
        access: Access,
        also: &[&Reference],
    ) -> Result<http::Session> {
        let actions = match access {
            Access::Pull => "pull",
            Access::Push => "pull,push",
        };
        let mut scopes = vec![format!("repository:{}:{actions}", r.repository())];
        for m in also {
            scopes.push(format!("repository:{}:pull", m.repository()));
        }
        http::Session::open(
            self.client.clone(),
            self.base(r),
            r.registry(),
            scopes,
            self.credentials(r)?,
            http::Policy::new(self.options.retries),
        )
        .await
        .map(|s| s.with_progress(self.options.progress.clone()))
    }

    /// Checks that the credentials for `r` are accepted.
    pub fn login_check(&self, r: &Reference) -> Result<()> {
        let what = format!("log in to `{}`", r.registry());
        self.runtime.block_on(async {
            let s = self.session(r, Access::Pull, &[]).await?;
            // With basic auth nothing is checked until a request is made:
            // ask for a manifest; "not found" means the credentials passed.
            let url = manifest_url(&s, r, r.tag().unwrap_or("latest"));
            let resp = s.send(&what, || s.client.head(&url)).await?;
            match resp.status().as_u16() {
                200..=299 | 404 => Ok(()),
                _ => Err(http::status_error(&what, resp).await),
            }
        })
    }
}

/// The URL of manifest `tag_or_digest` in `r`'s repository.
fn manifest_url(s: &http::Session, r: &Reference, tag_or_digest: &str) -> String {
    format!("{}/v2/{}/manifests/{tag_or_digest}", s.base, r.repository())
}

/// The URL of blob `digest` in `r`'s repository.
fn blob_url(s: &http::Session, r: &Reference, digest: &str) -> String {
    format!("{}/v2/{}/blobs/{digest}", s.base, r.repository())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_references_read_as_the_regex_reads_them() {
        let hex = "0123456789abcdef".repeat(4);
        let long_tag = format!("t{}", "x".repeat(127));
        let too_long_tag = format!("t{}", "x".repeat(128));
        let texts = [
            "127.0.0.1:5000/app:1.0".to_string(),
            "127.0.0.1:5000/app".into(),
            "localhost/a/b_c/d__e/f-g--h/i.j:v_1.2-3".into(),
            "localhost:80/app".into(),
            format!("127.0.0.1:5000/kiln/app@sha256:{hex}"),
            format!("127.0.0.1:5000/kiln/app:v1@sha256:{hex}"),
            format!("127.0.0.1:5000/app:{long_tag}"),
            format!("127.0.0.1:5000/app:{too_long_tag}"),
            format!("127.0.0.1:5000/app@sha256:{}", &hex[1..]),
            format!("127.0.0.1:5000/app@sha512:{hex}"),
            "registry.example/app:-bad".into(),
            "registry.example/App:1".into(),
            "registry.example/a..b:1".into(),
            "registry.example/a._b:1".into(),
            "registry.example/a___b:1".into(),
            "registry.example/a-:1".into(),
            "registry.example/a//b:1".into(),
            "registry.example/a/:1".into(),
            "-bad.example/app".into(),
            "bad-.example/app".into(),
            "re_g.example/app".into(),
            "registry.example:/app".into(),
            "registry.example:x/app".into(),
            "docker.io/app:1".into(),
            "index.docker.io/library/app".into(),
            "app:1".into(),
            "app".into(),
            "user/app".into(),
            "registry.example/app:tä".into(),
            "registry.example/app:".into(),
            "registry.example/app@".into(),
            format!("registry.example/{}", "a".repeat(256)),
            format!("registry.example/{}", "a".repeat(255)),
        ];
        for text in &texts {
            let fast = plain_reference(text);
            let slow = text.parse::<Reference>();
            match (&fast, &slow) {
                (Some(f), Ok(s)) => assert_eq!(
                    (f.registry(), f.repository(), f.tag(), f.digest()),
                    (s.registry(), s.repository(), s.tag(), s.digest()),
                    "{text}"
                ),
                (Some(f), Err(e)) => panic!("{text}: fast {f:?}, regex refuses: {e}"),
                (None, _) => {}
            }
        }
        for text in &texts[..7] {
            assert!(
                plain_reference(text).is_some(),
                "{text} takes the fast path"
            );
        }
    }

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
