//! The whole job of `kiln build` as one call: resolve and build the recipe,
//! export it (OCI layout, OCI archive or VM bundle), write its SBOM and
//! provenance beside it, push it, sign it and attach its attestations.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{build, ManifestReport, Reporter, Settings};
use crate::attest::Documents;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::export::{self, Output};
use crate::image_name::ImageName;
use crate::registry::{PushReport, Reference, Registry};
use crate::store::Store;

/// What to write locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// An OCI image layout directory (a VM bundle directory for `[vm]` recipes).
    OciLayout,
    /// An OCI image layout in one tar file (with docker's `manifest.json`).
    OciArchive,
    /// `docker save`'s format, for tools that read nothing else.
    DockerArchive,
}

/// Signing what is pushed.
pub struct Signing<'a> {
    /// The private key file (PKCS#8 PEM, or cosign's encrypted format).
    pub key: PathBuf,
    /// Asked for the key's password when it is encrypted.
    pub password: &'a dyn Fn() -> Result<String>,
    /// For an index, also sign every platform manifest.
    pub recursive: bool,
    /// Where signatures and attestations go: cosign's tags, referrers, or both.
    pub scheme: crate::sign::Scheme,
}

/// One `kiln build`.
pub struct Request<'a> {
    /// The recipe.
    pub recipe: PathBuf,
    /// How to build.
    pub settings: Settings,
    /// Where to write (default `out/NAME`, or `out/NAME.tar` for an archive).
    pub out: Option<PathBuf>,
    /// What to write.
    pub format: Format,
    /// Names to call the image by instead of the recipe's `tags` (`--tag`).
    pub tags: Vec<String>,
    /// Also load the image into a local docker or podman (`--load`).
    pub load: Option<export::load::Load>,
    /// Write an SPDX SBOM beside the output (and attach it when signing).
    pub sbom: bool,
    /// Push to these references after building.
    pub push: Vec<Reference>,
    /// Sign what is pushed (needs `push`).
    pub signing: Option<Signing<'a>>,
    /// The store to build in.
    pub store: &'a Store,
    /// Told what happens as it happens.
    pub reporter: &'a dyn Reporter,
}

/// What one push did.
#[derive(Debug, Clone, Serialize)]
pub struct Pushed {
    /// The reference pushed to.
    pub reference: String,
    /// Blobs sent, skipped and mounted.
    pub report: PushReport,
    /// The digests signed there.
    pub signed: Vec<Digest>,
}

/// What `kiln build` did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The recipe's `name`.
    pub name: String,
    /// What the output and every push point at: the image's manifest or
    /// index, or for `[vm]` the bundle artifact's manifest.
    pub digest: Digest,
    /// The media type of the image's manifest or index.
    pub media_type: String,
    /// Where the output was written.
    pub out: PathBuf,
    /// What was written.
    pub format: Format,
    /// Per platform: the manifest and its layers.
    pub manifests: Vec<ManifestReport>,
    /// SBOM and provenance files written beside the output.
    pub documents: Vec<PathBuf>,
    /// Each push, in order.
    pub pushed: Vec<Pushed>,
    /// What the shared layer cache did (`--cache`).
    pub cache: Option<super::CacheReport>,
    /// What `--load` loaded.
    pub loaded: Option<export::load::Loaded>,
}

