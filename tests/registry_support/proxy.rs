//! An HTTP/1.1 proxy in front of a registry, on 127.0.0.1: it records every
//! request (so a test can count uploads) and, when asked, fails a share of
//! them — answering 503 or closing the connection without an answer — to
//! show that a client retries.
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
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target: path and query.
    pub target: String,
    /// Whether the proxy failed it instead of passing it on.
    pub failed: bool,
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
}

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
    let fail = match state.faults {
        Faults::None => None,
        Faults::Every(k) if n.is_multiple_of(k) => Some((n / k) % 2 == 1),
        Faults::Every(_) => None,
        Faults::OncePerKind => state
            .kinds
            .lock()
            .unwrap()
            .insert(kind(&method, &target))
            .then(|| state.failed.load(Ordering::SeqCst).is_multiple_of(2)),
    };
    state.log.lock().unwrap().push(Request {
        method,
        target,
        failed: fail.is_some(),
    });
    let mut client = client;
    match fail {
        Some(true) => {
            state.failed.fetch_add(1, Ordering::SeqCst);
            client.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 17\r\nConnection: close\r\n\r\ninjected failure\n",
            )?;
            return client.shutdown(Shutdown::Both);
        }
        Some(false) => {
            state.failed.fetch_add(1, Ordering::SeqCst);
            return client.shutdown(Shutdown::Both);
        }
        None => {}
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
    client.write_all(with_connection_close(&response_head).as_bytes())?;
    // The rest, whatever its framing, until the registry closes.
    std::io::copy(&mut up, &mut client)?;
    client.flush()?;
    client.shutdown(Shutdown::Both)
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
