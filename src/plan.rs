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
/// layout, compression library or level, which gzip pieces are stored), so
/// old cache entries are not reused.
pub const FORMAT_VERSION: u32 = 6;

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub enum Content {
    /// A file on the host, read when the layer is written, and how
    /// planning found it when it took its digest (see [`Seen`]).
    Host(PathBuf, Option<Seen>),
    /// A file on the host that planning did not read: the layer writer
    /// hashes it as it copies it, once, and the plan takes its digest then
    /// ([`LayerPlan::hashed`]). Until then the entry's `digest` means
    /// nothing, and the plan has no key. See `source/local.rs` for when
    /// planning leaves files so. With the device and inode planning listed:
    /// the writer refuses another file put in its place meanwhile (its
    /// other hard links, tar hard links to it, still hold the old bytes).
    Unhashed(PathBuf, (u64, u64)),
    /// Bytes from the recipe itself.
    Inline(Arc<[u8]>),
}

/// A host file's inode and change time as planning saw them when it took
/// the file's digest (hashing it, or on the stat cache's word). A file that
/// still looks so when the layer writer has copied it is taken to hold that
/// digest without being hashed again: every write moves the change time,
/// which no user can set, and a file put in its place has another inode.
/// Planning records none for a file changed in the last two seconds, whose
/// next write could land within the same timestamp tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    ino: u64,
    ctime_ns: std::num::NonZeroI64,
}

impl Seen {
    /// How `meta` looks, unless it changed too recently to be told apart
    /// from a write to come.
    pub fn of(meta: &std::fs::Metadata) -> Option<Seen> {
        use std::os::unix::fs::MetadataExt;
        Seen::at(meta.ino(), meta.ctime(), meta.ctime_nsec())
    }

    /// [`Seen::of`] a file of inode `ino` changed at `ctime` seconds and
    /// `ctime_nsec` nanoseconds.
    pub fn at(ino: u64, ctime: i64, ctime_nsec: i64) -> Option<Seen> {
        let seen = Seen::stamp(ino, ctime, ctime_nsec)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        (now.saturating_sub(seen.ctime_ns.get()) >= 2_000_000_000).then_some(seen)
    }

    /// Whether the file `meta` describes looks as it did.
    pub fn still(&self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        Seen::stamp(meta.ino(), meta.ctime(), meta.ctime_nsec()) == Some(*self)
    }

    fn stamp(ino: u64, ctime: i64, ctime_nsec: i64) -> Option<Seen> {
        let ctime_ns = ctime
            .saturating_mul(1_000_000_000)
            .saturating_add(ctime_nsec);
        Some(Seen {
            ino,
            ctime_ns: std::num::NonZeroI64::new(ctime_ns)?,
        })
    }
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

impl Entry {
    /// Whether this is a host file planning left for the layer writer to hash.
    pub fn unhashed(&self) -> bool {
        matches!(
            self.kind,
            EntryKind::File {
                content: Content::Unhashed(..),
                ..
            }
        )
    }
}

/// A digest the layer writer found for an unhashed file
/// ([`Content::Unhashed`]).
#[derive(Debug, Clone)]
pub struct Hashed {
    /// The entry's index in its layer.
    pub entry: usize,
    /// The content's SHA-256.
    pub digest: Digest,
    /// How the file looked, the same before and after it was read: for the
    /// stat cache.
    pub stamp: crate::store::stat_cache::FileStamp,
    /// When it was read (from just before): the stat cache trusts no
    /// stamp younger than two seconds then.
    pub read: std::time::SystemTime,
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
    /// The layer cache key; `None` while some file is
    /// [`Content::Unhashed`].
    pub input_digest: Option<Digest>,
    /// Host files made tar hard links to an entry (by its path) that
    /// planning left unhashed or that were themselves: their provenance
    /// waits for the entry's digest.
    pub late_links: Vec<(String, PathBuf)>,
    /// Unhashed files that planning read after all (`[accounts]` and the
    /// trust store merge what the layers below hold, and a hashed host file
    /// made a tar hard link to one is the same file), by entry index, with
    /// the digest of the bytes it read: the layer writer must find the same
    /// ([`Self::hashed`]), or the image would mix two states of the file.
    pub read_early: Vec<(usize, Digest)>,
}

impl LayerPlan {
    /// Builds a plan from sorted entries, computing the cache key.
    pub fn new(
        name: Option<String>,
        entries: Vec<Entry>,
        compression: Compression,
        mtime: u64,
    ) -> Self {
        let input_digest = input_digest(&entries, &[], compression, mtime);
        Self {
            name,
            entries,
            input_digest,
            late_links: Vec::new(),
            read_early: Vec::new(),
        }
    }

