//! Stage 6, export for `[vm]` recipes: the image becomes a bootable bundle —
//! the kernel (`vmlinuz`), an initramfs holding the whole image root
//! (`initramfs.img`, a reproducible newc cpio compressed like the layers), and
//! `bundle.json` listing each file with its SHA-256 and size, the kernel
//! version, the command line and the image's digest.
//!
//! The image's `[config]` (entrypoint, env …) is for container runtimes; a VM
//! starts `[vm].init` as PID 1 instead (`/init` links to it when the image
//! has no `/init`).

use std::io::{self, BufReader, Read};
use std::path::Path;

use serde_json::json;

mod disk;
mod initrd;
mod tree;

use super::cpio::{CpioKind, CpioWriter};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::json::canonical;
use crate::layer::compress::Encoder;
use crate::layer::read::Tree;
use crate::recipe::{Compression, Kernel, Recipe, VmOutput, VmSection};
use crate::store::{LayerRecord, Store};
use tree::{merged_tree, Meta, Node};

/// The files of a bundle: name → (blob in the store, size, media type).
pub struct Bundle {
    /// The artifacts, in a fixed order.
    pub files: Vec<(String, Digest, u64)>,
    /// `bundle.json`.
    pub manifest: Vec<u8>,
}

/// What a VM bundle is made of: the narrow view of a build that export needs.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The recipe: its name, directory (`kernel.path` is relative to it),
    /// compression, base (for errors) and text (errors quote it).
    pub recipe: &'a Recipe,
    /// Its `[vm]` section.
    pub vm: &'a VmSection,
    /// The image's layers, bottom first.
    pub layers: &'a [LayerRecord],
    /// How many of them, at the bottom, are the base's (errors name the base).
    pub base_layers: usize,
    /// The image's manifest digest: `bundle.json` names it, and the disk's UUID comes from it.
    pub image: &'a Digest,
    /// The time of every file in the initramfs and disk.
    pub mtime: u64,
}

/// The kernel of a bundle, in the store.
struct KernelFile {
    digest: Digest,
    size: u64,
    /// From its name, `vmlinuz-VERSION`.
    version: Option<String>,
}

/// Builds the bundle of a built `[vm]` recipe into the store.
pub fn bundle(store: &Store, input: &Input<'_>) -> Result<Bundle> {
    let vm = input.vm;
    let mut tree = merged_tree(store, input)?;
    let kernel = find_kernel(store, input, &tree)?;
    if !tree.contains_key("init") {
        let link = Meta {
            node: Node::Symlink(vm.init.clone()),
            mode: 0o777,
            uid: 0,
            gid: 0,
        };
        tree.insert("init".into(), link);
    }
    let mut files = Vec::new();
    let initramfs = if vm.wants_disk() {
        let disks = write_disks(store, input, &tree)?;
        let small = boot_tree(store, input, &tree, &kernel)?;
        let initramfs = write_initramfs(store, &small, input.recipe.compression, input.mtime)?;
        files.extend(disks);
        initramfs
    } else {
        write_initramfs(store, &tree, input.recipe.compression, input.mtime)?
    };
    let manifest = manifest(input, &kernel, &initramfs, &files);
    let mut all = vec![
        ("vmlinuz".to_string(), kernel.digest, kernel.size),
        ("initramfs.img".to_string(), initramfs.0, initramfs.1),
    ];
    all.extend(files);
    Ok(Bundle {
        files: all,
        manifest,
    })
}

