//! Incremental recompression: after one file of a big gzip layer changes, a
//! rebuild compresses only the chunks that hold it and reuses the others
//! from the store, and the image is byte for byte the one a cold build of
//! the changed tree gives (the oracle: a second, empty store). A chunk cache
//! whose records lie is caught and ignored.

use std::path::Path;

use serde_json::Value;

use crate::support::*;

/// About 12 MiB: 300 text files of 16 to 48 KiB, a 3 MiB file, and 1 MiB of
/// noise (stored, not deflated).
fn write_tree(root: &Path) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..300 {
        let len = 16 * 1024 + (next() % (32 * 1024)) as usize;
        let text: String = (0..)
            .map(|j| format!("file {i} line {j} value {}\n", next() % 1000))
            .flat_map(|l| l.into_bytes())
            .take(len)
            .map(char::from)
            .collect();
        let p = root.join(format!("d{}/f{i:03}.txt", i % 7));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let big: Vec<u8> = (0..3 << 20)
        .map(|i: u32| b"abcdefghij\n"[(i % 11) as usize] ^ ((i >> 12) as u8 & 1))
        .collect();
    std::fs::write(root.join("big.bin"), big).unwrap();
    let noise: Vec<u8> = (0..1 << 17).flat_map(|_| next().to_le_bytes()).collect();
    std::fs::write(root.join("noise.bin"), noise).unwrap();
}

/// `kiln build recipe.toml --json` with the store `store`.
fn build(w: &Work, store: &str, out: &str) -> Value {
    let o = w
        .kiln()
        .env("KILN_CACHE", w.path().join(store))
        .args(["build", "recipe.toml", "--json", "--out", out])
        .output()
        .unwrap();
    assert_success(&o, &format!("kiln build (store {store})"));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn digest(doc: &Value) -> String {
    doc["digest"].as_str().unwrap().to_string()
}

/// Where the blobs directory `dir` (a layout's or a store's) holds the one
/// layer `doc` reports.
fn layer_in(dir: &Path, doc: &Value) -> std::path::PathBuf {
    let d = doc["layers"][0]["digest"].as_str().unwrap();
    dir.join("blobs/sha256")
        .join(d.strip_prefix("sha256:").unwrap())
}

/// `skopeo copy` of the layout `layout` into a `dir:` at `dest`: skopeo
/// checks every blob against its digest as it reads it.
fn skopeo_copy(layout: &Path, dest: &Path) {
    run(std::process::Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        &format!("oci:{}:latest", layout.display()),
        &format!("dir:{}", dest.display()),
    ]));
}

/// `kiln store prune --older-than 30d` of the store `store`.
fn prune(w: &Work, store: &str) {
    let o = w
        .kiln()
        .env("KILN_CACHE", w.path().join(store))
        .args(["store", "prune", "--older-than", "30d"])
        .output()
        .unwrap();
    assert_success(&o, "kiln store prune");
}

/// (total, reused) chunks of the one built layer.
fn chunks(doc: &Value) -> (u64, u64) {
    let l = &doc["layers"][0];
    assert_eq!(l["source"], "built", "{doc:#}");
    (
        l["chunks"]["total"].as_u64().unwrap(),
        l["chunks"]["reused"].as_u64().unwrap(),
    )
}

#[test]
fn one_changed_file_recompresses_its_chunks_and_gives_the_cold_digest() {
    let w = Work::new();
    write_tree(&w.path().join("tree"));
    w.write(
        "recipe.toml",
        "name = \"inc\"\n\n[[layers]]\ntrees = [{ src = \"tree\", dest = \"/data\" }]\n",
    );
    let cold = build(&w, "warm", "o1");
    let (total, reused) = chunks(&cold);
    assert!(total >= 8, "a 12 MiB layer spans many chunks: {total}");
    assert_eq!(reused, 0, "an empty store has no chunks");

    // One file in the middle grows by a line: later entries move in the tar.
    let f = w.path().join("tree/d3/f150.txt");
    let mut text = std::fs::read_to_string(&f).unwrap();
    text.push_str("one more line\n");
    std::fs::write(&f, text).unwrap();

    let warm = build(&w, "warm", "o2");
    let (total2, reused2) = chunks(&warm);
    assert_ne!(digest(&warm), digest(&cold), "the change must show");
    assert!(
        total2 - reused2 <= 2 && reused2 >= total2 - 2,
        "one file changed, yet {} of {total2} chunks were compressed",
        total2 - reused2
    );

    // The oracle: a cold build of the changed tree in an empty store.
    let fresh = build(&w, "fresh", "o3");
    assert_eq!(chunks(&fresh).1, 0);
    assert_eq!(
        digest(&warm),
        digest(&fresh),
        "the incremental build differs from a cold one"
    );
    let blob = |out: &str, doc: &Value| std::fs::read(layer_in(&w.path().join(out), doc)).unwrap();
    assert_eq!(blob("o2", &warm), blob("o3", &fresh));

    // The same size, another content: still only the chunk that holds it.
    let g = w.path().join("tree/d5/f040.txt");
    let mut bytes = std::fs::read(&g).unwrap();
    bytes[100] = if bytes[100] == b'#' { b'%' } else { b'#' };
    std::fs::write(&g, &bytes).unwrap();
    let again = build(&w, "warm", "o4");
    let (t, r) = chunks(&again);
    assert_eq!(t - r, 1, "one chunk holds the edit");
    assert_eq!(digest(&again), digest(&build(&w, "fresh2", "o5")));
}

