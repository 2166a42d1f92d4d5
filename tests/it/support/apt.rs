//! A local, signed Debian repository served over HTTP on 127.0.0.1, for the
//! tests of kiln's Debian-package support (`kiln lock` / `kiln build` with
//! `packages = [...]`).
//!
//! Everything is made with Debian's own tools, as an archive would be:
//! - each [`Pkg`] becomes a `.deb` built by `dpkg-deb --build --root-owner-group
//!   -Z<compression>` (files owned by root, mtimes clamped to [`DEB_EPOCH`]),
//!   stored at `pool/<component>/<letter>/<name>/<name>_<version>_<arch>.deb`
//!   (`<letter>` is `libx` for `libx…` names, else the first letter; the
//!   version's epoch is left out of the file name, as Debian does);
//! - `dists/<suite>/<component>/binary-<arch>/Packages` comes from
//!   `dpkg-scanpackages --multiversion --arch <arch>`, so an `Architecture:
//!   all` package appears in every `binary-<arch>` index; `Packages.xz` and
//!   `Packages.gz` are made with `xz` and `gzip -n`;
//! - `dists/<suite>/Release` comes from `apt-ftparchive release` (Origin,
//!   Label, Suite, Codename, Architectures, Components, Date and the
//!   MD5Sum/SHA1/SHA256/SHA512 of every index), and is signed with
//!   `gpg --clearsign` into `InRelease` and `gpg --detach-sign --armor` into
//!   `Release.gpg`;
//! - the key is a throwaway RSA 3072 signing key, generated once per test
//!   process in a private `GNUPGHOME`; [`Repo::keyring`] is its public key as
//!   a binary keyring (`gpg --export`), which is what `gpgv --keyring` and
//!   apt's `[signed-by=…]` take. [`Repo::other_keyring`] is a second,
//!   unrelated key, to check that kiln refuses a wrong key.
//!
//! The directory is served by a small HTTP/1.1 server on a thread of the test
//! process (a fresh port per [`Repo`]): `GET` and `HEAD` of the files under
//! [`Repo::root`] at `/debian/…`, keep-alive and pipelining, 404 for anything
//! else; every request is logged ([`Repo::requests`]).
//!
//! Files live in `$TMPDIR/kiln-apt-<pid>/`: a [`Repo`] removes its own
//! directory when dropped; an `atexit` handler stops the gpg agents and
//! removes the rest when the process exits, and the next test process sweeps
//! what a killed one left behind.
//!
//! The tools are not optional: a missing one fails the test (never skips it)
//! with the name of the Debian package to install; see [`TOOLS`].

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The external tools this module (and `tests/apt_fixture.rs`) runs, each with
/// the Debian package that provides it.
pub const TOOLS: &[(&str, &str)] = &[
    ("dpkg-deb", "dpkg"),
    ("dpkg-scanpackages", "dpkg-dev"),
    ("apt-ftparchive", "apt-utils"),
    ("gpg", "gnupg"),
    ("gpgconf", "gpgconf"),
    ("gpgv", "gpgv"),
    ("xz", "xz-utils"),
    ("gzip", "gzip"),
    ("zstd", "zstd"),
    ("apt-get", "apt"),
    ("sha256sum", "coreutils"),
];

/// The Debian packages providing [`TOOLS`].
pub const DEBIAN_PACKAGES: &[&str] = &[
    "dpkg",
    "dpkg-dev",
    "apt",
    "apt-utils",
    "gnupg",
    "gpgconf",
    "gpgv",
    "xz-utils",
    "gzip",
    "zstd",
    "coreutils",
];

/// The path prefix the repository is served under: [`Repo::url`] ends with it.
pub const URL_PREFIX: &str = "/debian";

/// `SOURCE_DATE_EPOCH` given to `dpkg-deb`: the ar members' timestamp and the
/// clamp for every mtime in the `.deb`s (2023-11-14T22:13:20Z).
pub const DEB_EPOCH: u64 = 1_700_000_000;

