//! Keeping a store healthy and bounded: `verify` re-hashes everything and
//! removes what is damaged; `prune` removes what no recent build used.
//!
//! Both are safe while builds run. A build marks every blob it relies on as
//! used (its mtime, under the shared `gc.lock`) before relying on it, and
//! new blobs are born with a fresh mtime. `prune` never removes a blob used
//! since the oldest live kiln process started, and removes each blob under
//! the exclusive `gc.lock` only if its mtime has not moved since it was
//! judged; so a build either sees its blob or finds it gone and makes it
//! again. Layer records, directory and package caches whose blob is gone
//! are removed with it; a record that outlives its blob is only a cache miss.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::{locks, LayerRecord, Store};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};

/// One damaged thing `verify` found and removed.
#[derive(Debug, Clone, Serialize)]
pub struct Damage {
    /// `blob` or `layer-record`.
    pub kind: &'static str,
    /// The blob's digest, or the record's path.
    pub name: String,
    /// What was wrong.
    pub reason: String,
}

/// What `verify` checked and found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Blobs re-hashed.
    pub blobs: u64,
    /// Their total size.
    pub bytes: u64,
    /// Layer records checked.
    pub layer_records: u64,
    /// What was damaged (and is now removed).
    pub damaged: Vec<Damage>,
}

/// What to prune.
#[derive(Debug, Clone, Copy, Default)]
pub struct PruneOptions {
    /// Remove blobs not used for this long.
    pub older_than: Option<Duration>,
    /// Then remove least recently used blobs until the blobs total at most this many bytes.
    pub max_size: Option<u64>,
}

/// What `prune` removed and kept.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Blobs removed.
    pub removed: u64,
    /// Their total size.
    pub removed_bytes: u64,
    /// Blobs kept.
    pub kept: u64,
    /// Their total size.
    pub kept_bytes: u64,
    /// Layer records and directory or package caches removed with their blobs.
    pub records_removed: u64,
    /// Blobs that `--max-size` would have removed but a running build may use.
    pub in_use: u64,
}

struct BlobEntry {
    digest: Digest,
    path: PathBuf,
    size: u64,
    mtime: SystemTime,
    /// Device and inode, to forget the blob's stamp when it is removed.
    id: (u64, u64),
}

impl Store {
    fn list_blobs(&self) -> Result<Vec<BlobEntry>> {
        let dir = self.blobs_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).at("list", &dir)? {
            let entry = entry.at("list", &dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(digest) = format!("sha256:{name}").parse::<Digest>() else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            out.push(BlobEntry {
                digest,
                path: entry.path(),
                size: meta.len(),
                mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                id: (meta.dev(), meta.ino()),
            });
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// Re-hashes every blob and checks every layer record; removes what is
    /// damaged. `progress` is told each blob as it is checked.
    pub fn verify(&self, progress: &dyn Fn(&Digest, u64)) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        for blob in self.list_blobs()? {
            progress(&blob.digest, blob.size);
            let file = match fs::File::open(&blob.path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("open blob", &blob.path, e)),
            };
            let ino = file.metadata().at("stat blob", &blob.path)?.ino();
            let (actual, len) =
                crate::digest::digest_reader(io::BufReader::with_capacity(1 << 20, file))
                    .at("read", &blob.path)?;
            report.blobs += 1;
            report.bytes += len;
            if actual != blob.digest && self.remove_damaged(&blob.digest, ino)? {
                report.damaged.push(Damage {
                    kind: "blob",
                    name: blob.digest.to_string(),
                    reason: format!("content hashes to `{actual}`"),
                });
            }
        }
        let dir = self.layers_dir();
        for (path, _) in json_files(&dir)? {
            report.layer_records += 1;
            let record = fs::read(&path)
                .ok()
                .and_then(|t| serde_json::from_slice::<LayerRecord>(&t).ok());
            let reason = match &record {
                None => Some("not a valid layer record".to_string()),
                Some(r) => match fs::metadata(self.blob_path(&r.digest)) {
                    Err(_) => Some(format!("its blob `{}` is missing", r.digest)),
                    Ok(m) if m.len() != r.size => Some(format!(
                        "its blob `{}` has {} bytes, not {}",
                        r.digest,
                        m.len(),
                        r.size
                    )),
                    Ok(_) => None,
                },
            };
            if let Some(reason) = reason {
                if fs::remove_file(&path).is_ok() {
                    report.damaged.push(Damage {
                        kind: "layer-record",
                        name: path.display().to_string(),
                        reason,
                    });
                }
            }
        }
        Ok(report)
    }

