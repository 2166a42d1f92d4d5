//! A Debian image rebuilt with nothing changed: every layer comes from the
//! layer cache, so the build must not touch the packages' files at all. The
//! second build runs under `strace`, which records every file it opens,
//! copies, links, creates or removes; the packages' files are known from the
//! store (each `.deb`'s cached file list). A local signed repository on
//! 127.0.0.1 serves the packages (`support::apt`).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use crate::support::apt::{Pkg, Repo};
use crate::support::{self, last_digest, Work};

const SUITE: &str = "kiln-warm";

fn repo() -> &'static Repo {
    static REPO: OnceLock<Repo> = OnceLock::new();
    REPO.get_or_init(|| {
        let mut certs = Pkg::new("ca-certificates", "1", "all");
        for i in 0..3 {
            certs = certs.file(
                &format!("/usr/share/ca-certificates/test/ca-{i}.crt"),
                format!("-----BEGIN CERTIFICATE-----\nY2Et{i}\n-----END CERTIFICATE-----\n"),
                0o644,
            );
        }
        Repo::start(
            SUITE,
            &["main"],
            &[
                Pkg::new("base-passwd", "3.6.1", "amd64")
                    .file(
                        "/usr/share/base-passwd/passwd.master",
                        crate::accounts::PASSWD_MASTER,
                        0o644,
                    )
                    .file(
                        "/usr/share/base-passwd/group.master",
                        crate::accounts::GROUP_MASTER,
                        0o644,
                    ),
                certs,
                Pkg::new("app", "1.0", "amd64")
                    .depends("libapp1")
                    .file("/usr/bin/app", "#!/bin/true\n", 0o755)
                    .file("/usr/share/doc/app/README", "docs\n", 0o644)
                    .symlink("/usr/bin/app-link", "app"),
                Pkg::new("libapp1", "1.0", "amd64")
                    .file(
                        "/usr/lib/x86_64-linux-gnu/libapp.so.1",
                        "not really ELF\n",
                        0o644,
                    )
                    .file("/usr/share/libapp/data", "data\n", 0o644),
            ],
        )
    })
}

/// A locked base recipe (base-passwd, ca-certificates) and a locked recipe
/// on it: a packages layer (with an `exclude`) and a files layer, amd64.
fn workspace() -> Work {
    let w = Work::new();
    w.write("keys/test.gpg", fs::read(&repo().keyring).unwrap());
    w.write(
        "base.toml",
        format!(
            "name = \"base\"\nplatforms = [\"linux/amd64\"]\n\n\
             [repositories.test]\nsuite = \"{SUITE}\"\nkeyring = \"keys/test.gpg\"\n\n\
             [[layers]]\nname = \"packages\"\npackages = [\"base-passwd\", \"ca-certificates\"]\n\n\
             [[layers]]\nname = \"users\"\ndirs = [{{ path = \"/home/nonroot\", mode = 0o700, uid = 65532, gid = 65532 }}]\n"
        ),
    );
    w.write("app/app.txt", "hello\n");
    w.write(
        "recipe.toml",
        "name = \"app\"\nbase = \"base.toml\"\nplatforms = [\"linux/amd64\"]\n\n\
         [[layers]]\nname = \"app\"\npackages = [\"app\"]\nexclude = [\"/usr/share/doc/**\"]\n\n\
         [[layers]]\nname = \"files\"\nfiles = [{ src = \"app/app.txt\", dest = \"/app/app.txt\" }]\n",
    );
    support::apt::kiln_ok_at(&w, &repo().url, &["lock", "recipe.toml"]);
    w
}

fn build(w: &Work, out: &str) -> String {
    let stdout = support::apt::kiln_ok_at(w, &repo().url, &["build", "recipe.toml", "--out", out]);
    last_digest(&stdout)
}

