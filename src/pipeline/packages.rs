//! The Debian packages of one layer: the lock's pins, fetched into the store
//! when missing (four at a time, each verified), installed into layer entries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::{Material, Settings};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::lock::{self, Lock};
use crate::recipe::{Platform, Recipe};
use crate::store::Store;

/// The files of the Debian packages the lock pins for one layer and platform,
/// fetched into the store if missing (by SHA-256; never otherwise).
pub(super) fn packages_for(
    store: &Store,
    recipe: &Recipe,
    layer_no: usize,
    platform: &Platform,
    settings: &Settings,
    materials: &mut Vec<Material>,
) -> Result<std::collections::BTreeMap<String, (crate::plan::Entry, String)>> {
    use crate::source::deb;
    let section = &recipe.layers[layer_no];
    let Some(first) = section.packages.first() else {
        return Ok(Default::default());
    };
    let lock_path = lock::path_for(&recipe.source.path);
    let arch = deb::debian_arch(&platform.arch, platform.variant.as_deref());
    let lock = Lock::read(&lock_path)?.unwrap_or_default();
    let pinned: Vec<&lock::LockedPackage> = lock
        .packages
        .iter()
        .filter(|p| p.arch == arch && p.layer == layer_no)
        .collect();
    let requested = lock
        .requests
        .iter()
        .find(|r| r.arch == arch && r.layer == layer_no);
    let stale = requested.is_none_or(|r| r.names != lock::requested_names(section));
    let missing = section
        .packages
        .iter()
        .find(|want| !pinned.iter().any(|p| p.name == *want.get_ref()));
    if pinned.is_empty() || missing.is_some() || stale {
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
    // The lock checked every digest when it was read.
    let digest_of = |p: &lock::LockedPackage| -> Result<Digest> { Ok(p.digest.clone()) };
    let mut missing = Vec::new();
    for p in &pinned {
        if !store.check_blob(&digest_of(p)?)? {
            missing.push(*p);
        }
    }
    if let (true, Some(p)) = (settings.offline, missing.first()) {
        return Err(Error::invalid(
            format!(
                "`--offline`, and package `{}` ({}) is not in the store",
                p.name, p.path
            ),
            Some("build once without `--offline` to fetch it".into()),
        ));
    }
    if !missing.is_empty() {
        // Downloads run four at a time; each is verified before it enters the store.
        let fetcher = deb::Fetcher::new(deb::mirror()?)?;
        let next = AtomicUsize::new(0);
        let failed = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..missing.len().min(4) {
                s.spawn(|| loop {
                    let Some(p) = missing.get(next.fetch_add(1, Ordering::SeqCst)) else {
                        return;
                    };
                    let result = digest_of(p).and_then(|digest| {
                        let mut w = store.writer()?;
                        fetcher.get_into(&p.path, &mut w)?;
                        w.commit(Some(&digest)).map_err(|e| match e {
                            Error::DigestMismatch {
                                expected, actual, ..
                            } => Error::DigestMismatch {
                                what: format!("package `{}` (`{}`)", p.name, p.path),
                                expected,
                                actual,
                            },
                            other => other,
                        })
                    });
                    if let Err(e) = result {
                        failed
                            .lock()
                            .expect("no panics hold this lock")
                            .get_or_insert(e);
                        return;
                    }
                });
            }
        });
        if let Some(e) = failed.into_inner().expect("threads are joined") {
            return Err(e);
        }
    }
    let mut installed = Vec::new();
    for p in pinned {
        let digest = digest_of(p)?;
        materials.push(Material {
            uri: format!(
                "pkg:deb/debian/{}@{}?arch={}",
                p.name, p.version, p.architecture
            ),
            digest: digest.clone(),
        });
        installed.push(deb::install::Installed {
            name: p.name.clone(),
            contents: deb::extract::contents(store, &p.name, &digest)?,
        });
    }
    // The host's ldconfig reads the libraries only if they are its own architecture.
    let host = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    deb::install::entries(store, &installed, arch == host)
}
