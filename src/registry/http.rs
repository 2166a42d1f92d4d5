//! The registry's HTTP API (distribution spec), spoken with reqwest so that
//! every status and header is ours to read: `Retry-After`, an upload
//! session's `Range` and `Location`, `Docker-Content-Digest`.
//!
//! A [`Session`] is one registry and one set of repositories: it pings
//! `/v2/`, answers the registry's challenge (basic auth, or a bearer token
//! from the token server named in the challenge) and then sends requests.
//! Every request, the ping and the token exchange included, is retried on a
//! transient failure (a connection error, a cut answer, 429, 5xx) after the
//! registry's `Retry-After` or an exponential backoff, within a bounded
//! number of attempts and a bounded total time. Credentials and tokens go in
//! headers only, never in a URL, a log line or an error.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode};

use super::Credentials;
use crate::error::{Error, Result};

/// How hard a request is retried.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    /// Attempts per request, the first included.
    pub attempts: u32,
    /// The first backoff sleep; each later one doubles it.
    pub base: Duration,
    /// No sleep is longer, a `Retry-After` included.
    pub max_delay: Duration,
    /// No request keeps retrying past this much time since its first attempt.
    pub budget: Duration,
}

impl Policy {
    /// `retries` retries (0: the default, 7), with sleeps from the
    /// environment: `KILN_RETRY_BASE_MS` (default 200) and
    /// `KILN_RETRY_MAX_DELAY_MS` (default 30000).
    pub fn new(retries: u32) -> Policy {
        let ms = |k: &str, default: u64| {
            Duration::from_millis(
                std::env::var(k)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(default),
            )
        };
        Policy {
            attempts: if retries == 0 { 8 } else { retries + 1 },
            base: ms("KILN_RETRY_BASE_MS", 200),
            max_delay: ms("KILN_RETRY_MAX_DELAY_MS", 30_000),
            budget: Duration::from_secs(600),
        }
    }

    /// The sleep before attempt `attempt + 1`: the registry's `Retry-After`
    /// when it sent one, else `base * 2^attempt`; at most `max_delay`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self.base.saturating_mul(1 << attempt.min(10));
        retry_after.unwrap_or(backoff).min(self.max_delay)
    }
}

/// What one attempt at a request gave.
pub(super) enum Attempt {
    /// An answer that is not transient (success or not: the caller reads the status).
    Answer(Response),
    /// A transient failure: try again after `retry_after` (if the registry said).
    Transient {
        why: String,
        retry_after: Option<Duration>,
    },
}

/// Whether an HTTP status is worth retrying: 408, 429 and 5xx (but 501).
pub(super) fn transient_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
}

/// `Retry-After` in seconds (the HTTP-date form is rare from registries and
/// falls back to the backoff).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<u64>().ok().map(Duration::from_secs)
}

/// A registry and the repositories one operation touches, with the
/// authorization its challenge asked for.
pub(super) struct Session {
    pub client: reqwest::Client,
    /// `http[s]://HOST[:PORT]`.
    pub base: String,
    /// `repository:NAME:ACTIONS` scopes for a token.
    scopes: Vec<String>,
    creds: Option<Credentials>,
    pub policy: Policy,
    authorization: Mutex<Option<String>>,
    /// The registry's name, for messages.
    registry: String,
    /// Where blob transfers report their bytes.
    pub progress: crate::progress::Progress,
}

const CREDENTIALS_HINT: &str = "check the credentials: `kiln login REGISTRY -u USER --password-stdin`, or pass `--username USER --password-stdin`";

impl Session {
    /// The session, reporting blob transfers to `progress`.
    pub fn with_progress(mut self, progress: crate::progress::Progress) -> Session {
        self.progress = progress;
        self
    }

    /// Opens a session: pings `/v2/` and answers its challenge.
    pub async fn open(
        client: reqwest::Client,
        base: String,
        registry: &str,
        scopes: Vec<String>,
        creds: Option<Credentials>,
        policy: Policy,
    ) -> Result<Session> {
        let s = Session {
            client,
            base,
            scopes,
            creds,
            policy,
            authorization: Mutex::new(None),
            registry: registry.to_string(),
            progress: Default::default(),
        };
        let what = format!("reach `{registry}`");
        let url = format!("{}/v2/", s.base);
        let resp = s.send_bare(&what, || s.client.get(&url)).await?;
        match resp.status() {
            StatusCode::UNAUTHORIZED => s.answer_challenge(resp.headers()).await?,
            status if status.is_success() => {}
            _ => return Err(status_error(&what, resp).await),
        }
        Ok(s)
    }

