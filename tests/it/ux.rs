//! What a user sees around the results: progress bars on a terminal (kiln
//! run under a pseudo-terminal by util-linux's `script`), plain lines in a
//! pipe, nothing with `--quiet`, and stdout that stays pure JSON with
//! `--json` in every case; shell completions checked by the shells
//! themselves (bash completes a subcommand, `zsh -n`, `fish -n`); the man
//! page rendered by `groff`/`man` without a warning; `--version` against
//! `git rev-parse` of this checkout.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::support::apt::{Pkg, Repo};
use crate::support::registry::client::kiln as registry_kiln;
use crate::support::registry::{registry, Flavour};
use crate::support::{self, Work};

const SUITE: &str = "kiln-ux";

/// A package with 6 MiB of incompressible data (stored uncompressed), so
/// that its download is long enough for a bar to be drawn.
fn repo() -> &'static Repo {
    static REPO: OnceLock<Repo> = OnceLock::new();
    REPO.get_or_init(|| {
        let mut data = vec![0u8; 6 << 20];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let big = Pkg::new("bigdata", "1.0", "amd64")
            .file("/usr/share/bigdata/blob", data, 0o644)
            .compression("none");
        Repo::start(SUITE, &["main"], &[big])
    })
}

/// A locked workspace whose recipe installs `bigdata` from the local repository.
fn workspace() -> Work {
    let w = Work::new();
    w.write("keys/test.gpg", fs::read(&repo().keyring).unwrap());
    w.write(
        "recipe.toml",
        format!(
            "name = \"ux\"\n\n[repositories.test]\nsuite = \"{SUITE}\"\nkeyring = \"keys/test.gpg\"\n\n\
             [[layers]]\nname = \"data\"\npackages = [\"bigdata\"]\n"
        ),
    );
    support::apt::kiln_ok_at(&w, &repo().url, &["lock", "recipe.toml"]);
    w
}

/// Quotes `s` for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs `cmd` (its program, arguments, directory and environment) under a
/// pseudo-terminal with `script`, stdout sent to `stdout_file`: returns
/// what the terminal showed (stderr) and the exit status.
fn under_terminal(cmd: &Command, stdout_file: &Path) -> (String, bool) {
    support::apt::need("script");
    let mut line = sh_quote(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        line.push(' ');
        line.push_str(&sh_quote(&a.to_string_lossy()));
    }
    line.push_str(&format!(" > {}", sh_quote(&stdout_file.to_string_lossy())));
    let mut s = Command::new("script");
    s.args(["-qfec", &line, "/dev/null"])
        .env("SHELL", "/bin/sh")
        .env("TERM", "xterm")
        .env("COLUMNS", "120");
    if let Some(dir) = cmd.get_current_dir() {
        s.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => s.env(k, v),
            None => s.env_remove(k),
        };
    }
    let out = s.stdin(std::process::Stdio::null()).output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.success(),
    )
}

/// `kiln ARGS` in `w` against the local repository, with progress on.
fn kiln_with_progress(w: &Work, args: &[&str]) -> Command {
    let mut c = w.kiln();
    c.env("KILN_DEBIAN_MIRROR", &repo().url)
        .env_remove("KILN_NO_PROGRESS")
        .args(args);
    c
}

fn assert_pure_json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{stdout}"))
}

/// What a terminal shows of a bar: carriage returns or cursor movement.
fn has_bar_codes(text: &str) -> bool {
    text.contains('\r') || text.contains("\x1b[")
}

#[test]
fn a_build_on_a_terminal_draws_bars_for_its_downloads_and_layers_and_stdout_stays_json() {
    let w = workspace();
    let json = w.path().join("out.json");
    let cmd = kiln_with_progress(&w, &["build", "recipe.toml", "--out", "img", "--json"]);
    let (screen, ok) = under_terminal(&cmd, &json);
    assert!(ok, "kiln build under a terminal failed:\n{screen}");
    assert!(has_bar_codes(&screen), "no bar drawn:\n{screen:?}");
    // The package's bar (verb, name, bytes of its total, rate, ETA), then its line.
    let bar = screen
        .lines()
        .flat_map(|l| l.split('\r'))
        .find(|l| l.contains("fetch") && l.contains("bigdata") && l.contains("ETA"))
        .unwrap_or_else(|| panic!("no download bar for bigdata:\n{screen:?}"));
    assert!(bar.contains("MiB"), "{bar:?}");
    assert!(screen.contains("fetched package bigdata (6."), "{screen:?}");
    assert!(
        screen.contains("layer data") && screen.contains("built   layer data"),
        "no layer bar:\n{screen:?}"
    );
    let doc = assert_pure_json(&fs::read_to_string(&json).unwrap());
    assert!(doc["digest"].as_str().unwrap().starts_with("sha256:"));
}

