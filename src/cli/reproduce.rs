//! `kiln reproduce REF --key PUB`: rebuild an image from the working tree as
//! its signed provenance describes it; exit 0 only when the digests match.

use std::path::PathBuf;

use kiln::error::Error;
use kiln::pipeline::{self, Settings};
use kiln::registry::parse_reference;

use super::registry_args::RegistryArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image: `REGISTRY/REPOSITORY@sha256:…` (a tag is resolved to its digest first).
    reference: String,
    /// A public key (PEM) that signed the image and its provenance; repeat for several.
    #[arg(long, required = true)]
    key: Vec<PathBuf>,
    /// The recipe to rebuild (default: the path the provenance names, under the top of the current git checkout).
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Exits 0 when reproduced, 1 when the rebuilt digest differs (errors as the table says).
pub fn run(args: Args) -> Result<(), Error> {
    let image = parse_reference(&args.reference)?;
    let keys = super::sign::public_keys(&args.key)?;
    let settings = Settings {
        registry: args.registry.options()?,
        ..Settings::default()
    };
    let store = super::open_store()?;
    let r = pipeline::reproduce(
        &store,
        &settings,
        &image,
        &keys,
        args.recipe.as_deref(),
        &pipeline::Quiet,
    )?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).expect("reports serialise")
        );
    } else {
        for m in &r.materials {
            let uri = &m.uri;
            match (&m.attested, &m.local) {
                (Some(a), Some(l)) => {
                    println!("differs: {uri} (provenance sha256:{a}, working tree sha256:{l})")
                }
                (Some(a), None) => println!(
                    "missing: {uri} (provenance sha256:{a}, not an input of the working tree)"
                ),
                (None, Some(l)) => {
                    println!("new:     {uri} (working tree sha256:{l}, not in the provenance)")
                }
                (None, None) => {}
            }
        }
        if r.reproduced {
            println!("reproduced {}", r.digest);
        } else {
            println!("not reproduced: {} rebuilt as {}", r.digest, r.rebuilt);
            if let Some(d) = &r.diff {
                print!("{}", kiln::diff::render(d));
            }
        }
    }
    if !r.reproduced {
        super::set_codes(1, 0);
    }
    Ok(())
}
