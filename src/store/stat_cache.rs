//! Remembers the SHA-256 of host files by inode and change times, so that a
//! rebuild does not re-read every unchanged input to see that it is unchanged.
//!
//! An entry is trusted only if device, inode, size, mtime and ctime all
//! match (ctime moves on every write and cannot be set by users). Files
//! changed in the last two seconds are not recorded, so a write that lands
//! within one timestamp tick of our read is never mistaken for no change.
//! A rebuild with nothing changed stands on this cache's word alone (it
//! reads no file), and so does the layer writer: a file that looks just
//! before and just after it is copied as it did when planning took its
//! digest (`plan::Seen`) is not hashed again (a write in between moves its
//! change time); any other file is hashed as it is copied and the build
//! fails if it is not what was planned.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::digest::Digest;
use crate::error::{IoContext, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(meta: &fs::Metadata, with_ctime: bool) -> Stamp {
        FileStamp::of(meta).stamp(with_ctime)
    }
}

/// What the cache needs of a file's metadata to record it
/// ([`StatCache::put_stamp`]): a third of the size of a whole `Metadata`,
/// for callers that hold many files' stamps until they have hashed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    id: (u64, u64),
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileStamp {
    /// How `meta` stamps its file.
    pub fn of(meta: &fs::Metadata) -> FileStamp {
        FileStamp {
            id: (meta.dev(), meta.ino()),
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }

    /// How a `statx` of a file stamps it, as [`FileStamp::of`] would its
    /// `Metadata` (the same device number: `makedev` of its parts).
    pub fn of_statx(st: &rustix::fs::Statx) -> FileStamp {
        let ns = |t: &rustix::fs::StatxTimestamp| {
            i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
        };
        FileStamp {
            id: (
                rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
                st.stx_ino,
            ),
            size: st.stx_size,
            mtime_ns: ns(&st.stx_mtime),
            ctime_ns: ns(&st.stx_ctime),
        }
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file's device and inode.
    pub fn id(&self) -> (u64, u64) {
        self.id
    }

    fn stamp(&self, with_ctime: bool) -> Stamp {
        Stamp {
            size: self.size,
            mtime_ns: self.mtime_ns,
            ctime_ns: if with_ctime { self.ctime_ns } else { 0 },
        }
    }
}

/// Known files: (device, inode) → when we hashed them, and the digest.
type Entries = HashMap<(u64, u64), (Stamp, Digest), BuildIdHasher>;

/// Hashes a file's (device, inode) by multiplying, as rustc's own maps
/// do: the keys come from the filesystem, not from whoever wrote a tree,
/// and a store's cache of 300,000 lines loads in a fraction of the time
/// the default (flood-resistant) hasher takes.
#[derive(Debug, Clone, Copy, Default)]
struct BuildIdHasher;

impl std::hash::BuildHasher for BuildIdHasher {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

/// See [`BuildIdHasher`].
#[derive(Debug)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The stat cache of one store.
#[derive(Debug)]
pub struct StatCache {
    path: PathBuf,
    /// Read by every thread of a tree walk at once; written when a file is hashed.
    entries: RwLock<(Entries, bool)>,
    /// Prefix of the temporary file `save` writes (the store's, so a
    /// killed save is reclaimed).
    tmp_prefix: String,
    /// Whether the change time is part of a stamp (see [`StatCache::for_blobs`]).
    with_ctime: bool,
    /// Where planning marks the shapes of the trees it has walked
    /// ([`StatCache::first_shape`]), and where the store keeps its layer
    /// records.
    trees: Option<(PathBuf, PathBuf)>,
    /// The shapes this planning found new (a second walk of one is new too).
    new_shapes: std::sync::Mutex<std::collections::HashSet<Digest>>,
}

impl StatCache {
    /// Loads the cache file (a missing or damaged file is an empty cache).
    fn load(path: PathBuf) -> StatCache {
        StatCache {
            path: path.clone(),
            entries: RwLock::new((read_entries(&path).unwrap_or_default(), false)),
            tmp_prefix: ".tmp".into(),
            with_ctime: true,
            trees: None,
            new_shapes: Default::default(),
        }
    }

    /// The cache of the store's own blobs (`blob-stamps`), saved under
    /// `tmp_prefix`. Its stamps leave out the change time: a blob's file is
    /// only ever written whole by kiln and renamed into place (a new inode),
    /// while hard links to it, made and removed by every output written,
    /// move its change time without touching its content. A write to it
    /// still moves its mtime.
    pub(super) fn for_blobs(path: PathBuf, tmp_prefix: String) -> StatCache {
        StatCache {
            tmp_prefix,
            with_ctime: false,
            ..StatCache::load(path)
        }
    }

    /// Loads the stat cache of `store` (its `stat-cache` file).
    pub fn of_store(store: &super::Store) -> StatCache {
        StatCache {
            tmp_prefix: store.temp_prefix(),
            trees: Some((store.trees_dir(), store.layers_dir())),
            ..StatCache::load(store.stat_cache_path())
        }
    }

    /// Whether no planning with this store has walked a host tree of this
    /// shape before (see `source::walk`), apart from this one; marks it
    /// walked (a mark's mtime is when it was last seen: `kiln store prune
    /// --older-than` removes old ones). A store that cannot say answers
    /// no: one where no mark could be made, or one with layers but no
    /// marks at all (made before kiln marked shapes).
    pub fn first_shape(&self, shape: &Digest) -> bool {
        let Some((dir, layers)) = &self.trees else {
            return false;
        };
        let mut new = self.new_shapes.lock().expect("no panics hold this lock");
        if new.contains(shape) {
            return true;
        }
        let unmarked_layers =
            !dir.exists() && fs::read_dir(layers).is_ok_and(|mut records| records.next().is_some());
        let mark = dir.join(shape.hex());
        let _ = fs::create_dir_all(dir);
        let made = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&mark)
            .is_ok();
        if !made {
            if let Ok(file) = fs::OpenOptions::new().write(true).open(&mark) {
                let _ = file.set_modified(SystemTime::now());
            }
        }
        let first = made && !unmarked_layers;
        if first {
            new.insert(shape.clone());
        }
        first
    }

    /// The digest of the file `meta` describes, if it is known and unchanged.
    pub fn get(&self, meta: &fs::Metadata) -> Option<Digest> {
        self.get_stamp(&FileStamp::of(meta))
    }

    /// [`StatCache::get`], for a file known by its [`FileStamp`].
    pub fn get_stamp(&self, file: &FileStamp) -> Option<Digest> {
        let guard = self.entries.read().expect("no panics hold this lock");
        match guard.0.get(&file.id) {
            Some((stamp, digest)) if *stamp == file.stamp(self.with_ctime) => Some(digest.clone()),
            _ => None,
        }
    }

    /// Records the digest of a file just hashed, unless it changed too recently to trust.
    pub fn put(&self, meta: &fs::Metadata, digest: &Digest) {
        self.put_stamp(&FileStamp::of(meta), digest)
    }

    /// [`StatCache::put`], for a file known by its [`FileStamp`].
    pub fn put_stamp(&self, file: &FileStamp, digest: &Digest) {
        self.put_stamp_read_at(file, digest, SystemTime::now())
    }

    /// [`StatCache::put_stamp`] for a file read at `read` (when it was
    /// read, not when it is recorded, decides whether it changed too
    /// recently to trust).
    pub fn put_stamp_read_at(&self, file: &FileStamp, digest: &Digest, read: SystemTime) {
        let stamp = file.stamp(self.with_ctime);
        let now = read
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos() as i128;
        if now - stamp.ctime_ns.max(stamp.mtime_ns) < 2_000_000_000 {
            return;
        }
        let mut guard = self.entries.write().expect("no panics hold this lock");
        guard.0.insert(file.id, (stamp, digest.clone()));
        guard.1 = true;
    }

    /// Records the digest of a file whose content kiln itself vouches for
    /// (a blob it just wrote whole, or whose time alone it just moved),
    /// however recent its change.
    pub(super) fn put_known(&self, meta: &fs::Metadata, digest: &Digest) {
        let mut guard = self.entries.write().expect("no panics hold this lock");
        guard.0.insert(
            (meta.dev(), meta.ino()),
            (Stamp::of(meta, self.with_ctime), digest.clone()),
        );
        guard.1 = true;
    }

    /// Forgets the files `ids` (device, inode) names.
    pub(super) fn forget(&self, ids: &std::collections::HashSet<(u64, u64)>) {
        let mut guard = self.entries.write().expect("no panics hold this lock");
        let before = guard.0.len();
        guard.0.retain(|id, _| !ids.contains(id));
        guard.1 |= guard.0.len() != before;
    }

    /// Writes the cache back (atomically) if anything changed.
    pub fn save(&self) -> Result<()> {
        let guard = self.entries.read().expect("no panics hold this lock");
        if !guard.1 {
            return Ok(());
        }
        let dir = self
            .path
            .parent()
            .expect("the stat cache lives in the store");
        let mut tmp = tempfile::Builder::new()
            .prefix(&self.tmp_prefix)
            .tempfile_in(dir)
            .at("create a temporary file in", dir)?;
        // Written as it is made, through a buffer: a big tree's cache is
        // tens of thousands of lines, and a rebuild after one edit saves it
        // all.
        let at = tmp.path().to_path_buf();
        let mut out = std::io::BufWriter::with_capacity(64 << 10, tmp.as_file_mut());
        for ((dev, ino), (s, d)) in &guard.0 {
            writeln!(
                out,
                "{dev} {ino} {} {} {} {}",
                s.size,
                s.mtime_ns,
                s.ctime_ns,
                d.hex()
            )
            .at("write", &at)?;
        }
        out.flush().at("write", &at)?;
        drop(out);
        crate::files::rename_into(tmp, &self.path)
    }
}

/// The entries of the cache file at `path`, a line each (lines that do not
/// parse are left out). Read a line at a time, not whole: a big store's
/// cache is tens of MiB, and on these machines every fresh page of memory
/// costs more than parsing the line in it.
fn read_entries(path: &std::path::Path) -> std::io::Result<Entries> {
    use std::io::BufRead;
    let file = fs::File::open(path)?;
    let mut map = Entries::default();
    // A line is about 125 bytes.
    map.reserve(usize::try_from(file.metadata()?.len() / 120).unwrap_or(0));
    let mut reader = std::io::BufReader::with_capacity(64 << 10, file);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(map);
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if let Some((key, value)) = std::str::from_utf8(text).ok().and_then(parse_line) {
            map.insert(key, value);
        }
    }
}

fn parse_line(line: &str) -> Option<((u64, u64), (Stamp, Digest))> {
    let mut f = line.split(' ');
    let dev = unsigned(f.next()?)?;
    let ino = unsigned(f.next()?)?;
    let stamp = Stamp {
        size: unsigned(f.next()?)?,
        mtime_ns: signed(f.next()?)?,
        ctime_ns: signed(f.next()?)?,
    };
    let digest = Digest::from_hex(f.next()?)?;
    f.next().is_none().then_some(((dev, ino), (stamp, digest)))
}

/// A decimal `u64` (digits only): a big store's cache has 300,000 numbers,
/// and this is several times quicker than `str::parse`.
fn unsigned(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 {
        return None;
    }
    text.bytes().try_fold(0u64, |n, b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

/// A decimal `i128` of nanoseconds, `-` allowed (times before 1970).
fn signed(text: &str) -> Option<i128> {
    match text.strip_prefix('-') {
        Some(digits) => unsigned(digits).map(|n| -i128::from(n)),
        None => unsigned(text).map(i128::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_the_lines_it_writes_and_nothing_else() {
        let hex = Digest::of(b"x").hex().to_string();
        let line = format!("2049 18446744073709551615 0 -1500000000 1700000000123456789 {hex}");
        let ((dev, ino), (stamp, digest)) = parse_line(&line).unwrap();
        assert_eq!((dev, ino, stamp.size), (2049, u64::MAX, 0));
        assert_eq!(
            (stamp.mtime_ns, stamp.ctime_ns),
            (-1_500_000_000, 1_700_000_000_123_456_789)
        );
        assert_eq!(digest.hex(), hex);
        for bad in [
            format!("2049 1 0 0 0 {hex} extra"),
            format!("2049 +1 0 0 0 {hex}"),
            format!("2049 18446744073709551616 0 0 0 {hex}"),
            format!("2049 1 0 0 -0x1 {hex}"),
            format!("2049  1 0 0 0 {hex}"),
            "2049 1 0 0 0 nothex".to_string(),
        ] {
            assert!(parse_line(&bad).is_none(), "{bad}");
        }
    }

    /// What a cache saves, another loads whole: every entry, a time before
    /// 1970 and the largest inode included.
    #[test]
    fn a_saved_cache_loads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stat-cache");
        let cache = StatCache::load(path.clone());
        let mut want = Entries::default();
        for i in 0..1000u64 {
            let stamp = Stamp {
                size: i * 7,
                mtime_ns: i128::from(i) * 1_000_000_007 - 1_500_000_000,
                ctime_ns: 1_700_000_000_123_456_789 + i128::from(i),
            };
            let id = (2049, if i == 0 { u64::MAX } else { i });
            want.insert(id, (stamp, Digest::of(&i.to_le_bytes())));
        }
        *cache.entries.write().unwrap() = (want.clone(), true);
        cache.save().unwrap();
        let got = read_entries(&path).unwrap();
        assert_eq!(got.len(), want.len());
        for (id, entry) in &want {
            assert!(got.get(id) == Some(entry), "{id:?}");
        }
    }

    #[test]
    fn trusts_only_unchanged_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "one").unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let cache = StatCache::load(dir.path().join("stat"));
        let meta = fs::metadata(&file).unwrap();
        let d = Digest::of(b"one");
        // ctime is fresh (we just wrote the file), so nothing is recorded yet.
        cache.put(&meta, &d);
        assert_eq!(cache.get(&meta), None);
        // An entry written as if long ago is found, and lost on any change.
        cache.entries.write().unwrap().0.insert(
            (meta.dev(), meta.ino()),
            (Stamp::of(&meta, true), d.clone()),
        );
        cache.entries.write().unwrap().1 = true;
        cache.save().unwrap();
        let reloaded = StatCache::load(dir.path().join("stat"));
        assert_eq!(reloaded.get(&meta), Some(d));
        fs::write(&file, "two").unwrap();
        assert_eq!(reloaded.get(&fs::metadata(&file).unwrap()), None);
    }
}
