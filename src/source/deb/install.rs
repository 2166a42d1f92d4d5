//! Installing packages into a layer, declaratively: their files (with the
//! package's own modes and owners), the dpkg database as distroless images
//! keep it (`/var/lib/dpkg/status.d/NAME` and `NAME.md5sums`), and what
//! maintainer scripts would have done that images need. Maintainer scripts
//! are never run. Done here: the CA bundle `/etc/ssl/certs/ca-certificates.crt`
//! when `ca-certificates` is installed (every certificate under
//! `/usr/share/ca-certificates`, in path order), and busybox's applet links
//! when `busybox` or `busybox-static` is (the applet names are read from the
//! binary's own table, so no binary of another architecture has to run), and
//! Java's trust store `/etc/ssl/certs/java/cacerts` (PKCS#12) from the same
//! certificates when `ca-certificates-java` is, and
//! the links `update-alternatives --install` calls in `postinst` scripts
//! would have made in auto mode (the scripts are read as data, never run),
//! and `/etc/passwd` and `/etc/group` from base-passwd's master files when
//! `base-passwd` is installed.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::plan::{Content, Entry, EntryKind};
use crate::store::Store;

use super::extract::{DebContents, DebKind};

/// A package to install: its name and contents.
pub struct Installed {
    /// The package name.
    pub name: String,
    /// What its `.deb` holds.
    pub contents: DebContents,
}

/// The package files a layer leaves out (`exclude`), as dpkg's
/// `path-exclude` would: matched against the absolute path, with every
/// `/usr/share/doc/PACKAGE/copyright` kept. The dpkg database still lists
/// every file the packages hold.
#[derive(Debug, Clone, Default)]
pub struct Exclude {
    globs: Vec<globset::GlobMatcher>,
}

impl Exclude {
    /// The globs of a layer's `exclude`, checked when the recipe was read.
    pub fn new<'a>(globs: impl IntoIterator<Item = &'a str>) -> Exclude {
        Exclude {
            globs: globs
                .into_iter()
                .map(|g| crate::recipe::image_glob(g).expect("checked when the recipe is parsed"))
                .collect(),
        }
    }

    /// Whether the package file at `path` (relative) is left out.
    pub fn leaves_out(&self, path: &str) -> bool {
        if self.globs.is_empty() {
            return false;
        }
        let copyright = path
            .strip_prefix("usr/share/doc/")
            .and_then(|p| p.strip_suffix("/copyright"))
            .is_some_and(|name| !name.is_empty() && !name.contains('/'));
        let abs = format!("/{path}");
        !copyright && self.globs.iter().any(|g| g.is_match(&abs))
    }
}

