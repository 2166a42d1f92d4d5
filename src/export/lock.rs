//! The lock of an output: writers of one `--out` take turns, and whoever
//! holds an output's lock may remove what dead writers of it left beside it.
//!
//! The lock is `.NAME.kiln-lock` beside the output, an `flock` held while
//! the output is written and unlinked (still locked) when done, so nothing
//! lingers. A waiter that wakes on an unlinked file sees that the path no
//! longer names it, and starts over.

use std::fs::{self, File, TryLockError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::files::{file_name, parent_of};

/// The lock of one output, held while it is written; removed when dropped.
#[derive(Debug)]
pub struct OutputLock {
    path: PathBuf,
    file: File,
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

const TMP: &str = ".kiln-tmp-";
const OLD: &str = ".kiln-old-";

/// Takes the lock of the output `dest` (waiting for another writer of it to
/// finish), then removes what dead writers left beside it: of `dest`, and of
/// any other output in the same directory whose lock is free.
pub fn lock_output(dest: &Path) -> Result<OutputLock> {
    let parent = parent_of(dest);
    fs::create_dir_all(&parent).at("create", &parent)?;
    let name = file_name(dest);
    let held = acquire(&parent, &name, true)?.expect("a blocking lock is always taken");
    let mut others: Vec<String> = Vec::new();
    for entry in fs::read_dir(&parent).at("list", &parent)?.flatten() {
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = owner_of(&entry_name) else {
            continue;
        };
        if owner == name {
            remove(&entry.path())?;
        } else if !others.contains(&owner) {
            others.push(owner);
        }
    }
    for other in others {
        // A free lock means no live writer: its leftovers are debris.
        if let Some(_guard) = acquire(&parent, &other, false)? {
            for entry in fs::read_dir(&parent).at("list", &parent)?.flatten() {
                let entry_name = entry.file_name().to_string_lossy().into_owned();
                if owner_of(&entry_name).as_deref() == Some(other.as_str()) {
                    remove(&entry.path())?;
                }
            }
        }
    }
    Ok(held)
}

/// The output a leftover `.NAME.kiln-tmp-…` or `.NAME.kiln-old-…` belongs to.
fn owner_of(entry: &str) -> Option<String> {
    let rest = entry.strip_prefix('.')?;
    let at = [TMP, OLD].iter().filter_map(|m| rest.rfind(m)).max()?;
    (at > 0).then(|| rest[..at].to_string())
}

fn remove(path: &Path) -> Result<()> {
    let removed = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => return Ok(()),
    };
    removed.at("remove the leftover", path)
}

/// Locks `.NAME.kiln-lock` in `parent`; `None` if `wait` is false and a live writer holds it.
fn acquire(parent: &Path, name: &str, wait: bool) -> Result<Option<OutputLock>> {
    let path = parent.join(format!(".{name}.kiln-lock"));
    loop {
        let file = crate::store::locks::open_lock_file(&path)?;
        if wait {
            file.lock().at("lock", &path)?;
        } else {
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => return Ok(None),
                Err(TryLockError::Error(e)) => return Err(Error::io("lock", &path, e)),
            }
        }
        let ours = file.metadata().at("stat", &path)?.ino();
        if fs::metadata(&path).is_ok_and(|m| m.ino() == ours) {
            return Ok(Some(OutputLock { path, file }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_told_apart_by_output() {
        assert_eq!(owner_of(".img.kiln-tmp-Ab12"), Some("img".into()));
        assert_eq!(owner_of(".app.tar.kiln-old-x"), Some("app.tar".into()));
        assert_eq!(owner_of(".img.kiln-lock"), None);
        assert_eq!(owner_of("img"), None);
    }

    #[test]
    fn a_live_writers_leftovers_stay_and_a_dead_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let live = lock_output(&d.join("live")).unwrap();
        fs::create_dir(d.join(".live.kiln-tmp-1")).unwrap();
        fs::create_dir(d.join(".dead.kiln-tmp-2")).unwrap();
        fs::write(d.join(".dead.kiln-old-3"), "x").unwrap();
        let _other = lock_output(&d.join("other")).unwrap();
        assert!(d.join(".live.kiln-tmp-1").exists());
        assert!(!d.join(".dead.kiln-tmp-2").exists() && !d.join(".dead.kiln-old-3").exists());
        assert!(!d.join(".dead.kiln-lock").exists());
        drop(live);
        assert!(!d.join(".live.kiln-lock").exists());
    }
}
