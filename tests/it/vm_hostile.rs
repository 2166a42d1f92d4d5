//! Hostile bases for `[vm]` recipes (issue 9): a base layer whose entries
//! would lead a naive unpacker out of the image root (a symlink to a host
//! directory and then a file beneath it, `link/.`, a symlink chain, hard
//! links to host files, `..` and absolute paths) must never create or change
//! anything outside the build's output, for every disk root (erofs, squashfs,
//! ext4, raw and qcow2) and for the initramfs.
//!
//! Each test builds its hostile `oci:` layouts itself, byte by byte, and
//! compares a checksum listing of a canary directory before and after. No
//! VM is booted: what matters here is the host the build runs on.

use crate::support;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{Canary, Work};
use sha2::{Digest as _, Sha256};

/// One entry of a crafted layer; paths and link targets are written into the
/// tar header as raw bytes, so they can be absolute or hold `..` and `.`.
enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8]),
    Sym(&'a str, &'a str),
    Hard(&'a str, &'a str),
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn layer_tar(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (path, kind, mode, link, data): (&str, _, u32, &str, &[u8]) = match e {
            E::Dir(p, m) => (p, tar::EntryType::Directory, *m, "", b""),
            E::File(p, d) => (p, tar::EntryType::Regular, 0o644, "", d),
            E::Sym(p, t) => (p, tar::EntryType::Symlink, 0o777, t, b""),
            E::Hard(p, t) => (p, tar::EntryType::Link, 0o644, t, b""),
        };
        let gnu = h.as_gnu_mut().unwrap();
        assert!(
            path.len() < 100 && link.len() < 100,
            "keep crafted names short"
        );
        gnu.name[..path.len()].copy_from_slice(path.as_bytes());
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Writes an OCI layout at `dir` holding one image of `layers` (uncompressed
/// tar, so each layer's digest is its diff_id); returns the layer digests.
fn hostile_layout(dir: &Path, layers: &[Vec<u8>]) -> Vec<String> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> String {
        let hex = sha(bytes);
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    };
    let digests: Vec<String> = layers.iter().map(|l| put(l)).collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": { "type": "layers", "diff_ids": digests },
    })
    .to_string();
    let descs: Vec<serde_json::Value> = layers
        .iter()
        .zip(&digests)
        .map(|(l, d)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": d, "size": l.len(),
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": put(config.as_bytes()), "size": config.len(),
        },
        "layers": descs,
    })
    .to_string();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": put(manifest.as_bytes()), "size": manifest.len(),
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    digests
}

fn kernel() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains("/vmlinuz-"))
        .collect();
    found.sort();
    found
        .pop()
        .expect("no /boot/vmlinuz-*: run scripts/test.sh")
}

/// The output variants: every disk root, raw and qcow2, and the initramfs.
const KINDS: [(&str, &str); 4] = [
    ("erofs", "outputs = [\"raw\", \"qcow2\"]\nroot = \"erofs\""),
    ("squashfs", "outputs = [\"raw\"]\nroot = \"squashfs\""),
    ("ext4", "outputs = [\"raw\"]\nroot = \"ext4\""),
    ("initramfs", "outputs = [\"initramfs\"]"),
];

/// A `[vm]` recipe `NAME.toml` on the base layout `base-NAME`.
fn vm_recipe(w: &Work, name: &str, vm: &str) {
    std::fs::copy("/bin/busybox", w.path().join("busybox")).unwrap();
    w.write(
        &format!("{name}.toml"),
        format!(
            r##"name = "{name}"
base = "oci:base-{name}"
[vm]
kernel = {{ path = "{}" }}
init = "/init.sh"
{vm}

[[layers]]
files = [ {{ src = "busybox", dest = "/bin/busybox", mode = 0o755 }} ]
contents = [ {{ dest = "/init.sh", mode = 0o755, text = "#!/bin/busybox sh\n" }} ]
"##,
            kernel().display()
        ),
    );
}

