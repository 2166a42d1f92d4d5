//! `kiln diff A B`: what changes if image B replaces image A. Exit 0 when
//! identical, 1 when different, 2 on error, as `diff` does.

use kiln::error::Error;
use kiln::pipeline::{self, Settings};

use super::registry_args::RegistryArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image deployed: a layout or archive (`PATH`, `oci:PATH[@sha256:…|:TAG]`), a registry reference, or a recipe (`*.toml`, built first).
    a: String,
    /// The candidate, named as A is.
    b: String,
    /// Print the report as JSON (its shape is documented in the README).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Exits 0 (identical), 1 (different) or 2 (error).
pub fn run(args: Args) -> Result<(), Error> {
    super::set_codes(0, 2);
    let identical = compare(&args)?;
    super::set_codes(if identical { 0 } else { 1 }, 2);
    Ok(())
}

fn compare(args: &Args) -> Result<bool, Error> {
    let settings = Settings {
        source_date_epoch: super::build::source_date_epoch()?,
        registry: args.registry.options()?,
        ..Settings::default()
    };
    let store = super::open_store()?;
    let report = pipeline::diff(&store, &settings, &args.a, &args.b, &pipeline::Quiet)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialise")
        );
    } else {
        print!("{}", kiln::diff::render(&report));
    }
    Ok(report.identical)
}
