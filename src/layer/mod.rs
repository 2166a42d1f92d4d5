//! Stage 4, build layers: a layer's planned entries → one reproducible tar
//! stream → compressed blob in the store, with its diff_id.
//!
//! The tar stream is produced, hashed (diff_id), compressed and hashed again
//! (blob digest) in one pass through fixed-size buffers, so memory does not
//! grow with layer size. Compression runs on other threads, chunk by chunk;
//! a gzip layer's chunks are cut at entries and looked up in the store's
//! chunk cache first ([`pgzip`]), so a rebuild after a small change
//! compresses only the chunks the change touched, and writes the same bytes
//! a cold build would. Every host file is re-hashed as it is copied and
//! must match the digest the plan recorded; a file that changed during the
//! build fails it rather than producing a layer whose cache key lies.

pub mod compress;
pub mod pgzip;
pub mod read;
pub mod tar;

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use crate::digest::{Digest, HashingReader, HashingWriter};
use crate::error::{Error, Result};
use crate::plan::{Content, Entry, EntryKind};
use crate::recipe::Compression;
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
    build_metered(
        store,
        entries,
        compression,
        mtime,
        threads,
        &Default::default(),
    )
}

/// [`build`], moving `meter` by the bytes of file content written (the
/// total is [`crate::plan::LayerPlan::file_stats`]'s).
pub fn build_metered(
    store: &Store,
    entries: &[Entry],
    compression: Compression,
    mtime: u64,
    threads: usize,
    meter: &crate::progress::Meter,
) -> Result<(LayerRecord, Option<Chunks>)> {
    let blob = store.writer()?;
    let mut done = 0;
    let encoder = compress::Encoder::layer(
        compression,
        blob,
        threads,
        (compression == Compression::Gzip).then(|| std::sync::Arc::new(store.chunk_cache())),
    )
    .map_err(|e| io_err(store, e))?;
    let mut tar = TarWriter::new(HashingWriter::new(encoder));
    for entry in entries {
        write_entry(&mut tar, entry, mtime, Check::Digest).map_err(|e| match e {
            EntryError::Io(e) => io_err(store, e),
            EntryError::Kiln(e) => e,
        })?;
        if let crate::plan::EntryKind::File { size, .. } = &entry.kind {
            done += size;
            meter.set(done);
        }
    }
    let hashing = tar.finish().map_err(|e| io_err(store, e))?;
    let (encoder, diff_id, _) = hashing.finish();
    let finished = encoder.finish_chunks().map_err(|e| io_err(store, e))?;
    let (digest, size) = finished.out.commit(None)?;
    // Only a cache: a record lost here means that chunk is compressed again.
    let _ = store.remember_chunks(&digest, &finished.chunks);
    let chunks = (compression == Compression::Gzip).then_some(Chunks {
        total: finished.chunks.len() as u64,
        reused: finished.reused,
    });
    let record = LayerRecord {
        digest,
        diff_id,
        size,
        media_type: compress::media_type(compression).to_string(),
    };
    Ok((record, chunks))
}

/// The diff_id `entries` would have: the tar stream hashed, not compressed
/// (what a layer fetched from a shared cache is checked against). Host files
/// are not checked against their planned digests on the way: a file that
/// changed since planning gives another diff_id, which is all the caller
/// compares.
pub fn diff_id(entries: &[Entry], mtime: u64) -> Result<Digest> {
    let sink_err = |e: io::Error| Error::internal("hash a layer's tar stream", e);
    let mut tar = TarWriter::new(HashingWriter::new(io::sink()));
    for entry in entries {
        write_entry(&mut tar, entry, mtime, Check::Length).map_err(|e| match e {
            EntryError::Io(e) => sink_err(e),
            EntryError::Kiln(e) => e,
        })?;
    }
    let hashing = tar.finish().map_err(sink_err)?;
    Ok(hashing.finish().1)
}

/// How a host file is checked as it is copied.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Against its planned digest (and length).
    Digest,
    /// Against its planned length only.
    Length,
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
trait Marks: Write {
    fn entry(&mut self, _path: &str, _size: u64) -> io::Result<()> {
        Ok(())
    }
    fn content(&mut self, _digest: &Digest) {}
}

impl Marks for HashingWriter<io::Sink> {}

impl<W: Write> Marks for HashingWriter<compress::Encoder<W>> {
    fn entry(&mut self, path: &str, size: u64) -> io::Result<()> {
        self.get_mut().entry(path, size)
    }
    fn content(&mut self, digest: &Digest) {
        self.get_mut().content(digest);
    }
}

fn write_entry<W: Marks>(
    tar: &mut TarWriter<W>,
    entry: &Entry,
    mtime: u64,
    check: Check,
) -> Result<(), EntryError> {
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
    if let EntryKind::File {
        content,
        size,
        digest,
    } = &entry.kind
    {
        tar.data().content(digest);
        match content {
            Content::Inline(bytes) => tar.data().write_all(bytes)?,
            Content::Host(path) => copy_host_file(tar.data(), path, *size, digest, check)?,
        }
        tar.pad(*size)?;
    }
    Ok(())
}

fn copy_host_file<W: Write>(
    out: &mut W,
    path: &Path,
    size: u64,
    digest: &Digest,
    check: Check,
) -> Result<(), EntryError> {
    let file = File::open(path).map_err(|e| EntryError::Kiln(Error::io("read", path, e)))?;
    let (len, actual) = if check == Check::Digest {
        let mut reader = HashingReader::new(file.take(size));
        io::copy(&mut reader, out)?;
        let (actual, len) = reader.finish();
        (len, Some(actual))
    } else {
        (io::copy(&mut file.take(size), out)?, None)
    };
    if len != size || actual.is_some_and(|a| a != *digest) {
        return Err(EntryError::Kiln(Error::invalid(
            format!("`{}` changed while kiln was building", path.display()),
            Some("run the build again once nothing is writing to the inputs".into()),
        )));
    }
    Ok(())
}
