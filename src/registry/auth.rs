//! Registry credentials, found where docker and podman keep them.
//!
//! In order: credentials given on the command line; `REGISTRY_AUTH_FILE`;
//! podman's `$XDG_RUNTIME_DIR/containers/auth.json`; docker's
//! `$DOCKER_CONFIG/config.json` or `~/.docker/config.json` — in each file
//! `credHelpers` (by running `docker-credential-NAME get`), then `auths`,
//! then `credsStore`. No credentials means anonymous access. Secrets are
//! never printed or logged: [`Credentials`]'s `Debug` hides the password.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// A user name and password (or identity token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <hidden>)", self.username)
    }
}

/// The auth files kiln reads, in order.
pub fn auth_files() -> Vec<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut files = Vec::new();
    if let Some(f) = env("REGISTRY_AUTH_FILE") {
        files.push(f);
    }
    if let Some(dir) = env("XDG_RUNTIME_DIR") {
        files.push(dir.join("containers/auth.json"));
    }
    files.push(docker_config());
    files
}

/// Docker's config file: `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
pub fn docker_config() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    match env("DOCKER_CONFIG") {
        Some(dir) => dir.join("config.json"),
        None => env("HOME")
            .unwrap_or_else(|| PathBuf::from("/root"))
            .join(".docker/config.json"),
    }
}

/// Finds credentials for `registry` (`host[:port]`) in the auth files.
pub fn lookup(registry: &str) -> Result<Option<Credentials>> {
    for file in auth_files() {
        let Ok(text) = std::fs::read(&file) else {
            continue;
        };
        let doc: Value = serde_json::from_slice(&text).map_err(|e| {
            Error::unusable(
                format!("`{}` is not valid JSON", file.display()),
                e,
                "fix or remove the file",
            )
        })?;
        if let Some(found) = from_config(&doc, registry, &file)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn keys_for(registry: &str) -> Vec<String> {
    let mut keys = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    if registry == "docker.io" || registry == "index.docker.io" {
        keys.push("https://index.docker.io/v1/".to_string());
    }
    keys
}

fn from_config(doc: &Value, registry: &str, file: &Path) -> Result<Option<Credentials>> {
    let keys = keys_for(registry);
    if let Some(helpers) = doc["credHelpers"].as_object() {
        for k in &keys {
            if let Some(helper) = helpers.get(k).and_then(Value::as_str) {
                return run_helper(helper, registry);
            }
        }
    }
    if let Some(auths) = doc["auths"].as_object() {
        for k in &keys {
            if let Some(entry) = auths.get(k) {
                if let Some(c) = decode_entry(entry, registry, file)? {
                    return Ok(Some(c));
                }
            }
        }
    }
    if let Some(store) = doc["credsStore"].as_str() {
        return run_helper(store, registry);
    }
    Ok(None)
}

fn decode_entry(entry: &Value, registry: &str, file: &Path) -> Result<Option<Credentials>> {
    if let Some(auth) = entry["auth"].as_str().filter(|a| !a.is_empty()) {
        let bad = || {
            Error::invalid(
                format!(
                    "the `auth` entry for `{registry}` in `{}` is not base64 of `user:password`",
                    file.display()
                ),
                Some(format!("log in again with `kiln login {registry}`")),
            )
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth)
            .map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let (user, pass) = text.split_once(':').ok_or_else(bad)?;
        return Ok(Some(Credentials {
            username: user.to_string(),
            password: pass.to_string(),
        }));
    }
    if let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) {
        return Ok(Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        }));
    }
    Ok(None)
}

/// Runs `docker-credential-HELPER get` with the registry on stdin.
fn run_helper(helper: &str, registry: &str) -> Result<Option<Credentials>> {
    let program = format!("docker-credential-{helper}");
    let fail = |why: String| {
        Error::invalid(
            format!("credential helper `{program}` failed for `{registry}`: {why}"),
            Some(format!("check that `{program}` is installed and on PATH, or log in with `kiln login {registry}`")),
        )
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(registry.as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if msg.contains("credentials not found") {
            return Ok(None);
        }
        // The helper's own message, never its stdout payload.
        return Err(fail(format!("exit status {}", out.status)));
    }
    let v: Value =
        serde_json::from_slice(&out.stdout).map_err(|_| fail("its answer is not JSON".into()))?;
    match (v["Username"].as_str(), v["Secret"].as_str()) {
        (Some(u), Some(s)) if !s.is_empty() => Ok(Some(Credentials {
            username: u.to_string(),
            password: s.to_string(),
        })),
        _ => Ok(None),
    }
}

/// Stores credentials for `registry` in docker's config file (where podman reads them too),
/// keeping every other entry of the file. The file is written atomically with mode 0600.
pub fn store(registry: &str, creds: &Credentials) -> Result<PathBuf> {
    let file = match std::env::var_os("REGISTRY_AUTH_FILE").filter(|v| !v.is_empty()) {
        Some(f) => PathBuf::from(f),
        None => docker_config(),
    };
    let mut doc: Value = match std::fs::read(&file) {
        Ok(text) => serde_json::from_slice(&text).map_err(|e| {
            Error::unusable(
                format!("`{}` is not valid JSON", file.display()),
                e,
                "fix or remove the file",
            )
        })?,
        Err(_) => json!({}),
    };
    if !doc.is_object() {
        doc = json!({});
    }
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", creds.username, creds.password));
    let auths = doc
        .as_object_mut()
        .expect("checked above")
        .entry("auths")
        .or_insert_with(|| json!({}));
    if !auths.is_object() {
        *auths = json!({});
    }
    auths[registry] = json!({ "auth": auth });
    let text = serde_json::to_vec_pretty(&doc).expect("JSON values serialise");
    crate::files::write_private(&file, &text)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_auths_in_both_forms_and_hides_secrets() {
        let doc = json!({"auths": {
            "a.example:5000": {"auth": base64::engine::general_purpose::STANDARD.encode("u:p:w")},
            "https://b.example": {"username": "x", "password": "y"},
        }});
        let f = Path::new("config.json");
        let a = from_config(&doc, "a.example:5000", f).unwrap().unwrap();
        assert_eq!((a.username.as_str(), a.password.as_str()), ("u", "p:w"));
        let b = from_config(&doc, "b.example", f).unwrap().unwrap();
        assert_eq!(b.username, "x");
        assert!(from_config(&doc, "c.example", f).unwrap().is_none());
        assert!(!format!("{a:?}").contains("p:w"));
    }
}
