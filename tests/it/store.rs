//! The store stays clean and heals: builds killed with SIGKILL leave nothing
//! once the next run opened the store (but a live build's temporary files
//! are never touched); a blob whose bytes no longer match its name is
//! removed and made again; `kiln store verify` and `kiln store prune` do
//! what the README says; concurrent builds to one `--out` all succeed.

use crate::support;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::support::registry::client::{kiln_ok, remote_digest, skopeo};
use crate::support::registry::{registry, Flavour};
use crate::support::{assert_success, last_digest, Work};
use sha2::Digest as _;

/// A recipe with one layer holding `mb` MiB of incompressible bytes (so the
/// layer takes long enough to write that a kill lands in the middle), and a
/// small layer of its own.
fn big_recipe(w: &Work, name: &str, mb: usize, seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(mb << 20);
    while bytes.len() < mb << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    w.write(&format!("{name}.bin"), bytes);
    w.write(
        &format!("{name}.toml"),
        format!(
            r#"name = "{name}"
[[layers]]
name = "small"
contents = [ {{ dest = "/etc/{name}", text = "{name}\n" }} ]
[[layers]]
name = "data"
files = [ {{ src = "{name}.bin", dest = "/data/{name}.bin" }} ]
"#
        ),
    );
}

/// A small recipe whose content is `text`.
fn small_recipe(w: &Work, name: &str, text: &str) {
    w.write(
        &format!("{name}.toml"),
        format!(
            "name = \"{name}\"\n[[layers]]\nname = \"only\"\ncontents = [ {{ dest = \"/etc/text\", text = \"{text}\\n\" }} ]\n"
        ),
    );
}

fn spawn_build(w: &Work, recipe: &str, out: &str) -> Child {
    w.kiln()
        .args(["build", recipe, "--out", out])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} failed");
    if sig == "-STOP" {
        // A stop lands on each thread in turn: a thread inside a write may
        // finish it after `kill` returns. Wait until every one is stopped.
        let tasks = format!("/proc/{}/task", child.id());
        let stopped = || {
            fs::read_dir(&tasks).unwrap().flatten().all(|t| {
                fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                    // `PID (COMM) STATE ...`: the state follows the last `)`.
                    stat.rsplit_once(')')
                        .is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
                })
            })
        };
        let start = std::time::Instant::now();
        while !stopped() {
            assert!(start.elapsed().as_secs() < 10, "the build did not stop");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// Temporary entries kiln left: in the store (anything in `tmp/`, and
/// `.kiln-tmp-*` in its other directories) and beside outputs in `out_dir`.
fn leftovers(w: &Work, out_dir: &Path) -> Vec<(PathBuf, u64)> {
    let cache = w.cache();
    let mut found = Vec::new();
    let mut look = |dir: PathBuf, all: bool| {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if all
                || ["kiln-tmp-", "kiln-old-", "kiln-lock"]
                    .iter()
                    .any(|k| name.contains(k))
            {
                found.push((e.path(), du(&e.path())));
            }
        }
    };
    look(cache.join("tmp"), true);
    for sub in ["layers", "dirs", "debs", ""] {
        look(cache.join(sub), false);
    }
    look(out_dir.to_path_buf(), false);
    found
}

/// Bytes under `p`; 0 for what vanished meanwhile (a live build's files come and go).
fn du(p: &Path) -> u64 {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| du(&e.path()))
            .sum(),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// Waits until `ready` holds or the child exits; true if `ready` held.
fn wait_for(child: &mut Child, ready: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        if ready() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("the build neither got there nor finished in 120 s");
}

