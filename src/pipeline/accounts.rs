//! The `[accounts]` layer: the account files of everything below it (the
//! base's layers, read back from the store with their whiteouts applied,
//! then the recipe's own layers as planned) merged with the recipe's users
//! and groups by `source::accounts`, written as one layer on top.

use crate::error::{Error, IoContext, Result};
use crate::layer::read::{self, Kind, Paths, Rules, Tree, Visitor};
use crate::plan::{Content, DirMap, Entry, EntryKind, LayerPlan};
use crate::recipe::{AccountsSection, Recipe};
use crate::source::accounts::{self, AccountFiles};
use crate::store::{LayerRecord, Store};

const FILES: [&str; 4] = ["etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"];

/// One account file below: its bytes, mode and owner.
#[derive(Clone)]
struct Found {
    bytes: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// Keeps the account files a layer writes; whiteouts remove them.
struct Accounts;

impl Visitor for Accounts {
    type Node = Option<Found>;
    const RULES: Rules = Rules {
        paths: Paths::AsWritten,
        whiteouts: true,
    };

    fn entry(&mut self, tree: &mut Tree<Self::Node>, entry: read::Entry<'_>) -> Result<()> {
        if !FILES.contains(&entry.path.as_str()) {
            return Ok(());
        }
        let found = if entry.kind == Kind::File {
            let mut bytes = Vec::new();
            entry
                .data
                .read_to_end(&mut bytes)
                .map_err(|e| Error::io("read", &entry.path, e))?;
            Some(Found {
                bytes,
                mode: entry.mode(0o644),
                uid: entry.uid,
                gid: entry.gid,
            })
        } else {
            None
        };
        tree.insert(entry.path, found);
        Ok(())
    }

    fn hard_link(&mut self, _: &mut Tree<Self::Node>, _: read::HardLink) -> Result<()> {
        Ok(())
    }
}

/// The account files of the image below the `[accounts]` layer.
fn below(store: &Store, base: &[LayerRecord], plans: &[LayerPlan]) -> Result<Tree<Option<Found>>> {
    let mut tree = Tree::new();
    for layer in base {
        let path = store.blob_path(&layer.digest);
        let blob = std::io::BufReader::new(store.open_blob(&layer.digest)?);
        let mut tar = read::decompress(blob, &layer.media_type, &layer.digest)?;
        let bad = |e: std::io::Error| crate::store::verify_error(e, &path);
        read::walk_layer(&mut tar, &mut tree, &mut Accounts, bad)?;
    }
    for plan in plans {
        for e in &plan.entries {
            if !FILES.contains(&e.path.as_str()) {
                continue;
            }
            let found = match &e.kind {
                EntryKind::File { content, .. } => Some(Found {
                    bytes: match content {
                        Content::Host(p) => std::fs::read(p).at("read", p)?,
                        Content::Inline(b) => b.to_vec(),
                    },
                    mode: e.mode,
                    uid: e.uid,
                    gid: e.gid,
                }),
                _ => None,
            };
            tree.insert(e.path.clone(), found);
        }
    }
    Ok(tree)
}

/// Drops the `/etc/passwd` and `/etc/group` that `source::deb::install`
/// made from base-passwd's master files where a layer below already has
/// that file: base-passwd's `postinst` copies a master file only on a first
/// install, and a lower layer's accounts are never replaced.
pub(super) fn keep_lower_account_files(
    store: &Store,
    base: &[LayerRecord],
    plans: &[LayerPlan],
    installed: &mut std::collections::BTreeMap<String, (Entry, String)>,
) -> Result<()> {
    let made = |installed: &std::collections::BTreeMap<String, (Entry, String)>, p: &str| {
        installed
            .get(p)
            .is_some_and(|(_, owner)| owner == "base-passwd")
    };
    if !made(installed, "etc/passwd") && !made(installed, "etc/group") {
        return Ok(());
    }
    let tree = below(store, base, plans)?;
    for path in ["etc/passwd", "etc/group"] {
        if made(installed, path) && tree.get(path).is_some_and(Option::is_some) {
            installed.remove(path);
        }
    }
    Ok(())
}

/// The `[accounts]` layer over `base` and `plans`, and the merged files
/// (for checking `config.user`).
pub(super) fn layer(
    store: &Store,
    recipe: &Recipe,
    section: &AccountsSection,
    base: &[LayerRecord],
    plans: &[LayerPlan],
    dirs: &DirMap,
    epoch: u64,
) -> Result<(LayerPlan, AccountFiles)> {
    let tree = below(store, base, plans)?;
    let text = |path: &str| {
        tree.get(path)
            .cloned()
            .flatten()
            .map(|f| String::from_utf8_lossy(&f.bytes).into_owned())
    };
    let found = AccountFiles {
        passwd: text("etc/passwd"),
        group: text("etc/group"),
        shadow: text("etc/shadow"),
        gshadow: text("etc/gshadow"),
    };
    let merged = accounts::merge(&recipe.source, section, &found)?;
    let etc = dirs.get("etc").copied().unwrap_or(crate::plan::DirMeta {
        mode: 0o755,
        uid: 0,
        gid: 0,
    });
    let mut entries = vec![etc.entry("etc")];
    let files = [
        ("etc/passwd", &merged.passwd, 0o644),
        ("etc/group", &merged.group, 0o644),
        ("etc/shadow", &merged.shadow, 0o640),
        ("etc/gshadow", &merged.gshadow, 0o640),
    ];
    let mut files: Vec<_> = files.into_iter().collect();
    files.sort_by_key(|(p, _, _)| *p);
    for (path, text, mode) in files {
        let Some(text) = text else { continue };
        let bytes: std::sync::Arc<[u8]> = std::sync::Arc::from(text.as_bytes());
        // The file keeps the mode and owner it had below (shadow's group).
        let (mode, uid, gid) = tree
            .get(path)
            .cloned()
            .flatten()
            .map_or((mode, 0, 0), |f| (f.mode, f.uid, f.gid));
        entries.push(Entry {
            path: path.to_string(),
            kind: EntryKind::File {
                size: bytes.len() as u64,
                digest: crate::digest::Digest::of(&bytes),
                content: Content::Inline(bytes),
            },
            mode,
            uid,
            gid,
        });
    }
    let plan = LayerPlan::new(Some("accounts".into()), entries, recipe.compression, epoch);
    Ok((plan, merged))
}

/// Refuses a `config.user` that names a user (or group) the image's account
/// files do not have: the runtime would fail to start the container.
pub(super) fn check_user(recipe: &Recipe, files: &AccountFiles) -> Result<()> {
    let Some(user) = recipe.config.user.as_deref() else {
        return Ok(());
    };
    let (name, group) = user
        .split_once(':')
        .map_or((user, None), |(u, g)| (u, Some(g)));
    let numeric = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let missing = if !numeric(name) && !files.has_user(name) {
        Some(format!(
            "user `{name}`, which is not in the image's `/etc/passwd`"
        ))
    } else {
        group
            .filter(|g| !numeric(g) && !files.has_group(g))
            .map(|g| format!("group `{g}`, which is not in the image's `/etc/group`"))
    };
    let Some(missing) = missing else {
        return Ok(());
    };
    let span = recipe
        .source
        .text
        .find(&format!("{user:?}"))
        .map_or(0..0, |i| i..i + user.len() + 2);
    Err(recipe
        .source
        .error(span, format!("`config.user` names {missing}"))
        .hint("add it under `[accounts]`, install the package that provides it, or give a numeric `uid:gid`")
        .into())
}
