//! The `[accounts]` layer: the account files of everything below it (the
//! base's layers, read back from the store with their whiteouts applied,
//! then the recipe's own layers as planned) merged with the recipe's users
//! and groups by `source::accounts`, written as one layer on top.

use super::below::Found;
use crate::error::{Error, Result};
use crate::layer::read::Tree;
use crate::plan::{Content, DirMap, Entry, EntryKind, LayerPlan};
use crate::recipe::{AccountsSection, Recipe};
use crate::source::accounts::{self, AccountFiles};
use crate::source::sysusers;

use super::packages::Scripts;
use crate::store::{LayerRecord, Store};

const FILES: [&str; 4] = ["etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"];

/// The account files of the image below the `[accounts]` layer.
fn below(
    store: &Store,
    base: &[LayerRecord],
    plans: &mut [LayerPlan],
) -> Result<Tree<Option<Found>>> {
    super::below::files(store, base, plans, |p| FILES.contains(&p))
}

/// Drops the `/etc/passwd` and `/etc/group` that `source::deb::install`
/// made from base-passwd's master files where a layer below already has
/// that file: base-passwd's `postinst` copies a master file only on a first
/// install, and a lower layer's accounts are never replaced.
pub(super) fn keep_lower_account_files(
    store: &Store,
    base: &[LayerRecord],
    plans: &mut [LayerPlan],
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

/// Adds the `sysusers.d` files a layer's packages install to their scripts.
pub(super) fn add_sysusers(
    installed: &std::collections::BTreeMap<String, (Entry, String)>,
    scripts: &mut [Scripts],
) -> Result<()> {
    for (path, (entry, owner)) in installed {
        let Some(name) = path.strip_prefix("usr/lib/sysusers.d/") else {
            continue;
        };
        if !name.ends_with(".conf") || name.contains('/') {
            continue;
        }
        let EntryKind::File { content, .. } = &entry.kind else {
            continue;
        };
        let bytes = super::below::bytes_of(content)?;
        if let Some(s) = scripts.iter_mut().rev().find(|s| s.package == *owner) {
            s.sysusers
                .push((path.clone(), String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    Ok(())
}

/// An account a package's scripts created: for the build's report.
pub(super) struct Made {
    pub(super) package: String,
    pub(super) name: String,
    pub(super) user: bool,
    pub(super) id: u32,
}

/// One account call a package makes, with where it was read.
pub(super) struct FromPackage {
    package: String,
    call: sysusers::Call,
}

/// With `from-packages`, the account calls of the recipe's packages:
/// packages in name order, then `preinst`, `postinst` and `sysusers.d`
/// files, each in its own order. A call kiln cannot read is an error,
/// unless the recipe declares that account itself or ignores the package.
pub(super) fn package_calls(
    recipe: &Recipe,
    section: &AccountsSection,
    scripts: &mut [Scripts],
) -> Result<Vec<FromPackage>> {
    if !section.from_packages {
        return Ok(Vec::new());
    }
    scripts.sort_by(|a, b| a.package.cmp(&b.package));
    let declared = |name: &str| {
        section.users.iter().any(|u| u.get_ref().name == name)
            || section.groups.iter().any(|g| g.get_ref().name == name)
    };
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for s in scripts.iter() {
        if section.ignore_packages.contains(&s.package) || !seen.insert(s.package.clone()) {
            continue;
        }
        for (which, text) in [("preinst", &s.preinst), ("postinst", &s.postinst)] {
            let Some(text) = text else { continue };
            match sysusers::script_calls(text) {
                Ok(calls) => out.extend(calls.into_iter().map(|call| FromPackage {
                    package: s.package.clone(),
                    call,
                })),
                Err(e) if e.name.as_deref().is_some_and(declared) => {}
                Err(e) => {
                    return Err(Error::invalid(
                        format!(
                            "`{}`: with `[accounts] from-packages`, the `{which}` script of package `{}` creates an account kiln cannot read at line {} ({}): `{}`",
                            recipe.source.path.display(),
                            s.package,
                            e.line,
                            e.why,
                            e.text
                        ),
                        Some(format!(
                            "declare that account under `[accounts]` yourself (`users = [{{ name = \"{}\", uid = …, gid = … }}]`), or leave the package's accounts out with `ignore-packages = [\"{}\"]`",
                            e.name.as_deref().unwrap_or("NAME"),
                            s.package
                        )),
                    ))
                }
            }
        }
        for (path, text) in &s.sysusers {
            match sysusers::sysusers_calls(text) {
                Ok(calls) => out.extend(calls.into_iter().map(|call| FromPackage {
                    package: s.package.clone(),
                    call,
                })),
                Err((line, why)) => {
                    return Err(Error::invalid(
                        format!(
                            "`{}`: with `[accounts] from-packages`, `/{path}` of package `{}` cannot be read at line {line}: {why}",
                            recipe.source.path.display(),
                            s.package
                        ),
                        Some(format!(
                            "declare its accounts under `[accounts]` yourself, or leave them out with `ignore-packages = [\"{}\"]`",
                            s.package
                        )),
                    ))
                }
            }
        }
    }
    Ok(out)
}

/// The `[accounts]` layer over the base's layers, `plans` and their
/// directories, the merged files (for checking `config.user`), and the
/// accounts that packages created.
pub(super) fn layer(
    store: &Store,
    recipe: &Recipe,
    section: &AccountsSection,
    from: &[FromPackage],
    (base, plans, dirs): (&[LayerRecord], &mut [LayerPlan], &DirMap),
    epoch: u64,
) -> Result<(LayerPlan, AccountFiles, Vec<Made>)> {
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
    let mut merged = accounts::merge(&recipe.source, section, &found)?;
    let calls: Vec<sysusers::Call> = from.iter().map(|f| f.call.clone()).collect();
    let (homes, created) = sysusers::apply(&mut merged, &calls).map_err(|(at, why)| {
        Error::invalid(
            format!(
                "`{}`: with `[accounts] from-packages`, an account package `{}` creates cannot be added: {why}",
                recipe.source.path.display(),
                from[at].package
            ),
            Some("declare the account under `[accounts]` yourself, or leave the package's accounts out with `ignore-packages`".into()),
        )
    })?;
    let dir = |path: &str| {
        dirs.get(path).copied().unwrap_or(crate::plan::DirMeta {
            mode: 0o755,
            uid: 0,
            gid: 0,
        })
    };
    let mut entries = vec![dir("etc").entry("etc")];
    // The homes the tools would create, where nothing below has them.
    let mut made = std::collections::BTreeSet::from(["etc".to_string()]);
    for h in &homes {
        let rel = h.path.trim_matches('/').to_string();
        if rel.is_empty() || dirs.contains_key(rel.as_str()) || rel.split('/').any(|c| c == "..") {
            continue;
        }
        let mut at = String::new();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            if at != rel && made.insert(at.clone()) {
                entries.push(dir(&at).entry(&at));
            }
        }
        if made.insert(rel.clone()) {
            entries.push(
                crate::plan::DirMeta {
                    mode: 0o755,
                    uid: h.uid,
                    gid: h.gid,
                }
                .entry(&rel),
            );
        }
    }
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
    entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    let plan = LayerPlan::new(Some("accounts".into()), entries, recipe.compression, epoch);
    let made = created
        .iter()
        .filter_map(|c| {
            let (name, _) = from[c.call].call.account()?;
            Some(Made {
                package: from[c.call].package.clone(),
                name: name.to_string(),
                user: c.user,
                id: c.id,
            })
        })
        .collect();
    Ok((plan, merged, made))
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
