//! `.deb` contents: the `ar` archive's `control.tar.*` (for the dpkg
//! database) and `data.tar.*` (the files), read without unpacking anything
//! onto the host: every file's bytes go into the store as a blob, so no path
//! in a package can make kiln write outside its store.
//!
//! Paths are checked: absolute paths, `..`, paths through a symlink of the
//! same package, and devices, fifos and sockets are refused, naming the
//! package. The result is cached in the store per `.deb` digest.

use std::io::{self, BufReader, Read, Write};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::store::Store;

/// One entry of a package's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebEntry {
    /// Path in the image, relative (`usr/bin/x`).
    pub path: String,
    /// What it is.
    #[serde(flatten)]
    pub kind: DebKind,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// What a package's entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DebKind {
    /// A directory.
    Dir,
    /// A regular file, its content a blob in the store.
    File {
        /// Its size.
        size: u64,
        /// Its content's digest.
        digest: Digest,
    },
    /// A symbolic link, stored as written.
    Symlink {
        /// What it points to.
        target: String,
    },
    /// A hard link to another entry of the package.
    Hardlink {
        /// That entry's path.
        target: String,
    },
}

impl DebEntry {
    /// The content's digest, for a file.
    pub fn digest(&self) -> Option<&Digest> {
        match &self.kind {
            DebKind::File { digest, .. } => Some(digest),
            _ => None,
        }
    }
}

/// What a package holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DebContents {
    /// The `control` file.
    pub control: String,
    /// The `md5sums` file, if any.
    pub md5sums: Option<String>,
    /// The `postinst` script, if any (read, never run: see `install`).
    #[serde(default)]
    pub postinst: Option<String>,
    /// The `preinst` script, if any (read, never run).
    pub preinst: Option<String>,
    /// [`CONTENTS_FORMAT`] when written: a cached entry of another format
    /// (one from before `preinst` was kept) is read from the `.deb` again.
    pub format: u32,
    /// The data entries, in archive order.
    pub entries: Vec<DebEntry>,
}

/// The format of cached [`DebContents`].
pub const CONTENTS_FORMAT: u32 = 2;

/// Refuses a control-archive file (`control`, `md5sums`, `postinst`) larger than this.
pub const MAX_CONTROL_FILE: u64 = 64 << 20;

/// Refuses a package whose control or data archive unpacks to more than this.
pub const MAX_UNPACKED: u64 = 16 << 30;

fn bad(package: &str, why: impl std::fmt::Display) -> Error {
    Error::invalid(
        format!("package `{package}` cannot be installed: {why}"),
        Some("the .deb is malformed or hostile; kiln refuses it and writes nothing".into()),
    )
}

/// Reads the `.deb` blob `digest` of `package` from the store (cached per
/// digest), every file's blob claimed (marked used, see [`Store::claim_all`]):
/// a cached list whose blobs a prune removed is read from the `.deb` again.
pub fn contents(store: &Store, package: &str, digest: &Digest) -> Result<DebContents> {
    if let Some(c) = cached(store, digest) {
        if store.claim_all(c.entries.iter().filter_map(DebEntry::digest))? {
            return Ok(c);
        }
    }
    extract(store, package, digest)
}

/// Like [`contents`], but a cached list is taken as it is, its files' blobs
/// neither opened nor claimed: for a layer the layer cache may well answer,
/// whose files are then never read. Whoever reads them calls [`claim`] first.
pub fn contents_unclaimed(store: &Store, package: &str, digest: &Digest) -> Result<DebContents> {
    match cached(store, digest) {
        Some(c) => Ok(c),
        None => extract(store, package, digest),
    }
}

/// Claims the blobs of every file of the `.deb` `digest`, putting back
/// (from the `.deb`) any that a prune removed, so that they can be read.
pub fn claim(store: &Store, package: &str, digest: &Digest) -> Result<()> {
    contents(store, package, digest).map(drop)
}

/// The cached contents of the `.deb` `digest`, if of this format.
fn cached(store: &Store, digest: &Digest) -> Option<DebContents> {
    std::fs::read(store.deb_contents_path(digest))
        .ok()
        .and_then(|b| serde_json::from_slice::<DebContents>(&b).ok())
        .filter(|c| c.format == CONTENTS_FORMAT)
}

