//! Foundation: the OCI documents kiln reads (image manifests, image indexes,
//! their descriptors, and the parts of an image config it uses), parsed from
//! the bytes they came as.
//!
//! Manifests and indexes are `oci-spec` types. Docker's schema 2 manifests
//! and manifest lists have the same shape and are read as the same types.
//! A document that does not have that shape is an [`Error::Invalid`] naming
//! the document and what is wrong with it (a missing `layers`, a descriptor
//! without a digest, a digest that is not `sha256:…`), never an empty list.
//! Digests are always those of the bytes read: nothing here re-serialises.

use std::collections::BTreeMap;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value};

pub use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType, Platform};

use crate::digest::Digest;
use crate::error::{Error, Result};

/// The OCI image manifest media type.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The OCI image index media type.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// The OCI image config media type.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Docker's image manifest (schema 2), read like an OCI manifest.
pub const DOCKER_MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker's manifest list, read like an OCI index.
pub const DOCKER_LIST_MEDIA_TYPE: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

/// A descriptor whose digest has been checked to be a kiln [`Digest`].
#[derive(Debug, Clone)]
pub struct Desc {
    /// The media type (of the content it points at).
    pub media_type: String,
    /// The digest.
    pub digest: Digest,
    /// The declared size.
    pub size: u64,
    /// The whole descriptor (platform, annotations …).
    pub descriptor: Descriptor,
}

impl Desc {
    /// The descriptor's platform, if it names one.
    pub fn platform(&self) -> Option<&Platform> {
        self.descriptor.platform().as_ref()
    }

    /// The value of annotation `key`, if any.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.descriptor
            .annotations()
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    }
}

/// An image manifest, with its config and layers checked.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The document.
    pub doc: ImageManifest,
    /// Its config descriptor.
    pub config: Desc,
    /// Its layer descriptors, bottom first.
    pub layers: Vec<Desc>,
}

impl Manifest {
    /// The blobs it names: its config, then its layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Desc> {
        std::iter::once(&self.config).chain(&self.layers)
    }

    /// Its annotations, sorted.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        sorted(self.doc.annotations())
    }
}

/// An image index, with its entries checked.
#[derive(Debug, Clone)]
pub struct Index {
    /// The document.
    pub doc: ImageIndex,
    /// Its entries.
    pub manifests: Vec<Desc>,
}

/// A manifest or an index.
#[derive(Debug, Clone)]
pub enum Document {
    /// An image manifest (OCI, or Docker schema 2).
    Manifest(Box<Manifest>),
    /// An image index (OCI, or a Docker manifest list).
    Index(Box<Index>),
}

impl Document {
    /// The OCI media type a descriptor of this document carries.
    pub fn media_type(&self) -> &'static str {
        match self {
            Document::Manifest(_) => MANIFEST_MEDIA_TYPE,
            Document::Index(_) => INDEX_MEDIA_TYPE,
        }
    }
}

/// What kind of document some JSON is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Manifest,
    Index,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Manifest => "an image manifest",
            Kind::Index => "an image index",
        }
    }
}

/// Parses a manifest or an index. `what` names the document in errors
/// (``manifest `sha256:…` from `REF` ``, a layout path).
pub fn parse(bytes: &[u8], what: &str) -> Result<Document> {
    let map = object(bytes, what)?;
    match kind(&map, what)? {
        Kind::Manifest => manifest_from(map, what).map(|m| Document::Manifest(Box::new(m))),
        Kind::Index => index_from(map, what).map(|i| Document::Index(Box::new(i))),
    }
}

/// Parses an image manifest; an index is an error.
pub fn parse_manifest(bytes: &[u8], what: &str) -> Result<Manifest> {
    let map = object(bytes, what)?;
    expect(kind(&map, what)?, Kind::Manifest, what)?;
    manifest_from(map, what)
}

/// Parses an image index (an `index.json` too); a manifest is an error.
pub fn parse_index(bytes: &[u8], what: &str) -> Result<Index> {
    let map = object(bytes, what)?;
    expect(kind(&map, what)?, Kind::Index, what)?;
    index_from(map, what)
}