/// The layer entries for `packages` (sorted by name), keyed by path, less
/// what `exclude` leaves out. `native` says whether the image's architecture
/// is the host's, so that the host's `ldconfig` can read the libraries.
pub fn entries(
    store: &Store,
    packages: &[Installed],
    native: bool,
    exclude: &Exclude,
) -> Result<BTreeMap<String, (Entry, String)>> {
    let mut out: BTreeMap<String, (Entry, String)> = BTreeMap::new();
    let mut certs: BTreeMap<String, Digest> = BTreeMap::new();
    // Excluded directories, kept only if something kept lies beneath them.
    let mut excluded_dirs = Vec::new();
    for pkg in packages {
        for e in &pkg.contents.entries {
            if exclude.leaves_out(&e.path) {
                if let DebKind::File { digest, .. } = &e.kind {
                    // The CA bundle is made from the certificates even so.
                    if e.path.starts_with("usr/share/ca-certificates/") && e.path.ends_with(".crt")
                    {
                        certs.insert(e.path.clone(), digest.clone());
                    }
                }
                if !matches!(e.kind, DebKind::Dir) {
                    continue;
                }
                excluded_dirs.push(e.path.clone());
            }
            let kind = match &e.kind {
                DebKind::Dir => EntryKind::Dir,
                DebKind::File { size, digest } => {
                    if e.path.starts_with("usr/share/ca-certificates/") && e.path.ends_with(".crt")
                    {
                        certs.insert(e.path.clone(), digest.clone());
                    }
                    EntryKind::File {
                        content: Content::Host(store.blob_path(digest), None),
                        size: *size,
                        digest: digest.clone(),
                    }
                }
                DebKind::Symlink { target } => EntryKind::Symlink {
                    target: target.clone(),
                },
                DebKind::Hardlink { target } => EntryKind::HardLink {
                    target: target.clone(),
                },
            };
            let entry = Entry {
                path: e.path.clone(),
                kind,
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
            };
            match out.get(&e.path) {
                Some((existing, _))
                    if matches!(existing.kind, EntryKind::Dir)
                        && matches!(entry.kind, EntryKind::Dir) => {}
                Some((_, owner)) => {
                    return Err(Error::invalid(
                        format!(
                            "packages `{owner}` and `{}` both install `/{}`",
                            pkg.name, e.path
                        ),
                        Some("install only one of them (dpkg would refuse this too)".into()),
                    ))
                }
                None => {
                    out.insert(e.path.clone(), (entry, pkg.name.clone()));
                }
            }
        }
        let status = status_stanza(&pkg.contents.control);
        add_text(
            &mut out,
            &format!("var/lib/dpkg/status.d/{}", pkg.name),
            status.into_bytes(),
            &pkg.name,
        );
        if let Some(sums) = &pkg.contents.md5sums {
            add_text(
                &mut out,
                &format!("var/lib/dpkg/status.d/{}.md5sums", pkg.name),
                sums.clone().into_bytes(),
                &pkg.name,
            );
        }
    }
    // Deepest first, so that a directory holding only excluded ones goes too.
    excluded_dirs.sort();
    for dir in excluded_dirs.into_iter().rev() {
        let beneath = format!("{dir}/");
        let used = out
            .range(beneath.clone()..)
            .next()
            .is_some_and(|(p, _)| p.starts_with(&beneath));
        if !used {
            out.remove(&dir);
        }
    }
    refuse_paths_through_links(&out)?;
    if packages.iter().any(|p| p.name == "ca-certificates") {
        ca_bundle(store, &certs, &mut out)?;
    }
    // Made from this layer's certificates; with `ca-certificates` in a lower
    // layer (the base's), the pipeline makes it from those.
    let installs = |name: &str| packages.iter().any(|p| p.name == name);
    if installs("ca-certificates-java") && installs("ca-certificates") {
        java_cacerts(store, &certs, &mut out)?;
    }
    if packages
        .iter()
        .any(|p| p.name == "busybox" || p.name == "busybox-static")
    {
        busybox_links(store, &mut out)?;
    }
    if packages.iter().any(|p| p.name == "base-passwd") {
        base_passwd(store, &mut out)?;
    }
    alternatives(store, packages, &mut out)?;
    if native {
        ld_cache(store, &mut out)?;
    }
    Ok(out)
}

/// `/etc/ssl/certs/ca-certificates.crt`: the certificates `certs` (path →
/// content), in path order, each ending in a newline, as
/// `update-ca-certificates` writes it. A bundle made before from the same
/// certificates is taken from the store, so a rebuild reads none of them.
fn ca_bundle(
    store: &Store,
    certs: &BTreeMap<String, Digest>,
    out: &mut BTreeMap<String, (Entry, String)>,
) -> Result<()> {
    use sha2::Digest as _;
    const PATH: &str = "etc/ssl/certs/ca-certificates.crt";
    let mut h = sha2::Sha256::new();
    h.update(b"ca-certificates.crt 1\0");
    for (path, digest) in certs {
        h.update(format!("{path}\0{digest}\0").as_bytes());
    }
    let key = Digest::from_hasher(h);
    let digest = match store.derived(&key)? {
        Some(digest) => digest,
        None => {
            let mut bundle = Vec::new();
            for digest in certs.values() {
                let mut pem = store.read(digest)?;
                if !pem.ends_with(b"\n") {
                    pem.push(b'\n');
                }
                bundle.extend_from_slice(&pem);
            }
            store.remember_derived(&key, &bundle)?
        }
    };
    out.remove(PATH);
    add_stored(out, PATH, store, digest, "ca-certificates")
}

/// Java's trust store `/etc/ssl/certs/java/cacerts` (PKCS#12, see
/// [`super::truststore`]) from the certificates of the CA bundle, in the
/// same order, as `ca-certificates-java`'s trigger would have made it. The
/// JRE's `lib/security/cacerts` links to it.
fn java_cacerts(
    store: &Store,
    certs: &BTreeMap<String, Digest>,
    out: &mut BTreeMap<String, (Entry, String)>,
) -> Result<()> {
    let mut files = Vec::new();
    for (path, digest) in certs {
        files.push((path.clone(), store.read(digest)?));
    }
    let bytes = java_trust_store(&files, "")?;
    out.remove(super::truststore::PATH);
    add_text(out, super::truststore::PATH, bytes, "ca-certificates-java");
    Ok(())
}

