//! Stage 3, local inputs: a recipe's `[[layers]]` table → a [`LayerPlan`].
//!
//! Reads host files and trees named by the recipe (relative to the recipe's
//! directory), normalises their metadata by the reproducibility rules (mode
//! from the recipe or 0755/0644 by the executable bit, owner from the recipe
//! or 0:0, no times, no xattrs), hashes every file, finds hard links, adds
//! every missing parent directory, and sorts entries by path bytes. Errors
//! point at the recipe line that named the input.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use globset::{Glob, GlobSet, GlobSetBuilder};
use toml::Spanned;

use crate::digest::Digest;
use crate::error::{Diagnostic, Result};
use crate::plan::{Content, DirMap, DirMeta, Entry, EntryKind, LayerPlan};
use crate::recipe::{expand_src, LayerSection, Mode, Platform, Recipe, TreeItem};
use crate::store::stat_cache::StatCache;

use super::walk;

/// Entries by path, with the span of the recipe item that made each.
type Entries = BTreeMap<String, (Entry, Range<usize>)>;

/// Host files that may share a tar hard link: (device, inode, mode, uid, gid).
type LinkKey = (u64, u64, u32, u32, u32);

/// Links left unhashed, with the path of the entry they link to.
type LateLinks = Vec<(String, PathBuf)>;

/// A layer's own entries, as the recipe names them for one platform:
/// everything but the packages and the parent directories the layers
/// below decide. Every host file is named by its content's digest.
#[derive(Debug, Clone, Default)]
pub struct LocalLayer {
    /// The recipe's name for the layer.
    name: Option<String>,
    /// Entries by path, with the span of the recipe item that made each.
    entries: Entries,
    /// Host files with several links (see [`LayerBuilder`]).
    links: HashMap<LinkKey, Vec<String>>,
    /// Tree roots added as implied directories: a lower layer's directory
    /// there decides their mode and owner.
    implied: Vec<String>,
}

/// Plans the entries `section` names for `platform`, reading and hashing
/// host files (through `hashes`, so unchanged files are not read again).
///
/// With `late`, the files of a tree none of whose files the stat cache
/// knows, and whose shape (its paths and their kinds, see `walk.rs`) no
/// planning with this store has seen, are not read: the layer writer
/// hashes each as it copies it ([`Content::Unhashed`]), so a first build
/// reads every file once, not twice. Their layer's key is known only
/// then, which is no loss: no layer in the store can have been built
/// from those paths. A tree of a shape seen before (a fresh or moved
/// checkout, an edit of its files) is hashed first, since its layer may
/// be in the cache, or its rebuild take up the unchanged part and find
/// every unchanged chunk; so is a tree of which the stat cache knows some
/// files.
pub fn plan_local(
    recipe: &Recipe,
    section: &LayerSection,
    hashes: &StatCache,
    platform: &Platform,
    late: bool,
) -> Result<LocalLayer> {
    let mut b = LayerBuilder {
        recipe,
        platform,
        hashes,
        late,
        entries: BTreeMap::new(),
        links: HashMap::new(),
        implied: Vec::new(),
    };
    b.dirs(section)?;
    b.contents(section)?;
    b.symlinks(section)?;
    b.files(section)?;
    b.trees(section)?;
    Ok(LocalLayer {
        name: section.name.clone(),
        entries: b.entries,
        links: b.links,
        implied: b.implied,
    })
}

impl LocalLayer {
    /// The host files the layer copies, by content.
    pub fn host_files(&self) -> impl Iterator<Item = (&Path, &Digest)> {
        self.entries.values().filter_map(|(e, _)| match &e.kind {
            EntryKind::File {
                content: Content::Host(path, _),
                digest,
                ..
            } => Some((path.as_path(), digest)),
            _ => None,
        })
    }

