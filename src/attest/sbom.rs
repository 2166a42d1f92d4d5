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
use crate::layer::read::{apply_whiteout, decompress, entry_path};
use crate::source::layout::Layout;

/// One file of the image.
#[derive(Debug, Clone)]
struct FileSums {
    sha256: String,
    sha1: String,
    /// The text of a dpkg database file (`status`, `status.d/NAME`).
    dpkg: Option<String>,
}

fn is_dpkg_db(path: &str) -> bool {
    path == "var/lib/dpkg/status"
        || path
            .strip_prefix("var/lib/dpkg/status.d/")
            .is_some_and(|n| !n.contains('.') && !n.contains('/'))
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
            let tar = decompress(
                &mut hashed,
                layer["mediaType"].as_str().unwrap_or_default(),
                &digest,
            )?;
            apply_layer(tar, &mut files).at("read layer", &path)?;
        }
        io::copy(&mut hashed, &mut io::sink()).at("read layer", &path)?;
        let actual = hashed.digest_so_far();
        if actual != digest {
            return Err(Error::DigestMismatch {
                what: format!("`{}`", path.display()),
                expected: digest,
                actual,
            });
        }
    }
    Ok(files)
}

fn apply_layer(tar: impl Read, files: &mut BTreeMap<String, FileSums>) -> io::Result<()> {
    let mut archive = tar::Archive::new(tar);
    let mut links = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry_path(&entry.path()?.to_string_lossy());
        if apply_whiteout(files, &path) {
            continue;
        }
        let kind = entry.header().entry_type();
        // A later entry replaces whatever was at its path.
        files.remove(&path);
        if kind.is_file() {
            let mut s256 = Sha256::new();
            let mut s1 = Sha1::new();
            let mut buf = vec![0u8; 64 * 1024];
            let keep = is_dpkg_db(&path);
            let mut kept = Vec::new();
            loop {
                let n = entry.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                s256.update(&buf[..n]);
                s1.update(&buf[..n]);
                if keep {
                    kept.extend_from_slice(&buf[..n]);
                }
            }
            files.insert(
                path,
                FileSums {
                    sha256: hex::encode(s256.finalize()),
                    sha1: hex::encode(s1.finalize()),
                    dpkg: keep.then(|| String::from_utf8_lossy(&kept).into_owned()),
                },
            );
        } else if kind.is_hard_link() {
            if let Some(target) = entry.link_name()? {
                let target = target
                    .to_string_lossy()
                    .trim_start_matches("./")
                    .trim_start_matches('/')
                    .to_string();
                links.push((path, target));
            }
        }
    }
    for (path, target) in links {
        if let Some(sums) = files.get(&target).cloned() {
            files.insert(path, sums);
        }
    }
    Ok(())
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
    let mut debs = std::collections::BTreeSet::new();
    for sums in files.values() {
        for stanza in crate::source::deb::control::parse(sums.dpkg.as_deref().unwrap_or_default()) {
            if let (Some(n), Some(v), Some(a)) = (
                stanza.get("Package"),
                stanza.get("Version"),
                stanza.get("Architecture"),
            ) {
                debs.insert((n.clone(), v.clone(), a.clone()));
            }
        }
    }
    let mut packages = vec![];
    for (i, (name, version, arch)) in debs.iter().enumerate() {
        let id = format!("SPDXRef-Package-deb-{i}");
        packages.push(json!({
            "SPDXID": id,
            "name": name,
            "versionInfo": version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "copyrightText": "NOASSERTION",
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "supplier": "Organization: Debian",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": format!("pkg:deb/debian/{name}@{version}?arch={arch}"),
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
    Ok(json!({
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
    }))
}
