//! The lock's `satisfied` names, checked when a layer is built: `kiln lock`
//! records a name the base or an earlier layer already installs instead of
//! pinning it; if the base has changed since (its recipe dropped the
//! package), the image would silently lack it. The image below is asked
//! what it holds: the dpkg database of the base's layers (`status.d/NAME`
//! as kiln and distroless images keep it, or a whole `status` file) and of
//! the packages the recipe's layers install, names and `Provides` both.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};
use crate::layer::read::{self, Kind, Paths, Rules, Tree, Visitor};
use crate::plan::{Content, Entry, EntryKind};
use crate::recipe::Recipe;
use crate::resolve::Satisfied;
use crate::source::deb::control;
use crate::store::{LayerRecord, Store};

/// Keeps the dpkg database files a layer writes; whiteouts remove them.
struct Status;

fn is_status(path: &str) -> bool {
    path == "var/lib/dpkg/status"
        || path
            .strip_prefix("var/lib/dpkg/status.d/")
            .is_some_and(|n| !n.is_empty() && !n.contains('/') && !n.contains('.'))
}

impl Visitor for Status {
    type Node = Option<String>;
    const RULES: Rules = Rules {
        paths: Paths::AsWritten,
        whiteouts: true,
    };

    fn entry(&mut self, tree: &mut Tree<Self::Node>, entry: read::Entry<'_>) -> Result<()> {
        if !is_status(&entry.path) {
            return Ok(());
        }
        let text = if entry.kind == Kind::File {
            let mut bytes = Vec::new();
            entry
                .data
                .read_to_end(&mut bytes)
                .map_err(|e| Error::io("read", &entry.path, e))?;
            Some(String::from_utf8_lossy(&bytes).into_owned())
        } else {
            None
        };
        tree.insert(entry.path, text);
        Ok(())
    }

    fn hard_link(&mut self, _: &mut Tree<Self::Node>, _: read::HardLink) -> Result<()> {
        Ok(())
    }
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
    let mut tree = Tree::new();
    for layer in base {
        let path = store.blob_path(&layer.digest);
        let blob = std::io::BufReader::new(store.open_blob(&layer.digest)?);
        let mut tar = read::decompress(blob, &layer.media_type, &layer.digest)?;
        let bad = |e: std::io::Error| crate::store::verify_error(e, &path);
        read::walk_layer(&mut tar, &mut tree, &mut Status, bad)?;
    }
    let mut names = BTreeSet::new();
    for (_, text) in tree.iter() {
        if let Some(text) = text {
            add_names(text, &mut names);
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
            let text = match content {
                Content::Inline(b) => String::from_utf8_lossy(b).into_owned(),
                Content::Host(p) => {
                    String::from_utf8_lossy(&std::fs::read(p).map_err(|e| Error::io("read", p, e))?)
                        .into_owned()
                }
            };
            add_names(&text, names);
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
