//! Debian packages as inputs: repositories, their signed indexes, dependency
//! resolution (for `kiln lock`) and `.deb` contents (for `kiln build`).
//!
//! Trust flows from the archive keyring only: `InRelease` is verified with
//! `gpgv` against the repository's keyring and only the text gpgv vouches for
//! is read; `Packages` must match the SHA-256 that text lists; every `.deb`
//! must match the SHA-256 its `Packages` entry (and so the lockfile) gives.
//! The mirror is never written in a recipe: a repository names its archive
//! (`debian`, `debian-security`, …) and the archive's mirror comes from
//! `KILN_MIRROR_<ARCHIVE>` (`KILN_DEBIAN_MIRROR` for the main one) or the host's
//! apt sources.

pub mod control;
pub mod extract;
pub mod install;
pub mod resolve;
pub mod truststore;
pub mod version;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::store::Store;

use self::control::Stanza;

pub use crate::recipe::MAIN_ARCHIVE;

/// The keyring used when a repository names none.
pub const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A repository as the recipe names it.
#[derive(Debug, Clone)]
pub struct Repository {
    /// The recipe's name for it (`[repositories.NAME]`).
    pub name: String,
    /// The suite (`bookworm`, `bookworm-updates`).
    pub suite: String,
    /// Components (`main`).
    pub components: Vec<String>,
    /// The keyring that must have signed `InRelease`.
    pub keyring: PathBuf,
    /// The archive it comes from (`debian`, `debian-security`, …), which
    /// picks its mirror ([`archive_mirror`]).
    pub archive: String,
    /// Where the recipe writes it, for errors.
    pub span: std::ops::Range<usize>,
}

/// One package as an index lists it.
#[derive(Debug, Clone)]
pub struct Package {
    /// `Package`.
    pub name: String,
    /// `Version`.
    pub version: String,
    /// `Architecture`.
    pub arch: String,
    /// `Filename`: the path inside the archive (`pool/…`).
    pub path: String,
    /// `SHA256`.
    pub sha256: Digest,
    /// `Size`.
    pub size: u64,
    /// The other fields resolution reads (relations, `Multi-Arch`,
    /// `Priority`, `Essential`).
    pub stanza: control::Fields,
    /// The repository it came from.
    pub repository: String,
}

impl Package {
    /// `Essential: yes`.
    pub fn essential(&self) -> bool {
        self.stanza.get("Essential").is_some_and(|v| v == "yes")
    }
}

/// The mirror of the main archive: `KILN_MIRROR_DEBIAN` (or `KILN_DEBIAN_MIRROR`),
/// else the first Debian archive in the host's apt sources.
pub fn mirror() -> Result<String> {
    archive_mirror(MAIN_ARCHIVE, "").ok_or_else(|| {
        Error::invalid(
            "no Debian mirror: `KILN_DEBIAN_MIRROR` is unset and the host's apt sources name none",
            Some("set `KILN_DEBIAN_MIRROR` to the URL of a Debian archive".into()),
        )
    })
}

/// The environment variable that names the mirror of `archive`:
/// `KILN_MIRROR_` and the name upper-cased, `-` as `_` (`KILN_MIRROR_DEBIAN_SECURITY`).
pub fn mirror_variable(archive: &str) -> String {
    format!(
        "KILN_MIRROR_{}",
        archive.to_ascii_uppercase().replace('-', "_")
    )
}

/// The environment variable that lists the fallback mirrors of `archive`
/// (`KILN_FALLBACK_DEBIAN=URL[,URL…]`), tried for a pinned `.deb` the mirror no
/// longer has.
pub fn fallback_variable(archive: &str) -> String {
    format!(
        "KILN_FALLBACK_{}",
        archive.to_ascii_uppercase().replace('-', "_")
    )
}

fn env_url(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|m| m.trim().trim_end_matches('/').to_string())
        .filter(|m| !m.is_empty())
}

/// The mirror of `archive` for `suite`: its environment variable
/// ([`mirror_variable`]; `KILN_DEBIAN_MIRROR` too for the main archive), else
/// the host's apt source whose suites include `suite`, else (the main archive
/// only) the host's first source that is not a security archive.
pub fn archive_mirror(archive: &str, suite: &str) -> Option<String> {
    if let Some(m) = env_url(&mirror_variable(archive)) {
        return Some(m);
    }
    if archive == MAIN_ARCHIVE {
        if let Some(m) = env_url("KILN_DEBIAN_MIRROR") {
            return Some(m);
        }
    }
    let sources = host_sources();
    if let Some((uri, _)) = sources
        .iter()
        .find(|(_, suites)| !suite.is_empty() && suites.iter().any(|s| s == suite))
    {
        return Some(uri.clone());
    }
    (archive == MAIN_ARCHIVE)
        .then(|| {
            sources
                .iter()
                .find(|(_, suites)| !suites.iter().any(|s| s.contains("security")))
                .map(|(uri, _)| uri.clone())
        })
        .flatten()
}

