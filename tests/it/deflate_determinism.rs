//! A gzip layer's bytes depend on neither the CPU's features nor the number
//! of compression threads.
//!
//! libdeflate, kiln's deflate, is built for baseline x86-64 and picks no
//! routine by CPU feature when compressing (its SIMD code, chosen at build
//! time, only clears and shifts the match finder's tables); crc32fast picks
//! PCLMULQDQ for the gzip trailer's CRC-32 and sha2 SHA-NI for the digests.
//! Those are meant to compute the same results as the portable code; this
//! proves it on the real binary: the same recipe is
//! built natively (AVX2 on the machines kiln is developed on) and under
//! user-mode `qemu-x86_64 -cpu qemu64`, a baseline x86-64 without SSE4,
//! AVX, BMI, PCLMULQDQ or SHA-NI, and with 1, 2 and 7 threads
//! (`KILN_THREADS`); every image digest must be the same. A probe run of
//! this test binary under the same qemu shows that the emulated CPU really
//! lacks those features, so the portable paths are the ones exercised.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::{assert_success, have, kiln_bin, last_digest};

const QEMU: &str = "qemu-x86_64";
const PROBE_ENV: &str = "KILN_TEST_CPU_PROBE";
const FEATURES: [&str; 7] = [
    "sse4.1",
    "sse4.2",
    "avx",
    "avx2",
    "bmi2",
    "pclmulqdq",
    "sha",
];

/// Prints the CPU features the running process sees, when asked to by the
/// test below (run natively and under qemu); does nothing otherwise.
#[test]
fn cpu_feature_probe() {
    if std::env::var_os(PROBE_ENV).is_none() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let seen = [
            std::is_x86_feature_detected!("sse4.1"),
            std::is_x86_feature_detected!("sse4.2"),
            std::is_x86_feature_detected!("avx"),
            std::is_x86_feature_detected!("avx2"),
            std::is_x86_feature_detected!("bmi2"),
            std::is_x86_feature_detected!("pclmulqdq"),
            std::is_x86_feature_detected!("sha"),
        ];
        for (name, on) in FEATURES.iter().zip(seen) {
            println!("cpu-feature {name}={on}");
        }
    }
}

/// The features `cpu_feature_probe` reports when this test binary runs with
/// `wrapper` in front of it.
fn features(wrapper: &[&str]) -> Vec<(String, bool)> {
    let me = std::env::current_exe().unwrap();
    let mut c = match wrapper.split_first() {
        None => Command::new(&me),
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(&me);
            c
        }
    };
    c.args([
        "deflate_determinism::cpu_feature_probe",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(PROBE_ENV, "1");
    let out = c.output().unwrap();
    assert_success(&out, &format!("the CPU probe under {wrapper:?}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let found: Vec<(String, bool)> = text
        .lines()
        // The harness may print `test NAME ... ` on the same line first.
        .filter_map(|l| l.split_once("cpu-feature ").map(|(_, f)| f))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v == "true")
        })
        .collect();
    assert_eq!(found.len(), FEATURES.len(), "probe printed:\n{text}");
    found
}

