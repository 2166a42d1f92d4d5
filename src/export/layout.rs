//! Writes an OCI image layout directory, atomically.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{Output, OCI_LAYOUT};
use crate::error::{Error, IoContext, Result};
use crate::store::{sync_dir, verify_error, Store};

/// Writes `output` as an OCI image layout at `dest`, replacing a previous layout there.
///
/// `dest` must not exist, be empty, or already be an OCI layout: kiln never
/// replaces a directory it did not write.
pub fn write(store: &Store, output: &Output<'_>, dest: &Path) -> Result<()> {
    let _lock = super::lock_output(dest)?;
    check_replaceable(dest)?;
    let parent = parent_of(dest);
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.kiln-tmp-", file_name(dest)))
        .tempdir_in(&parent)
        .at("create a temporary directory in", &parent)?;
    fill(store, output, tmp.path(), dest)?;
    let tmp_path = tmp.keep();
    replace(&tmp_path, dest).inspect_err(|_| {
        let _ = fs::remove_dir_all(&tmp_path);
    })?;
    sync_dir(&parent)
}

fn fill(store: &Store, output: &Output<'_>, dir: &Path, previous: &Path) -> Result<()> {
    let blobs_dir = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs_dir).at("create", &blobs_dir)?;
    for digest in output.blobs(store)? {
        let dest = blobs_dir.join(digest.hex());
        // A blob the previous output already holds, intact, is hard-linked
        // rather than copied: a no-op rebuild then writes almost nothing.
        let old = previous.join("blobs").join("sha256").join(digest.hex());
        let intact = File::open(&old)
            .ok()
            .and_then(|f| store.hash_of(f, &old, &digest).ok())
            .is_some_and(|d| d == digest);
        if intact && fs::hard_link(&old, &dest).is_ok() {
            continue;
        }
        let mut src = io::BufReader::with_capacity(1 << 20, store.open_blob(&digest)?);
        let mut file = File::create(&dest).at("create", &dest)?;
        io::copy(&mut src, &mut file).map_err(|e| verify_error(e, &store.blob_path(&digest)))?;
        file.sync_all().at("sync", &dest)?;
        // The copy was verified as it was read: the next build can hard-link
        // it without reading it again.
        store.vouch(&file.metadata().at("stat", &dest)?, &digest);
    }
    write_synced(&dir.join("oci-layout"), OCI_LAYOUT)?;
    write_synced(&dir.join("index.json"), &output.index_json())?;
    for d in [&blobs_dir, &dir.join("blobs"), &dir.to_path_buf()] {
        sync_dir(d)?;
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).at("create", path)?;
    f.write_all(bytes).at("write", path)?;
    f.sync_all().at("sync", path)
}

/// Refuses to touch a `dest` that holds something other than a layout.
pub fn check_replaceable(dest: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(dest) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("inspect", dest, e)),
    };
    let refuse = |what: &str| {
        Err(Error::invalid(
            format!("refusing to replace `{}`: {what}", dest.display()),
            Some("choose another `--out`, or remove it yourself".into()),
        ))
    };
    if !meta.is_dir() {
        return refuse("it exists and is not a directory");
    }
    let empty = fs::read_dir(dest).at("list", dest)?.next().is_none();
    if !empty && !dest.join("oci-layout").is_file() && !dest.join("bundle.json").is_file() {
        return refuse("it is a directory that is not an OCI image layout or a kiln VM bundle");
    }
    Ok(())
}

/// Moves `new` to `dest`; an old `dest` is moved aside first and removed after.
pub(crate) fn replace(new: &Path, dest: &Path) -> Result<()> {
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
