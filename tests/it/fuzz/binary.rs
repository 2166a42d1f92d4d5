//! Binary formats: layer tars (plain and gzip), whiteouts, `ar`/`.deb`
//! packages, and OCI archives.

use std::collections::BTreeMap;

use kiln::digest::Digest;
use kiln::layer::read::{add_layer_dirs, apply_whiteout, entry_path};
use kiln::plan::DirMap;
use kiln::source::deb::extract;
use kiln::source::layout::unpack_archive;
use kiln::store::{LayerRecord, Store};

use super::gen::{self, Rng};
use super::seeds::{self, Ent};

const TAR_TOKENS: &[&[u8]] = &[
    b"ustar\0",
    b"ustar  \0",
    b"././@LongLink\0",
    b"../",
    b"/etc/",
    b".wh.",
    b".wh..wh..opq",
    b"0000777\0",
    b"77777777777\0",
    b"\x80\0\0\0\0\0\0\0\0\0\0\x10",
    b"\xff\xff\xff\xff",
    b"path=",
    b"30 ",
];

/// A tar, mutated, with the checksum of every header block fixed up (most
/// of the time) so that header edits are read rather than refused outright.
fn tar_input(rng: &mut Rng, seeds: &[&[u8]]) -> Vec<u8> {
    let mut t = gen::input(rng, seeds, TAR_TOKENS);
    if rng.u8(0..4) != 0 {
        for h in t.chunks_exact_mut(512) {
            if &h[257..262] == b"ustar" {
                h[148..156].fill(b' ');
                let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
                h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            }
        }
    }
    t
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("store")).expect("store");
    (dir, store)
}

#[test]
fn layer_tar() {
    let plain = seeds::layer_tar();
    let pax = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o700);
        h.set_size(0);
        b.append_data(&mut h, format!("{}/x/", "p".repeat(200)), &[][..])
            .expect("pax");
        b.into_inner().expect("tar")
    };
    let seeds: Vec<&[u8]> = vec![&plain, &pax];
    let (_dir, store) = store();
    let mut read = 0;
    gen::run("layer_tar", 300, |rng| {
        let tar = tar_input(rng, &seeds);
        let gz = rng.u8(0..4) == 0;
        let blob = if gz { seeds::gzip(&tar) } else { tar };
        let digest = store.put_bytes(&blob).expect("put");
        let media_type = if gz {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        let record = LayerRecord {
            diff_id: digest.clone(),
            size: blob.len() as u64,
            media_type: media_type.into(),
            digest,
        };
        let mut map = DirMap::new();
        if add_layer_dirs(&store, &record, &mut map).is_ok() {
            read += 1;
            for (name, meta) in &map {
                assert!(
                    !name.is_empty() && !name.ends_with('/') && !name.starts_with('/'),
                    "dir `{name}`"
                );
                assert!(meta.mode <= 0o7777);
            }
        }
    });
    eprintln!("fuzz-note target=layer_tar read_ok={read}");
}

/// The whiteout rules applied to a tree, against a plain model of them.
#[test]
fn layer_whiteouts() {
    let names = [
        "a",
        "b",
        "a/b",
        "a/b/c",
        "ab",
        "a.b",
        ".wh.a",
        "a/.wh.b",
        ".wh..wh..opq",
        "a/.wh..wh..opq",
        "a/.wh..wh..opq/x",
        ".wh.",
        "/",
        "./a",
        "a/",
        "..",
        "",
    ];
    gen::run("layer_whiteouts", 3000, |rng| {
        let mut tree: BTreeMap<String, ()> = BTreeMap::new();
        for _ in 0..rng.usize(0..8) {
            tree.insert(entry_path(gen::pick(rng, &names)), ());
        }
        let raw = if rng.bool() {
            gen::pick(rng, &names).to_string()
        } else {
            let seed = gen::pick(rng, &names);
            String::from_utf8_lossy(&gen::mutate(
                rng,
                seed.as_bytes(),
                &[b"/", b".wh.", b".wh..wh..opq"],
                &[],
            ))
            .into_owned()
        };
        let path = entry_path(&raw);
        assert!(
            !path.starts_with('/')
                && !path.ends_with('/')
                && (path.is_empty() || !path.split('/').any(|c| c.is_empty() || c == ".")),
            "`{raw}` → `{path}`"
        );
        let before = tree.clone();
        let was = apply_whiteout(&mut tree, &path);
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", &path));
        let under = |p: &str, d: &str| d.is_empty() || p.starts_with(&format!("{d}/"));
        let expect: BTreeMap<String, ()> = if name == ".wh..wh..opq" {
            before
                .iter()
                .filter(|(p, _)| !under(p, dir))
                .map(|(p, v)| (p.clone(), *v))
                .collect()
        } else if let Some(hidden) = name.strip_prefix(".wh.") {
            let gone = if dir.is_empty() {
                hidden.to_string()
            } else {
                format!("{dir}/{hidden}")
            };
            before
                .iter()
                .filter(|(p, _)| **p != gone && !p.starts_with(&format!("{gone}/")))
                .map(|(p, v)| (p.clone(), *v))
                .collect()
        } else {
            before.clone()
        };
        assert_eq!(was, name.starts_with(".wh."), "`{path}`");
        assert_eq!(tree, expect, "whiteout `{path}` over {before:?}");
    });
}