/// Reads the `.deb` itself: every file into the store, the list cached.
fn extract(store: &Store, package: &str, digest: &Digest) -> Result<DebContents> {
    let cache = store.deb_contents_path(digest);
    let path = store.blob_path(digest);
    let mut reader = BufReader::new(store.open_blob(digest)?);
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).at("read", &path)?;
    if &magic != b"!<arch>\n" {
        return Err(bad(package, "not an ar archive"));
    }
    let mut control = None;
    let mut md5sums = None;
    let mut postinst = None;
    let mut preinst = None;
    let mut entries = None;
    loop {
        let mut header = [0u8; 60];
        match reader.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(Error::io("read", &path, e)),
        }
        let name = String::from_utf8_lossy(&header[..16])
            .trim()
            .trim_end_matches('/')
            .to_string();
        let size: u64 = String::from_utf8_lossy(&header[48..58])
            .trim()
            .parse()
            .map_err(|_| bad(package, "a corrupt ar header"))?;
        let mut member = (&mut reader).take(size);
        if name.starts_with("control.tar") {
            let (c, m, p, pre) = read_control(decompress(&name, &mut member, package)?, package)?;
            control = Some(c);
            md5sums = m;
            postinst = p;
            preinst = pre;
        } else if name.starts_with("data.tar") {
            entries = Some(read_data(
                store,
                decompress(&name, &mut member, package)?,
                package,
            )?);
        }
        io::copy(&mut member, &mut io::sink()).at("read", &path)?;
        if size % 2 == 1 {
            let mut pad = [0u8; 1];
            let _ = reader.read(&mut pad);
        }
    }
    // Reading to the end lets the store's reader check the .deb's digest.
    io::copy(&mut reader, &mut io::sink()).map_err(|e| crate::store::verify_error(e, &path))?;
    let contents = DebContents {
        control: control.ok_or_else(|| bad(package, "no control.tar member"))?,
        md5sums,
        postinst,
        preinst,
        format: CONTENTS_FORMAT,
        entries: entries.ok_or_else(|| bad(package, "no data.tar member"))?,
    };
    let mut tmp = store.temp_file_beside(&cache)?;
    tmp.write_all(&serde_json::to_vec(&contents).expect("serialisable"))
        .at("write", tmp.path())?;
    crate::files::rename_into(tmp, &cache)?;
    Ok(contents)
}

fn decompress<'a>(name: &str, r: impl Read + 'a, package: &str) -> Result<Box<dyn Read + 'a>> {
    let unpacked: Box<dyn Read + 'a> = if name.ends_with(".xz") {
        // lzma-rs decodes into a writer: into an unnamed temporary file, so
        // a large package is not held in memory, and no further than the bound.
        let mut r = BufReader::new(r);
        let tmp = tempfile::tempfile().map_err(|e| bad(package, e))?;
        let mut out = Bounded {
            inner: io::BufWriter::new(tmp),
            left: MAX_UNPACKED,
        };
        lzma_rs::xz_decompress(&mut r, &mut out)
            .map_err(|e| bad(package, format!("bad xz data: {e}")))?;
        let mut file = out
            .inner
            .into_inner()
            .map_err(|e| bad(package, e.error()))?;
        io::Seek::rewind(&mut file).map_err(|e| bad(package, e))?;
        Box::new(BufReader::new(file))
    } else if name.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(r))
    } else if name.ends_with(".zst") {
        Box::new(zstd::stream::read::Decoder::new(r).map_err(|e| bad(package, e))?)
    } else if name.ends_with(".tar") {
        Box::new(r)
    } else {
        return Err(bad(package, format!("unknown member `{name}`")));
    };
    Ok(Box::new(Bounded {
        inner: unpacked,
        left: MAX_UNPACKED,
    }))
}

/// A reader or writer that fails, rather than go on, past `left` bytes.
struct Bounded<T> {
    inner: T,
    left: u64,
}

fn too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("it unpacks to more than {MAX_UNPACKED} bytes"),
    )
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(too_large)?;
        Ok(n)
    }
}

impl<W: io::Write> io::Write for Bounded<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.left = self
            .left
            .checked_sub(buf.len() as u64)
            .ok_or_else(too_large)?;
        self.inner
            .write(buf)
            .inspect(|&n| self.left += (buf.len() - n) as u64)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A control-archive file as text, no larger than [`MAX_CONTROL_FILE`].
fn small_text(e: impl Read, name: &str, package: &str) -> Result<String> {
    let mut text = String::new();
    e.take(MAX_CONTROL_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| bad(package, e))?;
    if text.len() as u64 > MAX_CONTROL_FILE {
        return Err(bad(
            package,
            format!("its `{name}` is larger than {MAX_CONTROL_FILE} bytes"),
        ));
    }
    Ok(text)
}

type ControlFiles = (String, Option<String>, Option<String>, Option<String>);

fn read_control(r: impl Read, package: &str) -> Result<ControlFiles> {
    let mut ar = tar::Archive::new(r);
    let (mut control, mut md5sums, mut postinst, mut preinst) = (None, None, None, None);
    for e in ar.entries().map_err(|e| bad(package, e))? {
        let mut e = e.map_err(|e| bad(package, e))?;
        let name = e
            .path()
            .map_err(|e| bad(package, e))?
            .to_string_lossy()
            .into_owned();
        match name.trim_start_matches("./") {
            "control" => control = Some(small_text(&mut e, "control", package)?),
            "md5sums" => md5sums = Some(small_text(&mut e, "md5sums", package)?),
            "postinst" => postinst = Some(small_text(&mut e, "postinst", package)?),
            "preinst" => preinst = Some(small_text(&mut e, "preinst", package)?),
            _ => {}
        }
    }
    Ok((
        control.ok_or_else(|| bad(package, "no control file"))?,
        md5sums,
        postinst,
        preinst,
    ))
}

