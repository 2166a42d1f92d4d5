//! `kiln build RECIPE`: arguments → [`pipeline::Request`]; the outcome → the
//! digest (or one JSON object) on stdout, progress on stderr.

use std::path::PathBuf;

use kiln::error::Error;
use kiln::pipeline::{self, Event, Reporter, Settings};
use kiln::registry::parse_reference;

use super::registry_args::RegistryArgs;
use serde_json::json;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An OCI image layout directory.
    OciLayout,
    /// An OCI image layout in one tar file, which docker, podman and containerd load too.
    OciArchive,
    /// `docker save`'s format, for older tools.
    DockerArchive,
}

impl From<Format> for pipeline::Format {
    fn from(f: Format) -> Self {
        match f {
            Format::OciLayout => pipeline::Format::OciLayout,
            Format::OciArchive => pipeline::Format::OciArchive,
            Format::DockerArchive => pipeline::Format::DockerArchive,
        }
    }
}

/// Where `--load` puts the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadInto {
    /// docker if present (and its daemon answers), else podman.
    #[value(hide = true)]
    Auto,
    /// `docker load` (honours DOCKER_HOST).
    Docker,
    /// `podman load` (honours CONTAINER_HOST).
    Podman,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The recipe to build.
    recipe: PathBuf,
    /// Where to write the output (default `out/NAME`, or `out/NAME.tar` for an archive).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "oci-layout")]
    format: Format,
    /// Name the image NAME instead of by the recipe's `tags` (repeatable):
    /// a tag (`v1`, of the recipe's name) or a full name (`registry.example/app:1.4`, `app:dev`).
    #[arg(long = "tag", value_name = "NAME")]
    tags: Vec<String>,
    /// Also load the image into a local docker or podman (whichever is present, or the one named).
    #[arg(
        long,
        value_enum,
        value_name = "RUNTIME",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "auto"
    )]
    load: Option<LoadInto>,
    /// Also write the digest to this file.
    #[arg(long, value_name = "FILE")]
    digest_file: Option<PathBuf>,
    /// Print one JSON object (digest, layers, cache hits) instead of the digest.
    #[arg(long)]
    json: bool,
    /// How many layers to build at once (default: one per CPU).
    #[arg(long, default_value_t = 0)]
    jobs: usize,
    /// How many threads compress each gzip layer (default: one per CPU); the bytes do not depend on it.
    #[arg(
        long,
        env = "KILN_THREADS",
        value_name = "N",
        default_value_t = 0,
        hide_env_values = true,
        value_parser = threads
    )]
    threads: usize,
    /// Fail unless the recipe's lockfile exists and pins exactly its tagged inputs (for CI).
    #[arg(long)]
    locked: bool,
    /// Build from the store alone: fail rather than download anything.
    #[arg(long)]
    offline: bool,
    /// Sign what is pushed with this private key (needs `--push`).
    #[arg(long, value_name = "KEY")]
    sign_key: Option<PathBuf>,
    /// With `--sign-key` and several platforms: also sign each platform manifest.
    #[arg(long)]
    recursive: bool,
    /// Where signatures and attestations go: `tags` (cosign's `sha256-<hex>.sig`/`.att`),
    /// `referrers` (OCI 1.1), or `both`.
    #[arg(long, value_name = "SCHEME", default_value = "both", value_parser = super::sign::parse_scheme)]
    signature_scheme: kiln::sign::Scheme,
    /// Write an SPDX 2.3 SBOM beside the output (and attach it, signed, when pushing with `--sign-key`).
    #[arg(long)]
    sbom: bool,
    /// Write SLSA provenance beside the output (and attach it, signed, when pushing with `--sign-key`).
    #[arg(long)]
    provenance: bool,
    /// Push the image to `REGISTRY/REPOSITORY[:TAG]` after building (repeatable).
    #[arg(long, value_name = "REF")]
    push: Vec<String>,
    /// Share layers through this registry repository (`REGISTRY/REPOSITORY`): take
    /// those it has, push those built here. An unreachable cache never fails a build.
    #[arg(long, env = "KILN_CACHE_REPO", value_name = "REPO")]
    cache: Option<String>,
    /// Sign the cache entries this build pushes with this private key (as for `--sign-key`).
    #[arg(long, env = "KILN_CACHE_SIGN_KEY", value_name = "KEY")]
    cache_sign_key: Option<PathBuf>,
    /// Take cache entries signed by this public key on their blob's digest alone,
    /// without remaking the layer from local inputs (repeatable).
    #[arg(long, env = "KILN_CACHE_KEY", value_name = "PUB")]
    cache_key: Vec<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Draws a build's events on stderr, one line each (above the bars of
