//! Proves the local Debian repository of `tests/it/support/apt.rs` right with
//! Debian's own tools: gpgv checks its signature, sha256sum and apt-helper its
//! hashes, apt-get updates from it and downloads from it, and dpkg-deb reads
//! its packages. kiln itself is not involved.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::apt::{need, run, tool, Pkg, Repo};

const SUITE: &str = "kiln-test";

/// A repository with every kind of package the fixture supports: per-arch
/// and `all`, each data.tar compressor, relations, essential, a second
/// component, an epoch and `~`/`+` in a version.
fn sample() -> Repo {
    Repo::start(
        SUITE,
        &["main", "contrib"],
        &[
            Pkg::new("hello", "1.0-1", "amd64")
                .depends("libhello1 (>= 1.0), base-files")
                .file("/usr/bin/hello", "#!/bin/sh\necho hello amd64\n", 0o755)
                .file("/usr/share/doc/hello/README", "hello\n", 0o644)
                .symlink("/usr/bin/hi", "hello")
                .dir("/var/lib/hello", 0o700),
            Pkg::new("hello", "1.0-1", "arm64")
                .depends("libhello1 (>= 1.0), base-files")
                .file("/usr/bin/hello", "#!/bin/sh\necho hello arm64\n", 0o755)
                .compression("zstd"),
            Pkg::new("libhello1", "1.0-1", "amd64")
                .pre_depends("base-files")
                .field("Multi-Arch", "same")
                .file(
                    "/usr/lib/x86_64-linux-gnu/libhello.so.1",
                    [0u8, 1, 2, 255],
                    0o644,
                )
                .compression("gzip"),
            Pkg::new("base-files", "13", "all")
                .essential()
                .provides("base")
                .file("/etc/debian_version", "12.0\n", 0o644)
                .file("/usr/bin/su-ish", "x", 0o4755),
            Pkg::new("extra", "2:1.2~rc1+b1", "all")
                .component("contrib")
                .file("/opt/extra/data", vec![b'e'; 5000], 0o600)
                .compression("none"),
        ],
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn sha256sum(path: &Path) -> String {
    let out = run(tool("sha256sum").arg(path));
    stdout(&out).split_whitespace().next().unwrap().to_string()
}

/// The `SHA256:` section of a Release file: path → (hash, size).
fn release_sha256(release: &str) -> BTreeMap<String, (String, u64)> {
    let mut map = BTreeMap::new();
    let mut inside = false;
    for line in release.lines() {
        if line == "-----BEGIN PGP SIGNATURE-----" {
            break;
        }
        if !line.starts_with(' ') {
            inside = line == "SHA256:";
            continue;
        }
        if inside {
            let f: Vec<&str> = line.split_whitespace().collect();
            map.insert(f[2].to_string(), (f[0].to_string(), f[1].parse().unwrap()));
        }
    }
    map
}

/// The value of `field` in a deb822 paragraph.
fn field<'a>(paragraph: &'a str, name: &str) -> Option<&'a str> {
    paragraph.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(": "))
            .map(str::trim)
    })
}

/// The paragraphs of a `Packages` file, as (Package, Architecture, paragraph).
fn paragraphs(packages: &str) -> Vec<(String, String, String)> {
    packages
        .split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            (
                field(p, "Package").unwrap().to_string(),
                field(p, "Architecture").unwrap().to_string(),
                p.to_string(),
            )
        })
        .collect()
}

fn gpgv(keyring: &Path, files: &[&Path]) -> Output {
    tool("gpgv")
        .arg("--keyring")
        .arg(keyring)
        .args(files)
        .output()
        .unwrap()
}

