//! Reading layers back. [`walk_layer`] is the one walker of layer trees:
//! it applies a layer to a tree (entry paths checked, whiteouts and opaque
//! whiteouts applied, hard links handed over after the layer's other
//! entries) and a [`Visitor`] says what the tree keeps. Its three users: the
//! directories of a base image's layers (here, so that a layer on top keeps
//! their modes and owners for the parents it includes), the merged tree of a
//! VM image (`export::vm`) and the files of an SBOM (`attest::sbom`).
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

use std::collections::BTreeMap;
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
    let mut reader = decompress(blob, &layer.media_type, &layer.digest)?;
    let bad = |e: io::Error| crate::store::verify_error(e, &path);
    let mut dirs = Dirs {
        layer: &layer.digest,
        map: DirMap::new(),
    };
    walk_layer(&mut reader, &mut Tree::new(), &mut dirs, bad)?;
    // Read to the end so the verified reader checks the blob's digest.
    io::copy(&mut reader, &mut io::sink()).map_err(bad)?;
    Ok(dirs.map)
}

/// The directories of one layer read on its own, for [`scan`]: its tree
/// holds the layer's symlinks, which its entries may not pass through.
struct Dirs<'a> {
    layer: &'a crate::digest::Digest,
    map: DirMap,
}

impl Visitor for Dirs<'_> {
    type Node = ();
    const RULES: Rules = Rules {
        paths: Paths::Checked,
        whiteouts: false,
    };

    fn blocks(&self, tree: &Tree<()>, path: &str) -> Option<&'static str> {
        tree.contains_key(path).then_some("symlink")
    }

    fn refuse(&self, raw: &str, why: &str) -> Error {
        bad_entry(self.layer, raw, why)
    }

    fn entry(&mut self, tree: &mut Tree<()>, entry: Entry<'_>) -> Result<()> {
        if let Kind::Symlink(_) = entry.kind {
            tree.insert(entry.path, ());
            return Ok(());
        }
        tree.remove(&entry.path);
        if let Kind::Dir = entry.kind {
            let meta = DirMeta {
                mode: entry.mode(0o755),
                uid: entry.uid,
                gid: entry.gid,
            };
            self.map.insert(entry.path, meta);
        }
        Ok(())
    }

    fn hard_link(&mut self, _: &mut Tree<()>, _: HardLink) -> Result<()> {
        // Its target was checked as it was met.
        Ok(())
    }
}

/// A merged file tree: relative path → node.
pub type Tree<N> = BTreeMap<String, N>;

/// How a walk reads a layer's entries.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// How entry paths are read.
    pub paths: Paths,
    /// Whether `.wh.` entries remove paths from the tree (layers applied
    /// over others) or are entries like any other (a layer read on its own).
    pub whiteouts: bool,
}

/// How a walk reads entry paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paths {
    /// Checked by [`layer_path`] (and hard link targets by
    /// [`hard_link_target`]) against [`Visitor::blocks`]; a refused entry
    /// fails the walk with [`Visitor::refuse`]. For anything that is written.
    Checked,
    /// Read as tar and the kernel read them ([`entry_path`]), refusing
    /// nothing: for describing an image (its SBOM), never for writing one.
    AsWritten,
}

/// What a layer entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file; its bytes are [`Entry::data`].
    File,
    /// A symlink to the target, as written.
    Symlink(String),
    /// A hard link to the target, as written: met here, in the layer's
    /// order, then handed over again as a [`HardLink`] after the layer's
    /// other entries.
    HardLink(String),
    /// A device, fifo or anything else a tree of files does not hold.
    Other,
}

/// One entry of a layer (not a whiteout), its path read by [`Rules::paths`].
pub struct Entry<'a> {
    /// The path as written in the layer, for errors.
    pub raw: String,
    /// The path, relative, never empty.
    pub path: String,
    /// What it is.
    pub kind: Kind,
    /// Its mode bits (`& 0o7777`), if the header holds a readable one.
    pub mode: Option<u32>,
    /// Its owner.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// The file's bytes (empty for other kinds).
    pub data: &'a mut dyn Read,
}

impl Entry<'_> {
    /// The mode, or `default` when the header's is unreadable.
    pub fn mode(&self, default: u32) -> u32 {
        self.mode.unwrap_or(default)
    }
}

