//! Deterministic parallel gzip, with chunks that a later build can reuse.
//!
//! The stream is cut into chunks; each is compressed on its own (raw
//! deflate by libdeflate at level [`LEVEL`], [`super::deflate::SPAN`] bytes
//! at a time, no shared dictionary), each output ended as a zlib sync flush
//! ends a run ([`super::deflate`]), so the compressed chunks concatenate
//! into one valid deflate stream, closed by an empty final block: one gzip
//! member per layer, which every consumer reads. A chunk's compressed bytes
//! depend on its own bytes alone: not on the number of threads, their
//! timing, or the CPU (libdeflate's CPU-specific code only clears and
//! shifts its match finder's tables; tests/it/deflate_determinism.rs proves
//! it under `qemu-x86_64 -cpu qemu64`).
//!
//! Where the cuts fall:
//! - [`Cuts::Fixed`] (VM images): every [`CHUNK`] bytes.
//! - [`Cuts::Entries`] (layers): chosen by content, so that one changed file
//!   changes the chunks that hold it and no others. The caller says where
//!   each tar entry starts ([`ParallelGzip::entry`]) and where its content
//!   starts ([`ParallelGzip::content`]). A chunk ends before an entry once
//!   it holds [`MIN_CHUNK`] bytes and either the entry's path hashes to a
//!   cut ([`CUT_MASK`]), the entry's content is [`CHUNK`] or more, or the
//!   chunk already holds [`MAX_CHUNK`]; it also ends after every [`CHUNK`]
//!   bytes of one file's content, counted from that content's start (so a
//!   big file is cut at the same places wherever it sits), and at
//!   [`HARD_MAX`] whatever happens.
//!
//! Inside a chunk, each run of [`PIECE`]-byte pieces whose byte values are
//! spread nearly evenly over all 256 (a collision entropy of at least 7.5
//! bits a byte, by integer counts: compressed or random data, which deflate
//! shrinks by a few per cent at most; see `incompressible`) is written as
//! stored blocks rather than searched for matches; the other runs are
//! deflated, each by a fresh compressor.
//!
//! With a chunk cache (layers built into a store), each chunk is looked up
//! before it is compressed, by a key that names what its uncompressed bytes
//! are made of without hashing them all: the SHA-256 of its literal bytes
//! (tar headers, padding) and, for each run of file content, the file's
//! digest, the run's offset in the file and its length (see `Describe`).
//! The layer writer checks every file against its digest as it copies it,
//! and a build that fails that check records no chunks, so a key always
//! names one sequence of bytes. A hit reuses the compressed bytes a previous
//! build wrote into one of the store's blobs (checked against the CRC-32 of
//! the uncompressed chunk, its length, and the CRC-32 of the compressed
//! bytes recorded when they were written), so the output is byte for byte
//! what compressing would have given. [`ParallelGzip::finish`] returns a
//! record of every chunk for the store to remember.
//!
//! A dry run ([`ParallelGzip::dry`]) goes through the same rules without
//! reading a file or compressing: it gives each chunk's key and whether it
//! starts at an entry, from which `resume.rs` finds the prefix an
//! earlier build's blob shares, and [`ParallelGzip::resume`] takes the
//! stream up after it.
//!
//! The chunk rules, the piece test, the library and the level are all part
//! of kiln's format (see [`crate::plan::FORMAT_VERSION`]).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::thread::JoinHandle;

use sha2::{Digest as _, Sha256};

use crate::digest::ResumableSha256;

use crate::digest::Digest;
use std::sync::Arc;

use crate::store::{ChunkCache, ChunkRecord};

/// The gzip header every stream starts with: no name, mtime 0, OS 255.
pub const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// Uncompressed bytes per fixed chunk, and per cut inside one file's content.
pub const CHUNK: usize = 1 << 20;
/// The fewest bytes a chunk holds before it may end at an entry.
pub const MIN_CHUNK: usize = 512 << 10;
/// A chunk ends at the next entry once it holds this many bytes.
pub const MAX_CHUNK: usize = 2 << 20;
/// A chunk ends here whatever else happens (a safety bound).
pub const HARD_MAX: usize = 4 << 20;
/// An entry starts a new chunk when the FNV-1a hash of its path has these
/// bits all zero (one path in 16).
pub const CUT_MASK: u64 = 0xf;
/// The unit of the stored-block test.
pub const PIECE: usize = 64 << 10;
/// libdeflate level 1 (`deflate_compress_fastest`: greedy, one hash table,
/// blocks of 64 KiB), since FORMAT_VERSION 5 (zlib-rs level 2 before). On
/// `bench/build-bench.sh`'s tree a cold build took 0.77x the CPU of zlib-rs
/// level 2 for a layer 0.8 % larger, about 1.02x umoci's (bench/RESULTS.md).
pub const LEVEL: i32 = 1;

/// Where chunks end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cuts {
    /// Every [`CHUNK`] bytes.
    Fixed,
    /// At entries and inside file content (see the module docs).
    Entries,
}

/// One compressed chunk, as a worker hands it back.
struct Done {
    /// The chunk's bytes, handed back to be filled again.
    chunk: Arc<Vec<u8>>,
    deflated: Vec<u8>,
    crc: u32,
    len: usize,
    /// The chunk's key (`None`: given later, [`Key::Later`]) and the
    /// CRC-32 of its compressed bytes, when cached.
    key: Option<(Option<Digest>, u32)>,
    reused: bool,
}

/// The running description of one chunk, which its cache key hashes:
/// literal bytes as they are, each followed by `\0L` and the run's length;
/// each run of one file's content as `\0F`, the file's digest, the run's
/// offset in the file and its length (lengths and offsets little-endian
/// u64). Every run ends in a fixed-size trailer, so the description reads
/// back unambiguously from its end.
struct Describe {
    hasher: Sha256,
    run: Run,
    /// A run of content whose digest never came before the next bytes: the
    /// chunk gets no key (a caller's mistake, never a wrong key).
    broken: bool,
}

/// A chunk's key, as its description ends.
enum Key {
    /// Known now.
    Known(Digest),
    /// Known once the digest of the file whose content the chunk ends in
    /// is ([`ParallelGzip::content_later`]).
    Later(LaterKey),
    /// None: the chunk is not cached.
    None,
}

/// The key of a chunk that ends inside the content of a file not yet
/// hashed: everything before that run, hashed, and the run.
struct LaterKey {
    hasher: Sha256,
    start: u64,
    len: u64,
}

