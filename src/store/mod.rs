//! The content-addressed store: blobs by digest, and the layer cache.
//!
//! Layout under the root (`KILN_CACHE`, else `$XDG_CACHE_HOME/kiln`, else
//! `~/.cache/kiln`):
//!
//! ```text
//! blobs/sha256/<hex>     every blob kiln has built or imported
//! layers/<hex>.json      layer cache: input digest → built layer
//! dirs/<hex>.v2.json     the directories a layer blob holds (by blob digest)
//! debs/v2-<hex>.json     a .deb blob's control data and file list
//! derived/<hex>.json     a blob a host tool made, by the digest of its inputs
//! chunks/<hex>.v3       where each compressed gzip chunk of layer blob <hex>
//!                        lies in it, by a key naming what it is made of
//! stat-cache             digests of host input files, by inode and times
//! blob-stamps            blobs known intact, by inode and times
//! tmp/                   blobs and work directories being written
//! locks/<token>          one lock file per live kiln process
//! gc.lock                orders users of blobs against `prune`
//! ```
//!
//! The store owns every one of these names: other modules ask it for a path
//! ([`Store::blob_path`], `dirs_cache_path`, `deb_contents_path`,
//! `temp_file_beside`, [`Store::temp_dir`]) rather than join names onto its
//! root. `dirs/` and `debs/` are caches derived from blobs: `kiln store
//! prune` removes the entries whose blob it removed, and the next use
//! rebuilds any that is missing or unreadable. `blobs/sha256/` has the shape
//! of an OCI image layout's, so the store can be read as a layout of the
//! images pulled into it.
//!
//! A blob is written to a temporary file in `tmp/`, hashed while written,
//! fsynced, then renamed into place, so a name never lies about its content
//! and a killed build leaves only stray temporary files, which the next
//! process to open the store removes (see [`locks`]). Reads verify the
//! digest; a blob found damaged is removed, so it is rebuilt or fetched
//! again. Two processes may share a store: renames are atomic and the last
//! writer of identical content wins harmlessly. A blob's mtime is when a
//! build last used it (to within [`TOUCH_EVERY`]), which is what `kiln store
//! prune` goes by. `blob-stamps` remembers which blobs were re-hashed and
//! found intact, by inode and change time, so that a warm rebuild does not
//! read them again; `kiln store verify` re-hashes everything regardless.

pub mod locks;
pub mod maintain;
pub mod stat_cache;

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::digest::{Checkpoint, Digest, HashingReader, HashingWriter};
use crate::error::{Error, IoContext, Result};
use crate::files::sync_dir;

// The names under the root (see the module docs); paths are built from these
// here and in `locks` and `maintain`, nowhere else.
const BLOBS: &str = "blobs/sha256";
const LAYERS: &str = "layers";
const DIRS: &str = "dirs";
const DEBS: &str = "debs";
const DERIVED: &str = "derived";
const CHUNKS: &str = "chunks";
/// The suffix of `chunks/` files, bumped when their form changes or the
/// chunks they name are compressed another way (v3: libdeflate, format 5).
const CHUNKS_SUFFIX: &str = ".v3";
/// The suffix of `chunks/` files that say where a layer blob's hashing may
/// take up again ([`Store::resume_record`]).
const RESUME_SUFFIX: &str = ".r1";
/// The first line of a resume record.
const RESUME_MAGIC: &str = "kiln-resume 1";
/// The largest compressed chunk a record may name (chunks hold at most
/// 4 MiB, and stored blocks add 5 bytes per 64 KiB).
pub const MAX_CHUNK_SIZE: u64 = 5 << 20;
const TMP: &str = "tmp";
const LOCKS: &str = "locks";
const GC_LOCK: &str = "gc.lock";
const STAT_CACHE: &str = "stat-cache";
const TREES: &str = "trees";
const BLOB_STAMPS: &str = "blob-stamps";
/// The prefix of `debs/` entries (`v2-<hex>.json`) and the suffix of `dirs/`
/// ones (`<hex>.v2.json`): bumped when what they record changes (`v2`: the
/// entries are checked), so entries cached before are read again.
const DEBS_PREFIX: &str = "v2-";
const DIRS_SUFFIX: &str = ".v2.json";

/// A content-addressed blob store rooted at a directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// This process's lock token, part of every temporary name it writes.
    token: String,
    notes: Notes,
    /// Blobs known intact, by inode, size and mtime (`blob-stamps`): written
    /// by this store whole, or re-hashed. Loaded on first use and saved when
    /// the last handle is dropped.
    stamps: Arc<std::sync::OnceLock<Stamps>>,
    /// Second copies of layer blobs, for an output to take (see
    /// [`Store::keep_spares`]).
    spares: Arc<Spares>,
}

/// Second copies of blobs written beside them, by digest: files in `tmp/`,
/// removed with the last handle of the store (or, after a kill, reclaimed
/// as any temporary file).
#[derive(Debug, Default)]
struct Spares {
    on: std::sync::atomic::AtomicBool,
    files: std::sync::Mutex<std::collections::HashMap<Digest, tempfile::TempPath>>,
}

