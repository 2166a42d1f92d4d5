//! `kiln lock RECIPE [--update [PACKAGE…]]`: pin every input the recipe
//! names by tag, in `RECIPE.lock`, after locking its base recipes that need it.
//!
//! Without `--update`, pins that still resolve are kept and only what must
//! move moves (a new package, a version that left the repository);
//! `--update` moves every package to the newest version, `--update PKG…`
//! only those (and what their new versions require).

use std::path::PathBuf;

use kiln::error::Error;
use kiln::lock::Update;

use super::registry_args::RegistryArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The recipe to lock (its base recipes are locked first when they need it).
    recipe: PathBuf,
    /// Move packages to their newest versions: all of them, or only the named
    /// ones (and what their new versions require). Without it, pins that
    /// still resolve are kept.
    #[arg(long, num_args = 0.., value_name = "PACKAGE")]
    update: Option<Vec<String>>,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn run(args: Args) -> Result<(), Error> {
    let update = match args.update {
        None => Update::Keep,
        Some(names) if names.is_empty() => Update::All,
        Some(names) => Update::Only(names.into_iter().collect()),
    };
    let locked = kiln::lock::lock_recipe(&args.recipe, &args.registry.options()?, &update)?;
    for l in &locked {
        for (reference, digest) in &l.lock.bases {
            super::say(&format!("pinned  {reference} -> {digest}"));
        }
        let verb = if l.changed { "wrote" } else { "up to date" };
        println!("{verb} {}", l.path.display());
    }
    Ok(())
}
