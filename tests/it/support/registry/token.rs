//! A token server for the registry's token flow (the protocol Docker Hub and
//! most hosted registries speak): the registry answers 401 with a `Bearer`
//! challenge naming this server; the client asks it for a token with basic
//! auth and a `scope`; the server answers with a JWT that the registry
//! checks against the certificate in its `rootcertbundle`.
//!
//! The key and certificate are made with the `openssl` CLI at start-up and
//! every JWT is signed RS256 by `openssl dgst`, with the certificate in the
//! header's `x5c` (the chain, here one self-signed certificate), which is how
//! distribution finds the signing key.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::json;

use super::tool;
use crate::support::run;

/// The `service` the registry names in its challenge and expects as `aud`.
pub const SERVICE: &str = "kiln-test-registry";
/// The `iss` the registry trusts.
pub const ISSUER: &str = "kiln-test-token-issuer";

/// A running token server.
pub struct TokenServer {
    /// `http://127.0.0.1:PORT/token`.
    pub realm: String,
    /// The PEM certificate the registry trusts (its `rootcertbundle`).
    pub cert: PathBuf,
}

struct Keys {
    key: PathBuf,
    /// The certificate, DER, base64 (not URL-safe), as `x5c` wants it.
    x5c: String,
    user: String,
    password: String,
}

impl TokenServer {
    /// Makes a key pair in `dir` and serves tokens to `user`:`password`.
    pub fn start(dir: &Path, user: &str, password: &str) -> TokenServer {
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        run(tool("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=kiln test token issuer", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null()));
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .unwrap();
        assert!(der.status.success(), "openssl x509 -outform DER failed");
        let keys = Arc::new(Keys {
            key,
            x5c: STANDARD.encode(der.stdout),
            user: user.into(),
            password: password.into(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let keys = keys.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &keys);
                });
            }
        });
        TokenServer { realm, cert }
    }
}

fn serve(conn: TcpStream, keys: &Keys) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut basic = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                basic = value
                    .trim()
                    .strip_prefix("Basic ")
                    .and_then(|b| STANDARD.decode(b.trim()).ok())
                    .and_then(|b| String::from_utf8(b).ok());
            }
        }
    }
    let user = basic.as_deref().and_then(|b| b.split_once(':'));
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let ok = user.is_some_and(|(u, p)| u == keys.user && p == keys.password);
    let (status, body) = if path != "/token" {
        ("404 Not Found", json!({"errors": [{"code": "NOT_FOUND"}]}))
    } else if !ok {
        (
            "401 Unauthorized",
            json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}),
        )
    } else {
        let scopes = query_values(query, "scope");
        let token = sign(keys, &keys.user, &scopes);
        (
            "200 OK",
            json!({"token": token, "access_token": token, "expires_in": 600}),
        )
    };
    let body = body.to_string();
    let mut out = conn;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n{body}",
        body.len(),
        if status.starts_with("401") {
            "WWW-Authenticate: Basic realm=\"kiln-test-token\"\r\n"
        } else {
            ""
        }
    )?;
    out.flush()
}

/// Every value of `key` in a query string, percent-decoded.
fn query_values(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JWT granting every scope asked for (`repository:NAME:ACTIONS`).
fn sign(keys: &Keys, subject: &str, scopes: &[String]) -> String {
    static JTI: AtomicU64 = AtomicU64::new(0);
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let (kind, rest) = s.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [keys.x5c]});
    let claims = json!({
        "iss": ISSUER,
        "sub": subject,
        // distribution 2.8 reads `aud` as one string.
        "aud": SERVICE,
        "exp": now + 600,
        "nbf": now - 60,
        "iat": now,
        "jti": format!("kiln-test-{}", JTI.fetch_add(1, Ordering::SeqCst)),
        "access": access,
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&keys.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot run openssl; run scripts/test.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl dgst -sign failed");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(out.stdout))
}
