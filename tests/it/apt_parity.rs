//! kiln's resolver against apt's, over real signed Debian metadata, offline.
//!
//! The host's `/var/lib/apt/lists` (`InRelease` and `Packages` of every
//! suite it has, lz4 or plain) are laid out as a mirror under a temp dir and
//! served on 127.0.0.1: kiln verifies each `InRelease` with gpgv against
//! Debian's archive keyring, as it would the real mirror, and reads the plain
//! `Packages` that `InRelease` lists. One `kiln lock` pins a recipe whose
//! first layer asks for every `Essential: yes` package (the base every
//! Debian system has) and whose later layers ask for one package each; apt
//! (`apt-get install --no-install-recommends -s`) is then asked for the same
//! layer from a dpkg status holding exactly what kiln locked below it. The
//! packages each adds must be the same, name and version.
//!
//! Mirror host names never appear here: the file names of the host's lists
//! encode them and they are read at run time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{apt, Work};

const LISTS: &str = "/var/lib/apt/lists";

/// Servers, languages, libraries and tools people put in images; those
/// absent from the host's lists are skipped (and counted).
const PACKAGES: &[&str] = &[
    // Servers.
    "nginx",
    "nginx-light",
    "nginx-full",
    "apache2",
    "lighttpd",
    "haproxy",
    "squid",
    "varnish",
    "redis-server",
    "memcached",
    "postgresql-15",
    "mariadb-server",
    "sqlite3",
    "openssh-server",
    "openssh-client",
    "exim4-daemon-light",
    "dovecot-imapd",
    "bind9",
    "dnsmasq",
    "rsyslog",
    "cron",
    "chrony",
    "nfs-common",
    "samba",
    "vsftpd",
    "mosquitto",
    "rabbitmq-server",
    "prometheus",
    "caddy",
    "tomcat10",
    "uwsgi",
    "gunicorn",
    "knot",
    "unbound",
    "coturn",
    "openvpn",
    "wireguard-tools",
    // Languages and runtimes.
    "python3",
    "python3-yaml",
    "python3-requests",
    "python3-numpy",
    "python3-flask",
    "python3-django",
    "python3-pip",
    "python3-venv",
    "perl",
    "ruby",
    "php-cli",
    "php-fpm",
    "nodejs",
    "npm",
    "golang-go",
    "rustc",
    "cargo",
    "openjdk-17-jre-headless",
    "openjdk-17-jdk-headless",
    "default-jre-headless",
    "gcc",
    "g++",
    "make",
    "tcl",
    "lua5.4",
    "guile-3.0",
    "erlang-base",
    "elixir",
    "ocaml-nox",
    "r-base-core",
    "clang",
    // Libraries.
    "libssl3",
    "libcurl4",
    "libxml2",
    "libyaml-0-2",
    "libpq5",
    "libmariadb3",
    "libsqlite3-0",
    "libpng16-16",
    "libjpeg62-turbo",
    "libfreetype6",
    "libfontconfig1",
    "libglib2.0-0",
    "libboost-system1.74.0",
    "libprotobuf32",
    "libicu72",
    "libarchive13",
    "libsodium23",
    "libgnutls30",
    "libldap-2.5-0",
    "libkrb5-3",
    "libsasl2-2",
    "libevent-2.1-7",
    "libuv1",
    "libnghttp2-14",
    "libssh2-1",
    "libgit2-1.5",
    "libmagic1",
    "libpcap0.8",
    "libusb-1.0-0",
    "libaio1",
    "libnuma1",
    "libgomp1",
    "libstdc++6",
    // Tools.
    "git",
    "curl",
    "wget",
    "ca-certificates",
    "gnupg",
    "openssl",
    "jq",
    "vim-tiny",
    "nano",
    "less",
    "htop",
    "procps",
    "iproute2",
    "iputils-ping",
    "net-tools",
    "dnsutils",
    "rsync",
    "zip",
    "unzip",
    "xz-utils",
    "bzip2",
    "file",
    "tzdata",
    "locales",
    "sudo",
    "tmux",
    "screen",
    "strace",
    "gdb",
    "valgrind",
    "busybox",
    "cmake",
    "pkg-config",
    "autoconf",
    "automake",
    "libtool",
    "patch",
    "graphviz",
    "imagemagick",
    "ffmpeg",
    "pandoc",
];