/// downloads, layer builds and pushes, which come through the registry
/// options' progress).
struct Progress {
    /// With `--json`, outputs and pushes are in the JSON object instead.
    json: bool,
    screen: std::sync::Arc<super::progress::Screen>,
}

impl Reporter for Progress {
    fn event(&self, event: Event<'_>) {
        self.lines(event, |text: String| self.screen.line(&text))
    }
}

impl Progress {
    fn lines(&self, event: Event<'_>, say: impl Fn(String)) {
        let name = |n: Option<&str>| n.map_or(String::from("(unnamed)"), String::from);
        match event {
            Event::Recipe { path } => say(format!("recipe  {}", path.display())),
            Event::LayerFetched {
                name: n,
                digest,
                size,
            } => say(format!(
                "fetched layer {} {} ({}) from the shared cache",
                name(n),
                short(&digest.to_string()),
                human(size)
            )),
            Event::CacheNote { message } => say(format!("cache   {message}")),
            Event::LayerCached { name: n, digest } => say(format!(
                "cached  layer {} {}",
                name(n),
                short(&digest.to_string())
            )),
            Event::LayerStarted {
                name: n,
                files,
                bytes,
            } => say(format!(
                "build   layer {} ({files} files, {})",
                name(n),
                human(bytes)
            )),
            Event::LayerBuilt {
                name: n,
                digest,
                size,
            } => say(format!(
                "built   layer {} {} ({})",
                name(n),
                short(&digest.to_string()),
                human(size)
            )),
            Event::Account {
                package,
                name,
                user,
                id,
            } => {
                let (kind, id_kind) = if user {
                    ("user", "uid")
                } else {
                    ("group", "gid")
                };
                say(format!(
                    "account {kind} {name} ({id_kind} {id}) from package {package}"
                ))
            }
            Event::Wrote { path } if !self.json => say(format!("wrote   {}", path.display())),
            Event::Pushed { reference, report } if !self.json => say(format!(
                "pushed  {} ({} blobs sent, {} already there)",
                reference.whole(),
                report.uploaded,
                report.skipped
            )),
            Event::Wrote { .. } | Event::Pushed { .. } => {}
        }
    }
}

fn short(d: &str) -> &str {
    &d[..d.len().min(19)]
}

pub(super) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

pub(super) fn source_date_epoch() -> Result<Option<u64>, Error> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => v.trim().parse().map(Some).map_err(|_| {
            Error::invalid(
                format!("`SOURCE_DATE_EPOCH` is `{v}`, not a whole number of seconds"),
                Some("set it to seconds since 1970, e.g. `SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)`, or unset it".into()),
            )
        }),
        Err(_) => Ok(None),
    }
}

/// `--cache` / `KILN_CACHE_REPO`: a repository, without a tag or digest.
fn cache_reference(text: &str) -> Result<kiln::registry::Reference, Error> {
    let r = parse_reference(text)?;
    let bare = format!("{}/{}", r.registry(), r.repository());
    let last = text.rsplit('/').next().unwrap_or(text);
    if r.digest().is_some() || last.contains(':') {
        return Err(Error::invalid(
            format!("`--cache {text}` names a tag or digest; the cache is a whole repository"),
            Some(format!(
                "write `--cache {bare}` (or set KILN_CACHE_REPO={bare})"
            )),
        ));
    }
    if text != bare {
        return Err(Error::invalid(
            format!("`--cache {text}` does not name its registry as written (it reads as `{bare}`)"),
            Some("write `--cache REGISTRY/REPOSITORY` in lower case, e.g. `--cache 127.0.0.1:5000/ci/kiln-cache`".into()),
        ));
    }
    Ok(r)
}