#[test]
fn inrelease_verifies_with_gpgv_against_its_key_only() {
    let repo = sample();
    let inrelease = repo.path(&repo.dists("InRelease"));
    let release = repo.path(&repo.dists("Release"));
    let detached = repo.path(&repo.dists("Release.gpg"));

    let ok = gpgv(&repo.keyring, &[&inrelease]);
    assert!(ok.status.success(), "gpgv InRelease: {}", stderr(&ok));
    assert!(stderr(&ok).contains("Good signature"), "{}", stderr(&ok));
    let ok = gpgv(&repo.keyring, &[&detached, &release]);
    assert!(ok.status.success(), "gpgv Release.gpg: {}", stderr(&ok));

    let other = Repo::other_keyring();
    let bad = gpgv(&other, &[&inrelease]);
    assert!(!bad.status.success(), "gpgv accepted another key");
    assert!(
        stderr(&bad).contains("No public key") || stderr(&bad).contains("NO_PUBKEY"),
        "{}",
        stderr(&bad)
    );
    assert!(!gpgv(&other, &[&detached, &release]).status.success());

    // The keyring is binary (what gpgv and apt's signed-by= take), not armored.
    let keyring = std::fs::read(&repo.keyring).unwrap();
    assert!(!keyring.starts_with(b"-----BEGIN"), "keyring is armored");
    assert!(!keyring.is_empty());

    // Changing the signed text breaks the signature.
    let text = String::from_utf8(repo.read(&repo.dists("InRelease"))).unwrap();
    repo.write(
        &repo.dists("InRelease"),
        text.replace("Suite: kiln-test", "Suite: kiln-tesT"),
    );
    assert!(!gpgv(&repo.keyring, &[&inrelease]).status.success());
    repo.resign();
    assert!(gpgv(&repo.keyring, &[&inrelease]).status.success());
}

#[test]
fn inrelease_lists_the_true_hashes_of_the_served_indexes() {
    let repo = sample();
    let inrelease = String::from_utf8(repo.read(&repo.dists("InRelease"))).unwrap();
    for (name, value) in [
        ("Suite", SUITE),
        ("Codename", SUITE),
        ("Architectures", "amd64 arm64"),
        ("Components", "main contrib"),
    ] {
        assert_eq!(
            field(&inrelease, name),
            Some(value),
            "{name} in\n{inrelease}"
        );
    }
    let hashes = release_sha256(&inrelease);
    for comp in ["main", "contrib"] {
        for arch in ["amd64", "arm64"] {
            for f in ["Packages", "Packages.xz", "Packages.gz"] {
                let rel = format!("{comp}/binary-{arch}/{f}");
                assert!(hashes.contains_key(&rel), "{rel} not in InRelease");
            }
        }
    }
    // Every listed file is served with that hash and size.
    for (rel, (sha, size)) in &hashes {
        let p = repo.path(&repo.dists(rel));
        assert_eq!(&sha256sum(&p), sha, "{rel}");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), *size, "{rel}");
    }

    // Over HTTP, apt's own downloader checks the listed hash.
    let helper = "/usr/lib/apt/apt-helper";
    need(helper);
    let tmp = tempfile::tempdir().unwrap();
    let (sha, _) = &hashes["main/binary-amd64/Packages.xz"];
    let url = repo.url_of(&repo.dists("main/binary-amd64/Packages.xz"));
    let fetch = |dest: &str| {
        Command::new(helper)
            .args(["-o", "Acquire::http::Proxy=DIRECT"])
            .args(["-o", "APT::Sandbox::User=root"])
            .env_remove("http_proxy")
            .args(["download-file", &url])
            .arg(tmp.path().join(dest))
            .arg(format!("SHA256:{sha}"))
            .output()
            .unwrap()
    };
    let got = fetch("good");
    assert!(got.status.success(), "apt-helper: {}", stderr(&got));
    assert_eq!(sha256sum(&tmp.path().join("good")), *sha);
    assert!(repo
        .requests()
        .contains(&repo.dists("main/binary-amd64/Packages.xz")));

    repo.tamper(&repo.dists("main/binary-amd64/Packages.xz"));
    let bad = fetch("bad");
    assert!(!bad.status.success(), "apt-helper took a tampered file");
}

