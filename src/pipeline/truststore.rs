//! Java's trust store for a packages layer that installs
//! `ca-certificates-java` over a `ca-certificates` of a lower layer (a
//! base's): `source::deb::install` makes the store from its own layer's
//! certificates, so here it is made from the certificates below, read from
//! the base's layers in the store (whiteouts applied) and the recipe's
//! earlier layers as planned.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::plan::{Content, Entry, EntryKind, LayerPlan};
use crate::source::deb::{install, truststore};
use crate::store::{LayerRecord, Store};

/// Whether `path` is a certificate file of the CA bundle.
fn is_cert(path: &str) -> bool {
    path.starts_with("usr/share/ca-certificates/") && path.ends_with(".crt")
}

/// Adds `/etc/ssl/certs/java/cacerts` to `installed` when its layer installs
/// `ca-certificates-java` but the store was not made there (no
/// `ca-certificates` in the layer), from the certificates below.
pub(super) fn from_lower_layers(
    store: &Store,
    base: &[LayerRecord],
    plans: &mut [LayerPlan],
    installed: &mut BTreeMap<String, (Entry, String)>,
) -> Result<()> {
    let wants = installed.contains_key("var/lib/dpkg/status.d/ca-certificates-java");
    if !wants || installed.contains_key(truststore::PATH) {
        return Ok(());
    }
    let tree = super::below::files(store, base, plans, is_cert)?;
    let certs: Vec<(String, Vec<u8>)> = tree
        .into_iter()
        .filter_map(|(p, f)| f.map(|f| (p, f.bytes)))
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
