//! A parallel walk of one host tree: every entry's metadata, and every
//! regular file's digest (from the stat cache, or read and hashed).
//!
//! Directories are read on several threads, and each entry is examined
//! through its directory's descriptor (`statx` relative to it), not by
//! looking its whole path up again. A regular file the stat cache does not
//! know is not hashed by the thread that found it but queued, so that every
//! thread hashes, whatever the shape of the tree (one directory of many
//! files, or a few big files beside the directories): directories are read
//! first, then the biggest file waiting is hashed first, opened by its
//! whole path. A file with several hard links is read once: its other
//! links take the digest the first one got. What the walk finds is handed
//! back sorted by path, with any error in its place, so the caller meets
//! entries (and the first error) in the same order whatever the threads
//! did.
//!
//! A file is hashed some time after it was listed (the whole tree is
//! listed first), so a file written to meanwhile is more likely to be
//! refused as changed while kiln was reading it (its size no longer the
//! listed one) or gone.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::digest::{digest_reader, Digest};
use crate::store::stat_cache::{FileStamp, StatCache};

/// What one entry of the tree is.
#[derive(Debug)]
pub enum Found {
    /// A directory.
    Dir,
    /// A regular file: its digest and the size read (which the caller
    /// checks against the metadata's).
    File(io::Result<(Digest, u64)>),
    /// A regular file the stat cache does not know, left unread (a walk
    /// that hashes late, see [`walk`]).
    Unhashed,
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

impl Meta {
    /// What a `statx` of a file gave, as [`Meta::from`] takes it from a
    /// `Metadata`; `id` is its device and inode ([`FileStamp::of_statx`]).
    fn of_statx(st: &rustix::fs::Statx, id: (u64, u64)) -> Meta {
        let file = rustix::fs::FileType::from_raw_mode(st.stx_mode.into())
            == rustix::fs::FileType::RegularFile;
        Meta {
            len: st.stx_size,
            mode: st.stx_mode.into(),
            nlink: st.stx_nlink.into(),
            id,
            seen: if file {
                crate::plan::Seen::at(st.stx_ino, st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec.into())
            } else {
                None
            },
        }
    }
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
    /// What it is, or why it could not be examined, with its metadata:
    /// none for a directory or a symlink, whose mode and owner in the
    /// image the recipe decides (so the walk does not ask for it: one
    /// system call less per directory).
    pub found: io::Result<(Option<Meta>, Found)>,
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
///
/// With `late`, nothing is hashed until the whole tree is listed. Then, if
/// the stat cache knew none of its files, `late` is asked about the tree's
/// shape (see `shape`); if it says so, the files under [`LATE_MAX`] are left
/// unread ([`Found::Unhashed`]).
pub fn walk(
    root: &Path,
    skip: &(dyn Fn(&str) -> bool + Sync),
    hashes: &StatCache,
    threads: usize,
    late: Option<&(dyn Fn(&Digest) -> bool + Sync)>,
) -> (Vec<Item>, Vec<(String, Failure)>) {
    let shared = Shared {
        state: Mutex::new(State {
            dirs: vec![(root.to_path_buf(), String::new())],
            files: std::collections::BinaryHeap::new(),
            links: HashMap::new(),
            busy: 0,
            waiting: 0,
            items: Vec::new(),
            failures: Vec::new(),
            listing: late.is_some(),
            mark_after: false,
        }),
        wake: Condvar::new(),
    };
    std::thread::scope(|s| {
        for _ in 1..threads.max(1) {
            s.spawn(|| shared.work(skip, hashes, late));
        }
        shared.work(skip, hashes, late);
    });
    let state = shared.state.into_inner().expect("no panics hold this lock");
    let mark_after = state.mark_after;
    let (mut items, mut failures) = (state.items, state.failures);
    // Sorted through indices: an item is too big to move about cheaply.
    let order = sorted_order(&items, threads);
    permute(&mut items, order);
    failures.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    // A tree that could not be late is marked now, from its sorted items:
    // no second sort, and off the listing's barrier.
    if let Some(decide) = late.filter(|_| mark_after) {
        decide(&shape_of(items.iter().map(|i| (i.rel.as_str(), kind(i)))));
    }
    (items, failures)
}

/// Where each of `items` goes, sorted by relative path (`order[i]` is the
/// item for place `i`): each half of their paths sorted on a thread of its
/// own, then merged, and compared from a vector of their own rather than
/// through the items, which are far apart in memory.
fn sorted_order(items: &[Item], threads: usize) -> Vec<usize> {
    let mut keys: Vec<(&[u8], usize)> = items
        .iter()
        .enumerate()
        .map(|(i, item)| (item.rel.as_bytes(), i))
        .collect();
    if threads < 2 || keys.len() < 8192 {
        keys.sort_unstable();
        return keys.into_iter().map(|(_, i)| i).collect();
    }
    let (low, high) = keys.split_at_mut(items.len() / 2);
    std::thread::scope(|s| {
        s.spawn(|| low.sort_unstable());
        high.sort_unstable();
    });
    let (mut low, mut high) = (low.iter().peekable(), high.iter().peekable());
    let mut order = Vec::with_capacity(items.len());
    loop {
        let next = match (low.peek(), high.peek()) {
            (Some(a), Some(b)) if a <= b => low.next(),
            (Some(_), Some(_)) => high.next(),
            (Some(_), None) => low.next(),
            (None, Some(_)) => high.next(),
            (None, None) => return order,
        };
        order.extend(next.map(|(_, i)| *i));
    }
}

/// Puts `items` in `order` (item `order[i]` goes to place `i`) where they
/// are, one swap per item out of place: a big tree's items are tens of
/// MiB, and a second vector of them costs more in fresh memory than in the
/// moves.
fn permute<T>(items: &mut [T], mut order: Vec<usize>) {
    for start in 0..items.len() {
        let mut at = start;
        // Each cycle of the permutation once; a place done points at itself.
        while order[at] != at {
            let from = std::mem::replace(&mut order[at], at);
            if from == start {
                break;
            }
            items.swap(at, from);
            at = from;
        }
    }
}

struct State {
    /// Directories still to read: host path and relative path.
    dirs: Vec<(PathBuf, String)>,
    /// Regular files still to hash, the biggest on top.
    files: std::collections::BinaryHeap<Biggest>,
    /// Files with other hard links, by device and inode: the links waiting
    /// for the one being hashed, or what hashing it gave. Each inode is
    /// read once, whichever threads list its links.
    links: HashMap<(u64, u64), Links>,
    /// Threads reading a directory or hashing a file now.
    busy: usize,
    /// Threads waiting for work: the others wake them only then (a wake
    /// is a system call, and a big tree has tens of thousands of
    /// directories).
    waiting: usize,
    items: Vec<Item>,
    failures: Vec<(String, Failure)>,
    /// Listing only: files wait until the whole tree is listed (a walk
    /// that may hash late).
    listing: bool,
    /// The tree could not be late (the stat cache knew some of its files,
    /// or it has none): its shape is marked once the walk is done.
    mark_after: bool,
}

/// The other links of a file with several.
enum Links {
    /// One link is queued or being hashed; these wait for it.
    Waiting(Vec<Pending>),
    /// What hashing it gave (the error as its kind and text: an
    /// `io::Error` does not copy).
    Hashed(std::result::Result<(Digest, u64), (io::ErrorKind, String)>),
}

impl State {
    /// Once the tree is listed: whether to leave its files unread, which
    /// only a tree none of whose files the stat cache knew may be. Every
    /// tree's shape is marked, whatever the answer: a tree planned with
    /// files the stat cache knew (one a file was added to or removed from)
    /// may have its layer stored, and a fresh copy of it must be hashed
    /// first to find it there. Such a tree is marked once the walk is done
    /// ([`State::mark_after`]), so that its hashing need not wait for it.
    fn late(&mut self, decide: &(dyn Fn(&Digest) -> bool + Sync)) -> bool {
        let known = self
            .items
            .iter()
            .any(|i| matches!(i.found, Ok((_, Found::File(_)))));
        if known || self.files.is_empty() {
            self.mark_after = true;
            return false;
        }
        let waiting = self.links.values().flat_map(|l| match l {
            Links::Waiting(others) => others.as_slice(),
            Links::Hashed(_) => &[],
        });
        let files = self.files.iter().map(|b| &b.0).chain(waiting);
        decide(&shape(&self.items, files))
    }

