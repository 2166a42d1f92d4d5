//! An HTTP/1.1 proxy in front of a registry, on 127.0.0.1: it records every
//! request (so a test can count uploads) and, when asked, fails a share of
//! them (a seeded mix of 500, 503, 429 with Docker Hub's error body and a
//! `Retry-After`, connection resets and truncated answers) to show that a
//! client retries, or lies (wrong or truncated manifests, corrupt blobs) to
//! show that it refuses what does not match its digest.
//!
//! Seeded faults are deterministic in sequence: the `n`th request the proxy
//! sees is failed or not, and how, by a hash of the seed and `n` alone (which
//! request is the `n`th can vary with the client's concurrency).
//!
//! One request per client connection: each is forwarded on a fresh upstream
//! connection and answered with `Connection: close`, so a response needs no
//! framing of ours. The registry builds upload `Location`s from the `Host`
//! header, which is passed on unchanged, so they point back at the proxy.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Which requests the proxy fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Faults {
    /// None: every request reaches the registry.
    None,
    /// Every `n`th request fails, alternately with a 503 and a dropped connection.
    Every(usize),
    /// The first request of each kind (method and path, upload session ids
    /// and query left out) fails, alternately with a 503 and a dropped
    /// connection; its retry goes through.
    OncePerKind,
    /// A seeded mix: `percent` of the requests fail, each as one of
    /// [`Fault`]'s kinds in turn of the hash; `retry_after` goes on the 429s.
    Seeded {
        seed: u64,
        percent: u64,
        retry_after: Option<u32>,
    },
    /// The first request of each kind is answered 429 with the standard
    /// error body (`TOOMANYREQUESTS`) and `Retry-After: SECONDS`.
    TooManyOncePerKind { retry_after: u32 },
    /// Every second blob `PATCH` is reset before it reaches the registry.
    ResetEverySecondPatch,
    /// Answers with something other than what the registry sent.
    Lie(Lie),
    /// The first `times` manifest `PUT`s are refused as Debian's
    /// docker-registry refuses one naming a blob another client is writing
    /// into the repository at that moment: 400, `DIGEST_INVALID` and
    /// `MANIFEST_BLOB_UNKNOWN`. They do not reach the registry.
    BlobsUnknown { times: usize },
    /// No faults; adds the OCI 1.1 referrers API the registry lacks: a
    /// manifest `PUT` with a `subject` is indexed (and answered with
    /// `OCI-Subject`), `GET /v2/<name>/referrers/<digest>` lists them.
    ReferrersApi,
}

/// How a seeded fault fails a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    Status500,
    Status503,
    /// 429 with `{"errors":[{"code":"TOOMANYREQUESTS",…}]}`.
    TooMany,
    /// The connection is reset (RST) before the request reaches the registry.
    Reset,
    /// The request reaches the registry; its answer is cut in half, then reset.
    Truncated,
}

/// What a lying registry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lie {
    /// Manifest answers carry other bytes (valid JSON) than those asked for.
    WrongManifest,
    /// Manifest answers are cut in half (with a `Content-Length` to match).
    TruncatedManifest,
    /// Blob answers have one byte changed.
    CorruptBlob,
    /// Uploaded chunks (`PATCH` bodies) have their last byte changed on the way in.
    CorruptUpload,
    /// The answer to a manifest `PUT` names another digest (`Docker-Content-Digest`).
    WrongPushedDigest,
}

/// A running proxy.
pub struct Proxy {
    /// `127.0.0.1:PORT`: use it as the registry in references.
    pub host: String,
    state: Arc<State>,
}

struct State {
    upstream: String,
    faults: Faults,
    count: AtomicUsize,
    failed: AtomicUsize,
    log: Mutex<Vec<Request>>,
    kinds: Mutex<std::collections::HashSet<String>>,
    patches: AtomicUsize,
    /// Manifest `PUT`s seen, for [`Faults::BlobsUnknown`].
    manifest_puts: AtomicUsize,
    /// Referrer descriptors by (repository, subject digest), for [`Faults::ReferrersApi`].
    referrers: Mutex<std::collections::HashMap<(String, String), Vec<serde_json::Value>>>,
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target: path and query.
    pub target: String,
    /// Whether the proxy failed it instead of passing it on.
    pub failed: bool,
    /// How, for a failed one.
    pub fault: Option<Fault>,
    /// The bytes of its body (chunked framing included).
    pub body_len: usize,
    /// When it arrived.
    pub at: std::time::Instant,
}

