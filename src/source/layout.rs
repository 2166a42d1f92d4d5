//! Base images from an OCI image layout on disk (`base = "oci:PATH[@sha256:…]"`),
//! and the reading of layouts in general (also used by `kiln inspect`).
//!
//! Every blob read from a layout is verified against its digest; layers are
//! copied into the store unchanged (never recompressed), so an image built
//! on a base shares the base's layer digests.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::image::Image;
use crate::oci::{self, ConfigView, Document, Manifest};
use crate::recipe::Platform;
use crate::store::{verify_error, LayerRecord, Store};

pub use crate::oci::Desc;

/// Refuses to read manifests, indexes and configs larger than this.
const MAX_JSON: u64 = 16 << 20;

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// Opens a layout, checking its `oci-layout` marker.
    pub fn open(dir: &Path) -> Result<Layout> {
        let marker = dir.join("oci-layout");
        if !marker.is_file() {
            return Err(Error::invalid(
                format!(
                    "`{}` is not an OCI image layout (no `oci-layout` file)",
                    dir.display()
                ),
                Some(
                    "point at a directory written by `kiln build` or `skopeo copy … oci:DIR`"
                        .into(),
                ),
            ));
        }
        Ok(Layout {
            dir: dir.to_path_buf(),
        })
    }

    /// Reads the store as a layout: its `blobs/sha256/` has the same shape.
    /// Used for images pulled from a registry, whose blobs are already stored.
    pub fn over_store(store: &Store) -> Layout {
        Layout {
            dir: store.root().to_path_buf(),
        }
    }

    /// The layout's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The descriptors listed in `index.json`.
    pub fn index(&self) -> Result<Vec<Desc>> {
        let path = self.dir.join("index.json");
        let mut text = Vec::new();
        fs::File::open(&path)
            .and_then(|f| f.take(MAX_JSON + 1).read_to_end(&mut text))
            .at("read", &path)?;
        if text.len() as u64 > MAX_JSON {
            return Err(Error::invalid(
                format!("`{}` is larger than {MAX_JSON} bytes", path.display()),
                Some(crate::error::hint::DAMAGED_IMAGE.into()),
            ));
        }
        Ok(oci::parse_index(&text, &format!("`{}`", path.display()))?.manifests)
    }

    /// The one image `index.json` names (several tags of one digest count as one).
    pub fn single_image(&self) -> Result<Desc> {
        let mut index = self.index()?;
        index.dedup_by(|a, b| a.digest == b.digest);
        match index.len() {
            1 => Ok(index.remove(0)),
            0 => Err(Error::invalid(
                format!("`{}` holds no image", self.dir.display()),
                Some("build or pull an image into it first (`kiln build`, `kiln pull`)".into()),
            )),
            n => Err(Error::invalid(
                format!("`{}` holds {n} different images", self.dir.display()),
                Some(format!(
                    "name one by digest, e.g. `oci:{}@{}`",
                    self.dir.display(),
                    index[0].digest
                )),
            )),
        }
    }

    /// Copies a blob into the store (unless it is there), verifying its digest.
    fn copy_to_store(&self, digest: &Digest, store: &Store) -> Result<()> {
        if store.check_blob(digest)? {
            return Ok(());
        }
        let src = self.blob_path(digest);
        let file = fs::File::open(&src).at("open blob", &src)?;
        store
            .put_verified(file, digest, &format!("`{}`", src.display()))
            .map_err(|e| match e {
                Error::Io { source, .. } => verify_error(source, &src),
                other => other,
            })?;
        Ok(())
    }

    /// Where a blob lives in the layout.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(d.hex())
    }

    /// Reads a JSON blob (manifest, index, config), verified against its digest.
    pub fn read_json(&self, d: &Digest) -> Result<(Vec<u8>, Value)> {
        let bytes = self.read_blob(d)?;
        let v = serde_json::from_slice(&bytes).map_err(|e| {
            Error::invalid(format!("{} is not valid JSON: {e}", self.name(d)), None)
        })?;
        Ok((bytes, v))
    }

    /// Reads a small blob (a manifest, an index, a config, at most 16 MiB),
    /// verified against its digest.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(d);
        let file = fs::File::open(&path).at("open blob", &path)?;
        let mut bytes = Vec::new();
        file.take(MAX_JSON)
            .read_to_end(&mut bytes)
            .at("read", &path)?;
        let actual = Digest::of(&bytes);
        if actual != *d {
            return Err(Error::DigestMismatch {
                what: format!("`{}`", path.display()),
                expected: Box::new(d.clone()),
                actual: Box::new(actual),
            });
        }
        Ok(bytes)
    }

    /// Reads a manifest or an index, verified against its digest; returns
    /// its bytes too.
    pub fn read_document(&self, d: &Digest) -> Result<(Vec<u8>, Document)> {
        let bytes = self.read_blob(d)?;
        let doc = oci::parse(&bytes, &self.name(d))?;
        Ok((bytes, doc))
    }

    /// Reads an image manifest, verified against its digest.
    pub fn read_manifest(&self, d: &Digest) -> Result<Manifest> {
        oci::parse_manifest(&self.read_blob(d)?, &self.name(d))
    }

    /// Reads the part of an image config kiln uses, verified against its digest.
    pub fn read_config(&self, d: &Digest) -> Result<ConfigView> {
        ConfigView::parse(&self.read_blob(d)?, &self.name(d))
    }

    /// How errors name blob `d`: its path, which holds the digest.
    fn name(&self, d: &Digest) -> String {
        format!("`{}`", self.blob_path(d).display())
    }

    /// Picks the image for `platform`: the one named by `digest`, or the only one in `index.json`.
    ///
    /// Also returns, per layer, whether the store already held it.
    pub fn load_image(
        &self,
        digest: Option<&Digest>,
        platform: &Platform,
        store: &Store,
    ) -> Result<(Image, Vec<bool>)> {
        let top = match digest {
            Some(d) => d.clone(),
            None => self.single_image()?.digest,
        };
        let manifest_digest = match self.read_document(&top)?.1 {
            Document::Index(index) => index
                .manifests
                .iter()
                .find(|d| matches_platform(d, platform))
                .ok_or_else(|| {
                    let unnamed = index.manifests.iter().filter(|d| d.platform().is_none());
                    let unnamed: Vec<String> = unnamed.map(|d| format!("`{}`", d.digest)).collect();
                    let why = if unnamed.is_empty() {
                        String::new()
                    } else {
                        format!(" (entries without a `platform`: {})", unnamed.join(", "))
                    };
                    Error::invalid(
                        format!(
                            "the image index `{top}` in `{}` has no manifest for `{platform}`{why}",
                            self.dir.display()
                        ),
                        Some("build the base for this platform, or change `platforms`".into()),
                    )
                })?
                .digest
                .clone(),
            Document::Manifest(_) => top,
        };
        self.load_manifest(&manifest_digest, platform, store)
    }

    fn load_manifest(
        &self,
        digest: &Digest,
        platform: &Platform,
        store: &Store,
    ) -> Result<(Image, Vec<bool>)> {
        let manifest = self.read_manifest(digest)?;
        // The config is kept whole as JSON (fields kiln does not know
        // survive); the view checks the fields kiln reads.
        let config_bytes = self.read_blob(&manifest.config.digest)?;
        let view = ConfigView::parse(&config_bytes, &self.name(&manifest.config.digest))?;
        let config: Value =
            serde_json::from_slice(&config_bytes).expect("the config view parsed it as JSON");
        let layers = manifest.layers;
        let diff_ids = view.diff_ids().to_vec();
        if diff_ids.len() != layers.len() {
            return Err(Error::invalid(
                format!(
                    "image `{digest}` in `{}` lists {} layers but {} diff_ids",
                    self.dir.display(),
                    layers.len(),
                    diff_ids.len()
                ),
                Some(crate::error::hint::DAMAGED_IMAGE.into()),
            ));
        }
        let mut records = Vec::new();
        let mut had = Vec::new();
        for (layer, diff_id) in layers.into_iter().zip(diff_ids) {
            had.push(store.contains(&layer.digest));
            self.copy_to_store(&layer.digest, store)?;
            records.push(LayerRecord {
                digest: layer.digest,
                diff_id,
                size: layer.size,
                media_type: layer.media_type,
            });
        }
        let mut platform = platform.clone();
        if let Some(os) = view.os {
            platform.os = os;
        }
        Ok((
            Image {
                platform,
                config,
                layers: records,
            },
            had,
        ))
    }
}

