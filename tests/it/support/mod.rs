//! Shared helpers for the integration tests: run the real `kiln` binary in a
//! scratch directory with a store of its own. The submodules bring up what
//! kiln talks to: a registry, a Debian repository, cosign.

pub mod apt;
pub mod cosign;
pub mod registry;
pub mod runtimes;

/// Asserts a snapshot (insta) of human-facing output, named after the test
/// (or `name` when given), with what varies between runs and machines
/// filtered out: see [`snapshot_settings`]. A mismatch fails the test and
/// leaves the new text in a `.snap.new` beside the snapshot to review.
macro_rules! assert_output_snapshot {
    ($text:expr $(,)?) => {
        $crate::support::snapshot_settings().bind(|| insta::assert_snapshot!($text))
    };
    ($name:expr, $text:expr $(,)?) => {
        $crate::support::snapshot_settings().bind(|| insta::assert_snapshot!($name, $text))
    };
}

/// Parameterised tests: one `#[test]` per case, in a module named after the
/// function they call, so each case runs, fails and filters on its own
/// (`registry::push_without_credentials_says_so::token`).
///
/// ```ignore
/// test_cases! { check_fn {
///     case_a: (Flavour::Plain),
///     case_b: (Flavour::Basic, "name"),
/// } }
/// ```
macro_rules! test_cases {
    ($check:ident { $($case:ident: ($($arg:expr),* $(,)?)),+ $(,)? }) => {
        mod $check {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $case() {
                    super::$check($($arg),*)
                }
            )+
        }
    };
}

/// insta settings for kiln's output: temporary directories become `[TMP]`
/// and digests `[DIGEST]` (the golden-digest tests pin digests; snapshots
/// pin wording and layout). Snapshots live in `tests/it/snapshots/`.
pub fn snapshot_settings() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    let tmp = std::env::temp_dir();
    let tmp = tmp.to_str().unwrap().trim_end_matches('/');
    let escaped: String = tmp
        .chars()
        .flat_map(|c| {
            let meta = "\\.+*?()|[]{}^$".contains(c);
            meta.then_some('\\').into_iter().chain([c])
        })
        .collect();
    settings.add_filter(&format!("{escaped}/[^/\\s`'\"]+"), "[TMP]");
    settings.add_filter("sha256:[0-9a-f]{64}", "[DIGEST]");
    settings.add_filter("\\b[0-9a-f]{64}\\b", "[HEX]");
    settings
}

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The path of the `kiln` binary cargo built for these tests.
pub fn kiln_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

/// A scratch workspace: a temp dir with its own `KILN_CACHE`.
pub struct Work {
    pub dir: tempfile::TempDir,
}

