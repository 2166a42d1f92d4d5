//! `kiln push LAYOUT REF`: push an OCI layout or archive already built.

use std::path::PathBuf;

use kiln::error::Error;
use kiln::registry::{parse_reference, Registry};
use kiln::source::layout::open_any_with;

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
    let (layout, _guard) = open_any_with(&args.source, || store.temp_dir())?;
    let top = layout.import(&store)?;
    let registry = Registry::new(args.registry.options()?, &[&target])?;
    let report = registry.push(&store, &top, &target, &[])?;
    super::say(&format!(
        "pushed  {} ({} blobs sent, {} already there, {} mounted)",
        target.whole(),
        report.uploaded,
        report.skipped,
        report.mounted
    ));
    super::finish_digest(&top.digest.to_string(), args.digest_file.as_deref())
}