/// A second copy of a blob, written on the hashing thread, synced when done.
impl crate::digest::Copy for crate::files::Writeback<File> {
    fn close(self: Box<Self>) -> io::Result<()> {
        self.finish()?.sync_all()
    }
}

/// How long a blob's "last used" time may lag behind its real last use: a
/// blob's mtime is moved at most this often (and a blob known intact keeps
/// its stamp when it is), so a warm rebuild does no metadata writes and
/// reads no blob contents. `prune` widens its protection of live builds by
/// as much.
pub const TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// The stamps of verified blobs, written back when dropped.
#[derive(Debug)]
struct Stamps(stat_cache::StatCache);

impl Drop for Stamps {
    fn drop(&mut self) {
        // Only a cache: a lost write means one more re-hash next time.
        let _ = self.0.save();
    }
}

/// Where the store says what it repaired (the CLI prints it on stderr).
#[derive(Clone, Default)]
struct Notes(Option<Arc<Say>>);

/// Something that prints a note.
type Say = dyn Fn(&str) + Send + Sync;

impl std::fmt::Debug for Notes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Notes(..)"
        } else {
            "None"
        })
    }
}

/// What `derived/<hex>.json` records: the blob a host tool made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Derived {
    /// The blob's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// A built layer as the layer cache remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Digest of the uncompressed tar (the config's diff_id).
    pub diff_id: Digest,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// The layer media type.
    pub media_type: String,
}