/// The bytes of Java's trust store for the certificate files `certs` (path
/// relative to the root, PEM), in path order: one trusted entry per file,
/// aliased `debian:NAME.pem`; of two files with one alias the later wins,
/// as it replaces the earlier in `/etc/ssl/certs`. A file that does not
/// parse is an error (Debian's tool skips it with a warning on the console,
/// which a build would not show); `place` says where the files are, after
/// their path (empty for this layer).
pub fn java_trust_store(certs: &[(String, Vec<u8>)], place: &str) -> Result<Vec<u8>> {
    use super::truststore;
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    for (path, pem) in certs {
        let der = truststore::first_certificate(pem).map_err(|why| {
            Error::invalid(
                format!("package `ca-certificates` holds `/{path}`{place}, which is not a PEM certificate: {why}"),
                Some("Java's trust store is made from every certificate under `/usr/share/ca-certificates`: use a `ca-certificates` package whose files are PEM certificates, or leave `ca-certificates-java` out".into()),
            )
        })?;
        let alias = truststore::alias_for(path);
        entries.retain(|(a, _)| *a != alias);
        entries.push((alias, der));
    }
    Ok(truststore::pkcs12(&entries, truststore::STORE_PASSWORD))
}

/// Refuses an entry beneath a path that another entry of the layer makes a
/// symlink or a file: each package is checked alone when it is read, but two
/// packages together (a link from one, a file "inside" it from the other) can
/// aim a path out of the image, which dpkg would refuse as well.
fn refuse_paths_through_links(out: &BTreeMap<String, (Entry, String)>) -> Result<()> {
    for (path, (_, owner)) in out {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let above = &path[..at + i];
            if let Some((e, by)) = out.get(above) {
                let kind = match e.kind {
                    EntryKind::Dir => None,
                    EntryKind::Symlink { .. } => Some("a symlink"),
                    _ => Some("a file"),
                };
                if let Some(kind) = kind {
                    return Err(Error::invalid(
                        format!(
                            "package `{owner}` installs `/{path}` beneath `/{above}`, which package `{by}` installs as {kind}"
                        ),
                        Some("the packages cannot be installed together: drop one of them from the layer".into()),
                    ));
                }
            }
            at += i + 1;
        }
    }
    Ok(())
}

