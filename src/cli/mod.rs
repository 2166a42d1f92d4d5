//! Command-line arguments and error rendering.

mod build;
mod inspect;

use clap::{Parser, Subcommand};
use kiln::error::Error;

/// kiln builds reproducible, content-addressed OCI images from TOML recipes.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a recipe into an OCI image layout (or archive) and print its digest.
    Build(build::Args),
    /// Show the images in an OCI image layout or archive.
    Inspect(inspect::Args),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Build(args) => build::run(args),
        Command::Inspect(args) => inspect::run(args),
    }
}

/// Prints `error: …`, its causes and its hint on stderr.
pub fn render_error(e: &Error) {
    let mut text = format!("error: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!("\n  caused by: {s}"));
        source = s.source();
    }
    if let Some(hint) = e.hint() {
        text.push_str(&format!("\nhint: {hint}"));
    }
    eprintln!("{text}");
}

/// Whether progress lines should be drawn on stderr.
fn progress_enabled() -> bool {
    std::env::var_os("KILN_NO_PROGRESS").is_none_or(|v| v.is_empty() || v == "0")
}