/// Whether an index entry is for platform `p` (an entry without a
/// `platform` is for none).
pub fn matches_platform(desc: &Desc, p: &Platform) -> bool {
    desc.platform().is_some_and(|plat| {
        plat.os().to_string() == p.os
            && plat.architecture().to_string() == p.arch
            && (p.variant.is_none() || plat.variant().as_deref() == p.variant.as_deref())
    })
}

/// Unpacks the layout files of an OCI archive into `dir`; any other entry is
/// refused, and so is a file that is not a tar archive or holds no layout.
pub fn unpack_archive(archive: &Path, dir: &Path) -> Result<()> {
    let mut file = fs::File::open(archive).at("open", archive)?;
    let bad = |what: String| {
        Error::invalid(
            format!("`{}` is not an OCI archive: {what}", archive.display()),
            Some("give an archive written by `kiln build --format oci-archive` or `skopeo copy … oci-archive:FILE`, or an OCI layout directory".into()),
        )
    };
    let mut head = Vec::with_capacity(512);
    (&mut file)
        .take(512)
        .read_to_end(&mut head)
        .at("read", archive)?;
    let n = head.len();
    match &head[..n] {
        [] => return Err(bad("it is empty".into())),
        [0x1f, 0x8b, ..] => return Err(bad("it is gzip-compressed; `gunzip` it first".into())),
        h if h.len() < 512 || &h[257..262] != b"ustar" => {
            return Err(bad(
                "it is not a tar file (no tar header at its start)".into()
            ))
        }
        _ => {}
    }
    // The tar reader's errors can quote the file's bytes: print a short,
    // printable part of them only.
    let not_tar = |e: io::Error| {
        let text: String = e
            .to_string()
            .chars()
            .take_while(|c| c.is_ascii_graphic() || *c == ' ')
            .take(80)
            .collect();
        bad(format!("its tar data is damaged ({text})"))
    };
    io::Seek::rewind(&mut file).at("read", archive)?;
    let mut ar = tar::Archive::new(io::BufReader::new(file));
    fs::create_dir_all(dir.join("blobs/sha256")).at("create", dir)?;
    let mut seen = 0;
    for entry in ar.entries().map_err(not_tar)? {
        let mut entry = entry.map_err(not_tar)?;
        let name = entry
            .path()
            .map_err(not_tar)?
            .to_string_lossy()
            .into_owned();
        let name = name.trim_start_matches("./").trim_end_matches('/');
        if entry.header().entry_type().is_dir() {
            continue;
        }
        // docker's `manifest.json` beside `index.json` (kiln's archives, and
        // other builders'): for docker; the layout is read from `index.json`.
        if name == "manifest.json" && entry.header().entry_type().is_file() {
            continue;
        }
        let allowed = matches!(name, "index.json" | "oci-layout")
            || name
                .strip_prefix("blobs/sha256/")
                .is_some_and(|h| format!("sha256:{h}").parse::<Digest>().is_ok());
        if !allowed || !entry.header().entry_type().is_file() {
            return Err(bad(format!("unexpected entry `{}`", name.escape_debug())));
        }
        // Only a fixed set of names is written, so nothing can escape `dir`.
        let dest = dir.join(name);
        let mut out = fs::File::create(&dest).at("create", &dest)?;
        io::copy(&mut entry, &mut out).map_err(not_tar)?;
        seen += usize::from(matches!(name, "index.json" | "oci-layout"));
    }
    if seen < 2 {
        return Err(bad(
            "it holds no `oci-layout` and `index.json` (an empty or foreign tar file)".into(),
        ));
    }
    Ok(())
}

