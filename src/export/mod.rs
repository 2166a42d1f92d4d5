//! Stage 6, export: a built image in the store → an OCI image layout
//! directory, an OCI archive (the same layout as one tar, with a
//! Docker-style `manifest.json` beside `index.json` so that `docker load`
//! takes it too), a docker-archive (`docker save`'s format), or a local
//! docker or podman (`load`).
//!
//! Outputs appear whole or not at all: everything is written beside the
//! destination under a temporary name, synced, then renamed into place. On
//! any error the destination is what it was before (the previous complete
//! output, or nothing).
//!
//! Writers of one destination take turns: each holds an exclusive lock on
//! `.NAME.kiln-lock` beside it while it writes (and removes it when done),
//! so concurrent builds to one `--out` all succeed and the last one wins
//! whole. Whoever holds the lock knows that any `.NAME.kiln-tmp-*` or
//! `.NAME.kiln-old-*` beside it was left by a writer that died, and removes
//! it; so are those of other outputs in the same directory whose lock is
//! free (see `export::lock`).

pub mod archive;
pub mod cpio;
pub mod docker_archive;
pub mod layout;
pub mod load;
mod lock;
pub mod vm;

use std::collections::BTreeSet;

use oci_spec::image::{Descriptor, ImageIndexBuilder, MediaType};

use crate::digest::Digest;
use crate::error::Result;
use crate::image::{oci_digest, Stored, INDEX_MEDIA_TYPE};
use crate::image_name::ImageName;
use crate::json::canonical;
use crate::oci::{self, Document, Manifest};
use crate::store::Store;

pub use lock::{lock_output, OutputLock};

/// What to put in an output: the top manifest or index, and the names to call it by.
#[derive(Debug, Clone)]
pub struct Output<'a> {
    /// The manifest or index the layout points at.
    pub top: &'a Stored,
    /// Full names, first first: each gets an `index.json` entry (its tag in
    /// `org.opencontainers.image.ref.name`, the whole name in
    /// `io.containerd.image.name`) and a `RepoTags` entry. None: one entry
    /// tagged `latest`, unnamed.
    pub names: &'a [ImageName],
    /// mtime of the archive's entries (`SOURCE_DATE_EPOCH` or 0).
    pub mtime: u64,
}

/// The annotation OCI layouts use to name an image (kiln writes the tag there).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The annotation containerd, docker and podman read an image's full name from.
pub const IMAGE_NAME: &str = "io.containerd.image.name";

impl Output<'_> {
    /// The layout's `index.json`: one descriptor per name, first name first.
    pub fn index_json(&self) -> Vec<u8> {
        let media = if self.top.media_type == INDEX_MEDIA_TYPE {
            MediaType::ImageIndex
        } else {
            MediaType::ImageManifest
        };
        let annotations: Vec<Vec<(&str, String)>> = if self.names.is_empty() {
            vec![vec![(REF_NAME, "latest".to_string())]]
        } else {
            self.names
                .iter()
                .map(|n| vec![(IMAGE_NAME, n.full()), (REF_NAME, n.tag().to_string())])
                .collect()
        };
        let manifests = annotations
            .into_iter()
            .map(|a| {
                let mut d =
                    Descriptor::new(media.clone(), self.top.size, oci_digest(&self.top.digest));
                d.set_annotations(Some(
                    a.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                ));
                d
            })
            .collect::<Vec<_>>();
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(manifests)
            .build()
            .expect("every required index field is set");
        canonical(&index)
    }

    /// The one image manifest a single-image format (docker's
    /// `manifest.json`, a docker-archive) holds: the top manifest, or for an
    /// index the first platform's (the recipe's first in `platforms`).
    pub fn single_manifest(&self, store: &Store) -> Result<(Digest, Manifest)> {
        let mut digest = self.top.digest.clone();
        loop {
            let what = format!("`{digest}` in the store");
            match oci::parse(&store.read(&digest)?, &what)? {
                Document::Manifest(m) => return Ok((digest, *m)),
                Document::Index(i) => match i.manifests.into_iter().next() {
                    Some(first) => digest = first.digest,
                    None => {
                        return Err(crate::error::Error::invalid(
                            format!("the index `{digest}` lists no manifest"),
                            Some("build an image with at least one platform".into()),
                        ))
                    }
                },
            }
        }
    }

    /// Docker's `manifest.json` for an OCI archive: the single manifest's
    /// config and layers as paths of the layout's blobs, and every name in
    /// `RepoTags`. The names are written in full (`docker.io/library/app:dev`):
    /// docker shows them short as ever, and podman, which reads this file
    /// when `index.json` names several images, then keeps them as they are
    /// instead of putting short ones under `localhost/`.
    pub fn docker_manifest_json(&self, store: &Store) -> Result<Vec<u8>> {
        let (_, m) = self.single_manifest(store)?;
        let blob = |d: &Digest| format!("blobs/sha256/{}", d.hex());
        let entry = serde_json::json!([{
            "Config": blob(&m.config.digest),
            "RepoTags": self.names.iter().map(ImageName::full).collect::<Vec<_>>(),
            "Layers": m.layers.iter().map(|l| blob(&l.digest)).collect::<Vec<_>>(),
        }]);
        Ok(canonical(&entry))
    }

    /// Every blob the output needs, found by walking from the top (sorted).
    pub fn blobs(&self, store: &Store) -> Result<BTreeSet<Digest>> {
        let mut out = BTreeSet::new();
        let mut todo = vec![self.top.digest.clone()];
        while let Some(d) = todo.pop() {
            if !out.insert(d.clone()) {
                continue;
            }
            let what = format!("`{d}` in the store");
            match oci::parse(&store.read(&d)?, &what)? {
                Document::Index(i) => todo.extend(i.manifests.into_iter().map(|c| c.digest)),
                Document::Manifest(m) => out.extend(m.blobs().map(|b| b.digest.clone())),
            }
        }
        Ok(out)
    }
}

/// The `oci-layout` file's content.
pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