    /// Removes blobs no build used for `older_than`, then least recently
    /// used ones down to `max_size`, and the caches that name removed blobs.
    pub fn prune(&self, options: &PruneOptions) -> Result<PruneReport> {
        let now = SystemTime::now();
        // Whatever was used since the oldest live process started may be in
        // use. A blob's time is moved at most every `TOUCH_EVERY`, so a live
        // build's blobs may look that much older; a second more for coarse
        // file timestamps.
        let protect =
            locks::oldest_live_start(self.root()) - super::TOUCH_EVERY - Duration::from_secs(1);
        let mut blobs = self.list_blobs()?;
        blobs.sort_by_key(|b| (b.mtime, b.digest.clone()));
        let mut doomed = vec![false; blobs.len()];
        if let Some(age) = options.older_than {
            let cutoff = now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
            for (i, b) in blobs.iter().enumerate() {
                doomed[i] = b.mtime < cutoff && b.mtime < protect;
            }
        }
        let mut report = PruneReport::default();
        if let Some(max) = options.max_size {
            let mut total: u64 = blobs
                .iter()
                .zip(&doomed)
                .filter(|(_, d)| !**d)
                .map(|(b, _)| b.size)
                .sum();
            for (i, b) in blobs.iter().enumerate() {
                if total <= max {
                    break;
                }
                if doomed[i] {
                    continue;
                }
                if b.mtime < protect {
                    doomed[i] = true;
                    total -= b.size;
                } else {
                    report.in_use += 1;
                }
            }
        }
        {
            let _gc = locks::gc_lock(self.root(), true)?;
            for (b, doom) in blobs.iter().zip(&mut doomed) {
                // Used since it was judged: keep it.
                let unchanged = fs::metadata(&b.path)
                    .and_then(|m| m.modified())
                    .is_ok_and(|m| m == b.mtime);
                *doom = *doom && unchanged && fs::remove_file(&b.path).is_ok();
            }
        }
        for (b, doom) in blobs.iter().zip(&doomed) {
            if *doom {
                report.removed += 1;
                report.removed_bytes += b.size;
            } else {
                report.kept += 1;
                report.kept_bytes += b.size;
            }
        }
        report.records_removed = self.drop_orphan_caches()?;
        if let Some(age) = options.older_than {
            self.drop_old_tree_marks(now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH));
        }
        if report.removed > 0 {
            // Forget the stamps of removed blobs (their inodes may be reused).
            let gone = blobs
                .iter()
                .zip(&doomed)
                .filter(|(_, d)| **d)
                .map(|(b, _)| b.id)
                .collect();
            self.forget_stamps(&gone)?;
        }
        Ok(report)
    }

    /// Removes the marks of tree shapes no planning saw since `cutoff`
    /// ([`super::stat_cache::StatCache::first_shape`]): such a tree is at
    /// worst hashed as its layer is written, not before.
    fn drop_old_tree_marks(&self, cutoff: SystemTime) {
        let marks = fs::read_dir(self.trees_dir())
            .into_iter()
            .flatten()
            .flatten();
        for mark in marks {
            let old = mark
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff);
            if old {
                let _ = fs::remove_file(mark.path());
            }
        }
    }

    /// Removes layer records, derived-blob records, directory and package
    /// caches whose blob is gone.
    fn drop_orphan_caches(&self) -> Result<u64> {
        let mut removed = 0;
        for (path, _) in json_files(&self.layers_dir())? {
            // Records are renamed into place whole, so an unreadable one is debris.
            let gone = fs::read(&path)
                .ok()
                .and_then(|t| serde_json::from_slice::<LayerRecord>(&t).ok())
                .is_none_or(|r| !self.contains(&r.digest));
            if gone && fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        for (path, _) in json_files(&self.derived_dir())? {
            let gone = fs::read(&path)
                .ok()
                .and_then(|t| serde_json::from_slice::<super::Derived>(&t).ok())
                .is_none_or(|r| !self.contains(&r.digest));
            if gone && fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        for entry in fs::read_dir(self.chunks_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            // `chunks/<hex>.v3` and `<hex>.r1`: gone with their blob; `<hex>.v1`, `.v2`
            // (older forms, no longer read) gone now.
            let name = entry.file_name().to_string_lossy().into_owned();
            let gone = match name.split_once('.') {
                Some((hex, version))
                    if format!(".{version}") == super::CHUNKS_SUFFIX
                        || format!(".{version}") == super::RESUME_SUFFIX =>
                {
                    Digest::from_hex(hex).is_some_and(|d| !self.contains(&d))
                }
                Some((hex, version)) => {
                    Digest::from_hex(hex).is_some()
                        && version
                            .strip_prefix('v')
                            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                }
                None => false,
            };
            if gone && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        for (sub, prefix) in [(super::DIRS, ""), (super::DEBS, super::DEBS_PREFIX)] {
            for (path, stem) in json_files(&self.root().join(sub))? {
                // `dirs/<hex>.v2.json`, `debs/v2-<hex>.json`: the hex alone.
                let hex = stem.strip_prefix(prefix).unwrap_or(&stem);
                let hex = hex.split('.').next().unwrap_or_default();
                let gone = format!("sha256:{hex}")
                    .parse::<Digest>()
                    .is_ok_and(|d| !self.contains(&d));
                if gone && fs::remove_file(&path).is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// The `*.json` files of a directory (not temporary ones), with their stems.
fn json_files(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".json") {
            if !name.starts_with('.') {
                out.push((entry.path(), stem.to_string()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Parses an age such as `30d`, `12h`, `90m`, `45s` or `2w`.
pub fn parse_age(text: &str) -> std::result::Result<Duration, String> {
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not an age such as `30d`, `12h` or `90m`"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("`{text}` needs a unit: `s`, `m`, `h`, `d` or `w`")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is too long an age"))
}

/// Parses a size such as `10G`, `500M`, `64K` or `1048576` (binary units).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.strip_suffix(['B', 'b']).unwrap_or(text);
    let t = t.strip_suffix(['i']).unwrap_or(t);
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as `10G` or `500M`"))?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => {
            return Err(format!(
                "`{text}` has an unknown unit: use `K`, `M`, `G` or `T`"
            ))
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn ages_and_sizes_parse() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        assert!(parse_age("30").unwrap_err().contains("needs a unit"));
        assert!(parse_age("d").is_err());
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("500MiB"), Ok(500 << 20));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("5X").is_err());
    }

    /// A tree shape is new to one planning (every walk of it there) and
    /// not to the next; prune forgets the marks not seen within its age,
    /// and only those.
    #[test]
    fn tree_marks_are_new_once_and_prune_drops_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let planning = || super::super::stat_cache::StatCache::of_store(&store);
        let (old, recent) = (Digest::of(b"old"), Digest::of(b"recent"));
        let first = planning();
        assert!(first.first_shape(&old));
        assert!(
            first.first_shape(&old),
            "new to all of the planning that found it"
        );
        assert!(first.first_shape(&recent));
        assert!(!planning().first_shape(&old), "seen by an earlier planning");
        let month = SystemTime::now() - Duration::from_secs(40 * 86_400);
        let mark = store.trees_dir().join(old.hex());
        fs::File::options()
            .write(true)
            .open(&mark)
            .unwrap()
            .set_modified(month)
            .unwrap();
        store
            .prune(&PruneOptions {
                older_than: Some(Duration::from_secs(30 * 86_400)),
                max_size: None,
            })
            .unwrap();
        assert!(!mark.exists(), "a mark not seen for 40 days is dropped");
        let later = planning();
        assert!(!later.first_shape(&recent), "a recent mark stays");
        assert!(later.first_shape(&old), "a dropped mark is new again");

        // A store with layers from before shapes were marked: no shape is
        // new to its first planning (its layers may hold any tree), which
        // marks what it walks.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::create_dir_all(store.layers_dir()).unwrap();
        fs::write(store.layers_dir().join("x.json"), b"{}").unwrap();
        let shape = Digest::of(b"any");
        let planning = || super::super::stat_cache::StatCache::of_store(&store);
        assert!(!planning().first_shape(&shape));
        assert!(store.trees_dir().join(shape.hex()).exists());
        // From then on the store marks shapes: an unmarked one is new.
        assert!(planning().first_shape(&Digest::of(b"another")));
    }

    #[test]
    fn the_store_names_its_caches_as_its_docs_say() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::of(b"x");
        let hex = d.hex();
        let under = |p: PathBuf| p.strip_prefix(dir.path()).unwrap().to_path_buf();
        assert_eq!(
            under(store.blob_path(&d)),
            Path::new(&format!("blobs/sha256/{hex}"))
        );
        assert_eq!(
            under(store.layer_index_path(&d)),
            Path::new(&format!("layers/{hex}.json"))
        );
        assert_eq!(
            under(store.dirs_cache_path(&d)),
            Path::new(&format!("dirs/{hex}.v2.json"))
        );
        assert_eq!(
            under(store.deb_contents_path(&d)),
            Path::new(&format!("debs/v2-{hex}.json"))
        );
        assert_eq!(under(store.stat_cache_path()), Path::new("stat-cache"));
        assert_eq!(under(store.blob_stamps_path()), Path::new("blob-stamps"));
        assert_eq!(under(store.tmp_dir()), Path::new("tmp"));
    }

    #[test]
    fn prune_drops_the_caches_of_the_blobs_it_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let kept = store.put_bytes(b"kept").unwrap();
        let gone = store.put_bytes(b"gone").unwrap();
        let caches = |d: &Digest| [store.dirs_cache_path(d), store.deb_contents_path(d)];
        for path in caches(&kept).iter().chain(&caches(&gone)) {
            let mut tmp = store.temp_file_beside(path).unwrap();
            tmp.write_all(b"{}").unwrap();
            tmp.persist(path).unwrap();
        }
        fs::remove_file(store.blob_path(&gone)).unwrap();
        let report = store.prune(&PruneOptions::default()).unwrap();
        assert_eq!(report.records_removed, 2);
        assert!(caches(&kept).iter().all(|p| p.exists()));
        assert!(!caches(&gone).iter().any(|p| p.exists()));
    }

    #[test]
    fn verify_removes_a_damaged_blob_and_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let good = store.put_bytes(b"good").unwrap();
        let bad = store.put_bytes(b"bad!").unwrap();
        fs::write(store.blob_path(&bad), b"bad?").unwrap();
        let record = LayerRecord {
            digest: bad.clone(),
            diff_id: bad.clone(),
            size: 4,
            media_type: "x".into(),
        };
        store.remember_layer(&good, &record).unwrap();
        let report = store.verify(&|_, _| {}).unwrap();
        assert_eq!((report.blobs, report.layer_records), (2, 1));
        let kinds: Vec<_> = report.damaged.iter().map(|d| d.kind).collect();
        assert_eq!(kinds, ["blob", "layer-record"]);
        assert!(store.contains(&good) && !store.contains(&bad));
        assert!(store.verify(&|_, _| {}).unwrap().damaged.is_empty());
    }
}