impl Request {
    /// Whether this request uploads blob data or starts or ends an upload.
    pub fn is_blob_upload(&self) -> bool {
        self.target.contains("/blobs/uploads")
            && matches!(self.method.as_str(), "POST" | "PATCH" | "PUT")
    }
}

impl Proxy {
    /// Starts a proxy to `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: &str, faults: Faults) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let state = Arc::new(State {
            upstream: upstream.into(),
            faults,
            count: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            kinds: Mutex::new(Default::default()),
            patches: AtomicUsize::new(0),
            manifest_puts: AtomicUsize::new(0),
            referrers: Mutex::new(Default::default()),
        });
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = handle(conn, &s);
                });
            }
        });
        Proxy { host, state }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.log.lock().unwrap().clone()
    }

    /// Forgets the requests seen so far.
    pub fn clear(&self) {
        self.state.log.lock().unwrap().clear();
    }

    /// How many requests the proxy failed on purpose.
    pub fn failed(&self) -> usize {
        self.state.failed.load(Ordering::SeqCst)
    }

    /// How many requests failed with each kind of fault.
    pub fn faults(&self) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for q in self.requests() {
            if let Some(f) = q.fault {
                *counts.entry(format!("{f:?}")).or_default() += 1;
            }
        }
        counts
    }
}

/// splitmix64: a hash good enough to spread faults, fixed forever.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const TOO_MANY_BODY: &str = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit.","detail":null}]}"#;

/// What docker-registry answers to a manifest `PUT` naming a blob it cannot
/// see in the repository (two of them here).
const BLOBS_UNKNOWN_BODY: &str = r#"{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"},{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:7726bc85d1fe8248d6b5c64ee0f4a4231c4488d4fb58079b715a9d68aed8cf89"},{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"},{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:47c5dade30adba03a063fd790d1b0313fab1e85780f9954d1489ddf55931f40e"}]}"#;

