//! Bases, fetched for each platform: scratch, another recipe (built
//! first), an OCI layout on disk, or a registry image (pulled unless the
//! store already holds it). Resolution pinned each one already.

use super::{build_plan, report, LayerReport, Reporter, Settings};
use crate::error::Result;
use crate::image::Image;
use crate::recipe::Recipe;
use crate::resolve::{layout_error, BasePlan, Material, Plan};
use crate::source::layout::Layout;
use crate::store::Store;

/// A base image for one platform, with the report of each of its layers.
pub(super) type BaseImage = (Image, Vec<LayerReport>);

/// The base image for each of the recipe's platforms, in order, with the
/// report of each of its layers, and the base's materials.
pub(super) fn fetch_base(
    store: &Store,
    plan: &Plan,
    settings: &Settings,
    reporter: &dyn Reporter,
) -> Result<(Vec<BaseImage>, Vec<Material>)> {
    let recipe: &Recipe = &plan.recipe;
    match &plan.base {
        BasePlan::Scratch => Ok((
            recipe
                .platforms
                .iter()
                .map(|p| (Image::scratch(p), Vec::new()))
                .collect(),
            Vec::new(),
        )),
        BasePlan::Recipe {
            path,
            plan: base_plan,
            ..
        } => recipe_base(store, recipe, path, base_plan, settings, reporter),
        BasePlan::Registry { reference, digest } => {
            registry_base(store, recipe, reference, digest, settings)
        }
        BasePlan::Layout {
            path, named, span, ..
        } => layout_base(store, recipe, path, named.as_ref(), span),
    }
}

/// A base recipe, built first; its platforms' images and layer reports.
fn recipe_base(
    store: &Store,
    recipe: &Recipe,
    path: &std::path::Path,
    base_plan: &Plan,
    settings: &Settings,
    reporter: &dyn Reporter,
) -> Result<(Vec<BaseImage>, Vec<Material>)> {
    // Only the platforms this recipe needs: a platform's image does not
    // depend on the others, so each is the one a full build of the base
    // makes (only the base's index, which this recipe does not use, differs).
    let mut base_plan = restricted(base_plan, &recipe.platforms);
    let own = std::mem::take(&mut base_plan.materials);
    let base = build_plan(store, &mut base_plan, own, settings, reporter)?;
    // Only the base's inputs for the platforms built: its `.deb`s for
    // other architectures are not inputs of this build.
    let archs: Vec<String> = recipe
        .platforms
        .iter()
        .map(|p| crate::source::deb::debian_arch(&p.arch, p.variant.as_deref()))
        .collect();
    let mut materials: Vec<Material> = base
        .materials
        .iter()
        .filter(|m| match m.uri.strip_prefix("deb:") {
            Some(path) => {
                path.ends_with("_all.deb")
                    || archs.iter().any(|a| path.ends_with(&format!("_{a}.deb")))
            }
            None => true,
        })
        .cloned()
        .collect();
    materials.push(Material {
        uri: format!("base:{}", path.display()),
        digest: base.top.digest.clone(),
    });
    // Resolution checked that the base is built for every platform.
    let images = recipe
        .platforms
        .iter()
        .map(|p| {
            let ((img, _), m) = base
                .images
                .iter()
                .zip(&base.manifests)
                .find(|((img, _), _)| img.platform == *p)
                .expect("resolution checked the base's platforms");
            let mut reports = m.layers.clone();
            for r in &mut reports {
                r.from_base = true;
            }
            (img.clone(), reports)
        })
        .collect();
    Ok((images, materials))
}

/// `plan` for only those of its platforms that are in `platforms` (in its
/// own order); the plan itself when it needs them all.
fn restricted(plan: &Plan, platforms: &[crate::recipe::Platform]) -> Plan {
    let keep: Vec<usize> = (0..plan.recipe.platforms.len())
        .filter(|&i| platforms.contains(&plan.recipe.platforms[i]))
        .collect();
    if keep.len() == plan.recipe.platforms.len() {
        return plan.clone();
    }
    let mut out = plan.clone();
    out.recipe.platforms = keep
        .iter()
        .map(|&i| plan.recipe.platforms[i].clone())
        .collect();
    out.layers = keep.iter().map(|&i| plan.layers[i].clone()).collect();
    out
}

/// A registry base: from the store when it is there, else pulled.
fn registry_base(
    store: &Store,
    recipe: &Recipe,
    reference: &crate::registry::Reference,
    digest: &crate::digest::Digest,
    settings: &Settings,
) -> Result<(Vec<BaseImage>, Vec<Material>)> {
    let view = Layout::over_store(store);
    let load = || -> Result<Vec<(Image, Vec<bool>)>> {
        recipe
            .platforms
            .iter()
            .map(|p| view.load_image(Some(digest), p, store))
            .collect()
    };
    // A base already in the store is used without asking the registry.
    let (images, cached) = match load() {
        Ok(images) => (images, true),
        Err(_) => {
            let registry = crate::registry::Registry::new(settings.registry.clone(), &[reference])?;
            registry.pull(store, reference, Some(&recipe.platforms))?;
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
    Ok((images, Vec::new()))
}

/// An `oci:` base, read from its layout (blobs verified into the store).
fn layout_base(
    store: &Store,
    recipe: &Recipe,
    path: &std::path::Path,
    named: Option<&crate::digest::Digest>,
    span: &std::ops::Range<usize>,
) -> Result<(Vec<BaseImage>, Vec<Material>)> {
    let wrap = |e| layout_error(recipe, path, span, e);
    let layout = Layout::open(path).map_err(wrap)?;
    let images = recipe
        .platforms
        .iter()
        .map(|p| {
            let (img, had) = layout.load_image(named, p, store).map_err(wrap)?;
            let reports = img
                .layers
                .iter()
                .zip(had)
                .map(|(l, cached)| report(l, None, cached, true))
                .collect();
            Ok((img, reports))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((images, Vec::new()))
}
