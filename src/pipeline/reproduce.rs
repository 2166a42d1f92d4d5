//! `kiln diff A B` (opening each side: a layout, an archive, a registry
//! reference or a recipe built first) and `kiln reproduce REF` (rebuild an
//! image from its signed provenance and the working tree, and compare).

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::{Reporter, Settings};
use crate::diff::{Report, Side};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::registry::{parse_reference, Reference, Registry};
use crate::sign::cosign::{self, NamedKey};
use crate::source::layout::{open_any_with, Layout};
use crate::store::Store;

/// What `kiln diff` compares: one side as named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// An OCI layout directory or archive (`PATH`, `oci:PATH`), optionally
    /// one of its images by digest (`@sha256:…`) or by tag (`:TAG`).
    Layout {
        /// The directory or archive.
        path: PathBuf,
        /// `sha256:…` or a tag (`org.opencontainers.image.ref.name`, or the
        /// full name in `io.containerd.image.name`).
        select: Option<String>,
    },
    /// A recipe, built first (`*.toml`).
    Recipe(PathBuf),
    /// An image in a registry.
    Registry(Reference),
}

impl Input {
    /// Reads `text`: `oci:PATH[@sha256:…|:TAG]`, an existing path (a
    /// `.toml` file is a recipe), `PATH:TAG` / `PATH@sha256:…` when `PATH`
    /// exists, else a registry reference.
    pub fn parse(text: &str) -> Result<Input> {
        if let Some(rest) = text.strip_prefix("oci:") {
            let (path, select) = split_select(rest);
            return Ok(Input::Layout { path, select });
        }
        let p = Path::new(text);
        if p.exists() {
            if p.is_file() && text.ends_with(".toml") {
                return Ok(Input::Recipe(p.to_path_buf()));
            }
            return Ok(Input::Layout {
                path: p.to_path_buf(),
                select: None,
            });
        }
        if text.ends_with(".toml") {
            return Err(Error::invalid(
                format!("recipe `{text}` does not exist"),
                Some(
                    "give the path of a recipe, a layout, an archive or a registry reference"
                        .into(),
                ),
            ));
        }
        let (path, select) = split_select(text);
        if select.is_some() && path.exists() {
            return Ok(Input::Layout { path, select });
        }
        // A registry reference names its registry: `HOST.DOMAIN/…`, `HOST:PORT/…`, `localhost/…`.
        let host = text.split_once('/').map(|(h, _)| h);
        let names_registry =
            host.is_some_and(|h| h.contains('.') || h.contains(':') || h == "localhost");
        if !names_registry || text.starts_with('.') {
            return Err(Error::invalid(
                format!("`{text}` is neither an existing layout, archive or recipe nor a registry reference"),
                Some("give a path that exists, `oci:PATH`, a `*.toml` recipe or `REGISTRY/REPOSITORY:TAG`".into()),
            ));
        }
        Ok(Input::Registry(parse_reference(text)?))
    }
}

/// `PATH@sha256:…` or `PATH:TAG` (a tag has no `/`) → (PATH, selector).
fn split_select(text: &str) -> (PathBuf, Option<String>) {
    if let Some((p, d)) = text.rsplit_once('@') {
        return (PathBuf::from(p), Some(d.to_string()));
    }
    match text.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') && !p.is_empty() => {
            (PathBuf::from(p), Some(t.to_string()))
        }
        _ => (PathBuf::from(text), None),
    }
}

/// One side opened: a layout and the image in it.
pub struct Opened {
    /// Where the image's blobs are.
    pub layout: Layout,
    /// The image's manifest or index.
    pub top: Digest,
    /// As named.
    pub name: String,
    /// An archive read in place: its layers are copied out only when needed.
    archive: Option<Members>,
    _tmp: Option<tempfile::TempDir>,
}

impl Opened {
    /// This side, for [`crate::diff::diff`].
    pub fn side(&self) -> Side<'_> {
        Side {
            layout: &self.layout,
            top: self.top.clone(),
            name: self.name.clone(),
        }
    }
}