/// Entries that are invalid in a single layer (absolute, `..`, through a
/// symlink of the same layer), and a symlink in one layer with a file
/// beneath it in the next: each build is refused with exit 2, naming the
/// base, the layer digest and the entry, and the canary does not move.
#[test]
fn hostile_base_entries_are_refused_and_touch_nothing_outside() {
    support::need_root("a disk build gives files their owners");
    let canary = Canary::new();
    let victim = canary.at("victim");
    let secret = canary.at("secret");
    let climb = format!("../../../../../../../..{}", canary.at("climbed"));
    let climb_link = format!("../../../../../../../..{secret}");
    let absolute = canary.at("absolute");
    let cases: Vec<(&str, Vec<Vec<E<'_>>>, &str)> = vec![
        (
            "file beneath a symlink to a host directory",
            vec![vec![
                E::Sym("link", &victim),
                E::File("link/file", b"pwned"),
            ]],
            "link/file",
        ),
        (
            "`link/.` with other permissions",
            vec![vec![E::Sym("link", &victim), E::Dir("link/.", 0o777)]],
            "link/.",
        ),
        (
            "symlink chain",
            vec![vec![
                E::Sym("a", "b"),
                E::Sym("b", &victim),
                E::File("a/file", b"pwned"),
            ]],
            "a/file",
        ),
        (
            "hard link to an absolute host file",
            vec![vec![E::Hard("stolen", &secret)]],
            "stolen",
        ),
        (
            "hard link that climbs out",
            vec![vec![E::Hard("stolen", &climb_link)]],
            "stolen",
        ),
        (
            "entry that climbs out",
            vec![vec![E::File(&climb, b"pwned")]],
            "climbed",
        ),
        (
            "absolute entry",
            vec![vec![E::File(&absolute, b"pwned")]],
            "absolute",
        ),
        (
            "symlink in one layer, a file beneath it in the next",
            vec![
                vec![E::Sym("link", &victim)],
                vec![E::File("link/file", b"pwned"), E::Dir("link/sub", 0o777)],
            ],
            "link/file",
        ),
    ];
    let w = Work::new();
    let before = canary.listing();
    let mut builds = 0;
    for (i, (what, layers, entry)) in cases.iter().enumerate() {
        // The single-layer cases rotate through the output kinds; the
        // cross-layer case, refused later (when the layers are merged), runs
        // against every one.
        let kinds: Vec<&(&str, &str)> = if layers.len() > 1 {
            KINDS.iter().collect()
        } else {
            vec![&KINDS[i % KINDS.len()]]
        };
        for (kind, vm) in kinds {
            let name = format!("case{i}-{kind}");
            let tars: Vec<Vec<u8>> = layers.iter().map(|l| layer_tar(l)).collect();
            let digests = hostile_layout(&w.path().join(format!("base-{name}")), &tars);
            vm_recipe(&w, &name, vm);
            let out = w
                .kiln()
                .args(["build", &format!("{name}.toml")])
                .output()
                .unwrap();
            builds += 1;
            let err = String::from_utf8_lossy(&out.stderr);
            let after = canary.listing();
            assert_eq!(before, after, "{what} ({kind}): the canary changed\n{err}");
            assert_eq!(out.status.code(), Some(2), "{what} ({kind}): {err}");
            let bad_layer = digests.last().unwrap();
            for needle in [
                format!("oci:base-{name}"),
                bad_layer.clone(),
                entry.to_string(),
                "hint:".to_string(),
            ] {
                assert!(
                    err.contains(&needle),
                    "{what} ({kind}): `{needle}` missing from:\n{err}"
                );
            }
            if layers.len() > 1 {
                assert!(err.contains("a symlink of a lower layer"), "{what}: {err}");
            }
            assert!(
                !w.path().join("out").join(&name).exists(),
                "{what}: output written"
            );
        }
    }
    assert_eq!(builds, 11);
}

