//! `kiln copy SRC DST [DST…]`: registry to registries, by digest, with the
//! image's signatures and attestations, mounting blobs when possible.

use std::path::PathBuf;

use kiln::error::Error;
use kiln::registry::parse_reference;

use super::registry_args::RegistryArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image to copy: `REGISTRY/REPOSITORY@sha256:…` (or `:TAG`).
    source: String,
    /// Where to put it: `REGISTRY/REPOSITORY[:TAG]`; several for several copies
    /// (the source is read once).
    #[arg(required = true)]
    destination: Vec<String>,
    /// Which signatures and attestations travel with it: `tags` (cosign's
    /// `sha256-<hex>.sig`/`.att`), `referrers` (OCI 1.1), or `both`.
    #[arg(long, value_name = "SCHEME", default_value = "both", value_parser = super::sign::parse_scheme)]
    signature_scheme: kiln::sign::Scheme,
    /// Also write the digest to this file.
    #[arg(long, value_name = "FILE")]
    digest_file: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn run(args: Args) -> Result<(), Error> {
    let source = parse_reference(&args.source)?;
    let targets = args
        .destination
        .iter()
        .map(|d| parse_reference(d))
        .collect::<Result<Vec<_>, _>>()?;
    let store = super::open_store()?;
    let (digest, copies) = kiln::pipeline::copy(
        &store,
        args.registry.options()?,
        &source,
        &targets,
        args.signature_scheme,
    )?;
    for (target, (report, attached)) in targets.iter().zip(&copies) {
        super::say(&format!(
            "copied  {} -> {} ({} blobs sent, {} already there, {} mounted; {} signature/attestation manifests)",
            source.whole(),
            target.whole(),
            report.uploaded,
            report.skipped,
            report.mounted,
            attached
        ));
    }
    super::finish_digest(&digest, args.digest_file.as_deref())
}
