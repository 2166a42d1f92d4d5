//! Valid seed inputs: the host's real Debian metadata, recipes, tars and
//! `.deb`s built here, and OCI documents.

use std::io::Write;
use std::process::Command;
use std::sync::OnceLock;

/// The host's apt lists (found by globbing, whatever the mirror's name).
fn lists(suffix: &str) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir("/var/lib/apt/lists")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    out.sort();
    out
}

/// The text of the host's `Packages` files (`.lz4`, or plain), decompressed.
pub fn packages_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let mut text = String::new();
        for p in lists("_Packages").into_iter().chain(lists("_Packages.lz4")) {
            let bytes = if p.extension().is_some_and(|e| e == "lz4") {
                Command::new("/usr/lib/apt/apt-helper")
                    .arg("cat-file")
                    .arg(&p)
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|o| o.stdout)
                    .or_else(|| {
                        Command::new("lz4")
                            .arg("-dc")
                            .arg(&p)
                            .output()
                            .ok()
                            .map(|o| o.stdout)
                    })
                    .unwrap_or_default()
            } else {
                std::fs::read(&p).unwrap_or_default()
            };
            text.push_str(&String::from_utf8_lossy(&bytes));
            text.push('\n');
        }
        text
    })
}

/// Every distinct version in the host's Packages files.
pub fn real_versions() -> Vec<String> {
    let mut v: Vec<String> = packages_text()
        .lines()
        .filter_map(|l| l.strip_prefix("Version: "))
        .map(str::to_string)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Up to `n` real stanzas (every `step`-th), or a built-in one without lists.
pub fn stanzas(n: usize) -> Vec<String> {
    let all: Vec<&str> = packages_text()
        .split("\n\n")
        .filter(|s| s.contains("Package:"))
        .collect();
    let mut out: Vec<String> = all
        .iter()
        .step_by((all.len() / n).max(1))
        .take(n)
        .map(|s| s.to_string())
        .collect();
    out.push(
        "Package: libc6\nVersion: 2.36-9+deb12u4\nArchitecture: amd64\nDepends: libgcc-s1, \
         foo (>= 1:2.0~rc1) | bar [amd64] <!nocheck>\nDescription: x\n more\n .\n end\n\
         SHA256: 00ff\nSize: 12\n"
            .into(),
    );
    out
}

/// The host's InRelease files (clearsigned), with their paths.
pub fn inreleases() -> Vec<(std::path::PathBuf, Vec<u8>)> {
    lists("_InRelease")
        .into_iter()
        .filter_map(|p| Some((p.clone(), std::fs::read(&p).ok()?)))
        .collect()
}

/// The repository's own recipes, plus one that uses every table.
pub fn recipes() -> Vec<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut out: Vec<String> = [
        "recipes/hello.toml",
        "recipes/vm-hello.toml",
        "base-images/static.toml",
        "base-images/debian-static.toml",
        "base-images/debian-busybox.toml",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(format!("{root}/{p}")).ok())
    .collect();
    out.push(
        r#"name = "all"
base = "scratch"
platforms = ["linux/amd64", "linux/arm64/v8"]
compression = "zstd"
tags = ["a"]
[config]
entrypoint = ["/app/x"]
cmd = ["--flag"]
env = { PATH = "/usr/bin:/bin" }
user = "65532:65532"
workdir = "/app"
labels = { "k" = "v" }
[[layers]]
name = "app"
files = [ { src = "out/x", dest = "/app/x", mode = 0o755 } ]
trees = [ { src = "static/", dest = "/app/static", exclude = ["*.tmp"] } ]
symlinks = [ { path = "/usr/bin/x", target = "/app/x" } ]
contents = [ { dest = "/etc/motd", text = "hi\n" } ]
dirs = [ { path = "/var/x", mode = 0o700, uid = 1, gid = 2 } ]
[[layers]]
name = "runtime"
packages = ["ca-certificates"]
"#
        .into(),
    );
    out
}

/// One tar entry to build a seed archive from.
pub enum Ent<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

