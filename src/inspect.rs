//! `kiln inspect`: reads an OCI layout (or OCI archive) back and reports its
//! images: platforms, configs, layers (digest, size, diff_id) and annotations.
//!
//! Every manifest, index and config read is verified against its digest;
//! layer blobs are checked for presence and size (not re-hashed).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::oci::{Document, Manifest};
use crate::source::layout::{open_any, Desc, Layout};

/// What a layout holds.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The layout or archive inspected.
    pub path: PathBuf,
    /// The names in `index.json` and what they point at.
    pub refs: Vec<RefReport>,
    /// Every image reachable from `index.json`, one per manifest.
    pub images: Vec<ImageReport>,
}

/// One entry of `index.json`.
#[derive(Debug, Serialize)]
pub struct RefReport {
    /// `org.opencontainers.image.ref.name`, if any.
    pub name: Option<String>,
    /// What it points at.
    pub digest: Digest,
    /// Manifest or index.
    pub media_type: String,
}

/// One image manifest.
#[derive(Debug, Serialize)]
pub struct ImageReport {
    /// `os/arch[/variant]` from the config.
    pub platform: String,
    /// The manifest's digest.
    pub digest: Digest,
    /// The config's digest.
    pub config_digest: Digest,
    /// `created` from the config.
    pub created: Option<String>,
    /// The runtime config (`Entrypoint`, `Env` …) as stored.
    pub config: Option<Value>,
    /// The layers, bottom first.
    pub layers: Vec<LayerInfo>,
    /// Manifest annotations.
    pub annotations: BTreeMap<String, String>,
}

/// One layer.
#[derive(Debug, Serialize)]
pub struct LayerInfo {
    /// Blob digest.
    pub digest: Digest,
    /// Compressed size.
    pub size: u64,
    /// Uncompressed tar digest, from the config.
    pub diff_id: Option<Digest>,
    /// Media type.
    pub media_type: String,
}

/// Inspects a layout directory or an OCI archive file.
pub fn inspect(path: &Path) -> Result<Report> {
    let (layout, _tmp) = open_any(path)?;
    inspect_layout(&layout, path)
}

fn inspect_layout(layout: &Layout, shown: &Path) -> Result<Report> {
    let mut refs = Vec::new();
    let mut images = Vec::new();
    let mut todo: Vec<Desc> = Vec::new();
    for d in layout.index()? {
        refs.push(RefReport {
            name: d.annotation(crate::export::REF_NAME).map(String::from),
            digest: d.digest.clone(),
            media_type: d.media_type.clone(),
        });
        todo.push(d);
    }
    let mut seen = std::collections::BTreeSet::new();
    while let Some(d) = todo.pop() {
        if !seen.insert(d.digest.clone()) {
            continue;
        }
        match layout.read_document(&d.digest)?.1 {
            Document::Index(index) => todo.extend(index.manifests.into_iter().rev()),
            Document::Manifest(m) => images.push(image_report(layout, &d.digest, &m)?),
        }
    }
    Ok(Report {
        path: shown.to_path_buf(),
        refs,
        images,
    })
}

fn image_report(layout: &Layout, digest: &Digest, manifest: &Manifest) -> Result<ImageReport> {
    let config_digest = manifest.config.digest.clone();
    let config = layout.read_config(&config_digest)?;
    let diff_ids = config.diff_ids();
    let mut layers = Vec::new();
    for (i, l) in manifest.layers.iter().enumerate() {
        let size = l.size;
        let path = layout.blob_path(&l.digest);
        let actual = fs::metadata(&path).at("find layer blob", &path)?.len();
        if actual != size {
            return Err(Error::invalid(
                format!(
                    "layer blob `{}` has {actual} bytes, the manifest says {size}",
                    path.display()
                ),
                Some(crate::error::hint::DAMAGED_IMAGE.into()),
            ));
        }
        layers.push(LayerInfo {
            digest: l.digest.clone(),
            size,
            diff_id: diff_ids.get(i).cloned(),
            media_type: l.media_type.clone(),
        });
    }
    let mut platform = format!(
        "{}/{}",
        config.os.as_deref().unwrap_or("?"),
        config.architecture.as_deref().unwrap_or("?")
    );
    if let Some(v) = &config.variant {
        platform = format!("{platform}/{v}");
    }
    Ok(ImageReport {
        platform,
        digest: digest.clone(),
        config_digest,
        created: config.created,
        config: config.config,
        layers,
        annotations: manifest.annotations(),
    })
}
