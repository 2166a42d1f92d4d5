//! `kiln sbom LAYOUT`: print the SPDX 2.3 SBOM of an image in an OCI layout or archive.

use std::path::PathBuf;

use kiln::error::Error;
use kiln::recipe::Platform;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// An OCI image layout directory or OCI archive.
    path: PathBuf,
    /// For an image index: the platform to describe (default: the first).
    #[arg(long)]
    platform: Option<String>,
}

pub fn run(args: Args) -> Result<(), Error> {
    let platform = match &args.platform {
        Some(p) => Some(Platform::parse(p).map_err(|m| {
            Error::invalid(
                format!("`--platform {p}`: {m}"),
                Some("write it as in `docker --platform`, e.g. `linux/amd64`".into()),
            )
        })?),
        None => None,
    };
    let sbom = kiln::pipeline::sbom(&args.path, platform.as_ref())?;
    println!(
        "{}",
        serde_json::to_string_pretty(&sbom).expect("JSON values serialise")
    );
    Ok(())
}
