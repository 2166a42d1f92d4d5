//! VM bundles: a recipe with `[vm]` becomes a kernel and an initramfs that
//! boot in qemu (software emulation), byte-identical across builds.
//! Needs Debian's qemu-system-x86, a kernel package (linux-image-cloud-amd64)
//! and busybox-static: scripts/test.sh installs them.

use crate::support;
use std::path::PathBuf;

use crate::support::Work;
use serde_json::Value;

fn kernel() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    found.retain(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
    });
    found.sort();
    found
        .pop()
        .expect("no /boot/vmlinuz-*: run scripts/test.sh (it installs linux-image-cloud-amd64)")
}

fn busybox() -> PathBuf {
    let p = PathBuf::from("/bin/busybox");
    assert!(
        p.is_file(),
        "no /bin/busybox: run scripts/test.sh (it installs busybox-static)"
    );
    p
}

fn recipe(w: &Work, init_text: &str) {
    recipe_with(w, init_text, "");
}

fn recipe_with(w: &Work, init_text: &str, extra_vm: &str) {
    std::fs::copy(busybox(), w.path().join("busybox")).unwrap();
    w.write(
        "vm.toml",
        format!(
            r#"name = "vm-hello"
[vm]
kernel = {{ path = "{}" }}
init = "/init.sh"
cmdline = "console=ttyS0 quiet"
{extra_vm}

[[layers]]
files = [ {{ src = "busybox", dest = "/bin/busybox", mode = 0o755 }} ]
symlinks = [ {{ path = "/bin/sh", target = "busybox" }} ]
contents = [ {{ dest = "/init.sh", mode = 0o755, text = """{init_text}""" }} ]
"#,
            kernel().display()
        ),
    );
}

const GOOD_INIT: &str = "#!/bin/sh
/bin/busybox mkdir -p /proc
/bin/busybox mount -t proc proc /proc
/bin/busybox echo KILN-VM-OK kernel=$(/bin/busybox uname -r) pid=$$
/bin/busybox poweroff -f
";

#[test]
fn bundle_boots_to_its_init_and_is_reproducible() {
    assert!(
        support::have("qemu-system-x86_64"),
        "no qemu-system-x86_64: run scripts/test.sh"
    );
    let (a, b) = (Work::new(), Work::new());
    recipe(&a, GOOD_INIT);
    recipe(&b, GOOD_INIT);
    a.ok(&["build", "vm.toml"]);
    b.ok(&["build", "vm.toml", "--out", "elsewhere/bundle"]);
    let bundle_a = a.path().join("out/vm-hello");
    let bundle_b = b.path().join("elsewhere/bundle");
    for file in ["vmlinuz", "initramfs.img", "bundle.json"] {
        assert_eq!(
            std::fs::read(bundle_a.join(file)).unwrap(),
            std::fs::read(bundle_b.join(file)).unwrap(),
            "{file} differs between two builds"
        );
    }
    // bundle.json tells the truth about every file.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(bundle_a.join("bundle.json")).unwrap()).unwrap();
    for f in manifest["files"].as_array().unwrap() {
        let bytes = std::fs::read(bundle_a.join(f["name"].as_str().unwrap())).unwrap();
        use sha2::Digest;
        assert_eq!(f["sha256"], hex::encode(sha2::Sha256::digest(&bytes)));
        assert_eq!(f["size"], bytes.len());
    }
    // The kernel's own tools read the initramfs: it is a gzip'd newc cpio.
    let listing = support::run(std::process::Command::new("sh").arg("-c").arg(format!(
        "zcat {} | cpio -it --quiet",
        bundle_a.join("initramfs.img").display()
    )));
    for path in ["bin/busybox", "bin/sh", "init", "init.sh"] {
        assert!(
            listing.lines().any(|l| l == path),
            "{path} missing from the initramfs: {listing}"
        );
    }
    // It boots, and init runs as PID 1.
    let out = a.ok(&[
        "boot",
        "out/vm-hello",
        "--timeout",
        "90",
        "--marker",
        "KILN-VM-OK",
    ]);
    let line = out.lines().find(|l| l.contains("KILN-VM-OK")).unwrap();
    assert!(line.contains("pid=1"), "{line}");
    let version = manifest["kernel"]["version"].as_str().unwrap();
    assert!(line.contains(&format!("kernel={version}")), "{line}");
}

#[test]
fn a_panicking_init_fails_the_boot() {
    let w = Work::new();
    recipe(&w, "#!/bin/sh\n/bin/busybox echo about to exit\nexit 3\n");
    w.ok(&["build", "vm.toml"]);
    let (code, err) = w.fails(&[
        "boot",
        "out/vm-hello",
        "--timeout",
        "90",
        "--marker",
        "NEVER",
    ]);
    // The machine ran and failed: 6, not 4 (a verification failure).
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("panicked"), "{err}");
}