impl LaterKey {
    /// The key, given the file's digest: what [`Describe::finish`] would
    /// have given with it.
    fn finish(mut self, digest: &Digest) -> Digest {
        file_run(&mut self.hasher, digest, self.start, self.len);
        Digest::from_hasher(self.hasher)
    }
}

/// Describes one run of a file's content.
fn file_run(hasher: &mut Sha256, digest: &Digest, start: u64, len: u64) {
    hasher.update(b"\0F");
    hasher.update(digest.hex().as_bytes());
    hasher.update(start.to_le_bytes());
    hasher.update(len.to_le_bytes());
}

impl Default for Describe {
    /// A description that starts with the format version and the level, so
    /// that a chunk compressed by another format is never a hit.
    fn default() -> Self {
        let mut hasher = Sha256::new();
        hasher.update(
            format!(
                "kiln-chunk\0{}\0libdeflate-{LEVEL}\n",
                crate::plan::FORMAT_VERSION
            )
            .as_bytes(),
        );
        Describe {
            hasher,
            run: Run::None,
            broken: false,
        }
    }
}

#[derive(Default)]
enum Run {
    #[default]
    None,
    Literal(u64),
    /// A run of one file's content; its digest `None` until it is known.
    File {
        digest: Option<Digest>,
        start: u64,
        len: u64,
    },
}

impl Describe {
    fn literal(&mut self, bytes: &[u8]) {
        if !matches!(self.run, Run::Literal(_)) {
            self.end_run();
            self.run = Run::Literal(0);
        }
        self.hasher.update(bytes);
        if let Run::Literal(n) = &mut self.run {
            *n += bytes.len() as u64;
        }
    }

    /// A run of the content of the file whose digest is `digest` (`None`:
    /// not known yet, see [`Self::resolve`]).
    fn file(&mut self, digest: Option<&Digest>, offset: u64, len: u64) {
        if let Run::File {
            digest: d,
            start,
            len: l,
        } = &mut self.run
        {
            if d.as_ref() == digest && *start + *l == offset {
                *l += len;
                return;
            }
        }
        self.end_run();
        self.run = Run::File {
            digest: digest.cloned(),
            start: offset,
            len,
        };
    }

    /// The digest of the file whose content the current run is, once known.
    fn resolve(&mut self, digest: &Digest) {
        if let Run::File { digest: d, .. } = &mut self.run {
            if d.is_none() {
                *d = Some(digest.clone());
            }
        }
    }

    fn end_run(&mut self) {
        match std::mem::take(&mut self.run) {
            Run::None => {}
            Run::Literal(n) => {
                self.hasher.update(b"\0L");
                self.hasher.update(n.to_le_bytes());
            }
            Run::File {
                digest: Some(digest),
                start,
                len,
            } => file_run(&mut self.hasher, &digest, start, len),
            Run::File { digest: None, .. } => self.broken = true,
        }
    }

    fn finish(mut self) -> Key {
        match std::mem::take(&mut self.run) {
            Run::File {
                digest: None,
                start,
                len,
            } if !self.broken => Key::Later(LaterKey {
                hasher: self.hasher,
                start,
                len,
            }),
            run => {
                self.run = run;
                self.end_run();
                match self.broken {
                    true => Key::None,
                    false => Key::Known(Digest::from_hasher(self.hasher)),
                }
            }
        }
    }
}

/// One chunk for a worker: its bytes, its cache key, and where the result goes.
struct Job {
    chunk: Arc<Vec<u8>>,
    /// The cache and the chunk's key, if known now (else it is compressed
    /// and recorded once the key is known).
    cache: Option<(Arc<ChunkCache>, Option<Digest>)>,
    done: std::sync::mpsc::SyncSender<io::Result<Done>>,
}

/// The threads that compress (or find in the cache) chunks, started with
/// the first chunk and kept for the whole stream rather than one per chunk.
struct Pool {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Pool {
    fn new(workers: usize) -> Self {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for _ in 0..workers {
            let queue = Arc::clone(&queue);
            // Detached: each ends once the sender is gone and the queue is
            // empty. One that panics drops its job's sender, which the
            // writer reports; the others carry on with the queue.
            std::thread::spawn(move || loop {
                let job = match queue.lock() {
                    Ok(queue) => queue.recv(),
                    Err(poisoned) => poisoned.into_inner().recv(),
                };
                let Ok(Job { chunk, cache, done }) = job else {
                    return;
                };
                // The writer may have stopped waiting (an error elsewhere).
                let _ = done.send(work(chunk, cache));
            });
        }
        Pool { jobs }
    }
}

/// A gzip writer that compresses chunks on several threads.
pub struct ParallelGzip<W: Write> {
    out: W,
    buf: Vec<u8>,
    /// Chunks handed to the pool, oldest first: each answers once.
    pending: VecDeque<std::sync::mpsc::Receiver<io::Result<Done>>>,
    workers: usize,
    /// Started with the first chunk (a short stream needs no threads).
    pool: Option<Pool>,
    /// Chunks the pool is done with, oldest first; a buffer is filled again
    /// once no other thread (the input hash) holds it, so that a stream
    /// allocates a few buffers, not one per chunk.
    spent: VecDeque<Arc<Vec<u8>>>,
    cuts: Cuts,
    cache: Option<Arc<ChunkCache>>,
    crc: crc32fast::Hasher,
    len: u64,
    /// Compressed bytes written so far, the gzip header included.
    offset: u64,
    /// Bytes of the current file's content still to come, and written so far.
    content: Option<(u64, u64)>,
    /// The digest of the current file's content, when the caller gave it.
    content_digest: Option<Digest>,
    /// Whether the caller gives the current file's digest once its content
    /// is written ([`Self::content_later`]).
    content_later: bool,
    /// Keys of chunks cut inside that content, waiting for its digest.
    later: Vec<LaterKey>,
    /// Keys given since, in order, for the records still without one.
    keys_ready: VecDeque<Digest>,
    /// Records written before their chunk's key was known, in order (as
    /// indices into `records`).
    unkeyed: VecDeque<usize>,
    /// A file's digest never came: no record of this stream can be trusted
    /// to have its own key, and none is kept.
    keys_lost: bool,
    /// The current chunk's description (with a cache only).
    describe: Option<Describe>,
    records: Vec<ChunkRecord>,
    reused: u64,
    resumed: u64,
    started: bool,
    /// The thread hashing the uncompressed stream, chunk by chunk, when asked
    /// for ([`ParallelGzip::hash_input`]).
    diff: Option<DiffThread>,
    /// Only working out where chunks end and their keys ([`ParallelGzip::dry`]).
    dry: Option<Vec<DryChunk>>,
    /// Bytes of the current chunk passed over, not held ([`Self::skip`]).
    skipped: usize,
    /// Entries announced so far ([`Self::entry`]).
    entries: usize,
    /// The entry the current chunk starts with, when it starts at one.
    start_entry: Option<usize>,
}

/// One chunk as a dry run ([`ParallelGzip::dry`]) sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryChunk {
    /// Its cache key.
    pub key: Digest,
    /// Its uncompressed length.
    pub len: u64,
    /// The index of the entry it starts with, when it starts at one (rather
    /// than inside a file's content).
    pub start_entry: Option<usize>,
}

