//! Stage 2, resolve: a [`Recipe`] and its lockfile → a [`Plan`], in which
//! every input that can move is named by digest: the recipe and its lock by
//! their bytes, a registry base by its manifest digest, an `oci:` base by
//! the digest it names (or the one image its layout holds), a base recipe by
//! its own plan, and each Debian package by SHA-256 and pool path.
//!
//! Host files are read and named by content here too ([`LocalLayer`]); only
//! the parent directories a layer needs wait for its base, whose
//! directories decide their modes.
//!
//! The lockfile is read here, once per recipe; later stages take the plan
//! and never look at the lock or the recipe's raw strings again.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::lock::{self, Lock, LockedPackage};
use crate::recipe::{Base, Platform, Recipe};
use crate::source::deb;
use crate::source::layout::Layout;
use crate::source::local::{self, LocalLayer};
use crate::store::stat_cache::StatCache;
use crate::store::Store;

/// An input of a build, named by digest (for provenance).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Material {
    /// What it is: `file:PATH`, `oci:PATH`, a registry reference, `recipe:PATH`.
    pub uri: String,
    /// Its digest.
    pub digest: Digest,
}

/// What resolution needs beyond the recipe.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Fail unless every recipe's lockfile exists and pins exactly what it names by tag.
    pub locked: bool,
    /// Leave the files of trees no planning has walked before unhashed,
    /// for the layer writer to hash as it copies them (in a recipe for one
    /// platform; see [`local::plan_local`]). Not for a build that asks a
    /// shared cache first, which needs every key before building.
    pub late: bool,
    /// List host files among the plan's materials, for provenance. A
    /// build that writes none leaves them out: a big tree is tens of
    /// thousands of them.
    pub host_materials: bool,
}

/// A recipe with every input pinned.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The recipe, parsed and validated.
    pub recipe: Recipe,
    /// The base, pinned.
    pub base: BasePlan,
    /// Per platform of the recipe (in its order), per layer: its inputs.
    pub layers: Vec<Vec<LayerInputs>>,
    /// The recipe's own inputs, sorted: the recipe, its lock, a registry or
    /// layout base, host files (when [`Options::host_materials`] asks) and
    /// packages (not a base recipe's: see [`BasePlan::Recipe`]).
    pub materials: Vec<Material>,
}

/// A base, pinned.
#[derive(Debug, Clone)]
pub enum BasePlan {
    /// An empty root.
    Scratch,
    /// Another recipe, with its own plan (built first).
    Recipe {
        /// Its path, as the recipe resolves it.
        path: PathBuf,
        /// Where `base` is written.
        span: Range<usize>,
        /// Its plan.
        plan: Box<Plan>,
    },
    /// A registry image.
    Registry {
        /// The reference, pinned to the digest.
        reference: crate::registry::Reference,
        /// The manifest or index digest.
        digest: Digest,
    },
    /// An image in an OCI layout on disk.
    Layout {
        /// The layout directory.
        path: PathBuf,
        /// The manifest or index digest the recipe names, if it names one.
        named: Option<Digest>,
        /// The manifest or index used: the named one, or the layout's only image.
        digest: Digest,
        /// Where `base` is written.
        span: Range<usize>,
    },
}

/// What one layer is made of, for one platform.
#[derive(Debug, Clone)]
pub struct LayerInputs {
    /// The entries the recipe names, host files named by content.
    pub local: LocalLayer,
    /// The Debian packages the lock pins for it.
    pub packages: Vec<Package>,
    /// The names the layer asks for that the lock records as satisfied by
    /// the image below it (the base, an earlier layer) or by a package of
    /// the layer: checked when the layer is built, since the base may have
    /// changed since the lock was written.
    pub satisfied: Vec<Satisfied>,
}

/// A requested name the lock records as `satisfied`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Satisfied {
    /// The package name.
    pub name: String,
    /// Where the recipe asks for it.
    pub span: std::ops::Range<usize>,
    /// Where the lock records it, as `LOCKFILE:LINE`.
    pub lock_line: String,
}