    /// The key the plan has once it takes the digests `found`
    /// ([`Self::hashed`]), without changing it; `None` if some file is
    /// still unhashed.
    pub fn key_with(
        &self,
        found: &[Hashed],
        compression: Compression,
        mtime: u64,
    ) -> Option<Digest> {
        input_digest(&self.entries, found, compression, mtime)
    }

    /// Takes the digests the layer writer found for the plan's unhashed
    /// files (by entry index), and the key [`Self::key_with`] gave with
    /// them (not worked out again: a big layer has tens of thousands of
    /// entries). Refuses a file that planning read too ([`Self::read_early`])
    /// and whose bytes the writer found otherwise: it changed in between.
    pub fn hashed(&mut self, found: &[Hashed], key: Digest) -> crate::error::Result<()> {
        for (i, early) in &self.read_early {
            // In entry order, as the writer found them.
            let Ok(at) = found.binary_search_by_key(i, |h| h.entry) else {
                continue;
            };
            if found[at].digest != *early {
                let path = match &self.entries[*i].kind {
                    EntryKind::File {
                        content: Content::Unhashed(path, _),
                        ..
                    } => path.display().to_string(),
                    _ => self.entries[*i].path.clone(),
                };
                return Err(changed_while_building(&path));
            }
        }
        for h in found {
            if let EntryKind::File {
                content, digest, ..
            } = &mut self.entries[h.entry].kind
            {
                if let Content::Unhashed(path, _) = content {
                    *content = Content::Host(std::mem::take(path), None);
                    *digest = h.digest.clone();
                }
            }
        }
        debug_assert!(
            !self.entries.iter().any(Entry::unhashed),
            "every file hashed"
        );
        self.input_digest = Some(key);
        self.read_early.clear();
        Ok(())
    }

