//! File operations beneath a root directory that never follow a symlink: a
//! low helper for every stage that writes an image's tree onto the host (the
//! VM disk's root before `mkfs`, the scratch tree `ldconfig` reads).
//!
//! A tree that comes from an image can hold symlinks to anywhere on the
//! host. Paths are therefore never handed to the kernel whole: each
//! component is opened with `openat(…, O_NOFOLLOW | O_DIRECTORY)` from the
//! root's descriptor, the last one is created or changed relative to its
//! parent's descriptor (`mkdirat`, `openat(O_CREAT | O_EXCL | O_NOFOLLOW)`,
//! `symlinkat`, `fchownat(AT_SYMLINK_NOFOLLOW)`, `fchmod` on a descriptor
//! opened with `O_NOFOLLOW`), and `.`, `..` and empty components are
//! refused. A symlink anywhere on the way is an error (`ELOOP`/`ENOTDIR`),
//! never a detour.
//!
//! This walk is used rather than `openat2(RESOLVE_BENEATH)` because it gives
//! the same guarantee on every kernel and under seccomp profiles that deny
//! `openat2` (container runtimes' defaults did for years, which is where CI
//! builds run); it costs one `openat` per component, which is small next to
//! `mkfs`.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Gid, Mode, OFlags, Uid, CWD};

/// A directory that relative paths are resolved beneath, without following symlinks.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Root {
    /// Opens `path` (which itself must not be a symlink) as the root.
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::openat(CWD, path, DIR_FLAGS, Mode::empty())?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The root's path on the host, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The host path of `rel`, for messages only (never opened).
    pub fn shown(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// Opens the directory that holds `rel`, and returns it with `rel`'s last component.
    fn parent<'a>(&self, rel: &'a str) -> io::Result<(OwnedFd, &'a str)> {
        let mut parts = rel.split('/');
        let last = parts.next_back().unwrap_or_default();
        let mut dir = rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())?;
        for part in parts {
            check(part)?;
            dir = rustix::fs::openat(&dir, part, DIR_FLAGS, Mode::empty())?;
        }
        check(last)?;
        Ok((dir, last))
    }

    /// Creates the directory `rel` (its parent must exist), private until [`Root::set_mode`].
    pub fn create_dir(&self, rel: &str) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))?;
        Ok(())
    }

    /// Creates the new file `rel` (never an existing one, never through a link).
    pub fn create_file(&self, rel: &str) -> io::Result<File> {
        let (dir, name) = self.parent(rel)?;
        let flags = OFlags::WRONLY
            .union(OFlags::CREATE)
            .union(OFlags::EXCL)
            .union(OFlags::NOFOLLOW)
            .union(OFlags::CLOEXEC);
        let fd = rustix::fs::openat(&dir, name, flags, Mode::from_raw_mode(0o600))?;
        Ok(File::from(fd))
    }

    /// Creates the symlink `rel` pointing at `target` (which is never resolved).
    pub fn symlink(&self, target: &str, rel: &str) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        rustix::fs::symlinkat(target, &dir, name)?;
        Ok(())
    }

    /// Creates `rel` as a hard link to the existing entry `target` (both
    /// beneath the root; a symlink `target` is linked as itself, not followed).
    pub fn hard_link(&self, target: &str, rel: &str) -> io::Result<()> {
        let (from_dir, from) = self.parent(target)?;
        let (dir, name) = self.parent(rel)?;
        rustix::fs::linkat(&from_dir, from, &dir, name, AtFlags::empty())?;
        Ok(())
    }

    /// Creates every missing directory above `rel` (mode 0755); an existing
    /// ancestor that is not a directory is an error, never a detour.
    pub fn create_parents(&self, rel: &str) -> io::Result<()> {
        let mut at = 0;
        while let Some(i) = rel[at..].find('/') {
            let dir = &rel[..at + i];
            match self.create_dir(dir) {
                Ok(()) => self.set_mode(dir, 0o755)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            at += i + 1;
        }
        Ok(())
    }

    /// Gives `rel` (a symlink itself, if it is one) an owner and group.
    pub fn set_owner(&self, rel: &str, uid: u32, gid: u32) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        rustix::fs::chownat(
            &dir,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// Sets the mode of the file or directory `rel`; a symlink is an error (`ELOOP`).
    pub fn set_mode(&self, rel: &str, mode: u32) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        let flags = OFlags::RDONLY
            .union(OFlags::NOFOLLOW)
            .union(OFlags::NONBLOCK)
            .union(OFlags::CLOEXEC);
        let fd = rustix::fs::openat(&dir, name, flags, Mode::empty())?;
        rustix::fs::fchmod(fd.as_fd(), Mode::from_raw_mode(mode & 0o7777))?;
        Ok(())
    }
}

/// Refuses a component that would not name an entry of its own directory.
fn check(part: &str) -> io::Result<()> {
    if part.is_empty() || part == "." || part == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{part}` is not a plain path component"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root holding `link -> OUTSIDE` and `chain -> link`, and the outside dir.
    fn setup() -> (tempfile::TempDir, Root, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("file"), "host").unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::os::unix::fs::symlink("link", root.join("chain")).unwrap();
        std::os::unix::fs::symlink("outside/file", t.path().join("rootlink")).unwrap();
        let r = Root::open(&root).unwrap();
        (t, r, outside)
    }

    #[test]
    fn nothing_goes_through_a_symlink_of_the_tree() {
        let (t, r, outside) = setup();
        for via in ["link", "chain"] {
            assert!(r.create_dir(&format!("{via}/d")).is_err());
            assert!(r.create_file(&format!("{via}/f")).is_err());
            assert!(r.symlink("/", &format!("{via}/s")).is_err());
            assert!(r.set_owner(&format!("{via}/file"), 1, 1).is_err());
            assert!(r.set_mode(&format!("{via}/file"), 0o777).is_err());
            assert!(r.set_mode(via, 0o777).is_err());
        }
        // Existing names are never reused, so a link is not written through.
        assert!(r.create_file("link").is_err());
        for bad in ["../outside/x", "./x", "a//b", "", "/x"] {
            assert!(r.create_file(bad).is_err(), "{bad}");
        }
        let names: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert_eq!(
            std::fs::read_to_string(outside.join("file")).unwrap(),
            "host"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(outside.join("file"))
            .unwrap()
            .permissions();
        assert_ne!(mode.mode() & 0o777, 0o777);
        // The root itself must not be a symlink either.
        assert!(Root::open(&t.path().join("rootlink")).is_err());
    }

    #[test]
    fn plain_paths_work() {
        let (_t, r, _) = setup();
        r.create_dir("d").unwrap();
        r.create_dir("d/e").unwrap();
        std::io::Write::write_all(&mut r.create_file("d/e/f").unwrap(), b"x").unwrap();
        r.symlink("../../link", "d/e/s").unwrap();
        r.set_mode("d/e/f", 0o640).unwrap();
        r.set_owner("d/e/s", 0, 0).ok();
        let p = r.shown("d/e/f");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(
            std::fs::read_link(r.shown("d/e/s")).unwrap(),
            PathBuf::from("../../link")
        );
    }
}
