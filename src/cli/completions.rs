//! `kiln completions SHELL`: a completion script for bash, zsh or fish,
//! generated from the same clap definition that parses the arguments.

use clap::CommandFactory;
use kiln::error::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell: `bash`, `zsh` or `fish`.
    #[arg(value_enum)]
    shell: Shell,
}

/// The shells kiln writes completions for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

pub fn run(args: Args) -> Result<(), Error> {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut command = super::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "kiln", &mut out);
    super::write_stdout(&out)
}