/// Where a stream takes up after a prefix of chunks an earlier stream
/// wrote ([`ParallelGzip::resume`]).
pub struct Resumed {
    /// The prefix's chunks, as recorded.
    pub chunks: Vec<ChunkRecord>,
    /// The input hasher's state after each of them.
    pub states: Vec<String>,
    /// The input hasher's state after the last one.
    pub hasher: crate::digest::ResumableSha256,
}

/// Hashes whole chunks in order (a layer's diff_id), sharing them with the
/// threads compressing them, so the stream is neither copied nor handed over
/// in pieces of its own for it.
struct DiffThread {
    chunks: std::sync::mpsc::SyncSender<Arc<Vec<u8>>>,
    handle: JoinHandle<(ResumableSha256, Vec<String>)>,
}

/// Chunks in flight per compressing thread, at most.
const IN_FLIGHT: usize = 4;

/// Spent chunk buffers kept for reuse, at most (each up to [`HARD_MAX`]).
const SPENT: usize = 4;

/// Chunks waiting to be hashed, at most (each at most [`HARD_MAX`] bytes,
/// shared with the compressing threads, most of them already held there).
const DIFF_QUEUE: usize = 4;

/// What a finished stream leaves.
pub struct Finished<W> {
    /// The writer.
    pub out: W,
    /// Every chunk, by offset (empty without a cache).
    pub chunks: Vec<ChunkRecord>,
    /// How many chunks came from the cache, a resumed prefix's included.
    pub reused: u64,
    /// How many chunks a resumed stream took as its prefix
    /// ([`ParallelGzip::resume`]).
    pub resumed: u64,
    /// The SHA-256 of the uncompressed stream, when asked for
    /// ([`ParallelGzip::hash_input`]).
    pub input_digest: Option<Digest>,
    /// That hasher's state after each chunk, in order (with a cache and the
    /// input hashed; a resumed stream's prefix included).
    pub states: Vec<String>,
}

/// FNV-1a, 64-bit: a fixed, portable hash of a path.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Whether `piece` is stored rather than deflated: a full [`PIECE`] whose
/// byte values are spread so evenly over all 256 that its collision
/// entropy, H2 = -log2(sum of p_i²), is at least 7.5 bits a byte, which is
/// to say the sum of its byte counts squared is at most [`FLAT`]. Random
/// and compressed data (H2 near 8) do not shrink at all; on the benchmark's
/// tree the other pieces past 7.5 bits shrink by 6.5 % or less, not worth
/// libdeflate's time.
///
/// Counts only grow, so the sum of squares after part of the piece, plus
/// the least the rest of it can add (`left² / 256`, its bytes spread
/// evenly), decides a piece as soon as it is over [`FLAT`]: with the same
/// answer as counting the whole piece, most compressible pieces are told
/// apart within their first 16 KiB. Integers only, so the answer cannot
/// depend on the CPU.
fn incompressible(piece: &[u8]) -> bool {
    if piece.len() != PIECE {
        return false;
    }
    // Four tables, so that a run of one value does not wait on each
    // increment before the next.
    let mut counts = [[0u32; 256]; 4];
    let mut left = PIECE as u64;
    for part in piece.chunks(4096) {
        for four in part.chunks_exact(4) {
            for (table, &b) in counts.iter_mut().zip(four) {
                table[usize::from(b)] += 1;
            }
        }
        left -= part.len() as u64;
        let squares: u64 = (0..256)
            .map(|i| u64::from(counts.iter().map(|t| t[i]).sum::<u32>()).pow(2))
            .sum();
        if 256 * squares + left * left > 256 * FLAT {
            return false;
        }
    }
    true
}

/// The most a [`PIECE`]'s sum of squared byte counts may be for it to be
/// stored: ⌊2^24.5⌋, an H2 of 7.5 bits a byte (H2 = log2(PIECE² / sum),
/// and PIECE² = 2^32), since FORMAT_VERSION 6.
///
/// Measured on `bench/build-bench.sh`'s tree (1,072 MiB of tar): beside the
/// 4,067 near-random pieces stored before, it stores 791 more, saving 0.30
/// cpu-s of deflate for 1.5 MiB more layer (a cold build 0.29 cpu-s less).
/// A bound of 7 bits would save 0.46 cpu-s for 3.9 MiB: the pieces from 7
/// to 7.5 bits still shrink by 7-11 %, every pull of the image would pay
/// for those bytes, and a rebuild deflates only the chunks that changed.
///
/// Through format 5 a piece was stored only when each byte count, and each
/// count of the differences between neighbours, was within 80 of 256; such
/// a piece has an H2 over 7.8, so this bound takes in all of them. Counting
/// the differences too would have kept 19 more pieces deflated on that
/// tree (0.06 MiB) for twice the counting (about 0.15 cpu-s more).
const FLAT: u64 = 23_726_566;

/// Appends `data` as stored (uncompressed, non-final) deflate blocks; the
/// stream is at a byte boundary, as after a sync flush.
fn stored(data: &[u8], out: &mut Vec<u8>) {
    for block in data.chunks(usize::from(u16::MAX)) {
        let len = block.len() as u16;
        out.push(0);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
}

/// One chunk as a byte-aligned, non-final run of deflate blocks.
fn deflate_chunk(input: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 2 + 4096);
    let mut deflater = super::deflate::Deflater::new(LEVEL)?;
    let pieces: Vec<&[u8]> = input.chunks(PIECE).collect();
    let kinds: Vec<bool> = pieces.iter().map(|p| incompressible(p)).collect();
    let mut i = 0;
    while i < pieces.len() {
        let kind = kinds[i];
        let mut j = i;
        while j < pieces.len() && kinds[j] == kind {
            j += 1;
        }
        let run = &input[i * PIECE..(j * PIECE).min(input.len())];
        if kind {
            stored(run, &mut out);
        } else {
            deflater.run(run, &mut out)?;
        }
        i = j;
    }
    Ok(out)
}

