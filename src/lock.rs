//! The lockfile: `RECIPE.lock` beside `RECIPE.toml`, committed by users.
//!
//! It pins every input a recipe names by something that can move (a base
//! image by tag) to a digest. Its bytes are stable: entries sorted, one per
//! line, so the same inputs write the same file and diffs stay small.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{Error, Result, Source};

/// The lockfile's format version.
pub const LOCK_VERSION: u32 = 1;

/// What a lockfile pins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lock {
    /// Base image references by tag → the digest they resolved to.
    pub bases: BTreeMap<String, Digest>,
    /// Debian packages, per architecture and layer, sorted.
    pub packages: Vec<LockedPackage>,
    /// What each layer asked for, per architecture (so a stale lock is seen).
    pub requests: Vec<LockedRequest>,
}

/// The package names one layer of the recipe asked for, when it was locked.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LockedRequest {
    /// The Debian architecture.
    pub arch: String,
    /// The recipe layer (0-based).
    pub layer: usize,
    /// The names, sorted.
    pub names: Vec<String>,
}

/// One Debian package pinned by the lock.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    /// The Debian architecture it was resolved for (`amd64`, `arm64`).
    pub arch: String,
    /// The recipe layer (0-based) that installs it.
    pub layer: usize,
    /// `Package`.
    pub name: String,
    /// `Version`.
    pub version: String,
    /// The package's own `Architecture` (`all` for architecture-independent ones).
    pub architecture: String,
    /// The path inside the archive (`pool/…`), the same on every mirror.
    pub path: String,
    /// Its SHA-256.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// The recipe's name for the repository it came from.
    pub repository: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLock {
    version: u32,
    #[serde(default)]
    bases: BTreeMap<String, toml::Spanned<String>>,
    #[serde(default)]
    packages: Vec<LockedPackage>,
    #[serde(default)]
    requests: Vec<LockedRequest>,
}

/// The lockfile of the recipe at `recipe`: the same name with `.lock`.
pub fn path_for(recipe: &Path) -> PathBuf {
    recipe.with_extension("lock")
}

impl Lock {
    /// Reads a lockfile; `None` if there is none.
    pub fn read(path: &Path) -> Result<Option<Lock>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        let source = Source {
            path: path.to_path_buf(),
            text,
        };
        let raw: RawLock = toml::from_str(&source.text).map_err(|e| {
            Error::from(
                source
                    .error(e.span().unwrap_or(0..0), e.message().trim_end().to_string())
                    .hint("regenerate the lockfile with `kiln lock RECIPE`"),
            )
        })?;
        if raw.version != LOCK_VERSION {
            return Err(source
                .error(
                    0..0,
                    format!("lockfile version {} is not {LOCK_VERSION}", raw.version),
                )
                .hint("regenerate it with this kiln: `kiln lock RECIPE`")
                .into());
        }
        let mut bases = BTreeMap::new();
        for (reference, digest) in raw.bases {
            let d = digest
                .get_ref()
                .parse()
                .map_err(|e: crate::digest::BadDigest| {
                    Error::from(
                        source
                            .error(digest.span(), e.to_string())
                            .hint("regenerate the lockfile with `kiln lock RECIPE`"),
                    )
                })?;
            bases.insert(reference, d);
        }
        let mut packages = raw.packages;
        for p in &packages {
            if format!("sha256:{}", p.sha256).parse::<Digest>().is_err() {
                return Err(source
                    .error(0..0, format!("package `{}` has an invalid sha256", p.name))
                    .hint("regenerate the lockfile with `kiln lock RECIPE`")
                    .into());
            }
        }
        packages.sort();
        let mut requests = raw.requests;
        requests.sort();
        Ok(Some(Lock {
            bases,
            packages,
            requests,
        }))
    }

    /// The lockfile's text.
    pub fn render(&self) -> String {
        let mut text = format!(
            "# Written by `kiln lock`: every moving input of the recipe, pinned by digest.\n# Commit it beside the recipe.\nversion = {LOCK_VERSION}\n"
        );
        if !self.bases.is_empty() {
            text.push_str("\n[bases]\n");
            for (reference, digest) in &self.bases {
                text.push_str(&format!("{} = \"{digest}\"\n", toml_key(reference)));
            }
        }
        for r in &self.requests {
            text.push_str("\n[[requests]]\n");
            text.push_str(&toml::to_string(r).expect("lock requests serialise"));
        }
        for p in &self.packages {
            text.push_str("\n[[packages]]\n");
            text.push_str(&toml::to_string(p).expect("locked packages serialise"));
        }
        text
    }

    /// Writes the lockfile atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::files::write_atomic(path, self.render().as_bytes())
    }
}

