//! The shared layer cache in an OCI registry (`kiln build --cache
//! REGISTRY/REPO`): one small artifact manifest per layer input key, tagged
//! `kiln-layer-<hex of the input digest>`, whose config is the record
//! (input, digest, diff_id, size, media type) and whose one layer is the
//! layer blob itself, so the registry keeps the blob while the record exists.
//!
//! Nothing from the registry is trusted: the blob is verified by digest as
//! it streams into the store, decompressed once, and its diff_id must match
//! both the record and the tar the local inputs make (hashed, not
//! compressed). An entry that fails any check is ignored and the layer
//! rebuilt (and pushed again).
//!
//! Unless it is signed by a key the build trusts ([`Trust`]): a machine
//! that publishes with a signing key puts an ECDSA P-256 signature of the
//! record (the config blob's bytes) in the entry's annotations, and a build
//! given that key's public half takes such an entry on its blob's digest
//! alone (checked as it streams in), without decompressing it or remaking
//! its tar from the local inputs. An entry whose signature is missing or
//! made by another key gets the full check. The registry being down or refusing never
//! fails a build: the first failure to reach it is reported and the cache is
//! not asked again during this build.

use std::io::BufReader;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::Result;
use crate::image::{Stored, MANIFEST_MEDIA_TYPE};
use crate::plan::LayerPlan;
use crate::registry::{Reference, Registry};
use crate::store::{LayerRecord, Store};

/// The artifact type (and config media type) of a cache entry.
pub const CACHE_MEDIA_TYPE: &str = "application/vnd.kiln.layer-cache.v1+json";

/// The annotation naming an entry's input key.
const INPUT_ANNOTATION: &str = "dev.kiln.layer-cache.input";

/// The annotation holding the record's signature (base64 DER ECDSA P-256).
const SIGNATURE_ANNOTATION: &str = "dev.kiln.layer-cache.signature";

/// The most bytes an entry's record may have (kiln writes about 300).
const MAX_RECORD: u64 = 64 << 10;

/// Whose records the cache signs and trusts.
#[derive(Clone, Default)]
pub struct Trust {
    /// Signs the records this build publishes.
    pub sign: Option<Arc<p256::ecdsa::SigningKey>>,
    /// Records signed by one of these are taken on their blob's digest.
    pub keys: Vec<Arc<crate::sign::cosign::NamedKey>>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("signs", &self.sign.is_some())
            .field(
                "keys",
                &self.keys.iter().map(|k| &k.path).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What `--json` says about the remote cache.
#[derive(Debug, Clone, Serialize)]
pub struct CacheReport {
    /// `REGISTRY/REPOSITORY`.
    pub repository: String,
    /// False when the registry could not be reached (or refused us).
    pub reachable: bool,
    /// Why not, when it was not.
    pub error: Option<String>,
    /// Layers taken from it.
    pub hits: usize,
    /// Of those, layers taken on a trusted signature (`--cache-key`),
    /// without remaking their tar from the local inputs.
    pub signed: usize,
    /// Layers it had no (usable) entry for.
    pub misses: usize,
    /// Entries ignored because they failed a check.
    pub rejected: usize,
    /// Entries pushed to it.
    pub pushed: usize,
}

/// The record, as the entry's config blob.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Record {
    input: Digest,
    #[serde(flatten)]
    layer: LayerRecord,
}

/// A registry repository used as a layer cache for one build.
pub struct RemoteCache {
    repo: Reference,
    registry: Registry,
    trust: Trust,
    signed: AtomicUsize,
    unreachable: Mutex<Option<String>>,
    hits: AtomicUsize,
    misses: AtomicUsize,
    rejected: AtomicUsize,
    pushed: AtomicUsize,
}

impl std::fmt::Debug for RemoteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCache")
            .field("repo", &self.repo.whole())
            .finish()
    }
}

/// What happened when the cache was asked for a layer.
pub enum Lookup {
    /// Verified and remembered in the local store.
    Hit(LayerRecord),
    /// No usable entry: build the layer (and push it).
    Miss,
    /// The cache is out of reach: build, push nothing.
    Off,
}

impl RemoteCache {
    /// A cache in `repo` (its tag and digest are ignored), reached with
    /// `options` but failing fast: a cache is worth no long waits.
    pub fn new(
        repo: &Reference,
        options: &crate::registry::Options,
        trust: Trust,
    ) -> Result<RemoteCache> {
        let mut options = options.clone();
        options.retries = 1;
        let repo = Reference::with_tag(
            repo.registry().to_string(),
            repo.repository().to_string(),
            "latest".to_string(),
        );
        let registry = Registry::new(options, &[&repo])?;
        Ok(RemoteCache {
            repo,
            registry,
            trust,
            signed: AtomicUsize::new(0),
            unreachable: Mutex::new(None),
            hits: AtomicUsize::new(0),
            misses: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
            pushed: AtomicUsize::new(0),
        })
    }

