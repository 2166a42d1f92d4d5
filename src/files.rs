//! Writing files so that they appear whole or not at all.
//!
//! Every file kiln writes outside a build tree goes through here: a
//! temporary file (or directory) beside the destination, filled, synced,
//! renamed over it, and the directory synced. The temporary names start with
//! `.NAME.kiln-tmp-`, so a killed run leaves nothing that looks finished.
//! Stage-neutral: every stage may use it, it uses only [`crate::error`].

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tempfile::{NamedTempFile, TempDir};

use crate::error::{Error, IoContext, Result};

/// The directory a destination lives in (`.` for a bare name).
pub fn parent_of(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The last component of a destination, for temporary names beside it.
pub fn file_name(dest: &Path) -> String {
    dest.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into())
}

/// A new temporary file beside `dest` (its parent must exist), to be
/// [`commit`]ted over it. It is created with mode 0666 less the umask (0644
/// under the usual 022), as any file a program writes: what kiln writes
/// for users (archives, digest files, lockfiles, SBOMs) is readable as
/// theirs would be. Credentials go through [`write_private`] instead.
pub fn temp_file_beside(dest: &Path) -> Result<NamedTempFile> {
    temp_file_with_mode(dest, 0o666)
}

/// As [`temp_file_beside`], created with `mode` (less the umask).
fn temp_file_with_mode(dest: &Path, mode: u32) -> Result<NamedTempFile> {
    let parent = parent_of(dest);
    tempfile::Builder::new()
        .prefix(&format!(".{}.kiln-tmp-", file_name(dest)))
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(&parent)
        .at("create a temporary file in", &parent)
}

/// A new temporary directory beside `dest`, to be [`replace`]d over it.
pub fn temp_dir_beside(dest: &Path) -> Result<TempDir> {
    let parent = parent_of(dest);
    tempfile::Builder::new()
        .prefix(&format!(".{}.kiln-tmp-", file_name(dest)))
        .tempdir_in(&parent)
        .at("create a temporary directory in", &parent)
}

/// Syncs a finished temporary file, renames it to `dest` and syncs the directory.
pub fn commit(tmp: NamedTempFile, dest: &Path) -> Result<()> {
    tmp.as_file().sync_all().at("sync", tmp.path())?;
    rename_into(tmp, dest)?;
    sync_dir(&parent_of(dest))
}

/// Renames a temporary file to `dest` without syncing: for caches that
/// are derived again when lost or damaged.
pub fn rename_into(tmp: NamedTempFile, dest: &Path) -> Result<()> {
    tmp.persist(dest)
        .map_err(|e| Error::io("rename into", dest, e.error))?;
    Ok(())
}

/// Writes `bytes` to `dest` atomically, creating its parent directories.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(dest, bytes, None)
}

/// As [`write_atomic`], readable and writable only by the owner (credentials).
pub fn write_private(dest: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(dest, bytes, Some(0o600))
}

fn write_atomic_with(dest: &Path, bytes: &[u8], mode: Option<u32>) -> Result<()> {
    let parent = parent_of(dest);
    fs::create_dir_all(&parent).at("create", &parent)?;
    // A private file is created private: never readable by others, not
    // even empty for a moment (an open descriptor outlives a chmod).
    let mut tmp = temp_file_with_mode(dest, mode.unwrap_or(0o666))?;
    if let Some(mode) = mode {
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))
            .at("set permissions of", tmp.path())?;
    }
    tmp.write_all(bytes).at("write", tmp.path())?;
    commit(tmp, dest)
}

/// Writes a file that must not exist yet, with `mode`, synced.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .at("create", path)?;
    f.write_all(bytes).at("write", path)?;
    f.sync_all().at("sync", path)
}

/// Creates (truncating) a file inside a temporary tree, writes `bytes`, syncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).at("create", path)?;
    f.write_all(bytes).at("write", path)?;
    f.sync_all().at("sync", path)
}