/// The architectures [`Repo::start`] always indexes (plus any a [`Pkg`] names).
pub const DEFAULT_ARCHITECTURES: &[&str] = &["amd64", "arm64"];

/// Whether `tool` is an executable on `PATH` (or an absolute path to one).
pub fn have(tool: &str) -> bool {
    let is_exe = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if tool.contains('/') {
        return is_exe(Path::new(tool));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| is_exe(&d.join(tool)))
}

/// Panics (never skips) when `tool` is not installed, naming its Debian package.
pub fn need(tool: &str) {
    if have(tool) {
        return;
    }
    let package = TOOLS
        .iter()
        .find(|(t, _)| *t == tool)
        .map(|(_, p)| *p)
        .unwrap_or("?");
    panic!(
        "`{tool}` is not installed (Debian package `{package}`); run scripts/test.sh, which \
         installs {}",
        DEBIAN_PACKAGES.join(" ")
    );
}

/// A command for an external tool that must be installed (see [`need`]).
pub fn tool(name: &str) -> Command {
    need(name);
    Command::new(name)
}

/// Runs `cmd`, panics with its output unless it succeeds, returns its output.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

// ---------------------------------------------------------------------------
// Packages
// ---------------------------------------------------------------------------

/// A binary package to build into the repository. Build one with
/// [`Pkg::new`] and the builder methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkg {
    pub name: String,
    /// Debian version, epoch allowed (`2:1.0-1`).
    pub version: String,
    /// `"amd64"`, `"arm64"`, … or `"all"` (listed in every architecture's index).
    pub arch: String,
    /// The raw `Depends` field; `""` for none.
    pub depends: String,
    /// The raw `Pre-Depends` field; `""` for none.
    pub pre_depends: String,
    /// The raw `Provides` field; `""` for none.
    pub provides: String,
    /// `Essential: yes` when true.
    pub essential: bool,
    /// The component the package goes in; `""` for the repository's first.
    pub component: String,
    /// Further control fields, written as given (`("Multi-Arch", "same")`).
    pub fields: Vec<(String, String)>,
    /// Regular files: (absolute path, content, mode).
    pub files: Vec<(String, Vec<u8>, u32)>,
    /// Directories with a mode of their own: (absolute path, mode). Other
    /// directories are 0755.
    pub dirs: Vec<(String, u32)>,
    /// Symbolic links: (absolute path, target as stored).
    pub symlinks: Vec<(String, String)>,
    /// The compressor of `data.tar` (and `control.tar`): `"xz"` (the
    /// default), `"gzip"`, `"zstd"` or `"none"`.
    pub compression: &'static str,
}

impl Pkg {
    /// A package with no files, no relations, compressed with xz.
    pub fn new(name: &str, version: &str, arch: &str) -> Pkg {
        Pkg {
            name: name.to_string(),
            version: version.to_string(),
            arch: arch.to_string(),
            depends: String::new(),
            pre_depends: String::new(),
            provides: String::new(),
            essential: false,
            component: String::new(),
            fields: Vec::new(),
            files: Vec::new(),
            dirs: Vec::new(),
            symlinks: Vec::new(),
            compression: "xz",
        }
    }

    /// Sets the raw `Depends` field (`"libc6 (>= 2.36), foo | bar"`).
    pub fn depends(mut self, depends: &str) -> Pkg {
        self.depends = depends.to_string();
        self
    }

    /// Sets the raw `Pre-Depends` field.
    pub fn pre_depends(mut self, pre_depends: &str) -> Pkg {
        self.pre_depends = pre_depends.to_string();
        self
    }

    /// Sets the raw `Provides` field.
    pub fn provides(mut self, provides: &str) -> Pkg {
        self.provides = provides.to_string();
        self
    }

