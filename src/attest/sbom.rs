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
                expected: digest,
                actual,
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
    let keep = is_dpkg_db(path);
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
