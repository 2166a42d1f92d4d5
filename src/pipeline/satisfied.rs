//! The lock's `satisfied` names, checked when a layer is built: `kiln lock`
//! records a name the base or an earlier layer already installs instead of
//! pinning it; if the base has changed since (its recipe dropped the
//! package), the image would silently lack it. The image below is asked
//! what it holds: the dpkg database of the base's layers (`status.d/NAME`
//! as kiln and distroless images keep it, or a whole `status` file) and of
//! the packages the recipe's layers install, names and `Provides` both.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::Result;
use crate::plan::{Entry, EntryKind};
use crate::recipe::Recipe;
use crate::resolve::Satisfied;
use crate::source::deb::control;
use crate::store::{LayerRecord, Store};

fn is_status(path: &str) -> bool {
    path == "var/lib/dpkg/status"
        || path
            .strip_prefix("var/lib/dpkg/status.d/")
            .is_some_and(|n| !n.is_empty() && !n.contains('/') && !n.contains('.'))
}

/// Adds the names (and what they provide) of the packages `text` says are installed.
fn add_names(text: &str, names: &mut BTreeSet<String>) {
    for stanza in control::parse(text) {
        let installed = stanza
            .get("Status")
            .is_none_or(|s| s.ends_with(" installed"));
        let Some(name) = stanza.get("Package").filter(|_| installed) else {
            continue;
        };
        names.insert(name.clone());
        for group in control::relations(stanza.get("Provides").map_or("", String::as_str)) {
            names.extend(group.into_iter().map(|r| r.name));
        }
    }
}

/// What the base's layers install, by dpkg's database.
pub(super) fn base_names(store: &Store, base: &[LayerRecord]) -> Result<BTreeSet<String>> {
    let tree = super::below::files(store, base, &mut [], is_status)?;
    let mut names = BTreeSet::new();
    for (_, text) in tree.iter() {
        if let Some(found) = text {
            add_names(&String::from_utf8_lossy(&found.bytes), &mut names);
        }
    }
    Ok(names)
}

/// Adds what a layer's packages install (their `status.d` stanzas).
pub(super) fn add_layer(
    installed: &BTreeMap<String, (Entry, String)>,
    names: &mut BTreeSet<String>,
) -> Result<()> {
    for (path, (entry, _)) in installed {
        if !is_status(path) {
            continue;
        }
        if let EntryKind::File { content, .. } = &entry.kind {
            add_names(
                &String::from_utf8_lossy(&super::below::bytes_of(content)?),
                names,
            );
        }
    }
    Ok(())
}

/// Refuses a `satisfied` name that nothing below (nor the layer) installs.
pub(super) fn check(
    recipe: &Recipe,
    satisfied: &[Satisfied],
    names: &BTreeSet<String>,
) -> Result<()> {
    let Some(gone) = satisfied.iter().find(|s| !names.contains(&s.name)) else {
        return Ok(());
    };
    Err(recipe
        .source
        .error(
            gone.span.clone(),
            format!(
                "`{}` is not pinned: `{}` records it as installed by the base or an earlier layer, but nothing below this layer installs it any more",
                gone.name, gone.lock_line
            ),
        )
        .hint(format!(
            "the base has changed since the lock was written; run `kiln lock {}` again so that the lock pins `{}`, commit the lockfile, and build again",
            recipe.source.path.display(),
            gone.name
        ))
        .into())
}
