//! The other whole jobs of the command line, each one call: push a layout
//! already built, pull an image into a local output, copy between
//! registries.

use std::path::Path;

use super::Format;
use crate::digest::Digest;
use crate::error::Result;
use crate::export::{self, Output};
use crate::registry::{self, PushReport, Reference, Registry};
use crate::source::layout::open_any_with;
use crate::store::Store;

/// Pushes the OCI layout or archive at `source` to `target` straight from
/// its blobs (not copied into the store), every blob verified as it is
/// sent; returns what was pushed.
pub fn push(
    store: &Store,
    options: registry::Options,
    source: &Path,
    target: &Reference,
) -> Result<(Digest, PushReport)> {
    let (layout, _guard) = open_any_with(source, || store.temp_dir())?;
    let desc = layout.single_image()?;
    let (bytes, doc) = layout.read_document(&desc.digest)?;
    let top = crate::image::Stored {
        digest: desc.digest,
        size: bytes.len() as u64,
        media_type: doc.media_type(),
    };
    let registry = Registry::new(options, &[target])?;
    let report = registry.push_layout(layout.dir(), &top, target)?;
    Ok((top.digest, report))
}

/// Pulls `source` (every blob verified) and writes it to `out`: a VM bundle
/// directory for a bundle artifact, otherwise an OCI layout or archive named
/// by the reference's tag.
pub fn pull(
    store: &Store,
    options: registry::Options,
    source: &Reference,
    out: &Path,
    format: Format,
) -> Result<Digest> {
    let registry = Registry::new(options, &[source])?;
    let top = registry.pull(store, source, None)?;
    // Named as pulled (`REGISTRY/REPO:TAG`; `:latest` when pulled by digest).
    let names: Vec<_> = crate::image_name::ImageName::parse(&format!(
        "{}/{}:{}",
        source.registry(),
        source.repository(),
        source.tag().unwrap_or("latest")
    ))
    .into_iter()
    .collect();
    let output = Output {
        top: &top,
        names: &names,
        mtime: 0,
    };
    match (export::vm::from_artifact(store, &top)?, format) {
        (Some(bundle), _) => export::vm::write(store, &bundle, out)?,
        (None, Format::OciLayout) => export::layout::write(store, &output, out)?,
        (None, Format::OciArchive) => export::archive::write(store, &output, out)?,
        (None, Format::DockerArchive) => export::docker_archive::write(store, &output, out)?,
    }
    Ok(top.digest)
}

/// Copies `source` to every one of `targets` by digest, with the
/// signatures and attestations of the image (and, for an index, of its
/// platform manifests) that `scheme` keeps: the source is read once, then
/// written to each target, mounting blobs across repositories of one
/// registry where it can. Returns the digest and, per target, its push
/// report and how many signature and attestation manifests went with it.
pub fn copy(
    store: &Store,
    options: registry::Options,
    source: &Reference,
    targets: &[Reference],
    scheme: crate::sign::Scheme,
) -> Result<(Digest, Vec<(PushReport, usize)>)> {
    let mut refs: Vec<&Reference> = vec![source];
    refs.extend(targets);
    let registry = Registry::new(options, &refs)?;
    let top = registry.pull(store, source, None)?;
    let mut digests = vec![top.digest.clone()];
    if top.media_type == crate::oci::INDEX_MEDIA_TYPE {
        let what = format!("index `{}` from `{}`", top.digest, source.whole());
        let index = crate::oci::parse_index(&store.read(&top.digest)?, &what)?;
        digests.extend(index.manifests.into_iter().map(|m| m.digest));
    }
    let carried = crate::sign::referrers::collect(&registry, store, source, &digests)?;
    let mut out = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let mut mounts = vec![source.clone()];
        mounts.extend(targets[..i].iter().cloned());
        let report = registry.push(store, &top, target, &mounts)?;
        let attached =
            crate::sign::referrers::replicate(&registry, store, source, target, &carried, scheme)?;
        out.push((report, attached));
    }
    Ok((top.digest, out))
}