    /// Marks the package `Essential: yes`.
    pub fn essential(mut self) -> Pkg {
        self.essential = true;
        self
    }

    /// Puts the package in `component` (one of the repository's components).
    pub fn component(mut self, component: &str) -> Pkg {
        self.component = component.to_string();
        self
    }

    /// Adds a control field (`"Multi-Arch"`, `"same"`).
    pub fn field(mut self, name: &str, value: &str) -> Pkg {
        self.fields.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds a regular file at absolute `path` with `content` and `mode`
    /// (e.g. `0o755`; setuid bits allowed).
    pub fn file(mut self, path: &str, content: impl AsRef<[u8]>, mode: u32) -> Pkg {
        self.files
            .push((path.to_string(), content.as_ref().to_vec(), mode));
        self
    }

    /// Adds a directory at absolute `path` with `mode`.
    pub fn dir(mut self, path: &str, mode: u32) -> Pkg {
        self.dirs.push((path.to_string(), mode));
        self
    }

    /// Adds a symbolic link at absolute `path` pointing at `target`.
    pub fn symlink(mut self, path: &str, target: &str) -> Pkg {
        self.symlinks.push((path.to_string(), target.to_string()));
        self
    }

    /// Sets the compressor of `data.tar`: `"xz"`, `"gzip"`, `"zstd"` or `"none"`.
    pub fn compression(mut self, compression: &'static str) -> Pkg {
        assert!(
            ["xz", "gzip", "zstd", "none"].contains(&compression),
            "unknown compression {compression:?}"
        );
        self.compression = compression;
        self
    }

    /// The `.deb`'s file name: `<name>_<version without epoch>_<arch>.deb`.
    pub fn deb_name(&self) -> String {
        let version = match self.version.split_once(':') {
            Some((_, v)) => v,
            None => &self.version,
        };
        format!("{}_{}_{}.deb", self.name, version, self.arch)
    }

    /// The `.deb`'s path relative to the repository root when in `component`:
    /// `pool/<component>/<letter>/<name>/<deb_name>`.
    pub fn pool_path(&self, component: &str) -> String {
        let letter = if self.name.starts_with("lib") && self.name.len() > 3 {
            &self.name[..4]
        } else {
            &self.name[..1]
        };
        format!(
            "pool/{component}/{letter}/{}/{}",
            self.name,
            self.deb_name()
        )
    }

    /// The control file `dpkg-deb` gets.
    fn control(&self) -> String {
        let mut kib: u64 = 1;
        kib += self
            .files
            .iter()
            .map(|(_, c, _)| (c.len() as u64).div_ceil(1024).max(1))
            .sum::<u64>();
        kib += (self.dirs.len() + self.symlinks.len()) as u64;
        let mut c = format!(
            "Package: {}\nVersion: {}\nArchitecture: {}\nMaintainer: kiln tests <test@invalid>\n\
             Installed-Size: {kib}\n",
            self.name, self.version, self.arch
        );
        if self.essential {
            c.push_str("Essential: yes\n");
        }
        for (name, value) in [
            ("Pre-Depends", &self.pre_depends),
            ("Depends", &self.depends),
            ("Provides", &self.provides),
        ] {
            if !value.is_empty() {
                c.push_str(&format!("{name}: {value}\n"));
            }
        }
        let has = |f: &str| self.fields.iter().any(|(n, _)| n.eq_ignore_ascii_case(f));
        if !has("Section") {
            c.push_str("Section: misc\n");
        }
        if !has("Priority") {
            c.push_str(if self.essential {
                "Priority: required\n"
            } else {
                "Priority: optional\n"
            });
        }
        for (name, value) in &self.fields {
            c.push_str(&format!("{name}: {value}\n"));
        }
        if !has("Description") {
            c.push_str(&format!(
                "Description: {}, a kiln test package\n Built by tests/apt_support.\n",
                self.name
            ));
        }
        c
    }

    /// Builds the `.deb` at `out`, staging its tree under `scratch`.
    fn build(&self, scratch: &Path, out: &Path) {
        let stage = scratch.join(format!("stage-{}", self.deb_name()));
        let _ = std::fs::remove_dir_all(&stage);
        let inside = |abs: &str| -> PathBuf {
            let rel = abs.trim_start_matches('/');
            assert!(
                abs.starts_with('/')
                    && !rel.is_empty()
                    && rel
                        .split('/')
                        .all(|c| !c.is_empty() && c != "." && c != ".."),
                "package {}: {abs:?} is not a plain absolute path",
                self.name
            );
            stage.join(rel)
        };
        std::fs::create_dir_all(stage.join("DEBIAN")).unwrap();
        std::fs::write(stage.join("DEBIAN/control"), self.control()).unwrap();
        set_mode(&stage.join("DEBIAN/control"), 0o644);
        for (path, _) in &self.dirs {
            std::fs::create_dir_all(inside(path)).unwrap();
        }
        for (path, content, mode) in &self.files {
            let p = inside(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
            set_mode(&p, *mode);
        }
        for (path, target) in &self.symlinks {
            let p = inside(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, &p).unwrap();
        }
        // Directories: 0755 whatever the umask, then the declared modes.
        set_dir_modes(&stage);
        for (path, mode) in &self.dirs {
            set_mode(&inside(path), *mode);
        }
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        run(tool("dpkg-deb")
            .env("SOURCE_DATE_EPOCH", DEB_EPOCH.to_string())
            .arg("--root-owner-group")
            .arg(format!("-Z{}", self.compression))
            .arg("--build")
            .arg(&stage)
            .arg(out));
        std::fs::remove_dir_all(&stage).unwrap();
    }
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn set_dir_modes(dir: &Path) {
    set_mode(dir, 0o755);
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            set_dir_modes(&e.path());
        }
    }
}

// ---------------------------------------------------------------------------
// The repository
// ---------------------------------------------------------------------------

/// A signed Debian repository served on 127.0.0.1. Dropping it stops serving
/// and removes its files.
pub struct Repo {
    /// `http://127.0.0.1:PORT/debian`: the mirror URL (no trailing slash).
    pub url: String,
    /// The signing key's public key as a binary keyring (`gpg --export`):
    /// for `gpgv --keyring` and apt's `[signed-by=…]`. A copy of its own.
    pub keyring: PathBuf,
    /// The served directory (holds `dists/` and `pool/`); `url` maps to it.
    pub root: PathBuf,
    /// The suite (also the codename): `dists/<suite>/`.
    pub suite: String,
    /// The components, in order (`["main", …]`).
    pub components: Vec<String>,
    /// The indexed architectures (`binary-<arch>`), without `all`.
    pub architectures: Vec<String>,
    dir: PathBuf,
    /// (package, component) for every `.deb` built so far.
    debs: Mutex<Vec<(Pkg, String)>>,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl Repo {
    /// Builds and serves a repository of `packages` for `suite` with
    /// `components` (the first is where packages go unless they name one),
    /// indexing amd64, arm64 and every other architecture a package names.
    /// Usable many times in one process, from many threads.
    pub fn start(suite: &str, components: &[&str], packages: &[Pkg]) -> Repo {
        Repo::start_with_architectures(suite, components, DEFAULT_ARCHITECTURES, packages)
    }

    /// As [`Repo::start`], indexing `architectures` (plus any a package names).
    pub fn start_with_architectures(
        suite: &str,
        components: &[&str],
        architectures: &[&str],
        packages: &[Pkg],
    ) -> Repo {
        assert!(!components.is_empty(), "a repository needs a component");
        for t in [
            "dpkg-deb",
            "dpkg-scanpackages",
            "apt-ftparchive",
            "gpg",
            "gpgconf",
            "xz",
            "gzip",
        ] {
            need(t);
        }
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = process_dir().join(format!("repo-{}", NEXT.fetch_add(1, Ordering::SeqCst)));
        let root = dir.join("debian");
        std::fs::create_dir_all(&root).unwrap();
        let mut archs: Vec<String> = architectures.iter().map(|a| a.to_string()).collect();
        let extra: BTreeSet<&str> = packages
            .iter()
            .map(|p| p.arch.as_str())
            .filter(|a| *a != "all" && !architectures.contains(a))
            .collect();
        archs.extend(extra.into_iter().map(str::to_string));

        let keyring = dir.join("keyring.gpg");
        std::fs::copy(&signing_key().keyring, &keyring).unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let repo = Repo {
            url: format!("http://{addr}{URL_PREFIX}"),
            keyring,
            root: root.clone(),
            suite: suite.to_string(),
            components: components.iter().map(|c| c.to_string()).collect(),
            architectures: archs,
            dir,
            debs: Mutex::new(Vec::new()),
            log: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            addr,
        };
        repo.add(packages);
        serve(listener, root, repo.log.clone(), repo.stop.clone());
        repo
    }

    /// Builds `packages` into the pool, then rewrites the indexes and
    /// re-signs ([`Repo::reindex`]). Packages already there stay (an index
    /// can list several versions of one package).
    pub fn add(&self, packages: &[Pkg]) {
        let scratch = self.dir.join("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        {
            let mut debs = self.debs.lock().unwrap();
            for p in packages {
                let component = if p.component.is_empty() {
                    self.components[0].clone()
                } else {
                    p.component.clone()
                };
                assert!(
                    self.components.contains(&component),
                    "package {}: component {component:?} is not one of {:?}",
                    p.name,
                    self.components
                );
                let rel = p.pool_path(&component);
                let out = self.root.join(&rel);
                assert!(!out.exists(), "two packages build {rel}");
                p.build(&scratch, &out);
                debs.push((p.clone(), component));
            }
        }
        self.reindex();
    }

    /// Rewrites every `Packages{,.xz,.gz}` from the `.deb`s now in the pool
    /// (so removing a `.deb` and reindexing drops it), then [`Repo::resign`]s.
    pub fn reindex(&self) {
        for component in &self.components {
            let pool = self.root.join("pool").join(component);
            std::fs::create_dir_all(&pool).unwrap();
            for arch in &self.architectures {
                let dir = self
                    .root
                    .join(format!("dists/{}/{component}/binary-{arch}", self.suite));
                std::fs::create_dir_all(&dir).unwrap();
                let out = run(tool("dpkg-scanpackages")
                    .current_dir(&self.root)
                    .args(["--multiversion", "--arch", arch])
                    .arg(format!("pool/{component}")));
                let packages = dir.join("Packages");
                std::fs::write(&packages, &out.stdout).unwrap();
                let xz = run(tool("xz").args(["-9", "-c"]).arg(&packages));
                std::fs::write(dir.join("Packages.xz"), &xz.stdout).unwrap();
                let gz = run(tool("gzip").args(["-9", "-n", "-c"]).arg(&packages));
                std::fs::write(dir.join("Packages.gz"), &gz.stdout).unwrap();
            }
        }
        self.resign();
    }

    /// Rewrites `dists/<suite>/Release` from the files now under
    /// `dists/<suite>/` and signs it again (`InRelease`, `Release.gpg`): after
    /// editing an index, this makes the repository consistent again.
    pub fn resign(&self) {
        let dists = self.root.join("dists").join(&self.suite);
        std::fs::create_dir_all(&dists).unwrap();
        for f in ["Release", "InRelease", "Release.gpg"] {
            let _ = std::fs::remove_file(dists.join(f));
        }
        let opt = |k: &str, v: &str| format!("APT::FTPArchive::Release::{k}={v}");
        let out = run(tool("apt-ftparchive")
            .current_dir(&self.root)
            .arg("-o")
            .arg(opt("Origin", "kiln-test"))
            .arg("-o")
            .arg(opt("Label", "kiln-test"))
            .arg("-o")
            .arg(opt("Suite", &self.suite))
            .arg("-o")
            .arg(opt("Codename", &self.suite))
            .arg("-o")
            .arg(opt("Architectures", &self.architectures.join(" ")))
            .arg("-o")
            .arg(opt("Components", &self.components.join(" ")))
            .arg("-o")
            .arg(opt("Description", "kiln test repository"))
            .arg("release")
            .arg(format!("dists/{}", self.suite)));
        let release = dists.join("Release");
        std::fs::write(&release, &out.stdout).unwrap();
        let key = signing_key();
        let _serial = key.lock.lock().unwrap_or_else(|e| e.into_inner());
        run(key
            .gpg()
            .args(["--local-user", &key.fingerprint, "--digest-algo", "SHA256"])
            .arg("--clearsign")
            .arg("--output")
            .arg(dists.join("InRelease"))
            .arg(&release));
        run(key
            .gpg()
            .args(["--local-user", &key.fingerprint, "--digest-algo", "SHA256"])
            .args(["--armor", "--detach-sign", "--output"])
            .arg(dists.join("Release.gpg"))
            .arg(&release));
    }

    /// Every request so far, in order, as its path relative to [`Repo::url`]
    /// (`dists/<suite>/InRelease`, `pool/main/h/hello/hello_1.0_amd64.deb`),
    /// percent-decoded, without the query; a path outside `/debian/` is kept
    /// whole, with its leading `/`. Requests answered 404 are included.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Forgets the requests logged so far.
    pub fn clear_requests(&self) {
        self.log.lock().unwrap().clear();
    }

    /// The served file at `rel` (relative to [`Repo::root`]).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// The URL of `rel`.
    pub fn url_of(&self, rel: &str) -> String {
        format!("{}/{}", self.url, rel.trim_start_matches('/'))
    }

    /// The bytes of the served file at `rel`.
    pub fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    /// Replaces (or creates) the served file at `rel`; nothing is re-signed.
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// Appends one byte to the served file at `rel`, so its size and hashes
    /// no longer match what the indexes say. (On `InRelease` the byte lands
    /// after the signature, which still verifies: to break the signature,
    /// [`Repo::write`] changed text instead.)
    pub fn tamper(&self, rel: &str) {
        let p = self.path(rel);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap_or_else(|e| panic!("tamper {}: {e}", p.display()));
        f.write_all(b"\n").unwrap();
    }

    /// Deletes the served file at `rel` (later requests get 404); indexes are
    /// left alone unless you [`Repo::reindex`].
    pub fn remove(&self, rel: &str) {
        std::fs::remove_file(self.path(rel)).unwrap_or_else(|e| panic!("remove {rel}: {e}"));
    }

    /// The pool path (relative to [`Repo::root`]) of the one `.deb` of
    /// package `name`; panics unless exactly one was built.
    pub fn deb_path(&self, name: &str) -> String {
        let debs = self.debs.lock().unwrap();
        let found: Vec<String> = debs
            .iter()
            .filter(|(p, _)| p.name == name)
            .map(|(p, c)| p.pool_path(c))
            .collect();
        assert!(
            found.len() == 1,
            "deb_path({name:?}): {} .debs match: {found:?}; use Pkg::pool_path",
            found.len()
        );
        found.into_iter().next().unwrap()
    }

    /// The `dists/<suite>/` path of `file` (`"InRelease"`,
    /// `"main/binary-amd64/Packages.xz"`), relative to [`Repo::root`].
    pub fn dists(&self, file: &str) -> String {
        format!("dists/{}/{}", self.suite, file)
    }

    /// A binary keyring holding one other key (not the one that signs any
    /// [`Repo`]): verifying against it must fail. Shared; do not modify.
    pub fn other_keyring() -> PathBuf {
        other_key().keyring.clone()
    }

    /// The signing key's fingerprint (40 hex digits, upper case).
    pub fn fingerprint() -> String {
        signing_key().fingerprint.clone()
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// Serves the directory `root` on 127.0.0.1 under [`URL_PREFIX`] for the
/// rest of the process; returns the mirror URL (`http://127.0.0.1:PORT/debian`).
pub fn serve_dir(root: &Path) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}{URL_PREFIX}", listener.local_addr().unwrap());
    serve(
        listener,
        root.to_path_buf(),
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(AtomicBool::new(false)),
    );
    url
}

fn serve(
    listener: TcpListener,
    root: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) {
    let root = Arc::new(root);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(conn) = conn else { continue };
            let (root, log) = (root.clone(), log.clone());
            std::thread::spawn(move || {
                let _ = serve_connection(conn, &root, &log);
            });
        }
    });
}