/// Opens `text` (see [`Input::parse`]): a recipe is built into a temporary
/// layout, a registry image pulled into the store.
pub fn open_input(
    store: &Store,
    settings: &Settings,
    text: &str,
    reporter: &dyn Reporter,
) -> Result<Opened> {
    let name = text.to_string();
    match Input::parse(text)? {
        Input::Layout { path, select } => {
            if path.is_file() {
                if let Some(opened) = open_archive(store, &path, select.as_deref(), &name)? {
                    return Ok(opened);
                }
            }
            let (layout, tmp) = open_any_with(&path, || store.temp_dir())?;
            let top = select_image(&layout, &path, select.as_deref())?;
            Ok(Opened {
                layout,
                top,
                name,
                archive: None,
                _tmp: tmp,
            })
        }
        Input::Registry(r) => {
            let registry = Registry::new(settings.registry.clone(), &[&r])?;
            let top = registry.pull(store, &r, None)?;
            Ok(Opened {
                layout: Layout::over_store(store),
                top: top.digest,
                name,
                archive: None,
                _tmp: None,
            })
        }
        Input::Recipe(recipe) => {
            let built = build_to_temp(store, settings.clone(), recipe, reporter)?;
            Ok(Opened {
                layout: Layout::open(&built.out)?,
                top: built.digest,
                name,
                archive: None,
                _tmp: Some(built.tmp),
            })
        }
    }
}

/// A recipe built into an OCI layout in a temporary directory of the store.
struct Built {
    /// Removed when dropped.
    tmp: tempfile::TempDir,
    /// The layout, inside `tmp`.
    out: PathBuf,
    /// The built image's digest.
    digest: Digest,
}

/// Builds `recipe` with `settings` into a temporary OCI layout (no SBOM,
/// provenance, tags, load, push or signing).
fn build_to_temp(
    store: &Store,
    settings: Settings,
    recipe: PathBuf,
    reporter: &dyn Reporter,
) -> Result<Built> {
    let tmp = store.temp_dir()?;
    let out = tmp.path().join("image");
    let outcome = super::run(&super::Request {
        recipe,
        settings: Settings {
            provenance: false,
            ..settings
        },
        out: Some(out.clone()),
        format: super::Format::OciLayout,
        sbom: false,
        tags: vec![],
        load: None,
        push: vec![],
        signing: None,
        store,
        reporter,
    })?;
    Ok(Built {
        tmp,
        out,
        digest: outcome.digest,
    })
}

/// The image of `layout` that `select` names (by digest or tag), or its only one.
fn select_image(layout: &Layout, path: &Path, select: Option<&str>) -> Result<Digest> {
    let Some(select) = select else {
        return Ok(layout.single_image()?.digest);
    };
    if let Ok(d) = select.parse::<Digest>() {
        return Ok(d);
    }
    for d in layout.index()? {
        let names = [
            d.annotation(crate::export::REF_NAME),
            d.annotation("io.containerd.image.name"),
        ];
        let hit = names.into_iter().flatten().any(|n| {
            n == select
                || n.rsplit_once(':')
                    .is_some_and(|(_, tag)| tag == select && !tag.contains('/'))
        });
        if hit {
            return Ok(d.digest);
        }
    }
    Err(Error::invalid(
        format!("`{}` has no image tagged `{select}`", path.display()),
        Some("see its tags with `kiln inspect`".into()),
    ))
}

/// Diffs two inputs as `kiln diff A B` does.
pub fn diff(
    store: &Store,
    settings: &Settings,
    a: &str,
    b: &str,
    reporter: &dyn Reporter,
) -> Result<Report> {
    // A registry side is pulled last, so that the layers a recipe side has
    // just built into the store are not downloaded again.
    let remote = |t: &str| matches!(Input::parse(t), Ok(Input::Registry(_)));
    let (a, b) = if remote(a) && !remote(b) {
        let b = open_input(store, settings, b, reporter)?;
        (open_input(store, settings, a, reporter)?, b)
    } else {
        let a = open_input(store, settings, a, reporter)?;
        (a, open_input(store, settings, b, reporter)?)
    };
    // An archive's layers are copied out now, but only those the other side lacks.
    let (la, lb) = (layer_digests(&a)?, layer_digests(&b)?);
    for (side, own, other) in [(&a, &la, &lb), (&b, &lb, &la)] {
        if let Some(m) = &side.archive {
            for d in own.difference(other) {
                m.extract(&format!("blobs/sha256/{}", d.hex()), side.layout.dir())?;
            }
        }
    }
    crate::diff::diff(&a.side(), &b.side())
}

/// One material of the provenance checked against the working tree.
#[derive(Debug, Clone, Serialize)]
pub struct MaterialCheck {
    /// The material as the provenance names it (`file:PATH`, `recipe:PATH` …).
    pub uri: String,
    /// Its digest in the provenance (`None`: the working tree's build has it, the provenance does not).
    pub attested: Option<String>,
    /// Its digest in the working tree (`None`: not an input of the working tree's build).
    pub local: Option<String>,
}

/// What `kiln reproduce` found.
#[derive(Debug, Serialize)]
pub struct Reproduced {
    /// The image's digest in the registry.
    pub digest: Digest,
    /// The digest the working tree rebuilt.
    pub rebuilt: Digest,
    /// Whether the two are one.
    pub reproduced: bool,
    /// The recipe rebuilt.
    pub recipe: PathBuf,
    /// Materials whose digests differ from the provenance's.
    pub materials: Vec<MaterialCheck>,
    /// What differs, when the digests do.
    pub diff: Option<Report>,
}

