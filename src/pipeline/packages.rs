//! The Debian packages of one layer, as resolution pinned them: fetched into the store
//! when missing (four at a time, each verified), installed into layer entries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::Settings;
use crate::error::{Error, Result};
use crate::recipe::Platform;
use crate::resolve::Package;
use crate::store::Store;

/// A package's maintainer scripts, read (never run) for the accounts they create.
pub(super) struct Scripts {
    pub(super) package: String,
    pub(super) preinst: Option<String>,
    pub(super) postinst: Option<String>,
    /// Its `usr/lib/sysusers.d/*.conf` files: path and text.
    pub(super) sysusers: Vec<(String, String)>,
}

/// The files of the Debian packages the lock pins for one layer and platform,
/// fetched into the store if missing (by SHA-256; never otherwise).
pub(super) fn packages_for(
    store: &Store,
    pinned: &[Package],
    platform: &Platform,
    settings: &Settings,
    recipe: &crate::recipe::Recipe,
    exclude: &crate::source::deb::install::Exclude,
    scripts: &mut Vec<Scripts>,
) -> Result<std::collections::BTreeMap<String, (crate::plan::Entry, String)>> {
    use crate::source::deb;
    if pinned.is_empty() {
        return Ok(Default::default());
    }
    let arch = deb::debian_arch(&platform.arch, platform.variant.as_deref());
    let mut missing = Vec::new();
    for p in pinned {
        if !store.check_blob(&p.digest)? {
            missing.push(p);
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
        // Each package comes from its repository's archive; a `.deb` that mirror
        // no longer has is asked of the archive's fallbacks, by the same pool path.
        let repos = crate::lock::repositories(recipe);
        let mut sources: std::collections::BTreeMap<String, (Vec<deb::Fetcher>, String)> =
            Default::default();
        for p in &missing {
            if sources.contains_key(&p.repository) {
                continue;
            }
            let mut urls = Vec::new();
            let archive = match repos.iter().find(|r| r.name == p.repository) {
                Some(r) => {
                    urls.push(crate::lock::mirror_for(recipe, r)?);
                    r.archive.clone()
                }
                None => {
                    urls.push(deb::mirror()?);
                    deb::MAIN_ARCHIVE.to_string()
                }
            };
            urls.extend(deb::fallbacks(&archive));
            let fetchers = urls
                .into_iter()
                .map(|url| {
                    deb::Fetcher::new(url)
                        .map(|f| f.with_progress(settings.registry.progress.clone()))
                })
                .collect::<Result<Vec<_>>>()?;
            sources.insert(
                p.repository.clone(),
                (fetchers, deb::fallback_variable(&archive)),
            );
        }
        let next = AtomicUsize::new(0);
        let failed = Mutex::new(None);
        let fetch = |p: &Package| -> Result<()> {
            let (fetchers, variable) = &sources[&p.repository];
            let mut tried = Vec::new();
            for fetcher in fetchers {
                let mut w = store.writer()?;
                match fetcher.get_package(&p.path, &p.name, &mut w) {
                    Ok(()) => {}
                    Err(e @ Error::Network { .. }) => {
                        tried.push(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                w.commit(Some(&p.digest)).map_err(|e| match e {
                    Error::DigestMismatch {
                        expected, actual, ..
                    } => Error::DigestMismatch {
                        what: format!(
                            "package `{}` (`{}` from `{}`)",
                            p.name,
                            p.path,
                            fetcher.mirror()
                        ),
                        expected,
                        actual,
                    },
                    other => other,
                })?;
                return Ok(());
            }
            Err(all_failed(p, tried, variable))
        };
        std::thread::scope(|s| {
            for _ in 0..missing.len().min(4) {
                s.spawn(|| loop {
                    let Some(p) = missing.get(next.fetch_add(1, Ordering::SeqCst)) else {
                        return;
                    };
                    let result = fetch(p);
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
    // The file lists are taken from the store's cache without touching the
    // files: when the layer cache answers, no file of a package is opened.
    // A layer that is built claims them first ([`claim_unless_cached`]).
    let mut installed = Vec::new();
    for p in pinned {
        let contents = deb::extract::contents_unclaimed(store, &p.name, &p.digest)?;
        scripts.push(Scripts {
            package: p.name.clone(),
            preinst: contents.preinst.clone(),
            postinst: contents.postinst.clone(),
            sysusers: Vec::new(),
        });
        installed.push(deb::install::Installed {
            name: p.name.clone(),
            contents,
        });
    }
    // Planning reads a few of the files (certificates, account and
    // `sysusers.d` files, …): those are claimed now, or all put back from
    // their `.deb`s if a prune removed one.
    let read = installed.iter().flat_map(|i| {
        i.contents
            .entries
            .iter()
            .filter(|e| read_when_planning(&e.path))
            .filter_map(deb::extract::DebEntry::digest)
    });
    if !store.claim_all(read)? {
        claim(store, pinned)?;
    }
    // The host's ldconfig reads the libraries only if they are its own architecture.
    let host = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    match deb::install::entries(store, &installed, arch == host, exclude) {
        Ok(entries) => Ok(entries),
        // Installing reads a few files (certificates, `.jinfo` files, …):
        // one a prune removed is put back from its `.deb`, then it is tried
        // again (an error that remains is the real one).
        Err(_) => {
            claim(store, pinned)?;
            deb::install::entries(store, &installed, arch == host, exclude)
        }
    }
}

/// Whether planning a layer may read the package file at `path` (rather
/// than only name it): the CA certificates (for the bundle and Java's trust
/// store), account files, `sysusers.d` files, base-passwd's master files,
/// busybox (for its applets), Java's `.jinfo` files, the dpkg database.
fn read_when_planning(path: &str) -> bool {
    const READ: [&str; 6] = [
        "usr/share/ca-certificates/",
        "usr/lib/sysusers.d/",
        "usr/share/base-passwd/",
        "usr/lib/jvm/.",
        "etc/",
        "var/lib/dpkg/",
    ];
    READ.iter().any(|p| path.starts_with(p)) || path == "bin/busybox" || path == "usr/bin/busybox"
}

/// Claims the files of the packages `pinned` (see [`deb::extract::claim`]).
fn claim(store: &Store, pinned: &[Package]) -> Result<()> {
    for p in pinned {
        crate::source::deb::extract::claim(store, &p.name, &p.digest)?;
    }
    Ok(())
}

/// Before a layer of the packages `pinned` is built from `plan` (its input
/// not in the layer cache), claims their files, so that a concurrent prune
/// keeps them and any it removed already are put back from their `.deb`s.
/// A layer the cache holds reads none of them.
pub(super) fn claim_unless_cached(
    store: &Store,
    plan: &crate::plan::LayerPlan,
    pinned: &[Package],
) -> Result<()> {
    let cached = match &plan.input_digest {
        Some(input) => store.cached_layer(input)?.is_some(),
        None => false,
    };
    if pinned.is_empty() || cached {
        return Ok(());
    }
    claim(store, pinned)
}

/// The error when no mirror of a package's archive had it: every attempt named.
fn all_failed(p: &Package, tried: Vec<Error>, variable: &str) -> Error {
    let attempts: Vec<String> = tried.iter().map(|e| format!("`{e}`")).collect();
    let Some(Error::Network {
        action,
        url,
        status,
        source,
        ..
    }) = tried.into_iter().last()
    else {
        return Error::internal(
            format!("download package `{}`", p.name),
            "no mirror was tried",
        );
    };
    let hint = if attempts.len() > 1 {
        format!(
            "package `{}` ({}) is in none of its archive's mirrors; tried: {}; add a mirror that keeps old versions (a snapshot archive) to `{variable}`, or run `kiln lock --update`",
            p.name,
            p.version,
            attempts.join(", ")
        )
    } else {
        format!(
            "package `{}` ({}) may have left the mirror (Debian removes superseded versions): list a mirror that keeps old versions (a snapshot archive) in `{variable}` (`URL[,URL…]`), or run `kiln lock --update`",
            p.name, p.version
        )
    };
    Error::Network {
        action,
        url,
        status,
        hint: Some(hint),
        source,
    }
}