/// Answers the requests on one connection until the client closes it, asks
/// to, or is idle for 30 s.
fn serve_connection(conn: TcpStream, root: &Path, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut writer = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (method, target, version) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("HTTP/1.0"),
        );
        let mut close = version != "HTTP/1.1";
        let mut body_len = 0u64;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("connection") {
                    if value.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if value.eq_ignore_ascii_case("keep-alive") {
                        close = false;
                    }
                } else if name.eq_ignore_ascii_case("content-length") {
                    body_len = value.parse().unwrap_or(0);
                }
            }
        }
        std::io::copy(&mut (&mut reader).take(body_len), &mut std::io::sink())?;

        // Origin form, or absolute form from a proxy-minded client.
        let path = match target.find("://") {
            Some(i) => target[i + 3..]
                .find('/')
                .map_or("/", |j| &target[i + 3 + j..]),
            None => target,
        };
        let path = percent_decode(path.split(['?', '#']).next().unwrap_or(""));
        let rel = path
            .strip_prefix(URL_PREFIX)
            .and_then(|r| r.strip_prefix('/'));
        log.lock()
            .unwrap()
            .push(rel.map_or_else(|| path.clone(), str::to_string));

        let (status, body) = match (method, rel) {
            ("GET" | "HEAD", Some(rel)) => match read_served(root, rel) {
                Some(bytes) => ("200 OK", bytes),
                None => ("404 Not Found", b"not found\n".to_vec()),
            },
            ("GET" | "HEAD", None) => ("404 Not Found", b"not found\n".to_vec()),
            _ => {
                close = true;
                ("405 Method Not Allowed", b"method not allowed\n".to_vec())
            }
        };
        let mut head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n",
            body.len()
        );
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        writer.write_all(head.as_bytes())?;
        if method != "HEAD" {
            writer.write_all(&body)?;
        }
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// The regular file at `rel` under `root`, if `rel` is a plain relative path.
fn read_served(root: &Path, rel: &str) -> Option<Vec<u8>> {
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.contains('\0'))
    {
        return None;
    }
    let p = root.join(rel);
    if !std::fs::symlink_metadata(&p).ok()?.is_file() {
        return None;
    }
    std::fs::read(p).ok()
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------
// Keys and the per-process directory
// ---------------------------------------------------------------------------

