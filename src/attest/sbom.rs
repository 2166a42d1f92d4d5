//! The SBOM: an SPDX 2.3 JSON document listing every regular file of an
//! image (after applying its layers in order, whiteouts included) with its
//! SHA-256 and SHA-1.
//!
//! It is computed from the layer blobs themselves, so it describes what the
//! image holds, base layers included. Its bytes depend only on the image
//! (and the creation time, which is the image's own), so it is reproducible.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read};

use serde_json::{json, Value};
use sha1::Sha1;
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::layer::read::{
    decompress, walk_layer, Entry, HardLink, Kind, Paths, Rules, Tree, Visitor,
};
use crate::source::layout::Layout;

/// One file of the image.
#[derive(Debug, Clone)]
struct FileSums {
    sha256: String,
    sha1: String,
    /// The text of a file the package list reads ([`is_kept`]): a dpkg
    /// database file, `os-release`, or a package's `copyright`.
    dpkg: Option<String>,
}

/// A dpkg database file: `status`, or `status.d/NAME` (names may hold dots,
/// as `python3.11` and `libbz2-1.0` do), but not its `NAME.md5sums`.
fn is_dpkg_db(path: &str) -> bool {
    path == "var/lib/dpkg/status"
        || path
            .strip_prefix("var/lib/dpkg/status.d/")
            .is_some_and(|n| !n.is_empty() && !n.contains('/') && !n.ends_with(".md5sums"))
}

/// The files whose text the SBOM reads: the dpkg database, `os-release`
/// (for the purls' `distro`) and `/usr/share/doc/PKG/copyright` (licences).
fn is_kept(path: &str) -> bool {
    is_dpkg_db(path)
        || path == "etc/os-release"
        || path == "usr/lib/os-release"
        || path
            .strip_prefix("usr/share/doc/")
            .and_then(|r| r.strip_suffix("/copyright"))
            .is_some_and(|pkg| !pkg.is_empty() && !pkg.contains('/'))
}

/// The files of the image `manifest` in `layout`, path → checksums.
fn files(layout: &Layout, manifest: &Digest) -> Result<BTreeMap<String, FileSums>> {
    let (_, doc) = layout.read_json(manifest)?;
    let mut files: BTreeMap<String, FileSums> = BTreeMap::new();
    for layer in doc["layers"].as_array().into_iter().flatten() {
        let digest: Digest = layer["digest"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                Error::invalid(
                    format!("manifest `{manifest}` has a layer without a digest"),
                    Some(crate::error::hint::DAMAGED_IMAGE.into()),
                )
            })?;
        let path = layout.blob_path(&digest);
        let file = std::fs::File::open(&path).at("open layer", &path)?;
        let mut hashed = crate::digest::HashingReader::new(BufReader::new(file));
        {
            let mut tar = decompress(
                &mut hashed,
                layer["mediaType"].as_str().unwrap_or_default(),
                &digest,
            )?;
            let bad = |e: io::Error| Error::io("read layer", &path, e);
            let mut visitor = Files { bad: &bad };
            walk_layer(&mut tar, &mut files, &mut visitor, bad)?;
        }
        io::copy(&mut hashed, &mut io::sink()).at("read layer", &path)?;
        let actual = hashed.digest_so_far();
        if actual != digest {
            return Err(Error::DigestMismatch {
                what: format!("`{}`", path.display()),
                expected: Box::new(digest),
                actual: Box::new(actual),
            });
        }
    }
    Ok(files)
}

/// The regular files of an image's layers, hard links sharing their
/// target's sums, for [`files`].
struct Files<'a> {
    bad: &'a dyn Fn(io::Error) -> Error,
}

impl Visitor for Files<'_> {
    type Node = FileSums;
    const RULES: Rules = Rules {
        paths: Paths::AsWritten,
        whiteouts: true,
    };

    fn entry(&mut self, files: &mut Tree<FileSums>, entry: Entry<'_>) -> Result<()> {
        // A later entry replaces whatever was at its path.
        files.remove(&entry.path);
        if entry.kind == Kind::File {
            let sums = sums(&entry.path, entry.data).map_err(self.bad)?;
            files.insert(entry.path, sums);
        }
        Ok(())
    }

    fn hard_link(&mut self, files: &mut Tree<FileSums>, link: HardLink) -> Result<()> {
        if let Some(sums) = files.get(&link.to).cloned() {
            files.insert(link.path, sums);
        }
        Ok(())
    }
}

