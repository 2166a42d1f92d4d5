//! Java's trust store for a packages layer that installs
//! `ca-certificates-java` over a `ca-certificates` of a lower layer (a
//! base's): `source::deb::install` makes the store from its own layer's
//! certificates, so here it is made from the certificates below, read from
//! the base's layers in the store (whiteouts applied) and the recipe's
//! earlier layers as planned.

use std::collections::BTreeMap;

use crate::error::{Error, IoContext, Result};
use crate::layer::read::{self, Kind, Paths, Rules, Tree, Visitor};
use crate::plan::{Content, Entry, EntryKind, LayerPlan};
use crate::source::deb::{install, truststore};
use crate::store::{LayerRecord, Store};

/// Whether `path` is a certificate file of the CA bundle.
fn is_cert(path: &str) -> bool {
    path.starts_with("usr/share/ca-certificates/") && path.ends_with(".crt")
}

/// Keeps the certificate files a layer writes; anything else at such a
/// path (a link, a directory) or a whiteout removes them.
struct Certs;

impl Visitor for Certs {
    type Node = Option<Vec<u8>>;
    const RULES: Rules = Rules {
        paths: Paths::AsWritten,
        whiteouts: true,
    };

    fn entry(&mut self, tree: &mut Tree<Self::Node>, entry: read::Entry<'_>) -> Result<()> {
        if !is_cert(&entry.path) {
            return Ok(());
        }
        let found = if entry.kind == Kind::File {
            let mut bytes = Vec::new();
            entry
                .data
                .read_to_end(&mut bytes)
                .map_err(|e| Error::io("read", &entry.path, e))?;
            Some(bytes)
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

/// Adds `/etc/ssl/certs/java/cacerts` to `installed` when its layer installs
/// `ca-certificates-java` but the store was not made there (no
/// `ca-certificates` in the layer), from the certificates below.
pub(super) fn from_lower_layers(
    store: &Store,
    base: &[LayerRecord],
    plans: &[LayerPlan],
    installed: &mut BTreeMap<String, (Entry, String)>,
) -> Result<()> {
    let wants = installed.contains_key("var/lib/dpkg/status.d/ca-certificates-java");
    if !wants || installed.contains_key(truststore::PATH) {
        return Ok(());
    }
    let mut tree: Tree<Option<Vec<u8>>> = Tree::new();
    for layer in base {
        let path = store.blob_path(&layer.digest);
        let blob = std::io::BufReader::new(store.open_blob(&layer.digest)?);
        let mut tar = read::decompress(blob, &layer.media_type, &layer.digest)?;
        let bad = |e: std::io::Error| crate::store::verify_error(e, &path);
        read::walk_layer(&mut tar, &mut tree, &mut Certs, bad)?;
    }
    for plan in plans {
        for e in &plan.entries {
            if !is_cert(&e.path) {
                continue;
            }
            let found = match &e.kind {
                EntryKind::File { content, .. } => Some(match content {
                    Content::Host(p) => std::fs::read(p).at("read", p)?,
                    Content::Inline(b) => b.to_vec(),
                }),
                _ => None,
            };
            tree.insert(e.path.clone(), found);
        }
    }
    let certs: Vec<(String, Vec<u8>)> = tree
        .into_iter()
        .filter_map(|(p, f)| f.map(|f| (p, f)))
        .collect();
    if certs.is_empty() {
        return Ok(());
    }
    let bytes: std::sync::Arc<[u8]> =
        install::java_trust_store(&certs, " (in a lower layer)")?.into();
    let entry = Entry {
        path: truststore::PATH.to_string(),
        kind: EntryKind::File {
            size: bytes.len() as u64,
            digest: crate::digest::Digest::of(&bytes),
            content: Content::Inline(bytes),
        },
        mode: 0o644,
        uid: 0,
        gid: 0,
    };
    installed.insert(
        truststore::PATH.to_string(),
        (entry, "ca-certificates-java".to_string()),
    );
    Ok(())
}