/// The kernel: the host file `kernel.path`, or the one `/boot/vmlinuz-*` of the image.
fn find_kernel(store: &Store, input: &Input<'_>, tree: &Tree<Meta>) -> Result<KernelFile> {
    let recipe = input.recipe;
    let at = input.vm.kernel_span.clone();
    match &input.vm.kernel {
        Kernel::Path(path) => {
            let host = recipe.dir.join(path);
            let file = std::fs::File::open(&host).map_err(|e| {
                Error::from(
                    recipe
                        .source
                        .error(at, format!("cannot read the kernel `{}`", host.display()))
                        .caused_by(e)
                        .hint("`kernel.path` is a host file, relative to the recipe"),
                )
            })?;
            let mut w = store.writer()?;
            io::copy(&mut BufReader::new(file), &mut w).at("read", &host)?;
            let (digest, size) = w.commit(None)?;
            let name = host
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let version = name.strip_prefix("vmlinuz-").map(String::from);
            Ok(KernelFile {
                digest,
                size,
                version,
            })
        }
        Kernel::Package(package) => {
            let found: Vec<(&String, &Digest, u64)> = tree
                .iter()
                .filter_map(|(p, m)| match &m.node {
                    Node::File { digest, size } if p.starts_with("boot/vmlinuz-") => {
                        Some((p, digest, *size))
                    }
                    _ => None,
                })
                .collect();
            let [(p, digest, size)] = found.as_slice() else {
                return Err(recipe
                    .source
                    .error(
                        at,
                        format!(
                            "the image holds {} kernels (`/boot/vmlinuz-*`), not one",
                            found.len()
                        ),
                    )
                    .hint(format!(
                        "install `{package}` in a layer's `packages`, and only one kernel"
                    ))
                    .into());
            };
            Ok(KernelFile {
                digest: (*digest).clone(),
                size: *size,
                version: p.strip_prefix("boot/vmlinuz-").map(String::from),
            })
        }
    }
}

/// The root disks asked for (`disk.raw`, `disk.qcow2`), in the store.
fn write_disks(
    store: &Store,
    input: &Input<'_>,
    tree: &Tree<Meta>,
) -> Result<Vec<(String, Digest, u64)>> {
    let vm = input.vm;
    // The root needs mount points for what the kernel provides.
    let mut disk_tree = tree.clone();
    for d in ["dev", "proc", "sys", "run", "tmp"] {
        disk_tree.entry(d.to_string()).or_insert(Meta {
            node: Node::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
        });
    }
    let uuid = uuid_from(input.image);
    let raw = disk::make_disk(store, &disk_tree, input.mtime, &uuid, vm.root, vm.size)?;
    let mut files = Vec::new();
    if vm.writes(VmOutput::Raw) {
        files.push(("disk.raw".to_string(), raw.0.clone(), raw.1));
    }
    if vm.writes(VmOutput::Qcow2) {
        let q = disk::make_qcow2(store, &raw.0)?;
        files.push(("disk.qcow2".to_string(), q.0, q.1));
    }
    Ok(files)
}

/// The small tree of a disk boot's initramfs; its errors point at `kernel`.
fn boot_tree(
    store: &Store,
    input: &Input<'_>,
    tree: &Tree<Meta>,
    kernel: &KernelFile,
) -> Result<Tree<Meta>> {
    let vm = input.vm;
    let modules_dir = match (&vm.kernel, &kernel.version) {
        (Kernel::Path(_), Some(v)) => Some(std::path::PathBuf::from(format!("/lib/modules/{v}"))),
        _ => None,
    };
    let boot = initrd::Boot {
        version: kernel.version.as_deref(),
        modules: modules_dir.as_deref(),
        init: &vm.init,
        fs: vm.root,
    };
    initrd::boot_tree(store, tree, &boot).map_err(|e| match e {
        Error::Invalid { message, hint } => Error::from(
            input
                .recipe
                .source
                .error(vm.kernel_span.clone(), message)
                .hint(hint.unwrap_or_default()),
        ),
        other => other,
    })
}

