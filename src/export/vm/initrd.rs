//! The small initramfs of a disk boot: busybox, the kernel modules for
//! virtio disks and the root filesystem (with their dependencies), and an
//! init that mounts the disk and switches to it.

use std::collections::BTreeMap;
use std::io::{self, BufReader};
use std::path::Path;

use super::{Meta, Node};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::recipe::RootFs;
use crate::store::Store;

/// Reads one module (by its path in `modules.dep`) into the store.
type ModuleReader<'a> = Box<dyn Fn(&str) -> Result<(Digest, u64)> + 'a>;

/// A `modules.dep` made from the `depends=` each module of the image records.
fn modules_dep_from_modinfo(
    store: &Store,
    image: &BTreeMap<String, Meta>,
    version: &str,
) -> Result<String> {
    let prefix = format!("lib/modules/{version}/");
    let modules: Vec<(String, Digest)> = image
        .iter()
        .filter_map(|(p, m)| match &m.node {
            Node::File { digest, .. } if p.starts_with(&prefix) && p.ends_with(".ko") => {
                Some((p[prefix.len()..].to_string(), digest.clone()))
            }
            _ => None,
        })
        .collect();
    if modules.is_empty() {
        return Err(Error::invalid(
            format!("the image has no kernel modules under `/{prefix}`"),
            Some("install the kernel package in the image".into()),
        ));
    }
    let stem = |rel: &str| -> String {
        let file = rel.rsplit('/').next().unwrap_or(rel);
        file.trim_end_matches(".ko").replace('-', "_")
    };
    let by_name: BTreeMap<String, String> = modules
        .iter()
        .map(|(rel, _)| (stem(rel), rel.clone()))
        .collect();
    let mut text = String::new();
    for (rel, digest) in &modules {
        let bytes = store.read(digest)?;
        let deps = bytes
            .windows(9)
            .position(|w| w == b"\0depends=")
            .map(|at| {
                let rest = &bytes[at + 9..];
                let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                String::from_utf8_lossy(&rest[..end]).into_owned()
            })
            .unwrap_or_default();
        let paths: Vec<&str> = deps
            .split(',')
            .filter(|d| !d.is_empty())
            .filter_map(|d| by_name.get(&d.replace('-', "_")).map(String::as_str))
            .collect();
        text.push_str(&format!("{rel}: {}\n", paths.join(" ")));
    }
    Ok(text)
}

/// The kernel modules a disk boot needs, in load order (dependencies first).
const DISK_MODULES: [&str; 2] = ["virtio_pci", "virtio_blk"];

/// What a disk boot starts: the kernel's version and, for a host kernel,
/// its modules' directory on the host; the init to switch to; the root's
/// filesystem.
pub(super) struct Boot<'a> {
    pub(super) version: Option<&'a str>,
    pub(super) modules: Option<&'a Path>,
    pub(super) init: &'a str,
    pub(super) fs: RootFs,
}

fn meta(node: Node, mode: u32) -> Meta {
    Meta {
        node,
        mode,
        uid: 0,
        gid: 0,
    }
}

/// The small initramfs of a disk boot: busybox (from the image), the modules
/// for virtio disks and erofs (from `modules`, or the image's
/// `/lib/modules/VERSION`), and an `/init` that mounts the disk read-only and
/// switches to it.
pub(super) fn boot_tree(
    store: &Store,
    image: &BTreeMap<String, Meta>,
    boot: &Boot<'_>,
) -> Result<BTreeMap<String, Meta>> {
    let mut t = BTreeMap::new();
    let busybox = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .find_map(|p| image.get(*p).filter(|m| matches!(m.node, Node::File { .. })))
        .ok_or_else(|| {
            Error::invalid(
                "a disk boot needs `/bin/busybox` in the image (its initramfs mounts the disk with it)",
                Some("install `busybox-static`, or copy a static busybox to `/bin/busybox`".into()),
            )
        })?;
    for d in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"] {
        t.insert(d.to_string(), meta(Node::Dir, 0o755));
    }
    t.insert("bin/busybox".into(), meta(busybox.node.clone(), 0o755));
    let version = boot.version.ok_or_else(|| {
        Error::invalid(
            "the kernel's version is unknown, so its modules cannot be found",
            Some("name the kernel file `vmlinuz-VERSION`".into()),
        )
    })?;
    let (deps_text, read_module) = match boot.modules {
        Some(dir) => host_modules(store, dir)?,
        None => image_modules(store, image, version)?,
    };
    let order = load_order(&parse_deps(&deps_text), boot.fs);
    let mut script = String::from("#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n/bin/busybox mount -t sysfs sysfs /sys\n/bin/busybox mount -t devtmpfs devtmpfs /dev\n");
    for (i, m) in order.iter().enumerate() {
        let (digest, size) = read_module(m)?;
        let name = format!("lib/modules/{i:02}-{}", m.rsplit('/').next().unwrap_or(m));
        script.push_str(&format!("/bin/busybox insmod /{name}\n"));
        t.insert(name, meta(Node::File { digest, size }, 0o644));
    }
    let (fs, init) = (boot.fs.name(), boot.init);
    script.push_str(&format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; /bin/busybox sleep 0.5; done\n/bin/busybox mount -t {fs} -o ro /dev/vda /newroot || /bin/busybox echo 'kiln: cannot mount the root disk'\n/bin/busybox umount /proc /sys\n/bin/busybox mount --move /dev /newroot/dev 2>/dev/null || /bin/busybox umount /dev\nexec /bin/busybox switch_root /newroot {init}\n"
    ));
    let bytes = script.into_bytes();
    let digest = store.put_bytes(&bytes)?;
    let size = bytes.len() as u64;
    t.insert("init".into(), meta(Node::File { digest, size }, 0o755));
    Ok(t)
}