#[test]
fn indexes_list_all_packages_in_every_architecture() {
    let repo = sample();
    let index = |comp: &str, arch: &str| {
        let dir = format!("{comp}/binary-{arch}");
        let plain = String::from_utf8(repo.read(&repo.dists(&format!("{dir}/Packages")))).unwrap();
        let xz = run(tool("xz")
            .arg("-dc")
            .arg(repo.path(&repo.dists(&format!("{dir}/Packages.xz")))));
        let gz = run(tool("gzip")
            .arg("-dc")
            .arg(repo.path(&repo.dists(&format!("{dir}/Packages.gz")))));
        assert_eq!(stdout(&xz), plain, "{dir}/Packages.xz");
        assert_eq!(stdout(&gz), plain, "{dir}/Packages.gz");
        paragraphs(&plain)
    };
    let names = |ps: &[(String, String, String)]| -> Vec<(String, String)> {
        let mut v: Vec<_> = ps.iter().map(|(n, a, _)| (n.clone(), a.clone())).collect();
        v.sort();
        v
    };
    let pair = |n: &str, a: &str| (n.to_string(), a.to_string());

    let amd64 = index("main", "amd64");
    assert_eq!(
        names(&amd64),
        [
            pair("base-files", "all"),
            pair("hello", "amd64"),
            pair("libhello1", "amd64")
        ]
    );
    let arm64 = index("main", "arm64");
    assert_eq!(
        names(&arm64),
        [pair("base-files", "all"), pair("hello", "arm64")]
    );
    for arch in ["amd64", "arm64"] {
        assert_eq!(names(&index("contrib", arch)), [pair("extra", "all")]);
    }

    let get = |ps: &[(String, String, String)], n: &str| {
        ps.iter().find(|(p, _, _)| p == n).unwrap().2.clone()
    };
    let hello = get(&amd64, "hello");
    assert_eq!(
        field(&hello, "Depends"),
        Some("libhello1 (>= 1.0), base-files")
    );
    assert_eq!(
        field(&hello, "Filename"),
        Some("pool/main/h/hello/hello_1.0-1_amd64.deb")
    );
    assert_eq!(
        field(&hello, "SHA256").unwrap(),
        sha256sum(&repo.path("pool/main/h/hello/hello_1.0-1_amd64.deb"))
    );
    let lib = get(&amd64, "libhello1");
    assert_eq!(field(&lib, "Pre-Depends"), Some("base-files"));
    assert_eq!(field(&lib, "Multi-Arch"), Some("same"));
    assert_eq!(
        field(&lib, "Filename"),
        Some("pool/main/libh/libhello1/libhello1_1.0-1_amd64.deb")
    );
    let base = get(&arm64, "base-files");
    assert_eq!(field(&base, "Essential"), Some("yes"));
    assert_eq!(field(&base, "Provides"), Some("base"));
    let extra = get(&index("contrib", "amd64"), "extra");
    assert_eq!(field(&extra, "Version"), Some("2:1.2~rc1+b1"));
    assert_eq!(
        field(&extra, "Filename"),
        Some("pool/contrib/e/extra/extra_1.2~rc1+b1_all.deb")
    );
    assert_eq!(
        repo.deb_path("extra"),
        "pool/contrib/e/extra/extra_1.2~rc1+b1_all.deb"
    );
}

/// apt-get with a configuration of its own: nothing from the host's sources,
/// keys, preferences, state or proxies.
struct Apt {
    dir: tempfile::TempDir,
}

impl Apt {
    fn new(url: &str, keyring: &Path) -> Apt {
        let dir = tempfile::tempdir().unwrap();
        for d in [
            "sources.list.d",
            "trusted.gpg.d",
            "preferences.d",
            "state/lists/partial",
            "cache/archives/partial",
            "out",
        ] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("status"), "").unwrap();
        std::fs::write(
            dir.path().join("sources.list"),
            format!(
                "deb [signed-by={}] {url} {SUITE} main contrib\n",
                keyring.display()
            ),
        )
        .unwrap();
        Apt { dir }
    }

    fn cmd(&self, bin: &str) -> Command {
        let d = self.dir.path();
        let mut c = tool(bin);
        c.current_dir(d.join("out"))
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .env("LC_ALL", "C");
        let opts: Vec<(&str, PathBuf)> = vec![
            ("Dir::Etc::sourcelist", d.join("sources.list")),
            ("Dir::Etc::sourceparts", d.join("sources.list.d")),
            ("Dir::Etc::trusted", d.join("trusted.gpg")),
            ("Dir::Etc::trustedparts", d.join("trusted.gpg.d")),
            ("Dir::Etc::preferences", d.join("preferences")),
            ("Dir::Etc::preferencesparts", d.join("preferences.d")),
            ("Dir::State", d.join("state")),
            ("Dir::State::status", d.join("status")),
            ("Dir::Cache", d.join("cache")),
        ];
        for (k, v) in opts {
            c.arg("-o").arg(format!("{k}={}", v.display()));
        }
        for o in [
            "APT::Architecture=amd64",
            "APT::Architectures::=amd64",
            "APT::Architectures::=arm64",
            "APT::Sandbox::User=root",
            "Acquire::Languages=none",
            "Acquire::http::Proxy=DIRECT",
            "Acquire::Retries=0",
        ] {
            c.arg("-o").arg(o);
        }
        c
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }
}