/// Compresses one chunk, or takes it from the cache under `key`.
fn work(chunk: Arc<Vec<u8>>, cache: Option<(Arc<ChunkCache>, Option<Digest>)>) -> io::Result<Done> {
    let crc = crc32fast::hash(&chunk);
    let len = chunk.len();
    let Some((cache, key)) = cache else {
        return Ok(Done {
            deflated: deflate_chunk(&chunk)?,
            chunk,
            crc,
            len,
            key: None,
            reused: false,
        });
    };
    if let Some((deflated, zcrc)) = key.as_ref().and_then(|key| cache.get(key, len as u64, crc)) {
        return Ok(Done {
            chunk,
            deflated,
            crc,
            len,
            key: Some((key, zcrc)),
            reused: true,
        });
    }
    let deflated = deflate_chunk(&chunk)?;
    let zcrc = crc32fast::hash(&deflated);
    Ok(Done {
        chunk,
        deflated,
        crc,
        len,
        key: Some((key, zcrc)),
        reused: false,
    })
}

impl<W: Write> ParallelGzip<W> {
    /// Starts a gzip stream into `out` (no name, mtime 0, OS 255), using up to
    /// `workers` threads, cut at fixed places.
    pub fn new(out: W, workers: usize) -> Self {
        Self::with(out, workers, Cuts::Fixed, None)
    }

    /// Starts a gzip stream cut as `cuts` says, reusing and recording chunks
    /// in `cache` when given.
    pub fn with(out: W, workers: usize, cuts: Cuts, cache: Option<Arc<ChunkCache>>) -> Self {
        let describe = cache.as_ref().map(|_| Describe::default());
        Self {
            out,
            buf: Vec::with_capacity(CHUNK),
            pending: VecDeque::new(),
            workers: workers.max(1),
            pool: None,
            spent: VecDeque::new(),
            cuts,
            cache,
            crc: crc32fast::Hasher::new(),
            len: 0,
            offset: 0,
            content: None,
            content_digest: None,
            content_later: false,
            later: Vec::new(),
            keys_ready: VecDeque::new(),
            unkeyed: VecDeque::new(),
            keys_lost: false,
            describe,
            records: Vec::new(),
            reused: 0,
            resumed: 0,
            started: false,
            diff: None,
            dry: None,
            skipped: 0,
            entries: 0,
            start_entry: None,
        }
    }

    /// Also hashes the uncompressed stream (SHA-256, on a thread of its own),
    /// for [`Finished::input_digest`]. Call before writing anything.
    pub fn hash_input(&mut self) {
        debug_assert!(
            !self.started && self.buf.is_empty(),
            "hash_input after writing"
        );
        self.hash_input_from(ResumableSha256::default(), Vec::new());
    }

    /// [`Self::hash_input`] from `hasher`, the state after the chunks whose
    /// states are `states`.
    fn hash_input_from(&mut self, mut hasher: ResumableSha256, mut states: Vec<String>) {
        use sha2_state::Digest as _;
        let save = self.cache.is_some();
        let (chunks, rx) = std::sync::mpsc::sync_channel::<Arc<Vec<u8>>>(DIFF_QUEUE);
        let handle = std::thread::spawn(move || {
            for chunk in rx {
                hasher.update(&chunk[..]);
                if save {
                    states.push(crate::digest::save_state(&hasher));
                }
            }
            (hasher, states)
        });
        self.diff = Some(DiffThread { chunks, handle });
    }

    /// Takes up the stream after `from`'s chunks, which an earlier stream
    /// wrote (with this one's cuts and cache) and which the caller has
    /// already written to the output, gzip header included. Call before
    /// writing anything, instead of [`Self::hash_input`]; the next entry
    /// announced must be the one the prefix's last chunk is followed by.
    pub fn resume(&mut self, from: Resumed, entries: usize) {
        debug_assert!(!self.started && self.buf.is_empty(), "resume after writing");
        self.started = true;
        self.offset = from.chunks.last().map_or(10, |c| c.offset + c.size);
        for c in &from.chunks {
            self.crc
                .combine(&crc32fast::Hasher::new_with_initial_len(c.crc, c.len));
            self.len += c.len;
        }
        self.reused = from.chunks.len() as u64;
        self.resumed = self.reused;
        self.records = from.chunks;
        self.entries = entries;
        self.hash_input_from(from.hasher, from.states);
    }

    /// A writer that compresses nothing and reads no file: it works out
    /// where the chunks of what is written would end and their keys
    /// ([`Self::finish_dry`]). Host files' contents are passed over
    /// ([`Self::skip`]) rather than read.
    pub fn dry(out: W) -> Self {
        let mut dry = Self::with(out, 1, Cuts::Entries, None);
        dry.describe = Some(Describe::default());
        dry.dry = Some(Vec::new());
        dry
    }

    /// The chunks a dry run has cut so far, in order.
    pub fn cut_so_far(&self) -> &[DryChunk] {
        self.dry.as_deref().unwrap_or_default()
    }

    /// The chunks a dry run cut, in order.
    pub fn finish_dry(mut self) -> io::Result<Vec<DryChunk>> {
        self.cut()?;
        Ok(self.dry.take().unwrap_or_default())
    }

    /// Bytes of the current chunk, held or passed over.
    fn held(&self) -> usize {
        self.buf.len() + self.skipped
    }

    fn header(&mut self) -> io::Result<()> {
        if !self.started {
            self.out.write_all(&HEADER)?;
            self.offset = 10;
            self.started = true;
        }
        Ok(())
    }

    fn drain(&mut self, keep: usize) -> io::Result<()> {
        while self.pending.len() > keep {
            let job = self.pending.pop_front().expect("checked non-empty");
            let done = job
                .recv()
                .map_err(|_| io::Error::other("a compression thread panicked"))??;
            self.out.write_all(&done.deflated)?;
            self.spent.push_back(done.chunk);
            if self.spent.len() > SPENT {
                self.spent.pop_front();
            }
            self.crc.combine(&crc32fast::Hasher::new_with_initial_len(
                done.crc,
                done.len as u64,
            ));
            self.len += done.len as u64;
            if let Some((key, zcrc)) = done.key {
                if key.is_none() {
                    self.unkeyed.push_back(self.records.len());
                }
                self.records.push(ChunkRecord {
                    // Replaced by the key once it is known ([`Self::give_keys`]).
                    key: key.unwrap_or_else(|| Digest::of(b"")),
                    offset: self.offset,
                    size: done.deflated.len() as u64,
                    len: done.len as u64,
                    crc: done.crc,
                    zcrc,
                });
                self.give_keys();
            }
            self.reused += u64::from(done.reused);
            self.offset += done.deflated.len() as u64;
        }
        Ok(())
    }