/// `/etc/ld.so.cache` for the libraries this layer installs, made by the
/// host's `ldconfig -X -r` on a scratch copy of the layer (its output depends
/// only on the files, so it is reproducible). Without a cache the dynamic
/// linker still searches its default directories; with one, libraries in
/// directories that `/etc/ld.so.conf.d` adds are found too.
fn ld_cache(store: &Store, out: &mut BTreeMap<String, (Entry, String)>) -> Result<()> {
    use crate::error::IoContext;
    let ships_libraries = out.iter().any(|(p, (e, _))| {
        matches!(e.kind, EntryKind::File { .. }) && p.contains("/lib") && p.contains(".so")
    });
    if !ships_libraries {
        return Ok(());
    }
    // The cache depends only on the layer's files and on the host's
    // ldconfig: one made before from the same is taken from the store, so a
    // rebuild with nothing changed writes no scratch tree.
    let Some(version) = ldconfig_identity() else {
        // No ldconfig on this host: the image works without a cache.
        return Ok(());
    };
    let key = ld_cache_key(&version, out);
    if let Some(digest) = store.derived(&key)? {
        out.remove("etc/ld.so.cache");
        add_stored(out, "etc/ld.so.cache", store, digest, "libc-bin")?;
        return Ok(());
    }
    // In the store's `tmp/`, so a killed build's tree is reclaimed.
    let work = store.temp_dir()?;
    let root = work.path();
    // The scratch tree is written beneath its root without following any
    // link, so a link from one package never carries another's file out.
    let tree = crate::beneath::Root::open(root).at("open", root)?;
    for (path, (entry, _)) in out.iter() {
        let shown = tree.shown(path);
        tree.create_parents(path)
            .at("create the parents of", &shown)?;
        match &entry.kind {
            EntryKind::Dir => match tree.create_dir(path) {
                Ok(()) => tree.set_mode(path, 0o755).at("set the mode of", &shown)?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io("create", shown, e)),
            },
            EntryKind::Symlink { target } => {
                tree.symlink(target, path).at("create link", &shown)?
            }
            EntryKind::File { content, .. } => {
                let mut f = tree.create_file(path).at("create", &shown)?;
                match content {
                    Content::Host(src, _) | Content::Unhashed(src, _) => {
                        let mut from = std::fs::File::open(src).at("open", src)?;
                        std::io::copy(&mut from, &mut f).at("copy", src)?;
                    }
                    Content::Inline(bytes) => {
                        std::io::Write::write_all(&mut f, bytes).at("write", &shown)?
                    }
                }
            }
            EntryKind::HardLink { .. } => {}
        }
    }
    // Hard links last: the file they name may sort after them.
    for (path, (entry, _)) in out.iter() {
        if let EntryKind::HardLink { target } = &entry.kind {
            tree.hard_link(target, path).at("link", &tree.shown(path))?;
        }
    }
    let conf = root.join("etc/ld.so.conf");
    if !conf.exists() {
        std::fs::create_dir_all(root.join("etc")).at("create", &root.join("etc"))?;
        std::fs::write(&conf, "include /etc/ld.so.conf.d/*.conf\n").at("write", &conf)?;
    }
    let status = std::process::Command::new("ldconfig")
        .arg("-X")
        .arg("-r")
        .arg(root)
        .stderr(std::process::Stdio::null())
        .status();
    let cache = root.join("etc/ld.so.cache");
    if !status.is_ok_and(|s| s.success()) || !cache.is_file() {
        // No ldconfig on this host: the image works without a cache.
        return Ok(());
    }
    let bytes = std::fs::read(&cache).at("read", &cache)?;
    let digest = store.remember_derived(&key, &bytes)?;
    out.remove("etc/ld.so.cache");
    add_stored(out, "etc/ld.so.cache", store, digest, "libc-bin")?;
    Ok(())
}

/// The host's `ldconfig`, as the first executable of that name on `PATH`
/// (where the build runs it from): its path, size, modification time and
/// inode, which change when it is replaced. `None` without one. Looked up
/// once per process, and without running it, so that a rebuild that takes
/// the cache from the store starts no process.
fn ldconfig_identity() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    static IDENTITY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    IDENTITY
        .get_or_init(|| {
            let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
            std::env::split_paths(&path).find_map(|dir| {
                let exe = dir.join("ldconfig");
                let m = std::fs::metadata(&exe).ok()?;
                (m.is_file() && m.mode() & 0o111 != 0).then(|| {
                    format!(
                        "{} {} {}.{} {}",
                        exe.display(),
                        m.len(),
                        m.mtime(),
                        m.mtime_nsec(),
                        m.ino()
                    )
                })
            })
        })
        .clone()
}

/// What `/etc/ld.so.cache` is made from: the ldconfig, and every entry of
/// the layer (path, kind, mode, content digest or link target).
fn ld_cache_key(version: &str, out: &BTreeMap<String, (Entry, String)>) -> Digest {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"ld.so.cache 2\0");
    h.update(version.as_bytes());
    h.update(b"\0");
    for (path, (entry, _)) in out {
        h.update(path.as_bytes());
        h.update(format!("\0{:o}\0", entry.mode).as_bytes());
        match &entry.kind {
            EntryKind::Dir => h.update(b"d"),
            EntryKind::File { digest, .. } => {
                h.update(b"f");
                h.update(digest.to_string().as_bytes());
            }
            EntryKind::Symlink { target } => {
                h.update(b"l");
                h.update(target.as_bytes());
            }
            EntryKind::HardLink { target } => {
                h.update(b"h");
                h.update(target.as_bytes());
            }
        }
        h.update(b"\0");
    }
    Digest::from_hasher(h)
}

