//! `kiln sbom LAYOUT`: print the SPDX 2.3 SBOM of an image in an OCI layout or archive.

use std::path::PathBuf;

use kiln::digest::Digest;
use kiln::error::Error;
use kiln::recipe::Platform;
use kiln::source::layout::{descriptors, is_index, matches_platform, open_any};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// An OCI image layout directory or OCI archive.
    path: PathBuf,
    /// For an image index: the platform to describe (default: the first).
    #[arg(long)]
    platform: Option<String>,
}

pub fn run(args: Args) -> Result<(), Error> {
    let (layout, _tmp) = open_any(&args.path)?;
    let top = layout.single_image()?;
    // The output's own name, as `kiln build` names an SBOM (`out/NAME`, `out/NAME.tar`).
    let file = kiln::files::file_name(&args.path);
    let name = file.strip_suffix(".tar").unwrap_or(&file).to_string();
    let (_, doc) = layout.read_json(&top.digest)?;
    let manifest: Digest = if is_index(&doc) {
        let list = descriptors(&doc, &layout.blob_path(&top.digest))?;
        let chosen = match &args.platform {
            None => list.first(),
            Some(p) => {
                let p = Platform::parse(p).map_err(|m| {
                    Error::invalid(
                        m,
                        Some("pick one of the platforms `kiln inspect` lists".into()),
                    )
                })?;
                list.iter().find(|d| matches_platform(&d.json, &p))
            }
        };
        chosen
            .ok_or_else(|| {
                Error::invalid(
                    format!(
                        "the index in `{}` has no such platform",
                        args.path.display()
                    ),
                    Some("name one of its platforms with `--platform os/arch`".into()),
                )
            })?
            .digest
            .clone()
    } else {
        top.digest.clone()
    };
    let (_, m) = layout.read_json(&manifest)?;
    let config_digest: Digest = m["config"]["digest"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            Error::invalid(
                format!("manifest `{manifest}` has no config"),
                Some(kiln::error::hint::DAMAGED_IMAGE.into()),
            )
        })?;
    let (_, config) = layout.read_json(&config_digest)?;
    let created = config["created"].as_str().unwrap_or("1970-01-01T00:00:00Z");
    let sbom = kiln::attest::sbom::spdx(&layout, &manifest, &name, created)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&sbom).expect("JSON values serialise")
    );
    Ok(())
}
