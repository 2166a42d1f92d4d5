//! What kiln reads out of package contents: `update-alternatives` calls in
//! maintainer scripts, and busybox's applet table.

use kiln::source::deb::install::{applet_names, install_calls};

use super::gen;

/// The host's real postinst scripts, plus one with every form kiln reads.
fn scripts() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = std::fs::read_dir("/var/lib/dpkg/info")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "postinst"))
        .filter_map(|p| std::fs::read(p).ok())
        .collect();
    out.push(
        b"#!/bin/sh\nset -e\nupdate-alternatives --quiet --install /usr/bin/x x /usr/bin/x.real 50 \\\n  --slave /usr/share/man/man1/x.1.gz x.1.gz /usr/share/man/man1/x.real.1.gz\n\
          update-alternatives --install /usr/bin/y y \"$DIR/y\" 10\n"
            .to_vec(),
    );
    out
}

#[test]
fn maintainer_scripts() {
    let scripts = scripts();
    let seeds: Vec<&[u8]> = scripts.iter().map(Vec::as_slice).collect();
    let tokens: &[&[u8]] = &[
        b"update-alternatives ",
        b"--install ",
        b"--slave ",
        b"--quiet ",
        b"\\\n",
        b"$",
        b" 99999999999999999999",
        b" -5",
    ];
    gen::run("maintainer_scripts", 1000, |rng| {
        let text = String::from_utf8_lossy(&gen::input(rng, &seeds, tokens)).into_owned();
        for a in install_calls(&text) {
            let shown = format!("{a:?}");
            assert!(
                !shown.contains('$'),
                "a call with a shell variable was read: {shown}"
            );
        }
    });
}

#[test]
fn busybox_applets() {
    // A window of the host's busybox around its applet table, if there is one.
    let real = std::fs::read("/bin/busybox").ok().and_then(|b| {
        let at = b.windows(5).position(|w| w == b"[\0[[\0")?;
        Some(b[at.saturating_sub(256)..(at + 16384).min(b.len())].to_vec())
    });
    let made = b"\x7fELF\0\0[\0[[\0ash\0cat\0ls\0sh\0true\0\0\x01\x02".to_vec();
    let mut seeds: Vec<&[u8]> = vec![&made];
    if let Some(r) = &real {
        assert!(
            applet_names(r).is_some(),
            "the host's busybox has an applet table"
        );
        seeds.push(r);
    }
    gen::run("busybox_applets", 500, |rng| {
        let bin = gen::input(rng, &seeds, &[b"\0", b"[\0[[\0", b"sh\0", b"/"]);
        if let Some(names) = applet_names(&bin) {
            assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted");
            assert!(names.iter().any(|n| n == "sh"));
            assert!(names
                .iter()
                .all(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_graphic() && c != b'/')));
        }
    });
}