fn handle(client: TcpStream, state: &State) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let Some((head, body)) = read_message(&mut reader)? else {
        return Ok(());
    };
    let request_line = head.lines().next().unwrap_or_default().to_string();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let n = state.count.fetch_add(1, Ordering::SeqCst) + 1;
    let fault = match state.faults {
        Faults::None | Faults::Lie(_) | Faults::ReferrersApi | Faults::BlobsUnknown { .. } => None,
        Faults::Every(k) if n.is_multiple_of(k) => Some(if (n / k) % 2 == 1 {
            Fault::Status503
        } else {
            Fault::Reset
        }),
        Faults::Every(_) => None,
        Faults::OncePerKind => state
            .kinds
            .lock()
            .unwrap()
            .insert(kind(&method, &target))
            .then(|| {
                if state.failed.load(Ordering::SeqCst).is_multiple_of(2) {
                    Fault::Status503
                } else {
                    Fault::Reset
                }
            }),
        Faults::TooManyOncePerKind { .. } => state
            .kinds
            .lock()
            .unwrap()
            .insert(kind(&method, &target))
            .then_some(Fault::TooMany),
        Faults::ResetEverySecondPatch => (method == "PATCH"
            && state.patches.fetch_add(1, Ordering::SeqCst) % 2 == 1)
            .then_some(Fault::Reset),
        Faults::Seeded { seed, percent, .. } => {
            let h = mix(seed ^ mix(n as u64));
            (h % 100 < percent).then(|| {
                [
                    Fault::Status500,
                    Fault::Status503,
                    Fault::TooMany,
                    Fault::Reset,
                    Fault::Truncated,
                ][((h >> 32) % 5) as usize]
            })
        }
    };
    let refuse_manifest = match state.faults {
        Faults::BlobsUnknown { times } => {
            method == "PUT"
                && target.contains("/manifests/")
                && state.manifest_puts.fetch_add(1, Ordering::SeqCst) < times
        }
        _ => false,
    };
    state.log.lock().unwrap().push(Request {
        method: method.clone(),
        target: target.clone(),
        failed: fault.is_some() || refuse_manifest,
        fault,
        body_len: body.len(),
        at: std::time::Instant::now(),
    });
    let mut client = client;
    let retry_after = match state.faults {
        Faults::Seeded { retry_after, .. } => retry_after,
        Faults::TooManyOncePerKind { retry_after } => Some(retry_after),
        _ => None,
    };
    if fault.is_some() || refuse_manifest {
        state.failed.fetch_add(1, Ordering::SeqCst);
    }
    if refuse_manifest {
        client.write_all(
            format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BLOBS_UNKNOWN_BODY}",
                BLOBS_UNKNOWN_BODY.len()
            )
            .as_bytes(),
        )?;
        return client.shutdown(Shutdown::Both);
    }
    match fault {
        Some(Fault::Status500) | Some(Fault::Status503) => {
            let status = if fault == Some(Fault::Status500) {
                "500 Internal Server Error"
            } else {
                "503 Service Unavailable"
            };
            client.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: 17\r\nConnection: close\r\n\r\ninjected failure\n").as_bytes(),
            )?;
            return client.shutdown(Shutdown::Both);
        }
        Some(Fault::TooMany) => {
            let after = retry_after
                .map(|s| format!("Retry-After: {s}\r\n"))
                .unwrap_or_default();
            client.write_all(
                format!(
                    "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n{after}Content-Length: {}\r\nConnection: close\r\n\r\n{TOO_MANY_BODY}",
                    TOO_MANY_BODY.len()
                )
                .as_bytes(),
            )?;
            return client.shutdown(Shutdown::Both);
        }
        Some(Fault::Reset) => {
            reset(&client);
            return Ok(());
        }
        Some(Fault::Truncated) | None => {}
    }
    let mut body = body;
    if state.faults == Faults::Lie(Lie::CorruptUpload) && method == "PATCH" {
        if let Some(b) = body.last_mut() {
            *b ^= 0xff;
        }
    }
    let mut subject_header = None;
    if state.faults == Faults::ReferrersApi {
        let path = target.split('?').next().unwrap_or_default();
        if let (true, Some((name, digest))) = (
            method == "GET" || method == "HEAD",
            path.strip_prefix("/v2/")
                .and_then(|p| p.rsplit_once("/referrers/")),
        ) {
            let list = state
                .referrers
                .lock()
                .unwrap()
                .get(&(name.to_string(), digest.to_string()))
                .cloned()
                .unwrap_or_default();
            let index = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": list,
            }))
            .unwrap();
            client.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.index.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    index.len()
                )
                .as_bytes(),
            )?;
            if method == "GET" {
                client.write_all(&index)?;
            }
            client.flush()?;
            return client.shutdown(Shutdown::Both);
        }
        if let (true, Some((name, _))) = (
            method == "PUT",
            path.strip_prefix("/v2/")
                .and_then(|p| p.rsplit_once("/manifests/")),
        ) {
            let doc: serde_json::Value =
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            if let Some(subject) = doc["subject"]["digest"].as_str() {
                use sha2::Digest as _;
                let digest = format!("sha256:{:x}", sha2::Sha256::digest(&body));
                let mut entry = serde_json::json!({
                    "mediaType": doc["mediaType"],
                    "digest": digest,
                    "size": body.len(),
                    "artifactType": doc["artifactType"].as_str().or(doc["config"]["mediaType"].as_str()),
                });
                if doc["annotations"].is_object() {
                    entry["annotations"] = doc["annotations"].clone();
                }
                let mut all = state.referrers.lock().unwrap();
                let list = all
                    .entry((name.to_string(), subject.to_string()))
                    .or_default();
                if !list.iter().any(|e| e["digest"] == entry["digest"]) {
                    list.push(entry);
                }
                subject_header = Some(subject.to_string());
            }
        }
    }
    let mut upstream = TcpStream::connect(&state.upstream)?;
    upstream.write_all(with_connection_close(&head).as_bytes())?;
    upstream.write_all(&body)?;
    let mut up = BufReader::new(upstream);
    let mut response_head = String::new();
    loop {
        let mut line = String::new();
        if up.read_line(&mut line)? == 0 {
            break;
        }
        response_head.push_str(&line);
        if line == "\r\n" || line == "\n" {
            break;
        }
    }
    let lie = match state.faults {
        Faults::Lie(Lie::WrongPushedDigest)
            if method == "PUT" && target.contains("/manifests/") =>
        {
            Some(Lie::WrongPushedDigest)
        }
        Faults::Lie(lie) if method == "GET" => Some(lie),
        _ => None,
    };
    if fault == Some(Fault::Truncated) || lie.is_some() {
        // These need the whole answer first.
        let mut rest = Vec::new();
        std::io::copy(&mut up, &mut rest)?;
        let head = with_connection_close(&response_head);
        if fault == Some(Fault::Truncated) {
            let mut all = head.into_bytes();
            all.extend_from_slice(&rest);
            let cut = if rest.is_empty() {
                all.len() / 2
            } else {
                all.len() - rest.len().div_ceil(2)
            };
            client.write_all(&all[..cut])?;
            client.flush()?;
            reset(&client);
            return Ok(());
        }
        let ok = response_head.starts_with("HTTP/1.1 200");
        let body = match lie {
            Some(Lie::WrongManifest) if ok && target.contains("/manifests/") => {
                let mut doc: serde_json::Value =
                    serde_json::from_slice(&rest).unwrap_or(serde_json::Value::Null);
                doc["annotations"] = serde_json::json!({"lie": "not the manifest you asked for"});
                serde_json::to_vec(&doc).unwrap()
            }
            Some(Lie::TruncatedManifest) if ok && target.contains("/manifests/") => {
                rest[..rest.len() / 2].to_vec()
            }
            Some(Lie::CorruptBlob) if ok && target.contains("/blobs/sha256:") => {
                let mut body = rest.clone();
                if let Some(b) = body.last_mut() {
                    *b ^= 0xff;
                }
                body
            }
            _ => rest,
        };
        let mut head = with_content_length(&head, body.len());
        if lie == Some(Lie::WrongPushedDigest) {
            head = head
                .split_inclusive('\n')
                .map(|l| {
                    if l.to_ascii_lowercase().starts_with("docker-content-digest:") {
                        format!("Docker-Content-Digest: sha256:{}\r\n", "0".repeat(64))
                    } else {
                        l.to_string()
                    }
                })
                .collect();
        }
        client.write_all(head.as_bytes())?;
        client.write_all(&body)?;
        client.flush()?;
        return client.shutdown(Shutdown::Both);
    }
    let mut response_head = with_connection_close(&response_head);
    if let Some(subject) = subject_header {
        let end = response_head.len() - 2;
        response_head.insert_str(end, &format!("OCI-Subject: {subject}\r\n"));
    }
    client.write_all(response_head.as_bytes())?;
    // The rest, whatever its framing, until the registry closes.
    std::io::copy(&mut up, &mut client)?;
    client.flush()?;
    client.shutdown(Shutdown::Both)
}