/// Moves the finished directory `new` to `dest`; an old `dest` is moved
/// aside first and removed after, so `dest` is always whole.
pub fn replace(new: &Path, dest: &Path) -> Result<()> {
    if fs::symlink_metadata(dest).is_err() {
        return fs::rename(new, dest).at("rename into", dest);
    }
    let parent = parent_of(dest);
    let old = tempfile::Builder::new()
        .prefix(&format!(".{}.kiln-old-", file_name(dest)))
        .tempdir_in(&parent)
        .at("create a temporary directory in", &parent)?;
    let old_path = old.path().join("layout");
    fs::rename(dest, &old_path).at("move aside", dest)?;
    if let Err(e) = fs::rename(new, dest) {
        let _ = fs::rename(&old_path, dest);
        return Err(Error::io("rename into", dest, e));
    }
    drop(old);
    Ok(())
}

/// Moves a filled temporary directory over `dest` (see [`replace`]) and
/// syncs the parent; the temporary directory is removed on failure.
pub fn commit_dir(tmp: TempDir, dest: &Path) -> Result<()> {
    let tmp_path = tmp.keep();
    replace(&tmp_path, dest).inspect_err(|_| {
        let _ = fs::remove_dir_all(&tmp_path);
    })?;
    sync_dir(&parent_of(dest))
}

/// A file being written whole, from its start, and synced at the end,
/// whose bytes are handed to the disk as they are written, so that the
/// final sync finds little left to do and the disk works while the writer
/// goes on producing. Two ways:
/// - [`Writeback::new`]: through the page cache, with
///   `posix_fadvise(DONTNEED)` on every 8 MiB just written, which starts
///   its writeback without waiting. For files read back soon (a blob an
///   archive or a VM image is made from next).
/// - [`Writeback::direct`]: gathered into aligned 2 MiB blocks that a
///   thread of its own writes with `O_DIRECT` while the next block fills,
///   so that hundreds of MiB cost neither a copy into fresh page-cache
///   pages nor an eviction of what the cache holds, and the writer never
///   waits for the disk unless it is the slower of the two. The unaligned
///   tail goes through the page cache at [`Writeback::finish`]. For files
///   not read again soon (a layer blob whose second copy an OCI layout
///   takes). Where the filesystem refuses `O_DIRECT` (tmpfs, some network
///   filesystems, a block size over 4 KiB: `EINVAL` at `fcntl` or at a
///   write), it falls back to the first way. A failed write is reported by
///   the next write after it, or by [`Writeback::finish`].
pub struct Writeback<F> {
    mode: Mode<F>,
}

enum Mode<F> {
    /// Through the page cache, on the caller's thread: the file's offset,
    /// and how far of it was handed to the disk.
    Cache { file: F, written: u64, handed: u64 },
    /// `O_DIRECT`: the block being filled, and the thread writing the full ones.
    Direct {
        block: Block,
        thread: DirectThread<F>,
    },
    /// Only while moving from one to the other.
    Moving,
}

struct DirectThread<F> {
    full: std::sync::mpsc::SyncSender<Block>,
    empty: std::sync::mpsc::Receiver<Block>,
    /// Blocks made so far (at most two: one filling, one being written).
    made: usize,
    /// The file back, and whether every block went direct.
    handle: std::thread::JoinHandle<std::io::Result<(F, bool)>>,
}

impl<F> DirectThread<F> {
    /// Closes the channel and waits for the thread: the file back once
    /// every block sent is written, or the first write's failure.
    fn stop(self) -> std::io::Result<(F, bool)> {
        drop(self.full);
        self.handle
            .join()
            .map_err(|_| std::io::Error::other("the writing thread panicked"))?
    }
}

/// An aligned block: `buf[at..at + filled]`.
struct Block {
    buf: Vec<u8>,
    at: usize,
    filled: usize,
}

impl Block {
    fn new() -> Self {
        let buf = vec![0; DIRECT_BLOCK + DIRECT_ALIGN];
        let at = buf.as_ptr().align_offset(DIRECT_ALIGN);
        Block { buf, at, filled: 0 }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.at..self.at + self.filled]
    }
}

/// How big a block [`Writeback::direct`] writes at once.
const DIRECT_BLOCK: usize = 2 << 20;
/// How much [`Writeback::new`] lets the page cache gather before handing it
/// to the disk.
const ADVISE_EVERY: u64 = 8 << 20;
/// The alignment `O_DIRECT` asks of addresses, offsets and lengths here
/// (any logical block size up to 4 KiB; a larger one makes the filesystem
/// refuse, and [`Writeback`] falls back).
const DIRECT_ALIGN: usize = 4096;

