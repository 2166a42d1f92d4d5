//! kiln's OCI archive in Debian's containerd (1.6), against a containerd the
//! test starts with a config, root, state and socket of its own
//! (`support::runtimes`): `ctr image import` names each image from
//! `io.containerd.image.name` (without it, `import-DATE:TAG`, so two images
//! tagged `v1` overwrote each other), and `ctr run` runs it (with the
//! `native` snapshotter, which needs no overlay mount).

use crate::support::runtimes::{busybox_recipe, containerd};
use crate::support::*;

fn ctr_ok(args: &[&str]) -> String {
    let c = containerd();
    let out = c.ctr().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ctr {args:?} failed: {}\n{}\ncontainerd's log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
        c.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ctr_imports_images_under_their_full_names_and_runs_them() {
    let w = Work::new();
    let pid = std::process::id();
    // Two images, both tagged `v1`: each keeps its own name.
    let mut built = Vec::new();
    for (name, extra) in [
        ("kiln-load-ctr-a", "registry.example/kiln/ctr-a:1.4"),
        ("kiln-load-ctr-b", "localhost:5000/ctr-b:dev"),
    ] {
        let marker = unique_marker(name);
        let recipe = busybox_recipe(&w, name, &["v1", extra], &marker);
        let out = format!("{name}.tar");
        w.ok(&["build", &recipe, "--format", "oci-archive", "--out", &out]);
        let said = ctr_ok(&[
            "image",
            "import",
            "--snapshotter",
            "native",
            w.path().join(&out).to_str().unwrap(),
        ]);
        assert!(!said.contains("import-"), "{said}");
        built.push((name, extra, marker));
    }
    let listed = ctr_ok(&["image", "ls", "--quiet"]);
    let listed: Vec<&str> = listed.lines().collect();
    for (i, (name, extra, marker)) in built.iter().enumerate() {
        let full = format!("docker.io/library/{name}:v1");
        assert!(listed.contains(&full.as_str()), "{full} in {listed:?}");
        assert!(listed.contains(extra), "{extra} in {listed:?}");
        let id = format!("kiln-test-{pid}-{i}");
        let ran = ctr_ok(&["run", "--rm", "--snapshotter", "native", &full, &id]);
        assert_eq!(ran.trim(), marker);
    }
}
