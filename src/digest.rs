//! Content digests: the one type every stage uses to name a blob.
//!
//! A [`Digest`] is parsed and validated once (`sha256:` and 64 lower-case hex
//! digits); everything downstream can rely on it being well formed.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A validated `sha256:<hex>` content digest. The hex digits are held
/// inline, so a digest is cloned without allocating (a plan holds one per
/// file, and clones them into materials and caches).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    /// 64 lower-case hex digits (ASCII, so always a valid `str`).
    hex: [u8; 64],
}

/// Why a string is not a digest.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a digest: expected `sha256:` followed by 64 lower-case hex digits")]
pub struct BadDigest(pub String);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// Finishes a running SHA-256 into a digest.
    pub fn from_hasher(hasher: Sha256) -> Self {
        Self::from_output(hasher.finalize())
    }

    /// Finishes a running [`ResumableSha256`] into a digest.
    pub fn from_resumable(hasher: ResumableSha256) -> Self {
        use sha2_state::Digest as _;
        Self::from_output(hasher.finalize())
    }

    /// The digest whose 32 bytes a SHA-256 gave.
    fn from_output(bytes: impl AsRef<[u8]>) -> Self {
        let mut hex = [0u8; 64];
        hex::encode_to_slice(bytes, &mut hex).expect("32 bytes fill 64 hex digits");
        Self { hex }
    }

    /// A digest from its 64 lower-case hex digits alone.
    pub fn from_hex(digits: &str) -> Option<Self> {
        let hex: [u8; 64] = digits.as_bytes().try_into().ok()?;
        hex.iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            .then_some(Self { hex })
    }

    /// The 64 hex digits, without the algorithm.
    pub fn hex(&self) -> &str {
        std::str::from_utf8(&self.hex).expect("hex digits are ASCII")
    }

    /// The algorithm name; kiln only produces and accepts SHA-256.
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }
}

impl FromStr for Digest {
    type Err = BadDigest;