/// The fallback mirrors of `archive`, in order ([`fallback_variable`];
/// `KILN_DEBIAN_FALLBACK` too for the main archive).
pub fn fallbacks(archive: &str) -> Vec<String> {
    let mut names = vec![fallback_variable(archive)];
    if archive == MAIN_ARCHIVE {
        names.push("KILN_DEBIAN_FALLBACK".into());
    }
    let mut out: Vec<String> = Vec::new();
    for name in names {
        for url in std::env::var(name).unwrap_or_default().split(',') {
            let url = url.trim().trim_end_matches('/');
            if !url.is_empty() && !out.iter().any(|u| u == url) {
                out.push(url.to_string());
            }
        }
    }
    out
}

/// The host's enabled `deb` sources: (URI, suites), in apt's reading order.
fn host_sources() -> Vec<(String, Vec<String>)> {
    let mut texts = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push((false, t));
    }
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let deb822 = f.extension().is_some_and(|e| e == "sources");
            let list = f.extension().is_some_and(|e| e == "list");
            if deb822 || list {
                if let Ok(t) = std::fs::read_to_string(&f) {
                    texts.push((deb822, t));
                }
            }
        }
    }
    texts
        .iter()
        .flat_map(|(deb822, text)| parse_sources(*deb822, text))
        .collect()
}

/// The enabled `deb` sources of one apt sources file (deb822 `.sources` or
/// one-line `.list`): (URI, suites).
fn parse_sources(deb822: bool, text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    if deb822 {
        for s in control::parse(text) {
            let enabled = s.get("Enabled").is_none_or(|v| v != "no");
            let is_deb = s
                .get("Types")
                .is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
            let suites: Vec<String> = s
                .get("Suites")
                .map(|v| v.split_whitespace().map(String::from).collect())
                .unwrap_or_default();
            if enabled && is_deb {
                for uri in s
                    .get("URIs")
                    .map(|v| v.as_str())
                    .unwrap_or_default()
                    .split_whitespace()
                {
                    out.push((uri.trim_end_matches('/').to_string(), suites.clone()));
                }
            }
        }
    } else {
        for l in text.lines() {
            let l = l.split('#').next().unwrap_or_default().trim();
            // Options (`[signed-by=…]`) may hold spaces inside the brackets.
            let l = match (l.find('['), l.find(']')) {
                (Some(a), Some(b)) if a < b => format!("{} {}", &l[..a], &l[b + 1..]),
                _ => l.to_string(),
            };
            let mut words = l.split_whitespace();
            if words.next() != Some("deb") {
                continue;
            }
            let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
                continue;
            };
            out.push((
                uri.trim_end_matches('/').to_string(),
                vec![suite.to_string()],
            ));
        }
    }
    out
}

/// Downloads over HTTP(S) with a few retries.
pub struct Fetcher {
    client: reqwest::blocking::Client,
    mirror: String,
    progress: crate::progress::Progress,
}

impl Fetcher {
    /// A fetcher for `mirror`.
    pub fn new(mirror: String) -> Result<Fetcher> {
        let builder = || {
            reqwest::blocking::Client::builder()
                .connect_timeout(Duration::from_secs(30))
                .timeout(Duration::from_secs(600))
        };
        // Without system CA certificates (a minimal container) the platform
        // verifier cannot be built: an `http://` mirror (whose InRelease
        // signature is what kiln trusts) still works, and HTTPS fails closed.
        let client = builder()
            .build()
            .or_else(|_| builder().tls_certs_only([]).build())
            .map_err(|e| Error::internal("start an HTTP client", e))?;
        Ok(Fetcher {
            client,
            mirror,
            progress: Default::default(),
        })
    }

    /// The fetcher, reporting the bytes of [`Fetcher::get_package`] to `progress`.
    pub fn with_progress(mut self, progress: crate::progress::Progress) -> Fetcher {
        self.progress = progress;
        self
    }

    /// The mirror's URL.
    pub fn mirror(&self) -> &str {
        &self.mirror
    }

    /// GETs `rel` (relative to the mirror) into memory.
    pub fn get(&self, rel: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.get_into(rel, &mut out)?;
        Ok(out)
    }