#[test]
fn chunk_records_that_lie_are_ignored() {
    let w = Work::new();
    write_tree(&w.path().join("tree"));
    w.write(
        "recipe.toml",
        "name = \"lie\"\n\n[[layers]]\ntrees = [{ src = \"tree\", dest = \"/data\" }]\n",
    );
    let first = build(&w, "s", "o1");
    // Every record now points one byte further into its blob.
    // (`chunks/<blob hex>.v3`: `<key> <offset> <size> <len> <crc> <zcrc>` lines.)
    let mut records = 0;
    for file in std::fs::read_dir(w.path().join("s/chunks")).unwrap() {
        let p = file.unwrap().path();
        if p.extension().is_none_or(|e| e != "v3") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let mut lied = String::new();
        for line in text.lines() {
            let mut words: Vec<String> = line.split(' ').map(str::to_string).collect();
            words[1] = (words[1].parse::<u64>().unwrap() + 1).to_string();
            lied.push_str(&words.join(" "));
            lied.push('\n');
            records += 1;
        }
        std::fs::write(&p, lied).unwrap();
    }
    assert!(records >= 8, "{records} chunk records");
    // A change, so that the layer is built again rather than taken whole.
    w.write("tree/new.txt", "new\n");
    let second = build(&w, "s", "o2");
    assert_eq!(chunks(&second).1, 0, "no lying record was used");
    assert_eq!(digest(&second), digest(&build(&w, "fresh", "o3")));
    assert_ne!(digest(&second), digest(&first));
}

#[test]
fn chunk_records_of_an_older_form_are_not_read_and_prune_drops_them() {
    let w = Work::new();
    write_tree(&w.path().join("tree"));
    w.write(
        "recipe.toml",
        "name = \"old\"\n\n[[layers]]\ntrees = [{ src = \"tree\", dest = \"/data\" }]\n",
    );
    build(&w, "s", "o1");
    let dir = w.path().join("s/chunks");
    let names = || -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    };
    // The same records under the older forms' names: `.v1` keyed by the
    // digest of the uncompressed bytes, which this version does not compute;
    // `.v2` naming chunks zlib-rs compressed (format 4), which a build of
    // this format must not join to its own.
    for (round, old) in ["v1", "v2"].into_iter().enumerate() {
        let current: Vec<String> = names().into_iter().filter(|n| n.ends_with(".v3")).collect();
        assert_eq!(current.len(), 1, "one gzip layer: {current:?}");
        let hex = current[0].strip_suffix(".v3").expect("records are `.v3`");
        std::fs::rename(dir.join(&current[0]), dir.join(format!("{hex}.{old}"))).unwrap();
        w.write(&format!("tree/new{round}.txt"), "new\n");
        let again = build(&w, "s", &format!("o{round}"));
        assert_eq!(chunks(&again).1, 0, "no `.{old}` record was read");
        assert_eq!(
            digest(&again),
            digest(&build(&w, &format!("fresh{round}"), &format!("f{round}")))
        );
    }
    // Prune keeps the records of live blobs and drops the older form's
    // (each build also left its hashing states, `<hex>.r1`, kept while
    // their blob is).
    prune(&w, "s");
    let left = names();
    let blobs = w.path().join("s/blobs/sha256");
    assert!(
        left.iter()
            .all(|n| (n.ends_with(".v3") || n.ends_with(".r1"))
                && blobs.join(n.split('.').next().unwrap()).is_file())
            && left.iter().filter(|n| n.ends_with(".v3")).count() == 1,
        "after prune: {left:?}"
    );
    // Once its blob is gone, a record of states goes with it.
    let r1 = left.iter().find(|n| n.ends_with(".r1")).unwrap().clone();
    std::fs::remove_file(blobs.join(r1.split('.').next().unwrap())).unwrap();
    prune(&w, "s");
    assert!(
        !names().contains(&r1),
        "{r1} outlived its blob: {:?}",
        names()
    );
}