const DEB_TOKENS: &[&[u8]] = &[
    b"!<arch>\n",
    b"debian-binary   ",
    b"control.tar.gz  ",
    b"data.tar.xz     ",
    b"data.tar.zst    ",
    b"data.tar        ",
    b"`\n",
    b"9999999999",
    b"-1        ",
];

#[test]
fn deb_package() {
    let (control, data) = seeds::deb_parts();
    let mut debs = vec![
        seeds::deb(&control, &data, false),
        seeds::deb(&control, &data, true),
    ];
    debs.extend(seeds::dpkg_deb());
    let tars = [control.clone(), data.clone()];
    let deb_seeds: Vec<&[u8]> = debs.iter().map(Vec::as_slice).collect();
    let tar_seeds: Vec<&[u8]> = tars.iter().map(Vec::as_slice).collect();
    let (_dir, store) = store();
    // The seeds themselves read, so mutations start from valid packages.
    for (i, deb) in debs.iter().enumerate() {
        let digest = store.put_bytes(deb).expect("put");
        let c =
            extract::contents(&store, "seed", &digest).unwrap_or_else(|e| panic!("seed {i}: {e}"));
        assert!(c.control.contains("Package: fuzz"), "seed {i}");
        assert!(
            c.entries
                .iter()
                .any(|e| matches!(e.kind, extract::DebKind::Symlink { .. })),
            "seed {i}"
        );
    }
    let mut read = 0;
    gen::run("deb_package", 200, |rng| {
        let deb = match rng.u8(0..3) {
            // The whole archive, mutated.
            0 => gen::input(rng, &deb_seeds, DEB_TOKENS),
            // One member's tar mutated inside a well-formed ar.
            1 => seeds::deb(&tar_input(rng, &tar_seeds[..1]), &data, rng.bool()),
            _ => seeds::deb(&control, &tar_input(rng, &tar_seeds[1..]), rng.bool()),
        };
        let digest = store.put_bytes(&deb).expect("put");
        if let Ok(c) = extract::contents(&store, "fuzz", &digest) {
            read += 1;
            for e in &c.entries {
                assert!(
                    !e.path.starts_with('/')
                        && !e.path.split('/').any(|p| p == ".." || p.is_empty()),
                    "path `{}`",
                    e.path
                );
                if let extract::DebKind::Hardlink { target: t } = &e.kind {
                    assert!(
                        !t.starts_with('/') && !t.split('/').any(|p| p == ".."),
                        "link `{t}`"
                    );
                }
            }
        }
    });
    eprintln!("fuzz-note target=deb_package read_ok={read}");
}

#[test]
fn oci_archive() {
    let index = br#"{"schemaVersion":2,"manifests":[]}"#;
    let blob = b"{}";
    let hex = Digest::of(blob).hex().to_string();
    let seed = seeds::tar(&[
        Ent::File("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        Ent::File("index.json", index),
        Ent::Dir("blobs/", 0o755),
        Ent::Dir("blobs/sha256/", 0o755),
        Ent::File(&format!("blobs/sha256/{hex}"), blob),
        Ent::File("./index.json", index),
    ]);
    let seeds: Vec<&[u8]> = vec![&seed];
    gen::run("oci_archive", 200, |rng| {
        let tmp = tempfile::tempdir().expect("tempdir");
        let archive = tmp.path().join("a.tar");
        std::fs::write(&archive, tar_input(rng, &seeds)).expect("write");
        let dir = tmp.path().join("out");
        let _ = unpack_archive(&archive, &dir);
        if !dir.exists() {
            return; // refused before anything was written
        }
        // Whatever the archive held, only layout names were created.
        for e in walkdir::WalkDir::new(&dir).min_depth(1) {
            let e = e.expect("walk");
            let rel = e
                .path()
                .strip_prefix(&dir)
                .expect("under")
                .to_string_lossy()
                .into_owned();
            let ok = matches!(
                rel.as_str(),
                "index.json" | "oci-layout" | "blobs" | "blobs/sha256"
            ) || rel
                .strip_prefix("blobs/sha256/")
                .is_some_and(|h| h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()));
            assert!(ok, "unpacking created `{rel}`");
            assert!(!e.path_is_symlink(), "unpacking created a symlink `{rel}`");
        }
    });
}
