//! Exit codes a CI script can act on, as the README's table lists them: a
//! missing or failing host tool exits 5 (fix the host), a machine that boots
//! and fails exits 6 (fix the image), and a bad lockfile exits 2 and points at
//! the line and column of the entry. The boots here use a stand-in
//! `qemu-system-x86_64` on PATH, so they run in milliseconds.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::Work;

/// A bundle directory `kiln boot` accepts: a manifest, a kernel, an initramfs.
fn bundle(w: &Work) {
    w.write(
        "vm/bundle.json",
        r#"{"kernel":{"file":"vmlinuz"},"initramfs":{"file":"initramfs.img"},"cmdline":"console=ttyS0"}"#,
    );
    w.write("vm/vmlinuz", "not a kernel");
    w.write("vm/initramfs.img", "not an initramfs");
}

/// A `bin/` holding only a `qemu-system-x86_64` that runs `script`.
fn fake_qemu(w: &Work, script: &str) -> std::path::PathBuf {
    let qemu = w.write("bin/qemu-system-x86_64", format!("#!/bin/sh\n{script}\n"));
    std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
    qemu.parent().unwrap().to_path_buf()
}

/// Runs `kiln boot vm` with PATH set to `path` only.
fn boot(w: &Work, path: &Path) -> (i32, String) {
    let out = w
        .kiln()
        .env("PATH", path)
        .args(["boot", "vm", "--timeout", "20"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "kiln boot succeeded");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A missing qemu used to exit 2, as if the bundle were bad input.
#[test]
fn a_missing_host_tool_exits_5() {
    let w = Work::new();
    bundle(&w);
    let empty = w.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, err) = boot(&w, &empty);
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("error: cannot run `qemu-system-x86_64`"),
        "{err}"
    );
    // The OS's error is a cause, not part of the message.
    assert!(err.contains("\n  caused by: "), "{err}");
    assert!(
        err.contains("hint: install Debian's `qemu-system-x86` package"),
        "{err}"
    );
}

#[test]
fn a_failing_host_tool_exits_5() {
    let w = Work::new();
    bundle(&w);
    let bin = fake_qemu(&w, "echo 'qemu: could not load kernel' >&2\nexit 1");
    let (code, err) = boot(&w, &bin);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("could not load kernel"), "{err}");
    assert!(err.contains("hint: "), "{err}");
}

/// A kernel panic used to exit 4, as if a signature had not verified.
#[test]
fn a_kernel_panic_exits_6() {
    let w = Work::new();
    bundle(&w);
    let bin = fake_qemu(
        &w,
        "echo 'Run /init as init process'\necho 'Kernel panic - not syncing: Attempted to kill init!'\nwhile :; do :; done",
    );
    let (code, err) = boot(&w, &bin);
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains("error: the kernel panicked: Kernel panic"),
        "{err}"
    );
    assert!(err.contains("hint: check `[vm].init`"), "{err}");
}

#[test]
fn a_machine_that_powers_off_before_the_marker_exits_6() {
    let w = Work::new();
    bundle(&w);
    let bin = fake_qemu(&w, "echo 'reboot: Power down'");
    let out = w
        .kiln()
        .env("PATH", &bin)
        .args(["boot", "vm", "--marker", "NEVER", "--timeout", "20"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("powered off before the marker"), "{err}");
}

const RECIPE: &str = "name = \"img\"\n[[layers]]\nname = \"etc\"\ncontents = [ { dest = \"/etc/motd\", text = \"hello\" } ]\n";

/// A bad digest in the lockfile once pointed at line 1, column 1.
#[test]
fn a_bad_lock_entry_points_at_its_line_and_column() {
    let w = Work::new();
    w.write("recipe.toml", RECIPE);
    let lock =
        "# Written by `kiln lock`.\nversion = 1\n\n[bases]\n\"r.example/a:1\" = \"sha256:0123\"\n";
    w.write("recipe.lock", lock);
    let (code, err) = w.fails(&["build", "recipe.toml", "--locked", "--out", "out/img"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("recipe.lock:5:19`"), "{err}");
    assert!(
        err.contains("hint: regenerate the lockfile with `kiln lock"),
        "{err}"
    );
}

#[test]
fn a_lock_of_another_version_points_at_the_version() {
    let w = Work::new();
    w.write("recipe.toml", RECIPE);
    w.write("recipe.lock", "# Written by `kiln lock`.\nversion = 9\n");
    let (code, err) = w.fails(&["build", "recipe.toml", "--locked", "--out", "out/img"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("recipe.lock:2:11`: lockfile version 9 is not 1"),
        "{err}"
    );
}

/// The README's table and `kiln --help` say what `kiln::error::exit` says.
#[test]
fn the_readme_and_help_list_every_exit_code() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let w = Work::new();
    let help = w.ok(&["--help"]);
    for (code, meaning) in kiln::error::exit::TABLE {
        let row = format!("| `{code}` | {meaning} |");
        assert!(readme.contains(&row), "README lacks the row\n{row}");
        let line = format!("  {code}  {meaning}");
        assert!(help.contains(&line), "`kiln --help` lacks\n{line}\n{help}");
    }
}
