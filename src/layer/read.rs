//! Reading layers back: the directories of a base image's layers, so that a
//! layer on top keeps their modes and owners for the parents it includes.
//!
//! This scan is also where every base layer is checked as it is taken into
//! a build (from an `oci:` layout, a registry or a base recipe): an entry
//! that is absolute, climbs with `..` or passes through a symlink of the
//! same layer is invalid per the OCI image spec and is refused
//! ([`layer_path`]), so no later stage meets one.
//!
//! The result is cached in the store per layer blob (`dirs/<hex>.v2.json`,
//! written only for a layer that passed), so a base's layers are
//! decompressed once, not on every build.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, BufReader, Read};
use std::ops::Bound;

use crate::error::{Error, Result};
use crate::plan::{DirMap, DirMeta};
use crate::store::{LayerRecord, Store};

/// Adds the directories of `layer` (a blob in the store) to `map`; later layers override.
///
/// Refuses a layer with an entry that [`layer_path`] refuses.
pub fn add_layer_dirs(store: &Store, layer: &LayerRecord, map: &mut DirMap) -> Result<()> {
    let cache = store.dirs_cache_path(&layer.digest);
    let dirs: DirMap = match fs::read(&cache)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        Some(d) => d,
        None => {
            let d = scan(store, layer)?;
            let mut tmp = store.temp_file_beside(&cache)?;
            serde_json::to_writer(&mut tmp, &d)
                .map_err(|e| Error::io("write", &cache, e.into()))?;
            crate::files::rename_into(tmp, &cache)?;
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
    let mut symlinks = BTreeSet::new();
    for entry in ar.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let refuse = |why: String| bad_entry(&layer.digest, &raw, &why);
        let Some(name) =
            layer_path(&raw, |p| symlinks.contains(p).then_some("symlink")).map_err(refuse)?
        else {
            continue;
        };
        let h = entry.header();
        let kind = h.entry_type();
        if kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            hard_link_target(&target, |p| symlinks.contains(p).then_some("symlink"))
                .map_err(refuse)?;
        }
        if kind.is_symlink() {
            symlinks.insert(name.clone());
        } else {
            symlinks.remove(&name);
        }
        if !kind.is_dir() {
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

/// A layer entry's path checked and made relative (no `./`, no trailing
/// `/`), or `None` for the root itself; `traverses(p)` names what `p`, a
/// path already seen, is when it may not be passed through (`"symlink"` …).
///
/// Refused, with the reason: absolute paths, `..`, and any path that goes
/// through such an entry, `link/.` included (a naive unpacker would follow
/// the link to change the mode of what it points at).
pub fn layer_path(
    raw: &str,
    traverses: impl Fn(&str) -> Option<&'static str>,
) -> std::result::Result<Option<String>, String> {
    if raw.starts_with('/') {
        return Err("is absolute".into());
    }
    let mut rest = raw;
    while let Some(r) = rest.strip_prefix("./") {
        rest = r;
    }
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let mut path = String::new();
    for part in parts {
        match part {
            "" => {}
            "." => {
                if let Some(kind) = traverses(&path).filter(|_| !path.is_empty()) {
                    return Err(format!("passes through `{path}`, a {kind}"));
                }
            }
            ".." => return Err("climbs out with `..`".into()),
            name => {
                if !path.is_empty() {
                    if let Some(kind) = traverses(&path) {
                        return Err(format!("passes through `{path}`, a {kind}"));
                    }
                    path.push('/');
                }
                path.push_str(name);
            }
        }
    }
    Ok((!path.is_empty()).then_some(path))
}

/// The path a hard link's `target` names, checked as [`layer_path`] checks entries.
pub fn hard_link_target(
    target: &str,
    traverses: impl Fn(&str) -> Option<&'static str>,
) -> std::result::Result<String, String> {
    match layer_path(target, traverses) {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(format!("is a hard link to `{target}`, not to a file")),
        Err(why) => Err(format!("is a hard link to `{target}`, which {why}")),
    }
}

/// The error for an entry of `layer` that [`layer_path`] refuses.
pub fn bad_entry(layer: &crate::digest::Digest, raw: &str, why: &str) -> Error {
    Error::invalid(
        format!("layer `{layer}` has an entry `{raw}` that {why}"),
        Some(
            "the OCI image spec forbids entries that are absolute, climb with `..` or pass \
             through a symlink: rebuild the image without them"
                .into(),
        ),
    )
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
pub(crate) fn remove_under<V>(tree: &mut BTreeMap<String, V>, prefix: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_are_checked() {
        let links = |p: &str| (p == "link").then_some("symlink");
        let ok = |raw: &str| layer_path(raw, links).unwrap();
        assert_eq!(ok("./usr/bin/"), Some("usr/bin".into()));
        assert_eq!(ok("usr//./bin"), Some("usr/bin".into()));
        assert_eq!(ok("link"), Some("link".into()));
        assert_eq!(ok("./"), None);
        assert_eq!(ok("."), None);
        let why = |raw: &str| layer_path(raw, links).unwrap_err();
        assert_eq!(why("/etc/passwd"), "is absolute");
        assert_eq!(why("a/../../etc"), "climbs out with `..`");
        assert_eq!(why("link/file"), "passes through `link`, a symlink");
        assert_eq!(why("link/."), "passes through `link`, a symlink");
        assert_eq!(why("./link/./x"), "passes through `link`, a symlink");
        assert!(hard_link_target("/etc/shadow", links)
            .unwrap_err()
            .contains("which is absolute"));
        assert_eq!(hard_link_target("./a/b", links).unwrap(), "a/b");
    }
}
