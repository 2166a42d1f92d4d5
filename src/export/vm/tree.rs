//! The merged file tree of a VM image: its layers applied in order, as a map
//! from relative path to node, with file contents in the store.
//!
//! The merge keeps the tree a tree: an entry that is absolute, climbs with
//! `..`, or passes through a symlink or a file already in the tree (of the
//! same layer or a lower one) is refused, naming the layer and the entry. A
//! lower layer's symlink with an upper layer's `link/file` is refused rather
//! than resolved: resolving it inside the root would mean choosing where the
//! file lands by following an image-controlled link, and no layer kiln or a
//! container builder writes looks like that (they emit the directory
//! first, which replaces the link). A non-directory replacing a directory
//! takes the directory's children with it, as in an overlay, so they can
//! never be written through the link that replaced it. A hard link names a
//! file of the tree, never a host path: it shares the node of its target.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufReader};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layer::read::{apply_whiteout, bad_entry, decompress, hard_link_target, layer_path};
use crate::pipeline::Built;
use crate::store::Store;

/// One node of the image's merged file tree.
#[derive(Debug, Clone)]
pub(super) enum Node {
    Dir,
    File { digest: Digest, size: u64 },
    Symlink(String),
}

#[derive(Debug, Clone)]
pub(super) struct Meta {
    pub(super) node: Node,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
}

const LOWER: &str = "symlink of a lower layer";

/// What a path of the tree is, when an entry may not pass through it.
fn blocks(tree: &BTreeMap<String, Meta>, path: &str) -> Option<&'static str> {
    match tree.get(path).map(|m| &m.node) {
        None | Some(Node::Dir) => None,
        Some(Node::Symlink(_)) => Some("symlink"),
        Some(Node::File { .. }) => Some("file"),
    }
}

/// Puts `meta` at `path`: missing parents become plain directories, and a
/// non-directory drops whatever the tree held beneath `path`.
fn insert(tree: &mut BTreeMap<String, Meta>, path: String, meta: Meta) {
    let mut at = 0;
    while let Some(i) = path[at..].find('/') {
        let parent = &path[..at + i];
        if !tree.contains_key(parent) {
            let dir = Meta {
                node: Node::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
            };
            tree.insert(parent.to_string(), dir);
        }
        at += i + 1;
    }
    if !matches!(meta.node, Node::Dir) {
        crate::layer::read::remove_under(tree, &format!("{path}/"));
    }
    tree.insert(path, meta);
}

/// Applies the image's layers in order (whiteouts included); file contents go into the store.
pub(super) fn merged_tree(store: &Store, built: &Built) -> Result<BTreeMap<String, Meta>> {
    let mut tree: BTreeMap<String, Meta> = BTreeMap::new();
    let image = &built.images[0].0;
    let from_base = |i: usize| {
        built.manifests[0]
            .layers
            .get(i)
            .is_some_and(|r| r.from_base)
    };
    for (i, layer) in image.layers.iter().enumerate() {
        let refuse = |raw: &str, why: &str| -> Error {
            let Error::Invalid {
                mut message,
                mut hint,
            } = bad_entry(&layer.digest, raw, why)
            else {
                unreachable!("bad_entry is an Error::Invalid")
            };
            if why.ends_with(LOWER) {
                hint = Some(
                    "kiln does not resolve a path through a symlink of a lower layer: give \
                     the directory its own entry first (it replaces the link), or use the \
                     path the link points to"
                        .into(),
                );
            }
            if let (true, Some((base, _))) = (from_base(i), built.recipe.base.shown()) {
                message = format!("base `{base}`: {message}");
            }
            Error::invalid(message, hint)
        };
        let path = store.blob_path(&layer.digest);
        let blob = BufReader::new(store.open_blob(&layer.digest)?);
        let reader = decompress(blob, &layer.media_type, &layer.digest)?;
        let mut ar = tar::Archive::new(reader);
        let bad = |e: io::Error| crate::store::verify_error(e, &path);
        let mut links = Vec::new();
        // Symlinks met in this layer, to tell them from those of lower layers.
        let mut here = BTreeSet::new();
        for entry in ar.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let traverses = |p: &str| match blocks(&tree, p) {
                Some("symlink") if !here.contains(p) => Some(LOWER),
                other => other,
            };
            let p = match layer_path(&raw, traverses) {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(why) => return Err(refuse(&raw, &why)),
            };
            if apply_whiteout(&mut tree, &p) {
                continue;
            }
            let h = entry.header();
            // What the entry is comes below; its mode and owner are known now.
            let (mode, uid, gid) = (
                h.mode().unwrap_or(0o644) & 0o7777,
                h.uid().unwrap_or(0) as u32,
                h.gid().unwrap_or(0) as u32,
            );
            let meta = move |node| Meta {
                node,
                mode,
                uid,
                gid,
            };
            let kind = h.entry_type();
            let link_name = || {
                entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            };
            let node = if kind.is_dir() {
                Node::Dir
            } else if kind.is_symlink() {
                Node::Symlink(link_name())
            } else if kind.is_hard_link() {
                let target = link_name();
                let to = hard_link_target(&target, |p| blocks(&tree, p))
                    .map_err(|why| refuse(&raw, &why))?;
                links.push((raw, p, target, to, meta));
                continue;
            } else if kind.is_file() {
                let mut w = store.writer()?;
                let size = io::copy(&mut entry, &mut w).map_err(bad)?;
                let (digest, _) = w.commit(None)?;
                Node::File { digest, size }
            } else {
                continue;
            };
            if matches!(node, Node::Symlink(_)) {
                here.insert(p.clone());
            } else {
                here.remove(&p);
            }
            insert(&mut tree, p, meta(node));
        }
        for (raw, p, target, to, meta) in links {
            let node = match tree.get(&to).map(|m| &m.node) {
                Some(n @ (Node::File { .. } | Node::Symlink(_))) => n.clone(),
                _ => {
                    return Err(refuse(
                        &raw,
                        &format!("is a hard link to `{target}`, which is not a file of the image"),
                    ))
                }
            };
            insert(&mut tree, p, meta(node));
        }
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Meta {
        Meta {
            node: Node::Dir,
            mode: 0o700,
            uid: 1,
            gid: 1,
        }
    }

    #[test]
    fn a_link_replacing_a_directory_takes_its_children() {
        let mut t = BTreeMap::new();
        insert(&mut t, "d/e/f".into(), dir());
        insert(&mut t, "d-x".into(), dir());
        assert_eq!(t["d"].mode, 0o755, "implied parents are plain directories");
        let link = Meta {
            node: Node::Symlink("/host".into()),
            ..dir()
        };
        insert(&mut t, "d".into(), link);
        let keys: Vec<&str> = t.keys().map(String::as_str).collect();
        assert_eq!(keys, ["d", "d-x"]);
    }
}