#[test]
fn apt_get_updates_and_downloads_from_the_repository() {
    let repo = sample();
    let apt = Apt::new(&repo.url, &repo.keyring);
    let update = apt.cmd("apt-get").arg("update").output().unwrap();
    let text = format!("{}{}", stdout(&update), stderr(&update));
    assert!(update.status.success(), "apt-get update:\n{text}");
    assert!(!text.contains("W:") && !text.contains("E:"), "{text}");
    let log = repo.requests();
    assert!(log.contains(&repo.dists("InRelease")), "{log:?}");

    let policy = run(apt.cmd("apt-cache").args(["policy", "extra"]));
    assert!(
        stdout(&policy).contains("2:1.2~rc1+b1"),
        "{}",
        stdout(&policy)
    );

    run(apt.cmd("apt-get").args([
        "download",
        "hello",
        "hello:arm64",
        "libhello1",
        "base-files",
        "extra",
    ]));
    let mut got: Vec<String> = std::fs::read_dir(apt.out())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "base-files_13_all.deb",
            "extra_2%3a1.2~rc1+b1_all.deb",
            "hello_1.0-1_amd64.deb",
            "hello_1.0-1_arm64.deb",
            "libhello1_1.0-1_amd64.deb",
        ]
    );
    for (file, pool) in [
        (
            "hello_1.0-1_amd64.deb",
            "pool/main/h/hello/hello_1.0-1_amd64.deb",
        ),
        (
            "hello_1.0-1_arm64.deb",
            "pool/main/h/hello/hello_1.0-1_arm64.deb",
        ),
        (
            "extra_2%3a1.2~rc1+b1_all.deb",
            "pool/contrib/e/extra/extra_1.2~rc1+b1_all.deb",
        ),
    ] {
        assert_eq!(
            std::fs::read(apt.out().join(file)).unwrap(),
            repo.read(pool),
            "{file}"
        );
        assert!(repo.requests().contains(&pool.to_string()), "{pool}");
    }

    // A tampered .deb is refused by its Packages hash.
    std::fs::remove_dir_all(apt.out()).unwrap();
    std::fs::create_dir(apt.out()).unwrap();
    repo.tamper(&repo.deb_path("base-files"));
    let bad = apt
        .cmd("apt-get")
        .args(["download", "base-files"])
        .output()
        .unwrap();
    assert!(!bad.status.success(), "apt-get took a tampered .deb");
    let text = stderr(&bad);
    assert!(
        text.contains("Hash Sum mismatch") || text.contains("unexpected size"),
        "{text}"
    );
}

#[test]
fn apt_get_refuses_another_key_and_a_tampered_index() {
    let repo = sample();
    let apt = Apt::new(&repo.url, &Repo::other_keyring());
    let update = apt.cmd("apt-get").arg("update").output().unwrap();
    let text = stderr(&update);
    assert!(!update.status.success(), "apt-get trusted another key");
    assert!(
        text.contains("NO_PUBKEY") && text.contains("is not signed"),
        "{text}"
    );

    let apt = Apt::new(&repo.url, &repo.keyring);
    repo.tamper(&repo.dists("main/binary-amd64/Packages.xz"));
    repo.tamper(&repo.dists("main/binary-amd64/Packages.gz"));
    let update = apt.cmd("apt-get").arg("update").output().unwrap();
    let text = format!("{}{}", stdout(&update), stderr(&update));
    assert!(
        !update.status.success(),
        "apt-get took a tampered index:\n{text}"
    );
    assert!(
        text.contains("main/binary-amd64/Packages.xz")
            && (text.contains("unexpected size") || text.contains("Hash Sum mismatch")),
        "{text}"
    );
}

