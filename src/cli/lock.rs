//! `kiln lock RECIPE`: pin every input the recipe names by tag, in `RECIPE.lock`.

use std::path::PathBuf;

use kiln::error::Error;

use super::registry_args::RegistryArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The recipe to lock.
    recipe: PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn run(args: Args) -> Result<(), Error> {
    let (path, lock, changed) = kiln::lock::lock_recipe(&args.recipe, &args.registry.options()?)?;
    for (reference, digest) in &lock.bases {
        super::say(&format!("pinned  {reference} -> {digest}"));
    }
    let verb = if changed { "wrote" } else { "up to date" };
    println!("{verb} {}", path.display());
    Ok(())
}