/// A 64-bit generator (splitmix64): the tree is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// About 6 MiB in files that give deflate every kind of work: text with a
/// skewed vocabulary (short and medium matches, lazy evaluation), random bytes
/// (no matches, literals only), long runs and a file repeated at a distance
/// beyond the 32 KiB window (matches of the 258-byte maximum, the slide of
/// the hash table), so that several 1 MiB chunks reach every compressor path.
fn write_tree(root: &Path) {
    let mut rng = Rng(20261130);
    let words: Vec<String> = (0..3000)
        .map(|_| {
            let len = 2 + rng.below(9) as usize;
            (0..len)
                .map(|_| (b'a' + rng.below(26) as u8) as char)
                .collect()
        })
        .collect();
    let mut text = String::new();
    while text.len() < 2 << 20 {
        // Zipf-like: low indexes far more often.
        let r = rng.below(1 << 20) as f64 / (1u64 << 20) as f64;
        let i = ((words.len() as f64).powf(r) as usize).min(words.len() - 1);
        text.push_str(&words[i]);
        text.push(if rng.below(12) == 0 { '\n' } else { ' ' });
    }
    let random: Vec<u8> = (0..(1 << 20) + 4321)
        .flat_map(|_| rng.next().to_le_bytes())
        .take((1 << 20) + 4321)
        .collect();
    let mut runs = Vec::new();
    for i in 0..4096u32 {
        let len = 1 + rng.below(3000) as usize;
        runs.extend(std::iter::repeat_n((i % 7) as u8, len));
    }
    // A 200 KiB block, then 100 KiB of noise, then the block again: its
    // second copy lies beyond the window, the slide has happened meanwhile.
    let block: Vec<u8> = text.as_bytes()[..200 << 10].to_vec();
    let mut far = block.clone();
    far.extend(random[..100 << 10].iter());
    far.extend(&block);

    let files: [(&str, &[u8]); 5] = [
        ("text/words.txt", text.as_bytes()),
        ("bin/random.bin", &random),
        ("runs/zeros-and-runs", &runs),
        ("far/repeat", &far),
        ("small/a.txt", b"hello\n"),
    ];
    for (rel, bytes) in files {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

/// The image digests of the two recipes below, at format version 6.
const GOLDEN_GZIP: &str = "sha256:eeb218c1a76972977c0996013699ab4661741f6861557c73dbacdf6f7d8d1752";
const GOLDEN_ZSTD: &str = "sha256:1e8ef5e38c81dc0aef5aa929e3d4c24a5d9affca4bfa3d41b05504d6fbdaa1a9";

/// 24 MiB of text from a small vocabulary, in 24 files of 1 MiB.
fn write_big(root: &Path) {
    let mut rng = Rng(7);
    let words: Vec<String> = (0..500)
        .map(|i| format!("w{i}x{}", rng.below(1000)))
        .collect();
    std::fs::create_dir_all(root).unwrap();
    for f in 0..24 {
        let mut text = String::with_capacity(1 << 20);
        while text.len() < 1 << 20 {
            text.push_str(&words[rng.below(words.len() as u64) as usize]);
            text.push(' ');
        }
        std::fs::write(root.join(format!("part-{f:02}.txt")), text).unwrap();
    }
}

/// `kiln build` of `recipe` in `dir` into a fresh store and `out`, with
/// `KILN_THREADS=threads`, run under `wrapper`; returns the image digest.
fn build(dir: &Path, recipe: &str, out: &str, threads: &str, wrapper: &[&str]) -> String {
    let bin = kiln_bin();
    let mut c = match wrapper.split_first() {
        None => Command::new(&bin),
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(&bin);
            c
        }
    };
    // A store of its own per build: the layer cache's key does not name the
    // thread count, so a shared store would answer from the first build.
    c.current_dir(dir)
        .env("KILN_CACHE", dir.join(format!("cache-{out}")))
        .env("KILN_NO_PROGRESS", "1")
        .env("KILN_THREADS", threads)
        .env_remove("SOURCE_DATE_EPOCH")
        .args(["build", recipe, "--out", out]);
    let o = c.output().unwrap();
    assert_success(
        &o,
        &format!("kiln build {recipe} under {wrapper:?} with {threads} threads"),
    );
    last_digest(&String::from_utf8(o.stdout).unwrap())
}

fn read_json(p: PathBuf) -> Value {
    serde_json::from_slice(&std::fs::read(&p).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn blob(out: &Path, digest: &str) -> PathBuf {
    out.join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

#[test]
#[cfg(target_arch = "x86_64")]
fn gzip_layer_bytes_do_not_depend_on_cpu_features_or_threads() {
    assert!(
        have(QEMU),
        "`{QEMU}` is missing: install qemu-user (scripts/test.sh does)"
    );

    // The emulated CPU really lacks what the native one may use.
    let emulated = features(&[QEMU, "-cpu", "qemu64"]);
    for (name, on) in &emulated {
        assert!(!on, "qemu64 should not offer {name}: {emulated:?}");
    }
    let native = features(&[]);
    let has = |n: &str| native.iter().any(|(k, on)| k == n && *on);
    if !(has("avx2") && has("bmi2")) {
        eprintln!(
            "note: this CPU lacks AVX2/BMI2 ({native:?}), so the native build takes \
             the same code paths as qemu64 and the comparison proves less"
        );
    }

    let work = tempfile::Builder::new()
        .prefix("kiln-deflate-")
        .tempdir()
        .unwrap();
    let dir = work.path();
    write_tree(&dir.join("tree"));
    write_big(&dir.join("big"));
    std::fs::write(
        dir.join("recipe.toml"),
        "name = \"deflate\"\n\n[[layers]]\ntrees = [{ src = \"tree\", dest = \"/data\" }]\n",
    )
    .unwrap();
    // zstd's multi-threaded mode cuts its input into jobs of several MiB:
    // 24 MiB more makes several, so the worker count could matter.
    std::fs::write(
        dir.join("zstd.toml"),
        "name = \"zstd\"\ncompression = \"zstd\"\n\n[[layers]]\ntrees = [\n  { src = \"tree\", dest = \"/data\" },\n  { src = \"big\", dest = \"/big\" },\n]\n",
    )
    .unwrap();

    for (recipe, golden) in [("recipe.toml", GOLDEN_GZIP), ("zstd.toml", GOLDEN_ZSTD)] {
        let reference = build(dir, recipe, &format!("{recipe}-t1"), "1", &[]);
        for threads in ["2", "7"] {
            assert_eq!(
                build(dir, recipe, &format!("{recipe}-t{threads}"), threads, &[]),
                reference,
                "{recipe}: {threads} threads gave another image than 1 thread"
            );
        }
        for threads in ["1", "7"] {
            assert_eq!(
                build(
                    dir,
                    recipe,
                    &format!("{recipe}-q{threads}"),
                    threads,
                    &[QEMU, "-cpu", "qemu64"]
                ),
                reference,
                "{recipe}: under qemu64 ({threads} threads) the image differs from the native one"
            );
        }
        // The bytes are part of kiln's format: a change here moves every
        // multi-chunk layer's digest. Change the constant only together with
        // FORMAT_VERSION (src/plan.rs) and a CHANGELOG note.
        assert_eq!(reference, golden, "{recipe}: the format moved");
    }

    // The layer is one gzip member whose content is the tar its diff_id names,
    // and it spans several 1 MiB chunks (so the thread counts mattered).
    let out = dir.join("recipe.toml-t1");
    let index = read_json(out.join("index.json"));
    let manifest = read_json(blob(
        &out,
        index["manifests"][0]["digest"].as_str().unwrap(),
    ));
    let config = read_json(blob(&out, manifest["config"]["digest"].as_str().unwrap()));
    let layer = &manifest["layers"][0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let gz = std::fs::read(blob(&out, layer["digest"].as_str().unwrap())).unwrap();
    let mut decoder = flate2::bufread::GzDecoder::new(&gz[..]);
    let mut tar = Vec::new();
    decoder.read_to_end(&mut tar).unwrap();
    let rest = decoder.into_inner();
    assert!(
        rest.is_empty(),
        "{} bytes follow the first gzip member: a layer is one member",
        rest.len()
    );
    assert!(
        tar.len() > 5 << 20,
        "the tar spans several chunks: {}",
        tar.len()
    );
    let diff_id = format!("sha256:{}", sha256_hex(&tar));
    assert_eq!(config["rootfs"]["diff_ids"][0].as_str().unwrap(), diff_id);

    // Outside decoders agree: GNU gzip reads the gzip layer (stored pieces
    // of the random file included) and the zstd command the zstd one, each
    // giving the tar its diff_id names.
    let zstd_out = dir.join("zstd.toml-t1");
    let zindex = read_json(zstd_out.join("index.json"));
    let zmanifest = read_json(blob(
        &zstd_out,
        zindex["manifests"][0]["digest"].as_str().unwrap(),
    ));
    let zconfig = read_json(blob(
        &zstd_out,
        zmanifest["config"]["digest"].as_str().unwrap(),
    ));
    for (tool, layout, layer, config) in [
        ("gzip", &out, layer, &config),
        ("zstd", &zstd_out, &zmanifest["layers"][0], &zconfig),
    ] {
        let path = blob(layout, layer["digest"].as_str().unwrap());
        let o = Command::new(tool).arg("-dc").arg(&path).output().unwrap();
        assert_success(&o, &format!("{tool} -dc of the layer"));
        assert_eq!(
            format!("sha256:{}", sha256_hex(&o.stdout)),
            config["rootfs"]["diff_ids"][0].as_str().unwrap(),
            "{tool} decodes the layer to another tar than its diff_id"
        );
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn a_bad_thread_count_is_refused_naming_the_variable() {
    let w = crate::support::Work::new();
    w.write("recipe.toml", "name = \"t\"\n");
    for bad in ["abc", "-1", "100000"] {
        let out = w
            .kiln()
            .env("KILN_THREADS", bad)
            .args(["build", "recipe.toml", "--out", "out"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "KILN_THREADS={bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("`{bad}` is not a number of threads"))
                && err.contains("KILN_THREADS"),
            "KILN_THREADS={bad}: {err}"
        );
    }
}

/// A layer of many short matches: 4-byte words drawn from 16, which
/// libdeflate's fastest level writes as several blocks per 64 KiB span, so
/// kiln finds each span's end by reading every block back (the unit test
/// `layer::deflate::tests::spans_of_several_blocks_are_read_back_and_join`
/// shows such data takes that path). Two outside decoders, GNU gzip and
/// CPython's zlib, read the layer to the tar its diff_id names.
#[test]
fn a_layer_of_many_short_matches_reads_back_in_outside_decoders() {
    let w = crate::support::Work::new();
    let mut rng = Rng(4);
    let vocabulary: Vec<[u8; 4]> = (0..16).map(|_| (rng.next() as u32).to_le_bytes()).collect();
    let words: Vec<u8> = (0..(3 << 20) / 4)
        .flat_map(|_| vocabulary[rng.below(16) as usize])
        .collect();
    w.write("tree/words", words);
    w.write(
        "recipe.toml",
        "name = \"words\"\n\n[[layers]]\ntrees = [{ src = \"tree\", dest = \"/data\" }]\n",
    );
    w.build("recipe.toml", "out");
    let out = w.path().join("out");
    let index = read_json(out.join("index.json"));
    let manifest = read_json(blob(
        &out,
        index["manifests"][0]["digest"].as_str().unwrap(),
    ));
    let config = read_json(blob(&out, manifest["config"]["digest"].as_str().unwrap()));
    let diff_id = config["rootfs"]["diff_ids"][0]
        .as_str()
        .unwrap()
        .to_string();
    let layer = blob(&out, manifest["layers"][0]["digest"].as_str().unwrap());
    let gzip = Command::new("gzip")
        .arg("-dc")
        .arg(&layer)
        .output()
        .unwrap();
    assert_success(&gzip, "gzip -dc of the layer");
    assert!(gzip.stdout.len() > 3 << 20, "the tar holds the words");
    assert_eq!(
        format!("sha256:{}", sha256_hex(&gzip.stdout)),
        diff_id,
        "GNU gzip"
    );
    let python = Command::new("python3")
        .args([
            "-c",
            "import gzip, hashlib, sys; print('sha256:' + hashlib.sha256(gzip.open(sys.argv[1]).read()).hexdigest())",
        ])
        .arg(&layer)
        .output()
        .unwrap();
    assert_success(&python, "python3's gzip module on the layer");
    assert_eq!(
        String::from_utf8_lossy(&python.stdout).trim(),
        diff_id,
        "CPython's zlib"
    );
}
