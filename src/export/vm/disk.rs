//! Root disks for VM bundles: the merged image tree written out with its
//! owners and modes, then made into a reproducible erofs, squashfs or ext4
//! image, and converted to qcow2.

use std::collections::BTreeMap;
use std::io::{self, BufReader};
use std::path::Path;

use super::{Meta, Node};
use crate::beneath::Root;
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::recipe::RootFs;
use crate::store::Store;

/// Writes `tree` into the fresh directory `dir` with its modes and owners
/// (needs root to give files other owners than the caller).
///
/// Every operation goes through [`Root`]: nothing is created, chowned or
/// chmodded through a symlink, even one the tree itself holds, so a tree
/// that slipped past the checks of the merge still cannot reach the host.
pub(super) fn materialize(store: &Store, tree: &BTreeMap<String, Meta>, dir: &Path) -> Result<()> {
    let root = Root::open(dir).at("open", dir)?;
    let refused = |path: &str, e: io::Error| Error::Unusable {
        source: e.into(),
        message: format!(
            "cannot write `/{path}` of the image into `{}`",
            root.path().display()
        ),
        hint: Some(
            "kiln never writes through a link of the image: the entry lies beneath a \
                 symlink or a file; rebuild the image without it"
                .into(),
        ),
    };
    for (path, m) in tree {
        match &m.node {
            Node::Dir => root.create_dir(path).map_err(|e| refused(path, e))?,
            Node::File { digest, .. } => {
                let mut src = store.open_blob(digest)?;
                let mut f = root.create_file(path).map_err(|e| refused(path, e))?;
                io::copy(&mut src, &mut f)
                    .map_err(|e| crate::store::verify_error(e, &store.blob_path(digest)))?;
            }
            Node::Symlink(t) => root.symlink(t, path).map_err(|e| refused(path, e))?,
        }
        root.set_owner(path, m.uid, m.gid).map_err(|e| {
            Error::unusable(
                format!("cannot give `/{path}` its owner {}:{}", m.uid, m.gid),
                e,
                "building a VM disk needs root: file owners go into the filesystem",
            )
        })?;
    }
    // Modes last, deepest first, so read-only directories do not stop the writes.
    for (path, m) in tree.iter().rev() {
        if !matches!(m.node, Node::Symlink(_)) {
            root.set_mode(path, m.mode)
                .at("set the mode of", &root.shown(path))?;
        }
    }
    Ok(())
}

pub(super) fn run_tool(cmd: &mut std::process::Command, what: &str, package: &str) -> Result<()> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .output()
        .map_err(|e| Error::tool_missing(&tool, package, e))?;
    if !out.status.success() {
        return Err(Error::tool_failed(
            tool,
            format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            &format!("check the message above; a newer `{package}` may be needed"),
        ));
    }
    Ok(())
}

/// A read-only root filesystem image of `tree`: erofs by `mkfs.erofs`, or
/// squashfs by `mksquashfs`, each with a fixed time (and UUID for erofs).
pub(super) fn make_disk(
    store: &Store,
    tree: &BTreeMap<String, Meta>,
    mtime: u64,
    uuid: &str,
    fs: RootFs,
    size: Option<u64>,
) -> Result<(Digest, u64)> {
    let work = store.temp_dir()?;
    let root = work.path().join("root");
    std::fs::create_dir(&root).at("create", &root)?;
    materialize(store, tree, &root)?;
    let image = work.path().join("disk.raw");
    if fs == RootFs::Ext4 {
        make_ext4(tree, &root, &image, mtime, uuid, size, work.path())?;
    } else if fs == RootFs::Squashfs {
        run_tool(
            std::process::Command::new("mksquashfs")
                .arg(&root)
                .arg(&image)
                .args([
                    "-noappend",
                    "-no-xattrs",
                    "-no-progress",
                    "-quiet",
                    "-processors",
                    "1",
                ])
                .arg("-mkfs-time")
                .arg(mtime.to_string())
                .arg("-all-time")
                .arg(mtime.to_string()),
            "`mksquashfs`",
            "squashfs-tools",
        )?;
    } else {
        run_tool(
            std::process::Command::new("mkfs.erofs")
                .arg(format!("-T{mtime}"))
                .arg(format!("-U{uuid}"))
                .arg("-x-1")
                .arg("--quiet")
                .arg(&image)
                .arg(&root),
            "`mkfs.erofs`",
            "erofs-utils",
        )?;
    }
    if let (Some(want), false) = (size, fs == RootFs::Ext4) {
        // A fixed disk size: pad the read-only image with zeros.
        let have = std::fs::metadata(&image).at("stat", &image)?.len();
        if have > want {
            return Err(Error::invalid(
                format!(
                    "the {} root needs {have} bytes, more than `size` ({want})",
                    fs.name()
                ),
                Some("raise `size`, or leave it out".into()),
            ));
        }
        std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .and_then(|f| f.set_len(want))
            .at("extend", &image)?;
    }
    let file = std::fs::File::open(&image).at("open", &image)?;
    let mut w = store.writer()?;
    io::copy(&mut BufReader::new(file), &mut w).at("read", &image)?;
    w.commit(None)
}