/// Normalises a tar path from a package; refuses absolute paths and `..`.
fn clean(raw: &str, package: &str) -> Result<String> {
    if raw.starts_with('/') {
        return Err(bad(package, format!("absolute path `{raw}` in its data")));
    }
    let mut parts = Vec::new();
    for p in raw.split('/') {
        match p {
            "" | "." => {}
            ".." => return Err(bad(package, format!("path `{raw}` climbs out with `..`"))),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

fn read_data(store: &Store, r: impl Read, package: &str) -> Result<Vec<DebEntry>> {
    let mut ar = tar::Archive::new(r);
    let mut out = Vec::new();
    let mut symlinks = std::collections::BTreeSet::new();
    for e in ar.entries().map_err(|e| bad(package, e))? {
        let mut e = e.map_err(|e| bad(package, e))?;
        let raw = e.path_bytes();
        let raw = String::from_utf8(raw.into_owned())
            .map_err(|_| bad(package, "a path that is not UTF-8"))?;
        let path = clean(&raw, package)?;
        if path.is_empty() {
            continue;
        }
        let mut ancestor = path.as_str();
        while let Some((up, _)) = ancestor.rsplit_once('/') {
            if symlinks.contains(up) {
                return Err(bad(
                    package,
                    format!("`{path}` would be written through the symlink `{up}`"),
                ));
            }
            ancestor = up;
        }
        let h = e.header();
        let (mode, uid, gid) = (
            h.mode().unwrap_or(0o644) & 0o7777,
            h.uid().unwrap_or(0) as u32,
            h.gid().unwrap_or(0) as u32,
        );
        let kind = h.entry_type();
        let link = || -> Result<String> {
            let l = e
                .link_name_bytes()
                .ok_or_else(|| bad(package, format!("link `{path}` has no target")))?;
            String::from_utf8(l.into_owned())
                .map_err(|_| bad(package, "a link target that is not UTF-8"))
        };
        let kind = if kind.is_dir() {
            DebKind::Dir
        } else if kind.is_symlink() {
            symlinks.insert(path.clone());
            DebKind::Symlink { target: link()? }
        } else if kind.is_hard_link() {
            DebKind::Hardlink {
                target: clean(&link()?, package)?,
            }
        } else if kind.is_file() {
            let mut w = store.writer()?;
            let size = io::copy(&mut e, &mut w).map_err(|err| bad(package, err))?;
            let (digest, _) = w.commit(None)?;
            DebKind::File { size, digest }
        } else {
            return Err(bad(
                package,
                format!("`{path}` is a device, fifo or socket"),
            ));
        };
        let entry = DebEntry {
            path: path.clone(),
            kind,
            mode,
            uid,
            gid,
        };
        out.push(entry);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_tar(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            match link {
                Some(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, path, target).unwrap();
                }
                None => {
                    h.set_size(1);
                    b.append_data(&mut h, path, &b"x"[..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn refuses_writing_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let evil = data_tar(&[("./etc/evil", Some("/tmp")), ("./etc/evil/x", None)]);
        let err = read_data(&store, &evil[..], "evil")
            .unwrap_err()
            .to_string();
        assert!(err.contains("through the symlink"), "{err}");
        let fine = data_tar(&[("./etc/link", Some("/tmp")), ("./etc/x", None)]);
        assert_eq!(read_data(&store, &fine[..], "fine").unwrap().len(), 2);
    }

    #[test]
    fn refuses_escaping_paths() {
        assert!(clean("/etc/passwd", "p").is_err());
        assert!(clean("./usr/../../etc", "p").is_err());
        assert_eq!(clean("./usr/bin/x", "p").unwrap(), "usr/bin/x");
    }
}

#[cfg(test)]
mod kind_tests {
    use super::*;

    /// Caches written before entries had a typed kind (every field on every
    /// entry, `null` where unused) still read, so no store is re-extracted.
    #[test]
    fn reads_the_earlier_cache_form() {
        let d = Digest::of(b"x");
        let old = format!(
            r#"[{{"path":"a","kind":"dir","mode":493,"uid":0,"gid":0,"size":0,"digest":null,"target":null}},
               {{"path":"a/f","kind":"file","mode":420,"uid":0,"gid":0,"size":1,"digest":"{d}","target":null}},
               {{"path":"a/l","kind":"symlink","mode":511,"uid":0,"gid":0,"size":0,"digest":null,"target":"f"}},
               {{"path":"a/h","kind":"hardlink","mode":420,"uid":0,"gid":0,"size":0,"digest":null,"target":"a/f"}}]"#
        );
        let entries: Vec<DebEntry> = serde_json::from_str(&old).unwrap();
        let kinds: Vec<DebKind> = entries.into_iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                DebKind::Dir,
                DebKind::File { size: 1, digest: d },
                DebKind::Symlink { target: "f".into() },
                DebKind::Hardlink {
                    target: "a/f".into()
                },
            ]
        );
    }
}
