//! Who is alive in a store, and the reclaiming of what the dead left behind.
//!
//! Every process that opens a store holds an exclusive `flock` on a lock
//! file of its own, `locks/<token>`, for as long as it runs; every temporary
//! file or directory it writes into the store is named
//! `.kiln-tmp-<token>-<random>`. A lock that can be taken means its process
//! is gone (the kernel drops a lock when its holder dies, even by SIGKILL),
//! so its temporary files are debris: `reclaim` removes them. A lock that
//! cannot be taken means "don't touch".
//!
//! A lock file becomes visible only once it is locked (it is created under a
//! `.new-` name, locked, then renamed), so no reclaimer can mistake a
//! process that is starting for a dead one.
//!
//! `gc.lock` orders the users of blobs against their removers: a build
//! marks a blob as used (sets its mtime) under a shared lock, and `prune`
//! or a verification failure removes blobs under the exclusive lock, after
//! checking again that the blob is still the one it judged.

use std::collections::HashMap;
use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use crate::error::{Error, IoContext, Result};

/// The prefix of every temporary name kiln writes into a store.
pub(super) const TMP_PREFIX: &str = ".kiln-tmp-";

/// Temporary names of kiln versions before per-process locks; these are
/// removed only when older than this, since no lock says whether their writer lives.
const LEGACY_AGE: Duration = Duration::from_secs(3600);

/// The per-process lock of each store root this process has opened.
static HELD: OnceLock<Mutex<HashMap<PathBuf, Arc<Held>>>> = OnceLock::new();

#[derive(Debug)]
struct Held {
    token: String,
    // Never read: holding the open file is what holds the lock.
    _file: File,
}

/// Takes (once per process and store) this process's lock; returns its token.
pub(super) fn process_token(root: &Path) -> Result<String> {
    let mut held = HELD
        .get_or_init(Default::default)
        .lock()
        .expect("no panics hold this lock");
    if let Some(h) = held.get(root) {
        return Ok(h.token.clone());
    }
    let dir = root.join(super::LOCKS);
    fs::create_dir_all(&dir).at("create", &dir)?;
    let token = format!("{}x{:08x}", std::process::id(), rand_u32());
    let tmp = tempfile::Builder::new()
        .prefix(".new-")
        .tempfile_in(&dir)
        .at("create a temporary file in", &dir)?;
    tmp.as_file().lock().at("lock", tmp.path())?;
    let path = dir.join(&token);
    let file = tmp
        .persist_noclobber(&path)
        .map_err(|e| Error::io("rename into", &path, e.error))?;
    held.insert(
        root.to_path_buf(),
        Arc::new(Held {
            token: token.clone(),
            _file: file,
        }),
    );
    Ok(token)
}

/// Removes this process's lock files, for a process about to exit with
/// nothing left to write (what it leaves would otherwise wait for the next
/// run to reclaim). Removed while still locked, then unlocked.
pub fn release() {
    let Some(held) = HELD.get() else { return };
    let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
    for (root, h) in held.drain() {
        let _ = fs::remove_file(root.join(super::LOCKS).join(&h.token));
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

/// Liveness of the writers named in temporary files, learnt lazily.
struct Liveness {
    dir: PathBuf,
    known: HashMap<String, bool>,
    /// Locks of dead processes, held while their debris is removed.
    dead: Vec<(PathBuf, File)>,
}

impl Liveness {
    fn alive(&mut self, token: &str) -> bool {
        if let Some(&alive) = self.known.get(token) {
            return alive;
        }
        let path = self.dir.join(token);
        let alive = match File::open(&path) {
            // No lock file: its owner is gone (only reclaimers remove lock files).
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            // Cannot tell: treat as alive, never remove on a guess.
            Err(_) => true,
            Ok(file) => match file.try_lock() {
                Ok(()) => {
                    self.dead.push((path, file));
                    false
                }
                Err(TryLockError::WouldBlock) => true,
                // Cannot tell: treat as alive, never remove on a guess.
                Err(TryLockError::Error(_)) => true,
            },
        };
        self.known.insert(token.to_string(), alive);
        alive
    }
}

/// What [`reclaim`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reclaimed {
    /// Temporary files and directories removed.
    pub entries: u64,
    /// Their size in bytes.
    pub bytes: u64,
}

/// Removes the temporary files of writers that are gone, from every
/// directory of the store that kiln writes temporary files into.
pub(super) fn reclaim(root: &Path) -> Result<Reclaimed> {
    let mut live = Liveness {
        dir: root.join(super::LOCKS),
        known: HashMap::new(),
        dead: Vec::new(),
    };
    let mut done = Reclaimed::default();
    let now = SystemTime::now();
    let old = |meta: &fs::Metadata| {
        meta.modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > LEGACY_AGE)
    };
    // Every directory of the store that kiln writes temporary files into.
    for sub in [
        super::TMP,
        super::LAYERS,
        super::DIRS,
        super::DEBS,
        super::DERIVED,
        super::CHUNKS,
        "",
    ] {
        let dir = if sub.is_empty() {
            root.to_path_buf()
        } else {
            root.join(sub)
        };
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            let debris = if let Some(rest) = name.strip_prefix(TMP_PREFIX) {
                let token = rest.split('-').next().unwrap_or_default();
                !live.alive(token)
            } else {
                legacy_temp(sub, &name) && old(&meta)
            };
            if debris {
                let bytes = tree_size(&entry.path(), &meta);
                if remove_any(&entry.path(), &meta).is_ok() {
                    done.entries += 1;
                    done.bytes += bytes;
                }
            }
        }
    }
    // Lock files of the dead go last, after their debris, while still locked.
    if let Ok(entries) = fs::read_dir(&live.dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".new-") {
                if entry.metadata().is_ok_and(|m| old(&m)) {
                    let _ = fs::remove_file(entry.path());
                }
            } else {
                live.alive(&name);
            }
        }
    }
    for (path, file) in live.dead.drain(..) {
        let _ = fs::remove_file(&path);
        drop(file);
    }
    Ok(done)
}

