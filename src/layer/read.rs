//! Reading layers back: the directories of a base image's layers, so that a
//! layer on top keeps their modes and owners for the parents it includes.
//!
//! The result is cached in the store per layer blob (`dirs/<hex>.json`), so
//! a base's layers are decompressed once, not on every build.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufReader, Read};
use std::ops::Bound;

use crate::error::{Error, IoContext, Result};
use crate::plan::{DirMap, DirMeta};
use crate::store::{LayerRecord, Store};

/// Adds the directories of `layer` (a blob in the store) to `map`; later layers override.
pub fn add_layer_dirs(store: &Store, layer: &LayerRecord, map: &mut DirMap) -> Result<()> {
    let cache = store
        .root()
        .join("dirs")
        .join(format!("{}.json", layer.digest.hex()));
    let dirs: DirMap = match fs::read(&cache)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        Some(d) => d,
        None => {
            let d = scan(store, layer)?;
            let dir = store.root().join("dirs");
            fs::create_dir_all(&dir).at("create", &dir)?;
            let mut tmp =
                tempfile::NamedTempFile::new_in(&dir).at("create a temporary file in", &dir)?;
            serde_json::to_writer(&mut tmp, &d)
                .map_err(|e| Error::io("write", &cache, e.into()))?;
            tmp.persist(&cache)
                .map_err(|e| Error::io("rename into", &cache, e.error))?;
            d
        }
    };
    map.extend(dirs);
    Ok(())
}

/// A reader of the tar inside a layer blob, by the layer's media type.
pub fn decompress<'a, R: Read + 'a>(
    blob: R,
    media_type: &str,
    digest: &crate::digest::Digest,
) -> Result<Box<dyn Read + 'a>> {
    Ok(
        if media_type.ends_with("+gzip") || media_type.ends_with(".gzip") {
            Box::new(flate2::read::MultiGzDecoder::new(blob))
        } else if media_type.ends_with("+zstd") {
            Box::new(
                zstd::stream::read::Decoder::with_buffer(BufReader::new(blob)).map_err(|e| {
                    Error::io("read", std::path::PathBuf::from(digest.to_string()), e)
                })?,
            )
        } else if media_type.ends_with("tar") {
            Box::new(blob)
        } else {
            return Err(Error::invalid(
                format!("layer `{digest}` has media type `{media_type}`, which kiln cannot read"),
                Some("use images whose layers are tar, tar+gzip or tar+zstd".into()),
            ));
        },
    )
}

fn scan(store: &Store, layer: &LayerRecord) -> Result<DirMap> {
    let path = store.blob_path(&layer.digest);
    let blob = BufReader::new(store.open_blob(&layer.digest)?);
    let reader = decompress(blob, &layer.media_type, &layer.digest)?;
    let mut map = DirMap::new();
    let mut ar = tar::Archive::new(reader);
    let bad = |e: io::Error| crate::store::verify_error(e, &path);
    for entry in ar.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let h = entry.header();
        if !h.entry_type().is_dir() {
            continue;
        }
        let name = entry_path(&entry.path().map_err(bad)?.to_string_lossy());
        if name.is_empty() {
            continue;
        }
        let meta = DirMeta {
            mode: h.mode().unwrap_or(0o755) & 0o7777,
            uid: h.uid().unwrap_or(0) as u32,
            gid: h.gid().unwrap_or(0) as u32,
        };
        map.insert(name, meta);
    }
    // Read to the end so the verified reader checks the blob's digest.
    let mut rest = ar.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(bad)?;
    Ok(map)
}

/// A layer entry's path, relative, without `.` segments or empty ones
/// (`.//a/./b/` is `a/b`, as tar and the kernel read it); `..` is kept for
/// the caller to refuse.
pub fn entry_path(raw: &str) -> String {
    raw.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Applies `path` to a tree of lower layers if it is an OCI whiteout
/// (`.wh.NAME` removes NAME, `.wh..wh..opq` empties its directory, the
/// layer's root included); returns whether it was one (and so is not an
/// entry of its own). Only the entries removed are visited, so a layer of
/// many whiteouts over a large tree costs no more than its size.
pub fn apply_whiteout<V>(tree: &mut BTreeMap<String, V>, path: &str) -> bool {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    if name == ".wh..wh..opq" {
        if dir.is_empty() {
            tree.clear();
        } else {
            remove_under(tree, &format!("{dir}/"));
        }
        return true;
    }
    let Some(hidden) = name.strip_prefix(".wh.") else {
        return false;
    };
    let gone = if dir.is_empty() {
        hidden.to_string()
    } else {
        format!("{dir}/{hidden}")
    };
    tree.remove(&gone);
    remove_under(tree, &format!("{gone}/"));
    true
}

/// Removes every path that starts with `prefix` (a directory and `/`).
fn remove_under<V>(tree: &mut BTreeMap<String, V>, prefix: &str) {
    let doomed: Vec<String> = tree
        .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        .map(|(p, _)| p)
        .take_while(|p| p.starts_with(prefix))
        .cloned()
        .collect();
    for p in doomed {
        tree.remove(&p);
    }
}
