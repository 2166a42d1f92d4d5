//! `kiln sbom`: the SBOM of an image already written.

use std::path::Path;

use crate::attest::sbom;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::Document;
use crate::recipe::Platform;
use crate::source::layout::{matches_platform, open_any};

/// The SPDX 2.3 SBOM of the image in the OCI layout or archive at `path`:
/// of its one manifest, or of `platform`'s (default: the first) in its
/// index. It is named as `kiln build` names it (`out/NAME`, `out/NAME.tar`).
pub fn sbom(path: &Path, platform: Option<&Platform>) -> Result<serde_json::Value> {
    let (layout, _tmp) = open_any(path)?;
    let top = layout.single_image()?;
    let file = crate::files::file_name(path);
    let name = file.strip_suffix(".tar").unwrap_or(&file).to_string();
    let manifest: Digest = match layout.read_document(&top.digest)?.1 {
        Document::Index(index) => {
            let list = index.manifests;
            let chosen = match platform {
                None => list.first(),
                Some(p) => list.iter().find(|d| matches_platform(d, p)),
            };
            chosen
                .ok_or_else(|| {
                    Error::invalid(
                        format!("the index in `{}` has no such platform", path.display()),
                        Some("name one of its platforms with `--platform os/arch`".into()),
                    )
                })?
                .digest
                .clone()
        }
        Document::Manifest(_) => top.digest.clone(),
    };
    let m = layout.read_manifest(&manifest)?;
    let config = layout.read_config(&m.config.digest)?;
    let created = config.created.as_deref().unwrap_or("1970-01-01T00:00:00Z");
    sbom::spdx(&layout, &manifest, &name, created)
}