/// A throwaway OpenPGP key in a private `GNUPGHOME`.
struct Key {
    home: PathBuf,
    fingerprint: String,
    /// Its public key, binary (`gpg --export`).
    keyring: PathBuf,
    /// Serialises the signing runs that share `home`.
    lock: Mutex<()>,
}

impl Key {
    fn generate(name: &str, uid: &str) -> Key {
        need("gpg");
        let home = process_dir().join(format!("gnupg-{name}"));
        std::fs::create_dir_all(&home).unwrap();
        set_mode(&home, 0o700);
        GPG_HOMES.lock().unwrap().push(home.clone());
        let key = Key {
            home,
            fingerprint: String::new(),
            keyring: process_dir().join(format!("{name}.gpg")),
            lock: Mutex::new(()),
        };
        run(key
            .gpg()
            .args(["--passphrase", "", "--quick-gen-key", uid])
            .args(["rsa3072", "sign", "never"]));
        let listing = run(key.gpg().args(["--with-colons", "--list-secret-keys", uid]));
        let fingerprint = String::from_utf8_lossy(&listing.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').find(|f| !f.is_empty()))
            .expect("gpg listed no fingerprint")
            .to_string();
        let public = run(key.gpg().arg("--export").arg(&fingerprint));
        assert!(!public.stdout.is_empty(), "gpg exported nothing");
        std::fs::write(&key.keyring, &public.stdout).unwrap();
        Key { fingerprint, ..key }
    }

    fn gpg(&self) -> Command {
        let mut c = tool("gpg");
        c.arg("--homedir")
            .arg(&self.home)
            .args(["--batch", "--yes", "--no-tty", "--quiet"]);
        c
    }
}

/// The key that signs every [`Repo`] of this process.
fn signing_key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| Key::generate("signing", "kiln test <test@invalid>"))
}