/// A Debian package the lock pins for one layer and platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// `Package`.
    pub name: String,
    /// `Version`.
    pub version: String,
    /// The package's own `Architecture` (`all` for architecture-independent ones).
    pub architecture: String,
    /// The path inside the archive (`pool/…`).
    pub path: String,
    /// The `.deb`'s digest.
    pub digest: Digest,
    /// The recipe's name for the repository it came from (which picks the mirror).
    pub repository: String,
}

/// The material a host file is: `file:PATH` and its digest.
pub fn host_material(path: &Path, digest: &Digest) -> Material {
    Material {
        uri: match path.to_str() {
            Some(p) => ["file:", p].concat(),
            None => format!("file:{}", path.display()),
        },
        digest: digest.clone(),
    }
}

/// Resolves the recipe at `path` and, first, its base recipes (cycles
/// refused). Host files are hashed through the store's stat cache, so
/// unchanged files are not read again.
pub fn resolve(store: &Store, path: &Path, options: Options) -> Result<Plan> {
    let hashes = StatCache::of_store(store);
    let plan = resolve_at(path, options, &hashes, &mut Vec::new())?;
    hashes.save()?;
    Ok(plan)
}

/// The recipes being resolved, outermost first: (canonical path, as written).
type Stack = Vec<(PathBuf, PathBuf)>;

fn resolve_at(
    path: &Path,
    options: Options,
    hashes: &StatCache,
    stack: &mut Stack,
) -> Result<Plan> {
    let recipe = Recipe::load(path)?;
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    stack.push((canonical, path.to_path_buf()));
    let plan = resolve_loaded(recipe, options, hashes, stack);
    stack.pop();
    plan
}

fn resolve_loaded(
    mut recipe: Recipe,
    options: Options,
    hashes: &StatCache,
    stack: &mut Stack,
) -> Result<Plan> {
    let lock_path = lock::path_for(&recipe.source.path);
    // Read once: its entries pin the inputs, its bytes are a material.
    let lock = Lock::read(&lock_path)?;
    if options.locked {
        check_locked(&recipe, lock.as_ref())?;
    }
    let base = resolve_base(&recipe, lock.as_ref(), options, hashes, stack)?;
    // Repositories a base recipe names and this one does not are inherited.
    if let BasePlan::Recipe { plan, .. } = &base {
        lock::inherit_from(&mut recipe, &plan.recipe);
    }
    let mut materials = vec![Material {
        uri: format!("recipe:{}", recipe.source.path.display()),
        digest: Digest::of(recipe.source.text.as_bytes()),
    }];
    if let Some(text) = lock.as_ref().and_then(Lock::text) {
        materials.push(Material {
            uri: format!("lock:{}", lock_path.display()),
            digest: Digest::of(text.as_bytes()),
        });
    }
    match &base {
        BasePlan::Registry { reference, digest } => materials.push(Material {
            uri: reference.whole(),
            digest: digest.clone(),
        }),
        BasePlan::Layout { path, digest, .. } => materials.push(Material {
            uri: format!("oci:{}", path.display()),
            digest: digest.clone(),
        }),
        BasePlan::Scratch | BasePlan::Recipe { .. } => {}
    }
    let mut layers = Vec::new();
    for platform in &recipe.platforms {
        let mut per_layer = Vec::new();
        for (layer_no, section) in recipe.layers.iter().enumerate() {
            let late = options.late && recipe.platforms.len() == 1;
            let local = local::plan_local(&recipe, section, hashes, platform, late)?;
            if options.host_materials {
                for (path, digest) in local.host_files() {
                    materials.push(host_material(path, digest));
                }
            }
            let (packages, satisfied) =
                pinned_packages(&recipe, lock.as_ref(), layer_no, platform)?;
            for p in &packages {
                // By what it is: its pool path (the same on every mirror) and SHA-256.
                materials.push(Material {
                    uri: format!("deb:{}", p.path),
                    digest: p.digest.clone(),
                });
            }
            per_layer.push(LayerInputs {
                local,
                packages,
                satisfied,
            });
        }
        layers.push(per_layer);
    }
    materials.sort();
    materials.dedup();
    Ok(Plan {
        recipe,
        base,
        layers,
        materials,
    })
}