    /// Leaves every file under [`LATE_MAX`] waiting to be hashed unread;
    /// the bigger ones are hashed as usual.
    fn leave_unread(&mut self) {
        let (small, big): (Vec<_>, Vec<_>) = std::mem::take(&mut self.files)
            .into_iter()
            .partition(|b| b.0.meta.len < LATE_MAX);
        self.files = big.into_iter().collect();
        let mut unread: Vec<Pending> = small.into_iter().map(|b| b.0).collect();
        // Every link of one inode has its size: they wait for a big one.
        self.links.retain(|_, l| match l {
            Links::Waiting(others) if others.first().is_some_and(|f| f.meta.len < LATE_MAX) => {
                unread.append(others);
                false
            }
            _ => true,
        });
        let unread = unread.into_iter().map(|f| f.item(Found::Unhashed));
        self.items.extend(unread);
    }

    /// Takes in the files a directory listed: queued to be hashed, or,
    /// for another link of a file already queued, set beside it.
    fn add_files(&mut self, files: Vec<Pending>) {
        for file in files {
            if file.meta.nlink < 2 {
                self.files.push(Biggest(file));
                continue;
            }
            match self.links.entry(file.meta.id) {
                Entry::Vacant(v) => {
                    v.insert(Links::Waiting(Vec::new()));
                    self.files.push(Biggest(file));
                }
                Entry::Occupied(mut o) => match o.get_mut() {
                    Links::Waiting(others) => others.push(file),
                    Links::Hashed(done) => {
                        let found = Found::File(copy(done));
                        self.items.push(file.item(found));
                    }
                },
            }
        }
    }

