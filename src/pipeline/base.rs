//! Bases: scratch, another recipe (built first, cycles refused), an OCI
//! layout on disk, or a registry image pinned by digest or by the lockfile.

use std::path::PathBuf;

use super::{build_recipe, report, LayerReport, Material, Reporter, Settings};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::lock::{self, Lock};
use crate::recipe::{Base, Recipe};
use crate::source::layout::Layout;
use crate::store::Store;

/// A base image for one platform, with the report of each of its layers.
pub(super) type BaseImage = (Image, Vec<LayerReport>);

/// The base image for each of the recipe's platforms, in order, with the
/// report of each of its layers.
pub(super) fn resolve_base(
    store: &Store,
    recipe: &Recipe,
    settings: &Settings,
    reporter: &dyn Reporter,
    stack: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<(Vec<BaseImage>, Vec<Material>)> {
    match &recipe.base {
        Base::Scratch => Ok((
            recipe
                .platforms
                .iter()
                .map(|p| (Image::scratch(p), Vec::new()))
                .collect(),
            Vec::new(),
        )),
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
            let base = build_recipe(store, path, settings, reporter, stack)?;
            let mut materials = base.materials.clone();
            materials.push(Material {
                uri: format!("base:{}", path.display()),
                digest: base.top.digest.clone(),
            });
            let images = recipe
                .platforms
                .iter()
                .map(|p| {
                    base.images
                        .iter()
                        .zip(&base.manifests)
                        .find(|((img, _), _)| img.platform == *p)
                        .map(|((img, _), m)| {
                            let mut reports = m.layers.clone();
                            for r in &mut reports {
                                r.from_base = true;
                            }
                            (img.clone(), reports)
                        })
                        .ok_or_else(|| {
                            at(format!(
                                "base recipe `{}` is not built for `{p}`",
                                path.display()
                            ))
                            .hint(format!("add `{p}` to the base recipe's `platforms`"))
                            .into()
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((images, materials))
        }
        Base::Registry { reference, span } => {
            let digest = pinned_digest(recipe, reference, span)?;
            let source = crate::registry::parse_reference(reference)?;
            let pinned = source.clone_with_digest(digest.to_string());
            let view = Layout::over_store(store);
            let load = || -> Result<Vec<(Image, Vec<bool>)>> {
                recipe
                    .platforms
                    .iter()
                    .map(|p| view.load_image(Some(&digest), p, store))
                    .collect()
            };
            // A base already in the store is used without asking the registry.
            let (images, cached) = match load() {
                Ok(images) => (images, true),
                Err(_) => {
                    let registry =
                        crate::registry::Registry::new(settings.registry.clone(), &[&pinned])?;
                    registry.pull(store, &pinned, Some(&recipe.platforms))?;
                    (load()?, false)
                }
            };
            let images = images
                .into_iter()
                .map(|(img, _)| {
                    let reports = img
                        .layers
                        .iter()
                        .map(|l| report(l, None, cached, true))
                        .collect();
                    (img, reports)
                })
                .collect();
            let material = Material {
                uri: pinned.whole(),
                digest,
            };
            Ok((images, vec![material]))
        }
        Base::Layout { path, digest, span } => {
            let wrap = |e: Error| -> Error {
                let code = e.exit_code();
                let hint = e.hint().map(String::from);
                let d =
                    recipe
                        .source
                        .error(
                            span.clone(),
                            format!("cannot use base `oci:{}`", path.display()),
                        )
                        .cause(crate::error::render_chain(&e))
                        .hint(hint.unwrap_or_else(|| {
                            "check the path and digest of the base layout".into()
                        }));
                if code == 4 {
                    e
                } else {
                    d.into()
                }
            };
            let layout = Layout::open(path).map_err(wrap)?;
            let top = match digest {
                Some(d) => d.clone(),
                None => layout.single_image().map_err(wrap)?.digest,
            };
            let images = recipe
                .platforms
                .iter()
                .map(|p| {
                    let (img, had) = layout.load_image(digest.as_ref(), p, store).map_err(wrap)?;
                    let reports = img
                        .layers
                        .iter()
                        .zip(had)
                        .map(|(l, cached)| report(l, None, cached, true))
                        .collect();
                    Ok((img, reports))
                })
                .collect::<Result<Vec<_>>>()?;
            let material = Material {
                uri: format!("oci:{}", path.display()),
                digest: top,
            };
            Ok((images, vec![material]))
        }
    }
}

/// The digest a registry base stands for: its own, or the lockfile's for a tag.
pub(super) fn pinned_digest(
    recipe: &Recipe,
    reference: &str,
    span: &std::ops::Range<usize>,
) -> Result<Digest> {
    let parsed = crate::registry::parse_reference(reference)?;
    if let Some(d) = parsed.digest() {
        return d.parse().map_err(|e: crate::digest::BadDigest| {
            recipe.source.error(span.clone(), e.to_string()).into()
        });
    }
    let lock_path = lock::path_for(&recipe.source.path);
    let lock = Lock::read(&lock_path)?;
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

/// With `--locked`: the lockfile exists and pins exactly what the recipe names by tag.
pub(super) fn check_locked(recipe: &Recipe) -> Result<()> {
    let lock_path = lock::path_for(&recipe.source.path);
    let wanted: Vec<&str> = match &recipe.base {
        Base::Registry { reference, .. } if !reference.contains('@') => vec![reference.as_str()],
        _ => Vec::new(),
    };
    let lock = Lock::read(&lock_path)?;
    let hint = Some(format!(
        "run `kiln lock {}`, commit the lockfile, and build again",
        recipe.source.path.display()
    ));
    match lock {
        None if wanted.is_empty() => Ok(()),
        None => Err(Error::invalid(
            format!("`--locked`, but `{}` does not exist", lock_path.display()),
            hint,
        )),
        Some(lock) => {
            let pinned: Vec<&str> = lock.bases.keys().map(String::as_str).collect();
            if pinned == wanted {
                Ok(())
            } else {
                Err(Error::invalid(
                    format!(
                        "`--locked`, but `{}` is stale: it pins [{}], the recipe names [{}] by tag",
                        lock_path.display(),
                        pinned.join(", "),
                        wanted.join(", ")
                    ),
                    hint,
                ))
            }
        }
    }
}
