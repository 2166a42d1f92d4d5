//! Deterministic parallel gzip.
//!
//! The stream is cut into fixed 1 MiB chunks; each is compressed on its own
//! (raw deflate by zlib-rs at level [`LEVEL`], no shared dictionary) and
//! ended with a sync flush, so the compressed chunks concatenate into one
//! valid deflate stream, closed by an empty final block: one gzip member per
//! layer, which every consumer reads. Because the cut points are fixed and
//! chunks do not depend on each other, the output is the same whatever the
//! number of threads or their timing; zlib-rs's CPU-specific routines (AVX2
//! match comparison and hash slide) compute the same results as its portable
//! ones, so the CPU does not matter either (tests/it/deflate_determinism.rs
//! proves both under `qemu-x86_64 -cpu qemu64`). Only the chunk size, the
//! library and the level matter, and all are part of kiln's format (see
//! [`crate::plan::FORMAT_VERSION`]).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, FlushCompress};

/// Uncompressed bytes per independently compressed chunk.
pub const CHUNK: usize = 1 << 20;
/// zlib-rs level 2 (zlib-ng's `deflate_fast`: greedy matching, short hash
/// chains). Measured on `bench/build-bench.sh`'s tree in 1 MiB chunks: level 1
/// (`deflate_quick`, static Huffman codes only) is 15 % larger than
/// miniz_oxide at 6, about 1.14× umoci's output, over the 1.05× kiln allows
/// itself; level 2 is 2.6 % larger than miniz_oxide at 6 (1.013× umoci) for
/// about 2.6× less CPU, level 3 1 % larger for 2.3× less (bench/RESULTS.md).
pub const LEVEL: u32 = 2;

/// A gzip writer that compresses chunks on several threads.
pub struct ParallelGzip<W: Write> {
    out: W,
    buf: Vec<u8>,
    pending: VecDeque<JoinHandle<io::Result<Vec<u8>>>>,
    workers: usize,
    crc: crc32fast::Hasher,
    len: u64,
    started: bool,
}

fn deflate(input: &[u8], flush: FlushCompress) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(Compression::new(LEVEL), false);
    let mut out = Vec::with_capacity(input.len() / 2 + 4096);
    loop {
        let consumed = c.total_in() as usize;
        out.reserve(64 * 1024);
        let status = c
            .compress_vec(&input[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = c.total_in() as usize == input.len();
        // The flush is complete once the compressor stops short of filling
        // the space it was given (or says the stream ended).
        if status == flate2::Status::StreamEnd || (all_in && out.len() < out.capacity()) {
            break;
        }
    }
    Ok(out)
}

impl<W: Write> ParallelGzip<W> {
    /// Starts a gzip stream into `out` (no name, mtime 0, OS 255), using up to `workers` threads.
    pub fn new(out: W, workers: usize) -> Self {
        Self {
            out,
            buf: Vec::with_capacity(CHUNK),
            pending: VecDeque::new(),
            workers: workers.max(1),
            crc: crc32fast::Hasher::new(),
            len: 0,
            started: false,
        }
    }

    fn header(&mut self) -> io::Result<()> {
        if !self.started {
            self.out
                .write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255])?;
            self.started = true;
        }
        Ok(())
    }

    fn drain(&mut self, keep: usize) -> io::Result<()> {
        while self.pending.len() > keep {
            let job = self.pending.pop_front().expect("checked non-empty");
            let bytes = job
                .join()
                .map_err(|_| io::Error::other("a compression thread panicked"))??;
            self.out.write_all(&bytes)?;
        }
        Ok(())
    }

    fn submit(&mut self) -> io::Result<()> {
        self.header()?;
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.pending.push_back(std::thread::spawn(move || {
            deflate(&chunk, FlushCompress::Sync)
        }));
        self.drain(self.workers)
    }

    /// Writes the rest, the final block and the trailer; returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.buf.is_empty() {
            self.submit()?;
        }
        self.header()?;
        self.drain(0)?;
        let last = deflate(&[], FlushCompress::Finish)?;
        self.out.write_all(&last)?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out
            .write_all(&((self.len & 0xffff_ffff) as u32).to_le_bytes())?;
        Ok(self.out)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let take = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..take]);
        self.crc.update(&data[..take]);
        self.len += take as u64;
        if self.buf.len() == CHUNK {
            self.submit()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample() -> Vec<u8> {
        (0..(3 * CHUNK + 12345) as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8 & 0x3f)
            .collect()
    }

    #[test]
    fn round_trips_and_ignores_the_thread_count() {
        let data = sample();
        let compress = |workers: usize| {
            let mut g = ParallelGzip::new(Vec::new(), workers);
            for piece in data.chunks(70_001) {
                g.write_all(piece).unwrap();
            }
            g.finish().unwrap()
        };
        let one = compress(1);
        assert_eq!(one, compress(2));
        assert_eq!(one, compress(7));
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&one[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        assert!(one.len() < data.len(), "it compresses");
    }

    #[test]
    fn empty_input_is_a_valid_gzip() {
        let out = ParallelGzip::new(Vec::new(), 2).finish().unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
    }
}
