//! `kiln pull REF --out DIR`: pull by digest into an OCI layout, every blob verified.

use std::path::PathBuf;

use kiln::error::Error;
use kiln::registry::parse_reference;

use super::build::Format;
use super::registry_args::RegistryArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to pull: `REGISTRY/REPOSITORY@sha256:…` (or `:TAG`).
    reference: String,
    /// Where to write the image.
    #[arg(long)]
    out: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "oci-layout")]
    format: Format,
    /// Also write the digest to this file.
    #[arg(long, value_name = "FILE")]
    digest_file: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn run(args: Args) -> Result<(), Error> {
    let source = parse_reference(&args.reference)?;
    let store = super::open_store()?;
    let digest = kiln::pipeline::pull(
        &store,
        args.registry.options()?,
        &source,
        &args.out,
        args.format.into(),
    )?;
    super::say(&format!("wrote   {}", args.out.display()));
    super::finish_digest(&digest, args.digest_file.as_deref())
}