/// One suite of the host's lists.
struct Suite {
    /// `bookworm`, `bookworm-security` …
    name: String,
    /// The archive's URL as apt names it (from the file names).
    uri: String,
    /// The decompressed `Packages` text.
    packages: String,
}

/// The host's release (`VERSION_CODENAME` of `/etc/os-release`) and its
/// `-updates` and `-security` suites: the ones apt installs from by default.
/// Others a machine may list (backports, which apt never picks on its own;
/// another release) are left out, so both sides read the same candidates.
fn default_suites() -> Vec<String> {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename = text
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .unwrap_or_else(|| "bookworm".into());
    vec![
        codename.clone(),
        format!("{codename}-updates"),
        format!("{codename}-security"),
    ]
}

/// The file names in the host's lists ending with `_InRelease` whose suite
/// is one of [`default_suites`] and has a `main/binary-amd64` index.
fn host_suites() -> Vec<(String, String)> {
    let wanted = default_suites();
    let Ok(dir) = std::fs::read_dir(LISTS) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
        .iter()
        .filter_map(|n| n.strip_suffix("_InRelease"))
        .filter(|base| {
            base.rsplit_once("_dists_")
                .is_some_and(|(_, suite)| wanted.iter().any(|w| w == suite))
        })
        .filter_map(|base| {
            let packages = format!("{base}_main_binary-amd64_Packages");
            names
                .iter()
                .any(|n| *n == packages || *n == format!("{packages}.lz4"))
                .then(|| (base.to_string(), packages))
        })
        .collect()
}

fn decompress(lists: &Path, packages: &str) -> String {
    let plain = lists.join(packages);
    if plain.is_file() {
        return std::fs::read_to_string(plain).unwrap();
    }
    let out = Command::new("lz4")
        .arg("-dc")
        .arg(lists.join(format!("{packages}.lz4")))
        .output()
        .expect("lz4 runs (the host's lists are lz4-compressed)");
    assert!(out.status.success(), "lz4 -dc {packages}.lz4 failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The stanzas of a `Packages` text: (name, version) → the stanza text.
fn stanzas(text: &str, into: &mut BTreeMap<(String, String), String>) {
    for s in text.split("\n\n").filter(|s| !s.trim().is_empty()) {
        let field = |k: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        };
        if let (Some(n), Some(v)) = (field("Package"), field("Version")) {
            into.entry((n, v)).or_insert_with(|| s.trim().to_string());
        }
    }
}

/// `apt-get install --no-install-recommends -s NAMES…` from the dpkg status
/// `status`, over the lists in `state/lists`: the (name, version) pairs it
/// would install, or apt's error.
fn apt_simulate(
    state: &Path,
    status: &Path,
    names: &[&str],
) -> Result<BTreeSet<(String, String)>, String> {
    let at = |rel: &str| state.join(rel).display().to_string();
    let options = [
        ("Dir::State::status", status.display().to_string()),
        ("Dir::State", at("")),
        ("Dir::State::Lists", at("lists")),
        ("Dir::Etc::SourceList", at("sources.list")),
        ("Dir::Etc::SourceParts", at("none")),
        ("Dir::Etc::Preferences", "/dev/null".into()),
        ("Dir::Etc::PreferencesParts", at("none")),
        ("Dir::Etc::main", "/dev/null".into()),
        ("Dir::Etc::Parts", at("none")),
        ("Dir::Cache", at("cache")),
        ("Dir::Cache::srcpkgcache", at("cache/srcpkgcache.bin")),
        ("APT::Architecture", "amd64".into()),
        ("APT::Architectures", "amd64".into()),
        ("Debug::NoLocking", "1".into()),
    ];
    let mut cmd = Command::new("apt-get");
    cmd.args(["install", "--no-install-recommends", "-s", "-q"]);
    for (k, v) in options {
        cmd.arg("-o").arg(format!("{k}={v}"));
    }
    // No dependency cache on disk (`Dir::Cache::pkgcache ""`, which `-o`
    // cannot say): every run has its own status.
    let out = cmd
        .arg("-c")
        .arg(state.join("apt.conf"))
        .args(names)
        .env("LC_ALL", "C")
        .output()
        .expect("apt-get runs");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("Inst ")?.split_whitespace();
            let name = w.next()?.to_string();
            let mut v = w.next()?;
            if v.starts_with('[') {
                v = w.next()?;
            }
            Some((name, v.trim_start_matches('(').to_string()))
        })
        .collect())
}

