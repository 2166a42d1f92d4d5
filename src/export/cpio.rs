//! A reproducible `newc` cpio writer, for initramfs images: entries in the
//! order given (sorted by the caller), inode numbers counted from 1, one
//! fixed mtime, no device numbers. newc sizes are 32-bit: a file of 4 GiB or
//! more is refused.

use std::io::{self, Read, Write};

/// The kind of a cpio entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpioKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (its target is the data).
    Symlink,
}

/// Writes `newc` archives.
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    mtime: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive whose entries all get `mtime`.
    pub fn new(out: W, mtime: u64) -> Self {
        Self {
            out,
            ino: 0,
            mtime: mtime.min(u64::from(u32::MAX)) as u32,
            written: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.written % 4) as usize;
        if rem != 0 {
            self.put(&[0u8; 4][..4 - rem])?;
        }
        Ok(())
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        nlink: u32,
        size: u32,
    ) -> io::Result<()> {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            uid,
            gid,
            nlink,
            self.mtime,
            size,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        let mut text = String::from("070701");
        for f in fields {
            text.push_str(&format!("{f:08X}"));
        }
        self.put(text.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    /// Writes one entry; for a file, `data` yields exactly `size` bytes; for a
    /// symlink, `size` is the target's length and `data` the target.
    #[allow(clippy::too_many_arguments)]
    pub fn entry(
        &mut self,
        name: &str,
        kind: CpioKind,
        perm: u32,
        uid: u32,
        gid: u32,
        size: u64,
        data: &mut dyn Read,
    ) -> io::Result<()> {
        let size32 = u32::try_from(size).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`/{name}` is {size} bytes: an initramfs (newc cpio) cannot hold files of 4 GiB or more"),
            )
        })?;
        let (type_bits, nlink) = match kind {
            CpioKind::Dir => (0o040000, 2),
            CpioKind::File => (0o100000, 1),
            CpioKind::Symlink => (0o120000, 1),
        };
        self.header(name, type_bits | (perm & 0o7777), uid, gid, nlink, size32)?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("`/{name}` is shorter than its size"),
            ));
        }
        self.written += copied;
        self.pad()
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, 0, 1, 0)?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_files_of_4_gib() {
        let mut w = CpioWriter::new(Vec::new(), 0);
        let err = w
            .entry(
                "big",
                CpioKind::File,
                0o644,
                0,
                0,
                1 << 32,
                &mut io::repeat(0),
            )
            .unwrap_err();
        assert!(err.to_string().contains("4 GiB"), "{err}");
    }

    #[test]
    fn writes_aligned_newc_headers() {
        let mut w = CpioWriter::new(Vec::new(), 0);
        w.entry("bin", CpioKind::Dir, 0o755, 0, 0, 0, &mut io::empty())
            .unwrap();
        w.entry("bin/hi", CpioKind::File, 0o755, 0, 0, 3, &mut &b"abc"[..])
            .unwrap();
        let out = w.finish().unwrap();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("bin/hi\0"));
        assert!(text.contains("TRAILER!!!"));
        // The second entry's inode is 2 and its mode is a regular file 0755.
        let second = text.find("070701000000020000").is_some();
        assert!(second, "{text}");
    }
}