/// Turns `O_DIRECT` off: later writes go through the page cache.
fn buffered<F: std::os::fd::AsFd>(file: &F, direct: &mut bool) -> std::io::Result<()> {
    if std::mem::take(direct) {
        let flags = rustix::fs::fcntl_getfl(file)?;
        rustix::fs::fcntl_setfl(file, flags - rustix::fs::OFlags::DIRECT)?;
    }
    Ok(())
}

/// Writes all of `bytes`, falling back to the page cache if the filesystem
/// refuses them direct.
fn put<F: std::os::fd::AsFd + Write>(
    file: &mut F,
    direct: &mut bool,
    mut bytes: &[u8],
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match file.write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            // A short direct write leaves an unaligned offset behind.
            Ok(n) if n < bytes.len() && *direct => {
                buffered(file, direct)?;
                bytes = &bytes[n..];
            }
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if *direct && e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) =>
            {
                buffered(file, direct)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl<F: std::os::fd::AsFd + Write + Send + 'static> Writeback<F> {
    /// Wraps `file`, written from its start, through the page cache.
    pub fn new(file: F) -> Self {
        Writeback {
            mode: Mode::Cache {
                file,
                written: 0,
                handed: 0,
            },
        }
    }

    /// Wraps `file`, written from its start, with `O_DIRECT` where the
    /// filesystem takes it.
    pub fn direct(file: F) -> Self {
        let direct = rustix::fs::fcntl_getfl(&file)
            .and_then(|flags| rustix::fs::fcntl_setfl(&file, flags | rustix::fs::OFlags::DIRECT))
            .is_ok();
        if !direct {
            return Self::new(file);
        }
        let (full, blocks) = std::sync::mpsc::sync_channel::<Block>(1);
        let (done, empty) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let mut file = file;
            let mut direct = true;
            for mut block in blocks {
                // On a failure the channel closes: the next send fails,
                // and the writer learns why from the join.
                put(&mut file, &mut direct, block.bytes())?;
                block.filled = 0;
                // Gone only once the writer is finished.
                let _ = done.send(block);
            }
            Ok((file, direct))
        });
        Writeback {
            mode: Mode::Direct {
                block: Block::new(),
                thread: DirectThread {
                    full,
                    empty,
                    made: 1,
                    handle,
                },
            },
        }
    }

    /// Writes what is gathered and returns the file, with `O_DIRECT` off.
    pub fn finish(self) -> std::io::Result<F> {
        self.close().map(|(file, _)| file)
    }

    /// As [`Writeback::finish`], also saying whether every whole block went
    /// direct.
    fn close(mut self) -> std::io::Result<(F, bool)> {
        let direct = self.stop_direct()?;
        match std::mem::replace(&mut self.mode, Mode::Moving) {
            Mode::Cache { file, .. } => Ok((file, direct)),
            _ => Err(std::io::Error::other("an earlier write failed")),
        }
    }

    /// Ends direct writing: the thread's file back, the block being filled
    /// written on this thread (its whole blocks direct, the rest through
    /// the page cache). Returns whether every whole block went direct.
    fn stop_direct(&mut self) -> std::io::Result<bool> {
        let (block, thread) = match std::mem::replace(&mut self.mode, Mode::Moving) {
            Mode::Direct { block, thread } => (block, thread),
            other => {
                self.mode = other;
                return Ok(false);
            }
        };
        let (mut file, mut direct) = thread.stop()?;
        let bytes = block.bytes();
        let whole = bytes.len() - bytes.len() % DIRECT_ALIGN;
        put(&mut file, &mut direct, &bytes[..whole])?;
        let all = direct;
        buffered(&file, &mut direct)?;
        put(&mut file, &mut direct, &bytes[whole..])?;
        // What the page cache gathers from here on starts at the end.
        let end = rustix::fs::seek(&file, rustix::fs::SeekFrom::Current(0))?;
        self.mode = Mode::Cache {
            file,
            written: end,
            handed: end,
        };
        Ok(all)
    }
}

/// Dropped unfinished (a build that failed): the writing thread is let go
/// only once it has stopped, so the file (a temporary file that removes
/// itself) is gone when this returns, even if the process ends right after.
impl<F> Drop for Writeback<F> {
    fn drop(&mut self) {
        if let Mode::Direct { thread, .. } = std::mem::replace(&mut self.mode, Mode::Moving) {
            let _ = thread.stop();
        }
    }
}