/// Resolves every input `recipe` names by tag and writes its lockfile.
/// Returns the lockfile's path and whether its content changed.
pub fn lock_recipe(
    recipe: &Path,
    options: &crate::registry::Options,
) -> Result<(PathBuf, Lock, bool)> {
    let parsed = crate::recipe::Recipe::load(recipe)?;
    let mut lock = Lock::default();
    if let crate::recipe::Base::Registry { reference, .. } = &parsed.base {
        let r = crate::registry::parse_reference(reference)?;
        if r.digest().is_none() {
            let registry = crate::registry::Registry::new(options.clone(), &[&r])?;
            lock.bases.insert(reference.clone(), registry.resolve(&r)?);
        }
    }
    (lock.packages, lock.requests) = lock_packages(&parsed)?;
    let path = path_for(recipe);
    let changed = Lock::read(&path).ok().flatten().as_ref() != Some(&lock);
    if changed {
        lock.write(&path)?;
    }
    Ok((path, lock, changed))
}

/// Resolves every layer's `packages` for every platform of `recipe`.
type LockedSets = (Vec<LockedPackage>, Vec<LockedRequest>);

fn lock_packages(recipe: &crate::recipe::Recipe) -> Result<LockedSets> {
    use crate::source::deb::{self, resolve::Universe, resolve::Unsatisfiable};
    if recipe.layers.iter().all(|l| l.packages.is_empty()) {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut requests = Vec::new();
    let store = crate::store::Store::open(crate::store::Store::default_root()?)?;
    let fetcher = deb::Fetcher::new(deb::mirror()?)?;
    let repos = repositories(recipe);
    let mut out = Vec::new();
    let mut arches: Vec<String> = recipe
        .platforms
        .iter()
        .map(|p| deb::debian_arch(&p.arch, p.variant.as_deref()))
        .collect();
    arches.dedup();
    for arch in arches {
        let mut index = Vec::new();
        for repo in &repos {
            index.extend(deb::load_index(&fetcher, &store, repo, &arch)?);
        }
        let universe = Universe::new(&index, &arch);
        // Packages a base recipe's lock installs count as installed here.
        let base_packages = base_lock_packages(recipe, &arch)?;
        let base_owned: Vec<deb::Package> = base_packages
            .iter()
            .map(|p| deb::Package {
                name: p.name.clone(),
                version: p.version.clone(),
                arch: p.architecture.clone(),
                path: p.path.clone(),
                sha256: format!("sha256:{}", p.sha256)
                    .parse()
                    .unwrap_or_else(|_| Digest::of(p.path.as_bytes())),
                size: p.size,
                stanza: index
                    .iter()
                    .find(|i| i.name == p.name && i.version == p.version)
                    .map(|i| i.stanza.clone())
                    .unwrap_or_default(),
                repository: p.repository.clone(),
            })
            .collect();
        let mut installed: BTreeMap<String, &deb::Package> =
            base_owned.iter().map(|p| (p.name.clone(), p)).collect();
        for (layer_no, layer) in recipe.layers.iter().enumerate() {
            if layer.packages.is_empty() {
                continue;
            }
            let names: Vec<String> = layer.packages.iter().map(|p| p.get_ref().clone()).collect();
            requests.push(LockedRequest {
                arch: arch.clone(),
                layer: layer_no,
                names: requested_names(layer),
            });
            let chosen = universe.resolve(&names, &installed).map_err(|e| {
                let (span, message, hint) = match e {
                    Unsatisfiable::Unknown(name) => (
                        layer.packages.iter().find(|p| *p.get_ref() == name).map_or(0..0, |p| p.span()),
                        format!("no package `{name}` for `{arch}` in the recipe's repositories"),
                        "check the name (`apt-cache show NAME`), the suite and the components",
                    ),
                    Unsatisfiable::Chain(chain) => (
                        layer
                            .packages
                            .iter()
                            .find(|p| Some(p.get_ref()) == chain.first())
                            .or(layer.packages.first())
                            .map_or(0..0, |p| p.span()),
                        format!("cannot install for `{arch}`: {}", chain.join(" → ")),
                        "no version in the repositories satisfies the last dependency: add the repository that has it, or drop the package",
                    ),
                };
                Error::from(recipe.source.error(span, message).hint(hint))
            })?;
            for p in chosen {
                installed.insert(p.name.clone(), p);
                out.push(LockedPackage {
                    arch: arch.clone(),
                    layer: layer_no,
                    name: p.name.clone(),
                    version: p.version.clone(),
                    architecture: p.arch.clone(),
                    path: p.path.clone(),
                    sha256: p.sha256.hex().to_string(),
                    size: p.size,
                    repository: p.repository.clone(),
                });
            }
        }
    }
    out.sort();
    requests.sort();
    Ok((out, requests))
}

/// A layer's requested package names, sorted and without repeats.
pub fn requested_names(layer: &crate::recipe::LayerSection) -> Vec<String> {
    let mut names: Vec<String> = layer.packages.iter().map(|p| p.get_ref().clone()).collect();
    names.sort();
    names.dedup();
    names
}

/// The packages the locks of `recipe`'s base recipes (recursively) pin for `arch`.
fn base_lock_packages(recipe: &crate::recipe::Recipe, arch: &str) -> Result<Vec<LockedPackage>> {
    let mut out = Vec::new();
    let mut current = recipe.base.clone();
    let mut seen = 0;
    while let crate::recipe::Base::Recipe { path, .. } = current {
        seen += 1;
        if seen > 32 {
            break;
        }
        let base = crate::recipe::Recipe::load(&path)?;
        if let Some(lock) = Lock::read(&path_for(&path))? {
            out.extend(lock.packages.into_iter().filter(|p| p.arch == arch));
        }
        current = base.base.clone();
    }
    Ok(out)
}

/// The recipe's Debian repositories, with keyrings resolved against its directory.
pub fn repositories(recipe: &crate::recipe::Recipe) -> Vec<crate::source::deb::Repository> {
    recipe
        .repositories
        .iter()
        .map(|(name, r)| crate::source::deb::Repository {
            name: name.clone(),
            suite: r.suite.clone(),
            components: if r.components.is_empty() {
                vec!["main".to_string()]
            } else {
                r.components.clone()
            },
            keyring: r.keyring.as_ref().map_or_else(
                || PathBuf::from(crate::source::deb::DEFAULT_KEYRING),
                |k| recipe.dir.join(k),
            ),
        })
        .collect()
}

fn toml_key(s: &str) -> String {
    let escaped = s.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_stable_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.lock");
        let mut lock = Lock::default();
        lock.bases.insert("r.example/b:2".into(), Digest::of(b"2"));
        lock.bases.insert("r.example/a:1".into(), Digest::of(b"1"));
        lock.write(&path).unwrap();
        let first = std::fs::read(&path).unwrap();
        assert_eq!(Lock::read(&path).unwrap().unwrap(), lock);
        lock.write(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), first);
        let text = String::from_utf8(first).unwrap();
        assert!(text.find("r.example/a:1").unwrap() < text.find("r.example/b:2").unwrap());
    }
}