    /// Ends the current chunk here (nothing if it is empty).
    fn cut(&mut self) -> io::Result<()> {
        if self.held() == 0 {
            return Ok(());
        }
        let len = self.held() as u64;
        if let Some(dry) = &mut self.dry {
            let key = match self.describe.as_mut().map(|d| std::mem::take(d).finish()) {
                Some(Key::Known(key)) => key,
                _ => {
                    return Err(io::Error::other(
                        "a dry run describes only content whose digest it is given",
                    ))
                }
            };
            dry.push(DryChunk {
                key,
                len,
                start_entry: self.start_entry.take(),
            });
            self.buf.clear();
            self.skipped = 0;
            return Ok(());
        }
        self.start_entry = None;
        self.header()?;
        let next = self.empty_buffer();
        let chunk = Arc::new(std::mem::replace(&mut self.buf, next));
        if let Some(diff) = &self.diff {
            diff.chunks
                .send(Arc::clone(&chunk))
                .map_err(|_| io::Error::other("the input hashing thread stopped"))?;
        }
        let key = match self.describe.as_mut().map(|d| std::mem::take(d).finish()) {
            Some(Key::Known(key)) => Some(Some(key)),
            Some(Key::Later(later)) => {
                self.later.push(later);
                Some(None)
            }
            Some(Key::None) | None => None,
        };
        let cache = self.cache.clone().zip(key);
        let workers = self.workers;
        let pool = self.pool.get_or_insert_with(|| Pool::new(workers));
        let (done, answer) = std::sync::mpsc::sync_channel(1);
        pool.jobs
            .send(Job { chunk, cache, done })
            .map_err(|_| io::Error::other("every compression thread stopped"))?;
        self.pending.push_back(answer);
        // Four times as many chunks in flight as compress at once: a worker
        // that finishes while the oldest chunk is still being compressed
        // starts on another rather than waiting for it to be written. A
        // stored chunk takes a tenth of the time of a deflated one, so with
        // only twice as many the writer (which also reads and hashes the
        // files a first build did not hash while planning) often waited on
        // one slow chunk while a worker had nothing to do: on the
        // benchmark's cold build 3.07-3.25 s against 2.97-3.19 s now, for
        // about 20 MiB more memory (bench/RESULTS.md).
        self.drain(IN_FLIGHT * self.workers)
    }

    /// Says that a tar entry at `path` starts here, with `size` bytes of
    /// content; ends the chunk first if the rules say so.
    pub fn entry(&mut self, path: &str, size: u64) -> io::Result<()> {
        if self.cuts != Cuts::Entries {
            return Ok(());
        }
        self.content = None;
        self.content_digest = None;
        if std::mem::take(&mut self.content_later) {
            // The caller never gave the last file's digest.
            self.keys_lost = true;
            if let Some(d) = &mut self.describe {
                d.broken |= matches!(d.run, Run::File { digest: None, .. });
            }
        }
        let held = self.held();
        if held >= MIN_CHUNK
            && (held >= MAX_CHUNK || size >= CHUNK as u64 || fnv1a(path.as_bytes()) & CUT_MASK == 0)
        {
            self.cut()?;
        }
        if self.held() == 0 {
            self.start_entry = Some(self.entries);
        }
        self.entries += 1;
        // Remembered until the header is written and [`Self::content`] says so.
        self.content = Some((size, u64::MAX));
        Ok(())
    }

    /// Says that the content of the entry announced last starts here, and
    /// what its digest is (the caller checks the bytes it writes against it).
    pub fn content(&mut self, digest: &Digest) {
        if let Some((size, _)) = self.content {
            self.content = (size > 0).then_some((size, 0));
            self.content_digest = Some(digest.clone());
        }
    }

    /// [`Self::content`] for a file whose digest the caller learns as it
    /// writes the content, and gives with [`Self::resolve`] right after
    /// it, before anything else is written. Chunks that end inside it are
    /// compressed rather than looked up, and recorded under their keys
    /// once the digest is known; those with the rest of the content are
    /// looked up as usual.
    pub fn content_later(&mut self) {
        if let Some((size, _)) = self.content {
            self.content = (size > 0).then_some((size, 0));
            self.content_later = size > 0;
        }
    }

    /// The digest of the content written since [`Self::content_later`].
    pub fn resolve(&mut self, digest: &Digest) {
        if !std::mem::take(&mut self.content_later) {
            return;
        }
        if let Some(d) = &mut self.describe {
            d.resolve(digest);
        }
        for later in self.later.drain(..) {
            self.keys_ready.push_back(later.finish(digest));
        }
        self.give_keys();
    }

    /// Gives the records written without a key the keys known since.
    fn give_keys(&mut self) {
        while !self.unkeyed.is_empty() && !self.keys_ready.is_empty() {
            let i = self.unkeyed.pop_front().expect("checked non-empty");
            self.records[i].key = self.keys_ready.pop_front().expect("checked non-empty");
        }
    }

    /// Writes the rest, the final block and the trailer.
    pub fn finish(mut self) -> io::Result<Finished<W>> {
        self.keys_lost |= self.content_later;
        self.cut()?;
        self.header()?;
        self.drain(0)?;
        if self.keys_lost || !self.unkeyed.is_empty() || !self.later.is_empty() {
            self.records.clear();
        }
        self.out.write_all(&super::deflate::LAST_BLOCK)?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out
            .write_all(&((self.len & 0xffff_ffff) as u32).to_le_bytes())?;
        let (input_digest, states) = match self.diff.take() {
            Some(DiffThread { chunks, handle }) => {
                drop(chunks);
                let (hasher, states) = handle
                    .join()
                    .map_err(|_| io::Error::other("the input hashing thread panicked"))?;
                (Some(Digest::from_resumable(hasher)), states)
            }
            None => (None, Vec::new()),
        };
        Ok(Finished {
            out: self.out,
            chunks: self.records,
            reused: self.reused,
            resumed: self.resumed,
            input_digest,
            states,
        })
    }
}

