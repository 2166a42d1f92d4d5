//! Files of the image below a layer, read back for steps that act on what
//! is already there (account files, the CA certificates, the dpkg
//! database): the base's layers from the store, their whiteouts applied,
//! then the recipe's earlier layers as planned.

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::layer::read::{self, Kind, Paths, Rules, Tree, Visitor};
use crate::plan::{Content, EntryKind, LayerPlan};
use crate::store::{LayerRecord, Store};

/// A regular file found below: its bytes, mode and owner.
#[derive(Clone)]
pub(super) struct Found {
    pub(super) bytes: Vec<u8>,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
}

/// Keeps what a layer writes at the paths `wanted` accepts: a regular file
/// as [`Found`], anything else there (a symlink, a directory) as `None`;
/// whiteouts remove them. A hard link is the file it names: taken from the
/// tree when that path is wanted too, else noted in `later`, for a second
/// read of the layer ([`grab`]).
struct Pick<F> {
    wanted: F,
    /// Wanted hard links to files not kept: (link, target) paths.
    later: Vec<(String, String)>,
}

impl<F: Fn(&str) -> bool> Visitor for Pick<F> {
    type Node = Option<Found>;
    const RULES: Rules = Rules {
        paths: Paths::AsWritten,
        whiteouts: true,
    };

    fn entry(&mut self, tree: &mut Tree<Self::Node>, mut entry: read::Entry<'_>) -> Result<()> {
        if !(self.wanted)(&entry.path) {
            return Ok(());
        }
        let found = if entry.kind == Kind::File {
            Some(read_file(&mut entry)?)
        } else {
            None
        };
        tree.insert(entry.path, found);
        Ok(())
    }

    fn hard_link(&mut self, tree: &mut Tree<Self::Node>, link: read::HardLink) -> Result<()> {
        if !(self.wanted)(&link.path) {
            return Ok(());
        }
        match tree.get(&link.to) {
            Some(target) => {
                let target = target.clone();
                tree.insert(link.path, target);
            }
            None => self.later.push((link.path, link.to)),
        }
        Ok(())
    }
}

/// Reads the regular files at `paths` out of a layer, for the hard links
/// [`Pick`] could not resolve from what it kept.
struct Grab<'a> {
    paths: &'a std::collections::BTreeSet<&'a str>,
    found: std::collections::HashMap<String, Found>,
}

impl Visitor for Grab<'_> {
    type Node = ();
    const RULES: Rules = Rules {
        paths: Paths::AsWritten,
        whiteouts: false,
    };

    fn entry(&mut self, _: &mut Tree<()>, mut entry: read::Entry<'_>) -> Result<()> {
        if entry.kind != Kind::File || !self.paths.contains(entry.path.as_str()) {
            return Ok(());
        }
        let found = read_file(&mut entry)?;
        self.found.insert(entry.path, found);
        Ok(())
    }

    fn hard_link(&mut self, _: &mut Tree<()>, _: read::HardLink) -> Result<()> {
        Ok(())
    }
}

/// The files the hard links `later` name, read again from the base layer
/// `layer` (whose first read kept only the wanted paths).
fn grab(
    store: &Store,
    layer: &LayerRecord,
    later: &[(String, String)],
) -> Result<std::collections::HashMap<String, Found>> {
    let paths = later.iter().map(|(_, to)| to.as_str()).collect();
    let mut grab = Grab {
        paths: &paths,
        found: Default::default(),
    };
    walk_base(store, layer, &mut Tree::new(), &mut grab)?;
    Ok(grab.found)
}

/// A regular file's bytes, mode and owner, from a layer.
fn read_file(entry: &mut read::Entry<'_>) -> Result<Found> {
    let mut bytes = Vec::new();
    entry
        .data
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", &entry.path, e))?;
    Ok(Found {
        bytes,
        mode: entry.mode(0o644),
        uid: entry.uid,
        gid: entry.gid,
    })
}

/// Applies the base layer `layer`, read from the store, to `tree`.
fn walk_base<V: Visitor>(
    store: &Store,
    layer: &LayerRecord,
    tree: &mut Tree<V::Node>,
    visitor: &mut V,
) -> Result<()> {
    let path = store.blob_path(&layer.digest);
    let blob = std::io::BufReader::new(store.open_blob(&layer.digest)?);
    let mut tar = read::decompress(blob, &layer.media_type, &layer.digest)?;
    let bad = |e: std::io::Error| crate::store::verify_error(e, &path);
    read::walk_layer(&mut tar, tree, visitor, bad)
}