    fn from_str(s: &str) -> Result<Self, BadDigest> {
        s.strip_prefix("sha256:")
            .and_then(Self::from_hex)
            .ok_or_else(|| BadDigest(s.to_string()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    len: u64,
}

/// Where a [`HashingWriter`] hashes.
enum Hasher {
    /// On the writing thread.
    Here(Sha256),
    /// On a thread of its own.
    Beside(Beside),
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Hasher::Here(Sha256::new()),
            len: 0,
        }
    }

    /// Wraps `inner`, hashing on another thread once more than a batch (256
    /// KiB) has been written: the writer then only copies what passes, and
    /// a long stream's SHA-256 runs beside the work that produces it.
    pub fn beside(inner: W) -> Self {
        Self {
            inner,
            hasher: Hasher::Beside(Beside::default()),
            len: 0,
        }
    }

    /// As [`HashingWriter::beside`], taking up the hashing at `from`: the
    /// first `from.at` bytes written are passed on (and copied) but not
    /// hashed; the caller vouches that `from.hasher` is their state.
    pub fn resumed_beside(inner: W, from: Resume) -> Self {
        let mut beside = Beside::default();
        beside.tracked.hasher = from.hasher;
        beside.tracked.skip = from.at;
        Self {
            inner,
            hasher: Hasher::Beside(beside),
            len: 0,
        }
    }

    /// Has a hashing thread ([`HashingWriter::beside`]) also write what it
    /// hashes to `copy`, from here on; [`HashingWriter::finish_copy`] hands
    /// it back. A writer made by [`HashingWriter::new`], which hashes where
    /// it writes, ignores this.
    pub fn copy_to(&mut self, copy: Box<dyn Copy>) {
        if let Hasher::Beside(b) = &mut self.hasher {
            b.copy = Some(Ok(copy));
        }
    }

    /// As [`HashingWriter::finish`], with the copy asked for by
    /// [`HashingWriter::copy_to`], or why it failed.
    pub fn finish_copy(self) -> (W, Digest, u64, CopyState) {
        let (inner, digest, len, copy, _) = self.finish_all();
        (inner, digest, len, copy)
    }

    /// As [`HashingWriter::finish_copy`], with the states a hasher beside
    /// saved every [`CHECKPOINT`] bytes (none for one made by
    /// [`HashingWriter::new`]).
    pub fn finish_all(self) -> (W, Digest, u64, CopyState, Vec<Checkpoint>) {
        match self.hasher {
            Hasher::Here(h) => (
                self.inner,
                Digest::from_hasher(h),
                self.len,
                None,
                Vec::new(),
            ),
            Hasher::Beside(b) => {
                let (tracked, copy) = b.finish();
                let digest = Digest::from_resumable(tracked.hasher);
                (self.inner, digest, self.len, copy, tracked.checkpoints)
            }
        }
    }

    /// The inner writer (what is written to it directly is not hashed).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Returns the inner writer, the digest and the byte count of what was written.
    pub fn finish(self) -> (W, Digest, u64) {
        let (inner, digest, len, _) = self.finish_copy();
        (inner, digest, len)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        match &mut self.hasher {
            Hasher::Here(h) => h.update(&buf[..n]),
            Hasher::Beside(b) => b.update(&buf[..n]),
        }
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Where a hashing thread writes a copy of what it hashes.
pub trait Copy: Write + Send {
    /// Makes what was written durable.
    fn close(self: Box<Self>) -> io::Result<()>;
}

/// A copy being written (or written), or why it could not be.
pub type CopyState = Option<io::Result<Box<dyn Copy>>>;

/// Bytes gathered into batches and hashed in order on a thread started
/// with the first full batch (a short stream is hashed where it ends).
#[derive(Default)]
struct Beside {
    batch: Vec<u8>,
    thread: Option<HashThread>,
    /// Moved to the thread when it starts.
    copy: CopyState,
    /// Moved to the thread when it starts.
    tracked: Tracked,
}

struct HashThread {
    full: std::sync::mpsc::SyncSender<Vec<u8>>,
    /// Hashed batches come back to be filled again.
    empty: std::sync::mpsc::Receiver<Vec<u8>>,
    handle: std::thread::JoinHandle<(Tracked, CopyState)>,
}

/// A SHA-256 whose state can be written down and taken up again (the
/// `sha2` crate's 0.11 line, for its `SerializableState`): a layer's
/// diff_id and blob hashers save theirs as they go, so that a rebuild
/// whose tar stream starts as the last one did hashes only what follows.
pub type ResumableSha256 = sha2_state::Sha256;

/// A saved [`ResumableSha256`] state, as hex.
pub fn save_state(hasher: &ResumableSha256) -> String {
    use sha2_state::digest::common::hazmat::SerializableState;
    hex::encode(hasher.serialize())
}

/// A state [`save_state`] wrote, or `None` if `text` is not one.
pub fn load_state(text: &str) -> Option<ResumableSha256> {
    use sha2_state::digest::common::hazmat::{SerializableState, SerializedState};
    let bytes = hex::decode(text).ok()?;
    let state = SerializedState::<ResumableSha256>::try_from(&bytes[..]).ok()?;
    ResumableSha256::deserialize(&state).ok()
}

/// Where a hashed stream takes up again: the first `at` bytes written are
/// not hashed, and `hasher` holds their state.
pub struct Resume {
    /// The state after the first `at` bytes.
    pub hasher: ResumableSha256,
    /// How many bytes that state covers.
    pub at: u64,
}

/// `(offset, saved state)`: a hasher's state after the first `offset`
/// bytes of its stream ([`save_state`]).
pub type Checkpoint = (u64, String);

/// How often (in bytes of the stream) a hasher beside saves its state.
pub const CHECKPOINT: u64 = 1 << 20;

/// A hasher that skips what a resumed state already covers and saves its
/// state every [`CHECKPOINT`] bytes.
#[derive(Default)]
struct Tracked {
    hasher: ResumableSha256,
    /// Bytes seen so far, hashed or skipped.
    pos: u64,
    /// Bytes at the start not to hash (the resumed state's).
    skip: u64,
    /// Every multiple of [`CHECKPOINT`] hashed here.
    checkpoints: Vec<Checkpoint>,
}

impl Tracked {
    fn update(&mut self, mut bytes: &[u8]) {
        use sha2_state::Digest as _;
        if self.pos < self.skip {
            let n = bytes.len().min((self.skip - self.pos) as usize);
            self.pos += n as u64;
            bytes = &bytes[n..];
        }
        while !bytes.is_empty() {
            let to_mark = CHECKPOINT - self.pos % CHECKPOINT;
            let n = bytes
                .len()
                .min(usize::try_from(to_mark).unwrap_or(usize::MAX));
            self.hasher.update(&bytes[..n]);
            self.pos += n as u64;
            bytes = &bytes[n..];
            if self.pos.is_multiple_of(CHECKPOINT) {
                self.checkpoints.push((self.pos, save_state(&self.hasher)));
            }
        }
    }
}

/// Writes `bytes` to the copy, keeping the first error.
fn copy_out(copy: &mut CopyState, bytes: &[u8]) {
    if let Some(Ok(w)) = copy {
        if let Err(e) = w.write_all(bytes) {
            *copy = Some(Err(e));
        }
    }
}

/// How much [`Beside`] gathers before handing over.
const BATCH: usize = 1 << 18;

impl Beside {
    fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = (BATCH - self.batch.len()).min(bytes.len());
            if self.batch.capacity() < BATCH {
                self.batch.reserve_exact(BATCH - self.batch.len());
            }
            self.batch.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.batch.len() == BATCH {
                self.hand_over();
            }
        }
    }

    fn hand_over(&mut self) {
        let copy = &mut self.copy;
        let tracked = &mut self.tracked;
        let thread = self.thread.get_or_insert_with(|| {
            let (full, batches) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
            let (done, empty) = std::sync::mpsc::channel();
            let mut copy = copy.take();
            let mut tracked = std::mem::take(tracked);
            let handle = std::thread::spawn(move || {
                for mut batch in batches {
                    tracked.update(&batch);
                    copy_out(&mut copy, &batch);
                    batch.clear();
                    // Gone only once the writer is finished.
                    let _ = done.send(batch);
                }
                (tracked, copy)
            });
            HashThread {
                full,
                empty,
                handle,
            }
        });
        let next = thread.empty.try_recv().unwrap_or_default();
        let batch = std::mem::replace(&mut self.batch, next);
        thread
            .full
            .send(batch)
            .expect("the hashing thread runs until its sender is dropped");
    }

    fn finish(mut self) -> (Tracked, CopyState) {
        let Some(thread) = self.thread else {
            copy_out(&mut self.copy, &self.batch);
            self.tracked.update(&self.batch);
            return (self.tracked, self.copy);
        };
        let HashThread { full, handle, .. } = thread;
        if !self.batch.is_empty() {
            full.send(self.batch)
                .expect("the hashing thread runs until its sender is dropped");
        }
        drop(full);
        handle.join().expect("hashing does not panic")
    }
}

/// A reader that hashes and counts what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// The digest of what has been read so far.
    pub fn digest_so_far(&self) -> Digest {
        Digest::from_hasher(self.hasher.clone())
    }