/// Opens an OCI layout directory, or unpacks an OCI archive into a temporary
/// directory and opens that; the guard keeps the temporary directory alive.
pub fn open_any(path: &Path) -> Result<(Layout, Option<tempfile::TempDir>)> {
    open_any_with(path, || {
        tempfile::Builder::new()
            .prefix("kiln-archive-")
            .tempdir()
            .at("create a temporary directory", &std::env::temp_dir())
    })
}

/// [`open_any`], unpacking an archive into the directory `tmp` makes (such
/// as [`Store::temp_dir`], which is reclaimed if the process is killed).
pub fn open_any_with(
    path: &Path,
    tmp: impl FnOnce() -> Result<tempfile::TempDir>,
) -> Result<(Layout, Option<tempfile::TempDir>)> {
    let meta = fs::metadata(path).map_err(|e| {
        Error::unusable(
            format!("cannot open `{}`", path.display()),
            e,
            "give the path of an OCI layout directory or an OCI archive",
        )
    })?;
    if meta.is_dir() {
        return Ok((Layout::open(path)?, None));
    }
    let tmp = tmp()?;
    unpack_archive(path, tmp.path())?;
    Ok((Layout::open(tmp.path())?, Some(tmp)))
}

impl Layout {
    /// Copies the image `index.json` names (every manifest, index, config and
    /// layer, each verified) into the store and returns its top.
    pub fn import(&self, store: &Store) -> Result<crate::image::Stored> {
        let top = self.single_image()?;
        let mut todo = vec![top.digest.clone()];
        let mut top_media = None;
        // An index may name a child many times, and children may share
        // grandchildren: each document is read once, or a few kilobytes of
        // nested indexes could make the walk take exponential time.
        let mut seen = std::collections::BTreeSet::new();
        while let Some(d) = todo.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            let (bytes, doc) = self.read_document(&d)?;
            store.put_bytes(&bytes)?;
            top_media.get_or_insert((d.clone(), doc.media_type(), bytes.len() as u64));
            match doc {
                Document::Index(index) => {
                    todo.extend(index.manifests.into_iter().map(|c| c.digest))
                }
                Document::Manifest(m) => {
                    for b in m.blobs() {
                        self.copy_to_store(&b.digest, store)?;
                    }
                }
            }
        }
        let (digest, media_type, size) = top_media.expect("the top was read");
        Ok(crate::image::Stored {
            digest,
            size,
            media_type,
        })
    }
}