/// The files at the paths `wanted` accepts as the base's layers and then
/// the planned layers `plans` leave them (`None`: not a regular file; a
/// planned tar hard link is the file it links to).
///
/// A planned host file is read now: one planning hashed must still hold
/// that digest, and one it left for the layer writer to hash is noted in
/// its plan with the digest of what was read ([`LayerPlan::read_early`]),
/// for the writer to find the same.
pub(super) fn files(
    store: &Store,
    base: &[LayerRecord],
    plans: &mut [LayerPlan],
    wanted: impl Fn(&str) -> bool,
) -> Result<Tree<Option<Found>>> {
    let mut tree = Tree::new();
    let mut pick = Pick {
        wanted,
        later: Vec::new(),
    };
    for layer in base {
        walk_base(store, layer, &mut tree, &mut pick)?;
        if !pick.later.is_empty() {
            let found = grab(store, layer, &pick.later)?;
            for (link, to) in pick.later.drain(..) {
                tree.insert(link, found.get(&to).cloned());
            }
        }
    }
    for plan in plans {
        let mut early = Vec::new();
        for (i, e) in plan.entries.iter().enumerate() {
            if !(pick.wanted)(&e.path) {
                continue;
            }
            // A tar hard link holds what the entry it links to does (one
            // host inode: planning gave them one mode and owner).
            let file = match &e.kind {
                EntryKind::HardLink { target } => plan
                    .entries
                    .binary_search_by(|t| t.path.as_bytes().cmp(target.as_bytes()))
                    .ok(),
                _ => Some(i),
            };
            let found = match file.map(|i| (i, &plan.entries[i].kind)) {
                Some((
                    i,
                    EntryKind::File {
                        content, digest, ..
                    },
                )) => {
                    let bytes = bytes_of(content)?;
                    match content {
                        Content::Host(p, _) if Digest::of(&bytes) != *digest => {
                            return Err(crate::plan::changed_while_building(
                                &p.display().to_string(),
                            ));
                        }
                        Content::Unhashed(..) => early.push((i, Digest::of(&bytes))),
                        _ => {}
                    }
                    Some(Found {
                        bytes,
                        mode: e.mode,
                        uid: e.uid,
                        gid: e.gid,
                    })
                }
                _ => None,
            };
            tree.insert(e.path.clone(), found);
        }
        plan.read_early.append(&mut early);
    }
    Ok(tree)
}

/// The bytes of a planned file.
pub(super) fn bytes_of(content: &Content) -> Result<Vec<u8>> {
    Ok(match content {
        Content::Host(p, _) | Content::Unhashed(p, _) => std::fs::read(p).at("read", p)?,
        Content::Inline(b) => b.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Entry, LayerPlan};
    use crate::recipe::Compression;

    fn file(path: &str, content: Content, digest: Digest) -> Entry {
        Entry {
            path: path.to_string(),
            kind: EntryKind::File {
                content,
                digest,
                size: 30,
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }

    /// A planned host file is read with the digest planning took checked,
    /// and an unhashed one's digest is noted for the layer writer.
    #[test]
    fn planned_files_are_checked_or_noted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let read = Digest::of(b"root:x:0:0:root:/root:/bin/sh\n");
        let wanted = |p: &str| p == "etc/passwd";
        let plan = |content: Content, digest: Digest| {
            let entries = vec![file("etc/passwd", content, digest)];
            LayerPlan::new(None, entries, Compression::Gzip, 0)
        };

        let mut late = [plan(
            Content::Unhashed(passwd.clone(), (0, 0)),
            Digest::of(b""),
        )];
        let tree = files(&store, &[], &mut late, wanted).unwrap();
        let found = tree.get("etc/passwd").cloned().flatten().unwrap();
        assert_eq!(found.bytes, b"root:x:0:0:root:/root:/bin/sh\n");
        assert_eq!(late[0].read_early, vec![(0, read.clone())]);

        let mut hashed = [plan(Content::Host(passwd.clone(), None), read)];
        files(&store, &[], &mut hashed, wanted).unwrap();
        assert!(hashed[0].read_early.is_empty());

        let other = Digest::of(b"evil:x:0:0:root:/root:/bin/sh\n");
        let mut moved = [plan(Content::Host(passwd.clone(), None), other)];
        let err = files(&store, &[], &mut moved, wanted).err().unwrap();
        assert!(
            err.to_string().contains("changed while kiln was building"),
            "{err}"
        );
    }
}