    /// `REGISTRY/REPOSITORY`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.repo.registry(), self.repo.repository())
    }

    fn entry(&self, input: &Digest) -> Reference {
        Reference::with_tag(
            self.repo.registry().to_string(),
            self.repo.repository().to_string(),
            tag(input),
        )
    }

    fn off(&self) -> bool {
        self.unreachable
            .lock()
            .expect("no panics hold this lock")
            .is_some()
    }

    /// Marks the cache unreachable; returns the message to show the first time.
    fn fail(&self, e: &crate::error::Error) -> Option<String> {
        let mut slot = self.unreachable.lock().expect("no panics hold this lock");
        if slot.is_some() {
            return None;
        }
        let text = crate::error::render_chain(e);
        *slot = Some(text.clone());
        Some(format!(
            "layer cache `{}` is unreachable; building from local inputs ({text})",
            self.name()
        ))
    }

    /// Looks `plan` up (its key `input`). `note` receives what to tell the user.
    pub fn fetch(
        &self,
        store: &Store,
        plan: &LayerPlan,
        input: &Digest,
        epoch: u64,
        note: &dyn Fn(&str),
    ) -> Lookup {
        if self.off() {
            return Lookup::Off;
        }
        let entry = self.entry(input);
        match self.registry.has_manifest(&entry) {
            Ok(true) => {}
            Ok(false) => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                return Lookup::Miss;
            }
            Err(e) => {
                if let Some(m) = self.fail(&e) {
                    note(&m);
                }
                return Lookup::Off;
            }
        }
        match self.take(store, plan, input, &entry, epoch) {
            Ok(record) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Lookup::Hit(record)
            }
            Err(why) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                self.misses.fetch_add(1, Ordering::Relaxed);
                note(&format!(
                    "layer cache entry `{}` ignored, rebuilding the layer: {why}",
                    entry.whole()
                ));
                Lookup::Miss
            }
        }
    }

    /// Downloads and checks an entry; remembers it locally when it passes.
    fn take(
        &self,
        store: &Store,
        plan: &LayerPlan,
        input: &Digest,
        entry: &Reference,
        epoch: u64,
    ) -> std::result::Result<LayerRecord, String> {
        let show = |e: crate::error::Error| crate::error::render_chain(&e);
        // Refused before its blobs are fetched: what a registry says an
        // entry holds is not trusted to be small.
        let check = |doc: &crate::oci::Document| -> Result<()> {
            let crate::oci::Document::Manifest(m) = doc else {
                return Err(crate::error::Error::invalid(
                    "it is an index, not a kiln layer cache entry",
                    None,
                ));
            };
            if m.config.media_type != CACHE_MEDIA_TYPE || m.layers.len() != 1 {
                return Err(crate::error::Error::invalid(
                    format!(
                        "it is not a kiln layer cache entry (config `{}`, {} layers)",
                        m.config.media_type,
                        m.layers.len()
                    ),
                    None,
                ));
            }
            if m.config.size > MAX_RECORD {
                return Err(crate::error::Error::invalid(
                    format!(
                        "its record is {} bytes, more than a record's {MAX_RECORD}",
                        m.config.size
                    ),
                    None,
                ));
            }
            Ok(())
        };
        let stored = self
            .registry
            .pull_checked(store, entry, None, &check)
            .map_err(show)?;
        let bytes = store.read(&stored.digest).map_err(show)?;
        let manifest =
            crate::oci::parse_manifest(&bytes, &format!("cache entry `{}`", entry.whole()))
                .map_err(show)?;
        let config = store.read(&manifest.config.digest).map_err(show)?;
        let record: Record = serde_json::from_slice(&config)
            .map_err(|e| format!("its record is not readable: {e}"))?;
        let layer = &manifest.layers[0];
        let r = record.layer;
        if record.input != *input
            || r.digest != layer.digest
            || r.size != layer.size
            || r.media_type != layer.media_type
        {
            return Err("its record does not match its key or its layer".into());
        }
        // Signed by a key we trust: its blob was verified by digest as it
        // came in, and the signed record vouches for its diff_id.
        if let Some(sig) = manifest.annotations().get(SIGNATURE_ANNOTATION) {
            if self
                .trust
                .keys
                .iter()
                .any(|k| crate::sign::cosign::verify_bytes(&k.key, &config, sig))
            {
                store.remember_layer(input, &r).map_err(show)?;
                self.signed.fetch_add(1, Ordering::Relaxed);
                return Ok(r);
            }
        }
        // The blob is in the store, verified by digest; its tar must be the
        // one the record names and the one the local inputs make. The two
        // checks read different things (the blob, the host files), so they
        // run side by side.
        let (fetched, local) = std::thread::scope(|s| {
            let fetched = s.spawn(|| -> std::result::Result<Digest, String> {
                // Just pulled, verified and stamped: not hashed a second time
                // (unless its stamp says it moved since).
                let path = store.blob_path(&r.digest);
                let file = std::fs::File::open(&path)
                    .map_err(|e| format!("cannot open `{}`: {e}", path.display()))?;
                let stamped = file.metadata().is_ok_and(|m| store.stamped(&m, &r.digest));
                let blob: Box<dyn std::io::Read + Send> = if stamped {
                    Box::new(BufReader::with_capacity(1 << 20, file))
                } else {
                    Box::new(BufReader::with_capacity(
                        1 << 20,
                        store.open_blob(&r.digest).map_err(show)?,
                    ))
                };
                let mut tar =
                    crate::layer::read::decompress(blob, &r.media_type, &r.digest).map_err(show)?;
                let mut hashing = crate::digest::HashingWriter::new(std::io::sink());
                std::io::copy(&mut tar, &mut hashing)
                    .map_err(|e| format!("its layer does not decompress: {e}"))?;
                Ok(hashing.finish().1)
            });
            let local = crate::layer::diff_id(&plan.entries, epoch).map_err(show);
            (fetched.join().expect("the check does not panic"), local)
        });
        let actual = fetched?;
        if actual != r.diff_id {
            return Err(format!(
                "its layer's diff_id is {actual}, not the {} its record says",
                r.diff_id
            ));
        }
        let local = local?;
        if local != r.diff_id {
            return Err(format!(
                "its layer's diff_id is {}, but the local inputs make {local}",
                r.diff_id
            ));
        }
        store.remember_layer(input, &r).map_err(show)?;
        Ok(r)
    }

    /// Pushes a layer built here (blob and record). Failures are notes.
    pub fn publish(&self, store: &Store, input: &Digest, layer: &LayerRecord, note: &dyn Fn(&str)) {
        if self.off() {
            return;
        }
        let entry = self.entry(input);
        let result = (|| -> Result<()> {
            let record = Record {
                input: input.clone(),
                layer: layer.clone(),
            };
            let config = serde_json::to_vec(&record).expect("records serialise");
            let config_digest = store.put_bytes(&config)?;
            let mut annotations = serde_json::json!({ INPUT_ANNOTATION: input });
            if let Some(key) = &self.trust.sign {
                annotations[SIGNATURE_ANNOTATION] =
                    crate::sign::cosign::sign_bytes(key, &config).into();
            }
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": MANIFEST_MEDIA_TYPE,
                "artifactType": CACHE_MEDIA_TYPE,
                "config": {
                    "mediaType": CACHE_MEDIA_TYPE,
                    "digest": config_digest,
                    "size": config.len(),
                },
                "layers": [{
                    "mediaType": layer.media_type,
                    "digest": layer.digest,
                    "size": layer.size,
                }],
                "annotations": annotations,
            });
            let bytes = serde_json::to_vec(&manifest).expect("manifests serialise");
            let digest = store.put_bytes(&bytes)?;
            let top = Stored {
                digest,
                size: bytes.len() as u64,
                media_type: MANIFEST_MEDIA_TYPE,
            };
            self.registry.push(store, &top, &entry, &[])?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.pushed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if let Some(m) = self.fail(&e) {
                    note(&m);
                }
            }
        }
    }

    /// Pushes a layer the local cache had when the registry lacks it.
    pub fn share(&self, store: &Store, input: &Digest, layer: &LayerRecord, note: &dyn Fn(&str)) {
        if self.off() {
            return;
        }
        match self.registry.has_manifest(&self.entry(input)) {
            Ok(true) => {}
            Ok(false) => self.publish(store, input, layer, note),
            Err(e) => {
                if let Some(m) = self.fail(&e) {
                    note(&m);
                }
            }
        }
    }

    /// What happened, for `--json`.
    pub fn report(&self) -> CacheReport {
        let error = self
            .unreachable
            .lock()
            .expect("no panics hold this lock")
            .clone();
        CacheReport {
            repository: self.name(),
            reachable: error.is_none(),
            error,
            hits: self.hits.load(Ordering::Relaxed),
            signed: self.signed.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            pushed: self.pushed.load(Ordering::Relaxed),
        }
    }
}

/// The tag of the entry for `input`: `kiln-layer-` and its hex.
pub fn tag(input: &Digest) -> String {
    let text = input.to_string();
    let hex = text.rsplit(':').next().unwrap_or(&text);
    format!("kiln-layer-{}", &hex[..hex.len().min(64)])
}
