//! `kiln copy SRC DST`: registry to registry, by digest, mounting blobs when possible.

use std::path::PathBuf;

use kiln::error::Error;
use kiln::registry::parse_reference;

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
    let (digest, report) =
        kiln::pipeline::copy(&store, args.registry.options()?, &source, &target)?;
    super::say(&format!(
        "copied  {} -> {} ({} blobs sent, {} already there, {} mounted)",
        source.whole(),
        target.whole(),
        report.uploaded,
        report.skipped,
        report.mounted
    ));
    super::finish_digest(&digest, args.digest_file.as_deref())
}