impl<W: Write> ParallelGzip<W> {
    /// An empty buffer for the next chunk: the oldest spent one when no
    /// other thread still holds it, else a new one.
    fn empty_buffer(&mut self) -> Vec<u8> {
        if self
            .spent
            .front()
            .is_some_and(|b| Arc::strong_count(b) == 1)
        {
            if let Some(Ok(mut buf)) = self.spent.pop_front().map(Arc::try_unwrap) {
                buf.clear();
                return buf;
            }
        }
        Vec::with_capacity(CHUNK)
    }

    /// How many bytes the current chunk takes before the rules may end it,
    /// and whether they are a file's content.
    fn room(&self) -> (usize, bool) {
        let mut limit = match self.cuts {
            Cuts::Fixed => CHUNK,
            Cuts::Entries => HARD_MAX,
        } - self.held();
        // Inside a file's content: up to the next CHUNK boundary of it.
        let mut in_content = false;
        if let Some((left, done)) = self.content {
            if done != u64::MAX {
                let to_boundary = CHUNK as u64 - done % CHUNK as u64;
                limit = limit.min(to_boundary.min(left) as usize);
                in_content = true;
            }
        }
        (limit.max(1), in_content)
    }

    /// Accounts for the `n` bytes just added at `self.buf[start..]`, then
    /// ends the chunk if the rules say so.
    fn took(&mut self, start: usize, n: usize, in_content: bool) -> io::Result<()> {
        if let Some(describe) = &mut self.describe {
            match (&self.content_digest, self.content) {
                (Some(digest), Some((_, done))) if in_content => {
                    describe.file(Some(digest), done, n as u64)
                }
                (None, Some((_, done))) if in_content && self.content_later => {
                    describe.file(None, done, n as u64)
                }
                _ => describe.literal(&self.buf[start..start + n]),
            }
        }
        if in_content {
            let (left, done) = self.content.expect("in content");
            let (left, done) = (left - n as u64, done + n as u64);
            self.content = (left > 0).then_some((left, done));
            if done % CHUNK as u64 == 0 {
                return self.cut();
            }
        }
        let full = match self.cuts {
            Cuts::Fixed => CHUNK,
            Cuts::Entries => HARD_MAX,
        };
        if self.held() >= full {
            self.cut()?;
        }
        Ok(())
    }

    /// Copies up to `size` bytes of `from` into the stream, read straight
    /// into the chunk being filled; says how many there were.
    pub fn read_from(&mut self, mut from: impl io::Read, size: u64) -> io::Result<u64> {
        let mut left = size;
        while left > 0 {
            let (room, in_content) = self.room();
            let want = room.min(usize::try_from(left).unwrap_or(usize::MAX));
            let start = self.buf.len();
            self.buf.resize(start + want, 0);
            let n = loop {
                match from.read(&mut self.buf[start..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.buf.truncate(start);
                        return Err(e);
                    }
                }
            };
            self.buf.truncate(start + n);
            if n == 0 {
                break;
            }
            self.took(start, n, in_content)?;
            left -= n as u64;
        }
        Ok(size - left)
    }
}

