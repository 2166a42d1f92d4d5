//! Stage 4, build layers: a layer's planned entries → one reproducible tar
//! stream → compressed blob in the store, with its diff_id.
//!
//! The tar stream is produced, hashed (diff_id), compressed and hashed again
//! (blob digest) in one pass through fixed-size buffers, so memory does not
//! grow with layer size. Every host file is re-hashed as it is copied and
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

/// Builds the layer blob for `entries` (already sorted) into `store`, gzip
/// compressing on `threads` threads (0: one per CPU; the bytes do not depend on it).
pub fn build(
    store: &Store,
    entries: &[Entry],
    compression: Compression,
    mtime: u64,
    threads: usize,
) -> Result<LayerRecord> {
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
) -> Result<LayerRecord> {
    let blob = store.writer()?;
    let mut done = 0;
    let encoder =
        compress::Encoder::new(compression, blob, threads).map_err(|e| io_err(store, e))?;
    let mut tar = TarWriter::new(HashingWriter::new(encoder));
    for entry in entries {
        write_entry(&mut tar, entry, mtime).map_err(|e| match e {
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
    let blob = encoder.finish().map_err(|e| io_err(store, e))?;
    let (digest, size) = blob.commit(None)?;
    Ok(LayerRecord {
        digest,
        diff_id,
        size,
        media_type: compress::media_type(compression).to_string(),
    })
}

/// The diff_id `entries` would have: the tar stream hashed, not compressed
/// (what a layer fetched from a shared cache is checked against).
pub fn diff_id(entries: &[Entry], mtime: u64) -> Result<Digest> {
    let sink_err = |e: io::Error| Error::internal("hash a layer's tar stream", e);
    let mut tar = TarWriter::new(HashingWriter::new(io::sink()));
    for entry in entries {
        write_entry(&mut tar, entry, mtime).map_err(|e| match e {
            EntryError::Io(e) => sink_err(e),
            EntryError::Kiln(e) => e,
        })?;
    }
    let hashing = tar.finish().map_err(sink_err)?;
    Ok(hashing.finish().1)
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

fn write_entry<W: Write>(
    tar: &mut TarWriter<W>,
    entry: &Entry,
    mtime: u64,
) -> Result<(), EntryError> {
    let (kind, size, link) = match &entry.kind {
        EntryKind::Dir => (Kind::Dir, 0, ""),
        EntryKind::File { size, .. } => (Kind::File, *size, ""),
        EntryKind::Symlink { target } => (Kind::Symlink, 0, target.as_str()),
        EntryKind::HardLink { target } => (Kind::HardLink, 0, target.as_str()),
    };
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
        match content {
            Content::Inline(bytes) => tar.data().write_all(bytes)?,
            Content::Host(path) => copy_host_file(tar.data(), path, *size, digest)?,
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
) -> Result<(), EntryError> {
    let file = File::open(path).map_err(|e| EntryError::Kiln(Error::io("read", path, e)))?;
    let mut reader = HashingReader::new(file.take(size));
    io::copy(&mut reader, out)?;
    let (actual, len) = reader.finish();
    if len != size || actual != *digest {
        return Err(EntryError::Kiln(Error::invalid(
            format!("`{}` changed while kiln was building", path.display()),
            Some("run the build again once nothing is writing to the inputs".into()),
        )));
    }
    Ok(())
}