/// `bundle.json`.
fn manifest(
    input: &Input<'_>,
    kernel: &KernelFile,
    initramfs: &(Digest, u64),
    disks: &[(String, Digest, u64)],
) -> Vec<u8> {
    let vm = input.vm;
    let recipe = input.recipe;
    let compression = match recipe.compression {
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    };
    let files = [
        ("vmlinuz", &kernel.digest, kernel.size),
        ("initramfs.img", &initramfs.0, initramfs.1),
    ]
    .into_iter()
    .chain(disks.iter().map(|(n, d, s)| (n.as_str(), d, *s)));
    canonical(&json!({
        "name": recipe.name,
        "image": input.image.to_string(),
        "kernel": { "file": "vmlinuz", "version": kernel.version },
        "init": vm.init,
        "cmdline": vm.cmdline,
        "initramfs": { "file": "initramfs.img", "format": "newc", "compression": compression },
        "disk": vm.wants_disk().then(|| json!({
            "root": vm.root.name(),
            "uuid": uuid_from(input.image),
            "raw": vm.writes(VmOutput::Raw).then_some("disk.raw"),
            "qcow2": vm.writes(VmOutput::Qcow2).then_some("disk.qcow2"),
        })),
        "files": files.map(|(n, d, s)| json!({ "name": n, "sha256": d.hex(), "size": s })).collect::<Vec<_>>(),
    }))
}

/// Compresses `tree` as a newc cpio into the store.
fn write_initramfs(
    store: &Store,
    tree: &Tree<Meta>,
    compression: Compression,
    mtime: u64,
) -> Result<(Digest, u64)> {
    let mut w = store.writer()?;
    {
        let enc = Encoder::new(compression, &mut w, 0).at("write", store.root())?;
        let mut cpio = CpioWriter::new(enc, mtime);
        for (path, m) in tree {
            let res = match &m.node {
                Node::Dir => cpio.entry(
                    path,
                    CpioKind::Dir,
                    m.mode,
                    m.uid,
                    m.gid,
                    0,
                    &mut io::empty(),
                ),
                Node::Symlink(t) => cpio.entry(
                    path,
                    CpioKind::Symlink,
                    0o777,
                    m.uid,
                    m.gid,
                    t.len() as u64,
                    &mut t.as_bytes(),
                ),
                Node::File { digest, size } => {
                    let mut data = BufReader::new(store.open_blob(digest)?);
                    cpio.entry(path, CpioKind::File, m.mode, m.uid, m.gid, *size, &mut data)
                }
            };
            res.map_err(|e| {
                if e.kind() == io::ErrorKind::InvalidInput {
                    Error::invalid(
                        e.to_string(),
                        Some("keep files under 4 GiB in VM images".into()),
                    )
                } else {
                    Error::io("write the initramfs into", store.root(), e)
                }
            })?;
        }
        let enc = cpio.finish().at("write", store.root())?;
        enc.finish().at("write", store.root())?;
    }
    w.commit(None)
}

/// A filesystem UUID derived from the image digest, so it is the same every build.
fn uuid_from(d: &Digest) -> String {
    let h = d.hex();
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// Writes a bundle directory at `dest`, atomically (as layouts are written).
pub fn write(store: &Store, bundle: &Bundle, dest: &Path) -> Result<()> {
    let _lock = super::lock_output(dest)?;
    super::layout::check_replaceable(dest)?;
    let tmp = crate::files::temp_dir_beside(dest)?;
    for (name, digest, _) in &bundle.files {
        let to = tmp.path().join(name);
        let mut src = BufReader::with_capacity(1 << 20, store.open_blob(digest)?);
        let mut f = std::fs::File::create(&to).at("create", &to)?;
        io::copy(&mut src, &mut f)
            .map_err(|e| crate::store::verify_error(e, &store.blob_path(digest)))?;
        f.sync_all().at("sync", &to)?;
    }
    let m = tmp.path().join("bundle.json");
    crate::files::write_synced(&m, &bundle.manifest)?;
    crate::files::commit_dir(tmp, dest)
}

/// Reads `bundle.json` of a bundle directory.
pub fn read_manifest(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("bundle.json");
    let mut text = String::new();
    std::fs::File::open(&path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|e| {
            Error::unusable(
                format!("`{}` is not a kiln VM bundle", dir.display()),
                e,
                "give the output directory of `kiln build` for a recipe with `[vm]`",
            )
        })?;
    serde_json::from_str(&text).map_err(|e| {
        Error::unusable(
            format!("`{}` is not valid JSON", path.display()),
            e,
            "rebuild the bundle with `kiln build`",
        )
    })
}

/// What to do about an artifact that is not a bundle kiln pushed.
const BUNDLE_HINT: &str =
    "pull a VM bundle pushed by `kiln build --push` for a recipe with `[vm]`, or push it again";

/// The `artifactType` of a VM bundle pushed to a registry.
pub const ARTIFACT_TYPE: &str = "application/vnd.kiln.vm.bundle.v1+json";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const TITLE: &str = "org.opencontainers.image.title";

fn file_media_type(name: &str) -> &'static str {
    match name {
        "vmlinuz" => "application/vnd.kiln.vm.kernel",
        "initramfs.img" => "application/vnd.kiln.vm.initramfs",
        "bundle.json" => "application/vnd.kiln.vm.bundle.manifest+json",
        _ => "application/octet-stream",
    }
}

