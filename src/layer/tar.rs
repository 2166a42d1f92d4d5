//! A deterministic tar writer: POSIX ustar headers, with PAX records only
//! where a value does not fit (paths or link targets over 100 bytes, sizes
//! of 8 GiB and more, large ids).
//!
//! We write headers ourselves rather than through the `tar` crate's builder
//! because that builder rewrites link targets (it collapses `//` and `.`)
//! and switches to GNU long-name records, and the layer format must be one
//! fixed, documented thing. The `tar` crate still reads what we write in tests.

use std::io::{self, Write};

const BLOCK: usize = 512;
/// The largest value an 11-digit octal field holds (8 GiB − 1).
const MAX_OCTAL_11: u64 = 0o77777777777;
/// The largest value a 7-digit octal field holds.
const MAX_OCTAL_7: u64 = 0o7777777;

/// The kind of a tar entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (`0`).
    File,
    /// A hard link to an earlier entry (`1`).
    HardLink,
    /// A symbolic link (`2`).
    Symlink,
    /// A directory (`5`).
    Dir,
}

impl Kind {
    fn flag(self) -> u8 {
        match self {
            Kind::File => b'0',
            Kind::HardLink => b'1',
            Kind::Symlink => b'2',
            Kind::Dir => b'5',
        }
    }
}

/// The metadata of one entry.
#[derive(Debug, Clone)]
pub struct Header<'a> {
    /// Path inside the archive, relative, without a trailing slash.
    pub path: &'a str,
    /// Entry kind.
    pub kind: Kind,
    /// Permission bits (up to 0o7777).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Content size (files only).
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
    /// Link target (links only).
    pub link: &'a str,
}

/// Writes tar entries to `W`.
pub struct TarWriter<W: Write> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    /// Starts an archive.
    pub fn new(out: W) -> Self {
        Self { out }
    }

    /// Writes the header blocks of one entry (and its PAX record if needed).
    /// For a file, the caller then writes exactly `size` bytes to [`Self::data`]
    /// and ends them with [`Self::pad`].
    pub fn header(&mut self, h: &Header<'_>) -> io::Result<()> {
        let mut name = h.path.to_string();
        if h.kind == Kind::Dir {
            name.push('/');
        }
        let mut pax = Vec::new();
        if name.len() > 100 {
            pax_record(&mut pax, "path", &name);
        }
        if h.link.len() > 100 {
            pax_record(&mut pax, "linkpath", h.link);
        }
        if h.size > MAX_OCTAL_11 {
            pax_record(&mut pax, "size", &h.size.to_string());
        }
        if h.uid > MAX_OCTAL_7 {
            pax_record(&mut pax, "uid", &h.uid.to_string());
        }
        if h.gid > MAX_OCTAL_7 {
            pax_record(&mut pax, "gid", &h.gid.to_string());
        }
        if !pax.is_empty() {
            let block = raw_header(
                "././@PaxHeader",
                b'x',
                0o644,
                0,
                0,
                pax.len() as u64,
                h.mtime,
                "",
            );
            self.out.write_all(&block)?;
            self.out.write_all(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        let block = raw_header(
            &name,
            h.kind.flag(),
            h.mode,
            h.uid,
            h.gid,
            h.size,
            h.mtime,
            h.link,
        );
        self.out.write_all(&block)
    }

    /// Pads file content of `size` bytes to a whole block.
    pub fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    /// The underlying writer, for file content.
    pub fn data(&mut self) -> &mut W {
        &mut self.out
    }

    /// Writes the two zero blocks that end an archive and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        Ok(self.out)
    }
}

