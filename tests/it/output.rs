//! What a user reads, pinned as snapshots (`tests/it/snapshots/`): `kiln
//! --help` and every subcommand's `--help`, and `kiln inspect` of a layout,
//! an archive and a multi-platform index. Temporary paths and digests are
//! filtered out (`support::snapshot_settings`), so a snapshot changes only
//! when the wording or the layout of the output does.

use std::process::Command;

use crate::support::{assert_success, kiln_bin, Work};

/// `kiln ARGS…` in an empty environment (clap shows the values of the
/// variables a flag reads, which would make the text depend on the caller).
fn help(args: &[&str]) -> String {
    let out = Command::new(kiln_bin())
        .env_clear()
        .args(args)
        .output()
        .unwrap();
    assert_success(&out, &format!("kiln {}", args.join(" ")));
    String::from_utf8(out.stdout).unwrap()
}

/// One test (and one snapshot, named after it) per help text.
macro_rules! help_snapshots {
    ($($name:ident: [$($arg:literal),+];)+) => {$(
        #[test]
        fn $name() {
            assert_output_snapshot!(help(&[$($arg),+]));
        }
    )+};
}

help_snapshots! {
    help_kiln: ["--help"];
    help_build: ["build", "--help"];
    help_inspect: ["inspect", "--help"];
    help_boot: ["boot", "--help"];
    help_lock: ["lock", "--help"];
    help_push: ["push", "--help"];
    help_pull: ["pull", "--help"];
    help_copy: ["copy", "--help"];
    help_keygen: ["keygen", "--help"];
    help_sbom: ["sbom", "--help"];
    help_sign: ["sign", "--help"];
    help_verify: ["verify", "--help"];
    help_referrers: ["referrers", "--help"];
    help_login: ["login", "--help"];
    help_store: ["store", "--help"];
    help_store_verify: ["store", "verify", "--help"];
    help_store_prune: ["store", "prune", "--help"];
    help_completions: ["completions", "--help"];
    help_man: ["man", "--help"];
    help_diff: ["diff", "--help"];
    help_reproduce: ["reproduce", "--help"];
}

/// Every subcommand `kiln --help` lists has a help snapshot above.
#[test]
fn every_subcommand_has_a_help_snapshot() {
    let text = help(&["--help"]);
    let listed: Vec<&str> = text
        .split("Commands:\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    let source = include_str!("output.rs");
    for command in &listed {
        assert!(
            source.contains(&format!("    help_{command}: [\"{command}\", \"--help\"];")),
            "`kiln {command} --help` has no snapshot test in tests/it/output.rs"
        );
    }
    assert!(listed.len() >= 10, "too few subcommands parsed: {listed:?}");
}

const RECIPE: &str = r##"name = "demo"

[config]
cmd = ["/app/hello"]
workdir = "/app"
env = { GREETING = "hi" }
labels = { "org.opencontainers.image.title" = "demo" }

[[layers]]
name = "etc"
contents = [ { dest = "/etc/motd", text = "hello\n" } ]

[[layers]]
name = "app"
contents = [ { dest = "/app/hello", text = "#!/bin/sh\necho hi\n", mode = 0o755 } ]
"##;

#[test]
fn inspect_a_layout() {
    let w = Work::new();
    w.write("recipe.toml", RECIPE);
    w.build("recipe.toml", "out/img");
    assert_output_snapshot!(w.ok(&["inspect", "out/img"]));
}

#[test]
fn inspect_an_archive() {
    let w = Work::new();
    w.write("recipe.toml", RECIPE);
    w.ok(&[
        "build",
        "recipe.toml",
        "--format",
        "oci-archive",
        "--out",
        "out/img.tar",
    ]);
    assert_output_snapshot!(w.ok(&["inspect", "out/img.tar"]));
}

#[test]
fn inspect_a_multi_platform_index() {
    let w = Work::new();
    let recipe = RECIPE.replace(
        "name = \"demo\"\n",
        "name = \"demo\"\nplatforms = [\"linux/amd64\", \"linux/arm64\"]\n",
    );
    w.write("recipe.toml", recipe);
    w.build("recipe.toml", "out/img");
    assert_output_snapshot!(w.ok(&["inspect", "out/img"]));
}
