//! Text formats: recipe TOML, deb822 (`Packages`, control files, `Release`)
//! and dependency fields, and clearsigned `InRelease` through gpgv.

use std::path::Path;

use kiln::recipe::Recipe;
use kiln::source::deb::{control, release_entry, verify_inrelease};

use super::gen::{self, Rng};
use super::seeds;

/// deb822 written back from parsed stanzas (the parser's own reading).
fn deb822(stanzas: &[control::Stanza]) -> String {
    let mut out = String::new();
    for s in stanzas {
        for (k, v) in s {
            let mut lines = v.split('\n');
            out.push_str(&format!("{k}: {}\n", lines.next().unwrap_or_default()));
            for l in lines {
                out.push_str(&format!(" {l}\n"));
            }
        }
        out.push('\n');
    }
    out
}

const DEB822_TOKENS: &[&[u8]] = &[
    b"\n\n",
    b"\n ",
    b"\n\t",
    b": ",
    b":",
    b"Depends: ",
    b" (>= ",
    b")",
    b" | ",
    b", ",
    b"[amd64]",
    b"<!nocheck>",
    b"SHA256:\n ",
    b"Version: 1:2.0~rc1-1",
    b"\r\n",
    b"\xef\xbb\xbf",
];

#[test]
fn deb822_packages() {
    let stanzas = seeds::stanzas(200);
    let seeds: Vec<&[u8]> = stanzas.iter().map(|s| s.as_bytes()).collect();
    gen::run("deb822_packages", 1500, |rng| {
        let bytes = gen::input(rng, &seeds, DEB822_TOKENS);
        let text = String::from_utf8_lossy(&bytes);
        let parsed = control::parse(&text);
        for stanza in &parsed {
            for (k, v) in stanza {
                assert!(!k.contains(':') && !k.contains('\n'), "field name `{k}`");
                for group in control::relations(v) {
                    for rel in group {
                        let _ = rel.to_string();
                    }
                }
            }
        }
        // What kiln read, written back, reads the same (line-end `\r` aside,
        // which `str::lines` folds).
        if !text.contains('\r') {
            assert_eq!(
                control::parse(&deb822(&parsed)),
                parsed,
                "round trip of {text:?}"
            );
        }
        let _ = release_entry(&text, "main/binary-amd64/Packages.xz");
    });
}

#[test]
fn release_text() {
    let inrel = seeds::inreleases();
    let mut texts: Vec<Vec<u8>> = inrel.iter().map(|(_, b)| b.clone()).collect();
    texts.push(
        b"Origin: Debian\nSuite: stable\nSHA256:\n 0000000000000000000000000000000000000000000000000000000000000000 12 main/binary-amd64/Packages.xz\n"
            .to_vec(),
    );
    let seeds: Vec<&[u8]> = texts.iter().map(Vec::as_slice).collect();
    gen::run("release_text", 200, |rng| {
        let bytes = gen::input(
            rng,
            &seeds,
            &[
                b"\n ",
                b" ",
                b"main/binary-amd64/Packages.xz",
                b"SHA256:",
                b"g",
            ],
        );
        let text = String::from_utf8_lossy(&bytes);
        for p in [
            "main/binary-amd64/Packages.xz",
            "main/binary-amd64/Packages.gz",
            "main/binary-amd64/Packages",
        ] {
            if let Some((digest, _size)) = release_entry(&text, p) {
                assert!(text.contains(digest.hex()), "digest from the text");
            }
        }
    });
}

/// Mutated `InRelease` files through gpgv: a changed file either fails to
/// verify or yields exactly the signed text of the original.
#[test]
fn inrelease_signature() {
    let keyring = Path::new("/usr/share/keyrings/debian-archive-keyring.gpg");
    let inrel = seeds::inreleases();
    if inrel.is_empty() || !keyring.is_file() {
        eprintln!("fuzz-result target=inrelease_signature cases=0 failures=0 (no InRelease or keyring on this host)");
        return;
    }
    let originals: Vec<String> = inrel
        .iter()
        .map(|(p, b)| {
            verify_inrelease(b, keyring, &p.display().to_string())
                .expect("the host's own InRelease verifies")
        })
        .collect();
    gen::run("inrelease_signature", 12, |rng| {
        let i = rng.usize(..inrel.len());
        let bytes = gen::mutate(
            rng,
            &inrel[i].1,
            &[
                b"\n",
                b"- ",
                b"-----BEGIN PGP SIGNATURE-----\n",
                b"Hash: SHA256\n",
            ],
            &[],
        );
        if let Ok(text) = verify_inrelease(&bytes, keyring, "a mutated InRelease") {
            assert_eq!(
                text, originals[i],
                "a changed InRelease verified with other text"
            );
        }
    });
}