/// An ext4 image of `root` by `mke2fs -d`, made reproducible: a fake clock,
/// a fixed UUID and hash seed, no journal, and every inode's times reset
/// with `debugfs` afterwards (`mke2fs -d` copies the source files' times).
fn make_ext4(
    tree: &BTreeMap<String, Meta>,
    root: &Path,
    image: &Path,
    mtime: u64,
    uuid: &str,
    size: Option<u64>,
    work: &Path,
) -> Result<()> {
    let content: u64 = tree
        .values()
        .map(|m| match &m.node {
            Node::File { size, .. } => size.div_ceil(4096) * 4096,
            _ => 4096,
        })
        .sum();
    let size =
        size.unwrap_or_else(|| (content + content / 2 + (32 << 20)).div_ceil(1 << 20) * (1 << 20));
    // e2fsprogs reads a fake time of 0 as "none" and stamps the superblock
    // with the real clock, so the epoch itself is written as 1.
    let clock = mtime.max(1).to_string();
    run_tool(
        std::process::Command::new("mke2fs")
            .env("E2FSPROGS_FAKE_TIME", &clock)
            .args([
                "-q",
                "-t",
                "ext4",
                "-b",
                "4096",
                "-I",
                "256",
                "-O",
                "^has_journal",
            ])
            .arg("-U")
            .arg(uuid)
            .arg("-E")
            .arg(format!("hash_seed={uuid},root_owner=0:0"))
            .arg("-d")
            .arg(root)
            .arg(image)
            .arg(format!("{}k", size / 1024)),
        "`mke2fs`",
        "e2fsprogs",
    )?;
    let mut cmds = String::new();
    let paths = std::iter::once("/".to_string())
        .chain(std::iter::once("/lost+found".to_string()))
        .chain(tree.keys().map(|p| format!("/{p}")));
    for p in paths {
        if p.contains(['"', '\n', '\\']) {
            return Err(Error::invalid(
                format!("`{p}` has a character kiln cannot pass to debugfs"),
                Some("rename it, or use `root = \"erofs\"`".into()),
            ));
        }
        for field in ["atime", "ctime", "mtime", "crtime"] {
            cmds.push_str(&format!(
                "sif \"{p}\" {field} {clock}\nsif \"{p}\" {field}_extra 0\n"
            ));
        }
    }
    let script = work.join("debugfs.cmds");
    std::fs::write(&script, cmds).at("write", &script)?;
    run_tool(
        std::process::Command::new("debugfs")
            .env("E2FSPROGS_FAKE_TIME", &clock)
            .arg("-w")
            .arg("-f")
            .arg(&script)
            .arg(image),
        "`debugfs`",
        "e2fsprogs",
    )
}

/// The raw disk converted to qcow2 by `qemu-img`.
pub(super) fn make_qcow2(store: &Store, raw: &Digest) -> Result<(Digest, u64)> {
    let work = store.temp_dir()?;
    let out = work.path().join("disk.qcow2");
    run_tool(
        std::process::Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(store.blob_path(raw))
            .arg(&out),
        "`qemu-img convert`",
        "qemu-utils",
    )?;
    let file = std::fs::File::open(&out).at("open", &out)?;
    let mut w = store.writer()?;
    io::copy(&mut BufReader::new(file), &mut w).at("read", &out)?;
    w.commit(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree that no merge would let through (a file and a directory
    /// beneath a symlink to a host directory, and beneath a chain) is
    /// refused by the writer itself, and the host directory is untouched.
    #[test]
    fn a_hostile_tree_cannot_write_through_its_links() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path().join("store")).unwrap();
        let host = t.path().join("host");
        std::fs::create_dir(&host).unwrap();
        let digest = store.put_bytes(b"pwned").unwrap();
        let meta = |node: Node, mode: u32| Meta {
            node,
            mode,
            uid: 0,
            gid: 0,
        };
        let link = Node::Symlink(host.display().to_string());
        let cases: [(&str, Node); 3] = [
            ("link/file", Node::File { digest, size: 5 }),
            ("link/sub", Node::Dir),
            ("chain/sub", Node::Dir),
        ];
        for (i, (path, node)) in cases.into_iter().enumerate() {
            let mut tree = BTreeMap::new();
            tree.insert("link".to_string(), meta(link.clone(), 0o777));
            tree.insert(
                "chain".to_string(),
                meta(Node::Symlink("link".into()), 0o777),
            );
            tree.insert(path.to_string(), meta(node, 0o777));
            let dir = t.path().join(format!("root{i}"));
            std::fs::create_dir(&dir).unwrap();
            let err = materialize(&store, &tree, &dir).unwrap_err().to_string();
            assert!(err.contains(&format!("`/{path}`")), "{err}");
            assert_eq!(std::fs::read_dir(&host).unwrap().count(), 0, "{path}");
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&host).unwrap().permissions().mode();
            assert_ne!(
                mode & 0o777,
                0o777,
                "{path}: the host directory was chmodded"
            );
        }
    }
}
