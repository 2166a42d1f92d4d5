//! Regression tests of the bugs the fuzz targets found, each named after its bug.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln::digest::Digest;
use kiln::layer::read::{apply_whiteout, entry_path};
use kiln::source::deb::extract;
use kiln::source::layout::Layout;
use kiln::store::Store;
use serde_json::json;

use super::seeds::{self, Ent};

/// Runs `f` on a thread and fails, instead of hanging, if it takes over `secs`.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("did not finish within {secs} s"))
}

#[test]
fn root_opaque_whiteout_kept_lower_layers() {
    let mut tree: BTreeMap<String, ()> = ["a", "a/b", "c"]
        .iter()
        .map(|p| (p.to_string(), ()))
        .collect();
    assert!(apply_whiteout(&mut tree, ".wh..wh..opq"));
    assert!(
        tree.is_empty(),
        "an opaque whiteout at the root hides every lower entry: {tree:?}"
    );
    let mut tree: BTreeMap<String, ()> = ["a", "a/b", "ab"]
        .iter()
        .map(|p| (p.to_string(), ()))
        .collect();
    assert!(apply_whiteout(&mut tree, "a/.wh..wh..opq"));
    assert_eq!(tree.keys().collect::<Vec<_>>(), ["a", "ab"]);
}

#[test]
fn whiteouts_rescanned_the_whole_tree() {
    let mut tree: BTreeMap<String, ()> = (0..40_000)
        .map(|i| (format!("usr/share/f{i}"), ()))
        .collect();
    let t = Instant::now();
    for i in 0..40_000 {
        apply_whiteout(&mut tree, &format!("opt/.wh.g{i}"));
    }
    apply_whiteout(&mut tree, "usr/share/.wh.f7");
    assert_eq!(tree.len(), 39_999);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "40 000 whiteouts took {:?}",
        t.elapsed()
    );
}

/// An index of indexes, each naming the next one twice: 40 levels were 2^40 reads.
#[test]
fn nested_index_fan_out_made_import_exponential() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("layout");
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let put = |b: &[u8]| {
        std::fs::write(blobs.join(Digest::of(b).hex()), b).expect("write");
        json!({ "mediaType": "application/vnd.oci.image.index.v1+json", "digest": Digest::of(b).to_string(), "size": b.len() })
    };
    let config = br#"{"os":"linux"}"#;
    put(config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::of(config).to_string(), "size": config.len() },
        "layers": [],
    }))
    .expect("json");
    let mut child = put(&manifest);
    for _ in 0..40 {
        let doc = serde_json::to_vec(
            &json!({ "schemaVersion": 2, "manifests": [child.clone(), child.clone()] }),
        )
        .expect("json");
        child = put(&doc);
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({ "schemaVersion": 2, "manifests": [child] })).expect("json"),
    )
    .expect("write");
    let store_dir = tmp.path().join("store");
    within(60, move || {
        let store = Store::open(store_dir).expect("store");
        Layout::open(&dir)
            .expect("layout")
            .import(&store)
            .expect("import");
    });
}

#[test]
fn index_json_read_without_size_bound() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        tmp.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("write");
    let mut big = br#"{"manifests":[],"x":""#.to_vec();
    big.resize(17 << 20, b'a');
    big.extend_from_slice(b"\"}");
    std::fs::write(tmp.path().join("index.json"), big).expect("write");
    let err = Layout::open(tmp.path())
        .expect("layout")
        .index()
        .expect_err("too large");
    assert!(err.to_string().contains("larger than"), "{err}");
}

#[test]
fn deb_control_file_read_without_size_bound() {
    let huge = vec![b'a'; (extract::MAX_CONTROL_FILE + 1) as usize];
    let control = seeds::tar(&[Ent::File("./control", &huge)]);
    let (_, data) = seeds::deb_parts();
    let deb = seeds::deb(&control, &data, true);
    drop(control);
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(tmp.path()).expect("store");
    let digest = store.put_bytes(&deb).expect("put");
    let err = extract::contents(&store, "big", &digest).expect_err("refused");
    assert!(err.to_string().contains("larger than"), "{err}");
}

#[test]
fn entry_path_kept_dot_segments() {
    assert_eq!(entry_path(".//.//aaaa"), "aaaa");
    assert_eq!(entry_path("./usr//bin/./sh/"), "usr/bin/sh");
    assert_eq!(entry_path("/"), "");
    assert_eq!(entry_path("a/../b"), "a/../b");
}