/// `modules.dep` of a host kernel's modules directory, and a reader of its modules.
fn host_modules<'a>(store: &'a Store, dir: &Path) -> Result<(String, ModuleReader<'a>)> {
    let text = std::fs::read_to_string(dir.join("modules.dep")).map_err(|e| {
        Error::unusable(
            format!("cannot read `{}`", dir.join("modules.dep").display()),
            e,
            "install the kernel's package on the host, or use `kernel = { package = … }`",
        )
    })?;
    let dir = dir.to_path_buf();
    let read: ModuleReader<'a> = Box::new(move |rel: &str| {
        let p = dir.join(rel);
        let f = std::fs::File::open(&p).at("read module", &p)?;
        let mut w = store.writer()?;
        io::copy(&mut BufReader::new(f), &mut w).at("read", &p)?;
        w.commit(None)
    });
    Ok((text, read))
}

/// `modules.dep` of the image's kernel `version`, and a reader of its modules.
fn image_modules<'a>(
    store: &'a Store,
    image: &BTreeMap<String, Meta>,
    version: &str,
) -> Result<(String, ModuleReader<'a>)> {
    // depmod writes modules.dep when the package is installed; kiln
    // runs no maintainer script, so without one it reads each
    // module's own `depends=` (its .modinfo) instead.
    let text = match image.get(&format!("lib/modules/{version}/modules.dep")) {
        Some(Meta {
            node: Node::File { digest, .. },
            ..
        }) => String::from_utf8_lossy(&store.read(digest)?).into_owned(),
        _ => modules_dep_from_modinfo(store, image, version)?,
    };
    let image = image.clone();
    let version = version.to_string();
    let read: ModuleReader<'a> = Box::new(move |rel: &str| {
        match image.get(&format!("lib/modules/{version}/{rel}")) {
                Some(Meta {
                    node: Node::File { digest, size },
                    ..
                }) => Ok((digest.clone(), *size)),
                _ => Err(Error::invalid(
                    format!("the image lacks module `{rel}`"),
                    Some("install the kernel's modules in the image (the package that has `/lib/modules/VERSION`), or name a kernel package in `[vm]`".into()),
                )),
            }
    });
    Ok((text, read))
}

/// `modules.dep`'s lines: module → the modules it needs.
fn parse_deps(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| {
            let (m, d) = l.split_once(':')?;
            Some((
                m.trim().to_string(),
                d.split_whitespace().map(String::from).collect(),
            ))
        })
        .collect()
}

/// The modules a disk boot on `fs` loads, dependencies first; a module
/// that `deps` does not list is taken to be built into the kernel.
fn load_order(deps: &BTreeMap<String, Vec<String>>, fs: RootFs) -> Vec<String> {
    let by_name = |name: &str| {
        deps.keys()
            .find(|k| {
                let file = k.rsplit('/').next().unwrap_or(k);
                let stem = file.split(".ko").next().unwrap_or(file);
                stem.replace('-', "_") == name
            })
            .cloned()
    };
    fn visit(m: &str, deps: &BTreeMap<String, Vec<String>>, order: &mut Vec<String>) {
        if order.iter().any(|o| o == m) {
            return;
        }
        for d in deps.get(m).into_iter().flatten() {
            visit(d, deps, order);
        }
        order.push(m.to_string());
    }
    let mut order = Vec::new();
    for name in DISK_MODULES.iter().copied().chain([fs.name()]) {
        if let Some(m) = by_name(name) {
            visit(&m, deps, &mut order);
        }
    }
    order
}