    /// Takes in a file just hashed, and the other links that waited for it.
    fn add_hashed(&mut self, file: Pending, hashed: io::Result<(Digest, u64)>) {
        if file.meta.nlink > 1 {
            let done = hashed
                .as_ref()
                .map(|d| d.clone())
                .map_err(|e| (e.kind(), e.to_string()));
            let waiting = self.links.insert(file.meta.id, Links::Hashed(done.clone()));
            if let Some(Links::Waiting(others)) = waiting {
                for other in others {
                    let found = Found::File(copy(&done));
                    self.items.push(other.item(found));
                }
            }
        }
        self.items.push(file.item(Found::File(hashed)));
    }
}

/// A hash result for another link of the same file.
fn copy(
    done: &std::result::Result<(Digest, u64), (io::ErrorKind, String)>,
) -> io::Result<(Digest, u64)> {
    done.clone()
        .map_err(|(kind, text)| io::Error::new(kind, text))
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// A regular file the stat cache did not know, waiting to be hashed: what
/// planning keeps of its metadata, and what the stat cache records it by.
struct Pending {
    rel: String,
    path: PathBuf,
    meta: Meta,
    stamp: FileStamp,
}

impl Pending {
    /// Reads and hashes the file. The stat cache records the digest when
    /// the size read is the one listed and the file has not changed for
    /// two seconds ([`StatCache::put_stamp`]).
    fn hash(&self, hashes: &StatCache) -> io::Result<(Digest, u64)> {
        hash_file(&self.path, &self.stamp, self.meta.len, hashes)
    }

    fn item(self, found: Found) -> Item {
        Item {
            rel: self.rel,
            path: self.path,
            found: Ok((Some(self.meta), found)),
        }
    }
}

/// A [`Pending`] file ordered by its size alone, for the heap: hashing the
/// biggest files first leaves small ones to even out the threads' ends.
struct Biggest(Pending);

impl PartialEq for Biggest {
    fn eq(&self, other: &Self) -> bool {
        self.0.meta.len == other.0.meta.len
    }
}
impl Eq for Biggest {}
impl PartialOrd for Biggest {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Biggest {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.meta.len.cmp(&other.0.meta.len)
    }
}

/// What a thread of the walk does next.
enum Job {
    Dir(PathBuf, String),
    File(Pending),
}

impl Shared {
    /// Waits for another thread to make work or finish the walk.
    fn wait<'a>(&self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        state.waiting += 1;
        let mut state = self.wake.wait(state).expect("no panics hold this lock");
        state.waiting -= 1;
        state
    }

    /// Wakes the threads waiting, if any: `state` is the lock's guard.
    fn wake_all(&self, state: &State) {
        if state.waiting > 0 {
            self.wake.notify_all();
        }
    }

    fn work(
        &self,
        skip: &(dyn Fn(&str) -> bool + Sync),
        hashes: &StatCache,
        late: Option<&(dyn Fn(&Digest) -> bool + Sync)>,
    ) {
        // What `getdents64` fills, kept for every directory this thread reads.
        let mut listing = Vec::with_capacity(LISTING);
        let mut state = self.state.lock().expect("no panics hold this lock");
        loop {
            // Directories first: they make work for every thread.
            let job = match state.dirs.pop() {
                Some((dir, rel)) => Job::Dir(dir, rel),
                // The tree is listed: hash now, or leave the files unread.
                None if state.listing && state.busy == 0 => {
                    state.listing = false;
                    if late.is_some_and(|decide| state.late(decide)) {
                        state.leave_unread();
                    }
                    self.wake_all(&state);
                    continue;
                }
                None if state.listing => {
                    state = self.wait(state);
                    continue;
                }
                None => match state.files.pop() {
                    Some(Biggest(file)) => Job::File(file),
                    None if state.busy == 0 => {
                        self.wake_all(&state);
                        return;
                    }
                    None => {
                        state = self.wait(state);
                        continue;
                    }
                },
            };
            state.busy += 1;
            drop(state);
            match job {
                Job::Dir(dir, rel) => {
                    let (items, dirs, files, failures) =
                        read_one(&dir, &rel, skip, hashes, &mut listing);
                    state = self.state.lock().expect("no panics hold this lock");
                    state.items.extend(items);
                    state.failures.extend(failures);
                    if !dirs.is_empty() || !files.is_empty() {
                        state.dirs.extend(dirs);
                        state.add_files(files);
                        self.wake_all(&state);
                    }
                }
                Job::File(file) => {
                    let hashed = file.hash(hashes);
                    state = self.state.lock().expect("no panics hold this lock");
                    state.add_hashed(file, hashed);
                }
            }
            state.busy -= 1;
        }
    }
}

type DirResult = (
    Vec<Item>,
    Vec<(PathBuf, String)>,
    Vec<Pending>,
    Vec<(String, Failure)>,
);

/// `dir/name`, or `name` in the root (`dir` empty).
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        return name.to_string();
    }
    // Not `format!`: a big tree joins tens of thousands of paths.
    let mut path = String::with_capacity(dir.len() + 1 + name.len());
    path.push_str(dir);
    path.push('/');
    path.push_str(name);
    path
}

