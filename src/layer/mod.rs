//! Stage 4, build layers: a layer's planned entries → one reproducible tar
//! stream → compressed blob in the store, with its diff_id.
//!
//! The tar stream is produced, hashed (diff_id), compressed and hashed again
//! (blob digest) in one pass through fixed-size buffers, so memory does not
//! grow with layer size. Compression runs on other threads, chunk by chunk;
//! a gzip layer's chunks are cut at entries and looked up in the store's
//! chunk cache first ([`pgzip`]), so a rebuild after a small change
//! compresses only the chunks the change touched, and writes the same bytes
//! a cold build would; the chunks before the first one it touched are
//! copied whole from the last build's blob, both hashings taken up from the
//! states it saved there, without opening their files (`resume.rs`). Every
//! host file copied must match the digest the plan recorded (by its change
//! time, or hashed again); a file that changed during the build fails it
//! rather than producing a layer whose cache key lies.

pub mod compress;
pub mod deflate;
pub mod pgzip;
pub mod read;
mod resume;
pub mod tar;

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use crate::digest::{Digest, HashingReader, HashingWriter};
use crate::error::{Error, Result};
use crate::plan::{Content, Entry, EntryKind, Hashed, Seen};
use crate::recipe::Compression;
use crate::store::stat_cache::FileStamp;
use crate::store::{LayerRecord, Store};

use self::tar::{Header, Kind, TarWriter};

/// How many chunks a gzip layer was compressed in, and how many of them the
/// store's chunk cache gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Chunks {
    /// Chunks in the layer.
    pub total: u64,
    /// Chunks reused from an earlier build.
    pub reused: u64,
    /// Of those, the chunks before the first one that changed, taken whole
    /// from an earlier build's blob without reading their files
    /// (`resume.rs`).
    pub resumed: u64,
}

/// Builds the layer blob for `entries` (already sorted) into `store`,
/// compressing on `threads` threads (0: one per CPU; the bytes do not depend
/// on it); says how its chunks were made (gzip only).
pub fn build(
    store: &Store,
    entries: &[Entry],
    compression: Compression,
    mtime: u64,
    threads: usize,
) -> Result<(LayerRecord, Option<Chunks>)> {
    let (record, chunks, _) = build_metered(
        store,
        entries,
        compression,
        mtime,
        threads,
        &Default::default(),
    )?;
    Ok((record, chunks))
}

/// [`build`], moving `meter` by the bytes of file content written (the
/// total is [`crate::plan::LayerPlan::file_stats`]'s); also says what
/// digests the files planning left unhashed have ([`Content::Unhashed`]).
pub fn build_metered(
    store: &Store,
    entries: &[Entry],
    compression: Compression,
    mtime: u64,
    threads: usize,
    meter: &crate::progress::Meter,
) -> Result<(LayerRecord, Option<Chunks>, Vec<Hashed>)> {
    let cache =
        (compression == Compression::Gzip).then(|| std::sync::Arc::new(store.chunk_cache()));
    let prefix = match &cache {
        Some(cache) => resume::prefix(store, cache, entries, mtime),
        None => None,
    };
    let (blob, resumed, first, mut blob_states) = match prefix {
        Some(p) => (p.writer, Some(p.resumed), p.entry, p.blob_states),
        None => (store.layer_writer()?, None, 0, Vec::new()),
    };
    let mut done = entries[..first]
        .iter()
        .map(|e| match &e.kind {
            crate::plan::EntryKind::File { size, .. } => *size,
            _ => 0,
        })
        .sum();
    meter.set(done);
    let encoder = compress::Encoder::layer(compression, blob, threads, cache)
        .map_err(|e| io_err(store, e))?;
    let sink = match encoder {
        compress::Encoder::Gzip(mut gzip) => {
            match resumed {
                Some(resumed) => gzip.resume(resumed, first),
                None => gzip.hash_input(),
            }
            Sink::Gzip(gzip)
        }
        compress::Encoder::Zstd(zstd) => Sink::Zstd(Box::new(HashingWriter::beside(zstd))),
    };
    let mut tar = TarWriter::new(sink);
    let mut scratch = vec![0; SCRATCH];
    let mut hashed = Vec::new();
    for (i, entry) in entries.iter().enumerate().skip(first) {
        let found = write_entry(&mut tar, entry, mtime, Check::Digest(store), &mut scratch)
            .map_err(|e| match e {
                EntryError::Io(e) => io_err(store, e),
                EntryError::Kiln(e) => e,
            })?;
        if let Some((digest, stamp, read)) = found {
            hashed.push(Hashed {
                entry: i,
                digest,
                stamp,
                read,
            });
        }
        if let crate::plan::EntryKind::File { size, .. } = &entry.kind {
            done += size;
            meter.set(done);
        }
    }
    let sink = tar.finish().map_err(|e| io_err(store, e))?;
    let (finished, diff_id) = sink.finish().map_err(|e| io_err(store, e))?;
    let (digest, size, mut saved) = finished.out.commit_saving()?;
    // Only a cache: a record lost here means that chunk is compressed again
    // (and a record of states lost, that the next build reads it all).
    blob_states.append(&mut saved);
    let states = crate::store::ResumeRecord {
        chunk_states: finished.states,
        blob_states,
    };
    let _ = store.remember_chunks(&digest, &finished.chunks, Some(&states));
    let chunks = (compression == Compression::Gzip).then_some(Chunks {
        total: finished.chunks.len() as u64,
        reused: finished.reused,
        resumed: finished.resumed,
    });
    let record = LayerRecord {
        digest,
        diff_id,
        size,
        media_type: compress::media_type(compression).to_string(),
    };
    Ok((record, chunks, hashed))
}