#[test]
fn a_build_in_a_pipe_prints_plain_lines_and_with_quiet_nothing() {
    let w = workspace();
    let out = kiln_with_progress(&w, &["build", "recipe.toml", "--out", "img", "--json"])
        .output()
        .unwrap();
    support::assert_success(&out, "kiln build --json (piped)");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        !has_bar_codes(&stderr),
        "escape codes in a pipe:\n{stderr:?}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("fetched package bigdata (6.0 MiB")),
        "{stderr}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("built   layer data ")),
        "{stderr}"
    );
    assert_pure_json(&String::from_utf8(out.stdout).unwrap());

    // --quiet (anywhere on the line): a fresh store downloads again, silently.
    let w = workspace();
    for args in [
        &["--quiet", "build", "recipe.toml", "--out", "img"][..],
        &["build", "recipe.toml", "--out", "img2", "-q", "--json"][..],
    ] {
        let out = kiln_with_progress(&w, args).output().unwrap();
        support::assert_success(&out, "kiln build --quiet");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{args:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        if args.contains(&"--json") {
            assert_pure_json(&stdout);
        } else {
            assert!(stdout.trim().starts_with("sha256:"), "{stdout}");
        }
    }
    // Quiet on a terminal too.
    let w = workspace();
    let cmd = kiln_with_progress(&w, &["build", "-q", "recipe.toml", "--out", "img"]);
    let (screen, ok) = under_terminal(&cmd, &w.path().join("digest"));
    assert!(ok, "{screen}");
    assert_eq!(screen, "", "--quiet on a terminal");
}

#[test]
fn push_pull_and_copy_show_their_blob_transfers() {
    let r = registry(Flavour::Plain);
    let w = workspace();
    support::apt::kiln_ok_at(&w, &repo().url, &["build", "recipe.toml", "--out", "img"]);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let marker = format!("push-{}-{nanos}", std::process::id());
    let reference = format!("{}/ux/{marker}:v1", r.host);

    // On a terminal: bars for the blobs sent, then a line each.
    let mut cmd = registry_kiln(&w);
    cmd.env_remove("KILN_NO_PROGRESS")
        .args(["push", "img", &reference]);
    let (screen, ok) = under_terminal(&cmd, &w.path().join("pushed"));
    assert!(ok, "kiln push under a terminal failed:\n{screen}");
    assert!(has_bar_codes(&screen), "{screen:?}");
    assert!(
        screen
            .lines()
            .flat_map(|l| l.split('\r'))
            .any(|l| l.contains("push  sha256:") && l.contains("ETA")),
        "no push bar:\n{screen:?}"
    );
    assert!(screen.contains("sent    blob sha256:"), "{screen:?}");
    let digest = fs::read_to_string(w.path().join("pushed")).unwrap();
    let digest = digest.trim();
    assert!(digest.starts_with("sha256:"), "{digest}");

    // In a pipe: plain lines for the blobs pulled (a fresh store has none).
    let fresh = Work::new();
    let mut cmd = registry_kiln(&fresh);
    cmd.env_remove("KILN_NO_PROGRESS").args([
        "pull",
        &format!("{}/ux/{marker}@{digest}", r.host),
        "--out",
        "pulled",
    ]);
    let out = cmd.output().unwrap();
    support::assert_success(&out, "kiln pull");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!has_bar_codes(&stderr), "{stderr:?}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("pulled  blob sha256:")),
        "{stderr}"
    );

    // Copy to another registry repository on a terminal: its pull and push show.
    let other = Work::new();
    let mut cmd = registry_kiln(&other);
    cmd.env_remove("KILN_NO_PROGRESS").args([
        "copy",
        &format!("{}/ux/{marker}@{digest}", r.host),
        &format!("{}/ux-copy/{marker}:v1", r.host),
    ]);
    let copied = w.path().join("copied");
    let (screen, ok) = under_terminal(&cmd, &copied);
    assert!(ok, "kiln copy under a terminal failed:\n{screen}");
    assert!(screen.contains("pulled  blob sha256:"), "{screen:?}");
    assert!(screen.contains("copied  "), "{screen:?}");
    assert_eq!(fs::read_to_string(&copied).unwrap().trim(), digest);
}

fn kiln(args: &[&str]) -> Output {
    let w = Work::new();
    let out = w.kiln().args(args).output().unwrap();
    support::assert_success(&out, &format!("kiln {}", args.join(" ")));
    out
}

fn stdout_of(args: &[&str]) -> String {
    String::from_utf8(kiln(args).stdout).unwrap()
}

/// The subcommands `kiln --help` lists.
fn subcommands() -> Vec<String> {
    let help = stdout_of(&["--help"]);
    let list = help
        .split("Commands:\n")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("--help lists its commands");
    let names: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(String::from)
        .collect();
    assert!(
        names.len() > 10 && names.iter().any(|n| n == "build"),
        "{names:?}"
    );
    names
}

