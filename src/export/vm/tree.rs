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

use std::collections::BTreeSet;
use std::io::{self, BufReader};
use std::path::Path;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layer::read::{
    bad_entry, decompress, walk_layer, Entry, HardLink, Kind, Paths, Rules, Tree, Visitor,
};
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
fn blocks(tree: &Tree<Meta>, path: &str) -> Option<&'static str> {
    match tree.get(path).map(|m| &m.node) {
        None | Some(Node::Dir) => None,
        Some(Node::Symlink(_)) => Some("symlink"),
        Some(Node::File { .. }) => Some("file"),
    }
}

/// Puts `meta` at `path`: missing parents become plain directories, and a
/// non-directory drops whatever the tree held beneath `path`.
fn insert(tree: &mut Tree<Meta>, path: String, meta: Meta) {
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
pub(super) fn merged_tree(store: &Store, input: &super::Input<'_>) -> Result<Tree<Meta>> {
    let mut tree = Tree::new();
    let base = input.recipe.base.shown().map(|(base, _)| base);
    for (i, layer) in input.layers.iter().enumerate() {
        let path = store.blob_path(&layer.digest);
        let blob = BufReader::new(store.open_blob(&layer.digest)?);
        let mut reader = decompress(blob, &layer.media_type, &layer.digest)?;
        let mut merge = Merge {
            store,
            layer: &layer.digest,
            base: base.as_deref().filter(|_| i < input.base_layers),
            blob: &path,
            here: BTreeSet::new(),
        };
        let bad = |e: io::Error| crate::store::verify_error(e, &path);
        walk_layer(&mut reader, &mut tree, &mut merge, bad)?;
    }
    Ok(tree)
}

/// Applies one layer of a VM image to its merged tree.
struct Merge<'a> {
    store: &'a Store,
    /// The layer, for errors.
    layer: &'a Digest,
    /// The base as the recipe names it, when the layer is one of its.
    base: Option<&'a str>,
    /// The layer's blob, for errors.
    blob: &'a Path,
    /// Symlinks met in this layer, to tell them from those of lower layers.
    here: BTreeSet<String>,
}

impl Visitor for Merge<'_> {
    type Node = Meta;
    const RULES: Rules = Rules {
        paths: Paths::Checked,
        whiteouts: true,
    };

    fn blocks(&self, tree: &Tree<Meta>, path: &str) -> Option<&'static str> {
        match blocks(tree, path) {
            Some("symlink") if !self.here.contains(path) => Some(LOWER),
            other => other,
        }
    }

    fn link_blocks(&self, tree: &Tree<Meta>, path: &str) -> Option<&'static str> {
        blocks(tree, path)
    }

    fn refuse(&self, raw: &str, why: &str) -> Error {
        let Error::Invalid {
            mut message,
            mut hint,
        } = bad_entry(self.layer, raw, why)
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
        if let Some(base) = self.base {
            message = format!("base `{base}`: {message}");
        }
        Error::invalid(message, hint)
    }

    fn entry(&mut self, tree: &mut Tree<Meta>, entry: Entry<'_>) -> Result<()> {
        let mode = entry.mode(0o644);
        let node = match entry.kind {
            Kind::Dir => Node::Dir,
            Kind::Symlink(target) => Node::Symlink(target),
            Kind::File => {
                let mut w = self.store.writer()?;
                let size = io::copy(entry.data, &mut w)
                    .map_err(|e| crate::store::verify_error(e, self.blob))?;
                let (digest, _) = w.commit(None)?;
                Node::File { digest, size }
            }
            // A hard link comes back once the layer's files are in the tree.
            Kind::HardLink(_) | Kind::Other => return Ok(()),
        };
        if matches!(node, Node::Symlink(_)) {
            self.here.insert(entry.path.clone());
        } else {
            self.here.remove(&entry.path);
        }
        let meta = Meta {
            node,
            mode,
            uid: entry.uid,
            gid: entry.gid,
        };
        insert(tree, entry.path, meta);
        Ok(())
    }

    fn hard_link(&mut self, tree: &mut Tree<Meta>, link: HardLink) -> Result<()> {
        let node = match tree.get(&link.to).map(|m| &m.node) {
            Some(n @ (Node::File { .. } | Node::Symlink(_))) => n.clone(),
            _ => {
                return Err(self.refuse(
                    &link.raw,
                    &format!(
                        "is a hard link to `{}`, which is not a file of the image",
                        link.target
                    ),
                ))
            }
        };
        let meta = Meta {
            node,
            mode: link.mode(0o644),
            uid: link.uid,
            gid: link.gid,
        };
        insert(tree, link.path, meta);
        Ok(())
    }
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
        let mut t = Tree::new();
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