/// Bytes of directory entries one `getdents64` call may fill.
const LISTING: usize = 32 << 10;

/// Reads one directory: its entries, the directories under it to read next,
/// the files in it to hash. Read with `getdents64` into `listing` and each
/// entry stat'ed from the directory's descriptor: `std::fs::read_dir` goes
/// through `opendir`, which stats every directory once more.
fn read_one(
    dir: &Path,
    rel: &str,
    skip: &(dyn Fn(&str) -> bool + Sync),
    hashes: &StatCache,
    listing: &mut Vec<u8>,
) -> DirResult {
    use rustix::fs::{AtFlags, FileType as Type, OFlags, StatxFlags};
    use std::os::unix::ffi::OsStrExt;
    let (mut items, mut dirs, mut files, mut failures) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(dir, flags, rustix::fs::Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            failures.push((
                rel.to_string(),
                Failure::Unreadable(dir.to_path_buf(), e.into()),
            ));
            return (items, dirs, files, failures);
        }
    };
    listing.clear();
    let mut entries = rustix::fs::RawDir::new(&fd, listing.spare_capacity_mut());
    while let Some(entry) = entries.next() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                failures.push((
                    rel.to_string(),
                    Failure::Unreadable(dir.to_path_buf(), e.into()),
                ));
                break;
            }
        };
        let c_name = entry.file_name();
        let bytes = c_name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let path = dir.join(std::ffi::OsStr::from_bytes(bytes));
        let Ok(name) = std::str::from_utf8(bytes) else {
            let at = if rel.is_empty() {
                "\u{1}".to_string()
            } else {
                format!("{rel}/\u{1}")
            };
            failures.push((at, Failure::NotUtf8(path)));
            continue;
        };
        let rel = join(rel, name);
        if skip(&rel) {
            continue;
        }
        // The type as the directory lists it; a directory or a symlink is
        // not stat'ed (the recipe decides its mode and owner), anything
        // else, or an entry whose type the file system does not list, is.
        let found = match entry.file_type() {
            listed @ (Type::Directory | Type::Symlink) => Ok((None, examine(listed, &path))),
            _ => match rustix::fs::statx(
                &fd,
                c_name,
                AtFlags::SYMLINK_NOFOLLOW,
                StatxFlags::BASIC_STATS,
            ) {
                // What the file is now decides, not what was listed.
                Ok(st) => match Type::from_raw_mode(st.stx_mode.into()) {
                    Type::RegularFile => {
                        let stamp = FileStamp::of_statx(&st);
                        let meta = Meta::of_statx(&st, stamp.id());
                        match hashes.get_stamp(&stamp) {
                            Some(digest) => Ok((Some(meta), Found::File(Ok((digest, meta.len))))),
                            None => {
                                files.push(Pending {
                                    rel,
                                    path,
                                    meta,
                                    stamp,
                                });
                                continue;
                            }
                        }
                    }
                    now @ (Type::Directory | Type::Symlink) => Ok((None, examine(now, &path))),
                    other => {
                        let meta = Meta::of_statx(&st, FileStamp::of_statx(&st).id());
                        Ok((Some(meta), examine(other, &path)))
                    }
                },
                Err(e) => Err(e.into()),
            },
        };
        if let Ok((_, Found::Dir)) = &found {
            dirs.push((path.clone(), rel.clone()));
        }
        items.push(Item { rel, path, found });
    }
    (items, dirs, files, failures)
}