#[test]
fn bash_completes_subcommands_and_flags_from_the_generated_script() {
    let w = Work::new();
    let script = w.write("kiln.bash", stdout_of(&["completions", "bash"]));
    let probe = format!(
        r#"set -e
source {script}
complete -p kiln
COMP_WORDS=(kiln bu); COMP_CWORD=1; COMP_LINE="kiln bu"; COMP_POINT=7
_kiln kiln bu kiln
echo "words: ${{COMPREPLY[*]}}"
COMP_WORDS=(kiln build --dig); COMP_CWORD=2; COMP_LINE="kiln build --dig"; COMP_POINT=16
_kiln kiln --dig build
echo "flags: ${{COMPREPLY[*]}}"
"#,
        script = sh_quote(&script.to_string_lossy())
    );
    let out = Command::new("bash").args(["-c", &probe]).output().unwrap();
    support::assert_success(&out, "bash sourcing kiln's completions");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(" -F _kiln kiln"), "{text}");
    assert!(text.contains("words: build"), "{text}");
    assert!(text.contains("flags: --digest-file"), "{text}");
}

#[test]
fn zsh_and_fish_completions_parse_in_their_shells() {
    let w = Work::new();
    for (shell, file) in [("zsh", "_kiln"), ("fish", "kiln.fish")] {
        let text = stdout_of(&["completions", shell]);
        assert!(text.contains("build"), "{shell}: {text}");
        let path = w.write(file, &text);
        if !support::have(shell) {
            eprintln!("{shell} is not installed (scripts/test.sh installs it): only generated");
            continue;
        }
        let out = Command::new(shell).arg("-n").arg(&path).output().unwrap();
        support::assert_success(&out, &format!("{shell} -n {file}"));
    }
}

/// `man`'s text with its bold and underline (`X\bX`, `_\bX`) taken out.
fn without_overstrike(text: &str) -> String {
    let mut out: Vec<char> = Vec::new();
    for c in text.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out.into_iter().collect()
}

#[test]
fn the_man_pages_render_without_warnings_and_name_every_subcommand() {
    support::apt::need("groff");
    let w = Work::new();
    let page = w.write("kiln.1", stdout_of(&["man"]));
    let groff = |path: &Path| {
        let out = Command::new("groff")
            .args(["-k", "-man", "-Tutf8", "-ww", "-z"])
            .arg(path)
            .output()
            .unwrap();
        support::assert_success(&out, "groff");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "",
            "groff warns about {}",
            path.display()
        );
    };
    groff(&page);
    let shown = if support::have("man") {
        let out = Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANWIDTH", "100")
            .env("MAN_KEEP_FORMATTING", "0")
            .output()
            .unwrap();
        support::assert_success(&out, "man -l kiln.1");
        without_overstrike(&String::from_utf8(out.stdout).unwrap())
    } else {
        fs::read_to_string(&page).unwrap()
    };
    let names = subcommands();
    for name in &names {
        assert!(
            shown.contains(&format!("kiln-{name}(1)")),
            "the man page does not name `{name}`:\n{shown}"
        );
    }
    assert!(shown.contains("--quiet"), "{shown}");

    // `--out DIR`: one page per command, readable by everyone (umask 022).
    let dir = w.path().join("man1");
    let out = w.kiln().args(["man", "--out"]).arg(&dir).output().unwrap();
    support::assert_success(&out, "kiln man --out");
    let mut expected: Vec<String> = names.iter().map(|n| format!("kiln-{n}.1")).collect();
    expected.push("kiln.1".into());
    expected.sort();
    let mut written: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, expected);
    for file in &written {
        let path = dir.join(file);
        assert_eq!(support::mode(&path) & 0o444, 0o444, "{file}");
        groff(&path);
    }
    let build = fs::read_to_string(dir.join("kiln-build.1")).unwrap();
    assert!(build.contains("kiln\\-build"), "{build}");
    assert!(build.contains("digest\\-file"), "{build}");
}

#[test]
fn version_names_the_commit_and_the_format_version() {
    let text = stdout_of(&["--version"]);
    let format = kiln::plan::FORMAT_VERSION;
    let version = env!("CARGO_PKG_VERSION");
    let checkout = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(checkout)
            .output()
            .ok()
            .filter(|o| o.status.success())
    };
    let commit = match git(&["rev-parse", "--short", "HEAD"]) {
        // Outside a checkout (a crates tarball) the commit is unknown.
        None => "unknown".to_string(),
        Some(out) => {
            let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
            let clean = git(&["diff", "--quiet", "HEAD", "--"]).is_some();
            if clean {
                hash
            } else {
                format!("{hash}-dirty")
            }
        }
    };
    assert_eq!(
        text.trim(),
        format!("kiln {version} (commit {commit}, format {format})")
    );
}
