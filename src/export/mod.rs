//! Stage 6, export: a built image in the store → an OCI image layout
//! directory or an OCI archive (the same layout as one tar).
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
pub mod layout;
mod lock;
pub mod vm;

use std::collections::BTreeSet;

use oci_spec::image::{Descriptor, ImageIndexBuilder, MediaType};

use crate::digest::Digest;
use crate::error::Result;
use crate::image::{oci_digest, Stored, INDEX_MEDIA_TYPE};
use crate::json::canonical;
use crate::oci::{self, Document};
use crate::store::Store;

pub use lock::{lock_output, OutputLock};

/// What to put in an output: the top manifest or index, and the tags to name it by.
#[derive(Debug, Clone)]
pub struct Output<'a> {
    /// The manifest or index the layout points at.
    pub top: &'a Stored,
    /// Tags (`org.opencontainers.image.ref.name`); `latest` when empty.
    pub tags: &'a [String],
    /// mtime of the archive's entries (`SOURCE_DATE_EPOCH` or 0).
    pub mtime: u64,
}

/// The annotation OCI layouts use to name an image.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

impl Output<'_> {
    /// The layout's `index.json`: one descriptor per tag, first tag first.
    pub fn index_json(&self) -> Vec<u8> {
        let latest = ["latest".to_string()];
        let tags: &[String] = if self.tags.is_empty() {
            &latest
        } else {
            self.tags
        };
        let media = if self.top.media_type == INDEX_MEDIA_TYPE {
            MediaType::ImageIndex
        } else {
            MediaType::ImageManifest
        };
        let manifests = tags
            .iter()
            .map(|t| {
                let mut d =
                    Descriptor::new(media.clone(), self.top.size, oci_digest(&self.top.digest));
                d.set_annotations(Some(
                    [(REF_NAME.to_string(), t.clone())].into_iter().collect(),
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