impl Store {
    /// Opens (creating if needed) the store at `root`, takes this process's
    /// lock in it and removes the temporary files of writers that are gone.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for sub in [BLOBS, LAYERS, TMP] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).at("create", &dir)?;
        }
        let token = locks::process_token(&root)?;
        locks::reclaim(&root)?;
        Ok(Self {
            root,
            token,
            notes: Notes::default(),
            stamps: Arc::default(),
            spares: Arc::default(),
        })
    }

    /// Sends notes about repairs (a damaged blob removed) to `say`.
    pub fn with_notes(mut self, say: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.notes = Notes(Some(Arc::new(say)));
        self
    }

    /// Says something about the store through the notes sink, if any.
    pub fn note(&self, text: &str) {
        if let Some(say) = &self.notes.0 {
            say(text);
        }
    }

    /// A temporary file beside `dest` (a path the store named), to be renamed
    /// onto it; it is reclaimed if this process dies before that.
    pub(crate) fn temp_file_beside(&self, dest: &Path) -> Result<tempfile::NamedTempFile> {
        self.temp_file_in(&crate::files::parent_of(dest), 0o600)
    }

    /// A temporary file in `dir` (inside the store) with `mode` (less the
    /// umask), named so that it is reclaimed if this process dies before
    /// persisting it.
    fn temp_file_in(&self, dir: &Path, mode: u32) -> Result<tempfile::NamedTempFile> {
        fs::create_dir_all(dir).at("create", dir)?;
        tempfile::Builder::new()
            .prefix(&self.temp_prefix())
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
            .tempfile_in(dir)
            .at("create a temporary file in", dir)
    }

    /// A temporary directory in the store's `tmp/`, reclaimed like temporary files.
    pub fn temp_dir(&self) -> Result<tempfile::TempDir> {
        let dir = self.tmp_dir();
        tempfile::Builder::new()
            .prefix(&self.temp_prefix())
            .tempdir_in(&dir)
            .at("create a temporary directory in", &dir)
    }

    pub(crate) fn temp_prefix(&self) -> String {
        format!("{}{}-", locks::TMP_PREFIX, self.token)
    }

    /// The default store location: `KILN_CACHE`, `$XDG_CACHE_HOME/kiln` or `~/.cache/kiln`.
    pub fn default_root() -> Result<PathBuf> {
        let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        if let Some(dir) = nonempty("KILN_CACHE") {
            return Ok(PathBuf::from(dir));
        }
        if let Some(dir) = nonempty("XDG_CACHE_HOME") {
            return Ok(PathBuf::from(dir).join("kiln"));
        }
        if let Some(home) = nonempty("HOME") {
            return Ok(PathBuf::from(home).join(".cache").join("kiln"));
        }
        Err(Error::invalid(
            "no place for kiln's store: none of `KILN_CACHE`, `XDG_CACHE_HOME` or `HOME` is set",
            Some("set `KILN_CACHE` to a writable directory".into()),
        ))
    }

    /// The store's root directory: for messages, and for reading the store
    /// as an OCI layout. Paths under it come from the methods below.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// `blobs/sha256/`: every blob.
    fn blobs_dir(&self) -> PathBuf {
        self.root.join(BLOBS)
    }

    /// Where the blob named `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    /// `tmp/`: where blobs and work directories are written.
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP)
    }

    /// `layers/`: the layer cache.
    fn layers_dir(&self) -> PathBuf {
        self.root.join(LAYERS)
    }

    /// Where the layer cache records the layer built from input `input`.
    fn layer_index_path(&self, input: &Digest) -> PathBuf {
        self.layers_dir().join(format!("{}.json", input.hex()))
    }

    /// `dirs/<hex>.v2.json`: the cached directories of the layer blob
    /// `layer` (written by `layer::read`), removed by `prune` with the blob.
    pub(crate) fn dirs_cache_path(&self, layer: &Digest) -> PathBuf {
        self.root
            .join(DIRS)
            .join(format!("{}{DIRS_SUFFIX}", layer.hex()))
    }

    /// `debs/v2-<hex>.json`: the cached contents of the `.deb` blob `deb`
    /// (written by `source::deb`), removed by `prune` with the blob.
    pub(crate) fn deb_contents_path(&self, deb: &Digest) -> PathBuf {
        self.root
            .join(DEBS)
            .join(format!("{DEBS_PREFIX}{}.json", deb.hex()))
    }

    /// `derived/`: blobs made by host tools, by the digest of their inputs.
    fn derived_dir(&self) -> PathBuf {
        self.root.join(DERIVED)
    }

    /// Where the blob made from inputs `key` is recorded.
    fn derived_path(&self, key: &Digest) -> PathBuf {
        self.derived_dir().join(format!("{}.json", key.hex()))
    }

    /// `chunks/`: compressed gzip chunks, by uncompressed digest.
    fn chunks_dir(&self) -> PathBuf {
        self.root.join(CHUNKS)
    }

    /// Where the chunks of the layer blob `blob` are recorded.
    fn chunks_path(&self, blob: &Digest) -> PathBuf {
        self.chunks_dir()
            .join(format!("{}{CHUNKS_SUFFIX}", blob.hex()))
    }

    /// Where the hashing states of the layer blob `blob` are recorded.
    fn resume_path(&self, blob: &Digest) -> PathBuf {
        self.chunks_dir()
            .join(format!("{}{RESUME_SUFFIX}", blob.hex()))
    }

    /// `trees/`: a mark for the shape of each host tree planning has
    /// walked (see [`stat_cache::StatCache::first_shape`]).
    fn trees_dir(&self) -> PathBuf {
        self.root.join(TREES)
    }

    /// `stat-cache`: digests of host input files (see [`stat_cache`]).
    fn stat_cache_path(&self) -> PathBuf {
        self.root.join(STAT_CACHE)
    }

    /// `blob-stamps`: blobs known intact (see [`Store::hash_of`]).
    fn blob_stamps_path(&self) -> PathBuf {
        self.root.join(BLOB_STAMPS)
    }

    /// Whether the store holds `digest`.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// From now on, layer blobs ([`Store::layer_writer`]) are written twice
    /// as they are made: into the store, and into a second file that an
    /// OCI layout output on the same filesystem takes by renaming it
    /// ([`Store::take_spare`]) instead of copying the blob at the end.
    /// `false` turns that off again (for a build whose blobs are read back
    /// into something else, such as a VM image).
    pub fn keep_spares(&self, on: bool) {
        self.spares
            .on
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The second copy of `digest` written with it, synced, with mode 0666
    /// less the umask, if there is one: the caller's to rename.
    pub fn take_spare(&self, digest: &Digest) -> Option<tempfile::TempPath> {
        self.spares
            .files
            .lock()
            .expect("no panics hold this lock")
            .remove(digest)
    }

    /// Starts writing a blob an output may take (a layer built, or a blob
    /// pulled): as [`Store::writer`], with a second copy when
    /// [`Store::keep_spares`] asked for one. Both copies then go to the disk
    /// direct ([`crate::files::Writeback::direct`]): the output takes the
    /// second by rename, and the store's is read again only by a later
    /// build.
    pub fn layer_writer(&self) -> Result<BlobWriter> {
        self.layer_writer_from(None)
    }

    /// [`Store::layer_writer`], hashing from `resume` on: its first bytes
    /// are the caller's to vouch for (see [`HashingWriter::resumed_beside`]).
    pub fn layer_writer_from(&self, resume: Option<crate::digest::Resume>) -> Result<BlobWriter> {
        if !self.spares.on.load(std::sync::atomic::Ordering::Relaxed) {
            return self.writer_from(crate::files::Writeback::new, resume);
        }
        let mut w = self.writer_from(crate::files::Writeback::direct, resume)?;
        // Created as the layout's own files are: 0666 less the umask.
        let (file, path) = self.temp_file_in(&self.tmp_dir(), 0o666)?.into_parts();
        w.inner
            .copy_to(Box::new(crate::files::Writeback::direct(file)));
        w.spare = Some(path);
        Ok(w)
    }

    /// Starts writing a new blob.
    pub fn writer(&self) -> Result<BlobWriter> {
        self.writer_from(crate::files::Writeback::new, None)
    }

    fn writer_from(
        &self,
        writeback: fn(tempfile::NamedTempFile) -> crate::files::Writeback<tempfile::NamedTempFile>,
        resume: Option<crate::digest::Resume>,
    ) -> Result<BlobWriter> {
        let file = self.temp_file_in(&self.tmp_dir(), 0o600)?;
        let out = BufWriter::with_capacity(1 << 20, writeback(file));
        Ok(BlobWriter {
            store: self.clone(),
            inner: match resume {
                Some(from) => HashingWriter::resumed_beside(out, from),
                None => HashingWriter::beside(out),
            },
            spare: None,
        })
    }

    /// Stores `bytes` and returns their digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(bytes);
        if self.check_blob(&digest)? {
            return Ok(digest);
        }
        let mut w = self.writer()?;
        w.write_all(bytes).at("write", &self.tmp_dir())?;
        let (got, _) = w.commit(Some(&digest))?;
        Ok(got)
    }

    /// Copies `reader` into the store, failing unless its content has digest `expected`.
    pub fn put_verified(&self, reader: impl Read, expected: &Digest, what: &str) -> Result<u64> {
        let mut w = self.writer()?;
        let mut reader = reader;
        io::copy(&mut reader, &mut w)
            .map_err(|e| Error::internal(format!("copy {what} into the store"), e))?;
        w.commit_named(Some(expected), what).map(|(_, n)| n)
    }

    /// Opens a blob for reading; the reader fails at its end if the content does not match.
    pub fn open_blob(&self, digest: &Digest) -> Result<VerifiedReader<File>> {
        let path = self.blob_path(digest);
        let file = File::open(&path).at("open blob", &path)?;
        Ok(VerifiedReader {
            inner: HashingReader::new(file),
            expected: digest.clone(),
            what: path,
        })
    }

    /// Reads a whole (small) blob into memory, verified.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        let path = self.blob_path(digest);
        self.open_blob(digest)?
            .read_to_end(&mut buf)
            .map_err(|e| verify_error(e, &path))?;
        Ok(buf)
    }

    /// The size in bytes of a stored blob.
    pub fn size(&self, digest: &Digest) -> Result<u64> {
        let path = self.blob_path(digest);
        Ok(fs::metadata(&path).at("stat blob", &path)?.len())
    }

    /// Looks up the layer cache; a record whose blob is gone or damaged
    /// counts as a miss (a damaged blob is removed and a note says so).
    pub fn cached_layer(&self, input: &Digest) -> Result<Option<LayerRecord>> {
        let path = self.layer_index_path(input);
        let Some(record) = fs::read(path)
            .ok()
            .and_then(|text| serde_json::from_slice::<LayerRecord>(&text).ok())
        else {
            return Ok(None);
        };
        let size = fs::metadata(self.blob_path(&record.digest)).map(|m| m.len());
        if size.ok() != Some(record.size) {
            return Ok(None);
        }
        Ok(self.check_blob(&record.digest)?.then_some(record))
    }

    /// Marks a blob as used now (for `prune`); false if the store lacks it.
    ///
    /// Done under the shared `gc.lock`, so a concurrent `prune` either saw
    /// this use or removed the blob first (and then this says false).
    fn claim(&self, digest: &Digest) -> Result<bool> {
        self.claim_all([digest])
    }

    /// Marks every one of `digests` as used now (for `prune`), under one
    /// hold of the shared `gc.lock`; false as soon as one is missing.
    pub fn claim_all<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) -> Result<bool> {
        let _gc = locks::gc_lock(&self.root, false)?;
        for digest in digests {
            if !self.claim_held(digest)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Claims `digest` while the caller holds the shared `gc.lock`.
    fn claim_held(&self, digest: &Digest) -> Result<bool> {
        let path = self.blob_path(digest);
        // A blob used lately is only looked at (one `stat`, no `open`).
        if let Ok(m) = fs::metadata(&path) {
            let recent = m
                .modified()
                .is_ok_and(|t| t + TOUCH_EVERY >= std::time::SystemTime::now());
            if recent && m.is_file() {
                return Ok(true);
            }
        }
        match File::open(&path) {
            // A store shared with other users may not let us set the time:
            // the blob is there all the same, only its last use is older.
            Ok(f) => {
                let now = std::time::SystemTime::now();
                let before = f.metadata().ok();
                let stale = before
                    .as_ref()
                    .and_then(|m| m.modified().ok())
                    .is_none_or(|m| m + TOUCH_EVERY < now);
                if stale && f.set_modified(now).is_ok() {
                    // Only its time moved: a blob known intact stays known.
                    let known =
                        before.is_some_and(|m| self.stamps().get(&m).as_ref() == Some(digest));
                    if let (true, Ok(after)) = (known, f.metadata()) {
                        self.vouch(&after, digest);
                    }
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("open blob", &path, e)),
        }
    }

    /// Whether the store holds `digest` intact: claims it, then re-hashes it.
    /// A damaged blob is removed (a note says so) and counts as absent, so
    /// the caller builds or fetches it again.
    pub fn check_blob(&self, digest: &Digest) -> Result<bool> {
        if !self.claim(digest)? {
            return Ok(false);
        }
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("open blob", &path, e)),
        };
        let ino = file.metadata().at("stat blob", &path)?.ino();
        let actual = self.hash_of(file, &path, digest)?;
        if actual == *digest {
            return Ok(true);
        }
        self.remove_damaged(digest, ino)?;
        self.note(&format!(
            "warning: store blob `{digest}` was damaged (its content hashes to `{actual}`); \
             removed it, and kiln makes it again"
        ));
        Ok(false)
    }

    /// The digest of the open file at `path`, which should be `expected`:
    /// read and hashed, unless `blob-stamps` says it was hashed to
    /// `expected` before and has not changed since (same inode, size and
    /// mtime; see `StatCache::for_blobs`). For blob files
    /// kiln wrote: store blobs, and blobs of a previous output.
    pub fn hash_of(&self, file: File, path: &Path, expected: &Digest) -> Result<Digest> {
        let meta = file.metadata().at("stat", path)?;
        let stamps = self.stamps();
        if stamps.get(&meta).as_ref() == Some(expected) {
            return Ok(expected.clone());
        }
        let (actual, _) = crate::digest::digest_reader(io::BufReader::with_capacity(1 << 20, file))
            .at("read", path)?;
        if actual == *expected {
            stamps.put(&meta, expected);
        }
        Ok(actual)
    }

    /// Whether the stamps say the file `meta` describes holds `digest`
    /// (kiln wrote or checked it, and its size and mtime have not moved
    /// since), so that it may be read without hashing it again.
    pub fn stamped(&self, meta: &fs::Metadata, digest: &Digest) -> bool {
        self.stamps().get(meta).as_ref() == Some(digest)
    }

    /// Records that the file `meta` describes holds `digest`, which kiln
    /// has just checked while writing it (a blob copied out of the store
    /// into an output), so a later check need not read it.
    pub fn vouch(&self, meta: &fs::Metadata, digest: &Digest) {
        self.stamps().put_known(meta, digest);
    }

    /// Drops the stamps of the files `ids` (device, inode) names, and saves.
    pub(crate) fn forget_stamps(&self, ids: &std::collections::HashSet<(u64, u64)>) -> Result<()> {
        let stamps = self.stamps();
        stamps.forget(ids);
        stamps.save()
    }

    /// The stamps of blobs known intact (`blob-stamps`), loaded on first use.
    fn stamps(&self) -> &stat_cache::StatCache {
        &self
            .stamps
            .get_or_init(|| {
                Stamps(stat_cache::StatCache::for_blobs(
                    self.blob_stamps_path(),
                    self.temp_prefix(),
                ))
            })
            .0
    }

    /// Removes a blob judged damaged, unless it has been replaced since
    /// (another process may have healed it: a new file has a new inode).
    fn remove_damaged(&self, digest: &Digest, ino: u64) -> Result<bool> {
        let _gc = locks::gc_lock(&self.root, true)?;
        let path = self.blob_path(digest);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.ino() == ino => {
                fs::remove_file(&path).at("remove damaged blob", &path)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The blob a host tool made before from the inputs whose digest is
    /// `key` (see [`Store::remember_derived`]); a record whose blob is gone
    /// or damaged counts as a miss.
    pub fn derived(&self, key: &Digest) -> Result<Option<Digest>> {
        let Some(record) = fs::read(self.derived_path(key))
            .ok()
            .and_then(|text| serde_json::from_slice::<Derived>(&text).ok())
        else {
            return Ok(None);
        };
        let size = fs::metadata(self.blob_path(&record.digest)).map(|m| m.len());
        if size.ok() != Some(record.size) {
            return Ok(None);
        }
        Ok(self.check_blob(&record.digest)?.then_some(record.digest))
    }

    /// Puts `bytes`, made by a host tool from the inputs whose digest is
    /// `key`, into the store and records it (atomically), so that the next
    /// build with the same inputs does not run the tool again.
    pub fn remember_derived(&self, key: &Digest, bytes: &[u8]) -> Result<Digest> {
        let digest = self.put_bytes(bytes)?;
        let path = self.derived_path(key);
        fs::create_dir_all(self.derived_dir()).at("create", &self.derived_dir())?;
        let mut tmp = self.temp_file_beside(&path)?;
        let record = Derived {
            digest: digest.clone(),
            size: bytes.len() as u64,
        };
        let text = serde_json::to_vec(&record).expect("records serialise");
        tmp.write_all(&text).at("write", tmp.path())?;
        crate::files::commit(tmp, &path)?;
        Ok(digest)
    }

    /// Every gzip chunk the store's layer blobs are known to hold, by the
    /// digest of its uncompressed bytes (read from `chunks/`; a file that
    /// cannot be read is skipped, as a miss).
    pub fn chunk_cache(&self) -> ChunkCache {
        let mut chunks = std::collections::HashMap::new();
        let mut layers = Vec::new();
        let names: Vec<String> = fs::read_dir(self.chunks_dir())
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        let resumable: std::collections::HashSet<&str> = names
            .iter()
            .filter_map(|name| name.strip_suffix(RESUME_SUFFIX))
            .collect();
        for name in &names {
            let Some(blob) = name
                .strip_suffix(CHUNKS_SUFFIX)
                .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok())
            else {
                continue;
            };
            let Ok(text) = fs::read_to_string(self.chunks_dir().join(name)) else {
                continue;
            };
            let mut order = Vec::new();
            for line in text.lines() {
                if let Some((key, chunk)) = StoredChunk::parse(&blob, line) {
                    order.push((fingerprint(&key), chunk.len));
                    chunks.insert(key, chunk);
                } else {
                    // A record with a line it cannot read gives no prefix.
                    order.clear();
                    break;
                }
            }
            // Only a layer whose hashing states are recorded can be taken up.
            if !order.is_empty() && resumable.contains(blob.hex()) {
                layers.push((blob, order));
            }
        }
        // The same order whatever order the directory lists them in.
        layers.sort_by(|a, b| a.0.cmp(&b.0));
        ChunkCache {
            blobs: self.blobs_dir(),
            records: self.chunks_dir(),
            chunks,
            layers,
        }
    }

    /// Records where the chunks of the layer blob `blob` lie in it, in one
    /// file renamed into place whole (not synced: a record lost in a crash
    /// is a miss, and one that names bytes no longer there is one too).
    /// With `states`, also where the layer's hashing may take up again
    /// ([`Store::resume_record`]); that record is written first, and one
    /// without its chunk record is never read.
    pub fn remember_chunks(
        &self,
        blob: &Digest,
        chunks: &[ChunkRecord],
        states: Option<&ResumeRecord>,
    ) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        if let Some(states) = states.filter(|r| r.chunk_states.len() == chunks.len()) {
            self.write_record(&self.resume_path(blob), &states.to_text(chunks))?;
        }
        let mut text = String::with_capacity(chunks.len() * 160);
        for c in chunks {
            text.push_str(&c.line());
            text.push('\n');
        }
        self.write_record(&self.chunks_path(blob), &text)
    }

    /// Writes `text` to `path` in `chunks/`, renamed into place whole.
    fn write_record(&self, path: &Path, text: &str) -> Result<()> {
        fs::create_dir_all(self.chunks_dir()).at("create", &self.chunks_dir())?;
        let mut tmp = self.temp_file_beside(path)?;
        tmp.write_all(text.as_bytes()).at("write", tmp.path())?;
        tmp.persist(path)
            .map_err(|e| Error::io("rename into", path, e.error))?;
        Ok(())
    }

    /// The hashing states recorded for the layer blob `blob`, whose chunks
    /// are `chunks` (as [`ChunkCache::layer`] gives them); `None` if there
    /// are none, or the record does not read back whole and matching.
    pub fn resume_record(&self, blob: &Digest, chunks: &[ChunkRecord]) -> Option<ResumeRecord> {
        let text = fs::read_to_string(self.resume_path(blob)).ok()?;
        ResumeRecord::parse(&text, chunks)
    }

    /// Records a built layer under its input digest (atomically).
    pub fn remember_layer(&self, input: &Digest, record: &LayerRecord) -> Result<()> {
        let path = self.layer_index_path(input);
        let mut tmp = self.temp_file_beside(&path)?;
        let text = serde_json::to_vec(record).expect("layer records serialise");
        tmp.write_all(&text).at("write", tmp.path())?;
        crate::files::commit(tmp, &path)
    }
}