#[test]
fn a_layout_takes_the_built_layer_as_its_own_file_and_the_store_keeps_no_spares() {
    use std::os::unix::fs::MetadataExt;
    let w = Work::new();
    write_tree(&w.path().join("tree"));
    w.write(
        "recipe.toml",
        "name = \"spare\"\n\n[[layers]]\ntrees = [{ src = \"tree\", dest = \"/data\" }]\n",
    );
    let doc = build(&w, "s", "o1");
    let layer = doc["layers"][0]["digest"].as_str().unwrap();
    let hex = layer.strip_prefix("sha256:").unwrap();
    let in_layout = w.path().join("o1/blobs/sha256").join(hex);
    let in_store = w.path().join("s/blobs/sha256").join(hex);
    let (a, b) = (
        std::fs::metadata(&in_layout).unwrap(),
        std::fs::metadata(&in_store).unwrap(),
    );
    assert_ne!(a.ino(), b.ino(), "the layout's blob is a file of its own");
    assert_eq!(
        std::fs::read(&in_layout).unwrap(),
        std::fs::read(&in_store).unwrap()
    );
    // Written as every other file of the layout: 0666 less the umask.
    let other = std::fs::metadata(w.path().join("o1/index.json")).unwrap();
    assert_eq!(a.mode() & 0o7777, other.mode() & 0o7777);
    let leftovers = |store: &str| store_tmp(&w.path().join(store));
    assert_eq!(
        leftovers("s"),
        Vec::<String>::new(),
        "no second copy is left behind"
    );
    let copied = w.path().join("copied");
    skopeo_copy(&w.path().join("o1"), &copied);
    assert_eq!(
        std::fs::read(copied.join(hex)).unwrap(),
        std::fs::read(&in_store).unwrap()
    );

    // An archive takes no second copy, and neither does a layout on
    // another filesystem (when there is one to try): both copy the blob.
    let o = w
        .kiln()
        .env("KILN_CACHE", w.path().join("s2"))
        .args([
            "build",
            "recipe.toml",
            "--json",
            "--format",
            "oci-archive",
            "--out",
            "a.tar",
        ])
        .output()
        .unwrap();
    assert_success(&o, "kiln build --format oci-archive");
    assert_eq!(leftovers("s2"), Vec::<String>::new());
    let shm = Path::new("/dev/shm");
    let other_fs =
        std::fs::metadata(shm).is_ok_and(|m| m.dev() != std::fs::metadata(w.path()).unwrap().dev());
    if other_fs {
        let out = tempfile::tempdir_in(shm).unwrap();
        let dest = out.path().join("img");
        let doc2 = build(&w, "s3", dest.to_str().unwrap());
        assert_eq!(digest(&doc2), digest(&doc));
        assert_eq!(
            std::fs::read(dest.join("blobs/sha256").join(hex)).unwrap(),
            std::fs::read(&in_store).unwrap()
        );
        assert_eq!(leftovers("s3"), Vec::<String>::new());
    }
}

#[test]
fn a_late_change_takes_up_the_earlier_chunks_and_gzip_reads_the_layer_back() {
    let w = Work::new();
    write_tree(&w.path().join("tree"));
    w.write(
        "recipe.toml",
        "name = \"late\"\n\n[[layers]]\ntrees = [{ src = \"tree\", dest = \"/data\" }]\n",
    );
    let grow = |name: &str| {
        let f = w.path().join("tree").join(name);
        let mut text = std::fs::read_to_string(&f).unwrap();
        text.push_str("one more line\n");
        std::fs::write(&f, text).unwrap();
    };
    let first = build(&w, "warm", "o1");
    // A layer blob is written past the page cache; the store takes a prefix
    // up only from one the cache holds (as it does once a build has read
    // chunks from it). Read it, as such a build would.
    std::fs::read(layer_in(&w.path().join("warm"), &first)).unwrap();
    grow("d5/f040.txt");
    let warm = build(&w, "warm", "o2");
    let l = &warm["layers"][0];
    let (resumed, reused, total) = (
        l["chunks"]["resumed"].as_u64().unwrap(),
        l["chunks"]["reused"].as_u64().unwrap(),
        l["chunks"]["total"].as_u64().unwrap(),
    );
    assert!(resumed >= 3, "the chunks before d5 are taken up: {l:#}");
    assert!(total - reused <= 2, "{l:#}");

    // The oracles: a cold build in an empty store gives the same image, and
    // gzip reads the layer back into the tar whose SHA-256 is its diff_id.
    let fresh = build(&w, "fresh", "o3");
    assert_eq!(digest(&warm), digest(&fresh));
    let blob = layer_in(&w.path().join("o2"), &warm);
    run(std::process::Command::new("gzip").arg("-t").arg(&blob));
    let tar_sum = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -dc '{}' | sha256sum", blob.display()))
        .output()
        .unwrap();
    assert!(tar_sum.status.success());
    let diff_id = l["diff_id"].as_str().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&tar_sum.stdout)
            .split(' ')
            .next()
            .unwrap(),
        diff_id.strip_prefix("sha256:").unwrap(),
        "the diff_id is the SHA-256 of the layer's tar"
    );
    skopeo_copy(&w.path().join("o2"), &w.path().join("copied"));
}