/// A key that signs nothing.
fn other_key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| Key::generate("other", "kiln other <other@invalid>"))
}

/// GNUPGHOMEs whose agents to stop at exit.
static GPG_HOMES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

const DIR_PREFIX: &str = "kiln-apt-";

/// `$TMPDIR/kiln-apt-<pid>`: everything this module writes. Made on first
/// use, together with the `atexit` cleanup and a sweep of dead processes'.
fn process_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        sweep_stale_dirs();
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        extern "C" {
            fn atexit(f: extern "C" fn()) -> std::os::raw::c_int;
        }
        // SAFETY: registers a plain `extern "C" fn` with libc's atexit.
        let rc = unsafe { atexit(cleanup_at_exit) };
        assert_eq!(rc, 0, "atexit failed");
        dir
    })
}

fn kill_agent(home: &Path) {
    let _ = Command::new("gpgconf")
        .arg("--homedir")
        .arg(home)
        .args(["--kill", "gpg-agent"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

extern "C" fn cleanup_at_exit() {
    let homes = GPG_HOMES.lock().unwrap_or_else(|e| e.into_inner());
    for home in homes.iter() {
        kill_agent(home);
    }
    let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(dir);
}

/// Whether process `pid` runs (a zombie does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next()),
            Some(Some('Z' | 'X'))
        ),
        Err(_) => false,
    }
}