/// Where one compressed gzip chunk of a layer blob lies (see
/// [`crate::layer::pgzip`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRecord {
    /// The chunk's key: what its uncompressed bytes are made of (see
    /// [`crate::layer::pgzip`]).
    pub key: Digest,
    /// Where its compressed bytes start in the blob.
    pub offset: u64,
    /// How many compressed bytes it has.
    pub size: u64,
    /// How many uncompressed bytes it has.
    pub len: u64,
    /// The CRC-32 of its uncompressed bytes.
    pub crc: u32,
    /// The CRC-32 of its compressed bytes.
    pub zcrc: u32,
}

/// Where a layer blob's two SHA-256 hashings may take up again: the tar
/// stream's (its diff_id) after each chunk, and the blob's own every
/// [`crate::digest::CHECKPOINT`] bytes. Kept in `chunks/<hex>.r1`, with
/// each chunk's key (so that it matches only its own chunk record) and the
/// SHA-256 of the record's text, so that a damaged record is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeRecord {
    /// The tar stream's hasher state after each chunk.
    pub chunk_states: Vec<String>,
    /// `(offset, state)`: the blob's hasher state after its first `offset` bytes.
    pub blob_states: Vec<Checkpoint>,
}

impl ResumeRecord {
    fn to_text(&self, chunks: &[ChunkRecord]) -> String {
        let mut text = format!("{RESUME_MAGIC}\n");
        for (c, state) in chunks.iter().zip(&self.chunk_states) {
            text.push_str(&format!("C {} {state}\n", c.line()));
        }
        for (offset, state) in &self.blob_states {
            text.push_str(&format!("B {offset} {state}\n"));
        }
        let sum = Digest::of(text.as_bytes());
        text.push_str(&format!("S {}\n", sum.hex()));
        text
    }