/// The diff_id `entries` would have: the tar stream hashed, not compressed
/// (what a layer fetched from a shared cache is checked against). Host files
/// are not checked against their planned digests on the way: a file that
/// changed since planning gives another diff_id, which is all the caller
/// compares.
pub fn diff_id(entries: &[Entry], mtime: u64) -> Result<Digest> {
    let sink_err = |e: io::Error| Error::internal("hash a layer's tar stream", e);
    let mut tar = TarWriter::new(HashingWriter::beside(io::sink()));
    let mut scratch = vec![0; SCRATCH];
    for entry in entries {
        write_entry(&mut tar, entry, mtime, Check::Length, &mut scratch).map_err(|e| match e {
            EntryError::Io(e) => sink_err(e),
            EntryError::Kiln(e) => e,
        })?;
    }
    let hashing = tar.finish().map_err(sink_err)?;
    Ok(hashing.finish().1)
}

/// How a host file is checked as it is copied.
#[derive(Clone, Copy)]
enum Check<'a> {
    /// Against its planned digest (and length). A file that looks as
    /// planning saw it ([`Seen`]) before and after the copy is not hashed
    /// again: planning hashed it, or took the stat cache's word, which is
    /// all a rebuild with nothing changed stands on (it reads no file); a
    /// write during the copy moves the file's change time, which the second
    /// look sees. The same goes for a blob of the store (a package's file)
    /// the store knows intact.
    Digest(&'a Store),
    /// Against its planned length only.
    Length,
    /// Not read at all: a dry run ([`pgzip::ParallelGzip::dry`]).
    Dry,
}

enum EntryError {
    Io(io::Error),
    Kiln(Error),
}

impl From<io::Error> for EntryError {
    fn from(e: io::Error) -> Self {
        EntryError::Io(e)
    }
}

fn io_err(store: &Store, e: io::Error) -> Error {
    Error::io("write a layer into", store.tmp_dir(), e)
}

/// Where a layer's tar stream goes, told where entries and their content
/// start (so that gzip can cut its chunks there).
trait Marks: Write + Sized {
    fn entry(&mut self, _path: &str, _size: u64) -> io::Result<()> {
        Ok(())
    }
    fn content(&mut self, _digest: &Digest) {}
    /// The content comes next, its digest once written ([`Self::resolve`]).
    fn content_later(&mut self) {}
    /// The digest of the content written since [`Self::content_later`].
    fn resolve(&mut self, _digest: &Digest) {}
    /// Copies up to `size` bytes of `from` in; says how many there were.
    fn read_from(&mut self, from: &mut dyn Read, size: u64, scratch: &mut [u8]) -> io::Result<u64> {
        copy_through(from, size, self, scratch)
    }
    /// Passes over `size` bytes of a file's content (a dry run only).
    fn skip(&mut self, _size: u64) -> io::Result<()> {
        Err(io::Error::other("only a dry run passes over content"))
    }
}

