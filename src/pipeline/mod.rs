//! Orchestration: the whole job for one recipe as one call, [`run`]:
//! parse and resolve ([`crate::resolve`]) → fetch the base and packages →
//! plan the layers → build them into the store (or take them from the layer
//! cache) → assemble config, manifests and index → export → push → sign →
//! attest. [`build`] stops after assembling, with everything in the store.
//!
//! Base recipes are built first, recursively; resolution refused cycles.

mod accounts;
mod base;
mod below;
mod cache;
mod distribute;
mod packages;
mod reproduce;
mod run;
mod satisfied;
mod sbom;
mod truststore;

pub use cache::{CacheReport, Trust as CacheTrust, CACHE_MEDIA_TYPE};
pub use distribute::{copy, pull, push};
pub use reproduce::{diff, open_input, reproduce, Input, MaterialCheck, Opened, Reproduced};
pub use run::{run, write_digest_file, Format, Outcome, Pushed, Request, Signing};
pub use sbom::sbom;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{self, Image, Stored};
use crate::plan::{DirMap, LayerPlan};
use crate::progress::Kind;
use crate::recipe::{Platform, Recipe};
use crate::resolve::{self, Material, Plan};
use crate::store::{LayerRecord, Store};

/// Settings for a build that do not come from the recipe.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `SOURCE_DATE_EPOCH`: every mtime and `created`; 0 when unset.
    pub source_date_epoch: Option<u64>,
    /// How many layers to build at once (0: one per CPU).
    pub jobs: usize,
    /// How many threads compress one gzip layer (0: one per CPU). The bytes
    /// do not depend on it.
    pub threads: usize,
    /// How to reach registries for registry bases.
    pub registry: crate::registry::Options,
    /// Fail unless every recipe's lockfile exists and matches it exactly (for CI).
    pub locked: bool,
    /// Use only what is in the store: never download a package.
    pub offline: bool,
    /// A registry repository shared as a layer cache (`--cache`).
    pub cache: Option<crate::registry::Reference>,
    /// Who signs and whom to trust in the shared cache (`--cache-sign-key`,
    /// `--cache-key`).
    pub cache_trust: cache::Trust,
    /// Write SLSA provenance beside the output (and attach it when
    /// signing). Only then are host files listed among the build's
    /// materials: a big tree names tens of thousands.
    pub provenance: bool,
    /// The open remote cache, set by [`build`].
    #[doc(hidden)]
    pub remote: Option<Arc<cache::RemoteCache>>,
}

/// What a build reports as it goes; the CLI draws it on stderr.
pub trait Reporter: Sync {
    /// Something happened.
    fn event(&self, event: Event<'_>);
}

/// Progress events.
#[derive(Debug)]
pub enum Event<'a> {
    /// Started on a recipe (the top one or a base).
    Recipe {
        /// Its path.
        path: &'a Path,
    },
    /// A layer came from the shared cache in a registry (downloaded and verified).
    LayerFetched {
        /// Its name, if any.
        name: Option<&'a str>,
        /// The blob.
        digest: &'a Digest,
        /// Compressed size.
        size: u64,
    },
    /// Something about the shared cache: unreachable, an entry ignored.
    CacheNote {
        /// What to say.
        message: &'a str,
    },
    /// A layer came from the cache.
    LayerCached {
        /// Its name, if any.
        name: Option<&'a str>,
        /// The blob.
        digest: &'a Digest,
    },
    /// A layer is being built.
    LayerStarted {
        /// Its name, if any.
        name: Option<&'a str>,
        /// Regular files in it.
        files: usize,
        /// Their total size.
        bytes: u64,
    },
    /// A layer was built.
    LayerBuilt {
        /// Its name, if any.
        name: Option<&'a str>,
        /// The blob.
        digest: &'a Digest,
        /// Compressed size.
        size: u64,
    },
    /// `[accounts] from-packages`: a package's scripts created an account.
    Account {
        /// The package.
        package: &'a str,
        /// The account's name.
        name: &'a str,
        /// A user (else a group).
        user: bool,
        /// Its uid or gid.
        id: u32,
    },
    /// An output file or directory was written whole.
    Wrote {
        /// Where.
        path: &'a Path,
    },
    /// The output was pushed.
    Pushed {
        /// Where to.
        reference: &'a crate::registry::Reference,
        /// Blobs sent, skipped and mounted.
        report: &'a crate::registry::PushReport,
    },
}

/// A reporter that says nothing.
pub struct Quiet;