    fn parse(text: &str, chunks: &[ChunkRecord]) -> Option<ResumeRecord> {
        let body_end = text.trim_end_matches('\n').rfind('\n')? + 1;
        let (body, sum) = text.split_at(body_end);
        let sum = Digest::from_hex(sum.strip_prefix("S ")?.strip_suffix('\n')?)?;
        if Digest::of(body.as_bytes()) != sum {
            return None;
        }
        let mut lines = body.lines();
        if lines.next()? != RESUME_MAGIC {
            return None;
        }
        let mut record = ResumeRecord {
            chunk_states: Vec::new(),
            blob_states: Vec::new(),
        };
        for line in lines {
            if let Some(rest) = line.strip_prefix("C ") {
                // The whole chunk record, as `chunks/<hex>.v3` has it, then
                // the state: the record's digest covers both.
                let (chunk, state) = rest.rsplit_once(' ')?;
                if !record.blob_states.is_empty()
                    || chunks.get(record.chunk_states.len())?.line() != chunk
                {
                    return None;
                }
                record.chunk_states.push(state.to_string());
            } else {
                let mut words = line.split(' ');
                match (words.next()?, words.next()?, words.next()?, words.next()) {
                    ("B", offset, state, None) => record
                        .blob_states
                        .push((offset.parse().ok()?, state.to_string())),
                    _ => return None,
                }
            }
        }
        (record.chunk_states.len() == chunks.len()).then_some(record)
    }
}