impl Work {
    pub fn new() -> Work {
        Work {
            dir: tempfile::Builder::new()
                .prefix("kiln-test-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cache(&self) -> PathBuf {
        self.path().join("cache")
    }

    /// Writes `text` to `rel` (creating parent directories) and returns the full path.
    pub fn write(&self, rel: &str, text: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A `kiln` command run in the workspace with the workspace's store and no
    /// `SOURCE_DATE_EPOCH` from the caller's environment.
    pub fn kiln(&self) -> Command {
        let mut c = Command::new(kiln_bin());
        c.current_dir(self.path())
            .env("KILN_CACHE", self.cache())
            .env("KILN_NO_PROGRESS", "1")
            .env_remove("SOURCE_DATE_EPOCH");
        c
    }

    /// Runs `kiln ARGS…`, asserts success and returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kiln().args(args).output().unwrap();
        assert_success(&out, &format!("kiln {}", args.join(" ")));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `kiln ARGS…`, asserts failure and returns (exit code, stderr).
    pub fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.kiln().args(args).output().unwrap();
        assert!(
            !out.status.success(),
            "kiln {} should have failed; stdout:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    /// Builds `recipe` into `out` and returns the printed digest.
    pub fn build(&self, recipe: &str, out: &str) -> String {
        last_digest(&self.ok(&["build", recipe, "--out", out]))
    }
}

/// The names in the `tmp/` of the store at `store` (none when it has no `tmp/`).
pub fn store_tmp(store: &Path) -> Vec<String> {
    std::fs::read_dir(store.join("tmp"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The digest on the last line of `kiln build`'s stdout, checked for form.
pub fn last_digest(stdout: &str) -> String {
    let line = stdout.lines().last().unwrap_or_default().to_string();
    assert!(
        line.len() == 71 && line.starts_with("sha256:"),
        "last line of stdout is not a digest: {stdout:?}"
    );
    line
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether an external tool is on PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs an external command, asserts success and returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert_success(&out, &format!("{cmd:?}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Mode bits (with setuid/setgid/sticky) of a path, not following symlinks.
pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// (uid, gid) of a path, not following symlinks.
pub fn owner(p: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid())
}

/// The text of a file; panics naming the path when it cannot be read.
pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `NAME PID NANOS`: a marker no other test (or run) writes, so an image
/// holding it shares no blobs with another test's.
pub fn unique_marker(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name} {} {nanos}", std::process::id())
}

/// The `os/architecture` of each of an index's `manifests`, sorted.
pub fn platforms(manifests: &[serde_json::Value]) -> Vec<String> {
    let mut platforms: Vec<String> = manifests
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    platforms.sort();
    platforms
}

/// Fails unless the tests run as root (`umoci unpack` keeps owners and `runc`
/// makes namespaces only then), with `why` as the message.
pub fn need_root(why: &str) {
    let uid = run(Command::new("id").arg("-u"));
    assert_eq!(uid.trim(), "0", "{why}");
}

/// `umoci unpack --image IMAGE BUNDLE` in `dir`, `umoci` being the command to
/// run; returns the bundle directory.
pub fn umoci_unpack(mut umoci: Command, dir: &Path, image: &str, bundle: &str) -> PathBuf {
    run(umoci
        .current_dir(dir)
        .args(["unpack", "--image", image, bundle]));
    dir.join(bundle)
}

/// Runs an unpacked bundle with `runc --root STATE run --bundle BUNDLE ID`,
/// `runc` being the command to run: the bundle's config is first set to no
/// terminal and, when `args` are given, to them as the process's argv.
/// Returns what it printed.
pub fn runc_run(
    mut runc: Command,
    state: &Path,
    bundle: &Path,
    id: &str,
    args: Option<&[&str]>,
) -> String {
    use serde_json::Value;
    let config_path = bundle.join("config.json");
    let mut config: Value = serde_json::from_str(&read(&config_path)).unwrap();
    config["process"]["terminal"] = Value::Bool(false);
    if let Some(args) = args {
        config["process"]["args"] = args.iter().map(|a| Value::from(*a)).collect();
    }
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    run(runc
        .arg("--root")
        .arg(state)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id))
}

/// A directory outside every build's output that hostile entries aim at:
/// `victim/` (a directory a symlink points to) and `secret` (a file).
pub struct Canary {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Canary {
    pub fn new() -> Canary {
        let dir = tempfile::Builder::new()
            .prefix("kiln-canary-")
            .tempdir()
            .unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir(root.join("victim")).unwrap();
        std::fs::write(root.join("victim/keep"), "keep").unwrap();
        std::fs::write(root.join("secret"), "secret").unwrap();
        Canary { _dir: dir, root }
    }

    pub fn at(&self, rel: &str) -> String {
        self.root.join(rel).to_string_lossy().into_owned()
    }

    /// Every path under the canary with its type, mode, owner and content
    /// (or link target) checksum, and the canary itself.
    pub fn listing(&self) -> std::collections::BTreeMap<String, String> {
        use std::os::unix::fs::MetadataExt;
        let mut out = std::collections::BTreeMap::new();
        for e in walkdir::WalkDir::new(&self.root).sort_by_file_name() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let content = if m.file_type().is_symlink() {
                std::fs::read_link(e.path()).unwrap().display().to_string()
            } else if m.is_file() {
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                    std::fs::read(e.path()).unwrap(),
                ))
            } else {
                String::new()
            };
            let rel = e.path().strip_prefix(&self.root).unwrap();
            out.insert(
                rel.display().to_string(),
                format!(
                    "{:o} {}:{} n{} {content}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.nlink()
                ),
            );
        }
        out
    }
}

/// A shared layer cache (`--cache`) at a loopback port nothing listens on.
pub fn unreachable_cache() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}/kiln/cache")
}

/// `kiln ARGS` in `w` with the store `store`, under `strace` (which must be
/// installed): its `--json` report and the files it opened, one line each.
pub fn build_traced(w: &Work, store: &str, args: &[&str]) -> (serde_json::Value, String) {
    let log = w
        .path()
        .join(format!("{store}-{}.strace", std::process::id()));
    let o = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=openat,open", "-o"])
        .arg(&log)
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(w.path())
        .env("KILN_CACHE", w.path().join(store))
        .env("KILN_NO_PROGRESS", "1")
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert_success(
        &o,
        &format!("strace kiln {} (store {store})", args.join(" ")),
    );
    let opened = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_file(&log).unwrap();
    (serde_json::from_slice(&o.stdout).unwrap(), opened)
}

/// How many times a trace of [`build_traced`] opened a path ending in `tail`.
pub fn opens(trace: &str, tail: &str) -> usize {
    let quoted = format!("{tail}\"");
    trace.lines().filter(|l| l.contains(&quoted)).count()
}
