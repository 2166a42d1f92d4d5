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
use crate::source::layout::{descriptors, is_index, open_any, Desc, Layout};

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
    pub config: Value,
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
            name: d.json["annotations"][crate::export::REF_NAME]
                .as_str()
                .map(String::from),
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
        let (_, doc) = layout.read_json(&d.digest)?;
        if is_index(&doc) {
            let mut children = descriptors(&doc, &layout.blob_path(&d.digest))?;
            children.reverse();
            todo.extend(children);
            continue;
        }
        images.push(image_report(layout, &d.digest, &doc)?);
    }
    Ok(Report {
        path: shown.to_path_buf(),
        refs,
        images,
    })
}

fn image_report(layout: &Layout, digest: &Digest, manifest: &Value) -> Result<ImageReport> {
    let bad = |what: &str| {
        Error::invalid(
            format!("manifest `{digest}` {what}"),
            Some(crate::error::hint::DAMAGED_IMAGE.into()),
        )
    };
    let config_digest: Digest = manifest["config"]["digest"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("has no valid config digest"))?;
    let (_, config) = layout.read_json(&config_digest)?;
    let diff_ids: Vec<Option<Digest>> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    let mut layers = Vec::new();
    for (i, l) in manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let d: Digest = l["digest"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("has a layer without a valid digest"))?;
        let size = l["size"].as_u64().unwrap_or(0);
        let path = layout.blob_path(&d);
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
            digest: d,
            size,
            diff_id: diff_ids.get(i).cloned().flatten(),
            media_type: l["mediaType"].as_str().unwrap_or_default().to_string(),
        });
    }
    let mut platform = format!(
        "{}/{}",
        config["os"].as_str().unwrap_or("?"),
        config["architecture"].as_str().unwrap_or("?")
    );
    if let Some(v) = config["variant"].as_str() {
        platform = format!("{platform}/{v}");
    }
    let annotations = manifest["annotations"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    Ok(ImageReport {
        platform,
        digest: digest.clone(),
        config_digest,
        created: config["created"].as_str().map(String::from),
        config: config.get("config").cloned().unwrap_or(Value::Null),
        layers,
        annotations,
    })
}
