//! The README documents every recipe key and every `kiln build` flag; this
//! test derives both lists from the real binary (its "unknown field"
//! errors and its `--help`) so that the reference cannot fall behind.

use crate::support::Work;

/// The keys kiln accepts in one table, read from its unknown-key error.
fn keys_of(w: &Work, recipe: &str) -> Vec<String> {
    w.write("r.toml", recipe);
    let (code, stderr) = w.fails(&["build", "r.toml"]);
    assert_eq!(code, 2, "{stderr}");
    // serde lists the keys as "expected one of `a`, `b`, `c`" or "expected `a` or `b`".
    let list = stderr
        .split("expected one of ")
        .nth(1)
        .or_else(|| stderr.split("`, expected ").nth(1))
        .unwrap_or_else(|| panic!("no key list in: {stderr}"));
    let list = list.lines().next().unwrap();
    list.split([','])
        .flat_map(|k| k.split(" or "))
        .map(|k| k.trim().trim_matches('`').to_string())
        .filter(|k| !k.is_empty())
        .collect()
}

#[test]
fn readme_documents_every_recipe_key() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let w = Work::new();
    let tables = [
        ("top level", "name = \"x\"\nzzz = 1\n"),
        ("[config]", "name = \"x\"\n[config]\nzzz = 1\n"),
        ("[[layers]]", "name = \"x\"\n[[layers]]\nzzz = 1\n"),
        ("files", "name = \"x\"\n[[layers]]\nfiles = [{ zzz = 1 }]\n"),
        ("trees", "name = \"x\"\n[[layers]]\ntrees = [{ zzz = 1 }]\n"),
        (
            "contents",
            "name = \"x\"\n[[layers]]\ncontents = [{ zzz = 1 }]\n",
        ),
        ("dirs", "name = \"x\"\n[[layers]]\ndirs = [{ zzz = 1 }]\n"),
        (
            "symlinks",
            "name = \"x\"\n[[layers]]\nsymlinks = [{ zzz = 1 }]\n",
        ),
        (
            "[repositories.NAME]",
            "name = \"x\"\n[repositories.d]\nsuite = \"s\"\nzzz = 1\n",
        ),
        (
            "[vm]",
            "name = \"x\"\n[vm]\nkernel = { path = \"k\" }\nzzz = 1\n",
        ),
        ("[vm].kernel", "name = \"x\"\n[vm]\nkernel = { zzz = 1 }\n"),
        ("[accounts]", "name = \"x\"\n[accounts]\nzzz = 1\n"),
        (
            "[accounts].users",
            "name = \"x\"\n[accounts]\nusers = [{ zzz = 1 }]\n",
        ),
        (
            "[accounts].groups",
            "name = \"x\"\n[accounts]\ngroups = [{ zzz = 1 }]\n",
        ),
    ];
    let mut missing = Vec::new();
    for (table, recipe) in tables {
        let keys = keys_of(&w, recipe);
        assert!(keys.len() >= 2, "{table}: too few keys parsed: {keys:?}");
        for key in keys {
            if !readme.contains(&format!("`{key}`")) {
                missing.push(format!("{table}: `{key}`"));
            }
        }
    }
    assert!(missing.is_empty(), "README lacks recipe keys: {missing:?}");
}

#[test]
fn readme_documents_every_build_flag() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let w = Work::new();
    let help = w.ok(&["build", "--help"]);
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter(|t| t.starts_with("--") && t.len() > 2)
        .map(|t| t.trim_end_matches([',', '.']))
        // `--load[=<RUNTIME>]`: an optional value; the flag is what must be documented.
        .map(|t| t.split('[').next().unwrap_or(t))
        .filter(|t| !matches!(*t, "--help" | "--version"))
        .collect();
    assert!(flags.contains(&"--out"), "help lists no flags: {help}");
    for flag in flags {
        assert!(
            readme.contains(&format!("`{flag}")),
            "README lacks `{flag}`"
        );
    }
}