/// Builds, exports, pushes, signs and attests, as `request` asks.
pub fn run(request: &Request<'_>) -> Result<Outcome> {
    if request.signing.is_some() && request.push.is_empty() {
        return Err(Error::invalid(
            "`--sign-key` needs `--push`: signatures live in a registry",
            Some("add `--push REGISTRY/REPOSITORY:TAG`, or sign later with `kiln sign`".into()),
        ));
    }
    // The key is read before building, so a wrong password fails fast.
    let key = match &request.signing {
        Some(s) => Some(crate::sign::keys::load_private(&s.key, s.password)?),
        None => None,
    };
    // `--tag`s are checked before building, so a typo fails fast (a bare
    // tag's recipe name is checked with the recipe).
    names_of("kiln", &[], &request.tags)?;
    let store = request.store;
    if request.format == Format::OciLayout && same_filesystem(store, request.out.as_deref()) {
        store.keep_spares(true);
    }
    let built = build(store, &request.recipe, &request.settings, request.reporter)?;
    let name = &built.recipe.name;
    let out = request.out.clone().unwrap_or_else(|| match request.format {
        Format::OciLayout => PathBuf::from("out").join(name),
        Format::OciArchive | Format::DockerArchive => {
            PathBuf::from("out").join(format!("{name}.tar"))
        }
    });
    let names = image_names(&built.recipe, &request.tags)?;
    let output = Output {
        top: &built.top,
        names: &names,
        mtime: request.settings.source_date_epoch.unwrap_or(0),
    };
    // What a push sends: the image, or for `[vm]` the bundle as an OCI artifact.
    let pushed_top = match (&built.recipe.vm, request.format) {
        (Some(vm), Format::OciLayout) => {
            let input = export::vm::Input {
                recipe: &built.recipe,
                vm,
                layers: &built.images[0].0.layers,
                base_layers: built.manifests[0]
                    .layers
                    .iter()
                    .filter(|l| l.from_base)
                    .count(),
                image: &built.top.digest,
                mtime: output.mtime,
            };
            let bundle = export::vm::bundle(store, &input)?;
            export::vm::write(store, &bundle, &out)?;
            export::vm::store_artifact(store, &bundle)?
        }
        (Some(_), Format::OciArchive | Format::DockerArchive) => {
            return Err(Error::invalid(
                "a recipe with `[vm]` builds a VM bundle directory, not an archive",
                Some("leave out `--format`".into()),
            ))
        }
        (None, Format::OciLayout) => {
            export::layout::write(store, &output, &out)?;
            built.top.clone()
        }
        (None, Format::OciArchive) => {
            export::archive::write(store, &output, &out)?;
            built.top.clone()
        }
        (None, Format::DockerArchive) => {
            export::docker_archive::write(store, &output, &out)?;
            built.top.clone()
        }
    };
    let loaded = match request.load {
        Some(_) if built.recipe.vm.is_some() => return Err(Error::invalid(
            "`--load` puts an image into docker or podman; a recipe with `[vm]` builds a VM bundle",
            Some("leave out `--load`; boot the bundle with `kiln boot`".into()),
        )),
        Some(load) => Some(export::load::load(store, &output, load.runtime()?)?),
        None => None,
    };
    let manifests: Vec<_> = (built.images.iter().zip(&built.manifests))
        .map(|((_, stored), report)| crate::attest::PlatformManifest {
            platform: report.platform.clone(),
            digest: stored.digest.clone(),
        })
        .collect();
    let subject = crate::attest::Subject {
        recipe: &built.recipe,
        top: &built.top.digest,
        manifests: &manifests,
        materials: &built.materials,
        times: built.times.as_ref(),
        source_date_epoch: built.source_date_epoch,
    };
    let docs = Documents::of(store, &subject, request.sbom, request.settings.provenance)?;
    let documents = docs.write_beside(&out, name)?;
    for file in &documents {
        request.reporter.event(super::Event::Wrote { path: file });
    }
    let mut pushed = Vec::new();
    if !request.push.is_empty() {
        let refs: Vec<&Reference> = request.push.iter().collect();
        let registry = Registry::new(request.settings.registry.clone(), &refs)?;
        for (i, target) in request.push.iter().enumerate() {
            // Later destinations on the same registry mount the blobs the earlier ones got.
            let report = registry.push(store, &pushed_top, target, &request.push[..i])?;
            request.reporter.event(super::Event::Pushed {
                reference: target,
                report: &report,
            });
            let mut signed = Vec::new();
            if let (Some(key), Some(signing)) = (&key, &request.signing) {
                signed = crate::sign::sign_all(
                    &registry,
                    store,
                    target,
                    &pushed_top.digest,
                    key,
                    signing.recursive,
                    signing.scheme,
                )?;
                docs.attach_all(&registry, store, target, key, signing.scheme)?;
            }
            pushed.push(Pushed {
                reference: target.whole(),
                report,
                signed,
            });
        }
    }
    request.reporter.event(super::Event::Wrote { path: &out });
    Ok(Outcome {
        name: name.clone(),
        digest: pushed_top.digest,
        media_type: built.top.media_type.to_string(),
        out,
        format: request.format,
        cache: built.cache.clone(),
        manifests: built.manifests,
        documents,
        pushed,
        loaded,
    })
}

/// The names `--tag` (or else the recipe's `tags`) give the image: bare tags
/// name it after the recipe; none means `NAME:latest` (or no name at all
/// when the recipe's name is not a valid image name).
fn image_names(recipe: &crate::recipe::Recipe, tags: &[String]) -> Result<Vec<ImageName>> {
    names_of(&recipe.name, &recipe.tags, tags)
}

fn names_of(recipe_name: &str, recipe_tags: &[String], tags: &[String]) -> Result<Vec<ImageName>> {
    let (list, from_cli): (&[String], bool) = if tags.is_empty() {
        (recipe_tags, false)
    } else {
        (tags, true)
    };
    if list.is_empty() {
        return Ok(ImageName::of_entry(recipe_name, "latest")
            .into_iter()
            .collect());
    }
    let mut names: Vec<ImageName> = Vec::new();
    for t in list {
        let name = ImageName::of_entry(recipe_name, t).map_err(|why| {
            Error::invalid(
                format!(
                    "{} `{t}` is not a valid tag or image name: {why}",
                    if from_cli { "`--tag`" } else { "the tag" }
                ),
                Some("write a tag (`v1`), which names the image `NAME:v1` after the recipe, or a full name such as `registry.example/app:1.4` or `app:dev`".into()),
            )
        })?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Writes `digest` and a newline to `file`, atomically.
pub fn write_digest_file(file: &Path, digest: &Digest) -> Result<()> {
    crate::files::write_atomic(file, format!("{digest}\n").as_bytes())
}

/// Whether the output (`out`, or `out/` under the current directory by
/// default) will be on the store's filesystem, judged by the nearest
/// directory that exists: then a layout can take layer blobs by renaming
/// their second copies.
fn same_filesystem(store: &Store, out: Option<&std::path::Path>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let start = out.unwrap_or(std::path::Path::new("out"));
    let device = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| m.dev());
    let out_dev = start
        .ancestors()
        .map(|p| {
            if p.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                p
            }
        })
        .find_map(device);
    out_dev.is_some() && out_dev == device(store.root())
}