impl Reporter for Quiet {
    fn event(&self, _: Event<'_>) {}
}

/// One layer of a built image, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// The recipe's name for it (the base's layers have none).
    pub name: Option<String>,
    /// Compressed blob digest.
    pub digest: Digest,
    /// Uncompressed tar digest.
    pub diff_id: Digest,
    /// Compressed size.
    pub size: u64,
    /// Media type.
    pub media_type: String,
    /// Whether it came from the layer cache.
    pub cached: bool,
    /// Whether it is one of the base image's layers.
    pub from_base: bool,
    /// Where it came from: `built`, `local-cache`, `remote-cache` or `base`.
    pub source: Source,
    /// For a gzip layer built here: its chunks, and how many the store's
    /// chunk cache gave.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<crate::layer::Chunks>,
}

/// Where a layer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Built (compressed) here.
    Built,
    /// The store's layer cache.
    LocalCache,
    /// The shared cache in a registry (`--cache`).
    RemoteCache,
    /// The base image.
    Base,
}

/// One platform's manifest, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestReport {
    /// `os/arch[/variant]`.
    pub platform: String,
    /// Manifest digest.
    pub digest: Digest,
    /// Layers, bottom first.
    pub layers: Vec<LayerReport>,
}

/// A finished build: everything is in the store.
#[derive(Debug, Clone)]
pub struct Built {
    /// Every input, sorted: the recipe's files, lockfile, bases (and theirs).
    pub materials: Vec<Material>,
    /// Start and finish (RFC 3339), only when `SOURCE_DATE_EPOCH` is unset.
    pub times: Option<(String, String)>,
    /// `SOURCE_DATE_EPOCH` as used.
    pub source_date_epoch: Option<u64>,
    /// The recipe.
    pub recipe: Recipe,
    /// Per platform: the image and its stored manifest.
    pub images: Vec<(Image, Stored)>,
    /// What the output points at: the manifest, or the index for several platforms.
    pub top: Stored,
    /// Per-platform reports.
    pub manifests: Vec<ManifestReport>,
    /// What the shared cache did, with `--cache`.
    pub cache: Option<CacheReport>,
}