impl ChunkRecord {
    /// `<key hex> <offset> <size> <len> <crc hex> <zcrc hex>`, as
    /// `chunks/<hex>.v3` holds it.
    fn line(&self) -> String {
        format!(
            "{} {} {} {} {:08x} {:08x}",
            self.key.hex(),
            self.offset,
            self.size,
            self.len,
            self.crc,
            self.zcrc
        )
    }
}

/// Where one chunk lies, read back from `chunks/`.
#[derive(Debug)]
struct StoredChunk {
    blob: Digest,
    offset: u64,
    size: u64,
    len: u64,
    crc: u32,
    zcrc: u32,
}

impl StoredChunk {
    /// Reads `<key hex> <offset> <size> <len> <crc hex> <zcrc hex>`.
    fn parse(blob: &Digest, line: &str) -> Option<(Digest, StoredChunk)> {
        let mut words = line.split(' ');
        let key = Digest::from_hex(words.next()?)?;
        let chunk = StoredChunk {
            blob: blob.clone(),
            offset: words.next()?.parse().ok()?,
            size: words.next()?.parse().ok()?,
            len: words.next()?.parse().ok()?,
            crc: u32::from_str_radix(words.next()?, 16).ok()?,
            zcrc: u32::from_str_radix(words.next()?, 16).ok()?,
        };
        words.next().is_none().then_some((key, chunk))
    }
}