/// Reproduces `image`: verifies its signature and signed SLSA provenance
/// with `keys`, checks the working tree's recipe (`recipe`, else the path
/// the provenance names, under the current git repository's top) and its
/// inputs against the provenance's materials, rebuilds with the provenance's
/// `SOURCE_DATE_EPOCH`, and diffs the rebuilt image against the registry's
/// when the digests differ.
pub fn reproduce(
    store: &Store,
    settings: &Settings,
    image: &Reference,
    keys: &[NamedKey],
    recipe: Option<&Path>,
    reporter: &dyn Reporter,
) -> Result<Reproduced> {
    let registry = Registry::new(settings.registry.clone(), &[image])?;
    let digest = crate::sign::digest_of(&registry, image)?;
    // A promoted copy is signed for the repository it was built in.
    cosign::verify(&registry, store, image, &digest, keys, false)?;
    let predicate = provenance(&registry, store, image, &digest, keys)?;
    let build = &predicate["buildDefinition"];
    let recipe = match recipe {
        Some(r) => r.to_path_buf(),
        None => {
            let rel = build["externalParameters"]["recipe"]["path"]
                .as_str()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| {
                    Error::verification(
                        format!(
                            "the provenance of `{}@{digest}` names no recipe path",
                            cosign::identity(image)
                        ),
                        "name the recipe with `--recipe PATH`",
                    )
                })?;
            crate::attest::provenance::root(Path::new(".")).join(rel)
        }
    };
    if !recipe.is_file() {
        return Err(Error::invalid(
            format!("recipe `{}` (named by the provenance) is not in the working tree", recipe.display()),
            Some("run `kiln reproduce` at the top of the checkout the image was built from, or pass `--recipe PATH`".into()),
        ));
    }
    // What the working tree's build would name, as the provenance names it.
    let plan = crate::resolve::resolve(
        store,
        &recipe,
        crate::resolve::Options {
            locked: false,
            late: false,
            host_materials: true,
        },
    )?;
    let root = crate::attest::provenance::root(&plan.recipe.dir);
    let local: std::collections::BTreeMap<String, String> = plan
        .materials
        .iter()
        .map(|m| {
            (
                crate::attest::provenance::relative_uri(&root, &m.uri),
                m.digest.hex().to_string(),
            )
        })
        .collect();
    let attested: std::collections::BTreeMap<String, String> = build["resolvedDependencies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| {
            Some((
                d["uri"].as_str()?.to_string(),
                d["digest"]["sha256"].as_str()?.to_string(),
            ))
        })
        .collect();
    let mut materials = Vec::new();
    let uris: std::collections::BTreeSet<&String> = local.keys().chain(attested.keys()).collect();
    for uri in uris {
        let (a, l) = (attested.get(uri), local.get(uri));
        if a != l {
            materials.push(MaterialCheck {
                uri: uri.clone(),
                attested: a.cloned(),
                local: l.cloned(),
            });
        }
    }
    let mut settings = settings.clone();
    settings.source_date_epoch = build["internalParameters"]["sourceDateEpoch"].as_u64();
    let built = build_to_temp(store, settings, recipe.clone(), reporter)?;
    let reproduced = built.digest == digest;
    let diff = if reproduced {
        None
    } else {
        registry.pull(store, image, None)?;
        let pulled = Layout::over_store(store);
        let rebuilt = Layout::open(&built.out)?;
        Some(crate::diff::diff(
            &Side {
                layout: &pulled,
                top: digest.clone(),
                name: image.whole(),
            },
            &Side {
                layout: &rebuilt,
                top: built.digest.clone(),
                name: recipe.display().to_string(),
            },
        )?)
    };
    Ok(Reproduced {
        digest,
        rebuilt: built.digest,
        reproduced,
        recipe,
        materials,
        diff,
    })
}

/// The signed SLSA provenance predicate of `image@digest`.
fn provenance(
    registry: &Registry,
    store: &Store,
    image: &Reference,
    digest: &Digest,
    keys: &[NamedKey],
) -> Result<Value> {
    let missing = || {
        Error::verification(
            format!(
                "no SLSA provenance signed by the given key(s) found for `{}@{digest}`",
                cosign::identity(image)
            ),
            "build and push with `--provenance --sign-key KEY`",
        )
    };
    let layers =
        cosign::stored_layers(registry, store, image, digest, "att")?.ok_or_else(missing)?;
    for layer in &layers {
        let crate::attest::Envelope::Signed(st) =
            crate::attest::open_envelope(&store.read(&layer.digest)?, keys)
        else {
            continue;
        };
        let names_digest = st["subject"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["digest"]["sha256"].as_str() == Some(digest.hex()));
        if names_digest && st["predicateType"].as_str() == Some(crate::attest::SLSA_PREDICATE) {
            return Ok(st["predicate"].clone());
        }
    }
    Err(missing())
}