impl<W: Write> ParallelGzip<W> {
    /// In a dry run, passes over `size` bytes of the current file's content
    /// as [`Self::read_from`] would take them, cutting where it would.
    pub fn skip(&mut self, size: u64) -> io::Result<()> {
        debug_assert!(self.dry.is_some(), "skip outside a dry run");
        let mut left = size;
        while left > 0 {
            let (room, in_content) = self.room();
            let n = room.min(usize::try_from(left).unwrap_or(usize::MAX));
            let start = self.buf.len();
            if in_content {
                self.skipped += n;
            } else {
                self.buf.resize(start + n, 0);
            }
            self.took(start, n, in_content)?;
            left -= n as u64;
        }
        Ok(())
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let (room, in_content) = self.room();
        let take = data.len().min(room);
        let start = self.buf.len();
        self.buf.extend_from_slice(&data[..take]);
        self.took(start, take, in_content)?;
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

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut back)
            .unwrap();
        back
    }

    use crate::layer::tests::noise;

    #[test]
    fn round_trips_and_ignores_the_thread_count() {
        let data = sample();
        let compress = |workers: usize| {
            let mut g = ParallelGzip::new(Vec::new(), workers);
            for piece in data.chunks(70_001) {
                g.write_all(piece).unwrap();
            }
            g.finish().unwrap().out
        };
        let one = compress(1);
        assert_eq!(one, compress(2));
        assert_eq!(one, compress(7));
        assert_eq!(gunzip(&one), data);
        assert!(one.len() < data.len(), "it compresses");
    }

    /// Reading a file's content straight into the chunks gives the bytes
    /// writing it does, and the stream's own hash is the SHA-256 of all it
    /// was given.
    #[test]
    fn read_from_matches_write_and_the_input_is_hashed() {
        let body = sample();
        let stream = |read: bool| {
            let mut g = ParallelGzip::with(Vec::new(), 2, Cuts::Entries, None);
            g.hash_input();
            g.entry("a", body.len() as u64).unwrap();
            g.write_all(&[b'h'; 512]).unwrap();
            g.content(&Digest::of(&body));
            if read {
                assert_eq!(g.read_from(&body[..], 1 << 40).unwrap(), body.len() as u64);
            } else {
                g.write_all(&body).unwrap();
            }
            g.finish().unwrap()
        };
        let (read, written) = (stream(true), stream(false));
        assert_eq!(read.out, written.out);
        let all = [vec![b'h'; 512], body.clone()].concat();
        assert_eq!(gunzip(&read.out), all);
        assert_eq!(read.input_digest, Some(Digest::of(&all)));
        assert_eq!(written.input_digest, Some(Digest::of(&all)));
    }

    /// The sum of the byte counts squared, counted over the whole piece.
    fn squares(piece: &[u8]) -> u64 {
        let mut counts = [0u64; 256];
        for &b in piece {
            counts[usize::from(b)] += 1;
        }
        counts.iter().map(|c| c * c).sum()
    }

    /// The early exit decides as counting the whole piece does.
    #[test]
    fn the_stored_test_decides_as_counting_everything_does() {
        let plain = |piece: &[u8]| piece.len() == PIECE && squares(piece) <= FLAT;
        let mut rng = fastrand::Rng::with_seed(12);
        let (mut yes, mut no) = (0, 0);
        for case in 0..300 {
            let mut piece = noise(PIECE, case + 1);
            // Bend some: a run of one value, or a stretch of few values,
            // placed anywhere, of any length around where the test tips over
            // (noise has a sum near 2^24 + 2^16; a run of about 2,400 tips it).
            match case % 3 {
                1 => {
                    let len = rng.usize(0..5000);
                    let at = rng.usize(0..PIECE - len);
                    piece[at..at + len].fill(rng.u8(..));
                }
                2 => {
                    let len = rng.usize(0..PIECE);
                    let at = rng.usize(0..PIECE - len);
                    let few = rng.u8(1..=64);
                    for b in &mut piece[at..at + len] {
                        *b %= few;
                    }
                }
                _ => {}
            }
            let got = incompressible(&piece);
            assert_eq!(got, plain(&piece), "case {case}");
            if got {
                yes += 1
            } else {
                no += 1
            }
        }
        assert!(yes > 50 && no > 50, "both answers were tried: {yes} / {no}");
    }

    /// A piece whose byte counts are `heavy` for the values 0, 1, ... and
    /// the rest of [`PIECE`] spread as evenly as it goes over the others,
    /// laid out in three orders: each value's bytes together (the heavy
    /// ones first, so the early exit has the most to go on), dealt out in
    /// turn, and shuffled.
    fn spread(heavy: &[usize]) -> [Vec<u8>; 3] {
        let mut counts = vec![0; 256];
        counts[..heavy.len()].copy_from_slice(heavy);
        let rest = PIECE - heavy.iter().sum::<usize>();
        let others = 256 - heavy.len();
        for (i, c) in counts[heavy.len()..].iter_mut().enumerate() {
            *c = rest / others + usize::from(i < rest % others);
        }
        let together: Vec<u8> = (0..=255u8)
            .flat_map(|v| std::iter::repeat_n(v, counts[usize::from(v)]))
            .collect();
        let mut left = counts.clone();
        let mut dealt = Vec::with_capacity(PIECE);
        while dealt.len() < PIECE {
            for (v, n) in left.iter_mut().enumerate() {
                if *n > 0 {
                    *n -= 1;
                    dealt.push(v as u8);
                }
            }
        }
        let mut shuffled = together.clone();
        fastrand::Rng::with_seed(6).shuffle(&mut shuffled);
        [together, dealt, shuffled]
    }

    /// The bound is inclusive, and is where the docs say: a sum of squares
    /// of exactly FLAT (H2 just over 7.5 bits) is stored, the next one up
    /// (sums of 64 Ki counts are always even) is deflated, in any order.
    #[test]
    fn a_piece_at_the_bound_is_stored_and_one_just_over_is_not() {
        assert_eq!(FLAT, (1u64 << 49).isqrt(), "FLAT is 2^24.5, rounded down");
        // 2788² + 961² + 65 × 244² + 189 × 243² = 23,726,566.
        for piece in spread(&[2788, 961]) {
            assert_eq!(piece.len(), PIECE);
            assert_eq!(squares(&piece), FLAT);
            assert!(incompressible(&piece));
        }
        // 2796² + 932² + 64 × 244² + 190 × 243² = 23,726,568.
        for piece in spread(&[2796, 932]) {
            assert_eq!(squares(&piece), FLAT + 2);
            assert!(!incompressible(&piece));
        }
        // Only full pieces are stored.
        let [_, _, shuffled] = spread(&[2788, 961]);
        assert!(!incompressible(&shuffled[..PIECE - 1]));
    }

    #[test]
    fn empty_input_is_a_valid_gzip() {
        let out = ParallelGzip::new(Vec::new(), 2).finish().unwrap().out;
        assert!(gunzip(&out).is_empty());
    }

    #[test]
    fn noise_is_stored_and_text_is_deflated_in_one_stream() {
        let text: Vec<u8> = include_bytes!("../../README.md")
            .iter()
            .copied()
            .cycle()
            .take(2 * PIECE)
            .collect();
        let [at_bound, _, _] = spread(&[2788, 961]);
        let [_, over, _] = spread(&[2796, 932]);
        let mut data = [at_bound.clone(), over.clone()].concat();
        data.extend(noise(3 * PIECE + 100, 7));
        data.extend(sample().into_iter().take(2 * PIECE));
        data.extend(noise(PIECE, 9));
        data.extend(&text);
        data.extend(noise(PIECE / 2, 11));
        assert!(incompressible(&data[2 * PIECE..3 * PIECE]));
        assert!(!incompressible(&data[5 * PIECE + 100..6 * PIECE + 100]));
        assert!(!incompressible(&text[..PIECE]));
        // Bytes spread evenly but with regular steps: stored all the same,
        // since the rule counts bytes alone (see FLAT).
        let ramp: Vec<u8> = (0..PIECE).map(|i| i as u8).collect();
        assert!(incompressible(&ramp));
        let mut g = ParallelGzip::new(Vec::new(), 3);
        g.write_all(&data).unwrap();
        let out = g.finish().unwrap().out;
        assert_eq!(gunzip(&out), data);
        // Stored noise costs 5 bytes per 64 KiB block; the text shrinks.
        assert!(out.len() < data.len());
        // The first piece went in as it is, the second did not.
        let verbatim = |piece: &[u8]| out.windows(4096).any(|w| w == &piece[..4096]);
        assert!(verbatim(&at_bound) && !verbatim(&over));
        // GNU gzip, an outside decoder, reads the same bytes back.
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("pieces.gz");
        std::fs::write(&gz, &out).unwrap();
        let back = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&gz)
            .output()
            .expect("run gzip");
        assert!(back.status.success(), "gzip -dc: {back:?}");
        assert!(back.stdout == data, "gzip -dc gave other bytes");
    }

    /// A tar-like stream of `files` (a 512-byte header, the content read
    /// through `reader`, padding) written with a chunk cache on `workers`
    /// threads, the digests of the files `later` names given after their
    /// content (if `resolve`), the others before: its bytes and records.
    fn tar_stream<'a, R: Read + 'a>(
        store: &crate::store::Store,
        files: &'a [(String, Vec<u8>)],
        workers: usize,
        later: &[usize],
        resolve: bool,
        reader: impl Fn(usize, &'a [u8]) -> R,
    ) -> (Vec<u8>, Vec<ChunkRecord>) {
        let cache = Arc::new(store.chunk_cache());
        let mut g = ParallelGzip::with(Vec::new(), workers, Cuts::Entries, Some(cache));
        g.hash_input();
        for (i, (path, body)) in files.iter().enumerate() {
            g.entry(path, body.len() as u64).unwrap();
            g.write_all(&[b'h'; 512]).unwrap();
            match later.contains(&i) {
                true => g.content_later(),
                false => g.content(&Digest::of(body)),
            }
            let n = g.read_from(reader(i, body), body.len() as u64).unwrap();
            assert_eq!(n, body.len() as u64);
            if later.contains(&i) && resolve {
                g.resolve(&Digest::of(body));
            }
            g.write_all(&vec![0; (512 - body.len() % 512) % 512])
                .unwrap();
        }
        let f = g.finish().unwrap();
        (f.out, f.chunks)
    }

    /// A file whose digest comes after its content
    /// ([`ParallelGzip::content_later`]) gives the bytes and the chunk
    /// records, keys included, that giving it first does: files inside one
    /// chunk, a file cut into several, an empty one, one of exactly a
    /// chunk. A digest that never comes leaves no record at all.
    #[test]
    fn a_digest_given_after_the_content_gives_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let files: Vec<(String, Vec<u8>)> = (0..80usize)
            .map(|i| {
                let len = match i {
                    7 => 3 * CHUNK + 777,
                    8 => 0,
                    20 => CHUNK,
                    _ => 30_000 + i * 1000,
                };
                let body = (0..)
                    .flat_map(|j| format!("file {i} line {j}\n").into_bytes())
                    .take(len)
                    .collect();
                (format!("d/f{i:02}"), body)
            })
            .collect();
        let stream = |later: &[usize], resolve: bool| {
            tar_stream(&store, &files, 3, later, resolve, |_, body| body)
        };
        let (bytes, records) = stream(&[], true);
        assert!(records.len() > 5, "{} chunks", records.len());
        let all: Vec<usize> = (0..files.len()).collect();
        for later in [vec![7], vec![8, 20], vec![6, 7], all] {
            assert!(
                stream(&later, true) == (bytes.clone(), records.clone()),
                "digests later for {later:?}"
            );
        }
        let (lost, none) = stream(&[7], false);
        assert_eq!(lost, bytes);
        assert!(none.is_empty(), "{} records kept", none.len());
    }

    /// Planning hashes files from the size up which a chunk may end inside
    /// their content, so that every such chunk is looked up by its key.
    #[test]
    fn planning_hashes_every_file_a_chunk_may_end_inside() {
        assert_eq!(crate::source::walk::LATE_MAX, CHUNK as u64);
        // Below it, a file starts with fewer than MAX_CHUNK bytes held (or
        // the chunk ends there) and ends before HARD_MAX.
        assert!(MAX_CHUNK as u64 + crate::source::walk::LATE_MAX <= HARD_MAX as u64);
    }

    #[test]
    fn entry_cuts_keep_a_change_inside_its_chunks() {
        // 120 compressible entries of about 40 KiB, one big file in the
        // middle; the changed build makes file 30 longer by 100 bytes.
        let build = |grow: usize| {
            let mut g = ParallelGzip::with(Vec::new(), 2, Cuts::Entries, None);
            let mut all = Vec::new();
            for i in 0..120usize {
                let path = format!("dir/file-{i:04}");
                let mut body: Vec<u8> = (0..)
                    .flat_map(|j| format!("file {i} line {j}\n").into_bytes())
                    .take(if i == 60 { 3 * CHUNK + 5 } else { 40 << 10 })
                    .collect();
                if i == 30 {
                    body.extend(std::iter::repeat_n(b'+', grow));
                }
                g.entry(&path, body.len() as u64).unwrap();
                let header = vec![b'h'; 512];
                g.write_all(&header).unwrap();
                g.content(&Digest::of(&body));
                for piece in body.chunks(10_000) {
                    g.write_all(piece).unwrap();
                }
                all.extend(header);
                all.extend(body);
            }
            (g.finish().unwrap().out, all)
        };
        let (a, data) = build(0);
        assert_eq!(gunzip(&a), data);
        let (b, longer) = build(100);
        assert_eq!(gunzip(&b), longer);
        // Only the chunk holding file 30 differs: the rest, before and after,
        // is the same bytes (the trailer aside).
        let body = |x: &[u8]| x[..x.len() - 8].to_vec();
        let (a, b) = (body(&a), body(&b));
        let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        let suffix = a
            .iter()
            .rev()
            .zip(b.iter().rev())
            .take_while(|(x, y)| x == y)
            .count();
        let differing = a.len() - prefix - suffix.min(a.len() - prefix);
        assert!(
            prefix > 0 && suffix > a.len() / 2,
            "prefix {prefix}, suffix {suffix} of {}",
            a.len()
        );
        assert!(
            differing < MAX_CHUNK / 2,
            "{differing} compressed bytes differ"
        );
    }

    /// Many random streams, digests given later for random files
    /// (several multi-chunk files in a row, empty files, files of exactly
    /// 1, 2 and 4 MiB, files that bring a chunk to HARD_MAX, short reads),
    /// give the bytes and the chunk records, keys included and in order,
    /// that giving every digest first does.
    #[test]
    fn random_streams_with_digests_later_give_the_same_records() {
        struct Short<'a>(&'a [u8], fastrand::Rng);
        impl Read for Short<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(out.len()).min(self.1.usize(1..300_000));
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let sizes = [
            0,
            1,
            511,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            2 * CHUNK,
            HARD_MAX,
            HARD_MAX + 3,
            MIN_CHUNK,
            MAX_CHUNK - 700,
            3 * CHUNK + 777,
        ];
        for seed in 0..12u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let n = rng.usize(3..14);
            let files: Vec<(String, Vec<u8>)> = (0..n)
                .map(|i| {
                    let len = if rng.bool() {
                        sizes[rng.usize(..sizes.len())]
                    } else {
                        rng.usize(..700_000)
                    };
                    let body = noise(len, seed * 100 + i as u64)
                        .into_iter()
                        .map(|b| b & 0x1f)
                        .collect();
                    (format!("p{seed}/f{i:02}"), body)
                })
                .collect();
            let workers = 1 + (seed as usize % 3);
            let stream = |later: &[usize]| {
                tar_stream(&store, &files, workers, later, true, |i, body| {
                    Short(body, fastrand::Rng::with_seed(i as u64))
                })
            };
            let (bytes, records) = stream(&[]);
            let mut choices: Vec<Vec<usize>> = vec![(0..n).collect()];
            for _ in 0..3 {
                choices.push((0..n).filter(|_| rng.bool()).collect());
            }
            for later in choices {
                let (b, r) = stream(&later);
                assert!(b == bytes, "seed {seed}, later {later:?}: bytes differ");
                assert_eq!(r.len(), records.len(), "seed {seed}, later {later:?}");
                for (k, (x, y)) in r.iter().zip(&records).enumerate() {
                    assert_eq!(x, y, "seed {seed}, later {later:?}: record {k}");
                }
            }
        }
    }
}