/// A GNU tar of `entries` (long names through GNU long-name records).
pub fn tar(entries: &[Ent<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        let (path, data): (&str, &[u8]) = match e {
            Ent::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                (p, b"")
            }
            Ent::File(p, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                (p, d)
            }
            Ent::Symlink(p, t) | Ent::Hardlink(p, t) => {
                let link = matches!(e, Ent::Hardlink(..));
                h.set_entry_type(if link {
                    tar::EntryType::Link
                } else {
                    tar::EntryType::Symlink
                });
                h.set_mode(0o777);
                b.append_link(&mut h, p, t).expect("link");
                continue;
            }
        };
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).expect("append");
    }
    b.into_inner().expect("tar")
}

/// A typical layer: directories, files, links, a whiteout, a long name.
pub fn layer_tar() -> Vec<u8> {
    let long = format!("usr/share/{}/file", "d".repeat(120));
    tar(&[
        Ent::Dir("./", 0o755),
        Ent::Dir("etc/", 0o755),
        Ent::File("etc/motd", b"hello\n"),
        Ent::Dir("usr/", 0o755),
        Ent::Dir("usr/bin/", 0o755),
        Ent::File("usr/bin/sh", b"\x7fELF"),
        Ent::Symlink("usr/bin/bash", "sh"),
        Ent::Hardlink("usr/bin/ash", "usr/bin/sh"),
        Ent::File(".wh.old", b""),
        Ent::Dir("tmp/", 0o1777),
        Ent::File(&long, b"x"),
    ])
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

/// An `ar` archive of `members` (name, data), as a `.deb` is.
pub fn ar(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = b"!<arch>\n".to_vec();
    for (name, data) in members {
        out.extend_from_slice(
            format!(
                "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                name,
                0,
                0,
                0,
                "100644",
                data.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(b'\n');
        }
    }
    out
}

/// The control and data tars of a small package.
pub fn deb_parts() -> (Vec<u8>, Vec<u8>) {
    let control = tar(&[
        Ent::Dir("./", 0o755),
        Ent::File("./control", b"Package: fuzz\nVersion: 1.0-1\nArchitecture: all\nDescription: seed\n"),
        Ent::File("./md5sums", b"d41d8cd98f00b204e9800998ecf8427e  usr/share/doc/fuzz/copyright\n"),
        Ent::File("./postinst", b"#!/bin/sh\nupdate-alternatives --install /usr/bin/x x /usr/bin/y 10 --slave /a a /b\n"),
    ]);
    let data = tar(&[
        Ent::Dir("./", 0o755),
        Ent::Dir("./usr/", 0o755),
        Ent::Dir("./usr/bin/", 0o755),
        Ent::File("./usr/bin/fuzz", b"#!/bin/sh\necho fuzz\n"),
        Ent::Symlink("./usr/bin/fz", "fuzz"),
        Ent::Hardlink("./usr/bin/fuzz2", "./usr/bin/fuzz"),
        Ent::Dir("./usr/share/doc/fuzz/", 0o755),
        Ent::File("./usr/share/doc/fuzz/copyright", b""),
    ]);
    (control, data)
}

/// A `.deb` of `control` and `data` tars, both members plain or gzipped.
pub fn deb(control: &[u8], data: &[u8], gz: bool) -> Vec<u8> {
    if gz {
        ar(&[
            ("debian-binary", b"2.0\n"),
            ("control.tar.gz", &gzip(control)),
            ("data.tar.gz", &gzip(data)),
        ])
    } else {
        ar(&[
            ("debian-binary", b"2.0\n"),
            ("control.tar", control),
            ("data.tar", data),
        ])
    }
}

/// A `.deb` that dpkg-deb itself built, if dpkg-deb is there.
pub fn dpkg_deb() -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().ok()?;
    let root = dir.path().join("pkg");
    std::fs::create_dir_all(root.join("DEBIAN")).ok()?;
    std::fs::create_dir_all(root.join("usr/bin")).ok()?;
    std::fs::write(root.join("DEBIAN/control"), "Package: fuzz-real\nVersion: 2:1.0~rc1-1\nArchitecture: all\nMaintainer: k <k@example.org>\nDescription: seed\n").ok()?;
    std::fs::write(root.join("usr/bin/hello"), "#!/bin/sh\n").ok()?;
    std::os::unix::fs::symlink("hello", root.join("usr/bin/hi")).ok()?;
    let out = dir.path().join("x.deb");
    let ok = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&root)
        .arg(&out)
        .output()
        .ok()?
        .status
        .success();
    ok.then(|| std::fs::read(&out).ok()).flatten()
}