/// The checksums of the file at `path` whose bytes `data` reads.
fn sums(path: &str, data: &mut dyn Read) -> io::Result<FileSums> {
    let mut s256 = Sha256::new();
    let mut s1 = Sha1::new();
    let mut buf = vec![0u8; 64 * 1024];
    let keep = is_kept(path);
    let mut kept = Vec::new();
    loop {
        let n = data.read(&mut buf)?;
        if n == 0 {
            break;
        }
        s256.update(&buf[..n]);
        s1.update(&buf[..n]);
        if keep {
            kept.extend_from_slice(&buf[..n]);
        }
    }
    Ok(FileSums {
        sha256: hex::encode(s256.finalize()),
        sha1: hex::encode(s1.finalize()),
        dpkg: keep.then(|| String::from_utf8_lossy(&kept).into_owned()),
    })
}

/// The SPDX 2.3 document for the image `manifest` (in `layout`), named `name`.
pub fn spdx(layout: &Layout, manifest: &Digest, name: &str, created: &str) -> Result<Value> {
    let files = files(layout, manifest)?;
    let image_id = "SPDXRef-Image";
    // SPDX's package verification code: SHA-1 over the sorted SHA-1s of its files.
    let mut sha1s: Vec<&str> = files.values().map(|f| f.sha1.as_str()).collect();
    sha1s.sort_unstable();
    let verification = hex::encode(Sha1::digest(sha1s.concat().as_bytes()));
    let mut spdx_files = Vec::new();
    let mut debs = std::collections::BTreeMap::new();
    for (path, sums) in &files {
        if !is_dpkg_db(path) {
            continue;
        }
        for stanza in crate::source::deb::control::parse(sums.dpkg.as_deref().unwrap_or_default()) {
            if let (Some(n), Some(v), Some(a)) = (
                stanza.get("Package"),
                stanza.get("Version"),
                stanza.get("Architecture"),
            ) {
                // dpkg's `status` lists removed packages too; only installed ones count.
                if stanza
                    .get("Status")
                    .is_some_and(|s| !s.trim_end().ends_with(" installed"))
                {
                    continue;
                }
                let source = stanza.get("Source").cloned();
                debs.insert((n.clone(), v.clone(), a.clone()), source);
            }
        }
    }
    let text = |p: &str| files.get(p).and_then(|f| f.dpkg.as_deref());
    let distro = distro(text("etc/os-release").or_else(|| text("usr/lib/os-release")));
    let mut packages = vec![];
    let mut extracted: BTreeMap<String, String> = BTreeMap::new();
    for (i, ((name, version, arch), source)) in debs.iter().enumerate() {
        let id = format!("SPDXRef-Package-deb-{i}");
        let copyright = format!("usr/share/doc/{name}/copyright");
        let license = match text(&copyright).and_then(copyright_licenses) {
            Some(names) => license_expression(&names, &mut extracted),
            None => "NOASSERTION".to_string(),
        };
        packages.push(json!({
            "SPDXID": id,
            "name": name,
            "versionInfo": version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "copyrightText": "NOASSERTION",
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": license,
            "supplier": "Organization: Debian",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl(name, version, arch, source.as_deref(), distro.as_deref()),
            }],
        }));
    }
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    })];
    for (i, (path, sums)) in files.iter().enumerate() {
        let id = format!("SPDXRef-File-{i}");
        spdx_files.push(json!({
            "fileName": format!("./{path}"),
            "SPDXID": id,
            "checksums": [
                { "algorithm": "SHA1", "checksumValue": sums.sha1 },
                { "algorithm": "SHA256", "checksumValue": sums.sha256 },
            ],
            "copyrightText": "NOASSERTION",
            "licenseConcluded": "NOASSERTION",
        }));
        relationships.push(json!({
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    for i in 0..debs.len() {
        relationships.push(json!({
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": format!("SPDXRef-Package-deb-{i}"),
        }));
    }
    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": format!("urn:kiln:spdx:{name}:{}", manifest.hex()),
        "creationInfo": {
            "created": created,
            "creators": [format!("Tool: kiln-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": std::iter::once(json!({
            "SPDXID": image_id,
            "name": name,
            "versionInfo": manifest.to_string(),
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": true,
            "packageVerificationCode": { "packageVerificationCodeValue": verification },
            "primaryPackagePurpose": "CONTAINER",
            "checksums": [{ "algorithm": "SHA256", "checksumValue": manifest.hex() }],
            "copyrightText": "NOASSERTION",
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
        }))
        .chain(packages)
        .collect::<Vec<_>>(),
        "files": spdx_files,
        "relationships": relationships,
    });
    if !extracted.is_empty() {
        doc["hasExtractedLicensingInfos"] = extracted
            .iter()
            .map(|(id, name)| {
                json!({
                    "licenseId": id,
                    "name": name,
                    "extractedText": format!(
                        "The Debian licence short name `{name}`, as a package's \
                         /usr/share/doc/PKG/copyright names it."
                    ),
                })
            })
            .collect();
    }
    Ok(doc)
}

/// The purl `distro` qualifier from an `os-release` text: `ID-VERSION_ID`
/// (`debian-12`), as syft writes it; none without both.
fn distro(os_release: Option<&str>) -> Option<String> {
    let mut id = None;
    let mut version = None;
    for line in os_release?.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').trim_matches('\'');
        match k.trim() {
            "ID" => id = Some(v.to_string()),
            "VERSION_ID" => version = Some(v.to_string()),
            _ => {}
        }
    }
    Some(format!("{}-{}", id?, version?)).filter(|d| !d.contains(char::is_whitespace))
}

/// Percent-encodes `s` for a purl: everything but unreserved characters
/// (and `:`, which the purl spec leaves bare).
fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The purl of a Debian package, by the purl spec for `deb`: qualifiers
/// sorted (`arch`, `distro`, `upstream`); `upstream` is the source package,
/// with `@VERSION` when the `Source:` field names a version of its own, and
/// is left out when it is the package itself (as syft and dpkg do: a
/// package built from a source of its own name has no `Source:` field).
fn purl(
    name: &str,
    version: &str,
    arch: &str,
    source: Option<&str>,
    distro: Option<&str>,
) -> String {
    let mut q = vec![format!("arch={}", pct(arch))];
    if let Some(d) = distro {
        q.push(format!("distro={}", pct(d)));
    }
    let (src, src_version) = match source.map(str::trim) {
        Some(s) if !s.is_empty() => match s.split_once('(') {
            Some((n, v)) => (n.trim(), Some(v.trim_end_matches(')').trim())),
            None => (s, None),
        },
        _ => (name, None),
    };
    let upstream = match src_version {
        Some(v) if !v.is_empty() && v != version => Some(format!("{src}@{v}")),
        _ => (src != name).then(|| src.to_string()),
    };
    if let Some(u) = upstream {
        q.push(format!("upstream={}", pct(&u)));
    }
    format!(
        "pkg:deb/debian/{}@{}?{}",
        pct(name),
        pct(version),
        q.join("&")
    )
}

/// The distinct `License:` short names of a machine-readable copyright file
/// (DEP-5, `Format: …/copyright-format/1.0/`), sorted; none for any other
/// file or when it names none.
fn copyright_licenses(text: &str) -> Option<Vec<String>> {
    let stanzas = crate::source::deb::control::parse(text);
    let header = stanzas.first()?;
    if !header
        .get("Format")
        .is_some_and(|f| f.contains("copyright-format/1.0"))
    {
        return None;
    }
    let mut names = std::collections::BTreeSet::new();
    for s in &stanzas {
        if let Some(l) = s.get("License") {
            let first = l.lines().next().unwrap_or_default().trim();
            if !first.is_empty() {
                names.insert(first.to_string());
            }
        }
    }
    (!names.is_empty()).then(|| names.into_iter().collect())
}

/// Debian short licence names that are SPDX ids under another spelling.
const DEBIAN_TO_SPDX: &[(&str, &str)] = &[
    ("Expat", "MIT"),
    ("MIT", "MIT"),
    ("Apache-2.0", "Apache-2.0"),
    ("Apache-2", "Apache-2.0"),
    ("BSD-2-clause", "BSD-2-Clause"),
    ("BSD-3-clause", "BSD-3-Clause"),
    ("BSD-4-clause", "BSD-4-Clause"),
    ("ISC", "ISC"),
    ("Zlib", "Zlib"),
    ("Artistic", "Artistic-1.0-Perl"),
    ("Artistic-2.0", "Artistic-2.0"),
    ("CC0-1.0", "CC0-1.0"),
    ("MPL-2.0", "MPL-2.0"),
    ("PSF-2", "PSF-2.0"),
    ("Python-2.0", "Python-2.0"),
    ("OpenSSL", "OpenSSL"),
    ("curl", "curl"),
    ("X11", "X11"),
    ("GFDL-1.3", "GFDL-1.3-only"),
    ("GFDL-1.3+", "GFDL-1.3-or-later"),
];

/// One Debian short name as an SPDX licence id: a known SPDX spelling,
/// `GPL-2+` → `GPL-2.0-or-later`, else `LicenseRef-NAME` (recorded in
/// `extracted` so that the document defines it).
fn spdx_id(name: &str, extracted: &mut BTreeMap<String, String>) -> String {
    if let Some((_, id)) = DEBIAN_TO_SPDX
        .iter()
        .find(|(d, _)| d.eq_ignore_ascii_case(name))
    {
        return id.to_string();
    }
    for family in ["GPL", "LGPL", "AGPL"] {
        if let Some(rest) = name.strip_prefix(family).and_then(|r| r.strip_prefix('-')) {
            let (v, later) = match rest.strip_suffix('+') {
                Some(v) => (v, true),
                None => (rest, false),
            };
            let v = if v.contains('.') {
                v.to_string()
            } else {
                format!("{v}.0")
            };
            let known = matches!(
                (family, v.as_str()),
                ("GPL", "1.0" | "2.0" | "3.0") | ("LGPL", "2.0" | "2.1" | "3.0") | ("AGPL", "3.0")
            );
            if known {
                let suffix = if later { "or-later" } else { "only" };
                return format!("{family}-{v}-{suffix}");
            }
        }
    }
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let id = format!("LicenseRef-{clean}");
    extracted
        .entry(id.clone())
        .or_insert_with(|| name.to_string());
    id
}

/// An SPDX expression for the short names of one copyright file: each name
/// (which may itself say `A or B`, `A and B`) mapped, all joined with `AND`.
fn license_expression(names: &[String], extracted: &mut BTreeMap<String, String>) -> String {
    let mut parts = Vec::new();
    for name in names {
        let alternatives: Vec<String> = name
            .split(" or ")
            .map(|alt| {
                let all: Vec<String> = alt
                    .split([',', ' '])
                    .map(str::trim)
                    .filter(|w| !w.is_empty() && !w.eq_ignore_ascii_case("and"))
                    .map(|w| spdx_id(w, extracted))
                    .collect();
                if all.len() > 1 {
                    format!("({})", all.join(" AND "))
                } else {
                    all.concat()
                }
            })
            .filter(|a| !a.is_empty())
            .collect();
        match alternatives.len() {
            0 => {}
            1 => parts.push(alternatives[0].clone()),
            _ => parts.push(format!("({})", alternatives.join(" OR "))),
        }
    }
    if parts.is_empty() {
        "NOASSERTION".into()
    } else {
        parts.join(" AND ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_d_names_with_dots_are_read_and_md5sums_are_not() {
        assert!(is_dpkg_db("var/lib/dpkg/status.d/python3.11"));
        assert!(is_dpkg_db("var/lib/dpkg/status.d/libbz2-1.0"));
        assert!(!is_dpkg_db("var/lib/dpkg/status.d/libbz2-1.0.md5sums"));
    }

    #[test]
    fn purls_carry_distro_and_upstream() {
        assert_eq!(
            purl(
                "libc6",
                "2.36-9+deb12u4",
                "amd64",
                Some("glibc"),
                Some("debian-12")
            ),
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12&upstream=glibc"
        );
        assert_eq!(
            purl(
                "libbz2-1.0",
                "1.0.8-5+b1",
                "amd64",
                Some("bzip2 (1.0.8-5)"),
                None
            ),
            "pkg:deb/debian/libbz2-1.0@1.0.8-5%2Bb1?arch=amd64&upstream=bzip2%401.0.8-5"
        );
        assert_eq!(
            purl("hello", "1", "all", None, None),
            "pkg:deb/debian/hello@1?arch=all"
        );
        assert_eq!(
            distro(Some("ID=debian\nVERSION_ID=\"12\"\n")).as_deref(),
            Some("debian-12")
        );
    }

    #[test]
    fn licences_become_an_spdx_expression() {
        let mut ex = BTreeMap::new();
        let names = vec!["GPL-2+".to_string(), "Expat".into(), "public-domain".into()];
        assert_eq!(
            license_expression(&names, &mut ex),
            "GPL-2.0-or-later AND MIT AND LicenseRef-public-domain"
        );
        assert_eq!(
            license_expression(&["GPL-1+ or Artistic".to_string()], &mut ex),
            "(GPL-1.0-or-later OR Artistic-1.0-Perl)"
        );
    }
}