    /// Sets the authorization the challenge in `headers` asks for.
    async fn answer_challenge(&self, headers: &HeaderMap) -> Result<()> {
        let challenge = headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let (scheme, params) = challenge.split_once(' ').unwrap_or((&challenge, ""));
        let authorization = if scheme.eq_ignore_ascii_case("bearer") {
            Some(self.token(&parse_params(params)).await?)
        } else {
            self.creds.as_ref().map(|c| {
                use base64::Engine;
                let raw = format!("{}:{}", c.username, c.password);
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                )
            })
        };
        *self.authorization.lock().unwrap_or_else(|e| e.into_inner()) = authorization;
        Ok(())
    }

    /// A bearer token from the token server the challenge names.
    async fn token(&self, params: &[(String, String)]) -> Result<String> {
        let get = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        let what = format!("get a token for `{}`", self.registry);
        let realm = get("realm").ok_or_else(|| Error::Registry {
            message: format!("cannot {what}: its challenge names no token server (`realm`)"),
            hint: Some(BROKEN_AUTH_HINT.into()),
        })?;
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(service) = get("service") {
            query.push(("service", service));
        }
        for scope in &self.scopes {
            query.push(("scope", scope.clone()));
        }
        let resp = self
            .send_bare(&what, || {
                let req = self.client.get(&realm).query(&query);
                match &self.creds {
                    Some(c) => req.basic_auth(&c.username, Some(&c.password)),
                    None => req,
                }
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(&what, resp).await);
        }
        let body: serde_json::Value = resp.json().await.map_err(|e| Error::Network {
            action: format!("{what}: cannot read the JSON answer of"),
            url: realm.clone(),
            status: None,
            hint: Some(BROKEN_AUTH_HINT.into()),
            source: Some(e.into()),
        })?;
        let token = body["token"]
            .as_str()
            .or(body["access_token"].as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Registry {
                message: format!("cannot {what}: the token server's answer has no token"),
                hint: Some(BROKEN_AUTH_HINT.into()),
            })?;
        Ok(format!("Bearer {token}"))
    }

    /// One attempt at the request `make` builds, with the session's
    /// authorization when it goes to the registry itself (an upload
    /// `Location` on another host never sees the credentials).
    pub async fn attempt(&self, make: &impl Fn() -> RequestBuilder) -> Attempt {
        let req = make();
        let auth = self
            .authorization
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(auth) = auth else {
            return attempt(req).await;
        };
        let (client, built) = req.build_split();
        let mut built = match built {
            Ok(b) => b,
            Err(e) => {
                return Attempt::Transient {
                    why: crate::error::render_chain(&e.without_url()),
                    retry_after: None,
                }
            }
        };
        let same_origin =
            reqwest::Url::parse(&self.base).is_ok_and(|base| base.origin() == built.url().origin());
        if same_origin {
            if let Ok(v) = reqwest::header::HeaderValue::from_str(&auth) {
                built.headers_mut().insert(AUTHORIZATION, v);
            }
        }
        attempt(RequestBuilder::from_parts(client, built)).await
    }

    /// Sends the request `make` builds until it gets an answer that is not
    /// transient, within the policy; a 401 is answered once by asking
    /// for a new token (an expired one) before it is returned.
    pub async fn send(&self, what: &str, make: impl Fn() -> RequestBuilder) -> Result<Response> {
        let mut reauthorized = false;
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            match self.attempt(&make).await {
                Attempt::Answer(resp)
                    if resp.status() == StatusCode::UNAUTHORIZED && !reauthorized =>
                {
                    reauthorized = true;
                    self.answer_challenge(resp.headers()).await?;
                }
                Attempt::Answer(resp) => return Ok(resp),
                Attempt::Transient { why, retry_after } => {
                    self.pause(what, &mut attempt, started, why, retry_after)
                        .await?
                }
            }
        }
    }

    /// Like [`Session::send`], without the session's authorization (the
    /// ping, the token exchange).
    async fn send_bare(&self, what: &str, make: impl Fn() -> RequestBuilder) -> Result<Response> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            match self::attempt(make()).await {
                Attempt::Answer(resp) => return Ok(resp),
                Attempt::Transient { why, retry_after } => {
                    self.pause(what, &mut attempt, started, why, retry_after)
                        .await?
                }
            }
        }
    }

    /// Sleeps before the next attempt, or fails when the attempts or the
    /// time are spent.
    pub async fn pause(
        &self,
        what: &str,
        attempt: &mut u32,
        started: Instant,
        why: String,
        retry_after: Option<Duration>,
    ) -> Result<()> {
        *attempt += 1;
        let delay = self.policy.delay(*attempt - 1, retry_after);
        if *attempt >= self.policy.attempts || started.elapsed() + delay > self.policy.budget {
            return Err(Error::Registry {
                message: format!("cannot {what}: {why} (gave up after {attempt} attempts in {:.0?})", started.elapsed()),
                hint: Some("check that the registry is running and reachable; plain HTTP is used only for loopback and `--insecure-registry` hosts".into()),
            });
        }
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

/// Sends `req` once and classifies what came back.
pub(super) async fn attempt(req: RequestBuilder) -> Attempt {
    match req.send().await {
        Ok(resp) if transient_status(resp.status()) => {
            let retry_after = retry_after(resp.headers());
            let status = resp.status().as_u16();
            let detail = error_detail(&resp.bytes().await.unwrap_or_default());
            Attempt::Transient {
                why: format!("the registry answered HTTP {status}{detail}"),
                retry_after,
            }
        }
        Ok(resp) => Attempt::Answer(resp),
        Err(e) => Attempt::Transient {
            why: crate::error::render_chain(&e.without_url()),
            retry_after: None,
        },
    }
}

/// `: CODE: message` from a registry's error body, when it has one.
fn error_detail(body: &[u8]) -> String {
    let doc: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match doc["errors"].get(0) {
        Some(e) => format!(
            ": {} {}",
            e["code"].as_str().unwrap_or_default(),
            e["message"].as_str().unwrap_or_default()
        )
        .trim_end()
        .to_string(),
        None => String::new(),
    }
}

/// What to do when the registry's token authentication misbehaves.
const BROKEN_AUTH_HINT: &str =
    "the registry's token authentication is misconfigured: check its `WWW-Authenticate` challenge and token server, or tell its operator";

/// The error for an answer that is not what `what` needed.
pub(super) async fn status_error(what: &str, resp: Response) -> Error {
    let status = resp.status().as_u16();
    status_error_of(what, status, &resp.bytes().await.unwrap_or_default())
}

/// The errors (`errors[]`: code, and detail when it is a string) of an
/// answer's body.
pub(super) fn error_codes(body: &[u8]) -> Vec<(String, String)> {
    let doc: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    doc["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| {
                    let code = e["code"].as_str()?.to_string();
                    Some((code, e["detail"].as_str().unwrap_or("a blob").to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// [`status_error`] for an answer whose body was already read.
pub(super) fn status_error_of(what: &str, status: u16, body: &[u8]) -> Error {
    let detail = error_detail(body);
    if status == 401 {
        return Error::Registry {
            message: format!("cannot {what}: the registry refused the credentials (HTTP 401)"),
            hint: Some(CREDENTIALS_HINT.into()),
        };
    }
    Error::Registry {
        message: format!("cannot {what}: the registry answered HTTP {status}{detail}"),
        hint: match status {
            403 => Some("check that the user may access this repository".into()),
            404 => Some("check the repository name and digest".into()),
            500.. => Some("the registry failed: try again later, or check its logs".into()),
            _ => Some(
                "check the reference, and that the registry speaks the OCI distribution API".into(),
            ),
        },
    }
}

/// `k="v", k2="v2"` of a challenge.
fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (&quoted[..end], quoted.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        out.push((key, value.to_string()));
        rest = next.trim_start_matches([',', ' ']);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_params() {
        let p = parse_params(
            r#"realm="http://127.0.0.1:1/token",service="reg",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(p[0], ("realm".into(), "http://127.0.0.1:1/token".into()));
        assert_eq!(p[1], ("service".into(), "reg".into()));
        assert_eq!(p[2], ("scope".into(), "repository:a/b:pull,push".into()));
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let p = Policy {
            attempts: 3,
            base: Duration::from_millis(10),
            max_delay: Duration::from_secs(5),
            budget: Duration::from_secs(60),
        };
        assert_eq!(p.delay(0, None), Duration::from_millis(10));
        assert_eq!(p.delay(2, None), Duration::from_millis(40));
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(60))),
            Duration::from_secs(5)
        );
        assert!(transient_status(StatusCode::TOO_MANY_REQUESTS));
        assert!(transient_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!transient_status(StatusCode::NOT_FOUND));
    }
}