    /// The whole layer: these entries over the packages' (a path the recipe
    /// names wins over the package's: that is how recipes override a
    /// config), later links to one host inode as tar hard links, and the
    /// missing parent directories.
    ///
    /// `below` holds the directories of the layers underneath (the base's
    /// and this recipe's earlier layers): a parent directory this layer must
    /// include keeps the mode and owner it has there, so that adding
    /// `/tmp/x` does not reset `/tmp`'s 1777.
    pub fn finish(
        self,
        below: &DirMap,
        packages: BTreeMap<String, (Entry, String)>,
        compression: crate::recipe::Compression,
        mtime: u64,
    ) -> LayerPlan {
        // Changed in place, not copied (a big tree has tens of thousands of
        // entries).
        let mut entries = self.entries;
        for root in &self.implied {
            if let Some(m) = below.get(root) {
                entries.get_mut(root).expect("implied roots are entries").0 = m.entry(root);
            }
        }
        for (path, (entry, _)) in packages {
            entries.entry(path).or_insert((entry, 0..0));
        }
        let (late_links, planned) = hard_links(&self.links, &mut entries);
        add_parents(&mut entries, below);
        let mut plan = LayerPlan::new(
            self.name,
            entries.into_values().map(|(e, _)| e).collect(),
            compression,
            mtime,
        );
        plan.late_links = late_links;
        // Entries come sorted by path bytes, as the map kept them.
        for (path, digest) in planned {
            if let Ok(i) = plan
                .entries
                .binary_search_by(|e| e.path.as_bytes().cmp(path.as_bytes()))
            {
                plan.read_early.push((i, digest));
            }
        }
        plan
    }
}