/// The gzip chunks a store's layer blobs hold (see [`Store::chunk_cache`]).
#[derive(Debug)]
pub struct ChunkCache {
    blobs: PathBuf,
    /// `chunks/`.
    records: PathBuf,
    chunks: std::collections::HashMap<Digest, StoredChunk>,
    /// Each recorded layer blob's chunks, in order, as the [`fingerprint`]
    /// of their key and their length (16 bytes a chunk, whatever the
    /// number of layers the store holds).
    layers: Vec<(Digest, Vec<(u64, u64)>)>,
}

/// The first 8 bytes of a chunk key: enough to tell a store's chunks apart
/// while looking for a prefix (what is taken up is checked key by key).
fn fingerprint(key: &Digest) -> u64 {
    u64::from_str_radix(&key.hex()[..16], 16).expect("digests are hex")
}

impl ChunkCache {
    /// The recorded layer blobs whose first chunks have keys (and lengths)
    /// in common with `chunks`, in order: each with its chunks and how many
    /// it shares, the most first.
    pub fn prefixes<'a>(
        &self,
        chunks: impl Iterator<Item = (&'a Digest, u64)> + Clone,
    ) -> Vec<(&Digest, usize)> {
        let wanted: Vec<(u64, u64)> = chunks.map(|(key, len)| (fingerprint(key), len)).collect();
        let mut found: Vec<_> = self
            .layers
            .iter()
            .map(|(blob, records)| {
                let n = records
                    .iter()
                    .zip(&wanted)
                    .take_while(|(r, w)| r == w)
                    .count();
                (blob, n)
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        found.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        found
    }

    /// Whether any layer blob's chunks are recorded.
    pub fn has_layers(&self) -> bool {
        !self.layers.is_empty()
    }

    /// Given a layer's chunk `i` (`key`, `len` bytes), keeps in `alive` (one
    /// flag per recorded layer, all true to begin with) the recorded layers
    /// whose chunks so far are the same; says whether any is left.
    pub fn still_shared(&self, i: usize, key: &Digest, len: u64, alive: &mut Vec<bool>) -> bool {
        alive.resize(self.layers.len(), true);
        let want = (fingerprint(key), len);
        for (flag, (_, records)) in alive.iter_mut().zip(&self.layers) {
            *flag = *flag && records.get(i) == Some(&want);
        }
        alive.contains(&true)
    }

    /// The recorded chunks of the layer blob `blob`, in order, read again
    /// from its record; `None` if it no longer reads whole.
    pub fn layer(&self, blob: &Digest) -> Option<Vec<ChunkRecord>> {
        let text =
            fs::read_to_string(self.records.join(format!("{}{CHUNKS_SUFFIX}", blob.hex()))).ok()?;
        text.lines()
            .map(|line| {
                let (key, c) = StoredChunk::parse(blob, line)?;
                Some(ChunkRecord {
                    key,
                    offset: c.offset,
                    size: c.size,
                    len: c.len,
                    crc: c.crc,
                    zcrc: c.zcrc,
                })
            })
            .collect()
    }

    /// The compressed bytes (and their CRC-32) of the chunk whose key is
    /// `key`, with `len` uncompressed bytes of CRC-32 `crc`: read from the
    /// blob that holds them and checked against the CRC-32 recorded when
    /// they were written. Anything missing, unreadable or not matching is a
    /// miss.
    pub fn get(&self, key: &Digest, len: u64, crc: u32) -> Option<(Vec<u8>, u32)> {
        use std::os::unix::fs::FileExt;
        let c = self.chunks.get(key)?;
        if c.len != len || c.crc != crc || c.size > MAX_CHUNK_SIZE {
            return None;
        }
        let blob = File::open(self.blobs.join(c.blob.hex())).ok()?;
        let mut bytes = vec![0; c.size as usize];
        blob.read_exact_at(&mut bytes, c.offset).ok()?;
        (crc32fast::hash(&bytes) == c.zcrc).then_some((bytes, c.zcrc))
    }
}

/// Turns the error a [`VerifiedReader`] raises on a mismatch back into kiln's error.
pub fn verify_error(e: io::Error, path: &Path) -> Error {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<MismatchError>())
    {
        Some(m) => Error::DigestMismatch {
            what: format!("`{}`", path.display()),
            expected: Box::new(m.expected.clone()),
            actual: Box::new(m.actual.clone()),
        },
        None => Error::io("read", path, e),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("content of `{what}` does not match its digest: expected `{expected}`, got `{actual}`")]
struct MismatchError {
    what: String,
    expected: Digest,
    actual: Digest,
}

/// A reader over a blob that checks the blob's digest when it reaches the end.
pub struct VerifiedReader<R> {
    inner: HashingReader<R>,
    expected: Digest,
    what: PathBuf,
}

impl<R: Read> Read for VerifiedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let actual = self.inner.digest_so_far();
            if actual != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    MismatchError {
                        what: self.what.display().to_string(),
                        expected: self.expected.clone(),
                        actual,
                    },
                ));
            }
        }
        Ok(n)
    }
}