impl Marks for pgzip::ParallelGzip<io::Sink> {
    fn entry(&mut self, path: &str, size: u64) -> io::Result<()> {
        pgzip::ParallelGzip::entry(self, path, size)
    }
    fn content(&mut self, digest: &Digest) {
        pgzip::ParallelGzip::content(self, digest)
    }
    fn skip(&mut self, size: u64) -> io::Result<()> {
        pgzip::ParallelGzip::skip(self, size)
    }
}

impl Marks for HashingWriter<io::Sink> {}

/// A layer's compressor, and the hashing of its tar stream (its diff_id):
/// gzip hashes the chunks it cuts, so that a file's bytes are read straight
/// into the chunk that holds them and copied nowhere else; zstd's input is
/// hashed beside it.
enum Sink<W: Write> {
    Gzip(Box<pgzip::ParallelGzip<W>>),
    Zstd(Box<HashingWriter<zstd::stream::write::Encoder<'static, W>>>),
}

impl<W: Write> Sink<W> {
    /// Ends the stream: what the compressor leaves, and the diff_id.
    fn finish(self) -> io::Result<(pgzip::Finished<W>, Digest)> {
        match self {
            Sink::Gzip(gzip) => {
                let finished = gzip.finish()?;
                let diff_id = finished
                    .input_digest
                    .clone()
                    .ok_or_else(|| io::Error::other("the gzip stream was not hashed"))?;
                Ok((finished, diff_id))
            }
            Sink::Zstd(hashing) => {
                let (zstd, diff_id, _) = hashing.finish();
                let out = zstd.finish()?;
                let finished = pgzip::Finished {
                    out,
                    chunks: Vec::new(),
                    reused: 0,
                    resumed: 0,
                    input_digest: None,
                    states: Vec::new(),
                };
                Ok((finished, diff_id))
            }
        }
    }
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Gzip(g) => g.write(buf),
            Sink::Zstd(z) => z.write(&buf[..buf.len().min(ZSTD_FEED)]),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Gzip(g) => g.flush(),
            Sink::Zstd(z) => z.flush(),
        }
    }
}

impl<W: Write> Marks for Sink<W> {
    fn entry(&mut self, path: &str, size: u64) -> io::Result<()> {
        match self {
            Sink::Gzip(g) => g.entry(path, size),
            Sink::Zstd(_) => Ok(()),
        }
    }
    fn content(&mut self, digest: &Digest) {
        if let Sink::Gzip(g) = self {
            g.content(digest);
        }
    }
    fn content_later(&mut self) {
        if let Sink::Gzip(g) = self {
            g.content_later();
        }
    }
    fn resolve(&mut self, digest: &Digest) {
        if let Sink::Gzip(g) = self {
            g.resolve(digest);
        }
    }
    fn read_from(&mut self, from: &mut dyn Read, size: u64, scratch: &mut [u8]) -> io::Result<u64> {
        match self {
            Sink::Gzip(g) => g.read_from(from, size),
            Sink::Zstd(_) => copy_through(from, size, self, scratch),
        }
    }
}