/// `/etc/passwd` and `/etc/group` from base-passwd's master files, as its
/// `postinst` copies them on a first install (unless the layer already has
/// them, from the recipe or another package).
fn base_passwd(store: &Store, out: &mut BTreeMap<String, (Entry, String)>) -> Result<()> {
    for name in ["passwd", "group"] {
        let master = format!("usr/share/base-passwd/{name}.master");
        let target = format!("etc/{name}");
        if out.contains_key(&target) {
            continue;
        }
        if let Some((
            Entry {
                kind: EntryKind::File { digest, size, .. },
                ..
            },
            _,
        )) = out.get(&master)
        {
            // The same bytes: the master file's blob, not read here.
            let entry = Entry {
                path: target.clone(),
                kind: EntryKind::File {
                    content: Content::Host(store.blob_path(digest), None),
                    size: *size,
                    digest: digest.clone(),
                },
                mode: 0o644,
                uid: 0,
                gid: 0,
            };
            out.insert(target, (entry, "base-passwd".into()));
        }
    }
    Ok(())
}

/// Adds `DIR/APPLET -> busybox` beside the busybox binary for every applet
/// it was built with, unless something else already has that path.
fn busybox_links(store: &Store, out: &mut BTreeMap<String, (Entry, String)>) -> Result<()> {
    let found = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .find_map(|p| match out.get(*p) {
            Some((
                Entry {
                    kind: EntryKind::File { digest, .. },
                    ..
                },
                _,
            )) => Some((p.to_string(), digest.clone())),
            _ => None,
        });
    let Some((path, digest)) = found else {
        return Ok(());
    };
    let binary = store.read(&digest)?;
    let applets = applet_names(&binary).ok_or_else(|| {
        Error::invalid(
            format!("cannot find the applet table in `/{path}`"),
            Some(
                "this busybox build is not one kiln can read; add the links with `symlinks`".into(),
            ),
        )
    })?;
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d).to_string();
    for name in applets {
        let link = format!("{dir}/{name}");
        if out.contains_key(&link) {
            continue;
        }
        let entry = Entry {
            path: link.clone(),
            kind: EntryKind::Symlink {
                target: "busybox".into(),
            },
            mode: 0o777,
            uid: 0,
            gid: 0,
        };
        out.insert(link, (entry, "busybox".into()));
    }
    Ok(())
}

/// One `update-alternatives --install LINK NAME PATH PRIORITY [--slave LINK NAME PATH]…`.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternative {
    link: String,
    name: String,
    path: String,
    priority: i64,
    slaves: Vec<(String, String, String)>,
}

/// The `update-alternatives --install` calls of a maintainer script, read
/// as data (calls using shell variables are skipped).
#[doc(hidden)]
pub fn install_calls(script: &str) -> Vec<Alternative> {
    let joined = script.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = words
            .windows(2)
            .position(|w| w[0] == "update-alternatives" && w[1..].contains(&"--install"))
        else {
            continue;
        };
        let rest: Vec<&str> = words[at + 1..]
            .iter()
            .copied()
            .filter(|w| !w.starts_with("--quiet"))
            .collect();
        let Some(i) = rest.iter().position(|w| *w == "--install") else {
            continue;
        };
        let args = &rest[i + 1..];
        if args.len() < 4 || args[..4].iter().any(|w| w.contains('$')) {
            continue;
        }
        let Ok(priority) = args[3].parse() else {
            continue;
        };
        let mut slaves = Vec::new();
        let mut k = 4;
        while k + 3 < args.len() && args[k] == "--slave" {
            if args[k + 1..k + 4].iter().all(|w| !w.contains('$')) {
                slaves.push((
                    args[k + 1].to_string(),
                    args[k + 2].to_string(),
                    args[k + 3].to_string(),
                ));
            }
            k += 4;
        }
        out.push(Alternative {
            link: args[0].to_string(),
            name: args[1].to_string(),
            path: args[2].to_string(),
            priority,
            slaves,
        });
    }
    out
}

/// The alternatives a Java runtime's `.jinfo` file lists
/// (`/usr/lib/jvm/.NAME.jinfo`: `priority=N`, then `TYPE TOOL PATH` lines),
/// which its `postinst` installs in a loop as `/usr/bin/TOOL` with the man
/// page `BASEDIR/man/man1/TOOL.1.gz` as a slave.
#[doc(hidden)]
pub fn jinfo_calls(text: &str) -> Vec<Alternative> {
    let priority = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("priority="))
        .and_then(|p| p.trim().parse().ok());
    let Some(priority) = priority else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [kind, tool, path] = words[..] else {
            continue;
        };
        let known = matches!(kind, "hl" | "jre" | "jdkhl" | "jdk");
        let plain = !tool.contains('/') && !tool.is_empty() && path.starts_with('/');
        if !known || !plain {
            continue;
        }
        let basedir = path.rsplitn(3, '/').nth(2).unwrap_or("");
        out.push(Alternative {
            link: format!("/usr/bin/{tool}"),
            name: tool.to_string(),
            path: path.to_string(),
            priority,
            slaves: vec![(
                format!("/usr/share/man/man1/{tool}.1.gz"),
                format!("{tool}.1.gz"),
                format!("{basedir}/man/man1/{tool}.1.gz"),
            )],
        });
    }
    out
}