/// Valid bases whose links point at the host (a symlink to a host
/// directory, a chain, a relative link that climbs, a directory replaced by
/// such a symlink in a later layer, a hard link inside the image) build, for
/// every disk root and the initramfs; the links stay links in the image and
/// nothing outside the output moves.
#[test]
fn host_links_in_a_base_stay_links_in_every_disk() {
    support::need_root("a disk build gives files their owners");
    let canary = Canary::new();
    let victim = canary.at("victim");
    let lower = layer_tar(&[
        E::Dir("d/", 0o755),
        E::File("d/f", b"in the image"),
        E::Dir("etc/", 0o755),
        E::File("etc/data", b"data"),
        E::Hard("etc/hard", "etc/data"),
        E::Sym("link", &victim),
        E::Sym("chain", "link"),
        E::Sym("up", "../../../../../../.."),
        E::Dir("open/", 0o777),
    ]);
    // A directory of the lower layer becomes a symlink to the host: its
    // children go with it, and nothing is written through the link.
    let upper = layer_tar(&[E::Sym("d", &victim)]);
    let w = Work::new();
    let before = canary.listing();
    for (kind, vm) in KINDS {
        hostile_layout(
            &w.path().join(format!("base-{kind}")),
            &[lower.clone(), upper.clone()],
        );
        vm_recipe(&w, kind, vm);
        w.ok(&["build", &format!("{kind}.toml")]);
        assert_eq!(before, canary.listing(), "{kind}: the canary changed");
        let out = w.path().join("out").join(kind);
        let listing = match kind {
            "squashfs" => support::run(
                Command::new("unsquashfs")
                    .args(["-lln", "-d", ""])
                    .arg(out.join("disk.raw")),
            ),
            "ext4" => support::run(
                Command::new("debugfs")
                    .args(["-R", "ls -l /"])
                    .arg(out.join("disk.raw")),
            ),
            "erofs" => support::run(
                Command::new("dump.erofs")
                    .args(["--ls", "--path=/"])
                    .arg(out.join("disk.raw")),
            ),
            _ => cpio_listing(&out.join("initramfs.img")),
        };
        // Each tool lists the root its own way; a link is a link in all four.
        let is_link = |name: &str| {
            listing.lines().any(|l| {
                let t: Vec<&str> = l.split_whitespace().collect();
                match kind {
                    "erofs" => t.len() == 3 && t[1] == "7" && t[2] == name,
                    "ext4" => t.get(1) == Some(&"120777") && t.last() == Some(&name),
                    "squashfs" => t[0].starts_with('l') && t.contains(&format!("/{name}").as_str()),
                    _ => t[0].starts_with('l') && t.contains(&name),
                }
            })
        };
        for name in ["link", "chain", "up", "d"] {
            assert!(
                is_link(name),
                "{kind}: `{name}` is not a symlink:\n{listing}"
            );
        }
        assert!(
            !listing.contains("d/f"),
            "{kind}: `d/f` survived:\n{listing}"
        );
    }
}

/// `cpio -t -v` of a gzip-compressed newc archive.
fn cpio_listing(path: &Path) -> String {
    use std::io::{Read, Write};
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut raw)
        .unwrap();
    let mut child = Command::new("cpio")
        .args(["-t", "-v", "--quiet"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&raw).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The same check holds for a base pulled from a registry (a real
/// `docker-registry` on 127.0.0.1): the pulled layer goes through the one
/// place where base layers enter a build, and is refused there.
#[test]
fn a_hostile_base_from_a_registry_is_refused() {
    use crate::support::registry::{client, registry, Flavour};
    let r = registry(Flavour::Plain);
    let canary = Canary::new();
    let victim = canary.at("victim");
    let w = Work::new();
    let layout = w.path().join("hostile");
    hostile_layout(
        &layout,
        &[layer_tar(&[
            E::Sym("link", &victim),
            E::File("link/file", b"pwned"),
        ])],
    );
    let target = r.repo(&format!("vm-hostile-{}:1", std::process::id()));
    client::skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-no-creds",
        &format!("oci:{}", layout.display()),
        &format!("docker://{target}"),
    ]);
    // skopeo compresses the layer on the way: take its digest as pushed.
    let (pushed, manifest) = client::remote_raw(r, &target);
    let layer = pushed["layers"][0]["digest"].as_str().unwrap();
    let base = format!("{}@{manifest}", target.rsplit_once(':').unwrap().0);
    let before = canary.listing();
    vm_recipe(&w, "pulled", "outputs = [\"initramfs\"]");
    let text = std::fs::read_to_string(w.path().join("pulled.toml")).unwrap();
    w.write("pulled.toml", text.replace("oci:base-pulled", &base));
    let (code, err) = w.fails(&["build", "pulled.toml"]);
    assert_eq!(before, canary.listing(), "the canary changed\n{err}");
    assert_eq!(code, 2, "{err}");
    for needle in [base.as_str(), layer, "link/file", "hint:"] {
        assert!(err.contains(needle), "`{needle}` missing from:\n{err}");
    }
}
