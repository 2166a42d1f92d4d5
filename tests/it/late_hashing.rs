//! Late hashing: a first build that leaves a tree's files for the layer
//! writer to hash must give what a build that hashes first gives (the
//! oracle: `--cache` at a port nobody answers at, which turns late hashing
//! off), must not cost a warm store its hits, and must not make the stat
//! cache vouch for a file it should not. (Found by a review, each of these
//! failed once.)

use std::path::Path;

use serde_json::Value;

use crate::support::*;

/// A `--cache` nobody answers at: late hashing off.
fn closed_cache() -> String {
    unreachable_cache()
}

/// `kiln build RECIPE --json --provenance --out OUT` with the store
/// `store`, in `dir`: the report and the provenance's resolvedDependencies.
fn build_in(
    w: &Work,
    dir: &Path,
    recipe: &str,
    store: &str,
    out: &str,
    extra: &[&str],
) -> (Value, Value) {
    let o = w
        .kiln()
        .current_dir(dir)
        .env("KILN_CACHE", w.path().join(store))
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["build", recipe, "--json", "--provenance", "--out", out])
        .args(extra)
        .output()
        .unwrap();
    assert_success(&o, &format!("kiln build (store {store})"));
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    let p: Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{out}.provenance.json"))).unwrap())
            .unwrap();
    let deps = p["predicate"]["buildDefinition"]["resolvedDependencies"].clone();
    (doc, deps)
}

/// `recipe.toml` in `w` built twice, in a store of its own each: as it
/// is (late hashing where it applies) and asking a cache nobody answers
/// (hashing first).
fn late_and_early(w: &Work) -> ((Value, Value), (Value, Value)) {
    let late = build_in(w, w.path(), "recipe.toml", "late", "o1", &[]);
    let cache = closed_cache();
    let early = build_in(
        w,
        w.path(),
        "recipe.toml",
        "early",
        "o2",
        &["--cache", &cache],
    );
    (late, early)
}

fn uris(deps: &Value) -> Vec<String> {
    deps.as_array()
        .unwrap()
        .iter()
        .map(|d| d["uri"].as_str().unwrap().to_string())
        .collect()
}