/// A first build of a tree no planning has seen reads each file under
/// 1 MiB once: the layer writer hashes it as it copies it
/// (`Content::Unhashed`). strace
/// counts the opens of one file. A build that asks a shared cache first
/// hashes while planning, as every build did before, and is the oracle:
/// the same image, the same provenance (every file named by its digest),
/// and the layer cache then knows the layer under the same key.
#[test]
fn a_first_build_reads_each_file_once_and_matches_a_build_that_hashes_first() {
    crate::support::apt::need("strace");
    let w = Work::new();
    write_tree(&w.path().join("tree"));
    w.write(
        "recipe.toml",
        "name = \"once\"\n\n[[layers]]\ntrees = [{ src = \"tree\", dest = \"/data\" }]\n",
    );
    let cache = unreachable_cache();
    // The stat cache trusts no file changed in the last two seconds.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let traced = |store: &str, out: &str, extra: &[&str]| -> (Value, usize, usize) {
        let mut args = vec![
            "build",
            "recipe.toml",
            "--json",
            "--provenance",
            "--out",
            out,
        ];
        args.extend(extra);
        let (doc, trace) = build_traced(&w, store, &args);
        let small = opens(&trace, "tree/d3/f150.txt");
        (doc, small, opens(&trace, "tree/big.bin"))
    };
    let (first, small, big) = traced("late", "o1", &[]);
    // A file of 1 MiB or more is hashed first all the same (its chunks are
    // looked up by its digest).
    assert_eq!(
        (small, big),
        (1, 2),
        "a first build opens each small file once"
    );
    let (early, small, big) = traced("early", "o2", &["--cache", &cache]);
    assert_eq!(
        (small, big),
        (2, 2),
        "planning hashes first when a shared cache is asked"
    );
    assert_eq!(digest(&first), digest(&early));
    let blob = |out: &str, doc: &Value| std::fs::read(layer_in(&w.path().join(out), doc)).unwrap();
    assert_eq!(blob("o1", &first), blob("o2", &early));
    let deps = |out: &str| {
        // The provenance sits beside the output.
        let path = w.path().join(format!("{out}.provenance.json"));
        let p: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        p["predicate"]["buildDefinition"]["resolvedDependencies"].clone()
    };
    let late_deps = deps("o1");
    assert_eq!(
        late_deps,
        deps("o2"),
        "the provenance names the same inputs"
    );
    assert!(
        late_deps.to_string().contains("tree/big.bin"),
        "every host file is a material: {late_deps:#}"
    );
    // The digests the layer writer took as it copied are coreutils'.
    for rel in ["tree/d3/f150.txt", "tree/d0/f000.txt", "tree/noise.bin"] {
        let sum = run(std::process::Command::new("sha256sum")
            .arg(rel)
            .current_dir(w.path()));
        let hex = sum[..64].to_string();
        let dep = late_deps
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["uri"].as_str().unwrap().ends_with(rel))
            .unwrap_or_else(|| panic!("{rel} is no material: {late_deps:#}"));
        assert_eq!(dep["digest"]["sha256"], hex.as_str(), "{rel}");
    }

    // The next build is a layer cache hit, reading no file: the layer
    // writer recorded what it hashed in the stat cache.
    let (again, small, big) = traced("late", "o3", &[]);
    assert_eq!(again["layers"][0]["source"], "local-cache", "{again:#}");
    assert_eq!((small, big), (0, 0), "a no-op build reads nothing");
    assert_eq!(digest(&again), digest(&first));
}