/// Resolves the recipe at `path` (and its bases) and builds it into `store`.
pub fn build(
    store: &Store,
    path: &Path,
    settings: &Settings,
    reporter: &dyn Reporter,
) -> Result<Built> {
    let now = || {
        image::rfc3339(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
    };
    // Times go into provenance only when they cannot break reproducibility.
    let started = settings.source_date_epoch.is_none().then(now);
    let mut plan = resolve::resolve(
        store,
        path,
        resolve::Options {
            locked: settings.locked,
            late: settings.cache.is_none(),
            host_materials: settings.provenance,
        },
    )?;
    // A VM bundle is made from the layers read back out of the store: no
    // output takes them whole, so they are written once, through the page
    // cache, to be read from it.
    if plan.recipe.vm.is_some() {
        store.keep_spares(false);
    }
    let mut settings = settings.clone();
    // `--offline` downloads nothing, from the shared cache neither.
    if let (Some(repo), None, false) = (&settings.cache, &settings.remote, settings.offline) {
        settings.remote = Some(Arc::new(cache::RemoteCache::new(
            repo,
            &settings.registry,
            settings.cache_trust.clone(),
        )?));
    }
    // Moved, not cloned: a big tree makes one material per file.
    let own = std::mem::take(&mut plan.materials);
    let mut built = build_plan(store, &mut plan, own, &settings, reporter)?;
    built.times = started.map(|s| (s, now()));
    built.cache = settings.remote.as_ref().map(|r| r.report());
    Ok(built)
}

/// Builds a resolved recipe (its base recipes first); `own` is the plan's
/// own materials, taken out of it by the caller.
fn build_plan(
    store: &Store,
    plan: &mut Plan,
    own: Vec<Material>,
    settings: &Settings,
    reporter: &dyn Reporter,
) -> Result<Built> {
    reporter.event(Event::Recipe {
        path: &plan.recipe.source.path,
    });
    let epoch = settings.source_date_epoch.unwrap_or(0);
    let created = image::rfc3339(epoch);
    let (bases, mut materials) = base::fetch_base(store, plan, settings, reporter)?;
    materials.extend(own);
    // Each layer's local entries are moved into its plan, not copied.
    let Plan {
        recipe,
        layers: local_layers,
        ..
    } = plan;
    let recipe = &*recipe;

    // Finish every layer for every platform: the base's directories, the
    // packages. Entries may differ per platform (`{arch}` in `src`,
    // `platforms` filters); where they do not, the plans have the same input
    // digest and the layer is built once.
    let mut per_platform: Vec<Vec<LayerPlan>> = Vec::new();
    for ((platform, (base, _)), layers) in recipe
        .platforms
        .iter()
        .zip(&bases)
        .zip(local_layers.iter_mut())
    {
        // Directories below each layer, so implied parents keep their modes.
        let mut below = DirMap::new();
        // Every base layer is checked here, wherever it came from.
        for layer in &base.layers {
            crate::layer::read::add_layer_dirs(store, layer, &mut below)
                .map_err(|e| in_base(recipe, e))?;
        }
        let mut plans = Vec::new();
        // What the recipe's layers install so far, and (read when a layer
        // needs it) what the base installs: the lock's `satisfied` names
        // must be among them.
        let mut installs = std::collections::BTreeSet::new();
        let mut base_installs = None;
        // The packages' scripts and `sysusers.d` files, for `from-packages`.
        let mut scripts = Vec::new();
        let inputs_len = layers.len();
        for (layer_no, (inputs, section)) in layers.iter_mut().zip(&recipe.layers).enumerate() {
            let exclude = crate::source::deb::install::Exclude::new(
                section.exclude.iter().map(|g| g.get_ref().as_str()),
            );
            let mut installed = packages::packages_for(
                store,
                &inputs.packages,
                platform,
                settings,
                recipe,
                &exclude,
                &mut scripts,
            )?;
            accounts::add_sysusers(&installed, &mut scripts)?;
            accounts::keep_lower_account_files(store, &base.layers, &mut plans, &mut installed)?;
            truststore::from_lower_layers(store, &base.layers, &mut plans, &mut installed)?;
            satisfied::add_layer(&installed, &mut installs)?;
            if !inputs.satisfied.is_empty() {
                let from_base = match &mut base_installs {
                    Some(names) => names,
                    None => base_installs.insert(satisfied::base_names(store, &base.layers)?),
                };
                let all = from_base.union(&installs).cloned().collect();
                satisfied::check(recipe, &inputs.satisfied, &all)?;
            }
            let layer = std::mem::take(&mut inputs.local).finish(
                &below,
                installed,
                recipe.compression,
                epoch,
            );
            packages::claim_unless_cached(store, &layer, &inputs.packages)?;
            // Only a layer or accounts above look at the directories below.
            if layer_no + 1 < inputs_len || recipe.accounts.is_some() {
                layer.add_dirs_to(&mut below);
            }
            plans.push(layer);
        }
        if let Some(section) = &recipe.accounts {
            let from = accounts::package_calls(recipe, section, &mut scripts)?;
            let (layer, files, made) = accounts::layer(
                store,
                recipe,
                section,
                &from,
                (&base.layers, &mut plans, &below),
                epoch,
            )?;
            accounts::check_user(recipe, &files)?;
            // Once, not per platform: the scripts are the same.
            for m in made.iter().filter(|_| per_platform.is_empty()) {
                reporter.event(Event::Account {
                    package: &m.package,
                    name: &m.name,
                    user: m.user,
                    id: m.id,
                });
            }
            plans.push(layer);
        }
        per_platform.push(plans);
    }
    // Each plan built once: by (platform, layer), the first plan with its
    // key. A plan with files left unhashed has no key yet: the first with
    // the same entries from the same host files.
    let mut unique: Vec<(usize, usize)> = Vec::new();
    let mut slots: Vec<Vec<usize>> = Vec::new();
    for (p, plans) in per_platform.iter().enumerate() {
        let mut row = Vec::new();
        for (i, plan) in plans.iter().enumerate() {
            let same = unique.iter().position(|&(q, j)| {
                let other = &per_platform[q][j];
                match &plan.input_digest {
                    Some(key) => other.input_digest.as_ref() == Some(key),
                    None => other.same_unkeyed(plan),
                }
            });
            row.push(same.unwrap_or_else(|| {
                unique.push((p, i));
                unique.len() - 1
            }));
        }
        slots.push(row);
    }
    // Borrowed, not cloned: a big layer's plan holds every entry.
    let plans: Vec<&LayerPlan> = unique.iter().map(|&(p, i)| &per_platform[p][i]).collect();
    let built = build_layers(store, &plans, recipe, settings, reporter, epoch)?;
    // Every plan built as one that left files unhashed (its twins took
    // the same files) takes their digests.
    for (p, row) in slots.iter().enumerate() {
        for (i, &u) in row.iter().enumerate() {
            if let Some((found, key)) = &built[u].3 {
                let plan = &mut per_platform[p][i];
                plan.hashed(found, key.clone())?;
                if settings.provenance {
                    late_materials(plan, found, &mut materials);
                }
            }
        }
    }
    // The links of every plan, one built as another's twin (the same key,
    // other host paths) too; those named twice are deduplicated below.
    for plan in per_platform.iter().flatten() {
        if settings.provenance && !plan.late_links.is_empty() {
            late_materials(plan, &[], &mut materials);
        }
    }
    materials.sort();
    materials.dedup();
    let built_for = |p: usize, i: usize| {
        let (record, source, chunks, _) = &built[slots[p][i]];
        (record.clone(), *source, *chunks)
    };

    let mut images = Vec::new();
    let mut manifests = Vec::new();
    for (p, ((platform, (base, mut reports)), plans)) in recipe
        .platforms
        .iter()
        .zip(bases)
        .zip(&per_platform)
        .enumerate()
    {
        let mut img = base;
        img.platform = platform.clone();
        img.apply_config(&recipe.config);
        img.set_created(&created);
        for (i, plan) in plans.iter().enumerate() {
            let (record, source, chunks) = built_for(p, i);
            let mut r = report(&record, plan.name.clone(), source != Source::Built, false);
            r.source = source;
            r.chunks = chunks;
            reports.push(r);
            img.push_layer(record, plan.name.as_deref(), &created);
        }
        let stored = img.store(store, &recipe.annotations)?;
        manifests.push(ManifestReport {
            platform: platform.to_string(),
            digest: stored.digest.clone(),
            layers: reports,
        });
        images.push((img, stored));
    }
    let top = if images.len() == 1 {
        images[0].1.clone()
    } else {
        let list: Vec<(Platform, Stored)> = images
            .iter()
            .map(|(i, s)| (i.platform.clone(), s.clone()))
            .collect();
        image::store_index(store, &list, &recipe.annotations)?
    };
    drop_aside(per_platform);
    Ok(Built {
        materials,
        times: None,
        source_date_epoch: settings.source_date_epoch,
        recipe: recipe.clone(),
        images,
        top,
        manifests,
        cache: None,
    })
}

/// Drops `value` on a thread of its own: a big tree's plan is tens of
/// thousands of entries, each with a path or two to free, and nothing
/// waits for that memory.
fn drop_aside<T: Send + 'static>(value: T) {
    // A thread that cannot start drops the closure, and the value, here.
    let _ = std::thread::Builder::new()
        .name("kiln-drop".into())
        .spawn(move || drop(value));
}