/// Closes `stream` with a TCP reset (`SO_LINGER` 0), as a dropped link does.
fn reset(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Linger {
        on: i32,
        secs: i32,
    }
    extern "C" {
        fn setsockopt(fd: i32, level: i32, name: i32, value: *const Linger, len: u32) -> i32;
    }
    const SOL_SOCKET: i32 = 1;
    const SO_LINGER: i32 = 13;
    let l = Linger { on: 1, secs: 0 };
    // SAFETY: a valid socket and a value of the size given.
    unsafe {
        setsockopt(
            stream.as_raw_fd(),
            SOL_SOCKET,
            SO_LINGER,
            &l,
            std::mem::size_of::<Linger>() as u32,
        );
    }
    // The RST goes when the caller drops its last handle of the socket.
}

/// `head` with its `Content-Length` (and any `Transfer-Encoding`) replaced by `len`.
fn with_content_length(head: &str, len: usize) -> String {
    let mut out = String::new();
    for line in head.split_inclusive('\n') {
        if line == "\r\n" || line == "\n" {
            out.push_str(&format!("Content-Length: {len}\r\n\r\n"));
            break;
        }
        let drop = line.split_once(':').is_some_and(|(k, _)| {
            let k = k.trim();
            k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
        });
        if !drop {
            out.push_str(line);
        }
    }
    out
}

/// `METHOD PATH` without the query and with an upload's session id left
/// out, so every attempt at one step of an upload is of one kind.
fn kind(method: &str, target: &str) -> String {
    let path = target.split('?').next().unwrap_or_default();
    let path = match path.split_once("/blobs/uploads/") {
        Some((repo, _)) => format!("{repo}/blobs/uploads/"),
        None => path.to_string(),
    };
    format!("{method} {path}")
}

/// The head (request line and headers, with the blank line) and the raw body
/// (chunked framing kept) of one request; `None` on a closed connection.
fn read_message(r: &mut impl BufRead) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        head.push_str(&line);
        if line == "\r\n" || line == "\n" {
            break;
        }
    }
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size_line = String::new();
            r.read_line(&mut size_line)?;
            body.extend_from_slice(size_line.as_bytes());
            let size =
                usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0").trim(), 16)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t)? == 0 {
                        break;
                    }
                    body.extend_from_slice(t.as_bytes());
                    if t == "\r\n" || t == "\n" {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
        }
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    }
    Ok(Some((head, body)))
}

/// `head` with any `Connection` header replaced by `Connection: close`.
fn with_connection_close(head: &str) -> String {
    let mut out = String::new();
    for line in head.split_inclusive('\n') {
        if line == "\r\n" || line == "\n" {
            out.push_str("Connection: close\r\n\r\n");
            break;
        }
        let is_connection = line
            .split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"));
        if !is_connection {
            out.push_str(line);
        }
    }
    out
}
