//! The `kiln` binary: parses arguments and dispatches to one file per
//! subcommand under `cli/`. All logic lives in the library.

#![forbid(unsafe_code)]

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    let code = match cli::run(args) {
        Ok(()) => cli::success_code(),
        Err(e) => {
            cli::render_error(&e);
            cli::error_code(&e)
        }
    };
    // Threads are joined and temporary files persisted or dropped by now.
    kiln::store::locks::release();
    std::process::exit(code);
}