/// A regular file's entry: its mode from the recipe, else 0755 or 0644 by
/// the host file's executable bit; its owner from the recipe, else root.
#[allow(clippy::too_many_arguments)]
fn file_entry(
    path: String,
    content: Content,
    size: u64,
    digest: Digest,
    meta: &walk::Meta,
    mode: Option<Mode>,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Entry {
    let executable = meta.mode & 0o111 != 0;
    Entry {
        path,
        kind: EntryKind::File {
            content,
            size,
            digest,
        },
        mode: mode_or(mode, if executable { 0o755 } else { 0o644 }),
        uid: uid.unwrap_or(0),
        gid: gid.unwrap_or(0),
    }
}

/// Turns later links to one host inode into tar hard links. Returns the
/// links left unhashed, with the entry they now link to: their provenance
/// takes its digest once the layer writer has it; and the digests planning
/// took of links made tar hard links to an entry it left unhashed, by that
/// entry's path: the layer writer must find the same there
/// ([`LayerPlan::read_early`]), or the link's path would hold other bytes
/// than its provenance names.
fn hard_links(
    links: &HashMap<LinkKey, Vec<String>>,
    entries: &mut Entries,
) -> (LateLinks, Vec<(String, Digest)>) {
    let (mut late, mut planned) = (Vec::new(), Vec::new());
    for paths in links.values() {
        let mut paths = paths.clone();
        paths.sort();
        let first = &paths[0];
        let (first_digest, first_late) = match &entries[first.as_str()].0.kind {
            EntryKind::File {
                digest, content, ..
            } => (digest.clone(), matches!(content, Content::Unhashed(..))),
            _ => continue,
        };
        for other in &paths[1..] {
            let (entry, _) = entries
                .get_mut(other.as_str())
                .expect("linked paths are entries");
            let EntryKind::File {
                digest, content, ..
            } = &entry.kind
            else {
                continue;
            };
            // One inode is one file: one not hashed yet holds what the
            // other link does (hashing both first would say the same).
            let unhashed = match content {
                Content::Unhashed(host, _) => Some(host.clone()),
                _ => None,
            };
            if first_late || unhashed.is_some() || *digest == first_digest {
                if first_late && unhashed.is_none() {
                    planned.push((first.clone(), digest.clone()));
                }
                late.extend(unhashed.map(|host| (first.clone(), host)));
                entry.kind = EntryKind::HardLink {
                    target: first.clone(),
                };
            }
        }
    }
    (late, planned)
}

/// Adds the missing parent directories, as `below` has them or 0755 root.
/// Entries come in path order, so each path's ancestors are looked up only
/// up to the first one the previous path shares.
fn add_parents(entries: &mut Entries, below: &DirMap) {
    let mut parents = Vec::new();
    let mut last_parent = "";
    for path in entries.keys() {
        let Some((parent, _)) = path.rsplit_once('/') else {
            last_parent = "";
            continue;
        };
        // The previous path's parent and its ancestors were checked already.
        let mut p = parent;
        while !is_ancestor_or_same(p, last_parent) {
            if !entries.contains_key(p) {
                parents.push(p.to_string());
            }
            match p.rsplit_once('/') {
                Some((up, _)) => p = up,
                None => break,
            }
        }
        last_parent = parent;
    }
    for parent in parents {
        let meta = below.get(&parent).copied().unwrap_or(DirMeta::DEFAULT);
        let dir = meta.entry(&parent);
        entries.entry(parent).or_insert((dir, 0..0));
    }
}

/// Whether `dir` is `of` or one of its ancestors.
fn is_ancestor_or_same(dir: &str, of: &str) -> bool {
    of.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn mode_or(mode: Option<Mode>, default: u32) -> u32 {
    mode.map_or(default, |m| m.0)
}

struct LayerBuilder<'a> {
    recipe: &'a Recipe,
    platform: &'a Platform,
    hashes: &'a StatCache,
    /// Whether files of trees walked for the first time are left unhashed.
    late: bool,
    /// Explicit entries by path, with the span of the recipe item that made each.
    entries: Entries,
    /// Host files with several links, by (dev, ino, mode, uid, gid) → paths
    /// in this layer: paths share a tar hard link only if their metadata in
    /// the image is the same too.
    links: HashMap<LinkKey, Vec<String>>,
    /// Tree roots added as implied directories.
    implied: Vec<String>,
}

impl LayerBuilder<'_> {
    /// Directories (`dirs`); `/` itself needs no entry.
    fn dirs(&mut self, section: &LayerSection) -> Result<()> {
        for item in section
            .dirs
            .iter()
            .filter(|i| i.get_ref().only.applies(self.platform))
        {
            let d = item.get_ref();
            let path = d.at.clone();
            if path.is_empty() {
                continue;
            }
            let entry = Entry {
                path,
                kind: EntryKind::Dir,
                mode: mode_or(d.mode, 0o755),
                uid: d.uid.unwrap_or(0),
                gid: d.gid.unwrap_or(0),
            };
            self.insert(entry, item.span(), None)?;
        }
        Ok(())
    }

    /// Inline files (`contents`).
    fn contents(&mut self, section: &LayerSection) -> Result<()> {
        for item in section
            .contents
            .iter()
            .filter(|i| i.get_ref().only.applies(self.platform))
        {
            let c = item.get_ref();
            let bytes: Arc<[u8]> = Arc::from(c.text.as_bytes());
            let entry = Entry {
                path: c.at.clone(),
                kind: EntryKind::File {
                    size: bytes.len() as u64,
                    digest: Digest::of(&bytes),
                    content: Content::Inline(bytes),
                },
                mode: mode_or(c.mode, 0o644),
                uid: c.uid.unwrap_or(0),
                gid: c.gid.unwrap_or(0),
            };
            self.insert(entry, item.span(), None)?;
        }
        Ok(())
    }

    /// Symbolic links (`symlinks`).
    fn symlinks(&mut self, section: &LayerSection) -> Result<()> {
        for item in section
            .symlinks
            .iter()
            .filter(|i| i.get_ref().only.applies(self.platform))
        {
            let s = item.get_ref();
            let entry = Entry {
                path: s.at.clone(),
                kind: EntryKind::Symlink {
                    target: s.target.get_ref().clone(),
                },
                mode: 0o777,
                uid: s.uid.unwrap_or(0),
                gid: s.gid.unwrap_or(0),
            };
            self.insert(entry, item.span(), None)?;
        }
        Ok(())
    }

    /// Single host files (`files`); a `dest` ending in `/` takes the file's name.
    fn files(&mut self, section: &LayerSection) -> Result<()> {
        for item in section
            .files
            .iter()
            .filter(|i| i.get_ref().only.applies(self.platform))
        {
            let f = item.get_ref();
            let src = self
                .recipe
                .dir
                .join(expand_src(f.src.get_ref(), self.platform));
            let meta = fs::metadata(&src).map_err(|e| {
                self.error(&f.src, format!("cannot use `{}`", src.display()))
                    .caused_by(e)
                    .hint("check that `src` exists; it is relative to the recipe's directory")
            })?;
            if meta.is_dir() {
                return Err(self
                    .error(&f.src, format!("`{}` is a directory", src.display()))
                    .hint("use `trees = [{ src = ..., dest = ... }]` to copy a directory")
                    .into());
            }
            if !meta.is_file() {
                return Err(self
                    .error(&f.src, format!("`{}` is not a regular file", src.display()))
                    .hint("only regular files can be copied into an image")
                    .into());
            }
            let mut path = f.at.clone();
            if f.dest.get_ref().ends_with('/') || path.is_empty() {
                let base = src.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
                    self.error(&f.src, "the file name is not UTF-8")
                        .hint("give `dest` as a full path")
                })?;
                path = walk::join(&path, base);
            }
            let digest = walk::file_digest(&src, &meta, self.hashes);
            let meta = walk::Meta::from(&meta);
            let entry = self.host_file(src, &meta, digest, path, &f.src, f.mode, f.uid, f.gid)?;
            self.insert(entry, item.span(), Some(&meta))?;
        }
        Ok(())
    }

    /// Host directories (`trees`).
    fn trees(&mut self, section: &LayerSection) -> Result<()> {
        for item in section
            .trees
            .iter()
            .filter(|i| i.get_ref().only.applies(self.platform))
        {
            self.tree(item.get_ref(), item.span())?;
        }
        Ok(())
    }

    fn error(&self, at: &Spanned<String>, message: impl Into<String>) -> Diagnostic {
        self.recipe.source.error(at.span(), message)
    }

    fn insert(
        &mut self,
        entry: Entry,
        span: Range<usize>,
        meta: Option<&walk::Meta>,
    ) -> Result<()> {
        self.check_new(&entry.path, &span)?;
        self.note_links(&entry, meta);
        self.entries.insert(entry.path.clone(), (entry, span));
        Ok(())
    }

    /// Refuses a path the layer already has.
    fn check_new(&self, path: &str, span: &Range<usize>) -> Result<()> {
        if let Some((_, earlier)) = self.entries.get(path) {
            let first = self.recipe.source.error(earlier.clone(), "");
            return Err(self
                .recipe
                .source
                .error(span.clone(), format!("`/{path}` is already in this layer (from line {})", first.line))
                .hint("each path may appear once per layer: remove one, or move it to another `[[layers]]` table, where the later layer wins")
                .into());
        }
        Ok(())
    }

    /// Remembers a host file with several links, for [`hard_links`].
    fn note_links(&mut self, entry: &Entry, meta: Option<&walk::Meta>) {
        if let Some(meta) = meta {
            if meta.nlink > 1 {
                self.links
                    .entry((meta.id.0, meta.id.1, entry.mode, entry.uid, entry.gid))
                    .or_default()
                    .push(entry.path.clone());
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn host_file(
        &self,
        src: PathBuf,
        meta: &walk::Meta,
        digest: std::io::Result<(Digest, u64)>,
        path: String,
        at: &Spanned<String>,
        mode: Option<Mode>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<Entry> {
        let (digest, size) = digest.map_err(|e| {
            self.error(at, format!("cannot read `{}`", src.display()))
                .caused_by(e)
                .hint("make the file readable by the user running kiln, or leave it out")
        })?;
        if size != meta.len {
            return Err(self
                .error(
                    at,
                    format!("`{}` changed while kiln was reading it", src.display()),
                )
                .hint("run the build again once nothing is writing to the inputs")
                .into());
        }
        let content = Content::Host(src, meta.seen);
        Ok(file_entry(
            path, content, size, digest, meta, mode, uid, gid,
        ))
    }

    fn tree(&mut self, t: &TreeItem, span: Range<usize>) -> Result<()> {
        let root = self
            .recipe
            .dir
            .join(expand_src(t.src.get_ref(), self.platform));
        let meta = fs::metadata(&root).map_err(|e| {
            self.error(&t.src, format!("cannot use `{}`", root.display()))
                .caused_by(e)
                .hint("check that `src` exists; it is relative to the recipe's directory")
        })?;
        if !meta.is_dir() {
            return Err(self
                .error(&t.src, format!("`{}` is not a directory", root.display()))
                .hint("use `files = [{ src = ..., dest = ... }]` for a single file")
                .into());
        }
        let dest = t.at.clone();
        let exclude = exclude_set(&t.exclude);
        let (uid, gid) = (t.uid.unwrap_or(0), t.gid.unwrap_or(0));
        // The tree's root directory is implied, like a parent: an explicit
        // `dirs` entry or a lower layer decides its mode.
        if !dest.is_empty() && !self.entries.contains_key(&dest) {
            let dir = DirMeta {
                mode: 0o755,
                uid,
                gid,
            }
            .entry(&dest);
            self.entries.insert(dest.clone(), (dir, span.clone()));
            self.implied.push(dest.clone());
        }
        let mut symlinks = BTreeMap::new();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        let skip = |rel: &str| is_excluded(&exclude, rel);
        // Every walk marks its tree's shape, whether it may hash late or not.
        let (hashes, may) = (self.hashes, self.late);
        let first = |shape: &Digest| hashes.first_shape(shape) && may;
        let (items, failures) = walk::walk(&root, &skip, self.hashes, threads, Some(&first));
        if let Some((_, failure)) = failures.into_iter().next() {
            return Err(match failure {
                walk::Failure::NotUtf8(at) => self
                    .error(
                        &t.src,
                        format!("`{}` has a name that is not UTF-8", at.display()),
                    )
                    .hint("rename it, or add it to `exclude`"),
                walk::Failure::Unreadable(at, e) => self
                    .error(
                        &t.src,
                        format!("cannot read `{}` in the tree", at.display()),
                    )
                    .caused_by(e)
                    .hint("make it readable by the user running kiln, or add it to `exclude`"),
            }
            .into());
        }
        // Collected in path order and added in one go: much cheaper than
        // one insertion each into the layer's map.
        let mut found = Vec::with_capacity(items.len());
        for item in items {
            let path = walk::join(&dest, &item.rel);
            let (entry, meta, link) =
                self.tree_entry(t, item.found, item.path, path, (uid, gid))?;
            self.check_new(&entry.path, &span)?;
            self.note_links(&entry, meta.as_ref());
            if let Some(target) = link {
                symlinks.insert(item.rel, target);
            }
            found.push((entry.path.clone(), (entry, span.clone())));
        }
        let mut found: Entries = found.into_iter().collect();
        // The smaller map goes into the bigger one: a tree's entries are
        // usually most of the layer's, and merging two maps copies both.
        if found.len() > self.entries.len() {
            std::mem::swap(&mut found, &mut self.entries);
        }
        for (path, entry) in found {
            self.entries.insert(path, entry);
        }
        check_symlink_loops(&symlinks).map_err(|chain| {
            self.error(
                &t.src,
                format!(
                    "symlink loop in `{}`: {}",
                    root.display(),
                    chain.join(" -> ")
                ),
            )
            .hint("fix the links so that they end at a file or directory, or add them to `exclude`")
        })?;
        Ok(())
    }

    /// One entry of a tree (not its root), as the walk found it at `host`;
    /// a symlink's target is returned for the loop check.
    fn tree_entry(
        &self,
        t: &TreeItem,
        found: std::io::Result<(Option<walk::Meta>, walk::Found)>,
        host: PathBuf,
        path: String,
        (uid, gid): (u32, u32),
    ) -> Result<(Entry, Option<walk::Meta>, Option<String>)> {
        let mut link = None;
        let (meta, found) = found.map_err(|e| {
            self.error(&t.src, format!("cannot read `{}`", host.display()))
                .caused_by(e)
                .hint("make it readable by the user running kiln, or add it to `exclude`")
        })?;
        // The walk gives the metadata of every entry but directories and
        // symlinks.
        let file_meta = |meta: Option<walk::Meta>| meta.expect("the walk stats files");
        let entry = match found {
            walk::Found::Dir => Entry {
                path,
                kind: EntryKind::Dir,
                mode: 0o755,
                uid,
                gid,
            },
            walk::Found::Symlink(target) => {
                let target = target.map_err(|e| {
                    self.error(&t.src, format!("cannot read link `{}`", host.display()))
                        .caused_by(e)
                })?;
                let target = target.to_str().ok_or_else(|| {
                    self.error(
                        &t.src,
                        format!("link `{}` has a target that is not UTF-8", host.display()),
                    )
                    .hint("add it to `exclude`")
                })?;
                link = Some(target.to_string());
                Entry {
                    path,
                    kind: EntryKind::Symlink {
                        target: target.to_string(),
                    },
                    mode: 0o777,
                    uid,
                    gid,
                }
            }
            walk::Found::File(digest) => {
                let meta = file_meta(meta);
                let entry = self.host_file(
                    host,
                    &meta,
                    digest,
                    path,
                    &t.src,
                    t.mode,
                    Some(uid),
                    Some(gid),
                )?;
                return Ok((entry, Some(meta), None));
            }
            walk::Found::Unhashed => {
                let meta = file_meta(meta);
                // The digest is not known yet: see `Content::Unhashed`.
                let content = Content::Unhashed(host, meta.id);
                let placeholder = Digest::of(b"");
                let (mode, uid, gid) = (t.mode, Some(uid), Some(gid));
                let entry = file_entry(path, content, meta.len, placeholder, &meta, mode, uid, gid);
                return Ok((entry, Some(meta), None));
            }
            walk::Found::Other => {
                return Err(self
                    .error(
                        &t.src,
                        format!("`{}` is a device, socket or fifo", host.display()),
                    )
                    .hint("images hold only files, directories and links: add it to `exclude`")
                    .into())
            }
        };
        Ok((entry, None, link))
    }
}

fn exclude_set(globs: &[Spanned<String>]) -> (GlobSet, GlobSet) {
    // Globs without `/` match a name at any depth; others match the whole relative path.
    let mut names = GlobSetBuilder::new();
    let mut paths = GlobSetBuilder::new();
    for g in globs {
        let text = g.get_ref().trim_end_matches('/');
        let glob = Glob::new(text).expect("exclude globs are checked when the recipe is parsed");
        if text.contains('/') {
            paths.add(glob);
        } else {
            names.add(glob);
        }
    }
    (
        names.build().expect("valid globs build"),
        paths.build().expect("valid globs build"),
    )
}

fn is_excluded((names, paths): &(GlobSet, GlobSet), rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    names.is_match(name) || paths.is_match(rel)
}

/// Follows every relative link inside the tree; returns the chain of the first loop found.
fn check_symlink_loops(links: &BTreeMap<String, String>) -> Result<(), Vec<String>> {
    for start in links.keys() {
        let mut chain = vec![start.clone()];
        let mut current = start.clone();
        while let Some(target) = links.get(&current) {
            let Some(next) = resolve_within(&current, target) else {
                break;
            };
            if chain.contains(&next) {
                chain.push(next);
                return Err(chain);
            }
            if chain.len() > 40 {
                return Err(chain);
            }
            chain.push(next.clone());
            current = next;
        }
    }
    Ok(())
}

/// Where a relative link at `link` points, as a path relative to the tree root;
/// `None` for absolute targets and targets outside the tree.
fn resolve_within(link: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_every_missing_parent_once() {
        let file = |p: &str| Entry {
            path: p.to_string(),
            kind: EntryKind::Symlink { target: "t".into() },
            mode: 0o777,
            uid: 0,
            gid: 0,
        };
        // `a-b` sorts between `a` and `a/…`; `q/r` is present, its parent not.
        let paths = [
            "a/b/c/d", "a-b/x", "a/b/e", "a/z/y/w", "q/r", "q/r/s", "top",
        ];
        let mut entries: Entries = paths
            .iter()
            .map(|p| (p.to_string(), (file(p), 0..0)))
            .collect();
        add_parents(&mut entries, &DirMap::new());
        let dirs: Vec<&str> = entries
            .iter()
            .filter(|(_, (e, _))| matches!(e.kind, EntryKind::Dir))
            .map(|(p, _)| p.as_str())
            .collect();
        assert_eq!(dirs, ["a", "a-b", "a/b", "a/b/c", "a/z", "a/z/y", "q"]);
    }

    #[test]
    fn finds_loops_and_lets_chains_end() {
        let mut links = BTreeMap::new();
        links.insert("a".to_string(), "b".to_string());
        links.insert("b".to_string(), "sub/../a".to_string());
        assert!(check_symlink_loops(&links).is_err());
        let mut ok = BTreeMap::new();
        ok.insert("x".to_string(), "y".to_string());
        ok.insert("up".to_string(), "../../outside".to_string());
        ok.insert("abs".to_string(), "/abs".to_string());
        assert!(check_symlink_loops(&ok).is_ok());
        let mut selfloop = BTreeMap::new();
        selfloop.insert("d/s".to_string(), "./s".to_string());
        assert!(check_symlink_loops(&selfloop).is_err());
    }
}
