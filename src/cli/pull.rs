//! `kiln pull REF --out DIR`: pull by digest into an OCI layout, every blob verified.

use std::path::PathBuf;

use kiln::error::Error;
use kiln::export::{self, Output};
use kiln::registry::{parse_reference, Registry};

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
    let registry = Registry::new(args.registry.options()?, &[&source])?;
    let top = registry.pull(&store, &source, None)?;
    let tags: Vec<String> = source.tag().map(String::from).into_iter().collect();
    let output = Output {
        top: &top,
        tags: &tags,
        mtime: 0,
    };
    match (export::vm::from_artifact(&store, &top)?, args.format) {
        (Some(bundle), _) => export::vm::write(&store, &bundle, &args.out)?,
        (None, Format::OciLayout) => export::layout::write(&store, &output, &args.out)?,
        (None, Format::OciArchive) => export::archive::write(&store, &output, &args.out)?,
    }
    super::say(&format!("wrote   {}", args.out.display()));
    super::finish_digest(&top.digest.to_string(), args.digest_file.as_deref())
}