    /// The digest and byte count of what was read.
    pub fn finish(self) -> (Digest, u64) {
        (Digest::from_hasher(self.hasher), self.len)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Hashes everything `reader` yields.
pub fn digest_reader(reader: impl Read) -> io::Result<(Digest, u64)> {
    let mut r = HashingReader::new(reader);
    io::copy(&mut r, &mut io::sink())?;
    Ok(r.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_beside_gives_the_digest_hashing_here_gives() {
        let data: Vec<u8> = (0..3 * BATCH + 12_345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        for len in [0, 1, BATCH - 1, BATCH, BATCH + 1, 2 * BATCH, data.len()] {
            for piece in [1000, 4096, BATCH, 3 * BATCH] {
                let mut w = HashingWriter::beside(Vec::new());
                for part in data[..len].chunks(piece) {
                    w.write_all(part).unwrap();
                }
                let (out, digest, n) = w.finish();
                assert_eq!(out, &data[..len]);
                assert_eq!(n, len as u64);
                assert_eq!(digest, Digest::of(&data[..len]), "{len} bytes in {piece}");
            }
        }
    }

    #[test]
    fn parses_and_prints() {
        let d = Digest::of(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "sha256:",
            "sha512:00",
            "sha256:ABCDEF",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
        let upper = format!("sha256:{}", "A".repeat(64));
        assert!(upper.parse::<Digest>().is_err());
    }
}
