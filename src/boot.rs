//! `kiln boot`: runs a VM bundle in `qemu-system-x86_64` (software emulation,
//! `-machine q35,accel=tcg`, which works where nested KVM does not) with the
//! serial console on a pipe, and watches what it prints.
//!
//! qemu exits 0 even after a kernel panic, so the outcome is read from the
//! console: a marker line (when asked for), a `Kernel panic`, the machine
//! powering off, or the timeout. A missing or failing qemu is an
//! [`Error::Tool`]; what the machine did is the [`Outcome`], which the binary
//! turns into an [`Error::Boot`] when it is not a success.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How to boot.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// Give up after this long.
    pub timeout: Duration,
    /// Succeed (and stop the machine) as soon as a console line contains this.
    pub marker: Option<String>,
    /// Guest memory, as qemu's `-m` takes it.
    pub memory: String,
}

/// How a boot ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The marker appeared.
    Marker,
    /// The machine powered off by itself.
    PoweredOff,
    /// The kernel panicked; the line says how.
    Panic(String),
    /// Nothing decisive before the timeout.
    TimedOut,
}

/// Boots the bundle in `dir`; every console line goes to `on_line` (without `\r`).
pub fn boot(dir: &Path, opts: &BootOptions, on_line: &mut dyn FnMut(&str)) -> Result<Outcome> {
    let manifest = crate::export::vm::read_manifest(dir)?;
    let cmdline = manifest["cmdline"].as_str().unwrap_or("console=ttyS0");
    let kernel = dir.join(manifest["kernel"]["file"].as_str().unwrap_or("vmlinuz"));
    let initrd = dir.join(
        manifest["initramfs"]["file"]
            .as_str()
            .unwrap_or("initramfs.img"),
    );
    for f in [&kernel, &initrd] {
        if !f.is_file() {
            return Err(Error::invalid(
                format!("`{}` is missing from the bundle", f.display()),
                Some("rebuild the bundle with `kiln build`".into()),
            ));
        }
    }
    let mut drive = Vec::new();
    let disk = &manifest["disk"];
    let found = [("raw", "raw"), ("qcow2", "qcow2")]
        .into_iter()
        .find_map(|(key, format)| disk[key].as_str().map(|f| (dir.join(f), format)));
    if let Some((file, format)) = found {
        drive.push("-drive".to_string());
        drive.push(format!(
            "file={},format={format},if=virtio,readonly=on",
            file.display()
        ));
    }
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35,accel=tcg", "-m", &opts.memory, "-smp", "1"])
        .args([
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .args(["-nic", "none"])
        .args(&drive)
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(format!("{cmdline} panic=-1"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::tool_missing("qemu-system-x86_64", "qemu-system-x86", e))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line).replace('\r', "");
            if tx.send(text).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + opts.timeout;
    let outcome = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                on_line(&line);
                if opts.marker.as_deref().is_some_and(|m| line.contains(m)) {
                    break Outcome::Marker;
                }
                if line.contains("Kernel panic") {
                    break Outcome::Panic(line.trim().to_string());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Outcome::PoweredOff;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= deadline {
                    break Outcome::TimedOut;
                }
            }
        }
    };
    let _ = child.kill();
    let status = child.wait();
    if outcome == Outcome::PoweredOff {
        if let Ok(s) = status {
            if !s.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return Err(Error::tool_failed(
                    "qemu-system-x86_64",
                    format!("`qemu-system-x86_64` failed ({s}): {}", err.trim()),
                    "check the bundle's kernel and initramfs, and that this qemu can run them",
                ));
            }
        }
    }
    Ok(outcome)
}