/// The blobs of every file of every package the store has unpacked (from
/// `debs/*.json`, each `.deb`'s cached file list).
fn package_file_blobs(store: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in fs::read_dir(store.join("debs")).unwrap() {
        let text = fs::read_to_string(e.unwrap().path()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for entry in v["entries"].as_array().unwrap() {
            if let Some(d) = entry["digest"].as_str() {
                out.insert(d.strip_prefix("sha256:").unwrap().to_string());
            }
        }
    }
    out
}

/// Runs kiln under `strace`: its standard output, and the calls recorded.
fn traced(w: &Work, log: &Path, args: &[&str]) -> (String, Vec<String>) {
    let mut cmd = Command::new("strace");
    cmd.current_dir(w.path())
        .env("KILN_CACHE", w.cache())
        .env("KILN_NO_PROGRESS", "1")
        .env("KILN_DEBIAN_MIRROR", &repo().url)
        .env_remove("SOURCE_DATE_EPOCH")
        .args(["-f", "-qq", "-o"])
        .arg(log)
        .arg("-e")
        .arg(
            "trace=open,openat,openat2,creat,copy_file_range,sendfile,splice,link,linkat,\
             symlink,symlinkat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,execve",
        )
        .arg(support::kiln_bin())
        .args(args);
    let out = cmd.output().expect("strace (Debian package strace) runs");
    support::assert_success(&out, &format!("strace kiln {}", args.join(" ")));
    let calls = fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    (String::from_utf8(out.stdout).unwrap(), calls)
}

#[test]
fn a_warm_debian_rebuild_opens_no_package_file_and_copies_nothing() {
    let w = workspace();
    let cold = build(&w, "out");
    // The store's stat cache and blob stamps trust nothing written in the
    // last 2 s (the cold build wrote the store): the first rebuild after
    // that records the files, the next writes nothing.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(build(&w, "out"), cold);
    let store = w.cache();
    let files = package_file_blobs(&store);
    assert!(files.len() >= 8, "the packages' files: {files:?}");
    let index = w.path().join("out/index.json");
    let inode = fs::metadata(&index).unwrap().ino();

    let log = w.path().join("strace.log");
    let (stdout, calls) = traced(&w, &log, &["build", "recipe.toml", "--out", "out"]);
    assert_eq!(
        cold,
        last_digest(&stdout),
        "the warm build gave another digest"
    );

    // Nothing is copied, linked or made anywhere: no package tree, no
    // scratch tree, no new output (the layout there is already right).
    let made: Vec<&String> = calls
        .iter()
        .filter(|l| {
            [
                "copy_file_range(",
                "sendfile(",
                "splice(",
                "link(",
                "linkat(",
                "symlink(",
                "symlinkat(",
            ]
            .iter()
            .any(|c| l.contains(&format!(" {c}")))
        })
        .collect();
    assert!(
        made.is_empty(),
        "the warm build copied or linked: {made:#?}"
    );
    // Only the store's record of this live build is created (and removed).
    let locks = format!("{}/locks/", store.display());
    let written: Vec<&String> = calls
        .iter()
        .filter(|l| {
            let creates = l.contains(" mkdir")
                || l.contains(" rename")
                || l.contains(" unlink")
                || (l.contains(" open") && (l.contains("O_WRONLY") || l.contains("O_CREAT")));
            creates && !l.contains("= -1 ") && !l.contains(&locks) && !l.contains("gc.lock")
        })
        .filter(|l| !l.contains(".kiln-lock"))
        .collect();
    assert!(
        written.is_empty(),
        "the warm build wrote files: {written:#?}"
    );
    // No package file is opened (nor run: only kiln itself is executed).
    let opened: Vec<&String> = calls
        .iter()
        .filter(|l| l.contains(" open"))
        .filter(|l| {
            l.split('"')
                .nth(1)
                .and_then(|p| p.rsplit_once("/blobs/sha256/"))
                .is_some_and(|(_, hex)| files.contains(hex))
        })
        .collect();
    assert!(
        opened.is_empty(),
        "the warm build opened package files: {opened:#?}"
    );
    let run: Vec<&String> = calls
        .iter()
        .filter(|l| l.contains(" execve(") && !l.contains("= -1 "))
        .collect();
    assert_eq!(run.len(), 1, "the warm build ran programs: {run:#?}");
    assert_eq!(
        fs::metadata(&index).unwrap().ino(),
        inode,
        "the output layout was written again"
    );
}

/// A layer the cache no longer has, whose packages' files a prune removed
/// from the store, is built again from the `.deb`s (their file lists still
/// cached): same digest as the first build.
#[test]
fn a_layer_whose_package_files_were_pruned_is_rebuilt_the_same() {
    let w = workspace();
    let cold = build(&w, "out");
    let store = w.cache();
    for hex in package_file_blobs(&store) {
        let _ = fs::remove_file(store.join("blobs/sha256").join(hex));
    }
    for e in fs::read_dir(store.join("layers")).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
    let derived = store.join("derived");
    if derived.exists() {
        fs::remove_dir_all(&derived).unwrap();
    }
    let again = build(&w, "out2");
    assert_eq!(cold, again, "the rebuilt image differs");
    // And with the layer records kept but the files gone, the cache answers.
    for hex in package_file_blobs(&store) {
        let _ = fs::remove_file(store.join("blobs/sha256").join(hex));
    }
    assert_eq!(build(&w, "out3"), cold);
}