    /// Whether this plan and `other`, both without a key yet, would write
    /// the same layer: the same entries, their files from the same host
    /// paths (read once, by the one build of both).
    pub fn same_unkeyed(&self, other: &LayerPlan) -> bool {
        fn same_content(a: &Content, b: &Content) -> bool {
            match (a, b) {
                (Content::Host(p, _), Content::Host(q, _)) => p == q,
                (Content::Unhashed(p, i), Content::Unhashed(q, j)) => p == q && i == j,
                (Content::Inline(a), Content::Inline(b)) => a == b,
                _ => false,
            }
        }
        fn same_kind(a: &EntryKind, b: &EntryKind) -> bool {
            match (a, b) {
                (EntryKind::Dir, EntryKind::Dir) => true,
                (
                    EntryKind::File {
                        content: c,
                        size: s,
                        digest: d,
                    },
                    EntryKind::File {
                        content: c2,
                        size: s2,
                        digest: d2,
                    },
                ) => s == s2 && d == d2 && same_content(c, c2),
                (EntryKind::Symlink { target: t }, EntryKind::Symlink { target: t2 })
                | (EntryKind::HardLink { target: t }, EntryKind::HardLink { target: t2 }) => {
                    t == t2
                }
                _ => false,
            }
        }
        self.input_digest.is_none()
            && other.input_digest.is_none()
            && self.entries.len() == other.entries.len()
            && self.entries.iter().zip(&other.entries).all(|(a, b)| {
                a.path == b.path
                    && (a.mode, a.uid, a.gid) == (b.mode, b.uid, b.gid)
                    && same_kind(&a.kind, &b.kind)
            })
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

/// The error for a host file whose bytes moved between two reads of one
/// build.
pub fn changed_while_building(path: &str) -> crate::error::Error {
    crate::error::Error::invalid(
        format!("`{path}` changed while kiln was building"),
        Some("run the build again once nothing is writing to the inputs".into()),
    )
}

/// The key of `entries`, whose unhashed files take their digests from
/// `found` (in entry order); `None` if one has none there.
fn input_digest(
    entries: &[Entry],
    found: &[Hashed],
    compression: Compression,
    mtime: u64,
) -> Option<Digest> {
    let mut found = found.iter().peekable();
    let mut h = Sha256::new();
    h.update(format!("kiln-layer\0{FORMAT_VERSION}\0{compression:?}\0{mtime}\n").as_bytes());
    // The text is gathered in one buffer and hashed 64 KiB at a time, numbers
    // written by hand: a big layer has tens of thousands of entries, and
    // hashing each of their fields apart cost more than hashing them.
    let (mut text, mut meta, mut extra) = (Vec::with_capacity(80 << 10), Vec::new(), Vec::new());
    for (i, e) in entries.iter().enumerate() {
        extra.clear();
        let kind = match &e.kind {
            EntryKind::Dir => "dir",
            EntryKind::File {
                content: Content::Unhashed(..),
                size,
                ..
            } => {
                let digest = &found.next_if(|f| f.entry == i)?.digest;
                push_radix(&mut extra, *size, 10);
                extra.extend_from_slice(b"\0sha256:");
                extra.extend_from_slice(digest.hex().as_bytes());
                "file"
            }
            EntryKind::File { size, digest, .. } => {
                push_radix(&mut extra, *size, 10);
                extra.extend_from_slice(b"\0sha256:");
                extra.extend_from_slice(digest.hex().as_bytes());
                "file"
            }
            EntryKind::Symlink { target } => {
                extra.extend_from_slice(target.as_bytes());
                "symlink"
            }
            EntryKind::HardLink { target } => {
                extra.extend_from_slice(target.as_bytes());
                "hardlink"
            }
        };
        meta.clear();
        push_radix(&mut meta, u64::from(e.mode), 8);
        meta.push(0);
        push_radix(&mut meta, u64::from(e.uid), 10);
        meta.push(0);
        push_radix(&mut meta, u64::from(e.gid), 10);
        // Lengths first, so no two different entry lists hash the same text.
        for field in [e.path.as_bytes(), kind.as_bytes(), &meta, &extra] {
            text.extend_from_slice(&(field.len() as u64).to_le_bytes());
            text.extend_from_slice(field);
        }
        if text.len() >= 64 << 10 {
            h.update(&text);
            text.clear();
        }
    }
    h.update(&text);
    Some(Digest::from_hasher(h))
}

/// Appends `n` in base `radix` (8 or 10), as `format!` would.
fn push_radix(out: &mut Vec<u8>, mut n: u64, radix: u64) {
    let mut digits = [0u8; 24];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % radix) as u8;
        n /= radix;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key as it was first written, with `format!`: the hand-written
    /// numbers must give the same text, or every layer cache misses.
    fn formatted(entries: &[Entry], compression: Compression, mtime: u64) -> Digest {
        let mut h = Sha256::new();
        h.update(format!("kiln-layer\0{FORMAT_VERSION}\0{compression:?}\0{mtime}\n").as_bytes());
        for e in entries {
            let (kind, extra) = match &e.kind {
                EntryKind::Dir => ("dir", String::new()),
                EntryKind::File { size, digest, .. } => ("file", format!("{size}\0{digest}")),
                EntryKind::Symlink { target } => ("symlink", target.clone()),
                EntryKind::HardLink { target } => ("hardlink", target.clone()),
            };
            for field in [
                e.path.as_str(),
                kind,
                &format!("{:o}\0{}\0{}", e.mode, e.uid, e.gid),
                &extra,
            ] {
                h.update((field.len() as u64).to_le_bytes());
                h.update(field.as_bytes());
            }
        }
        Digest::from_hasher(h)
    }

    #[test]
    fn the_input_key_is_the_formatted_one() {
        let entry = |path: &str, kind: EntryKind, mode: u32, uid: u32, gid: u32| Entry {
            path: path.into(),
            kind,
            mode,
            uid,
            gid,
        };
        let file = |size: u64| EntryKind::File {
            content: Content::Inline(Arc::from(&b"x"[..])),
            size,
            digest: Digest::of(&size.to_le_bytes()),
        };
        let entries = vec![
            entry("a", EntryKind::Dir, 0o755, 0, 0),
            entry("a/b", file(0), 0o644, 1000, 1000),
            entry("a/c", file(9), 0o4755, 65534, 7),
            entry("a/d", file(u64::MAX), 0o7777, u32::MAX, 10),
            entry(
                "a/e",
                EntryKind::Symlink { target: "b".into() },
                0o777,
                0,
                0,
            ),
            entry(
                "a/f",
                EntryKind::HardLink {
                    target: "a/b".into(),
                },
                0o644,
                1,
                2,
            ),
            entry("a/g", file(1234567890), 0, 100, 100000),
        ];
        for (c, mtime) in [(Compression::Gzip, 0), (Compression::Zstd, 1_700_000_000)] {
            assert_eq!(
                input_digest(&entries, &[], c, mtime),
                Some(formatted(&entries, c, mtime))
            );
        }
        for n in [0u64, 1, 7, 8, 9, 10, 63, 64, 511, 4095, 99999, u64::MAX] {
            for (radix, text) in [(8, format!("{n:o}")), (10, n.to_string())] {
                let mut out = Vec::new();
                push_radix(&mut out, n, radix);
                assert_eq!(out, text.as_bytes());
            }
        }
    }
}
