//! `kiln push LAYOUT REF`: push an OCI layout or archive already built.

use std::path::PathBuf;

use kiln::error::Error;
use kiln::registry::parse_reference;

use super::registry_args::RegistryArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// An OCI image layout directory or OCI archive.
    source: PathBuf,
    /// Where to push: `REGISTRY/REPOSITORY[:TAG]`.
    reference: String,
    /// Also write the pushed digest to this file.
    #[arg(long, value_name = "FILE")]
    digest_file: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn run(args: Args) -> Result<(), Error> {
    let target = parse_reference(&args.reference)?;
    let store = super::open_store()?;
    let (digest, report) =
        kiln::pipeline::push(&store, args.registry.options()?, &args.source, &target)?;
    super::say(&format!(
        "pushed  {} ({} blobs sent, {} already there, {} mounted)",
        target.whole(),
        report.uploaded,
        report.skipped,
        report.mounted
    ));
    super::finish_digest(&digest, args.digest_file.as_deref())
}
