//! The plan: what a build will produce, with every input named by digest.
//!
//! A [`LayerPlan`] is the sorted list of tar entries of one layer, with the
//! content digest of every file. Its [`LayerPlan::input_digest`] keys the
//! layer cache: it covers everything that shapes the layer's bytes (paths,
//! kinds, modes, owners, content digests, link targets, mtime, compression
//! and [`FORMAT_VERSION`]) and nothing that does not (host paths).

use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::recipe::Compression;

/// Bumped whenever kiln's layer bytes change for the same inputs (tar
/// layout, compression library or level), so old cache entries are not reused.
pub const FORMAT_VERSION: u32 = 4;

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub enum Content {
    /// A file on the host, read when the layer is written.
    Host(PathBuf),
    /// Bytes from the recipe itself.
    Inline(Arc<[u8]>),
}

/// What an entry is.
#[derive(Debug, Clone)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File {
        /// Where the bytes come from.
        content: Content,
        /// Its length.
        size: u64,
        /// Its SHA-256.
        digest: Digest,
    },
    /// A symbolic link, target stored as written.
    Symlink {
        /// The link target.
        target: String,
    },
    /// A hard link to an earlier entry of the same layer.
    HardLink {
        /// The path (in the layer) of the regular file it links to.
        target: String,
    },
}

/// One tar entry of a layer.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Path in the image, relative (`app/hello`), never empty.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// The mode and owner of a directory in a lower layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirMeta {
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

impl DirMeta {
    /// What a directory nobody declared gets: 0755, root.
    pub const DEFAULT: DirMeta = DirMeta {
        mode: 0o755,
        uid: 0,
        gid: 0,
    };

    /// A directory entry at `path` with this metadata.
    pub fn entry(&self, path: &str) -> Entry {
        Entry {
            path: path.to_string(),
            kind: EntryKind::Dir,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
        }
    }
}

/// Directories of the layers below, by path (relative, no trailing `/`).
pub type DirMap = std::collections::BTreeMap<String, DirMeta>;

impl LayerPlan {
    /// Records this layer's directories in `map`, for the layers above it.
    pub fn add_dirs_to(&self, map: &mut DirMap) {
        for e in &self.entries {
            if let EntryKind::Dir = e.kind {
                map.insert(
                    e.path.clone(),
                    DirMeta {
                        mode: e.mode,
                        uid: e.uid,
                        gid: e.gid,
                    },
                );
            }
        }
    }
}

/// One layer to build.
#[derive(Debug, Clone)]
pub struct LayerPlan {
    /// The recipe's name for it, if any.
    pub name: Option<String>,
    /// Entries, sorted by path bytes, parents first.
    pub entries: Vec<Entry>,
    /// The layer cache key.
    pub input_digest: Digest,
}

impl LayerPlan {
    /// Builds a plan from sorted entries, computing the cache key.
    pub fn new(
        name: Option<String>,
        entries: Vec<Entry>,
        compression: Compression,
        mtime: u64,
    ) -> Self {
        let input_digest = input_digest(&entries, compression, mtime);
        Self {
            name,
            entries,
            input_digest,
        }
    }

    /// How many regular files the layer holds and their total size.
    pub fn file_stats(&self) -> (usize, u64) {
        self.entries
            .iter()
            .filter_map(|e| match &e.kind {
                EntryKind::File { size, .. } => Some(*size),
                _ => None,
            })
            .fold((0, 0), |(n, total), s| (n + 1, total + s))
    }
}

fn input_digest(entries: &[Entry], compression: Compression, mtime: u64) -> Digest {
    use std::fmt::Write as _;
    let mut h = Sha256::new();
    h.update(format!("kiln-layer\0{FORMAT_VERSION}\0{compression:?}\0{mtime}\n").as_bytes());
    // Two buffers reused for every entry: a big layer has tens of thousands.
    let (mut meta, mut extra) = (String::new(), String::new());
    for e in entries {
        extra.clear();
        let kind = match &e.kind {
            EntryKind::Dir => "dir",
            EntryKind::File { size, digest, .. } => {
                let _ = write!(extra, "{size}\0{digest}");
                "file"
            }
            EntryKind::Symlink { target } => {
                extra.push_str(target);
                "symlink"
            }
            EntryKind::HardLink { target } => {
                extra.push_str(target);
                "hardlink"
            }
        };
        meta.clear();
        let _ = write!(meta, "{:o}\0{}\0{}", e.mode, e.uid, e.gid);
        // Lengths first, so no two different entry lists hash the same text.
        for field in [e.path.as_str(), kind, &meta, &extra] {
            h.update((field.len() as u64).to_le_bytes());
            h.update(field.as_bytes());
        }
    }
    Digest::from_hasher(h)
}
