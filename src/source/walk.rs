//! A parallel walk of one host tree: every entry's metadata, and every
//! regular file's digest (from the stat cache, or read and hashed).
//!
//! Directories are read on several threads, and each entry is examined
//! through its directory's descriptor (`statx` relative to it), not by
//! looking its whole path up again. What the walk finds is handed back
//! sorted by path, with any error in its place, so the caller meets entries
//! (and the first error) in the same order whatever the threads did.

use std::fs::{self, FileType, Metadata};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use crate::digest::{digest_reader, Digest};
use crate::store::stat_cache::StatCache;

/// What one entry of the tree is.
#[derive(Debug)]
pub enum Found {
    /// A directory.
    Dir,
    /// A regular file: its digest and the size read (which the caller
    /// checks against the metadata's).
    File(io::Result<(Digest, u64)>),
    /// A symbolic link and its target.
    Symlink(io::Result<PathBuf>),
    /// A device, socket or fifo.
    Other,
}

/// What planning needs of an entry's metadata (a whole `Metadata` is
/// several times bigger, and a big tree has tens of thousands of entries).
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    /// Size in bytes.
    pub len: u64,
    /// Mode bits, file type included.
    pub mode: u32,
    /// Number of hard links.
    pub nlink: u64,
    /// Device and inode.
    pub id: (u64, u64),
    /// As the layer writer will look for it (regular files).
    pub seen: Option<crate::plan::Seen>,
}

impl From<&Metadata> for Meta {
    fn from(m: &Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Meta {
            len: m.len(),
            mode: m.mode(),
            nlink: m.nlink(),
            id: (m.dev(), m.ino()),
            seen: if m.is_file() {
                crate::plan::Seen::of(m)
            } else {
                None
            },
        }
    }
}

/// One entry of the tree, not its root.
#[derive(Debug)]
pub struct Item {
    /// Path relative to the root, `/`-separated.
    pub rel: String,
    /// Path on the host.
    pub path: PathBuf,
    /// What it is, or why it could not be examined.
    pub found: io::Result<(Meta, Found)>,
}

/// Why the walk could not go on at some path.
#[derive(Debug)]
pub enum Failure {
    /// A name that is not UTF-8.
    NotUtf8(PathBuf),
    /// A directory that could not be read.
    Unreadable(PathBuf, io::Error),
}

/// Walks `root` (which must be a directory) on up to `threads` threads,
/// leaving out every relative path `skip` says to (and what is under it),
/// hashing regular files through `hashes`. Items come back sorted by
/// their relative path's bytes; failures (sorted too) stop nothing else.
pub fn walk(
    root: &Path,
    skip: &(dyn Fn(&str) -> bool + Sync),
    hashes: &StatCache,
    threads: usize,
) -> (Vec<Item>, Vec<(String, Failure)>) {
    let shared = Shared {
        state: Mutex::new(State {
            queue: vec![(root.to_path_buf(), String::new())],
            busy: 0,
            items: Vec::new(),
            failures: Vec::new(),
        }),
        wake: Condvar::new(),
    };
    std::thread::scope(|s| {
        for _ in 1..threads.max(1) {
            s.spawn(|| shared.work(skip, hashes));
        }
        shared.work(skip, hashes);
    });
    let state = shared.state.into_inner().expect("no panics hold this lock");
    let (mut items, mut failures) = (state.items, state.failures);
    // Sorted through indices: an item is too big to move about cheaply.
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_unstable_by(|&a, &b| items[a].rel.as_bytes().cmp(items[b].rel.as_bytes()));
    let mut slots: Vec<Option<Item>> = items.into_iter().map(Some).collect();
    items = order
        .into_iter()
        .map(|i| slots[i].take().expect("each index comes once"))
        .collect();
    failures.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    (items, failures)
}

struct State {
    /// Directories still to read: host path and relative path.
    queue: Vec<(PathBuf, String)>,
    /// Threads reading a directory now.
    busy: usize,
    items: Vec<Item>,
    failures: Vec<(String, Failure)>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn work(&self, skip: &(dyn Fn(&str) -> bool + Sync), hashes: &StatCache) {
        let mut state = self.state.lock().expect("no panics hold this lock");
        loop {
            let Some((dir, rel)) = state.queue.pop() else {
                if state.busy == 0 {
                    self.wake.notify_all();
                    return;
                }
                state = self.wake.wait(state).expect("no panics hold this lock");
                continue;
            };
            state.busy += 1;
            drop(state);
            let (items, dirs, failures) = read_one(&dir, &rel, skip, hashes);
            state = self.state.lock().expect("no panics hold this lock");
            state.busy -= 1;
            state.items.extend(items);
            state.failures.extend(failures);
            if !dirs.is_empty() {
                state.queue.extend(dirs);
                self.wake.notify_all();
            }
        }
    }
}

type DirResult = (Vec<Item>, Vec<(PathBuf, String)>, Vec<(String, Failure)>);

/// Reads one directory: its entries, the directories under it to read next.
fn read_one(
    dir: &Path,
    rel: &str,
    skip: &(dyn Fn(&str) -> bool + Sync),
    hashes: &StatCache,
) -> DirResult {
    let (mut items, mut dirs, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            failures.push((rel.to_string(), Failure::Unreadable(dir.to_path_buf(), e)));
            return (items, dirs, failures);
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                failures.push((rel.to_string(), Failure::Unreadable(dir.to_path_buf(), e)));
                break;
            }
        };
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            let at = if rel.is_empty() {
                "\u{1}".to_string()
            } else {
                format!("{rel}/\u{1}")
            };
            failures.push((at, Failure::NotUtf8(path)));
            continue;
        };
        let rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if skip(&rel) {
            continue;
        }
        let found = entry
            .file_type()
            .and_then(|ft| Ok((ft, entry.metadata()?)))
            .map(|(ft, meta)| {
                let found = examine(ft, &meta, &path, hashes);
                (Meta::from(&meta), found)
            });
        if let Ok((_, Found::Dir)) = &found {
            dirs.push((path.clone(), rel.clone()));
        }
        items.push(Item { rel, path, found });
    }
    (items, dirs, failures)
}

fn examine(ft: FileType, meta: &Metadata, path: &Path, hashes: &StatCache) -> Found {
    if ft.is_dir() {
        Found::Dir
    } else if ft.is_symlink() {
        Found::Symlink(fs::read_link(path))
    } else if ft.is_file() {
        Found::File(file_digest(path, meta, hashes))
    } else {
        Found::Other
    }
}

/// The digest and size of the regular file at `path`, which `meta`
/// describes: from `hashes` when it knows the file unchanged, otherwise
/// read, hashed and recorded there.
pub fn file_digest(path: &Path, meta: &Metadata, hashes: &StatCache) -> io::Result<(Digest, u64)> {
    if let Some(digest) = hashes.get(meta) {
        return Ok((digest, meta.len()));
    }
    let (digest, size) = digest_reader(fs::File::open(path)?)?;
    if size == meta.len() {
        hashes.put(meta, &digest);
    }
    Ok((digest, size))
}
