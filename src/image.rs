//! Stage 5, assemble: layers + recipe config → image config, manifest, index.
//!
//! The image config is kept as JSON ([`serde_json::Value`]) rather than a
//! typed struct so that fields of a base image that kiln does not know
//! (a `Healthcheck`, `OnBuild`) survive unchanged. Every blob is written as
//! canonical JSON ([`crate::json::canonical`]) and stored; what the registry
//! or layout serves is exactly those bytes.

use std::collections::{BTreeMap, HashMap};

use oci_spec::image::{
    Arch, Descriptor, ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, PlatformBuilder,
};
use serde_json::{json, Map, Value};

use crate::digest::Digest;
use crate::error::Result;
use crate::json::canonical;
use crate::recipe::{ConfigSection, Platform};
use crate::store::{LayerRecord, Store};

/// An image for one platform whose blobs are all in the store.
#[derive(Debug, Clone)]
pub struct Image {
    /// The platform it is for.
    pub platform: Platform,
    /// The image config document.
    pub config: Value,
    /// The layers, bottom first.
    pub layers: Vec<LayerRecord>,
}

/// A stored manifest or index, as a descriptor points at it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type.
    pub media_type: &'static str,
}

pub use crate::oci::{CONFIG_MEDIA_TYPE, INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};

impl Image {
    /// An empty image (`scratch`) for `platform`.
    pub fn scratch(platform: &Platform) -> Image {
        Image {
            platform: platform.clone(),
            config: json!({
                "architecture": platform.arch,
                "os": platform.os,
                "config": {},
                "rootfs": { "type": "layers", "diff_ids": [] },
                "history": [],
            }),
            layers: Vec::new(),
        }
    }

    /// Applies a recipe's `[config]` over this image's config (keys override, `env` and `labels` merge).
    pub fn apply_config(&mut self, c: &ConfigSection) {
        let root = object(&mut self.config);
        root.insert("architecture".into(), json!(self.platform.arch));
        root.insert("os".into(), json!(self.platform.os));
        match &self.platform.variant {
            Some(v) => root.insert("variant".into(), json!(v)),
            None => root.remove("variant"),
        };
        let cfg = object(root.entry("config").or_insert_with(|| json!({})));
        if !c.env.is_empty() {
            let mut env: Vec<String> = cfg
                .get("Env")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            for (key, value) in &c.env {
                let key = key.get_ref();
                let line = format!("{key}={value}");
                match env
                    .iter_mut()
                    .find(|e| e.split('=').next() == Some(key.as_str()))
                {
                    Some(slot) => *slot = line,
                    None => env.push(line),
                }
            }
            cfg.insert("Env".into(), json!(env));
        }
        if let Some(ep) = &c.entrypoint {
            cfg.insert("Entrypoint".into(), json!(ep));
            // As with Dockerfiles: a new entrypoint drops the base's arguments.
            if c.cmd.is_none() {
                cfg.remove("Cmd");
            }
        }
        if let Some(cmd) = &c.cmd {
            cfg.insert("Cmd".into(), json!(cmd));
        }
        if let Some(user) = &c.user {
            cfg.insert("User".into(), json!(user));
        }
        if let Some(w) = &c.workdir {
            cfg.insert("WorkingDir".into(), json!(w.get_ref()));
        }
        if let Some(s) = &c.stop_signal {
            cfg.insert("StopSignal".into(), json!(s));
        }
        merge_map(
            cfg,
            "Labels",
            c.labels.iter().map(|(k, v)| (k.clone(), json!(v))),
        );
        merge_map(
            cfg,
            "ExposedPorts",
            c.exposed_ports
                .iter()
                .map(|p| (crate::recipe::port_key(p.get_ref()), json!({}))),
        );
        merge_map(
            cfg,
            "Volumes",
            c.volumes.iter().map(|v| (v.get_ref().clone(), json!({}))),
        );
    }

    /// Adds a layer on top, with its history entry.
    pub fn push_layer(&mut self, record: LayerRecord, name: Option<&str>, created: &str) {
        let root = object(&mut self.config);
        let rootfs = object(
            root.entry("rootfs")
                .or_insert_with(|| json!({"type": "layers"})),
        );
        let ids = rootfs.entry("diff_ids").or_insert_with(|| json!([]));
        if let Value::Array(a) = ids {
            a.push(json!(record.diff_id.to_string()));
        }
        let history = root.entry("history").or_insert_with(|| json!([]));
        if let Value::Array(h) = history {
            let by = match name {
                Some(n) => format!("kiln: layer {n}"),
                None => "kiln: layer".to_string(),
            };
            h.push(json!({ "created": created, "created_by": by }));
        }
        self.layers.push(record);
    }