#[test]
fn a_missing_kernel_is_a_recipe_error() {
    let w = Work::new();
    w.write(
        "vm.toml",
        "name = \"v\"\n[vm]\nkernel = { path = \"no-such-vmlinuz\" }\n[[layers]]\ncontents = [ { dest = \"/init\", text = \"x\" } ]\n",
    );
    let (code, err) = w.fails(&["build", "vm.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("vm.toml:3:10"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert!(!w.path().join("out/v").exists());
}

/// A bundle pushed with `--push` is an OCI artifact (its own artifactType,
/// one titled layer per file) that `kiln pull` brings back as the same files.
#[test]
fn bundle_round_trips_through_a_registry_as_an_artifact() {
    let reg = support::registry::registry(support::registry::Flavour::Plain);
    let w = Work::new();
    recipe(&w, GOOD_INIT);
    let target = format!("{}:v1", reg.repo("kiln/vm-bundle"));
    let digest = support::last_digest(&w.ok(&["build", "vm.toml", "--push", &target]));
    let raw = support::run(
        std::process::Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{target}")),
    );
    let manifest: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        manifest["artifactType"],
        "application/vnd.kiln.vm.bundle.v1+json"
    );
    let titles: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["annotations"]["org.opencontainers.image.title"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(titles, ["vmlinuz", "initramfs.img", "bundle.json"]);
    let puller = Work::new();
    let pinned = format!("{}@{digest}", reg.repo("kiln/vm-bundle"));
    puller.ok(&["pull", &pinned, "--out", "bundle"]);
    for file in ["vmlinuz", "initramfs.img", "bundle.json"] {
        assert_eq!(
            std::fs::read(puller.path().join("bundle").join(file)).unwrap(),
            std::fs::read(w.path().join("out/vm-hello").join(file)).unwrap(),
            "{file} differs after the round trip"
        );
    }
}

test_cases! { disk_bundle_boots_from_its_root_and_is_reproducible {
    erofs: ("erofs"),
    squashfs: ("squashfs"),
    ext4: ("ext4"),
} }

/// With `outputs = ["raw", "qcow2"]` the image root is a disk of file system
/// `fs` (and its qcow2 copy), byte-identical across builds; the small
/// initramfs loads the virtio and file-system modules, mounts the disk
/// read-only and runs init from it.
fn disk_bundle_boots_from_its_root_and_is_reproducible(fs: &str) {
    let init = "#!/bin/sh\n/bin/busybox mount -t proc proc /proc\n/bin/busybox echo KILN-DISK-OK root=$(/bin/busybox awk '$2==\"/\" {print $3}' /proc/mounts | /bin/busybox tail -n 1)\n/bin/busybox poweroff -f\n";
    let (a, b) = (Work::new(), Work::new());
    for w in [&a, &b] {
        recipe_with(
            w,
            init,
            &format!("outputs = [\"raw\", \"qcow2\"]\nroot = \"{fs}\""),
        );
    }
    a.ok(&["build", "vm.toml"]);
    // A second apart, so that a clock leaking into the disk would show.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    b.ok(&["build", "vm.toml", "--out", "other/place"]);
    for file in [
        "vmlinuz",
        "initramfs.img",
        "disk.raw",
        "disk.qcow2",
        "bundle.json",
    ] {
        assert_eq!(
            std::fs::read(a.path().join("out/vm-hello").join(file)).unwrap(),
            std::fs::read(b.path().join("other/place").join(file)).unwrap(),
            "{file} differs between two builds"
        );
    }
    // qemu-img reads the qcow2 as qcow2 of the raw disk's size.
    let info = support::run(
        std::process::Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(a.path().join("out/vm-hello/disk.qcow2")),
    );
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["format"], "qcow2");
    let raw_len = std::fs::metadata(a.path().join("out/vm-hello/disk.raw"))
        .unwrap()
        .len();
    assert_eq!(info["virtual-size"], raw_len);
    let out = a.ok(&[
        "boot",
        "out/vm-hello",
        "--timeout",
        "90",
        "--marker",
        "KILN-DISK-OK",
    ]);
    let line = out.lines().find(|l| l.contains("KILN-DISK-OK")).unwrap();
    assert!(
        line.contains(&format!("root={fs}")),
        "the root is not the {fs} disk: {line}"
    );
}

/// The kernel can come from a Debian package installed in the image
/// (`kernel = { package = … }`): kiln takes its `/boot/vmlinuz-*` and, for a
/// disk boot, the modules from its `/lib/modules/VERSION`. The packages come
/// from a local signed repository, through `kiln lock`.
#[test]
fn kernel_from_a_package_boots_a_disk() {
    use crate::support::apt::{Pkg, Repo};
    let vmlinuz = kernel();
    let version = vmlinuz
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    let modules = PathBuf::from(format!("/lib/modules/{version}"));
    let dep = std::fs::read_to_string(modules.join("modules.dep")).unwrap();
    // The package carries modules.dep and the modules a disk boot loads.
    let mut kernel_pkg = Pkg::new("linux-image-test", "1.0", "amd64")
        .compression("gzip")
        .file(
            &format!("/boot/vmlinuz-{version}"),
            std::fs::read(&vmlinuz).unwrap(),
            0o644,
        )
        .file(
            &format!("/lib/modules/{version}/modules.dep"),
            dep.as_bytes(),
            0o644,
        );
    for line in dep.lines() {
        let (m, deps) = line.split_once(':').unwrap();
        let wanted = ["virtio_pci.ko", "virtio_blk.ko", "erofs.ko"]
            .iter()
            .any(|w| m.ends_with(&format!("/{w}")));
        if wanted {
            for rel in std::iter::once(m).chain(deps.split_whitespace()) {
                kernel_pkg = kernel_pkg.file(
                    &format!("/lib/modules/{version}/{rel}"),
                    std::fs::read(modules.join(rel)).unwrap(),
                    0o644,
                );
            }
        }
    }
    let busybox_pkg = Pkg::new("busybox-static", "1.0", "amd64")
        .compression("gzip")
        .file("/bin/busybox", std::fs::read(busybox()).unwrap(), 0o755);
    let repo = Repo::start("testing", &["main"], &[kernel_pkg, busybox_pkg]);
    let w = Work::new();
    w.write(
        "vm.toml",
        format!(
            r##"name = "pkg-vm"
[repositories.test]
suite = "testing"
keyring = "{}"

[vm]
kernel = {{ package = "linux-image-test" }}
init = "/init.sh"
outputs = ["raw"]

[[layers]]
packages = ["linux-image-test", "busybox-static"]

[[layers]]
contents = [ {{ dest = "/init.sh", mode = 0o755, text = """#!/bin/busybox sh
/bin/busybox echo KILN-PKG-KERNEL-OK $(/bin/busybox uname -r)
/bin/busybox poweroff -f
""" }} ]
"##,
            repo.keyring.display()
        ),
    );
    let with_mirror = |args: &[&str]| {
        let out = w
            .kiln()
            .env("KILN_DEBIAN_MIRROR", &repo.url)
            .args(args)
            .output()
            .unwrap();
        support::assert_success(&out, &format!("kiln {}", args.join(" ")));
    };
    with_mirror(&["lock", "vm.toml"]);
    with_mirror(&["build", "vm.toml", "--locked"]);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(w.path().join("out/pkg-vm/bundle.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["kernel"]["version"], version.as_str());
    assert_eq!(
        std::fs::read(w.path().join("out/pkg-vm/vmlinuz")).unwrap(),
        std::fs::read(&vmlinuz).unwrap()
    );
    let out = w.ok(&[
        "boot",
        "out/pkg-vm",
        "--timeout",
        "90",
        "--marker",
        "KILN-PKG-KERNEL-OK",
    ]);
    assert!(
        out.contains(&format!("KILN-PKG-KERNEL-OK {version}")),
        "{out}"
    );
}

/// Bad `[vm]` input fails with the recipe's line and a hint, and writes nothing.
#[test]
fn bad_vm_recipes_are_refused() {
    let w = Work::new();
    std::fs::copy(busybox(), w.path().join("busybox")).unwrap();
    let k = kernel();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown output",
            format!("name = \"v\"\n[vm]\nkernel = {{ path = \"{}\" }}\noutputs = [\"iso\"]\n", k.display()),
            "v.toml:4:12",
        ),
        (
            "no kernel in the image",
            "name = \"v\"\n[vm]\nkernel = { package = \"linux-image-none\" }\n[[layers]]\ncontents = [ { dest = \"/init\", text = \"x\" } ]\n".to_string(),
            "v.toml:3:10",
        ),
        (
            "unknown root filesystem",
            format!("name = \"v\"\n[vm]\nkernel = {{ path = \"{}\" }}\nroot = \"btrfs\"\n", k.display()),
            "v.toml:4:8",
        ),
        (
            "a bad size",
            format!("name = \"v\"\n[vm]\nkernel = {{ path = \"{}\" }}\nsize = \"lots\"\n", k.display()),
            "v.toml:4:8",
        ),
    ];
    for (what, text, at) in cases {
        w.write("v.toml", &text);
        let (code, err) = w.fails(&["build", "v.toml"]);
        assert_eq!(code, 2, "{what}: {err}");
        assert!(err.contains(at), "{what}: expected {at} in: {err}");
        assert!(err.contains("hint:"), "{what}: {err}");
        assert!(!w.path().join("out/v").exists(), "{what}: output written");
    }
    // A root larger than `size` is refused, naming both sizes.
    w.write(
        "v.toml",
        format!(
            "name = \"v\"\n[vm]\nkernel = {{ path = \"{}\" }}\noutputs = [\"raw\"]\nsize = \"64K\"\n[[layers]]\nfiles = [ {{ src = \"busybox\", dest = \"/bin/busybox\", mode = 0o755 }} ]\n",
            k.display()
        ),
    );
    let (code, err) = w.fails(&["build", "v.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("more than `size`"), "{err}");
    assert!(!w.path().join("out/v").exists());
}