/// A hard link of a layer, handed over after the layer's other entries (its
/// target may come later in the layer than the link).
#[derive(Debug, Clone)]
pub struct HardLink {
    /// The link's path as written, for errors.
    pub raw: String,
    /// The link's path.
    pub path: String,
    /// The target as written.
    pub target: String,
    /// The target's path in the tree: checked by [`hard_link_target`]
    /// (with [`Paths::Checked`]), or with leading `./` and `/` dropped.
    pub to: String,
    /// The link's own mode bits, if readable.
    pub mode: Option<u32>,
    /// Its owner.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
}

impl HardLink {
    /// The mode, or `default` when the header's is unreadable.
    pub fn mode(&self, default: u32) -> u32 {
        self.mode.unwrap_or(default)
    }
}

/// What a walk does with the entries of a layer: the one place where each
/// use of a layer tree (the directories of a base, the VM's merged tree, the
/// SBOM's files) says what it keeps, the walker doing the rest.
pub trait Visitor {
    /// What the tree holds at a path.
    type Node;
    /// How the layer is read.
    const RULES: Rules;

    /// What `path`, a path of the tree, is when an entry may not pass
    /// through it (`"symlink"`, `"file"` …); `None` lets it through.
    fn blocks(&self, _tree: &Tree<Self::Node>, _path: &str) -> Option<&'static str> {
        None
    }

    /// As [`Visitor::blocks`], for the path of a hard link's target.
    fn link_blocks(&self, tree: &Tree<Self::Node>, path: &str) -> Option<&'static str> {
        self.blocks(tree, path)
    }

    /// The error for the entry written `raw` that [`layer_path`] refuses for `why`.
    fn refuse(&self, raw: &str, why: &str) -> Error {
        Error::invalid(format!("a layer has an entry `{raw}` that {why}"), None)
    }

    /// Takes one entry (in the layer's order) into the tree.
    fn entry(&mut self, tree: &mut Tree<Self::Node>, entry: Entry<'_>) -> Result<()>;

    /// Takes one hard link into the tree, after the layer's other entries.
    fn hard_link(&mut self, tree: &mut Tree<Self::Node>, link: HardLink) -> Result<()>;
}

/// Applies one layer (the tar stream `tar`) to `tree`: every entry's path
/// read by the visitor's [`Rules`], whiteouts applied, then each entry handed
/// to `visitor` in order and the hard links after them. Read errors of the
/// stream go through `bad`. The stream is left where the tar ends: a caller
/// that verifies a digest reads the rest.
pub fn walk_layer<V: Visitor>(
    tar: &mut dyn Read,
    tree: &mut Tree<V::Node>,
    visitor: &mut V,
    bad: impl Fn(io::Error) -> Error,
) -> Result<()> {
    let rules = V::RULES;
    let mut archive = tar::Archive::new(tar);
    let mut links = Vec::new();
    for entry in archive.entries().map_err(&bad)? {
        let mut entry = entry.map_err(&bad)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(path) = read_path(&raw, tree, visitor)? else {
            continue;
        };
        if rules.whiteouts && apply_whiteout(tree, &path) {
            continue;
        }
        let h = entry.header();
        let mode = h.mode().ok().map(|m| m & 0o7777);
        let (uid, gid) = (h.uid().unwrap_or(0) as u32, h.gid().unwrap_or(0) as u32);
        let kind = h.entry_type();
        let link_name = entry
            .link_name_bytes()
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let kind = if kind.is_dir() {
            Kind::Dir
        } else if kind.is_symlink() {
            Kind::Symlink(link_name.unwrap_or_default())
        } else if kind.is_hard_link() {
            let to = link_to(&raw, link_name.as_deref(), tree, visitor)?;
            let target = link_name.unwrap_or_default();
            let met = Entry {
                raw: raw.clone(),
                path: path.clone(),
                kind: Kind::HardLink(target.clone()),
                mode,
                uid,
                gid,
                data: &mut io::empty(),
            };
            visitor.entry(tree, met)?;
            if let Some(to) = to {
                links.push(HardLink {
                    raw,
                    path,
                    target,
                    to,
                    mode,
                    uid,
                    gid,
                });
            }
            continue;
        } else if kind.is_file() {
            Kind::File
        } else {
            Kind::Other
        };
        let entry = Entry {
            raw,
            path,
            kind,
            mode,
            uid,
            gid,
            data: &mut entry,
        };
        visitor.entry(tree, entry)?;
    }
    for link in links {
        visitor.hard_link(tree, link)?;
    }
    Ok(())
}