/// Whether `path` (absolute or relative to the root) names something the
/// layer holds, following the layer's symlinks (a JRE's `bin/java` is
/// reached through `/usr/lib/jvm/java-1.17.0-…`, a link to its directory).
fn resolves(out: &BTreeMap<String, (Entry, String)>, path: &str) -> bool {
    let mut parts: Vec<String> = Vec::new();
    let mut todo: Vec<String> = path.split('/').rev().map(String::from).collect();
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                parts.pop();
                continue;
            }
            _ => parts.push(part),
        }
        let here = parts.join("/");
        match out.get(&here).map(|(e, _)| &e.kind) {
            None => return false,
            Some(EntryKind::Symlink { target }) => {
                hops += 1;
                if hops > 40 {
                    return false;
                }
                parts.pop();
                if target.starts_with('/') {
                    parts.clear();
                }
                todo.extend(target.split('/').rev().map(String::from));
            }
            Some(_) => {}
        }
    }
    true
}

/// What `update-alternatives` would have set up in auto mode: for each name,
/// the highest-priority path that exists, as `LINK -> /etc/alternatives/NAME
/// -> PATH` (and its slaves whose paths exist). The calls come from
/// `postinst` scripts and from Java runtimes' `.jinfo` files; of equal
/// priorities, the first package (by name) wins.
fn alternatives(
    store: &Store,
    packages: &[Installed],
    out: &mut BTreeMap<String, (Entry, String)>,
) -> Result<()> {
    let mut calls: Vec<(Alternative, String)> = Vec::new();
    for pkg in packages {
        for alt in install_calls(pkg.contents.postinst.as_deref().unwrap_or_default()) {
            calls.push((alt, pkg.name.clone()));
        }
    }
    let jinfos: Vec<(Digest, String)> = out
        .iter()
        .filter(|(p, _)| {
            p.strip_prefix("usr/lib/jvm/.")
                .is_some_and(|n| n.ends_with(".jinfo") && !n.contains('/'))
        })
        .filter_map(|(_, (e, owner))| match &e.kind {
            EntryKind::File { digest, .. } => Some((digest.clone(), owner.clone())),
            _ => None,
        })
        .collect();
    for (digest, owner) in jinfos {
        let text = String::from_utf8_lossy(&store.read(&digest)?).into_owned();
        for alt in jinfo_calls(&text) {
            calls.push((alt, owner.clone()));
        }
    }
    calls.sort_by(|a, b| a.1.cmp(&b.1));
    let mut best: BTreeMap<String, (Alternative, String)> = BTreeMap::new();
    for (alt, owner) in calls {
        if !resolves(out, &alt.path) {
            continue;
        }
        let better = best
            .get(&alt.name)
            .is_none_or(|(b, _)| alt.priority > b.priority);
        if better {
            best.insert(alt.name.clone(), (alt, owner));
        }
    }
    let link =
        |out: &mut BTreeMap<String, (Entry, String)>, path: &str, target: &str, owner: &str| {
            let path = path.trim_start_matches('/').to_string();
            if path.is_empty() || out.contains_key(&path) {
                return;
            }
            let entry = Entry {
                path: path.clone(),
                kind: EntryKind::Symlink {
                    target: target.to_string(),
                },
                mode: 0o777,
                uid: 0,
                gid: 0,
            };
            out.insert(path, (entry, owner.to_string()));
        };
    for (name, (alt, owner)) in best {
        link(out, &format!("etc/alternatives/{name}"), &alt.path, &owner);
        link(out, &alt.link, &format!("/etc/alternatives/{name}"), &owner);
        for (slave_link, slave_name, slave_path) in &alt.slaves {
            if resolves(out, slave_path) {
                link(
                    out,
                    &format!("etc/alternatives/{slave_name}"),
                    slave_path,
                    &owner,
                );
                link(
                    out,
                    slave_link,
                    &format!("/etc/alternatives/{slave_name}"),
                    &owner,
                );
            }
        }
    }
    Ok(())
}