#[test]
fn kiln_resolves_as_apt_does() {
    let suites = host_suites();
    if suites.is_empty() {
        eprintln!(
            "SKIPPED apt_parity: the host has no apt lists in {LISTS} (run `apt-get update`)"
        );
        return;
    }
    for t in ["apt-get", "gpgv", "lz4"] {
        apt::need(t);
    }
    let keyring = Path::new("/usr/share/keyrings/debian-archive-keyring.gpg");
    assert!(
        keyring.is_file(),
        "debian-archive-keyring must be installed"
    );
    let w = Work::new();
    let mirror = w.path().join("mirror");
    let state = w.path().join("apt");
    for d in ["lists/partial", "cache/archives/partial", "none"] {
        std::fs::create_dir_all(state.join(d)).unwrap();
    }
    let lists = Path::new(LISTS);
    let mut all: Vec<Suite> = Vec::new();
    for (base, packages) in &suites {
        let (host_path, name) = base.split_once("_dists_").expect("lists name a suite");
        let text = decompress(lists, packages);
        let dist = mirror.join("dists").join(name);
        std::fs::create_dir_all(dist.join("main/binary-amd64")).unwrap();
        std::fs::copy(
            lists.join(format!("{base}_InRelease")),
            dist.join("InRelease"),
        )
        .unwrap();
        std::fs::write(dist.join("main/binary-amd64/Packages"), &text).unwrap();
        // apt reads its lists under the names it gives them.
        std::fs::copy(
            lists.join(format!("{base}_InRelease")),
            state.join("lists").join(format!("{base}_InRelease")),
        )
        .unwrap();
        std::fs::write(state.join("lists").join(packages), &text).unwrap();
        all.push(Suite {
            name: name.to_string(),
            uri: format!("http://{}", host_path.replace('_', "/")),
            packages: text,
        });
    }
    let sources: String = all
        .iter()
        .map(|s| format!("deb [trusted=yes] {} {} main\n", s.uri, s.name))
        .collect();
    std::fs::write(state.join("sources.list"), sources).unwrap();
    std::fs::write(state.join("apt.conf"), "Dir::Cache::pkgcache \"\";\n").unwrap();

    let mut index = BTreeMap::new();
    for s in &all {
        stanzas(&s.packages, &mut index);
    }
    let known: BTreeSet<&str> = index.keys().map(|(n, _)| n.as_str()).collect();
    let essential: BTreeSet<&str> = index
        .iter()
        .filter(|(_, s)| s.lines().any(|l| l == "Essential: yes"))
        .map(|((n, _), _)| n.as_str())
        .collect();
    let (asked, absent): (Vec<&str>, Vec<&str>) =
        PACKAGES.iter().partition(|p| known.contains(**p));
    eprintln!(
        "apt_parity: suites {:?}; {} essential; {} packages asked, absent from the lists: {absent:?}",
        all.iter().map(|s| &s.name).collect::<Vec<_>>(),
        essential.len(),
        asked.len()
    );

    // The recipe: every suite a repository (the main one first), layer 0 the
    // Essential set, then one layer per package.
    let mut recipe = String::from("name = \"parity\"\nplatforms = [\"linux/amd64\"]\n\n");
    let mut ordered: Vec<&Suite> = all.iter().collect();
    ordered.sort_by_key(|s| (s.name.contains('-'), s.name.clone()));
    for s in &ordered {
        recipe.push_str(&format!(
            "[repositories.{}]\nsuite = \"{}\"\ncomponents = [\"main\"]\n\n",
            s.name.replace('-', "_"),
            s.name
        ));
    }
    let layer = |names: &[&str]| {
        let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
        format!("[[layers]]\npackages = [{}]\n\n", quoted.join(", "))
    };
    let essential_names: Vec<&str> = essential.iter().copied().collect();
    recipe.push_str(&layer(&essential_names));
    for p in &asked {
        recipe.push_str(&layer(&[p]));
    }
    w.write("recipe.toml", &recipe);

    let url = apt::serve_dir(&mirror);
    let t = std::time::Instant::now();
    let out = w
        .kiln()
        .env("KILN_DEBIAN_MIRROR", &url)
        .args(["lock", "recipe.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kiln lock failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("apt_parity: kiln lock took {:?}", t.elapsed());
    let lock: toml::Table = std::fs::read_to_string(w.path().join("recipe.lock"))
        .unwrap()
        .parse()
        .unwrap();
    let mut by_layer: BTreeMap<i64, BTreeSet<(String, String)>> = BTreeMap::new();
    for r in lock["packages"].as_array().unwrap() {
        let s = |k: &str| r[k].as_str().unwrap().to_string();
        by_layer
            .entry(r["layer"].as_integer().unwrap())
            .or_default()
            .insert((s("name"), s("version")));
    }

    // apt, layer by layer, from a status holding what kiln locked below it.
    // The source cache is built once; the simulations then run in parallel.
    let empty = state.join("status-empty");
    std::fs::write(&empty, "").unwrap();
    let mut jobs: Vec<(usize, Vec<&str>, PathBuf)> = vec![(0, essential_names.clone(), empty)];
    let mut below = String::new();
    for (i, p) in asked.iter().enumerate() {
        for (n, v) in by_layer.get(&(i as i64)).into_iter().flatten() {
            let stanza = &index[&(n.clone(), v.clone())];
            let (first, rest) = stanza.split_once('\n').unwrap_or((stanza, ""));
            below.push_str(&format!(
                "{first}\nStatus: install ok installed\n{rest}\n\n"
            ));
        }
        let status = state.join(format!("status-{}", i + 1));
        std::fs::write(&status, &below).unwrap();
        jobs.push((i + 1, vec![*p], status));
    }
    let t = std::time::Instant::now();
    let first = apt_simulate(&state, &jobs[0].2, &jobs[0].1);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    let next = std::sync::atomic::AtomicUsize::new(1);
    let results = std::sync::Mutex::new(BTreeMap::new());
    results.lock().unwrap().insert(0, first);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some((layer, names, status)) = jobs.get(i) else {
                    break;
                };
                let r = apt_simulate(&state, status, names);
                results.lock().unwrap().insert(*layer, r);
            });
        }
    });
    eprintln!(
        "apt_parity: {} apt simulations took {:?}",
        jobs.len(),
        t.elapsed()
    );

    let results = results.into_inner().unwrap();
    let sizes = |layer: usize| {
        let kiln = by_layer.get(&(layer as i64)).map_or(0, BTreeSet::len);
        let apt = results[&layer].as_ref().map_or(0, BTreeSet::len);
        (kiln, apt)
    };
    for name in [
        "nginx-light",
        "lighttpd",
        "git",
        "python3-yaml",
        "openjdk-17-jre-headless",
    ] {
        if let Some(i) = asked.iter().position(|p| *p == name) {
            eprintln!(
                "apt_parity: {name} adds (kiln, apt) = {:?} packages",
                sizes(i + 1)
            );
        }
    }
    eprintln!(
        "apt_parity: the essential layer (kiln, apt) = {:?} packages",
        sizes(0)
    );
    let mut agree = 0;
    let mut report = Vec::new();
    for (layer, names, _) in &jobs {
        let kiln = by_layer.get(&(*layer as i64)).cloned().unwrap_or_default();
        match &results[layer] {
            Ok(apt) if *apt == kiln => agree += 1,
            Ok(apt) => report.push(format!(
                "layer {layer} ({}): only kiln {:?}; only apt {:?}",
                if *layer == 0 { "essential" } else { names[0] },
                kiln.difference(apt).collect::<Vec<_>>(),
                apt.difference(&kiln).collect::<Vec<_>>()
            )),
            Err(e) => report.push(format!("layer {layer} ({names:?}): apt fails: {e}")),
        }
    }
    eprintln!(
        "apt_parity: {agree}/{} packages agree (the essential set counted as one)",
        jobs.len()
    );
    assert!(
        report.is_empty(),
        "kiln and apt disagree:\n{}",
        report.join("\n")
    );
    assert!(jobs.len() > 100, "at least 100 packages compared");
}