/// The provenance of the host files a plan left unhashed, once it has
/// taken their digests ([`LayerPlan::hashed`]), and of the links to them.
fn late_materials(plan: &LayerPlan, hashed: &[crate::plan::Hashed], materials: &mut Vec<Material>) {
    use crate::plan::{Content, EntryKind};
    let host = |i: usize| match &plan.entries[i].kind {
        EntryKind::File {
            content: Content::Host(path, _),
            digest,
            ..
        } => Some((path, digest)),
        _ => None,
    };
    for h in hashed {
        if let Some((path, digest)) = host(h.entry) {
            materials.push(resolve::host_material(path, digest));
        }
    }
    for (target, link) in &plan.late_links {
        let at = plan
            .entries
            .binary_search_by(|e| e.path.as_bytes().cmp(target.as_bytes()));
        if let Some((_, digest)) = at.ok().and_then(host) {
            materials.push(resolve::host_material(link, digest));
        }
    }
}

/// A base layer's refusal as an error at the recipe's `base`, naming the base.
fn in_base(recipe: &Recipe, e: Error) -> Error {
    match (e, recipe.base.shown()) {
        (Error::Invalid { message, hint }, Some((name, span))) => {
            let d = recipe
                .source
                .error(span, format!("base `{name}`: {message}"));
            match hint {
                Some(h) => d.hint(h).into(),
                None => d.into(),
            }
        }
        (e, _) => e,
    }
}

fn report(l: &LayerRecord, name: Option<String>, cached: bool, from_base: bool) -> LayerReport {
    LayerReport {
        name,
        digest: l.digest.clone(),
        diff_id: l.diff_id.clone(),
        size: l.size,
        media_type: l.media_type.clone(),
        cached,
        from_base,
        source: match (from_base, cached) {
            (true, _) => Source::Base,
            (false, true) => Source::LocalCache,
            (false, false) => Source::Built,
        },
        chunks: None,
    }
}

/// A layer taken or built: its record, where it came from, its chunks,
/// and, for a plan that left files unhashed, their digests and the key
/// they gave it.
type Built1 = (
    LayerRecord,
    Source,
    Option<crate::layer::Chunks>,
    Option<(Vec<crate::plan::Hashed>, Digest)>,
);