/// A blob being written: hashed as it goes, renamed into place on [`commit`](BlobWriter::commit).
pub struct BlobWriter {
    store: Store,
    inner: HashingWriter<BufWriter<crate::files::Writeback<tempfile::NamedTempFile>>>,
    /// Where the second copy goes ([`Store::layer_writer`]).
    spare: Option<tempfile::TempPath>,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl BlobWriter {
    /// Syncs the blob and moves it into place; fails (and stores nothing) if
    /// `expected` is given and does not match.
    pub fn commit(self, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        self.commit_named(expected, "blob")
    }

    /// [`BlobWriter::commit`], also giving the states its hasher saved every
    /// [`crate::digest::CHECKPOINT`] bytes (from where a resumed writer
    /// took up).
    pub fn commit_saving(self) -> Result<(Digest, u64, Vec<Checkpoint>)> {
        self.commit_all(None, "blob")
    }

    fn commit_named(self, expected: Option<&Digest>, what: &str) -> Result<(Digest, u64)> {
        self.commit_all(expected, what)
            .map(|(digest, len, _)| (digest, len))
    }

    fn commit_all(
        self,
        expected: Option<&Digest>,
        what: &str,
    ) -> Result<(Digest, u64, Vec<Checkpoint>)> {
        let (buf, digest, len, copy, checkpoints) = self.inner.finish_all();
        let tmp_dir = self.store.tmp_dir();
        let file = buf
            .into_inner()
            .map_err(|e| Error::io("write", &tmp_dir, e.into_error()))?
            .finish()
            .map_err(|e| Error::io("write", &tmp_dir, e))?;
        if let Some(expected) = expected {
            if *expected != digest {
                return Err(Error::DigestMismatch {
                    what: what.to_string(),
                    expected: Box::new(expected.clone()),
                    actual: Box::new(digest),
                });
            }
        }
        file.as_file().sync_all().at("sync", file.path())?;
        let dest = self.store.blob_path(&digest);
        let written = file.as_file().metadata().at("stat", file.path())?;
        crate::files::rename_into(file, &dest)?;
        sync_dir(dest.parent().expect("blob paths have a parent"))?;
        // Hashed as it was written, and only ever replaced whole: known
        // intact from now on, so no later check reads it again.
        self.store.vouch(&written, &digest);
        // Only a help: a copy that failed is dropped (and removed), and the
        // output copies the blob instead.
        if let (Some(path), Some(Ok(copy))) = (self.spare, copy) {
            if copy.close().is_ok() {
                self.store
                    .spares
                    .files
                    .lock()
                    .expect("no panics hold this lock")
                    .insert(digest.clone(), path);
            }
        }
        Ok((digest, len, checkpoints))
    }
}
