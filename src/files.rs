//! Writing files so that they appear whole or not at all.
//!
//! Every file kiln writes outside a build tree goes through here: a
//! temporary file (or directory) beside the destination, filled, synced,
//! renamed over it, and the directory synced. The temporary names start with
//! `.NAME.kiln-tmp-`, so a killed run leaves nothing that looks finished.
//! Stage-neutral: every stage may use it, it uses only [`crate::error`].

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tempfile::{NamedTempFile, TempDir};

use crate::error::{Error, IoContext, Result};

/// The directory a destination lives in (`.` for a bare name).
pub fn parent_of(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The last component of a destination, for temporary names beside it.
pub fn file_name(dest: &Path) -> String {
    dest.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into())
}

/// A new temporary file beside `dest` (its parent must exist), to be
/// [`commit`]ted over it. It is created with mode 0666 less the umask (0644
/// under the usual 022), as any file a program writes: what kiln writes
/// for users (archives, digest files, lockfiles, SBOMs) is readable as
/// theirs would be. Credentials go through [`write_private`] instead.
pub fn temp_file_beside(dest: &Path) -> Result<NamedTempFile> {
    temp_file_with_mode(dest, 0o666)
}

/// As [`temp_file_beside`], created with `mode` (less the umask).
fn temp_file_with_mode(dest: &Path, mode: u32) -> Result<NamedTempFile> {
    let parent = parent_of(dest);
    tempfile::Builder::new()
        .prefix(&format!(".{}.kiln-tmp-", file_name(dest)))
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(&parent)
        .at("create a temporary file in", &parent)
}

/// A new temporary directory beside `dest`, to be [`replace`]d over it.
pub fn temp_dir_beside(dest: &Path) -> Result<TempDir> {
    let parent = parent_of(dest);
    tempfile::Builder::new()
        .prefix(&format!(".{}.kiln-tmp-", file_name(dest)))
        .tempdir_in(&parent)
        .at("create a temporary directory in", &parent)
}

/// Syncs a finished temporary file, renames it to `dest` and syncs the directory.
pub fn commit(tmp: NamedTempFile, dest: &Path) -> Result<()> {
    tmp.as_file().sync_all().at("sync", tmp.path())?;
    rename_into(tmp, dest)?;
    sync_dir(&parent_of(dest))
}

/// Renames a temporary file to `dest` without syncing: for caches that
/// are derived again when lost or damaged.
pub fn rename_into(tmp: NamedTempFile, dest: &Path) -> Result<()> {
    tmp.persist(dest)
        .map_err(|e| Error::io("rename into", dest, e.error))?;
    Ok(())
}

/// Writes `bytes` to `dest` atomically, creating its parent directories.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(dest, bytes, None)
}

/// As [`write_atomic`], readable and writable only by the owner (credentials).
pub fn write_private(dest: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(dest, bytes, Some(0o600))
}

fn write_atomic_with(dest: &Path, bytes: &[u8], mode: Option<u32>) -> Result<()> {
    let parent = parent_of(dest);
    fs::create_dir_all(&parent).at("create", &parent)?;
    // A private file is created private: never readable by others, not
    // even empty for a moment (an open descriptor outlives a chmod).
    let mut tmp = temp_file_with_mode(dest, mode.unwrap_or(0o666))?;
    if let Some(mode) = mode {
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))
            .at("set permissions of", tmp.path())?;
    }
    tmp.write_all(bytes).at("write", tmp.path())?;
    commit(tmp, dest)
}

/// Writes a file that must not exist yet, with `mode`, synced.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .at("create", path)?;
    f.write_all(bytes).at("write", path)?;
    f.sync_all().at("sync", path)
}

/// Creates (truncating) a file inside a temporary tree, writes `bytes`, syncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).at("create", path)?;
    f.write_all(bytes).at("write", path)?;
    f.sync_all().at("sync", path)
}

/// Moves the finished directory `new` to `dest`; an old `dest` is moved
/// aside first and removed after, so `dest` is always whole.
pub fn replace(new: &Path, dest: &Path) -> Result<()> {
    if fs::symlink_metadata(dest).is_err() {
        return fs::rename(new, dest).at("rename into", dest);
    }
    let parent = parent_of(dest);
    let old = tempfile::Builder::new()
        .prefix(&format!(".{}.kiln-old-", file_name(dest)))
        .tempdir_in(&parent)
        .at("create a temporary directory in", &parent)?;
    let old_path = old.path().join("layout");
    fs::rename(dest, &old_path).at("move aside", dest)?;
    if let Err(e) = fs::rename(new, dest) {
        let _ = fs::rename(&old_path, dest);
        return Err(Error::io("rename into", dest, e));
    }
    drop(old);
    Ok(())
}

/// Moves a filled temporary directory over `dest` (see [`replace`]) and
/// syncs the parent; the temporary directory is removed on failure.
pub fn commit_dir(tmp: TempDir, dest: &Path) -> Result<()> {
    let tmp_path = tmp.keep();
    replace(&tmp_path, dest).inspect_err(|_| {
        let _ = fs::remove_dir_all(&tmp_path);
    })?;
    sync_dir(&parent_of(dest))
}

/// A file being written whole and synced at the end, whose pages are handed
/// to the disk every 8 MiB as they are written (`posix_fadvise(DONTNEED)`
/// on the range just written starts its writeback without waiting for it),
/// so that the final sync finds little left to do and the disk works while
/// the writer goes on producing.
pub struct Writeback<F> {
    file: F,
    written: u64,
    handed: u64,
}

/// How much [`Writeback`] lets gather before handing it to the disk.
const WRITEBACK_EVERY: u64 = 8 << 20;

impl<F: std::os::fd::AsFd> Writeback<F> {
    /// Wraps `file`, written from its start.
    pub fn new(file: F) -> Self {
        Writeback {
            file,
            written: 0,
            handed: 0,
        }
    }

    /// Returns the file.
    pub fn into_inner(self) -> F {
        self.file
    }
}

impl<F: Write + std::os::fd::AsFd> Write for Writeback<F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.handed >= WRITEBACK_EVERY {
            // Only advice: the final sync is what makes the bytes durable.
            let _ = rustix::fs::fadvise(
                &self.file,
                self.handed,
                std::num::NonZeroU64::new(self.written - self.handed),
                rustix::fs::Advice::DontNeed,
            );
            self.handed = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Fsyncs a directory so that a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .at("sync directory", dir)
}
