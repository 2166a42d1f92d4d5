//! What kiln writes for users is created as any program's files are: mode
//! 0666 (directories 0777) less the umask, so 0644 under the usual 022 and
//! 0600 under 077 — not 0600 whatever the umask, as when the temporary file
//! an archive is written to kept its private mode. Modes are read with
//! `stat`, kiln's umask set by `sh`.

use std::process::Command;

use crate::support::runtimes::busybox_recipe;
use crate::support::*;

/// `stat -c %a PATH`.
fn stat_mode(path: &std::path::Path) -> String {
    run(Command::new("stat").args(["-c", "%a"]).arg(path))
        .trim()
        .to_string()
}

fn modes_under(umask: &str, file: &str, dir: &str) {
    let w = Work::new();
    let recipe = busybox_recipe(&w, "kiln-modes", &["v1"], "modes");
    let kiln = kiln_bin();
    let script = format!(
        "umask {umask} && \
         exec {kiln} build {recipe} --format oci-archive --out oci.tar --digest-file oci.digest",
        kiln = kiln.display()
    );
    for (script, what) in [
        (script.clone(), "oci-archive"),
        (
            format!(
                "umask {umask} && exec {} build {recipe} --format docker-archive --out docker.tar",
                kiln.display()
            ),
            "docker-archive",
        ),
        (
            format!(
                "umask {umask} && exec {} build {recipe} --out layout --sbom",
                kiln.display()
            ),
            "oci-layout",
        ),
    ] {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script])
            .current_dir(w.path())
            .env("KILN_CACHE", w.cache())
            .env("KILN_NO_PROGRESS", "1");
        let out = cmd.output().unwrap();
        assert_success(&out, &format!("kiln build ({what}) under umask {umask}"));
    }
    for f in [
        "oci.tar",
        "oci.digest",
        "docker.tar",
        "layout/index.json",
        "layout.sbom.spdx.json",
    ] {
        assert_eq!(
            stat_mode(&w.path().join(f)),
            file,
            "{f} under umask {umask}"
        );
    }
    assert_eq!(
        stat_mode(&w.path().join("layout")),
        dir,
        "layout/ under umask {umask}"
    );
}

#[test]
fn outputs_are_0644_under_umask_022() {
    modes_under("022", "644", "755");
}

#[test]
fn outputs_are_0600_under_umask_077() {
    modes_under("077", "600", "700");
}