/// Writes one entry; for a host file planning left unhashed
/// ([`Content::Unhashed`]), says what digest it found, how the file looked
/// while it was read, and when.
fn write_entry<W: Marks>(
    tar: &mut TarWriter<W>,
    entry: &Entry,
    mtime: u64,
    check: Check<'_>,
    scratch: &mut [u8],
) -> Result<Option<Found>, EntryError> {
    let (kind, size, link) = match &entry.kind {
        EntryKind::Dir => (Kind::Dir, 0, ""),
        EntryKind::File { size, .. } => (Kind::File, *size, ""),
        EntryKind::Symlink { target } => (Kind::Symlink, 0, target.as_str()),
        EntryKind::HardLink { target } => (Kind::HardLink, 0, target.as_str()),
    };
    tar.data().entry(&entry.path, size)?;
    tar.header(&Header {
        path: &entry.path,
        kind,
        mode: entry.mode,
        uid: entry.uid.into(),
        gid: entry.gid.into(),
        size,
        mtime,
        link,
    })?;
    let mut found = None;
    if let EntryKind::File {
        content,
        size,
        digest,
    } = &entry.kind
    {
        match content {
            Content::Unhashed(..) => tar.data().content_later(),
            _ => tar.data().content(digest),
        }
        match content {
            Content::Inline(bytes) => tar.data().write_all(bytes)?,
            Content::Host(..) if matches!(check, Check::Dry) => tar.data().skip(*size)?,
            Content::Host(path, seen) => {
                copy_host_file(tar.data(), path, *size, digest, *seen, check, scratch)?
            }
            Content::Unhashed(path, _) if matches!(check, Check::Dry) => {
                return Err(EntryError::Io(io::Error::other(format!(
                    "a dry run cannot pass over `{}`, not hashed yet",
                    path.display()
                ))))
            }
            Content::Unhashed(path, id) => {
                let hashed = hash_host_file(tar.data(), path, *id, *size, scratch)?;
                tar.data().resolve(&hashed.0);
                found = Some(hashed);
            }
        }
        tar.pad(*size)?;
    }
    Ok(found)
}

/// A file hashed as it was copied: its digest, its stamp (which did not
/// move while it was read) and when it was read.
type Found = (Digest, FileStamp, std::time::SystemTime);

/// Copies the host file at `path`, of the planned `size` and device and
/// inode `id`, hashing it on the way (a file that changed meanwhile, or
/// another file put in its place, fails the build).
fn hash_host_file<W: Marks>(
    out: &mut W,
    path: &Path,
    id: (u64, u64),
    size: u64,
    scratch: &mut [u8],
) -> Result<Found, EntryError> {
    let read_err = |e: io::Error| {
        EntryError::Kiln(Error::invalid(
            format!("cannot read `{}`: {e}", path.display()),
            Some("make it readable by the user running kiln, or add it to `exclude`".into()),
        ))
    };
    let file = File::open(path).map_err(read_err)?;
    let before = FileStamp::of(&file.metadata().map_err(read_err)?);
    let read = std::time::SystemTime::now();
    let mut reader = HashingReader::new(&file);
    let len = out.read_from(&mut reader, size, scratch)?;
    let (digest, _) = reader.finish();
    let after = FileStamp::of(&file.metadata().map_err(read_err)?);
    if len != size || before != after || before.size() != size || before.id() != id {
        return Err(changed(path));
    }
    Ok((digest, before, read))
}

/// The error for a host file that changed while kiln was building.
fn changed(path: &Path) -> EntryError {
    EntryError::Kiln(crate::plan::changed_while_building(
        &path.display().to_string(),
    ))
}

/// The buffer host files are copied through: one read per 256 KiB (most
/// files in one) rather than std's 8 KiB copy buffer.
const SCRATCH: usize = 256 << 10;

/// The most zstd is given at a time. Its multi-threaded encoder
/// holds more of its input the more it is given at once: fed 64 KiB at a
/// time, a cold build of the benchmark's 1 GiB tree peaked at 181 MiB, fed
/// 8 KiB (std's copy buffer, as before) at 135 MiB.
const ZSTD_FEED: usize = 8 << 10;

fn copy_host_file<W: Marks>(
    out: &mut W,
    path: &Path,
    size: u64,
    digest: &Digest,
    seen: Option<Seen>,
    check: Check<'_>,
    scratch: &mut [u8],
) -> Result<(), EntryError> {
    let file = File::open(path).map_err(|e| EntryError::Kiln(Error::io("read", path, e)))?;
    let vouched = |file: &File| match check {
        Check::Digest(store) => file
            .metadata()
            .is_ok_and(|meta| seen.is_some_and(|s| s.still(&meta)) || store.stamped(&meta, digest)),
        Check::Length | Check::Dry => false,
    };
    let (len, intact) = match check {
        Check::Digest(..) if vouched(&file) => {
            let len = out.read_from(&mut &file, size, scratch)?;
            (len, vouched(&file))
        }
        Check::Digest(..) => {
            let mut reader = HashingReader::new(&file);
            copy_through(&mut reader, size, out, scratch)?;
            let (actual, len) = reader.finish();
            (len, actual == *digest)
        }
        Check::Length | Check::Dry => (copy_through(&file, size, out, scratch)?, true),
    };
    if len != size || !intact {
        return Err(changed(path));
    }
    Ok(())
}