/// The size from which a file is hashed while planning even in a walk that
/// leaves files unread: the gzip writer cuts a file's content every 1 MiB
/// (`layer::pgzip::CHUNK`), and a chunk that ends inside a file is looked
/// up in the chunk cache by the file's digest, which it must have by then.
/// Files under it never end a chunk inside their content, and a layer of
/// small files is where reading twice cost most.
pub const LATE_MAX: u64 = 1 << 20;

/// A tree's shape: every entry's relative path and kind, nothing else.
/// What a fresh or moved checkout of the same files has in common with the
/// last one, and what an edit of the files keeps: those are hashed first,
/// for their layer may be cached, or its rebuild take up the unchanged
/// part. Only a tree with a new path (a new tree, a file added or removed)
/// has a new shape.
fn shape<'a>(items: &[Item], files: impl Iterator<Item = &'a Pending>) -> Digest {
    let mut lines: Vec<(&str, &str)> = items
        .iter()
        .map(|i| (i.rel.as_str(), kind(i)))
        .chain(files.map(|f| (f.rel.as_str(), "f")))
        .collect();
    lines.sort_unstable();
    shape_of(lines.into_iter())
}

/// What an item is, for [`shape`].
fn kind(i: &Item) -> &'static str {
    match &i.found {
        Ok((_, Found::Dir)) => "d",
        Ok((_, Found::Symlink(_))) => "l",
        Ok((_, Found::File(_) | Found::Unhashed)) => "f",
        Ok((_, Found::Other)) => "o",
        Err(_) => "?",
    }
}

/// The shape of a tree whose sorted relative paths and kinds are `lines`:
/// each field as its length (8 bytes, little-endian) and its bytes, one
/// SHA-256 over them all.
fn shape_of<'a>(lines: impl Iterator<Item = (&'a str, &'a str)>) -> Digest {
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    // Hashed 64 KiB at a time: one update per line cost more than the
    // hashing (a big tree has tens of thousands of lines).
    let mut text = Vec::with_capacity(80 << 10);
    for (rel, what) in lines {
        for field in [rel.as_bytes(), what.as_bytes()] {
            text.extend_from_slice(&(field.len() as u64).to_le_bytes());
            text.extend_from_slice(field);
        }
        if text.len() >= 64 << 10 {
            sha2::Digest::update(&mut h, &text);
            text.clear();
        }
    }
    sha2::Digest::update(&mut h, &text);
    Digest::from_hasher(h)
}

/// What an entry other than a regular file is.
fn examine(kind: rustix::fs::FileType, path: &Path) -> Found {
    match kind {
        rustix::fs::FileType::Directory => Found::Dir,
        rustix::fs::FileType::Symlink => Found::Symlink(fs::read_link(path)),
        _ => Found::Other,
    }
}

/// The digest and size of the regular file at `path`, which `meta`
/// describes: from `hashes` when it knows the file unchanged, otherwise
/// read, hashed and recorded there.
pub fn file_digest(path: &Path, meta: &Metadata, hashes: &StatCache) -> io::Result<(Digest, u64)> {
    if let Some(digest) = hashes.get(meta) {
        return Ok((digest, meta.len()));
    }
    hash_file(path, &FileStamp::of(meta), meta.len(), hashes)
}