const TOML_TOKENS: &[&[u8]] = &[
    b"\n[[layers]]\n",
    b"\n[config]\n",
    b"\n[vm]\n",
    b"name = ",
    b"\"",
    b"'''",
    b"\"\"\"",
    b"= ",
    b"0o7777",
    b"0o755",
    b"-1",
    b"4294967296",
    b"\"../..\"",
    b"\"/\"",
    b"\"\\u0000\"",
    b"{ ",
    b" }",
    b"[",
    b"]",
    b", ",
    b"\"linux/arm/v7\"",
    b"\"oci:x@sha256:\"",
    b"\"*\"",
    b"\n#",
    b"\xc3\xa9",
];

/// A recipe built from random parts, structurally close to valid.
fn recipe(rng: &mut Rng) -> String {
    let s = |rng: &mut Rng| -> String {
        gen::pick(
            rng,
            &[
                "x",
                "",
                "/",
                "/a/b",
                "../up",
                "a/../../b",
                "/usr/bin/x",
                "a\\u0000b",
                "é",
                "*.tmp",
                "linux/amd64",
                "65532:65532",
                "A=B",
                "x y",
                &"p/".repeat(300),
            ],
        )
        .to_string()
    };
    let mut t = format!("name = \"{}\"\n", s(rng));
    if rng.bool() {
        t.push_str(&format!(
            "base = \"{}\"\n",
            gen::pick(
                rng,
                &[
                    "scratch",
                    "base.toml",
                    "oci:dir",
                    "reg.example/r@sha256:00",
                    "oci:d@sha256:x"
                ]
            )
        ));
    }
    if rng.bool() {
        t.push_str(&format!(
            "platforms = [\"{}\", \"{}\"]\n",
            s(rng),
            gen::pick(
                rng,
                &["linux/amd64", "linux/arm64/v8", "windows/amd64", "linux"]
            )
        ));
    }
    t.push_str("[config]\n");
    for key in ["user", "workdir", "stop_signal"] {
        if rng.bool() {
            t.push_str(&format!("{key} = \"{}\"\n", s(rng)));
        }
    }
    if rng.bool() {
        t.push_str(&format!("env = {{ \"{}\" = \"{}\" }}\n", s(rng), s(rng)));
    }
    for _ in 0..rng.usize(0..3) {
        t.push_str(&format!("[[layers]]\nname = \"{}\"\n", s(rng)));
        match rng.u8(0..5) {
            0 => t.push_str(&format!(
                "files = [ {{ src = \"{}\", dest = \"{}\", mode = {} }} ]\n",
                s(rng),
                s(rng),
                gen::pick(rng, &["0o755", "0", "-1", "99999999999", "0o7777"])
            )),
            1 => t.push_str(&format!(
                "symlinks = [ {{ path = \"{}\", target = \"{}\" }} ]\n",
                s(rng),
                s(rng)
            )),
            2 => t.push_str(&format!(
                "contents = [ {{ dest = \"{}\", text = \"{}\" }} ]\n",
                s(rng),
                s(rng)
            )),
            3 => t.push_str(&format!(
                "dirs = [ {{ path = \"{}\", uid = {} }} ]\n",
                s(rng),
                gen::pick(rng, &["0", "-1", "4294967296"])
            )),
            _ => t.push_str(&format!("packages = [\"{}\"]\n", s(rng))),
        }
    }
    t
}

#[test]
fn recipe_toml() {
    let recipes = seeds::recipes();
    let seeds: Vec<&[u8]> = recipes.iter().map(|s| s.as_bytes()).collect();
    gen::run("recipe_toml", 1500, |rng| {
        let text = if rng.u8(0..3) == 0 {
            recipe(rng)
        } else {
            String::from_utf8_lossy(&gen::input(rng, &seeds, TOML_TOKENS)).into_owned()
        };
        // A recipe in a directory that does not exist: parsing reads no other file.
        match Recipe::parse(Path::new("/nonexistent/fuzz/recipe.toml"), text) {
            Ok(r) => {
                let _ = format!("{r:?}");
            }
            Err(e) => {
                let shown = e.to_string();
                assert!(!shown.is_empty());
            }
        }
    });
}