/// Names that kiln's temporary files had before they carried a writer's token.
fn legacy_temp(sub: &str, name: &str) -> bool {
    match sub {
        super::TMP => name.starts_with("blob-") || name.starts_with(".tmp"),
        super::LAYERS => name.starts_with(".layer-"),
        _ => name.starts_with(".tmp") || name.starts_with(".kiln-"),
    }
}

fn tree_size(path: &Path, meta: &fs::Metadata) -> u64 {
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let m = fs::symlink_metadata(e.path()).ok()?;
            Some(tree_size(&e.path(), &m))
        })
        .sum()
}

fn remove_any(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

/// Opens (creating it if need be, never truncating it) a file whose lock
/// is the point, not its content.
pub fn open_lock_file(path: &Path) -> Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .at("open", path)
}

/// The lock that orders users of blobs against their removers.
pub(super) fn gc_lock(root: &Path, exclusive: bool) -> Result<File> {
    let path = root.join(super::GC_LOCK);
    let file = open_lock_file(&path)?;
    if exclusive {
        file.lock().at("lock", &path)?;
    } else {
        file.lock_shared().at("lock", &path)?;
    }
    Ok(file)
}

/// When the oldest live kiln process of this store started (its lock file's
/// mtime): whatever was used since may belong to a running build.
pub(super) fn oldest_live_start(root: &Path) -> SystemTime {
    let mut oldest = SystemTime::now();
    let dir = root.join(super::LOCKS);
    for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let Ok(file) = File::open(entry.path()) else {
            continue;
        };
        if matches!(file.try_lock(), Err(TryLockError::WouldBlock)) {
            if let Ok(m) = file.metadata().and_then(|m| m.modified()) {
                oldest = oldest.min(m);
            }
        }
    }
    oldest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debris_of_the_dead_goes_and_of_the_living_stays() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let me = process_token(root).unwrap();
        assert_eq!(process_token(root).unwrap(), me, "one lock per process");
        fs::create_dir_all(root.join("tmp")).unwrap();
        let mine = root.join("tmp").join(format!("{TMP_PREFIX}{me}-a"));
        fs::write(&mine, "live").unwrap();
        // A dead writer: its lock file exists but nobody holds it.
        fs::write(root.join("locks").join("1x0000dead"), "").unwrap();
        let theirs = root.join("tmp").join(format!("{TMP_PREFIX}1x0000dead-b"));
        fs::create_dir_all(&theirs).unwrap();
        fs::write(theirs.join("f"), "12345").unwrap();
        // A writer whose lock file is already gone.
        let orphan = root.join(format!("{TMP_PREFIX}2x0000gone-c"));
        fs::write(&orphan, "xy").unwrap();
        let done = reclaim(root).unwrap();
        assert_eq!(
            done,
            Reclaimed {
                entries: 2,
                bytes: 7
            }
        );
        assert!(mine.exists() && !theirs.exists() && !orphan.exists());
        assert!(!root.join("locks").join("1x0000dead").exists());
        assert!(root.join("locks").join(&me).exists());
    }
}