/// The path of the entry written `raw`, read by the visitor's
/// [`Rules::paths`]; `None` for the layer's root.
fn read_path<V: Visitor>(raw: &str, tree: &Tree<V::Node>, visitor: &V) -> Result<Option<String>> {
    match V::RULES.paths {
        Paths::Checked => {
            layer_path(raw, |p| visitor.blocks(tree, p)).map_err(|why| visitor.refuse(raw, &why))
        }
        Paths::AsWritten => Ok(Some(entry_path(raw)).filter(|p| !p.is_empty())),
    }
}

/// The path of the tree that the hard link written `raw` to `target` names,
/// read by the visitor's [`Rules::paths`]; `None` when a link as written has
/// no target (tar reads no link then).
fn link_to<V: Visitor>(
    raw: &str,
    target: Option<&str>,
    tree: &Tree<V::Node>,
    visitor: &V,
) -> Result<Option<String>> {
    match V::RULES.paths {
        Paths::Checked => {
            hard_link_target(target.unwrap_or_default(), |p| visitor.link_blocks(tree, p))
                .map(Some)
                .map_err(|why| visitor.refuse(raw, &why))
        }
        Paths::AsWritten => Ok(target.map(|t| {
            t.trim_start_matches("./")
                .trim_start_matches('/')
                .to_string()
        })),
    }
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

    /// A layer of `(path, kind, link target)`; files hold their path as bytes.
    fn layer(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, link) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(*kind);
            h.set_mode(0o640);
            let data = if *kind == tar::EntryType::Regular {
                path.as_bytes()
            } else {
                &[]
            };
            h.set_size(data.len() as u64);
            // Written raw: the builder would refuse some of these paths.
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Keeps each path's kind (and a file's bytes); symlinks block.
    struct Kinds;

    impl Visitor for Kinds {
        type Node = String;
        const RULES: Rules = Rules {
            paths: Paths::Checked,
            whiteouts: true,
        };

        fn blocks(&self, tree: &Tree<String>, path: &str) -> Option<&'static str> {
            tree.get(path)
                .filter(|n| n.starts_with("->"))
                .map(|_| "symlink")
        }

        fn entry(&mut self, tree: &mut Tree<String>, entry: Entry<'_>) -> Result<()> {
            let node = match &entry.kind {
                Kind::Dir => format!("dir {:o}", entry.mode(0)),
                Kind::File => {
                    let mut text = String::new();
                    entry.data.read_to_string(&mut text).unwrap();
                    format!("file {text}")
                }
                Kind::Symlink(t) => format!("->{t}"),
                Kind::HardLink(_) | Kind::Other => return Ok(()),
            };
            tree.insert(entry.path, node);
            Ok(())
        }

        fn hard_link(&mut self, tree: &mut Tree<String>, link: HardLink) -> Result<()> {
            let node = tree[&link.to].clone();
            tree.insert(link.path, node);
            Ok(())
        }
    }

    fn walk(tree: &mut Tree<String>, tar: &[u8]) -> Result<()> {
        walk_layer(&mut &tar[..], tree, &mut Kinds, |e| {
            Error::io("read", "layer", e)
        })
    }

    #[test]
    fn layers_apply_bottom_up_with_whiteouts_and_late_hard_links() {
        use tar::EntryType::{Directory, Link, Regular, Symlink};
        let mut tree = Tree::new();
        let lower = [
            ("./", Directory, ""),
            ("a/", Directory, ""),
            ("a/f", Regular, ""),
            ("b", Regular, ""),
            ("c/d", Regular, ""),
            ("l", Symlink, "/etc"),
        ];
        walk(&mut tree, &layer(&lower)).unwrap();
        let upper = [
            ("./.wh.b", Regular, ""),
            ("a/.wh..wh..opq", Regular, ""),
            // The link comes before its target: links are resolved last.
            ("a/h", Link, "./a/g"),
            ("a/g", Regular, ""),
            ("c/.wh.d", Regular, ""),
        ];
        walk(&mut tree, &layer(&upper)).unwrap();
        let got: Vec<String> = tree.iter().map(|(p, n)| format!("{p}: {n}")).collect();
        assert_eq!(
            got,
            ["a: dir 640", "a/g: file a/g", "a/h: file a/g", "l: ->/etc"]
        );
        let through = layer(&[("l/passwd", Regular, "")]);
        let err = walk(&mut tree, &through).unwrap_err().to_string();
        assert!(err.contains("passes through `l`, a symlink"), "{err}");
        let out = layer(&[("h", Link, "../x")]);
        let err = walk(&mut tree, &out).unwrap_err().to_string();
        assert!(
            err.contains("is a hard link to `../x`, which climbs out"),
            "{err}"
        );
    }

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