/// Stores the bundle as an OCI artifact manifest (one layer per file, each
/// titled with its file name), ready to push and sign like an image.
pub fn store_artifact(store: &Store, bundle: &Bundle) -> Result<crate::image::Stored> {
    let empty = b"{}";
    let empty_digest = store.put_bytes(empty)?;
    let manifest_blob = store.put_bytes(&bundle.manifest)?;
    let mut layers: Vec<serde_json::Value> = bundle
        .files
        .iter()
        .map(|(name, digest, size)| {
            json!({
                "mediaType": file_media_type(name),
                "digest": digest.to_string(),
                "size": size,
                "annotations": { TITLE: name },
            })
        })
        .collect();
    layers.push(json!({
        "mediaType": file_media_type("bundle.json"),
        "digest": manifest_blob.to_string(),
        "size": bundle.manifest.len(),
        "annotations": { TITLE: "bundle.json" },
    }));
    let manifest = canonical(&json!({
        "schemaVersion": 2,
        "mediaType": crate::image::MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": { "mediaType": EMPTY_MEDIA_TYPE, "digest": empty_digest.to_string(), "size": empty.len() },
        "layers": layers,
    }));
    let digest = store.put_bytes(&manifest)?;
    Ok(crate::image::Stored {
        digest,
        size: manifest.len() as u64,
        media_type: crate::image::MANIFEST_MEDIA_TYPE,
    })
}

/// If the stored manifest `top` is a VM bundle artifact, the bundle it holds.
pub fn from_artifact(store: &Store, top: &crate::image::Stored) -> Result<Option<Bundle>> {
    let doc: serde_json::Value =
        serde_json::from_slice(&store.read(&top.digest)?).unwrap_or_default();
    if doc["artifactType"] != ARTIFACT_TYPE {
        return Ok(None);
    }
    let mut files = Vec::new();
    let mut manifest = None;
    for layer in doc["layers"].as_array().into_iter().flatten() {
        let name = layer["annotations"][TITLE]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let digest: Digest = layer["digest"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| {
                Error::invalid(
                    format!("artifact `{}` has a layer without a digest", top.digest),
                    Some(BUNDLE_HINT.into()),
                )
            })?;
        let safe = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
        if !safe {
            return Err(Error::invalid(
                format!(
                    "artifact `{}` names a file `{name}`, which kiln will not write",
                    top.digest
                ),
                Some(BUNDLE_HINT.into()),
            ));
        }
        if name == "bundle.json" {
            manifest = Some(store.read(&digest)?);
        } else {
            files.push((name, digest.clone(), store.size(&digest)?));
        }
    }
    let manifest = manifest.ok_or_else(|| {
        Error::invalid(
            format!("artifact `{}` has no bundle.json", top.digest),
            Some(BUNDLE_HINT.into()),
        )
    })?;
    Ok(Some(Bundle { files, manifest }))
}