    /// Sets the creation time.
    pub fn set_created(&mut self, created: &str) {
        object(&mut self.config).insert("created".into(), json!(created));
    }

    /// Writes the config and manifest into the store.
    pub fn store(&self, store: &Store, annotations: &BTreeMap<String, String>) -> Result<Stored> {
        let config_bytes = canonical(&self.config);
        let config_digest = store.put_bytes(&config_bytes)?;
        let config = Descriptor::new(
            MediaType::ImageConfig,
            config_bytes.len() as u64,
            oci_digest(&config_digest),
        );
        let layers: Vec<Descriptor> = self
            .layers
            .iter()
            .map(|l| {
                Descriptor::new(
                    MediaType::from(l.media_type.as_str()),
                    l.size,
                    oci_digest(&l.digest),
                )
            })
            .collect();
        let mut builder = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config)
            .layers(layers);
        if !annotations.is_empty() {
            builder = builder.annotations(to_hash(annotations));
        }
        let manifest = builder
            .build()
            .expect("every required manifest field is set");
        put_json(store, &manifest, MANIFEST_MEDIA_TYPE)
    }
}

/// Writes an image index over per-platform manifests into the store.
pub fn store_index(
    store: &Store,
    manifests: &[(Platform, Stored)],
    annotations: &BTreeMap<String, String>,
) -> Result<Stored> {
    let descriptors: Vec<Descriptor> = manifests
        .iter()
        .map(|(p, m)| {
            let mut platform = PlatformBuilder::default()
                .architecture(Arch::from(p.arch.as_str()))
                .os(Os::from(p.os.as_str()));
            if let Some(v) = &p.variant {
                platform = platform.variant(v.clone());
            }
            let mut d = Descriptor::new(MediaType::ImageManifest, m.size, oci_digest(&m.digest));
            d.set_platform(Some(platform.build().expect("platform fields are set")));
            d
        })
        .collect();
    let mut builder = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(descriptors);
    if !annotations.is_empty() {
        builder = builder.annotations(to_hash(annotations));
    }
    let index = builder.build().expect("every required index field is set");
    put_json(store, &index, INDEX_MEDIA_TYPE)
}

fn put_json<T: serde::Serialize>(
    store: &Store,
    value: &T,
    media_type: &'static str,
) -> Result<Stored> {
    let bytes = canonical(value);
    let digest = store.put_bytes(&bytes)?;
    Ok(Stored {
        digest,
        size: bytes.len() as u64,
        media_type,
    })
}

/// Converts kiln's digest into oci-spec's.
pub fn oci_digest(d: &Digest) -> oci_spec::image::Digest {
    d.to_string()
        .parse()
        .expect("a kiln digest is a valid OCI digest")
}

fn to_hash(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn object(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    v.as_object_mut().expect("just made an object")
}

fn merge_map(
    cfg: &mut Map<String, Value>,
    key: &str,
    items: impl Iterator<Item = (String, Value)>,
) {
    let mut items = items.peekable();
    if items.peek().is_none() {
        return;
    }
    let map = object(cfg.entry(key).or_insert_with(|| json!({})));
    for (k, v) in items {
        map.insert(k, v);
    }
}

/// Formats seconds since the epoch as RFC 3339 in UTC (`1970-01-01T00:00:00Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn env_merges_and_entrypoint_resets_cmd() {
        let p = Platform::default_platform();
        let mut img = Image::scratch(&p);
        img.config["config"] = json!({"Env": ["PATH=/bin", "A=1"], "Cmd": ["sh"]});
        let mut c = ConfigSection::default();
        c.env
            .insert(toml::Spanned::new(0..0, "PATH".into()), "/usr/bin".into());
        c.env
            .insert(toml::Spanned::new(0..0, "B".into()), "2".into());
        c.entrypoint = Some(vec!["/app".into()]);
        img.apply_config(&c);
        assert_eq!(
            img.config["config"]["Env"],
            json!(["PATH=/usr/bin", "A=1", "B=2"])
        );
        assert!(img.config["config"].get("Cmd").is_none());
    }
}
