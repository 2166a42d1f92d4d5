//! The Debian packages of one layer, as resolution pinned them: fetched into the store
//! when missing (four at a time, each verified), installed into layer entries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::Settings;
use crate::error::{Error, Result};
use crate::recipe::Platform;
use crate::resolve::Package;
use crate::store::Store;

/// The files of the Debian packages the lock pins for one layer and platform,
/// fetched into the store if missing (by SHA-256; never otherwise).
pub(super) fn packages_for(
    store: &Store,
    pinned: &[Package],
    platform: &Platform,
    settings: &Settings,
    exclude: &crate::source::deb::install::Exclude,
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
        let fetcher = deb::Fetcher::new(deb::mirror()?)?;
        let next = AtomicUsize::new(0);
        let failed = Mutex::new(None);
        let fetch = |p: &Package| -> Result<()> {
            let mut w = store.writer()?;
            fetcher.get_into(&p.path, &mut w)?;
            w.commit(Some(&p.digest)).map_err(|e| match e {
                Error::DigestMismatch {
                    expected, actual, ..
                } => Error::DigestMismatch {
                    what: format!("package `{}` (`{}`)", p.name, p.path),
                    expected,
                    actual,
                },
                other => other,
            })?;
            Ok(())
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
    let mut installed = Vec::new();
    for p in pinned {
        installed.push(deb::install::Installed {
            name: p.name.clone(),
            contents: deb::extract::contents(store, &p.name, &p.digest)?,
        });
    }
    // The host's ldconfig reads the libraries only if they are its own architecture.
    let host = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    deb::install::entries(store, &installed, arch == host, exclude)
}
