//! The lockfile: `RECIPE.lock` beside `RECIPE.toml`, committed by users.
//!
//! It pins every input a recipe names by something that can move (a base
//! image by tag) to a digest. Its bytes are stable: entries sorted, one per
//! line, so the same inputs write the same file and diffs stay small.
//!
//! Digests are [`Digest`]s, checked when the file is read; a lock read from a
//! file keeps its text and each entry's place in it, so an error about an
//! entry (a bad digest, a package the store cannot verify) names the line and
//! column of that entry, like a recipe error.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{Diagnostic, Error, Result, Source};

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
    /// The file this lock was read from, for errors about its entries.
    pub origin: Origin,
}

/// The lockfile a [`Lock`] was read from (none for a lock made in memory).
/// Two locks with the same entries are equal wherever they came from.
#[derive(Debug, Clone, Default)]
pub struct Origin(pub Option<Arc<Source>>);

impl PartialEq for Origin {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Origin {}

/// Where an entry stands in the lockfile it was read from (byte offsets);
/// empty for an entry made in memory. Ignored by comparisons, so a lock read
/// back equals the lock written.
#[derive(Debug, Clone, Default)]
pub struct Span(pub Range<usize>);

impl PartialEq for Span {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Span {}

impl PartialOrd for Span {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Span {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
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
    /// The names among them that no package of this layer is called by:
    /// the base recipe or an earlier layer installs them, or a package the
    /// layer installs provides them. Written only when there are some.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub satisfied: Vec<String>,
    /// Where the entry stands in the lockfile.
    #[serde(skip)]
    pub span: Span,
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
    /// Its SHA-256, written bare (`sha256 = "<64 hex>"`).
    #[serde(rename = "sha256", with = "bare_hex")]
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The recipe's name for the repository it came from.
    pub repository: String,
    /// Where the entry stands in the lockfile.
    #[serde(skip)]
    pub span: Span,
}

/// A SHA-256 [`Digest`] written as its bare hex, as the lockfile has always
/// written package digests.
mod bare_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::digest::Digest;

    pub fn serialize<S: Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(d.hex())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let hex = String::deserialize(d)?;
        format!("sha256:{hex}").parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "`{hex}` is not a SHA-256 digest (64 lowercase hex digits)"
            ))
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLock {
    version: toml::Spanned<u32>,
    #[serde(default)]
    bases: BTreeMap<String, Digest>,
    #[serde(default)]
    packages: Vec<toml::Spanned<LockedPackage>>,
    #[serde(default)]
    requests: Vec<toml::Spanned<LockedRequest>>,
}

/// `kiln lock RECIPE` for the lockfile at `lock`.
fn command_for(lock: &Path) -> String {
    format!("`kiln lock {}`", lock.with_extension("toml").display())
}

/// The hint for a lockfile kiln cannot use.
fn regenerate_hint(lock: &Path) -> String {
    format!(
        "regenerate the lockfile with {} and commit it",
        command_for(lock)
    )
}

/// The lockfile of the recipe at `recipe`: the same name with `.lock`.
pub fn path_for(recipe: &Path) -> PathBuf {
    recipe.with_extension("lock")
}

impl Lock {
    /// The text the lock was read from (none for a lock made in memory).
    pub fn text(&self) -> Option<&str> {
        self.origin.0.as_deref().map(|s| s.text.as_str())
    }

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
        // A bad digest fails here, at its own value: the deserializer knows its span.
        let raw: RawLock = toml::from_str(&source.text).map_err(|e| {
            Error::from(
                source
                    .error(e.span().unwrap_or(0..0), e.message().trim_end().to_string())
                    .hint(regenerate_hint(path)),
            )
        })?;
        if *raw.version.get_ref() != LOCK_VERSION {
            return Err(source
                .error(
                    raw.version.span(),
                    format!(
                        "lockfile version {} is not {LOCK_VERSION}",
                        raw.version.get_ref()
                    ),
                )
                .hint(format!(
                    "regenerate it with this kiln: {}",
                    command_for(path)
                ))
                .into());
        }
        let mut packages: Vec<LockedPackage> = raw
            .packages
            .into_iter()
            .map(|p| {
                let span = p.span();
                LockedPackage {
                    span: Span(span),
                    ..p.into_inner()
                }
            })
            .collect();
        packages.sort();
        let mut requests: Vec<LockedRequest> = raw
            .requests
            .into_iter()
            .map(|r| {
                let span = r.span();
                LockedRequest {
                    span: Span(span),
                    ..r.into_inner()
                }
            })
            .collect();
        requests.sort();
        Ok(Some(Lock {
            bases: raw.bases,
            packages,
            requests,
            origin: Origin(Some(Arc::new(source))),
        }))
    }

