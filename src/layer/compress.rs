//! Layer compression with fixed parameters.
//!
//! Digests depend on the compressed bytes, so the backends and levels are
//! part of kiln's format: gzip is libdeflate (bundled, pinned exactly) at
//! level 1, in independent chunks compressed on all CPUs (or
//! `KILN_THREADS`) and joined into one stream ([`super::pgzip`],
//! [`super::deflate`]), with a header carrying no name, mtime 0 and OS byte
//! 255; zstd is libzstd
//! (bundled, pinned by Cargo.lock) at level 3 in its multi-threaded mode
//! (always at least one worker: its output is the same for any number of
//! workers, and differs from its single-threaded mode's), with no checksum
//! and no content size. Neither depends on the number of threads or the
//! CPU's features (tests/it/deflate_determinism.rs). Changing any of this
//! changes digests and must bump [`crate::plan::FORMAT_VERSION`].

use std::io::{self, Write};

use super::pgzip::{Cuts, ParallelGzip};
use crate::recipe::Compression;
use std::sync::Arc;

use crate::store::ChunkCache;

const ZSTD_LEVEL: i32 = 3;

/// The OCI media type of a layer compressed with `c`.
pub fn media_type(c: Compression) -> &'static str {
    match c {
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

/// A streaming compressor writing into `W`.
pub enum Encoder<W: Write> {
    /// gzip.
    Gzip(Box<ParallelGzip<W>>),
    /// zstd.
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

/// `threads`, with 0 meaning one per CPU.
fn workers(threads: usize) -> usize {
    match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

impl<W: Write> Encoder<W> {
    /// Starts compressing a plain stream into `out` on `threads` threads (0:
    /// one per CPU), gzip cut at fixed places.
    pub fn new(c: Compression, out: W, threads: usize) -> io::Result<Self> {
        Self::with(c, out, threads, Cuts::Fixed, None)
    }

    /// Starts compressing a layer's tar stream: gzip cut at entries (the
    /// caller says where they start, [`ParallelGzip::entry`]), reusing and
    /// recording chunks in `cache`.
    pub fn layer(
        c: Compression,
        out: W,
        threads: usize,
        cache: Option<Arc<ChunkCache>>,
    ) -> io::Result<Self> {
        Self::with(c, out, threads, Cuts::Entries, cache)
    }

    fn with(
        c: Compression,
        out: W,
        threads: usize,
        cuts: Cuts,
        cache: Option<Arc<ChunkCache>>,
    ) -> io::Result<Self> {
        Ok(match c {
            Compression::Gzip => Encoder::Gzip(Box::new(ParallelGzip::with(
                out,
                workers(threads),
                cuts,
                cache,
            ))),
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
                enc.include_checksum(false)?;
                enc.include_contentsize(false)?;
                enc.multithread(workers(threads) as u32)?;
                Encoder::Zstd(enc)
            }
        })
    }

    /// Flushes the compressed stream's end and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish().map(|f| f.out),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
        let mut e = Encoder::new(c, Vec::new(), 2).unwrap();
        // Feed in uneven pieces: output must not depend on write sizes.
        for chunk in data.chunks(777) {
            e.write_all(chunk).unwrap();
        }
        e.finish().unwrap()
    }

    #[test]
    fn gzip_header_has_no_name_time_or_host_os() {
        let out = compress(Compression::Gzip, b"hello");
        assert_eq!(&out[..4], &[0x1f, 0x8b, 8, 0], "no FNAME flag");
        assert_eq!(&out[4..8], &[0, 0, 0, 0], "mtime 0");
        assert_eq!(out[9], 255, "OS unknown");
    }

    #[test]
    fn output_does_not_depend_on_write_pattern() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in [Compression::Gzip, Compression::Zstd] {
            let mut whole = Encoder::new(c, Vec::new(), 2).unwrap();
            whole.write_all(&data).unwrap();
            assert_eq!(whole.finish().unwrap(), compress(c, &data));
            for threads in [1, 7] {
                let mut other = Encoder::new(c, Vec::new(), threads).unwrap();
                other.write_all(&data).unwrap();
                assert_eq!(
                    other.finish().unwrap(),
                    compress(c, &data),
                    "{c:?} on {threads} threads"
                );
            }
        }
    }
}