/// Reads and hashes the file at `path`; records its digest in `hashes`
/// under `stamp` when the size read is the `len` listed (and the file has
/// not changed for two seconds, [`StatCache::put_stamp`]).
fn hash_file(
    path: &Path,
    stamp: &FileStamp,
    len: u64,
    hashes: &StatCache,
) -> io::Result<(Digest, u64)> {
    let (digest, size) = digest_reader(fs::File::open(path)?)?;
    if size == len {
        hashes.put_stamp(stamp, &digest);
    }
    Ok((digest, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `statx` read gives what `std`'s `Metadata` gives: the stat cache
    /// and the layer writer stamp files from `Metadata`, the walk from
    /// `statx`, and both must name a file alike.
    #[test]
    fn statx_stamps_a_file_as_metadata_does() {
        use rustix::fs::{AtFlags, StatxFlags, CWD};
        let dir = tempfile::tempdir().unwrap();
        for (name, size) in [("empty", 0), ("some", 12_345)] {
            let path = dir.path().join(name);
            fs::write(&path, vec![7u8; size]).unwrap();
            let st = rustix::fs::statx(
                CWD,
                &path,
                AtFlags::SYMLINK_NOFOLLOW,
                StatxFlags::BASIC_STATS,
            )
            .unwrap();
            let meta = fs::symlink_metadata(&path).unwrap();
            assert_eq!(FileStamp::of_statx(&st), FileStamp::of(&meta));
            let (a, b) = (
                Meta::of_statx(&st, FileStamp::of_statx(&st).id()),
                Meta::from(&meta),
            );
            assert_eq!(
                (a.len, a.mode, a.nlink, a.id, a.seen),
                (b.len, b.mode, b.nlink, b.id, b.seen)
            );
        }
    }

    /// The order of paths by their bytes, whether the halves are sorted
    /// on two threads and merged or all on one.
    #[test]
    fn items_sort_by_path_bytes_on_one_thread_or_two() {
        for len in [0, 1, 8191, 8192, 20_001] {
            // Paths out of order, sharing prefixes, `.` and `/` side by side.
            let items: Vec<Item> = (0..len)
                .map(|i: usize| Item {
                    rel: format!("d{}/{}.{}", (i * 7919) % 97, (i * 104_729) % 1009, i % 3)
                        .replace(".0", "/0"),
                    path: PathBuf::new(),
                    found: Ok((None, Found::Dir)),
                })
                .collect();
            let mut want: Vec<usize> = (0..len).collect();
            want.sort_by(|&a, &b| {
                items[a]
                    .rel
                    .as_bytes()
                    .cmp(items[b].rel.as_bytes())
                    .then(a.cmp(&b))
            });
            for threads in [1, 2, 8] {
                assert_eq!(
                    sorted_order(&items, threads),
                    want,
                    "{len} items, {threads} threads"
                );
            }
        }
    }

    /// Items put in order where they are end as a second vector taking
    /// them in that order would hold them: every size up to 40, fixed
    /// points, one long cycle and many short ones.
    #[test]
    fn permuting_in_place_gives_the_order_asked_for() {
        let mut rng = fastrand::Rng::with_seed(3);
        for n in 0..40 {
            for _ in 0..20 {
                let mut order: Vec<usize> = (0..n).collect();
                rng.shuffle(&mut order);
                let items: Vec<String> = (0..n).map(|i| format!("item {i}")).collect();
                let want: Vec<String> = order.iter().map(|&i| items[i].clone()).collect();
                let mut got = items.clone();
                permute(&mut got, order);
                assert_eq!(got, want, "{n} items");
            }
        }
        let mut reversed: Vec<usize> = (0..1000).rev().collect();
        let mut got: Vec<usize> = (0..1000).collect();
        permute(&mut got, reversed.clone());
        reversed.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(got, reversed);
    }

    /// What a walk found, comparable: relative path, kind, digest and size.
    fn summary(items: &[Item]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|item| {
                let what = match &item.found {
                    Ok((_, Found::Dir)) => "dir".to_string(),
                    Ok((meta, Found::File(Ok((digest, size))))) => {
                        assert_eq!(Some(*size), meta.map(|m| m.len), "{}", item.rel);
                        format!("file {size} {digest}")
                    }
                    Ok((_, Found::Symlink(Ok(target)))) => format!("link {}", target.display()),
                    other => format!("{other:?}"),
                };
                (item.rel.clone(), what)
            })
            .collect()
    }

    #[test]
    fn every_thread_count_finds_the_same_sorted_entries_and_digests() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        let store = crate::store::Store::open(dir.path().join("store")).unwrap();
        // A flat directory of many files (hashed by every thread), a file
        // of 3 MiB (hashed first, while the others share the small ones),
        // nested directories, and a symlink.
        let mut rng = fastrand::Rng::with_seed(5);
        let mut bytes = |n: usize| -> Vec<u8> { (0..n).map(|_| rng.u8(..)).collect() };
        let mut expected = Vec::new();
        fs::create_dir_all(root.join("flat")).unwrap();
        for i in 0..300u32 {
            let content = bytes(1 + (i as usize * 37) % 5000);
            let rel = format!("flat/f{i:03}");
            fs::write(root.join(&rel), &content).unwrap();
            expected.push((rel, content));
        }
        let big = bytes(3 << 20);
        fs::write(root.join("big"), &big).unwrap();
        expected.push(("big".into(), big));
        fs::create_dir_all(root.join("a/b/c")).unwrap();
        fs::write(root.join("a/b/c/deep"), b"deep").unwrap();
        expected.push(("a/b/c/deep".into(), b"deep".to_vec()));
        fs::write(root.join("a/empty"), b"").unwrap();
        expected.push(("a/empty".into(), Vec::new()));
        std::os::unix::fs::symlink("b/c/deep", root.join("a/link")).unwrap();

        let skip = |_: &str| false;
        let mut first = None;
        for threads in [1, 2, 7] {
            let hashes = StatCache::of_store(&store);
            let (items, failures) = walk(&root, &skip, &hashes, threads, None);
            assert!(failures.is_empty(), "{threads} threads: {failures:?}");
            let found = summary(&items);
            let rels: Vec<&str> = found.iter().map(|(rel, _)| rel.as_str()).collect();
            let mut sorted = rels.clone();
            sorted.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            assert_eq!(rels, sorted, "{threads} threads: not sorted");
            for (rel, content) in &expected {
                let (_, what) = found
                    .iter()
                    .find(|(r, _)| r == rel)
                    .unwrap_or_else(|| panic!("{threads} threads: {rel} not found"));
                let want = format!("file {} {}", content.len(), Digest::of(content));
                assert_eq!(what, &want, "{threads} threads: {rel}");
            }
            assert!(found.contains(&("a/link".into(), "link b/c/deep".into())));
            // An outside oracle for the digests: coreutils' sha256sum.
            let sums = std::process::Command::new("sha256sum")
                .args(["big", "flat/f000", "flat/f299", "a/b/c/deep", "a/empty"])
                .current_dir(&root)
                .output()
                .unwrap();
            assert!(sums.status.success());
            let sums = String::from_utf8(sums.stdout).unwrap();
            assert_eq!(sums.lines().count(), 5, "{sums}");
            for line in sums.lines() {
                let (hex, rel) = line.split_once("  ").unwrap();
                let (_, what) = found.iter().find(|(r, _)| r == rel).unwrap();
                assert!(what.ends_with(&format!(" sha256:{hex}")), "{rel}: {what}");
            }
            assert_eq!(
                found.len(),
                expected.len() + 5,
                "flat, a, a/b, a/b/c, a/link"
            );
            match &first {
                None => first = Some(found),
                Some(first) => assert_eq!(first, &found, "{threads} threads"),
            }
        }
    }

    #[test]
    fn a_file_gone_before_it_is_hashed_keeps_its_place_and_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        let store = crate::store::Store::open(dir.path().join("store")).unwrap();
        fs::create_dir_all(root.join("d")).unwrap();
        for name in ["a", "d/p", "d/q", "z"] {
            fs::write(root.join(name), name).unwrap();
        }
        // The walk asks `skip` about each entry as it lists it, and hashes
        // files only once their directory is listed: the second entry of
        // `d` asked about removes the first, listed but not yet hashed
        // (`d` holds two entries, so nothing else is removed).
        let asked = Mutex::new(Vec::new());
        let skip = |rel: &str| {
            let mut asked = asked.lock().unwrap();
            if rel.starts_with("d/") {
                if let Some(first) = asked.first() {
                    fs::remove_file(root.join(first as &String)).unwrap();
                }
                asked.push(rel.to_string());
            }
            false
        };
        let hashes = StatCache::of_store(&store);
        let (items, failures) = walk(&root, &skip, &hashes, 2, None);
        assert!(failures.is_empty(), "{failures:?}");
        let gone = asked.lock().unwrap()[0].clone();
        let rels: Vec<&str> = items.iter().map(|i| i.rel.as_str()).collect();
        assert_eq!(rels, ["a", "d", "d/p", "d/q", "z"]);
        for item in &items {
            match (&item.found, item.rel == gone) {
                (Ok((_, Found::File(Err(e)))), true) => {
                    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}")
                }
                (Ok((_, Found::File(Ok(_)) | Found::Dir)), false) => {}
                (other, _) => panic!("{}: {other:?}", item.rel),
            }
        }
    }

    /// Bytes this thread has read (`rchar` of `/proc/thread-self/io`).
    fn read_here() -> u64 {
        let io = fs::read_to_string("/proc/thread-self/io").unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn a_file_with_many_hard_links_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        let store = crate::store::Store::open(dir.path().join("store")).unwrap();
        fs::create_dir_all(root.join("x")).unwrap();
        fs::create_dir_all(root.join("y/z")).unwrap();
        let mut rng = fastrand::Rng::with_seed(9);
        let content: Vec<u8> = (0..4 << 20).map(|_| rng.u8(..)).collect();
        fs::write(root.join("x/first"), &content).unwrap();
        let links = ["x/second", "x/third", "y/fourth", "y/z/fifth", "sixth"];
        for link in links {
            fs::hard_link(root.join("x/first"), root.join(link)).unwrap();
        }
        let want = format!("file {} {}", content.len(), Digest::of(&content));
        let skip = |_: &str| false;
        for threads in [1, 2, 7] {
            // A new stat cache each time, and the links just made: the
            // cache cannot answer for any of them.
            let hashes = StatCache::of_store(&store);
            let before = read_here();
            let (items, failures) = walk(&root, &skip, &hashes, threads, None);
            let read = read_here() - before;
            assert!(failures.is_empty(), "{failures:?}");
            let found = summary(&items);
            for link in links.iter().chain(&["x/first"]) {
                assert!(
                    found.contains(&(link.to_string(), want.clone())),
                    "{threads} threads: {link}: {found:?}"
                );
            }
            let sums = std::process::Command::new("sha256sum")
                .args(links)
                .current_dir(&root)
                .output()
                .unwrap();
            let sums = String::from_utf8(sums.stdout).unwrap();
            assert_eq!(sums.lines().count(), links.len(), "{sums}");
            for line in sums.lines() {
                let (hex, rel) = line.split_once("  ").unwrap();
                assert!(want.ends_with(hex), "sha256sum says {rel} is {hex}");
            }
            if threads == 1 {
                // All the work on this thread: the file read once, not six
                // times.
                assert!(
                    read < 2 * content.len() as u64,
                    "read {read} bytes for a {} byte file",
                    content.len()
                );
            }
        }
    }

    /// A walk that may hash late finishes for any thread count
    /// (no thread left waiting at the barrier), on an empty tree, a tree of
    /// directories only, and a tree with hard links and excluded paths: a
    /// new shape leaves every file (each link included) unread, the same
    /// shape again hashes them all, and the two walks list the same paths.
    #[test]
    fn a_late_walk_ends_for_every_shape_and_thread_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path().join("store")).unwrap();
        let empty = dir.path().join("empty");
        fs::create_dir_all(&empty).unwrap();
        let dirs_only = dir.path().join("dirs");
        fs::create_dir_all(dirs_only.join("a/b/c")).unwrap();
        fs::create_dir_all(dirs_only.join("d")).unwrap();
        let linked = dir.path().join("linked");
        fs::create_dir_all(linked.join("x/y")).unwrap();
        for i in 0..40 {
            fs::write(linked.join(format!("x/f{i}")), format!("{i}").repeat(i)).unwrap();
        }
        fs::write(linked.join("x/y/one"), b"linked").unwrap();
        fs::hard_link(linked.join("x/y/one"), linked.join("two")).unwrap();
        fs::hard_link(linked.join("x/y/one"), linked.join("x/three")).unwrap();
        fs::write(linked.join("x/skip.tmp"), b"no").unwrap();
        fs::hard_link(linked.join("x/y/one"), linked.join("x/four.tmp")).unwrap();
        let skip = |rel: &str| rel.ends_with(".tmp");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                for root in [&empty, &dirs_only, &linked] {
                    for threads in [1, 2, 7] {
                        // A store of its own each time: the shape is new.
                        let own = tempfile::tempdir().unwrap();
                        let store2 = crate::store::Store::open(own.path()).unwrap();
                        let hashes = StatCache::of_store(&store2);
                        let first = |d: &Digest| hashes.first_shape(d);
                        let late: Option<&(dyn Fn(&Digest) -> bool + Sync)> = Some(&first);
                        let (a, fa) = walk(root, &skip, &hashes, threads, late);
                        // The next planning: the shape is marked now.
                        let hashes = StatCache::of_store(&store2);
                        let first = |d: &Digest| hashes.first_shape(d);
                        let late: Option<&(dyn Fn(&Digest) -> bool + Sync)> = Some(&first);
                        let (b, fb) = walk(root, &skip, &hashes, threads, late);
                        assert!(fa.is_empty() && fb.is_empty());
                        let rels = |v: &[Item]| v.iter().map(|i| i.rel.clone()).collect::<Vec<_>>();
                        assert_eq!(rels(&a), rels(&b), "{root:?} {threads}");
                        let files = a
                            .iter()
                            .filter(|i| matches!(i.found, Ok((_, Found::Unhashed))))
                            .count();
                        let hashed = b
                            .iter()
                            .filter(|i| matches!(i.found, Ok((_, Found::File(Ok(_))))))
                            .count();
                        assert_eq!(files, hashed, "{root:?} {threads}");
                        if root == &linked {
                            assert_eq!(files, 43, "{threads}: every link left unread");
                            assert!(!rels(&a).iter().any(|r| r.ends_with(".tmp")));
                        }
                    }
                }
                let _ = &store;
                tx.send(()).unwrap();
            });
            rx.recv_timeout(std::time::Duration::from_secs(120))
                .expect("a late walk never ended");
        });
    }
}