/// The names of the members of a `.deb` (an ar archive).
fn ar_members(deb: &[u8]) -> Vec<String> {
    assert!(deb.starts_with(b"!<arch>\n"), "not an ar archive");
    let mut names = Vec::new();
    let mut at = 8;
    while at + 60 <= deb.len() {
        let header = &deb[at..at + 60];
        let name = String::from_utf8_lossy(&header[..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: usize = String::from_utf8_lossy(&header[48..58])
            .trim()
            .parse()
            .unwrap();
        names.push(name);
        at += 60 + size + size % 2;
    }
    names
}

#[test]
fn debs_hold_the_given_files_owned_by_root() {
    let repo = sample();
    let deb = repo.path("pool/main/h/hello/hello_1.0-1_amd64.deb");
    let listing = stdout(&run(tool("dpkg-deb").env("TZ", "UTC").arg("-c").arg(&deb)));
    let lines: Vec<Vec<&str>> = listing
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let entry = |path: &str| {
        lines
            .iter()
            .find(|l| l[5] == path)
            .unwrap_or_else(|| panic!("{path} not in\n{listing}"))
            .clone()
    };
    assert_eq!(
        entry("./usr/bin/hello")[..3],
        ["-rwxr-xr-x", "root/root", "27"]
    );
    assert_eq!(entry("./usr/share/doc/hello/README")[0], "-rw-r--r--");
    assert_eq!(entry("./usr/bin/hi")[0], "lrwxrwxrwx");
    assert_eq!(entry("./usr/bin/hi")[6..], ["->", "hello"]);
    assert_eq!(entry("./var/lib/hello/")[0], "drwx------");
    assert_eq!(entry("./usr/")[0], "drwxr-xr-x");
    assert!(lines.iter().all(|l| l[1] == "root/root"), "{listing}");
    // mtimes clamped to DEB_EPOCH (2023-11-14).
    assert!(lines.iter().all(|l| l[3] == "2023-11-14"), "{listing}");

    let base = stdout(&run(tool("dpkg-deb")
        .arg("-c")
        .arg(repo.path(&repo.deb_path("base-files")))));
    assert!(base.contains("-rwsr-xr-x root/root"), "{base}");

    // Control fields.
    let control = stdout(&run(tool("dpkg-deb").arg("-f").arg(&deb).args([
        "Package",
        "Version",
        "Architecture",
        "Depends",
    ])));
    assert_eq!(
        control,
        "Package: hello\nVersion: 1.0-1\nArchitecture: amd64\n\
         Depends: libhello1 (>= 1.0), base-files\n"
    );

    // Contents, extracted by dpkg-deb.
    let tmp = tempfile::tempdir().unwrap();
    run(tool("dpkg-deb")
        .arg("-x")
        .arg(repo.path(&repo.deb_path("libhello1")))
        .arg(tmp.path()));
    assert_eq!(
        std::fs::read(tmp.path().join("usr/lib/x86_64-linux-gnu/libhello.so.1")).unwrap(),
        [0u8, 1, 2, 255]
    );

    // data.tar compressed as asked.
    for (rel, data) in [
        ("pool/main/h/hello/hello_1.0-1_amd64.deb", "data.tar.xz"),
        ("pool/main/h/hello/hello_1.0-1_arm64.deb", "data.tar.zst"),
        (
            "pool/main/libh/libhello1/libhello1_1.0-1_amd64.deb",
            "data.tar.gz",
        ),
        ("pool/contrib/e/extra/extra_1.2~rc1+b1_all.deb", "data.tar"),
    ] {
        let members = ar_members(&repo.read(rel));
        assert_eq!(members[0], "debian-binary", "{rel}");
        assert!(members[1].starts_with("control.tar"), "{rel}: {members:?}");
        assert_eq!(members[2], data, "{rel}");
    }
}

/// Sends raw HTTP/1.1 `requests` on one connection and returns what came back.
fn raw_http(repo: &Repo, requests: &str) -> String {
    let addr = repo.url.trim_start_matches("http://");
    let addr = &addr[..addr.find('/').unwrap()];
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.write_all(requests.as_bytes()).unwrap();
    let mut out = Vec::new();
    conn.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn repositories_are_independent_and_served_over_http() {
    let started: Vec<Repo> = std::thread::scope(|s| {
        let handles: Vec<_> = ["one", "two"]
            .map(|name| {
                s.spawn(move || {
                    Repo::start(
                        "s",
                        &["main"],
                        &[Pkg::new(name, "1", "all").file("/n", name, 0o644)],
                    )
                })
            })
            .into_iter()
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (a, b) = (&started[0], &started[1]);
    assert!(a.url.starts_with("http://127.0.0.1:") && a.url.ends_with("/debian"));
    assert_ne!(a.url, b.url);
    assert_ne!(a.root, b.root);
    assert_eq!(Repo::fingerprint().len(), 40);
    assert!(a.path(&a.deb_path("one")).exists() && !a.path("pool/main/t").exists());
    for r in [a, b] {
        let ok = gpgv(&r.keyring, &[&r.path(&r.dists("InRelease"))]);
        assert!(ok.status.success(), "{}", stderr(&ok));
    }

    // Pipelined requests on one kept-alive connection; HEAD has no body;
    // 404 for what is not a served file; the last asks to close.
    let inrelease = a.read(&a.dists("InRelease"));
    let answer = raw_http(
        a,
        "HEAD /debian/dists/s/InRelease HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /debian/dists/s/nope HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /debian/../debian/dists/s/InRelease HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /debian/dists/s/In%52elease HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let statuses: Vec<&str> = answer
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 200 OK"
        ],
        "{answer}"
    );
    assert!(answer.ends_with(&*String::from_utf8_lossy(&inrelease)));
    assert_eq!(
        a.requests(),
        [
            "dists/s/InRelease",
            "dists/s/nope",
            "../debian/dists/s/InRelease",
            "/elsewhere",
            "dists/s/InRelease"
        ]
    );
    assert!(b.requests().is_empty());
    a.clear_requests();
    assert!(a.requests().is_empty());

    // Dropping a repository stops serving it and removes its files.
    let root = b.root.clone();
    let addr = b
        .url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    drop(started);
    assert!(!root.exists());
    let refused = TcpStream::connect(addr).map(|mut c| {
        let _ = c.write_all(b"GET /debian/dists/s/InRelease HTTP/1.1\r\n\r\n");
        let mut s = String::new();
        let _ = c.read_to_string(&mut s);
        s
    });
    assert!(
        refused.map_or(true, |s| !s.contains("200 OK")),
        "still served after drop"
    );
}

#[test]
fn adding_a_version_and_reindexing_keep_the_repository_signed() {
    let repo = Repo::start(
        SUITE,
        &["main"],
        &[Pkg::new("tool", "1.0", "amd64").file("/usr/bin/tool", "1", 0o755)],
    );
    let versions = |repo: &Repo| -> Vec<String> {
        let text = String::from_utf8(repo.read(&repo.dists("main/binary-amd64/Packages"))).unwrap();
        let mut v: Vec<String> = paragraphs(&text)
            .iter()
            .map(|(_, _, p)| field(p, "Version").unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let verified = |repo: &Repo| {
        gpgv(&repo.keyring, &[&repo.path(&repo.dists("InRelease"))])
            .status
            .success()
    };
    assert_eq!(versions(&repo), ["1.0"]);

    let newer = Pkg::new("tool", "1.1", "amd64").file("/usr/bin/tool", "2", 0o755);
    repo.add(std::slice::from_ref(&newer));
    assert_eq!(versions(&repo), ["1.0", "1.1"]);
    assert!(verified(&repo));

    // Removing the old .deb from the pool and reindexing drops it.
    repo.remove(&Pkg::new("tool", "1.0", "amd64").pool_path("main"));
    repo.reindex();
    assert_eq!(versions(&repo), ["1.1"]);
    assert!(verified(&repo));
    let hashes = release_sha256(&String::from_utf8(repo.read(&repo.dists("InRelease"))).unwrap());
    assert_eq!(
        hashes["main/binary-amd64/Packages.xz"].0,
        sha256sum(&repo.path(&repo.dists("main/binary-amd64/Packages.xz")))
    );
    assert_eq!(
        newer.pool_path("main"),
        "pool/main/t/tool/tool_1.1_amd64.deb"
    );
}
