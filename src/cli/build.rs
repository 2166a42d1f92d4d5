//! `kiln build RECIPE`: build, export, print the digest.

use std::path::PathBuf;

use kiln::error::Error;
use kiln::export::{self, Output};
use kiln::pipeline::{self, Event, Reporter, Settings};
use kiln::registry::{parse_reference, Registry};

use super::registry_args::RegistryArgs;
use serde_json::json;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An OCI image layout directory.
    OciLayout,
    /// An OCI image layout in one tar file.
    OciArchive,
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
    /// Also write the digest to this file.
    #[arg(long, value_name = "FILE")]
    digest_file: Option<PathBuf>,
    /// Print one JSON object (digest, layers, cache hits) instead of the digest.
    #[arg(long)]
    json: bool,
    /// How many layers to build at once (default: one per CPU).
    #[arg(long, default_value_t = 0)]
    jobs: usize,
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
    /// Write an SPDX 2.3 SBOM beside the output (and attach it, signed, when pushing with `--sign-key`).
    #[arg(long)]
    sbom: bool,
    /// Write SLSA provenance beside the output (and attach it, signed, when pushing with `--sign-key`).
    #[arg(long)]
    provenance: bool,
    /// Push the image to `REGISTRY/REPOSITORY[:TAG]` after building (repeatable).
    #[arg(long, value_name = "REF")]
    push: Vec<String>,
    #[command(flatten)]
    registry: RegistryArgs,
}

struct Progress;

impl Reporter for Progress {
    fn event(&self, event: Event<'_>) {
        let name = |n: Option<&str>| n.map_or(String::from("(unnamed)"), String::from);
        match event {
            Event::Recipe { path } => eprintln!("recipe  {}", path.display()),
            Event::LayerCached { name: n, digest } => {
                eprintln!("cached  layer {} {}", name(n), short(&digest.to_string()))
            }
            Event::LayerStarted {
                name: n,
                files,
                bytes,
            } => {
                eprintln!(
                    "build   layer {} ({files} files, {})",
                    name(n),
                    human(bytes)
                )
            }
            Event::LayerBuilt {
                name: n,
                digest,
                size,
            } => {
                eprintln!(
                    "built   layer {} {} ({})",
                    name(n),
                    short(&digest.to_string()),
                    human(size)
                )
            }
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

fn source_date_epoch() -> Result<Option<u64>, Error> {
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

pub fn run(args: Args) -> Result<(), Error> {
    let targets = args
        .push
        .iter()
        .map(|r| parse_reference(r))
        .collect::<Result<Vec<_>, _>>()?;
    let registry_options = args.registry.options()?;
    if args.sign_key.is_some() && targets.is_empty() {
        return Err(Error::invalid(
            "`--sign-key` needs `--push`: signatures live in a registry",
            Some("add `--push REGISTRY/REPOSITORY:TAG`, or sign later with `kiln sign`".into()),
        ));
    }
    // Load the key before building, so a wrong password fails fast.
    let sign_key = args
        .sign_key
        .as_deref()
        .map(super::keys::load_signing_key)
        .transpose()?;
    let settings = Settings {
        source_date_epoch: source_date_epoch()?,
        jobs: args.jobs,
        registry: registry_options.clone(),
        locked: args.locked,
        offline: args.offline,
    };
    let store = super::open_store()?;
    let quiet = pipeline::Quiet;
    let progress = Progress;
    let reporter: &dyn Reporter = if super::progress_enabled() {
        &progress
    } else {
        &quiet
    };
    let built = pipeline::build(&store, &args.recipe, &settings, reporter)?;

    let out = args.out.unwrap_or_else(|| {
        let name = &built.recipe.name;
        match args.format {
            Format::OciLayout => PathBuf::from("out").join(name),
            Format::OciArchive => PathBuf::from("out").join(format!("{name}.tar")),
        }
    });
    let output = Output {
        top: &built.top,
        tags: &built.recipe.tags,
        mtime: settings.source_date_epoch.unwrap_or(0),
    };
    // What a push sends: the image, or for `[vm]` the bundle as an OCI artifact.
    let mut pushed_top = built.top.clone();
    match (&built.recipe.vm, args.format) {
        (Some(vm), Format::OciLayout) => {
            let bundle = export::vm::bundle(&store, &built, vm, output.mtime)?;
            export::vm::write(&store, &bundle, &out)?;
            pushed_top = export::vm::store_artifact(&store, &bundle)?;
        }
        (Some(_), Format::OciArchive) => {
            return Err(Error::invalid(
                "a recipe with `[vm]` builds a VM bundle directory, not an OCI archive",
                Some("leave out `--format`".into()),
            ))
        }
        (None, Format::OciLayout) => export::layout::write(&store, &output, &out)?,
        (None, Format::OciArchive) => export::archive::write(&store, &output, &out)?,
    }
    let docs = kiln::attest::Documents::of(&store, &built, args.sbom, args.provenance)?;
    for file in docs.write_beside(&out, &built.recipe.name)? {
        if super::progress_enabled() && !args.json {
            eprintln!("wrote   {}", file.display());
        }
    }
    let digest = pushed_top.digest.to_string();
    let mut pushes = Vec::new();
    if !targets.is_empty() {
        let refs: Vec<_> = targets.iter().collect();
        let registry = Registry::new(registry_options, &refs)?;
        for target in &targets {
            let report = registry.push(&store, &pushed_top, target, &[])?;
            if super::progress_enabled() && !args.json {
                eprintln!(
                    "pushed  {} ({} blobs sent, {} already there)",
                    target.whole(),
                    report.uploaded,
                    report.skipped
                );
            }
            let mut signed = Vec::new();
            if let Some(key) = &sign_key {
                signed = kiln::sign::sign_all(
                    &registry,
                    &store,
                    target,
                    &pushed_top.digest,
                    key,
                    args.recursive,
                )?;
                docs.attach_all(&registry, &store, target, key)?;
            }
            pushes.push(serde_json::json!({ "reference": target.whole(), "report": report, "signed": signed }));
        }
    }
    if let Some(file) = &args.digest_file {
        write_digest_file(file, &digest)?;
    }
    if args.json {
        let doc = json!({
            "name": built.recipe.name,
            "digest": digest,
            "media_type": built.top.media_type,
            "out": out,
            "format": match args.format { Format::OciLayout => "oci-layout", Format::OciArchive => "oci-archive" },
            "platforms": built.manifests.iter().map(|m| &m.platform).collect::<Vec<_>>(),
            "layers": built.manifests[0].layers,
            "manifests": built.manifests,
            "pushed": pushes,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("reports serialise")
        );
    } else {
        if super::progress_enabled() {
            eprintln!("wrote   {}", out.display());
        }
        println!("{digest}");
    }
    Ok(())
}

/// Writes the digest file atomically (temp file beside it, then rename).
pub fn write_digest_file(file: &std::path::Path, digest: &str) -> Result<(), Error> {
    kiln::files::write_atomic(file, format!("{digest}\n").as_bytes())
}