    /// GETs `rel` into a writer, retrying transient failures from the start.
    pub fn get_into(&self, rel: &str, out: &mut dyn std::io::Write) -> Result<()> {
        self.get_metered(rel, out, None)
    }

    /// GETs package `name` (the `.deb` at `rel`) into a writer, as
    /// [`Fetcher::get_into`] does, its bytes reported as they arrive.
    pub fn get_package(&self, rel: &str, name: &str, out: &mut dyn std::io::Write) -> Result<()> {
        self.get_metered(rel, out, Some(name))
    }

    fn get_metered(
        &self,
        rel: &str,
        out: &mut dyn std::io::Write,
        name: Option<&str>,
    ) -> Result<()> {
        let url = format!("{}/{}", self.mirror, rel.trim_start_matches('/'));
        let mut last: (Option<u16>, Option<crate::error::BoxError>) = (None, None);
        for attempt in 0..4u32 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(300 << attempt));
            }
            match self.client.get(&url).send() {
                Ok(resp) if resp.status().is_success() => {
                    // Whole before it reaches `out` (a failed attempt is
                    // retried from the start): a small body in memory, a
                    // large one (an index, a package) in an unnamed
                    // temporary file, so it is never held in memory.
                    let mut resp = resp;
                    let keep = |e: std::io::Error| {
                        Error::internal(format!("keep the download of `{url}`"), e)
                    };
                    let meter = name.map(|n| {
                        let kind = crate::progress::Kind::Package;
                        self.progress.start(kind, n, resp.content_length())
                    });
                    let read = if resp.content_length().is_some_and(|n| n <= 1 << 20) {
                        let mut buf = Vec::new();
                        copy_metered(&mut resp, &mut buf, meter.as_ref()).map(|_| Held::Memory(buf))
                    } else {
                        let mut file = tempfile::tempfile().map_err(keep)?;
                        copy_metered(&mut resp, &mut file, meter.as_ref()).map(|_| Held::File(file))
                    };
                    match read {
                        Ok(held) => {
                            if let Some(m) = &meter {
                                m.finish();
                            }
                            match held {
                                Held::Memory(buf) => out.write_all(&buf).map_err(keep)?,
                                Held::File(mut file) => {
                                    std::io::Seek::rewind(&mut file).map_err(keep)?;
                                    std::io::copy(&mut file, out).map_err(keep)?;
                                }
                            }
                            return Ok(());
                        }
                        Err(e) => last = (None, Some(e.into())),
                    }
                }
                Ok(resp) if resp.status().is_server_error() || resp.status().as_u16() == 429 => {
                    last = (Some(resp.status().as_u16()), None);
                }
                Ok(resp) => {
                    return Err(Error::Network {
                        action: "download".into(),
                        url,
                        status: Some(resp.status().as_u16()),
                        hint: Some(
                            "check the suite, component and package names, and the mirror".into(),
                        ),
                        source: None,
                    })
                }
                Err(e) => last = (None, Some(e.into())),
            }
        }
        Err(Error::Network {
            action: "download".into(),
            url,
            status: last.0,
            hint: Some("check that the mirror is reachable (`KILN_MIRROR_<ARCHIVE>`, `KILN_DEBIAN_MIRROR` or the host's apt sources)".into()),
            source: last.1,
        })
    }
}

/// Reads `from` to its end into `buf`, moving `meter` as bytes arrive.
/// Where a download is held until it is whole.
enum Held {
    Memory(Vec<u8>),
    File(std::fs::File),
}

