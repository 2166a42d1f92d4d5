#!/usr/bin/env python3
"""Checks that kiln's stages only look down (see ARCHITECTURE.md).

Every file under src/ belongs to a top-level module (src/store/locks.rs to
`store`), and every module has a rank. A reference from one module to
another (`use crate::X`, `crate::X::f(` inline, `crate::{X, Y}`, or `super::X`
climbing to the crate root) must go to a lower rank; two different modules
of one rank must not refer to each other unless ALLOWED below says why.
src/main.rs and src/cli/ are the binary, which may use everything, and
src/lib.rs only declares the modules. Comments (doc links included) are not
references.

    scripts/check-stages.py            # check this checkout's src/
    scripts/check-stages.py DIR        # check DIR/src/
    scripts/check-stages.py --self-test

Exits 1 and prints `file:line: ...` for each violation; 0 when clean.
"""

import os
import re
import sys
import tempfile

# The stage order; keep it in step with ARCHITECTURE.md.
RANKS = {
    "error": 0, "digest": 0, "json": 0, "files": 0, "beneath": 0, "oci": 0, "image_name": 0,
    "progress": 0,
    "store": 1,
    "recipe": 2,
    "plan": 3, "image": 3,
    "source": 4,
    "registry": 5,
    "lock": 6,
    "resolve": 7,
    "layer": 8,
    "export": 9,
    "sign": 10,
    "attest": 11,
    "inspect": 12, "boot": 12, "diff": 12,
    "pipeline": 13,
}

# Same-rank pairs (importer, imported) allowed to refer to each other, and why.
ALLOWED = {
    ("error", "digest"): "an error names the digests that did not match",
    ("files", "error"): "the atomic-file helpers return error::Result",
    ("oci", "digest"): "descriptors name their blobs by digest",
    ("oci", "error"): "a malformed document is an error naming it",
}

SKIP_FILES = {"main.rs", "lib.rs"}
SKIP_DIRS = {"cli"}

PATH_RE = re.compile(r"\b(crate::|(?:super::)+)\s*(\{|[A-Za-z_][A-Za-z0-9_]*)")


def module_path(rel):
    """`store/locks.rs` -> ["store", "locks"]; `store/mod.rs` -> ["store"]."""
    parts = rel[:-3].split("/")
    if parts[-1] == "mod":
        parts.pop()
    return parts


def strip_comments(text):
    """The text with comments blanked (lines kept) and string contents dropped."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 8]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r"r(#*)\"", text[i:]).group(1)
            end = '"' + hashes
            j = text.find(end, i + 2 + len(hashes))
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]) or text.startswith("'\\u{", i):
            j = text.find("'", i + 1 if text[i + 1] != "\\" else i + 3)
            out.append("' '")
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def group_heads(text, start):
    """The first segments of the items of the `{...}` group opening at `start`."""
    depth, j, heads, item = 0, start, [], ""
    while j < len(text):
        c = text[j]
        if c == "{":
            depth += 1
            if depth == 1:
                j += 1
                continue
        elif c == "}":
            depth -= 1
            if depth == 0:
                break
        if depth == 1 and c == ",":
            heads.append(item)
            item = ""
        elif depth >= 1:
            item += c
        j += 1
    heads.append(item)
    out = []
    for h in heads:
        m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", h)
        if m and m.group(1) != "self":
            out.append(m.group(1))
    return out


def references(text, modpath):
    """(line, top-level module) for every reference to a crate module."""
    code = strip_comments(text)
    for m in PATH_RE.finditer(code):
        prefix, head = m.group(1), m.group(2)
        if prefix != "crate::":
            climbs = prefix.count("super::")
            if climbs != len(modpath):
                continue  # stays inside its own module
        line = code.count("\n", 0, m.start()) + 1
        heads = group_heads(code, m.start(2)) if head == "{" else [head]
        for h in heads:
            yield line, h


def check(root):
    src = os.path.join(root, "src")
    problems = []
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        dirnames.sort()
        for name in sorted(filenames):
            if not name.endswith(".rs"):
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rel in SKIP_FILES:
                continue
            modpath = module_path(rel)
            mine = modpath[0]
            shown = f"src/{rel}"
            if mine not in RANKS:
                problems.append(f"{shown}:1: module {mine} has no rank: add it to RANKS "
                                "in scripts/check-stages.py and to ARCHITECTURE.md")
                continue
            with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                text = f.read()
            for line, other in references(text, modpath):
                if other == mine or other in ("self", "super", "crate"):
                    continue
                if other not in RANKS:
                    continue  # an item of lib.rs, or a macro: not a stage
                a, b = RANKS[mine], RANKS[other]
                if b > a:
                    problems.append(f"{shown}:{line}: module {mine} (rank {a}) imports {other} (rank {b})")
                elif b == a and (mine, other) not in ALLOWED:
                    problems.append(f"{shown}:{line}: module {mine} (rank {a}) imports {other}, "
                                    f"of the same rank (allow it in ALLOWED with a reason, or move it)")
    return problems


def self_test():
    """The checker catches upward imports in each form, and passes a clean tree."""
    files = {
        "src/lib.rs": "pub mod error;\npub mod store;\npub mod pipeline;\n",
        "src/main.rs": "use kiln::pipeline::run;\n",
        "src/cli/mod.rs": "use crate::pipeline;\n",
        "src/error.rs": "pub type Result<T> = std::result::Result<T, ()>;\n",
        "src/store/mod.rs": "//! See [`crate::pipeline::run`].\nuse crate::error::Result;\n"
                            "mod locks;\nconst S: &str = \"crate::pipeline::run\";\n",
        "src/store/locks.rs": "use super::Store;\nuse crate::error::{self, Result};\n",
        "src/pipeline/mod.rs": "use crate::{error::Result, store};\n",
    }
    bad = {
        "src/store/locks.rs": "use crate::{error::Result,\n    pipeline::run};\n",
        "src/store/mod.rs": "fn f() { crate::pipeline::run(); }\n",
        "src/error.rs": "use super::store::Store;\n",
    }
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for path, text in files.items():
            os.makedirs(os.path.dirname(os.path.join(tmp, path)), exist_ok=True)
            with open(os.path.join(tmp, path), "w") as f:
                f.write(text)
        clean = check(tmp)
        if clean:
            failures.append(f"a clean tree was refused: {clean}")
        for path, text in bad.items():
            with open(os.path.join(tmp, path)) as f:
                before = f.read()
            with open(os.path.join(tmp, path), "w") as f:
                f.write(text)
            found = check(tmp)
            if not any(p.startswith(path + ":") and "imports" in p for p in found):
                failures.append(f"an upward import in {path} ({text.strip()!r}) was not caught: {found}")
            with open(os.path.join(tmp, path), "w") as f:
                f.write(before)
        with open(os.path.join(tmp, "src/nowhere.rs"), "w") as f:
            f.write("\n")
        if not any("no rank" in p for p in check(tmp)):
            failures.append("a module with no rank was not caught")
    for f in failures:
        print(f"self-test: {f}", file=sys.stderr)
    if failures:
        return 1
    print("check-stages: self-test passed", file=sys.stderr)
    return 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    if len(argv) > 2 or (len(argv) == 2 and argv[1].startswith("-")):
        print(__doc__, file=sys.stderr)
        return 2
    root = argv[1] if len(argv) == 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    problems = check(root)
    for p in problems:
        print(p)
    if problems:
        print(f"check-stages: {len(problems)} reference(s) against the stage order "
              "(see ARCHITECTURE.md)", file=sys.stderr)
        return 1
    print("check-stages: every module only looks down", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