    /// A diagnostic at `span` of the file this lock was read from, with a hint
    /// to regenerate it; an [`Error::Invalid`] for a lock made in memory.
    pub fn error_at(&self, span: &Span, message: impl Into<String>) -> Error {
        match &self.origin.0 {
            Some(source) => {
                let hint = regenerate_hint(&source.path);
                let d: Diagnostic = source.error(span.0.clone(), message).hint(hint);
                d.into()
            }
            None => Error::invalid(
                message,
                Some("regenerate the lockfile with `kiln lock RECIPE`".into()),
            ),
        }
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

/// What `kiln lock` may move.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Update {
    /// Keep every pin that still resolves; move only what must move.
    #[default]
    Keep,
    /// `--update`: every package to the newest version that resolves.
    All,
    /// `--update PKG…`: these packages (and what their new versions require).
    Only(std::collections::BTreeSet<String>),
}

impl Update {
    fn frees(&self, name: &str) -> bool {
        match self {
            Update::Keep => false,
            Update::All => true,
            Update::Only(names) => names.contains(name),
        }
    }
}

/// One lockfile `kiln lock` looked at: its path, what it pins, and whether
/// it was written.
#[derive(Debug, Clone)]
pub struct Locked {
    /// The lockfile.
    pub path: PathBuf,
    /// What it pins.
    pub lock: Lock,
    /// Whether its content changed (and it was written).
    pub changed: bool,
}

/// Whether a recipe has something to lock (a registry base by tag, or
/// packages) or a lockfile already.
fn needs_lock(recipe: &crate::recipe::Recipe) -> bool {
    let tagged = matches!(&recipe.base, crate::recipe::Base::Registry { reference, .. } if !reference.contains('@'));
    tagged
        || recipe.layers.iter().any(|l| !l.packages.is_empty())
        || path_for(&recipe.source.path).exists()
}

/// Locks `recipe` and, first, its base recipes that need a lock (a base
/// whose lock is up to date keeps its bytes). Returns every lockfile looked
/// at, base recipes first, `recipe`'s last. `update` applies to all of them.
pub fn lock_recipe(
    recipe: &Path,
    options: &crate::registry::Options,
    update: &Update,
) -> Result<Vec<Locked>> {
    let mut chain = vec![crate::recipe::Recipe::load(recipe)?];
    while let crate::recipe::Base::Recipe { path, span } = &chain.last().expect("one").base {
        if chain.len() > 32 {
            let last = chain.last().expect("one");
            return Err(last
                .source
                .error(span.clone(), "base recipes nest more than 32 deep")
                .hint("look for a base cycle")
                .into());
        }
        let base = crate::recipe::Recipe::load(path)?;
        chain.push(base);
    }
    let mut out = Vec::new();
    // The deepest base first: a child resolves on top of its base's lock.
    for (depth, parsed) in chain.into_iter().enumerate().rev() {
        if depth > 0 && !needs_lock(&parsed) {
            continue;
        }
        out.push(lock_one(parsed, options, update)?);
    }
    Ok(out)
}

/// Locks one recipe whose base recipes are locked already.
fn lock_one(
    mut parsed: crate::recipe::Recipe,
    options: &crate::registry::Options,
    update: &Update,
) -> Result<Locked> {
    inherit_repositories(&mut parsed)?;
    let path = path_for(&parsed.source.path);
    let previous = Lock::read(&path).ok().flatten();
    let mut lock = Lock::default();
    if let crate::recipe::Base::Registry { reference, .. } = &parsed.base {
        let r = crate::registry::parse_reference(reference)?;
        if r.digest().is_none() {
            let registry = crate::registry::Registry::new(options.clone(), &[&r])?;
            lock.bases.insert(reference.clone(), registry.resolve(&r)?);
        }
    }
    let keep = match update {
        Update::All => None,
        _ => previous.as_ref(),
    };
    (lock.packages, lock.requests) = lock_packages(&parsed, keep, update)?;
    let changed = previous.as_ref() != Some(&lock);
    if changed {
        lock.write(&path)?;
    }
    Ok(Locked {
        path,
        lock,
        changed,
    })
}

/// Adds to `recipe` the `[repositories]` of its base recipes (recursively)
/// that it does not name itself: a recipe overrides a base's repository by
/// naming one of the same name. A base's keyring stays relative to the base.
pub fn inherit_repositories(recipe: &mut crate::recipe::Recipe) -> Result<()> {
    let mut current = recipe.base.clone();
    let mut depth = 0;
    while let crate::recipe::Base::Recipe { path, .. } = current {
        depth += 1;
        if depth > 32 || !path.is_file() {
            break;
        }
        let base = crate::recipe::Recipe::load(&path)?;
        inherit_from(recipe, &base);
        current = base.base.clone();
    }
    Ok(())
}

/// Adds `base`'s repositories that `recipe` does not name, keyrings made
/// absolute against `base`'s directory.
pub fn inherit_from(recipe: &mut crate::recipe::Recipe, base: &crate::recipe::Recipe) {
    for (name, r) in &base.repositories {
        if recipe.repositories.contains_key(name) {
            continue;
        }
        let mut r = r.clone();
        r.keyring = r
            .keyring
            .map(|k| base.dir.join(k).to_string_lossy().into_owned());
        recipe.repositories.insert(name.clone(), r);
    }
}

/// Resolves every layer's `packages` for every platform of `recipe`.
type LockedSets = (Vec<LockedPackage>, Vec<LockedRequest>);

/// Keeps, for every name `previous` pins for `arch` (and `update` does not
/// free), only the pinned version in `index` when the index still has it.
fn restrict<'a>(
    index: &'a [Vec<crate::source::deb::Package>],
    pins: &BTreeMap<String, String>,
) -> Vec<&'a crate::source::deb::Package> {
    let present: std::collections::BTreeSet<(&str, &str)> = index
        .iter()
        .flatten()
        .filter(|p| pins.contains_key(&p.name))
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    index
        .iter()
        .flatten()
        .filter(|p| match pins.get(&p.name) {
            Some(v) if present.contains(&(p.name.as_str(), v.as_str())) => p.version == *v,
            _ => true,
        })
        .collect()
}