/// The layer digests of every manifest of an opened side.
fn layer_digests(side: &Opened) -> Result<std::collections::BTreeSet<Digest>> {
    let mut out = std::collections::BTreeSet::new();
    let list = match side.layout.read_document(&side.top)?.1 {
        crate::oci::Document::Index(index) => {
            index.manifests.into_iter().map(|d| d.digest).collect()
        }
        crate::oci::Document::Manifest(_) => vec![side.top.clone()],
    };
    for d in list {
        out.extend(
            side.layout
                .read_manifest(&d)?
                .layers
                .into_iter()
                .map(|l| l.digest),
        );
    }
    Ok(out)
}

/// The members of an OCI archive: where each one's bytes are in the file.
struct Members {
    file: PathBuf,
    at: std::collections::BTreeMap<String, (u64, u64)>,
}

impl Members {
    /// Reads the archive's headers (seeking over the members' bytes); `None`
    /// when it is not a plain tar of layout files (then the archive is
    /// unpacked whole, which says what is wrong with it).
    fn read(path: &Path) -> Option<Members> {
        let file = std::fs::File::open(path).ok()?;
        let mut ar = tar::Archive::new(file);
        let mut at = std::collections::BTreeMap::new();
        for entry in ar.entries_with_seek().ok()? {
            let entry = entry.ok()?;
            let kind = entry.header().entry_type();
            if kind.is_dir() {
                continue;
            }
            let name = entry.path().ok()?.to_string_lossy().into_owned();
            let name = name.trim_start_matches("./").to_string();
            let allowed = matches!(name.as_str(), "index.json" | "oci-layout")
                || name
                    .strip_prefix("blobs/sha256/")
                    .is_some_and(|h| format!("sha256:{h}").parse::<Digest>().is_ok());
            if !allowed || !kind.is_file() {
                return None;
            }
            at.insert(name, (entry.raw_file_position(), entry.size()));
        }
        (at.contains_key("index.json") && at.contains_key("oci-layout")).then(|| Members {
            file: path.to_path_buf(),
            at,
        })
    }

    /// Copies the member `name` (one of a fixed set of names: nothing
    /// escapes `dir`) to `dir/name`, unless it is there; a member the
    /// archive lacks is left absent, for the reader to report.
    fn extract(&self, name: &str, dir: &Path) -> Result<()> {
        use std::io::{Read, Seek};
        let dest = dir.join(name);
        let Some(&(offset, size)) = self.at.get(name) else {
            return Ok(());
        };
        if dest.exists() {
            return Ok(());
        }
        let mut file = std::fs::File::open(&self.file).at("open", &self.file)?;
        file.seek(std::io::SeekFrom::Start(offset))
            .at("read", &self.file)?;
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).at("create", parent)?;
        }
        let mut out = std::fs::File::create(&dest).at("create", &dest)?;
        std::io::copy(&mut file.take(size), &mut out).at("read", &self.file)?;
        Ok(())
    }
}

/// Opens an OCI archive in place: its index, manifests and configs copied
/// out now, its layers later and only as needed ([`diff`]). `None` when the
/// archive is not one [`Members::read`] takes.
fn open_archive(
    store: &Store,
    path: &Path,
    select: Option<&str>,
    name: &str,
) -> Result<Option<Opened>> {
    let Some(members) = Members::read(path) else {
        return Ok(None);
    };
    let tmp = store.temp_dir()?;
    let dir = tmp.path();
    members.extract("oci-layout", dir)?;
    members.extract("index.json", dir)?;
    let layout = Layout::open(dir)?;
    let top = select_image(&layout, path, select)?;
    let blob = |d: &Digest| members.extract(&format!("blobs/sha256/{}", d.hex()), dir);
    blob(&top)?;
    let list = match layout.read_document(&top)?.1 {
        crate::oci::Document::Index(index) => {
            index.manifests.into_iter().map(|d| d.digest).collect()
        }
        crate::oci::Document::Manifest(_) => vec![top.clone()],
    };
    for d in list {
        blob(&d)?;
        let m = layout.read_manifest(&d)?;
        blob(&m.config.digest)?;
    }
    Ok(Some(Opened {
        layout,
        top,
        name: name.to_string(),
        archive: Some(members),
        _tmp: Some(tmp),
    }))
}