fn resolve_base(
    recipe: &Recipe,
    lock: Option<&Lock>,
    options: Options,
    hashes: &StatCache,
    stack: &mut Stack,
) -> Result<BasePlan> {
    match &recipe.base {
        Base::Scratch => Ok(BasePlan::Scratch),
        Base::Recipe { path, span } => {
            let at = |msg: String| recipe.source.error(span.clone(), msg);
            if !path.is_file() {
                return Err(
                    at(format!("base recipe `{}` does not exist", path.display()))
                        .hint("the path is relative to this recipe's directory; check its spelling")
                        .into(),
                );
            }
            let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            if let Some(pos) = stack.iter().position(|(c, _)| *c == canonical) {
                let mut chain: Vec<String> = stack[pos..]
                    .iter()
                    .map(|(_, shown)| format!("`{}`", shown.display()))
                    .collect();
                chain.push(format!("`{}`", path.display()));
                return Err(at(format!("base cycle: {}", chain.join(" → ")))
                    .hint("a recipe cannot be its own base, directly or through others: break the chain")
                    .into());
            }
            let plan = resolve_at(path, options, hashes, stack)?;
            if let Some(p) = recipe
                .platforms
                .iter()
                .find(|p| !plan.recipe.platforms.contains(p))
            {
                return Err(at(format!(
                    "base recipe `{}` is not built for `{p}`",
                    path.display()
                ))
                .hint(format!("add `{p}` to the base recipe's `platforms`"))
                .into());
            }
            Ok(BasePlan::Recipe {
                path: path.clone(),
                span: span.clone(),
                plan: Box::new(plan),
            })
        }
        Base::Registry { reference, span } => {
            let digest = pinned_digest(recipe, lock, reference, span)?;
            let parsed = crate::registry::parse_reference(reference)?;
            Ok(BasePlan::Registry {
                reference: parsed.clone_with_digest(digest.to_string()),
                digest,
            })
        }
        Base::Layout { path, digest, span } => {
            let layout = Layout::open(path).map_err(|e| layout_error(recipe, path, span, e))?;
            let used = match digest {
                Some(d) => d.clone(),
                None => {
                    layout
                        .single_image()
                        .map_err(|e| layout_error(recipe, path, span, e))?
                        .digest
                }
            };
            Ok(BasePlan::Layout {
                path: path.clone(),
                named: digest.clone(),
                digest: used,
                span: span.clone(),
            })
        }
    }
}

/// An error reading an `oci:` base, as an error at the recipe's `base`
/// (a digest mismatch keeps its own exit code and text).
pub fn layout_error(recipe: &Recipe, path: &Path, span: &Range<usize>, e: Error) -> Error {
    if e.exit_code() == 4 {
        return e;
    }
    let hint = e.hint().map(String::from);
    recipe
        .source
        .error(
            span.clone(),
            format!("cannot use base `oci:{}`", path.display()),
        )
        .caused_by(e)
        .hint(hint.unwrap_or_else(|| "check the path and digest of the base layout".into()))
        .into()
}

/// The digest a registry base stands for: its own, or the lockfile's for a tag.
fn pinned_digest(
    recipe: &Recipe,
    lock: Option<&Lock>,
    reference: &str,
    span: &Range<usize>,
) -> Result<Digest> {
    let parsed = crate::registry::parse_reference(reference)?;
    if let Some(d) = parsed.digest() {
        return d.parse().map_err(|e: crate::digest::BadDigest| {
            recipe.source.error(span.clone(), e.to_string()).into()
        });
    }
    let lock_path = lock::path_for(&recipe.source.path);
    lock.and_then(|l| l.bases.get(reference).cloned())
        .ok_or_else(|| {
            recipe
                .source
                .error(
                    span.clone(),
                    format!(
                        "base `{reference}` is a tag, and `{}` does not pin it to a digest",
                        lock_path.display()
                    ),
                )
                .hint(format!(
                "run `kiln lock {}` and commit the lockfile, or write the base as `REPO@sha256:…`",
                recipe.source.path.display()
            ))
                .into()
        })
}

