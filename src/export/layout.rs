//! Writes an OCI image layout directory, atomically.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use super::{Output, OCI_LAYOUT};
use crate::error::{Error, IoContext, Result};
use crate::files::{self, sync_dir};
use crate::store::{verify_error, Store};

/// Writes `output` as an OCI image layout at `dest`, replacing a previous layout there.
///
/// `dest` must not exist, be empty, or already be an OCI layout: kiln never
/// replaces a directory it did not write.
pub fn write(store: &Store, output: &Output<'_>, dest: &Path) -> Result<()> {
    let _lock = super::lock_output(dest)?;
    check_replaceable(dest)?;
    if already_written(store, output, dest)? {
        return Ok(());
    }
    let tmp = files::temp_dir_beside(dest)?;
    fill(store, output, tmp.path(), dest)?;
    files::commit_dir(tmp, dest)
}

/// Whether `dest` already is the layout of `output`, exactly: the same
/// `oci-layout` and `index.json`, and in `blobs/sha256/` exactly its blobs,
/// each intact (known so by its stamp, else re-hashed). Such a layout is
/// left as it is: a rebuild with nothing changed writes nothing there.
fn already_written(store: &Store, output: &Output<'_>, dest: &Path) -> Result<bool> {
    let same = |name: &str, want: &[u8]| fs::read(dest.join(name)).is_ok_and(|b| b == want);
    if !same("oci-layout", OCI_LAYOUT) || !same("index.json", &output.index_json()) {
        return Ok(false);
    }
    let names = |dir: &Path| -> Option<std::collections::BTreeSet<String>> {
        fs::read_dir(dir)
            .ok()?
            .map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    };
    let top = ["blobs", "index.json", "oci-layout"].map(String::from);
    if names(dest) != Some(top.into_iter().collect())
        || names(&dest.join("blobs")) != Some(["sha256".to_string()].into_iter().collect())
    {
        return Ok(false);
    }
    let blobs = output.blobs(store)?;
    let dir = dest.join("blobs").join("sha256");
    if names(&dir) != Some(blobs.iter().map(|d| d.hex().to_string()).collect()) {
        return Ok(false);
    }
    Ok(blobs.iter().all(|digest| {
        let path = dir.join(digest.hex());
        File::open(&path)
            .ok()
            .and_then(|f| store.hash_of(f, &path, digest).ok())
            .is_some_and(|d| d == *digest)
    }))
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
        // A layer blob written twice as it was built: its second copy,
        // synced, is renamed here (where the store is on this filesystem)
        // instead of copied now.
        if let Some(spare) = store.take_spare(&digest) {
            if spare.persist(&dest).is_ok() {
                store.vouch(&fs::metadata(&dest).at("stat", &dest)?, &digest);
                continue;
            }
        }
        let mut file = File::create(&dest).at("create", &dest)?;
        let path = store.blob_path(&digest);
        let src = File::open(&path).at("open blob", &path)?;
        if store.stamped(&src.metadata().at("stat", &path)?, &digest) {
            // Known intact: copied file to file (`copy_file_range`, which
            // some filesystems turn into a shared extent), not hashed again.
            let copied = io::copy(&mut &src, &mut file).at("copy", &path)?;
            if copied != src.metadata().at("stat", &path)?.len() {
                return Err(Error::invalid(
                    format!(
                        "store blob `{}` changed while it was copied",
                        path.display()
                    ),
                    Some("run the build again".into()),
                ));
            }
        } else {
            let mut src = io::BufReader::with_capacity(1 << 20, store.open_blob(&digest)?);
            io::copy(&mut src, &mut file).map_err(|e| verify_error(e, &path))?;
        }
        file.sync_all().at("sync", &dest)?;
        // The copy was verified as it was read: the next build can hard-link
        // it without reading it again.
        store.vouch(&file.metadata().at("stat", &dest)?, &digest);
    }
    files::write_synced(&dir.join("oci-layout"), OCI_LAYOUT)?;
    files::write_synced(&dir.join("index.json"), &output.index_json())?;
    for d in [&blobs_dir, &dir.join("blobs"), &dir.to_path_buf()] {
        sync_dir(d)?;
    }
    Ok(())
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