/// busybox keeps its applet names as one sorted, NUL-separated table that
/// starts with `[` and `[[`; read it from the binary.
#[doc(hidden)]
pub fn applet_names(binary: &[u8]) -> Option<Vec<String>> {
    let start = binary.windows(5).position(|w| w == b"[\0[[\0")?;
    let mut names = Vec::new();
    for raw in binary[start..].split(|&b| b == 0) {
        let ok = !raw.is_empty() && raw.iter().all(|&c| c.is_ascii_graphic() && c != b'/');
        if !ok {
            break;
        }
        names.push(String::from_utf8_lossy(raw).into_owned());
    }
    let sorted = names.windows(2).all(|w| w[0] < w[1]);
    (names.len() > 2 && sorted && names.iter().any(|n| n == "sh")).then_some(names)
}

/// Adds the store's blob `digest` as the file `path` (mode 0644, root's).
fn add_stored(
    out: &mut BTreeMap<String, (Entry, String)>,
    path: &str,
    store: &Store,
    digest: Digest,
    owner: &str,
) -> Result<()> {
    let entry = Entry {
        path: path.to_string(),
        kind: EntryKind::File {
            size: store.size(&digest)?,
            content: Content::Host(store.blob_path(&digest), None),
            digest,
        },
        mode: 0o644,
        uid: 0,
        gid: 0,
    };
    out.insert(path.to_string(), (entry, owner.to_string()));
    Ok(())
}

fn add_text(out: &mut BTreeMap<String, (Entry, String)>, path: &str, bytes: Vec<u8>, owner: &str) {
    let bytes: Arc<[u8]> = Arc::from(bytes);
    let entry = Entry {
        path: path.to_string(),
        kind: EntryKind::File {
            size: bytes.len() as u64,
            digest: Digest::of(&bytes),
            content: Content::Inline(bytes),
        },
        mode: 0o644,
        uid: 0,
        gid: 0,
    };
    out.insert(path.to_string(), (entry, owner.to_string()));
}

/// The control stanza with the `Status` dpkg would have recorded.
fn status_stanza(control: &str) -> String {
    let mut text = String::new();
    for line in control.trim_end().lines() {
        text.push_str(line);
        text.push('\n');
        if line.starts_with("Package:") {
            text.push_str("Status: install ok installed\n");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_update_alternatives_calls() {
        let script = "#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n  update-alternatives --install /usr/bin/awk awk /usr/bin/mawk 5 \\\n    --slave /usr/share/man/man1/awk.1.gz awk.1.gz /usr/share/man/man1/mawk.1.gz\n  update-alternatives --install $X y /z 1\nfi\n";
        let calls = install_calls(script);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].link, "/usr/bin/awk");
        assert_eq!(calls[0].priority, 5);
        assert_eq!(calls[0].slaves[0].1, "awk.1.gz");
    }

    #[test]
    fn reads_a_jinfo_file() {
        let text = "name=java-1.17.0-openjdk-amd64\nalias=java-1.17.0-openjdk-amd64\npriority=1711\nsection=main\n\nhl java /usr/lib/jvm/java-17-openjdk-amd64/bin/java\njre jexec /usr/lib/jvm/java-17-openjdk-amd64/lib/jexec\njdk javac /usr/lib/jvm/java-17-openjdk-amd64/bin/javac\n";
        let calls = jinfo_calls(text);
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].link, "/usr/bin/java");
        assert_eq!(calls[0].name, "java");
        assert_eq!(calls[0].priority, 1711);
        assert_eq!(
            calls[0].slaves[0].2,
            "/usr/lib/jvm/java-17-openjdk-amd64/man/man1/java.1.gz"
        );
        assert!(
            jinfo_calls("hl java /x/bin/java\n").is_empty(),
            "no priority"
        );
    }

    #[test]
    fn reads_the_applet_table() {
        let mut bin = b"\x7fELF junk\0".to_vec();
        bin.extend_from_slice(b"[\0[[\0ash\0ls\0sh\0\0\x01\x02");
        assert_eq!(applet_names(&bin).unwrap(), ["[", "[[", "ash", "ls", "sh"]);
        assert!(applet_names(b"no table here").is_none());
    }
}