impl<F: Write + std::os::fd::AsFd + Send + 'static> Write for Writeback<F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (block, thread) = match &mut self.mode {
            Mode::Cache {
                file,
                written,
                handed,
            } => {
                let n = file.write(buf)?;
                *written += n as u64;
                if *written - *handed >= ADVISE_EVERY {
                    // Only advice: the final sync makes the bytes durable.
                    let _ = rustix::fs::fadvise(
                        &*file,
                        *handed,
                        std::num::NonZeroU64::new(*written - *handed),
                        rustix::fs::Advice::DontNeed,
                    );
                    *handed = *written;
                }
                return Ok(n);
            }
            Mode::Direct { block, thread } => (block, thread),
            Mode::Moving => return Err(std::io::Error::other("an earlier write failed")),
        };
        let n = buf.len().min(DIRECT_BLOCK - block.filled);
        let at = block.at + block.filled;
        block.buf[at..at + n].copy_from_slice(&buf[..n]);
        block.filled += n;
        if block.filled == DIRECT_BLOCK {
            let next = if thread.made < 2 {
                thread.made += 1;
                Ok(Block::new())
            } else {
                thread.empty.recv()
            };
            let sent = next.ok().and_then(|next| {
                let full = std::mem::replace(block, next);
                thread.full.send(full).ok()
            });
            if sent.is_none() {
                // The thread stopped: its join says why.
                return match self.stop_direct() {
                    Err(e) => Err(e),
                    Ok(_) => Err(std::io::Error::other("the writing thread stopped")),
                };
            }
        }
        Ok(n)
    }

    /// Writes everything gathered; the file is written through the page
    /// cache from then on (its end need not be aligned any more).
    fn flush(&mut self) -> std::io::Result<()> {
        self.stop_direct()?;
        match &mut self.mode {
            Mode::Cache { file, .. } => file.flush(),
            _ => Err(std::io::Error::other("an earlier write failed")),
        }
    }
}