/// Copies `from` into `to`, moving `meter` (if any) by the bytes copied.
fn copy_metered(
    from: &mut impl std::io::Read,
    to: &mut impl std::io::Write,
    meter: Option<&crate::progress::Meter>,
) -> std::io::Result<u64> {
    let mut chunk = vec![0u8; 64 << 10];
    let mut done = 0u64;
    loop {
        match from.read(&mut chunk) {
            Ok(0) => return Ok(done),
            Ok(n) => {
                to.write_all(&chunk[..n])?;
                done += n as u64;
                if let Some(m) = meter {
                    m.set(done);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Verifies a clearsigned `InRelease` with gpgv against `keyring` and returns
/// the signed text (and only that).
pub fn verify_inrelease(signed: &[u8], keyring: &Path, what: &str) -> Result<String> {
    let dir = tempfile::tempdir().at("create a temporary directory", &std::env::temp_dir())?;
    let input = dir.path().join("InRelease");
    let output = dir.path().join("Release");
    std::fs::write(&input, signed).at("write", &input)?;
    if !keyring.is_file() {
        return Err(Error::invalid(
            format!("keyring `{}` does not exist", keyring.display()),
            Some(
                "install `debian-archive-keyring`, or set `keyring` in the repository's table"
                    .into(),
            ),
        ));
    }
    let out = std::process::Command::new("gpgv")
        .arg("--keyring")
        .arg(keyring)
        .arg("--output")
        .arg(&output)
        .arg(&input)
        .output()
        .map_err(|e| Error::tool_missing("gpgv", "gpgv", e))?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        return Err(Error::Verification {
            message: format!(
                "the signature of {what} does not verify against `{}`: {why}",
                keyring.display()
            ),
            hint: Some(
                "the mirror served an index not signed by the archive key: nothing was written"
                    .into(),
            ),
        });
    }
    std::fs::read_to_string(&output).at("read", &output)
}

/// The SHA-256 and size `Release` text lists for `path`.
pub fn release_entry(release: &str, path: &str) -> Option<(Digest, u64)> {
    let stanza = control::parse(release).into_iter().next()?;
    stanza.get("SHA256")?.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (hash, size, p) = (f.next()?, f.next()?, f.next()?);
        (p == path)
            .then(|| Some((format!("sha256:{hash}").parse().ok()?, size.parse().ok()?)))
            .flatten()
    })
}

/// Reads the package index of `repo` for `arch`: verified `InRelease`, then
/// `Packages.xz` (or `.gz`, or the plain `Packages`: the first that
/// `InRelease` lists) checked against it, kept in the store by digest.
/// The packages come in chunks of at most [`INDEX_CHUNK`]: an index of tens
/// of thousands is never moved into a vector twice its size as it grows.
pub fn load_index(
    fetcher: &Fetcher,
    store: &Store,
    repo: &Repository,
    arch: &str,
) -> Result<Vec<Vec<Package>>> {
    let what = format!("`dists/{}/InRelease`", repo.suite);
    let signed = fetcher.get(&format!("dists/{}/InRelease", repo.suite))?;
    let release = verify_inrelease(&signed, &repo.keyring, &what)?;
    let mut packages: Vec<Vec<Package>> = Vec::new();
    for component in &repo.components {
        let base = format!("{component}/binary-{arch}/Packages");
        // Every form `InRelease` lists, quickest to read first (gzip
        // decompresses several times faster than xz, which costs more than
        // the larger download saves, as an index is downloaded once and read
        // at every lock); a mirror may lack some (a local one may hold only
        // the plain `Packages`).
        let mut listed: Vec<(String, Digest)> = ["Packages.gz", "Packages.xz", "Packages"]
            .iter()
            .filter_map(|file| {
                let p = format!("{component}/binary-{arch}/{file}");
                release_entry(&release, &p).map(|(d, _)| (p, d))
            })
            .collect();
        if listed.is_empty() {
            return Err(Error::invalid(
                format!(
                    "the `{}` suite's `InRelease` lists no `{base}.xz`, `.gz` or `{base}`",
                    repo.suite
                ),
                Some(format!(
                    "check `components` and that the suite has `{arch}`"
                )),
            ));
        }
        // A form already in the store is read before another is downloaded.
        let mut stored = Vec::new();
        for (_, digest) in &listed {
            stored.push(store.contains(digest));
        }
        let mut order: Vec<usize> = (0..listed.len()).collect();
        order.sort_by_key(|&i| !stored[i]);
        listed = order.into_iter().map(|i| listed[i].clone()).collect();
        let mut found = None;
        let mut missing = None;
        for (rel, digest) in listed {
            if !store.check_blob(&digest)? {
                let mut w = store.writer()?;
                match fetcher.get_into(&format!("dists/{}/{rel}", repo.suite), &mut w) {
                    Ok(()) => {}
                    Err(
                        e @ Error::Network {
                            status: Some(404 | 410),
                            ..
                        },
                    ) => {
                        missing.get_or_insert(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                w.commit(Some(&digest)).map_err(|e| match e {
                    Error::DigestMismatch {
                        expected, actual, ..
                    } => Error::DigestMismatch {
                        what: format!("`dists/{}/{rel}` (as `InRelease` lists it)", repo.suite),
                        expected,
                        actual,
                    },
                    other => other,
                })?;
            }
            found = Some((rel, digest));
            break;
        }
        let Some((rel, digest)) = found else {
            return Err(missing.expect("a listed index was tried"));
        };
        // The index streams through the decompressor into stanzas; only the
        // fields resolution reads are kept.
        let mut sink = control::StanzaSink::new(INDEX_FIELDS, |stanza| {
            let take = |stanza: &mut Stanza, k: &str| stanza.remove(k).unwrap_or_default();
            let mut stanza = stanza;
            let Ok(sha256) = format!("sha256:{}", take(&mut stanza, "SHA256")).parse() else {
                return;
            };
            if packages.last().is_none_or(|c| c.len() == INDEX_CHUNK) {
                packages.push(Vec::with_capacity(INDEX_CHUNK));
            }
            let chunk = packages.last_mut().expect("just pushed");
            chunk.push(Package {
                name: take(&mut stanza, "Package"),
                version: take(&mut stanza, "Version"),
                arch: take(&mut stanza, "Architecture"),
                path: take(&mut stanza, "Filename"),
                sha256,
                size: take(&mut stanza, "Size").parse().unwrap_or(0),
                repository: repo.name.clone(),
                stanza: stanza.into_iter().collect(),
            });
        });
        let mut stored = std::io::BufReader::new(store.open_blob(&digest)?);
        let damaged = |kind: &str, e: &dyn std::fmt::Display| {
            Error::unusable(
                format!("`{rel}` is not valid {kind}"),
                e.to_string(),
                "the mirror served a damaged index: try again, or another mirror (`KILN_DEBIAN_MIRROR`)",
            )
        };
        if rel.ends_with(".xz") {
            lzma_rs::xz_decompress(&mut stored, &mut sink).map_err(|e| damaged("xz", &e))?;
        } else if rel.ends_with(".gz") {
            std::io::copy(&mut flate2::read::GzDecoder::new(stored), &mut sink)
                .map_err(|e| damaged("gzip", &e))?;
        } else {
            std::io::copy(&mut stored, &mut sink).at("read", &store.blob_path(&digest))?;
        }
        sink.finish();
    }
    Ok(packages)
}

/// How many packages [`load_index`] puts in one vector.
pub const INDEX_CHUNK: usize = 4096;

/// The fields of a `Packages` stanza that kiln reads: those it pins, and
/// those resolution reads (relations, `Multi-Arch`, `Priority`, `Essential`).
const INDEX_FIELDS: &[&str] = &[
    "Package",
    "Version",
    "Architecture",
    "Filename",
    "SHA256",
    "Size",
    "Pre-Depends",
    "Depends",
    "Provides",
    "Conflicts",
    "Breaks",
    "Multi-Arch",
    "Priority",
    "Essential",
];

/// The Debian architecture of a platform's `arch` (`amd64`, `arm64`, `armhf` …).
pub fn debian_arch(arch: &str, variant: Option<&str>) -> String {
    match (arch, variant) {
        ("arm", Some("v7")) | ("arm", None) => "armhf".into(),
        ("arm", Some(_)) => "armel".into(),
        ("386", _) => "i386".into(),
        (a, _) => a.into(),
    }
}

#[cfg(test)]
mod archive_tests {
    use super::*;

    #[test]
    fn host_sources_give_each_suite_its_uri() {
        let deb822 = "Types: deb\n# a comment\nURIs: http://main.invalid/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
                      Types: deb\nURIs: http://security.invalid/debian-security\nSuites: bookworm-security\nComponents: main\n\n\
                      Types: deb-src\nURIs: http://src.invalid/debian\nSuites: bookworm\n\n\
                      Enabled: no\nTypes: deb\nURIs: http://off.invalid/debian\nSuites: trixie\n";
        assert_eq!(
            parse_sources(true, deb822),
            [
                (
                    "http://main.invalid/debian".to_string(),
                    vec!["bookworm".to_string(), "bookworm-updates".to_string()]
                ),
                (
                    "http://security.invalid/debian-security".to_string(),
                    vec!["bookworm-security".to_string()]
                ),
            ]
        );
        let list = "# deb http://commented.invalid/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://main.invalid/debian bookworm main\n\
                    deb-src http://src.invalid/debian bookworm main\n\
                    deb http://security.invalid/debian-security bookworm-security main # updates\n";
        assert_eq!(
            parse_sources(false, list),
            [
                (
                    "http://main.invalid/debian".to_string(),
                    vec!["bookworm".to_string()]
                ),
                (
                    "http://security.invalid/debian-security".to_string(),
                    vec!["bookworm-security".to_string()]
                ),
            ]
        );
    }

    #[test]
    fn archive_variables() {
        assert_eq!(
            mirror_variable("debian-security"),
            "KILN_MIRROR_DEBIAN_SECURITY"
        );
        assert_eq!(fallback_variable("debian"), "KILN_FALLBACK_DEBIAN");
    }
}