/// Copies up to `size` bytes from `from` to `out` through `scratch`; says
/// how many there were.
fn copy_through(
    mut from: impl Read,
    size: u64,
    out: &mut impl Write,
    scratch: &mut [u8],
) -> io::Result<u64> {
    let mut left = size;
    while left > 0 {
        let want = scratch
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match from.read(&mut scratch[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&scratch[..n])?;
        left -= n as u64;
    }
    Ok(size - left)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Pseudo-random bytes (xorshift), which deflate cannot shrink.
    pub(crate) fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// A file planning left unhashed is hashed as it is copied: the digest
    /// is the content's, for gzip and zstd alike, and the layer is the one
    /// the hashed plan gives. A file whose size is not the planned one (it
    /// changed since it was listed), or another file put in its place,
    /// fails the build.
    #[test]
    fn an_unhashed_file_is_hashed_as_it_is_copied_and_a_changed_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let input = dir.path().join("input");
        let body = noise(3 * pgzip::CHUNK + 100, 7);
        std::fs::write(&input, &body).unwrap();
        let id = {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(&input).unwrap();
            (m.dev(), m.ino())
        };
        let entry = |content, size| Entry {
            path: "f".into(),
            kind: EntryKind::File {
                content,
                size,
                digest: Digest::of(&body),
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        let size = body.len() as u64;
        for compression in [Compression::Gzip, Compression::Zstd] {
            let late = [entry(Content::Unhashed(input.clone(), id), size)];
            let (record, _, hashed) =
                build_metered(&store, &late, compression, 0, 2, &Default::default()).unwrap();
            assert_eq!(hashed.len(), 1);
            assert_eq!(
                (hashed[0].entry, &hashed[0].digest),
                (0, &Digest::of(&body))
            );
            assert_eq!(hashed[0].stamp.size(), size);
            let early = [entry(Content::Host(input.clone(), None), size)];
            let (planned, _) = build(&store, &early, compression, 0, 2).unwrap();
            assert_eq!(record, planned, "{compression:?}");
        }
        let wrong = [entry(Content::Unhashed(input.clone(), id), size - 1)];
        let err = build(&store, &wrong, Compression::Gzip, 0, 1).unwrap_err();
        assert!(
            err.to_string().contains("changed while kiln was building"),
            "{err}"
        );
        // Another file put in its place: the same bytes, another inode.
        let other = dir.path().join("other");
        std::fs::write(&other, &body).unwrap();
        std::fs::rename(&other, &input).unwrap();
        let replaced = [entry(Content::Unhashed(input.clone(), id), size)];
        let err = build(&store, &replaced, Compression::Gzip, 0, 1).unwrap_err();
        assert!(
            err.to_string().contains("changed while kiln was building"),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_changed_since_planning_is_hashed_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let input = dir.path().join("input");
        std::fs::write(&input, b"planned content").unwrap();
        let planned = Digest::of(b"planned content");
        // Planning saw the file (`Seen::of` leaves out files changed in the
        // last two seconds: wait until this one is not).
        let meta = std::fs::metadata(&input).unwrap();
        let seen = Seen::of(&meta).or_else(|| {
            std::thread::sleep(std::time::Duration::from_millis(2100));
            Seen::of(&meta)
        });
        assert!(seen.is_some(), "a file unchanged for two seconds is seen");
        let entry = |seen| Entry {
            path: "f".into(),
            kind: EntryKind::File {
                content: Content::Host(input.clone(), seen),
                size: 15,
                digest: planned.clone(),
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        let entries = [entry(seen)];
        let (record, _) = build(&store, &entries, Compression::Gzip, 0, 1).unwrap();
        assert_eq!(diff_id(&entries, 0).unwrap(), record.diff_id);

        // Same length, new bytes: the change time moved, so the copy is
        // hashed and refused, whether planning saw the file or not.
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::write(&input, b"written meanwhi").unwrap();
        for entries in [[entry(seen)], [entry(None)]] {
            let err = build(&store, &entries, Compression::Gzip, 0, 1).unwrap_err();
            assert!(
                err.to_string().contains("changed while kiln was building"),
                "{err}"
            );
        }
    }
}