/// Fsyncs a directory so that a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .at("sync directory", dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek};

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + i / 4093) as u8).collect()
    }

    /// Writes `data` through a [`Writeback`] in `dir`, in pieces of `piece`
    /// bytes, flushing once `flush_at` bytes are in; returns what the file
    /// holds.
    fn through(dir: &Path, data: &[u8], piece: usize, flush_at: Option<usize>) -> Vec<u8> {
        let file = tempfile::tempfile_in(dir).unwrap();
        let mut w = if data.len().is_multiple_of(2) {
            Writeback::direct(file)
        } else {
            Writeback::new(file)
        };
        let mut done = 0;
        for chunk in data.chunks(piece) {
            w.write_all(chunk).unwrap();
            done += chunk.len();
            if flush_at == Some(done) {
                w.flush().unwrap();
            }
        }
        let mut file = w.finish().unwrap();
        let flags = rustix::fs::fcntl_getfl(&file).unwrap();
        assert!(
            !flags.contains(rustix::fs::OFlags::DIRECT),
            "finish turns O_DIRECT off"
        );
        let mut back = Vec::new();
        file.rewind().unwrap();
        file.read_to_end(&mut back).unwrap();
        back
    }

    fn dirs() -> Vec<PathBuf> {
        let mut dirs = vec![std::env::temp_dir()];
        if Path::new("/dev/shm").is_dir() {
            dirs.push("/dev/shm".into());
        }
        dirs
    }

    #[test]
    fn every_byte_arrives_in_order_whatever_the_sizes_pieces_and_filesystem() {
        const B: usize = DIRECT_BLOCK;
        for dir in dirs() {
            // Even sizes go direct, odd ones through the page cache.
            for size in [
                0,
                1,
                4095,
                4096,
                4097,
                B - 1,
                B,
                B + 1,
                2 * B + 12_345,
                2 * B + 12_346,
            ] {
                let data = pattern(size);
                for piece in [1 << 20, 4096, 65_539] {
                    assert!(
                        through(&dir, &data, piece, None) == data,
                        "{size} bytes in pieces of {piece} in {}",
                        dir.display()
                    );
                }
                // A flush in the middle writes a tail that is not whole
                // blocks; what follows must still land after it.
                for at in [4096 * 3 + 5, B + 4096] {
                    if at < size {
                        let flush_at = Some(at - at % 4096);
                        let got = through(&dir, &data, 4096, flush_at.filter(|&f| f > 0));
                        assert!(
                            got == data,
                            "{size} bytes flushed at {at} in {}",
                            dir.display()
                        );
                        let got = through(&dir, &data, at, Some(at));
                        assert!(
                            got == data,
                            "{size} bytes flushed at {at} in {}",
                            dir.display()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_write_that_fails_on_the_writing_thread_is_reported() {
        // A file opened read-only: every write fails (EBADF). Whole blocks
        // only, so every write happens on the writing thread.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"").unwrap();
        for make in [Writeback::direct, Writeback::new] {
            let mut w = make(File::open(&path).unwrap());
            let wrote = w.write_all(&pattern(3 * DIRECT_BLOCK));
            let finished = w.finish();
            assert!(
                wrote.is_err() || finished.is_err(),
                "a failed write must not go unnoticed"
            );
        }
    }

    #[test]
    fn a_writer_dropped_unfinished_has_closed_its_file_when_the_drop_returns() {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let file = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
            let path = file.path().to_path_buf();
            let mut w = Writeback::direct(file);
            w.write_all(&pattern(3 * DIRECT_BLOCK)).unwrap();
            drop(w);
            assert!(!path.exists(), "the temporary file is gone with its writer");
        }
    }

    #[test]
    fn a_direct_write_the_filesystem_refuses_goes_through_the_page_cache() {
        // A filesystem with blocks over 4 KiB refuses our blocks with
        // EINVAL; ext4 refuses a misaligned address the same way, which
        // the test asks of the kernel first (a filesystem that takes it
        // has nothing to fall back from).
        let data = pattern(2 * DIRECT_ALIGN + 1);
        let misaligned = &data[1..];
        let file = tempfile::tempfile().unwrap();
        let set = |file: &File| {
            rustix::fs::fcntl_getfl(file)
                .and_then(|f| rustix::fs::fcntl_setfl(file, f | rustix::fs::OFlags::DIRECT))
        };
        if set(&file).is_err()
            || rustix::io::write(&file, misaligned) != Err(rustix::io::Errno::INVAL)
        {
            return;
        }
        let mut file = tempfile::tempfile().unwrap();
        set(&file).unwrap();
        let mut direct = true;
        put(&mut file, &mut direct, misaligned).unwrap();
        assert!(!direct, "it fell back");
        let flags = rustix::fs::fcntl_getfl(&file).unwrap();
        assert!(!flags.contains(rustix::fs::OFlags::DIRECT));
        let mut back = Vec::new();
        file.rewind().unwrap();
        file.read_to_end(&mut back).unwrap();
        assert!(back == misaligned, "every byte arrived");
    }

    #[test]
    fn whole_blocks_go_direct_where_the_filesystem_takes_direct_writes() {
        for dir in dirs() {
            // The oracle: an aligned O_DIRECT write of our own.
            let probe = tempfile::tempfile_in(&dir).unwrap();
            let block = vec![0u8; 2 * DIRECT_ALIGN];
            let at = block.as_ptr().align_offset(DIRECT_ALIGN);
            let takes = rustix::fs::fcntl_getfl(&probe)
                .and_then(|f| rustix::fs::fcntl_setfl(&probe, f | rustix::fs::OFlags::DIRECT))
                .is_ok()
                && rustix::io::write(&probe, &block[at..at + DIRECT_ALIGN])
                    .is_ok_and(|n| n == DIRECT_ALIGN);
            let mut w = Writeback::direct(tempfile::tempfile_in(&dir).unwrap());
            w.write_all(&pattern(5 * DIRECT_BLOCK + 10)).unwrap();
            let (_, direct) = w.close().unwrap();
            assert_eq!(direct, takes, "in {}", dir.display());
            let mut w = Writeback::new(tempfile::tempfile_in(&dir).unwrap());
            w.write_all(&pattern(2 * DIRECT_BLOCK + 10)).unwrap();
            let (_, direct) = w.close().unwrap();
            assert!(!direct, "asked for the page cache in {}", dir.display());
        }
    }
}