/// With `--locked`: the lockfile exists and pins exactly what the recipe
/// names by tag. The error points at the recipe's `base`.
fn check_locked(recipe: &Recipe, lock: Option<&Lock>) -> Result<()> {
    let lock_path = lock::path_for(&recipe.source.path);
    let wanted: Vec<&str> = match &recipe.base {
        Base::Registry { reference, .. } if !reference.contains('@') => vec![reference.as_str()],
        _ => Vec::new(),
    };
    let message = match lock {
        None if wanted.is_empty() => return Ok(()),
        None => format!("`--locked`, but `{}` does not exist", lock_path.display()),
        Some(lock) => {
            let pinned: Vec<&str> = lock.bases.keys().map(String::as_str).collect();
            if pinned == wanted {
                return Ok(());
            }
            format!(
                "`--locked`, but `{}` is stale: it pins [{}], the recipe names [{}] by tag",
                lock_path.display(),
                pinned.join(", "),
                wanted.join(", ")
            )
        }
    };
    let hint = format!(
        "run `kiln lock {}`, commit the lockfile, and build again",
        recipe.source.path.display()
    );
    Err(match recipe.base.shown() {
        Some((_, span)) => recipe.source.error(span, message).hint(hint).into(),
        None => Error::invalid(message, Some(hint)),
    })
}

/// The packages the lock pins for one layer and platform, and the names it
/// records as satisfied; an error at the recipe's `packages` when the lock
/// is missing, stale or lacks one.
fn pinned_packages(
    recipe: &Recipe,
    lock: Option<&Lock>,
    layer_no: usize,
    platform: &Platform,
) -> Result<(Vec<Package>, Vec<Satisfied>)> {
    let section = &recipe.layers[layer_no];
    let Some(first) = section.packages.first() else {
        return Ok(Default::default());
    };
    let lock_path = lock::path_for(&recipe.source.path);
    let arch = deb::debian_arch(&platform.arch, platform.variant.as_deref());
    let empty = Lock::default();
    let lock = lock.unwrap_or(&empty);
    let pinned: Vec<&LockedPackage> = lock
        .packages
        .iter()
        .filter(|p| p.arch == arch && p.layer == layer_no)
        .collect();
    let requested = lock
        .requests
        .iter()
        .find(|r| r.arch == arch && r.layer == layer_no);
    let stale = requested.is_none_or(|r| r.names != lock::requested_names(section));
    // A name the lock records as satisfied (by the base recipe, an earlier
    // layer, or a provider this layer installs) needs no package of its own.
    let missing = section.packages.iter().find(|want| {
        !pinned.iter().any(|p| p.name == *want.get_ref())
            && !requested.is_some_and(|r| r.satisfied.contains(want.get_ref()))
    });
    if missing.is_some() || stale {
        let at = missing.unwrap_or(first);
        return Err(recipe
            .source
            .error(
                at.span(),
                format!(
                    "`{}` is not pinned for `{arch}` in `{}`",
                    at.get_ref(),
                    lock_path.display()
                ),
            )
            .hint(format!(
                "run `kiln lock {}` and commit the lockfile",
                recipe.source.path.display()
            ))
            .into());
    }
    let lock_line = requested.map_or_else(String::new, |r| {
        // The line of the request's `satisfied = […]`, else of the request.
        let line = lock.origin.0.as_ref().map_or(0, |s| {
            let start = r.span.0.start.min(s.text.len());
            let end = r.span.0.end.clamp(start, s.text.len());
            let at = s.text[start..end]
                .find("satisfied")
                .map_or(start, |i| start + i);
            s.text[..at].matches('\n').count() + 1
        });
        format!("{}:{line}", lock_path.display())
    });
    let satisfied = section
        .packages
        .iter()
        .filter(|want| requested.is_some_and(|r| r.satisfied.contains(want.get_ref())))
        .filter(|want| !pinned.iter().any(|p| p.name == *want.get_ref()))
        .map(|want| Satisfied {
            name: want.get_ref().clone(),
            span: want.span(),
            lock_line: lock_line.clone(),
        })
        .collect();
    // The lock checked every digest when it was read.
    let packages = pinned
        .into_iter()
        .map(|p| Package {
            name: p.name.clone(),
            version: p.version.clone(),
            architecture: p.architecture.clone(),
            path: p.path.clone(),
            digest: p.digest.clone(),
            repository: p.repository.clone(),
        })
        .collect();
    Ok((packages, satisfied))
}