/// Stops the agents and removes the directories of test processes that died
/// without running their `atexit` handler.
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || alive(pid) {
            continue;
        }
        if let Ok(inner) = std::fs::read_dir(e.path()) {
            for g in inner.flatten() {
                if g.file_name().to_string_lossy().starts_with("gnupg-") {
                    kill_agent(&g.path());
                }
            }
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}

/// `kiln ARGS` in `w`, with the repository at `url` as the Debian mirror.
pub fn kiln_at(w: &super::Work, url: &str, args: &[&str]) -> Output {
    w.kiln()
        .env("KILN_DEBIAN_MIRROR", url)
        .args(args)
        .output()
        .unwrap()
}

/// As [`kiln_at`], which must fail: (exit code, standard error).
pub fn kiln_fails_at(w: &super::Work, url: &str, args: &[&str]) -> (i32, String) {
    let out = kiln_at(w, url, args);
    assert!(
        !out.status.success(),
        "kiln {} should have failed; stdout:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// As [`kiln_at`], which must succeed: its standard output.
pub fn kiln_ok_at(w: &super::Work, url: &str, args: &[&str]) -> String {
    let out = kiln_at(w, url, args);
    super::assert_success(&out, &format!("kiln {}", args.join(" ")));
    String::from_utf8(out.stdout).unwrap()
}