/// Hard links inside a tree: the provenance names every path of the tree
/// as a material, the later links included, whether the tree was hashed
/// first or late (`kiln reproduce` compares these names with a fresh
/// resolve, which names every link).
#[test]
fn provenance_names_every_hard_link() {
    let w = Work::new();
    w.write("tree/a", "linked content\n");
    std::fs::hard_link(w.path().join("tree/a"), w.path().join("tree/b")).unwrap();
    w.write("tree/c", "other\n");
    w.write(
        "recipe.toml",
        "name = \"links\"\n\n[[layers]]\ntrees = [{ src = \"tree\", dest = \"/t\" }]\n",
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let ((late, late_deps), (early, early_deps)) = late_and_early(&w);
    assert_eq!(late["digest"], early["digest"]);
    assert_eq!(
        uris(&late_deps),
        uris(&early_deps),
        "late: {late_deps:#}\nearly: {early_deps:#}"
    );
}

/// A host file that a `files` item names and that is also a hard link in
/// a tree of the same layer: the image must not depend on whether the tree
/// was hashed first or late (the same recipe and inputs, another store).
/// Files just written (as a build step leaves them) are not in the stat
/// cache, so the tree is late.
#[test]
fn a_link_shared_with_a_files_item_gives_the_same_image() {
    let w = Work::new();
    w.write("keep/a", "shared by two names\n");
    std::fs::create_dir_all(w.path().join("tree")).unwrap();
    std::fs::hard_link(w.path().join("keep/a"), w.path().join("tree/a")).unwrap();
    w.write("tree/other", "x\n");
    w.write(
        "recipe.toml",
        "name = \"mixed\"\n\n[[layers]]\nfiles = [{ src = \"tree/a\", dest = \"/x\" }]\ntrees = [{ src = \"tree\", dest = \"/t\" }]\n",
    );
    let ((late, _), (early, _)) = late_and_early(&w);
    assert_eq!(
        late["digest"], early["digest"],
        "the same recipe and inputs give two images: late {late:#}\nearly {early:#}"
    );
}

/// A store that already holds a tree's layer, built where no tree mark was
/// made (a build with `--cache`, as CI runs it; the same goes for a store
/// filled before late hashing, or by a recipe for several platforms): a
/// moved checkout of the same files is a cache hit, not a rebuild.
#[test]
fn a_moved_checkout_is_a_hit_in_a_store_without_marks() {
    let w = Work::new();
    for i in 0..50 {
        w.write(
            &format!("a/tree/d{}/f{i}", i % 5),
            format!("file {i}\n").repeat(100),
        );
    }
    w.write(
        "a/recipe.toml",
        "name = \"moved\"\n\n[[layers]]\ntrees = [{ src = \"tree\", dest = \"/t\" }]\n",
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (first, _) = build_in(
        &w,
        &w.path().join("a"),
        "recipe.toml",
        "s",
        "o1",
        &["--cache", &closed_cache()],
    );
    assert_eq!(first["layers"][0]["source"], "built");
    run(std::process::Command::new("cp")
        .args(["-r", "a", "b"])
        .current_dir(w.path()));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (moved, _) = build_in(&w, &w.path().join("b"), "recipe.toml", "s", "o2", &[]);
    assert_eq!(moved["digest"], first["digest"]);
    assert_eq!(
        moved["layers"][0]["source"], "local-cache",
        "the layer is in the store under the same key: {moved:#}"
    );
}

/// Twenty text files in `tree/` and the recipe `recipe` (for a traced
/// build: strace must be installed).
fn twenty_files(recipe: &str) -> Work {
    crate::support::apt::need("strace");
    let w = Work::new();
    for i in 0..20 {
        w.write(&format!("tree/f{i:02}"), format!("file {i}\n").repeat(1000));
    }
    w.write("recipe.toml", recipe);
    w
}

/// Two layers of one recipe with the same tree: the layer is built once
/// and each file read twice at most (planning once, the writer once), as
/// a build that hashes first does.
#[test]
fn two_layers_of_one_tree_read_each_file_twice_at_most() {
    let layer = "[[layers]]\ntrees = [{ src = \"tree\", dest = \"/t\" }]\n";
    let w = twenty_files(&format!("name = \"twice\"\n\n{layer}\n{layer}"));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let traced = |store: &str, out: &str, extra: &[&str]| -> usize {
        let mut args = vec!["build", "recipe.toml", "--json", "--out", out];
        args.extend(extra);
        opens(&build_traced(&w, store, &args).1, "tree/f07")
    };
    let early = traced("early", "o2", &["--cache", &closed_cache()]);
    let late = traced("late", "o1", &[]);
    assert!(
        late <= early,
        "late hashing opens a file {late} times, hashing first {early}"
    );
}

/// A fresh clone of a tree of big files with one file added (a new shape,
/// no file in the stat cache: every CI run of a commit that adds a file):
/// the rebuild reuses the unchanged files' chunks from the store as a
/// build that hashes first does, rather than compressing them again.
#[test]
fn a_clone_with_one_file_added_reuses_the_chunks_of_the_others() {
    let w = Work::new();
    for i in 0..6u32 {
        let body: Vec<u8> = (0..3u32 << 20)
            .map(|j| b"abcdefghijklmnop\n"[((j ^ (j >> 9) ^ i) % 17) as usize])
            .collect();
        let p = w.path().join(format!("a/tree/big{i}.bin"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    w.write(
        "a/recipe.toml",
        "name = \"clone\"\n\n[[layers]]\ntrees = [{ src = \"tree\", dest = \"/t\" }]\n",
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let a = w.path().join("a");
    for store in ["late", "early"] {
        build_in(&w, &a, "recipe.toml", store, &format!("o-{store}"), &[]);
    }
    let mut reused = Vec::new();
    for (store, extra) in [
        ("late", vec![]),
        ("early", vec!["--cache".to_string(), closed_cache()]),
    ] {
        let clone = w.path().join(format!("clone-{store}"));
        run(std::process::Command::new("cp")
            .args(["-r", "a"])
            .arg(&clone)
            .current_dir(w.path()));
        std::fs::write(clone.join("tree/zz-new.txt"), "one more file\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let (doc, _) = build_in(&w, &clone, "recipe.toml", store, "o2", &extra);
        let c = &doc["layers"][0]["chunks"];
        eprintln!("{store}: {c}");
        reused.push(c["reused"].as_u64().unwrap());
    }
    assert_eq!(
        reused[0], reused[1],
        "chunks reused: late hashing {}, hashing first {}",
        reused[0], reused[1]
    );
}

/// Files written just before a first build are hashed as they are copied,
/// but the stat cache must not vouch for them: a write in the same
/// timestamp tick could go unseen. The rule is the planning's (no stamp
/// younger than two seconds when read), measured when the file was read,
/// not when the build ends. So the next build, two seconds on, reads them.
#[test]
fn files_fresh_when_read_late_are_read_again_by_the_next_build() {
    let w = twenty_files(
        "name = \"fresh\"\n\n[[layers]]\ntrees = [{ src = \"tree\", dest = \"/t\" }]\n",
    );
    let traced = |out: &str| -> (Value, usize) {
        let (doc, trace) = build_traced(
            &w,
            "store",
            &["build", "recipe.toml", "--json", "--out", out],
        );
        (doc, opens(&trace, "tree/f07"))
    };
    let (first, n) = traced("o1");
    assert_eq!(n, 1, "a first build reads a file once");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (second, opens) = traced("o2");
    assert_eq!(second["digest"], first["digest"]);
    assert_eq!(second["layers"][0]["source"], "local-cache", "{second:#}");
    assert_eq!(
        opens, 1,
        "files fresh when read are hashed again, not trusted"
    );
    let (_, opens) = traced("o3");
    assert_eq!(opens, 0, "now two seconds old when read: trusted");
}

/// `[accounts]` merges the tree's `/etc/passwd` while planning, and the
/// layer writer reads the same file again. A same-size edit between the
/// two reads must fail the build, whether the tree is hashed first (the
/// oracle: `--cache` at a closed port) or left for the writer: an image
/// whose accounts layer was made from other bytes than its tree layer holds
/// is not what any one state of the inputs gives. strace delays each open
/// of the file by 1.5 s, and the test edits it once the first has returned.
#[test]
fn an_account_file_edited_between_planning_and_writing_fails_the_build() {
    let cache = closed_cache();
    for (how, extra) in [("late", vec![]), ("hashed first", vec!["--cache", &cache])] {
        let w = Work::new();
        let passwd = w.write("root/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n");
        w.write("root/etc/group", "root:x:0:\n");
        w.write(
            "recipe.toml",
            "name = \"acc\"\n\n[[layers]]\ntrees = [{ src = \"root\", dest = \"/\" }]\n\n\
             [accounts]\nusers = [{ name = \"app\", uid = 1000, gid = 1000 }]\n\
             groups = [{ name = \"app\", gid = 1000 }]\n",
        );
        let out = build_editing_after(&w, &extra, &["root/etc/passwd"], 1, || {
            std::fs::write(&passwd, "evil:x:0:0:root:/root:/bin/sh\n").unwrap()
        });
        assert_refused(&w, how, &out);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("`root/etc/passwd` changed"), "{how}: {err}");
    }
}

/// Two layers of one recipe whose plans have the same key (built once),
/// each with a tree whose only file is a hard link to a `files` item of
/// its layer: the second layer's tree path is an input as much as the
/// first's, and the provenance must name it, as a build that hashes first
/// does. Files just written: not in the stat cache, so the trees are late.
#[test]
fn a_layer_built_as_another_s_twin_names_its_hard_links_in_provenance() {
    let w = Work::new();
    w.write("keep/a", "shared by three names\n");
    for tree in ["tree", "tree2"] {
        std::fs::create_dir_all(w.path().join(tree)).unwrap();
        std::fs::hard_link(w.path().join("keep/a"), w.path().join(tree).join("a")).unwrap();
    }
    w.write(
        "recipe.toml",
        "name = \"twins\"\n\n\
         [[layers]]\nfiles = [{ src = \"keep/a\", dest = \"/a\" }]\ntrees = [{ src = \"tree\", dest = \"/t\" }]\n\n\
         [[layers]]\nfiles = [{ src = \"keep/a\", dest = \"/a\" }]\ntrees = [{ src = \"tree2\", dest = \"/t\" }]\n",
    );
    let ((late, late_deps), (early, early_deps)) = late_and_early(&w);
    assert_eq!(late["digest"], early["digest"]);
    assert!(
        uris(&early_deps).iter().any(|u| u.ends_with("tree2/a")),
        "{early_deps:#}"
    );
    assert_eq!(
        uris(&late_deps),
        uris(&early_deps),
        "late: {late_deps:#}\nearly: {early_deps:#}"
    );
}

/// A tree planned while some of its files were in the stat cache (a file
/// added to a tree built before) was hashed first, and its layer is in the
/// store. A fresh copy of that tree (a clone: no file in the stat cache) is
/// a cache hit for a build that hashes first; late hashing must not take
/// it for a tree never seen and build the layer again.
#[test]
fn a_copy_of_a_tree_planned_with_known_files_is_a_hit() {
    let w = Work::new();
    for i in 0..20 {
        w.write(
            &format!("a/tree/f{i:02}"),
            format!("file {i}\n").repeat(100),
        );
    }
    w.write(
        "a/recipe.toml",
        "name = \"grown\"\n\n[[layers]]\ntrees = [{ src = \"tree\", dest = \"/t\" }]\n",
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let a = w.path().join("a");
    // The same history in two stores: a first build, then a file added
    // (the others known now: hashed first, and the layer stored).
    for store in ["late", "early"] {
        build_in(&w, &a, "recipe.toml", store, &format!("o1-{store}"), &[]);
    }
    std::fs::write(a.join("tree/new"), "one more file\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    for store in ["late", "early"] {
        let (doc, _) = build_in(&w, &a, "recipe.toml", store, &format!("o2-{store}"), &[]);
        assert_eq!(doc["layers"][0]["source"], "built", "{doc:#}");
    }
    run(std::process::Command::new("cp")
        .args(["-r", "a", "b"])
        .current_dir(w.path()));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let b = w.path().join("b");
    let (late, _) = build_in(&w, &b, "recipe.toml", "late", "o3", &[]);
    let cache = closed_cache();
    let (early, _) = build_in(&w, &b, "recipe.toml", "early", "o4", &["--cache", &cache]);
    assert_eq!(late["digest"], early["digest"]);
    assert_eq!(early["layers"][0]["source"], "local-cache", "{early:#}");
    assert_eq!(
        late["layers"][0], early["layers"][0],
        "the layer is in the store under the same key"
    );
}

/// Two layers of one tree, built one after the other (`--jobs 1`): the
/// report is the one a build that hashes first gives, which builds the
/// layer once and reports its chunks for both.
#[test]
fn two_layers_of_one_tree_report_as_a_build_that_hashes_first() {
    let w = Work::new();
    for i in 0..20 {
        w.write(&format!("tree/f{i:02}"), format!("file {i}\n").repeat(1000));
    }
    let layer = "[[layers]]\ntrees = [{ src = \"tree\", dest = \"/t\" }]\n";
    w.write(
        "recipe.toml",
        format!("name = \"twice\"\n\n{layer}\n{layer}"),
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (late, _) = build_in(&w, w.path(), "recipe.toml", "late", "o1", &["--jobs", "1"]);
    let cache = closed_cache();
    let (early, _) = build_in(
        &w,
        w.path(),
        "recipe.toml",
        "early",
        "o2",
        &["--jobs", "1", "--cache", &cache],
    );
    assert_eq!(late["digest"], early["digest"]);
    assert_eq!(
        late["layers"], early["layers"],
        "late: {late:#}\nearly: {early:#}"
    );
}

/// `kiln build recipe.toml --out img` (and `extra`) in `w` under strace,
/// each open of `delayed` held back 1.5 s: once the `nth` open of
/// `delayed[0]` has returned, `edit` runs. The build's output.
fn build_editing_after(
    w: &Work,
    extra: &[&str],
    delayed: &[&str],
    nth: usize,
    edit: impl FnOnce(),
) -> std::process::Output {
    crate::support::apt::need("strace");
    let log = w.path().join("strace.log");
    let mut strace = std::process::Command::new("strace");
    strace.args(["-f", "-qq", "-e", "trace=openat"]);
    for path in delayed {
        strace.args(["-P", path]);
    }
    let child = strace
        .args(["-e", "inject=openat:delay_enter=1500000", "-o"])
        .arg(&log)
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(["build", "recipe.toml", "--out", "img"])
        .args(extra)
        .current_dir(w.path())
        .env("KILN_CACHE", w.path().join("store"))
        .env("KILN_NO_PROGRESS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let watched = format!("{}\"", delayed[0]);
    let opened = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&watched) && l.contains(") = "))
            .count()
    };
    let start = std::time::Instant::now();
    while opened() < nth {
        assert!(
            start.elapsed().as_secs() < 60,
            "kiln never opened {} {nth} times",
            delayed[0]
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    edit();
    child.wait_with_output().unwrap()
}

/// The build failed as bad input, naming a file that changed, and wrote
/// no image.
fn assert_refused(w: &Work, how: &str, out: &std::process::Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{how}: the build must fail as bad input\n{err}"
    );
    assert!(
        err.contains("changed while kiln was building"),
        "{how}: {err}"
    );
    assert!(!w.path().join("img").exists(), "{how}: no image written");
}

/// A `files` item that is a hard link to a file of a late tree becomes a
/// tar hard link to the tree's entry, which the layer writer hashes. The
/// item was hashed while planning (its digest is a material): a same-size
/// edit of the file between planning and writing must fail the build, as
/// it does when the tree is hashed first, not put other bytes at the
/// item's path than its provenance names.
#[test]
fn a_files_item_linked_into_a_late_tree_edited_before_writing_fails_the_build() {
    let cache = closed_cache();
    // The oracle first: it shows the edit lands between the two reads.
    for (how, extra) in [("hashed first", vec!["--cache", &cache]), ("late", vec![])] {
        let w = Work::new();
        let keep = w.write("keep/a", "shared by two names\n");
        std::fs::create_dir_all(w.path().join("tree")).unwrap();
        std::fs::hard_link(&keep, w.path().join("tree/a")).unwrap();
        w.write("tree/other", "x\n");
        w.write(
            "recipe.toml",
            "name = \"edited\"\n\n[[layers]]\nfiles = [{ src = \"keep/a\", dest = \"/x\" }]\n\
             trees = [{ src = \"tree\", dest = \"/t\" }]\n",
        );
        // Planning reads `keep/a` first in either build; the layer writer
        // reads `tree/a` (its open held back) only after.
        let out = build_editing_after(&w, &extra, &["keep/a", "tree/a"], 1, || {
            std::fs::write(&keep, "SHARED BY TWO NAMES\n").unwrap()
        });
        assert_refused(&w, how, &out);
    }
}

/// Two hard links of one file in a late tree: the second is a tar hard link
/// to the first, which the layer writer hashes. A file put in the first's
/// place (a new inode: an editor's save) between planning and writing
/// leaves the second with its old bytes on the host: the image, with the
/// new bytes at both paths, is no state of the inputs, and a build that
/// hashes first refuses it.
#[test]
fn a_late_hard_link_whose_first_path_is_replaced_before_writing_fails_the_build() {
    let cache = closed_cache();
    // The oracle first: it shows the new file lands between the two reads.
    for (how, extra, nth) in [
        ("hashed first", vec!["--cache", &cache], 2),
        ("late", vec![], 1),
    ] {
        let w = Work::new();
        w.write("tree/0", "first in the layer\n");
        let a = w.write("tree/a", "linked content\n");
        std::fs::hard_link(&a, w.path().join("tree/b")).unwrap();
        w.write(
            "recipe.toml",
            "name = \"replaced\"\n\n[[layers]]\ntrees = [{ src = \"tree\", dest = \"/t\" }]\n",
        );
        // The layer writer opens `tree/0`, then `tree/a` (held back); a
        // build that hashes first opened both once already.
        let out = build_editing_after(&w, &extra, &["tree/0", "tree/a"], nth, || {
            let new = w.write("new-a", "LINKED CONTENT\n");
            std::fs::rename(new, &a).unwrap();
        });
        assert_refused(&w, how, &out);
    }
}

/// A tree's `/etc/passwd` that is a hard link to a path sorting before it
/// (here `/aaa/passwd`) is a tar hard link in the layer: `[accounts]` must
/// merge its users all the same, whether the tree is hashed first or
/// left for the layer writer, rather than take the image for one without
/// `/etc/passwd` and drop root.
#[test]
fn accounts_merge_an_etc_passwd_that_is_a_hard_link() {
    let cache = closed_cache();
    for (how, extra) in [("hashed first", vec!["--cache", &cache]), ("late", vec![])] {
        let w = Work::new();
        crate::accounts::linked_passwd_tree(&w);
        w.write(
            "recipe.toml",
            "name = \"acc\"\n\n[[layers]]\ntrees = [{ src = \"root\", dest = \"/\" }]\n\n\
             [accounts]\nusers = [{ name = \"app\", uid = 1000, gid = 1000 }]\n\
             groups = [{ name = \"app\", gid = 1000 }]\n",
        );
        let mut args = vec!["build", "recipe.toml", "--out", "img"];
        args.extend(&extra);
        w.ok(&args);
        crate::accounts::assert_users(&w, how, &["root:", "alice:", "app:"]);
    }
}

/// The lines of a store's stat cache, sorted.
fn stat_cache(w: &Work, store: &str) -> Vec<String> {
    let text = std::fs::read_to_string(w.path().join(store).join("stat-cache")).unwrap_or_default();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// A tree of edge cases (empty files, files either side of 1 MiB, where
/// planning stops leaving files unread, symlinks, excluded files and
/// directories, a hard link excluded by name), in gzip and zstd: the
/// image, the report's layers, the provenance and the stat cache are a
/// build's that hashes first.
#[test]
fn a_tree_of_edge_cases_gives_what_hashing_first_gives() {
    for compression in ["gzip", "zstd"] {
        let w = Work::new();
        w.write("tree/empty", "");
        w.write("tree/d/empty2", "");
        for (n, size) in [(1u32 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 << 19]
            .into_iter()
            .enumerate()
        {
            let body: Vec<u8> = (0..size)
                .map(|j: u32| (j.wrapping_mul(2654435761) >> 13) as u8 ^ n as u8)
                .collect();
            std::fs::write(w.path().join(format!("tree/big{n}")), body).unwrap();
        }
        for i in 0..30 {
            w.write(&format!("tree/s/f{i:02}"), format!("small {i}\n").repeat(i));
        }
        std::os::unix::fs::symlink("s/f01", w.path().join("tree/link")).unwrap();
        std::os::unix::fs::symlink("/nowhere", w.path().join("tree/dangling")).unwrap();
        w.write("tree/skip.tmp", "left out\n");
        w.write("tree/cache/x", "left out\n");
        std::fs::hard_link(w.path().join("tree/s/f05"), w.path().join("tree/s/f05.tmp")).unwrap();
        w.write(
            "recipe.toml",
            format!(
                "name = \"edges\"\ncompression = \"{compression}\"\n\n[[layers]]\n\
                 trees = [{{ src = \"tree\", dest = \"/t\", exclude = [\"*.tmp\", \"cache/\"] }}]\n"
            ),
        );
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let ((late, late_deps), (early, early_deps)) = late_and_early(&w);
        assert_eq!(late["digest"], early["digest"], "{compression}");
        assert_eq!(late["layers"], early["layers"], "{compression}");
        assert_eq!(late_deps, early_deps, "{compression}");
        assert!(stat_cache(&w, "late").len() >= 34, "{compression}");
        assert_eq!(
            stat_cache(&w, "late"),
            stat_cache(&w, "early"),
            "{compression}"
        );
    }
}