/// A partial blob of at least 1 MiB in the store's `tmp/`.
fn partial_blob(w: &Work) -> bool {
    fs::read_dir(w.cache().join("tmp"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.metadata().is_ok_and(|m| m.is_file() && m.len() > 1 << 20))
}

#[test]
fn builds_killed_mid_write_leave_nothing_once_the_next_build_ran() {
    let w = Work::new();
    let out_dir = w.path().join("out");
    let (mut killed, mut mid_layer, mut mid_export) = (0, 0, 0);
    // Everything a killed build left, as found right after each kill.
    let mut seen: Vec<(PathBuf, u64)> = Vec::new();
    for round in 0..5u64 {
        // New bytes each round, so the layer is never a cache hit.
        big_recipe(&w, "big", 24, round + 1);
        // What earlier rounds left must not count as this round's progress.
        let earlier: Vec<PathBuf> = leftovers(&w, &out_dir)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        let fresh = |want_dir: &str, min: u64| {
            leftovers(&w, &out_dir).iter().any(|(p, n)| {
                !earlier.contains(p) && p.parent().unwrap().ends_with(want_dir) && *n >= min
            })
        };
        let mut child = spawn_build(&w, "big.toml", "out/img");
        let landed = if round % 2 == 0 {
            wait_for(&mut child, || fresh("tmp", 1 << 20))
        } else {
            wait_for(&mut child, || fresh("out", 0))
        };
        if landed {
            signal(&child, "-KILL");
            killed += 1;
            if round % 2 == 0 {
                mid_layer += 1;
            } else {
                mid_export += 1;
            }
        }
        child.wait().unwrap();
        seen.extend(
            leftovers(&w, &out_dir)
                .into_iter()
                .filter(|(p, _)| !earlier.contains(p)),
        );
    }
    let bytes: u64 = seen.iter().map(|(_, n)| n).sum();
    eprintln!(
        "killed {killed} builds ({mid_layer} mid-layer, {mid_export} mid-export): \
         {} leftovers, {bytes} bytes",
        seen.len()
    );
    for (path, size) in &seen {
        eprintln!("  {} ({size} bytes)", path.display());
    }
    assert!(mid_layer > 0 && mid_export > 0, "no kill landed mid-write");
    assert!(
        seen.iter().any(|(p, _)| p.starts_with(w.cache()))
            && seen.iter().any(|(p, _)| p.starts_with(&out_dir)),
        "killed builds left nothing to clean up in the store and beside the output: {seen:?}"
    );
    // The next build, of another recipe to another output beside it.
    small_recipe(&w, "next", "next");
    w.build("next.toml", "out/next");
    let after = leftovers(&w, &out_dir);
    assert!(after.is_empty(), "left after the next build: {after:?}");
    assert!(seen.iter().all(|(p, _)| !p.exists()));
    big_recipe(&w, "big", 24, 99);
    let digest = w.build("big.toml", "out/img");
    assert!(leftovers(&w, &out_dir).is_empty());
    // The killed builds' locks were reclaimed; finished runs remove their own.
    let locks: Vec<_> = fs::read_dir(w.cache().join("locks"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(locks.is_empty(), "lock files left: {locks:?}");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(w.path().join("out/img/index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
}

#[test]
fn a_live_builds_temporary_files_survive_another_run() {
    let w = Work::new();
    big_recipe(&w, "big", 24, 7);
    small_recipe(&w, "small", "other");
    let mut child = spawn_build(&w, "big.toml", "out/big");
    assert!(wait_for(&mut child, || partial_blob(&w)), "the build ended");
    // Stopped, it is alive but writes nothing: its files must stay as they are.
    signal(&child, "-STOP");
    let live = leftovers(&w, &w.path().join("out"));
    assert!(!live.is_empty());
    w.build("small.toml", "out/small");
    w.ok(&["store", "prune", "--max-size", "0"]);
    for (path, size) in &live {
        assert!(
            path.exists() && du(path) == *size,
            "another run touched the live build's `{}`",
            path.display()
        );
    }
    signal(&child, "-CONT");
    let out = child.wait_with_output().unwrap();
    assert_success(&out, "the stopped build");
    let digest = last_digest(&String::from_utf8(out.stdout).unwrap());
    // Prune ran while it was stopped; what it wrote is whole all the same.
    w.ok(&["store", "verify"]);
    let inspect = w.ok(&["inspect", "out/big", "--json"]);
    assert!(inspect.contains(&digest), "{inspect}");
}

/// Flips one bit in the middle of a file, in place, as a failing disk would.
fn flip_bit(path: &Path) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let at = f.metadata().unwrap().len() / 2;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
}

fn store_blobs(w: &Work) -> Vec<(String, PathBuf)> {
    let mut v: Vec<_> = fs::read_dir(w.cache().join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    v.sort();
    v
}

fn intact(hex: &str, path: &Path) -> bool {
    fs::read(path).is_ok_and(|b| support::registry::client::hex(&sha2::Sha256::digest(&b)) == hex)
}

#[test]
fn a_flipped_bit_in_any_store_blob_is_reported_and_healed_by_the_next_build() {
    let w = Work::new();
    big_recipe(&w, "big", 2, 3);
    let digest = w.build("big.toml", "out/img");
    let blobs = store_blobs(&w);
    assert!(blobs.len() >= 4, "two layers, config, manifest: {blobs:?}");
    for (_, path) in &blobs {
        flip_bit(path);
    }
    let out = w
        .kiln()
        .args(["build", "big.toml", "--out", "out/img"])
        .output()
        .unwrap();
    assert_success(&out, "the build after the damage");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(last_digest(&String::from_utf8(out.stdout).unwrap()), digest);
    for (hex, path) in &blobs {
        assert!(
            stderr.contains(&format!("`sha256:{hex}` was damaged")),
            "stderr does not name damaged blob {hex}:\n{stderr}"
        );
        assert!(intact(hex, path), "blob {hex} was not healed");
    }
    // Into a new output, so nothing comes from the previous one.
    assert_eq!(w.build("big.toml", "out/again"), digest);
    w.ok(&["store", "verify"]);
}

#[test]
fn push_sends_the_layouts_intact_blob_when_the_store_copy_is_damaged() {
    let r = registry(Flavour::Plain);
    let w = Work::new();
    big_recipe(&w, "pushed", 2, 11);
    let digest = w.build("pushed.toml", "img");
    for (_, path) in store_blobs(&w) {
        flip_bit(&path);
    }
    let reference = r.repo(&format!("kiln/healed-{}:v1", std::process::id()));
    // The push reads the layout's blobs, never the store's (issue 12).
    let (stdout, _) = kiln_ok(&w, &["push", "img", &reference], None);
    assert_eq!(last_digest(&stdout), digest);
    assert_eq!(remote_digest(r, &reference), digest);
    // skopeo checks every blob's digest as it copies.
    let copied = w.path().join("copied");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--src-no-creds",
        &format!("docker://{reference}"),
        &format!("oci:{}:v1", copied.display()),
    ]);
    for (hex, path) in support::registry::layout_blobs(&w.path().join("img")) {
        let hex = hex.trim_start_matches("sha256:");
        let pulled = copied.join("blobs/sha256").join(hex);
        assert_eq!(fs::read(&pulled).unwrap(), fs::read(&path).unwrap());
    }
}

#[test]
fn store_verify_removes_damaged_blobs_and_layer_records_and_exits_4() {
    let w = Work::new();
    big_recipe(&w, "big", 1, 5);
    let digest = w.build("big.toml", "out/img");
    assert!(w.ok(&["store", "verify"]).contains(": 0 damaged"));
    let blobs = store_blobs(&w);
    let (bad_hex, bad_path) = blobs
        .iter()
        .max_by_key(|(_, p)| fs::metadata(p).unwrap().len())
        .unwrap()
        .clone();
    flip_bit(&bad_path);
    let junk = w
        .cache()
        .join("layers")
        .join(format!("{}.json", "0".repeat(64)));
    fs::write(&junk, "{ not a record").unwrap();
    let out = w.kiln().args(["store", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains(&format!("removed  blob sha256:{bad_hex}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("removed  layer-record {}", junk.display())),
        "{stdout}"
    );
    assert!(String::from_utf8(out.stderr).unwrap().contains("error:"));
    assert!(!bad_path.exists() && !junk.exists());
    let json: serde_json::Value =
        serde_json::from_str(&w.ok(&["store", "verify", "--json"])).unwrap();
    assert_eq!(json["damaged"].as_array().unwrap().len(), 0);
    assert_eq!(json["blobs"].as_u64().unwrap() as usize, blobs.len() - 1);
    // The removed layer (its record named a blob now gone) is rebuilt.
    assert_eq!(w.build("big.toml", "out/fresh"), digest);
    assert!(intact(&bad_hex, &bad_path));
}

fn age(path: &Path, days: u64) {
    fs::File::open(path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(days * 86_400))
        .unwrap();
}

fn blob_set(w: &Work) -> std::collections::BTreeSet<String> {
    store_blobs(w).into_iter().map(|(h, _)| h).collect()
}

#[test]
fn store_prune_removes_what_no_recent_build_used_and_builds_still_work() {
    let w = Work::new();
    small_recipe(&w, "old", "old");
    let old = w.build("old.toml", "out/old");
    let old_blobs = blob_set(&w);
    for (_, p) in store_blobs(&w) {
        age(&p, 40);
    }
    small_recipe(&w, "new", "new");
    let new = w.build("new.toml", "out/new");
    let new_blobs: std::collections::BTreeSet<_> =
        blob_set(&w).difference(&old_blobs).cloned().collect();
    for (h, p) in store_blobs(&w) {
        if new_blobs.contains(&h) {
            age(&p, 10);
        }
    }
    // Nothing is older than 60 days.
    assert!(w
        .ok(&["store", "prune", "--older-than", "60d"])
        .contains("removed  0 blobs"));
    let stdout = w.ok(&["store", "prune", "--older-than", "30d", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["removed"].as_u64().unwrap() as usize,
        old_blobs.len()
    );
    assert_eq!(blob_set(&w), new_blobs);
    assert!(report["records_removed"].as_u64().unwrap() >= 1, "{report}");
    // A build after the prune makes what was removed again.
    assert_eq!(w.build("old.toml", "out/old2"), old);
    // Least recently used first: `old` was just used, `new` 10 days ago.
    let new_size: u64 = store_blobs(&w)
        .iter()
        .filter(|(h, _)| new_blobs.contains(h))
        .map(|(_, p)| fs::metadata(p).unwrap().len())
        .sum();
    let total: u64 = store_blobs(&w)
        .iter()
        .map(|(_, p)| fs::metadata(p).unwrap().len())
        .sum();
    let max = (total - new_size).to_string();
    w.ok(&["store", "prune", "--max-size", &max]);
    assert_eq!(
        blob_set(&w),
        old_blobs,
        "the least recently used went first"
    );
    // Blobs used in the last second might belong to a live build: age them.
    for (_, p) in store_blobs(&w) {
        age(&p, 1);
    }
    w.ok(&["store", "prune", "--max-size", "0"]);
    assert!(blob_set(&w).is_empty());
    assert_eq!(w.build("new.toml", "out/new2"), new);
    let (code, stderr) = w.fails(&["store", "prune"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, stderr) = w.fails(&["store", "prune", "--older-than", "30"]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn prune_never_removes_what_a_running_build_uses() {
    let w = Work::new();
    // The small layer is in the store, last used long ago.
    big_recipe(&w, "big", 24, 21);
    small_recipe(&w, "tiny", "tiny");
    w.write(
        "first.toml",
        "name = \"first\"\n[[layers]]\nname = \"small\"\ncontents = [ { dest = \"/etc/big\", text = \"big\\n\" } ]\n",
    );
    w.build("first.toml", "out/first");
    for (_, p) in store_blobs(&w) {
        age(&p, 40);
    }
    let mut child = w
        .kiln()
        .args([
            "build", "big.toml", "--out", "out/big", "--jobs", "1", "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_for(&mut child, || partial_blob(&w)), "the build ended");
    signal(&child, "-STOP");
    // The build took the small layer from the cache before starting on the big one.
    w.ok(&["store", "prune", "--older-than", "1d", "--max-size", "0"]);
    signal(&child, "-CONT");
    let out = child.wait_with_output().unwrap();
    assert_success(&out, "the build that prune ran beside");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains("damaged"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["layers"][0]["cached"], true,
        "the small layer came from the store: {report}"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&w.ok(&["inspect", "out/big", "--json"])).unwrap();
    let text = inspect.to_string();
    for layer in inspect["images"][0]["layers"].as_array().unwrap() {
        let d = layer["digest"].as_str().unwrap();
        assert!(text.contains(d));
        assert!(w
            .path()
            .join("out/big/blobs/sha256")
            .join(&d[7..])
            .is_file());
    }
}

#[test]
fn concurrent_builds_to_one_out_all_succeed_and_the_last_wins_whole() {
    let w = Work::new();
    let writers = 4;
    let rounds = 20;
    let mut digests = Vec::new();
    for i in 0..writers {
        small_recipe(&w, &format!("r{i}"), &format!("writer {i}"));
        // Warm the store so the builds race in the export.
        digests.push(w.build(&format!("r{i}.toml"), &format!("warm/r{i}")));
    }
    let results: Vec<(bool, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|i| {
                let w = &w;
                s.spawn(move || {
                    let mut v = Vec::new();
                    for _ in 0..rounds {
                        let out = w
                            .kiln()
                            .args(["build", &format!("r{i}.toml"), "--out", "out/img"])
                            .output()
                            .unwrap();
                        v.push((
                            out.status.success(),
                            String::from_utf8_lossy(&out.stderr).into_owned(),
                        ));
                    }
                    v
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let ok = results.iter().filter(|(s, _)| *s).count();
    eprintln!(
        "{ok} of {} concurrent builds to one --out succeeded",
        results.len()
    );
    let failures: Vec<_> = results.iter().filter(|(s, _)| !s).map(|(_, e)| e).collect();
    assert!(failures.is_empty(), "failed builds: {failures:#?}");
    // Whole: skopeo reads every blob and checks its digest.
    let img = w.path().join("out/img");
    skopeo(&[
        "copy",
        &format!("oci:{}", img.display()),
        &format!("oci:{}:x", w.path().join("copy").display()),
    ]);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(img.join("index.json")).unwrap()).unwrap();
    let top = index["manifests"][0]["digest"].as_str().unwrap();
    assert!(
        digests.iter().any(|d| d == top),
        "{top} is none of {digests:?}"
    );
    let beside: Vec<_> = fs::read_dir(w.path().join("out"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(beside, ["img"], "left beside the output");
}

#[test]
fn readme_documents_every_store_flag() {
    let w = Work::new();
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for sub in ["verify", "prune"] {
        let help = w.ok(&["store", sub, "--help"]);
        let flags: Vec<&str> = help
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|t| t.starts_with("--") && *t != "--help")
            .collect();
        assert!(!flags.is_empty() || sub == "verify", "{help}");
        for flag in flags {
            assert!(
                readme.contains(&format!("kiln store {sub}")) && readme.contains(flag),
                "README lacks `kiln store {sub} {flag}`"
            );
        }
    }
}

#[test]
fn push_checks_what_it_sends_and_never_sends_a_damaged_store_blob() {
    // Through the library: a store damaged after the image was put in it,
    // with no layout for `kiln push` to heal it from.
    let r = registry(Flavour::Plain);
    let w = Work::new();
    big_recipe(&w, "unsent", 2, 13);
    let digest = w.build("unsent.toml", "img");
    let (layer_hex, layer_path) = store_blobs(&w)
        .into_iter()
        .max_by_key(|(_, p)| fs::metadata(p).unwrap().len())
        .unwrap();
    flip_bit(&layer_path);
    let store = kiln::store::Store::open(w.cache()).unwrap();
    let reference = r.repo(&format!("kiln/unsent-{}:v1", std::process::id()));
    let target = kiln::registry::parse_reference(&reference).unwrap();
    let registry =
        kiln::registry::Registry::new(kiln::registry::Options::default(), &[&target]).unwrap();
    let top = kiln::image::Stored {
        digest: digest.parse().unwrap(),
        size: fs::metadata(w.cache().join("blobs/sha256").join(&digest[7..]))
            .unwrap()
            .len(),
        media_type: kiln::image::MANIFEST_MEDIA_TYPE,
    };
    let err = registry.push(&store, &top, &target, &[]).unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(err.to_string().contains(&layer_hex), "{err}");
    assert!(!layer_path.exists(), "the damaged store copy was kept");
    assert!(
        !r.blob_data(&format!("sha256:{layer_hex}")).exists(),
        "the registry received the damaged blob"
    );
}

/// Blobs of the previous output are hard-linked into the next one only when
/// intact: a warm rebuild trusts what it checked before (`blob-stamps`), but
/// a write to a blob of the output moves its mtime, and the damaged file is
/// replaced by a verified copy rather than linked. Checked with skopeo,
/// which verifies every blob of the layout it copies.
#[test]
fn a_damaged_blob_of_the_previous_output_is_not_linked_into_the_next() {
    let w = Work::new();
    big_recipe(&w, "big", 4, 7);
    let digest = w.build("big.toml", "out/img");
    // Twice more: the second rebuild goes by the stamps alone.
    assert_eq!(w.build("big.toml", "out/img"), digest);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(w.build("big.toml", "out/img"), digest);
    let blobs = w.path().join("out/img/blobs/sha256");
    let largest = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    flip_bit(&largest);
    assert_eq!(w.build("big.toml", "out/img"), digest);
    let bytes = fs::read(&largest).unwrap();
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&bytes)),
        largest.file_name().unwrap().to_string_lossy(),
        "the damaged blob was linked into the new output"
    );
    let src = format!("oci:{}", w.path().join("out/img").display());
    let dst = format!("oci:{}", w.path().join("copy").display());
    skopeo(&["copy", &src, &dst]);
}

/// A disk that fills up in the middle of a layer: the build fails, naming
/// the reason and the path, with a non-zero exit; no output appears; the
/// store keeps no temporary file and only blobs whose bytes match their
/// names; and once there is room, the next build gives the digest a build
/// elsewhere gives. Store and output share a 16 MiB tmpfs (which takes
/// `O_DIRECT`, so the layer's direct writes and their thread are what
/// fail), mounted in a mount namespace of the test's own.
#[test]
fn a_full_disk_fails_the_build_cleanly_and_the_next_build_with_room_succeeds() {
    support::need_root("mounting a small tmpfs needs root");
    let w = Work::new();
    big_recipe(&w, "full", 24, 11);
    let expected = w.build("full.toml", "elsewhere");
    let disk = w.path().join("disk");
    fs::create_dir(&disk).unwrap();
    let script = r#"
mount -t tmpfs -o size=16m kiln-full "$DISK" || exit 90
KILN_CACHE="$DISK/store" "$KILN" build full.toml --out "$DISK/out" >first.out 2>first.err
echo $? >first.code
(cd "$DISK" && find . -mindepth 1 -printf '%P\n' | sort) >after-first
for f in "$DISK"/store/blobs/sha256/*; do
    echo "$(basename "$f") $(sha256sum <"$f" | cut -d' ' -f1)"
done >blobs
mount -o remount,size=128m "$DISK" || exit 91
KILN_CACHE="$DISK/store" "$KILN" build full.toml --out "$DISK/out" >second.out 2>second.err
echo $? >second.code
"#;
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", script])
        .current_dir(w.path())
        .env("DISK", &disk)
        .env("KILN", support::kiln_bin())
        .env("KILN_NO_PROGRESS", "1")
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert_success(&out, "the script in its own mount namespace");
    let read = |f: &str| fs::read_to_string(w.path().join(f)).unwrap();

    let err = read("first.err");
    assert_ne!(
        read("first.code").trim(),
        "0",
        "a full disk fails the build"
    );
    assert!(
        err.contains("No space left on device") && err.contains(&*disk.to_string_lossy()),
        "the error says why and where: {err}"
    );
    assert!(
        err.contains("hint: free space on that filesystem"),
        "the error says what to do: {err}"
    );
    let after: Vec<String> = read("after-first").lines().map(String::from).collect();
    assert!(
        !after.iter().any(|p| p == "out" || p.starts_with("out/")),
        "no output appears: {after:?}"
    );
    assert!(
        !after
            .iter()
            .any(|p| p.starts_with("store/tmp/") || p.contains("kiln-tmp-")),
        "no temporary file is left: {after:?}"
    );
    for line in read("blobs").lines() {
        let (name, actual) = line.split_once(' ').unwrap();
        assert_eq!(name, actual, "every stored blob is intact");
    }

    assert_eq!(read("second.code").trim(), "0", "{}", read("second.err"));
    assert_eq!(last_digest(&read("second.out")), expected);
}