/// Appends one PAX record, `"<len> <key>=<value>\n"`, where `len` counts itself.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &str) {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}={value}\n").as_bytes());
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &[u8] {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

fn octal(field: &mut [u8], value: u64) {
    // Values that do not fit were moved to PAX records; the field then holds 0.
    let digits = field.len() - 1;
    let max = (1u64 << (3 * digits as u32)) - 1;
    let mut v = if value > max { 0 } else { value };
    // Written digit by digit from the right, zero-padded: what
    // `format!("{v:0digits$o}")` gives, without allocating (one call per
    // field of every header).
    for d in field[..digits].iter_mut().rev() {
        *d = b'0' + (v & 7) as u8;
        v >>= 3;
    }
    field[digits] = 0;
}

#[allow(clippy::too_many_arguments)]
fn raw_header(
    name: &str,
    flag: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    link: &str,
) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    let n = truncate(name, 100);
    b[..n.len()].copy_from_slice(n);
    octal(&mut b[100..108], u64::from(mode & 0o7777));
    octal(&mut b[108..116], uid);
    octal(&mut b[116..124], gid);
    octal(&mut b[124..136], size);
    octal(&mut b[136..148], mtime);
    b[156] = flag;
    let l = truncate(link, 100);
    b[157..157 + l.len()].copy_from_slice(l);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    octal(&mut b[329..337], 0);
    octal(&mut b[337..345], 0);
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    // At most 512 * 255, which six octal digits hold.
    octal(&mut b[148..155], u64::from(sum));
    b[155] = b' ';
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn archive(entries: &[(Header<'_>, &[u8])]) -> Vec<u8> {
        let mut w = TarWriter::new(Vec::new());
        for (h, data) in entries {
            w.header(h).unwrap();
            w.data().write_all(data).unwrap();
            w.pad(data.len() as u64).unwrap();
        }
        w.finish().unwrap()
    }

    fn h(path: &str, kind: Kind) -> Header<'_> {
        Header {
            path,
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            link: "",
        }
    }

    #[test]
    fn octal_fields_are_what_formatting_gives() {
        for width in [7usize, 8, 12] {
            let digits = width - 1;
            let max = (1u64 << (3 * digits)) - 1;
            for v in [
                0,
                1,
                7,
                8,
                0o644,
                0o7777,
                65_534,
                1 << 20,
                max - 1,
                max,
                max + 1,
                u64::MAX,
            ] {
                let mut field = vec![0xffu8; width];
                octal(&mut field, v);
                let want = if v > max { 0 } else { v };
                let mut expected = format!("{want:0digits$o}").into_bytes();
                expected.push(0);
                assert_eq!(field, expected, "{v} in {width} bytes");
            }
        }
        // GNU tar reads back what the checksum field holds.
        let data = b"checked";
        let mut h = h("a/file", Kind::File);
        h.size = data.len() as u64;
        h.uid = 0o7654321;
        let tar = archive(&[(h, data)]);
        let listed = std::process::Command::new("tar")
            .args(["-tvf", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                std::io::Write::write_all(c.stdin.as_mut().unwrap(), &tar)?;
                drop(c.stdin.take());
                c.wait_with_output()
            })
            .unwrap();
        assert!(listed.status.success(), "{listed:?}");
        let line = String::from_utf8(listed.stdout).unwrap();
        assert!(
            line.contains("2054353/0") && line.contains(" 7 ") && line.contains("a/file"),
            "{line}"
        );
    }

    #[test]
    fn pax_record_length_counts_itself() {
        let mut v = Vec::new();
        pax_record(&mut v, "path", &"a".repeat(95));
        let text = String::from_utf8(v).unwrap();
        let (len, _) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), text.len());
    }

    #[test]
    fn long_paths_links_and_unicode_read_back() {
        let long = format!("{}/{}", "d".repeat(150), "é f".repeat(60));
        let target = format!("/{}", "t".repeat(300));
        let mut file = h(&long, Kind::File);
        file.size = 3;
        file.mode = 0o755;
        file.uid = 4_000_000;
        let mut link = h("l", Kind::Symlink);
        link.link = &target;
        let bytes = archive(&[(h("d", Kind::Dir), b""), (file, b"abc"), (link, b"")]);
        let mut ar = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            let mut data = String::new();
            e.read_to_string(&mut data).unwrap();
            seen.push((path, link, data, e.header().mode().unwrap()));
        }
        assert_eq!(seen[0].0, "d/");
        assert_eq!(seen[1].0, long);
        assert_eq!(seen[1].2, "abc");
        assert_eq!(seen[1].3, 0o755);
        assert_eq!(seen[2].1.as_deref(), Some(target.as_str()));
    }

    #[test]
    fn sizes_over_8_gib_use_a_pax_size_record() {
        let size = 9 * 1024 * 1024 * 1024u64;
        let mut big = h("big", Kind::File);
        big.size = size;
        let mut w = TarWriter::new(Vec::new());
        w.header(&big).unwrap();
        let bytes = w.data().clone();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains(&format!("size={size}\n")),
            "no PAX size record"
        );
        // The ustar size field cannot hold the value, so it reads as zero there.
        let main = &bytes[bytes.len() - BLOCK..];
        assert_eq!(&main[124..135], b"00000000000");
        // A reader that honours PAX sees the real size.
        let mut padded = bytes.clone();
        padded.resize(bytes.len() + 2 * BLOCK, 0);
        let mut ar = tar::Archive::new(&padded[..]);
        let entry = ar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.size(), size);
    }

    #[test]
    fn checksum_is_valid() {
        let bytes = archive(&[(h("a", Kind::File), b"")]);
        let hdr = tar::Header::from_byte_slice(&bytes[..BLOCK]);
        assert_eq!(hdr.cksum().unwrap(), {
            let mut b = bytes[..BLOCK].to_vec();
            b[148..156].fill(b' ');
            b.iter().map(|&x| u32::from(x)).sum::<u32>()
        });
    }
}
