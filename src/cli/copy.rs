//! `kiln copy SRC DST`: registry to registry, by digest, mounting blobs when possible.

use std::path::PathBuf;

use kiln::error::Error;
use kiln::registry::{parse_reference, Registry};

use super::registry_args::RegistryArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image to copy: `REGISTRY/REPOSITORY@sha256:…` (or `:TAG`).
    source: String,
    /// Where to put it: `REGISTRY/REPOSITORY[:TAG]`.
    destination: String,
    /// Also write the digest to this file.
    #[arg(long, value_name = "FILE")]
    digest_file: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn run(args: Args) -> Result<(), Error> {
    let source = parse_reference(&args.source)?;
    let target = parse_reference(&args.destination)?;
    let store = super::open_store()?;
    let registry = Registry::new(args.registry.options()?, &[&source, &target])?;
    let top = registry.pull(&store, &source, None)?;
    let report = registry.push(&store, &top, &target, std::slice::from_ref(&source))?;
    super::say(&format!(
        "copied  {} -> {} ({} blobs sent, {} already there, {} mounted)",
        source.whole(),
        target.whole(),
        report.uploaded,
        report.skipped,
        report.mounted
    ));
    super::finish_digest(&top.digest.to_string(), args.digest_file.as_deref())
}