/// `--threads` / `KILN_THREADS`: 0 (one per CPU) up to [`MAX_THREADS`].
fn threads(s: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n <= MAX_THREADS)
        .ok_or_else(|| {
            format!(
                "`{s}` is not a number of threads from 0 to {MAX_THREADS}: set --threads or \
                 KILN_THREADS to e.g. 4, or to 0 (or leave it unset) for one per CPU"
            )
        })
}

/// The most threads one gzip layer may use (each holds a 1 MiB chunk).
const MAX_THREADS: usize = 1024;

pub fn run(args: Args) -> Result<(), Error> {
    let push = args
        .push
        .iter()
        .map(|r| parse_reference(r))
        .collect::<Result<Vec<_>, _>>()?;
    let settings = Settings {
        source_date_epoch: source_date_epoch()?,
        jobs: args.jobs,
        threads: args.threads,
        registry: args.registry.options()?,
        locked: args.locked,
        offline: args.offline,
        provenance: args.provenance,
        cache: args
            .cache
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(cache_reference)
            .transpose()?,
        cache_trust: kiln::pipeline::CacheTrust {
            sign: args
                .cache_sign_key
                .as_deref()
                .map(super::keys::load_signing_key)
                .transpose()?
                .map(std::sync::Arc::new),
            keys: super::sign::public_keys(&args.cache_key)?
                .into_iter()
                .map(std::sync::Arc::new)
                .collect(),
        },
        ..Settings::default()
    };
    let store = super::open_store()?;
    let screen = super::progress::screen();
    let progress = Progress {
        json: args.json,
        screen: screen.clone(),
    };
    let quiet = pipeline::Quiet;
    let password = super::keys::password;
    let outcome = pipeline::run(&pipeline::Request {
        recipe: args.recipe,
        settings,
        out: args.out,
        format: args.format.into(),
        tags: args.tags,
        load: args.load.map(|l| match l {
            LoadInto::Auto => kiln::export::load::Load::Auto,
            LoadInto::Docker => kiln::export::load::Load::Into(kiln::export::load::Runtime::Docker),
            LoadInto::Podman => kiln::export::load::Load::Into(kiln::export::load::Runtime::Podman),
        }),
        sbom: args.sbom,
        push,
        signing: args.sign_key.map(|key| pipeline::Signing {
            key,
            password: &password,
            recursive: args.recursive,
            scheme: args.signature_scheme,
        }),
        store: &store,
        reporter: if screen.on() { &progress } else { &quiet },
    })?;
    if let Some(file) = &args.digest_file {
        pipeline::write_digest_file(file, &outcome.digest)?;
    }
    if let (Some(loaded), false) = (&outcome.loaded, args.json) {
        if screen.on() {
            screen.line(&format!(
                "loaded  {} into {}",
                loaded.images.join(", "),
                loaded.runtime.command()
            ));
        }
    }
    if args.json {
        let doc = json!({
            "name": outcome.name,
            "digest": outcome.digest,
            "media_type": outcome.media_type,
            "out": outcome.out,
            "format": outcome.format,
            "platforms": outcome.manifests.iter().map(|m| &m.platform).collect::<Vec<_>>(),
            "layers": outcome.manifests[0].layers,
            "manifests": outcome.manifests,
            "pushed": outcome.pushed,
            "cache": outcome.cache,
            "loaded": outcome.loaded,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("reports serialise")
        );
    } else {
        println!("{}", outcome.digest);
    }
    Ok(())
}