fn expect(found: Kind, wanted: Kind, what: &str) -> Result<()> {
    if found == wanted {
        return Ok(());
    }
    Err(invalid(
        what,
        &format!("it is {}, not {}", found.name(), wanted.name()),
    ))
}

fn invalid(what: &str, problem: &str) -> Error {
    Error::invalid(format!("{what} is malformed: {problem}"), None)
}

fn object(bytes: &[u8], what: &str) -> Result<Map<String, Value>> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(format!("{what} is not valid JSON: {e}"), None))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(invalid(
            what,
            &format!("it is a JSON {}, not an object", json_type(&other)),
        )),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Its `mediaType` decides; without one, its shape does (`manifests` makes
/// an index, `config` a manifest), as other tools read them.
fn kind(map: &Map<String, Value>, what: &str) -> Result<Kind> {
    match map.get("mediaType") {
        None | Some(Value::Null) => {}
        Some(Value::String(m)) => {
            return match m.as_str() {
                MANIFEST_MEDIA_TYPE | DOCKER_MANIFEST_MEDIA_TYPE => Ok(Kind::Manifest),
                INDEX_MEDIA_TYPE | DOCKER_LIST_MEDIA_TYPE => Ok(Kind::Index),
                other => Err(Error::invalid(
                    format!(
                        "{what} has media type `{}`, which is neither an image manifest nor an index",
                        other.escape_debug()
                    ),
                    Some(
                        "kiln reads OCI images (and Docker schema 2 ones); convert others with `skopeo copy --format oci`"
                            .into(),
                    ),
                )),
            };
        }
        Some(other) => {
            return Err(invalid(
                what,
                &format!("`mediaType` is a JSON {}, not a string", json_type(other)),
            ))
        }
    }
    if map.contains_key("manifests") {
        Ok(Kind::Index)
    } else if map.contains_key("config") {
        Ok(Kind::Manifest)
    } else {
        Err(Error::invalid(
            format!("{what} is neither an OCI image manifest nor an index (it has no `mediaType`, `config` or `manifests`)"),
            Some(
                "kiln reads OCI images; convert Docker v2 images with `skopeo copy --format oci`"
                    .into(),
            ),
        ))
    }
}

fn manifest_from(map: Map<String, Value>, what: &str) -> Result<Manifest> {
    let value = Value::Object(map);
    let doc = ImageManifest::deserialize(&value)
        .map_err(|e| invalid(what, &diagnose(&value, Kind::Manifest, &e)))?;
    let config = checked(doc.config(), "config", what)?;
    let layers = doc
        .layers()
        .iter()
        .enumerate()
        .map(|(i, d)| checked(d, &format!("layers[{i}]"), what))
        .collect::<Result<Vec<_>>>()?;
    Ok(Manifest {
        doc,
        config,
        layers,
    })
}

fn index_from(map: Map<String, Value>, what: &str) -> Result<Index> {
    let value = Value::Object(map);
    let doc = ImageIndex::deserialize(&value)
        .map_err(|e| invalid(what, &diagnose(&value, Kind::Index, &e)))?;
    let manifests = doc
        .manifests()
        .iter()
        .enumerate()
        .map(|(i, d)| checked(d, &format!("manifests[{i}]"), what))
        .collect::<Result<Vec<_>>>()?;
    Ok(Index { doc, manifests })
}

/// Checks that a descriptor's digest is one kiln can name a blob by.
fn checked(d: &Descriptor, at: &str, what: &str) -> Result<Desc> {
    let digest = d
        .digest()
        .to_string()
        .parse::<Digest>()
        .map_err(|e| invalid(what, &format!("`{at}.digest`: {e}")))?;
    Ok(Desc {
        media_type: d.media_type().to_string(),
        digest,
        size: d.size(),
        descriptor: d.clone(),
    })
}

/// Which field made the typed parse fail, and why; serde's own message
/// when no single field is to blame.
fn diagnose(value: &Value, kind: Kind, err: &serde_json::Error) -> String {
    enum Shape {
        Version,
        Desc,
        List,
        Annotations,
    }
    let fields: &[(&str, bool, Shape)] = match kind {
        Kind::Manifest => &[
            ("schemaVersion", true, Shape::Version),
            ("config", true, Shape::Desc),
            ("layers", true, Shape::List),
            ("subject", false, Shape::Desc),
            ("annotations", false, Shape::Annotations),
        ],
        Kind::Index => &[
            ("schemaVersion", true, Shape::Version),
            ("manifests", true, Shape::List),
            ("subject", false, Shape::Desc),
            ("annotations", false, Shape::Annotations),
        ],
    };
    for (name, required, shape) in fields {
        let v = match value.get(name) {
            None if *required => return format!("`{name}` is missing"),
            Some(Value::Null) if *required => return format!("`{name}` is null"),
            None | Some(Value::Null) => continue,
            Some(v) => v,
        };
        let problem = match shape {
            Shape::Version => u32::deserialize(v).err().map(|e| e.to_string()),
            Shape::Desc => Descriptor::deserialize(v).err().map(|e| e.to_string()),
            Shape::Annotations => HashMap::<String, String>::deserialize(v)
                .err()
                .map(|e| e.to_string()),
            Shape::List => match v {
                Value::Array(items) => {
                    if let Some((i, e)) = items
                        .iter()
                        .enumerate()
                        .find_map(|(i, d)| Descriptor::deserialize(d).err().map(|e| (i, e)))
                    {
                        return format!("`{name}[{i}]`: {e}");
                    }
                    None
                }
                other => Some(format!("it is a JSON {}, not an array", json_type(other))),
            },
        };
        if let Some(p) = problem {
            return format!("`{name}`: {p}");
        }
    }
    err.to_string()
}

/// Annotations as a sorted map.
pub fn sorted(annotations: &Option<HashMap<String, String>>) -> BTreeMap<String, String> {
    annotations
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// What kiln reads of an image config. The config itself is kept as JSON
/// ([`crate::image::Image::config`]) so that fields kiln does not know
/// survive; this view checks the ones it uses. (`oci-spec`'s
/// `ImageConfiguration` requires `rootfs` even of a base without layers,
/// which kiln accepts.)
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConfigView {
    /// `os`.
    #[serde(default)]
    pub os: Option<String>,
    /// `architecture`.
    #[serde(default)]
    pub architecture: Option<String>,
    /// `variant`.
    #[serde(default)]
    pub variant: Option<String>,
    /// `created`.
    #[serde(default)]
    pub created: Option<String>,
    /// `rootfs`.
    #[serde(default)]
    pub rootfs: Option<RootFs>,
    /// The runtime config (`Entrypoint`, `Env` …) as stored.
    #[serde(default)]
    pub config: Option<Value>,
}

/// An image config's `rootfs`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    /// The uncompressed digest of each layer, bottom first.
    #[serde(default)]
    pub diff_ids: Option<Vec<Digest>>,
}

impl ConfigView {
    /// Parses an image config; `what` names it in errors.
    pub fn parse(bytes: &[u8], what: &str) -> Result<ConfigView> {
        let map = object(bytes, what)?;
        ConfigView::deserialize(&Value::Object(map)).map_err(|e| invalid(what, &e.to_string()))
    }

    /// `rootfs.diff_ids`, empty when absent.
    pub fn diff_ids(&self) -> &[Digest] {
        self.rootfs
            .as_ref()
            .and_then(|r| r.diff_ids.as_deref())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(b: &[u8]) -> String {
        Digest::of(b).to_string()
    }

    fn manifest(media: &str) -> Value {
        json!({
            "schemaVersion": 2,
            "mediaType": media,
            "config": { "mediaType": CONFIG_MEDIA_TYPE, "digest": d(b"c"), "size": 1 },
            "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d(b"l"), "size": 1 }],
        })
    }

    fn index(media: &str) -> Value {
        json!({
            "schemaVersion": 2,
            "mediaType": media,
            "manifests": [{ "mediaType": media, "digest": d(b"m"), "size": 1,
                            "platform": { "os": "linux", "architecture": "arm", "variant": "v7" } }],
        })
    }

    fn err(v: &Value) -> String {
        parse(&serde_json::to_vec(v).unwrap(), "manifest `X` from `R`")
            .expect_err("malformed")
            .to_string()
    }

    #[test]
    fn reads_oci_and_docker_documents() {
        for media in [MANIFEST_MEDIA_TYPE, DOCKER_MANIFEST_MEDIA_TYPE] {
            let bytes = serde_json::to_vec(&manifest(media)).unwrap();
            let Document::Manifest(m) = parse(&bytes, "m").unwrap() else {
                panic!("{media} is a manifest")
            };
            let blobs: Vec<_> = m.blobs().map(|b| b.digest.clone()).collect();
            assert_eq!(blobs, [Digest::of(b"c"), Digest::of(b"l")]);
        }
        for media in [INDEX_MEDIA_TYPE, DOCKER_LIST_MEDIA_TYPE] {
            let bytes = serde_json::to_vec(&index(media)).unwrap();
            let i = parse_index(&bytes, "i").unwrap();
            assert_eq!(i.manifests[0].digest, Digest::of(b"m"));
            let p = i.manifests[0].platform().unwrap();
            assert_eq!(p.architecture().to_string(), "arm");
            assert_eq!(p.variant().as_deref(), Some("v7"));
        }
        // Without a media type, the shape decides (an `index.json`).
        let bytes = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(parse(bytes, "i").unwrap(), Document::Index(_)));
    }

    #[test]
    fn malformed_documents_say_what_is_wrong() {
        let mut m = manifest(MANIFEST_MEDIA_TYPE);
        m.as_object_mut().unwrap().remove("layers");
        let e = err(&m);
        assert!(
            e.contains("manifest `X` from `R`") && e.contains("`layers` is missing"),
            "{e}"
        );

        let mut m = manifest(MANIFEST_MEDIA_TYPE);
        m["layers"] = Value::Null;
        assert!(err(&m).contains("`layers` is null"), "{}", err(&m));

        let mut m = manifest(MANIFEST_MEDIA_TYPE);
        m["layers"] = json!({});
        assert!(err(&m).contains("`layers`: it is a JSON object, not an array"));

        let mut m = manifest(MANIFEST_MEDIA_TYPE);
        m["layers"][0].as_object_mut().unwrap().remove("digest");
        let e = err(&m);
        assert!(e.contains("`layers[0]`") && e.contains("digest"), "{e}");

        let mut m = manifest(MANIFEST_MEDIA_TYPE);
        m["layers"][0]["digest"] = json!(format!("sha512:{}", "a".repeat(128)));
        let e = err(&m);
        assert!(
            e.contains("`layers[0].digest`") && e.contains("is not a digest"),
            "{e}"
        );

        let mut m = manifest(MANIFEST_MEDIA_TYPE);
        m["config"]["digest"] = json!("sha256:zz");
        assert!(err(&m).contains("`config`"), "{}", err(&m));

        let mut i = index(INDEX_MEDIA_TYPE);
        i["manifests"] = json!("all");
        assert!(err(&i).contains("`manifests`: it is a JSON string, not an array"));

        let e = err(&json!({"mediaType": "text/plain", "config": {}}));
        assert!(e.contains("media type `text/plain`"), "{e}");
        let e = err(&json!({"mediaType": 7}));
        assert!(e.contains("`mediaType` is a JSON number"), "{e}");
        let e = err(&json!([1]));
        assert!(e.contains("it is a JSON array, not an object"), "{e}");
        let e = err(&json!({"layers": []}));
        assert!(
            e.contains("neither an OCI image manifest nor an index"),
            "{e}"
        );
        let e = parse(b"{", "x").unwrap_err();
        assert!(e.to_string().contains("is not valid JSON"), "{e}");
        assert_eq!(e.exit_code(), 2);

        let bytes = serde_json::to_vec(&index(INDEX_MEDIA_TYPE)).unwrap();
        let e = parse_manifest(&bytes, "m").unwrap_err().to_string();
        assert!(
            e.contains("it is an image index, not an image manifest"),
            "{e}"
        );
    }

    #[test]
    fn config_view_checks_what_kiln_reads() {
        let c = ConfigView::parse(br#"{"os":"linux"}"#, "c").unwrap();
        assert!(c.diff_ids().is_empty());
        let e = ConfigView::parse(br#"{"rootfs":{"diff_ids":["nope"]}}"#, "config `C`")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config `C`") && e.contains("is not a digest"),
            "{e}"
        );
    }
}