/// Takes every layer from the cache or builds it, several at once; returns
/// (record, cached) per plan. A cached layer's blob is re-hashed first: a
/// damaged one is removed (the store says so) and the layer rebuilt.
fn build_layers(
    store: &Store,
    plans: &[&LayerPlan],
    recipe: &Recipe,
    settings: &Settings,
    reporter: &dyn Reporter,
    epoch: u64,
) -> Result<Vec<Built1>> {
    let jobs = match settings.jobs {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(plans.len().max(1));
    let next = AtomicUsize::new(0);
    let done = Mutex::new(Vec::new());
    let first_error = Mutex::new(None);
    let note = |message: &str| reporter.event(Event::CacheNote { message });
    // The stat cache, loaded once if a layer hashed files as it wrote them.
    let stamps = std::sync::OnceLock::new();
    let one = |plan: &LayerPlan| -> Result<Built1> {
        let cached = match &plan.input_digest {
            Some(input) => store.cached_layer(input)?,
            None => None,
        };
        if let (Some(r), Some(input)) = (cached, &plan.input_digest) {
            reporter.event(Event::LayerCached {
                name: plan.name.as_deref(),
                digest: &r.digest,
            });
            if let Some(remote) = &settings.remote {
                remote.share(store, input, &r, &note);
            }
            return Ok((r, Source::LocalCache, None, None));
        }
        let mut publish = false;
        if let (Some(remote), Some(input)) = (&settings.remote, &plan.input_digest) {
            match remote.fetch(store, plan, input, epoch, &note) {
                cache::Lookup::Hit(r) => {
                    reporter.event(Event::LayerFetched {
                        name: plan.name.as_deref(),
                        digest: &r.digest,
                        size: r.size,
                    });
                    return Ok((r, Source::RemoteCache, None, None));
                }
                cache::Lookup::Miss => publish = true,
                cache::Lookup::Off => {}
            }
        }
        let (files, bytes) = plan.file_stats();
        reporter.event(Event::LayerStarted {
            name: plan.name.as_deref(),
            files,
            bytes,
        });
        let layer = plan.name.as_deref().unwrap_or("(unnamed)");
        let meter = (settings.registry.progress).start(Kind::Layer, layer, Some(bytes));
        let (r, chunks, hashed) = crate::layer::build_metered(
            store,
            &plan.entries,
            recipe.compression,
            epoch,
            settings.threads,
            &meter,
        )?;
        meter.finish();
        // A plan that left files unhashed has its key now; their digests
        // go into the stat cache, so the next build reads none of them.
        let key = match &plan.input_digest {
            Some(key) => key.clone(),
            None => plan
                .key_with(&hashed, recipe.compression, epoch)
                .ok_or_else(|| {
                    Error::internal(
                        "key a layer",
                        std::io::Error::other("a file of the layer was neither hashed nor copied"),
                    )
                })?,
        };
        store.remember_layer(&key, &r)?;
        if !hashed.is_empty() {
            let stamps =
                stamps.get_or_init(|| crate::store::stat_cache::StatCache::of_store(store));
            for h in &hashed {
                stamps.put_stamp_read_at(&h.stamp, &h.digest, h.read);
            }
        }
        reporter.event(Event::LayerBuilt {
            name: plan.name.as_deref(),
            digest: &r.digest,
            size: r.size,
        });
        if let (true, Some(remote), Some(input)) = (publish, &settings.remote, &plan.input_digest) {
            remote.publish(store, input, &r, &note);
        }
        let late = plan.input_digest.is_none().then_some((hashed, key));
        Ok((r, Source::Built, chunks, late))
    };
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                if first_error
                    .lock()
                    .expect("no panics hold this lock")
                    .is_some()
                {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(plan) = plans.get(i) else {
                    return;
                };
                match one(plan) {
                    Ok(r) => done.lock().expect("no panics hold this lock").push((i, r)),
                    Err(e) => {
                        first_error
                            .lock()
                            .expect("no panics hold this lock")
                            .get_or_insert(e);
                    }
                }
            });
        }
    });
    // Only a cache: a save that fails means those files are read again.
    if let Some(stamps) = stamps.get() {
        let _ = stamps.save();
    }
    if let Some(e) = first_error.into_inner().expect("threads are joined") {
        return Err(e);
    }
    let mut results: Vec<Option<_>> = vec![None; plans.len()];
    for (i, r) in done.into_inner().expect("threads are joined") {
        results[i] = Some(r);
    }
    Ok(results
        .into_iter()
        .map(|r| r.expect("every layer was cached or built"))
        .collect())
}