/// The package name a relation in a resolver chain is about (`tool-data (= 2)` → `tool-data`).
fn relation_name(relation: &str) -> &str {
    let end = relation
        .find(|c: char| c.is_whitespace() || c == '(' || c == ':')
        .unwrap_or(relation.len());
    &relation[..end]
}

fn lock_packages(
    recipe: &crate::recipe::Recipe,
    previous: Option<&Lock>,
    update: &Update,
) -> Result<LockedSets> {
    use crate::source::deb::{self, resolve::Universe, resolve::Unsatisfiable};
    if recipe.layers.iter().all(|l| l.packages.is_empty()) {
        return Ok((Vec::new(), Vec::new()));
    }
    let repos = repositories(recipe);
    if repos.is_empty() {
        let first = recipe
            .layers
            .iter()
            .find_map(|l| l.packages.first())
            .map_or(0..0, |p| p.span());
        return Err(recipe
            .source
            .error(first, "`packages` needs a Debian repository, and neither the recipe nor its base recipes name one")
            .hint("add `[repositories.debian]` with `suite = \"bookworm\"` (the mirror comes from `KILN_DEBIAN_MIRROR` or the host's apt sources)")
            .into());
    }
    let mut requests = Vec::new();
    let store = crate::store::Store::open(crate::store::Store::default_root()?)?;
    let fetchers = repos
        .iter()
        .map(|r| deb::Fetcher::new(mirror_for(recipe, r)?))
        .collect::<Result<Vec<_>>>()?;
    let mut out = Vec::new();
    let mut arches: Vec<String> = recipe
        .platforms
        .iter()
        .map(|p| deb::debian_arch(&p.arch, p.variant.as_deref()))
        .collect();
    arches.dedup();
    for arch in arches {
        let mut index = Vec::new();
        for (repo, fetcher) in repos.iter().zip(&fetchers) {
            // In chunks, never joined: one vector of them all would hold
            // two copies while it grows.
            index.extend(deb::load_index(fetcher, &store, repo, &arch)?);
        }
        // Packages a base recipe's lock installs count as installed here.
        let base_packages = base_lock_packages(recipe, &arch)?;
        let base_owned: Vec<deb::Package> = base_packages
            .iter()
            .map(|p| deb::Package {
                name: p.name.clone(),
                version: p.version.clone(),
                arch: p.architecture.clone(),
                path: p.path.clone(),
                sha256: p.digest.clone(),
                size: p.size,
                stanza: index
                    .iter()
                    .flatten()
                    .find(|i| i.name == p.name && i.version == p.version)
                    .map(|i| i.stanza.clone())
                    .unwrap_or_default(),
                repository: p.repository.clone(),
            })
            .collect();
        // What the previous lock pins for this architecture, minus what
        // `update` frees: kept while it still resolves.
        let mut pins: BTreeMap<String, String> = previous
            .map(|l| {
                l.packages
                    .iter()
                    .filter(|p| p.arch == arch && !update.frees(&p.name))
                    .map(|p| (p.name.clone(), p.version.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let (arch_packages, arch_requests) = loop {
            let restricted = restrict(&index, &pins);
            let universe = Universe::new(restricted, &arch);
            let mut installed: BTreeMap<String, &deb::Package> =
                base_owned.iter().map(|p| (p.name.clone(), p)).collect();
            let mut packages = Vec::new();
            let mut layer_requests = Vec::new();
            let mut failed = None;
            for (layer_no, layer) in recipe.layers.iter().enumerate() {
                if layer.packages.is_empty() {
                    continue;
                }
                let names: Vec<String> =
                    layer.packages.iter().map(|p| p.get_ref().clone()).collect();
                let chosen = match universe.resolve(&names, &installed) {
                    Ok(c) => c,
                    Err(e) => {
                        failed = Some((layer_no, e));
                        break;
                    }
                };
                let wanted = requested_names(layer);
                // Requested names no package of this layer is called by: the
                // base or an earlier layer installs them (or a chosen package
                // provides them).
                let satisfied = wanted
                    .iter()
                    .filter(|n| !chosen.iter().any(|p| p.name == **n))
                    .cloned()
                    .collect();
                layer_requests.push(LockedRequest {
                    arch: arch.clone(),
                    layer: layer_no,
                    names: wanted,
                    satisfied,
                    span: Span::default(),
                });
                for p in chosen {
                    installed.insert(p.name.clone(), p);
                    packages.push(LockedPackage {
                        arch: arch.clone(),
                        layer: layer_no,
                        name: p.name.clone(),
                        version: p.version.clone(),
                        architecture: p.arch.clone(),
                        path: p.path.clone(),
                        digest: p.sha256.clone(),
                        size: p.size,
                        repository: p.repository.clone(),
                        span: Span::default(),
                    });
                }
            }
            let Some((layer_no, e)) = failed else {
                break (packages, layer_requests);
            };
            // A kept pin may be what stands in the way: free the one the
            // failure names, or all of them, and try again.
            if !pins.is_empty() {
                let named = match &e {
                    Unsatisfiable::Unknown(name) => Some(name.as_str()),
                    Unsatisfiable::Chain(chain) => chain.last().map(|r| relation_name(r)),
                };
                match named {
                    Some(n) if pins.contains_key(n) => {
                        pins.remove(n);
                    }
                    _ => pins.clear(),
                }
                continue;
            }
            let layer = &recipe.layers[layer_no];
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
            return Err(Error::from(recipe.source.error(span, message).hint(hint)));
        };
        out.extend(arch_packages);
        requests.extend(arch_requests);
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
            archive: r.archive().to_string(),
            span: r.archive.as_ref().map_or(r.span.clone(), |a| a.span()),
        })
        .collect()
}

/// The mirror of `repo`'s archive (see [`crate::source::deb::archive_mirror`]),
/// or an error at the recipe line that names the repository, saying both ways
/// to configure it.
pub fn mirror_for(
    recipe: &crate::recipe::Recipe,
    repo: &crate::source::deb::Repository,
) -> Result<String> {
    use crate::source::deb;
    deb::archive_mirror(&repo.archive, &repo.suite).ok_or_else(|| {
        let variable = deb::mirror_variable(&repo.archive);
        let also = if repo.archive == deb::MAIN_ARCHIVE {
            " (or `KILN_DEBIAN_MIRROR`)"
        } else {
            ""
        };
        Error::from(
            recipe
                .source
                .error(
                    repo.span.clone(),
                    format!(
                        "no mirror for the `{}` archive of repository `{}` (suite `{}`)",
                        repo.archive, repo.name, repo.suite
                    ),
                )
                .hint(format!(
                    "set `{variable}`{also} to the archive's URL, or add a `deb URL {} {}` line for it to the host's apt sources; mirrors are never written in the recipe",
                    repo.suite,
                    repo.components.join(" ")
                )),
        )
    })
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

    /// `satisfied` is written only when a layer has such names, so locks
    /// without them keep their bytes; it reads back.
    #[test]
    fn satisfied_names_are_additive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.lock");
        let mut lock = Lock::default();
        lock.requests.push(LockedRequest {
            arch: "amd64".into(),
            layer: 0,
            names: vec!["a".into(), "b".into()],
            satisfied: Vec::new(),
            span: Span::default(),
        });
        assert_eq!(
            lock.render(),
            "# Written by `kiln lock`: every moving input of the recipe, pinned by digest.\n\
             # Commit it beside the recipe.\nversion = 1\n\n[[requests]]\narch = \"amd64\"\n\
             layer = 0\nnames = [\"a\", \"b\"]\n"
        );
        lock.requests[0].satisfied = vec!["b".into()];
        lock.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with("names = [\"a\", \"b\"]\nsatisfied = [\"b\"]\n"),
            "{text}"
        );
        assert_eq!(Lock::read(&path).unwrap().unwrap(), lock);
    }

    fn package(sha256: &str) -> String {
        format!(
            "version = 1\n\n[[packages]]\narch = \"amd64\"\nlayer = 0\nname = \"hello\"\n\
             version = \"1\"\narchitecture = \"amd64\"\npath = \"pool/h.deb\"\n\
             sha256 = \"{sha256}\"\nsize = 1\nrepository = \"debian\"\n"
        )
    }

    /// Reads `text` as `app.lock` and returns the rendered error.
    fn read_error(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.lock");
        std::fs::write(&path, text).unwrap();
        let e = Lock::read(&path).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::BAD_INPUT);
        assert!(e.hint().unwrap().contains("kiln lock"), "{e}");
        e.to_string()
    }

    #[test]
    fn package_digests_are_digests_and_keep_their_text() {
        let text = package(&"ab".repeat(32));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.lock");
        std::fs::write(&path, &text).unwrap();
        let lock = Lock::read(&path).unwrap().unwrap();
        let p = &lock.packages[0];
        assert_eq!(p.digest.hex(), "ab".repeat(32));
        assert!(
            lock.render().ends_with(&text["version = 1\n".len()..]),
            "{}",
            lock.render()
        );
        // Where the entry stands is kept, and an error about it points there.
        let e = lock.error_at(&p.span, "not in the store").to_string();
        assert!(e.contains("app.lock:3:1`: not in the store"), "{e}");
    }

    /// A bad package digest once pointed at line 1, column 1.
    #[test]
    fn a_bad_package_digest_points_at_its_value() {
        let e = read_error(&package("xyz"));
        assert!(e.contains("app.lock:10:10`"), "{e}");
        assert!(e.contains("`xyz` is not a SHA-256 digest"), "{e}");
    }

    /// So did a lockfile of another version.
    #[test]
    fn a_wrong_version_points_at_its_value() {
        let e = read_error("# lock\nversion = 7\n");
        assert!(
            e.contains("app.lock:2:11`: lockfile version 7 is not 1"),
            "{e}"
        );
        assert!(e.contains("2 | version = 7\n  |           ^"), "{e}");
    }

    #[test]
    fn a_bad_base_digest_points_at_its_value() {
        let e = read_error("version = 1\n\n[bases]\n\"r.example/a:1\" = \"sha256:12\"\n");
        assert!(e.contains("app.lock:4:19`"), "{e}");
    }
}
